"""Constitutional AI (Bai et al. 2022): critique-revision data, then AI-feedback preference pairs.

``python -m align cai --config configs/cai.yaml``

Phase 1 (supervised). For every prompt the policy answers; then for ``rounds`` rounds a principle
is drawn from the constitution (configs/constitution.yaml), the model critiques its last answer
against the principle's critique request and rewrites it following the revision request. The
constitution's few-shot examples come first in every critique and revision conversation, so a
small model keeps the format. Generation is batched through the chat template.
Outputs, in ``output_dir``:
  ``cai.jsonl``    one row per prompt: prompt, initial answer, every (principle, critique,
                   revision), final answer, model and config hash (provenance);
  ``sft.jsonl``    prompt-completion rows of the final revisions: ``align sft`` reads it directly.
Phase 2 (RLAIF, ``judge.enabled``). A judge model (default: the policy) is asked, under a
principle, which of two answers is better; its probability comes from the next-token
probabilities of "A" and "B" (or, with ``judge.mode: generate``, from parsing its written
verdict). Both orders are asked and averaged, which cancels position bias. Each (initial,
revision) pair becomes ``{prompt, chosen, rejected, judge_probability, principle}`` in
``pairs.jsonl``: TRL's preference format, read by ``align rm`` and ``align dpo``.
Resumable: rows are appended and fsynced one at a time, keyed by prompt; a rerun (``--resume``)
skips prompts already done and ignores a last line cut short by a crash.
Generation engine (``engine``: auto|transformers|vllm, ``vllm:`` its settings): transformers'
``generate`` or a vLLM engine built from the checkpoint (``align.rollout.chat_generator``, the
same engine as PPO's rollouts); ``auto`` is vLLM on CUDA when installed. The judge's
``generate`` mode uses it too; its ``logprob`` mode is a forward pass of the transformers model.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from pathlib import Path
from typing import Literal, Sequence

import torch
import yaml
from pydantic import Field, field_validator

from align.config import DataConfig, StageConfig, Strict
from align.errors import ConfigError, DataError, KeelError
from align.rollout import RolloutEngineName, VLLMRolloutSettings, check_engine_available


class Principle(Strict):
    """One constitutional principle: critique and revision requests, and the judge's question."""

    name: str
    critique: str
    revision: str
    judge: str = "Which response is better?"


class Example(Strict):
    """A few-shot example of critique and revision under one principle."""

    prompt: str
    answer: str
    principle: str
    critique: str
    revision: str


class Constitution(Strict):
    """The principles and few-shot examples CAI critiques and revises with (configs/constitution.yaml)."""

    principles: list[Principle] = Field(min_length=1)
    examples: list[Example] = Field(default_factory=list)

    def get(self, name: str) -> Principle:
        """The principle called ``name``. Raises ConfigError when there is none."""
        for p in self.principles:
            if p.name == name:
                return p
        raise ConfigError(f"constitution: no principle named {name!r}")


class JudgeSettings(Strict):
    """The AI judge that labels which of two answers is better (default: the policy itself)."""

    enabled: bool = True
    model: str | None = Field(None, description="judge model reference; default: the policy")
    mode: Literal["logprob", "generate"] = "logprob"
    min_confidence: float = Field(0.0, ge=0, le=0.5, description="drop pairs with |p - 0.5| below this")


class CAIStageConfig(StageConfig):
    """``python -m align cai``'s config: Constitutional AI data generation (Bai et al. 2022)."""

    stage: Literal["cai"] = "cai"
    output_dir: str = "runs/cai"
    data: DataConfig
    constitution: str = "configs/constitution.yaml"
    rounds: int = Field(1, ge=1, description="critique-revision rounds per prompt (K)")
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(128, ge=8)
    temperature: float = Field(0.0, ge=0)
    engine: RolloutEngineName = Field("auto", description="what generates: transformers' generate, a vLLM engine "
                                      "built from the checkpoint, or auto (vLLM on a CUDA GPU when installed)")
    vllm: VLLMRolloutSettings = Field(default_factory=VLLMRolloutSettings,
                                      description="the vLLM engine's settings (used when the engine is vLLM)")
    max_prompt_turns: int = Field(3, ge=1, description="keep the last N messages of long prompts")
    judge: JudgeSettings = Field(default_factory=JudgeSettings)

    @field_validator("engine")
    @classmethod
    def _vllm_installed(cls, engine: str) -> str:
        check_engine_available(engine, "engine")
        return engine


