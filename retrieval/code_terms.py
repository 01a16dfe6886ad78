"""What a piece of Python pasted into a question is, in the words the Python reference uses.

Users paste code into questions ("`t = ([],); t[0] += [1]` raises TypeError but the list still
changed"). Neither half of hybrid search reads what such code *does*: the embedding model sees its
word pieces, BM25 its names and operator symbols (``lexical.py`` adds a few character-level
roles: slice, unpacking, decorator ...). The reference topic that explains it is named for the
construct ("Augmented assignment statements"), a word the question never says. Here the code is
parsed with Python's own ``ast`` (no hand-written grammar: where code parses, its node types say
exactly which constructs it uses) and each construct is named in the reference's standard terms
("augmented assignment", "slicing", "conditional expression" ...), which the retriever adds to
the query (``Retriever.code_terms``).

Which part of a question is code: each backtick span; otherwise the line is cut where prose
begins (a question word such as "what" or "why", none of which is a Python keyword; a dash standing
alone; a command-line flag; a run of spaces or a tab) and in each piece the longest run of words
that parses is taken, starting at a word that looks like code (a symbol or digit, a keyword that
opens a statement, or a name followed by ``=``, ``(``, ``[``, ``.`` or an operator) and not ending
on an article. Prose that happens to parse is mostly skipped by these rules ("list or tuple" has
no symbol; "why is 10**-2 == 0.01" is read from ``10**-2``; "unhashable, why?" is no tuple), and
a few node kinds are read only where they mean code (an annotation needs a value: "TypeError:
unsupported operand" is an error message; ``-1`` is a number, ``-x`` an operation). Cost: at most
``MAX_PARSES`` ``ast.parse`` calls on short strings, 0.09 ms p50 and 0.78 ms p99 per question on
the project's query sets. Measured in bench/RESULTS.md, "Code in the question".
"""
from __future__ import annotations

import ast
import keyword
import re
import textwrap
import warnings

from retrieval.lexical import QUERY_STOPWORDS

MAX_CHARS = 2_000  # only the first characters of a longer question are read for code
_SYMBOL = re.compile(r"[()\[\]{}=:*+\-/%<>@.,'\"^&|~]")
_BACKTICKS = re.compile(r"`{1,3}([^`]+)`{1,3}")

_BINOP = {ast.MatMult: "matrix multiplication operator", ast.Pow: "power operator", ast.FloorDiv: "floor division",
          ast.Mod: "modulo operator", ast.LShift: "shifting operations", ast.RShift: "shifting operations",
          ast.BitAnd: "binary bitwise operations", ast.BitOr: "binary bitwise operations",
          ast.BitXor: "binary bitwise operations"}
_SIMPLE = {ast.AugAssign: "augmented assignment", ast.AnnAssign: "annotated assignment", ast.Lambda: "lambda",
           ast.NamedExpr: "assignment expression", ast.IfExp: "conditional expression",
           ast.GeneratorExp: "generator expression", ast.ListComp: "list comprehension displays",
           ast.SetComp: "set comprehension displays", ast.DictComp: "dictionary comprehension displays",
           ast.BoolOp: "boolean operations", ast.With: "with statement context manager",
           ast.AsyncWith: "async with statement", ast.AsyncFor: "async for statement",
           ast.Global: "global statement", ast.Nonlocal: "nonlocal statement",
           ast.Yield: "yield expression generator", ast.YieldFrom: "yield expression generator",
           ast.Await: "await expression coroutine", ast.AsyncFunctionDef: "coroutine function definition",
           ast.ClassDef: "class definition", ast.JoinedStr: "formatted string literals",
           ast.Assert: "assert statement", ast.Delete: "del statement", ast.Import: "import statement",
           ast.ImportFrom: "import statement", ast.Return: "return statement", ast.Break: "break statement",
           ast.Continue: "continue statement", ast.While: "while statement",
           ast.Dict: "dictionary displays", ast.Set: "set displays", ast.Starred: "unpacking"}
if hasattr(ast, "Match"):
    _SIMPLE[ast.Match] = "match statement patterns"
