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
import re
import warnings

MAX_CHARS = 2_000  # a longer question is not searched for code (the parse attempts grow with it)
_SYMBOL = re.compile(r"[()\[\]{}=:*+\-/%<>@.,'\"]")
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
    if isinstance(node, ast.AnnAssign) and node.value is None:
        return out  # "TypeError: unsupported operand" is an error message, not an annotation
    if isinstance(node, ast.BoolOp) and all(isinstance(v, ast.Constant) for v in node.values):
        return out  # "'list' and 'list'" quoted in prose
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
                           "assert global nonlocal match print".split())
MAX_PARSES = 200  # parse attempts per question
_PROSE_STARTS = frozenset("what what's whats why how which when where who does do did can could should would "
                           "i i'm my please vs versus - -- \u2014 \u2013 =>".split())
_PROSE_ENDS = frozenset("the a an this that it its to of".split())
# what follows a name that starts code: an assignment, a call or subscript, an attribute, a comparison
_FOLLOW = re.compile(r"^(?:[=(\[.:<>+*/%@&|^]|[-!]=)")  # not "-1": "gives -1 in" is prose
_FLAG = re.compile(r"^--?[A-Za-z][\w.-]*=?\S*$")  # --kb-dir, -v, --training.lr=1e-5
_PROSE_END = re.compile(r"(?:[,;?!]|(?<!\.)\.)+$")  # a sentence's punctuation after a span ("..." stays)


def _code_like(word: str) -> bool:
    return bool(_SYMBOL.search(word) or any(c.isdigit() for c in word))


def code_spans(question: str) -> list[ast.AST]:
    """The parsed trees of the code in ``question`` (see the module docstring); [] for prose."""
    if len(question) > MAX_CHARS:
        return []
    trees, budget = [], MAX_PARSES
    for span in (m.group(1) for m in _BACKTICKS.finditer(question)):
        tree = _parses(span.strip())  # marked as code by the user: no symbol needed
        budget -= 1
        if tree is not None:
            trees.append(tree)
    for line in re.split(r"\n|\s{2,}|\t", _BACKTICKS.sub("\n", question)):
        # code ends where prose begins: at a question word ("what", "why" ...: no Python keyword is
        # one), a dash standing alone, or a command-line flag (--kb-dir); lines, tabs and runs of
        # spaces split too ("first, *rest = [1, 2]  is rest a list")
        words = [w if not (_FLAG.match(w) or w.lower() in _PROSE_STARTS) else "\n" for w in line.split()]
        # code starts at a word that looks like code (a symbol or digit, or a keyword that opens a
        # statement), or at a name followed by one ("t = ...", "xs[1]"); prose words ("why is ...")
        # never start a span, so "why is 10**-2 == 0.01" is read from 10**-2 on
        starts = [i for i, w in enumerate(words) if w != "\n" and (
                  _code_like(w) or w in _KEYWORD_START or (i + 1 < len(words) and _FOLLOW.match(words[i + 1])))]
        covered = -1
        for start in starts:
            if start <= covered:
                continue
            stop = words.index("\n", start) if "\n" in words[start:] else len(words)
            for end in range(stop, start, -1):
                if budget <= 0:
                    return trees
                if words[end - 1].lower() in _PROSE_ENDS:
                    continue  # "... in the": code does not end on an article
                text = _PROSE_END.sub("", " ".join(words[start:end]))  # "unhashable," is no tuple
                if not _SYMBOL.search(text) and (words[start] not in _KEYWORD_START or end - start < 3):
                    break
                budget -= 1
                tree = _parses(text + " pass" if text.endswith(":") else text)  # "def f(a, /, *, b):"
                if tree is not None:
                    trees.append(tree)
                    covered = end - 1
                    break
    return trees


def code_terms(question: str) -> list[str]:
    """The constructs the code in ``question`` uses, in the Python reference's words, each once, in
    order of first use: ``"t[0] += [1] why TypeError"`` -> ``["augmented assignment", "subscriptions"]``.
    [] for a question without code that parses."""
    out: list[str] = []
    for tree in code_spans(question):
        for node in ast.walk(tree):
            for term in _node_terms(node):
                if term not in out:
                    out.append(term)
    return out
