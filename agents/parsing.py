"""Reading a model's ReAct step, tolerantly.

Small models wrap JSON in code fences, forget quotes, use single quotes, add text after the JSON,
or write ``Action: calculator(2+2)``. Every such slip that still has one clear meaning is
accepted; anything else raises ``ParseError`` whose message tells the model how to fix its output.

The output is untrusted text of any length, so two rules hold for everything here:

* ``ParseError`` is the only exception raised, whatever the text (nesting depth included: JSON
  nested deeper than ``MAX_JSON_DEPTH`` is refused before any recursive decoder sees it).
* Time is linear in the text's length. No pattern may let two quantifiers over the same
  characters meet (``^\s*`` under ``re.M`` crosses lines and rescans every blank line from each
  line start; ``(.*?)\s*X`` rescans a whitespace run from each of its characters); where a
  regular expression would need an atomic group (Python 3.11+, and Keel supports 3.10) the scan
  is written out with ``str.find``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

FORMAT_REMINDER = ("Use exactly this format:\nThought: <reasoning>\nAction: <tool name>\n"
                   "Action Input: <JSON object of arguments>\nor, when you know the answer:\n"
                   "Thought: <reasoning>\nFinal Answer: <answer>")


class ParseError(ValueError):
    """The model's output cannot be read; the message tells the model how to fix it."""


# Tool arguments are flat objects; 32 levels is far beyond any honest call and far below the
# depth at which json's (and ast's) recursive decoders raise RecursionError.
MAX_JSON_DEPTH = 32


@dataclass
class ParsedStep:
    """One ReAct step as read by ``parse_react``: the thought, then either a tool call (``action``,
    ``action_input``) or a ``final_answer``; ``consumed`` is the text the step used.
    """

    thought: str = ""
    action: str | None = None
    action_input: Any = None
    final_answer: str | None = None
    consumed: str = ""  # the part of the text this step used (what is kept in the scratchpad)


# [^\S\n]: whitespace within one line. A line-start anchor followed by \s* would cross lines.
_LABEL = re.compile(r"^[^\S\n]*(Thought|Action Input|Action|Final Answer|Observation)[^\S\n]*:", re.M | re.I)
_CALL_FORM = re.compile(r"^\s*([A-Za-z_]\w*)\s*[\(\[](.*)[\)\]]\s*$", re.S)
# What models wrap a tool name in: [calculator], `search`, **search**, "search", <search>, search.
_NAME_DECOR = "`'\"[]<>*(){} .:;"
# Where a final answer ends: a line that starts another ReAct step (a small model runs on from its
# answer into "Thought: ..." or an invented "Observation: ..."), outside code fences. A label word
# elsewhere ("the Observation: field ...", print('Action: x')) is part of the answer.
_STEP_LINE = re.compile(r"\n[^\S\n]*(?:(?i:Observation)|Thought|Action Input|Action|Final Answer)[^\S\n]*:")


# **Action:** / __Action__: / **Final Answer**: -> plain labels (markdown around a label, not in answers).
_BOLD_LABEL = re.compile(r"^([^\S\n]*)(?:\*\*|__)(Thought|Action Input|Action|Final Answer|Observation)\s*(?:\*\*|__)?"
                         r"\s*:\s*(?:\*\*|__)?", re.M | re.I)
_NO_TOOL = {"none", "n/a", "na", "no tool", "nothing", "final answer", "null"}
_KWARGS = re.compile(r"^\s*[A-Za-z_]\w*\s*=")


_FENCE_LANG = re.compile(r"[a-zA-Z]*")


def strip_fences(text: str) -> str:
    """Replace each ```lang ... ``` block by its content (leading whitespace after the language
    tag dropped); an unclosed fence stays as written. Linear: each fence is found once."""
    out, pos = [], 0
    while True:
        start = text.find("```", pos)
        if start < 0:
            break
        body = _FENCE_LANG.match(text, start + 3).end()
        close = text.find("```", body)
        if close < 0:
            break
        content = text[body:close]
        out += [text[pos:start], content.lstrip()]
        pos = close + 3
    out.append(text[pos:])
    return "".join(out)


