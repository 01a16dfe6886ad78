"""Input and failure kinds from issue #21 (retrieval): one test per kind, each on several members."""
import json
import os

import pytest

from retrieval.cli import main
from retrieval.errors import RetrievalError
from retrieval.retriever import Retriever

A = "# Anchors\n\nAn anchor holds a boat in place by digging into the sea bed."
B = "# Bread\n\nKnead flour, water and yeast, then let the dough rise for an hour."


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "a.md").write_text(A)
    (d / "sub" / "b.md").write_text(B)
    return d


# ---- kind 1: the same file named twice is indexed once
def test_a_file_is_one_document_however_named(tmp_path, corpus, embedder, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink(corpus / "a.md", tmp_path / "link.md")
    os.symlink(corpus, tmp_path / "corpus-link")
    os.link(corpus / "a.md", tmp_path / "hard.md")
    names = ["corpus", "corpus/a.md", str(corpus / "a.md"), "corpus/../corpus/./a.md", "link.md",
             "corpus-link", "hard.md", "corpus/sub"]
    kb = Retriever.create(tmp_path / "kb", embedder=embedder)
    rep = kb.add(names)
    assert (rep.added, rep.chunks) == (2, 2)
    hits = kb.search("anchor sea bed", k=5)
    assert [h.text for h in hits].count(A) == 1 and len(hits) == 2
    assert kb.info()["counts"]["files"] == 2
    # a later add through another name finds it unchanged
    again = kb.add(["link.md", "corpus-link/sub/b.md"])
    assert (again.added, again.unchanged) == (0, 2)
    kb.close()
    assert main(["build", "corpus", "corpus/a.md", "link.md", "--out", str(tmp_path / "kb2")]) == 0


def test_build_cli_counts_each_file_once(tmp_path, corpus, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["build", "corpus", "corpus/a.md", "--out", "kb"]) == 0
    assert "indexed 2 files, 2 chunks" in capsys.readouterr().out


# ---- kind 2: remove by the names given at build time; a name that matches nothing is an error
def test_remove_by_the_names_given_and_refuse_names_that_match_nothing(tmp_path, corpus, embedder, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink(corpus, tmp_path / "corpus-link")
    kb = Retriever.create(tmp_path / "kb", embedder=embedder)
    kb.add(["corpus"])
    assert kb.remove(["corpus/sub"]) == 1  # a subfolder of what was given
    assert kb.remove(["corpus-link/a.md"]) == 1  # through a symlink
    assert kb.info()["counts"]["chunks"] == 0 and kb.search("anchor", k=3) == []
    kb.add(["corpus"])
    with pytest.raises(RetrievalError, match=r"'corpus/nope.md' matches nothing .*holds 2 files: .*a\.md"):
        kb.remove(["corpus", "corpus/nope.md"])
    assert kb.info()["counts"]["files"] == 2, "a failed remove removes nothing"
    # the folder name as typed at build time, from another working directory, after it was deleted
    monkeypatch.chdir(corpus / "sub")
    (corpus / "a.md").unlink()
    (corpus / "sub" / "b.md").unlink()
    assert kb.remove(["corpus"]) == 2
    assert kb.info()["counts"] == {**kb.info()["counts"], "files": 0, "chunks": 0}


def test_remove_cli_exit_codes(tmp_path, corpus, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rows = tmp_path / "faq.jsonl"
    rows.write_text(json.dumps({"id": "q1", "text": "What is a keel?"}) + "\n")
    assert main(["build", "corpus", "faq.jsonl", "--out", "kb"]) == 0
    capsys.readouterr()
    assert main(["remove", "kb", "corpus"]) == 0
    assert "removed 2 files" in capsys.readouterr().out
    assert main(["remove", "kb", "corpus"]) == 2
    err = capsys.readouterr().err
    assert "'corpus' matches nothing" in err and "faq.jsonl" in err
    assert main(["remove", "kb", "faq.jsonl#q1"]) == 2
    assert "rows are removed with their file" in capsys.readouterr().err
    assert main(["remove", "kb", str(rows)]) == 0


# ---- kind 10: options out of range are errors naming the option, in the CLI and the Python API
@pytest.mark.parametrize("argv,option", [
    (["build", "corpus", "--out", "kb", "--overlap", "200", "--chunk-tokens", "200"], "--overlap"),
    (["build", "corpus", "--out", "kb", "--overlap", "300"], "--overlap"),
    (["build", "corpus", "--out", "kb", "--overlap", "-1"], "--overlap"),
    (["build", "corpus", "--out", "kb", "--chunk-tokens", "0"], "--chunk-tokens"),
    (["build", "corpus", "--out", "kb", "--index-param", "nlist=0"], "nlist"),
    (["search", "kb", "anchor", "-k", "0"], "-k"),
    (["search", "kb", "anchor", "-k", "-3"], "-k"),
    (["search", "kb", "anchor", "--mmr", "1.5"], "--mmr"),
    (["search", "kb", "anchor", "--min-score", "nan"], "--min-score"),
    (["eval", "kb", "q.jsonl", "-k", "0"], "-k"),
])
def test_cli_refuses_out_of_range_options(tmp_path, corpus, monkeypatch, capsys, argv, option):
    monkeypatch.chdir(tmp_path)
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err
    assert not (tmp_path / "kb").exists()


def test_api_refuses_out_of_range_options(tmp_path, corpus, embedder):
    for chunk_tokens, overlap, name in [(100, 100, "overlap"), (100, -5, "overlap"), (0, 0, "chunk_tokens"),
                                        (64.5, 0, "chunk_tokens")]:
        with pytest.raises(RetrievalError, match=name):
            Retriever.create(tmp_path / "bad", chunk_tokens=chunk_tokens, overlap=overlap, embedder=embedder)
    with pytest.raises(RetrievalError, match="ef_search"):
        Retriever.create(tmp_path / "bad", index_params={"ef_search": -1}, embedder=embedder)
    kb = Retriever.create(tmp_path / "kb", embedder=embedder)
    kb.add([corpus])
    for kwargs, name in [({"k": 0}, "k"), ({"k": -1}, "k"), ({"k": 2.5}, "k"), ({"k": True}, "k"),
                         ({"mmr_lambda": -0.1}, "mmr_lambda"), ({"mmr_lambda": float("nan")}, "mmr_lambda"),
                         ({"min_score": 2.0}, "min_score"), ({"k": 3, "fetch_k": 2}, "fetch_k")]:
        with pytest.raises(RetrievalError, match=name):
            kb.search("anchor", **kwargs)
        with pytest.raises(RetrievalError, match=name):
            kb.search_batch(["anchor"], **kwargs)
    with pytest.raises(RetrievalError, match="list of strings"):
        kb.search_batch("anchor")
    with pytest.raises(RetrievalError, match="m=5 must divide"):
        kb.rebuild("ivf-pq", {"nlist": 1, "m": 5})
    from retrieval.evaluate import evaluate
    with pytest.raises(RetrievalError, match="k must be"):
        evaluate(kb, [{"query": "anchor", "relevant": ["a.md"]}], k=0)
    assert len(kb.search("anchor", k=1)) == 1
