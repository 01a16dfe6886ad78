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
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
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
    """Thread-safe: every thread gets its own connection; every write is one transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._migrate()

    # -- connections -------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.DatabaseError as e:
                raise DataError(f"{self.path}: not a usable feedback database ({e})") from e
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("PRAGMA foreign_keys=ON")
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

    class _Tx:
        def __init__(self, db):
            self.db = db

        def __enter__(self):
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type, exc, tb):
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def _tx(self):
        return self._Tx(self._conn())

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

    # -- writes --------------------------------------------------------------------------------
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

    def response(self, response_id: str) -> Response | None:
        row = self._conn().execute("SELECT * FROM responses WHERE id=?", (response_id,)).fetchone()
        return None if row is None else _row_response(row)

    def find_response(self, session_id: str, prompt: list[dict], completion: str) -> Response | None:
        """The latest served answer with this text for this conversation prefix in this session."""
        row = self._conn().execute(
            "SELECT * FROM responses WHERE session_id=? AND context_hash=? AND completion=? "
            "ORDER BY created_at DESC LIMIT 1", (session_id, context_hash(prompt), completion)).fetchone()
        return None if row is None else _row_response(row)

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

    def add_comment(self, feedback_id: int, comment: str) -> None:
        """Attach a comment to an earlier feedback row (the comment box follows the thumbs)."""
        check_size("comment", comment)
        with self._tx() as db:
            if db.execute("UPDATE feedback SET comment=? WHERE id=?", (comment, feedback_id)).rowcount != 1:
                raise DataError(f"no feedback row {feedback_id}")

    # -- reads ---------------------------------------------------------------------------------
    def feedback(self, kind: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT * FROM feedback" + (" WHERE kind=?" if kind else "") + " ORDER BY id"
        rows = self._conn().execute(q, (kind,) if kind else ()).fetchall()
        return [dict(r, prompt=json.loads(r["prompt_json"]), conversation=json.loads(r["conversation_json"]))
                for r in rows]

    def responses(self) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT * FROM responses ORDER BY created_at").fetchall()
        return [dict(r, prompt=json.loads(r["prompt_json"])) for r in rows]

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
    db_path = Path(db_path)
    if not db_path.is_file():
        raise DataError(f"{db_path}: no feedback database here (the app writes one with --feedback-db)")
    store = FeedbackStore(db_path)
    unpaired, pairs, summary = build_datasets(store)
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
