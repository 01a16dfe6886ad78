"""``python -m align retrain --from-feedback DB``: close the loop from the app's feedback to a new checkpoint.

Exports the feedback database (the app's SQLite file) to TRL datasets inside the new run folder,
then runs the configured stage on them: KTO on thumbs up/down (default), DPO on pairs from edits
and regenerates, or SFT on what users liked or wrote (``configs/sft.yaml``: rejection-sampling
fine-tuning, Dong et al. 2023 "RAFT"; the desirable rows only); a rated agent answer trains the agent's steps (the ReAct prompt and
scratchpad the app stored with it), not just the answer text. The model defaults to the checkpoint that most of the feedback was
given on, so the new checkpoint's manifest names it as parent and the app can switch to it.

Sized for a CPU and a few dozen rows: unless the command line says otherwise, the number of steps
follows the data (``RETRAIN_EPOCHS`` passes over it, not the config's fixed ``max_steps``), and
without a GPU the run trains LoRA adapters (merged on save) at a LoRA learning rate. It prints, before
anything heavy (the anchor rows' sampling, which says so on its own line first), how many rows,
which parent, where it writes and a rough time estimate; the trainer's progress bar then counts steps. A refused run (too few rows, bad config) leaves no folder.
Guard rail of the loop (``check_sources``): feedback that all comes from one session, or whose rows are
all about one prompt, is refused unless ``--allow-one-source`` says it is deliberate.

Anchor rows (SFT, ``--anchor SHARE``, default ``ANCHOR_SHARE``): SFT has no KL term, and SFT on agent
trajectories alone moves the model far on prompts it was not trained on (the loop's first SFT run: the
users' questions asked in plain chat drew bare numbers, KL about 20 nats per answer to the parent, while
the agent's own prompts moved 0.4). So the parent's own answers to the users' questions, asked without
the agent's system prompt (so the chat template's default one applies; Keel's app sends its own
in plain chat) and sampled at temperature 1, are mixed into the SFT data (split for eval like any
row, so ``eval_loss`` includes them): maximum likelihood on
samples of pi_0 pulls pi towards pi_0 there (pseudo-rehearsal, Robins 1995; the role InstructGPT's
PPO-ptx pretraining mix plays, Ouyang et al. 2022). Only agent rows give anchor questions (a
plain-chat row's prompt is already a training prompt, with the user's answer as its target).
Sampled with ``generate`` on the parent (``align.logprobs.sampling_kwargs``, no logits kept);
answers cut at ``ANCHOR_MAX_NEW_TOKENS`` without their end, or empty, are dropped and counted, and
a run that writes fewer anchor rows than asked says so.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from align.config import load_config, read_yaml_file
from align.errors import ConfigError, DataError

DATASET_FOR_STAGE = {"kto": "kto.jsonl", "dpo": "preference.jsonl", "sft": "sft.jsonl"}
# what each stage counts in the export's summary, and calls it in messages
ROWS_FOR_STAGE = {"kto": ("unpaired_rows", "rated answers"), "dpo": ("pairs", "preference pairs"),
                  "sft": ("unpaired_desirable", "liked or edited answers")}
HOW_TO_GET = {"kto": "thumbs up and down", "dpo": "edits and regenerates make pairs", "sft": "thumbs up and edits"}
MIN_ROWS = 8
ANCHOR_SHARE = 0.5            # anchor rows per SFT row (SFT retrains only; 0 turns them off)
MAX_ANCHOR_SHARE = 10.0
ANCHOR_MAX_NEW_TOKENS = 320
ANCHOR_BATCH = 16
RETRAIN_EPOCHS = 2
TRAJECTORY_MAX_LENGTH = 768  # tokens: configs/agent-sft.yaml's, so a trajectory is not cut before its answer
LORA_LEARNING_RATE = 5e-5
CPU_MICRO_BATCH = 4
# Rough CPU throughput for the estimate printed at the start, in FLOP/s per core (fp32, measured
# order of magnitude on the 2-core bench machine; the progress bar shows the real rate).
CPU_FLOPS_PER_CORE = 5.0e10


def retrain(db: str, config: str | None, overrides: list[str], resume: bool = False,
            allow_one_source: bool = False, view: str = "auto", anchor: float | None = None) -> Path:
    """``python -m align retrain --from-feedback DB``: export the app's feedback database (a SQLite
    path or a postgresql:// URL) to TRL data and train the next checkpoint on it with ``config``
    (default configs/kto.yaml) and ``overrides``; returns the checkpoint folder. Raises ConfigError
    for a missing config file, a stage that cannot train on feedback or an existing output folder,
    DataError for a missing database, too little feedback, or (unless ``allow_one_source``) feedback
    that all comes from one session or one prompt (``check_sources``). ``view``: how a rated agent
    answer becomes a row (``serve.feedback.build_datasets``: its steps where stored, ``auto``).
    ``anchor``: SFT only, anchor rows per feedback row (default ``ANCHOR_SHARE``; see the module
    docstring); ConfigError for a negative share or a share given to a kto/dpo config.
    """
    from serve.feedback import FeedbackStore, display_target, export_feedback  # the app owns the database format

    if config is None:  # the default: ./configs/kto.yaml, else the one beside this Keel (any working folder)
        config = "configs/kto.yaml"
        if not Path(config).is_file():
            config = str(Path(__file__).resolve().parent.parent / "configs" / "kto.yaml")
    if not Path(config).is_file():
        raise ConfigError(f"config file not found: {config}")
    loaded = read_yaml_file(config) or {}
    stage = loaded.get("stage") if isinstance(loaded, dict) else None
    if stage not in DATASET_FOR_STAGE:
        raise ConfigError(f"{config}: stage {stage!r} cannot train on feedback; use a {' or '.join(DATASET_FOR_STAGE)} config")
    if anchor is not None and not (math.isfinite(anchor) and 0 <= anchor <= MAX_ANCHOR_SHARE):
        raise ConfigError(f"--anchor {anchor}: give a share of the feedback rows from 0 (off) to {MAX_ANCHOR_SHARE:g}, "
                          f"e.g. 0.5: that many anchor rows per feedback row")
    if anchor and stage != "sft":
        raise ConfigError(f"--anchor {anchor}: anchor rows are for sft retrains; {config} is a {stage} config "
                          f"({stage}'s loss already keeps the model near its reference)")
    share = (ANCHOR_SHARE if anchor is None else anchor) if stage == "sft" else 0.0
    if "://" not in db and not Path(db).is_file():  # a database URL (postgresql://) is checked when opened
        raise DataError(f"{db}: no feedback database here (the app writes runs/feedback.db by default)")

    given = {o.split("=")[0].lstrip("-").replace("-", "_") for o in overrides if o.startswith("--")}
    out = Path(_value(overrides, "output_dir") or f"runs/{stage}-feedback-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and not resume and any(out.iterdir()):
        raise ConfigError(f"{out} already exists; choose another --output_dir or pass --resume")
    # Export to a scratch folder first: a refused run must not leave a run folder behind.
    scratch = Path(tempfile.mkdtemp(prefix=".retrain-", dir=out.parent if out.parent.exists() else None))
    try:
        summary = export_feedback(db, scratch, view)
        rows = summary[ROWS_FOR_STAGE[stage][0]]
        if rows < MIN_ROWS and view == "trajectories" and summary.get("skipped_without_trajectory"):
            raise DataError(f"{display_target(db)}: only {rows} rows with the agent's steps: "
                            f"{summary['skipped_without_trajectory']} rated answers have no stored steps (plain chat, "
                            "native tool calls, or answers stored by an older Keel); use --view auto or answers")
        if rows < MIN_ROWS:
            raise DataError(f"{display_target(db)}: only {rows} {ROWS_FOR_STAGE[stage][1]} so far; "
                            f"{stage} needs at least {MIN_ROWS}. Collect more feedback in the app ({HOW_TO_GET[stage]}).")
        if not allow_one_source:
            check_sources(db, scratch / DATASET_FOR_STAGE[stage])
        data_name = DATASET_FOR_STAGE[stage]
        extra = ["--output_dir", str(out)]
        if "data.format" not in given:  # the export's TRL format, whatever the config's dataset was
            extra += ["--data.format", "auto"]
        if "model" not in given:
            store = FeedbackStore(db, read_only=True)
            ckpts = Counter(f["checkpoint_id"] for f in store.feedback())
            store.close()
            extra += ["--model", ckpts.most_common(1)[0][0]]
        if summary.get("trajectory_rows") and "training.max_length" not in given:
            # an agent's steps: the ReAct system prompt with the tools, then the scratchpad (the agent SFT's length)
            extra += ["--training.max_length", str(TRAJECTORY_MAX_LENGTH)]
        eval_rows = 0
        if "data.eval_size" not in given and "data.eval_fraction" not in given:
            eval_rows = max(2, rows // 10)
            extra += ["--data.eval_size", str(eval_rows)]
        module = __import__(f"align.{stage}", fromlist=["x"])
        cfg_cls = getattr(module, f"{stage.upper()}StageConfig")
        cfg = load_config(cfg_cls, config, [*extra, *overrides])  # the user's flags win
        n_anchor = 0
        if share > 0 and "data.path" not in given:  # the user's own data file: trained as given
            print(f"[keel] sampling {math.ceil(share * rows)} anchor rows from {cfg.model} (--anchor {share:g}; 0: off)",
                  flush=True)
            n_anchor = write_anchor_rows(cfg.model, scratch / data_name, scratch / "anchor.jsonl",
                                         math.ceil(share * rows), cfg.seed, summary)
            if n_anchor:
                data_name = "sft_anchored.jsonl"
                (scratch / data_name).write_text((scratch / "sft.jsonl").read_text() + (scratch / "anchor.jsonl").read_text())
            (scratch / "summary.json").write_text(json.dumps(summary, indent=2))
            a = summary["anchor"]
            if n_anchor < math.ceil(share * rows):
                print(f"[keel] WARNING: {n_anchor} of {math.ceil(share * rows)} anchor rows written ({a['questions']} "
                      f"questions from agent rows; {a['cut_dropped']} answers cut at {ANCHOR_MAX_NEW_TOKENS} tokens, "
                      f"{a['empty_dropped']} empty); details in feedback/summary.json", flush=True)
        if "data.path" not in given:
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": str(out / "feedback" / data_name)})})
        cfg = _size_for_data(cfg, rows + n_anchor - eval_rows, given)
        plan = describe_plan(cfg, display_target(db), rows, scratch / data_name)
        if n_anchor:
            plan += f"\n[keel] + {n_anchor} anchor rows: the parent's own plain-chat answers to the users' questions"
        print(plan, flush=True)
        out.mkdir(parents=True, exist_ok=True)
        if (out / "feedback").exists():
            shutil.rmtree(out / "feedback")
        shutil.move(str(scratch), str(out / "feedback"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return getattr(module, f"run_{stage}")(cfg, resume=resume)


def anchor_questions(data_file: Path) -> tuple[list[list[dict]], int]:
    """The anchor prompts of an SFT file: each row's conversation without its system turn, from the
    rows that have one (an agent's trajectory: its ReAct system prompt), distinct (by role and
    content), in file order; a conversation that is itself a training row's prompt is left out (the
    user's liked or edited answer is the target there, not the parent's). Returns (questions, that
    many left out)."""
    def key(turns):
        return json.dumps([[m.get("role"), m.get("content")] for m in turns])

    rows = [json.loads(line)["prompt"] for line in data_file.read_text().splitlines() if line.strip()]
    trained = {key(p) for p in rows}
    questions, seen, overlap = [], set(), 0
    for prompt in rows:
        turns = [m for m in prompt if m.get("role") != "system"]
        if len(turns) == len(prompt) or not turns or key(turns) in seen:
            continue
        seen.add(key(turns))
        if key(turns) in trained:
            overlap += 1
            continue
        questions.append(turns)
    return questions, overlap


def write_anchor_rows(model_ref: str, data_file: Path, out_file: Path, n: int, seed: int, summary: dict) -> int:
    """Write up to ``n`` anchor rows to ``out_file`` (TRL conversational prompt/completion): the
    model ``model_ref``'s own answers, sampled at temperature 1 (no top-k/top-p), to the questions of
    ``data_file``'s agent rows asked without the agent's system prompt (``anchor_questions``; the
    chat template's default system prompt applies), in a seeded order, repeated if there are fewer
    than ``n``. Answers without an end within ``ANCHOR_MAX_NEW_TOKENS`` tokens, or empty, are
    dropped and counted. Sampling is seeded by ``seed`` and leaves torch's RNG states as they were.
    Records what it did in ``summary["anchor"]``; returns the number of rows written."""
    import random

    import torch
    from tqdm import tqdm

    from align.generate import encode_chats
    from align.logprobs import response_mask, sampling_kwargs
    from align.models import load_policy

    questions, overlap = anchor_questions(data_file)
    random.Random(seed).shuffle(questions)
    prompts = [questions[i % len(questions)] for i in range(n)] if questions else []
    rows, cut, empty = [], 0, 0
    if prompts:
        policy, tok, _ = load_policy(model_ref, padding_side="left")
        policy.eval()
        with torch.random.fork_rng(), torch.inference_mode():  # the caller's RNG states are restored after
            torch.manual_seed(seed)
            for i in tqdm(range(0, len(prompts), ANCHOR_BATCH), desc="anchor rows (the parent's plain-chat answers)"):
                batch = prompts[i:i + ANCHOR_BATCH]
                enc = encode_chats(tok, batch, policy.device)
                out = policy.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                      **sampling_kwargs(tok, ANCHOR_MAX_NEW_TOKENS, 1.0))
                responses = out[:, enc["input_ids"].shape[1]:]  # (B, T)
                mask = response_mask(responses, tok.eos_token_id).bool()  # up to and including the first EOS
                for turns, ids, m in zip(batch, responses, mask):
                    if not bool((ids[m] == tok.eos_token_id).any()):
                        cut += 1
                        continue
                    text = tok.decode(ids[m], skip_special_tokens=True).strip()
                    if not text:
                        empty += 1
                        continue
                    rows.append({"prompt": turns, "completion": [{"role": "assistant", "content": text}]})
        del policy
    out_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary["anchor"] = {"rows": len(rows), "asked": len(prompts), "questions": len(questions),
                         "left_out_trained_prompts": overlap, "cut_dropped": cut, "empty_dropped": empty,
                         "model": model_ref, "temperature": 1.0, "max_new_tokens": ANCHOR_MAX_NEW_TOKENS}
    return len(rows)


def _prompt_key(content) -> str:
    """A message as the one-prompt guard compares it: the same question retyped ("What is 2+2?",
    "what is  2+2 ?", "WHAT IS 2+2") is one prompt. Case, runs of whitespace and trailing punctuation
    are ignored; Gradio's list of text parts counts as its text."""
    if isinstance(content, list):
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    text = " ".join(str(content or "").split()).lower()
    return text.rstrip(" ?!.…")


def check_sources(db: str, data_file: Path) -> None:
    """Guard rail of the feedback loop: refuse training data that all comes from one session (one
    user's taste, or one scripted client) or one prompt (the model would learn one answer, not a
    behaviour). Sessions: the ``session_id`` of the ratings and edits in ``db``; prompts: the
    conversations (system prompt left out; case, spacing and trailing punctuation ignored) of the
    rows in ``data_file``. Raises ``DataError``."""
    from serve.feedback import FeedbackStore, display_target

    store = FeedbackStore(db, read_only=True)
    try:
        sessions = {f["session_id"] for f in store.feedback() if f["kind"] in ("rating", "edit")}
    finally:
        store.close()
    prompts = set()
    for line in data_file.read_text().splitlines():
        if line.strip():
            prompt = json.loads(line)["prompt"]
            prompts.add(json.dumps([[m.get("role"), _prompt_key(m.get("content"))] for m in prompt
                                    if m.get("role") != "system"]))
    why = None
    if len(sessions) == 1:
        why = f"all its ratings and edits come from one session ({next(iter(sessions))[:40]})"
    elif len(prompts) == 1:
        why = "all its rows are about one prompt"
    if why:
        raise DataError(f"{display_target(db)}: {why}; training on it would fit one user or one question, not the users. Collect "
                        "feedback from more sessions and prompts, or pass --allow-one-source if this is deliberate.")


def _size_for_data(cfg, train_rows: int, given: set[str]):
    """Steps from the data (not the config's fixed max_steps) and LoRA on CPU, unless the user set them."""
    import torch

    t = cfg.training
    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps
    updates = {}
    if "training.max_steps" not in given:
        updates["max_steps"] = max(1, math.ceil(RETRAIN_EPOCHS * max(train_rows, 1) / per_step))
    lora_given = any(k.startswith("lora") for k in given)
    if not torch.cuda.is_available() and not lora_given and not cfg.lora.enabled:
        cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"enabled": True, "merge_on_save": True})})
        if "training.learning_rate" not in given:
            updates["learning_rate"] = LORA_LEARNING_RATE
    if (not torch.cuda.is_available() and t.per_device_train_batch_size > CPU_MICRO_BATCH
            and "training.per_device_train_batch_size" not in given and "training.gradient_accumulation_steps" not in given):
        # Same rows per optimizer step, in micro-batches: the (batch x length x vocabulary) logits
        # of the policy, reference and KL passes dominate the peak memory on a CPU.
        updates["per_device_train_batch_size"] = CPU_MICRO_BATCH
        updates["gradient_accumulation_steps"] = math.ceil(per_step / CPU_MICRO_BATCH)
    steps = updates.get("max_steps", t.max_steps)
    if steps > 0:
        if "training.save_steps" not in given:
            updates["save_steps"] = max(1, min(t.save_steps, math.ceil(steps / 2)))
        if "training.eval_steps" not in given and t.eval_steps is not None and t.eval_steps >= steps:
            updates["eval_steps"] = None  # evaluated once at the end
    return cfg.model_copy(update={"training": t.model_copy(update=updates)})


