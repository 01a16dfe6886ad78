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


# --- issue 21 item 9: what makes a checkpoint-N folder complete ----------------------------------

def _complete_checkpoint(folder):
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text('{"global_step": 4}')
    save_file({"w": torch.zeros(64, 64)}, str(folder / "model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.zeros(64)}}, "param_groups": []}, folder / "optimizer.pt")
    return folder


@pytest.mark.parametrize("damage,reason", [
    (lambda f: (f / "trainer_state.json").unlink(), "no trainer_state.json"),
    (lambda f: (f / "trainer_state.json").write_text('{"global_st'), "trainer_state.json is cut short"),
    (lambda f: (f / "model.safetensors").unlink(), "no weights file"),
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-100]),
     "model.safetensors is cut short"),
    (lambda f: (f / "model.safetensors").write_bytes(b"\x01"), "model.safetensors is cut short"),
    (lambda f: (f / "optimizer.pt").write_bytes((f / "optimizer.pt").read_bytes()[:200]), "optimizer.pt is cut short"),
    (lambda f: (f / "model.safetensors.index.json").write_text('{"weight_map": {"w": "model-00002.safetensors"}}'),
     "missing shard"),
])
def test_incomplete_checkpoints_are_told_apart_from_complete_ones(tmp_path, damage, reason):
    from align.training import checkpoint_problem, last_complete_checkpoint

    assert checkpoint_problem(_complete_checkpoint(tmp_path / "checkpoint-4")) is None
    damage(_complete_checkpoint(tmp_path / "checkpoint-8"))
    assert reason in checkpoint_problem(tmp_path / "checkpoint-8")
    last, skipped = last_complete_checkpoint(tmp_path)
    assert last == tmp_path / "checkpoint-4" and [f.name for f, _ in skipped] == ["checkpoint-8"]
