"""Reward over-optimisation monitor (Gao, Schulman & Hilton 2022, "Scaling laws for reward model
over-optimisation").

A policy optimised against a *proxy* RM keeps raising the proxy score, while its score under a
*gold* RM (a larger or independently trained one, standing in for true preferences) rises, peaks
and falls as the policy drifts from the reference. Gao et al. plot both against
d = sqrt(KL(pi || pi_ref)); the turn of the gold curve is where to stop.

Every ``every_n_steps`` the monitor samples responses from the current policy for a fixed set of
prompts, scores them with proxy and gold (any reward function of ``align.rewards``), estimates
the KL to the reference on those samples, logs ``monitor/proxy``, ``monitor/gold``,
``monitor/kl``, ``monitor/sqrt_kl``, and warns (or stops the run) when, over the last ``window``
checks, gold has fallen while proxy has risen. ``python -m align plot RUN`` draws the picture.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
from pydantic import Field

from align.config import Strict

log = logging.getLogger("keel.monitor")


class MonitorSettings(Strict):
    """The ``monitor:`` section of a stage: gold and proxy rewards, the prompts, how often to check
    (training steps) and what to do when gold falls while proxy rises.
    """

    gold: str | dict[str, Any] = Field(description="gold reward: RM checkpoint, ensemble folder or module:function")
    proxy: str | dict[str, Any] | None = Field(
        None, description="proxy reward; default: the reward the stage optimises (GRPO/PPO); DPO must name one")
    prompts: str | None = Field(None, description="JSONL file of prompts; default: the run's eval (or train) prompts")
    num_prompts: int = Field(16, ge=1)
    every_n_steps: int = Field(10, ge=1)
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(1.0, gt=0, description="samples for the KL estimate must come from the policy itself")
    window: int = Field(3, ge=2, description="checks over which gold must fall while proxy rises")
    min_drop: float = Field(0.0, ge=0, description="gold must fall by more than this from its best")
    action: Literal["warn", "stop"] = "warn"


def _slope(ys: Sequence[float]) -> float:
    n = len(ys)
    mx, my = (n - 1) / 2, sum(ys) / n
    den = sum((i - mx) ** 2 for i in range(n))
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / den if den else 0.0


@dataclass
class OverOptimisationMonitor:
    """The history of (step, proxy, gold, KL) checks and the divergence test of Gao et al. 2022;
    KL in nats per sequence.
    """

    window: int = 3
    min_drop: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    def record(self, step: int, proxy: float, gold: float, kl: float) -> dict[str, Any]:
        """Add one check; returns the metrics to log, with ``monitor/alert`` = 1 when diverging."""
        rec = {"step": step, "monitor/proxy": proxy, "monitor/gold": gold, "monitor/kl": kl,
               "monitor/sqrt_kl": math.sqrt(max(kl, 0.0))}
        self.history.append(rec)
        rec["monitor/alert"] = int(self.diverging())
        return rec

    def diverging(self) -> bool:
        """Gold trending down while proxy trends up over the last ``window`` checks, and gold below its best."""
        if len(self.history) < self.window:
            return False
        recent = self.history[-self.window:]
        gold = [r["monitor/gold"] for r in recent]
        proxy = [r["monitor/proxy"] for r in recent]
        best_gold = max(r["monitor/gold"] for r in self.history)
        return _slope(gold) < 0 < _slope(proxy) and gold[-1] < best_gold - self.min_drop

    def message(self) -> str:
        """The warning text for the last ``window`` checks (call after an alert)."""
        first, last = self.history[-self.window], self.history[-1]
        return (f"reward over-optimisation: over the last {self.window} checks (steps {first['step']}-{last['step']}) "
                f"proxy rose {first['monitor/proxy']:.3f} -> {last['monitor/proxy']:.3f} while gold fell "
                f"{first['monitor/gold']:.3f} -> {last['monitor/gold']:.3f} (sqrt KL {last['monitor/sqrt_kl']:.2f})")


@torch.inference_mode()
def sample_and_kl(policy, reference, tokenizer, prompts: Sequence[list[dict]], max_new_tokens: int,
                  temperature: float, seed: int = 0) -> tuple[list[str], float]:
    """Sample one response per prompt from ``policy`` and estimate KL(pi || pi_ref) on them.

    Returns (the B response texts, the mean over the B prompts of sum_t k1_t), in nats per
    sequence. The samples are drawn untruncated (``top_k=0``, ``top_p=1``) at ``temperature``,
    and the log-probs follow the attention mask's positions (``align.logprobs``), so the
    estimate is unbiased for the KL between the temperature-scaled policy and reference over
    responses of at most ``max_new_tokens`` tokens; at ``temperature`` 1 that is the policies'
    own KL. ``reference`` is a model, or a context-manager factory that switches the policy into
    its reference (LoRA adapters off). Sampling is seeded by ``seed`` and leaves torch's global
    RNG as it was. Raises ValueError for temperature <= 0."""
    from align.generate import encode_chats
    from align.logprobs import kl_estimate, response_logprobs, sample

    enc = encode_chats(tokenizer, prompts, policy.device)
    was_training = policy.training
    policy.eval()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    try:
        s = sample(policy, tokenizer, enc, max_new_tokens, temperature, top_p=1.0)
    finally:
        torch.random.set_rng_state(torch_state)
    if callable(reference) and not isinstance(reference, torch.nn.Module):
        with reference():
            logp_ref = response_logprobs(policy, s.input_ids, s.attention_mask, s.responses, temperature)
    else:
        logp_ref = response_logprobs(reference, s.input_ids, s.attention_mask, s.responses, temperature)
    kl = (kl_estimate(s.logprobs, logp_ref, "k1") * s.mask).sum(-1).mean().item()
    if was_training:
        policy.train()
    texts = tokenizer.batch_decode(s.responses, skip_special_tokens=True)
    return [t.strip() for t in texts], kl


def make_callback(settings: MonitorSettings, proxy, gold, tokenizer, prompts: Sequence[list[dict]],
                  columns: dict[str, list] | None = None, reference_loader=None):
    """A transformers TrainerCallback that runs the monitor inside any TRL trainer.

    Set ``callback.trainer`` after building the trainer: the callback reads the live policy from
    it, the reference from ``trainer.ref_model`` (DPO, KTO, GRPO with beta > 0), from disabled
    LoRA adapters, or from ``reference_loader()`` (loaded once, on first use).
    """
    from transformers import TrainerCallback

    monitor = OverOptimisationMonitor(settings.window, settings.min_drop)
    prompts = list(prompts)[: settings.num_prompts]
    columns = {k: list(v)[: settings.num_prompts] for k, v in (columns or {}).items()}

    class MonitorCallback(TrainerCallback):
        trainer = None
        _reference = None

        def _ref(self, model):
            explicit = getattr(self.trainer, "ref_model", None)
            if explicit is not None:
                return explicit
            if hasattr(model, "disable_adapter"):
                return model.disable_adapter
            if self._reference is None:
                if reference_loader is None:
                    raise ValueError("the over-optimisation monitor needs a reference model")
                self._reference = reference_loader()
            return self._reference

        def check(self, step: int, control=None):
            model = self.trainer.accelerator.unwrap_model(self.trainer.model)
            responses, kl = sample_and_kl(model, self._ref(model), tokenizer, prompts, settings.max_new_tokens,
                                          settings.temperature, seed=0)
            p = sum(proxy(prompts, responses, **columns)) / len(prompts)
            g = sum(gold(prompts, responses, **columns)) / len(prompts)
            rec = monitor.record(step, p, g, kl)
            # transformers' own log: TRL trainers' log() would fold their pending step metrics into
            # this record; and logging resets control.should_log, which the step's loss log needs.
            from transformers import Trainer

            should_log = control.should_log if control is not None else False
            Trainer.log(self.trainer, {k: v for k, v in rec.items() if k != "step"})
            if control is not None:
                control.should_log = should_log
            if rec["monitor/alert"]:
                log.warning(monitor.message())
                print(f"[keel] WARNING {monitor.message()}", flush=True)
                if settings.action == "stop" and control is not None and step > 0:
                    control.should_training_stop = True

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero and state.global_step == 0:
                self.check(0, control)

        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero and state.global_step % settings.every_n_steps == 0:
                self.check(state.global_step, control)

    cb = MonitorCallback()
    cb.monitor = monitor
    return cb


def monitor_callback(settings: MonitorSettings | None, tokenizer, dataset, default_proxy=None, reference_loader=None):
    """Build the callback from a stage's ``monitor`` config section, or None when it has none."""
    if settings is None:
        return None
    from align.errors import ConfigError
    from align.rewards import load_reward

    if settings.proxy is None and default_proxy is None:
        raise ConfigError("monitor.proxy: name the proxy reward (an RM checkpoint or module:function) for this stage")
    proxy = load_reward(settings.proxy) if settings.proxy is not None else default_proxy
    gold = load_reward(settings.gold)
    if settings.prompts:
        from align.config import DataConfig
        from align.data import load_data

        dataset = load_data(DataConfig(path=settings.prompts, eval_size=0,
                                       max_rows=settings.num_prompts)).train
    rows = list(dataset.select(range(min(settings.num_prompts, len(dataset)))))
    if not rows or "prompt" not in rows[0]:
        raise ConfigError("monitor: the data has no 'prompt' column to sample responses for")
    prompts = [r["prompt"] if isinstance(r["prompt"], list) else [{"role": "user", "content": r["prompt"]}]
               for r in rows]
    skip = {"prompt", "chosen", "rejected", "completion", "label", "messages"}
    columns = {k: [r[k] for r in rows] for k in rows[0] if k not in skip}
    return make_callback(settings, proxy, gold, tokenizer, prompts, columns, reference_loader)
