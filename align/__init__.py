"""Keel's training side: model loading, checkpoints, configs, data, and one stage per method.

Public entry points used by the rest of Keel (``serve`` imports only these, never the trainers):
``resolve_model``, ``load_policy``, ``load_tokenizer``, ``load_reward_model``, ``load_value_model``,
``load_manifest``, ``save_checkpoint``.

The errors are imported here; everything else on first use (PEP 562), so that ``import
align.errors`` (as ``retrieval`` does) or ``from align import KeelError`` does not import torch.
"""
from __future__ import annotations

import importlib

from align.errors import CheckpointError, ConfigError, DataError, KeelError, ModelNotFoundError

_LAZY = {name: "align.models" for name in ("resolve_model", "load_tokenizer", "load_policy", "load_reward_model",
                                           "load_value_model", "pick_device", "pick_dtype")}
_LAZY.update({name: "align.checkpoint" for name in ("Manifest", "load_manifest", "save_checkpoint")})

__all__ = [
    "KeelError", "ConfigError", "DataError", "ModelNotFoundError", "CheckpointError",
    "resolve_model", "load_tokenizer", "load_policy", "load_reward_model", "load_value_model",
    "pick_device", "pick_dtype", "Manifest", "load_manifest", "save_checkpoint",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'align' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
