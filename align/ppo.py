"""PPO-RLHF (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022), written out in one file.

TRL removed its PPOTrainer in 2026, so Keel keeps its own, on ``accelerate``: the same code runs
on one CPU and under ``accelerate launch`` on many GPUs. It is written by hand, not wrapped,
because no maintained library ships it any more; like CleanRL's ``ppo.py`` it reads top to
bottom: ``PPOTrainer.train`` is the loop, ``rollout`` steps 1-3, ``optimise`` step 4. Four roles:

    pi_theta   the policy being trained (optionally LoRA)
    pi_ref     the frozen reference: a copy of the initial policy, or, with LoRA, the same
               weights with the adapters switched off (no second copy in memory)
    r_phi      the reward: a Keel RM, an ensemble or a Python function (``align.rewards``)
    V_psi      the value model: a scalar head on the policy's own backbone (``value_model:
               shared``, one forward pass gives logits and values) or a separate backbone

For each batch of B prompts x (T: the longest response in the batch, in tokens):

1. Rollout. y ~ pi_theta(.|x) at the rollout temperature, untruncated (top_k=0), stopping at
   EOS; the sampling logits give log pi_theta_old(y_t) for free (no second forward pass).
   Sampling and log-probs are ``align.logprobs``, shared with the monitor and evaluation.
   ``rollout.engine`` (``align.rollout``) picks what samples: transformers' ``generate`` on the
   policy, or a colocated vLLM engine that receives the policy's weights after each update;
   vLLM's log-probs are not used, log pi_theta_old(y_t) is recomputed in the pass of step 3.
2. Evaluation. log pi_ref(y_t) from the reference; the score s = r_phi(x, y); the per-token KL
   estimate kl_t (nats per token), k1 = log pi_theta_old(y_t) - log pi_ref(y_t) or k3 (Schulman,
   "Approximating KL divergence"; ``kl.estimator``); the shaped reward
        r_t = -beta * kl_t  +  [t = T_y] * s              (InstructGPT)
   with an optional penalty when y has no EOS, and optional whitening/clipping of s.
3. Advantages, once per rollout. V_old,t from V_psi; GAE (Schulman et al. 2016):
        delta_t = r_t + gamma * V_old,t+1 - V_old,t,   A_t = sum_l (gamma*lambda)^l delta_{t+l},
        returns R_t = A_t + V_old,t;  A whitened over the batch.
   With one minibatch per rollout and no accumulation, the first update's forward pass runs at
   the rollout's parameters on the rollout's rows, so V_old is taken from it ("fused first pass",
   ``PPOTrainer.old_values``) instead of from a separate value pass.
4. Update. For ``ppo_epochs`` passes over shuffled minibatches, with the PPO ratio
        ratio_t = pi_theta(y_t) / pi_theta_old(y_t)
        L_clip  = -mean(min(ratio_t A_t, clip(ratio_t, 1-eps, 1+eps) A_t))
        L_V     = 0.5 * mean(max((V - R)^2, (clip(V, V_old - eps_v, V_old + eps_v) - R)^2))
        L       = L_clip + vf_coef * L_V - ent_coef * H
   with gradient accumulation, gradient clipping, and an early stop when approx-KL, the k3
   estimate of KL(pi_theta_old || pi_theta), mean((ratio - 1) - log ratio), exceeds
   ``target_approx_kl``.
5. KL control. Fixed beta, or the adaptive controller of Ziegler et al.:
        e = clip(KL / KL_target - 1, -0.2, 0.2),   beta <- beta * (1 + e * n / horizon)
   where KL is the batch's mean sequence KL (nats) and n the number of samples in the batch;
   ``horizon`` is in samples.

Logits are only computed at response positions (``logits_to_keep``); nothing computed for the
same tokens is computed twice; every step logs score, KL, beta, returns, entropy, clip fraction,
value loss, approx-KL, response length and tokens/s to metrics.jsonl; checkpoints are periodic
and ``--resume`` continues from the last one.

Config: the PPO maths under ``ppo:``, the optimiser, logging and saving under ``training:`` with
the names every other stage uses (``--training.learning_rate``); the old places of those keys
(``ppo.learning_rate``, top-level ``save_steps`` ...) are a ConfigError naming the new key.
"""
from __future__ import annotations

import json
import math
import pickle
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
from pydantic import Field, field_validator, model_validator

from align.config import DataConfig, LoraSettings, ReportTo, StageConfig, Strict
from align.data import load_data
from align.errors import CheckpointError, ConfigError, KeelError
from align.logprobs import (entropy_from_logits, kl_estimate, position_ids, response_forward, response_logits,
                            response_logprobs, response_mask, token_logprobs)
