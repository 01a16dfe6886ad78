import json
import sqlite3
import threading

import pytest

from align.data import load_data
from align.config import DataConfig
from align.errors import DataError
from serve.feedback import SCHEMA_VERSION, FeedbackStore, build_datasets, context_hash, export_feedback

SYS = {"role": "system", "content": "be kind"}
Q = [SYS, {"role": "user", "content": "What is 2+2?"}]


def rate(store, completion, label, session="s1", prompt=Q):
    return store.add_feedback("rating", session_id=session, checkpoint_id="ckpt", prompt=prompt,
                              completion=completion, label=label)


def test_schema_is_versioned_and_wal(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    db = sqlite3.connect(tmp_path / "fb.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    store.close()
    with pytest.raises(DataError, match="newer than this Keel"):
        FeedbackStore(tmp_path / "fb.db")


def test_not_a_database_is_a_clear_error(tmp_path):
    bad = tmp_path / "fb.db"
    bad.write_text("this is not sqlite, just some text that is long enough " * 20)
    with pytest.raises(DataError, match="fb.db"):
        FeedbackStore(bad)


def test_rating_finds_the_served_answer_even_after_the_system_prompt_changed(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    rid = store.add_response("s1", "ckpt-a", Q, "4", trace={"steps": 1})
    later_prompt = [{"role": "system", "content": "changed"}, Q[1]]
    fid = store.add_feedback("rating", session_id="s1", checkpoint_id="ckpt-b", prompt=later_prompt,
                             completion="4", label=True)
    row = store.feedback("rating")[0]
    assert row["id"] == fid and row["response_id"] == rid
    assert row["prompt"] == Q and row["checkpoint_id"] == "ckpt-a"  # as the model saw it, and who wrote it
    store.add_comment(fid, "right")
    assert store.feedback()[0]["comment"] == "right"
    with pytest.raises(DataError):
        store.add_comment(999, "x")
    with pytest.raises(ValueError):
        store.add_feedback("rating", session_id="s", checkpoint_id="c", prompt=Q, completion="4")


def test_sixteen_threads_writing_at_once_lose_nothing(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    errors = []

    def work(t):
        try:
            for i in range(25):
                prompt = [{"role": "user", "content": f"q{t}-{i}"}]
                store.add_response(f"s{t}", "ckpt", prompt, f"a{t}-{i}")
                rate(store, f"a{t}-{i}", i % 2 == 0, session=f"s{t}", prompt=prompt)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    fresh = FeedbackStore(tmp_path / "fb.db")  # a new reader sees every committed row
    rows = fresh.feedback("rating")
    assert len(rows) == 16 * 25 and len(fresh.responses()) == 16 * 25
    assert {r["completion"] for r in rows} == {f"a{t}-{i}" for t in range(16) for i in range(25)}
    assert all(r["response_id"] for r in rows)


def test_committed_rows_survive_a_writer_that_dies_mid_transaction(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    rate(store, "kept", True)
    db = sqlite3.connect(tmp_path / "fb.db", isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO feedback (kind, session_id, checkpoint_id, created_at, context_hash, prompt_json, "
               "completion, conversation_json) VALUES ('rating','s','c',0,'h','[]','half','[]')")
    db.close()  # closed without COMMIT, like a crash: the half-written row must not appear
    assert [r["completion"] for r in FeedbackStore(tmp_path / "fb.db").feedback()] == ["kept"]


def test_export_builds_kto_rows_and_pairs_from_ratings_edits_and_regenerates(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    store.add_response("s1", "ckpt", Q, "5")
    store.add_feedback("regenerate", session_id="s1", checkpoint_id="ckpt", prompt=Q, completion="5")
    store.add_response("s1", "ckpt", Q, "4")
    rate(store, "4", False)
    rate(store, "4", True)           # flipped: the latest rating counts
    rate(store, "4", True)           # duplicate
    q2 = [{"role": "user", "content": "Capital of France?"}]
    store.add_response("s2", "ckpt", q2, "Lyon")
    store.add_feedback("edit", session_id="s2", checkpoint_id="ckpt", prompt=q2, completion="Lyon", edited="Paris")
    q3 = [{"role": "user", "content": "hi"}]
    store.add_response("s3", "ckpt", q3, "go away")
    store.add_response("s3", "ckpt", q3, "hello!")
    rate(store, "go away", False, session="s3", prompt=q3)

    unpaired, pairs, summary = build_datasets(store)
    as_tuples = {(r["prompt"][-1]["content"], r["completion"][0]["content"], r["label"]) for r in unpaired}
    assert as_tuples == {("What is 2+2?", "4", True), ("Capital of France?", "Paris", True),
                         ("Capital of France?", "Lyon", False), ("hi", "go away", False)}
    got = {(p["prompt"][-1]["content"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs}
    assert got == {("What is 2+2?", "4", "5"), ("Capital of France?", "Paris", "Lyon"), ("hi", "hello!", "go away")}
    assert summary["pairs"] == 3 and summary["regenerates"] == 1 and summary["edits"] == 1

    out = tmp_path / "export"
    summary = export_feedback(tmp_path / "fb.db", out)
    assert json.loads((out / "summary.json").read_text())["unpaired_rows"] == 4
    kto = load_data(DataConfig(path=str(out / "kto.jsonl"), eval_size=0), accept=("unpaired_preference",))
    dpo = load_data(DataConfig(path=str(out / "preference.jsonl"), eval_size=0), accept=("preference",))
    assert len(kto.train) == 4 and len(dpo.train) == 3


def test_export_names_a_missing_database(tmp_path):
    with pytest.raises(DataError, match="nothing.db"):
        export_feedback(tmp_path / "nothing.db", tmp_path / "out")


def test_context_hash_ignores_the_system_prompt_only():
    assert context_hash(Q) == context_hash(Q[1:])
    assert context_hash(Q) != context_hash([{"role": "user", "content": "What is 2+3?"}])


def _agent_trace(steps: list[str], question: str = "What is 17 * 23?") -> dict:
    """A real ReActAgent trace (scripted model, Keel's calculator) as the app stores it."""
    from agents.agent import Generation, ReActAgent
    from agents.tools import ToolRegistry, calculator_tool

    script = iter(steps)

    class Scripted:
        def generate(self, messages, **kwargs):
            return Generation(next(script), 5)

    return ReActAgent(Scripted(), ToolRegistry([calculator_tool()]), max_steps=2, constrained=False,
                      force_final_answer=True).run(question).to_dict()


def test_a_rated_agent_answer_trains_the_agents_steps(tmp_path):
    from serve.feedback import trajectory

    call = ' I calculate.\nAction: calculator\nAction Input: {"expression": "17 * 23"}'
    good = _agent_trace([call, " I know it.\nFinal Answer: 391"])
    bad = _agent_trace([" I know it.\nFinal Answer: 381"])
    forced = _agent_trace([call, call, " 391"])  # the step limit, then the forced answer
    assert good["prompt"][0]["role"] == "system" and "calculator" in good["prompt"][0]["content"]
    prompt, steps = trajectory({"trace_json": json.dumps(good)})
    assert prompt == good["prompt"] and steps.startswith("Thought: I calculate.\nAction: calculator")
    assert "Observation: 391" in steps and steps.endswith("Final Answer: 391")
    assert trajectory({"trace_json": json.dumps(forced)})[1].endswith("Thought: I must answer now.\nFinal Answer: 391")
    assert trajectory({"trace_json": None}) is None and trajectory({"trace_json": '{"steps": 1}'}) is None

    store = FeedbackStore(tmp_path / "fb.db")
    q = [{"role": "user", "content": "What is 17 * 23?"}]
    store.add_response("s1", "ckpt", q, "381", trace=bad, turn_id="t1")
    store.add_response("s1", "ckpt", q, "391", trace=good, turn_id="t1")  # a regenerate of the same turn
    rate(store, "381", False, prompt=q)
    rate(store, "391", True, prompt=q)
    q2 = [{"role": "user", "content": "hi"}]
    store.add_response("s2", "ckpt", q2, "hello")  # plain chat: no trace
    rate(store, "hello", True, session="s2", prompt=q2)

    unpaired, pairs, summary = build_datasets(store, "auto")
    rows = {(r["completion"][0]["content"].splitlines()[-1], r["label"], r["prompt"][0]["role"]) for r in unpaired}
    assert rows == {("Final Answer: 381", False, "system"), ("Final Answer: 391", True, "system"), ("hello", True, "user")}
    assert len(pairs) == 1 and pairs[0]["prompt"] == good["prompt"]
    assert pairs[0]["chosen"][0]["content"].endswith("391") and "Action: calculator" in pairs[0]["chosen"][0]["content"]
    assert summary["view"] == "auto" and summary["skipped_without_trajectory"] == 0
    only, pairs_only, summary = build_datasets(store, "trajectories")
    assert len(only) == 2 and len(pairs_only) == 1 and summary["skipped_without_trajectory"] == 1
    answers, answer_pairs, _ = build_datasets(store, "answers")
    assert {r["completion"][0]["content"] for r in answers} == {"381", "391", "hello"}
    assert answer_pairs[0]["chosen"][0]["content"] == "391" and answer_pairs[0]["prompt"] == q
    with pytest.raises(ValueError, match="view"):
        build_datasets(store, "steps")


def test_remove_after_deletes_only_what_was_stored_later(tmp_path):
    """``remove_after(t)``: answers and feedback with created_at > t go, earlier ones stay (bench_loop --resume)."""
    import time

    store = FeedbackStore(tmp_path / "fb.db")
    chat = [{"role": "user", "content": "q"}]
    early = store.add_response("s", "c", chat, "early")
    store.add_feedback("rating", session_id="s", checkpoint_id="c", prompt=chat, completion="early", label=True,
                       response_id=early)
    time.sleep(0.02)
    t = time.time()
    time.sleep(0.02)
    late = store.add_response("s", "c", chat, "late")
    store.add_feedback("rating", session_id="s", checkpoint_id="c", prompt=chat, completion="late", label=False,
                       response_id=late)
    assert store.remove_after(t) == {"responses": 1, "feedback": 1}
    assert [r["completion"] for r in store.responses()] == ["early"]
    assert [f["completion"] for f in store.feedback()] == ["early"]
    store.close()
