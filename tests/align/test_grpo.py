import json

from align.cli import main
from align.config import load_config
from align.grpo import GRPOStageConfig, run_grpo
from align.models import load_policy
from align.training import read_metrics
from tests.conftest import REPO

SMALL = ["--data.max_rows", "8", "--training.max_steps", "2", "--training.per_device_train_batch_size", "4",
         "--num_generations", "2", "--max_completion_length", "12", "--training.save_steps", "2",
         "--training.learning_rate", "1e-3"]


def short_answer_reward(prompts, completions, **_):
    return [1.0 / (1 + len(c[0]["content"] if isinstance(c, list) else c)) for c in completions]


def test_grpo_on_gsm8k_with_weighted_verifiable_rewards_writes_a_checkpoint(tmp_path, tiny_model_dir, gsm8k_small):
    cfg = load_config(GRPOStageConfig, REPO / "configs" / "grpo.yaml",
                      ["--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "g"), "--data.path", str(gsm8k_small),
                       *SMALL])
    out = run_grpo(cfg)
    manifest = json.loads((out / "keel.json").read_text())
    assert manifest["stage"] == "grpo" and [r["name"] for r in manifest["metrics"]["rewards"]] == \
        ["gsm8k_correctness", "gsm8k_format", "gsm8k_closeness"]
    logged = [r for r in read_metrics(tmp_path / "g") if "reward" in r]
    assert logged and any(k.startswith("rewards/gsm8k_format") for k in logged[0])
    assert manifest["config"]["beta"] > 0
    load_policy(str(out))


def test_grpo_with_an_rm_reward_a_callable_and_the_monitor(tmp_path, tiny_model_dir, gsm8k_small):
    cfg = load_config(GRPOStageConfig, REPO / "configs" / "grpo.yaml", [
        "--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "g"), "--data.path", str(gsm8k_small),
        "--rewards", json.dumps([{"rm": str(tiny_model_dir), "weight": 0.5},
                                 {"function": "tests.align.test_grpo:short_answer_reward"}]),
        "--monitor.gold", "align.verifiers:gsm8k_format", "--monitor.every_n_steps", "1", "--monitor.num_prompts", "2",
        "--monitor.max_new_tokens", "8", *SMALL])
    run_grpo(cfg)
    checks = [r for r in read_metrics(tmp_path / "g") if "monitor/proxy" in r]
    assert [r["step"] for r in checks] == [0, 1, 2]


def test_grpo_config_errors_name_the_field(tmp_path, tiny_model_dir, gsm8k_small, capsys):
    base = ["grpo", "--config", str(REPO / "configs" / "grpo.yaml"), "--model", str(tiny_model_dir),
            "--output_dir", str(tmp_path / "x"), "--data.path", str(gsm8k_small)]
    assert main(base + ["--rewards", '[{"weight": 1}]']) == 2
    assert "rewards" in capsys.readouterr().err
    assert main(base + ["--num_generations", "3"]) == 2
    assert "multiple of num_generations" in capsys.readouterr().err
    assert main(base + ["--rewards", '[{"function": "nope_mod:f"}]']) == 2
    assert "cannot import nope_mod" in capsys.readouterr().err
