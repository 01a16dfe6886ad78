"""The Gradio app: chat with streamed agent steps, and every piece of feedback stored.

Built from ``gr.Blocks`` rather than ``gr.ChatInterface`` because ChatInterface's edit re-runs
the conversation from an edited *user* message, while Keel needs an edited *answer* kept as a
correction (edited = chosen, original = rejected), and its regenerate discards the old answer,
which Keel keeps as an alternative.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from typing import Any

from align.errors import KeelError
from serve.chat import (DEFAULT_SYSTEM_PROMPT, ChatModel, answered_turn, message_text, model_card,
                        prompt_messages, strip_sources)
from serve.feedback import FeedbackStore


def _session(request) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


def build_app(chat: ChatModel, store: FeedbackStore | None = None, system_prompt: str = DEFAULT_SYSTEM_PROMPT):
    import gradio as gr

    def add_user(message: str, history: list[dict]):
        if not (message or "").strip():
            return gr.update(), history, gr.update()
        # Send stays disabled until the answer is complete (or stopped): one question at a time.
        return "", (history or []) + [{"role": "user", "content": message}], gr.update(interactive=False)

    def answer(history: list[dict], system: str, request: gr.Request):
        """Stream the answer to the last user message; record it once it is complete."""
        if not history or history[-1].get("role") != "user":
            yield history
            return
        before, message = history[:-1], history[-1]["content"]
        turn: dict[str, Any] = {}
        shown: list[dict] = []
        for update in chat.respond(message, before, system, turn=turn):
            shown = update if isinstance(update, list) else [{"role": "assistant", "content": update}]
            yield history + shown
        if store is not None and turn.get("answer"):
            store.add_response(_session(request), chat.checkpoint_id, prompt_messages(history, system),
                               turn["answer"], trace=turn.get("trace"))

    def drop_last_turn(history: list[dict], system: str, request: gr.Request):
        """Regenerate: keep the old answer on record as an alternative, then answer again."""
        history = list(history or [])
        last_user = max((i for i, m in enumerate(history) if m.get("role") == "user"), default=None)
        if last_user is None:
            return history
        found = answered_turn(history, len(history) - 1)
        if store is not None and found is not None:
            before, text, _ = found
            store.add_feedback("regenerate", session_id=_session(request), checkpoint_id=chat.checkpoint_id,
                               prompt=prompt_messages(before, system), completion=text, conversation=history)
        return history[: last_user + 1]

    def on_like(history: list[dict], system: str, data: gr.LikeData, request: gr.Request):
        if store is None:
            return None, "Feedback is off (no database)."
        index = data.index[0] if isinstance(data.index, (list, tuple)) else data.index
        found = answered_turn(history, int(index))
        if not isinstance(data.liked, bool):
            return None, "Rating removed from view (stored ratings are kept; the latest one counts)."
        if found is None:
            return None, f"Message {index}: this turn has no final answer to rate (the agent stopped at its step limit)."
        before, text, _ = found
        fid = store.add_feedback("rating", session_id=_session(request), checkpoint_id=chat.checkpoint_id,
                                 prompt=prompt_messages(before, system), completion=text, label=data.liked,
                                 conversation=history)
        return fid, f"Saved {'👍' if data.liked else '👎'} (feedback #{fid}). Add a comment below if you like."

    def on_edit(history: list[dict], system: str, data: gr.EditData, request: gr.Request):
        index = data.index[0] if isinstance(data.index, (list, tuple)) else data.index
        if store is None or history[index].get("role") != "assistant" or (history[index].get("metadata") or {}).get("title"):
            return None, ""
        found = answered_turn(history, int(index))
        original, edited = strip_sources(message_text(data.previous_value)), strip_sources(message_text(data.value))
        if found is None or found[2] != index or not original or not edited or original == edited:
            return None, ""
        before = found[0]
        fid = store.add_feedback("edit", session_id=_session(request), checkpoint_id=chat.checkpoint_id,
                                 prompt=prompt_messages(before, system), completion=original,
                                 edited=edited, conversation=history)
        return fid, f"Saved your edit as a correction (feedback #{fid})."

    def on_comment(comment: str, feedback_id: int | None):
        if not (comment or "").strip():
            return gr.update(), "Write a comment first."
        if store is None or feedback_id is None:
            return gr.update(), "Rate or edit an answer first; the comment goes with it."
        store.add_comment(int(feedback_id), comment.strip())
        return "", f"Comment saved with feedback #{feedback_id}."

    def on_switch(ref: str):
        try:
            chat.switch(ref.strip())
        except KeelError as e:
            return gr.update(), f"Could not load {ref!r}: {e}", gr.update()
        return model_card(chat.source), f"Now serving `{chat.source.display_name}`.", _title(chat)

    with gr.Blocks(title="Keel") as demo:
        title = gr.Markdown(_title(chat))
        with gr.Accordion("Model", open=False):
            card = gr.JSON(model_card(chat.source), label="checkpoint manifest")
            with gr.Row():
                switch_to = gr.Textbox(label="Switch to checkpoint", placeholder="runs/dpo-feedback or a hub id",
                                       scale=4)
                switch_btn = gr.Button("Load", scale=1)
            switch_status = gr.Markdown()
        with gr.Accordion("System prompt", open=False):
            system = gr.Textbox(system_prompt, show_label=False, lines=2, elem_id="system-prompt")
        chatbot = gr.Chatbot(label="Keel", editable="all", height=540, elem_id="chatbot",
                             feedback_options=("Like", "Dislike"))
        with gr.Row():
            box = gr.Textbox(placeholder="Ask something; answers may use the tools", show_label=False, scale=8,
                             elem_id="message", autofocus=True)
            send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
            stop = gr.Button("Stop", variant="stop", scale=1, elem_id="stop")
        with gr.Row():
            regenerate = gr.Button("🔄 Regenerate", size="sm", elem_id="regenerate")
            clear = gr.Button("🗑️ Clear", size="sm")
        feedback_status = gr.Markdown(elem_id="feedback-status")
        with gr.Accordion("Comment on your last rating or edit", open=False):
            comment = gr.Textbox(show_label=False, placeholder="What was good or wrong?", lines=2)
            comment_btn = gr.Button("Save comment", size="sm")
        last_feedback = gr.State(None)

        limit = chat.settings.concurrency_limit
        runs = []
        enable_send = dict(fn=lambda: gr.update(interactive=True), inputs=None, outputs=send, queue=False)
        for trigger in (box.submit, send.click):
            run = (trigger(add_user, [box, chatbot], [box, chatbot, send], queue=False)
                   .then(answer, [chatbot, system], chatbot, concurrency_limit=limit, concurrency_id="generate"))
            run.then(**enable_send)
            runs.append(run)
        for trigger in (regenerate.click, chatbot.retry):
            run = (trigger(drop_last_turn, [chatbot, system], chatbot, queue=False)
                   .then(lambda: gr.update(interactive=False), None, send, queue=False)
                   .then(answer, [chatbot, system], chatbot, concurrency_limit=limit, concurrency_id="generate"))
            run.then(**enable_send)
            runs.append(run)
        stop.click(None, None, None, cancels=runs, queue=False).then(**enable_send)
        clear.click(lambda: ([], None, ""), None, [chatbot, last_feedback, feedback_status], queue=False)
        # Feedback writes skip the queue: a thumbs-up must not wait behind other users' generations.
        chatbot.like(on_like, [chatbot, system], [last_feedback, feedback_status], queue=False)
        chatbot.edit(on_edit, [chatbot, system], [last_feedback, feedback_status], queue=False)
        comment_btn.click(on_comment, [comment, last_feedback], [comment, feedback_status], queue=False)
        switch_btn.click(on_switch, switch_to, [card, switch_status, title], concurrency_id="generate")
    return demo


def _title(chat: ChatModel) -> str:
    tools = f" · tools: {', '.join(chat.tools.names())}" if chat.settings.agent else ""
    return f"## Keel chat · `{chat.source.display_name}`{tools}"
