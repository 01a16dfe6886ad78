"""Token-based chunking with overlap, keeping character offsets into the document text.

Chunks are cut on the embedding model's own tokenizer (a fast tokenizer's offset mapping), so a
chunk never exceeds what the model reads; its text is exactly ``document.text[start:end]``.
"""
from __future__ import annotations

from dataclasses import dataclass

from retrieval.loaders import Document
from retrieval.options import check_chunking


@dataclass
class Chunk:
    source: str
    title: str
    heading: str
    start: int
    end: int
    text: str


def chunk_document(doc: Document, tokenizer, chunk_tokens: int = 200, overlap: int = 40) -> list[Chunk]:
    check_chunking(chunk_tokens, overlap)
    if not doc.text.strip():
        return []
    enc = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets = [o for o in enc["offset_mapping"] if o[1] > o[0]]
    if not offsets:
        return []
    chunks = []
    step = chunk_tokens - overlap
    for first in range(0, len(offsets), step):
        window = offsets[first:first + chunk_tokens]
        start, end = window[0][0], window[-1][1]
        text = doc.text[start:end]
        if text.strip():
            chunks.append(Chunk(doc.source, doc.title, doc.heading_at(start), start, end, text))
        if first + chunk_tokens >= len(offsets):
            break
    return chunks
