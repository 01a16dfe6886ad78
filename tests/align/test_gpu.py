"""The CUDA path of the GPU configs' settings (bf16 autocast, bf16 TRL training), on the tiny
model. Skipped without a GPU; ``bench/gpu_check.sh`` runs them (``pytest -m gpu``)."""
import math

import pytest
import torch

from align.ppo import run_ppo
from align.sft import run_sft
from align.training import read_metrics
from tests.align.test_ppo import PROMPTS, _cfg as _ppo_cfg
from tests.align.test_sft import _cfg as _sft_cfg
from tests.conftest import write_jsonl

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_ppo_bf16_autocast_on_cuda_trains_and_saves_what_it_trained(tmp_path, tiny_model_dir):
    import align.ppo
    from safetensors.torch import load_file

    trained = {}

    class Recording(align.ppo.PPOTrainer):
        def train(self, resume_from=None):
            last = super().train(resume_from)
            assert self.acc.mixed_precision == "bf16" and self.acc.device.type == "cuda"
            trained.update({k: v.detach().cpu().clone()
                            for k, v in self.acc.unwrap_model(self.model).policy.state_dict().items()})
            return last

    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    run = tmp_path / "ppo"
    original = align.ppo.PPOTrainer
    align.ppo.PPOTrainer = Recording
    try:
        out = run_ppo(_ppo_cfg(tiny_model_dir, data, run, "tests.align.test_ppo:the_word_reward", "--training.bf16", "true"))
    finally:
        align.ppo.PPOTrainer = original
    assert all(math.isfinite(r["policy_loss"]) and math.isfinite(r["kl"]) for r in read_metrics(run))
    saved = load_file(str(out / "model.safetensors"))
    assert saved and all(torch.equal(saved[k], trained[k]) for k in saved)


def test_sft_in_bf16_on_cuda(tmp_path, tiny_model_dir, gsm8k_small):
    run = tmp_path / "sft"
    run_sft(_sft_cfg(tiny_model_dir, gsm8k_small, run, "--training.bf16", "true", "--training.max_steps", "4"))
    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)
    assert (run / "model" / "keel.json").is_file()