def _param_count(model_ref: str) -> int | None:
    """Parameters of a Llama-like model from its config.json (without loading weights); None if unknown."""
    from align.models import resolve_model

    try:
        source = resolve_model(model_ref)
        while source.kind == "adapter" and source.base is not None:
            source = source.base
        c = json.loads((Path(source.path) / "config.json").read_text())
        d, layers, inter, vocab = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
        return layers * (4 * d * d + 3 * d * inter) + vocab * d
    except Exception:  # noqa: BLE001 - the estimate is optional
        return None


def describe_plan(cfg, db: str, rows: int, data_file: Path) -> str:
    """The lines printed before training: rows, parent, output folder, steps, LoRA or full, expected time."""
    import os

    t = cfg.training
    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps
    lines = [f"[keel] retrain: {rows} {'pairs' if cfg.stage == 'dpo' else 'rows'} from {db}",
             f"[keel] parent: {cfg.model}",
             f"[keel] writes: {cfg.output_dir} (checkpoint in {cfg.output_dir}/model)",
             f"[keel] {cfg.stage}, {'LoRA r=%d (merged on save)' % cfg.lora.r if cfg.lora.enabled else 'full fine-tune'}, "
             f"{t.max_steps} steps x {per_step} rows, lr {t.learning_rate:g}"]
    params = _param_count(cfg.model)
    try:
        texts = [json.dumps(json.loads(line)) for line in data_file.read_text().splitlines() if line.strip()]
        tokens = min(t.max_length, sum(len(x) for x in texts) / max(len(texts), 1) / 3.5)
    except OSError:
        tokens = t.max_length
    if params and t.max_steps > 0:
        # policy forward+backward (LoRA: no weight gradients), plus forward passes for the reference
        # and (KTO) the KL batch; SFT has no reference
        policy = 4 if cfg.lora.enabled else 6
        flops = t.max_steps * per_step * tokens * params * (policy + 2 * {"kto": 2, "dpo": 1}.get(cfg.stage, 0))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        import torch

        if not torch.cuda.is_available():
            seconds = flops / (CPU_FLOPS_PER_CORE * max(1, min(cores, torch.get_num_threads())))
            lines.append(f"[keel] expected: about {_human(seconds)} on {min(cores, torch.get_num_threads())} CPU "
                         "thread(s) (rough; the progress bar below shows the real rate)")
    return "\n".join(lines)


def _human(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _value(overrides: list[str], key: str) -> str | None:
    for i, o in enumerate(overrides):
        if o == f"--{key}" and i + 1 < len(overrides):
            return overrides[i + 1]
        if o.startswith(f"--{key}="):
            return o.split("=", 1)[1]
    return None
