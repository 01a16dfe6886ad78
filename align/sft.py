"""Stage 1, supervised fine-tuning, on TRL's SFTTrainer (full or LoRA).

Started from a LoRA adapter with ``lora.enabled``, SFT continues that adapter on its base (the
saved adapter records the same base and the adapter as parent).

Data: prompt-completion or messages rows (GSM8K worked solutions, the chosen side of preference
pairs, Constitutional-AI revisions, any TRL file). With prompt-completion rows the loss covers the
completion only.

``mask_observations``: in a ReAct trajectory the text after ``Observation:`` is the tool's output,
which the agent loop writes, not the model (agents/agent.py stops generation at the line
``Observation:``). Training on it spends the loss on predicting calculator results and retrieved
passages; agent-tuning work trains on the agent's own turns only (ToolLLM, Qin et al. 2023; FireAct,
Chen et al. 2023; TRL's ``assistant_only_loss`` does the same per chat message). Keel's ReAct rows
carry the observation inside one assistant message, so ``assistant_only_loss`` cannot see it:
the rows are tokenized here exactly as TRL's SFTTrainer tokenizes conversational prompt-completion
rows, and ``completion_mask`` is zero on each observation's text (written by hand for that reason;
TRL keeps a pre-tokenized ``completion_mask`` as given).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Literal


from align.config import TRLStageConfig
from align.data import load_data
from align.models import load_policy, resolve_model, training_dtype  # training_dtype: also its old import path
from align.training import build_trainer_config, make_trainer, prepare_run_dir, train_and_save, trainer_arguments


class SFTStageConfig(TRLStageConfig):
    """``python -m align sft``'s config: TRL's SFT with completion-only loss by default."""

    stage: Literal["sft"] = "sft"
    output_dir: str = "runs/sft"
    completion_only_loss: bool = True
    packing: bool = False
    mask_observations: bool = False  # no loss on ReAct tool outputs (the text after "Observation:")


# The tool's text: after the loop's "\nObservation: " up to the line where the model writes again.
_OBSERVATION = re.compile(r"\nObservation: (.*?)(?=\n(?:Thought|Final Answer|Action)\s*:|\Z)", re.S)


def observation_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the tool outputs in a ReAct transcript: each
    ``Observation:``'s text, from after its label to the newline before the model's next
    ``Thought:`` / ``Final Answer:`` / ``Action:`` line (or the end). The label itself stays."""
    return [m.span(1) for m in _OBSERVATION.finditer(text)]


def tokenize_masking_observations(example: dict[str, Any], tokenizer) -> dict[str, list[int]]:
    """One conversational prompt-completion row -> ``input_ids`` and ``completion_mask``, as TRL's
    SFTTrainer makes them (prompt with the generation prompt, then prompt + completion through the
    chat template; the completion starts where the two diverge), except that tokens lying wholly
    inside an observation's text get mask 0. Raises ``DataError`` for a row that is not
    conversational prompt-completion or that the tokenizer cannot map back to characters."""
    from align.errors import DataError
    from trl.data_utils import common_prefix_length, is_conversational

    if "prompt" not in example or "completion" not in example or not is_conversational(example):
        raise DataError("mask_observations needs conversational prompt-completion rows (prompt and completion "
                        "as lists of messages)")
    prompt_ids = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
    messages = example["prompt"] + example["completion"]
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if encoded["input_ids"] != ids:
        raise DataError("mask_observations: the tokenizer does not give the chat template's tokens back from its "
                        "text, so observation spans cannot be found; set mask_observations false")
    start = common_prefix_length(prompt_ids, ids)  # where TRL starts the completion
    completion_from = encoded["offset_mapping"][start][0] if start < len(ids) else len(text)
    spans = [(a, b) for a, b in observation_spans(text) if a >= completion_from]
    mask = [0] * start
    for a, b in encoded["offset_mapping"][start:]:
        mask.append(0 if any(lo <= a and b <= hi for lo, hi in spans) else 1)
    return {"input_ids": ids, "completion_mask": mask}


def mask_observations(dataset, tokenizer):
    """``dataset`` (a ``datasets.Dataset`` of conversational prompt-completion rows) pre-tokenized
    by ``tokenize_masking_observations``; TRL then trains on it as given."""
    return dataset.map(tokenize_masking_observations, fn_kwargs={"tokenizer": tokenizer},
                       remove_columns=dataset.column_names, desc="Masking observations")


def run_sft(cfg: SFTStageConfig, resume: bool = False) -> Path:
    """Supervised fine-tuning (TRL SFTTrainer) as ``cfg`` says; writes and returns ``output_dir/model``.
    ``resume``: continue from the last complete checkpoint. Raises KeelError subclasses for bad
    config, data or model.
    """
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    last = prepare_run_dir(cfg, resume)
    set_seed(cfg.seed)
    data = load_data(cfg.data, accept=("prompt_completion", "messages", "text"),
                     reshape_map={"preference": "prompt_completion"})
    source = resolve_model(cfg.model)
    # LoRA from a LoRA adapter (e.g. keel-agent): train that adapter further, on its own base, rather
    # than merging it and stacking new adapters; its rank, alpha and target modules are kept.
    continues = cfg.lora.enabled and source.kind == "adapter"
    model, tokenizer, source = load_policy(source, device="cpu", dtype=training_dtype(cfg.dtype),
                                           padding_side="right", merge_adapters=not continues,
                                           trainable_adapters=continues)
    if continues:
        model.keel_adapter_source = source.path
        print(f"[keel] sft continues the LoRA adapter {source.ref} (its r/alpha/targets; lora.r etc. unused)",
              file=sys.stderr)
    model.train()
    train, evaluation = data.train, data.eval
    if cfg.mask_observations:
        train = mask_observations(train, tokenizer)
        evaluation = mask_observations(evaluation, tokenizer) if evaluation is not None else None
    args = build_trainer_config(
        SFTConfig,
        **trainer_arguments(cfg, cfg.training, has_eval=data.eval is not None),
        max_length=cfg.training.max_length,
        completion_only_loss=cfg.completion_only_loss,
        packing=cfg.packing,
    )
    trainer = make_trainer(SFTTrainer, cfg, model, args, train, evaluation, tokenizer)
    return train_and_save(trainer, cfg, last, tokenizer, source, [data.fingerprint], has_eval=data.eval is not None)

