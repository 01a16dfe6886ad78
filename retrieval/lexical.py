"""The lexical (BM25) half of hybrid search: an SQLite FTS5 table in the docstore, and rank fusion.

Why FTS5 and not bm25s or tantivy: the docstore is already an SQLite file, and an FTS5 table in
it is written in the same transaction as the chunks it indexes, so the lexical index can never be
out of step with the vectors' docstore (an add, a remove or a rebuild commits both or neither),
and no second index file needs its own checksums, locking and crash recovery. FTS5 ranks with
BM25 (``bm25()``, k1 = 1.2, b = 0.75) and ships with CPython's sqlite3 (checked on open: a build
of SQLite without FTS5 gets a ``RetrievalError`` saying so). bm25s would keep a separate in-memory
index that must be re-built or re-saved on every change; tantivy adds a Rust dependency and
another on-disk index beside FAISS.

Tokenisation. FTS5's ``unicode61`` tokenizer drops every symbol and splits ``__slots__`` into
``slots``, so a question that hinges on one exact token (``@``, ``**``, ``//``, ``__slots__``)
could not match. ``lexical_terms`` therefore pre-tokenises in Python, the same way for passages
and queries, into space-separated terms that FTS5 (``porter unicode61 tokenchars '_'``) keeps whole:

  identifiers  ``__slots__`` -> ``__slots__ slots`` in a query (exact name, and the bare word for
               "slots"), ``__slots__`` alone in a passage: a page that mentions ``__del__`` is not
               about the keyword ``del`` (the bare words made it outrank the del statement's page)
  operators    ``@`` -> ``op_at``, ``**`` -> ``op_pow``, ``//`` -> ``op_floordiv``, ``:=`` -> ``op_walrus`` ...
               (the longest operator wins: ``**=`` is one term, not ``**`` and ``=``)
  words        lower-cased, Porter-stemmed by FTS5 (``slots`` matches ``slot``); keywords such as
               ``nonlocal`` are ordinary words and stay searchable.
  URLs         ``http://host/a_b`` -> its words only (``http host a_b a b``): no operator terms
  roles        what a symbol does in pasted code, read from its neighbours, as one more exact term:
               ``s[::-1]`` -> ``op_slice``, ``{**a}`` / ``f(*xs)`` -> ``op_unpack_kw`` / ``op_unpack``,
               ``2 ** -1`` -> ``op_neg``, ``def f(a, /, *, b)`` -> ``op_posonly``, ``op_kwonly``,
               ``x: int = 5`` -> ``op_annotation``, ``(1,)`` -> ``op_tuple1``, ``@property`` ->
               ``op_decorator`` (the symbol's own term stays: a question in prose, "what does ** do",
               still matches every use). Heuristics on characters, not a parser: a passage's prose
               rarely looks like these patterns, and a wrong role only adds one rare term
  layout       removed from passages first (``strip_layout``): a title's ``*****`` underline, ``+---+``
               and ``|`` table borders, ``>>>``/``...`` REPL prompts, Markdown bullets, headings,
               quotes and ``**bold**`` markers would otherwise be read as ``**``, ``-``, ``|``, ``>>``
               operators (every topic of the Python reference has a starred underline); code keeps
               its operators (indented lines, ``` fences, ``a | b``). Questions are not re-formatted:
               "* operator in python" asks about ``*``
  hyphens      ``-`` or ``/`` with a letter on both sides joins words (``built-in``, ``f-string``,
               ``and/or`` -> ``built in`` ...), no operator: "built-in" is in most pages of the Python
               reference, and its ``op_minus`` matched every question about subtraction

A word spelled like one of these terms (a user's identifier ``op_pow``) is indexed as ``wop_pow``.
The table has three columns (``lexical_columns``): ``words``, ``exact`` (operator and underscore-name
terms) and ``title`` (document title and chunk heading); ``bm25()`` weighs them 1, ``EXACT_WEIGHT``
and ``TITLE_WEIGHT``. It stores its own copy of these terms (about the size of the chunk texts).

Queries are OR-ed (any term may match) and BM25 weighs rare terms such as ``op_at`` far above
``the``; stop words, and terms in more than ``MAX_DF`` chunks, are left out of a query.
``LEXICAL_VERSION`` is stored in the docstore: when the tokenisation changes, the table is
rebuilt from the stored chunk texts on open.

Fusion is reciprocal rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009): a candidate's score
is the sum over rankings of ``weight / (k + rank)``, rank counted from 1. The paper's k is 60; Keel
uses 5, measured better on its dev queries (a first place in either ranking counts for more).
"""
from __future__ import annotations

