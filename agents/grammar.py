"""Grammar-constrained agent steps: a tool call that is not valid cannot be generated.

Each agent step is decoded under a context-free grammar built from the registered tools:

  - text ReAct (after the ``Thought:`` the agent writes for the model)::

        start: THOUGHT "\\n" ("Action:" " "? call | "Final Answer:" ANSWER)
        call:  "calculator" "\\nAction Input:" " "? %json{<calculator's argument schema>} | ...

  - native tool calls (Hermes/Qwen ``<tool_call>`` blocks): free text without ``<tool_call>``, or
    tool calls whose JSON is ``{"name": <a registered tool>, "arguments": <its schema>}``.

The argument schemas are the tools' pydantic schemas, so a wrong tool name, a missing or extra
argument or a value of the wrong type has probability zero. Likewise for citations: an answer's
``(source: NAME)`` can only name a source that a search observation of the same episode listed
(no ``(source:`` at all before a search), so an invented source cannot be written. With
``citations="required"`` (the agent's default) an answer after a search that listed sources must
cite one of them within its first ``MAX_ANSWER_TOKENS_BEFORE_CITATION`` tokens, and may run on at
most ``MAX_ANSWER_TOKENS_AFTER_CITATION`` tokens after it; the agent scales both to its step's
token limit (half and a quarter of ``max_new_tokens``). The bounds are llguidance's ``max_tokens``,
which ends a lexeme after that many tokens, so the citation is then the only continuation: a small
model that copies a passage and loops would otherwise never reach one. Grammars are written in llguidance's
Lark dialect and enforced token by token by ``GrammarLogitsProcessor`` (a transformers
``LogitsProcessor``); the same grammar text is what an OpenAI-compatible server with llguidance
structured outputs takes. Why llguidance rather than xgrammar, outlines or lm-format-enforcer:
docs/agents.md.

The logits processor is ours (about 40 lines) because llguidance ships matchers and bitmask
helpers but no transformers ``LogitsProcessor``; its torch helper uses ``torch.compile``, which
is slow to warm up on a CPU, so the bitmask is unpacked here with plain tensor ops.
"""
from __future__ import annotations

import json
import re
import threading
from typing import Any

from agents.tools import Tool, ToolRegistry

MAX_THOUGHT_CHARS = 400
MAX_ANSWER_TOKENS_BEFORE_CITATION = 128
MAX_ANSWER_TOKENS_AFTER_CITATION = 64


class GrammarError(ValueError):
    """A grammar llguidance rejects, or a tokenizer it cannot wrap; the message says which."""


def _inline_refs(node: Any, defs: dict[str, Any], depth: int = 0) -> Any:
    """Replace ``{"$ref": "#/$defs/X"}`` by the definition, so a tool's schema can sit anywhere in
    a larger schema (pydantic puts enums and nested models in a root ``$defs``)."""
    if depth > 32:
        raise GrammarError("tool argument schema is recursive; constrained decoding needs a finite schema")
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and ref[8:] in defs:
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return _inline_refs({**defs[ref[8:]], **rest}, defs, depth + 1)
        return {k: _inline_refs(v, defs, depth + 1) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs, depth + 1) for v in node]
    return node


def _json_schema(tool: Tool) -> dict[str, Any]:
    schema = tool.args_schema.model_json_schema()
    schema = _inline_refs(schema, schema.get("$defs", {}))
    schema.pop("title", None)
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    # Compact JSON with the separators json.dumps writes (and the training data uses); no newlines.
    schema["x-guidance"] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    return schema


def _lit(text: str) -> str:
    return json.dumps(text)


_LISTING = r"/\s*\[[0-9]+\] ?\((?s:.*)/ | /(?s:.*)\n\s*\[[0-9]+\] ?\((?s:.*)/"
# A line that starts another ReAct step inside an answer (a small model runs on into one).
_STEP_LABEL = r"/(?s:.*)\n(Thought|Action|Final Answer):(?s:.*)/"


def _citation_terminals(sources: list[str] | None, suffix: str = "") -> list[str]:
    """``MISCITED``: any text with a ``(source:`` not followed by one of ``sources`` and ``)``, or
    with a line in the search observation's own format (``[2] (source § heading) ...``: the model
    copying the passage list instead of citing). ``None``: no rule (every citation allowed)."""
    if sources is None:
        return []
    if not sources:
        return [f"MISCITED{suffix}: " + r"/(?s:.*)\(source:(?s:.*)/ | " + _LISTING]
    return [f"MISCITED{suffix}: " + r"/(?s:.*)\(source:/" + f" ~CITED{suffix} | " + _LISTING,
            f"CITED{suffix}: / ?/ ({_alternatives(sources)}) /\\)(?s:.*)/"]


