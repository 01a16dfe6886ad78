"""Shared fixtures. Unit tests use a tiny randomly initialised Llama (SmolLM2's architecture) with
SmolLM2's real tokenizer; tests marked `integration` use the real embedded model."""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUNDLED_DATA = REPO / "data"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    from align.embedded import ensure_converted

    return ensure_converted("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_dir) -> Path:
    """Two-layer, 64-wide Llama with the real SmolLM2 tokenizer and vocabulary."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    config = AutoConfig.from_pretrained(embedded_dir)
    config.update(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, max_position_embeddings=1024))
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-smollm2")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(embedded_dir).save_pretrained(out)
    return out


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def gsm8k_small(tmp_path) -> Path:
    """32 real GSM8K rows from the bundled sample."""
    lines = (BUNDLED_DATA / "gsm8k" / "train_sample.jsonl").read_text().splitlines()[:32]
    path = tmp_path / "gsm8k32.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path
