"""PPO-RLHF (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022), written out in one file.

TRL removed its PPOTrainer in 2026, so Keel keeps its own, on ``accelerate``: the same code runs
on one CPU and under ``accelerate launch`` on many GPUs. It is written by hand, not wrapped,
because no maintained library ships it any more; it reads top to bottom like the papers' PPO
section. Four roles:

    pi_theta   the policy being trained (optionally LoRA)
    pi_ref     the frozen reference: a copy of the initial policy, or, with LoRA, the same
               weights with the adapters switched off (no second copy in memory)
    r_phi      the reward: a Keel RM, an ensemble or a Python function (``align.rewards``)
    V_psi      the value model: a scalar head on the policy's own backbone (``value_model:
               shared``, one forward pass gives logits and values) or a separate backbone

For each batch of prompts x:

1. Rollout. y ~ pi_theta(.|x) with temperature and top-p, stopping at EOS; the sampling logits
   give log pi_theta_old(y_t) for free (no second forward pass).
2. Evaluation. log pi_ref(y_t) from the reference; the score s = r_phi(x, y); per-token KL
   estimate kl_t = log pi_theta_old(y_t) - log pi_ref(y_t) (k1; k3 = (rho - 1) - log rho with
   rho = pi_ref/pi_theta as an option); the shaped reward
        r_t = -beta * kl_t  +  [t = T] * s              (InstructGPT)
   with an optional penalty when y has no EOS, and optional whitening/clipping of s.
3. Advantages. Values V_t from V_psi; GAE:
        delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = sum_l (gamma*lambda)^l delta_{t+l},
        returns R_t = A_t + V_t;  A whitened over the batch.
4. Update. For ``ppo_epochs`` passes over shuffled minibatches:
        rho_t = exp(log pi_theta(y_t) - log pi_theta_old(y_t))
        L_clip = -mean(min(rho_t A_t, clip(rho_t, 1-eps, 1+eps) A_t))
        L_V    = 0.5 * mean(max((V - R)^2, (clip(V, V_old - eps_v, V_old + eps_v) - R)^2))
        L      = L_clip + vf_coef * L_V - ent_coef * H
   with gradient accumulation, gradient clipping, and an early stop when the approximate KL
   between pi_theta_old and pi_theta, mean((rho - 1) - log rho), exceeds ``target_approx_kl``.
5. KL control. Fixed beta, or the adaptive controller of Ziegler et al.:
        e = clip(KL / KL_target - 1, -0.2, 0.2),   beta <- beta * (1 + e * n / horizon)
   where KL is the batch's mean sequence KL and n the number of samples in the batch.

Logits are only computed at response positions (``logits_to_keep``); nothing computed for the
same tokens is computed twice; every step logs score, KL, beta, returns, entropy, clip fraction,
value loss, approx-KL, response length and tokens/s to metrics.jsonl; checkpoints are periodic
and ``--resume`` continues from the last one.
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
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field

from align.config import DataConfig, LoraSettings, ReportTo, StageConfig, Strict
from align.data import load_data
from align.errors import CheckpointError, ConfigError, KeelError
from align.monitor import MonitorSettings, OverOptimisationMonitor
from align.training import METRICS_FILE, append_metrics, prepare_run_dir


# ---------------------------------------------------------------------------------------- config
class PPOSettings(Strict):
    batch_size: int = Field(8, ge=1, description="prompts per rollout (per process)")
    mini_batch_size: int = Field(8, ge=1, description="samples per optimiser step (before accumulation)")
    gradient_accumulation_steps: int = Field(1, ge=1)
    ppo_epochs: int = Field(1, ge=1, description="passes over each rollout batch")
    learning_rate: float = Field(1e-6, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    clip_epsilon: float = Field(0.2, gt=0, description="policy ratio clip eps")
    value_clip: float = Field(0.2, gt=0, description="value clip eps_v")
    vf_coef: float = Field(0.1, ge=0)
    ent_coef: float = Field(0.0, ge=0)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    target_approx_kl: float | None = Field(None, gt=0, description="stop this rollout's epochs above this approx-KL")
    whiten_scores: bool = False
    score_clip: float | None = Field(None, gt=0)


class KLSettings(Strict):
    beta: float = Field(0.05, ge=0, description="initial KL coefficient")
    adaptive: bool = False
    target: float = Field(6.0, gt=0, description="target sequence KL (nats) for the adaptive controller")
    horizon: int = Field(10000, ge=1)
    estimator: Literal["k1", "k3"] = "k1"


class RolloutSettings(Strict):
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_prompt_length: int = Field(256, ge=8)
    missing_eos_penalty: float | None = Field(None, ge=0)


class PPOStageConfig(StageConfig):
    stage: Literal["ppo"] = "ppo"
    output_dir: str = "runs/ppo"
    data: DataConfig
    reward: str | dict[str, Any] = Field(description="RM checkpoint, ensemble folder/mapping, or module:function")
    value_model: str = Field("shared", description="'shared' (a head on the policy backbone) or a model reference")
    updates: int = Field(20, ge=1, description="rollout + optimisation rounds")
    ppo: PPOSettings = Field(default_factory=PPOSettings)
    kl: KLSettings = Field(default_factory=KLSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    bf16: bool | None = Field(None, description="bf16 autocast through accelerate's mixed precision (weights stay in "
                                                "`dtype`); None: whatever `accelerate launch` / its config says")
    logging_steps: int = Field(1, ge=1)
    report_to: ReportTo = Field(default_factory=list, description="experiment trackers through accelerate: trackio, "
                                "wandb, mlflow, tensorboard, none (metrics.jsonl is always written)")
    sample_every: int = Field(5, ge=1, description="log example responses every N updates")
    save_steps: int = Field(10, ge=1)
    save_total_limit: int | None = 2
    monitor: MonitorSettings | None = None


# ------------------------------------------------------------------------------------- the models
class ValueHead(nn.Module):
    """V_psi on the policy's own last hidden state."""

    def __init__(self, hidden: int):
        super().__init__()
        self.v = nn.Linear(hidden, 1)
        nn.init.normal_(self.v.weight, std=1 / math.sqrt(hidden + 1))
        nn.init.zeros_(self.v.bias)

    def forward(self, h):
        return self.v(h).squeeze(-1)


