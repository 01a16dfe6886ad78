"""End to end in a real browser: Debian's chromium driven by Playwright, headless.

The model is scripted (a calculator call, then an answer streamed a few characters at a time)
so that the test checks the app, not what a random tiny model happens to write. Skipped where
chromium or Playwright is missing, unless KEEL_REQUIRE_BROWSER=1 (set by .ci/run), which turns
the skip into a failure.
"""
import os
import re
import shutil
import time

import pytest

from agents.tools import ToolRegistry, calculator_tool
from serve.app import build_app
from serve.chat import ChatModel, ChatSettings
from serve.feedback import FeedbackStore, export_feedback
from tests.agents.test_agent import ScriptedLLM

CHROMIUM = os.environ.get("KEEL_CHROMIUM", "/usr/bin/chromium")
REQUIRED = os.environ.get("KEEL_REQUIRE_BROWSER") == "1"


def _need_browser():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if REQUIRED:
            pytest.fail("playwright is not installed (KEEL_REQUIRE_BROWSER=1)")
        pytest.skip("playwright is not installed")
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        if REQUIRED:
            pytest.fail(f"{CHROMIUM} not found (KEEL_REQUIRE_BROWSER=1)")
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium chromium-driver")


class SlowStreamingLLM(ScriptedLLM):
    """Streams each scripted step in 3-character pieces, 60 ms apart."""

    def stream_generate(self, messages, **kw):
        gen = self.generate(messages, **kw)
        for i in range(0, len(gen.text), 3):
            time.sleep(0.06)
            yield gen.text[i:i + 3]
        yield gen


ANSWER = "Six times seven is 42, checked with the calculator."


@pytest.mark.integration
def test_browser_chat_streams_shows_the_tool_step_and_stores_a_thumbs_up(tiny_model_dir, tmp_path):
    _need_browser()
    from playwright.sync_api import expect, sync_playwright

    llm = SlowStreamingLLM([' I should compute.\nAction: calculator\nAction Input: {"expression": "6*7"}',
                            f" I know it.\nFinal Answer: {ANSWER}"])
    chat = ChatModel(str(tiny_model_dir), ChatSettings(), llm=llm, tools=ToolRegistry([calculator_tool()]))
    store = FeedbackStore(tmp_path / "feedback.db")
    demo = build_app(chat, store)
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
                                        headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page()
            page.goto(demo.local_url)
            page.locator("#message textarea").fill("What is 6*7?")
            page.locator("#send").click()

            bot = page.locator('#chatbot [data-testid="bot"]')
            seen: list[str] = []
            deadline = time.time() + 60
            while time.time() < deadline:
                texts = bot.all_inner_texts()
                if texts and texts[-1] not in seen:
                    seen.append(texts[-1])
                if texts and ANSWER in texts[-1]:
                    break
                time.sleep(0.05)
            assert seen and ANSWER in seen[-1], seen[-3:]
            partial = [t for t in seen if "Six times" in t and ANSWER not in t]
            assert partial, "the answer arrived in one piece, not streamed"
            expect(page.locator("#chatbot")).to_contain_text("calculator")  # the tool step is shown
            expect(page.locator("#chatbot")).to_contain_text("42")
            expect(page.locator("#stop")).to_be_disabled(timeout=20_000)  # the answer is finished and stored

            _rate(page, 0, "Like")
            expect(page.locator("#feedback-status")).to_contain_text("Saved 👍", timeout=20_000)
            browser.close()
    finally:
        demo.close()

    rows = FeedbackStore(tmp_path / "feedback.db").feedback("rating")
    assert len(rows) == 1 and rows[0]["label"] == 1 and rows[0]["completion"] == ANSWER
    assert rows[0]["response_id"] and rows[0]["prompt"][-1] == {"role": "user", "content": "What is 6*7?"}
    summary = export_feedback(tmp_path / "feedback.db", tmp_path / "export")
    assert summary["unpaired_desirable"] == 1
    assert ANSWER in (tmp_path / "export" / "kto.jsonl").read_text()


SHOTS = os.environ.get("KEEL_SHOTS_DIR")  # e.g. /tmp/shots16: keep the walk's screenshots to look at


