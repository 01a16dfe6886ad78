"""PPO with the vLLM rollout engine, in ONE process with vLLM: run by tests/align/test_ppo_vllm.py
with the Python of vLLM's venv (scripts/setup_vllm_cpu.sh installs Keel's training imports there;
the repository is on PYTHONPATH). Not a test module itself: it measures, the test asserts.

    python -m tests.align.vllm_ppo_check MODEL_DIR PROMPTS_JSONL OUT_DIR [--lora]

Prints one JSON line (the last line of stdout) with what it saw.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def the_word_reward(prompts, responses, **_):
    return [1.0 if "the" in r.lower().split() else 0.0 for r in responses]


def main(model_dir: str, data: str, out: str, lora: bool) -> dict:
    from align.config import load_config
    from align.ppo import PPOStageConfig, PPOTrainer
    from align.training import read_metrics

    started = time.time()
    cfg = load_config(PPOStageConfig, REPO / "configs" / "ppo.yaml", [
        "--model", model_dir, "--output_dir", out, "--data.path", data,
        "--reward", "tests.align.vllm_ppo_check:the_word_reward", "--updates", "3", "--ppo.batch_size", "4",
        "--ppo.mini_batch_size", "4", "--ppo.ppo_epochs", "1", "--rollout.max_new_tokens", "8",
        "--training.learning_rate", "1e-2", "--training.save_steps", "100", "--kl.adaptive", "false",
        "--rollout.engine", "vllm", "--rollout.vllm.enforce_eager", "true", "--rollout.vllm.max_model_len", "256",
        *(["--lora.enabled", "true", "--lora.r", "8"] if lora else [])])
    Path(out).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    trainer = PPOTrainer(cfg)
    res: dict = {"engine": trainer.engine.name, "init_s": round(time.time() - started, 1)}
    acc, engine, tok = trainer.acc, trainer.engine, trainer.tokenizer
    policy = acc.unwrap_model(trainer.model).policy
    prompts = trainer.prompts[:4]
    enc = trainer._encode(prompts)
    prompt_ids = [row[m.bool()].tolist() for row, m in zip(enc["input_ids"], enc["attention_mask"])]

    def greedy_policy():
        policy.eval()
        with torch.no_grad():
            out = policy.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=8,
                                  do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        rows = []
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            cut = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            rows.append(row[:cut])
        return rows

    def greedy_engine():
        return engine.generate(prompt_ids, 8, 0.0, 1.0)

    # 1. the first sync: dummy weights -> the policy's
    res["dummy_equal"] = greedy_engine() == greedy_policy()
    engine.sync(acc, trainer.model, version=0)
    a_policy = greedy_policy()
    res["greedy"] = a_policy
    res["initial_equal"] = greedy_engine() == a_policy
    # stopping: with a token the greedy response writes third as "EOS", the engine stops after it
    # (the token kept, as transformers keeps EOS) and ``sample`` masks and pads after it
    eos, engine.eos_id = engine.eos_id, a_policy[0][2]
    res["stops_at_eos"] = greedy_engine()[0] == a_policy[0][:3]
    s = engine.sample(policy, enc, 8, 0.0, 1.0)  # (greedy)
    res["eos_mask_row"] = s.mask[0].tolist()
    res["eos_padded_after"] = s.responses[0, 3:].tolist() == [tok.pad_token_id] * (s.responses.shape[1] - 3)
    engine.eos_id = eos
    # 2. perturb the policy (LoRA: its adapters), sync again
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if (not lora and p.requires_grad) or "lora_B" in n:
                p.add_(torch.randn_like(p) * 0.5 * (p.std() if p.numel() > 1 and p.std() > 0 else 0.05))
    b_policy = greedy_policy()
    res["perturbation_changes_policy"] = b_policy != a_policy
    res["stale_engine_differs"] = greedy_engine() != b_policy
    t = time.time()
    engine.sync(acc, trainer.model, version=-1)
    res["sync_s"] = round(time.time() - t, 3)
    res["synced_equal"] = greedy_engine() == b_policy
    if lora:  # unmerged after the sync: the adapters are still separate and still active
        res["lora_still_unmerged"] = not any(getattr(m, "merged", False) for m in policy.modules())
        res["lora_policy_unchanged_by_sync"] = greedy_policy() == b_policy
    # 3. one PPO update with the engine's rollout: log-probs recomputed, first ratio 1
    trainer.update_step = 0
    torch.manual_seed(1)
    rollout, first_pass = trainer.rollout(prompts)
    res["engine_version_at_rollout"] = engine.version
    res["rollout_T"] = rollout.T
    res["mask_rows"] = rollout.mask.sum(1).tolist()
    res["logp_old_finite"] = bool(torch.isfinite(rollout.logp_old).all())
    res["logp_old_zero_off_mask"] = float((rollout.logp_old * (1 - rollout.mask)).abs().sum()) == 0.0
    res["fused_first_pass"] = first_pass is not None
    stats = trainer.optimise(rollout, first_pass)
    res["first_epoch"] = {k: stats[k] for k in ("approx_kl", "clip_frac", "policy_loss", "grad_norm")}
    trainer.update_step = 1
    after = greedy_policy()
    res["update_changed_policy"] = after != b_policy
    res["stale_after_update_differs"] = greedy_engine() != after
    engine.sync(acc, trainer.model, version=1)
    res["after_update_equal"] = greedy_engine() == after
    # 4. the loop: two more updates through train(), each syncing and logging
    t = time.time()
    last = trainer.train()
    res["train_s"] = round(time.time() - t, 1)
    res["train_steps"] = [r["step"] for r in read_metrics(Path(out))]
    res["train_finite"] = all(isinstance(v, float) and v == v for k, v in last.items()
                              if k in ("score", "kl", "policy_loss", "value_loss", "approx_kl"))
    res["engine_version_end"] = engine.version
    res["total_s"] = round(time.time() - started, 1)
    return res


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--lora"]
    print(json.dumps(main(*args, lora="--lora" in sys.argv)), flush=True)
