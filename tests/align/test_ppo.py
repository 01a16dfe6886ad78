import json
import math

import pytest
import torch

from align.config import load_config
from align.models import load_policy
from align.ppo import (AdaptiveKLController, PPOStageConfig, PPOTrainer, gae, masked_whiten, policy_loss,
                       position_ids, response_mask, run_ppo, shaped_rewards, value_loss)
from align.training import read_metrics
from tests.conftest import REPO, write_jsonl


def test_gae_matches_a_hand_computed_example():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.95)
    # t=2: 1 - 0.7 = 0.3; t=1: (0.7 - 0.6) + 0.95*0.3 = 0.385; t=0: (0.6 - 0.5) + 0.95*0.385 = 0.46575
    assert torch.allclose(adv, torch.tensor([[0.46575, 0.385, 0.3]]))
    assert torch.allclose(ret, torch.tensor([[0.96575, 0.985, 1.0]]))
    # gamma < 1 and a response that ended after two tokens: the padded step contributes nothing
    adv2, _ = gae(torch.tensor([[0.0, 1.0, 5.0]]), values, torch.tensor([[1.0, 1.0, 0.0]]), gamma=0.9, lam=0.5)
    a1 = 1.0 - 0.6                           # V after the last real token is 0
    a0 = (0.9 * 0.6 - 0.5) + 0.9 * 0.5 * a1
    assert torch.allclose(adv2, torch.tensor([[a0, a1, 0.0]]))


def test_clipped_policy_and_value_losses_on_hand_made_tensors():
    mask = torch.ones(1, 3)
    logp_old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.5]]))
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    loss, clip_frac, approx_kl = policy_loss(logp, logp_old, adv, mask, eps=0.2)
    # token 1: min(1.5, 1.2) -> 1.2 (clipped); token 2: min(0.5, 0.8) -> 0.5; token 3: min(-1.5, -1.2) -> -1.5
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 1.5) / 3)
    assert clip_frac.item() == pytest.approx(1 / 3)
    assert approx_kl.item() == pytest.approx(float(((torch.exp(logp) - 1) - logp).mean()))
    v_loss, v_clip = value_loss(torch.tensor([[1.0, 0.1]]), torch.zeros(1, 2), torch.tensor([[1.0, 0.1]]),
                                torch.ones(1, 2), eps=0.2)
    # first: clipped to 0.2 -> (0.2-1)^2 = 0.64 beats 0; second: within the clip -> 0
    assert v_loss.item() == pytest.approx(0.5 * (0.64 + 0.0) / 2) and v_clip.item() == pytest.approx(0.5)


def test_shaped_reward_puts_the_score_on_the_last_real_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    r = shaped_rewards(torch.tensor([2.0, -1.0]), kl * mask, mask, beta=0.5)
    assert torch.allclose(r, torch.tensor([[-0.05, -0.1 + 2.0, 0.0], [-0.25, -0.25, -0.25 - 1.0]]))


def test_adaptive_controller_moves_beta_toward_the_target():
    ctl = AdaptiveKLController(beta=0.1, target=6.0, horizon=100)
    assert ctl.update(kl=12.0, n_samples=10) == pytest.approx(0.1 * (1 + 0.2 * 0.1))  # error clipped at +0.2
    high = ctl.beta
    assert ctl.update(kl=3.0, n_samples=10) < high                                    # below target: beta falls
    ctl2 = AdaptiveKLController(beta=0.1, target=6.0, horizon=100)
    assert ctl2.update(kl=6.0, n_samples=10) == pytest.approx(0.1)                     # on target: unchanged


def test_response_mask_and_positions():
    assert response_mask(torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8]]), eos_id=2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert position_ids(torch.tensor([[0, 0, 1, 1, 1]])).tolist() == [[0, 0, 0, 1, 2]]
    w = masked_whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1, 1, 1, 0]]))
    assert w[0, :3].mean().abs() < 1e-5