if hasattr(ast, "TryStar"):
    _SIMPLE[ast.TryStar] = "try statement exception groups"


def _node_terms(node: ast.AST) -> list[str]:
    out = []
    kind = type(node)
    if kind in _SIMPLE:
        out.append(_SIMPLE[kind])
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOP:
        out.append(_BINOP[type(node.op)])
    elif (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd, ast.Invert))
          and not isinstance(node.operand, ast.Constant)):  # -1 is a number; -x, -2**2 and ~x are operations
        out.append("unary arithmetic and bitwise operations")
    elif isinstance(node, ast.Compare):
        ops = {type(o) for o in node.ops}
        out.append("comparisons" + (" chained" if len(node.ops) > 1 else ""))
        if ops & {ast.Is, ast.IsNot}:
            out.append("identity comparisons")
        if ops & {ast.In, ast.NotIn}:
            out.append("membership test operations")
    elif isinstance(node, ast.Subscript):
        out.append("slicings" if isinstance(node.slice, ast.Slice) else "subscriptions")
    elif isinstance(node, ast.Assign) and any(isinstance(t, (ast.Tuple, ast.List)) for t in node.targets):
        out.append("assignment statements target list unpacking")
    elif isinstance(node, ast.If):
        out.append("if statement" + (" else clause" if node.orelse else ""))
    elif isinstance(node, (ast.For, ast.AsyncFor)):
        out.append("for statement" + (" else clause" if node.orelse else ""))
    elif isinstance(node, ast.Try):
        out.append("try statement exception handler" + (" finally clause" if node.finalbody else ""))
    elif isinstance(node, ast.Raise):
        out.append("raise statement exception" + (" chaining from" if node.cause is not None else ""))
    elif isinstance(node, ast.FunctionDef):
        out.append("function definitions")
        a = node.args
        if a.defaults or a.kw_defaults and any(d is not None for d in a.kw_defaults):
            out.append("default parameter values")
        if a.vararg or a.kwarg:
            out.append("arbitrary argument lists")
        if a.posonlyargs:
            out.append("positional-only parameters")
        if a.kwonlyargs:
            out.append("keyword-only parameters")
    elif isinstance(node, ast.Call) and (node.keywords or any(isinstance(x, ast.Starred) for x in node.args)):
        out.append("calls keyword arguments")
    elif isinstance(node, ast.Tuple) and len(node.elts) == 1:
        out.append("tuple one item trailing comma")
    if getattr(node, "decorator_list", None):
        out.append("decorators")
    return out


def _parses(text: str) -> ast.AST | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning on "is" with a literal, invalid escapes ...
            return ast.parse(text)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None


_KEYWORD_START = frozenset("def class for while with if try raise return import from lambda async await yield del "
                           "assert global nonlocal match print elif except".split())
MAX_PARSES = 200  # parse attempts per question
MAX_SPAN = 300  # characters: a longer run of words is not parsed whole (the cost grows with it)
MAX_PARSED = 6_000  # characters parsed per question, all attempts together
MAX_STEPS = 1_000  # candidate spans looked at per question (most are skipped without a parse)
_PROSE_STARTS = frozenset("what what's whats why how which when where who does did can could should would "
                           "i'm my please vs versus - -- \u2014 \u2013 =>".split())
_PROSE_ENDS = frozenset("the a an this that it its to of".split())
# After code, a connective and a few plain words are prose ("print(x) in Python", "x[0] is slow"):
# the span is cut back to its last word that looks like code when that shorter span parses too.
_TAIL_WORDS = 3
# what follows a name that starts code: an assignment, a call or subscript, an attribute, a comparison
_FOLLOW = re.compile(r"^(?:[=(\[.:<>+*/%@&|^]|[-!]=)")  # not "-1": "gives -1 in" is prose
# a command-line flag: --anything, or a dash and letters only (-v, -la); "-p.score)" is code
_FLAG = re.compile(r"^(?:--[A-Za-z][\w.-]*=?\S*|-[A-Za-z]+)$")
_PROSE_END = re.compile(r"(?:[,;?!]|(?<!\.)\.)+$")  # a sentence's punctuation after a span ("..." stays)
_PROMPT = re.compile(r"^[ \t]*(?:>>>|\.\.\.|In \[\d+\]:|Out\[\d+\]:)[ \t]?", re.M)  # REPL and IPython prompts
_INFO_STRING = re.compile(r"^[A-Za-z][\w.+-]*(?:[ \t][^\n]*)?\n")  # ```python / ```py title="a.py"
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u200b": None, "\ufeff": None})