def load_constitution(path: str | Path) -> Constitution:
    """Read and validate a constitution YAML file. Raises ConfigError naming the file and key, or
    an example's unknown principle.
    """
    from align.config import load_config

    c = load_config(Constitution, path)  # YAML reading and field-naming errors, as for every config
    for ex in c.examples:
        c.get(ex.principle)
    return c


# ------------------------------------------------------------------------------- prompt building
SYSTEM = "You review an assistant's answers against a principle, then improve them."


def conversation_text(prompt: Sequence[dict]) -> str:
    """A chat prompt as plain ``Role: content`` lines, system messages left out."""
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt if m.get("role") != "system")


def _critique_turn(prompt_text: str, answer: str, principle: Principle) -> str:
    return f"Conversation:\n{prompt_text}\n\nAssistant's answer:\n{answer}\n\nCritique request: {principle.critique}"


def _revision_turn(principle: Principle) -> str:
    return f"Revision request: {principle.revision}\nWrite only the revised answer."


def critique_messages(c: Constitution, prompt: Sequence[dict], answer: str, principle: Principle) -> list[dict]:
    """Few-shot examples as earlier turns, then the request to critique ``answer``."""
    msgs = [{"role": "system", "content": SYSTEM}]
    for ex in c.examples:
        p = c.get(ex.principle)
        msgs += [{"role": "user", "content": _critique_turn(f"User: {ex.prompt}", ex.answer, p)},
                 {"role": "assistant", "content": ex.critique}]
    msgs.append({"role": "user", "content": _critique_turn(conversation_text(prompt), answer, principle)})
    return msgs


def revision_messages(c: Constitution, prompt: Sequence[dict], answer: str, principle: Principle,
                      critique: str) -> list[dict]:
    """Few-shot examples, then the critique of ``answer`` and the request to revise it."""
    msgs = [{"role": "system", "content": SYSTEM}]
    for ex in c.examples:
        p = c.get(ex.principle)
        msgs += [{"role": "user", "content": _critique_turn(f"User: {ex.prompt}", ex.answer, p)},
                 {"role": "assistant", "content": ex.critique},
                 {"role": "user", "content": _revision_turn(p)},
                 {"role": "assistant", "content": ex.revision}]
    msgs += [{"role": "user", "content": _critique_turn(conversation_text(prompt), answer, principle)},
             {"role": "assistant", "content": critique},
             {"role": "user", "content": _revision_turn(principle)}]
    return msgs


def judge_messages(prompt: Sequence[dict], first: str, second: str, principle: Principle) -> list[dict]:
    """The judging conversation: ``principle``'s question about answers A (``first``) and B (``second``)."""
    return [{"role": "system", "content": "You compare two assistant responses and answer with one letter."},
            {"role": "user", "content": f"Conversation:\n{conversation_text(prompt)}\n\nResponse A:\n{first}\n\n"
                                        f"Response B:\n{second}\n\n{principle.judge} Answer with A or B."}]


_VERDICT = re.compile(r"\b(?:response|answer|option)?\s*\(?\s*([AB])\s*\)?(?=[\s.,:;!)]|$)", re.I)


def parse_verdict(text: str | None) -> str | None:
    """'A', 'B' or None from a judge's free text: "A", "(B).", "Response A is better", "**B**".
    Garbage, both letters, or nothing -> None (the pair is skipped, not guessed)."""
    if not text:
        return None
    cleaned = re.sub(r"[*_`#]", "", text).strip()
    head = cleaned.split("\n", 1)[0][:80]
    found = {m.group(1).upper() for m in _VERDICT.finditer(head)}
    if len(found) == 1:
        return found.pop()
    m = re.match(r"^\s*([AB])\b", cleaned)
    return m.group(1).upper() if m else None


# ----------------------------------------------------------------------------------------- engine
class Generator:
    """Batched chat generation with one loaded model: ``chat`` (an ``align.rollout.ChatGenerator``;
    default: transformers' ``generate`` on ``model``) at ``max_new_tokens`` and ``temperature``."""

    def __init__(self, model, tokenizer, max_new_tokens: int, temperature: float, chat=None):
        from align.rollout import ChatGenerator, TransformersRolloutEngine

        self.model, self.tok, self.max_new_tokens, self.temperature = model, tokenizer, max_new_tokens, temperature
        self.chat = chat if chat is not None else ChatGenerator(TransformersRolloutEngine(tokenizer), model, tokenizer)

    def __call__(self, conversations: list[list[dict]]) -> list[str]:
        """One stripped answer per conversation."""
        return self.chat(conversations, self.max_new_tokens, self.temperature)


