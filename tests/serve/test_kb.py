"""Documents from the chat: the Knowledge base panel's handlers (upload, list, remove), driven as
Gradio calls them, over a small real index (all-MiniLM-L6-v2) standing in for the shipped default."""
from __future__ import annotations

import hashlib
import threading
import time
import types

import gradio as gr
import pytest

from agents.tools import ToolRegistry, search_tool
from serve.app import build_app
from serve.chat import ChatModel, ChatSettings
from serve.kb import AppKnowledgeBase, UploadLimits
from tests.agents.test_agent import ScriptedLLM

FACT = "The Quillfeather relay on deck nine resets every 47 minutes, logged by engineer Ottoline Marsh."
QUESTION = "How often does the Quillfeather relay reset?"


@pytest.fixture(scope="module")
def embedder():
    from retrieval.embeddings import Embedder

    return Embedder()


@pytest.fixture
def base(tmp_path, embedder):
    """A shipped knowledge base: two Markdown files, built once; the app must never write to it."""
    from retrieval import Retriever

    docs = tmp_path / "shipped-docs"
    docs.mkdir()
    (docs / "loops.md").write_text("# Loops\n\nA for loop iterates over the items of a sequence in order. "
                                   "The while loop repeats while its condition is true.\n", encoding="utf-8")
    (docs / "garden.md").write_text("# Tomatoes\n\nTomatoes need six hours of sun and deep watering twice a "
                                    "week.\n", encoding="utf-8")
    folder = tmp_path / "shipped-kb"
    kb = Retriever.create(folder, embedder=embedder)
    kb.add([docs])
    kb.close()
    return folder


def digests(folder):
    """The index's files (SQLite's -wal/-shm appear whenever a reader opens it in WAL mode; not content)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


class SlowEmbedder:
    """The writer's embedding model, held at ``encode`` until the test releases it."""

    def __init__(self, inner):
        self.inner, self.started, self.release = inner, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, texts, progress=False):
        self.started.set()
        assert self.release.wait(60), "the test never released the writer"
        return self.inner.encode(texts, progress)


class App:
    """The app with a Knowledge base panel; handlers are called with the inputs their events are wired to."""

    def __init__(self, tiny_model_dir, tmp_path, base, embedder, steps=(), limits=None, writer=None,
                 auth_required=False, username=None, kb_dir="app-kb"):
        from retrieval import Retriever

        self.kb = AppKnowledgeBase(tmp_path / kb_dir, Retriever.open(base, embedder=embedder), base, "shipped",
                                   limits=limits, writer_embedder=lambda _m: writer or embedder)
        self.llm = ScriptedLLM(list(steps))
        self.chat = ChatModel(str(tiny_model_dir), ChatSettings(), llm=self.llm,
                              tools=ToolRegistry([search_tool(self.kb)]))
        self.demo = build_app(self.chat, None, kb=self.kb, auth_required=auth_required)
        self.fns = {f.fn.__name__: f for f in self.demo.fns.values() if f.fn is not None}
        self.request = types.SimpleNamespace(session_hash="s1", username=username)
        self.upload_dir = tmp_path / "gradio-received"

    def receive(self, name: str, data: bytes | str) -> str:
        """What Gradio hands the handler: the path of its copy of the uploaded file, under the file's name."""
        folder = self.upload_dir / hashlib.sha256(f"{name}{time.time_ns()}".encode()).hexdigest()[:12]
        folder.mkdir(parents=True)
        path = folder / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(path)

    def upload(self, *files: tuple[str, bytes | str], statuses: list | None = None) -> tuple[list[str], object]:
        """Run the upload handler to the end: every status line it streamed (also appended to
        ``statuses`` as they come), and its final list."""
        statuses, table = [] if statuses is None else statuses, None
        for status, tbl, _pick, _file in self.fns["kb_upload"].fn([self.receive(n, d) for n, d in files],
                                                                  self.request):
            statuses.append(status)
            if isinstance(tbl, list):
                table = tbl
        return statuses, table

    def listed(self) -> dict[str, list]:
        table, _ = self.fns["kb_refresh"].fn()
        return {row[0]: row for row in table}

    def remove(self, name: str) -> str:
        key = next(r["file"] for r in self.kb.documents() if r["name"] == name)
        status, _table, _pick = self.fns["kb_remove"].fn(key, self.request)
        return status

    def ask(self, question: str) -> list[dict]:
        history = [{"role": "user", "content": [{"type": "text", "text": question}]}]
        served = {"turns": {}, "pending_regenerate": None}
        out = None
        for chat_out, _served, _status in self.fns["answer"].fn(history, "", served, self.request):
            out = chat_out
        return out["value"] if isinstance(out, dict) else out


