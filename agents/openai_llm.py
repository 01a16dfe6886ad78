"""The agent's ``LLM`` on an OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp's server).

Generation happens in the server (continuous batching, paged KV cache); Keel sends requests with
the ``openai`` client library, which also does the HTTP, the SSE streaming, the timeouts and the
retries with backoff (connection errors, 408/409/429/5xx).

Two ways to build the prompt, because the ReAct loop *continues* a partial assistant message
("...Thought:") and the chat API has no standard way to say so:

  - ``api="completions"`` (when a local tokenizer is given): Keel applies the served model's chat
    template itself (``continue_final_message`` for a partial answer, as ``TransformersLLM`` does)
    and sends the text to ``/v1/completions``. The prompt is then byte-for-byte the one the
    embedded path and the training data use, on any server that has the completions endpoint.
    ``python -m serve --engine vllm`` always uses this: it has the checkpoint on disk.
  - ``api="chat"``: ``/v1/chat/completions``; a partial last assistant message is continued with
    vLLM's (and SGLang's) extra parameters ``continue_final_message=true,
    add_generation_prompt=false``. Needs no local copy of the model; other servers may ignore the
    parameters and start a new message. Native tool calls (``tools=``) go through this API, and
    the ``tool_calls`` the server parses come back as ``<tool_call>`` text for the agent's parser.

The structured tool-call grammar (agents.grammar, llguidance's Lark dialect) goes in vLLM's
structured-output field ``structured_outputs: {"grammar": ...}`` (vLLM >= 0.12; before that it was
``guided_grammar``). vLLM compiles a grammar with ``%llguidance``/``%json`` with its ``guidance``
backend (llguidance, the library Keel uses in-process), chosen by ``--structured-outputs-config.
backend guidance`` or by ``auto`` when xgrammar rejects the grammar.

Errors are ``LLMServerError`` subclasses (``KeelError``: the CLIs print them as one line):
``LLMUnreachableError`` (down, or no answer within the timeout after the retries),
``ModelNotServedError`` (names the models the server does serve), ``ContextTooLongError``.
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Iterator, Literal

from agents.agent import Generation, _cut_at_stop
from align.errors import KeelError

log = logging.getLogger("keel.llm")

_CONTEXT = re.compile(r"context length|maximum model length|max_model_len|too long|context window|"
                      r"exceeds the (?:maximum|available)", re.I)


class LLMServerError(KeelError):
    """The OpenAI-compatible server failed a request; the message names the server and what to do."""


class LLMUnreachableError(LLMServerError):
    """No answer: the server is down, the URL is wrong, or it timed out after the retries."""


class ModelNotServedError(LLMServerError):
    """The server does not serve the requested model name; ``served`` lists what it does serve."""

    def __init__(self, message: str, served: list[str]):
        super().__init__(message)
        self.served = served


class ContextTooLongError(LLMServerError):
    """The prompt plus ``max_new_tokens`` exceeds the served model's context length."""


