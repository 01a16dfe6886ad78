"""Reward model on the shared HH harmless pairs, CPU: full fine-tuning vs LoRA, same run.

    python bench/bench_rm.py [--steps 120] [--batch 8] [--max-length 256]

Both runs: configs/rm.yaml, embedded SmolLM2-135M backbone, the same 200 held-out pairs (the
config's eval split, never trained on), the same seed and number of steps. Reports seconds per
step, wall time, and held-out pairwise accuracy / mean margin / ECE from the checkpoint's manifest.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from align.config import load_config
from align.rm import RMStageConfig, run_rm

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--lora-lr", type=float, default=2e-4)
    ap.add_argument("--out", default="runs/bench-rm")
    ap.add_argument("--only", choices=["full", "lora"])
    a = ap.parse_args()
    results = {}
    for name, extra in (("full", ["--training.learning_rate", str(a.lr)]),
                        ("lora", ["--lora.enabled", "true", "--training.learning_rate", str(a.lora_lr)])):
        if a.only and name != a.only:
            continue
        out = Path(a.out) / name
        shutil.rmtree(out, ignore_errors=True)
        cfg = load_config(RMStageConfig, REPO / "configs" / "rm.yaml", [
            "--output_dir", str(out), "--training.max_steps", str(a.steps), "--training.per_device_train_batch_size",
            str(a.batch), "--training.max_length", str(a.max_length), "--training.eval_steps", "1000000",
            "--training.save_steps", "1000000", "--training.logging_steps", "10", *extra])
        started = time.perf_counter()
        ckpt = run_rm(cfg)
        wall = time.perf_counter() - started
        manifest = json.loads((ckpt / "keel.json").read_text())
        runtime = manifest["metrics"].get("train_runtime")
        held = manifest["metrics"]["heldout"]
        results[name] = {"steps": a.steps, "batch": a.batch, "wall_s": wall,
                         "train_s_per_step": (runtime or wall) / a.steps,
                         "heldout_pairs": held["pairs"], "heldout_accuracy": held["accuracy"],
                         "heldout_mean_margin": held["mean_margin"], "heldout_ece": held["ece"],
                         "tokenized": manifest["data"][0].get("train_tokenized")}
        print(name, json.dumps(results[name]), flush=True)
    if "full" in results and "lora" in results:
        results["ratio_lora_over_full"] = {
            "s_per_step": results["lora"]["train_s_per_step"] / results["full"]["train_s_per_step"],
            "accuracy": results["lora"]["heldout_accuracy"] / results["full"]["heldout_accuracy"]}
        print(json.dumps(results["ratio_lora_over_full"]), flush=True)
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "rm.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
