"""The memory allocator under CPU LoRA SFT: glibc vs jemalloc settings, same run, same steps.

Each setting trains the same config for ``--steps`` steps in a fresh process (nothing saved) and
reports seconds per step (the steps after the first logged one), kernel CPU share, minor page
faults per second and peak resident memory (``getrusage`` of the child). Settings run one after
another in one invocation, so they share the machine's load; the first (glibc) is the baseline.

    python bench/bench_alloc.py [--config configs/agent-sft-continue-v5.yaml] [--steps 6]
        # -> bench/results/alloc.json

Needs ``libjemalloc2`` (Debian) for the jemalloc rows; without it they are skipped with a message.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JEMALLOC = next((p for p in ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                             "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2") if os.path.exists(p)), None)
SETTINGS = {  # name -> MALLOC_CONF (None: glibc)
    "glibc": None,
    "jemalloc keep dirty 1 s, never return muzzy (MADV_FREE)": "dirty_decay_ms:1000,muzzy_decay_ms:-1",
    "jemalloc never return (dirty -1, muzzy -1)": "dirty_decay_ms:-1,muzzy_decay_ms:-1",
}


def run(name: str, conf: str | None, config: str, steps: int) -> dict:
    env = dict(os.environ)
    if conf is not None:
        if JEMALLOC is None:
            return {"setting": name, "skipped": "libjemalloc.so.2 not installed"}
        env["LD_PRELOAD"] = JEMALLOC
        env["MALLOC_CONF"] = conf
    out = Path(tempfile.mkdtemp(prefix="keel-alloc-"))
    cmd = [sys.executable, "-m", "align", "sft", "--config", config, "--output_dir", str(out),
           "--training.max_steps", str(steps), "--training.logging_steps", "1",
           "--training.save_steps", "100000", "--training.eval_steps", "100000"]
    t0 = time.time()
    with open(out / "stderr.log", "w") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (RUSAGE_CHILDREN is a max over all)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    wall = time.time() - t0
    if proc.returncode != 0:
        return {"setting": name, "failed": proc.returncode,
                "stderr_tail": (out / "stderr.log").read_text()[-2000:]}
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in logged if "loss" in r and "time" in r]
    per_step = (times[-1] - times[0]) / (len(times) - 1)  # steps 2..N: the first carries warm-up
    user, sys_ = usage.ru_utime, usage.ru_stime
    return {"setting": name, "malloc_conf": conf, "s_per_step": round(per_step, 2),
            "kernel_cpu_share": round(sys_ / (user + sys_), 3),
            "minor_faults_per_s": round(usage.ru_minflt / wall),
            "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2), "wall_s": round(wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/agent-sft-continue-v5.yaml")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "alloc.json"))
    a = p.parse_args()
    rows = []
    for name, conf in SETTINGS.items():
        row = run(name, conf, a.config, a.steps)
        print(json.dumps(row), flush=True)
        rows.append(row)
    base = rows[0].get("s_per_step")
    for r in rows:
        if base and r.get("s_per_step"):
            r["vs_glibc"] = round(r["s_per_step"] / base, 2)
    Path(a.out).write_text(json.dumps({"config": a.config, "steps": a.steps, "rows": rows}, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
