"""Tool-use training data: GSM8K worked solutions as ReAct trajectories with calculator calls.

GSM8K marks each calculation as ``<<48/2=24>>``. Every mark becomes one step: ``Thought`` (the
lines finished so far, then "I need to calculate 48/2."), ``Action: calculator``, ``Action Input``
(the expression) and ``Observation`` (what Keel's calculator returns); a line is stated only after
its result came back, so the model learns to call the tool rather than guess. The ``#### N`` line
becomes the ``Final Answer``. Rows come out in TRL's conversational prompt-completion format, with the same
system prompt the agent uses, so ``python -m align sft`` teaches the small model the format.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from agents.agent import react_system_prompt
from agents.calculator import CalculatorError, calculate, format_number
from agents.tools import ToolRegistry, default_tools
from align.data import parse_gsm8k

_ANNOTATION = re.compile(r"<<([^<>=]+)=([^<>]*)>>")


def gsm8k_to_react(row: dict, tools: ToolRegistry | None = None) -> dict:
    """One GSM8K row -> ``{"prompt": [system, user], "completion": [assistant], "final": N}``."""
    problem = parse_gsm8k(row)
    tools = tools or default_tools()
    steps, carry = [], []  # carry: finished lines, stated in the next thought (after their results are known)
    for line in problem.solution.splitlines():
        line = line.strip()
        if not line:
            continue
        calls = _ANNOTATION.findall(line)
        for i, (expr, _) in enumerate(calls):
            try:
                result = format_number(calculate(expr))
            except CalculatorError as e:
                raise ValueError(f"annotation {expr!r} does not calculate: {e}") from None
            thought = " ".join(carry + [f"I need to calculate {expr.strip()}."])
            carry = []
            steps.append(f"Thought: {thought}\nAction: calculator\n"
                         f'Action Input: {json.dumps({"expression": expr.strip()})}\nObservation: {result}')
        carry.append(_ANNOTATION.sub("", line))
    final_thought = " ".join(carry).strip() or "I now know the final answer."
    steps.append(f"Thought: {final_thought}\nFinal Answer: {problem.final}")
    return {
        "prompt": [{"role": "system", "content": react_system_prompt(tools)},
                   {"role": "user", "content": problem.question}],
        "completion": [{"role": "assistant", "content": "\n".join(steps)}],
        "final": problem.final,
    }


def convert_file(src: Path, out: Path, limit: int | None = None, skip: int = 0) -> dict:
    """Rewrite a GSM8K JSONL file (``src``) as ReAct trajectories in ``out``, after skipping ``skip`` lines
    and stopping at ``limit`` written; lines that do not convert are reported and skipped. Returns
    ``{written, skipped, out}``.
    """
    tools = default_tools()
    written = skipped = 0
    from align.data import iter_jsonl  # BOM, non-UTF-8 lines, deep nesting, damaged gzip

    with open(out, "w", encoding="utf-8") as g:
        for lineno, row in iter_jsonl(src):
            if lineno <= skip:
                continue
            try:
                if isinstance(row, Exception):
                    raise ValueError(str(row))
                g.write(json.dumps(gsm8k_to_react(row, tools)) + "\n")
                written += 1
            except (ValueError, KeyError, TypeError) as e:
                skipped += 1
                print(f"{src} line {lineno}: skipped ({e})")
            if limit and written >= limit:
                break
    return {"written": written, "skipped": skipped, "out": str(out)}
