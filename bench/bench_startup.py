"""Time from ``python -m serve`` (what ``make chat`` runs) to a served page: first start vs later starts.

First start = an empty ``KEEL_CACHE_DIR``, as on a fresh clone: the embedded model is converted from
its GGUF and the default knowledge base is built. Later starts reuse that cache. Each start is a
fresh process, polled every 0.5 s until the page answers HTTP 200; then it is stopped.

    OMP_NUM_THREADS=1 python bench/bench_startup.py --later 2 --out bench/results/startup.json
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_once(env: dict, timeout: float) -> dict:
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "serve", "--port", str(port), "--feedback-db", "none"], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    served = None
    try:
        while time.time() - t0 < timeout and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    if r.status == 200:
                        served = time.time() - t0
                        break
            except OSError:
                pass
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    text = Path(log.name).read_text()
    return {"seconds_to_page": round(served, 1) if served else None,
            "said": [line for line in text.splitlines() if line.startswith("[keel]")]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--later", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--out", default="bench/results/startup.json")
    a = p.parse_args()
    cache = tempfile.mkdtemp(prefix="keel-bench-cache-")
    env = dict(os.environ, KEEL_CACHE_DIR=cache, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    results = {"first": start_once(env, a.timeout)}
    print("first:", results["first"], flush=True)
    results["later"] = [start_once(env, a.timeout) for _ in range(a.later)]
    print("later:", results["later"], flush=True)
    later = [r["seconds_to_page"] for r in results["later"] if r["seconds_to_page"]]
    if results["first"]["seconds_to_page"] and later:
        results["ratio_first_over_later"] = round(results["first"]["seconds_to_page"] / (sum(later) / len(later)), 1)
    results["load_avg"] = os.getloadavg()
    Path(a.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
