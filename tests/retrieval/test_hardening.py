"""Input and failure kinds from issue #21 (retrieval): one test per kind, each on several members."""
import json
import os

import numpy as np
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


def test_a_jsonl_id_used_twice_is_an_error_not_a_duplicate(tmp_path, embedder):
    rows = tmp_path / "faq.jsonl"
    rows.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in [("q1", A), ("q2", B), ("q1", B)]))
    kb = Retriever.create(tmp_path / "kb", embedder=embedder)
    with pytest.raises(RetrievalError, match=r"faq.jsonl#q1' appears more than once"):
        kb.add([rows])
    from retrieval.loaders import Document
    with pytest.raises(RetrievalError, match="appears more than once"):
        kb.add_documents([Document("x", "x", A), Document("x", "x", B)], "mem")
    assert kb.info()["counts"]["chunks"] == 0


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


# ---- kind 3: a byte-order mark is no content, in every document reader
BOMS = [("utf-8-sig", b"\xef\xbb\xbf"), ("utf-16", b""), ("utf-32", b"")]  # utf-16/32 codecs write their own BOM


@pytest.mark.parametrize("codec,bom", BOMS)
def test_byte_order_marks_are_not_content(tmp_path, codec, bom):
    from retrieval.loaders import load_file

    files = {
        "t.md": "# Title\n\nBody text.\n\n## Second\n\nMore.",
        "t.markdown": "# Title\n\nBody text.",
        "t.html": "<h1>Title</h1><p>Body text.</p>",
        "t.txt": "Title line\nBody text.",
        "t.jsonl": '{"id": "r1", "text": "# Title\\n\\nBody text."}\n{"id": "r2", "text": "second"}\n',
    }
    for name, text in files.items():
        (tmp_path / name).write_bytes(bom + text.encode(codec))
        docs = load_file(tmp_path / name)
        assert all("\ufeff" not in d.text and "\ufeff" not in d.title for d in docs), name
        if name.endswith(("md", "markdown", "html")) or name.endswith("jsonl"):
            assert docs[0].title == "Title" and docs[0].heading_at(docs[0].text.index("Body")) == "Title", name
        if name.endswith("jsonl"):
            assert [d.source.rsplit("#")[1] for d in docs] == ["r1", "r2"]
        else:
            assert docs[0].text.lstrip("\n").startswith(("# Title", "Title")), name


def test_bom_inside_a_jsonl_text_field_and_in_memory_markdown(tmp_path):
    from retrieval.loaders import markdown_document

    doc = markdown_document("x", "\ufeff# Heading\n\ntext", "fallback")
    assert doc.title == "Heading" and doc.text.startswith("# Heading")


# ---- kind 4: text that is not UTF-8 is decoded by its encoding, recorded, and lossy decoding warned
LEGACY = [
    ("cp1252", "Le café coûte 3 € ; déjà vu, naïve façade, crème brûlée.\n"),
    ("cp1252", "Prix: 5 €"),
    ("latin-1", "Grüße aus Köln, schöne Straße, Bäcker und Öfen überall.\n" * 3),
    ("cp1251", "Привет, мир! Это простой текст на русском языке для проверки кодировки.\n" * 3),
    ("shift_jis", "これは日本語のテキストです。文字コードの検出を確認します。\n" * 3),
]


@pytest.mark.parametrize("codec,text", LEGACY)
def test_legacy_encodings_are_decoded_not_corrupted(tmp_path, embedder, codec, text):
    f = tmp_path / "legacy.txt"
    f.write_bytes(text.encode(codec))
    kb = Retriever.create(tmp_path / "kb", embedder=embedder)
    rep = kb.add([f])
    assert rep.added == 1
    hit = kb.search(text[:20], k=1)[0]
    assert "\ufffd" not in hit.text and hit.text == text.strip()
    assert any("not UTF-8" in w and "legacy.txt" in w for w in rep.warnings)
    enc = kb.files()[0]["encoding"]
    assert enc and text.encode(codec).decode(enc) == text
    assert kb.info()["encodings"] == {enc: 1}


