"""Verifiable rewards for GSM8K-style maths: the reward interface's Python callables.

Each takes ``(prompts, responses, **columns)`` and returns one float per response; GSM8K rows carry
the reference in an ``answer`` column (a number, or a worked solution ending ``#### 72``).
A 135M model rarely gets a GSM8K problem right at first, so an all-or-nothing reward gives GRPO
no signal: ``gsm8k_format`` and ``gsm8k_closeness`` give partial credit to combine with weights.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

# -1,234.5 / $1,200 / -$5 / 3.50 / 1 200 is two numbers on purpose (GSM8K never writes it that way)
_NUMBER = re.compile(r"(?<![\w.])[-−]?\$?[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_MARKERS = re.compile(r"(####|final answer\s*[:：]|answer\s*(?:is|:|=)|\\boxed\{)", re.I)


def _to_float(token: str) -> float | None:
    token = token.replace("−", "-").replace("$", "").replace(",", "")
    try:
        return float(token)
    except ValueError:
        return None


def extract_number(text: Any) -> float | None:
    """The answer a response commits to: the first number after its last answer marker
    (``####``, ``Final Answer:``, ``the answer is``, ``\\boxed{}``), else its last number.
    Handles thousands separators, currency, units, decimals and negative numbers."""
    text = _text(text)
    if not text:
        return None
    markers = list(_MARKERS.finditer(text))
    if markers:
        after = _NUMBER.findall(text[markers[-1].end():])
        if after:
            return _to_float(after[0])
    found = _NUMBER.findall(text)
    return _to_float(found[-1]) if found else None


def reference_number(answer: Any) -> float | None:
    """A GSM8K reference: ``"72"``, ``72`` or a worked solution ending ``#### 72``."""
    if isinstance(answer, (int, float)):
        return float(answer)
    text = str(answer)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    return extract_number(text)


def is_correct(response: Any, answer: Any) -> bool:
    """Whether the last number in ``response`` equals the reference ``answer`` (a number, or GSM8K
    text with ``#### n``), to a relative tolerance of 1e-6. False when either has no number.
    """
    got, expected = extract_number(response), reference_number(answer)
    return got is not None and expected is not None and abs(got - expected) <= 1e-6 * max(1.0, abs(expected))


def _text(response: Any) -> str:
    if isinstance(response, str):
        return response
    if isinstance(response, list):  # chat messages
        return "\n".join(str(m.get("content", "")) for m in response if isinstance(m, dict))
    return "" if response is None else str(response)


def _answers(answer: Sequence[Any] | None, n: int) -> Sequence[Any]:
    if answer is None:
        raise ValueError("GSM8K rewards need the reference answers: an 'answer' column in the data")
    if len(answer) != n:
        raise ValueError(f"{len(answer)} reference answers for {n} responses")
    return answer


def gsm8k_correctness(prompts, responses, answer=None, **_) -> list[float]:
    """1 when the final number equals the reference, else 0."""
    return [float(is_correct(r, a)) for r, a in zip(responses, _answers(answer, len(responses)))]


def gsm8k_format(prompts, responses, **_) -> list[float]:
    """1 when the response states its result with an answer marker and a number after it."""
    out = []
    for r in responses:
        markers = list(_MARKERS.finditer(_text(r)))
        out.append(float(bool(markers) and bool(_NUMBER.search(_text(r)[markers[-1].end():]))))
    return out


def gsm8k_closeness(prompts, responses, answer=None, **_) -> list[float]:
    """Partial credit: 1 - relative error of the final number, floored at 0 (0 without a number)."""
    out = []
    for r, a in zip(responses, _answers(answer, len(responses))):
        got, expected = extract_number(r), reference_number(a)
        if got is None or expected is None:
            out.append(0.0)
        else:
            out.append(max(0.0, 1.0 - abs(got - expected) / max(1.0, abs(expected))))
    return out
