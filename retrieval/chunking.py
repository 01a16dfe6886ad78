"""Token-based chunking with overlap, keeping character offsets into the document text.

Chunks are cut on the embedding model's own tokenizer (a fast tokenizer's offset mapping); a
chunk's text is exactly ``document.text[start:end]``. Two guarantees:

* **Fits the model.** A chunk's text is tokenized again the way the embedder will see it, with the
  model's special tokens ([CLS] and [SEP] for MiniLM); a window that no longer fits ``max_length``
  (a word cut at the window's edge can re-tokenize longer) is shortened until it does, and the
  next window starts so that no text is skipped.
* **Memory flat in the document's size.** The text is tokenized in blocks of about
  ``BLOCK_CHARS`` characters cut at whitespace, not in one call, and chunks are yielded one by one:
  a 20 MB file no longer needs gigabytes of token offsets (bench/RESULTS.md, "Retrieval build").
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterator

from retrieval.loaders import Document
from retrieval.options import check_chunking

BLOCK_CHARS = 100_000


@dataclass
class Chunk:
    """A piece of a document: ``start``/``end`` are character offsets into the document's text, ``heading``
    the section it falls in.
    """

    source: str
    title: str
    heading: str
    start: int
    end: int
    text: str


def special_tokens(tokenizer) -> int:
    """How many special tokens the tokenizer adds around one text (2 for BERT-style [CLS] ... [SEP])."""
    return int(tokenizer.num_special_tokens_to_add(pair=False))


def _offsets(tokenizer, text: str, base: int) -> list[tuple[int, int]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return [(a + base, b + base) for a, b in enc["offset_mapping"] if b > a]


def _length(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])


def iter_chunks(doc: Document, tokenizer, chunk_tokens: int = 200, overlap: int = 40,
                max_length: int | None = None) -> Iterator[Chunk]:
    """Chunks of at most ``chunk_tokens`` tokens, consecutive ones sharing ``overlap`` tokens.

    ``max_length``: the model's window including special tokens (256 for all-MiniLM-L6-v2); every
    chunk re-tokenizes to at most that many. ``RetrievalError`` for out-of-range options, including
    ``chunk_tokens`` plus the special tokens exceeding ``max_length``.
    """
    check_chunking(chunk_tokens, overlap)
    if max_length is not None:
        check_window(chunk_tokens, max_length, tokenizer)
    text = doc.text
    if not text.strip():
        return
    heading_starts = [h[0] for h in doc.headings]
    step = chunk_tokens - overlap
    n, pos, block = len(text), 0, BLOCK_CHARS
    while pos < n:
        end = min(n, pos + block)
        if end < n:  # cut at whitespace so that no token straddles two blocks
            cut = max(text.rfind(" ", pos, end), text.rfind("\n", pos, end))
            end = cut if cut > pos else end
        last = end >= n
        offsets = _offsets(tokenizer, text[pos:end], pos)
        if not last and len(offsets) < chunk_tokens + step + 1:
            block *= 2  # too few tokens to place a whole window and the next one's start: read more
            continue
        if not offsets:
            return
        first = 0
        while True:
            if not last and first + chunk_tokens >= len(offsets):
                break  # this window may continue in the next block
            size = min(chunk_tokens, len(offsets) - first)
            start = offsets[first][0]
            while True:
                stop = offsets[first + size - 1][1]
                if max_length is None or size == 1 or _length(tokenizer, text[start:stop]) <= max_length:
                    break
                size -= 1
            if text[start:stop].strip():
                i = bisect.bisect_right(heading_starts, start) - 1
                yield Chunk(doc.source, doc.title, doc.headings[i][1] if i >= 0 else "", start, stop, text[start:stop])
            if last and first + size >= len(offsets):
                return
            first += min(step, max(1, size - overlap))
        pos, block = offsets[first][0], BLOCK_CHARS


PASSAGE_FORMATS = ("text", "title")
# How a chunk is written for the embedding model: "title" puts the document's title and the
# chunk's section heading on a line before its text (so a chunk from the middle of a section still
# says what it is about); "text" embeds the text alone (indexes built before Keel recorded
# ``passage_format`` in the manifest). On the default knowledge base's dev questions "title" lifted
# dense recall@1 from 0.77 to 0.80 (bench/RESULTS.md, "Hybrid search").
DEFAULT_PASSAGE_FORMAT = "title"


def passage_text(chunk: Chunk, passage_format: str = DEFAULT_PASSAGE_FORMAT) -> str:
    """What the embedding model reads for ``chunk``: its text, after a line "title - heading" when
    ``passage_format`` is "title" (a heading already in the title, or empty, is left out). The
    line adds about 10-20 tokens; a chunk that then exceeds the model's window loses its tail."""
    if passage_format == "text":
        return chunk.text
    head = [x.strip() for x in (chunk.title, chunk.heading) if x and x.strip()]
    if len(head) == 2 and head[1] in head[0]:
        head = head[:1]
    return (" - ".join(head) + "\n" + chunk.text) if head else chunk.text


def chunk_document(doc: Document, tokenizer, chunk_tokens: int = 200, overlap: int = 40,
                   max_length: int | None = None) -> list[Chunk]:
    """``iter_chunks`` as a list: chunks of at most ``chunk_tokens`` tokens overlapping by ``overlap``. Raises
    RetrievalError for out-of-range options.
    """
    return list(iter_chunks(doc, tokenizer, chunk_tokens, overlap, max_length))


def check_window(chunk_tokens: int, max_length: int, tokenizer, option: str = "chunk_tokens",
                 model: str = "the embedding model") -> None:
    """Refuse a chunk size that cannot fit the model's window once its special tokens are added."""
    from retrieval.errors import RetrievalError

    special = special_tokens(tokenizer)
    if chunk_tokens + special > max_length:
        raise RetrievalError(f"{option}={chunk_tokens} cannot fit {model}'s window of {max_length} tokens, "
                             f"which includes {special} special tokens: use at most {max_length - special}")