SEARCH_STEPS = [f' I should look it up.\nAction: search\nAction Input: {{"query": "{QUESTION}"}}',
                " I found it.\nFinal Answer: Every 47 minutes."]


def test_upload_adds_the_document_the_search_tool_finds_it_and_the_shipped_kb_is_untouched(
        tiny_model_dir, tmp_path, base, embedder):
    before = digests(base)
    app = App(tiny_model_dir, tmp_path, base, embedder, steps=SEARCH_STEPS)
    assert set(app.listed()) == {str(base.parent / "shipped-docs" / "garden.md"),
                                 str(base.parent / "shipped-docs" / "loops.md")}
    statuses, table = app.upload(("relay notes.md", f"# Relay\n\n{FACT}\n"))
    assert "1 added" in statuses[-1] and "relay notes.md: added" in statuses[-1], statuses
    listed = app.listed()
    assert listed["relay notes.md"][1] == "uploaded" and listed["relay notes.md"][3] >= 1  # chunk count
    assert len(listed) == 3 and table is not None and len(table) == 3
    assert sum(row[3] for row in listed.values()) == app.kb.current.info()["counts"]["chunks"]
    # The agent's search tool sees it at once: no restart, and the chat shows the uploaded file as the source.
    hit = app.kb.search(QUESTION, k=1)[0]
    assert hit.source == "uploads/relay notes.md" and "47 minutes" in hit.text  # no server path shown
    shown = app.ask(QUESTION)
    observation = next(m["content"] for m in shown if "Observation" in str(m.get("content")))
    assert "(uploads/relay notes.md § Relay)" in observation and "Quillfeather" in observation
    assert str(app.kb.dir) not in observation  # the server path of the upload is not shown
    assert "relay notes.md" in shown[-1]["content"]  # the answer's sources name the file
    # The shipped index is byte-for-byte the same; the app wrote its own copy.
    assert digests(base) == before
    assert app.kb.copied and (app.kb.index_dir / "manifest.json").is_file()
    assert (app.kb.uploads / "relay notes.md").read_text(encoding="utf-8").startswith("# Relay")
    # A later start opens the app's copy, upload included.
    from retrieval import Retriever

    again = AppKnowledgeBase(tmp_path / "app-kb", Retriever.open(base, embedder=embedder), base, "shipped")
    assert again.search(QUESTION, k=1)[0].source.endswith("relay notes.md")
    with pytest.raises(Exception, match="copy of the knowledge base 'shipped'"):
        AppKnowledgeBase(tmp_path / "app-kb", Retriever.open(base, embedder=embedder), base, "another-index")


def test_uploading_the_same_document_again_reports_a_duplicate(tiny_model_dir, tmp_path, base, embedder):
    app = App(tiny_model_dir, tmp_path, base, embedder, kb_dir="runs/not-made-yet/kb")
    app.upload(("relay.md", FACT))
    chunks = app.kb.current.info()["counts"]["chunks"]
    statuses, _ = app.upload(("relay.md", FACT))
    assert "relay.md: duplicate" in statuses[-1] and "Nothing new was added" in statuses[-1], statuses
    statuses, _ = app.upload(("copy of relay.md", FACT))
    assert "copy of relay.md: duplicate of relay.md" in statuses[-1], statuses
    assert app.kb.current.info()["counts"]["chunks"] == chunks and set(app.listed()) >= {"relay.md"}
    assert not (app.kb.uploads / "copy of relay.md").exists()
    # A PDF through retrieval's PDF loader; a name with folders lands in uploads/ under its last part only.
    from tests.retrieval.conftest import make_pdf

    received = tmp_path / "received.pdf"
    received.write_bytes(make_pdf(["The Brindlewick pump holds 380 litres."]))
    result = app.kb.upload([("../../manual.pdf", received)])  # the name as an API client might send it
    assert "manual.pdf: added" in result.message(), result.message()
    assert (app.kb.uploads / "manual.pdf").is_file() and not (tmp_path / "manual.pdf").exists()
    hit = app.kb.search("How many litres does the Brindlewick pump hold?", k=1)[0]
    assert hit.source == "uploads/manual.pdf" and hit.heading == "page 1"
    # The same name with new content replaces the old version (as `retrieval add` does for a changed file).
    statuses, _ = app.upload(("relay.md", "The Quillfeather relay now resets every 12 minutes."))
    assert "relay.md: replaced the earlier version" in statuses[-1], statuses
    assert "12 minutes" in app.kb.search(QUESTION, k=1)[0].text


