"""Constitutional AI on CPU: rows per minute, how often the judge prefers the revision, and whether
an RM trained on the RLAIF pairs ranks the human HH harmless pairs better than chance.

    python bench/bench_cai.py [--prompts 48] [--rm-steps 30] [--eval-pairs 400] [--reuse]

``--reuse`` keeps what an earlier run left in runs/bench/cai (the generated data, the trained RM)
and only redoes the missing parts.

1. ``align cai`` with configs/cai.yaml on ``--prompts`` HH harmless prompts (embedded model, one
   critique-revision round, the policy as judge, both orders).
2. ``align rm`` on the judged pairs (configs/rm.yaml, ``--rm-steps`` steps).
3. Pairwise accuracy on ``--eval-pairs`` human-labelled HH harmless pairs of the RLAIF RM against
   two baselines in the same run: chance (0.5) and the same backbone with an untrained head.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    from align.cai import CAIStageConfig, run_cai
    from align.config import DataConfig, load_config
    from align.data import load_data
    from align.rewards import RewardModelScorer
    from align.rm import RMStageConfig, evaluate_pairs, run_rm

    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--rm-steps", type=int, default=30)
    ap.add_argument("--eval-pairs", type=int, default=400)
    ap.add_argument("--reuse", action="store_true", help="keep the data and RM of an earlier run")
    a = ap.parse_args()
    root = REPO / "runs" / "bench" / "cai"
    old = root / "data" / "summary.json"
    if a.reuse and old.exists() and json.loads(old.read_text()).get("rows", 0) >= a.prompts:
        cai = root / "data"
    else:
        if not a.reuse:
            shutil.rmtree(root, ignore_errors=True)
        cai = run_cai(load_config(CAIStageConfig, REPO / "configs" / "cai.yaml",
                                  ["--output_dir", str(root / "data"), "--data.max_rows", str(a.prompts)]))
    summary = json.loads((cai / "summary.json").read_text())
    result = {"cai": summary}
    if summary.get("pairs", 0) >= 8:
        rm = root / "rm" / "model"
        if not (a.reuse and (rm / "keel.json").exists()):
            rm = run_rm(load_config(RMStageConfig, REPO / "configs" / "rm.yaml", [
                "--output_dir", str(root / "rm"), "--data.path", str(cai / "pairs.jsonl"), "--data.eval_size", "0",
                "--training.max_steps", str(a.rm_steps), "--training.save_steps", "1000",
                "--training.eval_steps", "1000"]))
        # the last rows: their prompts are not among the first --prompts rows that CAI answered
        human = load_data(DataConfig(path=str(REPO / "data" / "hh-rlhf" / "harmless.jsonl.gz"), eval_size=0)).train
        human = human.select(range(len(human) - a.eval_pairs, len(human)))
        result["rlaif_rm_on_human_pairs"] = evaluate_pairs(RewardModelScorer(str(rm), batch_size=16), human, 256)
        result["untrained_head_on_human_pairs"] = evaluate_pairs(RewardModelScorer("smollm2-135m", batch_size=16),
                                                                 human, 256)
        for k in ("rlaif_rm_on_human_pairs", "untrained_head_on_human_pairs"):
            result[k] = {x: result[k][x] for x in ("pairs", "accuracy", "mean_margin", "ece")}
    print(json.dumps(result, indent=2))
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "cai.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
