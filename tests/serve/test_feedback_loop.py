"""Every pairing rule README states, driven through the app's handlers in the order a user acts,
then checked in the export (serve export-feedback). Plus the app-side security rules on feedback."""
import json
import logging

import pytest

from serve.feedback import LIMITS, FeedbackStore, export_feedback
from tests.serve.app_driver import AppDriver


def export(tmp_path, view="answers"):
    """The export's pairs and rows as (question, chosen/completion, ...) tuples. The pairing rules are
    about which answer beats which, so they are read in the chat's view (``answers``); the default
    view writes the same pairs as the agent's steps (test below)."""
    out = tmp_path / f"export-{view}"
    summary = export_feedback(tmp_path / "fb.db", out, view)
    pairs = {(p["prompt"][-1]["content"], p["chosen"][0]["content"], p["rejected"][0]["content"])
             for p in map(json.loads, (out / "preference.jsonl").read_text().splitlines())}
    kto = {(r["prompt"][-1]["content"], r["completion"][0]["content"], r["label"])
           for r in map(json.loads, (out / "kto.jsonl").read_text().splitlines())}
    return pairs, kto, summary


@pytest.fixture
def app(tiny_model_dir, tmp_path):
    def make(answers, **kw):
        return AppDriver(tiny_model_dir, tmp_path / "fb.db", answers, **kw)
    return make


# (first answer's rating, second answer's rating) -> pairs README promises
#   "a liked answer > its alternatives not liked; alternatives not disliked > a disliked answer"
RULES = [
    ("like", "dislike", {("Q", "A", "B")}),   # liked old > disliked new (issue #16 item 3)
    ("like", None, {("Q", "A", "B")}),        # liked > an alternative not rated
    (None, "dislike", {("Q", "A", "B")}),     # an alternative not disliked > a disliked answer
    ("dislike", None, {("Q", "B", "A")}),
    (None, "like", {("Q", "B", "A")}),
    ("dislike", "like", {("Q", "B", "A")}),
    ("like", "like", set()),                  # two liked: no preference
    ("dislike", "dislike", set()),            # two disliked: no preference
    (None, None, set()),                      # a regenerate alone is not a label
]


@pytest.mark.parametrize("first,second,expected", RULES)
def test_each_pairing_rule_through_the_app_handlers(app, tmp_path, first, second, expected):
    a = app(["A", "B"])
    a.ask("Q")
    if first:
        a.rate(0, first == "like")
    a.regenerate()
    if second:
        a.rate(0, second == "like")
    pairs, kto, summary = export(tmp_path)
    assert pairs == expected
    want_kto = {("Q", t, r == "like") for t, r in (("A", first), ("B", second)) if r}
    assert kto == want_kto and summary["regenerates"] == 1


def test_the_default_export_writes_the_same_pairs_as_the_agents_steps(app, tmp_path):
    """View ``auto`` (default): an agent answer's pair and rating are its ReAct scratchpads, with the
    ReAct prompt (system prompt with the tools, then the question)."""
    drv = app(["A", "B"])
    drv.ask("Q")
    drv.rate(0, True)
    drv.regenerate()
    drv.rate(0, False)
    answers, _, _ = export(tmp_path)
    steps, kto, summary = export(tmp_path, "auto")
    assert answers == {("Q", "A", "B")}
    assert [(q, c.splitlines()[-1], r.splitlines()[-1]) for q, c, r in steps] == [("Q", "Final Answer: A", "Final Answer: B")]
    assert all(c.startswith("Thought:") for _, c, _ in kto) and summary["trajectory_rows"] >= 2
    out = tmp_path / "export-auto"
    prompt = json.loads((out / "preference.jsonl").read_text().splitlines()[0])["prompt"]
    assert prompt[0]["role"] == "system" and "Final Answer:" in prompt[0]["content"]


def test_regenerate_after_an_earlier_answer_was_edited_still_pairs(app, tmp_path):
    """The kind behind item 3: the context of the regenerated turn changed (an earlier answer edited)
    between the rated answer and its alternative; they are still alternatives of one turn."""
    a = app(["first", "A", "B"])
    a.ask("Q1")
    a.ask("Q")
    a.rate(1, True)
    a.edit(0, "first, corrected")
    a.regenerate()
    a.rate(1, False)
    pairs, kto, _ = export(tmp_path)
    assert ("Q", "A", "B") in pairs and ("Q1", "first, corrected", "first") in pairs
    assert {("Q", "A", True), ("Q", "B", False)} <= kto


def test_three_alternatives_and_the_latest_rating_counts(app, tmp_path):
    a = app(["A", "B", "C"])
    a.ask("Q")
    a.regenerate()
    a.rate(0, True)
    a.rate(0, False)  # flipped: the latest rating of B counts
    a.regenerate()
    a.rate(0, True)
    pairs, kto, _ = export(tmp_path)
    assert pairs == {("Q", "C", "A"), ("Q", "C", "B"), ("Q", "A", "B")}
    assert kto == {("Q", "B", False), ("Q", "C", True)}