from align.monitor import MonitorSettings, OverOptimisationMonitor
from align.rollout import RolloutEngineName, VLLMRolloutSettings, check_engine_available
from align.training import METRICS_FILE, append_metrics, prepare_run_dir

__all__ = ["PPOStageConfig", "PPOTrainer", "Rollout", "run_ppo", "gae", "shaped_rewards", "policy_loss",
           "value_loss", "masked_mean", "masked_whiten", "AdaptiveKLController", "FixedKLController",
           # re-exported from align.logprobs, where they live
           "position_ids", "token_logprobs", "entropy_from_logits", "kl_estimate", "response_mask"]


# ---------------------------------------------------------------------------------------- config
class PPOSettings(Strict):
    """The PPO algorithm's own hyper-parameters (``ppo:``)."""

    batch_size: int = Field(8, ge=1, description="prompts per rollout (per process)")
    mini_batch_size: int = Field(8, ge=1, description="samples per optimiser step (before accumulation)")
    ppo_epochs: int = Field(1, ge=1, description="passes over each rollout batch")
    clip_epsilon: float = Field(0.2, gt=0, description="policy ratio clip eps")
    value_clip: float = Field(0.2, gt=0, description="value clip eps_v")
    vf_coef: float = Field(0.1, ge=0)
    ent_coef: float = Field(0.0, ge=0)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    target_approx_kl: float | None = Field(None, gt=0, description="stop this rollout's epochs above this approx-KL")
    whiten_scores: bool = False
    score_clip: float | None = Field(None, gt=0)


