"""Retrieval figures, each against a baseline in the same run.

1. Embedding throughput on CPU (bundled all-MiniLM-L6-v2, real chunks of the Python reference):
   batch 64 vs one text at a time.
2. Single-query search latency p50/p99 and recall@10 at several corpus sizes for each FAISS index
   type, against exact NumPy brute force (matrix-vector product + argpartition) on the same vectors.
   Vectors: 384-d, L2-normalised, drawn from a Gaussian mixture (clusters like real embeddings,
   cosine to their centre about 0.8, one cluster per 500 vectors); queries from the same mixture,
   not in the corpus.

    python bench/bench_retrieval.py [--sizes 10000,100000,1000000] [--queries 200]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np

from retrieval.index import VectorIndex

REPO = Path(__file__).resolve().parent.parent
DIM = 384


def mixture(n: int, seed: int, centers: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, len(centers), n)] + 0.7 * rng.normal(size=(n, DIM)).astype("float32") / np.sqrt(DIM)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")


def embedding_throughput(n_texts: int = 256) -> dict:
    from retrieval.default_kb import python_topic_documents
    from retrieval.chunking import chunk_document
    from retrieval.embeddings import Embedder

    emb = Embedder()
    texts = [c.text for d in python_topic_documents() for c in chunk_document(d, emb.tokenizer)][:n_texts]
    emb.encode(texts[:8])  # warm-up
    t = time.perf_counter()
    emb.model.encode(texts[:32], batch_size=1, normalize_embeddings=True)
    single = 32 / (time.perf_counter() - t)
    t = time.perf_counter()
    emb.encode(texts)
    batched = len(texts) / (time.perf_counter() - t)
    return {"chunks": len(texts), "batch1_chunks_per_s": single, "batch64_chunks_per_s": batched,
            "ratio": batched / single}


def latencies(fn, queries: np.ndarray) -> tuple[np.ndarray, list[float]]:
    out, times = [], []
    for q in queries:
        t = time.perf_counter()
        out.append(fn(q[None, :]))
        times.append((time.perf_counter() - t) * 1000)
    return np.concatenate(out), times


def numpy_search(x: np.ndarray, k: int):
    def fn(q):
        scores = x @ q[0]
        top = np.argpartition(-scores, k)[:k]
        return top[np.argsort(-scores[top])][None, :]
    return fn


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--skip-embedding", action="store_true")
    p.add_argument("--kinds", default="flat,ivf-flat,ivf-pq,hnsw")
    a = p.parse_args()
    results: dict = {"faiss_threads": faiss.omp_get_max_threads()}
    if not a.skip_embedding:
        results["embedding"] = embedding_throughput()
        print(json.dumps(results["embedding"]), flush=True)
    rows = []
    for n in map(int, a.sizes.split(",")):
        # One cluster per 500 vectors: topics grow with the corpus.
        centers = np.random.default_rng(123).normal(size=(max(10, n // 500), DIM)).astype("float32") / np.sqrt(DIM)
        queries = mixture(a.queries, 999, centers)
        x = mixture(n, 1, centers)
        ids = np.arange(n, dtype="int64")
        truth, t_np = latencies(numpy_search(x, 10), queries)
        rows.append({"n": n, "index": "numpy brute force (baseline)", "build_s": 0.0, "recall@10": 1.0,
                     "p50_ms": float(np.percentile(t_np, 50)), "p99_ms": float(np.percentile(t_np, 99))})
        print(json.dumps(rows[-1]), flush=True)
        for kind in a.kinds.split(","):
            t = time.perf_counter()
            index = VectorIndex.create(kind, DIM, x)
            index.add(ids, x)
            build = time.perf_counter() - t
            sweep = {"ivf-flat": ("nprobe", [8, 16, 32, 64]), "ivf-pq": ("nprobe", [32]),
                     "hnsw": ("ef_search", [32, 64, 128, 256])}.get(kind, (None, [None]))
            for value in sweep[1]:
                if value is not None:
                    index.params[sweep[0]] = value
                    index.apply_search_params()
                variants = [(kind, lambda q: index.search(q, 10)[1])]
                if kind == "ivf-pq":
                    # PQ codes are approximate; re-rank 40 candidates with the exact vectors, as
                    # Retriever.search does with the vectors in its docstore.
                    def rerank(q):
                        cand = index.search(q, 40)[1][0]
                        cand = cand[cand >= 0]
                        return cand[np.argsort(-(x[cand] @ q[0]))[:10]][None, :]
                    variants.append(("ivf-pq + exact re-rank of 40", rerank))
                for label, fn in variants:
                    got, times = latencies(fn, queries)
                    recall = float(np.mean([len(set(g) & set(tr)) / 10 for g, tr in zip(got, truth)]))
                    rows.append({"n": n, "index": label, "params": dict(index.params), "build_s": build,
                                 "recall@10": recall, "p50_ms": float(np.percentile(times, 50)),
                                 "p99_ms": float(np.percentile(times, 99))})
                    print(json.dumps(rows[-1]), flush=True)
            del index
    for r in rows:
        base = next(b for b in rows if b["n"] == r["n"] and b["build_s"] == 0.0 and "params" not in b)
        r["speedup_p50_vs_numpy"] = base["p50_ms"] / r["p50_ms"]
    results["search"] = rows
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "retrieval.json").write_text(json.dumps(results, indent=2))
    print("\n| vectors | index | params | build s | recall@10 | p50 ms | p99 ms | p50 speed-up vs NumPy |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['index']} | {r.get('params', '')} | {r['build_s']:.1f} | {r['recall@10']:.3f} | "
              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['speedup_p50_vs_numpy']:.1f}x |")


if __name__ == "__main__":
    main()
