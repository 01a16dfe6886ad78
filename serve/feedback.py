"""Feedback from the app, stored in SQLite (the default) or PostgreSQL and exported as TRL-format
preference data.

Two tables: ``responses`` holds every answer the app served (prompt messages, answer, agent
trace) and ``feedback`` every user signal about one (rating, edit, regenerate, comment). Answers
served for the same conversation prefix in the same session are *alternatives*: a regenerate
makes one, and a rating of one of them turns the others into preference pairs.

Where: ``FeedbackStore(target)`` takes a file path or ``sqlite:///PATH`` (SQLite, one machine), or
``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB`` (PostgreSQL through psycopg 3, shared by app replicas
on several machines). Every statement goes through SQLAlchemy Core, so both backends run the same
queries; the schema is created and migrated forward by alembic (``serve/feedback_migrations``) when a
store opens a database for writing, in one transaction under the database's write lock: an older
database (also one from before alembic, schema v1 or v2) is upgraded in place, whole or not at all.
The schema also carries a version number in ``meta`` (older Keel reads it); a database newer than
this Keel is refused.

Durability: a write method returns only after its transaction committed. SQLite: WAL journal, one
short transaction per write (``BEGIN IMMEDIATE``), ``synchronous=FULL`` so a committed row survives a
crash or power cut; each thread gets its own connection and writers wait on the lock
(``busy_timeout``) rather than fail. PostgreSQL: one transaction per write on a pooled connection,
with ``synchronous_commit=on`` set for Keel's sessions whatever the server's default, so COMMIT
returns after the WAL record is flushed; a killed app process leaves at most its open transaction,
which the server rolls back.

Regenerated answers carry the ``turn_id`` of the answer they replaced (schema v2), so the
alternatives of one turn stay together even when the conversation before them changed in the
meantime (an earlier answer edited); rows written before v2 fall back to grouping by session and
conversation prefix. Every stored text field has a size limit (``LIMITS``); a longer value is
refused with a ``DataError`` naming the field, before anything is written (and on PostgreSQL, whose
text cannot hold U+0000, a field with that character is refused the same way).

Damage and failures (issue #21): every database error leaves this module as a ``FeedbackDBError``
naming the file (or the URL, password hidden) and what to do. A SQLite store checks the file with
``PRAGMA quick_check`` when it opens (one pass over the b-trees, about a second per 100 MB), so a
damaged file is refused at the app's start and before an export or retrain reads it; a write that
meets damage later turns the store read-only-refusing (no more writes to a damaged file). A full
disk (``SQLITE_FULL``, PostgreSQL ``53100``) and a folder or role the app cannot write with are named
as such; a PostgreSQL server that cannot be reached is ``kind="unavailable"``. A failed write rolls
back: nothing is half-written.

Reading without writing (``read_only=True``, used by the export and retrain; PostgreSQL: sessions with
``default_transaction_read_only``). SQLite: first an ordinary connection with ``PRAGMA query_only``
(correct even while the app is writing; SQLite opens a file it may not write read-only by itself,
and as the last connection it removes the ``-wal``/``-shm`` it made, which a ``mode=ro`` connection
would leave behind). SQLite reads a WAL database in a folder we cannot write only if its ``-shm``
file is there (it cannot create one). So if it cannot open the file, and the ``-wal`` is absent or
empty, every committed row is in the main file and ``immutable=1`` reads it without any side file;
if a non-empty ``-wal`` is there without a usable ``-shm``, we copy the file and its ``-wal`` to a
temporary folder and read the copy, so the rows only in the ``-wal`` are not lost (``immutable=1``
would silently miss them). SQLAlchemy gets these connections from our own ``creator`` (it has no
option for them); SQLite's transaction start is ours too (``BEGIN IMMEDIATE`` for writes, none for
reads), as SQLAlchemy's pysqlite documentation recommends, since Python's sqlite3 module would
otherwise begin transactions late and deferred.
"""
from __future__ import annotations

import functools
import hashlib
import json
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import NullPool

from align.errors import DataError

SCHEMA_VERSION = 2
# The alembic revision of SCHEMA_VERSION (serve/feedback_migrations/versions), and every revision
# this Keel knows; a test checks both against the migration files.
ALEMBIC_HEAD = "0002"
ALEMBIC_REVISIONS = ("0001", "0002")
# Characters per stored field. An answer is at most a few thousand tokens; a prompt holds a whole
# conversation; a trace holds every agent step with its observations.
LIMITS = {"completion": 32_000, "edited": 32_000, "comment": 4_000, "prompt": 400_000, "conversation": 400_000,
          "trace": 1_000_000, "session_id": 200, "checkpoint_id": 1_000}
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
# Key of the PostgreSQL advisory lock that serialises schema migrations of app processes starting at once.
_PG_MIGRATION_LOCK = 0x6B65656C  # "keel"
# PostgreSQL session settings: the durability promise (COMMIT waits for the WAL flush), and a lock
# wait bounded like SQLite's busy_timeout.
_PG_OPTIONS = "-c synchronous_commit=on -c lock_timeout=30s"

# Insert targets (reads are plain SQL, the same text on both backends).
_responses = sa.table("responses", *(sa.column(c) for c in (
    "id", "session_id", "checkpoint_id", "created_at", "context_hash", "prompt_json", "completion", "trace_json",
    "turn_id")))