class PPOTrainingSettings(Strict):
    """Optimiser, logging and saving (``training:``), named as in every other stage's ``training:``
    (transformers' TrainingArguments); only the ones PPO uses, so that none is silently ignored."""

    learning_rate: float = Field(1e-6, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    gradient_accumulation_steps: int = Field(1, ge=1)
    bf16: bool | None = Field(None, description="bf16 autocast through accelerate's mixed precision (weights stay in "
                                                "`dtype`); None: whatever `accelerate launch` / its config says")
    logging_steps: int = Field(1, ge=1, description="updates between metrics.jsonl records")
    save_steps: int = Field(10, ge=1, description="updates between checkpoints")
    save_total_limit: int | None = Field(2, ge=0, description="checkpoints kept; None or 0: all")
    report_to: ReportTo = Field(default_factory=list, description="experiment trackers through accelerate: trackio, "
                                "wandb, mlflow, tensorboard, none (metrics.jsonl is always written)")


# Keys that moved to ``training:``: old dotted place -> the key under ``training``.
MOVED_TO_TRAINING = {"ppo.learning_rate": "learning_rate", "ppo.max_grad_norm": "max_grad_norm",
                     "ppo.gradient_accumulation_steps": "gradient_accumulation_steps", "bf16": "bf16",
                     "logging_steps": "logging_steps", "save_steps": "save_steps",
                     "save_total_limit": "save_total_limit", "report_to": "report_to"}


class KLSettings(Strict):
    """The KL penalty (``kl:``): beta, the adaptive controller's target (nats per sequence) and
    horizon (samples), and the per-token estimator (k1 or k3, Schulman).
    """

    beta: float = Field(0.05, ge=0, description="initial KL coefficient")
    adaptive: bool = False
    target: float = Field(6.0, gt=0, description="target sequence KL (nats) for the adaptive controller")
    horizon: int = Field(10000, ge=1, description="samples over which the adaptive controller closes the gap")
    estimator: Literal["k1", "k3"] = Field("k1", description="per-token KL estimator (Schulman): k1 or k3")


class RolloutSettings(Strict):
    """Sampling for the rollout (``rollout:``): tokens per response, temperature, top-p, prompt
    length kept (tokens, the end of the prompt), and the penalty for a response without EOS.
    """

    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(1.0, gt=0, le=1, description="below 1 the samples no longer come from the pi whose "
                                                      "log-probs PPO and the KL estimate use")
    max_prompt_length: int = Field(256, ge=8)
    missing_eos_penalty: float | None = Field(None, ge=0)
    engine: RolloutEngineName = Field("auto", description="what samples the rollouts: transformers' generate, "
                                      "a colocated vLLM engine, or auto (vLLM on a CUDA GPU when installed)")
    vllm: VLLMRolloutSettings = Field(default_factory=VLLMRolloutSettings)

    @field_validator("engine")
    @classmethod
    def _vllm_installed(cls, engine: str) -> str:
        check_engine_available(engine)
        return engine


class PPOStageConfig(StageConfig):
    """``python -m align ppo``'s config: ``ppo:`` (the algorithm), ``training:`` (optimiser, logging,
    saving, as every stage), ``kl:``, ``rollout:``, ``lora:``, an optional ``monitor:``.

    The old places of the ``training:`` keys (``MOVED_TO_TRAINING``: ``ppo.learning_rate``,
    top-level ``save_steps`` ...) are rejected with a ConfigError naming the new key.
    """

    stage: Literal["ppo"] = "ppo"
    output_dir: str = "runs/ppo"
    data: DataConfig
    reward: str | dict[str, Any] = Field(description="RM checkpoint, ensemble folder/mapping, or module:function")
    value_model: str = Field("shared", description="'shared' (a head on the policy backbone) or a model reference")
    updates: int = Field(20, ge=1, description="rollout + optimisation rounds")
    ppo: PPOSettings = Field(default_factory=PPOSettings)
    training: PPOTrainingSettings = Field(default_factory=PPOTrainingSettings)
    kl: KLSettings = Field(default_factory=KLSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    sample_every: int = Field(5, ge=1, description="log example responses every N updates")
    monitor: MonitorSettings | None = None
    moved_keys: ClassVar[dict[str, str]] = {old: f"training.{new}" for old, new in MOVED_TO_TRAINING.items()}

    @model_validator(mode="before")
    @classmethod
    def _reject_moved_keys(cls, data: Any) -> Any:
        """Raise ConfigError for a key in its old place (``ppo.learning_rate``, top-level
        ``save_steps`` ...), naming its new one under ``training:``. ``load_config`` names the file
        or command-line flag first; this catches configs built without it (``model_validate``)."""
        if not isinstance(data, dict):
            return data
        for old, new in MOVED_TO_TRAINING.items():
            section, _, key = old.rpartition(".")
            holder = data.get(section) if section else data
            if isinstance(holder, dict) and key in holder:
                raise ConfigError(f"PPO config: {old} moved to training.{new}")
        return data


# ------------------------------------------------------------------------------------- the models
class ValueHead(nn.Module):
    """V_psi on the policy's own last hidden state: (B, T, hidden) -> (B, T) values."""

    def __init__(self, hidden: int):
        super().__init__()
        self.v = nn.Linear(hidden, 1)
        nn.init.normal_(self.v.weight, std=1 / math.sqrt(hidden + 1))
        nn.init.zeros_(self.v.bias)

    def forward(self, h):
        """h: (B, T, hidden) float -> values (B, T)."""
        return self.v(h).squeeze(-1)


class ActorCritic(nn.Module):
    """pi_theta and V_psi: one module so that accelerate/DeepSpeed wrap and optimise them together."""

    def __init__(self, policy, value_head: ValueHead | None, value_model=None):
        super().__init__()
        self.policy, self.value_head, self.value_model = policy, value_head, value_model

    def forward(self, input_ids, attention_mask, n_response: int, temperature: float):
        """input_ids, attention_mask: (B, L); the last ``n_response`` = T tokens are the response.
        Returns (logits / temperature (B, T, V) that predict them, values (B, T) at the same
        positions). Logits are never built for prompt positions."""
        out = response_forward(self.policy, input_ids, attention_mask, n_response,
                               output_hidden_states=self.value_head is not None)
        logits = response_logits(out, temperature)
        if self.value_head is not None:
            values = self.value_head(out.hidden_states[-1][:, -(n_response + 1):-1].float())
        else:
            backbone = getattr(self.value_model, self.value_model.base_model_prefix)
            h = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                         use_cache=False).last_hidden_state
            values = self.value_model.score(h[:, -(n_response + 1):-1]).squeeze(-1).float()
        return logits, values


# ------------------------------------------------------------------------------------ the maths
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of ``x`` where ``mask`` is 1 (same shape); over all of it, or along ``dim``."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std over the positions where ``mask`` is 1 (same shape as ``x``)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8)


def shaped_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """r_t = -beta * kl_t on every response token, plus the score on the last one.

    scores (B,), kl and mask (B, T) -> (B, T)."""
    rewards = -beta * kl * mask
    last = mask.sum(1).long().clamp(min=1) - 1
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens; V after the
    last token is 0. rewards, values, mask: (B, T) -> (advantages, returns), each (B, T)."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    T = rewards.shape[1]
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    returns = advantages + values
    return advantages, returns


def policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate (Schulman et al. 2017) on (B, T) tensors; returns scalars (loss, clip
    fraction, approx-KL): the k3 estimate of KL(pi_old || pi) in nats per token."""
    log_ratio = logp - logp_old
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - eps, 1 + eps)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    clip_frac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
    return loss, clip_frac, approx_kl


def value_loss(values: torch.Tensor, values_old: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss on (B, T) tensors; returns scalars (loss, clip fraction)."""
    clipped = values_old + torch.clamp(values - values_old, -eps, eps)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(loss_unclipped, loss_clipped), mask)
    return loss, masked_mean((loss_clipped > loss_unclipped).float(), mask)