def _shot(page, tmp_path, name):
    folder = SHOTS or str(tmp_path / "shots")
    os.makedirs(folder, exist_ok=True)
    page.screenshot(path=os.path.join(folder, f"{name}.png"), full_page=True)


def _ask(page, text, expect_text):
    from playwright.sync_api import expect

    page.locator("#message textarea").fill(text)
    page.locator("#send").click()
    expect(page.locator("#chatbot")).to_contain_text(expect_text, timeout=30_000)
    expect(page.locator("#send")).to_be_enabled(timeout=30_000)


def _rate(page, turn, button):
    from playwright.sync_api import expect

    page.locator('#chatbot [data-testid="bot"]').nth(turn).hover()
    page.locator("#chatbot .message-buttons-left").nth(turn).get_by_role("button", name=button, exact=True).click()
    expect(page.locator("#feedback-status")).to_contain_text("Saved", timeout=20_000)


@pytest.mark.integration
def test_browser_walks_the_whole_feedback_loop(tiny_model_dir, tmp_path):
    """What a user does, in order: a tool answer, like, dislike with a comment, an edit, Regenerate,
    dislike the alternative, export (every promised pair), retrain on CPU, switch the running app to
    the new checkpoint, and rate its answer (recorded against it)."""
    _need_browser()
    import json

    from playwright.sync_api import expect, sync_playwright

    from align.cli import main as align_main
    from serve.app import APP_CSS

    steps = [' I should compute.\nAction: calculator\nAction Input: {"expression": "6*7"}',
             f" I know it.\nFinal Answer: {ANSWER}",
             " ok\nFinal Answer: Paris is the capital of Italy.",
             " ok\nFinal Answer: Lyon.",
             " ok\nFinal Answer: Water boils at 50 C.",
             " ok\nFinal Answer: Water boils at 100 C at sea level.",
             " ok\nFinal Answer: Blue.", " ok\nFinal Answer: Seven days.", " ok\nFinal Answer: Banana.",
             " ok\nFinal Answer: From the new checkpoint."]
    llm = SlowStreamingLLM(steps)
    chat = ChatModel(str(tiny_model_dir), ChatSettings(), llm=llm, tools=ToolRegistry([calculator_tool()]))
    db = tmp_path / "feedback.db"
    store = FeedbackStore(db)
    runs = tmp_path / "runs"
    runs.mkdir()
    demo = build_app(chat, store, switch_roots=[str(runs)])
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, css=APP_CSS)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
                                        headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(demo.local_url)
            expect(page.locator("#stop")).to_be_disabled()  # nothing runs: Stop is not active
            header = page.locator("#header")
            assert header.bounding_box()["height"] < 60 and str(tiny_model_dir) not in header.inner_text()
            assert page.get_by_role("button", name="Clear", exact=True).count() <= 1  # one Clear control
            _ask(page, "What is 6*7?", ANSWER)
            _shot(page, tmp_path, "01-tool-answer")
            thought = page.locator("#chatbot .message-row.bot-row .message").first.bounding_box()
            assert thought["width"] > 400, thought  # agent steps get a readable width, not a ~110 px column
            _rate(page, 0, "Like")

            _ask(page, "Capital of France?", "capital of Italy")
            _rate(page, 1, "Dislike")
            page.get_by_text("Comment on your last rating or edit").click()
            page.locator("#comment textarea").fill("Wrong country.")
            page.locator("#comment-save").click()
            expect(page.locator("#feedback-status")).to_contain_text("Comment saved", timeout=20_000)

            _ask(page, "Second city of France?", "Lyon.")
            page.locator('#chatbot [data-testid="bot"]').nth(2).hover()
            page.locator("#chatbot .message-buttons-left").nth(2).get_by_role("button", name="Edit", exact=True).click()
            # A grouped turn opens one box per message (thought, answer); wait for both, edit the answer's.
            expect(page.locator("#chatbot textarea")).to_have_count(2)
            box = page.locator("#chatbot textarea").last
            expect(box).to_have_value("Lyon.")
            assert box.bounding_box()["width"] > 400 and box.bounding_box()["height"] > 100  # not a tiny box
            _shot(page, tmp_path, "02-edit-box")
            box.fill("Marseille is the second city of France.")
            page.locator("#chatbot").get_by_role("button", name="Submit", exact=True).click()
            expect(page.locator("#feedback-status")).to_contain_text("Saved your edit", timeout=20_000)
            # the ratings given before the edit are still shown
            rows = page.locator("#chatbot .message-buttons-left")
            expect(rows.nth(0).get_by_role("button", name="Liked", exact=True)).to_be_visible()
            expect(rows.nth(1).get_by_role("button", name="Disliked", exact=True)).to_be_visible()

            _ask(page, "When does water boil?", "50 C")
            page.locator("#regenerate").click()
            expect(page.locator("#chatbot")).to_contain_text("100 C at sea level", timeout=30_000)
            expect(page.locator("#feedback-status")).to_contain_text("sampled at temperature", timeout=20_000)
            expect(page.locator("#send")).to_be_enabled(timeout=30_000)
            _rate(page, 3, "Dislike")
            expect(rows.nth(0).get_by_role("button", name="Liked", exact=True)).to_be_visible()
            _shot(page, tmp_path, "03-after-regenerate")
            for i, (q, a, r) in enumerate((("Sky colour?", "Blue.", "Like"), ("Days in a week?", "Seven days.", "Like"),
                                           ("A vegetable?", "Banana.", "Dislike"))):
                _ask(page, q, a)
                _rate(page, 4 + i, r)

            # export: every promised pair is present
            summary = export_feedback(db, tmp_path / "export")
            pairs = {(p["chosen"][0]["content"], p["rejected"][0]["content"])
                     for p in map(json.loads, (tmp_path / "export" / "preference.jsonl").read_text().splitlines())}
            assert ("Marseille is the second city of France.", "Lyon.") in pairs  # edit > original
            # not disliked > disliked, as the agent's steps (the ReAct scratchpad the app stored with each answer)
            assert ("Thought: ok\nFinal Answer: Water boils at 50 C.",
                    "Thought: ok\nFinal Answer: Water boils at 100 C at sea level.") in pairs
            answers = export_feedback(db, tmp_path / "export-answers", view="answers")  # the chat's view
            assert answers["pairs"] == summary["pairs"] and ("Water boils at 50 C.", "Water boils at 100 C at sea level.") in {
                (p["chosen"][0]["content"], p["rejected"][0]["content"])
                for p in map(json.loads, (tmp_path / "export-answers" / "preference.jsonl").read_text().splitlines())}
            assert summary["unpaired_rows"] == 8 and summary["comments"] == 1

            # retrain on CPU from the app's database, into the folder the operator allowed
            out = runs / "kto-feedback"
            assert align_main(["retrain", "--from-feedback", str(db), "--output_dir", str(out), "--allow-one-source",
                               "--training.per_device_train_batch_size", "4", "--training.max_length", "128"]) == 0
            manifest = json.loads((out / "model" / "keel.json").read_text())
            assert manifest["parents"] == [str(tiny_model_dir)]

            # switch the running app to it
            page.get_by_text("Model", exact=True).click()
            page.locator("#switch-refresh").click()
            page.locator("#switch-to input").click()
            page.get_by_role("option", name="runs/kto-feedback/model").click()
            page.locator("#switch-load").click()
            expect(page.locator("#switch-status")).to_contain_text("Now serving", timeout=60_000)
            expect(page.locator("#header")).to_contain_text("kto-feedback/model (kto)")
            _shot(page, tmp_path, "04-switched")
            _ask(page, "Hello again?", "From the new checkpoint.")
            _rate(page, 7, "Like")
            _shot(page, tmp_path, "05-rated-new-checkpoint")
            browser.close()
    finally:
        demo.close()
    last = FeedbackStore(db).feedback("rating")[-1]
    assert last["completion"] == "From the new checkpoint." and last["checkpoint_id"] == str((out / "model").resolve())


