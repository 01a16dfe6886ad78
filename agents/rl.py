"""Multi-turn tool RL: GRPO whose completions are whole ReAct episodes with real tool calls.

``react_rollout`` is a TRL ``rollout_func`` (``GRPOTrainer(rollout_func=...)``, enabled in Keel by
``tool_loop:`` in a GRPO config). For each prompt it runs the text ReAct loop of
``agents.agent`` through its one step function, ``react_step``: generate until the model writes
``Observation:``, run the tool it asked for,
append the observation and continue, until a ``Final Answer``, EOS, the step limit or the
completion budget. The completion GRPO trains on is the concatenation of the model's tokens and
the observation tokens; ``env_mask`` marks the observation tokens 0 so that the loss only covers
what the model wrote. Generation continues from token ids, never from re-tokenised text, so the
ids the loss sees are exactly the ids the model sampled.

Rewards over the episode text: ``final_answer_correct`` (the number after the last
``Final Answer:`` equals the reference: a tool result copied without a final answer earns
nothing) and ``tool_format`` (partial credit for a well-formed tool call followed by a final answer).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import torch

from agents.agent import STOP_SEQUENCES, react_step, react_system_prompt
from agents.tools import ToolRegistry

_FINAL = re.compile(r"Final Answer\s*:", re.I)
_ACTION = re.compile(r"Action\s*:")
_ACTION_INPUT = re.compile(r"Action Input\s*:")


def _has_tool_round(text: str) -> bool:
    """An ``Action:`` line, then (blank lines allowed) an ``Action Input:`` line, then
    ``Observation:`` later on that line or at the start of the next. One pass over the lines:
    the equivalent single regular expression is quadratic on a line repeating ``Action:``."""
    lines = text.split("\n")
    after_action = False  # whether the last non-blank line holds an "Action:"
    for i, line in enumerate(lines):
        m = _ACTION_INPUT.match(line.lstrip()) if after_action else None
        if m and ("Observation:" in line.lstrip()[m.end():]
                  or (i + 1 < len(lines) and lines[i + 1].startswith("Observation:"))):
            return True
        if line.strip():
            after_action = _ACTION.search(line) is not None
    return False


def _text(completion: Any) -> str:
    if isinstance(completion, list):
        return "\n".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion or "")


def final_answer_correct(prompts, completions, answer=None, **_) -> list[float]:
    """1 when the episode ends with ``Final Answer: <reference number>``, else 0."""
    from align.verifiers import is_correct

    if answer is None:
        raise ValueError("final_answer_correct needs the reference answers: an 'answer' column")
    out = []
    for c, a in zip(completions, answer):
        text = _text(c)
        finals = list(_FINAL.finditer(text))
        out.append(float(bool(finals) and is_correct(text[finals[-1].end():], a)))
    return out


def tool_format(prompts, completions, **_) -> list[float]:
    """0.5 for at least one tool call that got an observation, 0.5 more for reaching a final answer."""
    out = []
    for c in completions:
        text = _text(c)
        out.append(0.5 * _has_tool_round(text) +
                   0.5 * bool(_FINAL.search(text)))
    return out


def make_react_rollout(tools: ToolRegistry, max_steps: int = 4, tokens_per_step: int = 96,
                       preamble: str | None = None):
    """A TRL rollout function running the ReAct loop with ``tools`` (see the module docstring)."""

    def rollout(prompts: Sequence[list[dict]], trainer) -> dict[str, list]:
        tok = trainer.processing_class
        model = trainer.accelerator.unwrap_model(trainer.model)
        args = trainer.args
        return run_episodes(model, tok, prompts, tools, max_steps=max_steps, tokens_per_step=tokens_per_step,
                            max_completion_length=args.max_completion_length, temperature=args.temperature,
                            top_p=args.top_p, preamble=preamble)

    return rollout


def _run(step_events):
    """Drive a ``react_step`` generator to its end (the rollout keeps no events); its StepResult."""
    while True:
        try:
            next(step_events)
        except StopIteration as done:
            return done.value


@torch.no_grad()
def run_episodes(model, tok, prompts: Sequence[list[dict]], tools: ToolRegistry, *, max_steps: int,
                 tokens_per_step: int, max_completion_length: int, temperature: float = 1.0, top_p: float = 1.0,
                 preamble: str | None = None) -> dict[str, list]:
    """Run one ReAct episode per prompt with ``tools``, all prompts batched step by step.

    Each step samples up to ``tokens_per_step`` tokens per active episode (``align.logprobs.sample``:
    untruncated top-k, left-padded batch, log-probs from the sampling logits at ``temperature``),
    stopping at ``Observation:`` or EOS; ``agents.agent.react_step`` reads the step and runs the
    tool, exactly as ``ReActAgent`` does, and the observation's tokens are appended. An episode
    ends at a final answer, EOS, text without a tool call, ``max_steps`` or
    ``max_completion_length`` tokens.

    Returns TRL's rollout dict of per-prompt lists: ``prompt_ids``, ``completion_ids`` (model and
    observation tokens), ``logprobs`` (log pi(y_t) in nats for the model's tokens, 0.0 for the
    observation's) and ``env_mask`` (1 for the model's tokens, 0 for the observation's), each
    completion list at most ``max_completion_length`` long."""
    from align.logprobs import sample

    system = react_system_prompt(tools, preamble)
    pad = tok.pad_token_id
    episodes = []
    for p in prompts:
        msgs = [{"role": "system", "content": system}] + [m for m in p if m.get("role") != "system"]
        # "Thought:" is written for the model, as the agent does, which keeps small models in the format
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) + "Thought:"
        episodes.append({"prompt_ids": tok(text, add_special_tokens=False)["input_ids"], "completion_ids": [],
                         "logprobs": [], "env_mask": [], "done": False})
    was_training = model.training
    model.eval()
    try:
        for step in range(1, max_steps + 1):
            active = [e for e in episodes if not e["done"]]
            room = max_completion_length - max((len(e["completion_ids"]) for e in active), default=0)
            if not active or room <= 0:
                break
            rows = [e["prompt_ids"] + e["completion_ids"] for e in active]
            width = max(map(len, rows))
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            attention = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                input_ids[i, width - len(r):] = torch.tensor(r)
                attention[i, width - len(r):] = 1
            enc = {"input_ids": input_ids.to(model.device), "attention_mask": attention.to(model.device)}
            s = sample(model, tok, enc, min(tokens_per_step, room), temperature, top_p, stop=STOP_SEQUENCES)
            for i, e in enumerate(active):
                n = int(s.mask[i].sum())
                toks = s.responses[i, :n].tolist()
                e["completion_ids"] += toks
                e["logprobs"] += s.logprobs[i, :n].tolist()
                e["env_mask"] += [1] * n
                step_text = tok.decode(toks, skip_special_tokens=True)
                if (toks and toks[-1] == tok.eos_token_id) or "Observation:" not in step_text:
                    e["done"] = True
                    continue
                result = _run(react_step(step_text.split("Observation:")[0], tools, step))
                if result.final_answer is not None:
                    e["done"] = True
                    continue
                env = tok(f" {result.observation}\nThought:", add_special_tokens=False)["input_ids"]
                e["completion_ids"] += env
                e["logprobs"] += [0.0] * len(env)
                e["env_mask"] += [0] * len(env)
    finally:
        model.train(was_training)
    for e in episodes:
        for key in ("completion_ids", "logprobs", "env_mask"):
            e[key] = e[key][:max_completion_length]
    return {key: [e[key] for e in episodes] for key in ("prompt_ids", "completion_ids", "logprobs", "env_mask")}
