"""The default knowledge base: Keel's own docs and the Python language reference topics.

``pydoc_data.topics`` ships with every CPython (it backs ``help('for')``), so the default agent
can answer questions about Python offline. Built once into the cache folder on first use.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from retrieval.chunking import DEFAULT_PASSAGE_FORMAT
from retrieval.loaders import Document, markdown_document
from retrieval.retriever import Retriever

PYTHON_DOCS_KEY = "python-docs:pydoc_data.topics"
KEEL_DOCS_KEY = "keel-docs"


def default_index_dir() -> Path:
    """Where the default knowledge base lives: ``$KEEL_CACHE_DIR/kb/default``, else
    ``~/.cache/keel/kb/default``.
    """
    base = Path(os.environ.get("KEEL_CACHE_DIR") or Path.home() / ".cache" / "keel")
    return base / "kb" / "default"


def keel_doc_files() -> list[Path]:
    """README and docs/ of the Keel checkout this package runs from (absent in a bare wheel install)."""
    root = Path(__file__).resolve().parent.parent
    files = [root / "README.md"] + sorted((root / "docs").glob("*.md")) if (root / "README.md").is_file() else []
    return [f for f in files if f.is_file()]


def python_topic_documents() -> list[Document]:
    """The Python language reference topics shipped with CPython (``pydoc_data.topics``), one document each."""
    from pydoc_data.topics import topics

    docs = []
    for name in sorted(topics):
        text = topics[name]
        title = text.strip().splitlines()[0].strip() if text.strip() else name
        docs.append(Document(f"python-docs:{name}", f"Python reference: {title}", text, [(0, title)]))
    return docs


def keel_documents() -> list[Document]:
    """Keel's README and docs/ as Markdown documents (sources ``keel-docs:<path>``)."""
    root = Path(__file__).resolve().parent.parent
    docs = []
    for f in keel_doc_files():
        rel = f.relative_to(root).as_posix()
        docs.append(markdown_document(f"keel-docs:{rel}", f.read_text(encoding="utf-8"), rel))
    return docs


def open_default_index(progress: bool = True, folder: Path | None = None) -> Retriever:
    """Open the default knowledge base, building it first if needed; refreshes Keel's docs if they changed.

    Several processes (two apps, an app and a benchmark) may open it at once: the build and the
    refresh run under an exclusive file lock (``filelock``, beside the folder), so only one of them
    writes and the others open what it wrote. Without it two writers corrupted the index.
    """
    from filelock import FileLock

    folder = folder or default_index_dir()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{folder.name}.lock")):
        kb = Retriever.open(folder) if (folder / "manifest.json").is_file() else None
        if kb is not None and kb.manifest.get("passage_format", "text") != DEFAULT_PASSAGE_FORMAT:
            # Built by an older Keel, which embedded chunk texts without their title line: made
            # again, so that its vectors match what this Keel embeds (a few minutes on a CPU).
            print(f"[keel] {folder}: the default knowledge base was embedded without titles (an older Keel); "
                  f"building it again ({kb.manifest['counts'].get('chunks', 0):,} chunks)", file=sys.stderr, flush=True)
            kb.close()
            kb = None
        if kb is None:
            kb = Retriever.create(folder, overwrite=True)
        # A no-op when stored; continues a build that was interrupted (commits are in batches).
        kb.add_documents(python_topic_documents(), PYTHON_DOCS_KEY, progress=progress)
        docs = keel_documents()
        if docs:
            kb.add_documents(docs, KEEL_DOCS_KEY, progress=progress)  # no-op when unchanged
    return kb