def _alternatives(sources: list[str]) -> str:
    return " | ".join(_lit(s) for s in dict.fromkeys(sources))


def _answer(sources: list[str] | None, suffix: str = "", required: bool = False,
            exclude: str | None = None, bound_head: bool = True,
            answer_tokens: tuple[int, int] = (MAX_ANSWER_TOKENS_BEFORE_CITATION, MAX_ANSWER_TOKENS_AFTER_CITATION),
            ) -> tuple[str, list[str]]:
    """The grammar of an answer (what follows ``Final Answer:``, or a native reply's text): the
    expression and its rules. At least one visible character, to the end of the message.
    ``sources``: as ``_citation_terminals``. ``required`` (and ``sources`` not empty): a citation of
    one of them must come within ``answer_tokens[0]`` tokens: the text up to the
    first ``(source:`` is a lazy lexeme that llguidance ends after that many tokens, and then only
    the cited name may follow (``(source:`` optional there: when the bound ended the text the model
    may write the bare name, which ``complete_citation`` repairs); after the citation at most
    ``answer_tokens[1]`` more tokens, under the same rule, with no line starting another ReAct step
    (``Thought:``, ``Action:``, ``Final Answer:``: a small model runs on into one; text format only).
    ``exclude``: a regex no part of the text may match (native replies: ``<tool_call>``).
    ``bound_head`` False: no token bound before the citation (native replies with tools, where the
    text and a tool call's header are both open lexemes and llguidance does not end the text's at
    its bound): the citation is still required, the step's token limit bounds the text."""
    cite = _citation_terminals(sources, suffix)
    no = [f"~/(?s:.*)(?:{exclude})(?s:.*)/"] if exclude else []
    if not (required and sources):
        rules = ["MISCITED" + suffix] if cite else []
        body = " & ".join([r"/\s*[^\s](?s:.*)/", *no, *(f"~{r}" for r in rules)])
        return f"ANSWER{suffix}", [f"ANSWER{suffix}: {body}", *cite]
    head = " & ".join([r"/\s*[^\s](?s:.*)\(source:/", *no, f"~({_LISTING})"])
    # (native replies have no ReAct labels, and one more complement there made llguidance's lexer give up)
    labels = [] if exclude else [f"~{_STEP_LABEL}"]
    tail = " & ".join([r"/(?s:.*)/", *no, *labels, f"~MISCITED{suffix}"])
    bound = f", max_tokens={answer_tokens[0]}" if bound_head else ""
    return (f"answer_head{suffix} CITATION{suffix} answer_tail{suffix}",
            [f"answer_head{suffix}[lazy{bound}]: ANSWER_HEAD{suffix}",
             f"ANSWER_HEAD{suffix}: {head}",
             f"CITATION{suffix}: /( ?\\(source:)? ?/ ({_alternatives(sources)}) /\\)/",
             f"answer_tail{suffix}[max_tokens={answer_tokens[1]}]: ANSWER_TAIL{suffix}",
             f"ANSWER_TAIL{suffix}: {tail}", *cite])


def complete_citation(answer: str, sources: list[str]) -> str:
    """The answer with ``(source: `` written before a cited name that lacks it: under required
    citations, when the token bound ends the answer's text the grammar lets only a listed name and
    ``)`` follow, and a model may write ``... python-docs:lists)`` bare. And with one ``(source: ``
    where the model wrote it twice: the answer's text may end in ``(source:`` and the citation may
    begin with it again (its optional prefix is for the bounded case), so a model can write
    ``(source: (source: NAME))``; that becomes ``(source: NAME)``. Answers that already have one
    ``(source:`` citation, or name no listed source before a ``)``, are returned unchanged."""
    if "(source:" in answer:
        for name in sorted(set(sources), key=len, reverse=True):
            answer = re.sub(r"\(source:\s*\(source:\s*" + re.escape(name) + r"\)\)?", lambda _: f"(source: {name})", answer)
        return answer
    for name in sorted(set(sources), key=len, reverse=True):
        at = answer.rfind(name + ")")
        if at >= 0:
            return answer[:at].rstrip() + " (source: " + answer[at:]
    return answer


