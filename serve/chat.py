"""The chat app: a checkpoint answering through the ReAct agent, each step shown as it happens.

Thoughts and tool calls appear as collapsible messages (Gradio metadata titles) with the tool's
arguments, observation and duration; the final answer follows with the sources that the search
tool returned. ``agent=False`` gives plain chat that streams token by token.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import json
import re
import time
from typing import Any, Callable, Iterable, Iterator, TypeVar

from agents.agent import LLM, ReActAgent, Trace, TransformersLLM
from agents.tools import ToolRegistry, default_tools
from align.generate import stream_reply
from align.models import ModelSource, load_policy
from serve.settings import ChatSettings

# "[i] (SOURCE) text", where a file name or heading may hold brackets itself ("notes (1).md § Plan (v2)")
_SOURCE = re.compile(r"^\[\d+\] \(((?:[^()\n]|\([^()\n]*\))*)\)", re.M)


def message_text(content: Any) -> str:
    """Gradio 6 hands content as a string or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    if isinstance(content, (list, tuple)):
        return "".join(message_text(part) for part in content)
    return "" if content is None else str(content)


def to_chat_messages(history: list[dict], message: Any, system_prompt: str | None) -> list[dict[str, str]]:
    """Gradio history -> chat messages: agent steps (messages with a metadata title) are left out."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt and system_prompt.strip() else []
    messages += plain_history(history)
    messages.append({"role": "user", "content": message_text(message)})
    return messages


def plain_history(history: list[dict]) -> list[dict[str, str]]:
    """The user and assistant messages of a Gradio history as plain ``{role, content}`` text, agent steps
    (messages with a metadata title) and empty messages left out.
    """
    out = []
    for turn in history or []:
        if turn.get("role") not in ("user", "assistant") or (turn.get("metadata") or {}).get("title"):
            continue
        text = message_text(turn.get("content"))
        if text:
            out.append({"role": turn["role"], "content": text})
    return out


class ChatModel:
    """Loads the model once; every request reuses it (and the tools). ``switch`` swaps in another checkpoint.

    ``settings``: ``ChatSettings``, or the app's whole ``ServeConfig`` (which extends it)."""

    def __init__(self, model_ref: str, settings: ChatSettings | None = None, retriever=None,
                 llm: LLM | None = None, tools: ToolRegistry | None = None):
        self.settings = settings or ChatSettings()
        self._fixed_llm = llm
        self.model, self.tokenizer, self.source = load_policy(model_ref)
        self.llm = llm or self._make_llm(self.model, self.tokenizer)
        self.tools = tools or default_tools(retriever)

    def _make_llm(self, model, tokenizer) -> LLM:
        return TransformersLLM(model, tokenizer, self.settings.temperature)

    @property
    def checkpoint_id(self) -> str:
        """What feedback names as the model that wrote an answer, and what ``align retrain`` trains next:
        an embedded or shipped name as is (portable), any other model by its resolved folder or hub id."""
        from align.models import SHIPPED_MODELS

        if self.source.kind == "embedded" or self.source.ref in SHIPPED_MODELS:
            return self.source.ref
        return self.source.path or self.source.ref

    @property
    def short_name(self) -> str:
        """For the header: the reference's last part and the stage (``kto-feedback-… (kto)``); the full path
        is in the model panel."""
        ref = self.source.ref.rstrip("/\\")
        parts = [p for p in ref.replace("\\", "/").split("/") if p]
        name = ref if self.source.kind in ("embedded", "hub") or not parts else (
            "/".join(parts[-2:]) if parts[-1] == "model" and len(parts) > 1 else parts[-1])
        stage = self.source.manifest.stage if self.source.manifest is not None else None
        return f"{name} ({stage})" if stage else name

    def sample_temperature(self) -> float:
        """The temperature of Regenerate: ``temperature`` when it is above 0, else ``regenerate_temperature``."""
        return self.settings.temperature if self.settings.temperature > 0 else self.settings.regenerate_temperature

    def _sampling_llm(self) -> LLM:
        if self._fixed_llm is not None:
            return self._fixed_llm
        return TransformersLLM(self.model, self.tokenizer, self.sample_temperature())

    def switch(self, model_ref: str) -> None:
        """Load another checkpoint, then replace the current one (requests in flight finish on the old one)."""
        model, tokenizer, source = load_policy(model_ref)
        llm = self._fixed_llm or self._make_llm(model, tokenizer)
        self.model, self.tokenizer, self.source, self.llm = model, tokenizer, source, llm

    def respond(self, message: Any, history: list[dict], system_prompt: str | None = None,
                turn: dict | None = None, sample: bool = False) -> Iterator[Any]:
        """Stream one turn. ``turn`` (optional) receives ``answer`` (without sources) and ``trace``.
        ``sample``: decode at ``sample_temperature()`` with nucleus sampling (Regenerate), not greedily."""
        if self.settings.agent.enabled:
            yield from self.respond_agent(message, history, system_prompt, turn, sample=sample)
            return
        messages = to_chat_messages(history, message, system_prompt)
        answer = ""
        temperature = self.sample_temperature() if sample else self.settings.temperature
        for piece in stream_reply(self.model, self.tokenizer, messages, max_new_tokens=self.settings.max_new_tokens,
                                  temperature=temperature, top_p=self.settings.top_p):
            answer += piece
            yield answer
        if turn is not None:
            turn.update(answer=answer.strip(), trace=None)

    def respond_agent(self, message: Any, history: list[dict], system_prompt: str | None = None,
                      turn: dict | None = None, sample: bool = False) -> Iterator[list[dict]]:
        """Yield the growing list of assistant messages for this turn: steps, then the answer.

        While the model writes a step its text streams into a "Thinking" message; once it writes
        ``Final Answer:`` the answer itself streams token by token.
        """
        llm = self._sampling_llm() if sample else self.llm
        agent = ReActAgent(llm, self.tools, max_steps=self.settings.max_steps,
                           max_new_tokens=self.settings.max_new_tokens, system_prompt=system_prompt or None,
                           stream_tokens=True, force_final_answer=True,
                           constrained=self.settings.agent.constrained and getattr(llm, "supports_grammar", False),
                           citations=self.settings.agent.citations)
        shown: list[dict] = []
        sources: list[str] = []
        trace = Trace(question=message_text(message), format=agent.format)
        for ev in agent.stream(message_text(message), plain_history(history), trace):
            if ev.type == "token":
                yield _snapshot(shown) + [_draft(ev.content)]
                continue
            if ev.type == "thought":
                shown.append({"role": "assistant", "content": literal_markdown(ev.content), "metadata": {"title": "💭 Thought"}})
            elif ev.type == "tool_call":
                args = json.dumps(ev.args) if not isinstance(ev.args, str) else ev.args
                shown.append({"role": "assistant", "content": f"`{ev.tool}` {args}",
                              "metadata": {"title": f"🛠️ {call_title(ev.tool, ev.args)}", "status": "pending"}})
            elif ev.type == "observation":
                step = shown[-1] if shown and shown[-1]["metadata"].get("status") == "pending" else None
                if step is None:
                    step = {"role": "assistant", "content": "", "metadata": {"title": f"🛠️ {ev.tool}"}}
                    shown.append(step)
                step["content"] += f"\n\n**Observation**{'' if ev.ok else ' (error)'}:\n{ev.content}"
                step["metadata"].update(status="done", duration=ev.duration_s)
                if ev.tool == "search" and ev.ok:
                    for found in _SOURCE.findall(ev.content):  # two chunks of one section: listed once
                        if found not in sources:
                            sources.append(found)
            elif ev.type == "error":
                # One collapsed line: what was wrong; inside, what the model wrote (not the format again).
                wrote = (ev.raw or "").strip() or "(nothing)"
                shown.append({"role": "assistant", "content": f"The model wrote:\n```text\n{wrote[:1500]}\n```",
                              "metadata": {"title": f"⚠️ Step {ev.step} unreadable: {_one_line(ev.content, 90)}",
                                           "status": "done"}})
            elif ev.type == "final_answer":
                answer = ev.content + (SOURCES_MARK + "; ".join(sources) if sources else "")
                shown.append({"role": "assistant", "content": answer})
            yield _snapshot(shown)
        if not shown or (shown[-1].get("metadata") or {}).get("title"):
            shown.append({"role": "assistant", "content": NO_ANSWER})
            yield _snapshot(shown)
        if turn is not None:
            turn.update(answer=trace.answer.strip() if trace.answer else None, trace=trace.to_dict())


