"""Document loaders: .txt, .md, .html/.htm, .pdf and .jsonl into ``Document`` objects.

Character offsets of chunks refer to ``Document.text``: the file's own text for .txt and .md, the
visible text for HTML (parsed with the standard library), the extracted page text for PDF (pypdf,
pages joined by blank lines), and each line's ``text`` field for JSONL.

Text files are decoded by ``retrieval.text.decode`` (byte-order marks, encoding detection with
charset-normalizer, binary files refused); JSONL lines are parsed here rather than with
``align.data.iter_jsonl`` so that document files of every format share that one decoder.
"""
from __future__ import annotations

import bisect
import html.parser
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from retrieval.errors import RetrievalError
from retrieval.text import Decoded, decode, strip_bom

SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".jsonl")


@dataclass
class Document:
    """A loaded document: a stable ``source`` id, a title, the text and its headings (character offset,
    heading).
    """

    source: str  # stable id: resolved path, "path#id" for JSONL rows, or a synthetic id
    title: str
    text: str
    headings: list[tuple[int, str]] = field(default_factory=list)  # (char offset, heading), sorted

    def heading_at(self, offset: int) -> str:
        """The heading of the section holding character ``offset`` ('' before the first heading)."""
        i = bisect.bisect_right([h[0] for h in self.headings], offset) - 1
        return self.headings[i][1] if i >= 0 else ""


_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


def markdown_document(source: str, text: str, fallback_title: str) -> Document:
    """A Markdown text as a ``Document``: its ATX headings, title the first heading (else ``fallback_title``)."""
    text = strip_bom(text)
    headings = [(m.start(), m.group(2).strip()) for m in _MD_HEADING.finditer(text)]
    title = next((h for _, h in headings), fallback_title)
    return Document(source, title, text, headings)


class _HTMLText(html.parser.HTMLParser):
    _SKIP = {"script", "style", "noscript", "template"}
    _BLOCK = {"p", "div", "br", "li", "tr", "section", "article", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "table"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.length = 0
        self.skip = 0
        self.title = ""
        self.in_title = False
        self.heading_start: int | None = None
        self.headings: list[tuple[int, str]] = []

    def _emit(self, s: str) -> None:
        self.parts.append(s)
        self.length += len(s)

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            self.skip += 1
        elif tag == "title":
            self.in_title = True
        elif tag in self._BLOCK:
            self._emit("\n")
        if re.fullmatch(r"h[1-6]", tag):
            self.heading_start = self.length

    def handle_endtag(self, tag):
        if tag in self._SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag == "title":
            self.in_title = False
        if re.fullmatch(r"h[1-6]", tag) and self.heading_start is not None:
            text = "".join(self.parts)[self.heading_start:].strip()
            if text:
                self.headings.append((self.heading_start, text))
            self.heading_start = None
        if tag in self._BLOCK:
            self._emit("\n")

    def handle_data(self, data):
        if self.in_title:
            self.title += data
        elif not self.skip:
            self._emit(data)


def html_document(source: str, raw: str, fallback_title: str) -> Document:
    """An HTML page as a ``Document``: visible text and headings; title from <title>, the first heading, or
    ``fallback_title``.
    """
    raw = strip_bom(raw)
    parser = _HTMLText()
    parser.feed(raw)
    parser.close()
    text = "".join(parser.parts)
    title = parser.title.strip() or next((h for _, h in parser.headings), fallback_title)
    return Document(source, title, text, parser.headings)


def pdf_document(path: Path) -> Document:
    """A PDF's text (pypdf), pages joined and each page a heading ('page N'). Raises RetrievalError for a file
    pypdf cannot read.
    """
    from pypdf import PdfReader

    try:
        reader = PdfReader(str(path))
        pages = [(page.extract_text() or "") for page in reader.pages]
        meta_title = (reader.metadata.title if reader.metadata else None) or ""
    except Exception as e:  # noqa: BLE001 - pypdf raises many types for broken files
        raise RetrievalError(f"{path}: cannot read PDF: {e}") from None
    text, headings = "", []
    for i, page in enumerate(pages):
        if i:
            text += "\n\n"
        headings.append((len(text), f"page {i + 1}"))
        text += page
    return Document(str(path), meta_title.strip() or path.stem, text, headings)


def jsonl_rows(path: Path, decoded: Decoded | None = None) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) per non-blank line; bad JSON is a ``RetrievalError`` naming the line."""
    if decoded is None:
        try:
            decoded = decode(path.read_bytes(), str(path))
        except OSError as e:
            raise RetrievalError(f"{path}: cannot read: {e}") from None
    for lineno, line in enumerate(decoded.text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise RetrievalError(f"{path} line {lineno}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise RetrievalError(f"{path} line {lineno}: JSON nested too deeply") from None


def jsonl_documents(path: Path, decoded: Decoded | None = None) -> Iterator[Document]:
    """One document per line: ``{"text": ..., "title"?: ..., "id"?: ...}``."""
    for lineno, row in jsonl_rows(path, decoded):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise RetrievalError(f"{path} line {lineno}: expected an object with a string 'text' field")
        doc_id = str(row.get("id", lineno))
        yield markdown_document(f"{path}#{doc_id}", row["text"], str(row.get("title") or f"{path.stem} #{doc_id}"))


@dataclass
class LoadedFile:
    """What ``load`` returns: the file's documents, the text encoding used and any warnings."""

    documents: list[Document]
    encoding: str | None  # the text encoding used (None for PDF)
    warnings: list[str] = field(default_factory=list)  # lossy decoding, encoding detected


