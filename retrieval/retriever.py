"""A knowledge base on disk and the ``Retriever`` that builds, updates and searches it.

An index folder holds three files:
  manifest.json    embedding model, dimension, metric, index type and parameters, chunking, counts
  index.faiss      the FAISS index (``faiss.write_index``; no pickle anywhere)
  docstore.sqlite  documents and chunks: text, source, heading, character offsets, vector

Opening checks the manifest against the configured embedding model and the three files against
each other; any mismatch or damage is a ``RetrievalError`` that names the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from retrieval.chunking import DEFAULT_PASSAGE_FORMAT, PASSAGE_FORMATS, Chunk, check_window, iter_chunks, passage_text
from retrieval.duplicates import MIN_OVERLAP, copies, shingles
from retrieval.embeddings import DEFAULT_EMBEDDER, Embedder
from retrieval.errors import RetrievalError
from retrieval.index import INDEX_TYPES, VectorIndex, choose_index_type, file_sha256
from retrieval.lexical import EXACT_WEIGHT, RRF_K, TITLE_WEIGHT, is_exact, is_name, query_terms, rrf
from retrieval.options import DEFAULT_MODE, HYBRID_CANDIDATES, check_chunking, check_index_params, check_mode, check_search
from retrieval.loaders import Document, LoadedFile, expand_named, load, unique_files
from retrieval.text import BinaryFileError
from retrieval.store import DocStore

FORMAT_VERSION = 1
MANIFEST, INDEX_FILE, DOCSTORE = "manifest.json", "index.faiss", "docstore.sqlite"


def _with_code_terms(query: str, terms: list[str]) -> str:
    """``query`` and, in brackets, the constructs of the code it holds (retrieval/code_terms.py)."""
    return f"{query} ({'; '.join(terms)})" if terms else query


# What makes a word an identifier rather than prose: snake_case (``keel_format``), a dotted name
# (``keel.json``, ``lora.merge_on_save``), a command-line flag (``--kb-dir``), camelCase, a
# Python keyword no English sentence uses, or a number literal only code writes (``3j``, ``0x1F``).
_IDENTIFIER = re.compile(r"\b[A-Za-z]\w*_\w+|\b[A-Za-z_]\w+\.[A-Za-z_]\w+|(?<!\S)--?[A-Za-z]|\b[a-z]+[A-Z]\w*|"
                         r"\b(?:nonlocal|lambda|yield|async|await|assert|def|del|elif|except|finally|raise|"
                         r"global|import)\b|"
                         r"\b\d+[jJ]\b|\b0[xXoObB][0-9a-fA-F_]+\b|\b\d+(?:\.\d+)?[eE][+-]?\d+\b|\b\d+_\d+")  # 3j, 0x1F, 1e-9, 1_000


def is_plain(query: str, constructs: list[str], has_code: bool = False) -> bool:
    """A question in words only: no operator symbol, underscore name or syntax role among its
    lexical terms, no identifier (``_IDENTIFIER``) and no code that parses (``constructs`` and
    ``has_code``, from ``code_terms.analyse``)."""
    return (not constructs and not has_code and not _IDENTIFIER.search(query)
            and not any(is_exact(t) for t in query_terms(query)))


@dataclass
class Hit:
    """One search result: chunk id, score (see ``Retriever.search_batch``), text, source, title, heading and
    character offsets.
    """

    id: int
    score: float
    text: str
    source: str
    title: str
    heading: str
    start: int
    end: int

    def to_dict(self) -> dict:
        """The hit as a plain dict (for JSON)."""
        return asdict(self)


@dataclass
class AddReport:
    """What ``Retriever.add`` did: files added, replaced (content changed), unchanged, skipped and resumed,
    chunks written, and warnings.
    """

    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    chunks: int = 0
    skipped: int = 0  # files that are not text (binary), named in ``warnings``
    resumed: int = 0  # files whose interrupted indexing was continued, not restarted
    warnings: list[str] = field(default_factory=list)  # skipped files, lossy or non-UTF-8 decoding


def _validate_manifest(path: Path, m, repairing: bool = False) -> None:
    """Every field ``open`` relies on, with its type and range; errors name the field."""
    def bad(field: str, why: str) -> RetrievalError:
        return RetrievalError(f"{path} is damaged: {field} {why}")

    if not isinstance(m, dict):
        raise RetrievalError(f"{path} is damaged: not a JSON object")
    fmt = m.get("keel_retrieval_format", 0)
    if not isinstance(fmt, int) or fmt < 0:
        raise bad("keel_retrieval_format", f"must be a version number, got {fmt!r}")
    if fmt > FORMAT_VERSION:
        raise RetrievalError(f"{path} is from a newer Keel (format {fmt}); this Keel reads up to {FORMAT_VERSION}")
    for field in ("embedding_model", "dim", "index_type", "counts"):
        if field not in m:
            raise bad(field, "is missing")
    if not isinstance(m["embedding_model"], str) or not m["embedding_model"]:
        raise bad("embedding_model", f"must be a model name, got {m['embedding_model']!r}")
    if not isinstance(m["dim"], int) or isinstance(m["dim"], bool) or m["dim"] < 1:
        raise bad("dim", f"must be a positive integer, got {m['dim']!r}")
    counts = m["counts"]
    if not isinstance(counts, dict) or not all(
            isinstance(counts.get(k, 0), int) and counts.get(k, 0) >= 0 for k in ("index_vectors", "tombstones")) \
            or "index_vectors" not in counts:
        raise bad("counts", f"must hold non-negative integers index_vectors and tombstones, got {counts!r}")
    try:
        check_chunking(m.get("chunk_tokens", 200), m.get("overlap", 40))
        check_index_params(m.setdefault("index_params", {}), m["dim"])
    except RetrievalError as e:
        raise RetrievalError(f"{path} is damaged: {e}") from None
    if m.get("passage_format", "text") not in PASSAGE_FORMATS:
        raise bad("passage_format", f"must be one of {', '.join(PASSAGE_FORMATS)}, got {m['passage_format']!r}")
    kind = m["index_type"]
    allowed = INDEX_TYPES if counts["index_vectors"] else ("auto", *INDEX_TYPES)
    if kind not in allowed and not repairing:
        raise bad("index_type", f"{kind!r} is not one of {', '.join(allowed)}; set it back, or run "
                  f"`python -m retrieval rebuild {path.parent} --index-type flat` (or another type)")


INDEX_FILES = {MANIFEST, MANIFEST + ".tmp", INDEX_FILE, "index.tmp", DOCSTORE, DOCSTORE + "-wal", DOCSTORE + "-shm",
               DOCSTORE + "-journal"}
COMMIT_EVERY = 1024  # chunks per transaction: about a minute of embedding on 2 CPU cores


@dataclass
class _Batch:
    """What the next transaction writes; ``files`` keeps each file's (digest, encoding, names) across batches."""
    files: dict = field(default_factory=dict)
    fresh: list = field(default_factory=list)  # files whose old chunks go out in this transaction
    docs: list = field(default_factory=list)  # (file, source, title)
    chunks: list = field(default_factory=list)
    done: list = field(default_factory=list)  # files whose last chunk is in this transaction

    def empty(self) -> bool:
        return not (self.fresh or self.docs or self.chunks or self.done)

    def clear(self) -> None:
        self.fresh, self.docs, self.chunks, self.done = [], [], [], []