SOURCES_MARK = "\n\n**Sources:** "

T = TypeVar("T")
_NOTHING = object()


def coalesce(updates: Iterable[T], interval_s: float, shape: Callable[[T], Any] = lambda u: None,
             clock: Callable[[], float] = time.monotonic) -> Iterator[T]:
    """Thin out a stream of growing snapshots (``ChatModel.respond``'s updates) to at most one per
    ``interval_s`` seconds, keeping the newest: each one replaces the one before, so dropping one loses
    nothing the next does not carry.

    Sent at once, whatever the time: the first update (time to first token is not delayed), every
    update whose ``shape(update)`` differs from the last sent one's (a new agent step, a step done,
    the first visible answer text), and, at the end, the last update if it was held (the full text).
    A held update goes out when the next update arrives after the interval, so what is shown lags the
    stream by at most the interval plus one gap between tokens. ``interval_s <= 0``: every update.

    Why: every update the app yields costs Gradio a postprocess of the whole chat, a diff and an SSE
    message (bench/RESULTS.md, issue #18: ~4 ms of app CPU per streamed token), whatever the token rate.
    Gradio's own throttling (the browser's render rate; grouping messages not yet sent) comes after
    that server-side postprocess of every yield, so it does not save it; hence this, before the yield.
    """
    sent_at: float | None = None
    sent_shape: Any = _NOTHING
    held: Any = _NOTHING
    for update in updates:
        now, now_shape = clock(), shape(update)
        if sent_at is not None and now_shape == sent_shape and now - sent_at < interval_s:
            held = update
            continue
        sent_at, sent_shape, held = now, now_shape, _NOTHING
        yield update
    if held is not _NOTHING:
        yield held


