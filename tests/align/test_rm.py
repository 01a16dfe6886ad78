import json
import math

import pytest
import torch

from align.cli import main
from align.config import load_config
from align.errors import ConfigError
from align.models import load_tokenizer
from align.rewards import (CallableReward, EnsembleScorer, RewardModelScorer, combine_scores, import_callable,
                           load_reward, rm_input_ids)
from align.rm import RMStageConfig, pair_metrics, run_rm, tokenize_pairs
from align.training import read_metrics
from tests.conftest import REPO, write_jsonl


def bt_loss(r_chosen, r_rejected):
    return -torch.nn.functional.logsigmoid(r_chosen - r_rejected).mean()


def test_trl_reward_loss_is_the_bradley_terry_formula():
    """TRL's RewardTrainer.compute_loss on hand-made logits equals -log sigmoid(r_c - r_r)."""
    from types import SimpleNamespace

    from trl import RewardTrainer

    r_c, r_r = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.5])
    expected = -torch.log(1 / (1 + torch.exp(-(r_c - r_r)))).mean()
    assert torch.allclose(bt_loss(r_c, r_r), expected)
    assert math.isclose(expected.item(), (-math.log(1 / (1 + math.exp(-1))) - math.log(1 / (1 + math.exp(1)))
                                         - math.log(0.5)) / 3, rel_tol=1e-6)

    class FakeModel:
        training = True

        def __call__(self, **inputs):
            return SimpleNamespace(logits=torch.cat([r_c, r_r]).unsqueeze(-1))

    trainer = SimpleNamespace(model=FakeModel(), args=SimpleNamespace(center_rewards_coefficient=None),
                              accelerator=SimpleNamespace(gather_for_metrics=lambda x: x, gather=lambda x: x), _total_train_tokens=0,
                              _tp_size=1, _metrics={"train": __import__("collections").defaultdict(list)})
    loss = RewardTrainer.compute_loss(trainer, FakeModel(), {"attention_mask": torch.ones(6, 3)})
    assert torch.allclose(loss, expected)


def _pairs(n=48):
    """Easy synthetic preference: a polite answer beats a rude one."""
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"Can you help me with task number {i}?"}]
        rows.append({"prompt": prompt,
                     "chosen": [{"role": "assistant", "content": "Of course, happy to help. Here is how."}],
                     "rejected": [{"role": "assistant", "content": "No. Go away, idiot."}]})
    return rows


def _cfg(tiny_model_dir, data, out, *extra):
    return load_config(RMStageConfig, REPO / "configs" / "rm.yaml", [
        "--model", str(tiny_model_dir), "--output_dir", str(out), "--data.path", str(data),
        "--data.eval_size", "8", "--training.max_steps", "10", "--training.per_device_train_batch_size", "8",
        "--training.per_device_eval_batch_size", "8", "--training.learning_rate", "1e-3",
        "--training.warmup_steps", "0", "--training.logging_steps", "1", "--training.save_steps", "5",
        "--training.eval_steps", "5", "--training.max_length", "128", "--training.lr_scheduler_type", "constant",
        *extra])


def test_score_time_inputs_are_the_train_time_inputs(tiny_model_dir):
    """Keel's tokenisation of a pair equals TRL's RewardTrainer preprocessing of the same row."""
    import datasets
    from trl import RewardConfig, RewardTrainer

    tok = load_tokenizer(str(tiny_model_dir))
    rows = _pairs(3)
    ours, stats = tokenize_pairs(rows, tok, 128)
    trl_ds = RewardTrainer._prepare_dataset(None, datasets.Dataset.from_list(rows), tok,
                                            RewardConfig(output_dir="/tmp/x", max_length=128, bf16=False, use_cpu=True), "t")
    assert ours["chosen_ids"] == trl_ds["chosen_ids"] and ours["rejected_ids"] == trl_ds["rejected_ids"]
    assert stats == {"pairs": 3, "prompts_shortened": 0, "dropped_too_long": 0}
    # and the scorer reads exactly those ids
    assert rm_input_ids(tok, rows[0]["prompt"], rows[0]["chosen"][0]["content"], 128) == ours["chosen_ids"][0]


