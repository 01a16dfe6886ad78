"""``python -m retrieval eval INDEX QUERIES.jsonl``: recall@1/5/10 and MRR for every search mode, one run.

Each query line: ``{"query": "...", "relevant": ["source id", ...]}`` (optionally ``"split"``:
``--split dev`` keeps only those lines). ``relevant`` lists the documents any one of which answers
the query. A hit counts as relevant when its source equals a listed id, or is a path ending in
``/`` + the id (``docs/a.md``). Several chunks of one document count once: hits are reduced to
their unique sources in rank order before scoring.

  recall@c  the fraction of queries with a relevant source among the first c sources (the "top-k
            retrieval accuracy" of Karpukhin et al. 2020, DPR; with one relevant id per query it is
            recall@c itself)
  MRR       the mean over queries of 1 / rank of the first relevant source (0 when none is in the
            first ``k``; Voorhees 1999)
"""
from __future__ import annotations

from pathlib import Path

from retrieval.errors import RetrievalError
from retrieval.loaders import jsonl_rows
from retrieval.options import SEARCH_MODES, check_int, check_mode
from retrieval.retriever import Retriever

CUTOFFS = (1, 5, 10)


def read_queries(path: Path, split: str | None = None) -> list[dict]:
    """The query lines of ``path`` (of ``split`` only, when given); errors name the file and line."""
    if not path.is_file():
        raise RetrievalError(f"query file not found: {path}")
    out = []
    for lineno, row in jsonl_rows(path):
        if not isinstance(row, dict) or not isinstance(row.get("query"), str) or not isinstance(row.get("relevant"), list) \
                or not all(isinstance(r, str) for r in row["relevant"]):
            raise RetrievalError(f"{path} line {lineno}: expected {{'query': str, 'relevant': [source ids]}}")
        if not row["query"].strip() or not row["relevant"] or not all(r.strip() for r in row["relevant"]):
            field = "query" if not row["query"].strip() else "relevant"
            raise RetrievalError(f"{path} line {lineno}: {field!r} is empty (a query and at least one relevant source, none blank)")
        if split is None or row.get("split") == split:
            out.append(row)
    if not out:
        raise RetrievalError(f"{path}: no queries" + (f" with split {split!r}" if split else ""))
    return out


def _matches(source: str, relevant: list[str]) -> bool:
    return any(source == r or source.endswith("/" + r) for r in relevant)


def score(queries: list[dict], results: list[list], k: int) -> dict:
    """recall@1/5/10 (those <= k, and k), MRR and each query's first relevant rank, for ranked hits."""
    cutoffs = sorted({c for c in CUTOFFS if c <= k} | {k})
    hits_at = dict.fromkeys(cutoffs, 0)
    rr = 0.0
    per_query = []
    for q, hits in zip(queries, results):
        ranked = list(dict.fromkeys(h.source for h in hits))[:k]
        first = next((i + 1 for i, s in enumerate(ranked) if _matches(s, q["relevant"])), None)
        for c in cutoffs:
            hits_at[c] += first is not None and first <= c
        rr += 1.0 / first if first else 0.0
        per_query.append({"query": q["query"], "rank": first, "top": ranked[:3]})
    n = len(queries)
    return {**{f"recall@{c}": hits_at[c] / n for c in cutoffs}, "mrr": rr / n, "per_query": per_query}


def evaluate(kb: Retriever, queries: list[dict], k: int = 10, modes: list[str] | None = None) -> dict:
    """Every mode of ``modes`` (default: dense, lexical, hybrid) on the same queries and index.

    Returns ``{"queries", "k", "default_mode", "modes": {mode: {"recall@1", ..., "mrr", "per_query"}}}``
    and, at the top level, the default mode's ``recall@k`` and ``mrr``."""
    check_int("k", k, 1)
    modes = [check_mode(m) for m in (modes or SEARCH_MODES)]
    # 3k chunks, so that about k distinct sources are ranked when a document has several chunks.
    texts = [q["query"] for q in queries]
    per_mode = {m: score(queries, kb.search_batch(texts, k=3 * k, mode=m), k) for m in modes}
    default = kb.default_mode if kb.default_mode in per_mode else modes[0]
    return {"queries": len(queries), "k": k, "default_mode": default, "modes": per_mode,
            f"recall@{k}": per_mode[default][f"recall@{k}"], "mrr": per_mode[default]["mrr"]}


def format_table(report: dict) -> str:
    """One line per mode: recall at each cut-off and MRR."""
    cols = [c for c in next(iter(report["modes"].values())) if c.startswith("recall@")] + ["mrr"]
    lines = [f"{report['queries']} queries" + (f" ({report['split']})" if report.get("split") else "")
             + f"; default mode {report['default_mode']}", f"{'mode':<8} " + " ".join(f"{c:>9}" for c in cols)]
    for mode, r in report["modes"].items():
        lines.append(f"{mode:<8} " + " ".join(f"{r[c]:>9.3f}" for c in cols))
    return "\n".join(lines)
