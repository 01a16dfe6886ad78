import json

import pytest

from align.cli import main
from align.config import load_config
from align.dpo import DPOStageConfig, run_dpo
from align.errors import ConfigError
from align.monitor import OverOptimisationMonitor
from align.training import read_metrics
from tests.conftest import REPO

HH = REPO / "data" / "hh-rlhf" / "harmless.jsonl.gz"
CALLS = {"n": 0}


def rising_proxy(prompts, responses, **_):
    CALLS["n"] += 1
    return [float(CALLS["n"])] * len(responses)


def falling_gold(prompts, responses, **_):
    return [-float(CALLS["n"])] * len(responses)


def length_reward(prompts, responses, **_):
    return [len(r) / 100 for r in responses]


def test_monitor_warns_only_when_gold_falls_while_proxy_rises():
    m = OverOptimisationMonitor(window=3)
    gold = [0.1, 0.3, 0.5, 0.6, 0.55, 0.45, 0.3]
    alerts = [m.record(i * 10, proxy=i * 0.5, gold=g, kl=i * 2.0)["monitor/alert"] for i, g in enumerate(gold)]
    assert alerts == [0, 0, 0, 0, 0, 1, 1]
    assert "proxy rose" in m.message() and "gold fell" in m.message()
    calm = OverOptimisationMonitor(window=3)
    assert not any(calm.record(i, i * 1.0, i * 0.5, i)["monitor/alert"] for i in range(6))
    noisy = OverOptimisationMonitor(window=3, min_drop=0.5)  # small dips under min_drop are not alerts
    assert not any(noisy.record(i, i * 1.0, g, i)["monitor/alert"] for i, g in enumerate([0, 1, 0.9, 0.8, 0.7]))


# test_kl_of_a_policy_to_itself_is_zero: tests/align/test_logprobs.py, on a model where positions matter


def _dpo(tiny_model_dir, out, *extra):
    return load_config(DPOStageConfig, REPO / "configs" / "dpo.yaml", [
        "--model", str(tiny_model_dir), "--output_dir", str(out), "--data.path", str(HH), "--data.max_rows", "24",
        "--data.eval_size", "8", "--training.max_steps", "6", "--training.per_device_train_batch_size", "4",
        "--training.gradient_accumulation_steps", "1", "--training.learning_rate", "5e-3", "--training.warmup_steps", "0",
        "--training.logging_steps", "1", "--training.save_steps", "6", "--training.eval_steps", "6",
        "--training.max_length", "128", "--monitor.num_prompts", "4", "--monitor.every_n_steps", "2",
        "--monitor.max_new_tokens", "8", *extra])


def test_dpo_run_logs_proxy_gold_and_kl_and_plots_them(tmp_path, tiny_model_dir):
    run = tmp_path / "dpo"
    run_dpo(_dpo(tiny_model_dir, run, "--monitor.proxy", "tests.align.test_monitor:length_reward",
                 "--monitor.gold", "align.verifiers:gsm8k_format"))
    checks = [r for r in read_metrics(run) if "monitor/gold" in r]
    assert [r["step"] for r in checks] == [0, 2, 4, 6]
    assert all(r["monitor/kl"] == r["monitor/kl"] for r in checks) and abs(checks[0]["monitor/kl"]) < 1e-4
    assert max(r["monitor/kl"] for r in checks[1:]) > 0  # the policy moved away from its reference
    assert main(["plot", str(run)]) == 0
    assert (run / "plots" / "overoptimisation.png").read_bytes()[:4] == b"\x89PNG"


def test_monitor_can_stop_a_run_when_gold_turns_down(tmp_path, tiny_model_dir, capsys):
    CALLS["n"] = 0
    run = tmp_path / "dpo"
    run_dpo(_dpo(tiny_model_dir, run, "--training.max_steps", "12", "--monitor.every_n_steps", "1",
                 "--monitor.proxy", "tests.align.test_monitor:rising_proxy",
                 "--monitor.gold", "tests.align.test_monitor:falling_gold", "--monitor.action", "stop"))
    records = read_metrics(run)
    steps = [r["step"] for r in records if "loss" in r]
    assert max(steps) < 12  # stopped early
    assert "reward over-optimisation" in capsys.readouterr().out
    manifest = json.loads((run / "model" / "keel.json").read_text())
    assert manifest["metrics"]["global_step"] < 12


def test_dpo_monitor_needs_a_proxy(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="monitor.proxy"):
        run_dpo(_dpo(tiny_model_dir, tmp_path / "d", "--monitor.gold", "align.verifiers:gsm8k_format"))
