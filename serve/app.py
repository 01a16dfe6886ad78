"""The Gradio app: chat with streamed agent steps, and every piece of feedback stored.

Built from ``gr.Blocks`` rather than ``gr.ChatInterface`` because ChatInterface's edit re-runs
the conversation from an edited *user* message, while Keel needs an edited *answer* kept as a
correction (edited = chosen, original = rejected), and its regenerate discards the old answer,
which Keel keeps as an alternative.

What the server trusts: the chat history arrives from the browser (or any API client) and may
have been changed there. So the answers this server served in a session are kept server-side
(a ``gr.State``, which clients cannot write): a rating, an edit, a regenerate or a comment is
recorded only against an answer in that record, with the prompt and the text as served. Handler
failures are logged with an error id; the user sees a short message, never Python's error text.
Switching the served model is an operator action: off unless ``switch_roots`` names folders,
and then limited to the Keel checkpoints found under them.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import functools
import logging
import uuid
from pathlib import Path
from typing import Any

from agents.openai_llm import ContextTooLongError, LLMServerError
from align.errors import KeelError
from serve.chat import ChatModel, coalesce, display_shape, message_text, model_card, prompt_messages, strip_sources
from serve.feedback import FeedbackDBError, FeedbackStore
from serve.settings import DEFAULT_SYSTEM_PROMPT

log = logging.getLogger("keel.serve")

MAX_MESSAGE_CHARS = 8_000  # one user message; the stored prompt has its own limit (serve.feedback.LIMITS)
MAX_HISTORY_MESSAGES = 400
STREAM_INTERVAL_MS = 100.0  # default of serve.yaml's stream_interval_ms (ServeConfig)

# Layout: bot bubbles that hold agent steps get a readable width (Gradio sizes bubbles to their
# text, which left thought/tool messages in a ~110 px column); the in-bubble edit box is as wide
# as the bubble and several lines high.
APP_CSS = """
#chatbot .bot-row .flex-wrap:has(.thought-group) { width: 100% !important; }
#chatbot .bot.message:has(.thought-group) { min-width: min(760px, 75vw) !important; }
#chatbot .message-row:has(textarea) .flex-wrap { width: 100% !important; }
#chatbot .message:has(textarea) { min-width: min(760px, 75vw) !important; }
#chatbot .message-row textarea { min-height: 10em !important; width: 100% !important; }
#header h2 { margin: 0; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
"""


def _session(request) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


def _error_message(fn_name: str) -> str:
    ref = uuid.uuid4().hex[:8]
    log.exception("handler %s failed (error %s)", fn_name, ref)
    return f"Something went wrong (error {ref}); nothing was stored. The server log has the details."


def _guarded(fallback):
    """Run a handler; a ``KeelError`` becomes its own (user-facing) message, anything else a short
    message with an error id while the traceback goes to the log. ``fallback(msg)`` builds the outputs."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except FeedbackDBError as e:  # damaged / full / read-only: the operator needs the path, the user not
                log.error("handler %s: %s", fn.__name__, e)
                return fallback(e.user_message)
            except KeelError as e:
                log.info("handler %s refused: %s", fn.__name__, e)
                return fallback(str(e))
            except Exception:  # noqa: BLE001 - the user gets a short message, the log the detail
                return fallback(_error_message(fn.__name__))
        return inner
    return wrap


def new_served() -> dict:
    """Per-session record of served answers: user-message index -> the turn's answers, in order."""
    return {"turns": {}, "pending_regenerate": None}


def _turn_start(history: list[dict], index: int) -> int | None:
    """Index of the user message that the assistant message at ``index`` answers."""
    if not (0 <= index < len(history)) or history[index].get("role") != "assistant":
        return None
    while index > 0 and history[index - 1].get("role") == "assistant":
        index -= 1
    return index - 1 if index > 0 and history[index - 1].get("role") == "user" else None


