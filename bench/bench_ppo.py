"""Keel's PPO against TRL 1.12's ``trl.experimental.ppo.PPOTrainer`` (the last TRL with a PPO), same run.

    python bench/bench_ppo.py [--epochs 1,4] [--prompts 64] [--batch 8] [--new-tokens 32]

TRL 1.12 goes into its own venv (``runs/bench/venv-trl112``; it shares this venv's torch and
transformers through a .pth file, and its own trl 1.12 comes first on the path). Every
(system, epochs) pair runs in a fresh process; the parent records wall seconds per PPO update
(rollout + evaluation + optimisation; model loading excluded) and the process's peak RSS.

Both sides: the embedded SmolLM2-135M-Instruct as policy, reference, reward model (a fresh random
head on each side, so their mean scores are not comparable) and value model; 64 HH harmless prompts, batch 8 (8 updates), 32 new tokens,
temperature 0.7, no top-k, stop at EOS, k1 KL with fixed beta 0.05, clip 0.2, value clip 0.2,
vf_coef 0.1, gamma 1, lambda 0.95, lr 3e-6, one minibatch of 8, fp32 on CPU, pad token
``<|endoftext|>`` (SmolLM2's ``<|im_end|>`` also ends turns). Keel runs twice: its default
(value head shared with the policy backbone) and with a separate value backbone as TRL has.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import site
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / "runs" / "bench" / "venv-trl112"
COMMON = dict(lr=3e-6, temperature=0.7, beta=0.05, clip=0.2, vclip=0.2, vf_coef=0.1, gamma=1.0, lam=0.95)


def prompts(n: int) -> list[list[dict]]:
    from align.config import DataConfig
    from align.data import load_data

    rows = load_data(DataConfig(path=str(REPO / "data" / "hh-rlhf" / "harmless.jsonl.gz"), eval_size=0,
                                max_rows=n)).train
    return [r["prompt"] for r in rows]


# ------------------------------------------------------------------------------------ workers
def worker_keel(a) -> dict:
    import tempfile

    from align.config import load_config
    from align.ppo import PPOStageConfig, run_ppo
    from align.training import read_metrics

    tmp = Path(tempfile.mkdtemp())
    data = tmp / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts(a.prompts)))
    cfg = load_config(PPOStageConfig, REPO / "configs" / "ppo.yaml", [
        "--output_dir", str(tmp / "run"), "--data.path", str(data), "--reward", "smollm2-135m",
        "--value_model", a.value_model, "--updates", str(a.prompts // a.batch),
        "--ppo.batch_size", str(a.batch), "--ppo.mini_batch_size", str(a.batch), "--ppo.ppo_epochs", str(a.epochs),
        "--training.learning_rate", str(COMMON["lr"]), "--ppo.clip_epsilon", str(COMMON["clip"]),
        "--ppo.value_clip", str(COMMON["vclip"]), "--ppo.vf_coef", str(COMMON["vf_coef"]),
        "--ppo.gamma", str(COMMON["gamma"]), "--ppo.lam", str(COMMON["lam"]), "--kl.adaptive", "false",
        "--kl.beta", str(COMMON["beta"]), "--kl.estimator", "k1", "--rollout.max_new_tokens", str(a.new_tokens),
        "--rollout.temperature", str(COMMON["temperature"]), "--training.save_steps", "1000", "--sample_every", "1000"])
    run_ppo(cfg)
    recs = read_metrics(tmp / "run")
    return {"update_s": [r["update_s"] for r in recs], "score": [r["score"] for r in recs]}


def worker_trl(a) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from align.embedded import ensure_converted

    assert trl.__version__.startswith("1.12"), trl.__version__
    path = str(ensure_converted("smollm2-135m"))
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = "<|endoftext|>"  # distinct from <|im_end|>, which ends turns (see docstring)
    tok.padding_side = "left"
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    for m in (policy, ref, reward, value):
        m.config.pad_token_id = tok.pad_token_id
    policy.generation_config.pad_token_id = tok.pad_token_id
    ids = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"][-256:]
           for p in prompts(a.prompts)]
    dataset = Dataset.from_dict({"input_ids": ids})
    args = PPOConfig(output_dir=str(REPO / "runs" / "bench" / "trl-ppo-out"), per_device_train_batch_size=a.batch,
                     gradient_accumulation_steps=1, num_mini_batches=1, total_episodes=a.prompts,
                     num_ppo_epochs=a.epochs, response_length=a.new_tokens, temperature=COMMON["temperature"],
                     kl_coef=COMMON["beta"], kl_estimator="k1", cliprange=COMMON["clip"],
                     cliprange_value=COMMON["vclip"], vf_coef=COMMON["vf_coef"], gamma=COMMON["gamma"],
                     lam=COMMON["lam"], learning_rate=COMMON["lr"], stop_token="eos", num_sample_generations=0,
                     local_rollout_forward_batch_size=a.batch, report_to=[], save_strategy="no", use_cpu=True,
                     bf16=False, logging_steps=1, seed=42, lr_scheduler_type="constant")
    marks: list[float] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            marks.append(time.perf_counter())

        def on_step_end(self, *args, **kwargs):
            marks.append(time.perf_counter())

    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                         value_model=value, train_dataset=dataset, callbacks=[Timer()])
    trainer.train()
    scores = [h["objective/scores"] for h in trainer.state.log_history if "objective/scores" in h]
    return {"update_s": [b - a_ for a_, b in zip(marks, marks[1:])], "score": scores}


# ------------------------------------------------------------------------------------ orchestration
def ensure_trl_venv() -> Path:
    python = VENV / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import trl; assert trl.__version__.startswith('1.12')"],
                                          capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    sp = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        capture_output=True, text=True, check=True).stdout.strip()
    # torch, transformers, accelerate ... from Keel's venv, appended after this venv's own packages
    Path(sp, "keel-shared.pth").write_text(f"import site; site.addsitedir({site.getsitepackages()[0]!r})\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "trl==1.12.0"], check=True)
    return python


def run_worker(python: Path, system: str, epochs: int, a, value_model: str = "shared") -> dict:
    cmd = [str(python), __file__, "--worker", system, "--epochs", str(epochs), "--prompts", str(a.prompts),
           "--batch", str(a.batch), "--new-tokens", str(a.new_tokens), "--value-model", value_model,
           "--result", str(REPO / "runs" / "bench" / "ppo-worker.json")]
    env = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{system} worker failed")
    res = json.loads((REPO / "runs" / "bench" / "ppo-worker.json").read_text())
    steady = res["update_s"][1:] or res["update_s"]  # the first update pays one-off warm-up
    return {"system": system, "epochs": epochs, "value_model": value_model, "updates": len(res["update_s"]),
            "update_s_median": statistics.median(steady), "update_s_mean": statistics.mean(steady),
            "update_s_first": res["update_s"][0], "peak_rss_gb": usage.ru_maxrss / 1024 / 1024,
            "process_wall_s": time.perf_counter() - started, "mean_score": statistics.mean(res["score"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", default="1,4")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--worker", choices=["keel", "trl"])
    ap.add_argument("--value-model", default="shared")
    ap.add_argument("--keel-variants", default="shared,separate",
                    help="Keel runs: its default shared value head, and/or a separate value backbone like TRL")
    ap.add_argument("--result")
    a = ap.parse_args()
    if a.worker:
        a.epochs = int(a.epochs)
        res = worker_keel(a) if a.worker == "keel" else worker_trl(a)
        res["peak_rss_self_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
        Path(a.result).write_text(json.dumps(res))
        return
    (REPO / "runs" / "bench").mkdir(parents=True, exist_ok=True)
    trl_python = ensure_trl_venv()
    rows = []
    for epochs in [int(e) for e in a.epochs.split(",")]:
        variants = [("trl-1.12", trl_python, "separate")]
        for v in a.keel_variants.split(","):
            variants.append(("keel", Path(sys.executable), "shared" if v == "shared" else "smollm2-135m"))
        for system, python, vm in variants:
            row = run_worker(python, "trl" if system.startswith("trl") else "keel", epochs, a, vm)
            row["system"] = system if system != "keel" else f"keel ({'shared value head' if vm == 'shared' else 'separate value model'})"
            rows.append(row)
            print(json.dumps(row), flush=True)
    for epochs in sorted({r["epochs"] for r in rows}):
        base = next(r for r in rows if r["epochs"] == epochs and r["system"].startswith("trl"))
        for r in rows:
            if r["epochs"] == epochs:
                r["time_ratio_vs_trl"] = r["update_s_median"] / base["update_s_median"]
                r["rss_ratio_vs_trl"] = r["peak_rss_gb"] / base["peak_rss_gb"]
    print("\n| epochs | system | s/update (median) | peak RSS GB | time vs TRL | memory vs TRL |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['epochs']} | {r['system']} | {r['update_s_median']:.1f} | {r['peak_rss_gb']:.2f} | "
              f"{r['time_ratio_vs_trl']:.2f}x | {r['rss_ratio_vs_trl']:.2f}x |")
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "ppo.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
