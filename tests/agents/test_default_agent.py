"""Keel's default agent: the task generators, the training mix and the shipped adapter."""
import json

import re

import pytest

from agents.agent import react_system_prompt
from agents.agent_data import (arith_rows, arith_step_rows, harmless_rows, lookup_rows, multi_turn_rows,
                               refusal_rows, replay_rows, stepwise_expressions, tool_error_rows)
from agents.calculator import calculate, format_number
from agents.parsing import parse_react
from agents.tasks import (ARITH_TEMPLATES, arith_word_tasks, cites, declines, followup_tasks, harmful_tasks,
                          kb_tasks, lookup_tasks, plain_tasks)
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


def test_blind_arith_templates_are_in_no_other_split_and_answers_are_exact():
    blind = set(ARITH_TEMPLATES["blind"])
    assert len(blind) == 8 and not blind & set(ARITH_TEMPLATES["train"]) and not blind & set(ARITH_TEMPLATES["test"])
    tasks = arith_word_tasks(400, seed=1, split="blind")
    assert {t["template"] for t in tasks} == {f.__name__.lstrip("_") for f in blind}
    assert not any(t["template_trained"] for t in tasks)
    for t in tasks:
        value = calculate(t["expression"])
        assert t["answer"] == format_number(value) and value > 0 and value == int(value)
    # new wording over shapes the mix has (docs/agents.md): every blind shape has a training template
    import re

    def shape(t):
        return re.sub(r"\d+", "n", t["expression"])

    assert {shape(t) for t in tasks} <= {shape(t) for t in arith_word_tasks(2000, seed=0, split="train")}
    # the mix draws arithmetic from the train split only
    assert not {t["question"] for t in tasks} & {t["question"] for t in arith_word_tasks(2000, seed=0, split="train")}


def test_blind2_templates_are_in_no_other_split_and_answers_are_exact():
    blind2 = set(ARITH_TEMPLATES["blind2"])
    others = {f for split, fs in ARITH_TEMPLATES.items() if split != "blind2" for f in fs}
    assert len(blind2) == 10 and not blind2 & others
    tasks = arith_word_tasks(600, seed=1, split="blind2")
    assert {t["template"] for t in tasks} == {f.__name__.lstrip("_") for f in blind2}
    assert not any(t["template_trained"] for t in tasks)
    for t in tasks:
        value = calculate(t["expression"])
        assert t["answer"] == format_number(value) and value > 0 and abs(value * 100 - round(value * 100)) < 1e-6
        # every number of the expression is written in the question (100 of a percentage aside)
        import re

        for number in re.findall(r"\d+", t["expression"]):
            assert number == "100" or re.search(rf"\b{number}\b", t["question"]), (number, t["question"])
    # no training row's arithmetic, templates or composed, is a blind2 question
    from agents.compose import compose_arith_tasks

    trained = {t["question"] for t in arith_word_tasks(2000, seed=0, split="train")}
    trained |= {t["question"] for t in compose_arith_tasks(2000, seed=0)}
    assert not {t["question"] for t in tasks} & trained


def test_switch_tasks_change_topic_after_an_answered_arithmetic_turn():
    from agents.tasks import switch_tasks

    tasks = switch_tasks(60, seed=1)
    assert len(tasks) == 60 and tasks == switch_tasks(60, seed=1)
    assert [t["kind"] for t in tasks[:4]] == ["plain", "kb", "plain", "kb"]
    for t in tasks:
        user, answer = t["history"]
        assert user["role"] == "user" and answer["role"] == "assistant" and answer["content"]
        assert re.search(r"\d", user["content"]) and re.fullmatch(r"-?[\d.,]+", answer["content"])
        assert ("source" in t) == (t["kind"] == "kb")
    # the second turns come from the test splits only
    assert {t["question"] for t in tasks if t["kind"] == "kb"} <= {t["question"] for t in kb_tasks(split="test")}