def test_lossy_decoding_is_warned_and_clean_utf8_is_silent(tmp_path, embedder, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = "Ünïcödé text – “quoted” and ✓ checked. " * 5
    (tmp_path / "good.md").write_text(good, encoding="utf-8")
    (tmp_path / "damaged.txt").write_bytes(good.encode("utf-8") + b" broken \xff\xfe byte " + good.encode("utf-8"))
    assert main(["build", "good.md", "damaged.txt", "--out", "kb"]) == 0
    err = capsys.readouterr().err
    assert "damaged.txt: decoding was lossy: 2" in err and "good.md" not in err
    encodings = {os.path.basename(f["file"]): f["encoding"] for f in Retriever.open("kb", embedder=embedder).files()}
    assert encodings == {"good.md": "utf-8", "damaged.txt": "utf-8"}


# ---- kind 8 (binary files): a file that is not text is skipped with a warning naming it
def test_binary_files_with_text_names_are_skipped_with_a_warning(tmp_path, corpus, embedder, capsys, monkeypatch):
    import gzip
    import sqlite3
    import zlib

    monkeypatch.chdir(tmp_path)
    rng = __import__("random").Random(0)
    (corpus / "random.txt").write_bytes(bytes(rng.randrange(256) for _ in range(20_000)))
    (corpus / "zeros.md").write_bytes(b"\0" * 5000)
    (corpus / "archive.txt").write_bytes(gzip.compress(b"hello world " * 2000))
    (corpus / "deflate.html").write_bytes(zlib.compress(bytes(range(256)) * 50))
    png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(rng.randrange(256) for _ in range(3000))
    (corpus / "image.jsonl").write_bytes(png)
    db = sqlite3.connect(corpus / "db.txt")
    db.execute("CREATE TABLE t (x)")
    db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(500)])
    db.commit()
    db.close()
    binaries = ["random.txt", "zeros.md", "archive.txt", "deflate.html", "image.jsonl", "db.txt"]
    assert main(["build", "corpus", "--out", "kb"]) == 0
    captured = capsys.readouterr()
    assert "indexed 2 files, 2 chunks" in captured.out and "skipped 6 (not text)" in captured.out
    for name in binaries:
        assert f"{name}: not a text file" in captured.err, name
    kb = Retriever.open("kb", embedder=embedder)
    assert kb.info()["counts"]["chunks"] == 2
    from retrieval.loaders import load_file
    from retrieval.text import BinaryFileError
    with pytest.raises(BinaryFileError, match="random.txt"):
        load_file(corpus / "random.txt")


# ---- kind 8 (damaged index files): flipped bytes and edited manifest fields are detected on open
@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_flipped_bytes_in_the_index_are_detected_and_rebuild_repairs(tmp_path, corpus, embedder, index_type):
    kb = Retriever.create(tmp_path / "kb", index_type=index_type, embedder=embedder)
    kb.add([corpus])
    expected = [(h.source, round(h.score, 4)) for h in kb.search("anchor", k=2)]
    kb.close()
    path = tmp_path / "kb" / "index.faiss"
    good = path.read_bytes()
    rng = __import__("random").Random(1)
    for trial in range(5):  # flips anywhere: header, vectors, ids
        data = bytearray(good)
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        with pytest.raises(RetrievalError, match=r"index.faiss is damaged: it does not match the sha256.*retrieval rebuild"):
            Retriever.open(tmp_path / "kb", embedder=embedder)
    assert main(["rebuild", str(tmp_path / "kb")]) == 0
    kb = Retriever.open(tmp_path / "kb", embedder=embedder)
    assert [(h.source, round(h.score, 4)) for h in kb.search("anchor", k=2)] == expected


