"""``python -m align STAGE --config FILE [--resume] [--any.field value ...]`` and helper commands.

Every config field can be overridden after the known flags: ``--training.learning_rate 1e-4``,
``--lora.enabled true``, ``--data.max_rows=200``. Works under ``accelerate launch -m align ...``.
"""
from __future__ import annotations

import argparse
import json
import sys

from align.errors import KeelError

# stage name -> (module, config class, run function); imported lazily so `--help` is fast.
STAGES = {
    "sft": ("align.sft", "SFTStageConfig", "run_sft"),
    "dpo": ("align.dpo", "DPOStageConfig", "run_dpo"),
    "kto": ("align.kto", "KTOStageConfig", "run_kto"),
}


def _stage(name: str, argv: list[str]) -> int:
    import importlib

    from align.config import load_config

    parser = argparse.ArgumentParser(prog=f"python -m align {name}",
                                     description=f"Run the {name} stage. Unknown --key value pairs override config fields.")
    parser.add_argument("--config", help="YAML config file (configs/%s.yaml)" % name)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args, overrides = parser.parse_known_args(argv)
    module_name, cls_name, fn_name = STAGES[name]
    module = importlib.import_module(module_name)
    cfg = load_config(getattr(module, cls_name), args.config, overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return 0
    out = getattr(module, fn_name)(cfg, resume=args.resume)
    print(f"[keel] checkpoint written to {out}")
    return 0


def _plot(argv: list[str]) -> int:
    from align.plot import plot_run

    p = argparse.ArgumentParser(prog="python -m align plot", description="PNG curves of a run's metrics.jsonl")
    p.add_argument("run_dir")
    p.add_argument("--out", help="folder for the PNGs (default RUN_DIR/plots)")
    a = p.parse_args(argv)
    for path in plot_run(a.run_dir, a.out):
        print(path)
    return 0


def _chat(argv: list[str]) -> int:
    from align.generate import chat_reply
    from align.models import load_policy

    p = argparse.ArgumentParser(prog="python -m align chat", description="One chat turn with a model")
    p.add_argument("model", help="model reference (embedded name, checkpoint, folder or hub id)")
    p.add_argument("message")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    a = p.parse_args(argv)
    model, tok, _ = load_policy(a.model)
    messages = ([{"role": "system", "content": a.system}] if a.system else []) + [{"role": "user", "content": a.message}]
    print(chat_reply(model, tok, messages, max_new_tokens=a.max_new_tokens, temperature=a.temperature))
    return 0


def _info(argv: list[str]) -> int:
    from align.models import resolve_model

    p = argparse.ArgumentParser(prog="python -m align info", description="Resolve a model reference and show its manifest")
    p.add_argument("model")
    a = p.parse_args(argv)
    src = resolve_model(a.model)
    print(json.dumps({"ref": src.ref, "kind": src.kind, "path": src.path,
                      "manifest": src.manifest.model_dump() if src.manifest else None}, indent=2, default=str))
    return 0


def _retrain(argv: list[str]) -> int:
    from align.retrain import retrain

    p = argparse.ArgumentParser(prog="python -m align retrain",
                                description="Export the app's feedback and train a new checkpoint on it. "
                                            "Unknown --key value pairs override config fields.")
    p.add_argument("--from-feedback", required=True, metavar="DB", help="the app's feedback database (runs/feedback.db)")
    p.add_argument("--config", help="a kto or dpo config (default configs/kto.yaml)")
    p.add_argument("--resume", action="store_true")
    a, overrides = p.parse_known_args(argv)
    out = retrain(a.from_feedback, a.config, overrides, resume=a.resume)
    print(f"[keel] checkpoint written to {out}\n[keel] serve it: python -m serve --checkpoint {out}")
    return 0


COMMANDS = {"plot": _plot, "chat": _chat, "info": _info, "retrain": _retrain}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = sorted(STAGES) + sorted(COMMANDS)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m align {%s} ...\n\nstages: %s\ncommands: plot RUN_DIR, chat MODEL MESSAGE, info MODEL, retrain --from-feedback DB"
              % (",".join(names), ", ".join(sorted(STAGES))))
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd in STAGES:
            return _stage(cmd, rest)
        if cmd in COMMANDS:
            return COMMANDS[cmd](rest)
        print(f"error: unknown command {cmd!r}; choose from {', '.join(names)}", file=sys.stderr)
        return 2
    except KeelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
