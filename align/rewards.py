"""One reward interface for every stage that needs a score: PPO, GRPO, evaluation, the monitor.

A reward function takes a batch of prompts (chat message lists) and responses (assistant text
or message lists) and returns one float per pair. Implementations:

- ``RewardModelScorer``: a trained Bradley-Terry RM, batched, no gradients, CPU or GPU; its
  inputs are built by ``rm_input_ids``, the same function that tokenises the RM's training data.
- ``EnsembleScorer``: several RMs combined by mean, min or mean - k*std (an uncertainty penalty
  that keeps a policy away from where the members disagree; Coste et al. 2023).
- ``CallableReward``: any Python function ``f(prompts, responses) -> list[float]`` named as
  ``module:function``, e.g. the verifiable GSM8K checker.

``load_reward(spec)`` builds any of them from a string or a config mapping.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence

import torch

from align.errors import ConfigError

Messages = list[dict[str, str]]
ENSEMBLE_FILE = "keel-ensemble.json"


class RewardFunction(Protocol):
    """The one reward interface: ``f(prompts, responses, **columns) -> list[float]``, one score per
    (prompt, response); extra dataset columns (e.g. ``answer``) arrive as keyword lists.
    """

    name: str

    def __call__(self, prompts: Sequence[Messages], responses: Sequence[str | Messages], **columns) -> list[float]: ...


def as_messages(response: str | Messages) -> Messages:
    """A response as chat messages: a string becomes one assistant message; messages are copied."""
    if isinstance(response, str):
        return [{"role": "assistant", "content": response}]
    return list(response)


def rm_input_ids(tokenizer, prompt: Messages, response: str | Messages, max_length: int | None = None,
                 *, strict: bool = False) -> list[int] | None:
    """Token ids an RM reads for (prompt, response): the chat template over the whole conversation,
    exactly as TRL's RewardTrainer tokenises conversational pairs.

    Too long for ``max_length``: the oldest turns of the prompt go first (the last user turn and
    any system prompt stay). Still too long: with ``strict`` (training) None, so the pair is
    dropped and counted; otherwise (scoring) the leading tokens are cut, keeping the response.
    """
    response = as_messages(response)
    prompt = list(prompt)
    while True:
        ids = tokenizer.apply_chat_template(prompt + response, tokenize=True, return_dict=True)["input_ids"]
        if max_length is None or len(ids) <= max_length:
            return list(ids)
        turns = [i for i, m in enumerate(prompt) if m.get("role") != "system"]
        if len(turns) > 1:
            # drop the oldest turn (and its reply, so roles keep alternating)
            drop = turns[:2] if len(turns) > 2 else turns[:1]
            prompt = [m for i, m in enumerate(prompt) if i not in drop]
            continue
        return None if strict else list(ids[-max_length:])


class RewardModelScorer:
    """A Bradley-Terry reward model behind the reward interface."""

    def __init__(self, ref: str, batch_size: int = 8, device: str | None = None, max_length: int | None = None,
                 dtype: str = "auto"):
        from align.models import load_reward_model

        self.model, self.tokenizer, self.source = load_reward_model(ref, device=device, dtype=dtype)
        self.name = f"rm:{Path(self.source.path).name if self.source.path else ref}"
        self.batch_size = batch_size
        self.progress = False  # a tqdm bar over batches (``align rm-eval`` turns it on)
        trained = (self.source.manifest.config.get("training", {}) if self.source.manifest else {})
        self.max_length = max_length or trained.get("max_length") or 1024

    @torch.inference_mode()
    def score_ids(self, batch_ids: Sequence[list[int]]) -> list[float]:
        """Scores in input order. Sequences are batched longest first, so that each batch pads to
        similar lengths (unsorted, one long row made a whole batch of 8 pay for its length)."""
        pad = self.tokenizer.pad_token_id
        order = sorted(range(len(batch_ids)), key=lambda i: -len(batch_ids[i]))
        scores = [0.0] * len(batch_ids)
        starts = range(0, len(order), self.batch_size)
        if self.progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"scoring with {self.name}", unit="batch")
        for start in starts:
            rows = order[start:start + self.batch_size]
            chunk = [batch_ids[i] for i in rows]
            width = max(len(ids) for ids in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, ids in enumerate(chunk):
                input_ids[i, :len(ids)] = torch.tensor(ids)
                attention[i, :len(ids)] = 1
            logits = self.model(input_ids=input_ids.to(self.model.device),
                                attention_mask=attention.to(self.model.device)).logits
            for i, score in zip(rows, logits[:, 0].float().cpu().tolist()):
                scores[i] = score
        return scores

    def __call__(self, prompts, responses, **columns) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        ids = [rm_input_ids(self.tokenizer, p, r, self.max_length) for p, r in zip(prompts, responses)]
        return self.score_ids(ids)


Combine = Literal["mean", "min", "mean_minus_std"]


class EnsembleScorer:
    """Several reward functions combined per sample: ``mean``, ``min`` or ``mean_minus_std``
    (mean - k * std across members, a pessimistic score against reward hacking). Raises
    ConfigError for no members or an unknown ``combine``.
    """

    def __init__(self, members: Sequence[RewardFunction], combine: Combine = "mean", k: float = 1.0):
        if not members:
            raise ConfigError("an ensemble needs at least one member")
        if combine not in ("mean", "min", "mean_minus_std"):
            raise ConfigError(f"ensemble combine must be mean, min or mean_minus_std, not {combine!r}")
        self.members, self.combine, self.k = list(members), combine, k
        self.name = f"ensemble-{combine}({', '.join(m.name for m in self.members)})"

    def member_scores(self, prompts, responses, **columns) -> torch.Tensor:
        """(members, batch) tensor of every member's scores."""
        return torch.tensor([m(prompts, responses, **columns) for m in self.members], dtype=torch.float64)

    def __call__(self, prompts, responses, **columns) -> list[float]:
        return combine_scores(self.member_scores(prompts, responses, **columns), self.combine, self.k).tolist()


