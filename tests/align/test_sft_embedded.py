"""The shipped SFT config on the real embedded model: a few steps, then the checkpoint chats."""
import pytest

from align.config import load_config
from align.generate import chat_reply
from align.models import load_policy
from align.sft import SFTStageConfig, run_sft
from align.training import read_metrics
from tests.conftest import REPO


@pytest.mark.slow
def test_shipped_sft_config_trains_the_embedded_model_and_the_checkpoint_chats(tmp_path):
    cfg = load_config(SFTStageConfig, REPO / "configs" / "sft.yaml", [
        "--output_dir", str(tmp_path / "run"), "--training.max_steps", "4", "--training.per_device_train_batch_size", "2",
        "--training.logging_steps", "1", "--training.eval_steps", "4", "--training.save_steps", "4",
        "--data.eval_size", "4", "--training.max_length", "192"])
    out = run_sft(cfg)
    metrics = read_metrics(tmp_path / "run")
    assert [r["step"] for r in metrics if "loss" in r] == [1, 2, 3, 4]
    model, tok, src = load_policy(str(out))
    assert src.manifest.base_model == "smollm2-135m" and src.manifest.stage == "sft"
    reply = chat_reply(model, tok, [{"role": "user", "content": "What is 12 + 30?"}], max_new_tokens=40)
    assert reply.strip()
