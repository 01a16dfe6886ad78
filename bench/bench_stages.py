"""CPU seconds per optimisation step of every training stage, same run, same model.

    python bench/bench_stages.py [--steps 4] [--stages sft,rm,dpo,kto,grpo,ppo]

Each stage runs its shipped config (configs/<stage>.yaml) on the embedded SmolLM2-135M-Instruct
with ``--steps`` steps, fp32 on CPU, batch 8 (GRPO: 2 prompts x 4 generations; PPO: 8 prompts,
48 new tokens, 4 PPO epochs; PPO's reward model is the embedded backbone with a fresh head).
Reported: trainer runtime / steps (model loading and the final checkpoint write excluded), and
the ratio to SFT's seconds per step, the baseline in the same run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(stage: str, steps: int, out: Path) -> dict:
    from align.cli import STAGES
    from align.config import load_config
    from align.training import read_metrics

    module_name, cls_name, fn_name = STAGES[stage]
    module = __import__(module_name, fromlist=["x"])
    common = ["--output_dir", str(out)]
    if stage == "ppo":
        extra = ["--updates", str(steps), "--reward", "smollm2-135m", "--training.save_steps", "1000"]
    else:
        extra = ["--training.max_steps", str(steps), "--training.save_steps", "1000", "--training.eval_steps", "1000",
                 "--data.eval_size", "0", "--training.logging_steps", "1"]
        if stage in ("sft", "rm", "dpo", "kto"):
            extra += ["--training.per_device_train_batch_size", "8", "--training.gradient_accumulation_steps", "1"]
    cfg = load_config(getattr(module, cls_name), REPO / "configs" / f"{stage}.yaml", common + extra)
    started = time.perf_counter()
    ckpt = getattr(module, fn_name)(cfg)
    wall = time.perf_counter() - started
    if stage == "ppo":
        per_step = [r["update_s"] for r in read_metrics(out)]
        s_per_step = sum(per_step[1:]) / max(1, len(per_step) - 1)  # first update includes warm-up
    else:
        manifest = json.loads((Path(ckpt) / "keel.json").read_text())
        s_per_step = manifest["metrics"]["train_runtime"] / steps
    return {"stage": stage, "steps": steps, "s_per_step": s_per_step, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--stages", default="sft,rm,dpo,kto,grpo,ppo")
    a = ap.parse_args()
    root = REPO / "runs" / "bench" / "stages"
    rows = []
    for stage in a.stages.split(","):
        shutil.rmtree(root / stage, ignore_errors=True)
        row = run(stage, a.steps, root / stage)
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r for r in rows if r["stage"] == "sft"), rows[0])
    print("\n| stage | s/step | vs SFT |\n|---|---|---|")
    for r in rows:
        r["ratio_vs_sft"] = r["s_per_step"] / base["s_per_step"]
        print(f"| {r['stage']} | {r['s_per_step']:.1f} | {r['ratio_vs_sft']:.2f}x |")
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "stages.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
