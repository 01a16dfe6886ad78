"""The SQLite docstore: documents, chunks (text, source, heading, offsets) and their vectors.

Vectors are kept beside the text so that MMR can compare candidates and ``rebuild`` can make a
new FAISS index (another type, or HNSW without tombstones) without embedding anything again.
"""
from __future__ import annotations

import sqlite3
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from retrieval.chunking import Chunk
from retrieval.errors import RetrievalError
from retrieval.lexical import (EXACT_WEIGHT, FTS_TABLE, FTS_TOKENIZER, LEXICAL_VERSION, MAX_DF, TITLE_WEIGHT,
                               fts_query, lexical_columns, query_terms)

SCHEMA_VERSION = 3
# Version 3 added the lexical index ``chunks_fts`` (an FTS5 table, rowid = chunk id; see
# retrieval/lexical.py). Version-2 docstores are migrated on open in one transaction, the table
# filled from the stored chunk texts; so is a docstore whose ``lexical_version`` is older.
# Version 2 added ``files`` (one row per indexed file: content hash, detected text encoding, whether
# all its chunks are stored) and ``names`` (the paths a user named when adding a file, so that
# ``remove`` accepts the same names). Version-1 docstores are migrated on open.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    source TEXT PRIMARY KEY, file TEXT NOT NULL, sha256 TEXT NOT NULL, title TEXT, n_chunks INTEGER NOT NULL,
    added_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS documents_file ON documents(file);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL, title TEXT, heading TEXT,
    start INTEGER NOT NULL, end INTEGER NOT NULL, text TEXT NOT NULL, vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_source ON chunks(source);