def load(path: Path) -> LoadedFile:
    """A file's documents with the encoding they were decoded from and any warnings.

    Raises ``RetrievalError`` naming the file for an unreadable or malformed file and
    ``retrieval.text.BinaryFileError`` (a ``RetrievalError``) for one that is not text.
    """
    path = path.resolve()
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise RetrievalError(f"{path}: unsupported file type {suffix!r} (supported: {', '.join(SUFFIXES)})")
    if suffix == ".pdf":
        return LoadedFile([pdf_document(path)], None)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RetrievalError(f"{path}: cannot read: {e}") from None
    decoded = decode(raw, str(path), html=suffix in (".html", ".htm"))
    del raw
    if suffix == ".jsonl":
        docs = list(jsonl_documents(path, decoded))
    elif suffix in (".html", ".htm"):
        docs = [html_document(str(path), decoded.text, path.stem)]
    elif suffix in (".md", ".markdown"):
        docs = [markdown_document(str(path), decoded.text, path.stem)]
    else:
        docs = [Document(str(path), path.stem, decoded.text)]
    return LoadedFile(docs, decoded.encoding, decoded.warnings)


def load_file(path: Path) -> list[Document]:
    """The documents of one file (``load(path).documents``). Raises RetrievalError (or BinaryFileError) for
    unreadable files.
    """
    return load(path).documents


def expand_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given, and every supported file under given folders (sorted, recursive)."""
    return [f for _, f in expand_named(paths)]


def expand_named(paths: list[str | Path]) -> list[tuple[str, Path]]:
    """(the name as given, file) for files as given and every supported file under given folders."""
    out: list[tuple[str, Path]] = []
    for name in paths:
        p = Path(name).expanduser()
        if p.is_dir():
            out.extend((str(name), f) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in SUFFIXES)
        elif p.is_file():
            out.append((str(name), p))
        else:
            raise RetrievalError(f"document path not found: {name}")
    return out


def unique_files(named: list[tuple[str, Path]]) -> dict[str, tuple[Path, list[str]]]:
    """One entry per file however it was named: relative or absolute, through a folder, a symlink or a
    hard link. Keys are resolved paths (the first name seen of a hard-linked file); values hold the
    resolved path and every name the file was reached by, in order."""
    by_inode: dict[tuple[int, int], str] = {}
    out: dict[str, tuple[Path, list[str]]] = {}
    for name, f in named:
        real = f.resolve()
        st = real.stat()
        key = by_inode.setdefault((st.st_dev, st.st_ino), str(real))
        entry = out.setdefault(key, (Path(key), []))
        if name not in entry[1]:
            entry[1].append(name)
    return out