def test_edit_is_a_pair_and_two_kto_rows_and_a_comment_is_kept(app, tmp_path):
    a = app(["Lyon"])
    a.ask("Capital of France?")
    assert "Saved your edit" in a.edit(0, "Paris")
    assert "Comment saved" in a.comment("wrong city")
    pairs, kto, summary = export(tmp_path)
    assert pairs == {("Capital of France?", "Paris", "Lyon")}
    assert kto == {("Capital of France?", "Paris", True), ("Capital of France?", "Lyon", False)}
    assert summary["comments"] == 1


def test_regenerate_samples_and_says_so_and_says_when_the_text_is_unchanged(app):
    a = app(["same", "same", "other"])
    a.ask("Q")
    assert a.chat.llm.calls  # the script answered
    status = a.regenerate()
    assert "same answer again" in status and "temperature 0.8" in status
    assert "New answer" in a.regenerate()


def test_regenerate_decodes_with_sampling_by_default(tiny_model_dir):
    from serve.chat import ChatModel, ChatSettings

    chat = ChatModel(str(tiny_model_dir), ChatSettings(max_new_tokens=4))
    assert chat.llm.temperature == 0.0  # answers: greedy
    sampled = chat._sampling_llm()
    assert sampled.temperature == 0.8 and sampled._kwargs(4, [], None)["do_sample"] is True


def test_ratings_stay_highlighted_after_an_edit_and_a_new_turn(app):
    a = app(["A", "B", "C"])
    a.ask("Q1")
    a.ask("Q2")
    a.rate(1, True)
    a.rate(0, False)
    a.edit(0, "A, better")
    assert a.feedback_value == ["Dislike", "Like"]
    a.ask("Q3")
    assert a.feedback_value == ["Dislike", "Like", None]
    a.clear()
    assert a.history == [] and a.served["turns"] == {}


# -- security: feedback refers to what this server served, in this session ----------------------------
def test_a_rating_for_an_answer_never_served_is_refused(app, tmp_path):
    a = app(["A"])
    a.history = [{"role": "user", "content": "forged?"}, {"role": "assistant", "content": "forged answer"}]
    assert "nothing stored" in a.rate(0, True)
    assert "not stored" in a.edit(0, "forged edit") or a.last_feedback is None
    assert FeedbackStore(tmp_path / "fb.db").feedback() == []


def test_a_rating_records_the_served_text_not_what_the_client_sends(app, tmp_path):
    a = app(["the real answer"])
    a.ask("Q")
    a.history[-1] = {"role": "assistant", "content": "text the client made up"}
    a.rate(0, True)
    rows = FeedbackStore(tmp_path / "fb.db").feedback("rating")
    assert [r["completion"] for r in rows] == ["the real answer"] and rows[0]["response_id"]


def test_another_session_cannot_rate_this_sessions_answer(app, tmp_path):
    a = app(["A"])
    a.ask("Q")
    rid = FeedbackStore(tmp_path / "fb.db").responses()[0]["id"]
    other = app(["B"], session="sess-2", store=a.store)
    other.history, other.served = a.history, {"turns": {}, "pending_regenerate": None}
    assert "nothing stored" in other.rate(0, True)
    from align.errors import DataError
    with pytest.raises(DataError, match="not served in this session"):
        a.store.add_feedback("rating", session_id="sess-2", checkpoint_id="c", prompt=[], completion="",
                             label=True, response_id=rid)


def test_every_stored_field_has_a_size_limit_with_a_clear_message(app, tmp_path):
    from align.errors import DataError

    a = app(["A"])
    a.ask("Q")
    huge_edit = "x" * (LIMITS["edited"] + 1)
    assert "edited is too long" in a.edit(0, huge_edit) and "limit is 32,000" in a.status
    a.rate(0, True)
    assert "comment is too long" in a.comment("y" * (LIMITS["comment"] + 1))
    store = a.store
    for field, kwargs in (("completion", dict(completion="z" * (LIMITS["completion"] + 1))),
                          ("prompt", dict(prompt=[{"role": "user", "content": "p" * LIMITS["prompt"]}])),
                          ("trace", dict(trace={"t": "t" * LIMITS["trace"]}))):
        args = dict(session_id="s", checkpoint_id="c", prompt=[{"role": "user", "content": "q"}], completion="a")
        args.update(kwargs)
        with pytest.raises(DataError, match=f"{field} is too long"):
            store.add_response(**args)
    assert "limit is 8,000" in a.fns["add_user"]("m" * 8001, [], a.served)[-1]
    assert len(store.feedback()) == 1  # only the rating; nothing oversized was written


def test_a_handler_failure_is_a_short_message_and_the_detail_goes_to_the_log(app, tmp_path, caplog):
    a = app(["A"])
    a.ask("Q")

    def broken(*args, **kwargs):
        raise RuntimeError("secret detail /home/op/.ssh")

    a.store.add_feedback = broken
    with caplog.at_level(logging.ERROR, logger="keel.serve"):
        status = a.rate(0, True)
    assert "Something went wrong (error " in status and "secret" not in status and ".ssh" not in status
    assert "secret detail" in caplog.text


