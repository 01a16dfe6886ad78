"""``python -m retrieval eval INDEX QUERIES.jsonl``: recall@k and MRR.

Each query line: ``{"query": "...", "relevant": ["source id", ...]}``. A hit counts as relevant
when its source equals a listed id, or is a path ending in ``/`` + the id (``docs/a.md``).
"""
from __future__ import annotations

from pathlib import Path

from retrieval.errors import RetrievalError
from retrieval.loaders import jsonl_rows
from retrieval.options import check_int
from retrieval.retriever import Retriever


def read_queries(path: Path) -> list[dict]:
    if not path.is_file():
        raise RetrievalError(f"query file not found: {path}")
    out = []
    for lineno, row in jsonl_rows(path):
        if not isinstance(row, dict) or not isinstance(row.get("query"), str) or not isinstance(row.get("relevant"), list):
            raise RetrievalError(f"{path} line {lineno}: expected {{'query': str, 'relevant': [source ids]}}")
        out.append(row)
    if not out:
        raise RetrievalError(f"{path}: no queries")
    return out


def _matches(source: str, relevant: list[str]) -> bool:
    return any(source == r or source.endswith("/" + r) for r in relevant)


def evaluate(kb: Retriever, queries: list[dict], k: int = 10) -> dict:
    check_int("k", k, 1)
    results = kb.search_batch([q["query"] for q in queries], k=k)
    recall = rr = 0.0
    per_query = []
    for q, hits in zip(queries, results):
        # Unique sources in rank order: several chunks of one document count once.
        ranked = list(dict.fromkeys(h.source for h in hits))
        found = {r for r in q["relevant"] if any(_matches(s, [r]) for s in ranked)}
        first = next((i + 1 for i, s in enumerate(ranked) if _matches(s, q["relevant"])), None)
        recall += len(found) / len(q["relevant"]) if q["relevant"] else 0.0
        rr += 1.0 / first if first else 0.0
        per_query.append({"query": q["query"], "rank": first, "found": sorted(found)})
    n = len(queries)
    return {"queries": n, "k": k, f"recall@{k}": recall / n, "mrr": rr / n, "per_query": per_query}
