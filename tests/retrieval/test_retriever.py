import json
import types

import numpy as np
import pytest

from retrieval.chunking import passage_text
from retrieval.cli import main
from retrieval.errors import RetrievalError
from retrieval.evaluate import evaluate
from retrieval.index import VectorIndex
from retrieval.retriever import Retriever, mmr

DOCS = {
    "boats.md": "# Boats\n\nA keel is the structural backbone along the bottom of a ship's hull.",
    "cooking.md": "# Cooking\n\nTo bake bread, knead flour, water, yeast and salt, then let the dough rise.",
    "space.txt": "The Moon orbits the Earth about once every 27 days, always showing the same face.",
}


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    for name, text in DOCS.items():
        (d / name).write_text(text)
    return d


def test_build_search_and_round_trip(tmp_path, corpus, embedder):
    kb = Retriever.create(tmp_path / "idx", embedder=embedder)
    rep = kb.add([corpus])
    assert (rep.added, rep.chunks) == (3, 3)
    hit = kb.search("how do I make bread dough?", k=1)[0]
    assert hit.source.endswith("cooking.md") and hit.heading == "Cooking" and 0 < hit.score <= 1
    assert hit.text == DOCS["cooking.md"][hit.start:hit.end]
    before = [(h.id, round(h.score, 5)) for h in kb.search("lunar orbit", k=3)]
    kb.close()
    again = Retriever.open(tmp_path / "idx", embedding_model="all-MiniLM-L6-v2", embedder=embedder)
    assert [(h.id, round(h.score, 5)) for h in again.search("lunar orbit", k=3)] == before
    batch = again.search_batch(["lunar orbit", "ship hull"], k=1)
    assert batch[0][0].source.endswith("space.txt") and batch[1][0].source.endswith("boats.md")
    assert again.search("lunar orbit", k=3, min_score=0.99) == []
    assert set(again.info()["counts"].items()) >= {("files", 3), ("chunks", 3), ("index_vectors", 3)}


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_add_changed_file_replaces_and_remove_deletes(tmp_path, corpus, embedder, index_type):
    kb = Retriever.create(tmp_path / "idx", index_type=index_type, embedder=embedder)
    kb.add([corpus])
    assert kb.add([corpus]).unchanged == 3
    (corpus / "space.txt").write_text("Mars has two small moons named Phobos and Deimos.")
    rep = kb.add([corpus / "space.txt"])
    assert (rep.replaced, rep.added) == (1, 0)
    hits = kb.search("moons of Mars", k=3)
    assert hits[0].text.startswith("Mars") and not any("27 days" in h.text for h in hits)
    assert kb.remove([corpus / "cooking.md"]) == 1
    assert not any(h.source.endswith("cooking.md") for h in kb.search("bread dough", k=5))
    reopened = Retriever.open(tmp_path / "idx", embedder=embedder)
    assert reopened.info()["counts"]["chunks"] == 2
    if index_type == "hnsw":  # HNSW cannot delete: tombstones until rebuild
        assert reopened.manifest["counts"]["tombstones"] == 2
        reopened.rebuild()
        assert reopened.manifest["counts"]["tombstones"] == 0 and reopened.index.ntotal == 2
    assert len(reopened.search("anything", k=5)) == 2


def test_damaged_or_mismatched_index_gives_clear_errors(tmp_path, corpus, embedder):
    kb = Retriever.create(tmp_path / "idx", embedder=embedder)
    kb.add([corpus])
    kb.close()
    idx = tmp_path / "idx"
    with pytest.raises(RetrievalError, match="built with embedding model 'all-MiniLM-L6-v2', not 'other-model'"):
        Retriever.open(idx, embedding_model="other-model", embedder=embedder)
    good = (idx / "index.faiss").read_bytes()
    (idx / "index.faiss").write_bytes(good[:50])
    with pytest.raises(RetrievalError, match="index.faiss is damaged"):
        Retriever.open(idx, embedder=embedder)
    (idx / "index.faiss").write_bytes(good)
    manifest = json.loads((idx / "manifest.json").read_text())
    (idx / "manifest.json").write_text("{not json")
    with pytest.raises(RetrievalError, match="manifest.json is damaged"):
        Retriever.open(idx, embedder=embedder)
    (idx / "manifest.json").write_text(json.dumps(manifest))
    # The index and docstore out of step (e.g. a crash between their writes): say how to fix it.
    kb = Retriever.open(idx, embedder=embedder)
    kb.index.remove([1])
    kb.index.save(idx / "index.faiss")
    kb.close()
    with pytest.raises(RetrievalError, match="rebuild"):
        Retriever.open(idx, embedder=embedder)
    (idx / "docstore.sqlite").write_bytes(b"garbage" * 100)
    for f in idx.glob("docstore.sqlite-*"):
        f.unlink()
    with pytest.raises(RetrievalError, match="docstore.sqlite is damaged"):
        Retriever.open(idx, embedder=embedder)
    with pytest.raises(RetrievalError, match="does not exist"):
        Retriever.open(tmp_path / "missing", embedder=embedder)
    with pytest.raises(RetrievalError, match="not empty"):
        Retriever.create(idx, embedder=embedder)


def _clustered(n, dim=64, centers=200, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, dim))
    x = c[rng.integers(0, centers, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")


@pytest.mark.parametrize("kind,min_recall", [("ivf-flat", 0.95), ("hnsw", 0.85), ("ivf-pq", 0.5)])
def test_approximate_indexes_agree_with_exact(kind, min_recall):
    x, q = _clustered(20_000), _clustered(100, seed=1)
    ids = np.arange(100, 100 + len(x))
    exact = VectorIndex.create("flat", 64, x)
    exact.add(ids, x)
    approx = VectorIndex.create(kind, 64, x)
    approx.add(ids, x)
    _, truth = exact.search(q, 10)
    _, got = approx.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got)])
    assert recall >= min_recall, recall
    brute = np.argsort(-(q @ x.T), axis=1)[:, :10] + 100
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, brute)]) > 0.99


