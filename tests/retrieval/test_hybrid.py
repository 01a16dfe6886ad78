"""Hybrid search: the lexical (FTS5) index, its upkeep and migration, rank fusion, and eval per mode."""
import json
import sqlite3

import pytest

from retrieval import lexical
from retrieval.cli import main
from retrieval.errors import RetrievalError
from retrieval.evaluate import evaluate
from retrieval.lexical import lexical_terms, rrf
from retrieval.retriever import Retriever

# One short note per exact token, written so that its prose says little about the token's meaning,
# beside notes whose prose is close to the questions' wording but lacks the token.
NOTES = {
    "matmul.md": "# Note 7\n\nIn release 3.5 the symbol @ was added to the grammar; a class may define a hook for it.",
    "power.md": "# Note 8\n\nThe token ** binds more tightly than unary minus on its left; -1 ** 2 is -1.",
    "floordiv.md": "# Note 9\n\nFor ints, 7 // 2 gives 3 and -7 // 2 gives -4, see the table in section 6.",
    "slots.md": "# Note 10\n\nListing names in __slots__ removes the per-instance dictionary.",
    "nonlocal.md": "# Note 11\n\nWriting nonlocal x in an inner def rebinds x in the closest enclosing def.",
    # paraphrases of the questions' topics, without their words
    "operators.md": "# Linear algebra\n\nThe product of an m-by-n and an n-by-p table of numbers, computed row "
                    "by column, as in numpy.",
    "classes.md": "# RAM\n\nReducing the RAM each object takes by fixing its set of fields.",
    "scopes.md": "# Inner functions\n\nAn inner function can rebind a variable that belongs to the function "
                 "around it.",
    "division.md": "# Quotients\n\nSplitting whole numbers rounds the quotient towards minus infinity.",
    "exponent.md": "# Raising to a power\n\nA base raised to a power, e.g. two cubed is eight.",
}
# (question, the note that answers it): each hinges on one exact token.
QUESTIONS = [
    ("what does @ do for multiplying matrices", "matmul.md"),
    ("what does ** do, exponentiation", "power.md"),
    ("what does // do when dividing integers", "floordiv.md"),
    ("what is __slots__ for, saving memory per instance", "slots.md"),
    ("what does nonlocal do in closures", "nonlocal.md"),
]


@pytest.fixture
def notes(tmp_path):
    d = tmp_path / "notes"
    d.mkdir()
    for name, text in NOTES.items():
        (d / name).write_text(text)
    return d


@pytest.fixture
def kb(tmp_path, notes, embedder):
    kb = Retriever.create(tmp_path / "idx", embedder=embedder)
    kb.add([notes])
    return kb


def _top(kb, question, mode):
    return kb.search(question, k=1, mode=mode)[0].source.rsplit("/", 1)[-1]


def _kb_of(tmp_path, embedder, files: dict[str, str]) -> Retriever:
    """A knowledge base of the given Markdown files (name -> text)."""
    d = tmp_path / "d"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    kb = Retriever.create(tmp_path / "idx", embedder=embedder)
    kb.add([d])
    return kb


def test_terms_keep_dunders_operators_and_keywords():
    assert lexical_terms("x.__slots__ = ()") == ["x", "__slots__", "slots", "op_assign"]
    # the longest operator wins; the grammar's ::= is not the walrus operator
    assert lexical_terms("a ** b **= c // d @ e := f ::= g") == [
        "a", "op_pow", "b", "op_powassign", "c", "op_floordiv", "d", "op_at", "e", "op_walrus", "f", "op_grammar", "g"]
    assert lexical_terms("nonlocal count") == ["nonlocal", "count"]
    assert lexical_terms("reverse_order") == ["reverse_order", "reverse", "order"]
    # query stop words go, Python keywords stay; a query of stop words only keeps them
    assert lexical.fts_query("what does @ do in a lambda") == '"op_at" OR "in" OR "lambda"'
    assert lexical.fts_query("what does it do") == '"what" OR "does" OR "it" OR "do"'
    assert lexical.fts_query("?!,") is None


@pytest.mark.parametrize("question,note", QUESTIONS)
def test_lexical_and_hybrid_find_the_passage_of_an_exact_token(kb, question, note):
    assert _top(kb, question, "lexical") == note
    assert _top(kb, question, "hybrid") == note
    assert _top(kb, question, None) == note  # the default mode is hybrid


