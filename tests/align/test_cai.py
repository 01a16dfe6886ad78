import json

import pytest

from align.cai import (CAIStageConfig, Judge, critique_messages, load_constitution, parse_verdict,
                       revision_messages, run_cai)
from align.config import load_config
from align.errors import ConfigError, KeelError
from tests.conftest import REPO

CONSTITUTION = REPO / "configs" / "constitution.yaml"


def test_shipped_constitution_has_the_required_principles_and_valid_examples():
    c = load_constitution(CONSTITUTION)
    assert {"helpful", "accurate", "harmless", "autonomy"} <= {p.name for p in c.principles}
    assert c.examples and all(c.get(e.principle) for e in c.examples)


def test_bad_constitution_names_the_problem(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("principles:\n  - name: x\n    critique: c\n")
    with pytest.raises(ConfigError, match="revision"):
        load_constitution(bad)
    bad.write_text("principles:\n  - {name: x, critique: c, revision: r}\n"
                   "examples:\n  - {prompt: p, answer: a, principle: nope, critique: c, revision: r}\n")
    with pytest.raises(ConfigError, match="nope"):
        load_constitution(bad)


def test_prompt_construction_puts_few_shot_examples_before_the_request():
    c = load_constitution(CONSTITUTION)
    p = c.get("harmless")
    prompt = [{"role": "user", "content": "How do I pick a lock?"}]
    msgs = critique_messages(c, prompt, "Use a tension wrench.", p)
    assert msgs[0]["role"] == "system" and len(msgs) == 2 + 2 * len(c.examples)
    assert c.examples[0].critique == msgs[2]["content"]
    assert "How do I pick a lock?" in msgs[-1]["content"] and p.critique in msgs[-1]["content"]
    rev = revision_messages(c, prompt, "Use a tension wrench.", p, "It enables burglary.")
    assert rev[-2] == {"role": "assistant", "content": "It enables burglary."}
    assert p.revision in rev[-1]["content"] and c.examples[-1].revision in [m["content"] for m in rev]


@pytest.mark.parametrize("text,verdict", [
    ("A", "A"), ("B.", "B"), ("(B)", "B"), ("**A**", "A"), ("Response A is better.", "A"),
    ("Answer: B", "B"), ("B\nbecause A is rude", "B"), ("a", "A"),
    ("Both A and B are fine", None), ("I cannot decide.", None), ("", None), (None, None),
    ("ABBA", None), ("The first one", None), ("Apples are red", None),
])
def test_judge_verdict_parsing_including_garbage(text, verdict):
    assert parse_verdict(text) == verdict


def test_judge_averages_both_orders_so_position_bias_cancels(tiny_model_dir):
    from align.models import load_policy

    model, tok, _ = load_policy(str(tiny_model_dir))
    judge = Judge(model, tok)
    c = load_constitution(CONSTITUTION)
    prompt = [{"role": "user", "content": "hi"}]
    p_ab = judge.compare([prompt], ["hello there"], ["go away"], [c.get("helpful")])[0]
    p_ba = judge.compare([prompt], ["go away"], ["hello there"], [c.get("helpful")])[0]
    assert 0 <= p_ab <= 1 and p_ab == pytest.approx(1 - p_ba, abs=1e-6)
    # a judge that always says "A" (pure position bias) ends at exactly 0.5
    judge.prob_first = lambda convs: [1.0] * len(convs)
    assert judge.compare([prompt], ["x"], ["y"], [c.get("helpful")]) == [0.5]


def _cfg(model, data, out, *extra):
    return load_config(CAIStageConfig, REPO / "configs" / "cai.yaml", [
        "--model", str(model), "--output_dir", str(out), "--data.path", str(data), "--data.max_rows", "6",
        "--batch_size", "2", "--max_new_tokens", "8", "--constitution", str(CONSTITUTION),
        "--temperature", "1.0", *extra])  # greedy, the random tiny model writes only newlines


def test_cai_run_writes_rows_sft_and_pairs_and_resumes_without_loss_or_duplicates(tmp_path, tiny_model_dir):
    data = REPO / "data" / "hh-rlhf" / "harmless.jsonl.gz"
    out = tmp_path / "cai"
    run_cai(_cfg(tiny_model_dir, data, out, "--data.max_rows", "4"))
    rows = [json.loads(l) for l in (out / "cai.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["rounds"]) == 1 and r["principles"] and r["model"] for r in rows)
    # a crash mid-write: the last line is cut in half
    text = (out / "cai.jsonl").read_text()
    (out / "cai.jsonl").write_text(text[: len(text) - 40])
    with pytest.raises(KeelError, match="--resume"):
        run_cai(_cfg(tiny_model_dir, data, out))
    run_cai(_cfg(tiny_model_dir, data, out), resume=True)
    rows = [json.loads(l) for l in (out / "cai.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 6
    sft = [json.loads(l) for l in (out / "sft.jsonl").read_text().splitlines()]
    assert len(sft) == 6 and sft[0]["completion"][0]["role"] == "assistant"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 6 and summary["rows_per_minute"] > 0
    for line in (out / "pairs.jsonl").read_text().splitlines():
        pair = json.loads(line)
        assert {"prompt", "chosen", "rejected", "judge_probability", "principle"} <= set(pair)
        assert 0.5 <= pair["judge_probability"] <= 1


def test_cai_outputs_feed_sft_and_dpo(tmp_path, tiny_model_dir):
    from align.config import DataConfig
    from align.data import load_data

    out = tmp_path / "cai"
    run_cai(_cfg(tiny_model_dir, REPO / "data" / "hh-rlhf" / "harmless.jsonl.gz", out, "--data.max_rows", "4"))
    sft = load_data(DataConfig(path=str(out / "sft.jsonl"), eval_size=0), accept=("prompt_completion",))
    assert len(sft.train) == 4
    if (out / "pairs.jsonl").read_text().strip():
        pairs = load_data(DataConfig(path=str(out / "pairs.jsonl"), eval_size=0), accept=("preference",))
        assert len(pairs.train) >= 1


@pytest.mark.integration
def test_cai_on_the_embedded_model_writes_well_formed_files(tmp_path):
    out = tmp_path / "cai"
    run_cai(_cfg("smollm2-135m", REPO / "data" / "hh-rlhf" / "harmless.jsonl.gz", out, "--data.max_rows", "2",
                 "--max_new_tokens", "24", "--temperature", "0"))
    rows = [json.loads(l) for l in (out / "cai.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["initial"] and r["rounds"][0]["critique"] for r in rows)
    assert json.loads((out / "summary.json").read_text())["model"] == "smollm2-135m"