_feedback = sa.table("feedback", *(sa.column(c) for c in (
    "id", "kind", "response_id", "session_id", "checkpoint_id", "created_at", "context_hash", "prompt_json",
    "completion", "label", "edited", "comment", "conversation_json")))


class FeedbackDBError(DataError):
    """The feedback database cannot be used: ``kind`` is ``"damaged"``, ``"full"``, ``"readonly"``
    (cannot open or write the file or its folder, or the PostgreSQL role may not write),
    ``"locked"``, ``"unavailable"`` (the PostgreSQL server cannot be reached or refuses the login) or
    ``"error"``. ``str(e)`` names the file or URL and what to do (for the operator and the CLIs);
    ``user_message`` is the short text the app shows a user (no paths)."""

    def __init__(self, message: str, kind: str, user_message: str):
        super().__init__(message)
        self.kind = kind
        self.user_message = user_message


# SQLite primary result codes (https://www.sqlite.org/rescode.html)
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 10, 11, 13, 14, 26


def _damaged(path: Path, detail: str) -> FeedbackDBError:
    return FeedbackDBError(
        f"{path}: the feedback database is damaged ({detail}). Nothing more is written to it. Recover what is "
        f"left with `sqlite3 {path} .recover | sqlite3 recovered.db` (SQLite 3.29+) and use recovered.db "
        "(--feedback-db / --db / --from-feedback), or restore a backup of the file.",
        "damaged", "Not saved: the feedback database is damaged; nothing was stored. The server log says what to do.")


def db_error(path: Path, e: sqlite3.Error, action: str) -> FeedbackDBError:
    """Translate a ``sqlite3`` error met while ``action`` (e.g. "writing") into a ``FeedbackDBError``."""
    code = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF
    text = str(e)
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in text or "not a database" in text \
            or "decode to UTF-8" in text:
        return _damaged(path, text)
    if code == _SQLITE_FULL or "disk is full" in text:
        return FeedbackDBError(
            f"{path}: the disk is full (SQLite: {text}) while {action}; that write was rolled back, nothing "
            "half-written. Free space on that disk and retry.",
            "full", "Not saved: the server's disk is full; nothing was stored. Tell the operator.")
    if code in (_SQLITE_READONLY, _SQLITE_CANTOPEN, _SQLITE_PERM) or "readonly" in text \
            or "unable to open" in text:
        return FeedbackDBError(
            f"{path}: cannot {'write' if action != 'reading' else 'open'} the feedback database (SQLite: {text}). "
            "The app needs a writable folder for the file and its -wal/-shm files: make it writable, or choose "
            "another --feedback-db (or 'none' to turn feedback off).",
            "readonly", "Not saved: the feedback database is not writable; nothing was stored. Tell the operator.")
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return FeedbackDBError(
            f"{path}: the feedback database stayed locked by another program for 30 s while {action} ({text}); "
            "retry, or stop the other program.",
            "locked", "Not saved: the feedback database is busy; try again in a moment.")
    return FeedbackDBError(f"{path}: feedback database error while {action} (SQLite: {text})", "error",
                           "Not saved: the feedback database failed; nothing was stored. The server log has details.")


def pg_error(location: str, e: Exception, action: str) -> FeedbackDBError:
    """Translate a psycopg error met while ``action`` into a ``FeedbackDBError``, by its SQLSTATE
    (https://www.postgresql.org/docs/current/errcodes-appendix.html); ``location`` is the URL with
    its password hidden."""
    state = getattr(e, "sqlstate", None) or ""
    text = " ".join(str(e).split())[:500]
    if state in ("XX001", "XX002"):  # data_corrupted, index_corrupted
        return FeedbackDBError(
            f"{location}: PostgreSQL reports damaged data while {action} ({text}). Check the cluster (pg_amcheck; "
            "REINDEX for a damaged index) or restore a backup (pg_dump / base backup).",
            "damaged", "Not saved: the feedback database is damaged; nothing was stored. The server log says what to do.")
    if state == "53100" or state.startswith("53"):  # disk_full, out of memory / connections
        full = state == "53100"
        return FeedbackDBError(
            f"{location}: {'the database server disk is full' if full else 'the database server is out of resources'} "
            f"while {action} (PostgreSQL: {text}); that write was rolled back, nothing half-written. "
            f"{'Free space on the server' if full else 'Raise the server limits or lower the app replicas'} and retry.",
            "full" if full else "error",
            "Not saved: the server's disk is full; nothing was stored. Tell the operator." if full else
            "Not saved: the feedback database is overloaded; nothing was stored. Try again in a moment.")
    if state in ("25006", "42501"):  # read_only_sql_transaction, insufficient_privilege
        return FeedbackDBError(
            f"{location}: the database refused to {'write' if action != 'reading' else 'read'} while {action} "
            f"(PostgreSQL: {text}). The role in the URL needs SELECT/INSERT/UPDATE on Keel's tables, and on the "
            "first start CREATE on the schema (the app creates and migrates its tables); or choose another "
            "--feedback-db (or 'none' to turn feedback off).",
            "readonly", "Not saved: the feedback database is not writable; nothing was stored. Tell the operator.")
    if state in ("55P03", "40P01", "40001", "57014"):  # lock timeout, deadlock, serialization, statement timeout
        return FeedbackDBError(
            f"{location}: the feedback database stayed locked for 30 s while {action} (PostgreSQL: {text}); "
            "that write was rolled back; retry, or find the session holding the lock (pg_locks).",
            "locked", "Not saved: the feedback database is busy; try again in a moment.")
    if not state or state.startswith(("08", "28", "3D", "57P")):  # connection, login, no database, shutdown
        return FeedbackDBError(
            f"{location}: cannot reach the feedback database while {action} ({text}). Check that PostgreSQL runs "
            "there and the URL's host, port, database, user and password (or PGPASSWORD / ~/.pgpass) are right; "
            "a database that does not exist yet: `createdb` it (the app creates the tables). If a write was "
            "in flight, it was stored only if the server committed it before the connection broke.",
            "unavailable", "Not saved: the feedback database cannot be reached; try again in a moment.")
    return FeedbackDBError(f"{location}: feedback database error while {action} (PostgreSQL {state}: {text})", "error",
                           "Not saved: the feedback database failed; nothing was stored. The server log has details.")