class ActorCritic(nn.Module):
    """pi_theta and V_psi: one module so that accelerate/DeepSpeed wrap and optimise them together."""

    def __init__(self, policy, value_head: ValueHead | None, value_model=None):
        super().__init__()
        self.policy, self.value_head, self.value_model = policy, value_head, value_model

    def forward(self, input_ids, attention_mask, n_response: int, temperature: float):
        """Log-prob inputs for the last ``n_response`` tokens: (logits at the positions that predict
        them, values at the same positions). Logits are never built for prompt positions."""
        pos = position_ids(attention_mask)
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                          logits_to_keep=n_response + 1, output_hidden_states=self.value_head is not None,
                          use_cache=False)
        logits = out.logits[:, :-1].float() / temperature
        if self.value_head is not None:
            values = self.value_head(out.hidden_states[-1][:, -(n_response + 1):-1].float())
        else:
            backbone = getattr(self.value_model, self.value_model.base_model_prefix)
            h = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                         use_cache=False).last_hidden_state
            values = self.value_model.score(h[:, -(n_response + 1):-1]).squeeze(-1).float()
        return logits, values


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generation computes them; a plain forward would
    otherwise count the pads and score every token at a shifted position."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


# ------------------------------------------------------------------------------------ the maths
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def kl_estimate(logp: torch.Tensor, logp_ref: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimates on samples from pi (Schulman, "Approximating KL divergence")."""
    log_ratio = logp - logp_ref
    if estimator == "k1":
        return log_ratio
    rho = torch.exp(-log_ratio)  # pi_ref / pi
    return (rho - 1) - torch.log(rho)


def shaped_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """r_t = -beta * kl_t on every response token, plus the score on the last one."""
    rewards = -beta * kl * mask
    last = mask.sum(1).long().clamp(min=1) - 1
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens; V after the last token is 0."""
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
    """Clipped surrogate; returns (loss, clip fraction, approx-KL old->new)."""
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
    """Clipped value loss; returns (loss, clip fraction)."""
    clipped = values_old + torch.clamp(values - values_old, -eps, eps)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(loss_unclipped, loss_clipped), mask)
    return loss, masked_mean((loss_clipped > loss_unclipped).float(), mask)


@dataclass
class AdaptiveKLController:
    """Ziegler et al. 2019: proportional control of beta toward a target KL."""

    beta: float
    target: float
    horizon: int

    def update(self, kl: float, n_samples: int) -> float:
        error = max(-0.2, min(0.2, kl / self.target - 1))
        self.beta *= 1 + error * n_samples / self.horizon
        return self.beta


@dataclass
class FixedKLController:
    beta: float

    def update(self, kl: float, n_samples: int) -> float:
        return self.beta


