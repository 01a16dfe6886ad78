"""FAISS index types behind one small interface: exact, IVF-Flat, IVF-PQ and HNSW.

Vectors are L2-normalised and compared by inner product (cosine similarity). Every type maps
FAISS ids to docstore chunk ids. HNSW cannot delete: a removed chunk becomes a tombstone that
search skips, until ``rebuild`` makes a fresh graph.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import faiss
import numpy as np

from retrieval.errors import RetrievalError

INDEX_TYPES = ("flat", "ivf-flat", "ivf-pq", "hnsw")
AUTO_FLAT_LIMIT = 50_000  # below this many chunks exact search is fast enough (bench/RESULTS.md)


def choose_index_type(kind: str, n_vectors: int) -> str:
    """``auto`` -> flat below ``AUTO_FLAT_LIMIT`` vectors, else ivf-flat; other kinds as given. Raises
    RetrievalError for an unknown kind.
    """
    if kind == "auto":
        return "flat" if n_vectors < AUTO_FLAT_LIMIT else "ivf-flat"
    if kind not in INDEX_TYPES:
        raise RetrievalError(f"unknown index type {kind!r}; choose auto or one of {', '.join(INDEX_TYPES)}")
    return kind


def default_params(kind: str, n_vectors: int, dim: int) -> dict:
    """Default FAISS parameters of ``kind`` for ``n_vectors`` of ``dim``: nlist/nprobe (IVF), m (PQ sub-
    quantizers), M/ef_construction/ef_search (HNSW).
    """
    if kind.startswith("ivf"):
        nlist = max(1, min(int(4 * math.sqrt(max(n_vectors, 1))), max(1, n_vectors // 39), 65536))
        # 16 probes: recall@10 1.0 and p50 1.2 ms at 1M vectors in bench/RESULTS.md.
        params = {"nlist": nlist, "nprobe": min(nlist, 16)}
        if kind == "ivf-pq":
            params["m"] = next(m for m in (dim // 8, dim // 4, dim // 16, 1) if m and dim % m == 0)
        return params
    if kind == "hnsw":
        return {"M": 32, "ef_construction": 100, "ef_search": 128}
    return {}


REQUIRED_PARAMS = {"flat": (), "ivf-flat": ("nlist", "nprobe"), "ivf-pq": ("nlist", "nprobe", "m"),
                   "hnsw": ("M", "ef_construction", "ef_search")}


def kind_of(index: faiss.Index) -> str:
    """The Keel index type of a FAISS index read from disk ("unknown" for anything else)."""
    if isinstance(index, faiss.IndexIDMap2):
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexHNSWFlat):
            return "hnsw"
        if isinstance(inner, faiss.IndexFlat):
            return "flat"
    if isinstance(index, faiss.IndexIVFPQ):
        return "ivf-pq"
    if isinstance(index, faiss.IndexIVFFlat):
        return "ivf-flat"
    return "unknown"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class VectorIndex:
    """A FAISS inner-product index (flat, IVF-flat, IVF-PQ or HNSW) with int64 ids, its kind, dimension and
    parameters.
    """

    def __init__(self, kind: str, dim: int, index: faiss.Index, params: dict):
        self.kind, self.dim, self.index, self.params = kind, dim, index, params
        self.apply_search_params()

    @classmethod
    def create(cls, kind: str, dim: int, train_vectors: np.ndarray, params: dict | None = None) -> "VectorIndex":
        """A new empty index of ``kind``; IVF kinds are trained on ``train_vectors`` (n, dim) float32.
        ``params`` override ``default_params``.
        """
        params = {**default_params(kind, len(train_vectors), dim), **(params or {})}
        if kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        elif kind in ("ivf-flat", "ivf-pq"):
            quantizer = faiss.IndexFlatIP(dim)
            if kind == "ivf-flat":
                index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
            else:
                index = faiss.IndexIVFPQ(quantizer, dim, params["nlist"], params["m"], 8, faiss.METRIC_INNER_PRODUCT)
            if len(train_vectors) < params["nlist"]:
                raise RetrievalError(f"{kind} needs at least nlist={params['nlist']} vectors to train; "
                                     f"got {len(train_vectors)} (use index type flat)")
            sample = train_vectors
            limit = max(params["nlist"] * 40, 20_000)  # k-means needs ~40 points per list; more only costs time
            if len(sample) > limit:
                sample = sample[np.random.default_rng(0).choice(len(sample), limit, replace=False)]
            index.train(np.ascontiguousarray(sample))
        elif kind == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = params["ef_construction"]
            index = faiss.IndexIDMap2(inner)
        else:
            raise RetrievalError(f"unknown index type {kind!r}")
        return cls(kind, dim, index, params)

    def apply_search_params(self) -> None:
        """Set the search-time parameters (IVF ``nprobe``, HNSW ``ef_search``) from ``params`` on the FAISS
        index.
        """
        inner = faiss.downcast_index(self.index.index) if isinstance(self.index, faiss.IndexIDMap2) else self.index
        if self.kind.startswith("ivf"):
            faiss.extract_index_ivf(self.index).nprobe = self.params["nprobe"]
        elif self.kind == "hnsw":
            inner.hnsw.efSearch = self.params["ef_search"]

    @property
    def ntotal(self) -> int:
        """Number of vectors in the index."""
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add ``vectors`` (n, dim) float32 under ``ids`` (n,) int64."""
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype="float32"), np.asarray(ids, dtype="int64"))

    def remove(self, ids: list[int]) -> bool:
        """Delete ids; returns False where the type cannot (HNSW), leaving tombstones to the caller."""
        if not ids:
            return True
        if self.kind == "hnsw":
            return False
        self.index.remove_ids(np.asarray(ids, dtype="int64"))
        return True

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``queries`` (q, dim) float32 -> ``(scores, ids)``, each (q, k') with k' = k capped to the index
        size; id -1 where fewer are found.
        """
        k = max(1, min(k, max(self.ntotal, 1)))
        return self.index.search(np.ascontiguousarray(queries, dtype="float32"), k)

    def save(self, path: Path) -> None:
        """Write the index to ``path`` atomically (a temporary file, then ``os.replace``)."""
        tmp = path.with_suffix(".tmp")
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, kind: str, dim: int, params: dict) -> "VectorIndex":
        """Read an index written by ``save``. Raises RetrievalError when the file is missing or damaged, or
        holds another dimension than ``dim`` or another kind than ``kind``.
        """
        if not path.is_file():
            raise RetrievalError(f"index file {path} is missing")
        try:
            index = faiss.read_index(str(path))
        except Exception as e:  # noqa: BLE001 - FAISS raises RuntimeError with C++ text
            raise RetrievalError(f"index file {path} is damaged: {str(e).splitlines()[0][:200]}") from None
        if index.d != dim:
            raise RetrievalError(f"index file {path} holds {index.d}-d vectors; the manifest says {dim}")
        actual = kind_of(index)
        if actual != kind:
            raise RetrievalError(f"index file {path} holds a {actual} index but the manifest says index_type "
                                 f"{kind!r}; set it back to {actual!r} or run `python -m retrieval rebuild "
                                 f"{path.parent}`")
        missing = [p for p in REQUIRED_PARAMS[kind] if p not in params]
        if missing:
            raise RetrievalError(f"manifest of {path.parent} is damaged: index_params lacks {', '.join(missing)} "
                                 f"for index type {kind!r}")
        return cls(kind, dim, index, params)
