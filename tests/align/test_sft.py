import json

import pytest
import torch

from align.cli import main
from align.config import load_config
from align.errors import KeelError
from align.models import load_policy
from align.sft import SFTStageConfig, run_sft
from align.training import read_metrics
from tests.conftest import REPO


def _cfg(tiny_model_dir, data, out, *extra):
    return load_config(SFTStageConfig, REPO / "configs" / "sft.yaml", [
        "--model", str(tiny_model_dir), "--output_dir", str(out), "--data.path", str(data), "--data.format", "auto",
        "--data.eval_size", "4", "--training.max_steps", "8", "--training.per_device_train_batch_size", "4",
        "--training.per_device_eval_batch_size", "4", "--training.learning_rate", "3e-3", "--training.warmup_steps", "0",
        "--training.logging_steps", "1", "--training.save_steps", "4", "--training.eval_steps", "4",
        "--training.max_length", "256", "--training.lr_scheduler_type", "constant", *extra])


def _logits(model_dir):
    model, tok, _ = load_policy(str(model_dir))
    with torch.no_grad():
        return model(**tok("Natalia sold clips to 48 of her friends", return_tensors="pt")).logits


def test_sft_lowers_loss_and_writes_a_checkpoint_that_reloads(tmp_path, tiny_model_dir, gsm8k_small):
    out = run_sft(_cfg(tiny_model_dir, gsm8k_small, tmp_path / "run"))
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0] - 1.0
    manifest = json.loads((out / "keel.json").read_text())
    assert manifest["stage"] == "sft" and manifest["base_model"] == str(tiny_model_dir)
    assert manifest["data"][0]["format"] == "gsm8k" and manifest["data"][0]["train_rows"] == 28
    assert "eval_loss" in manifest["metrics"] and manifest["metrics"]["global_step"] == 8
    # The checkpoint holds the trained weights: same logits as the trainer's own step-8 save, not the start.
    final = _logits(out)
    assert torch.allclose(final, _logits(tmp_path / "run" / "checkpoint-8"), atol=1e-5)
    assert not torch.allclose(final, _logits(tiny_model_dir), atol=1e-3)


def test_resume_continues_without_duplicate_steps(tmp_path, tiny_model_dir, gsm8k_small):
    run = tmp_path / "run"
    run_sft(_cfg(tiny_model_dir, gsm8k_small, run, "--training.max_steps", "4"))
    with pytest.raises(KeelError, match="already holds a run"):
        run_sft(_cfg(tiny_model_dir, gsm8k_small, run))
    out = run_sft(_cfg(tiny_model_dir, gsm8k_small, run), resume=True)
    steps = [r["step"] for r in read_metrics(run) if "loss" in r]
    assert steps == list(range(1, 9))
    assert json.loads((out / "keel.json").read_text())["metrics"]["global_step"] == 8
    with pytest.raises(KeelError, match="no checkpoint-N"):
        run_sft(_cfg(tiny_model_dir, gsm8k_small, tmp_path / "fresh"), resume=True)


def test_lora_sft_on_preference_pairs_writes_a_merged_checkpoint(tmp_path, tiny_model_dir):
    data = REPO / "data" / "hh-rlhf" / "harmless.jsonl.gz"
    out = run_sft(_cfg(tiny_model_dir, data, tmp_path / "run", "--lora.enabled", "true", "--data.max_rows", "24",
                       "--training.max_steps", "2", "--training.save_steps", "2", "--training.eval_steps", "2"))
    assert not (out / "adapter_config.json").exists()
    assert json.loads((out / "keel.json").read_text())["config"]["lora"]["enabled"] is True
    assert not torch.allclose(_logits(out), _logits(tiny_model_dir), atol=1e-6)


