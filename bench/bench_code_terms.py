"""Code constructs in the query (retrieval/code_terms.py): off vs lexical vs dense vs both, same run;
and "both+plain": both, with the lexical ranking weighing half in the fusion for questions in
words only (``Retriever.plain_lexical_weight``; every other row weighs it 1).

Each query set is scored in every search mode with ``Retriever.code_terms`` set to each value, on
the same index (the default knowledge base), with the figures per set and per ``kind`` (code,
identifier, plain). The setting is chosen on the sets named in ``--choose`` (already read in
earlier sessions: the hybrid set's dev and test halves, fresh, fresh2, fresh3; and the default
agent's knowledge-base test questions) and then
reported on ``--blind`` (a set written after the change, by someone who never ran a search).

    python bench/bench_code_terms.py [--blind bench/queries/default_kb_fresh4.jsonl]

Writes bench/results/code_terms.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SETTINGS = ["none", "lexical", "dense", "both"]
MODES = ["dense", "lexical", "hybrid"]


def _sets(names: list[str]) -> dict[str, list[dict]]:
    from retrieval.evaluate import read_queries

    out = {}
    for name in names:
        if name == "agent_kb_test":  # the default agent's knowledge-base test questions (bench_default_agent)
            from agents.tasks import kb_tasks

            out[name] = [{"query": t["question"], "relevant": [t["source"]], "kind": "agent"} for t in kb_tasks()]
            continue
        path, _, split = name.partition("@")
        p = Path(path) if "/" in path else REPO / "bench" / "queries" / f"{path}.jsonl"
        if p.is_file():
            out[p.stem + (f"@{split}" if split else "")] = read_queries(p, split or None)
    return out


def _score(kb, queries: list[dict]) -> dict:
    from retrieval.evaluate import score

    texts = [q["query"] for q in queries]
    out = {}
    for setting in SETTINGS + ["both+plain"]:
        kb.code_terms = setting.split("+")[0]
        kb.plain_lexical_weight = 0.5 if setting.endswith("+plain") else 1.0
        try:
            for mode in MODES:
                started = time.perf_counter()
                res = score(queries, kb.search_batch(texts, k=30, mode=mode), 10)
                r = {k: v for k, v in res.items() if k != "per_query"}
                r["s_per_query"] = (time.perf_counter() - started) / len(texts)
                kinds = {}
                for q, pq in zip(queries, res["per_query"]):
                    kd = kinds.setdefault(q.get("kind", "all"), {"n": 0, "r1": 0, "r5": 0})
                    kd["n"] += 1
                    kd["r1"] += pq["rank"] == 1
                    kd["r5"] += pq["rank"] is not None and pq["rank"] <= 5
                r["kinds"] = {k: {"n": v["n"], "recall@1": v["r1"] / v["n"], "recall@5": v["r5"] / v["n"]}
                              for k, v in kinds.items()}
                r["ranks"] = [pq["rank"] for pq in res["per_query"]]
                out[f"{setting}/{mode}"] = r
        finally:
            del kb.code_terms, kb.plain_lexical_weight
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--choose", default="default_kb_hybrid@dev,default_kb_hybrid@test,default_kb_fresh,"
                                        "default_kb_fresh2,default_kb_fresh3,agent_kb_test,default_kb_fresh4")
    p.add_argument("--blind", default="", help="sets scored after the choice (comma-separated)")
    a = p.parse_args()
    from retrieval.code_terms import code_terms
    from retrieval.default_kb import open_default_index

    kb = open_default_index(progress=False)
    report = {"command": "python bench/bench_code_terms.py " + (f"--blind {a.blind}" if a.blind else ""), "sets": {}}
    for group, names in (("choose", a.choose), ("blind", a.blind)):
        for name, queries in _sets([n for n in names.split(",") if n]).items():
            res = _score(kb, queries)
            with_code = sum(bool(code_terms(q["query"])) for q in queries)
            report["sets"][name] = {"group": group, "queries": len(queries), "with_code_terms": with_code, "results": res}
            print(f"\n{name} ({group}, {len(queries)} queries, {with_code} with code terms)")
            print(f"{'setting/mode':<16} {'R@1':>6} {'R@5':>6} {'MRR':>6}  per kind R@1/R@5")
            for key, r in res.items():
                kinds = "  ".join(f"{k} {v['recall@1']:.3f}/{v['recall@5']:.3f}" for k, v in sorted(r["kinds"].items()))
                print(f"{key:<16} {r['recall@1']:>6.3f} {r['recall@5']:>6.3f} {r['mrr']:>6.3f}  {kinds}")
    out = REPO / "bench" / "results" / "code_terms.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
