"""Range checks for retrieval options, shared by the Python API and the CLI.

Every check raises ``RetrievalError`` naming the option and the value, so a bad value fails where
it is given instead of deep inside FAISS or as an empty result.
"""
from __future__ import annotations

import math

from retrieval.errors import RetrievalError

INDEX_PARAM_KEYS = ("nlist", "nprobe", "m", "M", "ef_construction", "ef_search")
SEARCH_MODES = ("dense", "lexical", "hybrid")
# Hybrid was measured best on the default knowledge base's query set (bench/RESULTS.md, "Hybrid search").
DEFAULT_MODE = "hybrid"
HYBRID_CANDIDATES = 100  # chunks from each of dense and lexical that reciprocal rank fusion ranks (tuned on dev)


def check_mode(mode, name: str = "mode") -> str:
    """One of ``SEARCH_MODES``."""
    if mode not in SEARCH_MODES:
        raise RetrievalError(f"{name} must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
    return mode


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value, minimum: int) -> int:
    """``value`` if it is an int >= ``minimum``; else RetrievalError naming ``name``."""
    if not _is_int(value) or value < minimum:
        raise RetrievalError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_chunking(chunk_tokens, overlap, chunk_name: str = "chunk_tokens", overlap_name: str = "overlap") -> None:
    """``chunk_tokens`` >= 1 and 0 <= ``overlap`` < ``chunk_tokens`` (each step advances by the difference)."""
    check_int(chunk_name, chunk_tokens, 1)
    check_int(overlap_name, overlap, 0)
    if overlap >= chunk_tokens:
        raise RetrievalError(f"{overlap_name}={overlap} must be smaller than {chunk_name}={chunk_tokens} "
                             "(each chunk starts chunk_tokens - overlap tokens after the previous one)")


def check_search(k, mmr_lambda=None, min_score=None, fetch_k=None, names: dict | None = None) -> None:
    """k >= 1; MMR lambda in [0, 1]; min_score a cosine similarity in [-1, 1]; fetch_k >= k."""
    n = {"k": "k", "mmr_lambda": "mmr_lambda", "min_score": "min_score", "fetch_k": "fetch_k", **(names or {})}
    check_int(n["k"], k, 1)
    if mmr_lambda is not None and not (_is_number(mmr_lambda) and 0.0 <= mmr_lambda <= 1.0):
        raise RetrievalError(f"{n['mmr_lambda']} must be a number between 0 and 1 (1 = relevance only), "
                             f"got {mmr_lambda!r}")
    if min_score is not None and not (_is_number(min_score) and -1.0 <= min_score <= 1.0):
        raise RetrievalError(f"{n['min_score']} must be a cosine similarity between -1 and 1, got {min_score!r}")
    if fetch_k is not None and (not _is_int(fetch_k) or fetch_k < k):
        raise RetrievalError(f"{n['fetch_k']} must be an integer >= k={k}, got {fetch_k!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_index_params(params: dict, dim: int | None = None) -> dict:
    """Known keys with positive integer values; HNSW's M >= 2; IVF-PQ's m divides the dimension."""
    if not isinstance(params, dict):
        raise RetrievalError(f"index parameters must be a mapping, got {params!r}")
    for key, value in params.items():
        if key not in INDEX_PARAM_KEYS:
            raise RetrievalError(f"unknown index parameter {key!r}; known: {', '.join(INDEX_PARAM_KEYS)}")
        check_int(f"index parameter {key}", value, 2 if key == "M" else 1)
    if dim is not None and "m" in params and dim % params["m"]:
        raise RetrievalError(f"index parameter m={params['m']} must divide the embedding dimension {dim}")
    return params
