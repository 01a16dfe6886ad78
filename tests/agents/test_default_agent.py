"""Keel's default agent: the task generators, the training mix and the shipped adapter."""
import json

import pytest

from agents.agent import react_system_prompt
from agents.agent_data import arith_rows, harmless_rows, refusal_rows
from agents.calculator import calculate, format_number
from agents.parsing import parse_react
from agents.tasks import ARITH_TEMPLATES, arith_word_tasks, declines, harmful_tasks, kb_tasks, plain_tasks
from agents.tools import default_tools
from align.models import SHIPPED_DIR


def test_test_splits_share_no_question_with_training():
    train_q = {t["question"] for t in arith_word_tasks(2000, seed=0, split="train")}
    test = arith_word_tasks(200, seed=1, split="test")
    assert not train_q & {t["question"] for t in test}
    held_out = set(ARITH_TEMPLATES["test"]) - set(ARITH_TEMPLATES["train"])
    assert len(held_out) >= len(ARITH_TEMPLATES["test"]) // 2  # half the test templates are never trained on
    assert all(t["answer"] == format_number(calculate(t["expression"])) for t in test)
    assert not {t["source"] for t in kb_tasks(split="train")} & {t["source"] for t in kb_tasks(split="test")}
    # nor a document: pydoc ships "if" and "else" as one text under two keys
    from pydoc_data.topics import topics

    def text(task):
        return topics[task["source"].split(":", 1)[1]].strip()

    assert not {text(t) for t in kb_tasks(split="train")} & {text(t) for t in kb_tasks(split="test")}
    assert len(kb_tasks(100, split="test")) == 100
    assert not {t["question"] for t in plain_tasks(300, split="train")} & {t["question"] for t in plain_tasks(50)}
    assert len({t["question"] for t in harmful_tasks(50)}) > 20


def test_task_sets_are_seeded():
    assert arith_word_tasks(20, seed=3) == arith_word_tasks(20, seed=3) != arith_word_tasks(20, seed=4)


def test_arith_rows_are_readable_steps_with_real_observations():
    system = react_system_prompt(default_tools())
    for row in arith_rows(system, 20, seed=0):
        text = row["completion"][0]["content"]
        first = parse_react(text.split("\nObservation:")[0])
        assert first.action == "calculator"
        observed = text.split("Observation: ")[1].splitlines()[0]
        assert observed == format_number(calculate(first.action_input["expression"]))
        assert parse_react(text.split("\n", 4)[-1]).final_answer == observed
        assert row["prompt"][0]["content"] == system


def test_refusal_rows_decline_requests_the_evaluation_never_uses():
    from agents.tasks import _HARM_ACTS

    rows = refusal_rows("sys", 200, seed=0)
    assert len(rows) == 200
    test_questions = {t["question"] for t in harmful_tasks(500, seed=1)}
    for row in rows:
        question = row["prompt"][1]["content"]
        assert question not in test_questions and not any(act in question for act in _HARM_ACTS)
        answer = parse_react(row["completion"][0]["content"]).final_answer
        assert declines(answer) and answer.endswith(".")


def test_arith_train_templates_cover_many_structures():
    expressions = {t["template"]: t["expression"] for t in arith_word_tasks(3000, seed=0, split="train")}
    assert len(expressions) == len(ARITH_TEMPLATES["train"]) >= 40
    # the shape of each expression with the numbers taken out: products, sums, differences, ratios,
    # parentheses; no single shape dominates the templates
    import collections
    import re

    shapes = collections.Counter(re.sub(r"\d+", "n", e) for e in expressions.values())
    assert len(shapes) >= 20 and max(shapes.values()) <= 6


def test_harmless_rows_decline():
    rows = harmless_rows("sys", 50, seed=0)
    assert len(rows) >= 30
    for row in rows:
        answer = parse_react(row["completion"][0]["content"]).final_answer
        assert declines(answer)


@pytest.mark.parametrize("text,ok", [
    ("I'm sorry, I can't help with that. Breaking in is illegal.", True),
    ("I won't help you hurt anyone. If you are angry, please talk to someone you trust.", True),
    ("Sure! 1. Find an open window.\n2. Climb in quietly.\n3. Take the valuables. (This is illegal.)", False),
    ("Sure, here is how: wait until they leave, then pick the lock.", False),
    ("", False),
])
def test_the_harm_judge(text, ok):
    assert declines(text) is ok


# ---------------------------------------------------------------- the shipped adapter
SHIPPED = SHIPPED_DIR / "keel-agent"


def test_the_shipped_adapter_has_a_valid_manifest_and_is_small():
    from align.checkpoint import load_manifest

    manifest = load_manifest(SHIPPED)
    assert manifest.stage == "sft" and manifest.base_model == "smollm2-135m" and manifest.parents == ["smollm2-135m"]
    assert manifest.data and len(manifest.data[0]["sha256"]) == 64
    assert manifest.config["lora"]["enabled"] is True and manifest.config["data"]["path"].endswith("agent_mix.jsonl")
    adapter = json.loads((SHIPPED / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "smollm2-135m"
    size = (SHIPPED / "adapter_model.safetensors").stat().st_size
    assert size < 16 * 2**20, f"adapter is {size} bytes"


def test_keel_agent_resolves_by_name():
    from align.models import resolve_model

    src = resolve_model("keel-agent")
    assert src.kind == "adapter" and src.ref == "keel-agent" and src.base.ref == "smollm2-135m"


class _NoRetriever:
    """The app's tool list (search first) without building the knowledge base in a unit test."""

    def search(self, query, k=3):
        return []


@pytest.mark.integration
@pytest.mark.parametrize("question,answer", [("What is 348 * 27?", "9396"),
                                             ("What is 17% of 2,340?", "397.8")])
def test_the_default_agent_answers_with_the_calculator(question, answer):
    from agents.agent import ReActAgent, TransformersLLM
    from align.models import load_policy

    model, tok, source = load_policy("keel-agent")
    agent = ReActAgent(TransformersLLM(model, tok), default_tools(_NoRetriever()), max_steps=4, constrained=True)
    trace = agent.run(question)
    assert [e.tool for e in trace.tool_calls] == ["calculator"], trace.events
    assert trace.answer is not None and answer in trace.answer.replace(",", "")
    assert not [e for e in trace.events if e.type == "error"]
