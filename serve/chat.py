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
from dataclasses import dataclass
from typing import Any, Iterator

from agents.agent import LLM, ReActAgent, TransformersLLM
from agents.tools import ToolRegistry, default_tools
from align.generate import stream_reply
from align.models import ModelSource, load_policy

DEFAULT_SYSTEM_PROMPT = "You are a helpful, honest and harmless assistant."
_SOURCE = re.compile(r"^\[\d+\] \(([^)]*)\)", re.M)


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
    out = []
    for turn in history or []:
        if turn.get("role") not in ("user", "assistant") or (turn.get("metadata") or {}).get("title"):
            continue
        text = message_text(turn.get("content"))
        if text:
            out.append({"role": turn["role"], "content": text})
    return out


@dataclass
class ChatSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0
    concurrency_limit: int = 1
    agent: bool = True
    max_steps: int = 4


class ChatModel:
    """Loads the model once; every request reuses it (and the tools)."""

    def __init__(self, model_ref: str, settings: ChatSettings | None = None, retriever=None,
                 llm: LLM | None = None, tools: ToolRegistry | None = None):
        self.settings = settings or ChatSettings()
        self.model, self.tokenizer, self.source = load_policy(model_ref)
        self.llm = llm or TransformersLLM(self.model, self.tokenizer, self.settings.temperature)
        self.tools = tools or default_tools(retriever)

    def respond(self, message: Any, history: list[dict], system_prompt: str | None = None) -> Iterator[Any]:
        if self.settings.agent:
            yield from self.respond_agent(message, history, system_prompt)
            return
        messages = to_chat_messages(history, message, system_prompt)
        answer = ""
        for piece in stream_reply(self.model, self.tokenizer, messages, max_new_tokens=self.settings.max_new_tokens,
                                  temperature=self.settings.temperature):
            answer += piece
            yield answer

    def respond_agent(self, message: Any, history: list[dict], system_prompt: str | None = None) -> Iterator[list[dict]]:
        """Yield the growing list of assistant messages for this turn: steps, then the answer."""
        agent = ReActAgent(self.llm, self.tools, max_steps=self.settings.max_steps,
                           max_new_tokens=self.settings.max_new_tokens, system_prompt=system_prompt or None)
        shown: list[dict] = []
        sources: list[str] = []
        for ev in agent.stream(message_text(message), plain_history(history)):
            if ev.type == "thought":
                shown.append({"role": "assistant", "content": ev.content, "metadata": {"title": "💭 Thought"}})
            elif ev.type == "tool_call":
                args = json.dumps(ev.args) if not isinstance(ev.args, str) else ev.args
                shown.append({"role": "assistant", "content": f"`{ev.tool}` {args}",
                              "metadata": {"title": f"🛠️ {ev.tool}", "status": "pending"}})
            elif ev.type == "observation":
                step = shown[-1] if shown and shown[-1]["metadata"].get("status") == "pending" else None
                if step is None:
                    step = {"role": "assistant", "content": "", "metadata": {"title": f"🛠️ {ev.tool}"}}
                    shown.append(step)
                step["content"] += f"\n\n**Observation**{'' if ev.ok else ' (error)'}:\n{ev.content}"
                step["metadata"].update(status="done", duration=ev.duration_s)
                if ev.tool == "search" and ev.ok:
                    sources += [s for s in _SOURCE.findall(ev.content) if s not in sources]
            elif ev.type == "error":
                shown.append({"role": "assistant", "content": ev.content,
                              "metadata": {"title": "⚠️ Could not read the model's step"}})
            elif ev.type == "final_answer":
                answer = ev.content + ("\n\n**Sources:** " + "; ".join(sources) if sources else "")
                shown.append({"role": "assistant", "content": answer})
            yield [dict(m, metadata=dict(m.get("metadata", {}))) for m in shown]
        if not shown or (shown[-1].get("metadata") or {}).get("title"):
            shown.append({"role": "assistant", "content": "I could not finish within the step limit."})
            yield shown


def model_card(source: ModelSource) -> dict[str, Any]:
    card: dict[str, Any] = {"reference": source.ref, "kind": source.kind, "path": source.path}
    if source.manifest is not None:
        m = source.manifest
        card.update(stage=m.stage, base_model=m.base_model, parents=m.parents, metrics=m.metrics, created_at=m.created_at)
    return card


def build_app(chat: ChatModel):
    import gradio as gr

    with gr.Blocks(title="Keel") as demo:
        gr.Markdown(f"## Keel chat · `{chat.source.display_name}`"
                    + (f" · tools: {', '.join(chat.tools.names())}" if chat.settings.agent else ""))
        with gr.Accordion("Model", open=False):
            gr.JSON(model_card(chat.source), label="checkpoint manifest")
        system = gr.Textbox(DEFAULT_SYSTEM_PROMPT, label="System prompt", lines=2, render=False)
        gr.ChatInterface(
            chat.respond,
            additional_inputs=[system],
            additional_inputs_accordion=gr.Accordion("System prompt", open=False),
            concurrency_limit=chat.settings.concurrency_limit,
        )
    return demo
