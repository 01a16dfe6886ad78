"""The default agent on a GPU, for choosing between adapters: arith (test split, 200), harmful (50),
plain (50), follow-up arithmetic (100, a second turn after an answered problem), blind arithmetic (200, eight
templates written after keel-agent v3 was trained), with bench_default_agent.py's task sets and success rules (the app's tools and prompt, grammar-constrained,
max_steps 4, 256 new tokens, greedy, fp32, forced final answer), batched 64 at a time.

The search tool gets an empty retriever, so this runs where FAISS and the embedding model are not
installed; the knowledge-base set is left to bench_default_agent.py. On the same tasks and adapter it
gave the same arithmetic success as the CPU benchmark (0.82 and 0.695 for the two adapters).

    python bench/default_agent_gpu_eval.py runs/keel-agent-v2 keel-agent   # DEVICE=cpu QUICK_N=4 for a smoke run; SETS=followup,plain to choose sets
"""
from __future__ import annotations

import collections
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor


class NoRetriever:
    """The search tool's retriever where no index can be opened: every search finds nothing."""

    def search(self, query, k=3):
        return []


def main(ref: str) -> dict:
    from agents.agent import ReActAgent
    from agents.batching import BatchedLLM
    from agents.tools import default_tools
    from align.models import load_policy
    from bench_default_agent import score, tasks_for  # the CPU benchmark's task sets and success rules

    n = int(os.environ.get("QUICK_N", "0"))
    model, tok, _ = load_policy(ref, device=os.environ.get("DEVICE", "cuda"), dtype="float32")
    agent = ReActAgent(BatchedLLM(model, tok, max_batch=64), default_tools(NoRetriever()), max_steps=4,
                       max_new_tokens=256, format="text", force_final_answer=True, constrained=True)
    out: dict = {"ref": ref}
    only = os.environ.get("SETS", "").split(",") if os.environ.get("SETS") else None
    for kind, size in (("arith", 200), ("followup", 100), ("harmful", 50), ("plain", 50), ("arith_blind", 200)):
        if only and kind not in only:
            continue
        tasks = tasks_for(kind, n or size)
        started = time.time()
        with ThreadPoolExecutor(64) as pool:
            traces = list(pool.map(lambda t: agent.run(t["question"], t.get("history")), tasks))
        ok_by, total_by = collections.Counter(), collections.Counter()
        records = [score(task, trace) for task, trace in zip(tasks, traces)]
        for task, record in zip(tasks, records):
            key = task.get("template", kind)
            total_by[key] += 1
            ok_by[key] += record["ok"]
        out[kind] = {"success": sum(ok_by.values()) / len(tasks),
                     "format_errors": sum(r["format_errors"] for r in records),
                     "s": round(time.time() - started, 1), "per": {k: f"{ok_by[k]}/{total_by[k]}" for k in total_by}}
        print(kind, json.dumps(out[kind]), flush=True)
    print("RESULT", json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    for ref in sys.argv[1:]:  # several adapters: one after another in this process, same tasks
        main(ref)
