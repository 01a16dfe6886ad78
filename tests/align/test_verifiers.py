import json

import pytest

from align.verifiers import extract_number, gsm8k_closeness, gsm8k_correctness, gsm8k_format, is_correct, reference_number
from tests.conftest import REPO


@pytest.mark.parametrize("text,expected", [
    ("The answer is 1,200.", 1200.0),
    ("She paid $3.50 in total.", 3.5),
    ("It costs -$5 now", -5.0),
    ("Temperature: −12 degrees", -12.0),
    ("He walks 18 km per day, so 126 km a week.", 126.0),
    ("Final Answer: 42 apples (out of 100)", 42.0),
    ("#### 72", 72.0),
    ("3 + 4 = 7. The answer is 7. Check: 7 - 4 = 3", 7.0),
    ("\\boxed{0.25}", 0.25),
    ("no number here", None),
    ("", None),
])
def test_extract_number_awkward_formats(text, expected):
    assert extract_number(text) == expected


def test_checker_on_real_gsm8k_rows():
    rows = [json.loads(l) for l in (REPO / "data" / "gsm8k" / "heldout.jsonl").read_text().splitlines()[:50]]
    for r in rows:
        # the reference solution itself is judged correct, and a perturbed one wrong
        final = reference_number(r["answer"])
        assert final is not None
        assert is_correct(r["answer"], r["answer"])
        assert not is_correct(f"The answer is {final + 1:g}", r["answer"])
    answers = [r["answer"] for r in rows[:3]]
    good = [f"Final Answer: {reference_number(a):,.0f}" for a in answers]
    assert gsm8k_correctness(None, good, answer=answers) == [1.0, 1.0, 1.0]


def test_partial_credit_rewards():
    assert gsm8k_format(None, ["Final Answer: 5", "I think 5", "The answer is", "#### 3"]) == [1.0, 0.0, 0.0, 1.0]
    assert gsm8k_closeness(None, ["10", "5", "nothing", "100"], answer=["10", "10", "10", "10"]) == [1.0, 0.5, 0.0, 0.0]
    with pytest.raises(ValueError, match="answer"):
        gsm8k_correctness(None, ["1"])
