"""Mean RM score and KL to the reference of several PPO runs on one figure (issue: PPO, "plot both").

    python bench/plot_ppo_runs.py RUN_DIR[=LABEL] ... --target 2.0 --out docs/img/ppo-hh-gpu.png

Each RUN_DIR holds the metrics.jsonl that ``python -m align ppo`` writes. Faint lines are the
per-update values, solid lines a 5-update running mean; the dashed line is the KL target.
``python -m align plot RUN_DIR`` draws every metric of one run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def running_mean(values: list[float], k: int = 5) -> list[float]:
    return [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]


def main() -> None:
    import matplotlib

    from align.training import read_metrics

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR=label")
    p.add_argument("--target", type=float, default=None, help="KL target to draw")
    p.add_argument("--out", default="ppo-runs.png")
    a = p.parse_args()
    fig, (ax_s, ax_k, ax_b) = plt.subplots(1, 3, figsize=(15, 4.2))
    for spec in a.runs:
        path, _, label = spec.partition("=")
        label = label or Path(path).name
        rows = [r for r in read_metrics(path) if "score" in r]
        steps = [r["step"] for r in rows]
        for ax, key in ((ax_s, "score"), (ax_k, "kl")):
            values = [r[key] for r in rows]
            line, = ax.plot(steps, running_mean(values), label=label)
            ax.plot(steps, values, color=line.get_color(), alpha=0.25, linewidth=0.8)
        ax_b.plot(steps, [r["beta"] for r in rows], label=label)
    if a.target is not None:
        ax_k.axhline(a.target, color="black", linestyle="--", linewidth=1, label=f"target {a.target:g}")
    for ax, title in ((ax_s, "mean RM score per update"), (ax_k, "KL to the reference (nats/response)"),
                      (ax_b, "beta (adaptive KL coefficient)")):
        ax.set_title(title)
        ax.set_xlabel("PPO update (64 prompts each)")
        ax.grid(alpha=0.3)
    ax_k.legend(fontsize=8)
    fig.tight_layout()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(a.out)


if __name__ == "__main__":
    main()