def _passage_thoughts(passages: list[str] | None, sources: list[str] | None, action: str,
                      required: bool = False, answer_tokens: tuple[int, int] | None = None) -> tuple[list[str], list[str]]:
    """Start alternatives and terminals for a thought that begins with ``Passage [i]`` (i a passage of
    the latest search): the answer after it may cite only ``passages[i-1]``; any other thought keeps
    the episode-wide rule. The binding is a literal prefix and one anchored complement: a version with
    one floating intersection per passage made llguidance's lexer give up while computing masks."""
    free = f"THOUGHT: /[^\\n]{{0,{MAX_THOUGHT_CHARS}}}/"
    if sources is None or not passages or len(passages) > 9:
        return ['THOUGHT "\\n" step'], [free]
    n = len(passages)
    starts = ['THOUGHT "\\n" step']
    lines = [free + f" & ~/ ?Passage \\[[1-{n}]\\][^\\n]*/", f"REST: /[^\\n]{{0,{MAX_THOUGHT_CHARS}}}/"]
    for i, source in enumerate(passages, 1):
        answer, rules = _answer([source], f"_{i}", required, **_tokens(answer_tokens))
        starts.append(f'PASSAGE_{i} REST "\\n" step_{i}')
        lines += [f"PASSAGE_{i}: / ?Passage \\[{i}\\]/", f'step_{i}: "Final Answer:" {answer}' + action, *rules]
    return starts, lines


def _tokens(answer_tokens: tuple[int, int] | None) -> dict:
    return {} if answer_tokens is None else {"answer_tokens": tuple(int(n) for n in answer_tokens)}


def react_grammar(tools: ToolRegistry | list[Tool], sources: list[str] | None = None,
                  passages: list[str] | None = None, citations: str = "allowed",
                  answer_tokens: tuple[int, int] | None = None) -> str:
    """The Lark grammar of one text-ReAct step, continuing after ``Thought:``. ``sources``: the sources
    the episode's searches returned so far; the answer may cite only these (``None``: no rule).
    ``passages``: the source of each passage of the latest search, in order; a thought that begins
    with ``Passage [i]`` binds the answer's citations to ``passages[i-1]``. ``citations``:
    ``"required"``: when ``sources`` is not empty the answer must cite (``_answer``); ``"allowed"``:
    it may. Raises ValueError for another value. ``answer_tokens``: the required citation's bounds
    (tokens before it, tokens after it; default 128 and 64, the agent passes half and a quarter of
    its step's ``max_new_tokens``)."""
    required = _required(citations)
    tools = list(tools)
    action = ' | "Action:" " "? call' if tools else ""
    starts, thoughts = _passage_thoughts(passages, sources, action, required, answer_tokens)
    answer, rules = _answer(sources, "", required, **_tokens(answer_tokens))
    lines = ["%llguidance {}",
             "start: " + " | ".join(starts),
             *thoughts,
             f'step: "Final Answer:" {answer}' + action,
             *rules]
    if tools:
        lines.append("call: " + " | ".join(f"call_{i}" for i in range(len(tools))))
        for i, tool in enumerate(tools):
            lines.append(f'call_{i}: {_lit(tool.name)} "\\nAction Input:" " "? args_{i}')
            lines.append(f"args_{i}: %json {json.dumps(_json_schema(tool))}")
    return "\n".join(lines)


def _required(citations: str) -> bool:
    if citations not in ("required", "allowed"):
        raise ValueError(f"citations: expected 'required' or 'allowed', got {citations!r}")
    return citations == "required"


def native_grammar(tools: ToolRegistry | list[Tool], sources: list[str] | None = None,
                   citations: str = "allowed", answer_tokens: tuple[int, int] | None = None) -> str:
    """The Lark grammar of a native (Hermes ``<tool_call>``) reply: plain text, or text then calls.
    ``sources`` and ``citations``: as in ``react_grammar``, for the plain-text answer."""
    required = _required(citations)
    tools = list(tools)
    if not tools:
        answer, rules = _answer(sources, "", required, **_tokens(answer_tokens))
        return "\n".join(["%llguidance {}", f"start: {answer}", *rules])
    # Plain text never contains "<tool_call>"; a call's header is the (lazy) text up to it.
    answer, rules = _answer(sources, "", required, exclude="<tool_call>", bound_head=False, **_tokens(answer_tokens))
    call_schema = {"anyOf": [{
        "type": "object",
        "properties": {"name": {"const": t.name}, "arguments": _json_schema(t)},
        "required": ["name", "arguments"], "additionalProperties": False,
        "x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "},
    } for t in tools]}
    return "\n".join([
        "%llguidance {}",
        f"start: {answer} | call+",
        *rules,
        r'call: call_head "\n"? body "\n"? "</tool_call>" "\n"?',
        r"call_head[lazy]: /(?s:.*)<tool_call>/",
        f"body: %json {json.dumps(call_schema)}",
    ])


