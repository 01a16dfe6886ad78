"""SFT with ``mask_observations``: no loss on the tool outputs of ReAct rows, everything else as TRL does it."""
import json

import pytest

from align.errors import DataError
from align.sft import SFTStageConfig, observation_spans, run_sft, tokenize_masking_observations
from align.config import load_config
from align.training import read_metrics
from tests.conftest import REPO

PASSAGES = "[1] (python-docs:nonlocal) The nonlocal statement causes the listed identifiers\nto refer to ...\n" \
           "[2] (python-docs:global) Thought: a passage may say anything"
TRAJECTORY = ("Thought: I will search.\nAction: search\nAction Input: {\"query\": \"nonlocal\"}\n"
              f"Observation: {PASSAGES}\n"
              "Thought: Passage [1] answers it.\nAction: calculator\nAction Input: {\"expression\": \"2 * 3\"}\n"
              "Observation: 6\nThought: The calculator gives 6.\nFinal Answer: 6 (source: python-docs:nonlocal)")


def _row(completion=TRAJECTORY):
    return {"prompt": [{"role": "system", "content": "You are an agent."},
                       {"role": "user", "content": "Observation: what does nonlocal do?"}],
            "completion": [{"role": "assistant", "content": completion}]}


def test_observation_spans_are_the_tool_texts_only():
    spans = observation_spans("\n" + TRAJECTORY)
    texts = [("\n" + TRAJECTORY)[a:b] for a, b in spans]
    # a passage line that starts "Thought:" mid-observation is no new turn ("[2] (...) Thought: ..." is not at a
    # line start); the labels and the model's next lines stay outside
    assert texts == [PASSAGES, "6"]
    assert observation_spans("Thought: no tool.\nFinal Answer: Observation: is just a word here") == []


def test_the_mask_is_trls_completion_mask_less_the_observations(tiny_model_dir):
    from transformers import AutoTokenizer
    from trl.data_utils import _tokenize

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    row = _row()
    out = tokenize_masking_observations(row, tok)
    ids, mask = out["input_ids"], out["completion_mask"]
    # the same tokens TRL's SFTTrainer makes for this row, and its completion start
    trl_ids = _tokenize(tok, row["prompt"] + row["completion"])["input_ids"]
    prompt_ids = _tokenize(tok, row["prompt"], add_generation_prompt=True)["input_ids"]
    assert ids == trl_ids and len(mask) == len(ids) and mask[:len(prompt_ids)] == [0] * len(prompt_ids)
    trained = tok.decode([t for t, m in zip(ids, mask) if m])
    masked = tok.decode([t for t, m in zip(ids[len(prompt_ids):], mask[len(prompt_ids):]) if not m])
    assert "nonlocal statement causes" not in trained and "may say anything" not in trained
    assert "nonlocal statement causes" in masked and "may say anything" in masked
    for line in ("Thought: I will search.", "Action Input: {\"query\": \"nonlocal\"}", "Observation:",
                 "Thought: Passage [1] answers it.", "The calculator gives 6.", "Final Answer: 6",
                 "(source: python-docs:nonlocal)"):
        assert line in trained, line
    # the prompt's own "Observation:" (a user's words) is never touched: it is not in the completion
    assert sum(mask) < len(ids) - len(prompt_ids)
    # a completion without a tool call is trained whole, as TRL would
    plain = tokenize_masking_observations(_row("Thought: no tool needed.\nFinal Answer: Hello!"), tok)
    assert sum(plain["completion_mask"]) == len(plain["input_ids"]) - len(prompt_ids)


def test_rows_that_are_not_conversational_prompt_completion_are_refused(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(DataError, match="mask_observations"):
        tokenize_masking_observations({"prompt": "text", "completion": "more"}, tok)
    with pytest.raises(DataError, match="mask_observations"):
        tokenize_masking_observations({"messages": [{"role": "user", "content": "hi"}]}, tok)


def test_sft_trains_with_observations_masked(tmp_path, tiny_model_dir):
    data = tmp_path / "react.jsonl"
    data.write_text("".join(json.dumps(_row(TRAJECTORY.replace("6", str(i)))) + "\n" for i in range(12)))
    cfg = load_config(SFTStageConfig, REPO / "configs" / "sft.yaml", [
        "--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "run"), "--data.path", str(data),
        "--data.format", "trl", "--data.eval_size", "2", "--training.max_steps", "2",
        "--training.per_device_train_batch_size", "2", "--training.logging_steps", "1", "--training.save_steps", "2",
        "--training.eval_steps", "2", "--training.max_length", "512", "--mask_observations", "true"])
    out = run_sft(cfg)
    assert (out / "keel.json").exists()
    assert [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
