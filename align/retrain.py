"""``python -m align retrain --from-feedback DB``: close the loop from the app's feedback to a new checkpoint.

Exports the feedback database (the app's SQLite file) to TRL datasets inside the new run folder,
then runs the configured preference stage on them: KTO on thumbs up/down (default), DPO on pairs
from edits and regenerates. The model defaults to the checkpoint that most of the feedback was
given on, so the new checkpoint's manifest names it as parent and the app can switch to it.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from align.config import load_config, read_yaml_file
from align.errors import ConfigError, DataError

DATASET_FOR_STAGE = {"kto": "kto.jsonl", "dpo": "preference.jsonl"}
MIN_ROWS = 8


def retrain(db: str, config: str | None, overrides: list[str], resume: bool = False) -> Path:
    from serve.feedback import FeedbackStore, export_feedback  # the app owns the database format

    config = config or "configs/kto.yaml"
    loaded = read_yaml_file(config) or {}
    stage = loaded.get("stage") if isinstance(loaded, dict) else None
    if stage not in DATASET_FOR_STAGE:
        raise ConfigError(f"{config}: stage {stage!r} cannot train on feedback; use a {' or '.join(DATASET_FOR_STAGE)} config")
    if not Path(db).is_file():
        raise DataError(f"{db}: no feedback database here (the app writes runs/feedback.db by default)")

    given = {o.split("=")[0].lstrip("-") for o in overrides if o.startswith("--")}
    out = Path(_value(overrides, "output_dir") or f"runs/{stage}-feedback-{time.strftime('%Y%m%d-%H%M%S')}")
    summary = export_feedback(db, out / "feedback")
    rows = summary["unpaired_rows"] if stage == "kto" else summary["pairs"]
    if rows < MIN_ROWS:
        raise DataError(f"{db}: only {rows} {'rated answers' if stage == 'kto' else 'preference pairs'} so far; "
                        f"{stage} needs at least {MIN_ROWS}. Collect more feedback in the app "
                        f"({'edits and regenerates make pairs' if stage == 'dpo' else 'thumbs up and down'}).")
    extra = ["--data.path", str(out / "feedback" / DATASET_FOR_STAGE[stage]), "--output_dir", str(out)]
    if "model" not in given:
        store = FeedbackStore(db)
        ckpts = Counter(f["checkpoint_id"] for f in store.feedback())
        store.close()
        extra += ["--model", ckpts.most_common(1)[0][0]]
    if "data.eval_size" not in given and "data.eval_fraction" not in given:
        extra += ["--data.eval_size", str(max(2, rows // 10))]
    module = __import__(f"align.{stage}", fromlist=["x"])
    cfg_cls = getattr(module, f"{stage.upper()}StageConfig")
    cfg = load_config(cfg_cls, config, [*extra, *overrides])  # the user's flags win
    return getattr(module, f"run_{stage}")(cfg, resume=resume)


def _value(overrides: list[str], key: str) -> str | None:
    for i, o in enumerate(overrides):
        if o == f"--{key}" and i + 1 < len(overrides):
            return overrides[i + 1]
        if o.startswith(f"--{key}="):
            return o.split("=", 1)[1]
    return None
