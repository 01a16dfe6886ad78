"""Feedback from the app, stored in SQLite and exported as TRL-format preference data.

Two tables: ``responses`` holds every answer the app served (prompt messages, answer, agent
trace) and ``feedback`` every user signal about one (rating, edit, regenerate, comment). Answers
served for the same conversation prefix in the same session are *alternatives*: a regenerate
makes one, and a rating of one of them turns the others into preference pairs.

Durability: WAL journal, one short transaction per write, ``synchronous=FULL`` so a committed
row survives a crash or power cut; each thread gets its own connection and writers wait on the
lock (``busy_timeout``) rather than fail. The schema carries a version number and is migrated
forward on open.

Regenerated answers carry the ``turn_id`` of the answer they replaced (schema v2), so the
alternatives of one turn stay together even when the conversation before them changed in the
meantime (an earlier answer edited); rows written before v2 fall back to grouping by session and
conversation prefix. Every stored text field has a size limit (``LIMITS``); a longer value is
refused with a ``DataError`` naming the field, before anything is written.

Damage and failures (issue #21): every ``sqlite3.Error`` leaves this module as a
``FeedbackDBError`` naming the file and what to do. A store checks the file with
``PRAGMA quick_check`` when it opens (one pass over the b-trees, about a second per 100 MB), so a
damaged file is refused at the app's start and before an export or retrain reads it; a write that
meets damage later turns the store read-only-refusing (no more writes to a damaged file). A full
disk (``SQLITE_FULL``) and a folder the app cannot write are named as such. A failed write rolls
back: nothing is half-written.

Reading without writing (``read_only=True``, used by the export and retrain): first an ordinary
connection with ``PRAGMA query_only`` (correct even while the app is writing; SQLite opens a file it
may not write read-only by itself, and as the last connection it removes the ``-wal``/``-shm`` it
made, which a ``mode=ro`` connection would leave behind). SQLite reads a WAL database in a folder we
cannot write only if its ``-shm`` file is there (it cannot create one). So if it cannot open the
file, and the ``-wal`` is absent or empty, every committed row is in the main file and
``immutable=1`` reads it without any side file; if a non-empty ``-wal`` is there without a usable
``-shm``, we copy the file and its ``-wal`` to a temporary folder and read the copy, so the rows only
in the ``-wal`` are not lost (``immutable=1`` would silently miss them).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from align.errors import DataError

SCHEMA_VERSION = 2
# Characters per stored field. An answer is at most a few thousand tokens; a prompt holds a whole
# conversation; a trace holds every agent step with its observations.
LIMITS = {"completion": 32_000, "edited": 32_000, "comment": 4_000, "prompt": 400_000, "conversation": 400_000,
          "trace": 1_000_000, "session_id": 200, "checkpoint_id": 1_000}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    context_hash TEXT NOT NULL,
    prompt_json TEXT NOT NULL,
    completion TEXT NOT NULL,
    trace_json TEXT,
    turn_id TEXT
);
CREATE INDEX IF NOT EXISTS responses_context ON responses (session_id, context_hash);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('rating', 'edit', 'regenerate', 'comment')),
    response_id TEXT REFERENCES responses (id),
    session_id TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    context_hash TEXT NOT NULL,
    prompt_json TEXT NOT NULL,
    completion TEXT NOT NULL,
    label INTEGER,
    edited TEXT,
    comment TEXT,
    conversation_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_kind ON feedback (kind, session_id);
"""


class FeedbackDBError(DataError):
    """The feedback database cannot be used: ``kind`` is ``"damaged"``, ``"full"``, ``"readonly"``
    (cannot open or write the file or its folder), ``"locked"`` or ``"error"``. ``str(e)`` names the
    file and what to do (for the operator and the CLIs); ``user_message`` is the short text the app
    shows a user (no paths)."""

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


