import pytest
import torch

from align.errors import CheckpointError, ModelNotFoundError
from align.models import load_policy, load_reward_model, load_tokenizer, load_value_model, pick_dtype, resolve_model


def test_unresolvable_reference_lists_every_attempt(tmp_path):
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model(str(tmp_path / "no-such-model"))
    msg = str(e.value)
    assert "no-such-model" in msg and "embedded name" in msg and "local folder" in msg and "hub id" in msg
    with pytest.raises(ModelNotFoundError, match="hub id"):
        resolve_model("nobody/definitely-not-a-model")


def test_a_misspelt_model_name_lists_the_shipped_names_and_suggests_the_closest():
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("keel-agnet")
    msg = str(e.value)
    assert "did you mean 'keel-agent'?" in msg and "keel-agent, smollm2-135m" in msg
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("completely-different")
    assert "did you mean" not in str(e.value)


def test_folder_kinds(tmp_path, tiny_model_dir):
    assert resolve_model(tiny_model_dir).kind == "folder"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="has none of"):
        resolve_model(tmp_path / "empty")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        resolve_model(tmp_path / "file.bin")


def test_tokenizer_pad_is_not_the_turn_end(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id


def test_policy_reward_and_value_roles(tiny_model_dir):
    model, tok, src = load_policy(str(tiny_model_dir))
    assert not model.training and model.dtype == torch.float32 and tok.padding_side == "left"
    batch = tok(["hello there", "hi"], return_tensors="pt", padding=True)
    for loader in (load_reward_model, load_value_model):
        rm, rtok, _ = loader(str(tiny_model_dir))
        assert rm.config.num_labels == 1 and rm.config.pad_token_id == rtok.pad_token_id
        scores = rm(**rtok(["hello there", "hi"], return_tensors="pt", padding=True)).logits
        assert scores.shape == (2, 1)
    assert model(**batch).logits.shape[:2] == batch["input_ids"].shape


def test_dtype_choice():
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cpu"), "bfloat16") == torch.bfloat16


def test_corrupt_weights_give_a_clear_error(tmp_path, tiny_model_dir):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="cannot load .* weights of"):
        load_policy(str(broken))


@pytest.mark.integration
def test_embedded_default_answers_a_chat_message(embedded_dir):
    from align.generate import chat_reply

    src = resolve_model("smollm2-135m")
    assert src.kind == "embedded" and (embedded_dir / "model.safetensors").is_file()
    model, tok, _ = load_policy(src)
    reply = chat_reply(model, tok, [{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=20)
    assert "Paris" in reply


def test_a_path_like_reference_never_goes_to_the_hub(monkeypatch, tmp_path):
    import time

    import transformers

    from align import models
    from align.errors import ModelNotFoundError

    def no_hub(*a, **kw):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for ref in ("runs/does-not-exist", "./x", "../x/y", "/nope/model", "~/nope", "a/b/c", "runs/"):
        start = time.time()
        with pytest.raises(ModelNotFoundError, match="does not exist|has none of"):
            models.resolve_model(ref)
        assert time.time() - start < 1
    assert not models.looks_like_path("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_offline_is_detected_once_and_hub_ids_use_the_cache_only(monkeypatch):
    import transformers

    from align import models
    from align.errors import ModelNotFoundError

    calls = []
    monkeypatch.setattr(models, "_HUB_REACHABLE", None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("socket.create_connection", lambda *a, **kw: calls.append(a) or (_ for _ in ()).throw(OSError()))
    seen = []
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained",
                        lambda ref, **kw: seen.append(kw) or (_ for _ in ()).throw(OSError("not cached")))
    for _ in range(3):
        with pytest.raises(ModelNotFoundError, match="local cache"):
            models.resolve_model("someone/missing-model")
    assert len(calls) == 1 and all(kw.get("local_files_only") for kw in seen)


def test_a_merged_adapter_is_trainable_like_any_loaded_model(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapter = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    adapter.peft_config["default"].base_model_name_or_path = str(tiny_model_dir)
    adapter.save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "adapter")
    model, _, source = load_policy(str(tmp_path / "adapter"))
    assert source.kind == "adapter" and all(p.requires_grad for p in model.parameters())
