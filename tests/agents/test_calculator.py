import time

import pytest

from agents.calculator import CalculatorError, calculate, format_number


@pytest.mark.parametrize("expr,want", [
    ("48/2", "24"), ("48 + 24", "72"), ("2**10", "1024"), ("-(3 - 5) * 4", "8"), ("7 // 2", "3"), ("7 % 4", "3"),
    ("1,000 * 3", "3000"), ("3 x 4", "12"), ("2^3", "8"), ("$5 * 4", "20"), ("50% * 80", "40"), ("sqrt(16)", "4"),
    ("round(2.567, 2)", "2.57"), ("0.2 * 50", "10"), ("10 / 4", "2.5"), ("12 ÷ 4 × 2", "6"),
    ("(" * 50 + "1" + ")" * 50, "1"),
    # A comma inside a function call separates arguments; outside, 1,500 is fifteen hundred.
    ("max(1,500, 20)", "500"), ("min(2,345)", "2"), ("max(1, 500)", "500"), ("round(1234.5678, 2)", "1234.57"),
    ("1,500 + 2,000,000", "2001500"), ("(1,500 * 2)", "3000"), ("max(1,000 * 2, 3)", "3"),
    ("1,234.56 * 2", "2469.12"), ("$1,500.25 + $2", "1502.25"), ("max((1,500), 20)", "1500"),
    ("2 x (1,500)", "3000"), ("1,000x3", "3000"),
])
def test_arithmetic(expr, want):
    assert format_number(calculate(expr)) == want


@pytest.mark.parametrize("expr,msg", [
    ("__import__('os').system('ls')", "not allowed"),
    ("(1).__class__", "not allowed"),
    ("open('/etc/passwd')", "not allowed"),
    ("x + 1", "not allowed"),
    ("[1, 2]", "not allowed"),
    ("lambda: 1", "not allowed"),
    ("'a' * 3", "only numbers"),
    ("True + 1", "only numbers"),
    ("1 / 0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("9**9**9", "too large"),
    ("10**1000 * 10**1000", "too large"),
    ("2 ** 5000", "too large"),
    ("1e308 * 10", "too large"),
    ("", "empty"),
    ("2 +", "cannot parse"),
    ("1" * 600, "longer than"),
    ("(" * 240 + "1" + ")" * 240, "cannot parse|nested"),
    ("sqrt(1,600)", "comma separates arguments"),
    ("1, 500", "group digits in threes"),
    ("log(10, 1)", "division by zero"),
    ("round(1, -10**9)", "at most 100 digits"),
])
def test_unsafe_or_bad_input_is_a_clear_error_and_fast(expr, msg):
    started = time.perf_counter()
    with pytest.raises(CalculatorError, match=msg):
        calculate(expr)
    assert time.perf_counter() - started < 1.0
