import pytest

from retrieval.chunking import chunk_document
from retrieval.errors import RetrievalError
from retrieval.loaders import expand_paths, load_file
from tests.retrieval.conftest import make_pdf

LONG_MD = "# Guide\n\nIntro text about keels.\n\n## Sailing\n\n" + " ".join(
    f"Sentence {i} explains how a keel keeps the boat upright in wind." for i in range(120)) + "\n\n## Storage\n\nKeep it dry.\n"


def test_chunks_map_back_to_source_text_with_overlap(tmp_path, embedder):
    f = tmp_path / "guide.md"
    f.write_text(LONG_MD)
    doc = load_file(f)[0]
    assert doc.title == "Guide" and doc.text == f.read_text()
    chunks = chunk_document(doc, embedder.tokenizer, chunk_tokens=64, overlap=16)
    assert len(chunks) > 5
    for c in chunks:
        assert c.text == LONG_MD[c.start:c.end]
        assert len(embedder.tokenizer(c.text, add_special_tokens=False)["input_ids"]) <= 64
    assert all(b.start < a.end for a, b in zip(chunks, chunks[1:])), "consecutive chunks overlap"
    assert chunks[0].heading == "Guide" and chunks[3].heading == "Sailing" and chunks[-1].heading in ("Sailing", "Storage")
    assert chunks[-1].end == len(LONG_MD.rstrip())


def test_html_pdf_jsonl_and_txt_loaders(tmp_path):
    (tmp_path / "p.html").write_text("<html><head><title>Page T</title><script>var x=1;</script></head>"
                                     "<body><h1>Top</h1><p>Alpha &amp; beta.</p><h2>Sub</h2><p>Gamma</p></body></html>")
    doc = load_file(tmp_path / "p.html")[0]
    assert doc.title == "Page T" and "var x" not in doc.text and "Alpha & beta." in doc.text
    assert [h for _, h in doc.headings] == ["Top", "Sub"] and doc.heading_at(doc.text.index("Gamma")) == "Sub"
    (tmp_path / "d.pdf").write_bytes(make_pdf(["Hello from page one", "Second page text"]))
    pdf = load_file(tmp_path / "d.pdf")[0]
    assert "Hello from page one" in pdf.text and pdf.heading_at(pdf.text.index("Second")) == "page 2"
    (tmp_path / "rows.jsonl").write_text('{"id": "a", "text": "first", "title": "A"}\n{"text": "second"}\n')
    rows = load_file(tmp_path / "rows.jsonl")
    assert [d.source.rsplit("#", 1)[1] for d in rows] == ["a", "2"] and rows[0].title == "A"
    (tmp_path / "bad.jsonl").write_text('{"text": 1}\n')
    with pytest.raises(RetrievalError, match="bad.jsonl line 1"):
        load_file(tmp_path / "bad.jsonl")
    (tmp_path / "x.docx").write_text("?")
    with pytest.raises(RetrievalError, match="unsupported file type"):
        load_file(tmp_path / "x.docx")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    with pytest.raises(RetrievalError, match="broken.pdf: cannot read PDF"):
        load_file(tmp_path / "broken.pdf")
    assert {p.name for p in expand_paths([tmp_path])} == {"p.html", "d.pdf", "rows.jsonl", "bad.jsonl", "broken.pdf"}
    with pytest.raises(RetrievalError, match="not found"):
        expand_paths([tmp_path / "nope"])