def test_mmr_prefers_novel_candidates():
    q = np.array([1.0, 0.0])
    cands = np.array([[1.0, 0.0], [0.99, 0.14], [0.7, 0.71]])
    assert mmr(q, cands, 2, lambda_=1.0) == [0, 1]
    assert mmr(q, cands, 2, lambda_=0.3) == [0, 2]


def test_eval_and_cli(tmp_path, corpus, capsys):
    assert main(["build", str(corpus), "--out", str(tmp_path / "idx")]) == 0
    queries = tmp_path / "q.jsonl"
    queries.write_text("\n".join(json.dumps(r) for r in [
        {"query": "bread dough yeast", "relevant": ["cooking.md"]},
        {"query": "ship hull backbone", "relevant": ["boats.md"]},
        {"query": "how often does the moon orbit", "relevant": ["space.txt"]}]))
    kb = Retriever.open(tmp_path / "idx")
    report = evaluate(kb, [json.loads(l) for l in queries.read_text().splitlines()], k=2)
    assert report["recall@2"] == 1.0 and report["mrr"] == 1.0
    assert main(["eval", str(tmp_path / "idx"), str(queries), "-k", "2", "--out", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["mrr"] == 1.0
    assert main(["search", str(tmp_path / "idx"), "yeast", "--json", "-k", "1"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("["):])[0]["source"].endswith("cooking.md")
    assert main(["search", str(tmp_path / "nope"), "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["rebuild", str(tmp_path / "idx"), "--index-type", "hnsw", "--index-param", "ef_search=16"]) == 0
    assert Retriever.open(tmp_path / "idx").manifest["index_params"]["ef_search"] == 16
    assert main(["rebuild", str(tmp_path / "idx"), "--index-param", "bogus=1"]) == 2
    assert "bogus=1" in capsys.readouterr().err


def test_ivf_pq_search_reranks_with_exact_scores(tmp_path, embedder):
    docs = tmp_path / "many.jsonl"
    docs.write_text("\n".join(json.dumps({"id": i, "text": f"Note {i}: topic {i % 7} about item {i * 13 % 101}."})
                              for i in range(300)))
    kb = Retriever.create(tmp_path / "idx", index_type="ivf-pq", index_params={"nlist": 4, "m": 8}, embedder=embedder)
    kb.add([docs])
    hits = kb.search("topic 3 about item 42", k=5, mode="dense")  # the dense path: exact cosine scores
    exact = embedder.encode([passage_text(h) for h in hits]) @ embedder.encode(["topic 3 about item 42"])[0]
    assert np.allclose([h.score for h in hits], exact, atol=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_chunks_are_embedded_after_their_title_and_heading_line(tmp_path, embedder):
    """New indexes embed "title - heading" then the chunk's text (manifest passage_format "title");
    an index written before that (no passage_format) goes on embedding the text alone, so its
    vectors stay comparable."""
    import sqlite3

    doc = tmp_path / "care.md"
    doc.write_text("# Tomato care\n\n## Watering\n\nTwo litres every morning; less when it has rained.\n")
    kb = Retriever.create(tmp_path / "idx", embedder=embedder)
    kb.add([doc])
    assert kb.manifest["passage_format"] == "title"
    (chunk,) = kb.store.get([1]).values()
    # the heading here is the title itself, so the line is the title alone
    assert passage_text(types.SimpleNamespace(**chunk)) == "Tomato care\n" + chunk["text"]
    part = types.SimpleNamespace(title="Garden notes", heading="Watering", text="Two litres.")
    assert passage_text(part) == "Garden notes - Watering\nTwo litres." and passage_text(part, "text") == "Two litres."
    stored = kb.store.vectors([1], kb.manifest["dim"])[0]
    assert np.allclose(stored, embedder.encode([passage_text(types.SimpleNamespace(**chunk))])[0], atol=1e-5)
    assert not np.allclose(stored, embedder.encode([chunk["text"]])[0], atol=1e-3)
    kb.close()
    # an older index: its manifest has no passage_format; what is added to it is embedded as before
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    del manifest["passage_format"]
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    more = tmp_path / "more.md"
    more.write_text("# Basil\n\n## Sun\n\nSix hours of sun a day.\n")
    old = Retriever.open(tmp_path / "idx", embedder=embedder)
    old.add([more])
    new_id = max(old.store.get(list(range(1, 10))))
    text = old.store.get([new_id])[new_id]["text"]
    assert np.allclose(old.store.vectors([new_id], old.manifest["dim"])[0], embedder.encode([text])[0], atol=1e-5)
    manifest["passage_format"] = "summary"
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RetrievalError, match="passage_format"):
        Retriever.open(tmp_path / "idx", embedder=embedder)


def test_opening_a_folder_that_holds_an_index_one_level_down_names_it(tmp_path):
    (tmp_path / "kb" / "index").mkdir(parents=True)
    (tmp_path / "kb" / "index" / "manifest.json").write_text("{}")
    with pytest.raises(RetrievalError, match=r"no manifest.json; did you mean .*kb/index\?"):
        Retriever.open(tmp_path / "kb")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RetrievalError) as e:
        Retriever.open(tmp_path / "empty")
    assert "did you mean" not in str(e.value)
