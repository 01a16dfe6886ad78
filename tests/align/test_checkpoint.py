import json

import pytest
import torch

from align.checkpoint import load_manifest, save_checkpoint
from align.errors import CheckpointError
from align.models import load_policy, resolve_model

PROMPT = "The quick brown fox"


def _logits(model, tok):
    with torch.no_grad():
        return model(**tok(PROMPT, return_tensors="pt")).logits


def _save(model, tok, out, **kw):
    return save_checkpoint(model, tok, out, stage="sft", base_model="tiny", config={"a": 1},
                           data=[{"path": "x", "rows": 3}], metrics={"loss": torch.tensor(0.5)}, **kw)


def test_round_trip_same_logits_and_manifest(tmp_path, tiny_model_dir):
    model, tok, _ = load_policy(str(tiny_model_dir))
    out = _save(model, tok, tmp_path / "ckpt")
    src = resolve_model(out)
    assert src.kind == "checkpoint" and src.manifest.stage == "sft" and src.manifest.metrics == {"loss": 0.5}
    assert src.manifest.versions["torch"] and src.manifest.created_at
    assert (out / "chat_template.jinja").exists() or "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    again, tok2, _ = load_policy(out)
    assert torch.equal(_logits(model, tok), _logits(again, tok2))
    # A run folder resolves to the checkpoint inside it.
    run = tmp_path / "run"
    _save(model, tok, run / "model")
    assert resolve_model(run).path == str(run / "model")


def test_overwrite_is_atomic_replacement(tmp_path, tiny_model_dir):
    model, tok, _ = load_policy(str(tiny_model_dir))
    out = _save(model, tok, tmp_path / "ckpt")
    _save(model, tok, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_bad_checkpoints_give_clear_errors(tmp_path, tiny_model_dir):
    model, tok, _ = load_policy(str(tiny_model_dir))
    out = _save(model, tok, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_manifest(tmp_path / "missing")
    manifest = out / "keel.json"
    good = manifest.read_text()
    manifest.write_text(good[:40])
    with pytest.raises(CheckpointError, match="keel.json is corrupt"):
        resolve_model(out)
    data = json.loads(good)
    del data["stage"]
    manifest.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="invalid: stage"):
        load_manifest(out)
    manifest.write_text(good)
    (out / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_manifest(out)


def _lora(model):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(1)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # non-zero, so the adapters change the output
    return peft_model


def test_lora_is_merged_on_save(tmp_path, tiny_model_dir):
    model, tok, _ = load_policy(str(tiny_model_dir))
    base_logits = _logits(model, tok)
    peft_model = _lora(model)
    want = _logits(peft_model, tok)
    assert not torch.allclose(want, base_logits)
    out = _save(peft_model, tok, tmp_path / "merged")
    assert not (out / "adapter_config.json").exists()
    loaded, tok2, _ = load_policy(out)
    assert torch.allclose(_logits(loaded, tok2), want, atol=1e-4)


def test_unmerged_lora_checkpoint_resolves_its_base(tmp_path, tiny_model_dir):
    model, tok, _ = load_policy(str(tiny_model_dir))
    peft_model = _lora(model)
    want = _logits(peft_model, tok)
    out = save_checkpoint(peft_model, tok, tmp_path / "adapters", stage="sft", base_model=str(tiny_model_dir),
                          merge_lora=False)
    src = resolve_model(out)
    assert src.kind == "adapter" and src.base.path == str(tiny_model_dir) and src.manifest.stage == "sft"
    loaded, tok2, _ = load_policy(out)
    assert torch.allclose(_logits(loaded, tok2), want, atol=1e-4)
