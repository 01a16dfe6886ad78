"""Arithmetic word problems composed from parts (agents/compose.py)."""
import re

from agents.agent import react_system_prompt
from agents.agent_data import compose_rows
from agents.calculator import calculate, format_number
from agents.compose import OPERATIONS, compose_arith_tasks
from agents.tasks import ARITH_TEMPLATES, arith_word_tasks
from agents.tools import default_tools

# Nouns of the test and blind templates' settings: a composed row naming one would paraphrase them.
HELD_OUT_NOUNS = ["roll", "rolls", "tray", "trays", "bakery", "bus", "saved", "savings", "garden", "seed", "library",
                  "shelf", "shelves", "book", "books", "ferry", "car", "cars", "trip", "trips", "water bill", "cubic",
                  "tile", "tiles", "builder", "concert", "ticket", "tickets", "pear", "pears", "student", "students",
                  "teacher", "teachers", "driver", "rent", "km"]


def test_every_operation_is_drawn_and_each_answer_is_its_expression_of_the_numbers_written():
    tasks = compose_arith_tasks(3000, seed=0)
    assert {t["template"] for t in tasks} == {f"compose:{op}" for op in OPERATIONS}
    assert len({t["question"] for t in tasks}) > 2950
    for t in tasks:
        assert t["answer"] == format_number(calculate(t["expression"]))
        # never negative; whole where it counts things, at most cents where it is a price
        assert re.fullmatch(r"\d+" if t["template"] != "compose:percent" else r"\d+(\.\d{1,2})?", t["answer"]), t
        written = re.findall(r"\d+", t["question"])
        for number in re.findall(r"\d+", t["expression"]):  # the expression uses the question's numbers
            assert number in written or number in ("100",) or t["template"] == "compose:average", t


def test_seeded_and_many_wordings_per_operation():
    assert compose_arith_tasks(50, seed=1) == compose_arith_tasks(50, seed=1) != compose_arith_tasks(50, seed=2)
    assert compose_arith_tasks(0) == []
    skeletons: dict[str, set] = {}
    for t in compose_arith_tasks(3000, seed=0):  # the wording with numbers and nouns taken out
        skeleton = re.sub(r"\d+", "N", t["question"])
        skeletons.setdefault(t["template"], set()).add(skeleton)
    assert all(len(s) >= 20 for s in skeletons.values()), {k: len(v) for k, v in skeletons.items()}


def test_composed_problems_name_no_setting_of_the_held_out_templates():
    words = re.compile(r"\b(" + "|".join(map(re.escape, HELD_OUT_NOUNS)) + r")\b", re.I)
    for t in compose_arith_tasks(3000, seed=0):
        assert not words.search(t["question"]), t["question"]
    # the list is right: each held-out template does name one of them
    import random

    for split in ("blind",):
        for template in ARITH_TEMPLATES[split]:
            assert words.search(template(random.Random(0))[0]), template.__name__
    held_out = [f for f in ARITH_TEMPLATES["test"] if f not in ARITH_TEMPLATES["train"]]
    for template in held_out:
        assert words.search(template(random.Random(0))[0]), template.__name__
    assert {t["question"] for t in compose_arith_tasks(3000)}.isdisjoint(
        {t["question"] for s in ("test", "blind") for t in arith_word_tasks(2000, 0, split=s)})


def test_compose_rows_are_calculator_trajectories():
    system = react_system_prompt(default_tools())
    rows = compose_rows(system, 40, seed=0)
    assert len(rows) == 40 and {r["kind"] for r in rows} == {"compose"}
    for r, t in zip(rows, compose_arith_tasks(40, seed=0)):
        text = r["completion"][0]["content"]
        assert r["prompt"][-1]["content"] == t["question"]
        assert f'Action Input: {{"expression": "{t["expression"]}"}}' in text and text.endswith(f"Final Answer: {t['answer']}")