@pytest.mark.parametrize("field,value,message", [
    ("index_type", "hnsw", "holds a flat index but the manifest says index_type 'hnsw'"),
    ("index_type", "ivf-flat", "holds a flat index"),
    ("index_type", "annoy", "index_type 'annoy' is not one of"),
    ("index_type", None, "index_type None is not one of"),
    ("dim", "384", "dim must be a positive integer"),
    ("dim", 0, "dim must be a positive integer"),
    ("index_params", {"nlist": -1}, "index parameter nlist must be an integer >= 1"),
    ("index_params", [], "index parameters must be a mapping"),
    ("counts", {"index_vectors": "2"}, "counts must hold"),
    ("chunk_tokens", 10, "overlap=40 must be smaller than chunk_tokens=10"),
    ("embedding_model", None, "embedding_model must be a model name"),
    ("keel_retrieval_format", "1", "keel_retrieval_format must be a version number"),
])
def test_edited_manifest_fields_are_clear_errors(tmp_path, corpus, embedder, field, value, message):
    kb = Retriever.create(tmp_path / "kb", index_type="flat", embedder=embedder)
    kb.add([corpus])
    kb.close()
    path = tmp_path / "kb" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest[field] = value
    path.write_text(json.dumps(manifest))
    with pytest.raises(RetrievalError, match=message.replace("(", r"\(").replace("[", r"\[")):
        Retriever.open(tmp_path / "kb", embedder=embedder)
    if field == "index_type":  # the repair the error names works
        assert main(["rebuild", str(tmp_path / "kb"), "--index-type", "flat"]) == 0
        assert len(Retriever.open(tmp_path / "kb", embedder=embedder).search("anchor", k=2)) == 2


# ---- kind 9: long builds commit in batches and resume; --overwrite never deletes a folder that is not an index
def _long_text(n_sentences=400):
    return " ".join(f"Sentence {i} says that item {i * 7 % 113} is stored on shelf {i % 17}." for i in range(n_sentences))


def _chunks_of(folder):
    import sqlite3

    db = sqlite3.connect(folder / "docstore.sqlite")
    rows = db.execute("SELECT source, start, end FROM chunks ORDER BY source, start").fetchall()
    db.close()
    return rows


def test_an_interrupted_add_keeps_committed_batches_and_resumes(tmp_path, embedder):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "long.txt").write_text(_long_text())
    (docs / "short.md").write_text(A)
    reference = Retriever.create(tmp_path / "ref", embedder=embedder)
    reference.commit_every = 8
    total = reference.add([docs]).chunks
    assert total > 24

    calls = {"n": 0}
    real_encode = embedder.encode

    def dying_encode(texts, progress=False):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the process stops during the third batch
        return real_encode(texts, progress)

    kb = Retriever.create(tmp_path / "kb", embedder=embedder)
    kb.commit_every = 8
    kb.embedder.encode = dying_encode
    try:
        with pytest.raises(KeyboardInterrupt):
            kb.add([docs])
    finally:
        del kb.embedder.encode
    kb.close()
    kept = Retriever.open(tmp_path / "kb", embedder=embedder)  # consistent: index and docstore agree
    assert kept.info()["counts"]["chunks"] == 16 and len(kept.search("shelf 3", k=3)) == 3
    assert [f["complete"] for f in kept.files()] == [False] and not kept.manifest["build_complete"]
    # as if killed after writing index.faiss and before committing the docstore: resume repairs it
    kept.index.add(np.array([10**6]), np.zeros((1, kept.manifest["dim"]), dtype="float32"))
    kept._save()
    kept.close()
    with pytest.raises(RetrievalError, match="retrieval rebuild"):
        Retriever.open(tmp_path / "kb", embedder=embedder)
    resumed = Retriever.create(tmp_path / "kb", embedder=embedder, resume=True)
    assert resumed.resumed
    resumed.commit_every = 8
    rep = resumed.add([docs])
    assert rep.resumed == 1 and rep.chunks == total - 16, "only what was not committed is embedded again"
    assert _chunks_of(tmp_path / "kb") == _chunks_of(tmp_path / "ref"), "no chunk lost or stored twice"
    assert all(f["complete"] for f in resumed.files()) and resumed.manifest["build_complete"]


