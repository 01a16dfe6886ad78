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
    "rm": ("align.rm", "RMStageConfig", "run_rm"),
    "grpo": ("align.grpo", "GRPOStageConfig", "run_grpo"),
    "ppo": ("align.ppo", "PPOStageConfig", "run_ppo"),
    "cai": ("align.cai", "CAIStageConfig", "run_cai"),
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
    print(f"[keel] {'data' if name == 'cai' else 'checkpoint'} written to {out}")
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


def _rm_eval(argv: list[str]) -> int:
    from pathlib import Path

    from align.config import DataConfig
    from align.data import load_data
    from align.rewards import EnsembleScorer, load_reward
    from align.rm import ensemble_combinations, evaluate_pairs, format_table

    p = argparse.ArgumentParser(prog="python -m align rm-eval",
                                description="Pairwise accuracy, margin and calibration of a reward model (or ensemble) "
                                            "on a preference file")
    p.add_argument("checkpoint", help="reward checkpoint, or an ensemble folder (keel-ensemble.json)")
    p.add_argument("data", help="preference data: HH JSONL(.gz), TRL pairs, the app's preference.jsonl")
    p.add_argument("--max-rows", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", help="JSON file (default: CHECKPOINT/rm-eval-DATANAME.json)")
    a = p.parse_args(argv)
    data = load_data(DataConfig(path=a.data, eval_size=0, max_rows=a.max_rows), accept=("preference",))
    scorer = load_reward(a.checkpoint, batch_size=a.batch_size)
    for member in getattr(scorer, "members", [scorer]):
        if hasattr(member, "progress"):
            member.progress = True  # a bar per model: 512 pairs are minutes of CPU work
    print(f"[keel] scoring {len(data.train)} pairs ({2 * len(data.train)} answers) with {scorer.name}", flush=True)
    max_length = getattr(scorer, "max_length", None) or 1024
    if isinstance(scorer, EnsembleScorer):
        combiners, metrics = ensemble_combinations(scorer, data.train, with_metrics=True)
        metrics["combiners"] = combiners
    else:
        metrics = evaluate_pairs(scorer, data.train, max_length)
    metrics.update(reward=scorer.name, data=a.data)
    print(format_table(metrics))
    if "combiners" in metrics:
        print("\nensemble accuracy by combiner: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics["combiners"].items()))
    name = Path(a.data).name.split(".")[0]
    out = Path(a.out) if a.out else Path(a.checkpoint) / f"rm-eval-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2))
    print(f"[keel] metrics written to {out}")
    return 0


def _eval(argv: list[str]) -> int:
    from pathlib import Path

    from align import evaluate as ev
    from align.models import load_policy

    p = argparse.ArgumentParser(prog="python -m align eval",
                                description="GSM8K accuracy and win rate against the parent under a reward model")
    p.add_argument("checkpoint", help="model reference: checkpoint, run folder, embedded name, folder or hub id")
    p.add_argument("--suite", default="gsm8k", help="comma-separated: gsm8k, winrate")
    p.add_argument("--n", type=int, default=200, help="problems (gsm8k) or prompts (winrate)")
    p.add_argument("--gsm8k-data", default=str(ev.HELDOUT_GSM8K))
    p.add_argument("--prompt-suffix", default=ev.GSM8K_SUFFIX, help="appended to each GSM8K question")
    p.add_argument("--parent", help="winrate: the model to compare with (default: the manifest's parent)")
    p.add_argument("--rm", help="winrate: reward checkpoint, ensemble folder, or module:function")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--engine", default="auto", choices=("auto", "transformers", "vllm"),
                   help="what writes the answers: transformers' generate, a vLLM engine built from the checkpoint "
                        "(and one from the parent), or auto: vLLM on a CUDA GPU when installed (default)")
    p.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.3,
                   help="with the vLLM engine: the fraction of the GPU each engine may take")
    p.add_argument("--out", help="JSON file (default CHECKPOINT/eval.json, or runs/eval-NAME.json for non-checkpoints)")
    a = p.parse_args(argv)
    suites = [s.strip() for s in a.suite.split(",") if s.strip()]
    unknown = set(suites) - {"gsm8k", "winrate"}
    if unknown:
        raise KeelError(f"--suite: unknown {', '.join(sorted(unknown))}; choose gsm8k, winrate")
    if "winrate" in suites and not a.rm:
        raise KeelError("--suite winrate needs --rm (a reward checkpoint, ensemble folder or module:function)")
    from align.rollout import VLLMRolloutSettings, chat_generator, check_engine_available

    try:
        check_engine_available(a.engine, "--engine")
    except ValueError as e:
        raise KeelError(f"--engine: {e}") from None
    if not 0 < a.vllm_gpu_memory_utilization < 1:
        raise KeelError(f"--vllm-gpu-memory-utilization: {a.vllm_gpu_memory_utilization} is not between 0 and 1")
    vllm = VLLMRolloutSettings(gpu_memory_utilization=a.vllm_gpu_memory_utilization)
    model, tok, source = load_policy(a.checkpoint)
    chat = chat_generator(a.engine, model, tok, source, vllm, field="--engine")
    print(f"[keel] generation engine: {chat.name} (--engine {a.engine})", flush=True)
    results = []
    for suite in suites:
        if suite == "gsm8k":
            results.append(ev.gsm8k_suite(model, tok, a.n, Path(a.gsm8k_data), a.max_new_tokens, a.batch_size,
                                          a.prompt_suffix, chat=chat))
        else:
            parent = a.parent or ev.parent_of(source)
            results.append(ev.winrate_suite(model, tok, parent, a.rm, a.n, min(a.max_new_tokens, 128), a.batch_size,
                                            chat=chat, engine=a.engine, vllm=vllm))
    chat.close()
    print(ev.format_results(results))
    if a.out:
        out = Path(a.out)
    elif source.manifest is not None:
        out = Path(source.path) / "eval.json"
    else:
        out = Path("runs") / f"eval-{Path(a.checkpoint).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"checkpoint": a.checkpoint, "results": results}, indent=2))
    print(f"[keel] results written to {out}")
    return 0