def the_word_reward(prompts, responses, **_):
    return [1.0 if "the" in r.lower().split() else 0.0 for r in responses]


def _cfg(model, data, out, reward, *extra):
    return load_config(PPOStageConfig, REPO / "configs" / "ppo.yaml", [
        "--model", str(model), "--output_dir", str(out), "--data.path", str(data), "--reward", reward,
        "--updates", "3", "--ppo.batch_size", "4", "--ppo.mini_batch_size", "2", "--ppo.ppo_epochs", "2",
        "--rollout.max_new_tokens", "8", "--training.save_steps", "2", "--training.learning_rate", "1e-4", *extra])


PROMPTS = [{"prompt": [{"role": "user", "content": f"Tell me something about number {i}."}]} for i in range(12)]


def test_tiny_ppo_run_logs_every_quantity_checkpoints_and_resumes(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    run = tmp_path / "ppo"
    out = run_ppo(_cfg(tiny_model_dir, data, run, "tests.align.test_ppo:the_word_reward"))
    recs = read_metrics(run)
    assert [r["step"] for r in recs] == [1, 2, 3]
    for key in ("score", "kl", "beta", "shaped_return", "entropy", "clip_frac", "value_loss", "approx_kl",
                "response_length", "tokens_per_s", "policy_loss", "grad_norm"):
        assert all(key in r and math.isfinite(r[key]) for r in recs), key
    assert "samples" in recs[0]
    manifest = json.loads((out / "keel.json").read_text())
    assert manifest["stage"] == "ppo" and manifest["base_model"] == str(tiny_model_dir)
    assert (run / "checkpoint-2").is_dir() and (run / "checkpoint-3").is_dir()
    # resume: continue to 5 updates without repeating 1-3
    run_ppo(_cfg(tiny_model_dir, data, run, "tests.align.test_ppo:the_word_reward", "--updates", "5"), resume=True)
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5]


def test_first_update_ratio_is_one_and_lora_reference_is_the_base(tmp_path, tiny_model_dir):
    """Old log-probs (from the sampling logits) equal the training forward pass's at the start, and
    with LoRA the reference is the adapters-off policy: KL starts at zero."""
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    run = tmp_path / "ppo"
    run_ppo(_cfg(tiny_model_dir, data, run, "tests.align.test_ppo:the_word_reward", "--lora.enabled", "true",
                 "--updates", "1", "--ppo.ppo_epochs", "1", "--ppo.mini_batch_size", "4"))
    first = read_metrics(run)[0]
    assert abs(first["kl"]) < 1e-3 and first["clip_frac"] == 0.0 and first["approx_kl"] < 1e-4


def test_separate_value_model_and_rm_reward(tmp_path, tiny_model_dir):
    """A separate critic (its own backbone and score head) and an RM checkpoint as the reward:
    the rollout's values and scores come from them, and one update trains the critic."""
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    cfg = _cfg(tiny_model_dir, data, tmp_path / "ppo", str(tiny_model_dir), "--value_model", str(tiny_model_dir),
               "--updates", "1", "--ppo.mini_batch_size", "4", "--ppo.ppo_epochs", "1")
    trainer = PPOTrainer(cfg)
    model = trainer.acc.unwrap_model(trainer.model)
    assert model.value_head is None and model.value_model is not None
    critic = {k: v.clone() for k, v in model.value_model.named_parameters() if v.requires_grad}
    torch.manual_seed(0)
    rollout, first_pass = trainer.rollout(trainer.prompts[:4])
    # the scores are the RM's, not a constant: the same texts scored by the RM directly
    assert torch.allclose(rollout.scores, torch.tensor(trainer.reward(rollout.prompts, [t.strip() for t in rollout.texts])))
    # V_old is the critic's score head on its own backbone at the response positions
    backbone = getattr(model.value_model, model.value_model.base_model_prefix)
    # (in the trainer's precision: accelerate's state is per process, and an earlier bf16 run sets it)
    with torch.no_grad(), trainer.acc.autocast():
        h = backbone(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                     position_ids=position_ids(rollout.attention_mask)).last_hidden_state
        v = model.value_model.score(h[:, -(rollout.T + 1):-1]).squeeze(-1).float()
    assert torch.allclose(rollout.values_old, v, atol=1e-4)
    stats = trainer.optimise(rollout, first_pass)
    assert math.isfinite(stats["value_loss"]) and stats["value_loss"] > 0
    moved = [k for k, v in model.value_model.named_parameters() if v.requires_grad and not torch.equal(v, critic[k])]
    assert moved, "the separate critic was not trained"