def test_cli_runs_plots_and_reports_errors_without_traceback(tmp_path, tiny_model_dir, gsm8k_small, capsys):
    run = tmp_path / "run"
    args = ["sft", "--config", str(REPO / "configs" / "sft.yaml"), "--model", str(tiny_model_dir),
            "--output_dir", str(run), "--data.path", str(gsm8k_small), "--data.eval_size", "0",
            "--training.max_steps", "2", "--training.per_device_train_batch_size", "2", "--training.save_steps", "2"]
    assert main(args) == 0
    assert main(["plot", str(run)]) == 0
    png = run / "plots" / "metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["info", str(run)]) == 0
    assert '"stage": "sft"' in capsys.readouterr().out
    assert main(args[:3] + ["--training.batch", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "training.batch" in err and "Traceback" not in err
    assert main(["sft", "--config", str(REPO / "configs" / "sft.yaml"), "--data.path", str(tmp_path / "nope.jsonl"),
                 "--output_dir", str(tmp_path / "r2")]) == 2
    assert "data file not found" in capsys.readouterr().err


# --- issue 21 item 9: a run killed while writing a checkpoint resumes from the last complete one --

def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# Each case trains and resumes (~1.5 min on 2 cores): one runs by default, the others with the slow
# marker; tests/align/test_checkpoint.py tells every kind of damage apart without training.
@pytest.mark.parametrize("damage", ["weights cut short",
                                    pytest.param("optimizer cut short", marks=pytest.mark.slow),
                                    pytest.param("no trainer_state", marks=pytest.mark.slow),
                                    pytest.param("trainer_state cut short", marks=pytest.mark.slow)])
def test_resume_skips_an_incomplete_checkpoint_and_says_so(tmp_path, tiny_model_dir, gsm8k_small, capsys, damage):
    run = tmp_path / "run"
    run_sft(_cfg(tiny_model_dir, gsm8k_small, run))  # checkpoint-4 and checkpoint-8
    broken = run / "checkpoint-8"
    if damage == "weights cut short":
        _truncate(broken / "model.safetensors")
    elif damage == "optimizer cut short":
        _truncate(broken / "optimizer.pt")
    elif damage == "no trainer_state":
        (broken / "trainer_state.json").unlink()
    else:
        _truncate(broken / "trainer_state.json")
    capsys.readouterr()
    out = run_sft(_cfg(tiny_model_dir, gsm8k_small, run, "--training.max_steps", "12"), resume=True)
    err = capsys.readouterr().err
    assert "skipping checkpoint-8" in err and "resuming from checkpoint-4" in err
    assert (run / "incomplete-checkpoint-8").is_dir()
    steps = [r["step"] for r in read_metrics(run) if "loss" in r]
    assert steps == list(range(1, 13))
    assert json.loads((out / "keel.json").read_text())["metrics"]["global_step"] == 12


def _adapter_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_lora_sft_from_a_lora_adapter_continues_that_adapter_on_its_base(tmp_path, tiny_model_dir, gsm8k_small):
    lora = ["--lora.enabled", "true", "--lora.merge_on_save", "false", "--lora.r", "4", "--training.max_steps", "2",
            "--training.save_steps", "2", "--training.eval_steps", "2"]
    first = run_sft(_cfg(tiny_model_dir, gsm8k_small, tmp_path / "a", *lora))
    assert (first / "adapter_config.json").is_file()
    # A negligible learning rate: the continued adapter must be the first one, not a fresh one stacked on it
    # (before, the start adapter was merged, new zero-initialised adapters trained on top and saved as if on
    # the bare base, so they loaded without the first adapter's training).
    second = run_sft(_cfg(first, gsm8k_small, tmp_path / "b", *lora, "--lora.r", "8",
                          "--training.learning_rate", "1e-12"))
    config = json.loads((second / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == str(tiny_model_dir)
    manifest = json.loads((second / "keel.json").read_text())
    assert manifest["base_model"] == str(tiny_model_dir) and manifest["parents"] == [str(first)]
    w1, w2 = _adapter_weights(first), _adapter_weights(second)
    assert w1.keys() == w2.keys()
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)
    assert torch.allclose(_logits(second), _logits(first), atol=1e-5)
    assert not torch.allclose(_logits(second), _logits(tiny_model_dir), atol=1e-3)
    # A real learning rate moves the same adapter's weights.
    third = run_sft(_cfg(first, gsm8k_small, tmp_path / "c", *lora))
    w3 = _adapter_weights(third)
    assert w3.keys() == w1.keys() and not all(torch.allclose(w1[k], w3[k], atol=1e-6) for k in w1)
