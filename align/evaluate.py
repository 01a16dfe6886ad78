"""``python -m align eval CHECKPOINT --suite gsm8k,winrate``: how good is a checkpoint, and better than its parent?

- ``gsm8k``: accuracy on held-out GSM8K problems (default: the 200 in data/gsm8k/heldout.jsonl,
  never read by the shipped training configs), greedy decoding, batched, the final number
  extracted by ``align.verifiers`` (answer markers, commas, currency, units, negatives).
- ``winrate``: the checkpoint and its parent (from the manifest, or ``--parent``) answer the same
  prompts greedily; a reward model or ensemble (``--rm``) scores both; win rate counts ties as
  half. KL(checkpoint || parent) is estimated on answers sampled from the checkpoint, so a win
  bought by drifting far from the parent shows.
Prints a table and writes JSON (``CHECKPOINT/eval.json`` unless ``--out``).

``--engine auto|transformers|vllm`` picks what writes the greedy answers (``align.rollout.
chat_generator``: transformers' ``generate``, or a vLLM engine built from the checkpoint and one
from the parent; ``auto``: vLLM on CUDA when installed). The win-rate KL estimate stays on
transformers: it needs the checkpoint's own log-probs of its samples, which vLLM's kernels do not give.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch

from align.errors import ConfigError
from align.verifiers import extract_number, is_correct

REPO = Path(__file__).resolve().parent.parent
HELDOUT_GSM8K = REPO / "data" / "gsm8k" / "heldout.jsonl"
HH = REPO / "data" / "hh-rlhf" / "harmless.jsonl.gz"
GSM8K_SUFFIX = "\nSolve it step by step, then end with 'Final Answer: <number>'."


@torch.inference_mode()
def generate_batch(model, tokenizer, prompts: Sequence[list[dict]], max_new_tokens: int, batch_size: int = 8,
                   progress: str | None = None, chat=None) -> list[str]:
    """Greedy answers to chat prompts (stripped text). ``chat``: an ``align.rollout.ChatGenerator``;
    None: transformers' ``generate`` on ``model``, left-padded batches of ``batch_size``. A vLLM
    engine gets every prompt at once (it batches itself)."""
    from tqdm.auto import tqdm

    from align.rollout import ChatGenerator, TransformersRolloutEngine

    chat = chat if chat is not None else ChatGenerator(TransformersRolloutEngine(tokenizer), model, tokenizer)
    if chat.name != "transformers":
        if progress is not None:
            print(f"[keel] {progress}: {len(prompts)} prompts on {chat.name}", flush=True)
        return chat(list(prompts), max_new_tokens, 0.0, progress=progress is not None)
    out: list[str] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=progress, disable=progress is None):
        out += chat(list(prompts[start:start + batch_size]), max_new_tokens, 0.0)
    return out


def gsm8k_suite(model, tokenizer, n: int, path: Path = HELDOUT_GSM8K, max_new_tokens: int = 256,
                batch_size: int = 8, suffix: str = GSM8K_SUFFIX, chat=None) -> dict[str, Any]:
    """Accuracy on the first ``n`` held-out GSM8K problems: greedy answers of at most
    ``max_new_tokens`` tokens (``chat``: the engine, ``generate_batch``), checked by ``is_correct``;
    returns the counts and per-problem records.
    """
    from align.data import parse_gsm8k, read_jsonl

    rows = read_jsonl(path)[:n]
    problems = [parse_gsm8k(r) for r in rows]
    prompts = [[{"role": "user", "content": p.question + suffix}] for p in problems]
    started = time.perf_counter()
    answers = generate_batch(model, tokenizer, prompts, max_new_tokens, batch_size, progress="gsm8k", chat=chat)
    records = [{"question": p.question, "expected": p.final, "answer": a, "extracted": extract_number(a),
                "correct": is_correct(a, p.final)} for p, a in zip(problems, answers)]
    correct = sum(r["correct"] for r in records)
    return {"suite": "gsm8k", "problems": len(records), "accuracy": correct / max(1, len(records)),
            "correct": correct, "no_number": sum(r["extracted"] is None for r in records),
            "seconds": time.perf_counter() - started, "data": str(path), "records": records}


def hh_prompts(n: int, path: Path = HH) -> list[list[dict]]:
    """The last ``n`` prompts of the HH harmless file (the split the shipped configs hold out)."""
    from align.config import DataConfig
    from align.data import load_data

    data = load_data(DataConfig(path=str(path), eval_size=0))
    # the last rows: the shipped configs hold these out as the eval split
    rows = list(data.train)[-n:]
    return [r["prompt"] for r in rows]


def winrate_suite(model, tokenizer, parent_ref: str, rm_spec: str | dict, n: int, max_new_tokens: int = 96,
                  batch_size: int = 8, prompts: Sequence[list[dict]] | None = None, chat=None,
                  engine: str = "transformers", vllm=None) -> dict[str, Any]:
    """Win rate of ``model`` against its parent under a reward model, on ``n`` prompts (greedy,
    ``max_new_tokens``), and the KL to the parent estimated on samples at temperature 1
    (``align.monitor.sample_and_kl``: nats per response, k1, untruncated sampling; transformers).
    ``chat``: the checkpoint's engine (``generate_batch``); the parent's is built on ``engine``
    (auto|transformers|vllm) with ``vllm`` (``VLLMRolloutSettings``) and closed after its answers.
    Ties count half. Returns the numbers and per-prompt records.
    """
    from align.models import load_policy
    from align.monitor import sample_and_kl
    from align.rewards import load_reward

    from align.rollout import chat_generator

    prompts = list(prompts) if prompts is not None else hh_prompts(n)
    parent, _, parent_source = load_policy(parent_ref)
    started = time.perf_counter()
    ours = generate_batch(model, tokenizer, prompts, max_new_tokens, batch_size, progress="checkpoint", chat=chat)
    parent_chat = chat_generator(engine, parent, tokenizer, parent_source, vllm, field="--engine")
    try:
        theirs = generate_batch(parent, tokenizer, prompts, max_new_tokens, batch_size, progress="parent",
                                chat=parent_chat)
    finally:
        parent_chat.close()
    rm = load_reward(rm_spec)
    s_ours, s_theirs = rm(prompts, ours), rm(prompts, theirs)
    wins = sum(a > b for a, b in zip(s_ours, s_theirs))
    ties = sum(a == b for a, b in zip(s_ours, s_theirs))
    kls = []
    for start in range(0, len(prompts), batch_size):
        _, kl = sample_and_kl(model, parent, tokenizer, prompts[start:start + batch_size], max_new_tokens, 1.0, seed=start)
        kls.append(kl * len(prompts[start:start + batch_size]))
    return {"suite": "winrate", "prompts": len(prompts), "parent": parent_ref, "rm": getattr(rm, "name", str(rm_spec)),
            "win_rate": (wins + 0.5 * ties) / max(1, len(prompts)), "wins": wins, "ties": ties,
            "mean_reward": sum(s_ours) / len(prompts), "parent_mean_reward": sum(s_theirs) / len(prompts),
            "kl_to_parent": sum(kls) / len(prompts), "seconds": time.perf_counter() - started,
            "records": [{"prompt": p[-1]["content"], "checkpoint": a, "parent": b, "score": x, "parent_score": y}
                        for p, a, b, x, y in zip(prompts, ours, theirs, s_ours, s_theirs)]}


def parent_of(source) -> str:
    """The model a checkpoint was trained from (its manifest's first parent, else its base model).
    Raises ConfigError when it has no Keel manifest.
    """
    m = source.manifest
    if m is None:
        raise ConfigError(f"{source.ref} has no Keel manifest to name its parent; pass --parent")
    return m.parents[0] if m.parents else m.base_model


def format_results(results: list[dict[str, Any]]) -> str:
    """Evaluation results as a Markdown table (one row per suite)."""
    lines = ["| suite | n | result | detail |", "|---|---|---|---|"]
    for r in results:
        if r["suite"] == "gsm8k":
            lines.append(f"| gsm8k | {r['problems']} | accuracy {r['accuracy']:.3f} | "
                         f"{r['correct']} correct, {r['no_number']} without a number, {r['seconds']:.0f} s |")
        else:
            lines.append(f"| winrate vs {r['parent']} | {r['prompts']} | win rate {r['win_rate']:.3f} | "
                         f"reward {r['mean_reward']:.3f} vs {r['parent_mean_reward']:.3f}, "
                         f"KL to parent {r['kl_to_parent']:.2f} nats, {r['seconds']:.0f} s |")
    return "\n".join(lines)