def test_tiny_ppo_update_moves_the_parameters_with_finite_losses(tmp_path, tiny_model_dir):
    """One rollout and one update on the tiny model: every loss is finite, the policy and the value
    head moved, and the rollout (read only during the update) is unchanged by it."""
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    trainer = PPOTrainer(_cfg(tiny_model_dir, data, tmp_path / "ppo", "tests.align.test_ppo:the_word_reward",
                              "--ppo.ppo_epochs", "2"))
    model = trainer.acc.unwrap_model(trainer.model)
    before = {k: v.clone() for k, v in model.named_parameters()}
    torch.manual_seed(0)
    rollout, first_pass = trainer.rollout(trainer.prompts[:4])
    assert first_pass is None  # minibatch 2 < batch 4: a separate value pass
    frozen = {k: v.clone() for k, v in vars(rollout).items() if isinstance(v, torch.Tensor)}
    stats = trainer.optimise(rollout, first_pass)
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "grad_norm"):
        assert math.isfinite(stats[key]), key
    after = dict(model.named_parameters())
    policy_moved = [k for k in before if k.startswith("policy.") and not torch.equal(before[k], after[k])]
    head_moved = [k for k in before if k.startswith("value_head.") and not torch.equal(before[k], after[k])]
    assert policy_moved and head_moved
    assert all(torch.equal(frozen[k], getattr(rollout, k)) for k in frozen)
    assert rollout.advantages.shape == rollout.mask.shape == rollout.logp_old.shape == (4, rollout.T)
    assert rollout.input_ids.shape[1] == rollout.attention_mask.shape[1] > rollout.T


def test_fused_first_pass_gives_the_same_update_as_a_separate_value_pass(tmp_path, tiny_model_dir):
    """One minibatch per rollout: taking V_old from the first update's forward pass (no extra
    value pass) must produce the same advantages and losses as a separate value pass."""
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    runs, advantages = {}, {}
    for name, fused in (("fused", True), ("separate", False)):
        cfg = _cfg(tiny_model_dir, data, tmp_path / name, "tests.align.test_ppo:the_word_reward", "--updates", "1",
                   "--ppo.mini_batch_size", "4", "--ppo.ppo_epochs", "1")
        torch.manual_seed(0)  # the same fresh value head in both
        trainer = PPOTrainer(cfg)
        trainer.fused_first_pass = lambda fused=fused: fused
        torch.manual_seed(0)
        rollout, first_pass = trainer.rollout(trainer.prompts[:4])
        assert (first_pass is not None) == fused
        torch.manual_seed(1)
        runs[name] = trainer.optimise(rollout, first_pass)
        advantages[name] = rollout.advantages
    assert torch.allclose(advantages["fused"], advantages["separate"], atol=1e-5)
    for key in ("policy_loss", "value_loss", "entropy"):
        assert runs["fused"][key] == pytest.approx(runs["separate"][key], rel=1e-4, abs=1e-6), key


def the_count(prompts, responses, **_):
    """How often a response says "the": dense enough for a few PPO updates to move."""
    return [float(sum(w.strip(".,!?;:").lower() == "the" for w in r.split())) for r in responses]