import re

# 2: URLs are read as words only, no operator terms; 3: no bare word of a dunder in passages;
# 4: a hyphen or slash between two letters ("built-in", "and/or") joins words, it is no operator;
# 5: syntax roles (op_slice, op_unpack, op_neg ...: ``_role``, ``_ROLE_PATTERNS``); 6-8: a passage's
# layout (rules, table borders, REPL prompts, Markdown bullets and emphasis) is no operator (``strip_layout``)
LEXICAL_VERSION = 9
FTS_TABLE = "chunks_fts"
FTS_TOKENIZER = "porter unicode61 tokenchars '_'"
# Chosen on the dev half of bench/queries/default_kb_hybrid.jsonl by bench/bench_hybrid.py's grid
# (bench/RESULTS.md, "Hybrid search"): the paper's k = 60 ranked 5 points lower at recall@1 there.
RRF_K = 5
EXACT_WEIGHT = 4.0  # bm25() column weight of the exact-token column against the words column
TITLE_WEIGHT = 4.0  # bm25() column weight of the title-and-heading column (chosen on dev: see RESULTS; 2 before LEXICAL_VERSION 7)
# Query terms found in more than this many chunks are left out of the search (the rarest term is
# kept when all are that common). FTS5 scores every chunk an OR query matches (about 3 us each on
# these CPUs), so a term in most chunks ("not", "in") made one search take 0.37 s at 100k chunks.
# Below 10,000 chunks nothing is ever left out (the default knowledge base has 970); above, terms
# in more than 10,000 chunks weigh least in BM25 (idf ~ log(N / df)). bench/RESULTS.md, "Hybrid search".
MAX_DF = 10_000

# Python's operators and delimiters that carry meaning in a question, longest first so that
# ``**=`` is read before ``**`` and ``*``. Brackets, commas and dots are left out: they are
# everywhere in code and prose and say nothing on their own.
OPERATORS = {
    "::=": "op_grammar", "**=": "op_powassign", "//=": "op_floordivassign", ">>=": "op_rshiftassign", "<<=": "op_lshiftassign",
    "...": "op_ellipsis", "->": "op_arrow", ":=": "op_walrus", "**": "op_pow", "//": "op_floordiv",
    "==": "op_eq", "!=": "op_ne", "<=": "op_le", ">=": "op_ge", "<<": "op_lshift", ">>": "op_rshift",
    "+=": "op_addassign", "-=": "op_subassign", "*=": "op_mulassign", "/=": "op_divassign",
    "%=": "op_modassign", "@=": "op_matmulassign", "&=": "op_andassign", "|=": "op_orassign",
    "^=": "op_xorassign", "@": "op_at", "*": "op_star", "/": "op_div", "%": "op_mod", "+": "op_plus",
    "-": "op_minus", "~": "op_invert", "&": "op_amp", "|": "op_pipe", "^": "op_caret", "<": "op_lt",
    ">": "op_gt", "=": "op_assign", "#": "op_hash", "\\": "op_backslash",
}
# A URL (``scheme://...``) is read as its words only: its ``//``, ``/``, ``:`` and ``@`` are not
# operators (without this, every ``http://`` link in a document matched a question about ``//``).
_URL = r"[A-Za-z][A-Za-z0-9+.-]*://[^\s<>\"'`()\[\]]+"
_TOKEN = re.compile(f"(?P<url>{_URL})|" + r"[^\W\d_]\w*|_\w*|\d+|"
                    + "|".join(re.escape(op) for op in sorted(OPERATORS, key=len, reverse=True)))