@dataclass
class AdaptiveKLController:
    """Ziegler et al. 2019: proportional control of beta toward a target KL (nats per sequence);
    ``horizon`` in samples."""

    beta: float
    target: float
    horizon: int

    def update(self, kl: float, n_samples: int) -> float:
        """Move beta after a batch of ``n_samples`` whose mean sequence KL was ``kl``; returns it."""
        error = max(-0.2, min(0.2, kl / self.target - 1))
        self.beta *= 1 + error * n_samples / self.horizon
        return self.beta


@dataclass
class FixedKLController:
    """A constant beta."""

    beta: float

    def update(self, kl: float, n_samples: int) -> float:
        """Returns beta unchanged."""
        return self.beta


# --------------------------------------------------------------------------------- the rollout
@dataclass(frozen=True)
class Rollout:
    """Everything one update needs about one batch of B prompts, built once by
    ``PPOTrainer.rollout`` and only read afterwards. P: prompt width (left-padded), T: the
    longest response in the batch."""

    input_ids: torch.Tensor       # (B, P+T) long: prompt, then response (pad after its end)
    attention_mask: torch.Tensor  # (B, P+T) long: 0 on left pads and after each response's end
    responses: torch.Tensor       # (B, T) long
    mask: torch.Tensor            # (B, T) float: 1 on response tokens, EOS included
    logp_old: torch.Tensor        # (B, T) log pi_theta_old(y_t) at the rollout temperature, nats
    kl: torch.Tensor              # (B, T) per-token KL estimate to pi_ref, nats (0 off the mask)
    rewards: torch.Tensor         # (B, T) shaped rewards r_t
    values_old: torch.Tensor      # (B, T) V_psi at the rollout's parameters
    advantages: torch.Tensor      # (B, T) GAE, whitened over the batch, 0 off the mask
    returns: torch.Tensor         # (B, T) A_t + V_old,t (not whitened)
    scores: torch.Tensor          # (B,) the reward's scores, before penalty, whitening or clipping
    has_eos: torch.Tensor         # (B,) float: 1 where the response ended with EOS
    beta: float                   # the KL coefficient the rewards were shaped with
    prompts: list                 # B chat prompts (lists of messages)
    texts: list                   # B decoded responses

    @property
    def T(self) -> int:
        """The response width: the longest response in the batch, in tokens."""
        return self.responses.shape[1]

    @property
    def kl_seq(self) -> torch.Tensor:
        """(B,) sequence KL estimate, nats per sequence."""
        return self.kl.sum(1)


