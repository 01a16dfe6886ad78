"""Drive the app's own handlers (the functions Gradio calls) the way the browser does, without a browser.

The driver keeps what the browser keeps (the chat history, with content as Gradio 6 parts lists)
and what Gradio keeps server-side (the ``gr.State`` values), and passes each handler exactly the
inputs its event is wired to in ``build_app``.
"""
from __future__ import annotations

import types

import gradio as gr

from agents.tools import ToolRegistry, calculator_tool
from serve.app import build_app
from serve.chat import ChatModel, ChatSettings
from serve.feedback import FeedbackStore
from tests.agents.test_agent import ScriptedLLM


def unwrap(value):
    if isinstance(value, dict) and value.get("__type__") == "update":
        return value.get("value", SKIP)
    return value


SKIP = object()


def as_browser(history):
    """What the browser sends back: Gradio 6 hands message content as lists of text parts."""
    out = []
    for m in history:
        m = dict(m)
        if isinstance(m.get("content"), str):
            m["content"] = [{"type": "text", "text": m["content"]}]
        out.append(m)
    return out


class AppDriver:
    def __init__(self, tiny_model_dir, db_path, answers: list[str], session: str = "sess-1",
                 store: FeedbackStore | None = None, switch_roots=None, chat: ChatModel | None = None):
        # Each answer is one agent step: a final answer (no tool), so the script is one step per turn.
        self.llm = ScriptedLLM([f" ok\nFinal Answer: {a}" for a in answers])
        self.chat = chat or ChatModel(str(tiny_model_dir), ChatSettings(), llm=self.llm,
                                      tools=ToolRegistry([calculator_tool()]))
        self.store = store if store is not None else FeedbackStore(db_path)
        self.demo = build_app(self.chat, self.store, "be kind", switch_roots=switch_roots)
        self.fns = {f.fn.__name__: f.fn for f in self.demo.fns.values() if f.fn is not None}
        self.request = types.SimpleNamespace(session_hash=session)
        self.history: list[dict] = []
        self.served = None
        for block in self.demo.blocks.values():
            if isinstance(block, gr.State) and isinstance(block.value, dict) and "turns" in block.value:
                import copy

                self.served = copy.deepcopy(block.value)
        self.last_feedback = None
        self.status = ""
        self.feedback_value = None

    def _chat_out(self, value):
        if isinstance(value, dict) and value.get("__type__") == "update":
            if "feedback_value" in value:
                self.feedback_value = value["feedback_value"]
        v = unwrap(value)
        if v is not SKIP and v is not None and not isinstance(v, gr.components.Component):
            self.history = as_browser(v)

    def ask(self, message: str) -> str:
        box, chat_out, *_rest = self.fns["add_user"](message, as_browser(self.history), self.served)
        self._chat_out(chat_out)
        self._run_answer()
        return self.status

    def _run_answer(self):
        for chat_out, served, status in self.fns["answer"](as_browser(self.history), "be kind", self.served,
                                                             self.request):
            self._chat_out(chat_out)
            if unwrap(served) is not SKIP and not _is_skip(served):
                self.served = served
            if not _is_skip(status):
                self.status = status

    def regenerate(self) -> str:
        chat_out, self.served, self.status = self.fns["drop_last_turn"](as_browser(self.history), "be kind",
                                                                         self.served, self.request)
        self._chat_out(chat_out)
        self._run_answer()
        return self.status

    def answer_index(self, turn: int) -> int:
        """Index of the first message of the n-th assistant group (what a like event's index is)."""
        groups = [i for i, m in enumerate(self.history) if m["role"] == "assistant"
                  and (i == 0 or self.history[i - 1]["role"] != "assistant")]
        return groups[turn]

    def rate(self, turn: int, liked: bool | None) -> str:
        data = gr.LikeData(None, {"index": self.answer_index(turn), "value": "x", "liked": liked})
        fid, status, served = self.fns["on_like"](as_browser(self.history), "be kind", self.served, data, self.request)
        if not _is_skip(served):
            self.served = served
        if not _is_skip(fid):
            self.last_feedback = fid
        self.status = status
        return status

    def edit(self, turn: int, text: str) -> str:
        start = self.answer_index(turn)
        end = start
        while end + 1 < len(self.history) and self.history[end + 1]["role"] == "assistant":
            end += 1
        previous = self.history[end]["content"]
        self.history[end] = dict(self.history[end], content=[{"type": "text", "text": text}])
        data = gr.EditData(None, {"index": end, "value": [{"type": "text", "text": text}], "previous_value": previous})
        fid, status, served, chat_out = self.fns["on_edit"](as_browser(self.history), "be kind", self.served, data,
                                                            self.request)
        if not _is_skip(served):
            self.served = served
        if not _is_skip(fid):
            self.last_feedback = fid
        self._chat_out(chat_out)
        self.status = status
        return status

    def comment(self, text: str) -> str:
        _, self.status = self.fns["on_comment"](text, self.last_feedback)
        return self.status

    def clear(self):
        self.history, self.last_feedback, self.status, _, self.served = self.fns["clear_all"]()


def _is_skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1
