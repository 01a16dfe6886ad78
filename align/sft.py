"""Stage 1, supervised fine-tuning, on TRL's SFTTrainer (full or LoRA).

Data: prompt-completion or messages rows (GSM8K worked solutions, the chosen side of preference
pairs, Constitutional-AI revisions, any TRL file). With prompt-completion rows the loss covers the
completion only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal


from align.config import TRLStageConfig
from align.data import load_data
from align.models import load_policy, training_dtype  # training_dtype: also its old import path
from align.training import build_trainer_config, make_trainer, prepare_run_dir, train_and_save, trainer_arguments


class SFTStageConfig(TRLStageConfig):
    """``python -m align sft``'s config: TRL's SFT with completion-only loss by default."""

    stage: Literal["sft"] = "sft"
    output_dir: str = "runs/sft"
    completion_only_loss: bool = True
    packing: bool = False


def run_sft(cfg: SFTStageConfig, resume: bool = False) -> Path:
    """Supervised fine-tuning (TRL SFTTrainer) as ``cfg`` says; writes and returns ``output_dir/model``.
    ``resume``: continue from the last complete checkpoint. Raises KeelError subclasses for bad
    config, data or model.
    """
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    last = prepare_run_dir(cfg, resume)
    set_seed(cfg.seed)
    data = load_data(cfg.data, accept=("prompt_completion", "messages", "text"),
                     reshape_map={"preference": "prompt_completion"})
    model, tokenizer, source = load_policy(cfg.model, device="cpu", dtype=training_dtype(cfg.dtype),
                                           padding_side="right")
    model.train()
    args = build_trainer_config(
        SFTConfig,
        **trainer_arguments(cfg, cfg.training, has_eval=data.eval is not None),
        max_length=cfg.training.max_length,
        completion_only_loss=cfg.completion_only_loss,
        packing=cfg.packing,
    )
    trainer = make_trainer(SFTTrainer, cfg, model, args, data.train, data.eval, tokenizer)
    return train_and_save(trainer, cfg, last, tokenizer, source, [data.fingerprint], has_eval=data.eval is not None)

