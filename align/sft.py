"""Stage 1, supervised fine-tuning, on TRL's SFTTrainer (full or LoRA).

Started from a LoRA adapter with ``lora.enabled``, SFT continues that adapter on its base (the
saved adapter records the same base and the adapter as parent).

Data: prompt-completion or messages rows (GSM8K worked solutions, the chosen side of preference
pairs, Constitutional-AI revisions, any TRL file). With prompt-completion rows the loss covers the
completion only.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal


from align.config import TRLStageConfig
from align.data import load_data
from align.models import load_policy, resolve_model, training_dtype  # training_dtype: also its old import path
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
    source = resolve_model(cfg.model)
    # LoRA from a LoRA adapter (e.g. keel-agent): train that adapter further, on its own base, rather
    # than merging it and stacking new adapters; its rank, alpha and target modules are kept.
    continues = cfg.lora.enabled and source.kind == "adapter"
    model, tokenizer, source = load_policy(source, device="cpu", dtype=training_dtype(cfg.dtype),
                                           padding_side="right", merge_adapters=not continues,
                                           trainable_adapters=continues)
    if continues:
        model.keel_adapter_source = source.path
        print(f"[keel] sft continues the LoRA adapter {source.ref} (its r/alpha/targets; lora.r etc. unused)",
              file=sys.stderr)
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

