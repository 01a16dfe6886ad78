"""What every trainer shares: run folders, resume, seeds, metrics.jsonl, TensorBoard, the final checkpoint.

Trainers are TRL's (SFT, reward, DPO, KTO, GRPO) or Keel's own PPO. A TRL stage turns its config
into trainer arguments with ``trainer_arguments`` and finishes with ``train_and_save`` (which
calls ``write_checkpoint``); PPO, on ``accelerate`` without a TRL trainer, finishes with
``save_trained_model`` directly; CAI writes data (SFT rows, preference pairs), no checkpoint.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

from align.checkpoint import save_checkpoint
from align.config import StageConfig, TrainingSettings
from align.errors import ConfigError, KeelError
from align.models import ModelSource

METRICS_FILE = "metrics.jsonl"


class MetricsLogger(TrainerCallback):
    """Appends every logged dict to ``metrics.jsonl`` as one JSON line with step, epoch and time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Append the logged numbers (and strings) with step, epoch and time; main process only."""
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time(), 3)}
        record.update({k: v for k, v in logs.items() if isinstance(v, (int, float, str, bool)) or v is None})
        append_metrics(self.path, record)


def append_metrics(path: str | Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line to ``path`` and flush it."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (``path``: the file or its run folder); a line cut short
    by a crash is skipped. Raises KeelError when there is no metrics file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise KeelError(f"no {METRICS_FILE} at {path}")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return out


def last_trainer_checkpoint(output_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` folder transformers' Trainer wrote in ``output_dir``, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    return Path(last) if last else None


_WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
            "actor_critic.pt")


def checkpoint_problem(folder: Path) -> str | None:
    """Why a ``checkpoint-N`` folder (a TRL/transformers one, or Keel's PPO one) is incomplete, or
    None when it is complete: ``trainer_state.json`` is a JSON object, weights are present, every
    ``.safetensors`` file is as long as its header says, every index's shards exist, and every
    ``.pt``/``.bin`` file (a zip archive, as ``torch.save`` writes) has its central directory.
    Reads headers only (kilobytes), not the tensors."""
    import struct
    import zipfile

    state = folder / "trainer_state.json"
    try:
        if not isinstance(json.loads(state.read_text(encoding="utf-8")), dict):
            return "trainer_state.json is not a JSON object"
    except FileNotFoundError:
        return "no trainer_state.json"
    except (OSError, ValueError, RecursionError):
        return "trainer_state.json is cut short or corrupt"
    if not any((folder / w).is_file() for w in _WEIGHTS):
        return "no weights file"
    for f in sorted(folder.iterdir()):
        if f.name.endswith(".safetensors"):
            try:
                with open(f, "rb") as fh:
                    (n,) = struct.unpack("<Q", fh.read(8))
                    header = json.loads(fh.read(n))
                end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
                if f.stat().st_size < 8 + n + end:
                    return f"{f.name} is cut short"
            except (OSError, ValueError, KeyError, TypeError, struct.error):
                return f"{f.name} is cut short or corrupt"
        elif f.name.endswith(".index.json"):
            try:
                shards = set(json.loads(f.read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return f"{f.name} is cut short or corrupt"
            missing = sorted(s for s in shards if not (folder / s).is_file())
            if missing:
                return f"{f.name} names missing shard(s) {', '.join(missing)}"
        elif f.suffix in (".pt", ".bin", ".pth"):
            try:
                with zipfile.ZipFile(f):
                    pass
            except (OSError, zipfile.BadZipFile):
                return f"{f.name} is cut short or corrupt"
    return None


def last_complete_checkpoint(output_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete ``checkpoint-N`` in ``output_dir`` and the newer ones that are not
    (each with the reason), newest first."""
    folders = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()] \
        if output_dir.is_dir() else []
    skipped = []
    for folder in sorted(folders, key=lambda p: int(p.name.split("-", 1)[1]), reverse=True):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder, skipped
        skipped.append((folder, problem))
    return None, skipped


