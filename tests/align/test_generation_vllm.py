"""CAI's generation and the eval commands' generation on the vLLM engine (``engine: vllm``,
``--engine vllm``) give exactly the transformers engine's greedy text, on vLLM's CPU build, in
one process with vLLM (tests/align/vllm_generation_check.py, run with .venv-vllm's Python).
Marked ``vllm``: ``.ci/run`` runs it after building that venv; ``pytest -m vllm`` here.

Covered: a CAI run (answers, critiques, revisions, the judge's written verdicts) with the
engine reading a checkpoint folder; GSM8K answers and win-rate answers of a LoRA adapter (the
engine loaded with its merged weights) and of its parent (a second engine, built and closed
inside the win-rate suite). Not covered on a CPU: bf16, CUDA graphs, ``gpu_memory_utilization``."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.align.test_ppo import PROMPTS
from tests.align.test_ppo_vllm import REPO, pytestmark, vllm_python, vllm_tiny_model  # noqa: F401 (fixtures)
from tests.conftest import write_jsonl


def test_cai_and_eval_generation_on_vllm_equal_the_transformers_engine(vllm_python, vllm_tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS[:4])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(vllm_python), "-m", "tests.align.vllm_generation_check", str(vllm_tiny_model),
                           str(data), str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n[vllm-generation] CAI transformers {res['cai_transformers_s']} s, vLLM {res['cai_vllm_s']} s; "
          f"adapter engine built in {res['adapter_engine_s']} s; whole check {res['total_s']} s")
    # CAI: the same rows (answers, critiques, revisions) and the same judged pairs
    assert res["cai_rows"] == 4 and res["cai_nonempty_answers"] > 0 and res["cai_sample"]
    assert res["cai_equal"] and res["cai_pairs_equal"] and res["cai_judgement_outcomes_equal"]
    assert res["cai_judgements"][0] == res["cai_judgements"][1] > 0  # the judge (generate mode) ran on both
    # eval: an adapter's engine (merged weights) and its parent's (read from the folder)
    assert res["adapter_kind"] == "adapter" and res["engines"] == ["transformers", "vllm"]
    assert res["gsm8k_answers_equal"] and res["gsm8k_sample"]
    assert res["adapter_changes_answers"]  # the adapter matters, so equality checks its weights
    assert res["winrate_checkpoint_equal"] and res["winrate_parent_equal"]
    assert res["closed"]