class OpenAILLM:
    """``agents.agent.LLM`` over an OpenAI-compatible HTTP API.

    ``base_url``: ``http://HOST:PORT/v1``. ``model``: the served model name; None asks the
    server (``GET /v1/models``) and takes the only one it serves. ``tokenizer``: a Hugging Face
    tokenizer of the served model; with it prompts go to the completions endpoint with the chat
    template applied here (module docstring). ``grammar``: "vllm" sends the tool-call grammar as
    ``structured_outputs.grammar``; "none" runs unconstrained (``supports_grammar`` False).
    ``check``: ask the server at once whether it serves ``model`` (``check()``).
    ``timeout_s``: per request (seconds, connect and between streamed chunks); ``max_retries``:
    retries after a connection error, a timeout, 408/409/429 or 5xx, with exponential backoff.
    """

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str | None = None,
                 tokenizer=None, api: Literal["auto", "completions", "chat"] = "auto",
                 grammar: Literal["vllm", "none"] = "vllm", native_tools: bool = False,
                 temperature: float = 0.0, top_p: float = 1.0, timeout_s: float = 120.0, max_retries: int = 2,
                 check: bool = True):
        import openai

        self.base_url = base_url.rstrip("/")
        self.tokenizer, self.temperature, self.top_p = tokenizer, temperature, top_p
        self.api = ("completions" if tokenizer is not None else "chat") if api == "auto" else api
        if self.api == "completions" and tokenizer is None:
            raise ValueError("api='completions' needs the served model's tokenizer (its chat template)")
        self.supports_grammar = grammar == "vllm"
        if self.api == "completions":
            template = tokenizer.chat_template or ""
            self.supports_native_tools = "tools" in template if isinstance(template, str) else False
        else:
            self.supports_native_tools = native_tools
        self.timeout_s, self.max_retries = timeout_s, max_retries
        # "EMPTY": vLLM without --api-key accepts any key, and the client refuses to start without one.
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key or "EMPTY", timeout=timeout_s,
                                    max_retries=max_retries)
        self.model = model or self._only_model()
        if check and model:
            self.check()

    # --- what the server serves -------------------------------------------------------------
    def served_models(self) -> list[str]:
        """The model names ``GET /v1/models`` lists (base model and loaded LoRA adapters on vLLM)."""
        try:
            return [m.id for m in self.client.models.list()]
        except Exception as e:  # noqa: BLE001 - translated into one of our errors
            raise self._translate(e) from None

    def check(self) -> None:
        """Raise ``LLMUnreachableError`` if the server does not answer, ``ModelNotServedError`` if it
        does not serve ``self.model``: at start, rather than at the first user's question."""
        served = self.served_models()
        if self.model not in served:
            raise ModelNotServedError(f"the LLM server at {self.base_url} does not serve a model named "
                                      f"{self.model!r}; it serves: {', '.join(served) or 'nothing'} "
                                      "(choose with --llm-model)", served)

    def _only_model(self) -> str:
        served = self.served_models()
        if not served:
            raise ModelNotServedError(f"the LLM server at {self.base_url} serves no model", served)
        if len(served) > 1:
            log.info("server %s serves %s; using %s (choose with --llm-model)", self.base_url, served, served[0])
        return served[0]

    @property
    def served_by(self) -> str:
        """``MODEL @ URL``: what feedback records as the model that wrote an answer."""
        return f"{self.model} @ {self.base_url}"

    # --- requests ---------------------------------------------------------------------------
    def _request(self, messages, stop, max_new_tokens, continue_final, tools, grammar, stream: bool):
        extra: dict[str, Any] = {}
        if grammar and self.supports_grammar:
            extra["structured_outputs"] = {"grammar": grammar}
        common = dict(model=self.model, max_tokens=max_new_tokens, temperature=self.temperature, stream=stream,
                      **({"stop": list(stop)} if stop else {}),
                      **({"top_p": self.top_p} if self.temperature > 0 and self.top_p < 1 else {}),
                      **({"stream_options": {"include_usage": True}} if stream else {}))
        if self.api == "completions":
            prompt = self.tokenizer.apply_chat_template(
                messages, tools=tools, add_generation_prompt=not continue_final,
                continue_final_message=continue_final, tokenize=False)
            # The template already wrote the special tokens (vLLM would add a BOS again otherwise).
            extra["add_special_tokens"] = False
            return self.client.completions.create(prompt=prompt, extra_body=extra, **common)
        if continue_final:
            extra.update(continue_final_message=True, add_generation_prompt=False)
        kwargs: dict[str, Any] = {}
        if tools and self.supports_native_tools:
            kwargs["tools"] = tools
        return self.client.chat.completions.create(messages=_openai_messages(messages), extra_body=extra,
                                                   **kwargs, **common)

    def generate(self, messages: list[dict], *, stop: list[str], max_new_tokens: int,
                 continue_final: bool = False, tools: list[dict] | None = None,
                 grammar: str | None = None) -> Generation:
        """``LLM.generate`` through the server (chat or completions API, see the class). Raises
        ContextTooLongError when the prompt does not fit the server's context, LLMUnreachableError
        (timeout, no connection), ModelNotServedError, or LLMServerError for other failures (all LLMServerError).
        """
        try:
            out = self._request(messages, stop, max_new_tokens, continue_final, tools, grammar, stream=False)
        except Exception as e:  # noqa: BLE001
            raise self._translate(e) from None
        choice = out.choices[0]
        if self.api == "completions":
            text = choice.text or ""
        else:
            text = (choice.message.content or "") + _calls_as_text(choice.message.tool_calls or [])
        tokens = out.usage.completion_tokens if out.usage is not None else self._count(text)
        return Generation(_cut_at_stop(text, stop), tokens)

    def stream_generate(self, messages: list[dict], *, stop: list[str], max_new_tokens: int,
                        continue_final: bool = False, tools: list[dict] | None = None,
                        grammar: str | None = None) -> Iterator["str | Generation"]:
        """Yield text pieces as the server streams them (SSE), then one ``Generation``."""
        text, tokens = "", None
        calls: dict[int, dict] = {}
        try:
            stream = self._request(messages, stop, max_new_tokens, continue_final, tools, grammar, stream=True)
            for chunk in stream:
                if getattr(chunk, "usage", None) is not None:
                    tokens = chunk.usage.completion_tokens
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                if self.api == "completions":
                    piece = choice.text or ""
                else:
                    piece = choice.delta.content or ""
                    for call in choice.delta.tool_calls or []:  # arrives in fragments, by index
                        slot = calls.setdefault(call.index or 0, {"name": "", "arguments": ""})
                        if call.function is not None:
                            slot["name"] += call.function.name or ""
                            slot["arguments"] += call.function.arguments or ""
                if piece:
                    text += piece
                    yield piece
        except Exception as e:  # noqa: BLE001
            raise self._translate(e) from None
        if calls:
            tail = _calls_as_text([_Call(c["name"], c["arguments"]) for _, c in sorted(calls.items())])
            text += tail
            yield tail
        yield Generation(_cut_at_stop(text, stop), tokens if tokens is not None else self._count(text))

    def _count(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return max(1, len(text) // 4) if text else 0  # no usage and no tokenizer: a rough count

    # --- errors -----------------------------------------------------------------------------
    def _translate(self, e: Exception) -> Exception:
        import openai

        where = f"the LLM server at {self.base_url}"
        if isinstance(e, LLMServerError):
            return e
        if isinstance(e, openai.APITimeoutError):
            return LLMUnreachableError(f"{where} did not answer within {self.timeout_s:g} s "
                                       f"({self.max_retries} retries); it may be overloaded or still starting")
        if isinstance(e, openai.APIConnectionError):
            cause = e.__cause__ or e
            return LLMUnreachableError(f"cannot reach {where} after {self.max_retries} retries ({cause}); is it "
                                       "running? (python -m serve --engine vllm starts one; docs/serving.md)")
        if isinstance(e, openai.AuthenticationError):
            return LLMServerError(f"{where} refused the API key (401); set it with --llm-api-key-env VAR")
        if isinstance(e, openai.NotFoundError):
            served = self._served_or_empty()
            if served and self.model not in served:
                return ModelNotServedError(f"{where} does not serve a model named {self.model!r}; it serves: "
                                           f"{', '.join(served)} (choose with --llm-model)", served)
            return LLMServerError(f"{where} answered 404 for {self.api} ({_message(e)}); does it offer the "
                                  "OpenAI API under this URL (…/v1)?")
        if isinstance(e, openai.APIStatusError):
            msg = _message(e)
            if e.status_code in (400, 413, 422) and _CONTEXT.search(msg):
                return ContextTooLongError(f"the conversation is too long for {self.model} at {self.base_url}: "
                                           f"{msg}. Start a new conversation or lower max_new_tokens.")
            if e.status_code in (400, 404) and "model" in msg.lower() and "not" in msg.lower():
                served = self._served_or_empty()
                if served and self.model not in served:
                    return ModelNotServedError(f"{where} does not serve a model named {self.model!r}; it serves: "
                                               f"{', '.join(served)} (choose with --llm-model)", served)
            return LLMServerError(f"{where} refused the request ({e.status_code}): {msg}")
        if isinstance(e, openai.OpenAIError):
            return LLMServerError(f"{where}: {e}")
        return e

    def _served_or_empty(self) -> list[str]:
        try:
            return [m.id for m in self.client.with_options(max_retries=0).models.list()]
        except Exception:  # noqa: BLE001 - only used to improve a message
            return []


class _Fn:
    def __init__(self, name, arguments):
        self.name, self.arguments = name, arguments


class _Call:
    def __init__(self, name, arguments):
        self.function = _Fn(name, arguments)


def _calls_as_text(calls) -> str:
    """Server-parsed tool calls -> the ``<tool_call>`` blocks that agents.parsing reads."""
    out = []
    for call in calls:
        fn = call.function
        try:
            args = json.loads(fn.arguments) if isinstance(fn.arguments, str) and fn.arguments else (fn.arguments or {})
        except json.JSONDecodeError:
            args = fn.arguments  # left for the parser to report
        out.append("<tool_call>\n" + json.dumps({"name": fn.name, "arguments": args}) + "\n</tool_call>")
    return "\n".join(out)


def _openai_messages(messages: list[dict]) -> list[dict]:
    """The agent's messages -> the chat API's: tool calls get ids and JSON-string arguments, and each
    tool result names the call it answers (the API requires both)."""
    out, pending = [], []
    for i, m in enumerate(messages):
        m = dict(m)
        if m.get("tool_calls"):
            calls = []
            for j, c in enumerate(m["tool_calls"]):
                fn = c.get("function", c)
                args = fn.get("arguments", {})
                cid = c.get("id") or f"call_{i}_{j}"
                pending.append(cid)
                calls.append({"id": cid, "type": "function",
                              "function": {"name": fn.get("name"),
                                           "arguments": args if isinstance(args, str) else json.dumps(args)}})
            m["tool_calls"] = calls
        elif m.get("role") == "tool":
            m.setdefault("tool_call_id", pending.pop(0) if pending else f"call_{i}")
        out.append(m)
    return out


def _message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        msg = inner.get("message") if isinstance(inner, dict) else None
        if msg:
            return str(msg)
    return str(getattr(e, "message", e))


def api_key_from_env(var: str | None) -> str | None:
    """The API key in environment variable ``var``; a KeelError naming it when it is unset."""
    if not var:
        return None
    value = os.environ.get(var)
    if not value:
        raise KeelError(f"--llm-api-key-env {var}: the environment variable {var} is not set")
    return value
