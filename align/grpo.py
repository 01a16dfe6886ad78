"""Group relative policy optimisation on TRL's GRPOTrainer (Shao et al. 2024).

For each prompt the policy samples a group of ``num_generations`` answers; each answer's
advantage is its reward minus the group mean (over the group std with ``scale_rewards``), so no
value model is needed. ``beta`` > 0 keeps the KL anchor to the reference on (TRL's default is 0).

Rewards come from config through Keel's reward interface and are summed with weights:
  - ``align.verifiers:gsm8k_correctness`` / ``gsm8k_format`` / ``gsm8k_closeness`` (verifiable),
  - a Keel RM or ensemble (``rm: runs/rm/model`` or ``rm: {ensemble: [...], combine: min}``),
  - any Python callable ``module:function`` taking ``(prompts, responses, **columns)``.
On a 135M model an all-or-nothing GSM8K reward is almost always 0, so every group ties and
GRPO learns nothing; the shipped config adds partial credit (format, closeness).
Generation uses vLLM on a GPU when it is installed (``use_vllm: null`` = auto), transformers otherwise.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from align.config import Strict, TRLStageConfig
from align.data import load_data
from align.errors import ConfigError
from align.models import load_policy
from align.monitor import MonitorSettings, monitor_callback
from align.rewards import load_reward
from align.models import training_dtype
from align.training import build_trainer_config, make_trainer, prepare_run_dir, train_and_save, trainer_arguments


class RewardSpec(Strict):
    """One reward term: exactly one of ``function`` (module:function) or ``rm`` (checkpoint / ensemble)."""

    function: str | None = None
    rm: str | dict[str, Any] | None = None
    weight: float = 1.0

    @model_validator(mode="after")
    def _one_source(self):
        if (self.function is None) == (self.rm is None):
            raise ValueError("give exactly one of 'function' (module:function) or 'rm' (checkpoint or ensemble)")
        return self

    @property
    def label(self) -> str:
        """The reward's name in the logs: the function's name, or ``rm``/``rm_<checkpoint folder>``."""
        if self.function:
            return self.function.rsplit(":", 1)[-1]
        return "rm" if isinstance(self.rm, dict) else f"rm_{Path(str(self.rm)).parent.name or 'model'}"


class ToolLoopSettings(Strict):
    """Multi-turn tool RL: each completion is a ReAct episode with real tool calls (agents.rl)."""

    tools: list[str] = Field(default_factory=lambda: ["calculator"], description="from: calculator, current_date, search")
    index: str | None = Field(None, description="retrieval index for the search tool ('default' or a folder)")
    max_steps: int = Field(4, ge=1)
    tokens_per_step: int = Field(96, ge=8)


class GRPOStageConfig(TRLStageConfig):
    """``python -m align grpo``'s config: TRL's GRPO with weighted rewards, optional vLLM and an
    optional multi-turn tool loop (``tool_loop:``).
    """

    stage: Literal["grpo"] = "grpo"
    output_dir: str = "runs/grpo"
    prompt_suffix: str = Field("", description="appended to each user prompt, e.g. an answer-format instruction")
    rewards: list[RewardSpec] = Field(min_length=1)
    num_generations: int = Field(4, ge=2, description="group size G")
    max_completion_length: int = Field(128, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    beta: float = Field(0.04, ge=0, description="KL penalty to the reference; > 0 keeps the anchor on")
    epsilon: float = Field(0.2, gt=0, description="PPO-style ratio clip")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    num_iterations: int = Field(1, ge=1, description="updates per generation batch (mu)")
    use_vllm: bool | None = Field(None, description="None: vLLM when on a GPU and installed")
    reward_batch_size: int = Field(8, ge=1)
    monitor: MonitorSettings | None = None
    tool_loop: ToolLoopSettings | None = None


def _tool_rollout(settings: ToolLoopSettings):
    from agents.rl import make_react_rollout
    from agents.tools import ToolRegistry, default_tools

    retriever = None
    if "search" in settings.tools:
        if settings.index is None:
            raise ConfigError("tool_loop.index: the search tool needs a retrieval index ('default' or a folder)")
        from retrieval import Retriever
        from retrieval.default_kb import open_default_index

        retriever = open_default_index() if settings.index == "default" else Retriever.open(settings.index)
    available = default_tools(retriever)
    unknown = [t for t in settings.tools if available.get(t) is None]
    if unknown:
        raise ConfigError(f"tool_loop.tools: unknown {', '.join(unknown)}; choose from {', '.join(available.names())}")
    registry = ToolRegistry([available.get(t) for t in settings.tools])
    return make_react_rollout(registry, settings.max_steps, settings.tokens_per_step)


def grpo_rows(data, suffix: str):
    """Rows with a conversational ``prompt`` (suffix appended to the last user turn) and the other
    columns kept; GSM8K's ``final`` is exposed to rewards as ``answer``."""
    import datasets

    rows = []
    for r in data:
        prompt = [dict(m) for m in r["prompt"]] if isinstance(r["prompt"], list) else [
            {"role": "user", "content": r["prompt"]}]
        if suffix:
            prompt[-1]["content"] = f"{prompt[-1]['content']}{suffix}"
        row = {k: v for k, v in r.items() if k not in ("prompt", "completion", "chosen", "rejected", "label")}
        if "final" in row and "answer" not in row:
            row["answer"] = row.pop("final")
        rows.append({"prompt": prompt, **row})
    return datasets.Dataset.from_list(rows)