# ----------------------------------------------------------------------------------- the trainer
class PPOTrainer:
    """The PPO loop of the module docstring, for one process of an ``accelerate`` run.

    Raises ConfigError when the tokenizer pads with EOS (response ends could not be found) and
    KeelError when the data has fewer prompts than ``ppo.batch_size``."""

    def __init__(self, cfg: PPOStageConfig, accelerator=None):
        from accelerate import Accelerator

        from align.models import load_policy, load_value_model
        from align.rewards import load_reward

        from align.training import check_adapter_start, trackers

        self.cfg = cfg
        t = cfg.training
        self.trackers = trackers(t.report_to, field="training.report_to")
        self.acc = accelerator or Accelerator(gradient_accumulation_steps=t.gradient_accumulation_steps,
                                              cpu=not torch.cuda.is_available(),
                                              mixed_precision={True: "bf16", False: "no", None: None}[t.bf16],
                                              log_with=self.trackers or None, project_dir=cfg.output_dir)
        dtype = "float32" if cfg.dtype == "auto" else cfg.dtype
        policy, self.tokenizer, self.source = load_policy(cfg.model, device="cpu", dtype=dtype)
        check_adapter_start(cfg, self.source, policy)
        if self.tokenizer.pad_token_id == self.tokenizer.eos_token_id:
            raise ConfigError(f"{cfg.model}: pad token equals EOS; PPO needs a distinct pad token to find response ends")
        self.eos_id = self.tokenizer.eos_token_id
        if cfg.lora.enabled:
            from peft import get_peft_model

            policy = get_peft_model(policy, cfg.lora.to_peft())
            self.reference = None  # adapters off = pi_ref
        else:
            self.reference, _, _ = load_policy(cfg.model, device=str(self.acc.device), dtype=dtype)
            self.reference.requires_grad_(False)
        _disable_dropout(policy)
        if cfg.value_model == "shared":
            hidden = policy.config.get_text_config().hidden_size
            self.model = ActorCritic(policy, ValueHead(hidden))
        else:
            value_model, _, _ = load_value_model(cfg.value_model, device="cpu", dtype=dtype)
            _disable_dropout(value_model)
            self.model = ActorCritic(policy, None, value_model)
        self.reward = load_reward(cfg.reward, batch_size=cfg.ppo.mini_batch_size, device=str(self.acc.device))
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=t.learning_rate, eps=1e-5)
        self.model, self.optimizer = self.acc.prepare(self.model, self.optimizer)
        from align.rollout import build_engine

        self.engine = build_engine(cfg.rollout.engine, cfg.rollout, self.tokenizer, self.source, self.acc, cfg.seed)
        if self.acc.is_main_process:
            print(f"[keel] rollout engine: {self.engine.name} (rollout.engine: {cfg.rollout.engine})", flush=True)
        k = cfg.kl
        self.kl_ctl = AdaptiveKLController(k.beta, k.target, k.horizon) if k.adaptive else FixedKLController(k.beta)
        self.prompts = self._load_prompts()
        self.update_step = 0
        self.monitor = None
        self.gold = None
        if cfg.monitor is not None:
            self.monitor = OverOptimisationMonitor(cfg.monitor.window, cfg.monitor.min_drop)
            self.gold = load_reward(cfg.monitor.gold, device=str(self.acc.device))
        self.metrics_path = Path(cfg.output_dir) / METRICS_FILE

    # -- data --------------------------------------------------------------------------------
    def _load_prompts(self) -> list[list[dict]]:
        data = load_data(self.cfg.data, accept=("prompt_only",),
                         reshape_map={k: "prompt_only" for k in ("preference", "prompt_completion",
                                                                 "unpaired_preference")})
        self.data_fingerprint = data.fingerprint
        prompts = [r["prompt"] if isinstance(r["prompt"], list) else [{"role": "user", "content": r["prompt"]}]
                   for r in data.train]
        if len(prompts) < self.cfg.ppo.batch_size:
            raise KeelError(f"{self.cfg.data.path}: {len(prompts)} prompts, fewer than ppo.batch_size "
                            f"({self.cfg.ppo.batch_size})")
        return prompts

    def _batches(self):
        """Endless shuffled batches of prompts, deterministic given the seed and the update number."""
        n, b = len(self.prompts), self.cfg.ppo.batch_size
        per_epoch = n // b
        while True:
            epoch, i = divmod(self.update_step, per_epoch)
            order = list(range(n))
            random.Random(self.cfg.seed + epoch + 1000 * self.acc.process_index).shuffle(order)
            yield [self.prompts[j] for j in order[i * b:(i + 1) * b]]

    def _encode(self, prompts):
        from align.generate import encode_chats

        return encode_chats(self.tokenizer, prompts, self.acc.device, self.cfg.rollout.max_prompt_length)

    # -- 1-3: rollout, evaluation, advantages ----------------------------------------------------
    def rollout(self, prompts: list[list[dict]]) -> tuple[Rollout, tuple[torch.Tensor, torch.Tensor] | None]:
        """Steps 1-3 for B chat prompts: sample, score, shape the rewards, compute the advantages.

        Returns the ``Rollout`` and, with a fused first pass, the first minibatch's forward output
        (logits (B, T, V), values (B, T), with gradients) for ``optimise``; else None."""
        r, p = self.cfg.rollout, self.cfg.ppo
        model = self.acc.unwrap_model(self.model)
        model.eval()
        with torch.no_grad():
            # 1. rollout: y ~ pi_theta_old, and log pi_theta_old(y_t) from the sampling logits (the
            # transformers engine); an engine with weights of its own gets the current ones first
            self.engine.sync(self.acc, self.model, self.update_step)
            s = self.engine.sample(model.policy, self._encode(prompts), r.max_new_tokens, r.temperature, r.top_p)
            self.engine.release()
            input_ids, attention, responses, T = s.input_ids, s.attention_mask, s.responses, s.responses.shape[1]
            mask = s.mask.float()
        logp_old = s.logprobs
        if logp_old is None:
            # vLLM's log-probs are not the policy's (other kernels, bf16): recompute them in the pass
            # that gives V_old, so that the first update's ratio is exactly 1 (one pass, no extra one)
            model.train()
            values_old, first_pass, logp_old = self.old_values(input_ids, attention, T, responses)
            logp_old = logp_old * mask
            model.eval()
        with torch.no_grad():
            # 2. evaluation: reference log-probs, scores, per-token KL, shaped rewards
            logp_ref = self._reference_logprobs(model, input_ids, attention, responses)
            texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
            raw_scores = torch.tensor(self.reward(prompts, [t.strip() for t in texts]), dtype=torch.float32,
                                      device=self.acc.device)
            has_eos = (responses == self.eos_id).any(1)
            scores = raw_scores
            if r.missing_eos_penalty is not None:
                scores = scores - r.missing_eos_penalty * (~has_eos).float()
            if p.whiten_scores and len(scores) > 1:
                scores = (scores - scores.mean()) / (scores.std() + 1e-8)
            if p.score_clip is not None:
                scores = scores.clamp(-p.score_clip, p.score_clip)
            kl = kl_estimate(logp_old, logp_ref, self.cfg.kl.estimator) * mask
            beta = self.kl_ctl.beta
            rewards = shaped_rewards(scores, kl, mask, beta)
        # 3. values and advantages, once for all epochs
        model.train()
        if s.logprobs is not None:
            values_old, first_pass, _ = self.old_values(input_ids, attention, T)
        with torch.no_grad():
            advantages, returns = gae(rewards, values_old, mask, p.gamma, p.lam)
            advantages = masked_whiten(advantages, mask) * mask
        rollout = Rollout(input_ids=input_ids, attention_mask=attention, responses=responses, mask=mask,
                          logp_old=logp_old, kl=kl, rewards=rewards, values_old=values_old, advantages=advantages,
                          returns=returns, scores=raw_scores, has_eos=has_eos.float(), beta=beta,
                          prompts=list(prompts), texts=texts)
        return rollout, first_pass

    def fused_first_pass(self) -> bool:
        """Whether one minibatch covers the rollout and nothing is accumulated: then the first
        update's forward pass is at the rollout's parameters on the rollout's rows."""
        return self.cfg.ppo.mini_batch_size >= self.cfg.ppo.batch_size and \
            self.cfg.training.gradient_accumulation_steps == 1

    def old_values(self, input_ids, attention, T: int, responses: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None]:
        """V_old (B, T), the fused first pass or None, and, given ``responses`` (B, T), log
        pi_theta_old(y_t) (B, T) from the same pass (else None). Fused first pass: run the first
        update's forward pass now, with gradients, read V_old (and the log-probs) from it and
        return its output for ``optimise`` to use as is (no separate value pass). Without
        accumulation ``accumulate`` never enters ``no_sync``, so running this forward pass before
        it is the same under DDP. Else a no-grad pass."""
        if self.fused_first_pass():
            logits, values = self.model(input_ids, attention, T, self.cfg.rollout.temperature)
            logp = None if responses is None else token_logprobs(logits.detach(), responses)
            return values.detach(), (logits, values), logp
        with torch.no_grad():
            logits, values = self.model(input_ids, attention, T, self.cfg.rollout.temperature)
            return values, None, None if responses is None else token_logprobs(logits, responses)

    def _reference_logprobs(self, model, input_ids, attention, responses) -> torch.Tensor:
        temperature = self.cfg.rollout.temperature
        if self.reference is not None:
            return response_logprobs(self.reference, input_ids, attention, responses, temperature)
        with model.policy.disable_adapter():
            return response_logprobs(model.policy, input_ids, attention, responses, temperature)

    # -- 4: the update ------------------------------------------------------------------------------
    def optimise(self, rollout: Rollout, first_pass: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> dict[str, float]:
        """Step 4: ``ppo_epochs`` passes of clipped-surrogate updates over shuffled minibatches of
        ``rollout`` (read only). ``first_pass``: the fused first pass's forward output, used as
        the first minibatch's. Returns the mean losses, fractions and grad norm over the steps."""
        p = self.cfg.ppo
        n, T = rollout.input_ids.shape[0], rollout.T
        stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "entropy", "clip_frac",
                                                          "value_clip_frac", "approx_kl", "grad_norm")}
        epochs_run = 0
        for _ in range(p.ppo_epochs):
            order = torch.randperm(n)
            epoch_kl = []
            for start in range(0, n, p.mini_batch_size):
                idx = order[start:start + p.mini_batch_size]
                with self.acc.accumulate(self.model):
                    if first_pass is not None:  # the fused pass: every row, in rollout order (the
                        idx = torch.arange(n)     # minibatch is the whole rollout; its loss is the same)
                        (logits, values), first_pass = first_pass, None
                    else:
                        logits, values = self.model(rollout.input_ids[idx], rollout.attention_mask[idx], T,
                                                    self.cfg.rollout.temperature)
                    mask = rollout.mask[idx]
                    logp = token_logprobs(logits, rollout.responses[idx])
                    pg, clip_frac, approx_kl = policy_loss(logp, rollout.logp_old[idx], rollout.advantages[idx],
                                                           mask, p.clip_epsilon)
                    vf, vf_clip = value_loss(values, rollout.values_old[idx], rollout.returns[idx], mask,
                                             p.value_clip)
                    ent = masked_mean(entropy_from_logits(logits), mask)
                    loss = pg + p.vf_coef * vf - p.ent_coef * ent
                    self.acc.backward(loss)
                    if self.acc.sync_gradients:
                        norm = self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.training.max_grad_norm)
                        stats["grad_norm"].append(float(norm))
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                for k, v in (("policy_loss", pg), ("value_loss", vf), ("entropy", ent), ("clip_frac", clip_frac),
                             ("value_clip_frac", vf_clip), ("approx_kl", approx_kl)):
                    stats[k].append(float(v.detach()))
                epoch_kl.append(float(approx_kl.detach()))
            epochs_run += 1
            if p.target_approx_kl is not None and sum(epoch_kl) / len(epoch_kl) > p.target_approx_kl:
                break  # the policy moved far enough from pi_theta_old for this batch
        out = {k: sum(v) / len(v) for k, v in stats.items() if v}
        out["ppo_epochs_run"] = epochs_run
        return out

    # -- the loop -------------------------------------------------------------------------------------
    def train(self, resume_from: Path | None = None) -> dict[str, Any]:
        """Run ``updates`` rounds of rollout (1-3), update (4) and KL control (5), logging each
        and checkpointing every ``training.save_steps``; ``resume_from``: a checkpoint folder to
        continue from. Returns the last logged record."""
        from tqdm.auto import tqdm

        t = self.cfg.training
        if resume_from is not None:
            self._load_state(resume_from)
        batches = self._batches()
        last: dict[str, Any] = {}
        if self.trackers:
            # TensorBoard writes to output_dir/keel; wandb, mlflow and trackio use "keel" as the project.
            self.acc.init_trackers("keel", config=_flat_config(self.cfg.model_dump(mode="json")))
        bar = tqdm(total=self.cfg.updates, initial=self.update_step, desc="ppo", disable=not self.acc.is_main_process)
        while self.update_step < self.cfg.updates:
            started = time.perf_counter()
            rollout, first_pass = self.rollout(next(batches))
            rollout_s = time.perf_counter() - started
            stats = self.optimise(rollout, first_pass)
            self.update_step += 1
            # 5. KL control
            kl_mean = float(self.acc.gather(rollout.kl_seq).mean())
            n_total = rollout.kl_seq.shape[0] * self.acc.num_processes
            new_beta = self.kl_ctl.update(kl_mean, n_total)
            seconds = time.perf_counter() - started
            tokens = float(self.acc.gather(rollout.mask.sum()).sum())
            rec = {"step": self.update_step, "score": float(self.acc.gather(rollout.scores).mean()),
                   "kl": kl_mean, "beta": rollout.beta, "beta_next": new_beta,
                   "shaped_return": float(self.acc.gather(rollout.rewards.sum(1)).mean()),
                   "response_length": float(self.acc.gather(rollout.mask.sum(1)).mean()),
                   "eos_rate": float(self.acc.gather(rollout.has_eos).mean()),
                   "tokens_per_s": tokens / seconds, "update_s": seconds, "rollout_s": rollout_s, **stats}
            if self.monitor is not None and self.update_step % self.cfg.monitor.every_n_steps == 0:
                gold = self.gold(rollout.prompts, [x.strip() for x in rollout.texts])
                check = self.monitor.record(self.update_step, rec["score"], sum(gold) / len(gold), kl_mean)
                rec.update({k: v for k, v in check.items() if k != "step"})
                if rec["monitor/alert"]:
                    print(f"[keel] WARNING {self.monitor.message()}", flush=True)
                    if self.cfg.monitor.action == "stop":
                        self._log(rec)
                        self.save_state()
                        last = rec
                        break
            if self.update_step % self.cfg.sample_every == 0 or self.update_step == 1:
                rec["samples"] = [{"prompt": p[-1]["content"][:300], "response": x[:300]}
                                  for p, x in zip(rollout.prompts[:2], rollout.texts[:2])]
            if self.update_step % t.logging_steps == 0 or self.update_step == self.cfg.updates:
                self._log(rec)
            if self.update_step % t.save_steps == 0:
                self.save_state()
            bar.update(1)
            bar.set_postfix(score=f"{rec['score']:.3f}", kl=f"{kl_mean:.2f}", beta=f"{rollout.beta:.3f}")
            last = rec
        bar.close()
        if self.trackers:
            self.acc.end_training()
        return last

    def _log(self, rec: dict[str, Any]) -> None:
        if self.acc.is_main_process:
            append_metrics(self.metrics_path, {**rec, "time": round(time.time(), 3)})
        if self.trackers:  # numbers only; the samples and texts stay in metrics.jsonl
            self.acc.log({f"ppo/{k}": float(v) for k, v in rec.items()
                          if k != "step" and isinstance(v, (int, float)) and math.isfinite(float(v))},
                         step=rec["step"])

    # -- checkpoints ----------------------------------------------------------------------------
    def save_state(self) -> Path:
        """``checkpoint-N/``: policy (or adapters), value head/model, optimiser, KL controller, step.

        Every process calls it. The weights go through ``align.training.full_state_dict``, which
        gathers them when ZeRO-3/FSDP shards them; a sharded optimiser's state is one file per
        process (``optimizer-rank{i}.pt``), as each holds only its own partition."""
        from align.training import full_state_dict, weights_are_sharded

        out = Path(self.cfg.output_dir) / f"checkpoint-{self.update_step}"
        tmp = out.with_name(out.name + ".tmp")
        self.acc.wait_for_everyone()
        weights = full_state_dict(self.acc, self.model)
        sharded = weights_are_sharded(self.acc)
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.acc.wait_for_everyone()
        if sharded:
            torch.save(self.optimizer.state_dict(), tmp / f"optimizer-rank{self.acc.process_index}.pt")
            self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            if weights is None:
                weights = self.acc.unwrap_model(self.model).state_dict()
            torch.save(weights, tmp / "actor_critic.pt")
            if not sharded:
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            (tmp / "trainer_state.json").write_text(json.dumps(
                {"update_step": self.update_step, "beta": self.kl_ctl.beta,
                 "monitor": self.monitor.history if self.monitor else None}))
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
            self._prune()
        self.acc.wait_for_everyone()
        return out

    def _prune(self):
        limit = self.cfg.training.save_total_limit
        if not limit:
            return
        ckpts = sorted(Path(self.cfg.output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        for old in ckpts[:-limit]:
            shutil.rmtree(old, ignore_errors=True)

    def _load_state(self, path: Path) -> None:
        from align.training import weights_are_sharded

        if weights_are_sharded(self.acc):
            raise CheckpointError(f"{path}: resuming PPO with sharded weights (ZeRO-3/FSDP) is not supported yet; "
                                  "its actor_critic.pt holds the full weights, so a ZeRO-2 or DDP run can resume it")
        model = self.acc.unwrap_model(self.model)
        # weights_only=True on every torch the project allows (>=2.4, where the default was still
        # False): tensors and plain containers only, never arbitrary pickled objects.
        try:
            weights = torch.load(path / "actor_critic.pt", map_location="cpu", weights_only=True)
            optimizer = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as e:
            raise CheckpointError(f"{path}: cannot load the PPO state safely ({str(e).splitlines()[0]}); "
                                  "only tensors and plain containers are read") from None
        model.load_state_dict(weights)
        self.optimizer.load_state_dict(optimizer)
        state = json.loads((path / "trainer_state.json").read_text())
        self.update_step, self.kl_ctl.beta = state["update_step"], state["beta"]
        if self.monitor is not None and state.get("monitor"):
            self.monitor.history = state["monitor"]

    def policy_for_saving(self):
        """The trained policy (with its LoRA adapters, if any), unwrapped from accelerate."""
        return self.acc.unwrap_model(self.model).policy


def _flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"ppo": {"batch_size": 8}}`` -> ``{"ppo.batch_size": 8}``, values as numbers, booleans or
    strings: what every tracker's hyper-parameter table accepts (TensorBoard's hparams refuses
    lists, mappings and None)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat_config(value, name + "."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return out


def _disable_dropout(model) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


def run_ppo(cfg: PPOStageConfig, resume: bool = False) -> Path:
    """Train with PPO as ``cfg`` says and save ``output_dir/model`` (a Keel checkpoint of the policy,
    LoRA merged unless ``lora.merge_on_save: false``); returns that folder.

    ``resume``: continue from the last complete ``checkpoint-N`` of ``output_dir``. Raises
    ConfigError/KeelError for a bad config, model or data, CheckpointError for a checkpoint that
    cannot be read safely, and refuses to overwrite a finished run (``prepare_run_dir``).
    """
    from transformers import set_seed

    from align.training import save_trained_model

    last = prepare_run_dir(cfg, resume)
    set_seed(cfg.seed)
    trainer = PPOTrainer(cfg)
    final = trainer.train(resume_from=last)
    if trainer.update_step % cfg.training.save_steps:
        trainer.save_state()
    metrics = {k: v for k, v in final.items() if k != "samples"}
    return save_trained_model(trainer.acc, trainer.model, trainer.policy_for_saving(), trainer.tokenizer,
                              Path(cfg.output_dir) / "model", cfg, trainer.source, [trainer.data_fingerprint],
                              metrics, merge_lora=cfg.lora.merge_on_save, prefix="policy.")