def test_wrong_type_too_large_and_too_many_are_refused_with_the_file_and_the_limit(
        tiny_model_dir, tmp_path, base, embedder):
    app = App(tiny_model_dir, tmp_path, base, embedder, limits=UploadLimits(max_mb=0.001, max_files=2))
    statuses, _ = app.upload(("report.docx", b"PK\x03\x04 not indexed"))
    assert "report.docx" in statuses[-1] and "'.docx' is not accepted" in statuses[-1] and ".pdf" in statuses[-1]
    statuses, _ = app.upload(("small.md", "fine"), ("big.md", "x" * 5_000))
    assert "big.md" in statuses[-1] and "limit of 0.001 MB" in statuses[-1], statuses
    statuses, _ = app.upload(("a.md", "a"), ("b.md", "b"), ("c.md", "c"))
    assert "3 files at once is over the limit of 2" in statuses[-1]
    statuses, _ = app.upload(("empty.txt", b""))
    assert "empty.txt: the file is empty" in statuses[-1]
    # Refused before anything was written: no copy, no stored file, nothing new listed.
    assert not app.kb.copied and not app.kb.uploads.exists() and len(app.listed()) == 2
    # A file of an accepted type that cannot be read is taken out again, with retrieval's own error.
    app.kb.limits.max_mb = 20
    statuses, _ = app.upload(("rows.jsonl", '{"text": "fine"}\n{not json\n'), ("ok.md", FACT))
    assert "rows.jsonl: not added" in statuses[-1] and "line 2" in statuses[-1], statuses
    assert "ok.md: added, 1 chunk" in statuses[-1] and "1 chunks" not in statuses[-1], statuses
    assert not (app.kb.uploads / "rows.jsonl").exists() and set(app.listed()) >= {"ok.md"}
    assert "rows.jsonl" not in app.listed()
    statuses, _ = app.upload(("binary.txt", bytes(range(256)) * 8))
    assert "binary.txt: not added" in statuses[-1] and not (app.kb.uploads / "binary.txt").exists()
    assert statuses[-1].count("binary.txt") == 1, statuses  # the file is named once


def test_remove_takes_out_an_upload_and_a_shipped_document_only_from_the_apps_copy(
        tiny_model_dir, tmp_path, base, embedder):
    before = digests(base)
    app = App(tiny_model_dir, tmp_path, base, embedder)
    app.upload(("relay.md", FACT))
    status = app.remove("relay.md")
    assert status.startswith("Removed relay.md") and "relay.md" not in app.listed()
    assert not (app.kb.uploads / "relay.md").exists()
    assert all(not h.source.endswith("relay.md") for h in app.kb.search(QUESTION, k=5))
    garden = str(base.parent / "shipped-docs" / "garden.md")
    status = app.remove(garden)
    assert "from this app's copy" in status and garden not in app.listed()
    assert all("garden" not in h.source for h in app.kb.search("how much sun do tomatoes need", k=5))
    assert digests(base) == before
    from retrieval import Retriever

    shipped = Retriever.open(base, embedder=embedder)
    assert shipped.search("how much sun do tomatoes need", k=1)[0].source == garden  # still in the shipped KB
    status, _, _ = app.fns["kb_remove"].fn("/", app.request)  # only listed keys, never a folder prefix
    assert "not in the knowledge base" in status and len(app.listed()) == 1


def test_an_upload_runs_in_its_own_queue_and_chats_are_answered_while_it_embeds(
        tiny_model_dir, tmp_path, base, embedder):
    writer = SlowEmbedder(embedder)
    app = App(tiny_model_dir, tmp_path, base, embedder, writer=writer,
              steps=[' Look.\nAction: search\nAction Input: {"query": "for loop"}', " ok\nFinal Answer: In order."])
    upload_fn = app.fns["kb_upload"]
    assert upload_fn.concurrency_id == "kb-write" and upload_fn.concurrency_id != app.fns["answer"].concurrency_id
    statuses: list = []
    worker = threading.Thread(target=lambda: app.upload(("relay.md", FACT), statuses=statuses))
    worker.start()
    try:
        assert writer.started.wait(60), "the upload never started embedding"
        deadline = time.monotonic() + 30
        while not statuses and time.monotonic() < deadline:
            time.sleep(0.05)
        assert statuses and statuses[0].startswith("⏳ Embedding relay.md (1 of 1)"), statuses  # progress shown
        t0 = time.monotonic()
        shown = app.ask("How does a for loop iterate?")  # another user's chat, searching, mid-upload
        took = time.monotonic() - t0
        assert "In order." in shown[-1]["content"] and "loops.md" in shown[-1]["content"]
        assert took < 20 and worker.is_alive(), took  # answered while the upload was still embedding
        assert "relay.md" not in app.listed()  # not visible until committed
    finally:
        writer.release.set()
        worker.join(60)
    assert "relay.md: added" in statuses[-1] and "relay.md" in app.kb.search(QUESTION, k=1)[0].source


