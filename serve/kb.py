"""The app's own knowledge base: documents uploaded from the chat, searched by the agent at once.

Layout of the per-app folder (``ServeConfig.kb_dir``, default ``runs/kb``)::

    kb_dir/app-kb.json   which knowledge base it was copied from, and when
    kb_dir/index/        a Keel retrieval index (manifest.json, index.faiss, docstore.sqlite)
    kb_dir/uploads/      the uploaded files, as indexed (their paths are the sources the agent cites)

Copy-on-write: until the first upload or removal the app searches the base knowledge base (the
shipped default, or ``--index DIR``) and never writes to it. The first write copies the base
index into ``kb_dir/index`` (a few MB for the default; SQLite's backup API for the docstore, so a
base open in another process is copied consistently) and from then on this app searches and
writes only its copy; later starts open the copy. A shipped document removed in the app is
removed from the copy only. Delete ``kb_dir`` to start again from the base.

Writes go through the retrieval package's public add/remove path (``Retriever.add`` and
``Retriever.remove``): the same loaders, chunking, provenance, duplicate handling and errors as
``python -m retrieval add``. An upload never blocks a chat: the writer is a second ``Retriever``
on the same folder with its own embedding model (a fast tokenizer must not be shared by two
threads), and searches keep using the reader until the write has committed, when a freshly
opened reader replaces it in one assignment. The next search after an upload finishes sees the
new document; a search running meanwhile sees the knowledge base as it was.
"""

import dataclasses
import json
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from align.errors import KeelError
from retrieval.index import file_sha256
from retrieval.loaders import SUFFIXES

MARKER = "app-kb.json"
_SKIP_COPY = ("-wal", "-shm", "-journal", ".tmp", ".lock")
_SAFE_NAME = re.compile(r"[^\w.\- ()+,]")


class UploadError(KeelError):
    """An uploaded file that is refused: type, size, name, or too many at once."""


@dataclass
class UploadLimits:
    """Limits of one upload from the chat: size per file (MB of 2**20 bytes, as Gradio's own size message counts), files per upload and the accepted
    file types.
    """

    max_mb: float = 20.0  # per file, in MB of 2**20 bytes
    max_files: int = 10  # per upload
    types: tuple[str, ...] = SUFFIXES  # file name endings, lower case with the dot


