"""Document loaders: .txt, .md, .html/.htm, .pdf and .jsonl into ``Document`` objects.

Character offsets of chunks refer to ``Document.text``: the file's own text for .txt and .md, the
visible text for HTML (parsed with the standard library), the extracted page text for PDF (pypdf,
pages joined by blank lines), and each line's ``text`` field for JSONL.
"""
from __future__ import annotations

import bisect
import html.parser
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from retrieval.errors import RetrievalError

SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".jsonl")


@dataclass
class Document:
    source: str  # stable id: resolved path, "path#id" for JSONL rows, or a synthetic id
    title: str
    text: str
    headings: list[tuple[int, str]] = field(default_factory=list)  # (char offset, heading), sorted

    def heading_at(self, offset: int) -> str:
        i = bisect.bisect_right([h[0] for h in self.headings], offset) - 1
        return self.headings[i][1] if i >= 0 else ""


_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


def markdown_document(source: str, text: str, fallback_title: str) -> Document:
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
    parser = _HTMLText()
    parser.feed(raw)
    parser.close()
    text = "".join(parser.parts)
    title = parser.title.strip() or next((h for _, h in parser.headings), fallback_title)
    return Document(source, title, text, parser.headings)


def pdf_document(path: Path) -> Document:
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


def jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) per non-blank line; bad JSON is a ``RetrievalError`` naming the line."""
    from align.data import iter_jsonl

    try:
        for lineno, row in iter_jsonl(path):
            if isinstance(row, Exception):
                raise RetrievalError(f"{path} line {lineno}: {row}")
            yield lineno, row
    except RetrievalError:
        raise
    except Exception as e:  # noqa: BLE001 - DataError for an unreadable file
        raise RetrievalError(str(e)) from None


def jsonl_documents(path: Path) -> Iterator[Document]:
    """One document per line: ``{"text": ..., "title"?: ..., "id"?: ...}``."""
    for lineno, row in jsonl_rows(path):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise RetrievalError(f"{path} line {lineno}: expected an object with a string 'text' field")
        doc_id = str(row.get("id", lineno))
        yield markdown_document(f"{path}#{doc_id}", row["text"], str(row.get("title") or f"{path.stem} #{doc_id}"))


def load_file(path: Path) -> list[Document]:
    path = path.resolve()
    suffix = path.suffix.lower()
    try:
        if suffix == ".pdf":
            return [pdf_document(path)]
        if suffix == ".jsonl":
            return list(jsonl_documents(path))
        raw = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise RetrievalError(f"{path}: cannot read: {e}") from None
    if suffix in (".html", ".htm"):
        return [html_document(str(path), raw, path.stem)]
    if suffix in (".md", ".markdown"):
        return [markdown_document(str(path), raw, path.stem)]
    if suffix == ".txt":
        return [Document(str(path), path.stem, raw)]
    raise RetrievalError(f"{path}: unsupported file type {suffix!r} (supported: {', '.join(SUFFIXES)})")


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