class _Budget:
    def __init__(self):
        self.parses, self.chars, self.steps = MAX_PARSES, MAX_PARSED, MAX_STEPS

    def parse(self, text: str) -> ast.AST | None:
        if self.parses <= 0 or self.chars < len(text):
            return None
        self.parses -= 1
        self.chars -= len(text)
        return _parses(text + " pass" if text.endswith(":") else text)  # "def f(a, /, *, b):"

    @property
    def spent(self) -> bool:
        return self.parses <= 0 or self.chars <= 0 or self.steps <= 0


def _code_like(word: str) -> bool:
    return bool(_SYMBOL.search(word) or any(c.isdigit() for c in word))


def _block(text: str, budget: _Budget) -> ast.AST | None:
    """``text`` as a block of code: REPL prompts removed, dedented (a fenced or pasted block)."""
    text = textwrap.dedent(_PROMPT.sub("", text)).strip("\n")
    return budget.parse(text) if text.strip() else None


def _lines_block(lines: list[str], budget: _Budget) -> tuple[ast.AST | None, int]:
    """The longest run of two or more lines from the start that parses as one block (a compound
    statement keeps its body: try/except, if/else, decorators), and how many lines it took."""
    for n in range(len(lines), 1, -1):
        if budget.spent:
            break
        if sum(len(x) for x in lines[:n]) > MAX_SPAN * 4:
            continue
        tree = _block("\n".join(lines[:n]), budget)
        if tree is not None and not _PROSE_ONLY.fullmatch(lines[0].strip()):
            return tree, n
    return None, 0


_PROSE_ONLY = re.compile(r"[A-Za-z' ,]*")  # a line of words only is no code, even if it parses
# a line that opens a compound statement or a decorator: its block is parsed with its body
_OPENS_BLOCK = re.compile(r"[ \t]*(?:>>>[ \t]*)?(?:@[A-Za-z_]|(?:async[ \t]+)?(?:def|class|for|while|with|if|try|match)\b.*:[ \t]*(?:#.*)?$)")


def _words(line: str, budget: _Budget, trees: list) -> None:
    # code ends where prose begins: at a question word ("what", "why" ...: no Python keyword is
    # one), a dash standing alone, or a command-line flag (--kb-dir)
    words = [w if not (_FLAG.match(w) or w.lower() in _PROSE_STARTS) else "\n" for w in line.split()]
    # code starts at a word that looks like code (a symbol or digit, or a keyword that opens a
    # statement), or at a name followed by one ("t = ...", "xs[1]"); prose words ("why is ...")
    # never start a span, so "why is 10**-2 == 0.01" is read from 10**-2 on
    starts = [i for i, w in enumerate(words) if w != "\n" and (
              _code_like(w) or w in _KEYWORD_START
              or (i + 1 < len(words) and _FOLLOW.match(words[i + 1]) and (len(w) == 1 or w.lower() not in QUERY_STOPWORDS)))]
    covered = -1
    offset = [0]  # offset[i]: characters of words[:i] joined by single spaces, plus one
    for w in words:
        offset.append(offset[-1] + len(w) + 1)
    for start in starts:
        if start <= covered:
            continue
        stop = words.index("\n", start) if "\n" in words[start:] else len(words)
        while stop > start + 1 and offset[stop] - offset[start] - 1 > MAX_SPAN:
            stop -= 1  # never build a span longer than MAX_SPAN
        for end in range(stop, start, -1):
            budget.steps -= 1
            if budget.spent:
                return
            if words[end - 1].lower() in _PROSE_ENDS and end - start > 1 and words[end - 2].isalpha():
                continue  # "... in the": code does not end on an article after a word ("lambda a: a" does)
            text = _PROSE_END.sub("", " ".join(words[start:end]))  # "unhashable," is no tuple
            if len(text) > MAX_SPAN:
                continue
            if not _SYMBOL.search(text) and (words[start] not in _KEYWORD_START or end - start < 2 or any(
                    w.lower() in QUERY_STOPWORDS and not keyword.iskeyword(w) for w in words[start + 1:end])):
                break  # "raise ValueError from e" is code; "return do in a generator" is a question
            tree = budget.parse(text)
            if tree is None:
                continue
            last = max((i for i in range(start, end) if _code_like(words[i])), default=end - 1)
            if 0 < end - 1 - last <= _TAIL_WORDS and all(w.isalpha() for w in words[last + 1:end]):
                shorter = budget.parse(_PROSE_END.sub("", " ".join(words[start:last + 1])))
                if shorter is not None:  # "print(x) in Python" is print(x); "x is None" stays whole
                    tree, end = shorter, last + 1
            trees.append(tree)
            covered = end - 1
            break