def _json_depth(s: str) -> int:
    """The deepest nesting of ``{``/``[`` outside double-quoted strings (linear scan)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in s:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "}]":
            depth = max(depth - 1, 0)
    return deepest


def _python_call_args(inner: str) -> Any:
    """``query="faiss", k=2`` or ``"faiss"`` as written in ``search(...)``: literals only, via
    ``ast.literal_eval`` (never eval). Returns ``_NOT_PYTHON`` when it is not a literal call."""
    import ast

    try:
        call = ast.parse(f"f({inner})", mode="eval").body
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return _NOT_PYTHON
    if kwargs and not args:
        return kwargs
    if len(args) == 1 and not kwargs:
        return args[0]
    return _NOT_PYTHON


_NOT_PYTHON = object()


def _sections(text: str) -> list[tuple[str, str, int, int]]:
    """(label, body, start, end) for each labelled section, in order."""
    marks = list(_LABEL.finditer(text))
    out = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out.append((m.group(1).lower(), text[m.end():end].strip(), m.start(), end))
    return out


def parse_json_lenient(text: str) -> Any:
    """A JSON value from the start of ``text``; repairs single quotes and unquoted keys.

    A string that is not JSON at all comes back as that string (a bare argument); an empty input
    (or ``none``, ``null``, ``{}``) comes back as ``None``: the call has no arguments.
    """
    s = strip_fences(text).strip()
    if len(s) >= 2 and s[0] == s[-1] == "`":
        s = s.strip("`").strip()  # `{"expression": "2+2"}` in single backticks
    if not s or s.lower().strip(".()") in ("none", "null", "{}", "", "n/a", "no input", '""', "''", "[]"):
        return None  # no arguments: the tool decides whether it needs any
    if _KWARGS.match(s):  # query="faiss", k=2
        value = _python_call_args(s.splitlines()[0] if "\n" not in s.strip() else s)
        if value is not _NOT_PYTHON:
            return value
    if s[0] not in "{[\"'":
        return s.splitlines()[0].strip()
    if _json_depth(s) > MAX_JSON_DEPTH:
        raise ParseError(f"Action Input is nested more than {MAX_JSON_DEPTH} levels deep; tool arguments "
                         "are a flat JSON object. " + FORMAT_REMINDER)
    # strict=False: raw control characters (a newline, a tab) inside strings are accepted, as
    # models write them; the value keeps them.
    decoder = json.JSONDecoder(strict=False)
    candidates = [s]
    repaired = re.sub(r"'([^'\\]*)'", r'"\1"', s)  # single-quoted strings
    repaired = re.sub(r'([{,]\s*)([A-Za-z_]\w*)\s*:', r'\1"\2":', repaired)  # unquoted keys
    candidates.append(repaired)
    # Unquoted string values: {"expression": 48/2} -> {"expression": "48/2"}
    # Python literals and trailing commas: {"k": True, "n": None,} -> {"k": true, "n": null}
    repaired = re.sub(r"(?<=[:\[,\s])(True|False|None)(?=\s*[,}\]])",
                      lambda m: {"True": "true", "False": "false", "None": "null"}[m.group(1)], repaired)
    repaired = re.sub(r",\s*([}\]])", r"\1", repaired)
    candidates.append(repaired)
    # A value runs to the next , or }; text after the last of them holds no value to quote (and
    # scanning it from every colon there would be quadratic).
    last = max(repaired.rfind(","), repaired.rfind("}")) + 1
    candidates.append(_UNQUOTED_VALUE.sub(_quote_value, repaired[:last]) + repaired[last:])
    for c in candidates:
        try:
            value, _ = decoder.raw_decode(c)  # ignores trailing text after the JSON
            return value
        except (json.JSONDecodeError, RecursionError):
            continue
    raise ParseError(f"Action Input is not valid JSON: {s[:120]!r}. " + FORMAT_REMINDER)


_UNQUOTED_VALUE = re.compile(r':\s*([^"\s{}\[\],][^,}]*)([,}])')


def _quote_value(m: re.Match) -> str:
    value = m.group(1).rstrip()
    if re.fullmatch(r"-?\d+(\.\d+)?|true|false|null", value):
        return m.group(0)
    return f': "{value}"{m.group(2)}'


def run_on_start(answer: str) -> int:
    """Where ``answer`` stops being the answer: the index of the first line that starts another
    ReAct step (``Thought:``, ``Action:``, ``Action Input:``, ``Final Answer:``, ``Observation:``;
    spaces before the colon allowed) outside a ``` code fence, else ``len(answer)``. Linear."""
    fenced = False
    pos = 0
    for m in _STEP_LINE.finditer(answer):
        fenced ^= answer.count("```", pos, m.start()) % 2 == 1
        pos = m.start()
        if not fenced:
            return m.start()
    return len(answer)


