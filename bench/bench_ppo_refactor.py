"""PPO before vs after issue 17's refactor (shared ``align.logprobs``, typed ``Rollout``,
advantages once), same process, same run: seconds per update and the first update's numbers.

    git show 1a7f911:align/ppo.py > /tmp/_ppo_before.py      # the baseline: PPO before the refactor
    python bench/bench_ppo_refactor.py --old /tmp/_ppo_before.py [--updates 5] [--batch 8] [--mini 8]
        [--epochs 4] [--new-tokens 32] [--reps 2] [--model smollm2-135m]

The two versions alternate (old, new, old, new ...) so that a machine's load drifts over both.
Both: the same prompts (HH harmless), the same seed, the same reward (``tests.align.test_ppo:the_count``,
a Python function, so the reward model's cost does not hide PPO's), shared value head, fixed beta.
Seconds per update: the median over updates 2..N (the first warms up), from metrics.jsonl's
``update_s``. Writes bench/results/ppo-refactor.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _prompts(n: int) -> Path:
    from align.config import DataConfig
    from align.data import load_data

    rows = load_data(DataConfig(path=str(REPO / "data" / "hh-rlhf" / "harmless.jsonl.gz"), eval_size=0,
                                max_rows=n)).train
    f = Path(tempfile.mkdtemp()) / "prompts.jsonl"
    f.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))
    return f


def _settings(a, data: Path, out: Path) -> tuple[dict, dict]:
    """(old layout, new layout) of one config."""
    ppo = dict(batch_size=a.batch, mini_batch_size=a.mini, ppo_epochs=a.epochs)
    common = dict(model=a.model, output_dir=str(out), seed=42, data=dict(path=str(data), eval_size=0),
                  reward="tests.align.test_ppo:the_count", updates=a.updates,
                  kl=dict(beta=0.05, adaptive=False), rollout=dict(max_new_tokens=a.new_tokens, temperature=0.7),
                  sample_every=1000)
    training = dict(learning_rate=3e-6, save_steps=1000, logging_steps=1)
    old = {**common, "ppo": {**ppo, "learning_rate": training["learning_rate"]}, "save_steps": 1000, "logging_steps": 1}
    new = {**common, "ppo": ppo, "training": training}
    return old, new


def run(module, layout: dict) -> dict:
    from align.training import read_metrics

    cfg = module.PPOStageConfig.model_validate(layout)
    started = time.perf_counter()
    module.run_ppo(cfg)
    wall = time.perf_counter() - started
    recs = read_metrics(layout["output_dir"])
    return {"wall_s": wall, "update_s": [r["update_s"] for r in recs], "rollout_s": [r["rollout_s"] for r in recs],
            "score": [r["score"] for r in recs], "kl": [r["kl"] for r in recs],
            "policy_loss": [r["policy_loss"] for r in recs]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="align/ppo.py before the refactor (git show 1a7f911:align/ppo.py)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--updates", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--mini", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()

    import align.ppo as new_module

    spec = importlib.util.spec_from_file_location("ppo_before_refactor", a.old)
    old_module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = old_module  # dataclasses look their module up there
    spec.loader.exec_module(old_module)
    data = _prompts(a.batch * a.updates)
    rows = {"old": [], "new": []}
    out = REPO / "bench" / "results" / "ppo-refactor.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for rep in range(a.reps):
        for name, module in (("old", old_module), ("new", new_module)):
            run_dir = Path(tempfile.mkdtemp()) / f"{name}-{rep}"
            old_layout, new_layout = _settings(a, data, run_dir)
            rows[name].append(run(module, old_layout if name == "old" else new_layout))
            print(name, rep, f"{statistics.median(rows[name][-1]['update_s'][1:]):.3f} s/update", flush=True)
            result = summary(a, rows)  # after every run, so that a cut-short benchmark keeps what it measured
            out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


def summary(a, rows: dict) -> dict:
    import torch

    med = {k: statistics.median(u for r in v for u in r["update_s"][1:]) for k, v in rows.items() if v}
    result = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "args": vars(a), "median_update_s": med, "runs": rows}
    if rows["old"] and rows["new"]:
        result["ratio_new_over_old"] = med["new"] / med["old"]
        result["first_update_abs_diff"] = {k: abs(rows["old"][0][k][0] - rows["new"][0][k][0]) for k in ("score", "kl")}
    return result

if __name__ == "__main__":
    main()