def test_writes_need_a_signed_in_user_when_the_app_has_a_login(tiny_model_dir, tmp_path, base, embedder):
    app = App(tiny_model_dir, tmp_path, base, embedder, auth_required=True, username=None)
    statuses, _ = app.upload(("relay.md", FACT))
    assert statuses == ["Sign in to add documents."] and not app.kb.copied
    status, _, _ = app.fns["kb_remove"].fn(str(base.parent / "shipped-docs" / "garden.md"), app.request)
    assert status == "Sign in to remove documents." and len(app.listed()) == 2
    app.request.username = "ana"
    statuses, _ = app.upload(("relay.md", FACT))
    assert "relay.md: added" in statuses[-1]


def test_serve_config_knows_the_upload_fields(tmp_path):
    from align.errors import KeelError
    from serve.cli import serve_config

    cfg = serve_config(["--kb-dir", str(tmp_path / "kb"), "--upload-max-mb", "5"])
    assert cfg.kb_dir == str(tmp_path / "kb") and cfg.upload_max_mb == 5 and ".pdf" in cfg.upload_types
    bad = tmp_path / "serve.yaml"
    bad.write_text("upload_types: [.md, .docx]\n")
    with pytest.raises(KeelError, match="docx"):
        serve_config(["--config", str(bad)])
    with pytest.raises((KeelError, SystemExit)):
        serve_config(["--upload-max-mb", "0"])


@pytest.mark.integration
def test_a_chat_is_answered_through_the_live_queue_while_an_upload_embeds(tiny_model_dir, tmp_path, base, embedder):
    """The running server, with one generation at a time (the default): an upload held mid-embedding
    does not hold the chat's queue, because it runs in its own group."""
    from gradio_client import Client, handle_file

    writer = SlowEmbedder(embedder)
    app = App(tiny_model_dir, tmp_path, base, embedder, writer=writer,
              steps=[' Look.\nAction: search\nAction Input: {"query": "for loop"}', " ok\nFinal Answer: In order."])
    app.demo.queue(default_concurrency_limit=1).launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        client = Client(app.demo.local_url, verbose=False)
        doc = tmp_path / "relay.md"
        doc.write_text(FACT, encoding="utf-8")
        job = client.submit([handle_file(str(doc))], api_name="/kb_upload")
        assert writer.started.wait(60), "the upload never started embedding"
        history = [{"role": "user", "content": [{"type": "text", "text": "How does a for loop iterate?"}]}]
        t0 = time.monotonic()
        out = client.predict(history, "", api_name="/answer")
        took = time.monotonic() - t0
        assert not job.done() and took < 30, took  # answered while the upload still embeds
        assert "In order." in str(out[0])
        writer.release.set()
        status = job.result(timeout=60)[0]
        assert "relay.md: added" in status
    finally:
        writer.release.set()
        app.demo.close()


@pytest.mark.integration
def test_gradio_refuses_a_file_over_the_upload_limit_before_the_handler_sees_it(tiny_model_dir, tmp_path, base,
                                                                               embedder, monkeypatch):
    """The app launched as `python -m serve` launches it (serve.cli.launch_options): Gradio's own
    max_file_size is Keel's --upload-max-mb, so an oversized file is refused while it streams in
    (HTTP 413) and never lands in Gradio's upload folder; a file under the limit is received."""
    import httpx

    from serve.cli import launch_options, serve_config

    cfg = serve_config(["--upload-max-mb", "0.001"])  # 1,048 bytes (MB of 2**20 bytes)
    assert launch_options(cfg)["max_file_size"] == 1048
    received_dir = tmp_path / "gradio-uploads"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(received_dir))  # where Gradio writes what it receives
    app = App(tiny_model_dir, tmp_path, base, embedder)
    opts = {**launch_options(cfg), "server_port": None, "prevent_thread_lock": True, "quiet": True}
    app.demo.queue(default_concurrency_limit=1).launch(**opts)
    try:
        url = app.demo.local_url.rstrip("/") + "/gradio_api/upload"
        big = b"relay log line\n" * 200  # 3,000 bytes
        r = httpx.post(url, files={"files": ("big.md", big, "text/markdown")}, timeout=30)
        assert r.status_code == 413, (r.status_code, r.text)
        assert "maximum allowed size of 1048 bytes" in r.text
        small = b"The relay resets every 47 minutes.\n"
        r = httpx.post(url, files={"files": ("small.md", small, "text/markdown")}, timeout=30)
        assert r.status_code == 200, r.text
        received = r.json()[0]
        assert received.startswith(str(received_dir))
        stored = {p.name: p.read_bytes() for p in received_dir.rglob("*") if p.is_file()}
        assert stored == {"small.md": small}  # the refused file was never written there
    finally:
        app.demo.close()