def display_shape(shown: list[dict]) -> tuple:
    """What must not wait in ``coalesce``: the messages' roles, step titles and statuses, and whether
    each has visible text yet. Only the text of a message growing changes nothing here."""
    return tuple((m.get("role"), (m.get("metadata") or {}).get("title"), (m.get("metadata") or {}).get("status"),
                  bool(message_text(m.get("content")).strip())) for m in shown)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+\-.!|~$])")


def literal_markdown(text: str) -> str:
    """``text`` shown as written by a Markdown renderer: each character Markdown (or the HTML in
    it) would read as markup is backslash-escaped. For the model's thoughts, which are prose with
    arithmetic in them ("costs 3*5* = $15" was shown as "costs 35" with the rest in italics);
    answers keep their Markdown (code fences, lists)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _one_line(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def call_title(tool: str | None, args) -> str:
    """``calculator(expression="348 * 27")``: the tool and its arguments, on one short line."""
    if isinstance(args, dict):
        inner = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items())
    elif args in (None, ""):
        inner = ""
    else:
        inner = json.dumps(args, ensure_ascii=False) if not isinstance(args, str) else args
    return f"{tool}({_one_line(inner, 80)})"
NO_ANSWER = "I could not finish within the step limit."


def _snapshot(shown: list[dict]) -> list[dict]:
    return [dict(m, metadata=dict(m.get("metadata", {}))) for m in shown]


def _draft(text: str) -> dict:
    """The step being generated, for display: the answer once it starts, else the raw thinking."""
    text = text.split("\nObservation:")[0]
    if "Final Answer:" in text:
        return {"role": "assistant", "content": text.split("Final Answer:", 1)[1].strip()}
    return {"role": "assistant", "content": literal_markdown(text.strip()) or "…",
            "metadata": {"title": "💭 Thinking…", "status": "pending"}}


def strip_sources(text: str) -> str:
    """An answer without the sources block the app appends after ``SOURCES_MARK``."""
    return text.split(SOURCES_MARK, 1)[0].strip()


def model_card(source: ModelSource) -> dict[str, Any]:
    """What the model panel shows of a checkpoint: reference, kind, path and, for a Keel checkpoint, its
    manifest's stage, base model, parents, metrics and date.
    """
    card: dict[str, Any] = {"reference": source.ref, "kind": source.kind, "path": source.path}
    if source.manifest is not None:
        m = source.manifest
        card.update(stage=m.stage, base_model=m.base_model, parents=m.parents, metrics=m.metrics, created_at=m.created_at)
    return card


def answered_turn(history: list[dict], index: int) -> tuple[list[dict], str, int] | None:
    """For the assistant message at ``index`` (any message of a grouped turn): the chat before
    that turn (ending with the user's message), the turn's final answer (sources removed) and
    the index of that answer message. None when the turn has no final answer."""
    if not (0 <= index < len(history)) or history[index].get("role") != "assistant":
        return None
    start = index
    while start > 0 and history[start - 1].get("role") == "assistant":
        start -= 1
    end = index
    while end + 1 < len(history) and history[end + 1].get("role") == "assistant":
        end += 1
    answers = [i for i in range(start, end + 1) if not (history[i].get("metadata") or {}).get("title")]
    if not answers or start == 0:
        return None
    text = strip_sources(message_text(history[answers[-1]].get("content")))
    if not text or text == NO_ANSWER:
        return None
    return history[:start], text, answers[-1]


def prompt_messages(before: list[dict], system_prompt: str | None) -> list[dict[str, str]]:
    """What an answer replied to, as chat messages: system prompt, earlier turns, the user's message."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt and system_prompt.strip() else []
    return system + plain_history(before)