def test_lookup_tasks_are_distinct_seeded_and_bounded():
    tasks = lookup_tasks(200, seed=1)
    assert len({t["question"] for t in tasks}) == 200 and {t["kind"] for t in tasks} == {"lookup"}
    assert tasks == lookup_tasks(200, seed=1) != lookup_tasks(200, seed=2)
    with pytest.raises(ValueError, match="lookup_tasks: n=9999"):
        lookup_tasks(9999)


class _KB:
    """Two knowledge-base passages whatever the query (the real index is not needed to shape the rows)."""

    def search(self, query, k=3):
        from retrieval.retriever import Hit

        return [Hit(id=i, score=0.5, text=f"Passage {i} about the global statement.", source=f"kb-{i}",
                    title="t", heading="", start=0, end=10) for i in range(2)][:k]


def test_lookup_rows_search_then_quote_and_cite_the_note_or_say_nothing_was_found():
    from agents import agent_data

    tools = default_tools()
    system = react_system_prompt(tools)
    rows = lookup_rows(system, _KB(), 200, seed=3)
    assert rows == lookup_rows(system, _KB(), 200, seed=3) != lookup_rows(system, _KB(), 200, seed=4)
    assert {r["kind"] for r in rows} == {"lookup"} and len({r["prompt"][-1]["content"] for r in rows}) == 200
    found = 0
    for row in rows:
        text = row["completion"][0]["content"]
        first = parse_react(text.split("\nObservation: ")[0])
        assert first.action == "search" and set(first.action_input) == {"query"}
        observation = text.split("\nObservation: ", 1)[1].split("\nThought: ")[0]
        answer = text.rsplit("Final Answer: ", 1)[1]
        thing = first.action_input["query"]
        assert thing in row["prompt"][-1]["content"]
        m = __import__("re").search(r"\(source: ([^)]*)\)$", answer)
        if m:  # the cited note is in the observation at the rank the thought names, with the quoted sentence
            found += 1
            rank = int(__import__("re").search(r"Passage \[(\d)\] is about", text).group(1))
            passage = observation.split("\n")[rank - 1]
            assert passage.startswith(f"[{rank}] ({m.group(1)}) ") and answer[: m.start()].strip() in passage
            assert cites(answer, m.group(1)) and thing in answer
        else:
            assert "nothing about the " + thing in answer and thing not in observation
    assert 120 <= found <= 180  # found_share 0.75 of 200
    # the evaluation's lookup questions stay blind: no name, thing or question form of theirs is used
    from agents import tasks as T

    train_words = {w for r in rows for w in r["prompt"][-1]["content"].replace("?", " ").split()}
    assert not set(T._LOOKUP_NAMES) & train_words
    assert not {t for t in T._LOOKUP_THINGS if any(f" {t}" in r["prompt"][-1]["content"] for r in rows)}
    eval_questions = {t["question"] for t in lookup_tasks(2560)}
    assert not eval_questions & {r["prompt"][-1]["content"] for r in rows}
    forms = {f for f, _ in agent_data._LOOKUP_TRAIN_FORMS}
    assert not forms & set(T._LOOKUP_FORMS)
    with pytest.raises(ValueError, match="lookup_rows: n=99999"):
        lookup_rows(system, _KB(), 99999, seed=0)
    assert lookup_rows(system, _KB(), 0, seed=0) == []


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


@pytest.mark.parametrize("expression, calls", [
    ("(348 + 15) * 27", ["348 + 15", "363 * 27"]),
    ("(8*12 - 6) / 5", ["8 * 12 - 6", "90 / 5"]),
    ("100 - (20 - 5)", ["20 - 5", "100 - 15"]),  # a right operand of '-' in brackets is a group
    ("(2 + 3) * (4 + 5)", ["2 + 3", "4 + 5", "5 * 9"]),
    ("((1 + 2) * 3 - 4) / 5", ["1 + 2", "3 * 3 - 4", "5 / 5"]),  # innermost first
    ("(10 + 20) / 4", ["10 + 20", "30 / 4"]),
    ("3*4 + 5", ["3 * 4 + 5"]),  # no brackets: one call
    ("100 - 20 - 5", ["100 - 20 - 5"]),  # left-to-right needs no brackets
    ("2 ** (1 + 2)", None), ("sqrt(16) + 1", None), ("17% of 2,340", None), ("a + 1", None),
])
def test_stepwise_expressions_work_bracketed_groups_out_first(expression, calls):
    assert stepwise_expressions(expression) == calls
    if calls:  # the last call, with the earlier results in place, is the whole expression's answer
        assert format_number(calculate(calls[-1])) == format_number(calculate(expression))


