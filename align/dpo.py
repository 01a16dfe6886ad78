"""Direct preference optimisation on TRL's DPOTrainer (Rafailov et al. 2023).

Data: preference pairs (prompt, chosen, rejected) in TRL's conversational format: the shared HH
pairs, Constitutional-AI pairs, or the app's exported feedback (``preference.jsonl``). With LoRA
the reference model is the base with adapters switched off: no second copy of the weights.
Eval metrics (reward accuracy and margin of the implicit reward) go into the manifest.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from align.config import TRLStageConfig
from align.data import load_data
from align.models import load_policy
from align.monitor import MonitorSettings, monitor_callback
from align.models import training_dtype
from align.training import build_trainer_config, make_trainer, prepare_run_dir, train_and_save, trainer_arguments


class DPOStageConfig(TRLStageConfig):
    """``python -m align dpo``'s config: TRL's DPO on preference pairs (beta, loss type, reference)."""

    stage: Literal["dpo"] = "dpo"
    output_dir: str = "runs/dpo"
    beta: float = Field(0.1, gt=0, description="strength of the implicit KL anchor to the reference")
    loss_type: str = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    monitor: MonitorSettings | None = Field(None, description="reward over-optimisation monitor (proxy and gold RMs)")


def run_dpo(cfg: DPOStageConfig, resume: bool = False) -> Path:
    """Direct preference optimisation (Rafailov et al. 2023, TRL DPOTrainer) as ``cfg`` says; writes
    and returns ``output_dir/model``. Raises KeelError subclasses for bad config, data or model.
    """
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    last = prepare_run_dir(cfg, resume)
    set_seed(cfg.seed)
    data = load_data(cfg.data, accept=("preference",))
    model, tokenizer, source = load_policy(cfg.model, device="cpu", dtype=training_dtype(cfg.dtype),
                                           padding_side="right")
    args = build_trainer_config(
        DPOConfig,
        **trainer_arguments(cfg, cfg.training, has_eval=data.eval is not None),
        max_length=cfg.training.max_length,
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        label_smoothing=cfg.label_smoothing,
    )
    # ref_model None: TRL copies the model, or with LoRA disables the adapters
    trainer = make_trainer(DPOTrainer, cfg, model, args, data.train, data.eval, tokenizer, ref_model=None)
    monitor = monitor_callback(cfg.monitor, tokenizer, data.eval if data.eval is not None else data.train)
    if monitor is not None:
        monitor.trainer = trainer
        trainer.add_callback(monitor)
    return train_and_save(trainer, cfg, last, tokenizer, source, [data.fingerprint], has_eval=data.eval is not None)
