"""Hybrid search on the default knowledge base: dense vs lexical vs hybrid, same run, same index.

1. quality: recall@1/5/10 and MRR of each mode on bench/queries/default_kb_hybrid.jsonl (and the
   fresh sets written blind after the settings were chosen: default_kb_fresh{,2,3}.jsonl). Fusion
   settings (RRF k, lexical weight in the fusion, candidates per side, bm25 weight of exact tokens)
   are chosen on the lines marked ``"split": "dev"`` by a grid search, and reported on the
   ``test`` lines, beside the paper's settings (k 60, equal weights). Also the knowledge-base test
   questions of agents/tasks.py (``kb_tasks(split="test")``, what bench_default_agent scores the
   default agent on), per mode.
2. speed: lexical (FTS5 bm25) query latency p50/p99 on a docstore of N synthetic chunks (random
   200-word windows of the default knowledge base's own text, so posting lists have the real
   word distribution), beside a NumPy brute-force dense search over N 384-d vectors in the same
   run. 3. dense: the FAISS part at N vectors, k 10 and k 100 (the depth hybrid fetches).

    python bench/bench_hybrid.py quality [--queries bench/queries/default_kb_hybrid.jsonl] [--fresh FILE]
    python bench/bench_hybrid.py speed --sizes 100000,1000000
    python bench/bench_hybrid.py dense --sizes 1000000
"""
from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEPTH = 100  # chunks ranked per side before fusion (the grid's largest candidate depth)


def _rankings(kb, texts: list[str], weights: list[tuple[float, float]]) -> tuple[list[list[int]], dict]:
    """Each query's raw rankings, DEPTH deep: dense, and lexical for each (exact, title) weight pair."""
    kb.collapse_duplicates = False
    dense = [[h.id for h in hits] for hits in kb.search_batch(texts, k=DEPTH, mode="dense")]
    del kb.collapse_duplicates  # the class's default again
    dense = [kb._gate(t, d) for t, d in zip(texts, dense)]  # as hybrid search does (exact_gate)
    lexical = {w: [[i for i, _ in kb.store.lexical_search(t, DEPTH, *w)] for t in texts] for w in weights}
    return dense, lexical


def _score(queries, ranked_ids: list[list[int]], source_of: dict) -> dict:
    from retrieval.evaluate import score

    class H:  # what score() reads from a hit
        def __init__(self, source):
            self.source = source

    return score(queries, [[H(source_of[i]) for i in ids] for ids in ranked_ids], 10)


def _fuse(dense, lexical, k, w_lex, cand, drops=None):
    from retrieval.lexical import rrf

    drops = drops or [set()] * len(dense)
    return [[i for i, _ in rrf([[i for i in d[:cand] if i not in x], [i for i in l[:cand] if i not in x]], k, [1.0, w_lex])]
            for d, l, x in zip(dense, lexical, drops)]


def _library(kb, queries, mode: str, collapse: bool, gate: bool = True) -> dict:
    """What ``Retriever.search_batch`` itself returns (as ``retrieval eval`` asks: k = 30), scored."""
    from retrieval.evaluate import score

    kb.collapse_duplicates, kb.exact_gate = collapse, gate
    try:
        return score(queries, kb.search_batch([q["query"] for q in queries], k=30, mode=mode), 10)
    finally:
        del kb.collapse_duplicates, kb.exact_gate