def test_arith_step_rows_call_the_calculator_once_per_bracketed_group():
    system = react_system_prompt(default_tools())
    tasks = [{"question": "A class of 15 joins 348 pupils; each pays $27. Total?", "expression": "(348 + 15) * 27"},
             {"question": "Two rows of 4 and 5 more?", "expression": "2*4 + 5"}]
    stepped, whole = arith_step_rows(system, tasks, "arith")
    text = stepped["completion"][0]["content"]
    inputs = [json.loads(m)["expression"] for m in re.findall(r"Action Input: (.*)", text)]
    assert inputs == ["348 + 15", "363 * 27"]
    assert re.findall(r"Observation: (.*)", text) == ["363", "9801"]
    assert text.endswith("Final Answer: 9801")
    assert whole == arith_rows(system, 1, 0, tasks=[tasks[1]])[0]


def test_plain_train_rows_include_general_knowledge_and_what_the_agent_can_do():
    from agents.agent_data import CAPABILITY_ANSWER
    from agents.tasks import _CAPABILITY_TRAIN, _GENERAL_TRAIN

    train = [t["question"] for t in plain_tasks(400, seed=0, split="train")]
    assert sum(q in _GENERAL_TRAIN for q in train) > 40  # a tenth of the rows and more
    assert any(q in _CAPABILITY_TRAIN for q in train)
    assert not set(_CAPABILITY_TRAIN) & {t["question"] for t in plain_tasks(200)}
    assert "calculator" in CAPABILITY_ANSWER and "search" in CAPABILITY_ANSWER


@pytest.mark.parametrize("reply, loops", [
    ("The cat, a gentle soul,\nA cat, a cat, a cat,\nA cat, a cat, a cat,\nA cat, a cat, a cat,", True),
    ("El Salvador, el Salvador, el Salvador, el Salvador, el Salvador, el Salvador", True),
    ("die in der Stadt der Stadt der Stadt der Stadt der Stadt der Stadt", True),
    ("Good morning!", False),
    ("Dear Sam, thank you so much for watering my plants while I was away. They look wonderful.", False),
    ("Waves fold into foam,\nsalt wind carries gulls away,\nthe tide keeps its time.", False),
])
def test_degenerate_replies_are_the_ones_that_loop(reply, loops):
    from agents.agent_data import degenerate

    assert degenerate(reply) is loops


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
    # three-factor products (area x price, rate x time x count) are the commonest kind, at most a fifth
    assert len(shapes) >= 25 and max(shapes.values()) <= len(expressions) // 5


def test_tool_error_rows_recover_from_the_real_calculator_error():
    tools = default_tools()
    rows = tool_error_rows(react_system_prompt(tools), tools, 120, seed=0)
    assert len(rows) >= 100  # nearly every mistake is one the calculator rejects
    kinds = set()
    for row in rows:
        text = row["completion"][0]["content"]
        first = parse_react(text.split("\nObservation:")[0])
        wrong = first.action_input["expression"]
        error = text.split("Observation: ")[1].splitlines()[0]
        assert error == tools.get("calculator").run({"expression": wrong}).text and error.startswith("Error:")
        second = parse_react(text.split("\nObservation:")[1].split("\n", 1)[1])
        right = second.action_input["expression"]
        result = format_number(calculate(right))
        assert text.split("Observation: ")[2].splitlines()[0] == result
        assert text.endswith(f"Final Answer: {result}")
        kinds.add("unit" if any(u in wrong for u in ("dollars", "kg", "liters", "meters", "items", "hours", "km",
                                                      "apples", "euros", "boxes")) else
                  "times" if "times" in wrong else "=" if "=" in wrong else
                  "bracket" if wrong.count("(") != wrong.count(")") else "name")
    assert kinds == {"unit", "times", "=", "bracket", "name"}


