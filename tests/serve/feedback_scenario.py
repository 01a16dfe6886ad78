"""One fixed sequence of feedback writes touching every export rule (flipped and repeated ratings,
edits, regenerates with and without turn ids, comments, non-ASCII text, several sessions and
checkpoints). Its export has no ids or timestamps in it, so every backend, and Keel before the
SQLAlchemy store, must write the same bytes for it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

SYS = {"role": "system", "content": "be kind"}


def write_scenario(store) -> None:
    q = [SYS, {"role": "user", "content": "What is 2+2?"}]
    r5 = store.add_response("s1", "ckpt-a", q, "5", trace={"steps": [{"tool": "calculator", "input": "2+2"}]},
                            turn_id="t1")
    store.add_feedback("regenerate", session_id="s1", checkpoint_id="ckpt-a", prompt=q, completion="5",
                       response_id=r5)
    r4 = store.add_response("s1", "ckpt-a", q, "4", turn_id="t1")
    store.add_feedback("rating", session_id="s1", checkpoint_id="ckpt-a", prompt=q, completion="4", label=False,
                       response_id=r4)
    fid = store.add_feedback("rating", session_id="s1", checkpoint_id="ckpt-a", prompt=q, completion="4",
                             label=True, response_id=r4)
    store.add_comment(fid, "right, and quick ✓")
    store.add_feedback("rating", session_id="s1", checkpoint_id="ckpt-a", prompt=q, completion="4", label=True)
    q2 = [{"role": "user", "content": "Capitale de la France ?"}]
    store.add_response("s2", "ckpt-b", q2, "Lyon")
    store.add_feedback("edit", session_id="s2", checkpoint_id="ckpt-b", prompt=q2, completion="Lyon",
                       edited="Paris — évidemment", conversation=q2 + [{"role": "assistant", "content": "Paris"}])
    store.add_feedback("edit", session_id="s2", checkpoint_id="ckpt-b", prompt=q2, completion="Lyon", edited="Lyon ")
    q3 = [{"role": "user", "content": "hi 👋"}]
    store.add_response("s3", "ckpt-b", q3, "go away")
    store.add_response("s3", "ckpt-b", q3, "hello!")
    store.add_response("s3", "ckpt-b", q3, "hey")
    store.add_feedback("rating", session_id="s3", checkpoint_id="ckpt-b", prompt=q3, completion="go away", label=False)
    store.add_feedback("rating", session_id="s3", checkpoint_id="ckpt-b", prompt=q3, completion="hey", label=False)
    q4 = q3 + [{"role": "assistant", "content": "hello!"}, {"role": "user", "content": "tell me a joke"}]
    r = store.add_response("s3", "ckpt-b", q4, "no", turn_id="t9")
    store.add_response("s3", "ckpt-b", q4, "Why did the chicken…", turn_id="t9")
    store.add_feedback("rating", session_id="s3", checkpoint_id="ckpt-b", prompt=q4, completion="no", label=False,
                       response_id=r)
    store.add_feedback("comment", session_id="s4", checkpoint_id="ckpt-c", prompt=[{"role": "user", "content": "x"}],
                       completion="y", comment="unrelated")


def export_digest(out: Path) -> dict[str, str]:
    """sha256 of kto.jsonl, preference.jsonl and summary.json without its output paths and without the
    keys added after the golden digest was taken (the export view; the scenario has no agent steps,
    so its rows are the same bytes in every view): checked separately."""
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("files")
    added = {k: summary.pop(k) for k in ("view", "trajectory_rows", "skipped_without_trajectory")}
    assert added == {"view": "auto", "trajectory_rows": 0, "skipped_without_trajectory": 0}, added
    return {"kto.jsonl": hashlib.sha256((out / "kto.jsonl").read_bytes()).hexdigest(),
            "preference.jsonl": hashlib.sha256((out / "preference.jsonl").read_bytes()).hexdigest(),
            "summary": hashlib.sha256(json.dumps(summary, indent=2).encode()).hexdigest()}