def quality(a) -> dict:
    from agents.tasks import kb_tasks
    from retrieval.default_kb import open_default_index
    from retrieval.evaluate import read_queries

    kb = open_default_index(progress=False)
    source_of = {i: s for i, s in kb.store.db.execute("SELECT id, source FROM chunks")}
    # (exact, title) bm25 column weights, and the document-frequency cut-off of query terms
    weights = list(itertools.product([1.0, 2.0, 4.0], [1.0, 2.0, 4.0], [None]))
    sets = {"dev": read_queries(Path(a.queries), "dev"), "test": read_queries(Path(a.queries), "test")}
    sets["kb_tasks test (default agent)"] = [{"query": t["question"], "relevant": [t["source"]]}
                                             for t in kb_tasks(split="test")]
    for path in filter(None, a.fresh.split(",")):  # sets written after the settings were chosen
        if Path(path).is_file():
            name = Path(path).stem.removeprefix("default_kb_")
            sets[name] = read_queries(Path(path))
            for kind in sorted({q.get("kind") for q in sets[name]} - {None}):
                sets[f"{name}, {kind}"] = [q for q in sets[name] if q.get("kind") == kind]
    rank = {name: _rankings(kb, [q["query"] for q in qs], weights) for name, qs in sets.items()}
    drops: dict = {}  # (set, exact, title, max_df, candidates, overlap) -> per query, the chunks left out as copies

    def dropped(name, w, cand, overlap):
        if overlap is None:
            return None
        key = (name, *w, cand, overlap)
        if key not in drops:
            dense, lexical = rank[name]
            kb.duplicate_overlap = overlap
            drops[key] = [kb.copies([d[:cand], l[:cand]]) for d, l in zip(dense, lexical[w])]
            kb.duplicate_overlap = MIN_OVERLAP
        return drops[key]

    def run(name, k, w_lex, cand, w_exact, w_title, max_df, overlap):
        dense, lexical = rank[name]
        w = (w_exact, w_title, max_df)
        return _score(sets[name], _fuse(dense, lexical[w], k, w_lex, cand, dropped(name, w, cand, overlap)), source_of)

    from retrieval.duplicates import MIN_OVERLAP

    grid = []
    t0 = time.perf_counter()
    for k, w_lex, cand, (w_exact, w_title, max_df), overlap in itertools.product(
            [5, 10, 20, 40, 60, 100], [0.5, 1.0, 1.5, 2.0], [20, 50, 100], weights, [None, 0.3, 0.5, 0.7]):
        r = run("dev", k, w_lex, cand, w_exact, w_title, max_df, overlap)
        grid.append({"rrf_k": k, "lexical_weight": w_lex, "candidates": cand, "exact_weight": w_exact,
                     "title_weight": w_title, "max_df": max_df, "duplicate_overlap": overlap,
                     **{m: r[m] for m in ("recall@1", "recall@5", "recall@10", "mrr")}})
    print(f"grid: {len(grid)} settings on dev in {time.perf_counter() - t0:.0f} s", flush=True)
    # ties: the paper's k. The document-frequency cut-off (MAX_DF) never applies at this size.
    best = max(grid, key=lambda g: (round(g["mrr"], 6), g["recall@1"], g["recall@5"], g["rrf_k"] == 60))
    print("best on dev:", json.dumps(best), flush=True)
    paper = {"rrf_k": 60, "lexical_weight": 1.0, "candidates": 50, "exact_weight": 1.0, "title_weight": 1.0,
             "max_df": None, "duplicate_overlap": None}
    chosen = {k: best[k] for k in paper}
    no_collapse = max((g for g in grid if g["duplicate_overlap"] is None),
                      key=lambda g: (round(g["mrr"], 6), g["recall@1"], g["recall@5"], g["rrf_k"] == 60))
    no_collapse = {k: no_collapse[k] for k in paper}
    library = {"rrf_k": kb.rrf_k, "lexical_weight": kb.lexical_weight, "candidates": kb.candidates,
               "exact_weight": kb.exact_weight, "title_weight": kb.title_weight,
               "duplicate_overlap": kb.duplicate_overlap if kb.collapse_duplicates else None}
    lib_dev = run("dev", library["rrf_k"], library["lexical_weight"], library["candidates"], library["exact_weight"],
                  library["title_weight"], None, library["duplicate_overlap"])
    verdict = ("the same as chosen on dev" if all(library[k] == chosen[k] for k in library) else
               "tied with the best on dev" if round(lib_dev["mrr"], 6) == round(best["mrr"], 6) else
               "NOT among the best on dev")
    print("Retriever's defaults:", json.dumps(library), f"({verdict}: dev MRR {lib_dev['mrr']:.3f})", flush=True)
    out = {"queries_file": a.queries, "chosen_on_dev": chosen, "best_on_dev_without_collapse": no_collapse,
           "retriever_defaults": library, "retriever_defaults_on_dev": verdict, "grid_dev_top10": sorted(grid, key=lambda g: -g["mrr"])[:10], "sets": {}}
    for name, qs in sets.items():
        dense, lexical = rank[name]
        lib_w = library["exact_weight"], library["title_weight"]
        rows = {"dense": _library(kb, qs, "dense", False),
                "dense, copies left out": _library(kb, qs, "dense", True),
                "lexical (column weights 1, 1, 1)": _score(qs, lexical[1.0, 1.0, None], source_of),
                "lexical (column weights 1, %g, %g)" % lib_w: _library(kb, qs, "lexical", False),
                "lexical (column weights 1, %g, %g), copies left out" % lib_w: _library(kb, qs, "lexical", True),
                "hybrid, paper settings (k 60, equal weights, 50 per side)": run(name, *paper.values()),
                "hybrid, best on dev without leaving out copies": run(name, *no_collapse.values()),
                "hybrid, best on dev (ties: the paper's k)": run(name, *chosen.values()),
                "hybrid, Retriever.search (the default)": _library(kb, qs, "hybrid", type(kb).collapse_duplicates),
                "hybrid, Retriever.search, copies left out": _library(kb, qs, "hybrid", True),
                "hybrid, Retriever.search, no exact-token gate": _library(kb, qs, "hybrid", True, gate=False)}
        out["sets"][name] = {"queries": len(qs), **{m: {c: r[c] for c in ("recall@1", "recall@5", "recall@10", "mrr")}
                                                     for m, r in rows.items()},
                             "misses_of_the_default": [p for p in rows["hybrid, Retriever.search (the default)"]["per_query"]
                                                       if p["rank"] != 1]}
        print(f"\n{name}: {len(qs)} queries\n| mode | recall@1 | recall@5 | recall@10 | MRR |\n|---|---|---|---|---|")
        for m, r in rows.items():
            print(f"| {m} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | {r['recall@10']:.3f} | {r['mrr']:.3f} |")
    # End-to-end latency of one Retriever.search (query embedding included), per mode, same queries.
    texts = [q["query"] for q in sets["test"]]
    out["search_ms"] = {}
    for mode, collapse, gate in (("dense", False, False), ("lexical", False, False), ("hybrid", False, False),
                                 ("hybrid", True, False), ("hybrid", True, True)):
        kb.collapse_duplicates, kb.exact_gate = collapse, gate
        kb._shingles.clear()  # no chunk's shingles cached from the quality runs: each query pays for its own
        kb.search(texts[0], k=5, mode=mode)
        times = []
        for t in texts:
            t0 = time.perf_counter()
            kb.search(t, k=5, mode=mode)
            times.append((time.perf_counter() - t0) * 1000)
        out["search_ms"][mode + (", copies left out" if collapse else "") + (", exact-token gate" if gate else "")] = {
            "p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}
    del kb.collapse_duplicates, kb.exact_gate
    print("search latency, one query, k 5, embedding included:", json.dumps(out["search_ms"]))
    return out


def _windows(n: int, words: list[str], rng) -> list[str]:
    starts = rng.integers(0, len(words) - 200, n)
    return [" ".join(words[s:s + 200]) for s in starts]


def speed(a) -> dict:
    from retrieval.default_kb import keel_documents, python_topic_documents
    from retrieval.evaluate import read_queries
    from retrieval.lexical import MAX_DF
    from retrieval.store import DocStore

    words = " ".join(d.text for d in python_topic_documents() + keel_documents()).split()
    texts = [q["query"] for q in read_queries(Path(a.queries))]
    rng = np.random.default_rng(0)
    rows = []
    for n in map(int, a.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            store = DocStore(Path(tmp) / "docstore.sqlite", create=True)
            from retrieval.lexical import FTS_TABLE, lexical_columns

            # A throw-away table: no journal, no fsync, one transaction, a 1 GiB page cache and
            # FTS5's automerge off during the load (one 'optimize' merge at the end). With the
            # docstore's settings (WAL, a commit per 20,000 rows) 1M rows took more than 26 minutes.
            store.db.execute("PRAGMA journal_mode=OFF")
            store.db.execute("PRAGMA synchronous=OFF")
            store.db.execute("PRAGMA cache_size=-1048576")
            store.db.execute(f"INSERT INTO {FTS_TABLE} ({FTS_TABLE}, rank) VALUES ('automerge', 0)")
            store.db.commit()
            t = time.perf_counter()
            done = 0
            store.db.execute("BEGIN")
            while done < n:
                batch = _windows(min(50000, n - done), words, rng)
                store.db.executemany(f"INSERT INTO {FTS_TABLE} (rowid, words, exact, title) VALUES (?, ?, ?, ?)",
                                     [(done + j + 1, *lexical_columns(s, "Python reference")) for j, s in enumerate(batch)])
                done += len(batch)
                print(f"  {done:,}/{n:,} rows, {time.perf_counter() - t:.0f} s", flush=True)
            store.db.execute(f"INSERT INTO {FTS_TABLE} ({FTS_TABLE}) VALUES ('optimize')")
            store.db.commit()
            build = time.perf_counter() - t
            size_mb = (Path(tmp) / "docstore.sqlite").stat().st_size / 2**20
            store._n_fts = n  # only the lexical table is filled here, not ``chunks``
            lat = {}
            for max_df in (None, 50_000, MAX_DF, 2_000):
                store.lexical_search(texts[0], 100, max_df=max_df)
                times = []
                for q in texts:
                    t = time.perf_counter()
                    store.lexical_search(q, 100, max_df=max_df)
                    times.append((time.perf_counter() - t) * 1000)
                lat[max_df] = times
                print(f"  max_df {max_df}: p50 {np.percentile(times, 50):.1f} ms, p99 {np.percentile(times, 99):.1f} ms",
                      flush=True)
            store.close()
        x = rng.normal(size=(n, 384)).astype("float32")
        qv = rng.normal(size=(len(texts), 384)).astype("float32")
        nt = []
        for q in qv[:100]:
            t = time.perf_counter()
            s = x @ q
            np.argpartition(-s, 50)[:50]
            nt.append((time.perf_counter() - t) * 1000)
        del x
        rows.append({"n": n, "fts_build_s": build, "fts_mb": size_mb,
                     **{f"lexical_p50_ms_max_df_{d}": float(np.percentile(t, 50)) for d, t in lat.items()},
                     **{f"lexical_p99_ms_max_df_{d}": float(np.percentile(t, 99)) for d, t in lat.items()},
                     "numpy_dense_bruteforce_p50_ms": float(np.percentile(nt, 50)), "queries": len(texts)})
        print(json.dumps(rows[-1]), flush=True)
    return {"lexical_speed": rows}


def dense(a) -> dict:
    """The dense part of a hybrid search at N vectors: the default index (auto: IVF-Flat, nprobe 16)
    asked for k = 10 (a dense search) and for k = ``HYBRID_CANDIDATES`` (what hybrid fetches), on
    bench_retrieval.py's Gaussian-mixture vectors; baseline NumPy brute force, same run."""
    import bench_retrieval as br
    from retrieval.index import VectorIndex, choose_index_type
    from retrieval.options import HYBRID_CANDIDATES

    rows = []
    for n in map(int, a.sizes.split(",")):
        centers = np.random.default_rng(123).normal(size=(max(10, n // 500), br.DIM)).astype("float32") / np.sqrt(br.DIM)
        queries, x = br.mixture(200, 999, centers), br.mixture(n, 1, centers)
        kind = choose_index_type("auto", n)
        t = time.perf_counter()
        index = VectorIndex.create(kind, br.DIM, x)
        index.add(np.arange(n, dtype="int64"), x)
        build = time.perf_counter() - t
        row = {"n": n, "index": kind, "params": dict(index.params), "build_s": build}
        for k in (10, HYBRID_CANDIDATES):
            _, times = br.latencies(lambda q: index.search(q, k)[1], queries)
            row[f"p50_ms_k{k}"], row[f"p99_ms_k{k}"] = float(np.percentile(times, 50)), float(np.percentile(times, 99))
        _, times = br.latencies(br.numpy_search(x, HYBRID_CANDIDATES), queries)
        row["numpy_p50_ms"] = float(np.percentile(times, 50))
        rows.append(row)
        print(json.dumps(row), flush=True)
        del index, x
    return {"dense_speed": rows}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["quality", "speed", "dense"])
    p.add_argument("--queries", default=str(REPO / "bench" / "queries" / "default_kb_hybrid.jsonl"))
    p.add_argument("--fresh", default=",".join(str(REPO / "bench" / "queries" / f"default_kb_{n}.jsonl")
                                               for n in ("fresh", "fresh2", "fresh3")),
                   help="more query sets (comma-separated), written after the settings were chosen; "
                        "scored per set and per 'kind' (missing files are skipped)")
    p.add_argument("--sizes", default="100000,1000000")
    a = p.parse_args()
    out = {"quality": quality, "speed": speed, "dense": dense}[a.what](a)
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / f"hybrid_{a.what}.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
