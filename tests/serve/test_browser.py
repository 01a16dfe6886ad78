"""End to end in a real browser: Debian's chromium driven by Playwright, headless.

The model is scripted (a calculator call, then an answer streamed a few characters at a time)
so that the test checks the app, not what a random tiny model happens to write. Skipped where
chromium or Playwright is missing, unless KEEL_REQUIRE_BROWSER=1 (set by .ci/run), which turns
the skip into a failure.
"""
import os
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

            page.get_by_role("button", name="Like").last.click()
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