def prepare_run_dir(cfg: StageConfig, resume: bool) -> Path | None:
    """Create the run folder; return the trainer checkpoint to resume from, if resuming.

    A folder that already holds a run is never overwritten by accident: continue it with
    ``--resume`` or choose another ``--output_dir``.
    """
    out = Path(cfg.output_dir)
    last = last_trainer_checkpoint(out)
    if resume:
        last, skipped = last_complete_checkpoint(out)
        for folder, problem in skipped:
            # Moved aside (not deleted): the trainer would otherwise count it when rotating
            # checkpoints, and a later save of the same step must not meet it.
            aside = folder.with_name("incomplete-" + folder.name)  # outside the checkpoint-* glob
            shutil.rmtree(aside, ignore_errors=True)
            folder.rename(aside)
            print(f"warning: --resume: skipping {folder.name} ({problem}; probably interrupted while saving); "
                  f"moved it to {aside.name}", file=sys.stderr)
        if last is None:
            raise KeelError(f"--resume: {out} holds no complete checkpoint-N folder to resume from (skipped: "
                            + ", ".join(f"{f.name}: {p}" for f, p in skipped) + ")" if skipped else
                            f"--resume: {out} holds no checkpoint-N folder to resume from")
        if skipped:
            print(f"warning: --resume: resuming from {last.name}, the last complete checkpoint", file=sys.stderr)
        step = int(last.name.rsplit("-", 1)[-1])
        _truncate_metrics(out / METRICS_FILE, step)
    elif last is not None or (out / "model").exists() or (out / METRICS_FILE).exists():
        raise KeelError(f"{out} already holds a run; pass --resume to continue it, or set --output_dir")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return last


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint we resume from, so no step appears twice."""
    if not path.is_file():
        return
    keep = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    tmp.replace(path)


def tensorboard_available() -> bool:
    """Whether a TensorBoard writer (tensorboard or tensorboardX) can be imported."""
    return importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None


# tracker -> the package that must be importable (pip name in brackets when it differs)
_TRACKER_PACKAGES = {"trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard"}


def trackers(report_to: list[str], tensorboard: bool = False, field: str = "training.report_to") -> list[str]:
    """The experiment trackers to log to, checked to be installed: ``report_to`` without "none",
    plus "tensorboard" when the ``tensorboard`` shorthand is on. Raises ``KeelError`` naming the
    field and the package to install for a tracker that is not installed."""
    names = [n for n in dict.fromkeys(report_to) if n != "none"]
    if "none" in report_to and len(set(report_to)) > 1:
        raise KeelError(f"{field}: 'none' cannot be combined with other trackers ({', '.join(names)})")
    if tensorboard and "tensorboard" not in names:
        names.append("tensorboard")
    for name in names:
        found = tensorboard_available() if name == "tensorboard" else importlib.util.find_spec(name) is not None
        if not found:
            raise KeelError(f"{field}: {name} is not installed (pip install {_TRACKER_PACKAGES[name]}); "
                            "metrics.jsonl is written without any tracker")
    return names


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (avx512_bf16 or AMX flags in /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(setting: bool | None) -> bool:
    """Resolve ``training.bf16``: None picks bf16 on a GPU that supports it and on CPUs with native
    bf16. Raises KeelError when bf16 is asked for on a GPU without it.
    """
    import torch

    if torch.cuda.is_available():
        supported = torch.cuda.is_bf16_supported()
        if setting and not supported:
            raise KeelError("training.bf16 is true but this GPU does not support bf16")
        return supported if setting is None else setting
    return cpu_has_native_bf16() if setting is None else setting


def trainer_arguments(cfg: StageConfig, training: TrainingSettings, has_eval: bool) -> dict[str, Any]:
    """Keyword arguments for a TRL ``XConfig`` (all of them subclass TrainingArguments)."""
    import torch

    report_to = trackers(training.report_to, training.tensorboard)
    evaluate_periodically = has_eval and training.eval_steps is not None
    kwargs = dict(
        output_dir=cfg.output_dir,
        seed=cfg.seed,
        data_seed=cfg.seed,
        num_train_epochs=training.num_train_epochs,
        max_steps=training.max_steps,
        per_device_train_batch_size=training.per_device_train_batch_size,
        per_device_eval_batch_size=training.per_device_eval_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        learning_rate=training.learning_rate,
        lr_scheduler_type=training.lr_scheduler_type,
        warmup_steps=training.warmup_steps,
        weight_decay=training.weight_decay,
        max_grad_norm=training.max_grad_norm,
        bf16=use_bf16(training.bf16),
        activation_checkpointing=training.gradient_checkpointing,
        use_cpu=not torch.cuda.is_available(),
        logging_steps=training.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=training.save_steps,
        save_total_limit=training.save_total_limit,
        eval_strategy="steps" if evaluate_periodically else "no",
        eval_steps=training.eval_steps if evaluate_periodically else None,
        dataloader_num_workers=training.dataloader_num_workers,
        report_to=report_to,
        disable_tqdm=False,
    )
    kwargs.update(training.extra)
    return kwargs


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_trainer_kwargs(config_cls, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Type-check ``kwargs`` against the fields of a TRL config dataclass before the run starts.

    ``training.extra`` reaches TRL untyped, and TRL's dataclasses do not check types: a string
    ``'1e-6'`` for ``adam_epsilon`` fails inside the optimizer, far from its cause. Each value is
    validated against the field's annotation with pydantic (lax mode); a number or boolean
    written as a string (``"1e-6"``, ``"true"``) becomes that number or boolean. Returns the
    checked keyword arguments. Raises ``ConfigError`` naming the field: unknown field (with close
    names), wrong type, or a non-finite number.
    """
    import dataclasses
    import difflib
    import math
    import typing

    from pydantic import TypeAdapter, ValidationError

    from align.errors import ConfigError

    name = config_cls.__name__
    fields = {f.name for f in dataclasses.fields(config_cls) if f.init} if dataclasses.is_dataclass(config_cls) else None
    if fields is None:
        return dict(kwargs)
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # an annotation that cannot be resolved: check names only
        hints = {}
    out = {}
    for key, value in kwargs.items():
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=3)
            raise ConfigError(f"training.extra.{key}: {name} has no field {key!r}"
                              + (f" (did you mean {', '.join(close)}?)" if close else ""))
        hint = hints.get(key)
        adapter = None
        if hint is not None:
            try:
                adapter = TypeAdapter(hint)
            except Exception:  # a type pydantic cannot describe: leave it to TRL
                adapter = None
        if adapter is not None:
            try:
                checked = adapter.validate_python(value)
            except ValidationError as e:
                raise ConfigError(f"{name}.{key} = {value!r}: expected {_type_name(hint)} "
                                  f"({e.errors()[0]['msg'].lower()})") from None
            if isinstance(value, str) and type(checked) in (int, float, bool):
                value = checked  # "1e-6" -> 1e-06
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}.{key} = {value}: must be a finite number")
        out[key] = value
    return out