CREATE TABLE IF NOT EXISTS files (
    file TEXT PRIMARY KEY, sha256 TEXT NOT NULL, encoding TEXT, complete INTEGER NOT NULL DEFAULT 1,
    added_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS names (
    name TEXT NOT NULL, abspath TEXT NOT NULL, file TEXT NOT NULL, PRIMARY KEY (name, file));
CREATE INDEX IF NOT EXISTS names_abspath ON names(abspath);
"""
_FTS_SCHEMA = f"CREATE VIRTUAL TABLE IF NOT EXISTS {FTS_TABLE} USING fts5(words, exact, title, tokenize=\"{FTS_TOKENIZER}\")"


def _check_fts5(db: sqlite3.Connection, path: Path) -> None:
    if "ENABLE_FTS5" not in {r[0] for r in db.execute("PRAGMA compile_options")}:
        raise RetrievalError(f"docstore {path}: this Python's SQLite ({sqlite3.sqlite_version}) is built without FTS5, "
                             "which the lexical index needs; use a Python whose sqlite3 has FTS5 (CPython's builds do)")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class DocStore:
    """The SQLite docstore: files, documents and chunks (text, offsets, float32 vector) with an FTS5 index for
    lexical search. Raises RetrievalError when missing or damaged.
    """

    def __init__(self, path: Path, create: bool = False):
        self._n_fts: int | None = None
        if not create and not path.is_file():
            raise RetrievalError(f"docstore {path} is missing")
        try:
            self.db = sqlite3.connect(str(path), check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            if create:
                _check_fts5(self.db, path)
                self.db.executescript(_SCHEMA)
                self.db.execute(_FTS_SCHEMA)
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('lexical_version', ?)", (str(LEXICAL_VERSION),))
                self.db.commit()
            ok = self.db.execute("PRAGMA quick_check").fetchone()[0]
            version = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if ok == "ok" and version is not None and int(version[0]) == 1:
                self._migrate_from_1()
                version = ("2",)
            if ok == "ok" and version is not None and int(version[0]) in (2, 3):
                _check_fts5(self.db, path)
                try:
                    self._sync_lexical(int(version[0]), path)
                except sqlite3.OperationalError as e:  # read-only file or folder, or locked by a writer
                    raise RetrievalError(f"docstore {path} needs its lexical index made or refreshed (schema "
                                         f"{version[0]} -> {SCHEMA_VERSION}, nothing is re-embedded) but cannot be "
                                         f"written now: {e} (a read-only file, or another process writing it); "
                                         "open it again once it is writable") from None
                version = (str(SCHEMA_VERSION),)
        except sqlite3.DatabaseError as e:
            raise RetrievalError(f"docstore {path} is damaged: {e}") from None
        if ok != "ok" or version is None:
            raise RetrievalError(f"docstore {path} is damaged: {ok if ok != 'ok' else 'no schema version'}")
        if int(version[0]) > SCHEMA_VERSION:
            raise RetrievalError(f"docstore {path} has schema {version[0]}; this Keel reads up to {SCHEMA_VERSION}")
        self.path = path

    def _migrate_from_1(self) -> None:
        with self.db:
            self.db.executescript(_SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO files (file, sha256, encoding, complete, added_at) "
                            "SELECT file, MIN(sha256), NULL, 1, MIN(added_at) FROM documents GROUP BY file")
            self.db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")

    def _sync_lexical(self, version: int, path: Path) -> None:
        """Make the lexical index hold exactly the stored chunks, in one transaction: create it in a
        version-2 docstore, re-fill it when its tokenisation (``lexical_version``) is older or its
        row count differs from the chunks' (a docstore changed by a Keel without it). Says so on
        stderr, since it takes a while for a large index (about 1 ms per chunk)."""
        lex = None
        if version == 3:
            lex = self.db.execute("SELECT value FROM meta WHERE key = 'lexical_version'").fetchone()
            if lex is not None and int(lex[0]) == LEXICAL_VERSION and \
                    self.db.execute(f"SELECT COUNT(*) FROM {FTS_TABLE}").fetchone()[0] == \
                    self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]:
                return
        n = self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        why = (f"schema {version} -> {SCHEMA_VERSION}" if version < 3 else
               f"tokenisation version {lex[0] if lex else '?'} -> {LEXICAL_VERSION}" if lex is None or
               int(lex[0]) != LEXICAL_VERSION else "its row count differs from the chunks'")
        print(f"[keel] {path}: re-making the lexical (FTS5) index from {n:,} stored chunks ({why}); nothing is "
              "re-embedded", file=sys.stderr, flush=True)
        self.rebuild_lexical()

    def rebuild_lexical(self) -> None:
        """Drop and re-fill the lexical index from the stored chunk texts, in one transaction."""
        self._n_fts = None
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(f"DROP TABLE IF EXISTS {FTS_TABLE}")
            self.db.execute(_FTS_SCHEMA)
            rows = self.db.execute("SELECT id, text, title, heading FROM chunks ORDER BY id")
            while batch := rows.fetchmany(4096):
                self.db.executemany(f"INSERT INTO {FTS_TABLE} (rowid, words, exact, title) VALUES (?, ?, ?, ?)",
                                    [(i, *lexical_columns(t, ti, h)) for i, t, ti, h in batch])
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('lexical_version', ?)", (str(LEXICAL_VERSION),))
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            self.db.commit()
        except BaseException:
            self.db.rollback()
            raise

    def close(self) -> None:
        """Close the database connection."""
        self.db.close()

    # ---- reads
    def file_hashes(self, complete: bool = True) -> dict[str, str]:
        """File key -> content sha256, of files whose chunks are all stored (``complete=False``: the others)."""
        return dict(self.db.execute("SELECT file, sha256 FROM files WHERE complete = ?", (int(complete),)))

    def files(self) -> list[str]:
        """The stored file keys, sorted."""
        return [r[0] for r in self.db.execute("SELECT file FROM files ORDER BY file")]

    def files_named(self, name: str, abspath: str) -> list[str]:
        """Files that were added under this name (as typed, or the same absolute path)."""
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT file FROM names WHERE name = ? OR abspath = ? ORDER BY file", (name, abspath))]

    def n_chunks_of_file(self, file: str) -> int:
        """Number of chunks stored for ``file``."""
        return self.db.execute("SELECT COUNT(*) FROM chunks c JOIN documents d ON c.source = d.source "
                               "WHERE d.file = ?", (file,)).fetchone()[0]

    def encodings(self) -> dict[str, str | None]:
        """File key -> the text encoding it was decoded from (None for PDF)."""
        return dict(self.db.execute("SELECT file, encoding FROM files"))

    def chunk_ids_of_files(self, files: list[str]) -> list[int]:
        """The chunk ids of ``files``."""
        ids: list[int] = []
        for f in files:
            ids += [r[0] for r in self.db.execute(
                "SELECT c.id FROM chunks c JOIN documents d ON c.source = d.source WHERE d.file = ?", (f,))]
        return ids

    def counts(self) -> dict[str, int]:
        """``{files, documents, chunks}`` counts."""
        docs = self.db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
        chunks = self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        files = self.db.execute("SELECT COUNT(DISTINCT file) FROM documents").fetchone()[0]
        return {"files": files, "documents": docs, "chunks": chunks}

    def get(self, ids: list[int]) -> dict[int, dict]:
        """Chunk id -> ``{id, source, title, heading, start, end, text}`` for the ids that exist."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(
            f"SELECT id, source, title, heading, start, end, text FROM chunks WHERE id IN ({marks})", list(ids))
        keys = ("id", "source", "title", "heading", "start", "end", "text")
        return {r[0]: dict(zip(keys, r)) for r in rows}

    def chunk_counts(self, sources: list[str]) -> dict[str, int]:
        """Document source -> how many chunks it has in the index (sources without chunks are left out)."""
        out: dict[str, int] = {}
        sources = list(dict.fromkeys(sources))
        for lo in range(0, len(sources), 500):
            part = sources[lo:lo + 500]
            out.update(self.db.execute(f"SELECT source, COUNT(*) FROM chunks WHERE source IN ({','.join('?' * len(part))}) "
                                       "GROUP BY source", part))
        return out

    def with_exact_terms(self, ids: list[int], terms: set[str]) -> set[int]:
        """The chunk ids among ``ids`` whose exact-token column (``lexical_columns``: operator and
        underscore-name terms) holds at least one of ``terms``."""
        out: set[int] = set()
        ids = list(dict.fromkeys(ids))
        for lo in range(0, len(ids), 500):
            part = ids[lo:lo + 500]
            rows = self.db.execute(f"SELECT rowid, exact FROM {FTS_TABLE} WHERE rowid IN ({','.join('?' * len(part))})", part)
            out.update(int(i) for i, exact in rows if terms & set(exact.split()))
        return out

    def _n_lexical(self) -> int:
        """Rows of the lexical index (cached; writes through this store reset it)."""
        if self._n_fts is None:
            self._n_fts = self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        return self._n_fts

    def lexical_search(self, query: str, k: int, exact_weight: float = EXACT_WEIGHT,
                       title_weight: float = TITLE_WEIGHT, max_df: int | None = MAX_DF) -> list[tuple[int, float]]:
        """The ``k`` chunks with the best BM25 score for ``query``: ``[(chunk id, score)]``, best
        first, score = -``bm25()`` (higher is better, unbounded), matches of exact tokens and of the
        title or heading weighted ``exact_weight`` and ``title_weight`` times. Query terms in more
        than ``max_df`` chunks are left out (``retrieval.lexical.MAX_DF``; None keeps all). Empty when
        the query has no terms."""
        terms = query_terms(query)
        if not terms:
            return []
        if len(terms) > 1 and max_df is not None and self._n_lexical() > max_df:
            # document frequency of each term, counted up to the cut-off only (cheap for common terms)
            df = {t: self.db.execute(f"SELECT COUNT(*) FROM (SELECT 1 FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH ? "
                                     "LIMIT ?)", (f'"{t}"', max_df + 1)).fetchone()[0] for t in terms}
            terms = [t for t in terms if df[t] <= max_df] or [min(terms, key=df.get)]
        match = fts_query(terms)
        w, t = float(exact_weight), float(title_weight)
        rows = self.db.execute(f"SELECT rowid, bm25({FTS_TABLE}, 1.0, {w!r}, {t!r}) AS s FROM {FTS_TABLE} "
                               f"WHERE {FTS_TABLE} MATCH ? ORDER BY s LIMIT ?", (match, k))
        return [(int(i), -float(s)) for i, s in rows]

    def vectors(self, ids: list[int], dim: int) -> np.ndarray:
        """The stored vectors of ``ids``, in that order: (len(ids), dim) float32. KeyError for an unknown id."""
        marks = ",".join("?" * len(ids))
        found = dict(self.db.execute(f"SELECT id, vector FROM chunks WHERE id IN ({marks})", list(ids)))
        return np.stack([np.frombuffer(found[i], dtype="float32", count=dim) for i in ids])

    def all_vectors(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Every chunk's ``(ids (n,) int64, vectors (n, dim) float32)``, by id."""
        rows = self.db.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
        if not rows:
            return np.zeros(0, dtype="int64"), np.zeros((0, dim), dtype="float32")
        ids = np.array([r[0] for r in rows], dtype="int64")
        return ids, np.stack([np.frombuffer(r[1], dtype="float32", count=dim) for r in rows])

    # ---- writes (the caller commits or rolls back)
    def delete_files(self, files: list[str]) -> None:
        """Delete ``files`` with their documents, chunks and FTS rows (the caller commits)."""
        self._n_fts = None
        for f in files:
            self.db.execute(f"DELETE FROM {FTS_TABLE} WHERE rowid IN (SELECT c.id FROM chunks c JOIN documents d "
                            "ON c.source = d.source WHERE d.file = ?)", (f,))
            self.db.execute("DELETE FROM chunks WHERE source IN (SELECT source FROM documents WHERE file = ?)", (f,))
            self.db.execute("DELETE FROM documents WHERE file = ?", (f,))
            self.db.execute("DELETE FROM files WHERE file = ?", (f,))
            self.db.execute("DELETE FROM names WHERE file = ?", (f,))

    def set_file(self, file: str, sha256: str, encoding: str | None, complete: bool) -> None:
        """Insert or update a file's row: content sha256, encoding and whether all its chunks are stored."""
        self.db.execute("INSERT INTO files (file, sha256, encoding, complete, added_at) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT(file) DO UPDATE SET sha256 = excluded.sha256, encoding = excluded.encoding, "
                        "complete = excluded.complete", (file, sha256, encoding, int(complete), _now()))

    def add_names(self, file: str, names: list[tuple[str, str]]) -> None:
        """Record the ``(name as typed, absolute path)`` pairs under which ``file`` was added (for
        ``remove``).
        """
        self.db.executemany("INSERT OR IGNORE INTO names (name, abspath, file) VALUES (?, ?, ?)",
                            [(n, a, file) for n, a in names])

    def add_document(self, source: str, file: str, sha256: str, title: str) -> None:
        """A document row (its chunk count is set by ``finish_file``)."""
        self.db.execute("INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, 0, ?)", (source, file, sha256, title, _now()))

    def add_chunks(self, chunks: list[Chunk], vectors: np.ndarray) -> list[int]:
        """Insert chunks with their vectors (n, dim) float32 and FTS rows; returns the new chunk ids."""
        self._n_fts = None
        ids = []
        for c, v in zip(chunks, vectors):
            cur = self.db.execute(
                "INSERT INTO chunks (source, title, heading, start, end, text, vector) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (c.source, c.title, c.heading, c.start, c.end, c.text, v.astype("float32").tobytes()))
            ids.append(cur.lastrowid)
            self.db.execute(f"INSERT INTO {FTS_TABLE} (rowid, words, exact, title) VALUES (?, ?, ?, ?)",
                            (cur.lastrowid, *lexical_columns(c.text, c.title, c.heading)))
        return ids

    def finish_file(self, file: str, names: list[tuple[str, str]]) -> None:
        """All chunks of ``file`` are stored: count them per document and mark the file complete."""
        self.db.execute("UPDATE documents SET n_chunks = (SELECT COUNT(*) FROM chunks c WHERE c.source = "
                        "documents.source) WHERE file = ?", (file,))
        self.db.execute("UPDATE files SET complete = 1 WHERE file = ?", (file,))
        self.add_names(file, names)

    def insert(self, file: str, sha256: str, docs: list[tuple[str, str, list[Chunk]]], vectors: np.ndarray) -> list[int]:
        """Insert documents ``(source, title, chunks)`` of one file; returns the new chunk ids in order."""
        self._n_fts = None
        now = _now()
        ids, row = [], 0
        for source, title, chunks in docs:
            self.db.execute("INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, ?)",
                            (source, file, sha256, title, len(chunks), now))
            for c in chunks:
                cur = self.db.execute(
                    "INSERT INTO chunks (source, title, heading, start, end, text, vector) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (c.source, c.title, c.heading, c.start, c.end, c.text, vectors[row].astype("float32").tobytes()))
                ids.append(cur.lastrowid)
                self.db.execute(f"INSERT INTO {FTS_TABLE} (rowid, words, exact, title) VALUES (?, ?, ?, ?)",
                                (cur.lastrowid, *lexical_columns(c.text, c.title, c.heading)))
                row += 1
        return ids