def feedback_value(history: list[dict], served: dict) -> list[str | None]:
    """Gradio's ``feedback_value``: one entry per group of consecutive assistant messages, in order,
    set from the server's record so that Liked/Disliked survive edits, new turns and redraws."""
    out: list[str | None] = []
    for i, m in enumerate(history or []):
        if m.get("role") != "assistant" or (i > 0 and history[i - 1].get("role") == "assistant"):
            continue
        turn = served["turns"].get(i - 1) if i > 0 else None
        label = turn.get("label") if turn else None
        out.append(None if label is None else ("Like" if label else "Dislike"))
    return out


def build_app(chat: ChatModel, store: FeedbackStore | None = None, system_prompt: str = DEFAULT_SYSTEM_PROMPT,
              switch_roots: list[str] | None = None, kb=None, auth_required: bool = False,
              stream_interval_ms: float = STREAM_INTERVAL_MS):
    """``kb``: a ``serve.kb.AppKnowledgeBase`` adds the Knowledge base panel (uploads, documents,
    removal); ``auth_required``: the app runs with a login, so writes need a signed-in user.
    ``stream_interval_ms``: a streamed answer updates the chat at most once per this many milliseconds
    (the first text, each agent step and the complete answer at once; 0: every token)."""
    import gradio as gr

    def chat_update(history: list[dict], served: dict):
        return gr.update(value=history, feedback_value=feedback_value(history, served))

    def add_user(message: str, history: list[dict], served: dict):
        if not (message or "").strip():
            return gr.update(), gr.update(), gr.update(), gr.update(), ""
        if len(message) > MAX_MESSAGE_CHARS:
            return (gr.update(), gr.update(), gr.update(), gr.update(),
                    f"Your message is {len(message):,} characters; the limit is {MAX_MESSAGE_CHARS:,}. Shorten it.")
        history = (history or []) + [{"role": "user", "content": message}]
        # Send stays disabled until the answer is complete (or stopped): one question at a time.
        return "", chat_update(history, served), gr.update(interactive=False), gr.update(interactive=True), ""

    def answer(history: list[dict], system: str, served: dict, request: gr.Request):
        """Stream the answer to the last user message; record it once it is complete."""
        try:
            yield from _answer(history, system, served, request)
        except LLMServerError as e:  # the engine failed (down, context too long): say which, details to the log
            ref = uuid.uuid4().hex[:8]
            log.error("answer failed (error %s): %s", ref, e)
            msg = (f"This conversation is too long for the model; press the 🗑️ icon to start a new one (error {ref})."
                   if isinstance(e, ContextTooLongError) else
                   f"The model server did not answer (error {ref}); nothing was stored. Try again in a moment.")
            yield (history or []) + [{"role": "assistant", "content": msg}], gr.skip(), msg
        except Exception:  # noqa: BLE001
            msg = _error_message("answer")
            yield (history or []) + [{"role": "assistant", "content": msg}], gr.skip(), msg

    def _answer(history, system, served, request):
        if not history or history[-1].get("role") != "user":
            yield history, gr.skip(), gr.skip()
            return
        if len(history) > MAX_HISTORY_MESSAGES or len(message_text(history[-1]["content"])) > MAX_MESSAGE_CHARS:
            yield history, gr.skip(), "This conversation is too long; press the 🗑️ icon to start a new one."
            return
        u = len(history) - 1
        regenerate = served.get("pending_regenerate") == u
        served["pending_regenerate"] = None
        for k in [k for k in served["turns"] if k > u or (k == u and not regenerate)]:
            del served["turns"][k]  # left over from a cleared or regenerated conversation
        entry = served["turns"].setdefault(u, {"turn": uuid.uuid4().hex, "ids": [], "texts": [], "label": None})
        before, message = history[:-1], history[-1]["content"]
        turn: dict[str, Any] = {}
        shown: list[dict] = []
        # The status line is cleared once, when the answer starts; a message written while it streams
        # (a rating clicked before the answer is stored: "not finished, nothing stored") then stays.
        cleared = False
        # At most one update per stream_interval_ms (serve.chat.coalesce), and each a plain value: a
        # gr.update(...) makes Gradio rebuild the Chatbot and its config (a JSON schema) every time.
        # The ratings shown (feedback_value) were set when the question was added; the final update sets them.
        stream = (update if isinstance(update, list) else [{"role": "assistant", "content": update}]
                  for update in chat.respond(message, before, system, turn=turn, sample=regenerate))
        for shown in coalesce(stream, stream_interval_ms / 1000, display_shape):
            yield history + shown, gr.skip(), (gr.skip() if cleared else "")
            cleared = True
        text = turn.get("answer")
        status = ""
        if text:
            rid, stored = None, True
            if store is not None:
                try:
                    rid = store.add_response(_session(request), chat.checkpoint_id, prompt_messages(history, system),
                                             text, trace=turn.get("trace"), turn_id=entry["turn"])
                except FeedbackDBError as e:  # damaged / full / read-only database: detail to the log
                    log.error("answer not stored: %s", e)
                    stored, status = False, f"{e.user_message} This answer cannot be rated."
                except KeelError as e:  # too long to store: shown, but it cannot be rated
                    stored, status = False, f"This answer is not stored ({e}), so it cannot be rated."
            if regenerate and stored:
                t = chat.sample_temperature()
                status = (f"Regenerate wrote the same answer again (sampled at temperature {t:g}); try once more, "
                          "or edit the answer." if text in entry["texts"] else
                          f"New answer, sampled at temperature {t:g}; the earlier one is kept as an alternative.")
            entry["ids"].append(rid)
            entry["texts"].append(text)
            entry["label"] = None
        yield chat_update(history + shown, served), served, (status or (gr.skip() if cleared else ""))

    @_guarded(lambda msg: (gr.skip(), gr.skip(), msg))
    def drop_last_turn(history: list[dict], system: str, served: dict, request: gr.Request):
        """Regenerate: keep the old answer on record as an alternative, then answer again (sampled)."""
        history = list(history or [])
        last_user = max((i for i, m in enumerate(history) if m.get("role") == "user"), default=None)
        if last_user is None:
            return history, served, "Nothing to regenerate yet."
        entry = served["turns"].get(last_user)
        if store is not None and entry and entry["ids"] and entry["ids"][-1]:
            store.add_feedback("regenerate", session_id=_session(request), checkpoint_id=chat.checkpoint_id,
                               prompt=[], completion="", response_id=entry["ids"][-1],
                               conversation=plain_conversation(history))
        served["pending_regenerate"] = last_user
        return chat_update(history[: last_user + 1], served), served, "Regenerating…"

    def _served_answer(history: list[dict], index: int, served: dict):
        u = _turn_start(history or [], index)
        entry = served["turns"].get(u) if u is not None else None
        if not entry or not entry["ids"] or entry["ids"][-1] is None:
            return None, None
        return u, entry

    @_guarded(lambda msg: (gr.skip(), msg, gr.skip()))
    def on_like(history: list[dict], system: str, served: dict, data: gr.LikeData, request: gr.Request):
        if store is None:
            return None, "Feedback is off (no database).", served
        index = data.index[0] if isinstance(data.index, (list, tuple)) else data.index
        u, entry = _served_answer(history, int(index), served)
        if entry is None:
            return None, ("This message has no answer served in this session (not finished, stopped, or from "
                          "elsewhere); nothing stored."), served
        if not isinstance(data.liked, bool):
            entry["label"] = None
            return None, "Rating removed from view (stored ratings are kept; the latest one counts).", served
        fid = store.add_feedback("rating", session_id=_session(request), checkpoint_id=chat.checkpoint_id,
                                 prompt=[], completion="", label=data.liked, response_id=entry["ids"][-1],
                                 conversation=plain_conversation(history))
        entry["label"] = data.liked
        return fid, f"Saved {'👍' if data.liked else '👎'} (feedback #{fid}). Add a comment below if you like.", served

    @_guarded(lambda msg: (gr.skip(), msg, gr.skip(), gr.skip()))
    def on_edit(history: list[dict], system: str, served: dict, data: gr.EditData, request: gr.Request):
        index = data.index[0] if isinstance(data.index, (list, tuple)) else data.index
        index = int(index)
        keep = chat_update(history, served)  # redraw with the ratings: an edit must not clear them
        if (store is None or not (0 <= index < len(history)) or history[index].get("role") != "assistant"
                or (history[index].get("metadata") or {}).get("title")):
            return None, "", served, keep
        u, entry = _served_answer(history, index, served)
        if entry is None:
            return None, "This answer was not served in this session; the edit is shown but not stored.", served, keep
        edited = strip_sources(message_text(data.value))
        if not edited or edited == entry["texts"][-1]:
            return None, "", served, keep
        fid = store.add_feedback("edit", session_id=_session(request), checkpoint_id=chat.checkpoint_id,
                                 prompt=[], completion="", edited=edited, response_id=entry["ids"][-1],
                                 conversation=plain_conversation(history))
        return fid, f"Saved your edit as a correction (feedback #{fid}).", served, keep

    @_guarded(lambda msg: (gr.skip(), msg))
    def on_comment(comment: str, feedback_id: int | None):
        if not (comment or "").strip():
            return gr.update(), "Write a comment first."
        if store is None or feedback_id is None:
            return gr.update(), "Rate or edit an answer first; the comment goes with it."
        store.add_comment(int(feedback_id), comment.strip())
        return "", f"Comment saved with feedback #{feedback_id}."

    def clear_all():
        return [], None, "", "", new_served()

    roots = [Path(r).expanduser() for r in (switch_roots or [])]

    @_guarded(lambda msg: (gr.skip(), msg, gr.skip()))
    def on_switch(choice: str | None):
        allowed = switchable_checkpoints(roots)
        if not roots:
            return gr.update(), "Switching checkpoints is off on this server.", gr.update()
        if not choice or choice not in allowed:
            return gr.update(), "Not one of the listed checkpoints; press ↻ and choose from the list.", gr.update()
        try:
            chat.switch(str(allowed[choice]))
        except Exception:  # noqa: BLE001 - the log names the file; the user gets no filesystem facts
            ref = uuid.uuid4().hex[:8]
            log.exception("switch to %s failed (error %s)", allowed[choice], ref)
            return gr.update(), f"Could not load {choice} (error {ref}); the server log has the details.", gr.update()
        return model_card(chat.source), f"Now serving **{chat.short_name}**.", _title(chat)

    def refresh_choices():
        return gr.update(choices=sorted(switchable_checkpoints(roots)))

    with gr.Blocks(title="Keel") as demo:
        title = gr.Markdown(_title(chat), elem_id="header")
        with gr.Accordion("Model", open=False):
            card = gr.JSON(model_card(chat.source), label="checkpoint manifest")
            if roots:
                with gr.Row():
                    switch_to = gr.Dropdown(sorted(switchable_checkpoints(roots)), value=None, label="Switch to checkpoint",
                                            info="Keel checkpoints under the folders the operator allowed",
                                            scale=4, elem_id="switch-to")
                    refresh = gr.Button("↻", scale=0, min_width=48, elem_id="switch-refresh")
                    switch_btn = gr.Button("Load", scale=1, elem_id="switch-load")
            else:
                gr.Markdown("Switching checkpoints is off; the operator turns it on with `--switch-root DIR`.")
            switch_status = gr.Markdown(elem_id="switch-status")
        with gr.Accordion("System prompt", open=False):
            system = gr.Textbox(system_prompt, show_label=False, lines=2, elem_id="system-prompt")
        chatbot = gr.Chatbot(label="Keel", editable="all", height=540, elem_id="chatbot",
                             feedback_options=("Like", "Dislike"))
        with gr.Row():
            box = gr.Textbox(placeholder="Ask something; answers may use the tools", show_label=False, scale=8,
                             elem_id="message", autofocus=True, max_length=MAX_MESSAGE_CHARS)
            send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
            stop = gr.Button("Stop", variant="stop", scale=1, elem_id="stop", interactive=False)
        with gr.Row():
            regenerate = gr.Button("🔄 Regenerate the last answer", size="sm", elem_id="regenerate")
        feedback_status = gr.Markdown(elem_id="feedback-status")
        with gr.Accordion("Comment on your last rating or edit", open=False):
            comment = gr.Textbox(show_label=False, placeholder="What was good or wrong?", lines=2,
                                 elem_id="comment", max_length=4_000)
            comment_btn = gr.Button("Save comment", size="sm", elem_id="comment-save")
        if kb is not None:
            from serve.kb import build_kb_panel

            build_kb_panel(kb, auth_required)
        last_feedback = gr.State(None)
        served = gr.State(new_served())

        limit = chat.settings.concurrency
        runs = []
        idle = dict(fn=lambda: (gr.update(interactive=True), gr.update(interactive=False)), inputs=None,
                    outputs=[send, stop], queue=False)
        generate = dict(fn=answer, inputs=[chatbot, system, served], outputs=[chatbot, served, feedback_status],
                        concurrency_limit=limit, concurrency_id="generate")
        for trigger in (box.submit, send.click):
            run = (trigger(add_user, [box, chatbot, served], [box, chatbot, send, stop, switch_status], queue=False)
                   .then(**generate))
            run.then(**idle)
            runs.append(run)
        run = (regenerate.click(drop_last_turn, [chatbot, system, served], [chatbot, served, feedback_status],
                                queue=False)
               .then(lambda: (gr.update(interactive=False), gr.update(interactive=True)), None, [send, stop],
                     queue=False)
               .then(**generate))
        run.then(**idle)
        runs.append(run)
        stop.click(None, None, None, cancels=runs, queue=False).then(**idle)
        # One Clear control: the chatbot's own 🗑️ icon; it also resets what the server remembers.
        chatbot.clear(clear_all, None, [chatbot, last_feedback, feedback_status, switch_status, served], queue=False)
        # Feedback writes skip the queue: a thumbs-up must not wait behind other users' generations.
        chatbot.like(on_like, [chatbot, system, served], [last_feedback, feedback_status, served], queue=False)
        chatbot.edit(on_edit, [chatbot, system, served], [last_feedback, feedback_status, served, chatbot],
                     queue=False)
        comment_btn.click(on_comment, [comment, last_feedback], [comment, feedback_status], queue=False)
        if roots:
            refresh.click(refresh_choices, None, switch_to, queue=False)
            switch_btn.click(on_switch, switch_to, [card, switch_status, title], concurrency_id="generate")
    return demo