@dataclass
class UploadResult:
    """What happened to each file of one upload, as lines for the user."""
    lines: list[str] = field(default_factory=list)
    added: int = 0
    changed: bool = False  # the index was written

    def message(self) -> str:
        """The result's lines as a Markdown list, for the upload panel."""
        return "\n".join(f"- {line}" for line in self.lines)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def copy_index(src: Path, dst: Path) -> None:
    """Copy a retrieval index folder: SQLite files through the backup API (consistent even while
    another process has the base open in WAL mode), the others byte for byte; into a temporary
    folder renamed to ``dst`` at the end, so a half-made copy is never opened."""
    tmp = dst.parent / f".{dst.name}.copy-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        for f in sorted(src.iterdir()):
            if f.is_dir():
                shutil.copytree(f, tmp / f.name)
                continue
            if not f.is_file() or f.name.endswith(_SKIP_COPY):
                continue
            if f.suffix == ".sqlite":
                with sqlite3.connect(f"file:{f}?mode=ro", uri=True) as s, sqlite3.connect(tmp / f.name) as d:
                    s.backup(d)
                s.close()
                d.close()
            else:
                shutil.copy2(f, tmp / f.name)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class AppKnowledgeBase:
    """The knowledge base one app searches and users add to. ``search`` is what the agent's search
    tool calls (same signature as ``Retriever.search``).

    ``base``: the open base retriever (read-only here); ``base_folder``: its folder, copied on the
    first write; ``base_name``: how it was named ("default" or a path), recorded in ``app-kb.json``;
    ``base_lock``: a file lock to hold while copying (the default KB's, so a refresh is not copied
    half-way). ``writer_embedder``: builds the writer's embedding model (tests pass a fake).
    """

    def __init__(self, kb_dir: str | Path, base=None, base_folder: Path | None = None, base_name: str = "default",
                 base_lock: str | None = None, limits: UploadLimits | None = None,
                 writer_embedder: Callable | None = None):
        from filelock import FileLock

        self.dir = Path(kb_dir).expanduser().resolve()
        self.index_dir, self.uploads = self.dir / "index", self.dir / "uploads"
        self.limits = limits or UploadLimits()
        self.base_folder = Path(base_folder).resolve() if base_folder else None
        self.base_name, self.base_lock = base_name, base_lock
        self._writer_embedder = writer_embedder
        self._writer = None
        self._retired = None  # the reader replaced by the last write; closed at the next one
        self._write_lock = threading.Lock()  # one write at a time in this process
        self._file_lock = FileLock(str(self.dir.parent / f".{self.dir.name}.lock"))  # and across processes
        self.current = base  # the reader that searches; replaced (one assignment) after each write
        if (self.index_dir / "manifest.json").is_file():
            self._check_marker()
            from retrieval import Retriever

            embedder = base.embedder if base is not None else None
            self.current = Retriever.open(self.index_dir, embedder=embedder)
            if base is not None:
                base.close()
        if self.current is None:
            raise KeelError("the app's knowledge base needs a base index (--index default or a folder)")

    @property
    def copied(self) -> bool:
        """True once this app has its own copy (after the first upload or removal)."""
        return (self.index_dir / "manifest.json").is_file()

    def _check_marker(self) -> None:
        marker = self.dir / MARKER
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8")).get("base")
        except (OSError, ValueError, AttributeError):
            return  # written by hand or lost: the copy is used as it is
        if recorded != self.base_name:
            raise KeelError(f"{self.dir} holds this app's copy of the knowledge base {recorded!r}, not of "
                            f"{self.base_name!r} (--index); pass --kb-dir with another folder, or delete {self.dir} "
                            "to start again from the new base")

    # ------------------------------------------------------------ reads
    def search(self, *args, **kwargs):
        """``Retriever.search`` on the current reader; an uploaded file's source reads
        ``uploads/<name>`` (what the chat cites), not the server's path."""
        return [self._short(h) for h in self.current.search(*args, **kwargs)]

    def search_batch(self, *args, **kwargs):
        """``Retriever.search_batch`` on the current index, uploaded files' sources shown as ``uploads/NAME``."""
        return [[self._short(h) for h in hits] for hits in self.current.search_batch(*args, **kwargs)]

    def _short(self, hit):
        prefix = str(self.uploads) + os.sep
        source = getattr(hit, "source", "")
        if isinstance(source, str) and source.startswith(prefix) and dataclasses.is_dataclass(hit):
            return dataclasses.replace(hit, source="uploads/" + source[len(prefix):])
        return hit

    def documents(self) -> list[dict]:
        """``{"file", "name", "origin", "documents", "chunks"}`` per indexed file; ``origin`` is
        "uploaded" for files from the app, "shipped" for the base's. ``file`` is what ``remove`` takes."""
        rows = []
        prefix = str(self.uploads) + os.sep
        for r in self.current.file_summaries():
            uploaded = r["file"].startswith(prefix)
            name = r["file"][len(prefix):] if uploaded else r["file"]
            rows.append({**r, "name": name, "origin": "uploaded" if uploaded else "shipped"})
        return rows

    # ------------------------------------------------------------ writes
    def check(self, name: str, size: int) -> None:
        """Refuse a file by its type or size; the message names the file and the limit."""
        suffix = Path(name).suffix.lower()
        if suffix not in self.limits.types:
            raise UploadError(f"{name}: file type {suffix or '(none)'!r} is not accepted; upload one of "
                              f"{', '.join(self.limits.types)}")
        if size > self.limits.max_mb * 2**20:
            raise UploadError(f"{name}: {size / 2**20:.1f} MB is over the upload limit of {self.limits.max_mb:g} MB "
                              "per file")
        if size == 0:
            raise UploadError(f"{name}: the file is empty")

    @staticmethod
    def safe_name(name: str) -> str:
        """The upload's file name without folders, with characters outside letters, digits and ``._-
        ()+,`` replaced by ``_``; never hidden; at most 150 bytes (the type ending kept)."""
        base = _SAFE_NAME.sub("_", Path(str(name).replace("\\", "/")).name).strip()
        base = ("_" + base[1:]) if base.startswith(".") else (base or "upload")
        if len(base.encode()) > 150:  # file systems allow 255 bytes; room for the staging prefix
            stem, suffix = Path(base).stem, Path(base).suffix[:16]
            base = stem.encode()[:150 - len(suffix.encode())].decode(errors="ignore") + suffix
        return base

    def _locked(self):
        """The cross-process lock beside the folder (in its parent, made if missing)."""
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        return self._file_lock

    def _writer_kb(self):
        """The writer: the app's copy of the index, opened with its own embedding model. Copies the
        base on the first write (copy-on-write)."""
        from retrieval import Retriever

        if not self.copied:
            self.dir.mkdir(parents=True, exist_ok=True)
            if self.base_lock:
                from filelock import FileLock

                with FileLock(self.base_lock):
                    copy_index(self.base_folder, self.index_dir)
            else:
                copy_index(self.base_folder, self.index_dir)
            (self.dir / MARKER).write_text(json.dumps({"base": self.base_name, "base_folder": str(self.base_folder),
                                                       "copied_at": _now()}, indent=2), encoding="utf-8")
        if self._writer is None:
            model = self.current.manifest["embedding_model"]
            if self._writer_embedder is not None:
                embedder = self._writer_embedder(model)
            else:
                from retrieval.embeddings import Embedder

                embedder = Embedder(model)
            self._writer = Retriever.open(self.index_dir, embedder=embedder)
        return self._writer

    def _publish(self) -> None:
        """Open a fresh reader on what the writer committed and make searches use it."""
        from retrieval import Retriever

        fresh = Retriever.open(self.index_dir, embedder=self.current.embedder)
        if self._retired is not None:
            self._retired.close()  # replaced a whole write ago: no search is still running on it
        self._retired, self.current = self.current, fresh

    def upload(self, files: list[tuple[str, str | Path]], on_progress: Callable[[str], None] | None = None
               ) -> UploadResult:
        """Add uploaded files: ``(name as uploaded, path of the received copy)`` pairs.

        Every file is checked (type, size) before anything is written; a refused file refuses the
        whole upload with an ``UploadError`` naming it. Each file is stored as
        ``uploads/<name>`` and added with ``Retriever.add``; a file whose add fails is taken out
        again (and a file it replaced put back), so the knowledge base holds what it held before.
        ``on_progress`` receives a line before each file.
        """
        if not files:
            raise UploadError("Choose a file to upload first.")
        if len(files) > self.limits.max_files:
            raise UploadError(f"{len(files)} files at once is over the limit of {self.limits.max_files} per upload")
        checked = []
        for name, path in files:
            path = Path(path)
            try:
                size = path.stat().st_size
            except OSError:
                raise UploadError(f"{name}: the upload did not arrive; try again") from None
            self.check(self.safe_name(name), size)
            checked.append((self.safe_name(name), path))
        names = [n for n, _ in checked]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise UploadError(f"{dup} is chosen twice in this upload; upload it once")
        result = UploadResult()
        with self._write_lock, self._locked():
            writer = self._writer_kb()
            self.uploads.mkdir(parents=True, exist_ok=True)
            try:
                for i, (name, path) in enumerate(checked, 1):
                    if on_progress:
                        on_progress(f"Embedding {name} ({i} of {len(checked)})")
                    result.lines.append(self._add_one(writer, name, path, result))
            finally:
                if result.changed:
                    self._publish()
        return result

    def _add_one(self, writer, name: str, received: Path, result: UploadResult) -> str:
        from retrieval.errors import RetrievalError

        target = self.uploads / name
        digest = file_sha256(received)
        for other in sorted(self.uploads.iterdir()):
            if other.name != name and other.is_file() and not other.name.startswith(".") \
                    and str(other) in writer.store.file_hashes() and file_sha256(other) == digest:
                return f"{name}: duplicate of {other.name}, already in the knowledge base; not added again"
        incoming = self.uploads / f".incoming-{uuid.uuid4().hex[:8]}-{name}"
        previous = self.uploads / f".previous-{uuid.uuid4().hex[:8]}-{name}"
        shutil.copyfile(received, incoming)
        had = target.exists()
        if had:
            os.replace(target, previous)
        os.replace(incoming, target)
        try:
            report = writer.add([target])
        except (RetrievalError, OSError) as e:
            self._undo(writer, target, previous, had, result)
            return f"{name}: not added: {_without_name(str(e).replace(str(target), name), name)}"
        except BaseException:
            self._undo(writer, target, previous, had, result)
            raise
        if report.skipped:
            self._undo(writer, target, previous, had, result)
            why = "; ".join(report.warnings).replace(str(target), name)
            return f"{name}: not added: {_without_name(why, name)}"
        previous.unlink(missing_ok=True)
        warn = (" (" + "; ".join(report.warnings).replace(str(target), name) + ")") if report.warnings else ""
        if report.unchanged:
            return f"{name}: duplicate, already in the knowledge base with the same content; nothing to add"
        result.changed = True
        result.added += 1
        verb = "replaced the earlier version" if report.replaced else "added"
        return f"{name}: {verb}, {_chunks(report.chunks)}{warn}"

    def _undo(self, writer, target: Path, previous: Path, had: bool, result: UploadResult) -> None:
        """Take a failed file out of the index and the folder; put back the version it replaced."""
        result.changed = True  # the reader is reopened either way: memory matches disk again
        try:
            if str(target) in writer.store.files():
                writer.remove([str(target)])
        finally:
            target.unlink(missing_ok=True)
            if had:
                os.replace(previous, target)
                writer.add([target])

    def remove(self, file: str) -> str:
        """Remove one indexed file by its key (as listed by ``documents``); an uploaded file is also
        deleted from ``uploads/``. A shipped document is removed from this app's copy only."""
        known = {r["file"]: r for r in self.documents()}
        if file not in known:
            raise UploadError("That document is not in the knowledge base (any more); refresh the list.")
        row = known[file]
        with self._write_lock, self._locked():
            writer = self._writer_kb()
            try:
                writer.remove([file])
            finally:
                self._publish()
            if row["origin"] == "uploaded":
                Path(file).unlink(missing_ok=True)
        where = "" if row["origin"] == "uploaded" else " from this app's copy (the shipped knowledge base is unchanged)"
        return f"Removed {row['name']} ({_chunks(row['chunks'])}){where}."