def code_spans(question: str) -> list[ast.AST]:
    """The parsed trees of the code in ``question`` (see the module docstring); [] for prose.
    Only the first ``MAX_CHARS`` characters are read."""
    question = question[:MAX_CHARS].translate(_QUOTES)
    trees, budget = [], _Budget()
    rest = []
    for m in _BACKTICKS.finditer(question):  # marked as code by the user: no symbol needed
        span = m.group(1)
        if m.group(0).startswith("```"):
            span = _INFO_STRING.sub("", span, count=1) if not _parses(span.strip()) else span
        tree = _block(span, budget)
        if tree is not None:
            trees.append(tree)
        else:
            rest.append(_PROMPT.sub("", span))  # a block that does not parse whole: its lines, as prose is read
    lines = _PROMPT.sub("", "\n".join([_BACKTICKS.sub("\n", question)] + rest)).splitlines()
    i = 0
    while i < len(lines) and not budget.spent:
        if _OPENS_BLOCK.match(lines[i]) and i + 1 < len(lines) and lines[i + 1].strip():
            tree, n = _lines_block(lines[i:], budget)
            if tree is not None:
                trees.append(tree)
                i += n
                continue
        for piece in re.split(r"\s{2,}|\t", lines[i]):  # "first, *rest = [1, 2]  is rest a list"
            _words(piece, budget, trees)
        i += 1
    return trees


# Nodes read as prose, with everything under them: "Note: this is important" (an annotation
# without a value), "'list' and 'list'" (a boolean operation on literals).
def _prose_node(node: ast.AST) -> bool:
    return ((isinstance(node, ast.AnnAssign) and node.value is None)
            or (isinstance(node, ast.BoolOp) and all(isinstance(v, ast.Constant) for v in node.values)))


def code_terms(question: str) -> list[str]:
    """The constructs the code in ``question`` uses, in the Python reference's words, each once, in
    order of first use: ``"t[0] += [1] why TypeError"`` -> ``["augmented assignment", "subscriptions"]``.
    [] for a question without code that parses."""
    return analyse(question)[0]


def analyse(question: str) -> tuple[list[str], bool]:
    """``(code_terms(question), whether the question holds code that parses)``: code without a named
    construct (``print(x)``) is still code."""
    out: list[str] = []
    found = False
    for tree in code_spans(question):
        body = getattr(tree, "body", [])
        found = found or not (len(body) == 1 and isinstance(body[0], ast.Expr)  # "e.g" is no code
                              and isinstance(body[0].value, (ast.Name, ast.Constant, ast.Attribute)))
        stack = [tree]
        while stack:
            node = stack.pop()
            if _prose_node(node):
                continue
            for term in _node_terms(node):
                if term not in out:
                    out.append(term)
            stack.extend(reversed(list(ast.iter_child_nodes(node))))
    return out, found