def _retrain(argv: list[str]) -> int:
    from align.retrain import ANCHOR_SHARE, retrain

    p = argparse.ArgumentParser(prog="python -m align retrain",
                                description="Export the app's feedback and train a new checkpoint on it. "
                                            "Unknown --key value pairs override config fields.")
    p.add_argument("--from-feedback", required=True, metavar="DB",
                   help="the app's feedback database (runs/feedback.db, or its postgresql:// URL)")
    p.add_argument("--config", help="a kto, dpo or sft config (default configs/kto.yaml; sft trains on the liked and "
                                    "edited answers only)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--allow-one-source", action="store_true",
                   help="train even if all feedback comes from one session or is about one prompt")
    p.add_argument("--view", choices=["auto", "answers", "trajectories"], default="auto",
                   help="train on a rated agent answer's steps (trajectories), on the answer as the chat showed "
                        "it (answers), or on steps where the app stored them (auto, default)")
    p.add_argument("--anchor", type=float, metavar="SHARE",
                   help="sft only: anchor rows per feedback row, the parent's own plain-chat answers to the users' "
                        f"questions, which keep the model near its parent off the agent's prompts (default "
                        f"{ANCHOR_SHARE:g}; 0: off)")
    a, overrides = p.parse_known_args(argv)
    out = retrain(a.from_feedback, a.config, overrides, resume=a.resume, allow_one_source=a.allow_one_source,
                  view=a.view, anchor=a.anchor)
    print(f"[keel] checkpoint written to {out}\n[keel] serve it: python -m serve --checkpoint {out}")
    return 0


COMMANDS = {"plot": _plot, "chat": _chat, "info": _info, "retrain": _retrain, "rm-eval": _rm_eval, "eval": _eval}


def main(argv: list[str] | None = None) -> int:
    """``python -m align STAGE|COMMAND ...``: run it and return the exit status (0 done, 2 a
    KeelError, printed without a traceback).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    names = sorted(STAGES) + sorted(COMMANDS)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m align {%s} ...\n\nstages: %s\ncommands: plot RUN_DIR, chat MODEL MESSAGE, info MODEL, retrain --from-feedback DB, rm-eval CHECKPOINT DATA, eval CHECKPOINT --suite gsm8k,winrate"
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