def test_a_build_killed_with_sigkill_resumes_from_its_last_commit(tmp_path):
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "long.txt").write_text(_long_text(1200))
    cmd = [sys.executable, "-m", "retrieval", "build", str(docs), "--out", str(tmp_path / "kb"), "--commit-every", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=os.getcwd())
    committed = 0
    deadline = time.time() + 240
    while committed < 16 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            db = sqlite3.connect(tmp_path / "kb" / "docstore.sqlite", timeout=1)
            committed = db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
            db.close()
        except sqlite3.Error:
            pass
    assert proc.poll() is None, "the build finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=os.getcwd(), timeout=600)
    assert out.returncode == 0, out.stderr
    assert "resuming the interrupted build" in out.stdout and "resumed 1" in out.stdout
    rows = _chunks_of(tmp_path / "kb")
    assert len(rows) == len(set(rows)) and rows[0][1] == 0
    assert all(b[1] < a[2] for a, b in zip(rows, rows[1:])), "consecutive chunks overlap: nothing skipped"


def test_overwrite_never_deletes_a_folder_that_is_not_an_index(tmp_path, corpus, embedder, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.relative_to(corpus) for p in corpus.rglob("*"))
    assert main(["build", "corpus", "--out", "corpus", "--overwrite"]) == 2
    assert "is not a Keel index" in capsys.readouterr().err
    assert sorted(p.relative_to(corpus) for p in corpus.rglob("*")) == before
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["build", "corpus", "--out", "notes.txt", "--overwrite"]) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "notes.txt").read_text() == "mine"
    assert main(["build", "corpus", "--out", "kb"]) == 0
    assert main(["build", "corpus", "--out", "kb"]) == 2  # a finished index: say how to add instead
    assert "retrieval add" in capsys.readouterr().err
    (tmp_path / "kb" / "README.txt").write_text("my notes about this index")
    assert main(["build", "corpus/sub", "--out", "kb", "--overwrite"]) == 0
    assert (tmp_path / "kb" / "README.txt").read_text() == "my notes about this index"
    assert Retriever.open("kb", embedder=embedder).info()["counts"]["files"] == 1
    with pytest.raises(RetrievalError, match="not a Keel index"):
        Retriever.create(corpus, overwrite=True, embedder=embedder)
    assert (corpus / "a.md").read_text() == A


# ---- kind 6: no chunk exceeds the embedding model's window once special tokens are added
TRICKY = "the keel of a boat holds it upright naïve café Straße über 東京 résumé co-operate e.g. 3.14159 " \
         "URL: https://example.com/a_b?c=d".split()


def _tricky_text(n=12000, seed=0):
    rng = __import__("random").Random(seed)
    return " ".join(rng.choice(TRICKY) for _ in range(n))


@pytest.mark.parametrize("window", [256, 64])
def test_chunks_fit_the_model_window_including_special_tokens(tmp_path, embedder, window, monkeypatch):
    monkeypatch.setattr(embedder.model, "max_seq_length", window)
    f = tmp_path / "tricky.txt"
    f.write_text(_tricky_text())
    kb = Retriever.create(tmp_path / "kb", chunk_tokens=window - 2, overlap=16, embedder=embedder)
    kb.add([f])
    rows = _chunks_of(tmp_path / "kb")
    text = f.read_text()
    lengths = [len(embedder.tokenizer(text[s:e])["input_ids"]) for _, s, e in rows]
    assert max(lengths) <= window and max(lengths) >= window - 8
    assert all(b[1] < a[2] for a, b in zip(rows, rows[1:])), "shortened windows leave no text out"
    assert rows[-1][2] == len(text.rstrip())
    with pytest.raises(RetrievalError, match=f"window of {window} tokens.*2 special tokens.*at most {window - 2}"):
        Retriever.create(tmp_path / "kb2", chunk_tokens=window - 1, overlap=16, embedder=embedder)


def test_cli_refuses_chunk_tokens_that_cannot_fit(tmp_path, corpus, capsys):
    assert main(["build", str(corpus), "--out", str(tmp_path / "kb"), "--chunk-tokens", "255"]) == 2
    err = capsys.readouterr().err
    assert "--chunk-tokens" in err and "256 tokens" in err and "at most 254" in err