def test_answer_errors_reach_an_api_client_without_python_text(tiny_model_dir, tmp_path):
    from gradio_client import Client

    from serve.app import build_app
    from serve.chat import ChatModel, ChatSettings

    class Broken(ChatModel):
        def respond(self, *a, **kw):
            raise RuntimeError("secret /srv/keel/internal.py")
            yield

    demo = build_app(Broken(str(tiny_model_dir), ChatSettings(agent=False)), FeedbackStore(tmp_path / "fb.db"))
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
                        show_error=False)
    try:
        client = Client(demo.local_url, verbose=False)
        result = client.predict([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "sys", api_name="/answer")
        text = json.dumps(result)
        assert "Something went wrong" in text and "secret" not in text and "Traceback" not in text
    finally:
        demo.close()


# -- security: switching the served model is an operator action ----------------------------------------
def test_switching_is_off_unless_the_operator_names_roots(app):
    a = app(["A"])
    assert "on_switch" not in a.fns


def _checkpoint(tiny_model_dir, out):
    from align.checkpoint import save_checkpoint
    from align.models import load_policy

    model, tok, _ = load_policy(str(tiny_model_dir))
    return save_checkpoint(model, tok, out, stage="kto", base_model="smollm2-135m", parents=["smollm2-135m"])


def test_switch_is_limited_to_checkpoints_under_the_roots_and_errors_reveal_no_paths(app, tiny_model_dir, tmp_path):
    from serve.app import switchable_checkpoints

    root = tmp_path / "runs"
    _checkpoint(tiny_model_dir, root / "kto-feedback-1" / "model")
    outside = _checkpoint(tiny_model_dir, tmp_path / "elsewhere" / "model")
    (root / "escape").symlink_to(outside.parent)  # a link out of the root is not offered
    (root / "broken").mkdir()
    (root / "broken" / "keel.json").write_text("{not json")
    a = app(["A", "B"], switch_roots=[str(root)])
    found = switchable_checkpoints([root])
    assert set(found) == {"runs/kto-feedback-1/model", "runs/broken"}
    for bad in (str(outside), "runs/does-not-exist", "~/.ssh", "../elsewhere/model", None):
        card, msg, title = a.fns["on_switch"](bad)
        assert "Not one of the listed checkpoints" in msg and str(tmp_path) not in msg
    card, msg, title = a.fns["on_switch"]("runs/broken")
    assert "Could not load runs/broken (error " in msg and str(tmp_path) not in msg and "keel.json" not in msg
    card, msg, title = a.fns["on_switch"]("runs/kto-feedback-1/model")
    assert "Now serving" in msg and "kto-feedback-1/model (kto)" in title and str(tmp_path) not in title
    assert a.chat.checkpoint_id == str(found["runs/kto-feedback-1/model"])
    a.ask("Q")
    a.rate(0, True)
    assert a.store.feedback("rating")[0]["checkpoint_id"] == str(found["runs/kto-feedback-1/model"])


def test_a_switch_message_does_not_outlive_the_next_turn_or_clear(app, tmp_path):
    a = app(["A"], switch_roots=[str(tmp_path / "runs")])
    _, msg, _ = a.fns["on_switch"]("runs/does-not-exist")
    assert "Not one of the listed checkpoints" in msg
    outputs = a.fns["add_user"]("next question", [], a.served)
    assert outputs[-1] == ""  # the switch status box is emptied by the next turn
    assert a.fns["clear_all"]()[3] == ""  # and by Clear


@pytest.mark.slow
def test_the_loop_on_the_embedded_model_retrains_and_the_app_switches(tmp_path, monkeypatch):
    """The embedded model answers for real; 20 answers rated through the handlers; retrain on CPU;
    the running app switches to the result and a new rating is recorded against it."""
    from align.cli import main as align_main
    from serve.chat import ChatModel, ChatSettings

    monkeypatch.chdir(tmp_path)
    chat = ChatModel("smollm2-135m", ChatSettings(max_new_tokens=24, agent=False))
    a = AppDriver(None, tmp_path / "fb.db", [], chat=chat, switch_roots=[str(tmp_path / "runs")])
    for i in range(20):
        a.ask(f"Say something about the number {i}.")
        a.rate(i, i % 2 == 0)
    out = tmp_path / "runs" / "kto-feedback"
    assert align_main(["retrain", "--from-feedback", str(tmp_path / "fb.db"), "--output_dir", str(out),
                       "--allow-one-source"]) == 0  # one test user: deliberate
    manifest = json.loads((out / "model" / "keel.json").read_text())
    assert manifest["parents"] == ["smollm2-135m"] and manifest["config"]["lora"]["enabled"]
    _, msg, _ = a.fns["on_switch"]("runs/kto-feedback/model")
    assert "Now serving" in msg
    a.ask("And now?")
    a.rate(20, True)
    last = a.store.feedback("rating")[-1]
    assert last["checkpoint_id"] == str((out / "model").resolve())
