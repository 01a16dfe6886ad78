"""Run one ``python -m align STAGE ...`` in this process and report its speed and peak GPU memory.

    python bench/gpu_stage.py NAME RESULT.json STAGE --config FILE --output_dir DIR [--any.field value ...]

Used by bench/gpu_check.sh. Seconds per step come from the run's metrics.jsonl (logged every
step): the median gap between consecutive steps' timestamps, so start-up and the first (warm-up)
step do not count; PPO uses its own per-update ``update_s`` (median, first update dropped); CAI,
which has no steps, reports seconds per prompt. Peak memory is PyTorch's allocator peak in this
process (``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``); vLLM colocated in the
same process allocates through it too. Prints one line and writes RESULT.json.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's align, not an installed one


def _seconds_per_step(stage: str, out: Path) -> tuple[float | None, int]:
    from align.training import read_metrics

    if stage == "cai":
        rows = (out / "cai.jsonl").read_text().splitlines() if (out / "cai.jsonl").is_file() else []
        return None, len(rows)
    try:
        recs = read_metrics(out)
    except Exception:
        return None, 0
    if stage == "ppo":
        times = [r["update_s"] for r in recs if "update_s" in r][1:]
        return (statistics.median(times) if times else None), len(recs)
    by_step: dict[int, float] = {}
    for r in recs:
        if "loss" in r and isinstance(r.get("step"), int):
            by_step.setdefault(r["step"], r["time"])
    steps = sorted(by_step)
    gaps = [(by_step[b] - by_step[a]) / (b - a) for a, b in zip(steps[1:], steps[2:])]
    return (statistics.median(gaps) if gaps else None), (steps[-1] if steps else 0)


def main() -> int:
    name, result, stage, argv = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
    import torch

    from align.cli import main as align_main

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        rc = align_main([stage, *argv])
    except Exception as e:  # report the failure in the table, keep going with the next stage
        print(f"[gpu_stage] {name}: {type(e).__name__}: {e}", file=sys.stderr)
        rc = 1
    wall = time.perf_counter() - started
    out = Path(argv[argv.index("--output_dir") + 1])
    per_step, steps = _seconds_per_step(stage, out)
    if stage == "cai" and steps:
        per_step = wall / steps
    rec = {"name": name, "stage": stage, "rc": rc, "wall_s": round(wall, 1), "steps": steps,
           "s_per_step" if stage != "cai" else "s_per_prompt": round(per_step, 4) if per_step else None,
           "peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
           "peak_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20) if cuda else None,
           "device": torch.cuda.get_device_name(0) if cuda else "cpu", "args": argv}
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(rec, indent=2))
    unit = "s/prompt" if stage == "cai" else "s/step"
    print(f"[gpu_stage] {name:<12} rc {rc}  {steps:>4} {'rows' if stage == 'cai' else 'steps'}  "
          f"{rec.get('s_per_step', rec.get('s_per_prompt'))} {unit}  peak {rec['peak_allocated_mib']} MiB allocated / "
          f"{rec['peak_reserved_mib']} MiB reserved  wall {rec['wall_s']} s", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