def trl_reward(fn, name: str):
    """Keel reward -> TRL reward function: TRL passes completions as message lists and dataset
    columns (plus its own bookkeeping) as keyword arguments."""
    def reward(prompts, completions, **kwargs) -> list[float]:
        columns = {k: v for k, v in kwargs.items() if k not in ("completion_ids", "trainer_state", "log_extra",
                                                                "log_metric", "environments")}
        return fn(prompts, completions, **columns)

    reward.__name__ = name
    return reward


def weighted_sum(terms: list[tuple[Any, float]], name: str = "combined"):
    """The reward GRPO optimises, as one function: the monitor's default proxy."""
    class Combined:
        def __init__(self):
            self.name = name

        def __call__(self, prompts, responses, **columns):
            total = [0.0] * len(responses)
            for fn, w in terms:
                for i, s in enumerate(fn(prompts, responses, **columns)):
                    total[i] += w * s
            return total

    return Combined()


def _use_vllm(setting: bool | None) -> bool:
    import torch

    available = torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None
    if setting and not available:
        raise ConfigError("use_vllm is true but vLLM needs a CUDA GPU and `pip install vllm` (keel[gpu])")
    return available if setting is None else setting


def run_grpo(cfg: GRPOStageConfig, resume: bool = False) -> Path:
    """GRPO (Shao et al. 2024, TRL GRPOTrainer) as ``cfg`` says; writes and returns
    ``output_dir/model``. Raises ConfigError naming the field for inconsistent batch/generation sizes.
    """
    from transformers import set_seed
    from trl import GRPOConfig, GRPOTrainer

    effective_batch = cfg.training.per_device_train_batch_size * cfg.training.gradient_accumulation_steps
    if cfg.tool_loop is not None and _use_vllm(cfg.use_vllm):
        raise ConfigError("tool_loop runs the ReAct episodes with transformers generation; set use_vllm: false")
    rollout_func = _tool_rollout(cfg.tool_loop) if cfg.tool_loop is not None else None
    if effective_batch % cfg.num_generations:
        raise ConfigError(f"training.per_device_train_batch_size x gradient_accumulation_steps ({effective_batch}) "
                          f"must be a multiple of num_generations ({cfg.num_generations})")
    last = prepare_run_dir(cfg, resume)
    set_seed(cfg.seed)
    data = load_data(cfg.data, accept=("prompt_only",),
                     reshape_map={k: "prompt_only" for k in ("preference", "prompt_completion", "unpaired_preference")})
    train = grpo_rows(data.train, cfg.prompt_suffix)
    evaluation = grpo_rows(data.eval, cfg.prompt_suffix) if data.eval is not None else None
    rewards = [(load_reward(r.function or r.rm, batch_size=cfg.reward_batch_size), r.weight) for r in cfg.rewards]
    model, tokenizer, source = load_policy(cfg.model, device="cpu", dtype=training_dtype(cfg.dtype),
                                           padding_side="left")
    use_vllm = _use_vllm(cfg.use_vllm)
    args = build_trainer_config(
        GRPOConfig,
        **trainer_arguments(cfg, cfg.training, has_eval=evaluation is not None),
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        num_iterations=cfg.num_iterations,
        reward_weights=[w for _, w in rewards],
        use_vllm=use_vllm,
        **({"vllm_mode": "colocate"} if use_vllm else {}),
    )
    names = [spec.label for spec in cfg.rewards]
    trainer = make_trainer(GRPOTrainer, cfg, model, args, train, evaluation, tokenizer,
                           reward_funcs=[trl_reward(fn, name) for (fn, _), name in zip(rewards, names)],
                           rollout_func=rollout_func)
    monitor = monitor_callback(cfg.monitor, tokenizer, evaluation if evaluation is not None else train,
                               default_proxy=weighted_sum(rewards),
                               reference_loader=lambda: load_policy(cfg.model, device="cpu")[0])
    if monitor is not None:
        monitor.trainer = trainer
        trainer.add_callback(monitor)
    return train_and_save(trainer, cfg, last, tokenizer, source, [data.fingerprint], has_eval=evaluation is not None,
                          extra_metrics={"rewards": [{"name": n, "weight": w} for n, (_, w) in zip(names, rewards)]})