def test_long_prompts_lose_their_oldest_turns_not_the_pair(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    long_turns = []
    for i in range(6):
        long_turns += [{"role": "user", "content": f"old question {i} " * 20},
                       {"role": "assistant", "content": f"old answer {i} " * 20}]
    prompt = long_turns + [{"role": "user", "content": "the real question"}]
    ids = rm_input_ids(tok, prompt, "short answer", 120, strict=True)
    assert ids is not None and len(ids) <= 120
    text = tok.decode(ids)
    assert "the real question" in text and "short answer" in text and "old question 0" not in text
    assert rm_input_ids(tok, [{"role": "user", "content": "x " * 500}], "y", 64, strict=True) is None
    assert len(rm_input_ids(tok, [{"role": "user", "content": "x " * 500}], "y", 64)) == 64


def test_rm_training_lifts_pair_accuracy_and_records_calibration(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", _pairs())
    scorer0 = RewardModelScorer(str(tiny_model_dir))
    rows = _pairs(40)
    before = pair_metrics(scorer0([r["prompt"] for r in rows], [r["chosen"] for r in rows]),
                          scorer0([r["prompt"] for r in rows], [r["rejected"] for r in rows]))["accuracy"]
    out = run_rm(_cfg(tiny_model_dir, data, tmp_path / "rm"))
    manifest = json.loads((out / "keel.json").read_text())
    assert manifest["model_kind"] == "reward" and manifest["stage"] == "rm"
    held = manifest["metrics"]["heldout"]
    assert held["accuracy"] > 0.9 and held["mean_margin"] > 0 and held["calibration"]
    assert before < 0.9 or held["mean_margin"] > 1.0
    assert any("eval_accuracy" in r for r in read_metrics(tmp_path / "rm"))
    scorer = load_reward(str(out))
    good, bad = scorer([rows[0]["prompt"]] * 2, ["Of course, happy to help. Here is how.", "No. Go away, idiot."])
    assert good > bad


def test_rm_with_lora_trains_the_head_and_merges(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", _pairs())
    out = run_rm(_cfg(tiny_model_dir, data, tmp_path / "rm", "--lora.enabled", "true", "--training.learning_rate", "3e-3"))
    assert not (out / "adapter_config.json").exists()
    assert json.loads((out / "keel.json").read_text())["metrics"]["heldout"]["accuracy"] > 0.8


def test_ensemble_trains_members_and_combines(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", _pairs())
    root = run_rm(_cfg(tiny_model_dir, data, tmp_path / "ens", "--ensemble.size", "2", "--ensemble.bootstrap", "true",
                       "--ensemble.combine", "mean_minus_std", "--training.max_steps", "4"))
    info = json.loads((root / "keel-ensemble.json").read_text())
    assert info["members"] == ["member-0/model", "member-1/model"] and "heldout" in info
    scorer = load_reward(str(root))
    assert isinstance(scorer, EnsembleScorer) and scorer.combine == "mean_minus_std"
    assert main(["rm-eval", str(root), str(data), "--max-rows", "8"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "ensemble accuracy by combiner" in out
    assert json.loads((root / "rm-eval-pairs.json").read_text())["pairs"] == 8


def test_combiners_on_hand_made_scores():
    scores = torch.tensor([[1.0, 4.0], [3.0, 4.0]], dtype=torch.float64)  # 2 members x 2 samples
    assert combine_scores(scores, "mean").tolist() == [2.0, 4.0]
    assert combine_scores(scores, "min").tolist() == [1.0, 4.0]
    assert torch.allclose(combine_scores(scores, "mean_minus_std", 2.0),
                          torch.tensor([2.0 - 2 * math.sqrt(2.0), 4.0], dtype=torch.float64))
    members = [CallableReward(lambda p, r: [1.0] * len(r), "one"), CallableReward(lambda p, r: [3.0] * len(r), "three")]
    assert EnsembleScorer(members, "min")([[]], ["x"]) == [1.0]
    with pytest.raises(ConfigError):
        EnsembleScorer(members, "median")


def test_python_callables_share_the_interface():
    fn = load_reward("align.verifiers:gsm8k_correctness")
    assert fn([[{"role": "user", "content": "q"}]] * 2, ["The answer is 42", "41"], answer=["42", "42"]) == [1.0, 0.0]
    assert load_reward("align.verifiers:gsm8k_format")([[]], ["Final Answer: 7"], answer=["7"]) == [1.0]
    with pytest.raises(ConfigError, match="cannot import"):
        import_callable("no_such_module_xyz:f")
    with pytest.raises(ConfigError, match="has no callable"):
        import_callable("align.rewards:nope")


def test_pair_metrics_calibration_buckets():
    m = pair_metrics([1.0, 1.0, 3.0, 0.0], [0.0, 2.0, 0.0, 0.1])
    assert m["accuracy"] == 0.5 and m["pairs"] == 4
    assert sum(b["pairs"] for b in m["calibration"]) == 4 and 0 <= m["ece"] <= 1


def test_rm_eval_shows_progress_and_length_sorted_batches_keep_the_scores(tmp_path, tiny_model_dir, capsys):
    rows = _pairs(12)
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    scorer = RewardModelScorer(str(tiny_model_dir), batch_size=3)  # a random head: compare within one model
    prompts, answers = [r["prompt"] for r in rows], [r["chosen"] if i % 2 else r["rejected"] for i, r in enumerate(rows)]
    batched = scorer(prompts, answers)
    scorer.batch_size = 1
    assert torch.allclose(torch.tensor(batched), torch.tensor(scorer(prompts, answers)), atol=1e-4)
    assert main(["rm-eval", str(tiny_model_dir), str(data), "--out", str(tmp_path / "m.json")]) == 0
    captured = capsys.readouterr()
    assert "scoring 12 pairs (24 answers)" in captured.out
    assert "scoring with rm:" in captured.err and "batch" in captured.err  # the tqdm bar