def _sql(action: str):
    """Method decorator: a database error -> ``FeedbackDBError`` naming the file or URL; damage also stops writes."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(self, *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except sa.exc.DBAPIError as e:  # SQLAlchemy wraps the driver's error: translate the driver's own
                err = self._translate(e.orig, action)
            except sqlite3.Error as e:
                err = self._translate(e, action)
            except sa.exc.TimeoutError as e:  # every pooled PostgreSQL connection stayed busy
                raise FeedbackDBError(f"{self.location}: no free database connection for 30 s while {action} ({e}); "
                                      "retry, or raise the server's max_connections", "locked",
                                      "Not saved: the feedback database is busy; try again in a moment.") from e
            except (json.JSONDecodeError, UnicodeDecodeError) as e:  # a row quick_check cannot see into
                self._damage = _damaged(self.location, f"a stored JSON field does not parse: {e}")
                raise self._damage from e
            if err.kind == "damaged":
                self._damage = err
            raise err from err.__cause__
        return inner
    return wrap


def context_hash(prompt: list[dict]) -> str:
    """Identity of a conversation prefix: the turns that an answer replied to. The system prompt is
    left out so that feedback given after the user edits it still finds the answer it is about."""
    canon = json.dumps([[m.get("role"), m.get("content")] for m in prompt if m.get("role") != "system"],
                       ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()[:32]


@dataclass
class Response:
    """One served answer as stored: ids, the checkpoint that wrote it, the prompt as the model saw it (chat
    messages) and the completion.
    """

    id: str
    session_id: str
    checkpoint_id: str
    prompt: list[dict]
    completion: str
    turn_id: str | None = None


def check_size(field: str, value: str | None) -> None:
    """Refuse a value over ``LIMITS[field]`` characters with a message naming the field."""
    limit = LIMITS[field]
    if value is not None and len(value) > limit:
        raise DataError(f"{field} is too long: {len(value):,} characters; the limit is {limit:,}")


def _row_response(row) -> Response:
    return Response(row["id"], row["session_id"], row["checkpoint_id"], json.loads(row["prompt_json"]),
                    row["completion"], row.get("turn_id"))


def is_database_url(target: str | Path) -> bool:
    """True for ``scheme://...`` (a database URL), False for a file path."""
    return isinstance(target, str) and "://" in target


def display_target(target: str | Path) -> str:
    """``target`` as messages show it: a database URL with its password as ``***``."""
    if not is_database_url(target):
        return str(target)
    try:
        return sa.make_url(str(target)).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<a database URL that does not parse>"


def parse_target(target: str | Path) -> tuple[str, Path | sa.URL]:
    """``(backend, where)``: ``("sqlite", Path)`` for a path or ``sqlite:///PATH``, ``("postgresql", URL)``
    for ``postgresql://`` / ``postgres://`` / ``postgresql+psycopg://``. Raises ``DataError`` naming the
    value for anything else."""
    if not is_database_url(target):
        return "sqlite", Path(target).expanduser()
    try:
        url = sa.make_url(str(target))
    except sa.exc.ArgumentError as e:
        raise DataError(f"--feedback-db {target!r}: not a database URL ({e})") from None
    if url.drivername == "sqlite":
        if not url.database or url.database == ":memory:":
            raise DataError(f"--feedback-db {target!r}: name the database file, e.g. sqlite:///runs/feedback.db "
                            "(an in-memory database would lose the feedback)")
        return "sqlite", Path(url.database).expanduser()
    if url.drivername in POSTGRES_SCHEMES:
        if not url.database:
            raise DataError(f"--feedback-db {url.render_as_string(hide_password=True)!r}: name the database, "
                            "e.g. postgresql://keel@dbhost:5432/keel")
        return "postgresql", url.set(drivername="postgresql+psycopg")
    raise DataError(f"--feedback-db {target!r}: unsupported database {url.drivername!r}; use a file path, "
                    "sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE")


