"""``python -m align plot RUN_DIR``: PNG curves of every metric in a run's metrics.jsonl."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from align.errors import KeelError
from align.training import read_metrics

_SKIP = {"step", "epoch", "time", "total_flos", "monitor/alert"}
_SKIP_SUFFIXES = ("_runtime", "_per_second")  # trainer bookkeeping, not learning curves


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Draw every learning curve of a run's metrics.jsonl (and the over-optimisation picture when
    the run has monitor records) as PNG files; ``out``: their folder (default: the run folder).
    Returns the files written. Raises KeelError when the run has no metrics.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        for k, v in r.items():
            if k in _SKIP or k.endswith(_SKIP_SUFFIXES) or isinstance(v, bool) or not isinstance(v, (int, float)) \
                    or not math.isfinite(v):
                continue
            series[k].append((r.get("step", 0), v))
    if not series:
        raise KeelError(f"{run_dir}: metrics.jsonl has no numeric metrics to plot")
    out_dir = Path(out) if out else run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(series)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        xs, ys = zip(*series[name])
        ax.plot(xs, ys, marker="." if len(xs) < 50 else None)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(run_dir.resolve().name)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = out_dir / "metrics.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths = [path]
    checks = [r for r in records if "monitor/gold" in r and "monitor/sqrt_kl" in r]
    if checks:
        paths.append(plot_overoptimisation(checks, out_dir / "overoptimisation.png", run_dir.resolve().name))
    return paths


def plot_overoptimisation(checks: list[dict], path: Path, title: str) -> Path:
    """Gold and proxy reward against sqrt(KL(policy || reference)), as in Gao et al. 2022."""
    import matplotlib.pyplot as plt

    d = [r["monitor/sqrt_kl"] for r in checks]
    fig, ax = plt.subplots(figsize=(6, 4))
    # points, not lines: KL need not grow monotonically from one check to the next
    ax.scatter(d, [r["monitor/proxy"] for r in checks], marker="o", label="proxy reward (optimised)")
    ax.scatter(d, [r["monitor/gold"] for r in checks], marker="s", label="gold reward")
    if len(checks) >= 3:
        import numpy as np

        for key, style in (("monitor/proxy", "-"), ("monitor/gold", "--")):
            order = np.argsort(d)
            xs, ys = np.array(d)[order], np.array([r[key] for r in checks])[order]
            fit = np.polyfit(xs, ys, 2) if len(set(xs.round(6))) >= 3 else np.polyfit(xs, ys, 1)
            grid = np.linspace(xs.min(), xs.max(), 50)
            ax.plot(grid, np.polyval(fit, grid), style, alpha=0.5, color="C0" if key == "monitor/proxy" else "C1")
    alerts = [r for r in checks if r.get("monitor/alert")]
    if alerts:
        ax.axvline(alerts[0]["monitor/sqrt_kl"], color="red", ls="--", alpha=0.6,
                   label=f"gold falls while proxy rises (step {alerts[0]['step']})")
    for r in checks[:: max(1, len(checks) // 6)]:
        ax.annotate(f"{r['step']}", (r["monitor/sqrt_kl"], r["monitor/gold"]), fontsize=7, alpha=0.6)
    ax.set_xlabel("sqrt(KL(policy || reference))  [nats^0.5]")
    ax.set_ylabel("mean reward on monitor prompts")
    ax.set_title(f"{title}: reward over-optimisation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