def run_in_background(work: Callable[[Callable[[str], None]], object], every_s: float = 1.0
                      ) -> Iterator[tuple[str | None, object, BaseException | None]]:
    """Run ``work(progress)`` in a thread; yield ``(status line, None, None)`` about every ``every_s``
    while it runs (the latest progress line and the seconds so far), then ``(None, result, error)``."""
    state: dict = {"line": "Starting", "result": None, "error": None}

    def target():
        try:
            state["result"] = work(lambda line: state.__setitem__("line", line))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            state["error"] = e

    t = threading.Thread(target=target, name="kb-upload", daemon=True)
    started = time.monotonic()
    t.start()
    while True:
        t.join(every_s)
        if not t.is_alive():
            break
        yield f"⏳ {state['line']}… {time.monotonic() - started:.0f} s", None, None
    yield None, state["result"], state["error"]


def _chunks(n: int) -> str:
    return f"{n} chunk" if n == 1 else f"{n} chunks"


def _without_name(message: str, name: str) -> str:
    """``message`` without a leading ``name:`` (the status line names the file once)."""
    return message[len(name) + 1:].lstrip() if message.startswith(f"{name}:") else message


def _table(kb: AppKnowledgeBase) -> list[list]:
    return [[r["name"], r["origin"], r["documents"], r["chunks"]] for r in kb.documents()]


