"""The generation-engine seam of CAI (``engine``) and ``align eval`` (``--engine``) without vLLM:
the errors naming the setting, ``auto`` on a machine without CUDA, the transformers engine being
the old code path, what a vLLM-style engine is handed (prompt ids, sampling settings) and how its
tokens are decoded, and how an engine is built from a checkpoint or an adapter. The real vLLM
engine: tests/align/test_generation_vllm.py (marked ``vllm``)."""
from __future__ import annotations

import json

import pytest
import torch

import align.rollout as rollout
from align.cai import CAIStageConfig, Generator, Judge, run_cai
from align.cli import main
from align.config import load_config
from align.errors import ConfigError, KeelError
from align.evaluate import generate_batch
from align.generate import encode_chats, generation_kwargs
from align.models import load_policy
from align.rollout import ChatGenerator, TransformersRolloutEngine, chat_generator
from tests.align.test_ppo_vllm import vllm_tiny_model  # noqa: F401 (fixture: a tiny model that writes words)
from tests.conftest import REPO, write_jsonl

CONVS = [[{"role": "user", "content": "Say hello."}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is two plus two, exactly?"}]]


def _cai_cfg(*extra):
    return load_config(CAIStageConfig, REPO / "configs" / "cai.yaml", list(extra))


@pytest.fixture(scope="module")
def tiny(vllm_tiny_model):
    """A tiny Llama initialised wide enough that greedy decoding writes words, not only newlines."""
    return load_policy(str(vllm_tiny_model))


def _old_generation(model, tok, convs, max_new_tokens, temperature):
    """What CAI's Generator and eval's generate_batch ran before the seam (the reference)."""
    enc = encode_chats(tok, convs, model.device)
    out = model.generate(**enc, **generation_kwargs(tok, max_new_tokens, temperature))
    return [t.strip() for t in tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]


def test_cai_engine_vllm_without_vllm_is_a_config_error_naming_engine(monkeypatch):
    monkeypatch.setattr("align.rollout.vllm_installed", lambda: False)
    with pytest.raises(ConfigError) as err:
        _cai_cfg("--engine", "vllm")
    msg = str(err.value)
    assert "engine" in msg and "not installed" in msg and "Traceback" not in msg
    with pytest.raises(ConfigError, match="engine"):
        _cai_cfg("--engine", "sglang")
    assert _cai_cfg().engine == "auto" and _cai_cfg("--engine", "transformers").engine == "transformers"
    assert _cai_cfg("--vllm.gpu_memory_utilization", "0.5").vllm.gpu_memory_utilization == 0.5


def test_eval_engine_vllm_without_vllm_exits_with_an_error_naming_engine(monkeypatch, capsys, tiny_model_dir):
    monkeypatch.setattr("align.rollout.vllm_installed", lambda: False)
    loaded = []
    monkeypatch.setattr("align.models.load_policy", lambda *a, **k: loaded.append(a))
    assert main(["eval", str(tiny_model_dir), "--engine", "vllm", "--n", "1"]) == 2
    err = capsys.readouterr().err
    assert "--engine" in err and "not installed" in err and "Traceback" not in err
    assert not loaded  # refused before loading anything
    with pytest.raises(KeelError, match="--engine.*not installed"):
        chat_generator("vllm", None, None, None, field="--engine")


def test_auto_is_the_transformers_engine_without_cuda(monkeypatch, tiny, tmp_path, capsys):
    monkeypatch.setattr("align.rollout.vllm_installed", lambda: True)  # installed, but no GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model, tok, source = tiny
    assert chat_generator("auto", model, tok, source).name == "transformers"
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": [{"role": "user", "content": "hi"}]}])
    run_cai(_cai_cfg("--model", source.path, "--output_dir", str(tmp_path / "cai"), "--data.path", str(data),
                     "--max_new_tokens", "8", "--judge.enabled", "false"))
    assert "[keel] generation engine: transformers (engine: auto)" in capsys.readouterr().out


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_transformers_engine_is_the_old_generation(tiny, temperature):
    """Greedy, and sampling under the same seed: CAI's Generator, eval's generate_batch and the
    ChatGenerator give exactly the text the pre-seam code gave."""
    model, tok, source = tiny
    torch.manual_seed(7)
    expected = _old_generation(model, tok, CONVS, 12, temperature)
    assert all(expected)  # text to compare, not empty strings
    chat = chat_generator("transformers", model, tok, source)
    torch.manual_seed(7)
    assert chat(CONVS, 12, temperature) == expected
    torch.manual_seed(7)
    assert Generator(model, tok, 12, temperature)(CONVS) == expected
    if temperature == 0:
        assert generate_batch(model, tok, CONVS, 12, batch_size=1) == \
            _old_generation(model, tok, CONVS[:1], 12, 0) + _old_generation(model, tok, CONVS[1:], 12, 0)


class RecordingEngine:
    """A vLLM-style engine (token ids in, token ids out) that records what it is asked."""

    name = "vllm"

    def __init__(self, outputs):
        self.outputs, self.calls, self.closed = outputs, [], False

    def generate(self, prompt_ids, max_new_tokens, temperature, top_p, top_k=0, repetition_penalty=1.0,
                 progress=False):
        self.calls.append(dict(prompt_ids=prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                               top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty))
        return self.outputs[:len(prompt_ids)]

    def close(self):
        self.closed = True


def test_a_vllm_engine_gets_the_chat_template_ids_and_transformers_sampling_settings(tiny):
    model, tok, _ = tiny
    hello = tok(" Hello there", add_special_tokens=False)["input_ids"]
    four = tok("Four.", add_special_tokens=False)["input_ids"]
    engine = RecordingEngine([hello + [tok.eos_token_id], four])  # the second stopped at max_new_tokens
    chat = ChatGenerator(engine, model, tok)
    # decoded as transformers' output is: special tokens skipped, stripped
    assert chat(CONVS, 16, 0.0) == ["Hello there", "Four."]
    call = engine.calls[-1]
    expected_ids = [tok.apply_chat_template(c, add_generation_prompt=True, return_dict=True)["input_ids"]
                    for c in CONVS]
    assert call["prompt_ids"] == expected_ids  # the same tokens, pads removed, not re-tokenised text
    assert call["temperature"] == 0.0 and call["max_new_tokens"] == 16
    # sampling: transformers' effective top-k (generation config, else 50) and top-p 0.95 (CAI's)
    Generator(model, tok, 16, 0.7, chat=chat)(CONVS)
    call = engine.calls[-1]
    assert call["temperature"] == 0.7 and call["top_p"] == 0.95 and call["top_k"] == (model.generation_config.top_k or 50)
    assert call["repetition_penalty"] == (model.generation_config.repetition_penalty or 1.0)
    # eval sends every prompt at once to an engine that batches itself; the judge's generate mode uses it
    assert generate_batch(model, tok, CONVS, 8, batch_size=1, chat=chat) == ["Hello there", "Four."]
    assert len(engine.calls[-1]["prompt_ids"]) == 2 and engine.calls[-1]["temperature"] == 0.0
    engine.outputs = [tok("A", add_special_tokens=False)["input_ids"], tok("B", add_special_tokens=False)["input_ids"]]
    assert Judge(model, tok, "generate", chat=chat).prob_first(CONVS) == [1.0, 0.0]
    chat.close()
    assert engine.closed


def test_the_vllm_engine_reads_a_checkpoint_and_gets_an_adapters_merged_weights(monkeypatch, tmp_path, tiny_model_dir):
    """Full model: vLLM reads the folder (load_format auto). Adapter: an engine on the base's
    architecture (dummy weights) loaded once with the merged model's weights under plain names."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    built = []

    class FakeVLLM:
        name = "vllm"

        def __init__(self, path, eos, pad, settings, max_model_len, seed=0, distributed=False, load_format="dummy"):
            built.append(self)
            self.path, self.load_format, self.loaded, self.version = path, load_format, None, None

        def load_weights(self, weights):
            self.loaded = {n: t.clone() for n, t in weights}

    monkeypatch.setattr(rollout, "VLLMRolloutEngine", FakeVLLM)
    monkeypatch.setattr(rollout, "vllm_installed", lambda: True)
    model, tok, source = load_policy(str(tiny_model_dir))
    chat = chat_generator("vllm", model, tok, source)
    assert chat.name == "vllm" and built[-1].path == source.path and built[-1].load_format == "auto"
    assert built[-1].loaded is None

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, target_modules=["q_proj"]))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_model_dir)
    merged, tok, asource = load_policy(str(tmp_path / "adapter"))
    assert asource.kind == "adapter"
    chat = chat_generator("vllm", merged, tok, asource)
    engine = built[-1]
    assert engine.path == asource.base.path and engine.load_format == "dummy" and engine.version == "checkpoint"
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert set(engine.loaded) == {n for n, _ in plain.named_parameters()}
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(engine.loaded[q], plain.state_dict()[q])  # the adapter is in the weights
    assert torch.equal(engine.loaded[q], merged.state_dict()[q])
    # an unmerged PEFT model would send adapter tensors under PEFT names: refused
    unmerged, _, _ = load_policy(str(tmp_path / "adapter"), merge_adapters=False)
    with pytest.raises(KeelError, match="merged"):
        chat_generator("vllm", unmerged, tok, asource)
