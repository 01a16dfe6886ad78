"""Passages held by two documents: search results prefer the more specific (smaller) document.

Knowledge bases repeat themselves: a manual's "all statements" page holds each statement's own
page word for word, a combined PDF holds its chapters, a README copies a section of docs/. A
question about one of those sections then finds the same passage twice, and the umbrella copy
(a chunk of the large document) often ranks first, so the answer is attributed to a page about
everything. In Python's reference, ``compound`` holds ``if``, ``for``, ``try``, ``function``, ...
and ``specialnames`` holds ``customization``, ``numeric-types``, ... in full.

At search time, among a query's candidate chunks, a chunk is a **copy** when at least
``min_overlap`` of its word 8-grams (shingles, Broder 1997) also occur in the candidate chunks of
one *smaller* document (fewer chunks). Copies are left out of each ranking before the rankings
are fused and cut to k, so the smaller document's own chunk stands for the passage. Chunks are
compared by shingles, not by position, so documents chunked at different offsets still match.
Documents of the same size never displace each other (two copies of one file both stay).

Hand-written (about 40 lines) rather than a near-duplicate library (datasketch's MinHash LSH):
the comparison runs over at most a few hundred candidate texts per query, where exact shingle
sets are cheap, and it needs containment (a passage inside a larger chunk), which MinHash's
Jaccard estimate does not give directly.
"""
from __future__ import annotations

import re
import zlib
from collections import defaultdict

SHINGLE_WORDS = 8
SAMPLE = 4  # one window in about four is compared (see ``shingles``)
# Chosen on the dev half of bench/queries/default_kb_hybrid.jsonl (bench/RESULTS.md, "Hybrid search").
MIN_OVERLAP = 0.3  # 0.5 until the layout fix (LEXICAL_VERSION 7); the grid then chose 0.3 (0.5 within 0.0003 MRR)
_WORD = re.compile(r"\w+")


def shingles(text: str, n: int = SHINGLE_WORDS, sample: int = SAMPLE) -> frozenset[int]:
    """Hashes of the text's overlapping ``n``-word windows, words lower-cased, keeping those whose
    hash is divisible by ``sample`` (Broder's "mod m" sampling: the same windows are kept in every
    text, so containment is estimated from a quarter of them at a quarter of the cost); the
    smallest hash is kept when none is. One window for a text shorter than ``n`` words, none for a
    text without words. Hashes are CRC-32s of the windows' words: the same in every process, so
    results do not change from run to run (Python's ``hash`` of a string does)."""
    words = _WORD.findall(text.lower())
    if len(words) <= n:
        return frozenset([zlib.crc32(" ".join(words).encode())]) if words else frozenset()
    every = {zlib.crc32(" ".join(words[i:i + n]).encode()) for i in range(len(words) - n + 1)}
    kept = frozenset(h for h in every if h % sample == 0)
    return kept or frozenset([min(every)])


def copies(passages: dict[int, tuple[str, frozenset[int]]], doc_chunks: dict[str, int],
           min_overlap: float = MIN_OVERLAP) -> set[int]:
    """The chunk ids among ``passages`` (id -> (document source, shingles)) whose shingles are at
    least ``min_overlap`` (0-1) covered by the passages of one document with fewer chunks
    (``doc_chunks``: source -> its chunk count in the index)."""
    docs_of: dict[int, set[str]] = defaultdict(set)  # shingle -> documents among the passages holding it
    for source, sh in passages.values():
        for s in sh:
            docs_of[s].add(source)
    out = set()
    for i, (source, sh) in passages.items():
        size = doc_chunks.get(source, 0)
        if not sh or size <= 1:
            continue
        counts: dict[str, int] = defaultdict(int)
        for s in sh:
            holders = docs_of[s]
            if len(holders) > 1:
                for other in holders:
                    counts[other] += 1
        need = min_overlap * len(sh)
        if any(n >= need and other != source and doc_chunks.get(other, 0) < size for other, n in counts.items()):
            out.add(i)
    return out
