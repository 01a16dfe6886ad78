"""The chat app: streams a checkpoint's answers token by token, with its manifest on show.

This is the plain-chat face of Keel; the agent (ReAct steps, retrieval) and feedback capture
plug into ``build_app`` as they land.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from dataclasses import dataclass
from typing import Any, Iterator

from align.generate import stream_reply
from align.models import ModelSource, load_policy

DEFAULT_SYSTEM_PROMPT = "You are a helpful, honest and harmless assistant."


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
    messages = [{"role": "system", "content": system_prompt}] if system_prompt and system_prompt.strip() else []
    for turn in history or []:
        if turn.get("role") in ("user", "assistant"):
            text = message_text(turn.get("content"))
            if text:
                messages.append({"role": turn["role"], "content": text})
    messages.append({"role": "user", "content": message_text(message)})
    return messages


@dataclass
class ChatSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0
    concurrency_limit: int = 1


class ChatModel:
    """Loads the model once; every request reuses it."""

    def __init__(self, model_ref: str, settings: ChatSettings | None = None):
        self.settings = settings or ChatSettings()
        self.model, self.tokenizer, self.source = load_policy(model_ref)

    def respond(self, message: Any, history: list[dict], system_prompt: str | None = None) -> Iterator[str]:
        """Yield the growing answer, as Gradio's streaming chat expects."""
        messages = to_chat_messages(history, message, system_prompt)
        answer = ""
        for piece in stream_reply(self.model, self.tokenizer, messages, max_new_tokens=self.settings.max_new_tokens,
                                  temperature=self.settings.temperature):
            answer += piece
            yield answer


def model_card(source: ModelSource) -> dict[str, Any]:
    card: dict[str, Any] = {"reference": source.ref, "kind": source.kind, "path": source.path}
    if source.manifest is not None:
        m = source.manifest
        card.update(stage=m.stage, base_model=m.base_model, parents=m.parents, metrics=m.metrics, created_at=m.created_at)
    return card


def build_app(chat: ChatModel):
    import gradio as gr

    with gr.Blocks(title="Keel") as demo:
        gr.Markdown(f"## Keel chat · `{chat.source.display_name}`")
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
