"""Stage configs: pydantic models read from YAML, with any field overridable on the command line.

``load_config(StageConfig, "configs/sft.yaml", ["--training.learning_rate", "1e-4"])`` reads the
file, applies the overrides (dotted paths, values parsed as YAML scalars), and validates. Unknown
keys and bad types raise ``ConfigError`` naming the key and where it came from (file or CLI).

Numbers are read the YAML 1.2 way: PyYAML implements YAML 1.1, where ``1e-6`` (no dot) is the
string ``'1e-6'``; that string would pass untyped through ``training.extra`` into TRL and fail in
the optimizer. ``KeelYAMLLoader`` is PyYAML's safe loader plus YAML 1.2's float pattern (a
resolver, not a parser of our own). Every float field refuses ``.inf`` and ``.nan``. Config files
are decoded as UTF-8 with an optional byte-order mark; a file that is not UTF-8 text is a
``ConfigError`` naming the byte offset.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from align.errors import ConfigError


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)


Tracker = Literal["trackio", "wandb", "mlflow", "tensorboard", "none"]


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# Experiment trackers, TRL's ``report_to`` names: one name or a list; "none" or [] for none.
# metrics.jsonl is written whatever this says.
ReportTo = Annotated[list[Tracker], BeforeValidator(_as_list)]


class DataConfig(Strict):
    """Where a stage's data comes from and how it is split (``data:``)."""

    path: str = Field(description="JSONL/JSONL.GZ/Parquet file, or a Hugging Face dataset id")
    format: Literal["auto", "hh", "gsm8k", "trl"] = "auto"
    hf_split: str = Field("train", description="split to read when `path` is a hub dataset")
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    eval_size: int | None = Field(None, ge=0, description="overrides eval_fraction when set")
    max_rows: int | None = Field(None, ge=1, description="read at most this many rows")
    split_seed: int = 0
    skip_malformed: bool = Field(False, description="skip and count bad rows instead of failing")


class LoraSettings(Strict):
    """LoRA adapters (``lora:``): rank, alpha, dropout, target modules, merge on save."""

    enabled: bool = False
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"
    merge_on_save: bool = True

    def to_peft(self, task_type: str = "CAUSAL_LM"):
        """The equivalent ``peft.LoraConfig`` for ``task_type``."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            task_type=task_type,
        )


class TrainingSettings(Strict):
    """Hyper-parameters shared by every trainer; names follow transformers' TrainingArguments."""

    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, ge=-1, description="-1: run num_train_epochs")
    per_device_train_batch_size: int = Field(8, ge=1)
    per_device_eval_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(2e-5, gt=0)
    lr_scheduler_type: str = "linear"
    warmup_steps: float = Field(0, ge=0, description="steps, or a fraction of all steps when below 1")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_length: int = Field(512, ge=8)
    # None = auto: bf16 autocast on a GPU that supports it and on CPUs with native bf16
    # (avx512_bf16 / AMX); elsewhere emulated bf16 measured 2x slower than fp32 (README).
    bf16: bool | None = None
    gradient_checkpointing: bool = False
    logging_steps: int = Field(5, ge=1)
    eval_steps: int | None = Field(None, ge=1, description="None: evaluate once at the end")
    save_steps: int = Field(50, ge=1)
    save_total_limit: int | None = Field(2, ge=1)
    dataloader_num_workers: int = Field(0, ge=0)
    tensorboard: bool = Field(False, description="shorthand for report_to: [tensorboard]")
    report_to: ReportTo = Field(default_factory=list, description="trackio, wandb, mlflow, tensorboard, none")
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="passed as-is to the TRL config, for options Keel does not model",
    )


class StageConfig(Strict):
    """Fields every stage has."""

    stage: str
    model: str = Field("smollm2-135m", description="model reference: embedded name, folder, checkpoint or hub id")
    output_dir: str = "runs/run"
    seed: int = 42
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class TRLStageConfig(StageConfig):
    """A stage run by a TRL trainer: one data source, the shared training settings, optional LoRA."""

    data: DataConfig
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)


C = TypeVar("C", bound=BaseModel)


class KeelYAMLLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2's floats: ``1e-6``, ``1E+3``, ``-2e5`` are numbers."""


KeelYAMLLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
KeelYAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse YAML text with ``KeelYAMLLoader``. Raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=KeelYAMLLoader)  # noqa: S506 (a SafeLoader subclass)


def read_yaml_file(path: str | Path) -> Any:
    """A YAML file's value; a leading UTF-8 byte-order mark is no content.

    Raises ``ConfigError`` naming the file: not found, not UTF-8 text (with the byte offset),
    or not valid YAML (with line and column).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a UTF-8 text file (byte {e.start}: {raw[e.start:e.start + 1]!r}); "
                          "a config is a YAML text file") from None
    if "\x00" in text:
        raise ConfigError(f"{p}: not a text file (it contains NUL bytes); a config is a YAML text file")
    try:
        return load_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None


def _parse_value(text: str) -> Any:
    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text


def parse_overrides(args: list[str]) -> list[tuple[str, Any]]:
    """``["--a.b", "1", "--c=x"]`` -> ``[("a.b", 1), ("c", "x")]``."""
    out: list[tuple[str, Any]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"command line: expected --key value, got {arg!r}")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 2
        else:
            value = "true"  # a bare flag sets a boolean
            i += 1
        out.append((key.replace("-", "_"), _parse_value(value)))
    return out


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"command line: --{dotted}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _has_dotted(data: Any, dotted: str) -> bool:
    """Whether ``data`` holds ``dotted`` (``"a.b"``: ``data["a"]["b"]``)."""
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _format_errors(err: ValidationError, sources: dict[str, str]) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        where = sources.get(key) or next(
            (src for k, src in sources.items() if key.startswith(k + ".")), sources.get("", "config")
        )
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{where}: {key}: {msg}")
    return "invalid config:\n  " + "\n  ".join(lines)


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None, **defaults) -> C:
    """Read ``path`` (YAML), apply ``overrides`` (``["--a.b", "1"]``) and validate as ``cls``.

    A key that ``cls.moved_keys`` maps to a new place (e.g. PPO's ``ppo.learning_rate`` ->
    ``training.learning_rate``), written in the file or on the command line, is rejected with a
    ``ConfigError`` naming the old key, where it came from and the new key. Raises ``ConfigError``
    naming the key and its source for any invalid value or unknown key."""
    data: dict[str, Any] = dict(defaults)
    sources: dict[str, str] = {}
    file_label = str(path) if path else "defaults"
    loaded: Any = {}
    if path is not None:
        p = Path(path)
        loaded = read_yaml_file(p) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of keys to values")
        data.update(loaded)
    sources[""] = file_label
    moved = getattr(cls, "moved_keys", {})
    found = [f"{file_label}: {old} moved to {new}" for old, new in moved.items() if _has_dotted(loaded, old)]
    for key, value in parse_overrides(overrides or []):
        if moved:  # also --ppo '{learning_rate: 1e-5}', which sets the old key through its section
            alone: dict[str, Any] = {}
            _set_dotted(alone, key, value)
            found += [f"command line --{key}: {old} moved to {new}" for old, new in moved.items()
                      if _has_dotted(alone, old)]
        _set_dotted(data, key, value)
        sources[key] = f"command line --{key}"
    if found:
        raise ConfigError(found[0] if len(found) == 1 else "invalid config:\n  " + "\n  ".join(found))
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, sources)) from None