# ----------------------------------------------------------------------------------- the trainer
def response_mask(responses: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and including the first EOS, 0 after it."""
    is_eos = responses == eos_id
    after = torch.cumsum(is_eos.long(), 1) - is_eos.long()
    return (after == 0).long()


class PPOTrainer:
    def __init__(self, cfg: PPOStageConfig, accelerator=None):
        from accelerate import Accelerator

        from align.models import load_policy, load_value_model
        from align.rewards import load_reward

        from align.training import trackers

        self.cfg = cfg
        self.trackers = trackers(cfg.report_to, field="report_to")
        self.acc = accelerator or Accelerator(gradient_accumulation_steps=cfg.ppo.gradient_accumulation_steps,
                                              cpu=not torch.cuda.is_available(),
                                              mixed_precision={True: "bf16", False: "no", None: None}[cfg.bf16],
                                              log_with=self.trackers or None, project_dir=cfg.output_dir)
        dtype = "float32" if cfg.dtype == "auto" else cfg.dtype
        policy, self.tokenizer, self.source = load_policy(cfg.model, device="cpu", dtype=dtype)
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
        self.optimizer = torch.optim.AdamW(params, lr=cfg.ppo.learning_rate, eps=1e-5)
        self.model, self.optimizer = self.acc.prepare(self.model, self.optimizer)
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
    @torch.no_grad()
    def rollout(self, prompts) -> dict[str, Any]:
        from align.generate import generation_kwargs

        r = self.cfg.rollout
        model = self.acc.unwrap_model(self.model)
        model.eval()
        enc = self._encode(prompts)
        kwargs = generation_kwargs(self.tokenizer, r.max_new_tokens, r.temperature, r.top_p)
        kwargs["top_k"] = 0  # sample from the distribution whose log-probs PPO uses, untruncated
        gen = model.policy.generate(**enc, **kwargs, output_logits=True, return_dict_in_generate=True)
        ctx = enc["input_ids"].shape[1]
        responses = gen.sequences[:, ctx:]
        T = responses.shape[1]
        # log pi_theta_old from the sampling logits: the forward pass generation already did
        logits = torch.stack(gen.logits, 1)[:, :T].float() / r.temperature
        logp_old = token_logprobs(logits, responses)
        del logits
        mask = response_mask(responses, self.eos_id)
        responses = torch.where(mask.bool(), responses, torch.full_like(responses, self.tokenizer.pad_token_id))
        input_ids = torch.cat([enc["input_ids"], responses], 1)
        attention = torch.cat([enc["attention_mask"], mask], 1)
        # With one minibatch per rollout, the first update's forward pass runs at these same
        # parameters on these same tokens: its values are V_old, so the value pass waits for it.
        fused = self._fused_first_pass()
        values = None if fused else model(input_ids, attention, T, r.temperature)[1]
        logp_ref = token_logprobs(self._reference_logits(model, input_ids, attention, T), responses)
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        scores = torch.tensor(self.reward(prompts, [t.strip() for t in texts]), dtype=torch.float32,
                              device=self.acc.device)
        raw_scores = scores.clone()
        has_eos = (responses == self.eos_id).any(1)
        if r.missing_eos_penalty is not None:
            scores = scores - r.missing_eos_penalty * (~has_eos).float()
        if self.cfg.ppo.whiten_scores and len(scores) > 1:
            scores = (scores - scores.mean()) / (scores.std() + 1e-8)
        if self.cfg.ppo.score_clip is not None:
            scores = scores.clamp(-self.cfg.ppo.score_clip, self.cfg.ppo.score_clip)
        maskf = mask.float()
        kl = kl_estimate(logp_old, logp_ref, self.cfg.kl.estimator) * maskf
        beta = self.kl_ctl.beta
        rewards = shaped_rewards(scores, kl, maskf, beta)
        advantages = returns = None
        if values is not None:
            advantages, returns = self.advantages(rewards, values, maskf)
        model.train()
        return {"input_ids": input_ids, "attention_mask": attention, "responses": responses, "mask": maskf,
                "logp_old": logp_old, "values_old": values, "advantages": advantages, "returns": returns,
                "scores": raw_scores, "kl_seq": kl.sum(1), "rewards": rewards, "has_eos": has_eos.float(),
                "texts": texts, "prompts": prompts, "T": T, "beta": beta}

    def advantages(self, rewards, values, mask) -> tuple[torch.Tensor, torch.Tensor]:
        advantages, returns = gae(rewards, values, mask, self.cfg.ppo.gamma, self.cfg.ppo.lam)
        return masked_whiten(advantages, mask) * mask, returns

    def _fused_first_pass(self) -> bool:
        return self.cfg.ppo.mini_batch_size >= self.cfg.ppo.batch_size and self.cfg.ppo.gradient_accumulation_steps == 1

    def _reference_logits(self, model, input_ids, attention, T):
        r = self.cfg.rollout
        kwargs = dict(input_ids=input_ids, attention_mask=attention, position_ids=position_ids(attention),
                      logits_to_keep=T + 1, use_cache=False)
        if self.reference is not None:
            out = self.reference(**kwargs)
        else:
            with model.policy.disable_adapter():
                out = model.policy(**kwargs)
        return out.logits[:, :-1].float() / r.temperature

    # -- 4: the update ------------------------------------------------------------------------------
    def optimise(self, batch: dict[str, Any]) -> dict[str, float]:
        p = self.cfg.ppo
        n, T = batch["input_ids"].shape[0], batch["T"]
        stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "entropy", "clip_frac",
                                                          "value_clip_frac", "approx_kl", "grad_norm")}
        epochs_run = 0
        for _ in range(p.ppo_epochs):
            order = torch.randperm(n)
            epoch_kl = []
            for start in range(0, n, p.mini_batch_size):
                idx = order[start:start + p.mini_batch_size]
                with self.acc.accumulate(self.model):
                    logits, values = self.model(batch["input_ids"][idx], batch["attention_mask"][idx], T,
                                                self.cfg.rollout.temperature)
                    mask = batch["mask"][idx]
                    if batch["advantages"] is None:  # fused first pass: these values are V_old
                        v_old = torch.zeros_like(batch["mask"])
                        v_old[idx] = values.detach()
                        batch["values_old"] = v_old
                        batch["advantages"], batch["returns"] = self.advantages(batch["rewards"], v_old, batch["mask"])
                    logp = token_logprobs(logits, batch["responses"][idx])
                    pg, clip_frac, approx_kl = policy_loss(logp, batch["logp_old"][idx], batch["advantages"][idx],
                                                           mask, p.clip_epsilon)
                    vf, vf_clip = value_loss(values, batch["values_old"][idx], batch["returns"][idx], mask,
                                             p.value_clip)
                    ent = masked_mean(entropy_from_logits(logits), mask)
                    loss = pg + p.vf_coef * vf - p.ent_coef * ent
                    self.acc.backward(loss)
                    if self.acc.sync_gradients:
                        norm = self.acc.clip_grad_norm_(self.model.parameters(), p.max_grad_norm)
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
        from tqdm.auto import tqdm

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
            prompts = next(batches)
            batch = self.rollout(prompts)
            rollout_s = time.perf_counter() - started
            stats = self.optimise(batch)
            self.update_step += 1
            kl_mean = float(self.acc.gather(batch["kl_seq"]).mean())
            n_total = batch["kl_seq"].shape[0] * self.acc.num_processes
            new_beta = self.kl_ctl.update(kl_mean, n_total)
            seconds = time.perf_counter() - started
            tokens = float(self.acc.gather(batch["mask"].sum()).sum())
            rec = {"step": self.update_step, "score": float(self.acc.gather(batch["scores"]).mean()),
                   "kl": kl_mean, "beta": batch["beta"], "beta_next": new_beta,
                   "shaped_return": float(self.acc.gather(batch["rewards"].sum(1)).mean()),
                   "response_length": float(self.acc.gather(batch["mask"].sum(1)).mean()),
                   "eos_rate": float(self.acc.gather(batch["has_eos"]).mean()),
                   "tokens_per_s": tokens / seconds, "update_s": seconds, "rollout_s": rollout_s, **stats}
            if self.monitor is not None and self.update_step % self.cfg.monitor.every_n_steps == 0:
                gold = self.gold(batch["prompts"], [t.strip() for t in batch["texts"]])
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
                rec["samples"] = [{"prompt": p[-1]["content"][:300], "response": t[:300]}
                                  for p, t in zip(batch["prompts"][:2], batch["texts"][:2])]
            if self.update_step % self.cfg.logging_steps == 0 or self.update_step == self.cfg.updates:
                self._log(rec)
            if self.update_step % self.cfg.save_steps == 0:
                self.save_state()
            bar.update(1)
            bar.set_postfix(score=f"{rec['score']:.3f}", kl=f"{kl_mean:.2f}", beta=f"{batch['beta']:.3f}")
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
        limit = self.cfg.save_total_limit
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
    from transformers import set_seed

    from align.training import save_trained_model

    last = prepare_run_dir(cfg, resume)
    set_seed(cfg.seed)
    trainer = PPOTrainer(cfg)
    final = trainer.train(resume_from=last)
    if trainer.update_step % cfg.save_steps:
        trainer.save_state()
    metrics = {k: v for k, v in final.items() if k != "samples"}
    return save_trained_model(trainer.acc, trainer.model, trainer.policy_for_saving(), trainer.tokenizer,
                              Path(cfg.output_dir) / "model", cfg, trainer.source, [trainer.data_fingerprint],
                              metrics, merge_lora=cfg.lora.merge_on_save, prefix="policy.")