def test_dense_alone_misses_exact_token_passages(kb):
    # what the lexical index is for: dense search ranks the notes that talk like the question first
    missed = [q for q, note in QUESTIONS if _top(kb, q, "dense") != note]
    assert len(missed) >= 2, missed


def _fts_rows(kb) -> dict[int, str]:
    return dict(kb.store.db.execute(f"SELECT rowid, exact FROM {lexical.FTS_TABLE}"))


def _in_step(kb) -> None:
    chunks = {i for (i,) in kb.store.db.execute("SELECT id FROM chunks")}
    assert set(_fts_rows(kb)) == chunks


def test_lexical_index_in_step_after_add_replace_remove_rebuild(tmp_path, notes, embedder):
    kb = Retriever.create(tmp_path / "idx", embedder=embedder)
    kb.add([notes])
    _in_step(kb)
    (notes / "slots.md").write_text("# Note 10\n\nThe hook __getattr__ runs when normal lookup fails.")
    assert kb.add([notes]).replaced == 1
    _in_step(kb)
    assert kb.search("__slots__", k=5, mode="lexical") == []
    assert _top(kb, "__getattr__", "lexical") == "slots.md"
    kb.remove([notes / "matmul.md"])
    _in_step(kb)
    assert all(not h.source.endswith("matmul.md") for h in kb.search("@", k=5, mode="lexical"))
    kb.add_documents([__import__("retrieval.loaders", fromlist=["Document"]).Document(
        "mem:1", "mem", "The __init_subclass__ hook runs for each subclass.")], "mem")
    _in_step(kb)
    kb.rebuild("hnsw")
    _in_step(kb)
    kb.close()
    kb = Retriever.open(tmp_path / "idx", embedder=embedder)
    assert _top(kb, "__init_subclass__", "lexical") == "mem:1"


def _make_schema_2(path):
    """What a Keel before hybrid search wrote: no lexical table, schema_version 2."""
    db = sqlite3.connect(path)
    db.execute(f"DROP TABLE {lexical.FTS_TABLE}")
    db.execute("DELETE FROM meta WHERE key = 'lexical_version'")
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.commit()
    db.close()


def test_schema_2_knowledge_base_migrates_on_open_transactionally(tmp_path, notes, embedder, monkeypatch):
    Retriever.create(tmp_path / "idx", embedder=embedder).add([notes])
    store = tmp_path / "idx" / "docstore.sqlite"
    _make_schema_2(store)
    # a failure half-way leaves the docstore as it was (schema 2, no lexical table) ...
    calls = {"n": 0}
    real = lexical.lexical_columns

    def failing(*a):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("killed")
        return real(*a)

    monkeypatch.setattr("retrieval.store.lexical_columns", failing)
    with pytest.raises(RuntimeError):
        Retriever.open(tmp_path / "idx", embedder=embedder)
    db = sqlite3.connect(store)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
    assert not db.execute("SELECT name FROM sqlite_master WHERE name = ?", (lexical.FTS_TABLE,)).fetchall()
    db.close()
    monkeypatch.setattr("retrieval.store.lexical_columns", real)
    # ... and the next open migrates it, with nothing for the user to do
    kb = Retriever.open(tmp_path / "idx", embedder=embedder)
    assert kb.store.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("3",)
    _in_step(kb)
    assert _top(kb, "what does @ do for multiplying matrices", "hybrid") == "matmul.md"


def test_lexical_index_out_of_step_or_older_tokenisation_is_refilled_on_open(tmp_path, notes, embedder):
    Retriever.create(tmp_path / "idx", embedder=embedder).add([notes])
    db = sqlite3.connect(tmp_path / "idx" / "docstore.sqlite")
    db.execute(f"DELETE FROM {lexical.FTS_TABLE} WHERE rowid IN (SELECT MIN(rowid) FROM {lexical.FTS_TABLE})")
    db.commit()
    db.close()
    _in_step(Retriever.open(tmp_path / "idx", embedder=embedder))
    db = sqlite3.connect(tmp_path / "idx" / "docstore.sqlite")
    db.execute(f"UPDATE {lexical.FTS_TABLE} SET exact = ''")
    db.execute("UPDATE meta SET value = '0' WHERE key = 'lexical_version'")
    db.commit()
    db.close()
    kb = Retriever.open(tmp_path / "idx", embedder=embedder)
    assert "op_at" in " ".join(_fts_rows(kb).values())