def _sql(action: str):
    """Method decorator: ``sqlite3.Error`` -> ``FeedbackDBError`` naming the file; damage also stops writes."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(self, *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except sqlite3.Error as e:
                err = db_error(self.path, e, action)
                if err.kind == "damaged":
                    self._damage = err
                raise err from e
            except (json.JSONDecodeError, UnicodeDecodeError) as e:  # a row quick_check cannot see into
                self._damage = _damaged(self.path, f"a stored JSON field does not parse: {e}")
                raise self._damage from e
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
                    row["completion"], row["turn_id"])


class FeedbackStore:
    """Thread-safe: every thread gets its own connection; every write is one transaction.

    ``read_only=True`` opens an existing database without writing to it (see the module docstring).
    Raises ``FeedbackDBError`` (a ``DataError``) when the file is damaged, cannot be opened or written,
    or the disk is full; ``DataError`` when its schema is newer than this Keel."""

    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        self._damage: FeedbackDBError | None = None
        self._copy_dir: str | None = None
        self._local = threading.local()
        if read_only:
            self._uri = self._readonly_uri()
            self._check()
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise FeedbackDBError(f"{self.path}: cannot create the folder for the feedback database ({e}); "
                                      "choose another --feedback-db (or 'none')", "readonly",
                                      "The feedback database is not writable.") from e
            self._check()
            self._migrate()

    # -- connections -------------------------------------------------------------------------
    def _connect(self, target: str, uri: bool = False) -> sqlite3.Connection:
        return sqlite3.connect(target, timeout=30, isolation_level=None, check_same_thread=False, uri=uri)

    def _conn(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                if self.read_only:
                    db = self._connect(self._uri, uri=self._uri.startswith("file:"))
                    db.execute("PRAGMA query_only=ON")
                else:
                    db = self._connect(str(self.path))
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=FULL")
                db.execute("PRAGMA busy_timeout=30000")
                db.execute("PRAGMA foreign_keys=ON")
            except sqlite3.DatabaseError as e:
                err = db_error(self.path, e, "opening")
                if err.kind == "error":  # e.g. a text file: "file is not a database" is caught above
                    err = FeedbackDBError(f"{self.path}: not a usable feedback database ({e})", "damaged",
                                          err.user_message)
                raise err from e
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

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

    @_sql("checking the file")
    def _check(self) -> None:
        """``PRAGMA quick_check``: refuse a damaged file before anything reads or writes it."""
        rows = [r[0] for r in self._conn().execute("PRAGMA quick_check(5)").fetchall()]
        if rows != ["ok"]:
            raise _damaged(self.path, "; ".join(" ".join(r.split()) for r in rows)[:300])

    class _Tx:
        def __init__(self, db):
            self.db = db

        def __enter__(self):
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type, exc, tb):
            if exc_type is None:
                try:
                    self.db.execute("COMMIT")
                    return False
                except sqlite3.Error:
                    self._rollback()
                    raise
            self._rollback()
            return False  # the original error propagates

        def _rollback(self):
            # SQLite may have rolled back already (SQLITE_FULL, SQLITE_CORRUPT): a second ROLLBACK would
            # raise "no transaction is active" and hide the real error.
            if self.db.in_transaction:
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass

    def _tx(self):
        if self.read_only:
            raise DataError(f"{self.path}: opened read-only; this store does not write")
        if self._damage is not None:
            raise self._damage
        return self._Tx(self._conn())

    @_sql("migrating the schema")
    def _migrate(self) -> None:
        db = self._conn()
        db.executescript(_SCHEMA)
        with self._tx() as tx:
            row = tx.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise DataError(f"{self.path}: feedback schema v{version} is newer than this Keel (v{SCHEMA_VERSION}); "
                                "upgrade Keel")
            if 0 < version < 2:
                columns = {r[1] for r in tx.execute("PRAGMA table_info(responses)")}
                if "turn_id" not in columns:
                    tx.execute("ALTER TABLE responses ADD COLUMN turn_id TEXT")
            # Future migrations go here: `if version < 3: ALTER TABLE ...`.
            tx.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
        if self._copy_dir is not None:
            shutil.rmtree(self._copy_dir, ignore_errors=True)
            self._copy_dir = None

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
        for field, value in (("session_id", session_id), ("checkpoint_id", checkpoint_id), ("prompt", prompt_json),
                             ("completion", completion), ("trace", trace_json)):
            check_size(field, value)
        with self._tx() as db:
            db.execute("INSERT INTO responses (id, session_id, checkpoint_id, created_at, context_hash, prompt_json, "
                       "completion, trace_json, turn_id) VALUES (?,?,?,?,?,?,?,?,?)",
                       (rid, session_id, checkpoint_id, time.time(), context_hash(prompt), prompt_json, completion,
                        trace_json, turn_id))
        return rid

    @_sql("reading")
    def response(self, response_id: str) -> Response | None:
        row = self._conn().execute("SELECT * FROM responses WHERE id=?", (response_id,)).fetchone()
        return None if row is None else _row_response(row)

    @_sql("reading")
    def find_response(self, session_id: str, prompt: list[dict], completion: str) -> Response | None:
        """The latest served answer with this text for this conversation prefix in this session."""
        row = self._conn().execute(
            "SELECT * FROM responses WHERE session_id=? AND context_hash=? AND completion=? "
            "ORDER BY created_at DESC LIMIT 1", (session_id, context_hash(prompt), completion)).fetchone()
        return None if row is None else _row_response(row)

    @_sql("writing")
    def add_feedback(self, kind: str, *, session_id: str, checkpoint_id: str, prompt: list[dict], completion: str,
                     label: bool | None = None, edited: str | None = None, comment: str | None = None,
                     conversation: list[dict] | None = None, response_id: str | None = None) -> int:
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
        for field, value in (("session_id", session_id), ("checkpoint_id", checkpoint_id), ("prompt", prompt_json),
                             ("completion", completion), ("edited", edited), ("comment", comment),
                             ("conversation", conversation_json)):
            check_size(field, value)
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO feedback (kind, response_id, session_id, checkpoint_id, created_at, context_hash, "
                "prompt_json, completion, label, edited, comment, conversation_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (kind, response_id, session_id, checkpoint_id, time.time(), context_hash(prompt),
                 prompt_json, completion, None if label is None else int(bool(label)), edited, comment,
                 conversation_json))
            return int(cur.lastrowid)

    @_sql("writing")
    def add_comment(self, feedback_id: int, comment: str) -> None:
        """Attach a comment to an earlier feedback row (the comment box follows the thumbs)."""
        check_size("comment", comment)
        with self._tx() as db:
            if db.execute("UPDATE feedback SET comment=? WHERE id=?", (comment, feedback_id)).rowcount != 1:
                raise DataError(f"no feedback row {feedback_id}")

    # -- reads ---------------------------------------------------------------------------------
    @_sql("reading")
    def feedback(self, kind: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT * FROM feedback" + (" WHERE kind=?" if kind else "") + " ORDER BY id"
        rows = self._conn().execute(q, (kind,) if kind else ()).fetchall()
        return [dict(r, prompt=json.loads(r["prompt_json"]), conversation=json.loads(r["conversation_json"]))
                for r in rows]

    @_sql("reading")
    def responses(self) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT * FROM responses ORDER BY created_at").fetchall()
        return [{"turn_id": None, **dict(r), "prompt": json.loads(r["prompt_json"])} for r in rows]  # v1: no turn_id

    @_sql("reading")
    def counts(self) -> dict[str, int]:
        db = self._conn()
        out = {"responses": db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]}
        for kind, n in db.execute("SELECT kind, COUNT(*) FROM feedback GROUP BY kind"):
            out[kind] = n
        return out


# -- export ---------------------------------------------------------------------------------------
def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def build_datasets(store: FeedbackStore) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Feedback -> (unpaired KTO rows, preference pairs, summary), deduplicated.

    Unpaired: each answer's latest rating in a session (a user who flips thumbs up to down
    meant down); an edit labels the edit good and the original bad. Pairs: edited > original;
    within one conversation prefix of one session, a liked answer > each alternative not liked,
    and each alternative not disliked > a disliked answer. A regenerate alone is no label: it
    may mean "show me another", not "this is bad".
    """
    feedback = store.feedback()
    responses = store.responses()
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

    unpaired: list[dict] = []
    pairs: list[dict] = []
    for f in ratings:
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
                pairs.append({"prompt": prompt, "chosen": _assistant(f["completion"]), "rejected": _assistant(other)})
            elif not f["label"] and other_label is not False:
                pairs.append({"prompt": prompt, "chosen": _assistant(other), "rejected": _assistant(f["completion"])})

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


def export_feedback(db_path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write ``kto.jsonl`` (unpaired), ``preference.jsonl`` (pairs, for DPO and RM) and ``summary.json``."""
    store = FeedbackStore(db_path, read_only=True)  # checks the file (quick_check); writes nothing to it
    try:
        unpaired, pairs, summary = build_datasets(store)
    finally:
        store.close()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("kto.jsonl", unpaired), ("preference.jsonl", pairs)):
        tmp = out / (name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        tmp.replace(out / name)
    summary["files"] = {"kto": str(out / "kto.jsonl"), "preference": str(out / "preference.jsonl")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
