"""`python -m serve simulate` against a real app (a Gradio server, driven over its HTTP API), its
seeded plan, and the retrain guard rails the loop needs."""
import json

import pytest

from agents.agent import Generation
from agents.tools import ToolRegistry, calculator_tool
from serve import simulate as sim

TASKS = [{"kind": "arith", "question": f"What is {a} times {b}?", "expression": f"{a} * {b}", "answer": str(a * b)}
         for a, b in [(12, 34), (56, 78), (91, 23), (45, 67), (89, 10), (11, 22), (33, 44), (55, 66)]]


class OracleLLM:
    """Answers the first ask of a question right iff its index is even; a regenerate (the next ask
    of the same question) always right. So the judge's verdicts are known before the run."""

    def __init__(self):
        self.asked: dict[str, int] = {}

    def generate(self, messages, *, stop, max_new_tokens, continue_final=False, tools=None):
        users = [m["content"] for m in messages if m["role"] == "user"]
        q = next(t for t in TASKS if any(t["question"] in u for u in users))
        n = self.asked[q["question"]] = self.asked.get(q["question"], 0) + 1
        right = TASKS.index(q) % 2 == 0 or n > 1
        text = f" ok\nFinal Answer: {q['answer'] if right else int(q['answer']) + 1}"
        return Generation(text, len(text.split()))


def expected_counts(plan):
    """What the simulated users must have stored, from the plan and OracleLLM's rule alone."""
    c = {"answers": 0, "ratings": 0, "likes": 0, "edits": 0, "regenerates": 0}
    for user in plan:
        for t in user["turns"]:
            right = TASKS.index(t["task"]) % 2 == 0
            c["answers"] += 1
            if not right and t["edit_if_wrong"]:
                c["edits"] += 1
                continue
            c["ratings"] += 1
            c["likes"] += right
            if t["regenerate"]:
                c["answers"] += 1
                c["regenerates"] += 1
                c["ratings"] += 1
                c["likes"] += 1  # the alternative is right
    return c


@pytest.fixture
def served_app(tiny_model_dir, tmp_path):
    from serve.app import build_app
    from serve.chat import ChatModel, ChatSettings
    from serve.feedback import FeedbackStore

    chat = ChatModel(str(tiny_model_dir), ChatSettings(), llm=OracleLLM(), tools=ToolRegistry([calculator_tool()]))
    store = FeedbackStore(tmp_path / "fb.db")
    demo = build_app(chat, store, "be kind")
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        yield demo.local_url, tmp_path / "fb.db"
    finally:
        demo.close()
        store.close()


def test_the_same_seed_gives_the_same_plan_and_another_seed_another():
    a = sim.make_plan(TASKS, users=3, turns=2, seed=5, edit_share=0.3, regenerate_share=0.3)
    b = sim.make_plan(TASKS, users=3, turns=2, seed=5, edit_share=0.3, regenerate_share=0.3)
    c = sim.make_plan(TASKS, users=3, turns=2, seed=6, edit_share=0.3, regenerate_share=0.3)
    assert a == b and a != c
    qs = [t["task"]["question"] for u in a for t in u["turns"]]
    assert len(set(qs)) == 6  # drawn without replacement while the set lasts
    assert not any(t["edit_if_wrong"] and t["regenerate"] for u in a for t in u["turns"])
    # the built-in sets are seeded too
    assert sim.load_tasks("arith", 5, seed=2) == sim.load_tasks("arith", 5, seed=2)


@pytest.mark.parametrize("concurrency", [1, 3])
def test_simulated_users_store_what_their_seeded_choices_say(served_app, tmp_path, capsys, concurrency):
    url, db = served_app
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    report = tmp_path / "report.json"
    args = ["--url", url, "--tasks", str(tasks), "--users", "3", "--turns", "2", "--seed", "2", "--judge", "verifier",
            "--edit-share", "0.4", "--regenerate-share", "0.4", "--db", str(db), "--report", str(report),
            "--concurrency", str(concurrency)]
    assert sim.simulate_main(args) == 0
    out = json.loads(report.read_text())
    plan = sim.make_plan(TASKS, 3, 2, 2, 0.4, 0.4)
    want = expected_counts(plan)
    # the plan exercises every action, so the counts below check each path
    assert want["edits"] and want["regenerates"] and want["likes"] < want["ratings"]
    assert out["stored"] == want and out["stored_vs_sent"]["match"]
    assert len(set(out["sessions"])) == 3  # one session per simulated user
    assert out["concurrency"] == concurrency and [(r["user"], r["turn"]) for r in out["sent"]] == [
        (u["user"], k) for u in plan for k in range(len(u["turns"]))]  # the report in plan order
    # the judge's verdicts follow the oracle; edits write the right answer over the wrong one
    for row, turn in zip(out["sent"], [t for u in plan for t in u["turns"]]):
        assert row["question"] == turn["task"]["question"]
        assert row["judged"] == (TASKS.index(turn["task"]) % 2 == 0)
    from serve.feedback import export_feedback

    export_feedback(db, tmp_path / "export")
    pairs = [json.loads(x) for x in (tmp_path / "export" / "preference.jsonl").read_text().splitlines()]
    edited = [r for r in out["sent"] if r["action"] == "edit"]
    for r in edited:
        assert any(p["chosen"][0]["content"] == r["edited"] and p["prompt"][-1]["content"] == r["question"]
                   for p in pairs)