def test_rrf_orders_by_summed_reciprocal_ranks():
    # 3: 1/63 + 1/61 = 0.03227 beats 2: 2/62 = 0.03226; then 1 (1/61), then 4 (1/63)
    assert [i for i, _ in rrf([[1, 2, 3], [3, 2, 4]], k=60)] == [3, 2, 1, 4]
    fused = dict(rrf([[1, 2, 3], [3, 2, 4]], k=60))
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    # a small k lets a first place win; a weight tips the balance to one ranking
    # ties keep the order of first appearance; a weight tips the balance to one ranking
    assert [i for i, _ in rrf([[1, 2], [2, 1]], k=60)] == [1, 2]
    assert [i for i, _ in rrf([[1, 2], [2, 1]], k=60, weights=[1.0, 2.0])] == [2, 1]
    # a smaller k favours first places: 5 (first once) beats 6 (third twice) only when k < 1
    assert [i for i, _ in rrf([[5, 8, 6], [7, 9, 6]], k=60)][0] == 6
    assert [i for i, _ in rrf([[5, 8, 6], [7, 9, 6]], k=0.5)][:2] == [5, 7]


def test_mode_option_is_checked_and_on_the_cli(kb, capsys):
    with pytest.raises(RetrievalError, match="mode must be one of dense, lexical, hybrid, got 'bm25'"):
        kb.search("x", mode="bm25")
    assert main(["search", str(kb.folder), "what does // do", "--mode", "lexical", "--json", "-k", "1"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("["):])[0]["source"].endswith("floordiv.md")
    with pytest.raises(SystemExit):
        main(["search", str(kb.folder), "x", "--mode", "sparse"])
    assert "invalid choice: 'sparse'" in capsys.readouterr().err
    # min_score (cosine) and MMR apply in every mode
    assert kb.search("what does @ do for multiplying matrices", k=3, mode="lexical", min_score=0.99) == []
    assert len(kb.search("what does @ do for multiplying matrices", k=2, mode="hybrid", mmr_lambda=0.5)) == 2