def combine_scores(scores: torch.Tensor, combine: Combine, k: float = 1.0) -> torch.Tensor:
    """Combine a (members, batch) score tensor over members."""
    if combine == "mean":
        return scores.mean(0)
    if combine == "min":
        return scores.min(0).values
    std = scores.std(0, unbiased=True) if scores.shape[0] > 1 else torch.zeros_like(scores[0])
    return scores.mean(0) - k * std


class CallableReward:
    """A Python function ``f(prompts, responses, **columns) -> list[float]`` (a verifier, a heuristic).
    Extra dataset columns (say ``answer``) reach the function when it accepts them."""

    def __init__(self, fn: Callable, name: str | None = None):
        import inspect

        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callable")
        params = inspect.signature(fn).parameters.values()
        self._takes = (None if any(p.kind is p.VAR_KEYWORD for p in params)
                       else {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)})

    def __call__(self, prompts, responses, **columns) -> list[float]:
        if self._takes is not None:
            columns = {k: v for k, v in columns.items() if k in self._takes}
        scores = self.fn(list(prompts), list(responses), **columns)
        if len(scores) != len(responses):
            raise ValueError(f"reward {self.name} returned {len(scores)} scores for {len(responses)} responses")
        return [float(s) for s in scores]


def import_callable(path: str) -> Callable:
    """``package.module:function`` -> the function, with an error that names what is missing."""
    if ":" not in path:
        raise ConfigError(f"reward {path!r}: name a Python callable as module:function")
    module_name, attr = path.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"reward {path!r}: cannot import {module_name} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"reward {path!r}: {module_name} has no callable {attr!r}")
    return fn


def load_reward(spec: str | dict[str, Any], batch_size: int = 8, device: str | None = None) -> RewardFunction:
    """Build a reward function from a spec.

    - ``"module:function"``: a Python callable;
    - a path or model reference: a reward checkpoint, or a folder with ``keel-ensemble.json``;
    - ``{"ensemble": [ref, ...], "combine": "mean"|"min"|"mean_minus_std", "k": 1.0}``.
    """
    if isinstance(spec, dict):
        if "ensemble" not in spec:
            raise ConfigError(f"reward spec {spec}: a mapping needs an 'ensemble' list")
        members = [load_reward(m, batch_size, device) for m in spec["ensemble"]]
        return EnsembleScorer(members, spec.get("combine", "mean"), float(spec.get("k", 1.0)))
    if ":" in spec and not Path(spec).exists():
        return CallableReward(import_callable(spec), name=spec)
    ensemble_file = Path(spec) / ENSEMBLE_FILE
    if ensemble_file.is_file():
        from align.checkpoint import read_json_file

        info = read_json_file(ensemble_file, ConfigError)
        members = [str(Path(spec) / m) for m in info["members"]]
        return load_reward({"ensemble": members, "combine": info.get("combine", "mean"), "k": info.get("k", 1.0)},
                           batch_size, device)
    return RewardModelScorer(spec, batch_size=batch_size, device=device)
