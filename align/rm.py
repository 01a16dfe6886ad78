"""Stage 2, Bradley-Terry reward models on TRL's RewardTrainer; ensembles; ``rm-eval``.

The RM reads the hidden state of the last token through a linear head (a one-label sequence
classifier) and is trained with -log sigmoid(r_chosen - r_rejected). Pairs are tokenised by
``align.rewards.rm_input_ids`` before they reach the trainer, so training and scoring share one
tokenisation; pairs too long for ``max_length`` lose their oldest prompt turns instead of being
silently filtered (TRL's default), and the ones that still do not fit are counted.

Evaluation (during training: TRL's eval accuracy and margin; at the end and in ``rm-eval``):
pairwise accuracy, mean margin, and calibration: accuracy per |margin| bucket against the
Bradley-Terry probability sigmoid(|margin|) the model claims, with the expected calibration error.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from align.config import Strict, TRLStageConfig
from align.data import load_data
from align.errors import DataError
from align.rewards import ENSEMBLE_FILE, EnsembleScorer, RewardModelScorer, combine_scores, rm_input_ids
from align.models import training_dtype
from align.training import build_trainer_config, make_trainer, prepare_run_dir, train_and_save, trainer_arguments

MARGIN_BUCKETS = (0.0, 0.5, 1.0, 2.0, 4.0, math.inf)


class EnsembleSettings(Strict):
    """An ensemble of reward models (``ensemble:``): how many, whether each trains on a bootstrap
    resample of the pairs, and how their scores combine."""

    size: int = Field(1, ge=1, description="number of RMs to train; above 1 trains an ensemble")
    bootstrap: bool = Field(False, description="each member trains on a resample (with replacement) of the pairs")
    combine: Literal["mean", "min", "mean_minus_std"] = "mean"
    k: float = Field(1.0, ge=0, description="std multiplier for mean_minus_std")


class RMStageConfig(TRLStageConfig):
    """``python -m align rm``'s config: a Bradley-Terry reward model (TRL RewardTrainer) on preference pairs."""

    stage: Literal["rm"] = "rm"
    output_dir: str = "runs/rm"
    center_rewards_coefficient: float | None = Field(
        None, description="adds c * mean((r_chosen + r_rejected)^2) to keep scores near zero")
    ensemble: EnsembleSettings = Field(default_factory=EnsembleSettings)


def tokenize_pairs(dataset, tokenizer, max_length: int) -> tuple[Any, dict[str, int]]:
    """(prompt, chosen, rejected) rows -> (chosen_ids, rejected_ids) rows, with counts of what was shortened."""
    import datasets

    rows, shortened, dropped = [], 0, 0
    for r in dataset:
        prompt = r.get("prompt") or []
        full_c = rm_input_ids(tokenizer, prompt, r["chosen"])
        full_r = rm_input_ids(tokenizer, prompt, r["rejected"])
        c = rm_input_ids(tokenizer, prompt, r["chosen"], max_length, strict=True)
        j = rm_input_ids(tokenizer, prompt, r["rejected"], max_length, strict=True)
        if c is None or j is None:
            dropped += 1
            continue
        shortened += int(len(c) < len(full_c) or len(j) < len(full_r))
        rows.append({"chosen_ids": c, "rejected_ids": j})
    return datasets.Dataset.from_list(rows), {"pairs": len(dataset), "prompts_shortened": shortened,
                                              "dropped_too_long": dropped}


def pair_metrics(chosen: list[float], rejected: list[float]) -> dict[str, Any]:
    """Pairwise accuracy, mean margin, and calibration of the Bradley-Terry probability."""
    margins = [c - r for c, r in zip(chosen, rejected)]
    n = len(margins)
    if n == 0:
        raise DataError("no preference pairs to evaluate")
    buckets, ece = [], 0.0
    for lo, hi in zip(MARGIN_BUCKETS, MARGIN_BUCKETS[1:]):
        inside = [m for m in margins if lo <= abs(m) < hi]
        if not inside:
            continue
        accuracy = sum(m > 0 for m in inside) / len(inside)
        claimed = sum(1 / (1 + math.exp(-abs(m))) for m in inside) / len(inside)
        ece += len(inside) / n * abs(accuracy - claimed)
        buckets.append({"abs_margin": f"[{lo:g}, {hi:g})", "pairs": len(inside), "accuracy": accuracy,
                        "bt_probability": claimed})
    return {"pairs": n, "accuracy": sum(m > 0 for m in margins) / n, "ties": sum(m == 0 for m in margins),
            "mean_margin": sum(margins) / n, "mean_chosen": sum(chosen) / n, "mean_rejected": sum(rejected) / n,
            "ece": ece, "calibration": buckets}


def evaluate_pairs(scorer, dataset, max_length: int) -> dict[str, Any]:
    """Score every pair of a preference dataset (TRL format) with a reward function."""
    prompts = [r.get("prompt") or [] for r in dataset]
    n = len(prompts)
    # One call for both sides: one progress bar, and batches formed across all 2n answers.
    scores = scorer(prompts + prompts, [r["chosen"] for r in dataset] + [r["rejected"] for r in dataset])
    return pair_metrics(scores[:n], scores[n:])


