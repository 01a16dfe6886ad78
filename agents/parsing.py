"""Reading a model's ReAct step, tolerantly.

Small models wrap JSON in code fences, forget quotes, use single quotes, add text after the JSON,
or write ``Action: calculator(2+2)``. Every such slip that still has one clear meaning is
accepted; anything else raises ``ParseError`` whose message tells the model how to fix its output.
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
    pass


@dataclass
class ParsedStep:
    thought: str = ""
    action: str | None = None
    action_input: Any = None
    final_answer: str | None = None
    consumed: str = ""  # the part of the text this step used (what is kept in the scratchpad)


_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.S)
_LABEL = re.compile(r"^\s*(Thought|Action Input|Action|Final Answer|Observation)\s*:", re.M | re.I)
_CALL_FORM = re.compile(r"^\s*([A-Za-z_]\w*)\s*[\(\[](.*)[\)\]]\s*$", re.S)


def strip_fences(text: str) -> str:
    return _FENCE.sub(lambda m: m.group(1), text)


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

    A string that is not JSON at all comes back as that string (a bare argument).
    """
    s = strip_fences(text).strip()
    if not s:
        raise ParseError("Action Input is empty. " + FORMAT_REMINDER)
    if s[0] not in "{[\"'":
        return s.splitlines()[0].strip()
    decoder = json.JSONDecoder()
    candidates = [s]
    repaired = re.sub(r"'([^'\\]*)'", r'"\1"', s)  # single-quoted strings
    repaired = re.sub(r'([{,]\s*)([A-Za-z_]\w*)\s*:', r'\1"\2":', repaired)  # unquoted keys
    candidates.append(repaired)
    # Unquoted string values: {"expression": 48/2} -> {"expression": "48/2"}
    candidates.append(re.sub(r':\s*([^"\s{}\[\],][^,}]*?)\s*([,}])',
                             lambda m: m.group(0) if re.fullmatch(r"-?\d+(\.\d+)?|true|false|null", m.group(1))
                             else f': "{m.group(1)}"{m.group(2)}', repaired))
    for c in candidates:
        try:
            value, _ = decoder.raw_decode(c)  # ignores trailing text after the JSON
            return value
        except json.JSONDecodeError:
            continue
    raise ParseError(f"Action Input is not valid JSON: {s[:120]!r}. " + FORMAT_REMINDER)


def has_labels(text: str) -> bool:
    """Whether the text uses any ReAct label other than the Thought we primed it with."""
    return any(m.group(1).lower() != "thought" for m in _LABEL.finditer(text))


def parse_react(text: str) -> ParsedStep:
    clean = strip_fences(text) if "```" in text else text
    sections = _sections(clean)
    if not sections:
        raise ParseError("No 'Action:' or 'Final Answer:' found. " + FORMAT_REMINDER)
    step = ParsedStep()
    for i, (label, body, start, end) in enumerate(sections):
        if label == "thought":
            step.thought = (step.thought + "\n" + body).strip() if step.thought else body
        elif label == "final answer":
            if not body:
                raise ParseError("'Final Answer:' is empty. " + FORMAT_REMINDER)
            step.final_answer = body.split("\nObservation")[0].strip()
            step.consumed = clean[:end].rstrip()
            return step
        elif label == "action":
            name = body.splitlines()[0].strip().strip("`'\"") if body else ""
            call = _CALL_FORM.match(name)
            if call:  # Action: calculator(48/2)
                step.action, step.action_input = call.group(1), parse_json_lenient(call.group(2))
                step.consumed = clean[:end].rstrip()
                return step
            if not name:
                raise ParseError("'Action:' names no tool. " + FORMAT_REMINDER)
            step.action = name
            nxt = sections[i + 1] if i + 1 < len(sections) else None
            if nxt is None or nxt[0] != "action input":
                raise ParseError(f"'Action: {name}' has no 'Action Input:' line. " + FORMAT_REMINDER)
            step.action_input = parse_json_lenient(nxt[1])
            step.consumed = clean[:nxt[3]].rstrip()
            return step
        elif label == "observation":
            break  # the model started writing its own observation: ignore the rest
    raise ParseError("No 'Action:' or 'Final Answer:' found. " + FORMAT_REMINDER)


_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def parse_tool_calls(text: str) -> list[tuple[str, dict]]:
    """Native tool calls in the Hermes/Qwen form: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``."""
    calls = []
    for m in _TOOL_CALL.finditer(text):
        value = parse_json_lenient(m.group(1))
        if not isinstance(value, dict) or "name" not in value:
            raise ParseError('A tool call must be {"name": <tool>, "arguments": {...}}.')
        args = value.get("arguments", value.get("parameters", {}))
        if isinstance(args, str):
            args = parse_json_lenient(args)
        calls.append((str(value["name"]), args))
    return calls
