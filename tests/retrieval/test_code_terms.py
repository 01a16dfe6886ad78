"""Code pasted into a question, named in the Python reference's words (retrieval/code_terms.py)."""
import time

import pytest

from retrieval.code_terms import code_terms


@pytest.mark.parametrize("question,want", [
    ("t = ([],); t[0] += [1] raises TypeError but the list still changed", ["augmented assignment", "subscriptions"]),
    ("xs[::-1]  how does the -1 step reverse the list?", ["slicings"]),
    ("*init, last = items - what if items is empty", ["assignment statements target list unpacking", "unpacking"]),
    ("why is 10**-2 == 0.01 when both operands are ints", ["power operator"]),
    ("what does `x if c else y` mean", ["conditional expression"]),
    ("f\"{x!r}\" what does !r do", ["formatted string literals"]),
    ("with open(p) as f: why close", ["with statement context manager"]),
    ("def f(a, /, *, b): what are / and *", ["positional-only parameters", "keyword-only parameters"]),
    ("(1,) vs (1)", ["tuple one item trailing comma"]),
    ("raise ValueError from e", ["raise statement exception chaining from"]),
    ("if (n := len(xs)) > 3: print(n)", ["assignment expression"]),
    ("a < b < c is that allowed", ["comparisons chained"]),
    ("`x is None` vs `x == None`", ["identity comparisons"]),
    ("from os import path as p", ["import statement"]),
    ("[x*2 for x in xs if x] vs map", ["list comprehension displays"]),
])
def test_constructs_of_pasted_code(question, want):
    got = code_terms(question)
    assert all(w in got for w in want), got


@pytest.mark.parametrize("question", [
    "list or tuple", "how do globals work", "Python 3.10+", "what is a decorator",
    "how do I pad a number string with zeros but keep the minus sign", "why?", "is it ok, or not?", "",
    "for the record, what does this do", "with a list of numbers how do I sum them", "return the favour",
    "this is great", "while we are at it",
])
def test_prose_has_no_constructs(question):
    assert code_terms(question) == []


def test_a_trailing_sentence_comma_is_no_tuple_and_a_negative_number_no_operation():
    assert "tuple one item trailing comma" not in code_terms("d[[1]] = 2 TypeError unhashable, why?")
    assert "unary arithmetic and bitwise operations" not in code_terms("xs[-1] is the last item")
    assert "unary arithmetic and bitwise operations" in code_terms("-x ** 2 vs (-x) ** 2")


def test_long_and_hostile_questions_stay_cheap():
    started = time.perf_counter()
    for q in ["(" * 500 + ")" * 500, "x = " + " + ".join(["a"] * 300), "a, " * 600, "[" * 100 + "x" + "]" * 100,
              "word " * 400 + "x[1:2]"]:
        code_terms(q)
    assert time.perf_counter() - started < 2.0