def _train_one(cfg: RMStageConfig, resume: bool, data, seed_offset: int = 0) -> Path:
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    from align.models import load_reward_model

    last = prepare_run_dir(cfg, resume)
    set_seed(cfg.seed + seed_offset)
    model, tokenizer, source = load_reward_model(cfg.model, device="cpu", dtype=training_dtype(cfg.dtype))
    model.train()
    train, train_stats = tokenize_pairs(data.train, tokenizer, cfg.training.max_length)
    evaluation, eval_stats = (tokenize_pairs(data.eval, tokenizer, cfg.training.max_length)
                              if data.eval is not None else (None, None))
    if len(train) == 0:
        raise DataError(f"{cfg.data.path}: no training pair fits training.max_length={cfg.training.max_length}")
    fingerprint = dict(data.fingerprint, train_tokenized=train_stats, eval_tokenized=eval_stats)
    args = build_trainer_config(
        RewardConfig,
        **trainer_arguments(cfg, cfg.training, has_eval=evaluation is not None),
        max_length=cfg.training.max_length,
        center_rewards_coefficient=cfg.center_rewards_coefficient,
    )
    trainer = make_trainer(RewardTrainer, cfg, model, args, train, evaluation, tokenizer, peft_task="SEQ_CLS")
    # has_eval=False: no extra TRL evaluate at the end; the held-out split is scored once below
    # (accuracy, margin, calibration), and periodic TRL evals still run at eval_steps.
    out = train_and_save(trainer, cfg, last, tokenizer, source, [fingerprint], has_eval=False, model_kind="reward")
    if data.eval is not None and trainer.is_world_process_zero():
        held_out = evaluate_pairs(RewardModelScorer(str(out), batch_size=cfg.training.per_device_eval_batch_size),
                                  data.eval, cfg.training.max_length)
        _add_metrics(out, {"heldout": held_out})
    return out


def _add_metrics(checkpoint: Path, extra: dict[str, Any]) -> None:
    path = checkpoint / "keel.json"
    manifest = json.loads(path.read_text())
    manifest["metrics"].update(extra)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(path)


def run_rm(cfg: RMStageConfig, resume: bool = False) -> Path:
    """Train one RM (``output_dir/model``) or an ensemble (``output_dir/member-i/model`` + ``keel-ensemble.json``)."""
    data = load_data(cfg.data, accept=("preference",))
    if cfg.ensemble.size == 1:
        return _train_one(cfg, resume, data)
    import datasets

    from align.errors import KeelError

    root = Path(cfg.output_dir)
    if (root / ENSEMBLE_FILE).exists() and not resume:
        raise KeelError(f"{root} already holds an ensemble; pass --resume to continue it, or set --output_dir")
    members = []
    for i in range(cfg.ensemble.size):
        member_cfg = cfg.model_copy(update={"output_dir": str(root / f"member-{i}"), "seed": cfg.seed + i})
        member_data = data
        if cfg.ensemble.bootstrap:
            rng = random.Random(cfg.seed + i)
            rows = list(data.train)
            member_data = type(data)(train=datasets.Dataset.from_list([rng.choice(rows) for _ in rows]),
                                     eval=data.eval, fingerprint=dict(data.fingerprint, bootstrap_seed=cfg.seed + i))
        done = Path(member_cfg.output_dir) / "model" / "keel.json"
        if resume and done.is_file():
            members.append(done.parent)
            continue
        resume_member = resume and any(Path(member_cfg.output_dir).glob("checkpoint-*"))
        members.append(_train_one(member_cfg, resume_member, member_data))
    info = {"members": [str(m.relative_to(root)) for m in members], "combine": cfg.ensemble.combine,
            "k": cfg.ensemble.k, "bootstrap": cfg.ensemble.bootstrap}
    if data.eval is not None:
        scorer = EnsembleScorer([RewardModelScorer(str(m)) for m in members], cfg.ensemble.combine, cfg.ensemble.k)
        info["heldout"] = evaluate_pairs(scorer, data.eval, cfg.training.max_length)
        info["heldout_members"] = [json.loads((m / "keel.json").read_text())["metrics"].get("heldout", {}).get("accuracy")
                                   for m in members]
    (root / ENSEMBLE_FILE).write_text(json.dumps(info, indent=2))
    return root


def ensemble_combinations(scorer: EnsembleScorer, dataset, with_metrics: bool = False):
    """Accuracy of every combiner on one dataset, from one pass of member scores. ``with_metrics``:
    also return the full metrics of the ensemble's own combiner, from the same pass."""
    prompts = [r.get("prompt") or [] for r in dataset]
    n = len(prompts)
    both = scorer.member_scores(prompts + prompts, [r["chosen"] for r in dataset] + [r["rejected"] for r in dataset])
    chosen, rejected = both[:, :n], both[:, n:]
    out = {}
    for combine in ("mean", "min", "mean_minus_std"):
        out[combine] = pair_metrics(combine_scores(chosen, combine, scorer.k).tolist(),
                                    combine_scores(rejected, combine, scorer.k).tolist())["accuracy"]
    if not with_metrics:
        return out
    metrics = pair_metrics(combine_scores(chosen, scorer.combine, scorer.k).tolist(),
                           combine_scores(rejected, scorer.combine, scorer.k).tolist())
    return out, metrics


def format_table(metrics: dict[str, Any]) -> str:
    """RM evaluation metrics (accuracy, margin, ECE, calibration bins) as a Markdown table."""
    lines = [f"pairs {metrics['pairs']}   accuracy {metrics['accuracy']:.3f}   mean margin {metrics['mean_margin']:.3f}"
             f"   ECE {metrics['ece']:.3f}", "", "| abs margin | pairs | accuracy | BT probability |",
             "|---|---|---|---|"]
    for b in metrics["calibration"]:
        lines.append(f"| {b['abs_margin']} | {b['pairs']} | {b['accuracy']:.3f} | {b['bt_probability']:.3f} |")
    return "\n".join(lines)