def build_trainer_config(config_cls, **kwargs):
    """Instantiate a TRL ``XConfig`` after ``check_trainer_kwargs``; its validation errors become a
    ``ConfigError``."""
    from align.errors import ConfigError

    kwargs = check_trainer_kwargs(config_cls, kwargs)
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{config_cls.__name__} rejected the training settings: {e}") from None


def final_metrics(trainer, result, has_eval: bool) -> dict[str, Any]:
    """Training loss plus the eval metrics at the last step (evaluating once more only if needed)."""
    metrics: dict[str, Any] = {"train_loss": result.training_loss, "global_step": result.global_step}
    if getattr(result, "metrics", None) and "train_runtime" in result.metrics:
        metrics["train_runtime"] = result.metrics["train_runtime"]
    if has_eval:
        last_eval = next((h for h in reversed(trainer.state.log_history)
                          if "eval_loss" in h and h.get("step") == result.global_step), None)
        evaluated = last_eval or trainer.evaluate()
        metrics.update({k: v for k, v in evaluated.items() if k.startswith("eval_")})
    return metrics


def lineage(source: ModelSource) -> tuple[str, list[str]]:
    """(base model, parents) of a model we start training from. The parent is always named: by its
    embedded or shipped name where it has one (portable), else by its folder or hub id."""
    from align.models import SHIPPED_MODELS

    parent = source.ref if source.kind == "embedded" or source.ref in SHIPPED_MODELS else source.path
    if source.manifest is not None:
        return source.manifest.base_model, [parent]
    return source.ref, [parent]