class FeedbackStore:
    """Thread-safe: every write is one transaction, committed before the method returns. SQLite: every
    thread gets its own connection; PostgreSQL: a pool of connections shared by the threads.

    ``target``: a file path or ``sqlite:///PATH`` (SQLite), or ``postgresql://USER@HOST:PORT/DB``
    (PostgreSQL; the password from the URL, ``PGPASSWORD`` or ``~/.pgpass``). ``read_only=True`` opens
    an existing database without writing to it (see the module docstring); otherwise the schema is
    created or migrated forward first. Raises ``FeedbackDBError`` (a ``DataError``) when the database
    is damaged, cannot be reached, opened or written, or its disk is full; ``DataError`` for a target
    that is no database, or a schema newer than this Keel."""

    def __init__(self, path: str | Path, read_only: bool = False):
        self.backend, where = parse_target(path)
        self.read_only = read_only
        self._damage: FeedbackDBError | None = None
        self._copy_dir: str | None = None
        self._local = threading.local()
        if self.backend == "sqlite":
            self.path: Path | None = where
            self.location = str(where)
            self._engine = sa.create_engine("sqlite://", creator=self._sqlite_connect, poolclass=NullPool)
            event.listen(self._engine, "begin", _sqlite_begin)
        else:
            self.path = None
            self.location = where.render_as_string(hide_password=True)
            options = _PG_OPTIONS + (" -c default_transaction_read_only=on" if read_only else "")
            try:
                import psycopg  # noqa: F401
            except ImportError as e:
                raise DataError(f"{self.location}: PostgreSQL needs the psycopg package: "
                                "pip install 'psycopg[binary]' (in Keel's dependencies)") from e
            # pre_ping: a pooled connection that the server closed (restart, idle timeout) is replaced
            # before a write is sent on it, instead of failing that write.
            self._engine = sa.create_engine(
                where, pool_size=5, max_overflow=20, pool_timeout=30, pool_pre_ping=True,
                connect_args={"connect_timeout": 10, "options": options, "application_name": "keel-feedback"})
        if read_only:
            if self.backend == "sqlite":
                self._uri = self._readonly_uri()
            self._check()
            self._check_schema()
        else:
            if self.backend == "sqlite":
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise FeedbackDBError(f"{self.path}: cannot create the folder for the feedback database ({e}); "
                                          "choose another --feedback-db (or 'none')", "readonly",
                                          "The feedback database is not writable.") from e
            self._check()
            self._migrate()

    def _translate(self, e: Exception, action: str) -> FeedbackDBError:
        if isinstance(e, sqlite3.Error):
            err = db_error(self.path, e, action)
        else:
            err = pg_error(self.location, e, action)
        err.__cause__ = e
        return err

    # -- connections -------------------------------------------------------------------------
    def _connect(self, target: str, uri: bool = False) -> sqlite3.Connection:
        return sqlite3.connect(target, timeout=30, isolation_level=None, check_same_thread=False, uri=uri)

    def _sqlite_connect(self) -> sqlite3.Connection:
        """SQLAlchemy's ``creator``: a sqlite3 connection set up as the module docstring says."""
        if self.read_only:
            db = self._connect(self._uri, uri=self._uri.startswith("file:"))
            db.execute("PRAGMA query_only=ON")
        else:
            db = self._connect(str(self.path))
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def _sqlite_connection(self) -> sa.Connection:
        """This thread's SQLAlchemy connection to the SQLite file (opened on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            try:
                conn = self._engine.connect()
            except sa.exc.DBAPIError as e:
                if not isinstance(e.orig, sqlite3.DatabaseError):
                    raise
                err = db_error(self.path, e.orig, "opening")
                if err.kind == "error":  # e.g. a text file: "file is not a database" is caught above
                    err = FeedbackDBError(f"{self.path}: not a usable feedback database ({e.orig})", "damaged",
                                          err.user_message)
                raise err from e
            self._local.conn = conn
        return conn

    def _conn(self) -> sqlite3.Connection:
        """SQLite only: this thread's sqlite3 connection, the one the store's statements use."""
        if self.backend != "sqlite":
            raise TypeError("_conn() is the SQLite connection; this store is on PostgreSQL")
        return self._sqlite_connection().connection.driver_connection

    @contextmanager
    def _connection(self, write: bool = False) -> Iterator[sa.Connection]:
        """A connection inside one transaction, committed when the block ends without an error and
        rolled back otherwise. ``write``: SQLite takes the write lock at once (``BEGIN IMMEDIATE``)."""
        if write:
            if self.read_only:
                raise DataError(f"{self.location}: opened read-only; this store does not write")
            if self._damage is not None:
                raise self._damage
        if self.backend == "sqlite":
            conn = self._sqlite_connection()
            if conn.in_transaction():  # left open by an error SQLAlchemy raised outside our block
                conn.rollback()
            conn.info["keel_write"] = write
            with conn.begin():
                yield conn
        else:
            with self._engine.connect() as conn, conn.begin():
                yield conn

    def _readonly_uri(self) -> str:
        """The path or URI to read ``self.path`` without writing to it; the choice is explained in the module docstring."""
        if not self.path.is_file():
            raise DataError(f"{self.path}: no feedback database here (the app writes one with --feedback-db)")
        base = self.path.resolve().as_uri()
        try:
            probe = self._connect(str(self.path))
            try:
                probe.execute("PRAGMA query_only=ON")
                probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
            finally:
                probe.close()
            return str(self.path)
        except sqlite3.Error as e:
            code = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF
            if code not in (_SQLITE_READONLY, _SQLITE_CANTOPEN, _SQLITE_PERM):
                raise db_error(self.path, e, "reading") from e
        wal = Path(str(self.path) + "-wal")
        if not wal.exists() or wal.stat().st_size == 0:
            return base + "?immutable=1"  # every committed row is in the main file
        self._copy_dir = tempfile.mkdtemp(prefix="keel-feedback-")
        copy = Path(self._copy_dir) / self.path.name
        try:
            shutil.copyfile(self.path, copy)
            shutil.copyfile(wal, str(copy) + "-wal")
        except OSError as e:
            shutil.rmtree(self._copy_dir, ignore_errors=True)
            raise FeedbackDBError(f"{self.path}: cannot read it and its -wal file ({e})", "readonly",
                                  "The feedback database cannot be read.") from e
        return copy.resolve().as_uri() + "?mode=ro"

    @_sql("checking the database")
    def _check(self) -> None:
        """SQLite: ``PRAGMA quick_check`` refuses a damaged file before anything reads or writes it.
        PostgreSQL: one round trip, so that a server that cannot be reached stops the start at once."""
        if self.backend == "sqlite":
            rows = [r[0] for r in self._conn().execute("PRAGMA quick_check(5)").fetchall()]
            if rows != ["ok"]:
                raise _damaged(self.path, "; ".join(" ".join(r.split()) for r in rows)[:300])
        else:
            with self._connection() as conn:
                conn.execute(sa.text("SELECT 1"))

    def _schema_version(self, conn: sa.Connection, tables: set[str]) -> int:
        """``meta.schema_version`` (0: none); raises ``DataError`` if it is newer than this Keel."""
        version = 0
        if "meta" in tables:
            row = conn.execute(sa.text("SELECT value FROM meta WHERE key='schema_version'")).fetchone()
            version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise DataError(f"{self.location}: feedback schema v{version} is newer than this Keel "
                            f"(v{SCHEMA_VERSION}); upgrade Keel")
        return version

    def _alembic_revision(self, conn: sa.Connection, tables: set[str]) -> str | None:
        if "alembic_version" not in tables:
            return None
        rev = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        if rev is not None and rev not in ALEMBIC_REVISIONS:
            raise DataError(f"{self.location}: feedback schema revision {rev!r} is newer than this Keel "
                            f"(knows up to {ALEMBIC_HEAD}); upgrade Keel")
        return rev

    @_sql("reading the schema")
    def _check_schema(self) -> None:
        """Read-only: the tables are there and not newer than this Keel (nothing is migrated)."""
        with self._connection() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            self._schema_version(conn, tables)
            self._alembic_revision(conn, tables)
            if not {"responses", "feedback"} <= tables:
                raise FeedbackDBError(f"{self.location}: no feedback tables in this database (the app creates them "
                                      "when it first opens it with --feedback-db)", "error",
                                      "The feedback database has no feedback yet.")

    @_sql("migrating the schema")
    def _migrate(self) -> None:
        """Create or upgrade the schema with alembic, in one transaction holding the write lock."""
        with self._connection(write=True) as conn:
            if self.backend == "postgresql":  # app processes starting at once take turns
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            inspector = sa.inspect(conn)
            tables = set(inspector.get_table_names())
            self._schema_version(conn, tables)
            revision = self._alembic_revision(conn, tables)
            if revision == ALEMBIC_HEAD:
                # Up to date. Still write once (the version, unchanged): a file, folder or role that
                # cannot be written stops the app's start, not its first user's rating.
                from serve.feedback_migrations import set_schema_version

                set_schema_version(conn, SCHEMA_VERSION)
                return
            from alembic import command
            from alembic.config import Config

            from serve.feedback_migrations import SCRIPT_LOCATION

            cfg = Config()
            cfg.set_main_option("script_location", SCRIPT_LOCATION)
            cfg.attributes["connection"] = conn
            if revision is None and "responses" in tables:  # written by Keel before alembic: v1 or v2
                columns = {c["name"] for c in inspector.get_columns("responses")}
                command.stamp(cfg, "0002" if "turn_id" in columns else "0001")
            command.upgrade(cfg, "head")

    def close(self) -> None:
        """SQLite: close this thread's connection. PostgreSQL: close the pool's connections."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        if self.backend == "postgresql":
            self._engine.dispose()
        if self._copy_dir is not None:
            shutil.rmtree(self._copy_dir, ignore_errors=True)
            self._copy_dir = None

    def _check_text(self, fields: Iterable[tuple[str, str | None]]) -> None:
        """Size limits; on PostgreSQL also U+0000, which its text type cannot hold."""
        for field, value in fields:
            if field in LIMITS:
                check_size(field, value)
            if self.backend == "postgresql" and value is not None and "\x00" in value:
                raise DataError(f"{field} contains the character U+0000 (NUL), which PostgreSQL text cannot store")

    # -- writes --------------------------------------------------------------------------------
    @_sql("writing")
    def add_response(self, session_id: str, checkpoint_id: str, prompt: list[dict], completion: str,
                     trace: dict | None = None, turn_id: str | None = None) -> str:
        """Record a served answer and return its id. ``turn_id`` names the turn it answers: the app gives
        a regenerated answer the turn_id of the one it replaced, so that alternatives pair up; without
        one, answers to the same conversation prefix in one session are alternatives."""
        rid = uuid.uuid4().hex
        prompt_json = json.dumps(prompt, ensure_ascii=False)
        trace_json = json.dumps(trace, ensure_ascii=False) if trace is not None else None
        self._check_text((("session_id", session_id), ("checkpoint_id", checkpoint_id), ("prompt", prompt_json),
                          ("completion", completion), ("trace", trace_json), ("turn_id", turn_id)))
        with self._connection(write=True) as db:
            db.execute(sa.insert(_responses).values(
                id=rid, session_id=session_id, checkpoint_id=checkpoint_id, created_at=time.time(),
                context_hash=context_hash(prompt), prompt_json=prompt_json, completion=completion,
                trace_json=trace_json, turn_id=turn_id))
        return rid

    def _one_response(self, query: str, params: dict) -> Response | None:
        with self._connection() as db:
            row = db.execute(sa.text(query), params).mappings().fetchone()
        return None if row is None else _row_response(row)

    @_sql("reading")
    def response(self, response_id: str) -> Response | None:
        """The served answer with this id, or None."""
        return self._one_response("SELECT * FROM responses WHERE id=:id", {"id": response_id})

    @_sql("reading")
    def find_response(self, session_id: str, prompt: list[dict], completion: str) -> Response | None:
        """The latest served answer with this text for this conversation prefix in this session."""
        return self._one_response(
            "SELECT * FROM responses WHERE session_id=:s AND context_hash=:h AND completion=:c "
            "ORDER BY created_at DESC LIMIT 1", {"s": session_id, "h": context_hash(prompt), "c": completion})

    @_sql("writing")
    def add_feedback(self, kind: str, *, session_id: str, checkpoint_id: str, prompt: list[dict], completion: str,
                     label: bool | None = None, edited: str | None = None, comment: str | None = None,
                     conversation: list[dict] | None = None, response_id: str | None = None) -> int:
        """Store one signal (``kind``: rating, edit, regenerate, comment) about an answer; returns its row id.
        The prompt, completion and checkpoint are taken from the served answer (``response_id``, else the
        latest with this text in this session) when there is one. Raises ValueError for a rating without
        ``label`` or an empty edit, DataError for a response of another session or text the database cannot
        store, and FeedbackDBError for database failures.
        """
        if kind == "rating" and label is None:
            raise ValueError("a rating needs label True (thumbs up) or False (thumbs down)")
        if kind == "edit" and not (edited or "").strip():
            raise ValueError("an edit needs the edited text")
        if response_id is not None:
            served = self.response(response_id)
            if served is None or served.session_id != session_id:
                raise DataError(f"response {response_id!r} was not served in this session")
        else:
            served = self.find_response(session_id, prompt, completion)
        if served is not None:
            # The prompt as the model saw it, the answer it wrote, and the checkpoint that wrote it.
            response_id, prompt, checkpoint_id, completion = served.id, served.prompt, served.checkpoint_id, served.completion
        prompt_json = json.dumps(prompt, ensure_ascii=False)
        conversation_json = json.dumps(conversation if conversation is not None else prompt, ensure_ascii=False)
        self._check_text((("session_id", session_id), ("checkpoint_id", checkpoint_id), ("prompt", prompt_json),
                          ("completion", completion), ("edited", edited), ("comment", comment),
                          ("conversation", conversation_json)))
        insert = sa.insert(_feedback).values(
            kind=kind, response_id=response_id, session_id=session_id, checkpoint_id=checkpoint_id,
            created_at=time.time(), context_hash=context_hash(prompt), prompt_json=prompt_json, completion=completion,
            label=None if label is None else int(bool(label)), edited=edited, comment=comment,
            conversation_json=conversation_json)
        with self._connection(write=True) as db:
            if self.backend == "sqlite":
                return int(db.execute(insert).lastrowid)
            return int(db.execute(insert.returning(sa.column("id"))).scalar_one())

    @_sql("writing")
    def add_comment(self, feedback_id: int, comment: str) -> None:
        """Attach a comment to an earlier feedback row (the comment box follows the thumbs)."""
        self._check_text((("comment", comment),))
        with self._connection(write=True) as db:
            done = db.execute(sa.text("UPDATE feedback SET comment=:c WHERE id=:id"), {"c": comment, "id": feedback_id})
            if done.rowcount != 1:
                raise DataError(f"no feedback row {feedback_id}")

    @_sql("writing")
    def remove_after(self, t: float) -> dict[str, int]:
        """Delete, in one transaction, the answers and feedback stored after ``t`` (seconds since the
        epoch, as ``created_at``): a benchmark resuming a run sets aside a round that did not finish
        (bench/bench_loop.py). Returns ``{"responses": n, "feedback": m}`` removed."""
        with self._connection(write=True) as db:
            fb = db.execute(sa.text("DELETE FROM feedback WHERE created_at > :t"), {"t": t}).rowcount
            ans = db.execute(sa.text("DELETE FROM responses WHERE created_at > :t"), {"t": t}).rowcount
        return {"responses": ans, "feedback": fb}

    # -- reads ---------------------------------------------------------------------------------
    @_sql("reading")
    def feedback(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every feedback row (of ``kind`` when given) as a dict, oldest first, with ``prompt`` and
        ``conversation`` decoded from JSON.
        """
        q = "SELECT * FROM feedback" + (" WHERE kind=:kind" if kind else "") + " ORDER BY id"
        with self._connection() as db:
            rows = db.execute(sa.text(q), {"kind": kind} if kind else {}).mappings().fetchall()
        return [dict(r, prompt=json.loads(r["prompt_json"]), conversation=json.loads(r["conversation_json"]))
                for r in rows]

    @_sql("reading")
    def responses(self) -> list[dict[str, Any]]:
        """Every served answer as a dict, oldest first, with ``prompt`` decoded from JSON."""
        # Ties of created_at in insertion order (SQLite's rowid; PostgreSQL has none: the id decides).
        order = "created_at, rowid" if self.backend == "sqlite" else "created_at, id"
        with self._connection() as db:
            rows = db.execute(sa.text(f"SELECT * FROM responses ORDER BY {order}")).mappings().fetchall()
        return [{"turn_id": None, **dict(r), "prompt": json.loads(r["prompt_json"])} for r in rows]  # v1: no turn_id

    @_sql("reading")
    def counts(self) -> dict[str, int]:
        """``{responses: n, <feedback kind>: n, ...}``."""
        with self._connection() as db:
            out = {"responses": db.execute(sa.text("SELECT COUNT(*) FROM responses")).scalar_one()}
            for kind, n in db.execute(sa.text("SELECT kind, COUNT(*) FROM feedback GROUP BY kind")):
                out[kind] = n
        return out


def _sqlite_begin(conn: sa.Connection) -> None:
    """SQLAlchemy ``begin`` event (SQLite): a write transaction takes the write lock at once, so that
    writers queue on ``busy_timeout`` instead of failing on a lock upgrade; a read runs without one."""
    if conn.info.get("keel_write"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


# -- export ---------------------------------------------------------------------------------------
def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


VIEWS = ("auto", "answers", "trajectories")


def trajectory(response: dict) -> tuple[list[dict], str] | None:
    """The agent's own view of a served answer: ``(prompt messages, completion text)`` where the
    prompt is what every ReAct step continued from (the system prompt with the tools, the history,
    the question) and the completion the whole scratchpad (``Thought/Action/Action Input/
    Observation ... Final Answer``), as the tool-SFT data has it (agents.trajectories); None when the
    answer has no text-format agent trace with its prompt (plain chat, native tool calls, rows
    stored before traces kept their prompt)."""
    raw = response.get("trace_json")
    if not raw:
        return None
    try:
        trace = json.loads(raw)
    except ValueError:
        return None
    prompt, scratch = trace.get("prompt"), (trace.get("transcript") or "").strip()
    if not prompt or not scratch or trace.get("format") != "text" or not trace.get("answer"):
        return None
    if trace.get("stopped") == "forced_answer":
        from agents.agent import FORCED_ANSWER_PREFIX

        scratch += "\n" + FORCED_ANSWER_PREFIX + " " + trace["answer"].strip()
    elif trace.get("stopped") != "final_answer":
        return None
    return prompt, scratch


def build_datasets(store: FeedbackStore, view: str = "auto") -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Feedback -> (unpaired KTO rows, preference pairs, summary), deduplicated.

    Unpaired: each answer's latest rating in a session (a user who flips thumbs up to down
    meant down); an edit labels the edit good and the original bad. Pairs: edited > original;
    within one conversation prefix of one session, a liked answer > each alternative not liked,
    and each alternative not disliked > a disliked answer. A regenerate alone is no label: it
    may mean "show me another", not "this is bad".

    ``view``: what a rated agent answer trains. ``answers``: the chat as the user saw it (the
    conversation, then the answer text). ``trajectories``: the agent's steps (``trajectory``: the
    ReAct prompt and the whole scratchpad), so a retrain teaches the agent the tool calls that led
    to a liked answer; a pair needs both alternatives' trajectories with the same prompt. ``auto``
    (default): trajectories where the answer has one, else the answer. Edits are always answer
    rows (the user wrote an answer, no trajectory produced it). ValueError for another view.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
    feedback = store.feedback()
    responses = store.responses()
    by_id = {r["id"]: r for r in responses}

    def steps_of(response: dict | None) -> tuple[list[dict], str] | None:
        if view == "answers" or response is None:
            return None
        found = trajectory(response)
        if found is None and view == "trajectories":
            missing[0] += 1
        used[0] += found is not None
        return found
    # Alternatives of one turn: answers served with the same turn_id (a regenerate inherits it), or,
    # for rows written before schema v2, the same conversation prefix in the same session.
    group_of = {r["id"]: r["turn_id"] or f"ctx:{r['session_id']}:{r['context_hash']}" for r in responses}
    alternatives: dict[str, dict[str, dict]] = {}  # group -> completion -> the latest response with it
    for r in responses:
        alternatives.setdefault(group_of[r["id"]], {})[r["completion"]] = r

    def group(f: dict) -> str:
        return group_of.get(f["response_id"]) or f"ctx:{f['session_id']}:{f['context_hash']}"

    latest: dict[tuple, dict] = {}
    for f in feedback:
        if f["kind"] == "rating":
            latest[(group(f), f["completion"])] = f
    ratings = list(latest.values())

    missing, used = [0], [0]  # answers without a trajectory (view "trajectories": skipped), and with one
    unpaired: list[dict] = []
    pairs: list[dict] = []
    for f in ratings:
        steps = steps_of(by_id.get(f["response_id"]))
        if steps is not None:
            unpaired.append({"prompt": steps[0], "completion": _assistant(steps[1]), "label": bool(f["label"])})
        elif view != "trajectories":
            unpaired.append({"prompt": f["prompt"], "completion": _assistant(f["completion"]), "label": bool(f["label"])})
    for f in (x for x in feedback if x["kind"] == "edit"):
        if f["edited"].strip() == f["completion"].strip():
            continue
        unpaired.append({"prompt": f["prompt"], "completion": _assistant(f["edited"]), "label": True})
        unpaired.append({"prompt": f["prompt"], "completion": _assistant(f["completion"]), "label": False})
        pairs.append({"prompt": f["prompt"], "chosen": _assistant(f["edited"]), "rejected": _assistant(f["completion"])})

    label_of = {k: bool(f["label"]) for k, f in latest.items()}
    for f in ratings:
        key = group(f)
        served = alternatives.get(key, {})
        if not served:
            continue
        # The conversation as it last stood for this turn (it may differ from f's if an earlier answer was edited).
        prompt = max(served.values(), key=lambda r: r["created_at"])["prompt"]
        for other in sorted(set(served) - {f["completion"]}):
            other_label = label_of.get((key, other))
            if f["label"] and other_label is not True:
                good, bad = f["completion"], other
            elif not f["label"] and other_label is not False:
                good, bad = other, f["completion"]
            else:
                continue
            a, b = steps_of(served.get(good)), steps_of(served.get(bad))
            if a is not None and b is not None and a[0] == b[0] and a[1] != b[1]:
                pairs.append({"prompt": a[0], "chosen": _assistant(a[1]), "rejected": _assistant(b[1])})
            elif view != "trajectories":
                pairs.append({"prompt": prompt, "chosen": _assistant(good), "rejected": _assistant(bad)})

    unpaired, dup_u = _dedupe(unpaired, ("prompt", "completion", "label"))
    pairs, dup_p = _dedupe(pairs, ("prompt", "chosen", "rejected"))
    verdicts: dict[str, set[bool]] = {}
    for row in unpaired:
        verdicts.setdefault(json.dumps([row["prompt"], row["completion"]]), set()).add(row["label"])
    counts = Counter(row["label"] for row in unpaired)
    summary = {
        "feedback_rows": len(feedback), "responses": len(responses),
        "ratings": len(ratings), "edits": sum(f["kind"] == "edit" for f in feedback),
        "regenerates": sum(f["kind"] == "regenerate" for f in feedback),
        "comments": sum(bool(f["comment"]) for f in feedback),
        "unpaired_rows": len(unpaired), "unpaired_desirable": counts[True], "unpaired_undesirable": counts[False],
        "pairs": len(pairs), "duplicates_dropped": dup_u + dup_p,
        "conflicting_labels": sum(len(v) > 1 for v in verdicts.values()),
        "checkpoints": sorted({f["checkpoint_id"] for f in feedback}),
        "sessions": len({f["session_id"] for f in feedback}),
        "view": view,
        "trajectory_rows": used[0],  # rated answers and pair sides written as trajectories
        "skipped_without_trajectory": missing[0],
    }
    return unpaired, pairs, summary


def _dedupe(rows: Iterable[dict], keys: tuple[str, ...]) -> tuple[list[dict], int]:
    seen, out, dropped = set(), [], 0
    for row in rows:
        k = json.dumps([row[k] for k in keys], sort_keys=True, ensure_ascii=False)
        if k in seen:
            dropped += 1
            continue
        seen.add(k)
        out.append(row)
    return out, dropped


def export_feedback(db_path: str | Path, out_dir: str | Path, view: str = "auto") -> dict[str, Any]:
    """Write ``kto.jsonl`` (unpaired), ``preference.jsonl`` (pairs, for DPO and RM), ``sft.jsonl``
    (the desirable unpaired rows without their label: liked answers or trajectories and users'
    edits, for SFT on what users approved, i.e. rejection-sampling fine-tuning) and ``summary.json``;
    ``view`` as in ``build_datasets``."""
    store = FeedbackStore(db_path, read_only=True)  # checks the file (quick_check); writes nothing to it
    try:
        unpaired, pairs, summary = build_datasets(store, view)
    finally:
        store.close()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    liked = [{"prompt": r["prompt"], "completion": r["completion"]} for r in unpaired if r["label"]]
    for name, rows in (("kto.jsonl", unpaired), ("preference.jsonl", pairs), ("sft.jsonl", liked)):
        tmp = out / (name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        tmp.replace(out / name)
    summary["files"] = {"kto": str(out / "kto.jsonl"), "preference": str(out / "preference.jsonl"),
                        "sft": str(out / "sft.jsonl")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