def _choices(kb: AppKnowledgeBase) -> list[tuple[str, str]]:
    return [(f"{r['name']} ({r['origin']}, {_chunks(r['chunks'])})", r["file"]) for r in kb.documents()]


def build_kb_panel(kb: AppKnowledgeBase, auth_required: bool = False) -> None:
    """The "Knowledge base" accordion: upload, a status line, the documents with chunk counts, and
    removal. Call inside ``gr.Blocks``. Uploads and removals run in their own queue group
    (``concurrency_id="kb-write"``, one at a time), never in the chat's, and the embedding runs in a
    thread while the handler streams progress, so chats are served meanwhile."""
    import gradio as gr

    limits = kb.limits
    kinds = " ".join(limits.types)

    def signed_in(request) -> bool:
        # Gradio's auth already guards every route; this refuses a write that reached the handler
        # without a login anyway (e.g. auth configured but the request carries no user).
        return not auth_required or bool(getattr(request, "username", None))

    def kb_upload(files, request: gr.Request):
        """Generator: progress lines while embedding, then the result, the new list and an empty picker."""
        if not signed_in(request):
            yield "Sign in to add documents.", gr.skip(), gr.skip(), None
            return
        paths = [f if isinstance(f, str) else getattr(f, "name", None) or f.get("path") for f in (files or [])]
        pairs = [(Path(p).name, p) for p in paths if p]
        try:
            for status, result, error in run_in_background(lambda progress: kb.upload(pairs, progress)):
                if status is not None:
                    yield status, gr.skip(), gr.skip(), gr.skip()
                    continue
                if isinstance(error, KeelError):
                    yield f"❌ {error}", gr.skip(), gr.skip(), None
                    return
                if error is not None:
                    raise error
                head = (f"✅ {result.added} added; the search tool sees them now." if result.added
                        else "Nothing new was added.")
                yield (f"{head}\n{result.message()}", _table(kb), gr.update(choices=_choices(kb), value=None), None)
        except Exception:  # noqa: BLE001 - short message to the user, the traceback to the log
            import logging

            ref = uuid.uuid4().hex[:8]
            logging.getLogger("keel.serve").exception("upload failed (error %s)", ref)
            yield f"❌ The upload failed (error {ref}); the server log has the details.", gr.skip(), gr.skip(), None

    def kb_remove(file: str | None, request: gr.Request):
        if not signed_in(request):
            return "Sign in to remove documents.", gr.skip(), gr.skip()
        if not file:
            return "Choose a document to remove first.", gr.skip(), gr.skip()
        try:
            msg = kb.remove(file)
        except KeelError as e:
            msg = f"❌ {e}"
        return msg, _table(kb), gr.update(choices=_choices(kb), value=None)

    def kb_refresh():
        return _table(kb), gr.update(choices=_choices(kb), value=None)

    with gr.Accordion("Knowledge base", open=False, elem_id="kb-panel"):
        gr.Markdown(f"Add documents for the search tool ({kinds}; up to {limits.max_mb:g} MB each, "
                    f"{limits.max_files} per upload). They are shared by everyone using this app. "
                    "The shipped documents can be removed from this app's copy; the shipped knowledge base "
                    "itself is never changed.")
        upload = gr.File(label="Add documents", file_count="multiple", elem_id="kb-upload")
        status = gr.Markdown(elem_id="kb-status")
        table = gr.Dataframe(_table(kb), headers=["document", "from", "documents", "chunks"], interactive=False,
                             elem_id="kb-documents", max_height=300)
        with gr.Row():
            pick = gr.Dropdown(_choices(kb), value=None, label="Remove a document", scale=4, elem_id="kb-pick")
            refresh = gr.Button("↻", scale=0, min_width=48, elem_id="kb-refresh")
            remove = gr.Button("Remove", variant="stop", scale=1, elem_id="kb-remove")
    upload.upload(kb_upload, [upload], [status, table, pick, upload], concurrency_limit=1, concurrency_id="kb-write")
    remove.click(kb_remove, [pick], [status, table, pick], concurrency_limit=1, concurrency_id="kb-write")
    refresh.click(kb_refresh, None, [table, pick], queue=False)