def weights_are_sharded(accelerator) -> bool:
    """True when no single process holds the complete weights: DeepSpeed ZeRO-3 or FSDP."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.zero_stage == 3:
        return True
    return getattr(accelerator.state, "fsdp_plugin", None) is not None


def full_state_dict(accelerator, wrapped_model) -> dict | None:
    """The complete state dict of a sharded model, gathered by accelerate (``get_state_dict``);
    None when every process already holds complete weights (single process, DDP, ZeRO-1/2).

    A collective: call it on every process. Under ZeRO-3 the gathered tensors are on the main
    process only. Raises ``KeelError`` when ZeRO-3 is not set up to gather 16-bit weights on save.
    """
    if not weights_are_sharded(accelerator):
        return None
    try:
        return accelerator.get_state_dict(wrapped_model)
    except ValueError as e:
        raise KeelError(f"cannot gather the sharded weights to save them ({e}); set zero3_save_16bit_model: true "
                        "in the accelerate config (configs/accelerate/deepspeed-zero3.yaml does)") from None


def save_trained_model(accelerator, wrapped_model, model, tokenizer, out: Path, cfg: StageConfig, source: ModelSource,
                       data_fingerprints: list[dict], metrics: dict[str, Any], model_kind: str = "policy",
                       merge_lora: bool = True, prefix: str = "") -> Path:
    """Every stage's final save: the trained ``model`` as a Keel checkpoint in ``out``.

    Call on every process: under ZeRO-3/FSDP the weights are gathered first (``full_state_dict``),
    then the main process writes. ``wrapped_model`` is what accelerate prepared (the DeepSpeed
    engine, the FSDP or DDP wrapper); ``model`` is the unwrapped module to save, found at ``prefix``
    (e.g. ``"policy."``) inside ``wrapped_model``'s state dict. A LoRA model whose weights are
    sharded keeps its adapters (``merge_lora`` is not applied): merging needs the full base weights
    on one process.
    """
    state_dict = full_state_dict(accelerator, wrapped_model)
    if state_dict is not None and prefix:
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if accelerator.is_main_process:
        base, parents = lineage(source)
        if state_dict is not None and merge_lora and _is_peft(model):
            print("warning: the weights are sharded (ZeRO-3/FSDP): saving the LoRA adapters unmerged", file=sys.stderr)
            merge_lora = False
        save_checkpoint(model, tokenizer, out, stage=cfg.stage, base_model=base, parents=parents,
                        config=cfg.model_dump(mode="json"), data=data_fingerprints, metrics=metrics,
                        model_kind=model_kind, merge_lora=merge_lora, state_dict=state_dict)
        # TRL's trainer wrote a card into the run folder naming the base as None (a local folder):
        # replace it with the checkpoint's own card, which names the parent.
        card = out / "README.md"
        if card.is_file() and Path(cfg.output_dir).is_dir() and out.parent.resolve() == Path(cfg.output_dir).resolve():
            (Path(cfg.output_dir) / "README.md").write_text(card.read_text())
    accelerator.wait_for_everyone()
    return out


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def write_checkpoint(trainer, tokenizer, cfg: StageConfig, source: ModelSource, data_fingerprints: list[dict],
                     metrics: dict[str, Any], model_kind: str = "policy", merge_lora: bool = True) -> Path:
    """Save a TRL trainer's model as a Keel checkpoint in ``output_dir/model`` (``save_trained_model``).

    The trainer's own periodic ``checkpoint-N`` saves are transformers' ``Trainer._save_checkpoint``,
    which gathers ZeRO-3 / FSDP weights itself."""
    return save_trained_model(trainer.accelerator, trainer.model_wrapped, trainer.accelerator.unwrap_model(trainer.model),
                              tokenizer, Path(cfg.output_dir) / "model", cfg, source, data_fingerprints, metrics,
                              model_kind=model_kind, merge_lora=merge_lora)


def metrics_callbacks(cfg: StageConfig) -> list:
    """The callbacks every TRL stage adds: metrics.jsonl in ``output_dir``."""
    return [MetricsLogger(Path(cfg.output_dir) / METRICS_FILE)]


def train_and_save(trainer, cfg, last: Path | None, tokenizer, source: ModelSource, data_fingerprints: list[dict],
                   has_eval: bool, model_kind: str = "policy", extra_metrics: dict[str, Any] | None = None) -> Path:
    """Train (resuming from ``last`` if given), collect the final metrics, write the Keel checkpoint.
    Raises ConfigError before training as ``check_adapter_start`` says."""
    check_adapter_start(cfg, source, trainer.accelerator.unwrap_model(trainer.model))
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    metrics = final_metrics(trainer, result, has_eval=has_eval)
    metrics.update(extra_metrics or {})
    return write_checkpoint(trainer, tokenizer, cfg, source, data_fingerprints, metrics, model_kind=model_kind,
                            merge_lora=cfg.lora.merge_on_save)


def _continues(model, source: ModelSource) -> bool:
    """True when ``model`` is the PEFT model loaded from the adapter ``source`` (trained in place)."""
    return _is_peft(model) and getattr(model, "keel_adapter_source", None) == source.path


def check_adapter_start(cfg, source: ModelSource, model) -> None:
    """Raise ConfigError when the start model ``source`` is a LoRA adapter merged into its base and the
    run would save new LoRA adapters unmerged: they would be recorded on the adapter's base and load
    without the start adapter's training. (SFT continues a start adapter in place instead.)"""
    if (source.kind == "adapter" and cfg.lora.enabled and not cfg.lora.merge_on_save
            and not _continues(model, source)):
        raise ConfigError(f"lora.merge_on_save: false cannot be used when model ({source.ref}) is a LoRA adapter in "
                          f"the {cfg.stage} stage: its new adapters would sit on the merged start model; set "
                          "lora.merge_on_save: true (or start SFT from the adapter, which continues it)")


def make_trainer(trainer_cls, cfg, model, args, train, evaluation, tokenizer, peft_task: str = "CAUSAL_LM", **extra):
    """A TRL trainer with what every Keel stage passes: data splits, tokenizer, LoRA, metrics.jsonl.
    A model that already is a PEFT model (an adapter being continued) gets no new LoRA config."""
    new_lora = cfg.lora.enabled and not _is_peft(model)
    return trainer_cls(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                       processing_class=tokenizer, peft_config=cfg.lora.to_peft(peft_task) if new_lora else None,
                       callbacks=metrics_callbacks(cfg), **extra)
