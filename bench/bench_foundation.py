"""Foundation figures, each against its baseline in the same run.

1. Loading the embedded SmolLM2-135M: first load (GGUF de-quantisation + conversion, in an empty
   cache) vs a later load from the cached fp32 safetensors folder. Each load runs in a fresh process.
2. SFT training throughput on CPU: full fine-tuning vs LoRA, same data, steps and batch.

    python bench/bench_foundation.py [--steps 6] [--batch 4]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOAD_SNIPPET = (
    "import time; t=time.perf_counter(); from align.models import load_policy; "
    "load_policy('smollm2-135m'); print(time.perf_counter()-t)"
)


def timed_load(cache: str) -> float:
    env = dict(os.environ, KEEL_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", LOAD_SNIPPET], env=env, cwd=REPO, capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def sft_throughput(lora: bool, steps: int, batch: int, work: Path) -> dict:
    from align.config import load_config
    from align.sft import SFTStageConfig, run_sft
    from align.training import read_metrics

    out = work / ("lora" if lora else "full")
    cfg = load_config(SFTStageConfig, REPO / "configs" / "sft.yaml", [
        "--output_dir", str(out), "--data.eval_size", "0", "--training.max_steps", str(steps),
        "--training.per_device_train_batch_size", str(batch), "--training.logging_steps", "1",
        "--training.save_steps", str(steps), "--training.max_length", "256", "--lora.enabled", str(lora).lower()])
    run_sft(cfg)
    rows = read_metrics(out)
    tokens = max(r.get("num_tokens", 0) for r in rows)
    runtime = next(r["train_runtime"] for r in rows if "train_runtime" in r)
    return {"tokens": tokens, "seconds": runtime, "tokens_per_s": tokens / runtime}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=4)
    a = p.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory() as cache:
        first = timed_load(cache)
        cached = [timed_load(cache) for _ in range(2)]
    results["load"] = {"first_s": first, "cached_s": min(cached), "speedup": first / min(cached)}
    with tempfile.TemporaryDirectory() as work:
        full = sft_throughput(False, a.steps, a.batch, Path(work))
        lora = sft_throughput(True, a.steps, a.batch, Path(work))
    results["sft"] = {"full": full, "lora": lora, "lora_over_full": lora["tokens_per_s"] / full["tokens_per_s"],
                      "steps": a.steps, "batch": a.batch}
    print(json.dumps(results, indent=2))
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "foundation.json").write_text(json.dumps(results, indent=2))
    print(f"\n| load | seconds |\n|---|---|\n| first (convert) | {first:.1f} |\n| cached | {min(cached):.1f} |\n"
          f"| ratio first/cached | {results['load']['speedup']:.1f}x |")
    print(f"\n| SFT | tokens/s |\n|---|---|\n| full | {full['tokens_per_s']:.0f} |\n| LoRA r=16 | {lora['tokens_per_s']:.0f} |"
          f"\n| ratio LoRA/full | {results['sft']['lora_over_full']:.2f} |")


if __name__ == "__main__":
    main()
