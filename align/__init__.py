"""Keel's training side: model loading, checkpoints, configs, data, and one stage per method.

Public entry points used by the rest of Keel (``serve`` imports only these, never the trainers):
``resolve_model``, ``load_policy``, ``load_tokenizer``, ``load_reward_model``, ``load_value_model``,
``load_manifest``, ``save_checkpoint``.
"""
from align.errors import KeelError, ConfigError, DataError, ModelNotFoundError, CheckpointError
from align.models import (
    resolve_model,
    load_tokenizer,
    load_policy,
    load_reward_model,
    load_value_model,
    pick_device,
    pick_dtype,
)
from align.checkpoint import Manifest, load_manifest, save_checkpoint

__all__ = [
    "KeelError", "ConfigError", "DataError", "ModelNotFoundError", "CheckpointError",
    "resolve_model", "load_tokenizer", "load_policy", "load_reward_model", "load_value_model",
    "pick_device", "pick_dtype", "Manifest", "load_manifest", "save_checkpoint",
]
