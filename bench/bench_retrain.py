"""``align retrain --from-feedback`` on 20 rated answers: the old defaults against the new, same run.

The feedback database holds 20 answers served by ``keel-agent`` (the app's default) and rated in the
app's way (10 thumbs up, 10 down): the chosen and rejected answers of the first 10 bundled HH
harmless pairs, each served once and rated. Both runs are ``python -m align retrain`` subprocesses
under ``/usr/bin/time`` (wall time and peak resident memory).

- after: the defaults now (steps from the data, LoRA on CPU merged on save, micro-batches of 4).
- before: the old defaults, forced with flags (40 steps, batch 8, full fine-tune, lr 5e-7, eval and save at
  step 20). Run for ``--before-steps`` steps only (40 steps took ~35 min); the 40-step time is
  extrapolated from the measured time per step and said so.

Then checks the new checkpoint as the app would: the manifest names its parent, and
``ChatModel.switch`` loads it.

    OMP_NUM_THREADS=1 python bench/bench_retrain.py --out bench/results/retrain.json
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_db(path: Path, n: int = 20) -> None:
    from agents.agent import DEFAULT_SYSTEM_PROMPT
    from serve.feedback import FeedbackStore

    store = FeedbackStore(path)
    rows = []
    with gzip.open(REPO / "data" / "hh-rlhf" / "harmless.jsonl.gz", "rt") as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == n // 2:
                break
    for i, row in enumerate(rows):
        text = row["chosen"]
        prompt_text = text.split("\n\nAssistant:")[0].replace("\n\nHuman:", "").strip()
        prompt = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                  {"role": "user", "content": prompt_text}]
        for side, label in (("chosen", True), ("rejected", False)):
            answer = row[side].rsplit("\n\nAssistant:", 1)[-1].strip()
            session = f"bench-{i}-{side}"
            rid = store.add_response(session, "keel-agent", prompt, answer)
            store.add_feedback("rating", session_id=session, checkpoint_id="keel-agent", prompt=prompt,
                               completion=answer, label=label, response_id=rid)
    store.close()


def timed(cmd: list[str], env: dict) -> dict:
    start = time.time()
    proc = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *cmd], cwd=REPO, env=env, capture_output=True,
                          text=True)
    wall = time.time() - start
    m = re.search(r"TIME ([\d.]+) (\d+)", proc.stderr)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    plan = [line for line in proc.stdout.splitlines() if line.startswith("[keel]")]
    return {"wall_s": round(float(m.group(1)) if m else wall, 1), "peak_rss_mb": round(int(m.group(2)) / 1024) if m else None,
            "printed": plan}


def run_metrics(run: Path) -> dict:
    manifest = json.loads((run / "model" / "keel.json").read_text())
    return {"steps": manifest["metrics"].get("global_step"), "train_runtime_s": manifest["metrics"].get("train_runtime"),
            "parents": manifest["parents"], "lora": manifest["config"]["lora"]["enabled"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/results/retrain.json")
    p.add_argument("--before-steps", type=int, default=3)
    a = p.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    work = Path(tempfile.mkdtemp(prefix="keel-bench-retrain-"))
    db = work / "feedback.db"
    make_db(db)
    py = sys.executable
    results: dict = {"rows": 20, "threads": env["OMP_NUM_THREADS"], "load_avg_at_start": os.getloadavg()}

    after = timed([py, "-m", "align", "retrain", "--from-feedback", str(db), "--output_dir", str(work / "after")], env)
    after.update(run_metrics(work / "after"))
    results["after"] = after
    print("after:", json.dumps(after), flush=True)

    old = ["--training.max_steps", str(a.before_steps), "--lora.enabled", "false", "--training.learning_rate", "5e-7",
           "--training.per_device_train_batch_size", "8", "--training.gradient_accumulation_steps", "1",
           "--training.save_steps", "20", "--training.eval_steps", "20"]
    before = timed([py, "-m", "align", "retrain", "--from-feedback", str(db), "--output_dir", str(work / "before"), *old],
                   env)
    before.update(run_metrics(work / "before"))
    per_step = before["train_runtime_s"] / before["steps"]
    overhead = before["wall_s"] - before["train_runtime_s"]
    before["seconds_per_step"] = round(per_step, 1)
    before["extrapolated_40_steps_wall_s"] = round(overhead + 40 * per_step)
    results["before"] = before
    print("before:", json.dumps(before), flush=True)
    results["ratio_wall_before40_over_after"] = round(before["extrapolated_40_steps_wall_s"] / after["wall_s"], 2)

    # The app switches to it, and the manifest names the parent.
    from serve.chat import ChatModel, ChatSettings

    chat = ChatModel("keel-agent", ChatSettings(max_new_tokens=8, agent=False))
    t0 = time.time()
    chat.switch(str(work / "after"))
    results["switch_s"] = round(time.time() - t0, 1)
    results["switched_to"] = chat.short_name
    results["switched_parents"] = chat.source.manifest.parents
    results["load_avg_at_end"] = os.getloadavg()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