@pytest.mark.integration
def test_browser_uploads_a_document_and_the_answer_cites_it(tmp_path):
    """The app as `python -m serve` starts it (the default agent, keel-agent, over the default
    knowledge base): upload a small Markdown file with a made-up fact in the Knowledge base panel,
    ask about it: the search step shows the uploaded passage and the answer's sources cite the file;
    remove it again. The shipped default knowledge base is not written. What keel-agent (135M)
    writes from the passages is not asserted: it does not reliably answer from the right one."""
    _need_browser()
    import hashlib

    from playwright.sync_api import expect, sync_playwright

    from retrieval.default_kb import default_index_dir, open_default_index
    from serve.app import APP_CSS
    from serve.cli import ServeConfig, create_app

    open_default_index(progress=False).close()  # built once per machine (1-2 min), as the app's first start does

    def shipped():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in default_index_dir().iterdir()
                if p.name in ("manifest.json", "index.faiss", "docstore.sqlite")}

    before = shipped()
    doc = tmp_path / "quillfeather-relay.md"
    doc.write_text("# Quillfeather relay\n\nThe Quillfeather relay on deck nine resets every 47 minutes. "
                   "Engineer Ottoline Marsh logs each reset.\n", encoding="utf-8")
    cfg = ServeConfig(kb_dir=str(tmp_path / "kb"), feedback_db=str(tmp_path / "feedback.db"))
    demo = create_app(cfg)
    demo.queue(default_concurrency_limit=cfg.concurrency).launch(server_name="127.0.0.1", server_port=None,
                                                                 prevent_thread_lock=True, quiet=True, css=APP_CSS)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
                                        headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(demo.local_url)
            page.get_by_text("Knowledge base", exact=True).click()
            expect(page.locator("#kb-documents")).to_contain_text("python-docs:pydoc_data.topics")
            page.locator('#kb-upload input[type="file"]').set_input_files(str(doc))
            expect(page.locator("#kb-status")).to_contain_text("1 added", timeout=120_000)
            expect(page.locator("#kb-status")).to_contain_text("quillfeather-relay.md: added")
            expect(page.locator("#kb-documents")).to_contain_text("quillfeather-relay.md")
            _shot(page, tmp_path, "kb-01-uploaded")

            page.locator("#message textarea").fill("How often does the Quillfeather relay reset?")
            page.locator("#send").click()
            chat = page.locator("#chatbot")
            expect(chat).to_contain_text("Sources:", timeout=240_000)  # written with the final answer
            expect(page.locator("#stop")).to_be_disabled(timeout=60_000)  # and the answer is complete
            # Opened, the search step shows the uploaded passage with its file as the source.
            chat.get_by_text("search(query=", exact=False).first.click()
            observation = chat.get_by_text("resets every 47 minutes", exact=False).first
            expect(observation).to_be_visible(timeout=10_000)
            assert "(uploads/quillfeather-relay.md § Quillfeather relay)" in observation.inner_text()
            assert str(tmp_path) not in chat.inner_text()  # the server path of the upload is not shown
            time.sleep(1)  # let the opened step finish drawing before the shot
            page.screenshot(path=os.path.join(SHOTS or str(tmp_path), "kb-02a-observation.png"))
            answer = page.locator('#chatbot [data-testid="bot"]').last
            sources = answer.inner_text().split("Sources:")[-1]
            assert sources.split(";")[0].strip() == "uploads/quillfeather-relay.md § Quillfeather relay", sources
            # The 135M agent does not always answer from passage [1] (with other passages beside it, it
            # has answered from a Keel doc): the answer's own text is reported, not asserted.
            text = answer.inner_text().split("Sources:")[0].strip()
            print("keel-agent answered:", text.splitlines()[-1])
            # What it cites inline can only be a source the search returned, and after a search it must
            # cite one (constrained decoding, agent.citations: required).
            listed = {s.strip().split(" § ")[0] for s in sources.split(";")}
            cited = re.findall(r"\(source: ([^)]*)\)", text)
            assert cited and set(cited) <= listed, (cited, listed)
            _shot(page, tmp_path, "kb-02-answer")

            page.locator("#kb-pick input").click()
            page.get_by_role("option", name="quillfeather-relay.md (uploaded, 1 chunk)").click()
            page.locator("#kb-remove").click()
            expect(page.locator("#kb-status")).to_contain_text("Removed quillfeather-relay.md", timeout=60_000)
            expect(page.locator("#kb-documents")).not_to_contain_text("quillfeather-relay.md")
            _shot(page, tmp_path, "kb-03-removed")
            browser.close()
    finally:
        demo.close()
    assert shipped() == before
