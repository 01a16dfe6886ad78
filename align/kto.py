"""Kahneman-Tversky optimisation on TRL's KTOTrainer (Ethayarajh et al. 2024).

Data: unpaired rows (prompt, completion, label): thumbs up/down from the app's exported feedback
(``kto.jsonl``) is already in this shape. Preference pairs are accepted too and split into one
desirable and one undesirable row each. ``desirable_weight``/``undesirable_weight`` rebalance a
skewed mix of ups and downs (the KTO paper keeps their weighted counts within 1:1 to 4:3).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from align.config import TRLStageConfig
from align.data import load_data
from align.errors import DataError
from align.models import load_policy
from align.models import training_dtype
from align.training import build_trainer_config, make_trainer, prepare_run_dir, train_and_save, trainer_arguments


class KTOStageConfig(TRLStageConfig):
    """``python -m align kto``'s config: TRL's KTO on unpaired desirable/undesirable rows."""

    stage: Literal["kto"] = "kto"
    output_dir: str = "runs/kto"
    beta: float = Field(0.1, gt=0)
    desirable_weight: float = Field(1.0, gt=0)
    undesirable_weight: float = Field(1.0, gt=0)


def pairs_to_unpaired(dataset):
    """(prompt, chosen, rejected) -> two (prompt, completion, label) rows."""
    import datasets

    rows = []
    for r in dataset:
        rows.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
        rows.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
    return datasets.Dataset.from_list(rows)


def run_kto(cfg: KTOStageConfig, resume: bool = False) -> Path:
    """KTO (Ethayarajh et al. 2024, TRL KTOTrainer) as ``cfg`` says; writes and returns
    ``output_dir/model``. Raises KeelError subclasses for bad config or data (e.g. one label only).
    """
    from transformers import set_seed
    from trl import KTOConfig, KTOTrainer

    last = prepare_run_dir(cfg, resume)
    set_seed(cfg.seed)
    data = load_data(cfg.data, accept=("unpaired_preference", "preference"))
    if data.fingerprint["kind"] == "preference":
        data.train = pairs_to_unpaired(data.train)
        data.eval = pairs_to_unpaired(data.eval) if data.eval is not None else None
    labels = set(data.train["label"])
    if len(labels) < 2:
        raise DataError(f"{cfg.data.path}: KTO needs both desirable and undesirable rows; the training split has only "
                        f"label={labels.pop() if labels else 'nothing'}")
    model, tokenizer, source = load_policy(cfg.model, device="cpu", dtype=training_dtype(cfg.dtype),
                                           padding_side="right")
    args = build_trainer_config(
        KTOConfig,
        **trainer_arguments(cfg, cfg.training, has_eval=data.eval is not None),
        max_length=cfg.training.max_length,
        beta=cfg.beta,
        desirable_weight=cfg.desirable_weight,
        undesirable_weight=cfg.undesirable_weight,
    )
    trainer = make_trainer(KTOTrainer, cfg, model, args, data.train, data.eval, tokenizer, ref_model=None)
    return train_and_save(trainer, cfg, last, tokenizer, source, [data.fingerprint], has_eval=data.eval is not None)
