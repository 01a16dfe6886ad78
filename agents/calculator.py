"""Arithmetic for the agent, by walking Python's AST: never ``eval`` or ``exec``.

Only number literals, + - * / // % **, unary signs, parentheses and a few named functions are
allowed. Limits keep a hostile or confused model from hanging the process (the evaluation holds
the GIL, so one slow expression would freeze every session of the app): input length, the size of
every intermediate result, and for each operation whose cost grows with an operand (``**``,
``round``'s digits) a bound checked *before* it runs. Each operation therefore runs on numbers of
at most ``MAX_INT_DIGITS`` digits (or floats) and costs microseconds.

What people and models write is accepted where it has one meaning, and where an expression is
valid Python, the answer is Python's: ``5%-3`` is ``5 % -3`` (-1), while ``50%``, ``50% * 80`` and
``17% of 2,340`` (which Python cannot read) are percentages; ``0x10``, ``0o17`` and ``0b101`` are
Python's integer literals, while ``3 x 4`` multiplies; ``1,500`` groups digits outside a function
call's arguments.
"""
from __future__ import annotations

import ast
import math
import operator
import re

MAX_INPUT_CHARS = 500
MAX_EXPONENT = 1000
MAX_ABS_RESULT = 1e300
MAX_INT_DIGITS = 400
MAX_CALL_ARGS = 64  # min(...)/max(...) over a list of numbers; 500 characters bound it anyway
_COMMA_HINT = " (inside a function call a comma separates arguments: write 1600, not 1,600)"
_CALL_WITH_GROUPED = re.compile(r"[A-Za-z_]\w*\s*\([^()]*\d,\d")


class CalculatorError(ValueError):
    """The expression is not allowed or cannot be computed; the message is shown to the model."""


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS = {"sqrt": math.sqrt, "abs": abs, "round": round, "min": min, "max": max, "floor": math.floor,
          "ceil": math.ceil, "log": math.log, "exp": math.exp}
_CONSTS = {"pi": math.pi, "e": math.e}


def _check(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalculatorError("only numbers are allowed")
    if isinstance(value, int) and abs(value) >= 10 ** MAX_INT_DIGITS:
        raise CalculatorError("result too large")
    if isinstance(value, float) and (math.isnan(value) or abs(value) > MAX_ABS_RESULT):
        raise CalculatorError("result too large or undefined")
    return value


def _eval(node):
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        return _check(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            if abs(right) > MAX_EXPONENT:
                raise CalculatorError(f"exponent {right} is too large (limit {MAX_EXPONENT})")
            if abs(left) > 1 and abs(right) * math.log10(abs(left)) > MAX_INT_DIGITS:
                raise CalculatorError("result too large")
        try:
            return _check(_BINOPS[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("result too large") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.Name) and node.id in _CONSTS:
        return _CONSTS[node.id]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS
            and not node.keywords and not any(isinstance(a, ast.Starred) for a in node.args)):
        if len(node.args) > MAX_CALL_ARGS:
            raise CalculatorError(f"{node.func.id}: at most {MAX_CALL_ARGS} arguments" + _COMMA_HINT)
        args = [_eval(a) for a in node.args]
        if node.func.id == "round" and len(args) == 2 and abs(args[1]) > 100:
            raise CalculatorError("round: at most 100 digits")
        try:
            return _check(_FUNCS[node.func.id](*args))
        except ZeroDivisionError:
            raise CalculatorError(f"{node.func.id}: division by zero") from None
        except TypeError as e:
            raise CalculatorError(f"{node.func.id}: {e}" + _COMMA_HINT) from None
        except (ValueError, OverflowError) as e:
            raise CalculatorError(f"{node.func.id}: {e}") from None
    if isinstance(node, ast.Tuple):
        raise CalculatorError("a comma must group digits in threes (1,500) or separate a function's arguments "
                              "(max(1, 500)); write numbers without commas")
    raise CalculatorError(f"not allowed: {type(node).__name__}" +
                          (f" {node.id!r}" if isinstance(node, ast.Name) else ""))


_CALL_OPEN = re.compile(r"[A-Za-z_]\w*\s*$")
_GROUPED = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w.]|,\d)")


