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