def test_multi_turn_rows_answer_the_last_question_after_earlier_exchanges():
    tools = default_tools()
    system = react_system_prompt(tools)
    base = arith_rows(system, 30, seed=0) + refusal_rows(system, 10, seed=0)
    rows = multi_turn_rows(base, 40, seed=0)
    by_question = {r["prompt"][-1]["content"]: r for r in base}
    assert len(rows) == 40 and any(len(r["prompt"]) == 6 for r in rows)  # some with two earlier exchanges
    for row in rows:
        prompt = row["prompt"]
        assert prompt[0] == {"role": "system", "content": system} and prompt[-1]["role"] == "user"
        assert [m["role"] for m in prompt[1:-1]] == ["user", "assistant"] * ((len(prompt) - 2) // 2)
        assert row["completion"] == by_question[prompt[-1]["content"]]["completion"]
        for user, answer in zip(prompt[1:-1:2], prompt[2:-1:2]):  # each earlier answer is its question's
            earlier = parse_react(by_question[user["content"]]["completion"][0]["content"].split("\n", 4)[-1])
            assert answer["content"] == earlier.final_answer
            assert user["content"] != prompt[-1]["content"]


def test_replay_rows_take_only_answers_without_a_tool_and_name_a_bad_line(tmp_path):
    from align.errors import DataError

    system = react_system_prompt(default_tools())
    rows = arith_rows(system, 6, seed=0) + refusal_rows(system, 6, seed=0)
    mix = tmp_path / "mix.jsonl"
    mix.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["completion"]}) + "\n" for r in rows))
    taken = replay_rows(mix, 4, seed=1)
    assert len(taken) == 4 and all("Action:" not in r["completion"][0]["content"] for r in taken)
    assert taken == replay_rows(mix, 4, seed=1) and all(r["kind"] == "replay" for r in taken)
    with pytest.raises(DataError, match="6 rows answered without a tool, 7 asked"):
        replay_rows(mix, 7, seed=1)
    mix.write_text(mix.read_text() + "not json\n")
    with pytest.raises(DataError, match=r"mix.jsonl:13"):
        replay_rows(mix, 2, seed=1)


def test_followup_tasks_ask_a_new_problem_after_an_answered_one():
    tasks = followup_tasks(50, seed=1)
    assert len(tasks) == 50 and all(t["kind"] == "followup" for t in tasks)
    train_q = {t["question"] for t in arith_word_tasks(2000, seed=0, split="train")}
    for t in tasks:
        earlier, answer = t["history"]
        assert earlier["role"] == "user" and answer["role"] == "assistant"
        assert earlier["content"] not in train_q and t["question"] not in train_q
    assert sum(t["history"][1]["content"] != t["answer"] for t in tasks) >= 48  # repeating the last answer fails


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
    # v5cpu: v4cpu (git 53bd114) continued, itself the v2 adapter of git 27ac19c continued; its parent
    # for `align eval` (win rate, KL) is the embedded model, which any machine resolves; the chain is in "shipped"
    assert manifest.stage == "sft" and manifest.base_model == "smollm2-135m" and manifest.parents == ["smollm2-135m"]
    assert manifest.data and len(manifest.data[0]["sha256"]) == 64
    assert manifest.config["lora"]["enabled"] is True and manifest.config["data"]["path"].endswith(".jsonl")
    assert all(c in manifest.model_dump().get("shipped", {}).get("parent", "") for c in ("53bd114", "27ac19c"))
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


def test_cites_reads_source_names_that_hold_brackets():
    assert cites("It lifts 38 t. (source: uploads/notes (1).md § Crane (v4))", "uploads/notes (1).md")
    assert not cites("It lifts 38 t. (source: uploads/notes (2).md)", "uploads/notes (1).md")
