"""``python -m agents eval``: success rate, mean steps and tool-error rate on held-out problems.

Tasks: ``arith`` (seeded multi-digit arithmetic, answers exact) and ``gsm8k`` (held-out GSM8K
rows, by default ``data/gsm8k/heldout.jsonl``: the last 200 rows of the training split, which the
shipped SFT configs never read).
"""
from __future__ import annotations

import random
import time
from pathlib import Path

from align.verifiers import extract_number, is_correct  # noqa: F401 - shared with GRPO rewards
from agents.agent import ReActAgent, TransformersLLM
from agents.tools import default_tools
from align.data import parse_gsm8k

REPO = Path(__file__).resolve().parent.parent
HELDOUT_GSM8K = REPO / "data" / "gsm8k" / "heldout.jsonl"


def arith_tasks(n: int, seed: int = 0) -> list[dict]:
    """``n`` two-operand arithmetic questions (+, -, *) with their exact answers, seeded."""
    rng = random.Random(seed)
    tasks = []
    for _ in range(n):
        a, b = rng.randint(12, 999), rng.randint(12, 999)
        op = rng.choice(["+", "-", "*"])
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        tasks.append({"question": f"What is {a} {op} {b}?", "answer": str(value)})
    return tasks


def gsm8k_tasks(n: int, path: Path = HELDOUT_GSM8K) -> list[dict]:
    """The first ``n`` GSM8K problems of ``path`` (the held-out file) as ``{question, answer}``; answer: the
    final number.
    """
    from align.data import read_jsonl

    rows = read_jsonl(path)[:n]
    return [{"question": (p := parse_gsm8k(r)).question, "answer": p.final} for r in rows]


def evaluate(agent: ReActAgent, tasks: list[dict], progress: bool = True, workers: int = 1) -> dict:
    """Run every task; with ``workers`` > 1 tasks run in threads (pair with a ``BatchedLLM``)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    correct = steps = tool_calls = tool_errors = answered = parse_errors = 0
    records = []
    started = time.perf_counter()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        traces = list(tqdm(pool.map(lambda t: agent.run(t["question"]), tasks), total=len(tasks),
                           disable=not progress, desc="agent eval"))
    for task, trace in zip(tasks, traces):
        ok = is_correct(trace.answer, task["answer"])
        correct += ok
        answered += trace.answer is not None
        steps += trace.steps
        tool_calls += len(trace.tool_calls)
        tool_errors += trace.tool_errors
        parse_errors += sum(1 for e in trace.events if e.type == "error")
        records.append({"question": task["question"], "expected": task["answer"], "answer": trace.answer,
                        "correct": ok, "steps": trace.steps, "tool_calls": len(trace.tool_calls)})
    n = len(tasks)
    return {"tasks": n, "success_rate": correct / n, "answered_rate": answered / n, "mean_steps": steps / n,
            "tool_calls_per_task": tool_calls / n, "tool_error_rate": tool_errors / tool_calls if tool_calls else 0.0,
            "parse_errors_per_task": parse_errors / n, "seconds": time.perf_counter() - started, "records": records}


def build_agent(checkpoint: str, max_steps: int = 6, max_new_tokens: int = 128, batch: int = 8,
                dtype: str = "auto") -> ReActAgent:
    """A text-format ReAct agent with the default tools on ``checkpoint``; ``batch`` > 1 uses a
    ``BatchedLLM``.
    """
    from agents.batching import BatchedLLM
    from align.models import load_policy

    model, tok, _ = load_policy(checkpoint, dtype=dtype)
    llm = BatchedLLM(model, tok, max_batch=batch) if batch > 1 else TransformersLLM(model, tok)
    return ReActAgent(llm, default_tools(), max_steps=max_steps, max_new_tokens=max_new_tokens, format="text")
