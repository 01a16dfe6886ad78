"""PPO's rollout-engine seam (align/rollout.py) without vLLM: the config key, the ``auto`` choice,
the transformers engine (today's path), the trainer's recomputation of log-probs for an engine
that gives none, and the (merged-LoRA) weights an engine receives. The vLLM engine itself:
tests/align/test_ppo_vllm.py (marked ``vllm``)."""
from __future__ import annotations

import pytest
import torch

from align.config import load_config
from align.errors import ConfigError
from align.logprobs import Samples, sample
from align.ppo import PPOStageConfig, PPOTrainer
from align.rollout import TransformersRolloutEngine, policy_weights, resolve_engine
from tests.align.test_ppo import PROMPTS, _cfg
from tests.conftest import REPO, write_jsonl

REWARD = "tests.align.test_ppo:the_word_reward"


def _ppo_config(*extra):
    return load_config(PPOStageConfig, REPO / "configs" / "ppo.yaml", ["--reward", "tests.align.test_ppo:the_word_reward",
                                                                      *extra])


def test_vllm_asked_but_not_installed_is_a_config_error_naming_rollout_engine(monkeypatch):
    monkeypatch.setattr("align.rollout.vllm_installed", lambda: False)
    with pytest.raises(ConfigError) as err:
        _ppo_config("--rollout.engine", "vllm")
    msg = str(err.value)
    assert "rollout.engine" in msg and "vllm" in msg and "not installed" in msg and "Traceback" not in msg
    with pytest.raises(ConfigError, match="rollout.engine"):
        _ppo_config("--rollout.engine", "sglang")
    # the default and the explicit transformers engine validate without vLLM
    assert _ppo_config().rollout.engine == "auto"
    assert _ppo_config("--rollout.engine", "transformers").rollout.engine == "transformers"


def test_auto_picks_vllm_only_with_cuda_and_vllm():
    assert resolve_engine("auto", cuda=True, vllm=True) == "vllm"
    assert resolve_engine("auto", cuda=True, vllm=False) == "transformers"
    assert resolve_engine("auto", cuda=False, vllm=True) == "transformers"
    assert resolve_engine("auto", cuda=False, vllm=False) == "transformers"
    assert resolve_engine("transformers", cuda=True, vllm=True) == "transformers"
    assert resolve_engine("vllm", cuda=False, vllm=True) == "vllm"
    with pytest.raises(ValueError, match="rollout.engine"):
        resolve_engine("sglang")


def test_transformers_engine_rollouts_are_todays_sampling(tmp_path, tiny_model_dir):
    """``auto`` on a machine without CUDA is the transformers engine, and a trainer's rollout is
    exactly ``align.logprobs.sample`` on the policy (same tokens, log-probs from the sampling
    logits, not recomputed) for the same seed."""
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    trainer = PPOTrainer(_cfg(tiny_model_dir, data, tmp_path / "ppo", REWARD, "--updates", "1"))
    if not torch.cuda.is_available():
        assert isinstance(trainer.engine, TransformersRolloutEngine)
    trainer.engine = TransformersRolloutEngine(trainer.tokenizer)
    prompts = trainer.prompts[:4]
    model = trainer.acc.unwrap_model(trainer.model)
    r = trainer.cfg.rollout
    torch.manual_seed(3)
    expected = sample(model.policy, trainer.tokenizer, trainer._encode(prompts), r.max_new_tokens, r.temperature, r.top_p)
    torch.manual_seed(3)
    rollout, _ = trainer.rollout(prompts)
    assert torch.equal(rollout.responses, expected.responses)
    assert torch.equal(rollout.mask, expected.mask.float())
    assert torch.equal(rollout.logp_old, expected.logprobs)


class NoLogprobsEngine(TransformersRolloutEngine):
    """The transformers engine's samples without their log-probs: what the vLLM engine hands over."""

    name = "no-logprobs"

    def sample(self, policy, enc, max_new_tokens, temperature, top_p):
        s = super().sample(policy, enc, max_new_tokens, temperature, top_p)
        return Samples(s.prompt_ids, s.prompt_mask, s.responses, s.mask, None)


@pytest.mark.parametrize("fused", [True, False])
def test_an_engine_without_logprobs_gets_the_policys_own_and_a_ratio_of_one(tmp_path, tiny_model_dir, fused):
    """The trainer recomputes log pi_theta_old(y_t) in V_old's pass: they equal the sampling
    logits' log-probs (same weights), and the first update's ratio is 1 (approx-KL 0, no clipping)."""
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    trainer = PPOTrainer(_cfg(tiny_model_dir, data, tmp_path / "ppo", REWARD, "--updates", "1",
                              "--ppo.mini_batch_size", "4", "--ppo.ppo_epochs", "1"))
    trainer.fused_first_pass = lambda: fused
    prompts = trainer.prompts[:4]
    torch.manual_seed(5)
    reference, _ = trainer.rollout(prompts)
    trainer.engine = NoLogprobsEngine(trainer.tokenizer)
    torch.manual_seed(5)
    rollout, first_pass = trainer.rollout(prompts)
    assert (first_pass is not None) == fused
    assert torch.equal(rollout.responses, reference.responses)
    # The sampling logits come from KV-cached steps, the recomputation from one full pass: float32
    # sums in another order (seen 1.5e-3 apart with one OpenMP thread); a wrong position or token is ~1.
    assert torch.allclose(rollout.logp_old, reference.logp_old, atol=5e-3)
    assert (rollout.logp_old * (1 - rollout.mask)).abs().sum() == 0
    stats = trainer.optimise(rollout, first_pass)
    if fused:  # the very same forward pass: exactly 1
        assert stats["approx_kl"] == 0.0 and stats["clip_frac"] == 0.0
    else:
        assert stats["approx_kl"] < 1e-6 and stats["clip_frac"] == 0.0


def test_policy_weights_are_the_merged_lora_weights_under_plain_names(tmp_path, tiny_model_dir):
    """What a vLLM engine is sent: with LoRA, the base weights with the adapters merged, under the
    plain model's names (no PEFT prefixes, no adapter tensors); the policy is unmerged after."""
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    trainer = PPOTrainer(_cfg(tiny_model_dir, data, tmp_path / "ppo", REWARD, "--lora.enabled", "true"))
    policy = trainer.acc.unwrap_model(trainer.model).policy
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    ids = torch.tensor([[1, 42, 7, 99]])
    logits_before = policy(input_ids=ids).logits
    with policy_weights(trainer.acc, trainer.model) as weights:
        sent = {n: t.clone() for n, t in weights}
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert set(sent) == {n for n, _ in plain.named_parameters()}
    # merged q_proj = W + B A * scaling, computed by hand for one layer
    layer = policy.base_model.model.model.layers[0].self_attn.q_proj
    W = before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"]
    delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight) * layer.scaling["default"]
    assert torch.allclose(sent["model.layers.0.self_attn.q_proj.weight"], W + delta, atol=1e-6)
    assert not torch.allclose(sent["model.layers.0.self_attn.q_proj.weight"], W)
    # unmerged afterwards: same parameters, same outputs
    after = {n: p.detach() for n, p in policy.named_parameters()}
    assert all(torch.allclose(before[n], after[n], atol=1e-6) for n in before)
    assert torch.allclose(policy(input_ids=ids).logits, logits_before, atol=1e-5)
