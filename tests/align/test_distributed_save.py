"""Saves under sharded weights (ZeRO-3 / FSDP) and under several processes.

Every stage's final save goes through ``align.training.save_trained_model`` (PPO's periodic
saves too, through ``full_state_dict``). DeepSpeed is not installed on the CPU test machines, so
the gather is checked with an accelerator that reports ZeRO-3 and whose process holds only
placeholder weights, as a ZeRO-3 process does; the two-process test runs the real thing under
``accelerate launch`` (DDP on CPU)."""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import align.ppo
from align.ppo import run_ppo
from tests.align.test_ppo import PROMPTS, _cfg
from tests.conftest import REPO, write_jsonl


def _saved_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _zero_out(module):
    """What a ZeRO-3 process holds of a parameter outside a gather: not the trained values."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


def test_sharded_weights_are_gathered_for_a_trl_stage_final_save(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.models import resolve_model
    from align.sft import SFTStageConfig
    from align.training import write_checkpoint

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    _zero_out(model)
    acc = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)),
                          get_state_dict=lambda wrapped: trained, unwrap_model=lambda m: m,
                          is_main_process=True, wait_for_everyone=lambda: None)
    trainer = SimpleNamespace(accelerator=acc, model=model, model_wrapped=model)
    cfg = SFTStageConfig(stage="sft", model=str(tiny_model_dir), output_dir=str(tmp_path / "run"),
                         data={"path": "x.jsonl"})
    out = write_checkpoint(trainer, AutoTokenizer.from_pretrained(tiny_model_dir), cfg,
                           resolve_model(str(tiny_model_dir)), [], {})
    saved = _saved_weights(out)
    assert saved and all(torch.equal(saved[k], trained[k]) for k in saved)


def test_sharded_weights_are_gathered_for_every_ppo_save(tmp_path, tiny_model_dir, monkeypatch):
    """Periodic (checkpoint-N/actor_critic.pt) and final (model/) PPO saves hold the trained
    weights, not what the main process holds of them."""
    import align.training

    trained = {}

    class ShardedPPOTrainer(align.ppo.PPOTrainer):
        def train(self, resume_from=None):
            last = super().train(resume_from)
            full = {k: v.detach().clone() for k, v in self.acc.unwrap_model(self.model).state_dict().items()}
            trained.update(full)
            _zero_out(self.acc.unwrap_model(self.model))
            self.acc.get_state_dict = lambda wrapped: full
            return last

    monkeypatch.setattr(align.ppo, "PPOTrainer", ShardedPPOTrainer)
    monkeypatch.setattr(align.training, "weights_are_sharded", lambda acc: True)
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    run = tmp_path / "ppo"
    out = run_ppo(_cfg(tiny_model_dir, data, run, "tests.align.test_ppo:the_word_reward", "--updates", "1"))
    periodic = torch.load(run / "checkpoint-1" / "actor_critic.pt", weights_only=True)
    assert periodic.keys() == trained.keys() and all(torch.equal(periodic[k], trained[k]) for k in trained)
    assert (run / "checkpoint-1" / "optimizer-rank0.pt").is_file()  # a sharded optimiser: one file per process
    saved = _saved_weights(out)
    assert saved and all(torch.equal(saved[k], trained["policy." + k]) for k in saved)


def test_two_process_ppo_saves_the_trained_model(tmp_path, tiny_model_dir):
    """``accelerate launch`` with two CPU processes: both processes end with the same policy and
    the saved checkpoint equals it, tensor for tensor."""
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    run = tmp_path / "ppo"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # --multi_gpu: torch.distributed.run starts the processes (--cpu alone would need mpirun); on a
    # machine without CUDA each one runs on the CPU (gloo), as PPOTrainer asks for.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(REPO / "tests" / "align" / "ppo_launch_script.py"),
           "--config", str(REPO / "configs" / "ppo.yaml"), "--model", str(tiny_model_dir), "--output_dir", str(run),
           "--data.path", str(data), "--reward", "tests.align.test_ppo:the_word_reward", "--updates", "2",
           "--ppo.batch_size", "2", "--ppo.mini_batch_size", "2", "--ppo.ppo_epochs", "1",
           "--rollout.max_new_tokens", "6", "--training.save_steps", "1", "--training.learning_rate", "1e-3"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(run / f"trained-rank{i}.pt", weights_only=True) for i in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # DDP kept the replicas equal
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert any(not torch.equal(ranks[0][k], initial[k]) for k in ranks[0])  # it did train
    saved = _saved_weights(run / "model")
    assert saved and all(torch.equal(saved[k], ranks[0][k]) for k in saved)
    periodic = torch.load(run / "checkpoint-2" / "actor_critic.pt", weights_only=True)
    assert all(torch.equal(periodic["policy." + k], v) for k, v in ranks[0].items())
