"""Bytes of a document file to text: byte-order marks, encoding detection, binary files.

Every text reader of ``retrieval`` (Markdown, HTML, plain text, JSONL) goes through ``decode``:

* a byte-order mark (UTF-8, UTF-16, UTF-32) selects the encoding and is not part of the text;
* UTF-8 is tried first; text that is mostly valid UTF-8 with a few bad bytes stays UTF-8 and the
  bad bytes become U+FFFD, counted as *lossy*;
* anything else is detected with charset-normalizer (a maintained library; we do not guess
  encodings ourselves). Short texts often fit several legacy code pages equally well; among the
  equally good candidates Windows-1252 wins, the fallback the WHATWG Encoding standard uses for
  unlabelled legacy text. An HTML ``<meta charset>`` is honoured first when it decodes the bytes;
* bytes that no encoding explains, or text full of control characters, are a binary file:
  ``BinaryFileError``, which ``Retriever.add`` turns into a warning and a skipped file.
"""
from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field

from retrieval.errors import RetrievalError

_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
# C0 controls other than tab, newline, vertical tab, form feed, carriage return and escape; and DEL.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.I)
BINARY_CONTROL_FRACTION = 0.01  # text files have (almost) none; 1% is far above any text we saw


class BinaryFileError(RetrievalError):
    """The file's bytes are not text in any encoding (an image, archive or executable named .txt)."""


@dataclass
class Decoded:
    """A decoded text file: the text, the codec used, bytes replaced by U+FFFD and warnings."""

    text: str
    encoding: str  # Python codec name; "utf-8-sig" when the file began with a UTF-8 byte-order mark
    replaced: int = 0  # bytes that could not be decoded and became U+FFFD
    warnings: list[str] = field(default_factory=list)


def strip_bom(text: str) -> str:
    """Text without a leading byte-order mark (U+FEFF), which is no content."""
    return text[1:] if text.startswith("\ufeff") else text


def decode(raw: bytes, name: str, html: bool = False) -> Decoded:
    """Decode a document's bytes; ``name`` (the file) appears in warnings and errors."""
    out = _decode(raw, html)
    if out is None:
        raise BinaryFileError(f"{name}: not a text file (no text encoding fits its bytes); skipped")
    out.text = strip_bom(out.text)
    if out.text and len(_CONTROL.findall(out.text)) > BINARY_CONTROL_FRACTION * len(out.text):
        raise BinaryFileError(f"{name}: not a text file (control characters decoded as {out.encoding}); skipped")
    if out.encoding not in ("utf-8", "utf-8-sig", "ascii"):
        out.warnings.append(f"{name}: not UTF-8; decoded as {out.encoding} (detected)")
    if out.replaced:
        out.warnings.append(f"{name}: decoding was lossy: {out.replaced} undecodable byte sequence(s) "
                            f"became U+FFFD (decoded as {out.encoding})")
    return out


def _decode(raw: bytes, html: bool) -> Decoded | None:
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            try:
                return Decoded(raw.decode(codec), codec)
            except UnicodeDecodeError:
                break  # a BOM followed by something else: detect
    try:
        return Decoded(raw.decode("utf-8"), "utf-8")
    except UnicodeDecodeError:
        pass
    lossy = raw.decode("utf-8", errors="replace")
    bad = lossy.count("\ufffd") - raw.count("\ufffd".encode())  # minus U+FFFD already in the file
    valid_multibyte = sum(1 for ch in lossy if ord(ch) > 127 and ch != "\ufffd")
    if valid_multibyte > bad:  # UTF-8 with a few damaged bytes, not another encoding
        return Decoded(lossy, "utf-8", replaced=bad)
    if html:
        m = _META_CHARSET.search(raw[:4096])
        if m:
            try:
                codec = codecs.lookup(m.group(1).decode("ascii")).name
                return Decoded(raw.decode(codec), codec)
            except (LookupError, UnicodeDecodeError):
                pass
    return _detect(raw)


def _detect(raw: bytes) -> Decoded | None:
    from charset_normalizer import from_bytes

    matches = from_bytes(raw)
    best = matches.best()
    if best is None:
        return None
    codec = best.encoding
    tied = [m for m in matches if m.chaos == best.chaos and m.coherence == best.coherence]
    if codec != "cp1252" and any("cp1252" in (m.encoding, *m.could_be_from_charset) for m in tied):
        codec = "cp1252"
    try:
        return Decoded(raw.decode(codec), codec)
    except UnicodeDecodeError:  # detection looks at samples; a later byte may not fit
        text = raw.decode(codec, errors="replace")
        return Decoded(text, codec, replaced=text.count("\ufffd"))