def test_eval_reports_every_mode_in_one_run(kb, tmp_path, capsys):
    queries = tmp_path / "q.jsonl"
    queries.write_text("\n".join(json.dumps({"query": q, "relevant": [n], "split": "test" if i % 2 else "dev"})
                                 for i, (q, n) in enumerate(QUESTIONS)))
    report = evaluate(kb, [json.loads(line) for line in queries.read_text().splitlines()], k=10)
    assert set(report["modes"]) == {"dense", "lexical", "hybrid"} and report["default_mode"] == "hybrid"
    for r in report["modes"].values():
        assert set(r) >= {"recall@1", "recall@5", "recall@10", "mrr"}
        assert r["recall@1"] <= r["recall@5"] <= r["recall@10"] and 0 <= r["mrr"] <= 1
    assert report["modes"]["lexical"]["recall@1"] == 1.0 and report["modes"]["hybrid"]["recall@1"] == 1.0
    assert report["modes"]["dense"]["recall@1"] < 1.0
    assert report["mrr"] == report["modes"]["hybrid"]["mrr"]
    assert main(["eval", str(kb.folder), str(queries), "--split", "dev", "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "3 queries (dev); default mode hybrid" in out
    for mode in ("dense", "lexical", "hybrid"):
        assert any(line.split()[0] == mode for line in out.splitlines() if line.strip())
    assert set(json.loads((tmp_path / "r.json").read_text())["modes"]) == {"dense", "lexical", "hybrid"}
    assert main(["eval", str(kb.folder), str(queries), "--split", "nope"]) == 2
    assert "no queries with split 'nope'" in capsys.readouterr().err


def test_agent_search_tool_uses_the_default_hybrid_mode(kb):
    from agents.tools import search_tool

    out = search_tool(kb).run({"query": "what does @ do for multiplying matrices", "k": 1}).text
    assert "matmul.md" in out


def test_terms_in_too_many_chunks_are_left_out_of_a_large_index(kb):
    # "note" is in five chunks: above max_df it is left out, and only the rarer term is searched
    everything = kb.store.lexical_search("nonlocal note", 10, max_df=None)
    assert len(everything) == 5
    kept = kb.store.lexical_search("nonlocal note", 10, max_df=3)
    assert [kb.store.get([i])[i]["source"].rsplit("/", 1)[-1] for i, _ in kept] == ["nonlocal.md"]
    # when every term is that common, the rarest one is still searched
    assert len(kb.store.lexical_search("note", 10, max_df=3)) == 5
    alone = [{i for i, _ in kb.store.lexical_search(t, 10, max_df=None)} for t in ("note", "in")]
    assert min(len(a) for a in alone) > 3
    assert {i for i, _ in kb.store.lexical_search("note in", 10, max_df=3)} == min(alone, key=len)


def test_old_knowledge_base_that_cannot_be_written_gets_a_clear_error(tmp_path, notes, embedder):
    kb = Retriever.create(tmp_path / "idx", embedder=embedder)
    kb.add([notes])
    kb.close()
    store = tmp_path / "idx" / "docstore.sqlite"
    _make_schema_2(store)
    writer = sqlite3.connect(store)
    writer.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(RetrievalError, match="lexical index made or refreshed .* cannot be written now"):
            Retriever.open(tmp_path / "idx", embedder=embedder)
    finally:
        writer.rollback()
        writer.close()
    assert Retriever.open(tmp_path / "idx", embedder=embedder).store.db.execute(
        "SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("3",)


def test_urls_are_read_as_words_not_operators(tmp_path, embedder):
    """A link's // and / are not the floor-division and division operators (a question about //
    matched every document with an http:// link before)."""
    assert lexical_terms("see https://example.org/a_b?q=1") == ["see", "https", "example", "org", "a_b", "a", "b",
                                                                 "q", "1"]
    assert lexical_terms("7 // 2, http://x/y") == ["7", "op_floordiv", "2", "http", "x", "y"]
    kb = _kb_of(tmp_path, embedder, {"links.md": "# Mirrors\n\nDownloads: http://mirror.example.org//pub/ and "
                                                 "https://cdn.example.net/a/b/c, also ftp://old.example.com//x.",
                                     "ints.md": "# Integers\n\nFor ints, 7 // 2 gives 3."})
    found = [h.source.rsplit("/", 1)[-1] for h in kb.search("what does // do", k=5, mode="lexical")]
    assert found == ["ints.md"]


def test_a_link_keeps_the_underscore_names_it_holds(tmp_path, embedder):
    """A name inside a URL is still an exact name ("https://x/pkg/__init__.py" was read as "init py")."""
    assert lexical_terms("https://x/pkg/__init__.py#object.__set_name__") == [
        "https", "x", "pkg", "__init__", "init", "py", "object", "__set_name__", "set_name", "set", "name"]
    kb = _kb_of(tmp_path, embedder, {"pkgs.md": "# Packages\n\nA package marker: see https://example.org/src/__init__.py",
                                     "inits.md": "# Starting up\n\nInit the service, then init the py runner."})
    found = [h.source.rsplit("/", 1)[-1] for h in kb.search("what is __init__.py for", k=5, mode="lexical")]
    assert found[0] == "pkgs.md"


def test_an_older_lexical_index_is_remade_on_open_with_a_message(tmp_path, notes, embedder, capfd):
    Retriever.create(tmp_path / "idx", embedder=embedder).add([notes])
    db = sqlite3.connect(tmp_path / "idx" / "docstore.sqlite")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'lexical_version'")
    db.commit()
    db.close()
    capfd.readouterr()
    kb = Retriever.open(tmp_path / "idx", embedder=embedder)
    err = capfd.readouterr().err
    assert "re-making the lexical (FTS5) index" in err and f"tokenisation version 1 -> {lexical.LEXICAL_VERSION}" in err
    assert kb.store.db.execute("SELECT value FROM meta WHERE key = 'lexical_version'").fetchone() == (
        str(lexical.LEXICAL_VERSION),)
    capfd.readouterr()
    Retriever.open(tmp_path / "idx", embedder=embedder)  # up to date: nothing to say
    assert "re-making" not in capfd.readouterr().err


def _section(topic: str, facts: list[str]) -> str:
    return f"## {topic}\n\n" + " ".join(f"The {topic} {f}." for f in facts) + "\n\n"


# Three sections; the "handbook" holds all three word for word (as Python's reference `compound`
# holds `for`, `while` and `try`), and the loop section is also a document of its own.
LOOP = _section("loop", ["repeats its body once for every item of the sequence it is given",
                         "binds the target name to each item in turn before the body runs",
                         "asks the iterator for the next item until the iterator is exhausted",
                         "ends early when a break statement in its body is reached",
                         "skips to the next item when a continue statement is reached",
                         "runs its else clause only when no break ended it",
                         "leaves the target name bound to the last item after it finishes",
                         "may change the sequence it walks over, which is best avoided"])
GUARD = _section("guard", ["catches the errors raised inside its protected block",
                       "matches each handler against the error's class from top to bottom",
                       "always runs its final clause, whether or not an error escaped"])
SWITCH = _section("switch", ["compares a subject with each case pattern in the order written",
                         "binds the names a matching pattern captures",
                         "falls through to the wildcard case when nothing else matched"])


def test_a_passage_also_in_a_smaller_document_is_shown_from_that_document(tmp_path, embedder):
    from retrieval.duplicates import copies, shingles

    # the pure rule: a chunk mostly covered by a smaller document goes; equal sizes never displace
    a, b = frozenset(range(20)), frozenset(range(100))  # a covers 20% of b
    assert copies({1: ("big", b), 2: ("small", a)}, {"big": 5, "small": 2}, min_overlap=0.3) == set()
    assert copies({1: ("big", b), 2: ("small", a)}, {"big": 5, "small": 2}, min_overlap=0.2) == {1}
    assert copies({1: ("big", a), 2: ("small", a)}, {"big": 5, "small": 2}) == {1}
    assert copies({1: ("x", a), 2: ("y", a)}, {"x": 2, "y": 2}) == set()  # the same size: both stay
    # the same windows are sampled from a passage wherever it appears
    assert shingles(LOOP) <= shingles(GUARD + LOOP + SWITCH) and 0 < len(shingles(LOOP)) < len(LOOP.split())
    d = tmp_path / "d"
    d.mkdir()
    (d / "handbook.md").write_text("# Handbook\n\n" + LOOP + GUARD + SWITCH)
    (d / "loop.md").write_text("# Loop\n\n" + LOOP)
    (d / "colours.md").write_text("# Colours\n\nRed and blue mixed give purple; yellow and blue give green.")
    kb = Retriever.create(tmp_path / "idx", embedder=embedder, chunk_tokens=32, overlap=4)
    kb.add([d])
    question = "when does the loop run its else clause"

    def copy_of_loop(h):  # a handbook chunk that lies inside its loop section
        return h.source.endswith("handbook.md") and h.text.strip() in LOOP

    for mode in ("dense", "lexical", "hybrid"):
        kb.collapse_duplicates = False
        kept = kb.search(question, k=3, mode=mode)
        assert any(copy_of_loop(h) for h in kept), (mode, kept)  # the umbrella's copy competes with the page
        kb.collapse_duplicates = True
        hits = kb.search(question, k=3, mode=mode)
        assert hits[0].source.endswith("loop.md"), (mode, [h.source for h in hits])
        assert not any(copy_of_loop(h) for h in hits), (mode, hits)
        # the handbook's other sections, held by no other document, are still found
        guard = kb.search("what does the guard always run", k=2, mode=mode)
        assert guard[0].source.endswith("handbook.md"), mode


def test_a_dunder_in_a_passage_is_not_the_bare_word(tmp_path, embedder):
    """A passage's __del__ is indexed as __del__ only, so the keyword del in a question finds the
    del statement, not every page that mentions __del__; a question's __slots__ still also looks for
    the plain word slots."""
    words, exact, _ = lexical.lexical_columns("object.__del__(self) and __slots__")
    assert "del" not in words.split() and "slots" not in words.split() and "__del__" in exact.split()
    assert lexical.query_terms("what is __slots__ for") == ["is", "__slots__", "slots", "for"]
    d = tmp_path / "d"
    d.mkdir()
    (d / "finalizer.md").write_text("# Finalizers\n\nobject.__del__(self) runs before an instance is destroyed; "
                                    "__del__ may never run at exit, and __del__ should not raise.")
    (d / "statement.md").write_text("# Removing names\n\nThe del statement unbinds a name from its namespace.")
    (d / "memory.md").write_text("# Memory\n\nA class with __slots__ has no per-instance dictionary.")
    kb = Retriever.create(tmp_path / "idx", embedder=embedder)
    kb.add([d])
    assert [h.source.rsplit("/", 1)[-1] for h in kb.search("del", k=5, mode="lexical")] == ["statement.md"]
    assert _top(kb, "when does __del__ run", "lexical") == "finalizer.md"
    assert _top(kb, "what is __slots__ for", "lexical") == "memory.md"


def test_a_hyphen_or_slash_between_letters_joins_words():
    """"built-in", "f-string" and "and/or" are words, not the minus and division operators (a question
    about subtraction matched every page that says "built-in"); spaced or numeric ones stay operators."""
    assert lexical_terms("an f-string and/or a built-in") == ["an", "f", "string", "and", "or", "a", "built", "in"]
    assert lexical_terms("x - y, a/2, -7 // 2, 1e-3") == ["x", "op_minus", "y", "a", "op_div", "2", "op_minus", "op_neg",
                                                         "7", "op_floordiv", "2", "1", "e", "op_minus", "3"]
    assert "op_minus" not in lexical.query_terms("how do I change a module-level variable")


BASES = {"inheritance.md": "# Base classes\n\nA class may list several base classes that it inherits from; "
                           "the bases are searched in order when an attribute is looked up.",
         "tuple.md": "# Note 3\n\nThe attribute __bases__ is a tuple of the parents, in the order given.",
         "colours.md": "# Colours\n\nRed and blue mixed give purple; yellow and blue give green."}


def test_dense_candidates_without_the_questions_exact_token_are_left_out_of_the_fusion(tmp_path, embedder):
    """The embedding reads __bases__ as the word "bases"; the passage that names __bases__ wins in
    hybrid only when dense candidates lacking it are gated out (``exact_gate``)."""
    kb = _kb_of(tmp_path, embedder, BASES)
    question = "what is __bases__"
    assert _top(kb, question, "dense") == "inheritance.md"  # what the gate is for
    assert _top(kb, question, None) == "tuple.md"  # on by default, in the default (hybrid) mode
    kb.exact_gate = False
    assert _top(kb, question, "hybrid") == "inheritance.md"
    kb.exact_gate = True
    assert _top(kb, question, "hybrid") == "tuple.md"
    assert {h.source.rsplit("/", 1)[-1] for h in kb.search(question, k=3)} >= {"tuple.md", "inheritance.md"}
    # no candidate holds the token, or the question has none: the same ranking as without the gate
    for q in ("what is __mro__ in the bases", "how are base classes searched"):
        kb.exact_gate = False
        before = [h.id for h in kb.search(q, k=3)]
        kb.exact_gate = True
        assert [h.id for h in kb.search(q, k=3)] == before, q


@pytest.mark.parametrize("code,role", [
    ("s[::-1]", "op_slice"), ("xs[1:5:2]", "op_slice"), ("{**defaults, **overrides}", "op_unpack_kw"),
    ("f(*args)", "op_unpack"), ("first, *rest = xs", "op_unpack"), ("def f(a, /, b)", "op_posonly"),
    ("def f(a, *, b)", "op_kwonly"), ("2 ** -1", "op_neg"), ("-2**2", "op_neg"), ("x: int = 5", "op_annotation"),
    ("def f(a: int, b: str)", "op_annotation"), ("(1,)", "op_tuple1"), ("@property\ndef f(self)", "op_decorator")])
def test_a_symbol_in_pasted_code_also_gets_its_role(code, role):
    terms = lexical_terms(code)
    assert role in terms and lexical.is_exact(role) and not lexical.is_name(role)
    # the symbol's own term stays, so a question in prose still matches every use of it
    symbols = [t for t in terms if lexical.is_exact(t) and t not in lexical.ROLES]
    assert symbols or role in ("op_slice", "op_tuple1", "op_annotation"), terms


@pytest.mark.parametrize("text", [
    "what does ** do", "3 * 4", "a - b", "x-1", "python -O", "--flag", "a @ b", "user@host", "from x import *",
    "(a, b)", "{'a': 1, b: c}", "lambda x: x)", "Note: see, this", "Changed in version 3.8: Added, removed",
    "(default: none)", "(see: the table)", "key: value", "at 10:30, or 1:2"])
def test_binary_operators_and_prose_get_no_role(text):
    assert not lexical.ROLES & set(lexical_terms(text)), lexical_terms(text)


def test_a_role_finds_the_passage_that_uses_the_syntax(tmp_path, embedder):
    kb = _kb_of(tmp_path, embedder, {
        "merge.md": "# Note 4\n\nLater keys take precedence: {**base, **extra} keeps extra's value.",
        "powers.md": "# Note 5\n\nThe ** operator: 2 ** 10 is 1024, and a ** b ** c groups to the right."})
    assert _top(kb, "{**a, **b} what happens", "lexical") == "merge.md"  # powers.md has more ** and a, b
    assert _top(kb, "what is 3 ** 2", "lexical") == "powers.md"


@pytest.mark.parametrize("text,terms", [
    ("**bold** and *italic* text", ["bold", "and", "italic", "text"]),
    ("- first item\n* second\n# Heading\n> quoted", ["first", "item", "second", "heading", "quoted"]),
    ("Operator precedence\n*******************\n", ["operator", "precedence"]),  # every pydoc topic's title
    ("+-----+-----+\n| x   | y   |\n|=====|=====|\n", ["x", "y"]),
    ("| `a|b` | bitwise or |", ["a", "op_pipe", "b", "bitwise", "or"]),  # a cell's own | stays
    (">>> x = 1\n... y", ["x", "op_assign", "1", "y"]),
    # code keeps its operators
    ("2 ** 3 ** 2, a**b", ["2", "op_pow", "3", "op_pow", "2", "a", "op_pow", "b"]),
    ("a | b, int | None", ["a", "op_pipe", "b", "int", "op_pipe", "none"]),
    ("total = (a\n    + b\n    - c)", ["total", "op_assign", "a", "op_plus", "b", "op_minus", "c"]),
    ("def f():\n    ...", ["def", "f", "op_ellipsis"]),
    ("```python\n# comment\n- x\n```", ["python", "op_hash", "comment", "op_minus", "x"]),
    ("2 *3* 4", ["2", "op_star", "3", "op_star", "4"]),
])
def test_a_passages_layout_is_no_operator(text, terms):
    """Rules, table borders, REPL prompts and Markdown marks are not ** - | >> (a title's underline
    was read as eleven **, and bold text outranked the power operator's page); code keeps them."""
    assert lexical.lexical_columns(text)[:2] == (" ".join(t for t in terms if not lexical.is_exact(t)),
                                                 " ".join(t for t in terms if lexical.is_exact(t)))


@pytest.mark.parametrize("question,term", [("* operator in python", "op_star"), ("- vs ~", "op_minus"),
                                           ("# vs docstring", "op_hash"), ("... what does it mean", "op_ellipsis"),
                                           ("| vs or", "op_pipe"), (">> in python", "op_rshift")])
def test_a_question_is_not_reformatted(question, term):
    assert term in lexical.query_terms(question)


def test_a_word_spelled_like_an_operator_term_is_no_operator():
    assert "op_pow" not in lexical_terms("set op_pow = 3") and not lexical.is_exact("wop_pow")
    assert lexical.is_exact("op_pow") and lexical.is_name("__bases__") and not lexical.is_name("op_pow")


def test_a_long_pasted_line_is_tokenised_in_linear_time():
    import time

    t = time.perf_counter()
    lexical_terms("def f(" + "a: int, " * 8000 + "): pass")  # 64 KB on one line
    assert time.perf_counter() - t < 3.0


def test_operators_typed_in_prose_do_not_gate(tmp_path, embedder):
    """Only underscore names gate: a prose arrow, an "e.g. x = 5" or a "3.10+" must not push the
    right passage out because one other passage holds the symbol."""
    kb = _kb_of(tmp_path, embedder, {
        "global.md": "# The global statement\n\nA function that assigns to a module-level "
                     "variable declares it global first; otherwise the assignment makes a local.",
        "arrows.md": "# Notes\n\nx = 5 -> y = 6 and 3.10+ or a > b."})
    for q in ("x = 5 ; how do global variables work inside a function",
              "how do global variables work inside a function (Python 3.10+) -> assign"):
        assert _top(kb, q, "dense") == "global.md", q  # what the gate must not undo
        assert _top(kb, q, None) == "global.md", q


def test_an_empty_query_is_an_error_and_a_query_without_terms_finds_nothing(kb):
    for q in ("", "   "):
        with pytest.raises(RetrievalError, match="query is empty"):
            kb.search(q)
    for mode in ("dense", "lexical", "hybrid"):
        assert kb.search("???", mode=mode) == []
        assert kb.search("@", mode=mode) != []  # a symbol alone is a query


def test_eval_refuses_an_empty_query_or_relevant_list(kb, tmp_path):
    from retrieval.evaluate import read_queries

    for row, field in (({"query": " ", "relevant": ["a.md"]}, "query"), ({"query": "q", "relevant": []}, "relevant"),
                       ({"query": "q", "relevant": [""]}, "relevant")):
        f = tmp_path / "q.jsonl"
        f.write_text(json.dumps({"query": "ok", "relevant": ["a.md"]}) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(RetrievalError, match=f"line 2: '{field}' is empty"):
            read_queries(f)


def test_the_cli_says_an_empty_query_is_empty_and_when_nothing_is_found(kb, capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", str(kb.folder), "  "])
    assert e.value.code == 2 and "QUERY is empty" in capsys.readouterr().err
    assert main(["search", str(kb.folder), "???"]) == 0
    assert capsys.readouterr().out.startswith("no hits")


CONSTRUCTS = {  # each note is named for a construct and says nothing in the question's words
    "augassign.md": "# Augmented assignment statements\n\nAn augmented assignment evaluates the target once and "
                    "performs the binary operation in place where the object supports it, then binds the result.",
    "slicings.md": "# Slicings\n\nA slicing selects a range of items in a sequence object, with optional stride.",
    "conditional.md": "# Conditional expressions\n\nA conditional expression evaluates its condition first and then "
                      "exactly one of its two alternatives.",
    # close to the questions' words, about something else
    "errors.md": "# Common errors\n\nA TypeError is raised when an operation meets an object of the wrong type, "
                 "for example a tuple where a list was expected.",
    "lists.md": "# Lists\n\nA list can be reversed in place, and its items changed; each step of a loop sees one item.",
    "choices.md": "# Choosing a value\n\nTo choose between x and y, compare them and take what you need.",
}


def test_code_in_a_question_is_read_as_the_constructs_it_uses(tmp_path, embedder):
    """retrieval/code_terms.py: the pasted code's constructs, in the reference's words, join the query."""
    kb = _kb_of(tmp_path, embedder, CONSTRUCTS)
    cases = [("t = ([],); t[0] += [1] raises TypeError but the list still changed", "augassign.md"),
             ("xs[::-2]  why does the -2 step reverse the list", "slicings.md"),
             ("what does `x if c else y` choose", "conditional.md")]
    assert Retriever.code_terms == "both"  # the default

    def rank(question, want):
        names = [h.source.rsplit("/", 1)[-1] for h in kb.search(question, k=len(CONSTRUCTS))]
        return names.index(want) + 1

    on = [rank(q, w) for q, w in cases]
    kb.code_terms = "none"
    off = [rank(q, w) for q, w in cases]
    assert all(a < b for a, b in zip(on, off)), (on, off)  # each construct's note ranks higher with it
    assert on[1:] == [1, 1] and on[0] <= 2, on
    kb.code_terms = "both"
    # a question without code ranks as with the feature off
    q = "why does a list in a tuple change"
    kb.code_terms = "none"
    before = [h.id for h in kb.search(q, k=3)]
    kb.code_terms = "both"
    assert [h.id for h in kb.search(q, k=3)] == before


def test_a_question_in_words_only_weighs_the_lexical_ranking_less(kb, monkeypatch):
    import retrieval.retriever as rt

    seen = []
    real = rt.rrf
    monkeypatch.setattr(rt, "rrf", lambda lists, k, weights: seen.append(weights[1]) or real(lists, k, weights))
    for q in ("how do inner functions change a variable of the outer one", "what is __slots__ for",
              "what does ** do", "xs[::-1] why reversed", "what does `x if c else y` choose"):
        kb.search(q, k=2)
    assert seen == [Retriever.plain_lexical_weight, 1.0, 1.0, 1.0, 1.0] and Retriever.plain_lexical_weight == 0.5
    assert rt.is_plain("how do i stop a loop early", []) and not rt.is_plain("what is @ for", [])
    assert not rt.is_plain("x = 1", ["assignment"]) and not rt.is_plain("__init__ vs __new__", [])
    from retrieval.code_terms import analyse

    assert not rt.is_plain("print(x) vs print x", *analyse("print(x) vs print x"))  # code, even without a construct
    for identifier in ("keel_format in keel.json", "desirable_weight", "what is --kb-dir", "lora.merge_on_save false",
                       "what does nonlocal do", "getattr vs getAttribute", "os.path vs pathlib", "what does 3j mean",
                       "why is 0x1F 31", "1e-9 in a float"):
        assert not rt.is_plain(identifier, []), identifier
    for prose in ("how do i bail out of a loop early", "what happens to a variable after the loop ends. thanks",
                  "is a well-known trick or not", "is 3.11 faster than 3.10", "None of my threads finish"):
        assert rt.is_plain(prose, []), prose