def has_labels(text: str) -> bool:
    """Whether the text uses any ReAct label other than the Thought we primed it with."""
    return any(m.group(1).lower() != "thought" for m in _LABEL.finditer(text))


def parse_react(text: str) -> ParsedStep:
    """One ReAct step: the first ``Action`` (with its input) or ``Final Answer`` in ``text``.

    The final answer is kept as written (code fences included) up to an invented ``Observation:``
    line; code fences are removed only around labels and action inputs. Raises ``ParseError``.
    """
    text = _BOLD_LABEL.sub(lambda m: f"{m.group(1)}{m.group(2)}: ", text)
    sections = _sections(text)
    if not any(label in ("action", "final answer") for label, *_ in sections) and "```" in text:
        sections = _sections(strip_fences(text))  # the whole step was wrapped in a code fence
        text = strip_fences(text)
    if not sections:
        raise ParseError("No 'Action:' or 'Final Answer:' found. " + FORMAT_REMINDER)
    step = ParsedStep()
    for i, (label, body, start, end) in enumerate(sections):
        if label == "thought":
            step.thought = (step.thought + "\n" + body).strip() if step.thought else body
        elif label == "final answer":
            rest = text[start:]
            rest = rest[rest.index(":") + 1:]
            cut = run_on_start(rest)
            answer = rest[:cut].strip()
            if answer.endswith("```") and answer.count("```") % 2 == 1:
                answer = answer[:-3].rstrip()  # the closing fence of a step wrapped in a code block
            if not answer:
                raise ParseError("'Final Answer:' is empty. " + FORMAT_REMINDER)
            step.final_answer = answer
            step.consumed = text[:len(text) - len(rest) + cut].rstrip()
            return step
        elif label == "action":
            first = body.splitlines()[0].strip() if body else ""
            nxt = sections[i + 1] if i + 1 < len(sections) else None
            if first.strip(_NAME_DECOR).lower() in _NO_TOOL:  # "Action: None" then a Final Answer
                if any(lbl == "final answer" for lbl, *_ in sections[i + 1:]):
                    continue
                if first.strip(_NAME_DECOR).lower() == "final answer" and nxt and nxt[0] == "action input" and nxt[1]:
                    step.final_answer, step.consumed = nxt[1], text[:nxt[3]].rstrip()
                    return step
            # **Calculator**(2+2), [calculator](2+2): the decorations go, the call form stays
            undecorated = re.sub(r"^[`*\"'\[<]*([A-Za-z_]\w*?)[`*\"'\]>]+(?=\s*\()", r"\1", first.strip())
            undecorated = undecorated.strip("`*\"' ")
            call = _CALL_FORM.match(undecorated)
            if call and call.group(1).lower() != "none":  # Action: calculator(48/2), current_date()
                inner = call.group(2)
                if not inner.strip() and nxt is not None and nxt[0] == "action input":
                    inner = nxt[1]  # Action: calculator()\nAction Input: {...}
                    end = nxt[3]
                value = _python_call_args(inner) if inner.strip() and _KWARGS.match(inner) else _NOT_PYTHON
                step.action = call.group(1)
                step.action_input = parse_json_lenient(inner) if value is _NOT_PYTHON else value
                step.consumed = text[:end].rstrip()
                return step
            name = first.strip(_NAME_DECOR)
            if not name:
                raise ParseError("'Action:' names no tool. " + FORMAT_REMINDER)
            step.action = name
            if nxt is None or nxt[0] != "action input":
                # No input line: a call without arguments (the tool says if it needs some).
                step.action_input, step.consumed = None, text[:end].rstrip()
                return step
            step.action_input = parse_json_lenient(nxt[1])
            step.consumed = text[:nxt[3]].rstrip()
            return step
        elif label == "observation":
            break  # the model started writing its own observation: ignore the rest
    raise ParseError("No 'Action:' or 'Final Answer:' found. " + FORMAT_REMINDER)


_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)  # body stripped after: linear


def parse_tool_calls(text: str) -> list[tuple[str, dict]]:
    """Native tool calls in the Hermes/Qwen form: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``."""
    calls = []
    for m in _TOOL_CALL.finditer(text):
        value = parse_json_lenient(m.group(1).strip())
        if not isinstance(value, dict) or "name" not in value:
            raise ParseError('A tool call must be {"name": <tool>, "arguments": {...}}.')
        args = value.get("arguments", value.get("parameters", {}))
        if isinstance(args, str):
            args = parse_json_lenient(args)
        calls.append((str(value["name"]), {} if args is None else args))
    return calls