def plain_conversation(history: list[dict]) -> list[dict]:
    """The conversation as shown (roles and text), for the record; agent steps keep their titles."""
    out = []
    for m in history or []:
        item = {"role": m.get("role"), "content": message_text(m.get("content"))}
        title = (m.get("metadata") or {}).get("title")
        if title:
            item["title"] = title
        out.append(item)
    return out


def switchable_checkpoints(roots: list[Path]) -> dict[str, Path]:
    """Keel checkpoints (folders with keel.json, or run folders with model/keel.json) directly under
    the operator's roots, by display name -> resolved folder. Symlinks leading outside a root are skipped."""
    from align.checkpoint import MANIFEST_NAME

    found: dict[str, Path] = {}
    for root in roots:
        try:
            base = root.resolve()
            children = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            continue
        for child in [base, *children]:
            for folder in (child, child / "model"):
                real = folder.resolve()
                if (real / MANIFEST_NAME).is_file() and (real == base or base in real.parents):
                    name = f"{base.name}/{real.relative_to(base)}" if real != base else base.name
                    found.setdefault(name, real)
                    break
    return found


def _title(chat: ChatModel) -> str:
    tools = f" · tools: {', '.join(chat.tools.names())}" if chat.settings.agent.enabled else ""
    return f"## Keel chat · `{chat.short_name}`{tools}"
