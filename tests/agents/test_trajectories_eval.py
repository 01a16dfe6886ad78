import json
import re

import pytest

from agents.agent import ReActAgent
from agents.evaluate import arith_tasks, evaluate, extract_number, gsm8k_tasks, is_correct
from agents.parsing import parse_react
from agents.tools import default_tools
from agents.trajectories import convert_file, gsm8k_to_react
from align.config import DataConfig
from align.data import load_data
from tests.agents.test_agent import ScriptedLLM
from tests.conftest import BUNDLED_DATA


def test_gsm8k_rows_become_react_trajectories(tmp_path):
    report = convert_file(BUNDLED_DATA / "gsm8k" / "train_sample.jsonl", tmp_path / "react.jsonl", limit=200)
    assert report == {"written": 200, "skipped": 0, "out": str(tmp_path / "react.jsonl")}
    rows = [json.loads(l) for l in (tmp_path / "react.jsonl").read_text().splitlines()]
    raw = [json.loads(l) for l in (BUNDLED_DATA / "gsm8k" / "train_sample.jsonl").read_text().splitlines()[:200]]
    for row, src in zip(rows, raw):
        text = row["completion"][0]["content"]
        assert text.endswith(f"Final Answer: {row['final']}")
        # Every calculator call's observation agrees with GSM8K's own annotation.
        annotated = [float(v.replace(",", "")) for _, v in re.findall(r"<<([^=<>]+)=([^<>]+)>>", src["answer"])
                     if re.fullmatch(r"-?[\d,]*\.?\d+", v)]
        observed = [float(v) for v in re.findall(r"Observation: (\S+)", text)]
        assert len(observed) == len(re.findall(r"<<", src["answer"]))
        assert all(abs(a - b) < 1e-6 * max(1, abs(a)) for a, b in zip(annotated, observed) if a == a)
        first_step = text.split("\nObservation:")[0]
        assert parse_react(first_step).action in ("calculator", None)
    loaded = load_data(DataConfig(path=str(tmp_path / "react.jsonl"), eval_size=10))
    assert loaded.format == "trl:prompt_completion" and len(loaded.train) == 190


def test_first_row_reads_like_a_worked_tool_use():
    row = gsm8k_to_react({"question": "Q?", "answer": "Half is 48/2 = <<48/2=24>>24.\nSum 48+24 = <<48+24=72>>72.\n#### 72"})
    assert row["completion"][0]["content"] == (
        'Thought: I need to calculate 48/2.\nAction: calculator\nAction Input: {"expression": "48/2"}\nObservation: 24\n'
        'Thought: Half is 48/2 = 24. I need to calculate 48+24.\nAction: calculator\nAction Input: {"expression": "48+24"}\n'
        'Observation: 72\nThought: Sum 48+24 = 72.\nFinal Answer: 72')


def test_answer_extraction_and_scoring():
    assert extract_number("The answer is $1,200.") == 1200.0
    assert extract_number("-3.5 degrees") == -3.5 and extract_number("none") is None
    assert is_correct("It is 72 clips", "72") and not is_correct("7", "72") and not is_correct(None, "1")


def test_eval_counts_success_steps_and_tool_errors():
    tasks = arith_tasks(2, seed=1)
    a = tasks[0]["question"][8:-1]
    llm = ScriptedLLM([f' x\nAction: calculator\nAction Input: {{"expression": "{a}"}}',
                       f" y\nFinal Answer: {tasks[0]['answer']}",
                       ' z\nAction: calculator\nAction Input: {"expression": "1/0"}', " w\nFinal Answer: 0"])
    report = evaluate(ReActAgent(llm, default_tools()), tasks, progress=False)
    assert report["success_rate"] == 0.5 and report["mean_steps"] == 2 and report["tool_error_rate"] == 0.5
    assert arith_tasks(3, seed=5) == arith_tasks(3, seed=5)
    assert len(gsm8k_tasks(5)) == 5


@pytest.mark.parametrize("argv", [["run", "What is 2+2?", "--max-steps", "-2"], ["run", "   "],
                                  ["eval", "--n", "0"], ["eval", "--max-new-tokens", "0"], ["eval", "--batch", "x"]])
def test_agents_cli_refuses_out_of_range_values_before_loading_a_model(argv, capsys):
    from agents.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