def answer_grammar(sources: list[str] | None = None, citations: str = "allowed",
                   answer_tokens: tuple[int, int] | None = None) -> str:
    """The grammar of an answer alone, with ``react_grammar``'s citation rules: the agent's forced
    answer at the step limit, written after ``Final Answer:``. Raises ValueError for a bad ``citations``."""
    answer, rules = _answer(sources, "", _required(citations), **_tokens(answer_tokens))
    return "\n".join(["%llguidance {}", f"start: {answer}", *rules])


def free_text_grammar() -> str:
    """Any text: for the unconstrained rows of a batch whose other rows have a grammar."""
    return "%llguidance {}\nstart: TEXT\nTEXT: /(?s:.*)/"


_TOKENIZERS: dict[int, Any] = {}
_LOCK = threading.Lock()


def _ll_tokenizer(tokenizer):
    """llguidance's view of a Hugging Face fast tokenizer (built once per tokenizer, ~1 s)."""
    key = id(tokenizer)
    with _LOCK:
        if key not in _TOKENIZERS:
            import llguidance.hf

            try:
                _TOKENIZERS[key] = (tokenizer, llguidance.hf.from_tokenizer(tokenizer))
            except ValueError as e:
                raise GrammarError(f"constrained decoding needs a fast tokenizer: {e}") from None
        return _TOKENIZERS[key][1]


def check_grammar(grammar: str, tokenizer) -> None:
    """Raise ``GrammarError`` naming the problem if llguidance rejects ``grammar``."""
    import llguidance

    matcher = llguidance.LLMatcher(_ll_tokenizer(tokenizer), grammar, log_level=0)
    if matcher.is_error():
        raise GrammarError(f"invalid tool-call grammar: {matcher.get_error()}")


class GrammarLogitsProcessor:
    """A transformers ``LogitsProcessor``: tokens the grammar does not allow get -inf, per row.

    One llguidance matcher per batch row; rows may be left-padded. The first call sees the
    prompt; every later call first feeds each row's newest token to its matcher. A row whose
    matcher has finished (or failed) may only end: its mask allows the end-of-sequence token.
    ``scores``: (batch, vocab) float logits; returns them masked in place.
    """

    def __init__(self, grammars: str | list[str], tokenizer, batch_size: int = 1):
        import llguidance

        grammars = [grammars] * batch_size if isinstance(grammars, str) else list(grammars)
        tok = _ll_tokenizer(tokenizer)
        self.matchers = [llguidance.LLMatcher(tok, g, log_level=0) for g in grammars]
        for m in self.matchers:
            if m.is_error():
                raise GrammarError(f"invalid tool-call grammar: {m.get_error()}")
        self.eos = tokenizer.eos_token_id
        self._prompt_len: int | None = None

    def __call__(self, input_ids, scores):
        import numpy as np
        import torch
        from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

        batch, vocab = scores.shape
        if len(self.matchers) != batch:
            raise GrammarError(f"{len(self.matchers)} grammars for a batch of {batch} rows")
        if self._prompt_len is None:
            self._prompt_len = input_ids.shape[1]
        else:
            last = input_ids[:, -1].tolist()
            for m, token in zip(self.matchers, last):
                if not (m.is_stopped() or m.is_error()):
                    m.consume_token(token)
        words = (vocab + 31) // 32
        mask = allocate_token_bitmask(batch, words * 32)
        for i, m in enumerate(self.matchers):
            if m.is_error() or m.is_stopped():
                mask[i] = 0
                mask[i, self.eos // 32] = np.int32(np.uint32(1 << (self.eos % 32)).view(np.int32))
            else:
                fill_next_token_bitmask(m, mask, i)
        bits = torch.from_numpy(mask).unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)  # (batch, words, 32)
        allowed = (bits & 1).bool().reshape(batch, -1)[:, :vocab].to(scores.device)  # (batch, vocab)
        return scores.masked_fill(~allowed, float("-inf"))

    @property
    def errors(self) -> list[str]:
        """The grammar matchers' error messages (one per sequence that left the grammar); empty when none did."""
        return [m.get_error() for m in self.matchers if m.is_error()]