@pytest.mark.slow
def test_embedded_policy_learns_a_programmable_reward_within_a_few_updates(tmp_path):
    # the same 8 prompts in every update, so that batch-to-batch prompt noise does not hide the trend
    topics = ["the sea", "a city", "mountains", "your favourite book", "the moon", "a market", "trains", "rain"]
    rows = [{"prompt": [{"role": "user", "content": f"Write two sentences about {t}."}]} for t in topics]
    data = write_jsonl(tmp_path / "prompts.jsonl", rows)
    run = tmp_path / "ppo"
    run_ppo(load_config(PPOStageConfig, REPO / "configs" / "ppo.yaml", [
        "--output_dir", str(run), "--data.path", str(data), "--reward", "tests.align.test_ppo:the_count",
        "--updates", "8", "--ppo.batch_size", "8", "--ppo.mini_batch_size", "8", "--ppo.ppo_epochs", "4",
        "--training.learning_rate", "3e-5", "--kl.adaptive", "false", "--kl.beta", "0.01",
        "--rollout.max_new_tokens", "24", "--rollout.temperature", "1.0", "--training.save_steps", "100"]))
    scores = [r["score"] for r in read_metrics(run)]
    assert len(scores) == 8
    late = sum(scores[-3:]) / 3
    assert late > scores[0] + 0.3 and late > sum(scores[:3]) / 3, scores


# --- issue 21 items 9 and 12: PPO resumes from the last complete checkpoint, and loads safely -----

def test_ppo_resume_skips_an_incomplete_checkpoint(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    run = tmp_path / "ppo"
    run_ppo(_cfg(tiny_model_dir, data, run, "tests.align.test_ppo:the_word_reward"))  # checkpoint-2, -3
    state = run / "checkpoint-3" / "actor_critic.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    capsys.readouterr()
    run_ppo(_cfg(tiny_model_dir, data, run, "tests.align.test_ppo:the_word_reward", "--updates", "4"), resume=True)
    err = capsys.readouterr().err
    assert "skipping checkpoint-3 (actor_critic.pt is cut short" in err and "resuming from checkpoint-2" in err
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]


class _Payload:
    def __reduce__(self):
        import os

        return (os.mkdir, (os.environ["KEEL_TEST_MARK"],))


def test_ppo_resume_never_unpickles_objects(tmp_path, tiny_model_dir, monkeypatch):
    import torch

    from align.errors import CheckpointError

    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    run = tmp_path / "ppo"
    run_ppo(_cfg(tiny_model_dir, data, run, "tests.align.test_ppo:the_word_reward"))
    mark = tmp_path / "code-ran"
    monkeypatch.setenv("KEEL_TEST_MARK", str(mark))
    for ckpt in ("checkpoint-2", "checkpoint-3"):
        torch.save({"state": _Payload()}, run / ckpt / "optimizer.pt")  # a tampered checkpoint
    with pytest.raises(CheckpointError, match="cannot load the PPO state safely"):
        run_ppo(_cfg(tiny_model_dir, data, run, "tests.align.test_ppo:the_word_reward", "--updates", "4"),
                resume=True)
    assert not mark.exists()


def test_ppo_refuses_unmerged_lora_on_top_of_a_lora_adapter(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from align.checkpoint import save_checkpoint
    from align.errors import ConfigError

    model, tok, _ = load_policy(str(tiny_model_dir))
    adapter = save_checkpoint(get_peft_model(model, LoraConfig(r=2, target_modules="all-linear")), tok,
                              tmp_path / "adapter", stage="sft", base_model=str(tiny_model_dir), merge_lora=False)
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    cfg = _cfg(adapter, data, tmp_path / "ppo", "tests.align.test_ppo:the_word_reward",
               "--lora.enabled", "true", "--lora.merge_on_save", "false")
    with pytest.raises(ConfigError, match="lora.merge_on_save"):
        PPOTrainer(cfg)
