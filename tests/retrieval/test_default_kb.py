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
