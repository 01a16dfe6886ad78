"""PPO with ``rollout.engine: vllm`` on vLLM's CPU build: weight sync, recomputed log-probs and the
loop, in one process with vLLM (tests/align/vllm_ppo_check.py, run with .venv-vllm's Python, where
scripts/setup_vllm_cpu.sh also installs Keel's training imports). Marked ``vllm``: ``.ci/run``
runs it after building that venv; ``pytest -m vllm`` here. About 30 s per case on 2 cores.

Not covered on a CPU: sleep/wake (vLLM's sleep mode is CUDA-only; the engine skips it off CUDA),
bf16, ZeRO-3 gathering and the multi-process ``external_launcher`` engine."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.align.test_ppo import PROMPTS
from tests.conftest import write_jsonl

pytestmark = pytest.mark.vllm
REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("KEEL_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))


def _unavailable(why: str):
    if os.environ.get("KEEL_REQUIRE_VLLM"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    if not VLLM_PYTHON.is_file():
        _unavailable(f"no vLLM venv at {VLLM_PYTHON} (scripts/setup_vllm_cpu.sh)")
    probe = subprocess.run([str(VLLM_PYTHON), "-c", "import vllm, accelerate, peft, datasets"], capture_output=True,
                           text=True)
    if probe.returncode:
        _unavailable(f"{VLLM_PYTHON} lacks vllm or Keel's training imports ({probe.stderr.strip().splitlines()[-1]}); "
                     "rerun scripts/setup_vllm_cpu.sh")
    return VLLM_PYTHON


@pytest.fixture(scope="module")
def vllm_tiny_model(tmp_path_factory, embedded_dir) -> Path:
    """A two-layer Llama with SmolLM2's tokenizer that vLLM's CPU attention accepts (head size 32:
    its kernels take multiples of 32), initialised wide enough (std 0.2) that greedy decoding
    does not repeat one token, so that a weight change shows in the output."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    config = AutoConfig.from_pretrained(embedded_dir)
    config.update(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=32, max_position_embeddings=1024, initializer_range=0.2))
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-vllm")
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(embedded_dir).save_pretrained(out)
    return out


def _check(python: Path, model: Path, tmp_path: Path, *flags) -> dict:
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(python), "-m", "tests.align.vllm_ppo_check", str(model), str(data),
                           str(tmp_path / "ppo"), *flags], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n[vllm-ppo] {' '.join(flags) or 'full'}: engine built in {res['init_s']} s, sync {res['sync_s']} s, "
          f"two updates {res['train_s']} s, whole check {res['total_s']} s")
    return res


def _assert_engine_follows_the_policy(res: dict):
    assert res["engine"] == "vllm"
    assert not res["dummy_equal"]                        # before the first sync: vLLM's dummy weights
    assert res["initial_equal"]                          # after it: greedy(engine) == greedy(policy)
    assert res["perturbation_changes_policy"] and res["stale_engine_differs"]
    assert res["synced_equal"]                           # the perturbed weights, synced
    assert res["stops_at_eos"] and res["eos_mask_row"] == [1, 1, 1, 0, 0, 0, 0, 0] and res["eos_padded_after"]
    # a PPO update on the engine's rollout: log-probs recomputed, the first epoch's ratio exactly 1
    assert res["engine_version_at_rollout"] == 0 and res["fused_first_pass"]
    assert res["logp_old_finite"] and res["logp_old_zero_off_mask"] and res["rollout_T"] == 8
    assert res["first_epoch"]["approx_kl"] == 0.0 and res["first_epoch"]["clip_frac"] == 0.0
    assert res["first_epoch"]["grad_norm"] > 0
    # after the update the engine is stale until synced, then follows again
    assert res["update_changed_policy"] and res["stale_after_update_differs"] and res["after_update_equal"]
    # the loop: two more updates, each synced before its rollout, logged
    assert res["train_steps"] == [2, 3] and res["train_finite"] and res["engine_version_end"] == 2


def test_vllm_engine_follows_the_full_policy_through_ppo_updates(vllm_python, vllm_tiny_model, tmp_path):
    _assert_engine_follows_the_policy(_check(vllm_python, vllm_tiny_model, tmp_path))


def test_vllm_engine_gets_the_merged_lora_weights(vllm_python, vllm_tiny_model, tmp_path):
    res = _check(vllm_python, vllm_tiny_model, tmp_path, "--lora")
    _assert_engine_follows_the_policy(res)
    assert res["lora_still_unmerged"] and res["lora_policy_unchanged_by_sync"]