def test_a_task_file_with_a_bad_line_is_named(tmp_path):
    from align.errors import DataError

    f = tmp_path / "t.jsonl"
    f.write_text('{"question": "ok?", "answer": "1"}\n{"answer": "2"}\n')
    with pytest.raises(DataError, match=r"t.jsonl:2: .*'question'"):
        sim.load_tasks(str(f), 2, 0)
    with pytest.raises(DataError, match="--judge"):
        sim.make_judge("oracle")


# -- guard rails of `align retrain --from-feedback` ------------------------------------------------------
_RETYPED = ["Question 0?", "question 0", "QUESTION  0 ?", " Question 0!", "question\n0...", "Question 0 ?"]


def _db(path, sessions, prompts, checkpoint="smollm2-135m", retyped=False):
    from serve.feedback import FeedbackStore

    store = FeedbackStore(path)
    for i in range(12):
        text = _RETYPED[i % len(_RETYPED)] if retyped else f"Question {i % prompts}?"
        s, prompt = f"s{i % sessions}", [{"role": "user", "content": text}]
        store.add_response(s, checkpoint, prompt, f"answer {i}")
        store.add_feedback("rating", session_id=s, checkpoint_id=checkpoint, prompt=prompt, completion=f"answer {i}",
                           label=i % 2 == 0)
    store.close()
    return path


@pytest.mark.parametrize("sessions,prompts,retyped,message", [(1, 12, False, "one session"), (12, 1, False, "one prompt"),
                                                             (12, 12, True, "one prompt")])
def test_retrain_refuses_feedback_from_one_session_or_one_prompt(tmp_path, capsys, sessions, prompts, retyped,
                                                                   message):
    from align.cli import main

    db = _db(tmp_path / "fb.db", sessions, prompts, checkpoint="no-such-model", retyped=retyped)  # without the guard: fails fast
    assert main(["retrain", "--from-feedback", str(db), "--output_dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and "--allow-one-source" in err
    assert not (tmp_path / "x").exists()  # a refused run leaves nothing behind


def test_varied_feedback_or_an_explicit_override_passes_the_guard_rail(tmp_path, monkeypatch):
    import align.kto
    from align import retrain as rt

    seen = []
    monkeypatch.setattr(align.kto, "run_kto", lambda cfg, resume=False: seen.append(cfg) or cfg.output_dir)
    rt.retrain(str(_db(tmp_path / "a.db", 3, 4)), None, ["--output_dir", str(tmp_path / "a")])
    rt.retrain(str(_db(tmp_path / "b.db", 1, 12)), None, ["--output_dir", str(tmp_path / "b")], allow_one_source=True)
    assert len(seen) == 2


def test_the_reward_model_judge_scores_and_thresholds(tiny_model_dir):
    judge = sim.make_judge(f"rm:{tiny_model_dir}", threshold=-1e9)
    task = {"kind": "plain", "question": "Say hello."}
    assert judge(task, "Hello!", []) is True and isinstance(judge.last_score, float)
    judge.threshold = judge.last_score  # liked only above the threshold
    assert judge(task, "Hello!", []) is False


def test_the_judge_scores_what_the_model_wrote_not_the_sources_the_app_appends():
    from serve.chat import SOURCES_MARK

    task = {"kind": "kb", "question": "What does a for loop do?", "source": "python-docs:for"}
    group = [{"role": "assistant", "content": "search(for)", "metadata": {"title": "🛠️ search"}},
             {"role": "assistant", "content": [{"type": "text", "text": "It loops." + SOURCES_MARK + "python-docs:for"}]}]
    off, answer = sim.final_answer(group)
    assert off == 1 and answer == "It loops."
    assert sim.VerifierJudge()(task, answer, group[:1]) is False
    assert sim.VerifierJudge()(task, "It loops. (source: python-docs:for)", group[:1]) is True
    assert sim.VerifierJudge()(task, "It loops.\n[1] (python-docs:for § The for statement) The", group[:1]) is False
    assert sim.final_answer([]) == (-1, "")
