"""Serving figures: streaming overhead of the app against raw ``model.generate``, and 8 concurrent users.

    python bench/bench_serve.py [--prompts 6] [--max-new-tokens 64] [--users 8] [--turns 2]

Part 1, same run, same loaded model (embedded SmolLM2-135M, fp32, greedy, CPU):
  baseline: ``model.generate`` directly; time to first token is a 1-token generate (prefill
  plus one step), tokens/s is a full generate divided by the tokens it produced;
  app: the Gradio app in plain-chat mode on 127.0.0.1, called through ``gradio_client`` over
  HTTP with streaming; time to first token is until the first non-empty streamed answer.
Part 2: N headless chromium pages (Playwright, Debian's chromium) each send T messages to the
agent-backed app with the default knowledge base, wait for the answer (Send is enabled again)
and click thumbs-up. Baseline: the default app, one generation at a time with token streaming
(others queue); against it, ``--batch --concurrency N``, where concurrent users' agent steps
share one batched ``generate``. Reports latency p50/p95 per message, errors, and whether every
thumbs-up clicked is a row in the feedback database and in the export.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["Explain what a reward model is in two sentences.", "Give me three tips for writing clear emails.",
           "What is the capital of France, and why is it famous?", "Describe a cat to someone who has never seen one.",
           "How do I boil an egg?", "Write a haiku about autumn.", "Why is the sky blue?",
           "What should I pack for a weekend hike?"]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def raw_generate(chat, prompts, max_new_tokens):
    import torch

    from align.generate import generation_kwargs

    ttft, rates = [], []
    for prompt in prompts:
        messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": prompt}]
        enc = chat.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)
        with torch.inference_mode():
            t = time.perf_counter()
            chat.model.generate(**enc, **generation_kwargs(chat.tokenizer, 1))
            ttft.append(time.perf_counter() - t)
            t = time.perf_counter()
            out = chat.model.generate(**enc, **generation_kwargs(chat.tokenizer, max_new_tokens))
            seconds = time.perf_counter() - t
        rates.append((out.shape[1] - enc["input_ids"].shape[1]) / seconds)
    return ttft, rates


def app_generate(url, tokenizer, prompts):
    from gradio_client import Client

    client = Client(url, verbose=False)
    ttft, rates = [], []
    for prompt in prompts:
        history = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]  # Gradio 6 message parts
        t = time.perf_counter()
        first, final = None, None
        job = client.submit(history, "You are a helpful assistant.", api_name="/answer")
        for update in job:
            answer = update[-1]["content"] if update and update[-1]["role"] == "assistant" else ""
            text = answer if isinstance(answer, str) else "".join(p.get("text", "") for p in answer)
            if text and first is None:
                first = time.perf_counter() - t
            final = text
        seconds = time.perf_counter() - t
        ttft.append(first)
        rates.append(len(tokenizer(final, add_special_tokens=False)["input_ids"]) / seconds)
    client.close()
    return ttft, rates


async def users(url: str, n_users: int, turns: int, chromium: str) -> dict:
    from playwright.async_api import async_playwright

    latencies, errors = [], []
    likes, saved, unratable = [0], [0], [0]

    async def user(browser, u):
        page = await browser.new_page()
        await page.goto(url)
        for t in range(turns):
            try:
                question = f"User {u}, question {t}: what is {u + 2} * {t + 3}?"
                before = await page.locator("#feedback-status").inner_text()
                start = time.perf_counter()
                await page.locator("#message textarea").fill(question)
                await page.locator("#send").click()
                # Send is disabled from the moment the question is shown until the answer is complete.
                await page.wait_for_function(
                    """([n]) => document.querySelectorAll('#chatbot [data-testid="user"]').length === n
                                && !document.querySelector('#send').disabled""", arg=[t + 1], timeout=600_000)
                latencies.append(time.perf_counter() - start)
                await page.get_by_role("button", name="Like").last.click()
                likes[0] += 1
                try:  # feedback skips the queue: the status changes within a second or two
                    await page.wait_for_function(
                        """([prev]) => { const s = document.querySelector('#feedback-status').innerText;
                             return s !== prev && (s.includes('Saved') || s.includes('no final answer')); }""",
                        arg=[before], timeout=15_000)
                except Exception:  # noqa: BLE001 - same text as before: classified below
                    pass
                status = await page.locator("#feedback-status").inner_text()
                if "Saved" in status:
                    saved[0] += 1
                elif "no final answer" in status:
                    unratable[0] += 1
                else:
                    errors.append(f"user {u} turn {t}: no feedback confirmation within 15 s (status {status!r})")
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors.append(f"user {u} turn {t}: {type(e).__name__}: {e}"[:300])
        await page.close()

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, headless=True,
                                          args=["--no-sandbox", "--disable-dev-shm-usage"])
        started = time.perf_counter()
        await asyncio.gather(*(user(browser, u) for u in range(n_users)))
        wall = time.perf_counter() - started
        await browser.close()
    return {"latencies": latencies, "errors": errors, "wall_s": wall, "likes": likes[0], "saved": saved[0],
            "unratable": unratable[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--turns", type=int, default=2)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--skip-users", action="store_true")
    a = ap.parse_args()

    from serve.app import build_app
    from serve.chat import ChatModel, ChatSettings
    from serve.feedback import FeedbackStore, export_feedback

    results: dict = {"max_new_tokens": a.max_new_tokens}
    chat = ChatModel("smollm2-135m", ChatSettings(max_new_tokens=a.max_new_tokens, agent=False))
    prompts = PROMPTS[: a.prompts]
    raw_generate(chat, prompts[:1], 8)  # warm-up
    demo = build_app(chat, None, "You are a helpful assistant.")
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        app_generate(demo.local_url, chat.tokenizer, prompts[:1])  # warm-up
        raw_ttft, raw_rate = raw_generate(chat, prompts, a.max_new_tokens)
        app_ttft, app_rate = app_generate(demo.local_url, chat.tokenizer, prompts)
    finally:
        demo.close()
    results["streaming"] = {
        "raw_generate": {"ttft_s_median": statistics.median(raw_ttft), "tokens_per_s_median": statistics.median(raw_rate)},
        "app": {"ttft_s_median": statistics.median(app_ttft), "tokens_per_s_median": statistics.median(app_rate)},
    }
    results["streaming"]["ratio_app_over_raw"] = {
        "ttft": results["streaming"]["app"]["ttft_s_median"] / results["streaming"]["raw_generate"]["ttft_s_median"],
        "tokens_per_s": results["streaming"]["app"]["tokens_per_s_median"]
        / results["streaming"]["raw_generate"]["tokens_per_s_median"],
    }
    print(json.dumps(results["streaming"], indent=2), flush=True)

    if not a.skip_users:
        from agents.tools import default_tools
        from retrieval.default_kb import open_default_index

        tools = default_tools(open_default_index())
        results["concurrent_users"] = {}
        # baseline: one generation at a time, token streaming; then concurrent users batched.
        for mode, settings in (("queued", ChatSettings(max_new_tokens=a.max_new_tokens, concurrency=1)),
                               ("batched", ChatSettings(max_new_tokens=a.max_new_tokens, concurrency=a.users, batch=True))):
            user_chat = ChatModel("smollm2-135m", settings, tools=tools)
            with tempfile.TemporaryDirectory() as tmp:
                store = FeedbackStore(Path(tmp) / "feedback.db")
                demo = build_app(user_chat, store)
                demo.queue(default_concurrency_limit=settings.concurrency).launch(
                    server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
                try:
                    run = asyncio.run(users(demo.local_url, a.users, a.turns, a.chromium))
                finally:
                    demo.close()
                rows = FeedbackStore(Path(tmp) / "feedback.db").feedback("rating")
                summary = export_feedback(Path(tmp) / "feedback.db", Path(tmp) / "export")
            lat = run["latencies"]
            results["concurrent_users"][mode] = {
                "users": a.users, "turns_each": a.turns, "messages": a.users * a.turns, "concurrency": settings.concurrency,
                "batch": settings.batch, "answered": len(lat), "errors": len(run["errors"]),
                "error_samples": run["errors"][:5],
                "latency_p50_s": pct(lat, 0.5) if lat else None, "latency_p95_s": pct(lat, 0.95) if lat else None,
                "wall_s": run["wall_s"], "thumbs_up_clicked": run["likes"], "confirmed_saved": run["saved"],
                "unratable_no_final_answer": run["unratable"],
                "feedback_rows": len(rows), "exported_desirable": summary["unpaired_desirable"],
                "lost_feedback_rows": run["saved"] - len(rows),
            }
            print(mode, json.dumps(results["concurrent_users"][mode], indent=2), flush=True)
        q, b = results["concurrent_users"]["queued"], results["concurrent_users"]["batched"]
        if q["latency_p50_s"] and b["latency_p50_s"]:
            results["concurrent_users"]["ratio_batched_over_queued"] = {
                "latency_p50": b["latency_p50_s"] / q["latency_p50_s"], "latency_p95": b["latency_p95_s"] / q["latency_p95_s"],
                "wall": b["wall_s"] / q["wall_s"]}
            print(json.dumps(results["concurrent_users"]["ratio_batched_over_queued"], indent=2), flush=True)
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "serve.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
