import pytest

from retrieval.default_kb import PYTHON_DOCS_KEY, open_default_index


@pytest.mark.integration
def test_default_knowledge_base_builds_and_answers_python_and_keel_questions(tmp_path):
    kb = open_default_index(progress=False, folder=tmp_path / "kb")
    counts = kb.info()["counts"]
    assert counts["documents"] >= 79 and counts["chunks"] > 500
    assert kb.search("How does a with statement call __exit__?", k=3)[0].source in (
        "python-docs:with", "python-docs:context-managers")
    assert kb.search("resume a training run from its last checkpoint", k=5)[0].source.startswith("keel-docs:")
    kb.close()
    again = open_default_index(progress=False, folder=tmp_path / "kb")  # opens, does not rebuild
    assert again.info()["counts"] == counts and PYTHON_DOCS_KEY in again.store.file_hashes()


@pytest.mark.integration
def test_processes_opening_the_default_index_at_once_do_not_corrupt_it(tmp_path, monkeypatch):
    """Two apps (or an app and a benchmark) start together after Keel's docs changed: one writes,
    the other waits and opens what it wrote (a file lock); the index stays consistent."""
    from concurrent.futures import ThreadPoolExecutor

    import retrieval.default_kb as default_kb
    from retrieval.loaders import Document
    from retrieval.retriever import Retriever

    python_docs = [Document(f"python-docs:t{i}", f"Topic {i}", f"Topic {i} text about loops number {i}. " * 20,
                            [(0, f"Topic {i}")]) for i in range(3)]
    keel_docs = [Document(f"keel-docs:d{i}", f"Doc {i}", f"Keel doc {i} on checkpoints. " * 30, [(0, f"Doc {i}")])
                 for i in range(2)]
    monkeypatch.setattr(default_kb, "python_topic_documents", lambda: python_docs)
    monkeypatch.setattr(default_kb, "keel_documents", lambda: keel_docs)
    folder = tmp_path / "kb"
    with ThreadPoolExecutor(3) as pool:
        kbs = list(pool.map(lambda _: default_kb.open_default_index(progress=False, folder=folder), range(3)))
    for kb in kbs:
        kb.close()
    keel_docs[0] = Document("keel-docs:d0", "Doc 0", "Changed text about resuming runs. " * 30, [(0, "Doc 0")])
    with ThreadPoolExecutor(3) as pool:
        kbs = list(pool.map(lambda _: default_kb.open_default_index(progress=False, folder=folder), range(3)))
    for kb in kbs:
        kb.close()
    again = Retriever.open(folder)  # raises if index and docstore disagree
    assert again.info()["counts"]["documents"] == 5
    again.close()


def test_a_default_knowledge_base_from_an_older_keel_is_built_again_with_a_message(tmp_path, monkeypatch, capfd):
    """A cached default knowledge base whose chunks were embedded without their title line (no
    passage_format in its manifest) is made again on open, saying so, and then opened as is."""
    import json

    import retrieval.default_kb as default_kb
    from retrieval.loaders import Document

    python_docs = [Document(f"python-docs:t{i}", f"Topic {i}", f"Topic {i} text about loops number {i}. " * 20,
                            [(0, f"Topic {i}")]) for i in range(2)]
    monkeypatch.setattr(default_kb, "python_topic_documents", lambda: python_docs)
    monkeypatch.setattr(default_kb, "keel_documents", lambda: [])
    folder = tmp_path / "kb"
    default_kb.open_default_index(progress=False, folder=folder).close()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["passage_format"] == "title"
    del manifest["passage_format"]  # what a Keel before the title line wrote
    (folder / "manifest.json").write_text(json.dumps(manifest))
    capfd.readouterr()
    kb = default_kb.open_default_index(progress=False, folder=folder)
    assert "embedded without titles" in capfd.readouterr().err
    assert kb.manifest["passage_format"] == "title" and kb.info()["counts"]["documents"] == 2
    kb.close()
    default_kb.open_default_index(progress=False, folder=folder).close()
    assert "embedded without titles" not in capfd.readouterr().err
