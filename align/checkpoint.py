"""Keel checkpoints: a Hugging Face ``save_pretrained`` folder plus a ``keel.json`` manifest.

The folder loads with plain transformers (``AutoModelForCausalLM.from_pretrained(dir)``); the
manifest records where it came from: stage, base model, parent checkpoints, the full resolved
config, data fingerprints, final metrics, package versions and time. Writes go to a temporary
sibling folder and are renamed into place, so a crash never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from align.errors import CheckpointError

MANIFEST_NAME = "keel.json"
FORMAT_VERSION = 1
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "adapter_model.safetensors")


class Manifest(BaseModel):
    # Newer Keel versions may add fields; older readers keep them rather than fail.
    """``keel.json`` in a checkpoint folder: stage, model kind, base model and parents (lineage),
    the run's config, data fingerprints, final metrics, package versions and time written.
    """

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    keel_format: int
    stage: str
    model_kind: Literal["policy", "reward", "value"] = "policy"
    base_model: str
    parents: list[str] = []
    config: dict[str, Any] = {}
    data: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    versions: dict[str, str] = {}
    created_at: str


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages that make a checkpoint reproducible (those installed)."""
    out = {"python": platform.python_version()}
    for pkg in ("keel", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def read_json_file(path: str | Path, error: type[Exception] = CheckpointError) -> dict[str, Any]:
    """A JSON object from a file (UTF-8, optional byte-order mark).

    Raises ``error`` naming the file when it cannot be read, is not UTF-8, is not JSON (with line
    and column), is nested too deeply, or holds something other than an object.
    """
    path = Path(path)
    try:
        value = json.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise error(f"{path} is corrupt: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise error(f"{path} is corrupt: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise error(f"{path} is corrupt: JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise error(f"{path} is corrupt: expected a JSON object, found {type(value).__name__}")
    return value


def load_manifest(folder: str | Path) -> Manifest:
    """Read and validate a checkpoint's manifest and check that its files are present."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a Keel checkpoint: no {MANIFEST_NAME}")
    raw = read_json_file(path)
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        fields = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise CheckpointError(f"{path} is invalid: {fields}") from None
    if manifest.keel_format > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format {manifest.keel_format}; this Keel reads up to {FORMAT_VERSION}")
    if not any((folder / f).is_file() for f in _WEIGHT_FILES):
        raise CheckpointError(f"checkpoint {folder} has no weights (expected one of {', '.join(_WEIGHT_FILES)})")
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise CheckpointError(f"checkpoint {folder} has no config.json")
    return manifest


def save_checkpoint(
    model,
    tokenizer,
    out_dir: str | Path,
    *,
    stage: str,
    base_model: str,
    parents: list[str] | None = None,
    config: dict[str, Any] | None = None,
    data: list[dict[str, Any]] | None = None,
    metrics: dict[str, Any] | None = None,
    model_kind: str = "policy",
    merge_lora: bool = True,
    state_dict: dict | None = None,
) -> Path:
    """Write model + tokenizer + manifest to ``out_dir`` atomically and return the folder."""
    out_dir = Path(out_dir)
    try:
        from peft import PeftModel

        if isinstance(model, PeftModel):
            if merge_lora:
                model = model.merge_and_unload()
            else:
                # Adapters alone: point them at the Keel reference of their base so they resolve anywhere.
                for peft_cfg in model.peft_config.values():
                    peft_cfg.base_model_name_or_path = base_model
    except ImportError:
        pass
    manifest = Manifest(
        keel_format=FORMAT_VERSION,
        stage=stage,
        model_kind=model_kind,
        base_model=base_model,
        parents=[str(p) for p in (parents or [])],
        config=config or {},
        data=data or [],
        metrics=_jsonable(metrics or {}),
        versions=package_versions(),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
        tokenizer.save_pretrained(tmp)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest.model_dump(), indent=2, default=str))
        (tmp / "README.md").write_text(model_card(manifest, out_dir.name))
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def model_card(manifest: Manifest, name: str) -> str:
    """A short Hugging Face model card from the manifest: what it is, what it was trained from, on what."""
    parents = ", ".join(f"`{p}`" for p in manifest.parents) or "(none recorded)"
    data = "; ".join(f"`{d.get('path', '?')}` ({d.get('rows', '?')} rows)" for d in manifest.data) or "(not recorded)"
    metrics = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in manifest.metrics.items())
    return (f"---\nlibrary_name: transformers\ntags: [keel, {manifest.stage}]\n---\n\n"
            f"# {name}\n\nA Keel `{manifest.stage}` checkpoint ({manifest.model_kind}), fine-tuned from {parents} "
            f"(base model `{manifest.base_model}`) on {data}.\n\n"
            f"Final metrics: {metrics or '(none)'}.\n\nCreated {manifest.created_at}; the full config, data "
            f"fingerprints and package versions are in `{MANIFEST_NAME}`.\n")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