_JOINERS = ("-", "/")


def _joins_words(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` has a letter right before and right after it."""
    return 0 < start and end < len(text) and text[start - 1].isalpha() and text[end].isalpha()


# Syntax roles: what a symbol does in a piece of code, read from its neighbours, indexed as an
# extra exact term beside the symbol's own ("{**a, **b}" is about unpacking, "2 ** -1" about powers).
_OPENERS = "([{,=:"  # after one of these (or at the start of a line) an operand begins: unary use
_OPERAND = re.compile(r"[\w(\[{'\"]")
_ROLE_PATTERNS = [  # (role, pattern); matched on the whole text
    ("op_slice", re.compile(r"(?<=[\w)\]])\[[^\[\]\n]*:[^\[\]\n]*\]")),  # xs[1:5:2], s[::-1]
    ("op_tuple1", re.compile(r"\(\s*[^()\s,][^(),\n]*,\s*\)")),  # (1,)
    # x: int = 5, def f(a: int) ...: a name, a colon, a type, then "=" or (inside brackets) "," or ")"
    ("op_annotation", re.compile(r"(?<![\w.'\"])[A-Za-z_]\w*[ \t]*:[ \t]*[A-Za-z_][\w.]*(?:\[[^\]\n]*\])?[ \t]*(?=[=,)])")),
]


ROLES = frozenset({"op_slice", "op_tuple1", "op_annotation", "op_kwonly", "op_posonly", "op_unpack", "op_unpack_kw",
                   "op_neg", "op_decorator"})


def _before(text: str, start: int) -> str:
    """The nearest character before ``start`` that is not a space or tab ("" at the start)."""
    j = start - 1
    while j >= 0 and text[j] in " \t":
        j -= 1
    return text[j] if j >= 0 else ""


def _role(tok: str, text: str, start: int, end: int) -> str | None:
    """The syntax role of the operator ``tok`` at ``text[start:end]``, or None (binary use, prose)."""
    before, after = _before(text, start), text[end:end + 1]
    after_blank = text[end:].lstrip(" \t")[:1]
    opens = before in ("", "\n") or before in _OPENERS
    if tok == "*" and before in "(," and before and after_blank in (",", ")"):
        return "op_kwonly"  # def f(a, *, b)
    if tok == "/" and before == "," and after_blank in (",", ")"):
        return "op_posonly"  # def f(a, /, b)
    if tok in ("*", "**") and opens and _OPERAND.match(after):
        return "op_unpack" if tok == "*" else "op_unpack_kw"  # f(*args), {**a}, first, *rest = xs
    if tok == "-" and _OPERAND.match(after) and text[start - 1:start] != "-" and (
            opens or before in "*/%+-<>&|^~@" or (start and text[start - 1] in " \t" and after.isdigit())):
        return "op_neg"  # -2**2, 2 ** -1, x = -y
    if tok == "@" and (after.isalpha() or after == "_") and (start == 0 or text[start - 1] in " \t\n("):
        return "op_decorator"  # @property
    return None


def _open_bracket(text: str, start: int) -> int:
    """The position of the innermost bracket still open at ``start``, looking back within its line
    and at most ``_BACK`` characters (-1: none)."""
    depth = 0
    lo = max(text.rfind("\n", 0, start), start - _BACK, 0)
    for j in range(start - 1, lo - 1, -1):
        c = text[j]
        if c in ")]}":
            depth += 1
        elif c in "([{":
            if depth == 0:
                return j
            depth -= 1
    return -1


_BACK = 200  # characters: a long pasted line is not scanned back to its start for every match


def _roles(text: str) -> list[tuple[int, str]]:
    """The pattern roles of ``text`` (see ``_ROLE_PATTERNS``), by position."""
    found = []
    for role, pattern in _ROLE_PATTERNS:
        for m in pattern.finditer(text):
            if role == "op_annotation":
                follows = text[m.end()]
                j = _open_bracket(text, m.start())
                if (j >= 0 and text[j] == "{") or re.search(r"\blambda\b[^:\n]*$", text[max(0, m.start() - 80):m.start() + 1 + m.group().index(":")]):
                    continue  # a dict display {a: b}, or a lambda's parameters
                in_signature = j > 0 and text[j] == "(" and (text[j - 1].isalnum() or text[j - 1] == "_")
                if follows != "=" and not in_signature:
                    continue  # "Note: see," and "(default: none)" in prose; f(a: int) is a signature
            found.append((m.start(), role))
    return sorted(found)


# Layout that is not code, in a passage (a question is never re-formatted): rules and table
# borders (a title's "*****" underline read as eleven ``**``), the cell borders of a table row, a
# REPL's ">>>" prompt and the "..." that continues it, and Markdown's bullets, headings, quotes and
# **bold** / *italic* markers. Code keeps its operators: the Markdown rules apply to lines indented
# at most one space and outside ``` fences (an indented "+ b" continues an expression), "..." only
# right after a prompt line (a stub's body "..." stays), and cell borders only in lines that start
# or end with "|" (``a | b`` is a union).
_RULE = re.compile(r"^[ \t]*(?:([*=~^#-])\1{2,}|[+|][-=+|: ]*[+|])[ \t]*$")  # ****, ====, +----+----+
_CELL_BORDER = re.compile(r"(?:(?<=^)|(?<=[ \t]))\|(?=[ \t]|$)")  # | cell | borders | ("|" quoted stays)
_PROMPT = re.compile(r"^([ \t]*)(>>>|\.\.\.)(?=[ \t]|$)")
_MARKDOWN = re.compile(r"^( ?)(?:[-*+]|#{1,6}|>+)[ \t]+")  # - item, # Heading, > quote
_EMPHASIS = re.compile(r"(?:(?<=^)|(?<=[\s(]))(\*\*?)(?=[A-Za-z])([^*\n\"'`]{1,80}?)(?<=[^\s*])\1(?![\w*\"'`])")


def strip_layout(text: str) -> str:
    """A passage's ``text`` less the layout characters that are no operators (see above)."""
    out, fenced, prompt = [], False, False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append(line)
            continue
        if _RULE.match(line):
            out.append("")
            prompt = False
            continue
        stripped = line.strip()
        if stripped.startswith("|") or stripped.endswith("|"):
            line = _CELL_BORDER.sub(" ", line)
        m = _PROMPT.match(line)
        if m and (m.group(2) == ">>>" or prompt):
            line, prompt = m.group(1) + line[m.end():], True
        else:
            prompt = False
            if not fenced:
                line = _MARKDOWN.sub(r"\1", line)
        if not fenced:
            line = _EMPHASIS.sub(r"\2", line)
        out.append(line)
    return "\n".join(out)


def lexical_terms(text: str, bare_dunders: bool = True, layout: bool = False) -> list[str]:
    """The terms of ``text`` (a passage or a query), in order; see the module docstring.
    ``bare_dunders=False`` (passages) leaves out the bare word of a name with leading underscores;
    ``layout=True`` (passages) removes layout first (``strip_layout``)."""
    terms: list[str] = []
    if layout:
        text = strip_layout(text)
    roles = _roles(text) if any(c in text for c in ":,") else []
    for m in _TOKEN.finditer(text):
        while roles and roles[0][0] <= m.start():
            terms.append(roles.pop(0)[1])
        tok = m.group()
        if m.group("url"):
            # a link's words and the names it holds (".../__init__.py#object.__set_name__"), not its
            # punctuation: its / and . are no division or attribute operators
            terms += [t for t in lexical_terms(tok.replace("://", " ").replace("/", " ").replace("@", " "))
                      if t not in _RESERVED]
            continue
        if tok in OPERATORS:
            if tok in _JOINERS and _joins_words(text, m.start(), m.end()):
                continue  # "f-string", "and/or": a hyphen or slash between letters joins two words
            terms.append(OPERATORS[tok])
            role = _role(tok, text, m.start(), m.end())
            if role:
                terms.append(role)
            continue
        tok = tok.lower()
        if tok in _RESERVED:  # a word spelled like an operator's term ("op_pow") is no operator
            tok = "w" + tok
        if tok.strip("_"):
            terms.append(tok)
            bare = tok.strip("_")
            if bare != tok and (bare_dunders or not tok.startswith("_")):
                terms.append(bare)
            if "_" in bare:  # snake_case: its words too ("reverse_order" -> "reverse", "order")
                terms += [w for w in bare.split("_") if w]
    return terms + [r for _, r in roles]


_RESERVED = frozenset(OPERATORS.values()) | ROLES


def is_exact(term: str) -> bool:
    """An operator symbol's term, a syntax role, or a name with leading or trailing underscores (``__slots__``)."""
    return term in _RESERVED or term.startswith("_") or term.endswith("_")


def is_name(term: str) -> bool:
    """An exact term that is a name the text holds (``__bases__``, ``_private``), not an operator
    symbol nor a syntax role: the exact-token gate's terms (``Retriever._gate``)."""
    return is_exact(term) and term not in _RESERVED


def lexical_columns(text: str, title: str | None = None, heading: str | None = None) -> tuple[str, str, str]:
    """What FTS5 indexes for a passage: ``(words, exact, title)``, each space-separated terms.
    ``exact`` holds the operator and underscore-name terms, ``title`` the document's title and the
    chunk's heading; ``bm25()`` weighs them ``EXACT_WEIGHT`` and ``TITLE_WEIGHT`` times ``words``."""
    terms = lexical_terms(text, bare_dunders=False, layout=True)
    return (" ".join(t for t in terms if not is_exact(t)), " ".join(t for t in terms if is_exact(t)),
            " ".join(lexical_terms(" ".join(x for x in (title, heading) if x))))


# Words of a question that say nothing about its subject ("what does @ do"); dropped from queries
# (not from passages) unless nothing else is left. Python's keywords are never in this list.
QUERY_STOPWORDS = frozenset("""
a about actually am an any anything are be been being but can could did do does doing done exactly explain
explained get gets getting give go goes happen happens happened has have having he her here how i i'd i'm
it its it's just know let like ll me mean means meaning my of on our please really s say says should she
so some someone something tell than thanks that the their them then there these they thing things this those
to under understand up us use used uses using ve want was way ways we were what when where which who whom
why will work works would you your
""".split())


def query_terms(query: str) -> list[str]:
    """The query's distinct terms less stop words (all of them when only stop words are left)."""
    terms = list(dict.fromkeys(lexical_terms(query)))
    return [t for t in terms if t not in QUERY_STOPWORDS] or terms


def fts_query(query: str | list[str]) -> str | None:
    """An FTS5 MATCH expression: the query's terms (``query_terms``, or the given list), quoted,
    OR-ed; None when it has no terms."""
    terms = query_terms(query) if isinstance(query, str) else query
    return " OR ".join(f'"{t}"' for t in terms) if terms else None


def rrf(rankings: list[list[int]], k: int = RRF_K, weights: list[float] | None = None) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of ranked id lists (best first): ``[(id, score)]``, best first.

    score(id) = sum over rankings r holding id of ``weights[r] / (k + rank_r(id))``, rank from 1.
    Ties keep the order in which ids are first met (first ranking first)."""
    weights = weights or [1.0] * len(rankings)
    scores: dict[int, float] = {}
    for ranking, w in zip(rankings, weights):
        for rank, i in enumerate(ranking, 1):
            scores[i] = scores.get(i, 0.0) + w / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])