class Judge:
    """An AI judge over a causal LM: P(A is better) from the A/B token log-probs (``logprob``) or
    from a generated letter (``generate``). Raises KeelError when A or B is not one token.
    """

    def __init__(self, model, tokenizer, mode: str = "logprob", chat=None):
        self.model, self.tok, self.mode, self.chat = model, tokenizer, mode, chat  # chat: generate mode's engine
        self.letter_ids = [self._letter_id(x) for x in ("A", "B")]

    def _letter_id(self, letter: str) -> int:
        ids = self.tok(letter, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise KeelError(f"judge tokenizer splits {letter!r} into {len(ids)} tokens; use judge.mode: generate")
        return ids[0]

    @torch.inference_mode()
    def prob_first(self, conversations: list[list[dict]]) -> list[float | None]:
        """P(the verdict is A) for each judging conversation."""
        from align.generate import encode_chats

        enc = encode_chats(self.tok, conversations, self.model.device)
        if self.mode == "logprob":
            logits = self.model(**enc, logits_to_keep=1).logits[:, -1].float()
            pair = torch.softmax(logits[:, self.letter_ids], -1)
            return pair[:, 0].tolist()
        if self.chat is not None:
            texts = self.chat(conversations, 8, 0.0)
        else:
            from align.generate import generation_kwargs

            out = self.model.generate(**enc, **generation_kwargs(self.tok, 8))
            texts = self.tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return [None if (v := parse_verdict(t)) is None else float(v == "A") for t in texts]

    def compare(self, prompts, first: list[str], second: list[str], principles: list[Principle]) -> list[float | None]:
        """P(first is better), averaged over both presentation orders to cancel position bias."""
        ab = self.prob_first([judge_messages(p, a, b, pr) for p, a, b, pr in zip(prompts, first, second, principles)])
        ba = self.prob_first([judge_messages(p, b, a, pr) for p, a, b, pr in zip(prompts, first, second, principles)])
        out = []
        for x, y in zip(ab, ba):
            if x is None or y is None:
                out.append(None)
            else:
                out.append(0.5 * (x + (1 - y)))
        return out


# ------------------------------------------------------------------------------------------ files
def read_done(path: Path) -> dict[str, dict]:
    """Rows already written, by id; a last line cut short by a crash is dropped from the file."""
    if not path.is_file():
        return {}
    done, good = {}, []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[row["id"]] = row
        good.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(l + "\n" for l in good), encoding="utf-8")
    tmp.replace(path)
    return done


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append ``rows`` to the JSONL file ``path`` (UTF-8, one object per line)."""
    with open(path, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _prompts(cfg: CAIStageConfig) -> list[tuple[str, list[dict]]]:
    from align.data import load_data

    data = load_data(cfg.data, accept=("prompt_only",),
                     reshape_map={k: "prompt_only" for k in ("preference", "prompt_completion", "unpaired_preference")})
    out = []
    for r in data.train:
        prompt = r["prompt"] if isinstance(r["prompt"], list) else [{"role": "user", "content": r["prompt"]}]
        prompt = [m for m in prompt if m.get("role") != "system"][-cfg.max_prompt_turns:]
        while prompt and prompt[0]["role"] != "user":
            prompt = prompt[1:]
        if not prompt:
            continue
        key = hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:16]
        out.append((key, prompt))
    seen, unique = set(), []
    for key, p in out:
        if key not in seen:
            seen.add(key)
            unique.append((key, p))
    return unique


def run_cai(cfg: CAIStageConfig, resume: bool = False) -> Path:
    """Generate Constitutional AI data as ``cfg`` says: answers, critiques, revisions, and judged
    preference pairs; resumable by row id. Writes cai.jsonl, pairs.jsonl and sft.jsonl under
    ``output_dir`` and returns that folder.
    """
    from tqdm.auto import tqdm

    from align.models import load_policy
    from align.rollout import chat_generator

    out = Path(cfg.output_dir)
    rows_path, pairs_path, sft_path = out / "cai.jsonl", out / "pairs.jsonl", out / "sft.jsonl"
    if rows_path.exists() and not resume:
        raise KeelError(f"{out} already holds a CAI run; pass --resume to continue it, or set --output_dir")
    out.mkdir(parents=True, exist_ok=True)
    constitution = load_constitution(cfg.constitution)
    config_hash = hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()
                                 + Path(cfg.constitution).read_bytes()).hexdigest()[:12]
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    (out / "constitution.yaml").write_text(Path(cfg.constitution).read_text())
    prompts = _prompts(cfg)
    done = read_done(rows_path)
    judged = read_done(pairs_path) if cfg.judge.enabled else {}
    todo = [(k, p) for k, p in prompts if k not in done]
    model, tok, source = load_policy(cfg.model)
    chat = chat_generator(cfg.engine, model, tok, source, cfg.vllm, cfg.seed, field="engine")
    print(f"[keel] generation engine: {chat.name} (engine: {cfg.engine})", flush=True)
    gen = Generator(model, tok, cfg.max_new_tokens, cfg.temperature, chat=chat)
    judge, judge_chat = None, None
    if cfg.judge.enabled:
        if cfg.judge.model is None:
            jm, jt, judge_chat = model, tok, chat
        else:
            jm, jt, jsource = load_policy(cfg.judge.model)
            if cfg.judge.mode == "generate":
                judge_chat = chat_generator(cfg.engine, jm, jt, jsource, cfg.vllm, cfg.seed, field="engine")
        judge = Judge(jm, jt, cfg.judge.mode, chat=judge_chat if cfg.judge.mode == "generate" else None)
    started, written = time.perf_counter(), 0
    stats = {"skipped_judgements": 0, "low_confidence": 0}
    for start in tqdm(range(0, len(todo), cfg.batch_size), desc="cai", unit="batch"):
        batch = todo[start:start + cfg.batch_size]
        keys, batch_prompts = [k for k, _ in batch], [p for _, p in batch]
        answers = gen(batch_prompts)
        rounds: list[list[dict]] = [[] for _ in batch]
        current = list(answers)
        for k in range(cfg.rounds):
            principles = [constitution.principles[random.Random(f"{cfg.seed}-{key}-{k}").randrange(
                len(constitution.principles))] for key in keys]
            critiques = gen([critique_messages(constitution, p, a, pr)
                             for p, a, pr in zip(batch_prompts, current, principles)])
            revisions = gen([revision_messages(constitution, p, a, pr, c)
                             for p, a, pr, c in zip(batch_prompts, current, principles, critiques)])
            for i, (pr, c, r) in enumerate(zip(principles, critiques, revisions)):
                rounds[i].append({"principle": pr.name, "critique": c, "revision": r})
            current = [r if r else a for r, a in zip(revisions, current)]
        rows = [{"id": key, "prompt": p, "initial": a, "rounds": rs, "final": f, "principles": [x["principle"] for x in rs],
                 "model": source.ref, "config_hash": config_hash}
                for key, p, a, rs, f in zip(keys, batch_prompts, answers, rounds, current)]
        append_rows(rows_path, rows)
        written += len(rows)
        if judge is not None:
            pending = [r for r in rows if r["id"] not in judged and r["initial"] != r["final"]]
            if pending:
                principles = [constitution.get(r["principles"][-1]) for r in pending]
                probs = judge.compare([r["prompt"] for r in pending], [r["final"] for r in pending],
                                      [r["initial"] for r in pending], principles)
                pairs = []
                for r, pr, prob in zip(pending, principles, probs):
                    if prob is None:
                        stats["skipped_judgements"] += 1
                        continue
                    if abs(prob - 0.5) < cfg.judge.min_confidence:
                        stats["low_confidence"] += 1
                        continue
                    better_is_revision = prob >= 0.5
                    chosen, rejected = (r["final"], r["initial"]) if better_is_revision else (r["initial"], r["final"])
                    pairs.append({"id": r["id"], "prompt": r["prompt"],
                                  "chosen": [{"role": "assistant", "content": chosen}],
                                  "rejected": [{"role": "assistant", "content": rejected}],
                                  "judge_probability": max(prob, 1 - prob), "revision_preferred": better_is_revision,
                                  "principle": pr.name, "judge": cfg.judge.model or source.ref})
                append_rows(pairs_path, pairs)
    for c in {id(x): x for x in (chat, judge_chat) if x is not None}.values():
        c.close()
    all_rows = list(read_done(rows_path).values())
    sft = [{"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["final"]}]}
           for r in all_rows if r["final"]]
    sft_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sft), encoding="utf-8")
    summary = {"rows": len(all_rows), "written_this_run": written, "seconds_this_run": time.perf_counter() - started,
               "rows_per_minute": written / max(1e-9, time.perf_counter() - started) * 60, "sft_rows": len(sft),
               "model": source.ref, "config_hash": config_hash, **stats}
    if cfg.judge.enabled and pairs_path.exists():
        pairs = list(read_done(pairs_path).values())
        summary.update(pairs=len(pairs), revision_preferred_share=(
            sum(p["revision_preferred"] for p in pairs) / len(pairs) if pairs else None))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    if not all_rows:
        raise DataError(f"{cfg.data.path}: no prompts to work on")
    return out
