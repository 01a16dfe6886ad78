"""``report_to``: the experiment trackers every stage logs to besides metrics.jsonl (TRL stages
through TRL's ``report_to``, PPO through accelerate's trackers). TensorBoard is the tracker
installed on the test machines; the others are checked for the missing-package error."""
import importlib.util

import pytest

from align.config import load_config
from align.errors import ConfigError, KeelError
from align.ppo import PPOStageConfig, run_ppo
from align.sft import SFTStageConfig, run_sft
from align.training import read_metrics
from tests.align.test_ppo import PROMPTS, _cfg as _ppo_cfg
from tests.align.test_sft import _cfg as _sft_cfg
from tests.conftest import REPO, write_jsonl


def _scalars(folder):
    """{tag: [(step, value), ...]} from every TensorBoard event file under ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {folder}"
    for f in files:
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def _missing_tracker():
    missing = [n for n in ("wandb", "mlflow", "trackio") if importlib.util.find_spec(n) is None]
    if not missing:
        pytest.skip("wandb, mlflow and trackio are all installed")
    return missing[0]


def test_report_to_reads_one_name_or_a_list_and_refuses_unknown_ones():
    base = {"stage": "sft", "data": {"path": "x.jsonl"}}
    assert SFTStageConfig.model_validate({**base, "training": {"report_to": "tensorboard"}}).training.report_to == \
        ["tensorboard"]
    cfg = load_config(PPOStageConfig, REPO / "configs" / "ppo.yaml", ["--training.report_to", "[wandb, mlflow]"])
    assert cfg.training.report_to == ["wandb", "mlflow"]
    with pytest.raises(ConfigError, match=r"training\.report_to\.0: Input should be 'trackio', 'wandb'"):
        load_config(SFTStageConfig, REPO / "configs" / "sft.yaml", ["--training.report_to", "comet"])


def test_trl_stage_logs_to_tensorboard_and_jsonl(tmp_path, tiny_model_dir, gsm8k_small):
    run = tmp_path / "sft"
    run_sft(_sft_cfg(tiny_model_dir, gsm8k_small, run, "--training.max_steps", "3", "--training.eval_steps", "3",
                     "--training.report_to", "tensorboard"))
    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    scalars = _scalars(run)
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx(losses, rel=1e-5)


def test_ppo_logs_every_update_to_tensorboard_and_jsonl(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    run = tmp_path / "ppo"
    run_ppo(_ppo_cfg(tiny_model_dir, data, run, "tests.align.test_ppo:the_word_reward", "--updates", "2",
                     "--training.report_to", "tensorboard"))
    recs = read_metrics(run)
    scalars = _scalars(run / "keel")
    for key in ("score", "kl", "policy_loss", "value_loss"):
        assert scalars[f"ppo/{key}"] == [(r["step"], pytest.approx(r[key], rel=1e-5)) for r in recs], key
    assert not any("samples" in tag for tag in scalars)


def test_a_tracker_that_is_not_installed_is_a_clear_error(tmp_path, tiny_model_dir, gsm8k_small):
    name = _missing_tracker()
    with pytest.raises(KeelError, match=rf"training\.report_to: {name} is not installed \(pip install {name}\)"):
        run_sft(_sft_cfg(tiny_model_dir, gsm8k_small, tmp_path / "sft", "--training.report_to", name))
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    with pytest.raises(KeelError, match=rf"^training\.report_to: {name} is not installed"):
        run_ppo(_ppo_cfg(tiny_model_dir, data, tmp_path / "ppo", "tests.align.test_ppo:the_word_reward",
                         "--training.report_to", name))