def _user_params(params: dict | None) -> dict | None:
    """Index parameters that apply to IVF, from those recorded while writing to a staging index."""
    return {k: v for k, v in (params or {}).items() if k in ("nlist", "nprobe", "m")} or None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def mmr(query: np.ndarray, candidates: np.ndarray, k: int, lambda_: float) -> list[int]:
    """Maximal marginal relevance: pick k of the candidates, trading relevance for novelty."""
    relevance = candidates @ query
    chosen: list[int] = []
    rest = list(range(len(candidates)))
    while rest and len(chosen) < k:
        if chosen:
            redundancy = (candidates[rest] @ candidates[chosen].T).max(axis=1)
        else:
            redundancy = np.zeros(len(rest))
        best = int(np.argmax(lambda_ * relevance[rest] - (1 - lambda_) * redundancy))
        chosen.append(rest.pop(best))
    return chosen


class Retriever:
    """A knowledge base on disk (manifest, FAISS index, SQLite docstore: see the module docstring).

    ``Retriever.create`` makes one, ``Retriever.open`` opens one; ``add``/``remove`` update it in place,
    ``search``/``search_batch`` query it (dense, lexical or hybrid). Errors are ``RetrievalError``.
    """

    commit_every = COMMIT_EVERY
    rrf_k = RRF_K  # reciprocal rank fusion constant (Cormack et al. 2009; tuned: retrieval/lexical.py)
    lexical_weight = 1.0  # weight of the lexical ranking in the fusion (the dense one has 1)
    # ... for a question in words only (``is_plain``): BM25's strength is the exact token, which such
    # a question does not have, and on those the embedding ranks better (bench/RESULTS.md, "Plain
    # questions")
    plain_lexical_weight = 0.5
    exact_weight, title_weight = EXACT_WEIGHT, TITLE_WEIGHT  # bm25 column weights (retrieval/lexical.py)
    candidates = HYBRID_CANDIDATES  # chunks taken from each of dense and lexical before fusion (hybrid)
    default_mode = DEFAULT_MODE  # the mode of ``search(mode=None)``, which the agent's search tool uses
    # Leave out a candidate chunk whose passage a smaller document among the candidates also holds
    # (retrieval/duplicates.py); ``duplicate_overlap`` is the share of its word 8-grams that must be
    # found there, and each mode then looks at least ``duplicate_depth`` candidates deep. Both
    # chosen on the dev queries (bench/RESULTS.md, "Hybrid search").
    collapse_duplicates = True
    duplicate_overlap = MIN_OVERLAP
    duplicate_depth = 20
    # Hybrid: when the query names an underscore name such as ``__bases__`` that some dense
    # candidates hold, the dense candidates holding none of its names are left out before fusion
    # (``exact_gate``; bench/RESULTS.md, "Hybrid search").
    exact_gate = True
    # Code pasted into a query is parsed and its constructs named in the Python reference's words
    # ("augmented assignment", "slicings": retrieval/code_terms.py), added to the query text that
    # the lexical side ("lexical"), the embedding ("dense") or both ("both") read; "none": off.
    # "both" measured best on the 490 questions of five earlier query sets, then confirmed on a
    # blind one (bench/RESULTS.md, "Code in the question").
    code_terms = "both"

    def __init__(self, folder: Path, manifest: dict, index: VectorIndex, store: DocStore, embedder: Embedder):
        self.folder, self.manifest, self.index, self.store, self.embedder = folder, manifest, index, store, embedder
        self.resumed = False  # create(resume=True) reopened an interrupted build
        self._shingles: dict[int, tuple[str, frozenset]] = {}  # chunk id -> (source, shingles); ids are never reused

    # ------------------------------------------------------------ create / open
    @classmethod
    def create(cls, folder: str | Path, embedding_model: str = DEFAULT_EMBEDDER, index_type: str = "auto",
               chunk_tokens: int = 200, overlap: int = 40, index_params: dict | None = None,
               overwrite: bool = False, embedder: Embedder | None = None, resume: bool = False) -> "Retriever":
        """A new, empty index in ``folder`` (created if missing).

        A folder that is not empty must hold a Keel index: ``overwrite`` deletes that index's files
        (and nothing else); ``resume`` reopens an index whose build was interrupted, when it was
        started with the same model and chunking. A folder that is not an index is never deleted.
        Raises ``RetrievalError`` naming the folder or the option that is out of range.
        """
        check_chunking(chunk_tokens, overlap)
        check_index_params(index_params or {})
        choose_index_type(index_type, 0)  # an unknown type fails before anything is written
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise RetrievalError(f"{folder} is a file, not an index folder")
        if folder.exists() and any(folder.iterdir()):
            entries = {p.name for p in folder.iterdir()}
            is_index = (folder / MANIFEST).is_file()
            if not is_index and not entries <= INDEX_FILES:
                raise RetrievalError(f"{folder} is not empty and is not a Keel index (no {MANIFEST}); it is left "
                                     f"alone: choose a new or empty folder for --out")
            if resume and is_index and not overwrite:
                try:
                    kb = cls.open(folder, embedder=embedder)
                except RetrievalError as e:
                    if "retrieval rebuild" not in str(e):
                        raise
                    # Killed between writing index.faiss and committing the docstore: the docstore
                    # holds every committed vector, so the index is made again from it.
                    kb = cls.open(folder, embedder=embedder, check=False)
                    kb.rebuild(index_params=kb.manifest.get("index_params") or None,
                               requested=kb.manifest.get("index_type_requested"))
                wanted = {"embedding_model": embedding_model, "chunk_tokens": chunk_tokens, "overlap": overlap}
                differs = {k: kb.manifest.get(k) for k, v in wanted.items() if kb.manifest.get(k) != v}
                if kb.manifest.get("build_complete", True):
                    kb.close()
                    raise RetrievalError(f"{folder} already holds an index; add documents with `python -m retrieval "
                                         f"add {folder} ...`, or pass --overwrite to replace it")
                if differs:
                    kb.close()
                    raise RetrievalError(f"{folder} holds an interrupted build with other settings ({differs}); "
                                         f"run it with those, or pass --overwrite to start again")
                kb.resumed = True
                return kb
            if not overwrite:
                raise RetrievalError(f"{folder} is not empty; pass --overwrite to replace the index in it")
            for name in entries & INDEX_FILES:
                (folder / name).unlink()
        folder.mkdir(parents=True, exist_ok=True)
        embedder = embedder or Embedder(embedding_model)
        check_window(chunk_tokens, embedder.max_tokens, embedder.tokenizer, "chunk_tokens (--chunk-tokens)",
                     embedding_model)
        manifest = {
            "keel_retrieval_format": FORMAT_VERSION, "embedding_model": embedding_model, "dim": embedder.dim,
            "metric": "inner_product", "normalized": True, "index_type": index_type,
            "index_type_requested": index_type, "index_params": index_params or {}, "chunk_tokens": chunk_tokens,
            "overlap": overlap, "passage_format": DEFAULT_PASSAGE_FORMAT, "build_complete": False,
            "counts": {"files": 0, "documents": 0, "chunks": 0, "index_vectors": 0, "tombstones": 0},
            "created_at": _now(), "updated_at": _now(),
        }
        store = DocStore(folder / DOCSTORE, create=True)
        kb = cls(folder, manifest, None, store, embedder)  # the FAISS index is made on the first add
        kb._write_manifest()  # so that an interrupted build is recognised as an index and can resume
        return kb

    @classmethod
    def open(cls, folder: str | Path, embedding_model: str | None = None, embedder: Embedder | None = None,
             check: bool = True) -> "Retriever":
        """Open an index folder, verifying the manifest's fields, the checksum of ``index.faiss``, and
        that index and docstore agree; any damage is a ``RetrievalError`` naming the file and the repair.

        ``check=False`` is for ``rebuild``, which repairs exactly these (the docstore keeps every
        vector): it neither loads nor verifies ``index.faiss``, and accepts an unknown index type."""
        folder = Path(folder)
        path = folder / MANIFEST
        if not folder.is_dir():
            raise RetrievalError(f"index folder {folder} does not exist")
        if not path.is_file():
            inner = sorted(p.parent for p in folder.glob(f"*/{MANIFEST}"))  # e.g. an app's --kb-dir holds index/
            hint = f"; did you mean {inner[0]}?" if inner else ""
            raise RetrievalError(f"{folder} is not a Keel index: no {MANIFEST}{hint}")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RetrievalError(f"{path} is damaged: {e}") from None
        _validate_manifest(path, manifest, repairing=not check)
        dim, kind = manifest["dim"], manifest["index_type"]
        if embedding_model and embedding_model != manifest["embedding_model"]:
            raise RetrievalError(f"{folder} was built with embedding model {manifest['embedding_model']!r}, "
                                 f"not {embedding_model!r}; rebuild it or use the same model")
        store = DocStore(folder / DOCSTORE)
        index = None
        if manifest["counts"]["index_vectors"] and check:
            index_path = folder / INDEX_FILE
            recorded = manifest.get("checksums", {}).get(INDEX_FILE)  # absent in indexes written before checksums
            if recorded and index_path.is_file() and file_sha256(index_path) != recorded:
                raise RetrievalError(f"{index_path} is damaged: it does not match the sha256 recorded in "
                                     f"{MANIFEST} (flipped bytes, or changed outside Keel); run `python -m "
                                     f"retrieval rebuild {folder}` to rebuild it from the vectors in {DOCSTORE}")
            index = VectorIndex.load(index_path, kind, dim, manifest["index_params"])
        embedder = embedder or Embedder(manifest["embedding_model"])
        if embedder.dim != dim:
            raise RetrievalError(f"embedding model {manifest['embedding_model']!r} gives {embedder.dim}-d vectors; "
                                 f"{path} says {dim}")
        kb = cls(folder, manifest, index, store, embedder)
        if check:
            kb._check_consistency()
        return kb

    def _check_consistency(self) -> None:
        counts = self.store.counts()
        expected = counts["chunks"] + self.manifest["counts"].get("tombstones", 0)
        actual = self.index.ntotal if self.index else 0
        if actual != expected:
            raise RetrievalError(f"{self.folder}: {INDEX_FILE} holds {actual} vectors but {DOCSTORE} expects "
                                 f"{expected}; run `python -m retrieval rebuild {self.folder}`")

    def close(self) -> None:
        """Close the docstore's database connection."""
        self.store.close()

    # ------------------------------------------------------------ writes
    def add(self, paths: Iterable[str | Path], progress: bool = False) -> AddReport:
        """Add files and folders; a file whose content changed replaces its old chunks.

        A file is one document however it is named: relative or absolute, through a folder, a
        symlink or a hard link, it is indexed once. Every name it was given is remembered so that
        ``remove`` accepts the same names. Work is committed every ``commit_every`` chunks: if the
        process dies, what was committed stays searchable and the same call resumes where it
        stopped (a file is complete once all its chunks are stored). Files that are not text are
        skipped with a warning. Raises ``RetrievalError`` for a path that does not exist or a
        document that cannot be read (files before it stay indexed).
        """
        files = unique_files(expand_named(list(paths)))
        known = self.store.file_hashes()
        report = AddReport()
        todo = []
        for key, (path, names) in files.items():
            try:
                digest, size = file_sha256(path), path.stat().st_size
            except OSError as e:
                raise RetrievalError(f"{path}: cannot read: {e}") from None
            name_rows = [(n, os.path.abspath(os.path.expanduser(n))) for n in names]
            if known.get(key) == digest:
                report.unchanged += 1
                with self.store.db:
                    self.store.add_names(key, name_rows)
                continue
            todo.append((key, digest, name_rows, lambda path=path: load(path), key in known, size))
        self._write(todo, report, progress)
        return report

    def add_documents(self, docs: list[Document], file: str, progress: bool = False) -> AddReport:
        """Add in-memory documents under one synthetic file key (replacing that key's old ones)."""
        digest = hashlib.sha256("\0".join(d.source + d.text for d in docs).encode()).hexdigest()
        report = AddReport()
        known = self.store.file_hashes()
        if known.get(file) == digest:
            report.unchanged = 1
            return report
        self._write([(file, digest, [(file, file)], lambda: LoadedFile(docs, None), file in known,
                      sum(len(d.text) for d in docs))], report, progress)
        return report

    def _write(self, todo, report: AddReport, progress: bool) -> None:
        """Chunk, embed and store ``todo`` files, committing every ``commit_every`` chunks."""
        from tqdm.auto import tqdm

        partial = self.store.file_hashes(complete=False)
        bar = tqdm(total=sum(t[-1] for t in todo), unit="B", unit_scale=True, disable=not progress or not todo,
                   desc=f"indexing {len(todo)} files", dynamic_ncols=True)
        batch = _Batch()
        try:
            for key, digest, names, load_, replacing, size in todo:
                try:
                    loaded = load_()
                except BinaryFileError as e:
                    report.skipped += 1
                    self._warn(report, str(e))
                    bar.update(size)
                    continue
                for w in loaded.warnings:
                    self._warn(report, w)
                docs = loaded.documents
                sources = [d.source for d in docs]
                if len(set(sources)) != len(sources):
                    dup = next(s for s in sources if sources.count(s) > 1)
                    raise RetrievalError(f"{key}: document id {dup!r} appears more than once; "
                                         "each document needs its own id")
                skip = self.store.n_chunks_of_file(key) if partial.get(key) == digest else 0
                report.resumed += partial.get(key) == digest
                report.replaced += replacing
                report.added += not replacing
                batch.files[key] = (digest, loaded.encoding, names)
                if not skip:
                    batch.fresh.append(key)
                seen, done_bytes, before, total_chars = 0, 0, 0, max(1, sum(len(d.text) for d in docs))
                for doc in docs:
                    batch.docs.append((key, doc.source, doc.title))
                    for chunk in self._chunks(doc):
                        seen += 1
                        if seen <= skip:
                            continue
                        batch.chunks.append(chunk)
                        if len(batch.chunks) >= self.commit_every:
                            self._flush(batch, report)
                            now = int(size * (before + chunk.end) / total_chars)  # bytes, roughly
                            bar.update(max(0, now - done_bytes))
                            done_bytes = max(done_bytes, now)
                    before += len(doc.text)
                batch.done.append(key)
                bar.update(max(0, size - done_bytes))
            self._flush(batch, report)
        finally:
            bar.close()
        self._finish_build()

    def _flush(self, batch: "_Batch", report: AddReport) -> None:
        """One transaction: replaced files' old chunks out, this batch's chunks in, finished files marked."""
        if batch.empty():
            return
        fmt = self.manifest.get("passage_format", "text")  # absent: an index from before the title line
        vectors = self.embedder.encode([passage_text(c, fmt) for c in batch.chunks])
        old_ids = self.store.chunk_ids_of_files(batch.fresh)
        try:
            with self.store.db:
                self.store.delete_files(batch.fresh)
                for key in batch.fresh:
                    digest, encoding, _ = batch.files[key]
                    self.store.set_file(key, digest, encoding, complete=False)
                for key, source, title in batch.docs:
                    self.store.add_document(source, key, batch.files[key][0], title)
                new_ids = self.store.add_chunks(batch.chunks, vectors)
                for key in batch.done:
                    self.store.finish_file(key, batch.files[key][2])
                self._update_index(old_ids, np.array(new_ids, dtype="int64"), vectors)
        except Exception:
            # The SQLite transaction rolled back; reload the index so memory matches disk again.
            self.index = (VectorIndex.load(self.folder / INDEX_FILE, self.manifest["index_type"], self.manifest["dim"],
                                           self.manifest["index_params"])
                          if (self.folder / INDEX_FILE).is_file() else None)
            raise
        report.chunks += len(batch.chunks)
        batch.clear()

    def _finish_build(self) -> None:
        """After an add: IVF types are trained once on all vectors (writes go to an exact index
        until then), and the build is marked complete."""
        requested = self.manifest.get("index_type_requested", self.manifest["index_type"])
        n = self.store.counts()["chunks"]
        if self.index is not None and self.index.kind == "flat" and n:
            target = choose_index_type(requested, n)
            if target != "flat":
                self.rebuild(target, _user_params(self.manifest.get("index_params")), requested=requested)
        if not self.manifest.get("build_complete", True) and not self.store.file_hashes(complete=False):
            self.manifest["build_complete"] = True
            self._write_manifest()

    @staticmethod
    def _warn(report: AddReport, message: str) -> None:
        report.warnings.append(message)

    def _chunks(self, doc: Document) -> Iterator[Chunk]:
        return iter_chunks(doc, self.embedder.tokenizer, self.manifest["chunk_tokens"], self.manifest["overlap"],
                           max_length=self.embedder.max_tokens)

    def _files_matching(self, name: str | Path, known: list[str]) -> list[str]:
        """Indexed files that ``name`` refers to: the file itself, every file under it when it is a
        folder (through symlinks too), or the files added under that name (as typed or the same
        absolute path), which also works after the file or folder was deleted or moved."""
        text = str(name)
        if text in known:  # a synthetic key ("keel-docs") or a stored path as printed
            return [text]
        found: list[str] = []
        absolute = os.path.abspath(os.path.expanduser(text))
        for base in dict.fromkeys([str(Path(absolute).resolve()), absolute]):
            prefix = base.rstrip(os.sep) + os.sep
            found += [k for k in known if k == base or k.startswith(prefix)]
        found += self.store.files_named(text, absolute)
        return list(dict.fromkeys(found))

    def remove(self, paths: Iterable[str | Path]) -> int:
        """Remove documents by the names they were added with: files, folders (every indexed file
        under them), symlinks, relative or absolute. Returns how many files were removed.

        Raises ``RetrievalError`` naming the path when one matches nothing in the index (and
        nothing is removed), and for a JSONL row (``file.jsonl#id``): rows go with their file.
        """
        known = self.store.files()
        keys: list[str] = []
        for p in paths:
            matched = self._files_matching(p, known)
            if not matched:
                raise RetrievalError(self._nothing_matches(str(p), known))
            keys += [k for k in matched if k not in keys]
        ids = self.store.chunk_ids_of_files(keys)
        with self.store.db:
            self.store.delete_files(keys)
            self._update_index(ids, np.zeros(0, dtype="int64"), np.zeros((0, self.manifest["dim"]), dtype="float32"))
        return len(keys)

    def _nothing_matches(self, name: str, known: list[str]) -> str:
        base, sep, row = name.rpartition("#")
        if sep and self._files_matching(base, known):
            return (f"{name!r} names one row of {base}; rows are removed with their file: remove {base}, "
                    f"or delete the row from the file and `add` it again")
        held = ", ".join(known[:10]) + (f" and {len(known) - 10} more" if len(known) > 10 else "")
        return (f"{name!r} matches nothing in {self.folder} (looked for "
                f"{os.path.abspath(os.path.expanduser(name))} and files under it); "
                + (f"the index holds {len(known)} files: {held}" if known else "the index holds no files"))

    def _update_index(self, old_ids: list[int], new_ids: np.ndarray, vectors: np.ndarray) -> None:
        counts = self.manifest["counts"]
        if self.index is None:
            if not len(new_ids):
                return
            kind = choose_index_type(self.manifest["index_type"], len(new_ids))
            if kind.startswith("ivf"):
                kind = "flat"  # IVF is trained once on all vectors, in _finish_build
            self.manifest["index_type"] = kind
            self.index = VectorIndex.create(kind, self.manifest["dim"], vectors, self.manifest["index_params"])
            self.manifest["index_params"] = self.index.params
        if not self.index.remove(old_ids):
            counts["tombstones"] = counts.get("tombstones", 0) + len(old_ids)
        self.index.add(new_ids, vectors)
        self._save()

    def _save(self) -> None:
        """Index file first, then the manifest; the caller's SQLite transaction commits last."""
        self.index.save(self.folder / INDEX_FILE)
        self.manifest["checksums"] = {INDEX_FILE: file_sha256(self.folder / INDEX_FILE)}
        counts = self.manifest["counts"]
        counts.update(self.store.counts())
        counts["index_vectors"] = self.index.ntotal
        self._write_manifest()

    def _write_manifest(self) -> None:
        self.manifest["updated_at"] = _now()
        tmp = self.folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.manifest, indent=2))
        os.replace(tmp, self.folder / MANIFEST)

    def rebuild(self, index_type: str | None = None, index_params: dict | None = None,
                requested: str | None = None) -> None:
        """A fresh index from the stored vectors: another type, new IVF centroids, or HNSW without
        tombstones; the lexical index is re-filled from the stored texts too (one transaction)."""
        self.store.rebuild_lexical()
        check_index_params(index_params or {}, self.manifest["dim"])
        ids, vectors = self.store.all_vectors(self.manifest["dim"])
        kind = choose_index_type(index_type or self.manifest["index_type"], len(ids))
        self.manifest["index_type_requested"] = requested or index_type or kind
        self.manifest["counts"]["tombstones"] = 0
        self.manifest["index_type"] = kind
        self.manifest["index_params"] = index_params or {}
        if not len(ids):
            self.index = None
            (self.folder / INDEX_FILE).unlink(missing_ok=True)
            self.manifest["counts"]["index_vectors"] = 0
            self.manifest.pop("checksums", None)
            self._write_manifest()
            return
        self.index = VectorIndex.create(kind, self.manifest["dim"], vectors, index_params)
        self.manifest["index_params"] = self.index.params
        self.index.add(ids, vectors)
        self._save()

    # ------------------------------------------------------------ search
    def search(self, query: str, k: int = 5, mmr_lambda: float | None = None, min_score: float | None = None,
               fetch_k: int | None = None, mode: str | None = None) -> list[Hit]:
        """The k best chunks for one query; see ``search_batch``."""
        if not isinstance(query, str):
            raise RetrievalError(f"query must be a string, got {type(query).__name__}")
        return self.search_batch([query], k, mmr_lambda, min_score, fetch_k, mode=mode)[0]

    def search_batch(self, queries: list[str], k: int = 5, mmr_lambda: float | None = None,
                     min_score: float | None = None, fetch_k: int | None = None,
                     mode: str | None = None) -> list[list[Hit]]:
        """The k best chunks for each query (a list of strings), best first.

        ``mode``: ``"dense"`` (FAISS, cosine similarity), ``"lexical"`` (BM25 over the FTS5 index,
        exact identifiers and operator symbols kept: retrieval/lexical.py) or ``"hybrid"`` (both,
        fused by reciprocal rank fusion of each side's best ``candidates`` chunks, constant ``rrf_k``);
        None is ``default_mode`` (hybrid, measured best: bench/RESULTS.md). ``Hit.score`` is the
        cosine similarity (dense), -bm25 (lexical, higher is better) or the RRF score (hybrid).

        With ``exact_gate`` (the default), hybrid leaves out the dense candidates that hold none of
        the query's underscore names (``__bases__``) when some candidate holds one.

        With ``collapse_duplicates`` (the default), a candidate chunk whose passage a smaller
        document among the candidates also holds is left out in every mode, so the more specific
        document is shown for it (retrieval/duplicates.py).

        ``mmr_lambda`` in [0, 1] diversifies with MMR (relevance = cosine similarity to the query)
        over the mode's best ``fetch_k`` candidates; ``min_score`` (cosine similarity, -1..1) drops
        hits less similar to the query, in every mode; ``fetch_k`` >= k candidates are fetched
        first. Out-of-range values raise ``RetrievalError`` naming the option; so does an empty
        query. A query without a word, number or operator symbol ("???") finds nothing in every mode.
        """
        if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
            raise RetrievalError("queries must be a list of strings")
        if any(not q.strip() for q in queries):
            raise RetrievalError("query is empty: give the words (or code) to search for")
        check_search(k, mmr_lambda, min_score, fetch_k)
        mode = check_mode(self.default_mode if mode is None else mode)
        if self.index is None or not queries:
            return [[] for _ in queries]
        needs_vectors = mode != "lexical" or mmr_lambda is not None or min_score is not None
        from retrieval.code_terms import analyse

        analysed = [analyse(t) for t in queries]  # (construct terms, holds code)
        expanded = ([_with_code_terms(t, c) for t, (c, _) in zip(queries, analysed)] if self.code_terms != "none"
                    else list(queries))
        dense_texts = expanded if self.code_terms in ("dense", "both") else list(queries)
        lexical_texts = expanded if self.code_terms in ("lexical", "both") else list(queries)
        q = self.embedder.encode(dense_texts) if needs_vectors else None
        want = fetch_k or (max(4 * k, 20) if mmr_lambda is not None else k)
        if mode == "hybrid":
            want = max(want, self.candidates)
        depth = max(want, self.duplicate_depth) if self.collapse_duplicates else want
        if mode == "dense":
            dense = self._dense(q, depth, min_score)
        elif mode == "hybrid":  # only the ids take part in the fusion; tombstones drop out after it
            fetched = self.index.search(q, want + self.manifest["counts"].get("tombstones", 0))[1]
            dense = [[int(i) for i in row if i >= 0] for row in fetched]
        results = []
        for qi, text in enumerate(queries):
            if not query_terms(text):  # "???": no word, number or operator; a vector of it ranks at random
                results.append([])
                continue
            if mode == "dense":
                hits = dense[qi]
                if self.collapse_duplicates:
                    drop = self.copies([[h.id for h in hits]])
                    hits = [h for h in hits if h.id not in drop]
                hits = hits[:want]
            else:
                lexical_score = dict(self.store.lexical_search(lexical_texts[qi], depth, self.exact_weight,
                                                               self.title_weight))
                lexical = list(lexical_score)  # best first
                lists = [lexical] if mode == "lexical" else [self._gate(text, dense[qi])[:want], lexical]
                if self.collapse_duplicates:
                    drop = self.copies(lists)
                    lists = [[i for i in r if i not in drop] for r in lists]
                if mode == "lexical":
                    ranked = [(i, lexical_score[i]) for i in lists[0][:want]]
                else:
                    w = self.plain_lexical_weight if is_plain(text, *analysed[qi]) else self.lexical_weight
                    ranked = rrf(lists, self.rrf_k, [1.0, w])
                # the texts of the hits returned (and room for HNSW tombstones, which drop out
                # below), or of every candidate that MMR or min_score look at
                tombstones = self.manifest["counts"].get("tombstones", 0)
                ranked = ranked[:k + tombstones if mmr_lambda is None and min_score is None else max(want, k)]
                rows = self.store.get([i for i, _ in ranked])
                hits = [Hit(score=score, **rows[i]) for i, score in ranked if i in rows]
                if min_score is not None and hits:
                    cos = self.store.vectors([h.id for h in hits], self.manifest["dim"]) @ q[qi]
                    hits = [h for h, c in zip(hits, cos) if c >= min_score]
            if mmr_lambda is not None and len(hits) > k:
                cand = self.store.vectors([h.id for h in hits], self.manifest["dim"])
                hits = [hits[j] for j in mmr(q[qi], cand, k, mmr_lambda)]
            results.append(hits[:k])
        return results

    def _gate(self, query: str, dense: list[int]) -> list[int]:
        """``dense`` (chunk ids, best first) less the chunks that hold none of the query's underscore
        names (``__bases__``, ``_private``), when the query has some and at least one chunk holds
        one (``exact_gate``).

        Why: the embedding model reads ``__bases__`` as the word pieces of "bases", so the nearest
        passages are about the word, not the name the user typed; a passage that never mentions
        that name is not ranked for it by its vector alone. Operator symbols do not gate: users
        type them in prose ("raise vs raise from -> which", "e.g. x > 0", "Python 3.10+"), where one
        passage holding the symbol by chance would push out the right ones; syntax roles
        (``op_slice`` ...) are read from context. Both still count in the lexical ranking."""
        terms = {t for t in query_terms(query) if is_name(t)} if self.exact_gate else set()
        if not terms:
            return dense
        keep = self.store.with_exact_terms(dense, terms)
        return [i for i in dense if i in keep] if keep else dense

    def copies(self, rankings: list[list[int]]) -> set[int]:
        """The chunk ids in ``rankings`` (lists of chunk ids) whose passage a smaller document among
        them also holds (``retrieval.duplicates.copies``, ``duplicate_overlap``); search leaves them out."""
        ids = list(dict.fromkeys(i for r in rankings for i in r))
        new = [i for i in ids if i not in self._shingles]
        if new:
            if len(self._shingles) > 200_000:
                self._shingles.clear()
            for i, row in self.store.get(new).items():
                self._shingles[i] = (row["source"], shingles(row["text"]))
        passages = {i: self._shingles[i] for i in ids if i in self._shingles}
        if len({s for s, _ in passages.values()}) < 2:
            return set()
        sizes = self.store.chunk_counts([s for s, _ in passages.values()])
        return copies(passages, sizes, self.duplicate_overlap)

    def _dense(self, q: np.ndarray, want: int, min_score: float | None) -> list[list[Hit]]:
        """The ``want`` nearest chunks of each query vector by cosine similarity, best first."""
        tombstones = self.manifest["counts"].get("tombstones", 0)
        # PQ scores are approximate: fetch more and re-rank exactly with the stored vectors.
        rerank = self.manifest["index_type"] == "ivf-pq"
        fetch = (max(want, 20) if rerank else want) + tombstones
        scores, ids = self.index.search(q, fetch)
        rows = self.store.get(sorted({int(i) for i in ids.ravel() if i >= 0}))
        results = []
        for qi in range(len(q)):
            hits = [Hit(score=float(s), **rows[int(i)]) for s, i in zip(scores[qi], ids[qi])
                    if i >= 0 and int(i) in rows]  # ids missing from the docstore are HNSW tombstones
            if rerank and hits:
                exact = self.store.vectors([h.id for h in hits], self.manifest["dim"]) @ q[qi]
                for h, score in zip(hits, exact):
                    h.score = float(score)
                hits.sort(key=lambda h: -h.score)
            if min_score is not None:
                hits = [h for h in hits if h.score >= min_score]
            results.append(hits[:want])
        return results

    def info(self) -> dict:
        """The manifest, the folder, and how many files were decoded from each text encoding."""
        encodings: dict[str, int] = {}
        for enc in self.store.encodings().values():
            encodings[enc or "n/a"] = encodings.get(enc or "n/a", 0) + 1
        incomplete = len(self.store.file_hashes(complete=False))
        return {"folder": str(self.folder), **self.manifest, "encodings": encodings, "incomplete_files": incomplete}

    def files(self) -> list[dict]:
        """Indexed files: ``{"file", "encoding", "complete"}`` (encoding None for PDF and in-memory documents)."""
        rows = self.store.db.execute("SELECT file, encoding, complete FROM files ORDER BY file")
        return [{"file": f, "encoding": e, "complete": bool(c)} for f, e, c in rows]

    def file_summaries(self) -> list[dict]:
        """Indexed files with their sizes: ``{"file", "documents", "chunks", "complete"}``, by file key
        (what ``remove`` takes). A JSONL file or a synthetic key holds many documents."""
        rows = self.store.db.execute(
            "SELECT f.file, f.complete, COUNT(DISTINCT d.source), COUNT(c.id) FROM files f "
            "LEFT JOIN documents d ON d.file = f.file LEFT JOIN chunks c ON c.source = d.source "
            "GROUP BY f.file ORDER BY f.file")
        return [{"file": f, "documents": n_docs, "chunks": n_chunks, "complete": bool(c)}
                for f, c, n_docs, n_chunks in rows]