def _drop_thousands_separators(expr: str) -> str:
    """``1,000 + 2,500,000`` -> ``1000 + 2500000``, but never inside a function call's arguments,
    where a comma separates arguments: ``max(1,500, 20)`` stays three arguments."""
    out, stack, i = [], [], 0  # stack: for each open parenthesis, whether it opened a call's arguments
    while i < len(expr):
        ch = expr[i]
        if ch == "(":
            stack.append(bool(_CALL_OPEN.search(expr[:i])))
        elif ch == ")" and stack:
            stack.pop()
        elif ch.isdigit() and not (stack and stack[-1]) and (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] in "._")):
            m = _GROUPED.match(expr, i)
            if m:
                out.append(m.group(0).replace(",", ""))
                i = m.end()
                continue
        out.append(ch)
        i += 1
    return "".join(out)


# Python's hexadecimal, octal and binary integer literals (0x1F, 0o17, 0b101, with _ separators),
# as a whole token: "10x3" is ten times three, "0x10" is sixteen.
_PREFIXED_INT = re.compile(r"(?<![\w.])0(?:[xX][0-9a-fA-F_]+|[oO][0-7_]+|[bB][01_]+)(?![\w.])")
# A number (decimal, with exponent) as a whole token, followed by "%".
_NUMBER_PERCENT = r"(?<![\w.])((?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?)\s*%"
_PERCENT_OF = re.compile(_NUMBER_PERCENT + r"\s*of\b", re.I)
# "%" is Python's modulo whenever an operand can follow it: a digit, ".", "(", a sign, "~" or a
# name. Only where Python could not read it (end, ")", "*", "/", "%", ",", "=") is it a percentage.
_PERCENT = re.compile(_NUMBER_PERCENT + r"(?!\s*[\w.(+\-~])")


def _decimal_literal(m: re.Match) -> str:
    try:
        return str(int(m.group(0), 0))
    except ValueError:  # 0x_ or a misplaced _: Python cannot read it either
        return m.group(0)


def normalise(expression: str) -> str:
    """Accept what people and models write: 1,000 / 3 x 4 / 2^3 / $5 / 50% / 17% of 2,340.

    Where the text is also valid Python arithmetic, the result reads as Python reads it.
    """
    expr = expression.strip().replace("×", "*").replace("÷", "/").replace("^", "**").replace("$", "")
    expr = _PREFIXED_INT.sub(_decimal_literal, expr.replace("−", "-"))
    expr = re.sub(r"(?<=[\d)])\s*[xX]\s*(?=[\d(])", "*", expr)
    expr = _drop_thousands_separators(expr)
    expr = _PERCENT_OF.sub(r"(\1/100)*", expr)  # 17% of 2340
    expr = _PERCENT.sub(r"(\1/100)", expr)  # 50%, 50% * 80; not 7 % 4, 5 % -3
    return expr.rstrip("=").strip()


def calculate(expression: str):
    """Evaluate an arithmetic expression without ``eval``: the parsed tree is walked with a fixed set of
    operators and functions, and sizes are bounded. Returns an int or float. Raises CalculatorError (not a
    string, too long, empty, unparsable, too deeply nested, or a disallowed operation).
    """
    if not isinstance(expression, str):
        raise CalculatorError("expression must be a string")
    if len(expression) > MAX_INPUT_CHARS:
        raise CalculatorError(f"expression longer than {MAX_INPUT_CHARS} characters")
    expr = normalise(expression)
    if not expr:
        raise CalculatorError("empty expression")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:  # e.g. sqrt(1,024): "024" is no Python number once the comma separates arguments
        hint = _COMMA_HINT if _CALL_WITH_GROUPED.search(expr) else ""
        raise CalculatorError(f"cannot parse {expression!r} as arithmetic{hint}") from None
    except (ValueError, RecursionError, MemoryError):
        raise CalculatorError("expression too deeply nested") from None
    try:
        return _eval(tree)
    except RecursionError:
        raise CalculatorError("expression too deeply nested") from None


def format_number(value) -> str:
    """A result as the agent sees it: whole floats without '.0' (below 1e15), other floats to 10 significant
    digits.
    """
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)
