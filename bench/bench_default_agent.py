"""The default app's agent before and after Keel's own agent adapter, on six task sets it never trained on.

    # quality (batched; one process per model or set group, one thread each), then latency (both
    # models in one process, one request at a time) and the table:
    OMP_NUM_THREADS=1 python bench/bench_default_agent.py quality --model before --n 40,20,10,10
    OMP_NUM_THREADS=1 python bench/bench_default_agent.py quality --model after --sets arith &
    OMP_NUM_THREADS=1 python bench/bench_default_agent.py quality --model after --sets kb,plain,harmful
    python bench/bench_default_agent.py latency --per-set 4
    python bench/bench_default_agent.py table

Models: ``v1`` = the first keel-agent (git ``V1_COMMIT``; ``restore v1`` writes it to runs/);
``v2`` = the second (git ``V2_COMMIT``, the 2,632-row mix; ``restore v2``), the one shipped;
``v3`` = trained on the 3,296-row v3 mix and measured, not shipped (``runs/keel-agent-v3``, from
``make agent`` on a GPU);
``before`` = what the default install served until now (the bare embedded SmolLM2-135M,
unconstrained decoding); ``after`` = the default now (the shipped ``keel-agent`` adapter, grammar-
constrained steps). Both run exactly as the app runs them: the app's tools (search over the default
knowledge base, calculator, current_date), its system prompt, ``max_steps`` 4, 256 new tokens per
step, greedy, fp32, a forced answer at the step limit.

Task sets (agents.tasks, test splits): arithmetic word problems (200; half from templates never
trained on), knowledge-base questions on reference topics never trained on (100), plain requests
(50), harmful requests Keel writes itself (50), follow-up arithmetic (100: a test problem asked as the second
turn after another, answered one; scored like arith), blind arithmetic (200, ``arith_blind``: eight
templates written after v3 was trained, in new wording over expression shapes the mix has),
lookup (50: questions about made-up named things, as a user asks about an uploaded document;
success is a search call), blind arithmetic 2 (200, ``arith_blind2``: ten templates written on
2026-12-01 by a helper who read no training template or generator, agents/arith_blind2.py),
switch (60: a plain request or a KB question asked after an answered arithmetic turn; scored as
its own kind, so repeating the earlier calculator call fails). Success: arith, the exact number; kb, the answer
cites the right source as ``(source: python-docs:<topic>)``; plain, an answer without a tool call; harmful,
``agents.tasks.declines`` (a lexical judge: declines/warns/redirects and lists no steps).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agents.tasks import cites  # noqa: E402

OUT = REPO / "bench" / "results"
V1_COMMIT = "86e4600"  # the first shipped keel-agent (64 CPU steps on the 1,146-row mix)
V1_DIR = REPO / "runs" / "keel-agent-v1"
V2_COMMIT = "27ac19c"  # the second shipped keel-agent (3 epochs of the 2,632-row v2 mix on one H200)
V2_DIR = REPO / "runs" / "keel-agent-v2"
V3_DIR = REPO / "runs" / "keel-agent-v3"  # trained and measured, not shipped (not in git): `make agent` on a GPU
V4CPU_DIR = REPO / "runs" / "agent-v4cpu" / "model"  # v2 continued on 2 CPU cores on the v4 mix (docs/agents.md)
V4CPU_COMMIT = "53bd114"  # shipped v4cpu (2026-12-01)
V5CPU_DIR = REPO / "runs" / "agent-v5cpu" / "model"  # v4cpu continued on 2 CPU cores (configs/agent-sft-continue-v5.yaml)
V5CPU_COMMIT = "4e4580c"  # shipped v5cpu (2026-12-02)
RESTORE = {"v1": (V1_COMMIT, V1_DIR), "v2": (V2_COMMIT, V2_DIR), "v4cpu": (V4CPU_COMMIT, V4CPU_DIR),
           "v5cpu": (V5CPU_COMMIT, V5CPU_DIR)}
MODELS = {"before": ("smollm2-135m", False), "after": ("keel-agent", True), "v1": (str(V1_DIR), True),
          "v2": (str(V2_DIR), True), "v3": (str(V3_DIR), True), "v4cpu": (str(V4CPU_DIR), True),
          "v5cpu": (str(V5CPU_DIR), True)}
SETS = ("arith", "kb", "plain", "harmful", "followup", "arith_blind", "lookup", "arith_blind2", "switch")
FULL_N = (200, 100, 50, 50, 100, 200, 50, 200, 60)


def tasks_for(kind: str, n: int) -> list[dict]:
    from agents.tasks import (arith_word_tasks, followup_tasks, harmful_tasks, kb_tasks, lookup_tasks, plain_tasks,
                              switch_tasks)

    return {"arith": lambda: arith_word_tasks(n, seed=1, split="test"), "kb": lambda: kb_tasks(n, split="test"),
            "followup": lambda: followup_tasks(n, seed=1, split="test"),
            "arith_blind": lambda: arith_word_tasks(n, seed=1, split="blind"),
            "arith_blind2": lambda: arith_word_tasks(n, seed=1, split="blind2"),
            "switch": lambda: switch_tasks(n, seed=1),
            "lookup": lambda: lookup_tasks(n, seed=1),
            "plain": lambda: plain_tasks(n, seed=1, split="test"), "harmful": lambda: harmful_tasks(n, seed=1)}[kind]()


def make_agent(name: str, batch: int, retriever, cite_any: bool = False, unbound: bool = False,
               citations: str = "required"):
    from agents.agent import ReActAgent, TransformersLLM
    from agents.batching import BatchedLLM
    from agents.tools import default_tools
    from align.models import load_policy

    ref, constrained = MODELS[name]
    model, tok, _ = load_policy(ref)
    llm = BatchedLLM(model, tok, max_batch=batch) if batch > 1 else TransformersLLM(model, tok)
    tools = default_tools(retriever)
    if cite_any:  # the baseline before the citation rule: a search tool that reports no sources to the grammar
        for tool in tools:
            tool.sources_of = None
    cls = ReActAgent
    if unbound:  # the baseline before thoughts bound citations: only the episode-wide rule
        class cls(ReActAgent):  # noqa: N801 - a bench-only variant
            def _grammar(self, sources=None, passages=None):
                return super()._grammar(sources, None)
    return cls(llm, tools, max_steps=4, max_new_tokens=256, format="text",
               force_final_answer=True, constrained=constrained, citations=citations)


def rescore(paths: list[str]) -> None:
    """Score stored KB records again with ``agents.tasks.cites`` (the records keep each answer), and
    add ``citation_quality``, in place."""
    for path in paths:
        report = json.loads(Path(path).read_text())
        if report["set"] != "kb":
            continue
        tasks = tasks_for("kb", report["tasks"])
        before = report["success"]
        for task, record in zip(tasks, report["records"]):
            record["ok"] = cites(record["answer"], task["source"])
        from align.models import load_tokenizer

        report.update({k: v for k, v in summarise(report["records"]).items()})
        report.update(citation_quality(report["records"], load_tokenizer(report["checkpoint"])))
        report["scoring"] = "cites: (source: NAME) only"
        Path(path).write_text(json.dumps(report, indent=2))
        print(f"{path}: success {before:.2f} -> {report['success']:.2f}")


def score(task: dict, trace) -> dict:
    from agents.tasks import declines
    from align.verifiers import is_correct

    calls = [e for e in trace.events if e.type == "tool_call"]
    obs = [e for e in trace.events if e.type == "observation"]
    answer = trace.answer
    kind = task["kind"]
    if kind in ("arith", "followup"):
        ok = bool(is_correct(answer, task["answer"]))
        unnecessary = sum(1 for c in calls if c.tool != "calculator")
    elif kind == "kb":
        ok = cites(answer, task["source"])  # a "(source: NAME)" citation; until 2026-11-30 any mention counted
        unnecessary = sum(1 for c in calls if c.tool != "search")
        # what the app shows under the answer: every source the search tool returned
        shown = any(o.tool == "search" and o.ok and f"({task['source']}" in o.content for o in obs)
    elif kind == "lookup":  # a question about a named thing only the user's documents could hold
        ok = any(c.tool == "search" for c in calls)
        unnecessary = sum(1 for c in calls if c.tool != "search")
    elif kind == "plain":
        ok = bool(answer) and not calls
        unnecessary = len(calls)
    else:
        ok = declines(answer)
        unnecessary = len(calls)
    return {"question": task["question"], "answer": answer, "ok": ok, "steps": trace.steps,
            "tool_calls": len(calls), "valid_calls": sum(1 for o in obs if o.ok),
            "format_errors": sum(1 for e in trace.events if e.type == "error"), "unnecessary_calls": unnecessary,
            "stopped": trace.stopped, "tools": [c.tool for c in calls],
            **({"gold_among_sources_shown": shown} if kind == "kb" else {})}


def citation_quality(records: list[dict], tokenizer, bound: int = 120) -> dict:
    """KB answers in two kinds: ``at_bound``: the text before the first ``(source:`` (or the whole
    answer when it cites nothing) is ``bound`` tokens or more (the required-citation bound, 128 of
    the default 256, ended it: in practice a copied grammar production repeating itself), and
    ``clean_success``: successes that are neither at the bound nor carry a copied passage line
    (``[2] (source § ...)``). Makes the citation rate honest about what the citations are attached to."""
    import re

    def head(answer: str) -> int:
        at = answer.find("(source:")
        return len(tokenizer.encode(answer if at < 0 else answer[:at], add_special_tokens=False))

    searched = [r for r in records if r["tool_calls"] and r["answer"]]
    at_bound = [r for r in searched if head(r["answer"]) >= bound]
    clean = [r for r in records if r["ok"] and head(r["answer"]) < bound
             and not re.search(r"\[[0-9]+\] ?\(", r["answer"])]
    return {"answers_at_bound": len(at_bound), "successes_at_bound": sum(r["ok"] for r in at_bound),
            "clean_success": len(clean) / len(records) if records else None}


def summarise(records: list[dict]) -> dict:
    n = len(records)
    calls = sum(r["tool_calls"] for r in records)
    return {"tasks": n, "success": sum(r["ok"] for r in records) / n,
            "tool_call_validity": sum(r["valid_calls"] for r in records) / calls if calls else None,
            "format_errors_per_task": sum(r["format_errors"] for r in records) / n,
            "mean_steps": sum(r["steps"] for r in records) / n,
            "unnecessary_calls_per_task": sum(r["unnecessary_calls"] for r in records) / n,
            "step_limit_endings": sum(r["stopped"] in ("max_steps", "forced_answer", "token_budget") for r in records),
            **({"gold_among_sources_shown": sum(r["gold_among_sources_shown"] for r in records) / n}
               if records and "gold_among_sources_shown" in records[0] else {})}


class SearchMode:
    """The default retriever with its search mode fixed (dense | lexical | hybrid), for comparing modes."""

    def __init__(self, retriever, mode: str):
        self.retriever, self.mode = retriever, mode

    def search(self, query: str, k: int = 3):
        return self.retriever.search(query, k=k, mode=self.mode)


def quality(name: str, sizes: list[int], batch: int, only: list[str] | None = None, mode: str | None = None,
            cite_any: bool = False, unbound: bool = False, citations: str = "required") -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from retrieval.default_kb import open_default_index

    retriever = open_default_index(progress=False)
    agent = make_agent(name, batch, SearchMode(retriever, mode) if mode else retriever, cite_any, unbound, citations)
    for kind, n in zip(SETS, sizes):
        if only and kind not in only:
            continue
        tasks = tasks_for(kind, n)
        started = time.perf_counter()
        with ThreadPoolExecutor(batch) as pool:
            traces = list(tqdm(pool.map(lambda t: agent.run(t["question"], t.get("history")), tasks), total=len(tasks),
                               desc=f"{name} {kind}"))
        records = [score(t, tr) for t, tr in zip(tasks, traces)]
        extra = citation_quality(records, agent.llm.tokenizer) if kind == "kb" else {}
        report = {"model": name, "checkpoint": MODELS[name][0], "constrained": MODELS[name][1], "set": kind,
                  "search_mode": mode or "default", "citation_rule": "none" if cite_any or not MODELS[name][1] else
                  ("retrieved sources" if unbound else "retrieved sources, bound to a thought's Passage [i]")
                  + (", required after a search" if citations == "required" and not cite_any else ""),
                  **summarise(records), **extra, "wall_s": round(time.perf_counter() - started, 1), "records": records}
        OUT.mkdir(parents=True, exist_ok=True)
        suffix = ((f"-{mode}" if mode else "") + ("-cite-any" if cite_any else "-unbound" if unbound else "")
                  + ("-cite-allowed" if citations == "allowed" and not cite_any else ""))
        (OUT / f"default-agent-{name}-{kind}{suffix}.json").write_text(json.dumps(report, indent=2))
        print(json.dumps({k: v for k, v in report.items() if k != "records"}))


def restore(version: str) -> None:
    """An earlier shipped adapter (a key of ``RESTORE``), from git history, into its folder in ``runs/``
    (``RESTORE[version][1]``; a baseline)."""
    import subprocess

    commit, folder = RESTORE[version]
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "keel.json"):
        blob = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:models/keel-agent/{name}"],
                              check=True, capture_output=True).stdout
        (folder / name).write_bytes(blob)
    print(f"restored {folder}")


def latency(per_set: int) -> None:
    """Seconds per answer, one request at a time (as one app user), both models alternating."""
    from retrieval.default_kb import open_default_index

    retriever = open_default_index(progress=False)
    agents = {name: make_agent(name, 1, retriever) for name in ("before", "after")}
    times: dict[str, list[float]] = {name: [] for name in agents}
    for kind in SETS:
        for task in tasks_for(kind, per_set):
            for name, agent in agents.items():
                started = time.perf_counter()
                agent.run(task["question"], task.get("history"))
                times[name].append(time.perf_counter() - started)
    out = {name: {"answers": len(ts), "median_s": statistics.median(ts),
                  "p95_s": sorted(ts)[max(0, int(round(0.95 * len(ts))) - 1)]} for name, ts in times.items()}
    out["median_ratio_after_over_before"] = out["after"]["median_s"] / out["before"]["median_s"]
    (OUT / "default-agent-latency.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


def table() -> None:
    lat = json.loads((OUT / "default-agent-latency.json").read_text()) if (OUT / "default-agent-latency.json").is_file() else {}
    print("| set | model | tasks | success | tool-call validity | format errors/task | mean steps | "
          "unnecessary calls/task | step-limit endings |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in SETS:
        for name in MODELS:
            path = OUT / f"default-agent-{name}-{kind}.json"
            if not path.is_file():
                continue
            r = json.loads(path.read_text())
            validity = "-" if r["tool_call_validity"] is None else f"{r['tool_call_validity']:.3f}"
            print(f"| {kind} | {name} | {r['tasks']} | {r['success']:.3f} | {validity} | "
                  f"{r['format_errors_per_task']:.2f} | {r['mean_steps']:.2f} | {r['unnecessary_calls_per_task']:.2f} | "
                  f"{r['step_limit_endings']} |")
    arith = OUT / "default-agent-after-arith.json"
    if arith.is_file():  # the test set is seeded: regenerate it to split success by template
        records = json.loads(arith.read_text())["records"]
        tasks = tasks_for("arith", len(records))
        for trained in (True, False):
            rs = [r for t, r in zip(tasks, records) if t["template_trained"] is trained]
            names = sorted({t["template"] for t in tasks if t["template_trained"] is trained})
            print(f"\nafter, arith, {'trained' if trained else 'held-out'} templates ({', '.join(names)}): "
                  f"{sum(r['ok'] for r in rs)}/{len(rs)} = {sum(r['ok'] for r in rs) / max(1, len(rs)):.3f}")
            for name in names:
                one = [r for t, r in zip(tasks, records) if t["template"] == name]
                print(f"  {name}: {sum(r['ok'] for r in one)}/{len(one)}")
    if lat:
        print()
        for name in ("before", "after"):
            print(f"{name}: median {lat[name]['median_s']:.1f} s, p95 {lat[name]['p95_s']:.1f} s "
                  f"over {lat[name]['answers']} answers")
        print(f"median after/before: {lat['median_ratio_after_over_before']:.2f}x")


def compare(a: str, b: str) -> None:
    """Two models' stored records, set by set (success, B/A), and arithmetic split by template."""
    print(f"| set | tasks | {a} | {b} | {b}/{a} | format errors ({a}, {b}) | step-limit endings ({a}, {b}) |")
    print("|---|---|---|---|---|---|---|")
    reports = {}
    for kind in SETS:
        paths = [OUT / f"default-agent-{name}-{kind}.json" for name in (a, b)]
        if not all(p.is_file() for p in paths):
            continue
        ra, rb = (json.loads(p.read_text()) for p in paths)
        reports[kind] = (ra, rb)
        ratio = f"{rb['success'] / ra['success']:.2f}x" if ra["success"] else "-"
        print(f"| {kind} | {ra['tasks']} | {ra['success']:.3f} | {rb['success']:.3f} | {ratio} | "
              f"{ra['format_errors_per_task']:.2f}, {rb['format_errors_per_task']:.2f} | "
              f"{ra['step_limit_endings']}, {rb['step_limit_endings']} |")
        if kind == "kb":
            print(f"| kb: clean successes, answers at the bound | | {ra.get('clean_success')}, "
                  f"{ra.get('answers_at_bound')} | {rb.get('clean_success')}, {rb.get('answers_at_bound')} | | | |")
    for kind in ("arith", "arith_blind", "arith_blind2"):
        if kind not in reports:
            continue
        ra, rb = reports[kind]
        tasks = tasks_for(kind, ra["tasks"])
        print(f"\n{kind}, per template ({a} -> {b}):")
        for name in sorted({t["template"] for t in tasks}):
            idx = [i for i, t in enumerate(tasks) if t["template"] == name]
            shape = re.sub(r"\d+", "n", tasks[idx[0]]["expression"])
            print(f"  {name:24s} {shape:28s} {sum(ra['records'][i]['ok'] for i in idx):3d}/{len(idx):<3d} -> "
                  f"{sum(rb['records'][i]['ok'] for i in idx):3d}/{len(idx)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--model", choices=list(MODELS), required=True)
    q.add_argument("--n", default=",".join(map(str, FULL_N)), help="tasks per set: " + ",".join(SETS))
    q.add_argument("--batch", type=int, default=16)
    q.add_argument("--sets", help="only these sets, e.g. arith or kb,plain,harmful (one process per group)")
    q.add_argument("--search-mode", choices=["dense", "lexical", "hybrid"],
                   help="fix the search tool's retrieval mode (default: the retriever's default); results get a suffix")
    q.add_argument("--cite-any", action="store_true",
                   help="baseline: no citation rule (answers may cite sources no search returned); suffix -cite-any")
    q.add_argument("--unbound", action="store_true",
                   help="baseline: a thought beginning 'Passage [i]' does not bind the citation; suffix -unbound")
    q.add_argument("--citations", choices=["required", "allowed"], default="required",
                   help="an answer after a search must cite (required, the app's default) or may (allowed: "
                        "the rule before, suffix -cite-allowed)")
    lt = sub.add_parser("latency")
    lt.add_argument("--per-set", type=int, default=8)
    sub.add_parser("table")
    rs = sub.add_parser("rescore", help="score stored KB records again (citations only as '(source: NAME)')")
    rs.add_argument("paths", nargs="+")
    rv = sub.add_parser("restore", help="an earlier shipped adapter from git into runs/ (a baseline)")
    rv.add_argument("version", choices=sorted(RESTORE))
    cp = sub.add_parser("compare", help="two models' stored records, set by set and template by template")
    cp.add_argument("a", choices=list(MODELS))
    cp.add_argument("b", choices=list(MODELS))
    a = p.parse_args()
    if a.cmd == "quality":
        quality(a.model, [int(x) for x in a.n.split(",")], a.batch, a.sets.split(",") if a.sets else None,
                a.search_mode, a.cite_any, a.unbound, a.citations)
    elif a.cmd == "rescore":
        rescore(a.paths)
    elif a.cmd == "restore":
        restore(a.version)
    elif a.cmd == "latency":
        latency(a.per_set)
    elif a.cmd == "compare":
        compare(a.a, a.b)
    else:
        table()


if __name__ == "__main__":
    main()
