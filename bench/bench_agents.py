"""Agent success rates: the embedded default model against a tool-use SFT checkpoint, same run.

    python -m agents make-data data/gsm8k/train_sample.jsonl --out runs/data/gsm8k_react.jsonl
    python -m align sft --config configs/sft-tools.yaml
    python bench/bench_agents.py --checkpoint runs/sft-tools --n 200

    # or one process per model, one CPU thread each (what bench/RESULTS.md's figures used), then the table:
    OMP_NUM_THREADS=1 python bench/bench_agents.py --baseline smollm2-135m --checkpoint smollm2-135m --n 200 --batch 16 &
    OMP_NUM_THREADS=1 python bench/bench_agents.py --baseline runs/sft-tools --checkpoint runs/sft-tools --n 200 --batch 16
    python bench/bench_agents.py --checkpoint runs/sft-tools --from-results

Tasks: 200 seeded arithmetic problems and the 200 held-out GSM8K problems in
data/gsm8k/heldout.jsonl (never read by the SFT configs). Greedy decoding, text ReAct format, the
same step limits and dtype for both models, ``--batch`` tasks batched at a time (default 8).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from agents.evaluate import arith_tasks, build_agent, evaluate, gsm8k_tasks

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default="runs/sft-tools")
    p.add_argument("--baseline", default="smollm2-135m")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--tasks", default="arith,gsm8k")
    p.add_argument("--max-steps", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--batch", type=int, default=8, help="tasks run at once, batched into one generate call")
    p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU) or bfloat16")
    p.add_argument("--from-results", action="store_true",
                   help="run nothing: print the table (and rewrite agents.json) from "
                        "bench/results/agents-<model>-<set>.json, for models evaluated in separate processes")
    a = p.parse_args()
    if a.from_results:
        rows = []
        for task_set in a.tasks.split(","):
            for model in dict.fromkeys((a.baseline, a.checkpoint)):
                path = REPO / "bench" / "results" / f"agents-{Path(model).name}-{task_set}.json"
                if not path.is_file():
                    raise SystemExit(f"{path}: no saved result for {model} on {task_set}")
                report = json.loads(path.read_text())
                rows.append({"model": model, "task_set": task_set,
                             **{k: v for k, v in report.items() if k != "records"}})
        (REPO / "bench" / "results" / "agents.json").write_text(json.dumps(rows, indent=2))
        print_table(rows)
        return
    results = []
    agents = {model: build_agent(model, a.max_steps, a.max_new_tokens, batch=a.batch, dtype=a.dtype)
              for model in (a.baseline, a.checkpoint)}
    # task sets outermost: a run cut short still compares both models on the sets it finished
    for task_set in a.tasks.split(","):
        for model, agent in agents.items():
            tasks = arith_tasks(a.n, seed=0) if task_set == "arith" else gsm8k_tasks(a.n)
            report = evaluate(agent, tasks, workers=a.batch)
            row = {"model": model, "task_set": task_set, **{k: v for k, v in report.items() if k != "records"}}
            results.append(row)
            print(json.dumps(row), flush=True)
            (REPO / "bench" / "results").mkdir(exist_ok=True)
            (REPO / "bench" / "results" / f"agents-{Path(model).name}-{task_set}.json").write_text(
                json.dumps(report, indent=2))
            (REPO / "bench" / "results" / "agents.json").write_text(json.dumps(results, indent=2))
    print_table(results)


def print_table(results: list[dict]) -> None:
    print("\n| model | tasks | success | answered | mean steps | tool calls/task | tool-error rate | format errors/task | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['task_set']} ({r['tasks']}) | {r['success_rate']:.3f} | "
              f"{r['answered_rate']:.3f} | {r['mean_steps']:.2f} | {r['tool_calls_per_task']:.2f} | "
              f"{r['tool_error_rate']:.3f} | {r['parse_errors_per_task']:.2f} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
