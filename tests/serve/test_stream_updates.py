"""A streamed answer reaches the chat as few Gradio updates as its display needs (issue #18: the app's
own CPU per streamed token): at most one per ``stream_interval_ms``, the first text and every agent
step at once, the complete answer always, and no per-token ``gr.update`` (each one makes Gradio rebuild
the Chatbot and its config)."""
from __future__ import annotations

import types

import gradio as gr

from agents.tools import ToolRegistry, calculator_tool
from serve.app import build_app
from serve.chat import ChatModel, ChatSettings, coalesce, display_shape, message_text
from serve.cli import serve_config
from tests.serve.test_chat import StreamingLLM

TOKENS = [f" tok{i}" for i in range(200)]


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_coalesce_sends_the_first_at_once_then_at_most_one_per_interval_and_the_last():
    clock, sent_at = Clock(), []

    def stream():
        for i in range(200):  # one update per ms
            clock.t = i / 1000
            yield i

    for u in coalesce(stream(), 0.05, clock=clock):
        sent_at.append((clock.t, u))
    values = [u for _, u in sent_at]
    assert values[0] == 0 and values[-1] == 199  # first at once, the last (complete) one always
    assert len(values) <= 200 / 50 + 2
    times = [t for t, _ in sent_at[:-1]]
    assert all(b - a >= 0.05 for a, b in zip(times, times[1:]))
    assert list(coalesce(range(5), 0.0, clock=clock)) == [0, 1, 2, 3, 4]  # 0: every update


def test_coalesce_never_holds_back_a_change_of_shape():
    clock = Clock()
    updates = [("thinking", 1), ("thinking", 2), ("tool", 3), ("tool", 4), ("answer", 5), ("answer", 6)]
    out = list(coalesce(updates, 10.0, shape=lambda u: u[0], clock=clock))
    assert out == [("thinking", 1), ("tool", 3), ("answer", 5), ("answer", 6)]


def test_the_first_visible_text_is_a_change_of_shape():
    blank = [{"role": "assistant", "content": "  "}]
    text = [{"role": "assistant", "content": [{"type": "text", "text": "Hi"}]}]
    longer = [{"role": "assistant", "content": "Hi there"}]
    assert display_shape(blank) != display_shape(text) == display_shape(longer)


class TokenChat(ChatModel):
    """Plain chat whose answer streams ``TOKENS`` as fast as they can be read (as from a fast engine)."""

    produced = 0

    def respond(self, message, history, system_prompt=None, turn=None, sample=False):
        answer = ""
        for piece in TOKENS:
            TokenChat.produced += 1
            answer += piece
            yield answer
        if turn is not None:
            turn.update(answer=answer.strip(), trace=None)


def _answer_updates(chat, interval_ms):
    demo = build_app(chat, None, "be kind", stream_interval_ms=interval_ms)
    fns = {f.fn.__name__: f.fn for f in demo.fns.values() if f.fn is not None}
    served = {"turns": {}, "pending_regenerate": None}
    history = [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    produced_at_first = None
    outputs = []
    for chat_out, _served, _status in fns["answer"](history, "be kind", served, types.SimpleNamespace(session_hash="s")):
        if produced_at_first is None:
            produced_at_first = TokenChat.produced
        outputs.append(chat_out)
    return outputs, produced_at_first


def _value(out):
    return out.get("value") if isinstance(out, dict) and out.get("__type__") == "update" else out


def test_a_200_token_answer_is_a_few_updates_the_first_at_once_and_the_last_complete(tiny_model_dir):
    TokenChat.produced = 0
    outputs, produced_at_first = _answer_updates(TokenChat(str(tiny_model_dir), ChatSettings(agent=False)), 100)
    assert len(outputs) <= 8, len(outputs)  # not one per token (201 before)
    assert produced_at_first == 1  # the first token went out before the second was read
    assert message_text(_value(outputs[0])[-1]["content"]) == TOKENS[0]
    full = "".join(TOKENS)
    assert message_text(_value(outputs[-1])[-1]["content"]) == full
    # streamed updates are plain values; only the final one (it sets the ratings shown) is a gr.update
    assert not any(isinstance(o, dict) and o.get("__type__") == "update" for o in outputs[:-1])
    assert outputs[-1]["__type__"] == "update" and "feedback_value" in outputs[-1]


def test_interval_zero_streams_every_token_as_a_plain_value(tiny_model_dir):
    TokenChat.produced = 0
    outputs, _ = _answer_updates(TokenChat(str(tiny_model_dir), ChatSettings(agent=False)), 0)
    streamed = [message_text(_value(o)[-1]["content"]) for o in outputs[:-1]]
    assert streamed == ["".join(TOKENS[: i + 1]) for i in range(len(TOKENS))]
    assert not any(isinstance(o, dict) and o.get("__type__") == "update" for o in outputs[:-1])


def _agent_chat(tiny_model_dir):
    llm = StreamingLLM([' compute it\nAction: calculator\nAction Input: {"expression": "6*7"}',
                        " done\nFinal Answer: The answer is forty-two, as the calculator said."], chunk=2)
    return ChatModel(str(tiny_model_dir), ChatSettings(), llm=llm, tools=ToolRegistry([calculator_tool()]))


def test_every_agent_step_is_shown_however_long_the_interval(tiny_model_dir):
    every = [display_shape(_value(o)[1:]) for o in _answer_updates(_agent_chat(tiny_model_dir), 0)[0]]
    few_outputs = _answer_updates(_agent_chat(tiny_model_dir), 60_000)[0]
    few = [display_shape(_value(o)[1:]) for o in few_outputs]
    distinct = [s for i, s in enumerate(every) if i == 0 or s != every[i - 1]]
    assert [s for i, s in enumerate(few) if i == 0 or s != few[i - 1]] == distinct
    assert len(few) < len(every)
    final = _value(few_outputs[-1])
    assert [(m.get("metadata") or {}).get("title") for m in final[1:]] == [
        "💭 Thought", '🛠️ calculator(expression="6*7")', "💭 Thought", None]
    assert message_text(final[-1]["content"]) == "The answer is forty-two, as the calculator said."


def test_stream_interval_is_a_config_key_and_a_flag():
    assert serve_config([]).stream_interval_ms == 100
    assert serve_config(["--stream-interval-ms", "0"]).stream_interval_ms == 0
