"""Serving figures: streaming overhead of the app against raw ``model.generate``, 8 browser users,
and (``--load``) 1/8/32 users over HTTP per generation backend.

    python bench/bench_serve.py [--prompts 6] [--max-new-tokens 64] [--users 8] [--turns 2]
    python bench/bench_serve.py --load [--backends inprocess,vllm] [--user-levels 1,8,32] [--turns 2]
        [--max-new-tokens 48] [--seed 0] [--vllm-python .venv-vllm/bin/python] [--out bench/results/serve_load.json]
        [--every-token-app] [--before-repo DIR] [--part-order app,app_every_token,app_before]
    python bench/bench_serve.py --app-overhead [--users 8] [--chunks 300] [--before-repo DIR]

Part 1, same run, same loaded model (embedded SmolLM2-135M, fp32, greedy, CPU):
  baseline: ``model.generate`` directly; time to first token is a 1-token generate (prefill
  plus one step), tokens/s is a full generate divided by the tokens it produced;
  app: the Gradio app in plain-chat mode on 127.0.0.1, called through ``gradio_client`` over
  HTTP with streaming; time to first token is until the first non-empty streamed answer.
Part 2: N headless chromium pages (Playwright, Debian's chromium) each send T messages to the
agent-backed app with the default knowledge base, wait for the answer (Send is enabled again)
and click thumbs-up: the default app, one generation at a time with token streaming (others
queue). Reports latency p50/p95 per message, errors, and whether every thumbs-up clicked is a
row in the feedback database and in the export. (Until issue #18 this part also ran the app's
in-process batcher, ``--batch``; part 3 measured it slower than the vLLM engine and it was removed.)

Part 3, ``--load`` (issue #18): N simulated users over HTTP at 1, 8 and 32 users against the
backends of the same plain-chat app (``python -m serve --checkpoint smollm2-135m --no-agent``,
each started as its own process with a fresh feedback database):
  inprocess: generation in the app process, one at a time (``--concurrency 1``, token streaming);
  (batch:    ``--batch --concurrency 32``, the app's in-process batcher: measured at commit f0f6965,
             then removed because vllm beat it at 8 users; bench/RESULTS.md has its figures);
  vllm:      ``--llm-url`` to one vLLM CPU server (``serve.engine.VLLMEngine``, what ``--engine vllm``
             starts) serving smollm2-135m, ``--llm-template checkpoint --concurrency 32``.
Every user opens its own Gradio session and runs its turns through the app's queue API with
``serve.simulate.BrowserSession`` (the code ``python -m serve simulate`` uses; gradio_client
cannot send the like event's data), clears the chat between turns, and presses thumbs-up on
each answer; an acknowledged like is one the app answered with "Saved 👍". Afterwards the
feedback database's likes for these sessions are counted: lost = acknowledged - stored.
Playwright pages (part 2) are not used here: 32 chromium pages on 2 shared cores would measure
the browsers, not the app. Same seeded prompts, greedy decoding and max_new_tokens for every
backend. For vllm, each user level also runs the same requests straight against the engine's
OpenAI completions endpoint (the ``openai`` client, streaming, same prompt text as the app
sends): the engine's own latency and time to first token in the same run, the baseline that
the app's figures are divided by. Time to first token through the app: from submitting the
message until the first non-empty answer text arrives in the stream. Each level also counts the
CPU seconds of the app's and the engine's process trees, and the app's CPU ms per answer token.
``--every-token-app`` and ``--before-repo DIR`` (vllm only) add apps on the same engine, run at
each level after the default one: this app sending every token (``--stream-interval-ms 0``), and
the app of another checkout (an earlier commit: a before/after in one run).

``--app-overhead``: the app's own CPU per streamed chunk with the engine taken out: a stdlib fake
OpenAI server streams a 300-chunk answer at once to 8 users through the same apps (``app_overhead``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
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


# ------------------------------------------------------------------------------ part 3: load (issue #18)
LOAD_BACKENDS = ("inprocess", "vllm")
LOAD_MODEL = "smollm2-135m"
_ERROR_ANSWER = re.compile(r"\(error [0-9a-f]{8}\)")  # serve.app's short failure messages carry an error id


def load_plan(users: int, turns: int, seed: int) -> list[list[str]]:
    """The prompts of ``users`` users, ``turns`` each, drawn from PROMPTS with ``random.Random(seed)``:
    the same plan for every backend at a given user count."""
    rng = random.Random(f"{seed}-{users}-{turns}")
    return [[rng.choice(PROMPTS) for _ in range(turns)] for _ in range(users)]


def summarize(rows: list[dict], wall_s: float) -> dict:
    """Figures of one (backend, users) level from its per-answer ``rows`` (``latency_s``, ``ttft_s``,
    ``tokens``, ``error``; failed rows have ``error`` set and count only as errors). Latencies and
    times to first token in seconds (p50/p95 over answers); ``tokens_per_s``: answer tokens of all
    users divided by the level's wall time (throughput); ``tokens_per_s_per_user_p50``: one
    answer's tokens over its own latency."""
    ok = [r for r in rows if not r.get("error")]
    lat = [r["latency_s"] for r in ok]
    ttft = [r["ttft_s"] for r in ok if r.get("ttft_s") is not None]
    tokens = sum(r["tokens"] for r in ok)
    out = {"requests": len(rows), "answered": len(ok), "errors": len(rows) - len(ok),
           "error_samples": [r["error"] for r in rows if r.get("error")][:3],
           "latency_p50_s": pct(lat, 0.5) if lat else None, "latency_p95_s": pct(lat, 0.95) if lat else None,
           "ttft_p50_s": pct(ttft, 0.5) if ttft else None, "ttft_p95_s": pct(ttft, 0.95) if ttft else None,
           "tokens": tokens, "wall_s": round(wall_s, 2), "tokens_per_s": tokens / wall_s if wall_s > 0 else None,
           "tokens_per_s_per_user_p50": statistics.median(r["tokens"] / r["latency_s"] for r in ok) if ok else None}
    return out


def feedback_tally(rows: list[dict], stored_likes: int) -> dict:
    """Likes the app acknowledged ("Saved 👍") against likes stored for the level's sessions; ``lost``:
    acknowledged but not stored (a broken durability promise); ``unacknowledged``: answers whose like
    got no acknowledgement (counted as errors by the caller)."""
    answered = [r for r in rows if not r.get("error")]
    acked = sum(bool(r.get("like_acknowledged")) for r in answered)
    return {"likes_acknowledged": acked, "likes_stored": stored_likes, "lost_feedback_rows": max(0, acked - stored_likes),
            "stored_without_acknowledgement": max(0, stored_likes - acked),
            "unacknowledged": len(answered) - acked}


def _run_users(plan: list[list[str]], one_user) -> tuple[list[dict], float]:
    """Run ``one_user(u, prompts, rows)`` for every user of ``plan`` in its own thread, all released at
    once; returns (rows, wall seconds)."""
    rows: list[dict] = []
    gate = threading.Barrier(len(plan) + 1)

    def target(u, prompts):
        gate.wait()
        one_user(u, prompts, rows)

    threads = [threading.Thread(target=target, args=(u, p), daemon=True) for u, p in enumerate(plan)]
    for t in threads:
        t.start()
    gate.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return rows, time.perf_counter() - started


def app_users(url: str, plan: list[list[str]], tokenizer, timeout: float = 1800.0) -> tuple[list[dict], float, list[str]]:
    """Each user of ``plan`` in its own session of the app at ``url``: per turn, clear (after the first),
    send, wait for the whole streamed answer, press thumbs-up. Returns (rows, wall seconds, session ids)."""
    from serve.chat import message_text
    from serve.simulate import AppError, BrowserSession, fetch_config, final_answer, last_turn

    class TimedSession(BrowserSession):  # notes when the first answer text arrives in the stream
        t0: float | None = None
        first: float | None = None

        def _apply(self, dep, data):
            super()._apply(dep, data)
            if self.t0 is not None and self.first is None:
                history = self.values.get(self.id_of("chatbot")) or []
                if history and history[-1].get("role") == "assistant" and message_text(history[-1].get("content")).strip():
                    self.first = time.perf_counter() - self.t0

    config = fetch_config(url)
    sessions: list[str] = []
    salt = f"{time.time_ns() % 10**8:08d}"

    def one_user(u, prompts, rows):
        tab = TimedSession(url, session_hash=f"load{u}x{salt}", timeout=timeout, config=config)
        sessions.append(tab.session_hash)
        try:
            for k, prompt in enumerate(prompts):
                row = {"user": u, "turn": k, "prompt": prompt}
                try:
                    if k:
                        tab.trigger("chatbot", "clear")
                    tab.set_value("message", prompt)
                    tab.t0, tab.first = time.perf_counter(), None
                    tab.trigger("message", "submit")
                    row["latency_s"] = time.perf_counter() - tab.t0
                    row["ttft_s"] = tab.first
                    tab.t0 = None
                    start, group = last_turn(tab.value("chatbot") or [])
                    off, answer = final_answer(group)
                    if off < 0 or not answer or _ERROR_ANSWER.search(answer):
                        row["error"] = f"no answer: {answer[:200]!r} (status {message_text(tab.value('feedback-status'))[:200]!r})"
                        continue
                    row["tokens"] = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
                    row["answer"] = answer
                    tab.trigger("chatbot", "like", {"index": start, "value": [m.get("content") for m in group],
                                                    "liked": True})
                    status = message_text(tab.value("feedback-status"))
                    row["like_acknowledged"] = status.startswith("Saved 👍")
                    if not row["like_acknowledged"]:
                        row["like_status"] = status[:200]
                except AppError as e:
                    row["error"] = str(e)[:300]
                finally:
                    rows.append(row)
        finally:
            tab.close()

    rows, wall = _run_users(plan, one_user)
    return rows, wall, sessions


def engine_users(url: str, model: str, plan: list[list[str]], tokenizer, max_new_tokens: int,
                 system_prompt: str, timeout: float = 1800.0) -> tuple[list[dict], float]:
    """The same requests straight to the engine's OpenAI completions endpoint (streaming, greedy), the
    prompt rendered with the checkpoint's chat template exactly as the app's ``--llm-template
    checkpoint`` path renders it. Returns (rows, wall seconds)."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="EMPTY", timeout=timeout, max_retries=0)

    def one_user(u, prompts, rows):
        for k, prompt in enumerate(prompts):
            row = {"user": u, "turn": k, "prompt": prompt}
            text = tokenizer.apply_chat_template([{"role": "system", "content": system_prompt},
                                                  {"role": "user", "content": prompt}],
                                                 add_generation_prompt=True, tokenize=False)
            t0 = time.perf_counter()
            try:
                answer, first, tokens = "", None, None
                stream = client.completions.create(model=model, prompt=text, max_tokens=max_new_tokens, temperature=0.0,
                                                   stream=True, stream_options={"include_usage": True},
                                                   extra_body={"add_special_tokens": False})
                for chunk in stream:
                    if getattr(chunk, "usage", None) is not None:
                        tokens = chunk.usage.completion_tokens
                    piece = chunk.choices[0].text if chunk.choices else ""
                    if piece and first is None and piece.strip():
                        first = time.perf_counter() - t0
                    answer += piece or ""
                # counted as the app's answers are (the stripped text, re-tokenized); the server's own count is kept
                row.update(latency_s=time.perf_counter() - t0, ttft_s=first, answer=answer.strip(), usage_tokens=tokens,
                           tokens=len(tokenizer(answer.strip(), add_special_tokens=False)["input_ids"]))
                if not answer.strip():
                    row["error"] = "empty answer"
            except Exception as e:  # noqa: BLE001 - counted and reported
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            rows.append(row)

    rows, wall = _run_users(plan, one_user)
    client.close()
    return rows, wall


def start_app(backend: str, port: int, db: Path, workdir: Path, max_new_tokens: int, concurrency: int,
              llm_url: str | None = None, log_path: Path | None = None, extra_args: list[str] | None = None,
              repo: Path = REPO, name: str | None = None) -> subprocess.Popen:
    """``python -m serve`` for ``backend`` (LOAD_BACKENDS) on 127.0.0.1:``port`` in plain-chat mode, as its
    own process (the benchmark's client threads do not share its interpreter). ``repo``: the checkout
    whose ``serve`` runs (another one: an earlier commit's app, for a before/after in one run);
    ``extra_args``: more ``python -m serve`` flags; ``name``: for its config and log file names."""
    name = name or backend
    cfg = workdir / f"serve-{name}.yaml"
    cfg.write_text("llm_timeout_s: 1800\n")  # a slow CPU engine is not a failed one: no timeout-retries
    cmd = [sys.executable, "-m", "serve", "--config", str(cfg), "--checkpoint", LOAD_MODEL, "--no-agent",
           "--index", "none", "--kb-dir", "none", "--feedback-db", str(db), "--port", str(port),
           "--max-new-tokens", str(max_new_tokens), "--temperature", "0"]
    if backend == "inprocess":
        cmd += ["--concurrency", "1"]
    elif backend == "vllm":
        cmd += ["--concurrency", str(concurrency), "--llm-url", llm_url, "--llm-model", LOAD_MODEL,
                "--llm-template", "checkpoint"]
    else:
        raise ValueError(f"unknown backend {backend!r}; one of {LOAD_BACKENDS}")
    cmd += list(extra_args or [])
    log = open(log_path or (workdir / f"app-{name}.log"), "ab")
    try:
        return subprocess.Popen(cmd, cwd=repo, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        log.close()


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def tree_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds used so far by process ``pid`` and all its descendants (vLLM's engine
    core is a child of its API server), read from Linux's /proc (psutil is not a Keel dependency);
    None where /proc is missing or ``pid`` is None."""
    if pid is None or not os.path.isdir("/proc"):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, float]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = Path(f"/proc/{d}/stat").read_text()
        except OSError:  # exited meanwhile
            continue
        rest = raw[raw.rindex(")") + 2:].split()  # fields after the command name: state, ppid, ...
        procs[int(d)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / tick)  # ppid, utime + stime
    tree, todo = set(), [pid]
    while todo:
        cur = todo.pop()
        if cur in procs and cur not in tree:
            tree.add(cur)
            todo += [q for q, (ppid, _) in procs.items() if ppid == cur]
    return sum(procs[q][1] for q in tree) if tree else None


class CpuMeter:
    """CPU seconds spent during a ``with`` block by this process (the simulated users' threads) and by
    each process tree in ``pids`` ({name: pid}): ``.used`` = {"client": s, name: s, ...}."""

    def __init__(self, pids: dict[str, int | None]):
        self.pids, self.used = pids, {}

    def __enter__(self):
        self._client = time.process_time()
        self._start = {k: tree_cpu_s(v) for k, v in self.pids.items()}
        return self

    def __exit__(self, *exc):
        self.used["client"] = round(time.process_time() - self._client, 2)
        for k, v in self.pids.items():
            end = tree_cpu_s(v)
            self.used[k] = round(end - self._start[k], 2) if end is not None and self._start[k] is not None else None
        return False


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_benchmark(backends: list[str], levels: list[int], turns: int, max_new_tokens: int, seed: int,
                   vllm_python: str, out: Path, app_variants: dict[str, tuple[Path, list[str]]] | None = None,
                   part_order: list[str] | None = None) -> dict:
    """Part 3 (see the module docstring). Writes ``out`` (JSON) after every level, so a run that is
    stopped keeps what it measured. ``app_variants`` ({part: (checkout, extra flags)}): more apps on the
    same vLLM server, each run at every level after this checkout's default app (``app``), e.g. the
    app at an earlier commit, or with ``--stream-interval-ms 0``; ``part_order``: the order in which they run
    at each level (default: ``app`` first, then ``app_variants``' order)."""
    from align.models import load_tokenizer, resolve_model
    from serve.engine import VLLMEngine, free_port
    from serve.settings import DEFAULT_SYSTEM_PROMPT
    from serve.simulate import stored_counts, wait_for_app

    tokenizer = load_tokenizer(resolve_model(LOAD_MODEL))
    results: dict = {"model": LOAD_MODEL, "mode": "plain chat (--no-agent), greedy", "max_new_tokens": max_new_tokens,
                     "turns_per_user": turns, "user_levels": levels, "seed": seed, "backends": {},
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "load_average_at_start": os.getloadavg()}

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False))
        tmp.replace(out)

    engine = None
    workdir = Path(tempfile.mkdtemp(prefix="keel-load-"))
    _log(f"work folder {workdir}")
    try:
        for backend in backends:
            if backend == "vllm":  # started once for every user level, and only now: idle, it would still hold cores
                engine = VLLMEngine(vllm_python, workdir / "engine", start_timeout_s=1800)
                t = time.perf_counter()
                _log("starting vLLM (once, for every user level; minutes on a CPU)")
                try:
                    served = engine.start(resolve_model(LOAD_MODEL))
                except Exception as e:  # noqa: BLE001 - recorded; the JSON says why there are no vllm rows
                    results["backends"]["vllm"] = {"failed": f"vLLM did not start: {type(e).__name__}: {e}"[:800]}
                    _log(results["backends"]["vllm"]["failed"])
                    continue
                results["vllm_start_s"] = round(time.perf_counter() - t, 1)
                _log(f"vLLM healthy after {results['vllm_start_s']} s at {engine.url} serving {served}")
                engine_users(engine.url, served, [[PROMPTS[0]]], tokenizer, max_new_tokens, DEFAULT_SYSTEM_PROMPT)  # warm-up
            # one app per variant (vllm only: this checkout's app, and what ``app_variants`` adds), all
            # started before the first level; per level each runs the same plan right after the engine's own
            parts = {"app": (REPO, [])}
            if backend == "vllm":
                parts.update(app_variants or {})
                rank = {p: i for i, p in enumerate(part_order or [])}
                parts = dict(sorted(parts.items(), key=lambda kv: rank.get(kv[0], len(rank))))
            apps: dict = {}
            per_level: dict = {}
            results["backends"][backend] = {"levels": per_level}
            try:
                for part, (repo, extra) in parts.items():
                    port = free_port()
                    db = workdir / f"feedback-{backend}-{part}.db"
                    t = time.perf_counter()
                    proc = start_app(backend, port, db, workdir, max_new_tokens, max(levels),
                                     engine.url if backend == "vllm" else None, extra_args=extra, repo=repo,
                                     name=f"{backend}-{part}")
                    apps[part] = (proc, f"http://127.0.0.1:{port}", db, t)
                    key = "command" if part == "app" else f"command_{part}"
                    results["backends"][backend][key] = " ".join(proc.args[1:]) + (f"  (in {repo})" if repo != REPO else "")
                for part, (proc, url, db, t) in apps.items():
                    wait_for_app(url, timeout=900, proc=proc)
                    key = "app_start_s" if part == "app" else f"app_start_s_{part}"
                    results["backends"][backend][key] = round(time.perf_counter() - t, 1)
                    _log(f"{backend} {part}: ready on {url} after {results['backends'][backend][key]} s")
                    app_users(url, [[PROMPTS[1]]], tokenizer)  # warm-up (its like is not counted: own session)
                for n in levels:
                    plan = load_plan(n, turns, seed)
                    level: dict = {"users": n, "load_average_before": os.getloadavg()}
                    engine_pid = engine.proc.pid if backend == "vllm" and engine.proc else None
                    if backend == "vllm":
                        with CpuMeter({"engine": engine_pid}) as cpu:
                            rows, wall = engine_users(engine.url, served, plan, tokenizer, max_new_tokens,
                                                      DEFAULT_SYSTEM_PROMPT)
                        level["engine_direct"] = summarize(rows, wall)
                        level["engine_direct"]["cpu_s"] = cpu.used
                        _log(f"vllm engine direct, {n} users: " + _brief(level["engine_direct"]) + f" cpu {cpu.used}")
                    for part, (proc, url, db, _t) in apps.items():
                        with CpuMeter({"app": proc.pid, "engine": engine_pid}) as cpu:
                            rows, wall, sessions = app_users(url, plan, tokenizer)
                        res = summarize(rows, wall)
                        res["cpu_s"] = cpu.used
                        res["app_cpu_ms_per_token"] = (round(1000 * cpu.used["app"] / res["tokens"], 2)
                                                       if cpu.used.get("app") is not None and res["tokens"] else None)
                        res.update(feedback_tally(rows, stored_counts(db, sessions)["likes"]))
                        res["errors"] += res["unacknowledged"]
                        res["error_samples"] += [f"like not acknowledged: {r.get('like_status')!r}" for r in rows
                                                 if not r.get("error") and not r.get("like_acknowledged")][:3]
                        level[part] = res
                        if part == "app":
                            level["sample_answers"] = [r.get("answer") for r in rows[:2]]
                        _log(f"{backend} {part}, {n} users: " + _brief(res)
                             + f" lost feedback {res['lost_feedback_rows']} cpu {res['cpu_s']}")
                    per_level[str(n)] = level
                    save()
            except Exception as e:  # noqa: BLE001 - recorded; the other backends still run
                results["backends"][backend]["failed"] = f"{type(e).__name__}: {e}"[:500]
                _log(f"{backend} failed: {e}")
            finally:
                for proc, *_ in apps.values():
                    stop_process(proc)
                save()
    finally:
        if engine is not None:
            engine.stop()
    results["comparison"] = compare_load(results)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save()
    return results


def app_overhead(users: int, chunks: int, before_repo: str | None, out: Path) -> dict:
    """``--app-overhead``: the app's own CPU per streamed chunk, the engine taken out. A stdlib fake
    OpenAI server (tests/agents/fake_openai.py: ~0 CPU, every chunk at once) streams a ``chunks``-chunk
    answer to ``users`` users at once through each app: this checkout's (default ``stream_interval_ms``),
    the same sending every chunk (``--stream-interval-ms 0``), and ``before_repo``'s (the baseline).
    Reports app CPU seconds (its process tree, /proc) per chunk and per answer, over 3 rounds."""
    sys.path.insert(0, str(REPO))
    from tests.agents.fake_openai import FakeOpenAIServer

    from align.models import load_tokenizer, resolve_model
    from serve.engine import free_port
    from serve.simulate import wait_for_app

    tokenizer = load_tokenizer(resolve_model(LOAD_MODEL))
    text = "".join(f" w{i % 10}" for i in range(chunks))  # the fake streams 3 characters per chunk
    parts = {"app_before": (Path(before_repo).resolve(), [])} if before_repo else {}
    parts.update({"app_every_token": (REPO, ["--stream-interval-ms", "0"]), "app": (REPO, [])})
    results: dict = {"users": users, "chunks_per_answer": chunks, "rounds": 3, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "load_average_at_start": os.getloadavg(), "apps": {}}
    workdir = Path(tempfile.mkdtemp(prefix="keel-overhead-"))
    with FakeOpenAIServer([text], model=LOAD_MODEL) as fake:
        apps = {}
        try:
            for part, (repo, extra) in parts.items():
                port = free_port()
                proc = start_app("vllm", port, workdir / f"fb-{part}.db", workdir, 4 * chunks, users, fake.url,
                                 extra_args=extra, repo=repo, name=part)
                apps[part] = (proc, f"http://127.0.0.1:{port}")
            for part, (proc, url) in apps.items():
                wait_for_app(url, timeout=900, proc=proc)
                app_users(url, [[PROMPTS[1]]], tokenizer)  # warm-up
            for r in range(3):  # rounds: each app once per round, so a change of machine load hits all
                for part, (proc, url) in apps.items():
                    with CpuMeter({"app": proc.pid}) as cpu:
                        rows, wall, _ = app_users(url, [[PROMPTS[0]]] * users, tokenizer)
                    bad = [r_ for r_ in rows if r_.get("error")]
                    rec = results["apps"].setdefault(part, {"cpu_s": [], "wall_s": [], "errors": 0})
                    rec["cpu_s"].append(cpu.used["app"])
                    rec["wall_s"].append(round(wall, 2))
                    rec["errors"] += len(bad)
                    _log(f"round {r}: {part}: app cpu {cpu.used['app']} s, wall {wall:.2f} s, errors {len(bad)}")
        finally:
            for proc, _ in apps.values():
                stop_process(proc)
    for part, rec in results["apps"].items():
        cpu = statistics.median(rec["cpu_s"])
        rec["cpu_ms_per_chunk"] = round(1000 * cpu / (users * chunks), 3)
        rec["cpu_ms_per_answer"] = round(1000 * cpu / users, 1)
    base = results["apps"].get("app_before")
    if base:
        results["over_before"] = {p: round(r["cpu_ms_per_chunk"] / base["cpu_ms_per_chunk"], 3)
                                  for p, r in results["apps"].items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return results


def _brief(s: dict) -> str:
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    return (f"p50 {f(s['latency_p50_s'])} s, p95 {f(s['latency_p95_s'])} s, ttft p50 {f(s['ttft_p50_s'])} s, "
            f"{f(s['tokens_per_s'])} tok/s, errors {s['errors']}/{s['requests']}")


def compare_load(results: dict) -> dict:
    """The ratios the issue's aims and decision are read from (None where a figure is missing):
    per level, the app's TTFT and latency over the engine's own (vllm); vllm's p95 at 8 users over its
    one-user p50; batch over vllm at 8 users (latency p50/p95, tokens/s) where a result has a batch backend
    (runs before its removal)."""
    def lvl(backend, n, part="app"):
        return (((results["backends"].get(backend) or {}).get("levels") or {}).get(str(n)) or {}).get(part)

    def ratio(a, b):
        return a / b if a is not None and b else None

    out: dict = {"vllm_app_over_engine": {}}
    for n in results["user_levels"]:
        level = ((results["backends"].get("vllm") or {}).get("levels") or {}).get(str(n)) or {}
        eng = level.get("engine_direct")
        for part in [p for p in level if p == "app" or p.startswith("app_")]:
            app = level[part]
            if not (isinstance(app, dict) and eng):
                continue
            key = "vllm_app_over_engine" if part == "app" else f"vllm_{part}_over_engine"
            out.setdefault(key, {})[str(n)] = {
                "ttft_p50": ratio(app["ttft_p50_s"], eng["ttft_p50_s"]),
                "latency_p50": ratio(app["latency_p50_s"], eng["latency_p50_s"]),
                "tokens_per_s": ratio(app["tokens_per_s"], eng["tokens_per_s"]),
                "app_cpu_ms_per_token": app.get("app_cpu_ms_per_token")}
    one, eight = lvl("vllm", 1), lvl("vllm", 8)
    if one and eight:
        out["vllm_p95_at_8_over_p50_at_1"] = ratio(eight["latency_p95_s"], one["latency_p50_s"])
    b8 = lvl("batch", 8)
    if b8 and eight:
        out["batch_over_vllm_at_8"] = {k: ratio(b8[k], eight[k]) for k in ("latency_p50_s", "latency_p95_s", "tokens_per_s")}
    for n in results["user_levels"]:
        rows = {b: lvl(b, n) for b in results["backends"]}
        out.setdefault("errors_and_lost", {})[str(n)] = {
            b: {"errors": r["errors"], "lost_feedback_rows": r["lost_feedback_rows"]} for b, r in rows.items() if r}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--turns", type=int, default=2)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--skip-users", action="store_true")
    ap.add_argument("--load", action="store_true", help="part 3 only: the load benchmark of issue #18")
    ap.add_argument("--backends", default=",".join(LOAD_BACKENDS), help="--load: comma-separated, of "
                                                                        + ", ".join(LOAD_BACKENDS))
    ap.add_argument("--user-levels", default="1,8,32", help="--load: simulated users per level")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vllm-python", default=str(REPO / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "serve_load.json"))
    ap.add_argument("--every-token-app", action="store_true",
                    help="--load, vllm: also run this app with --stream-interval-ms 0 (an update per token)")
    ap.add_argument("--before-repo", metavar="DIR",
                    help="--load, vllm: also run the app of this checkout (e.g. a git worktree of an earlier commit)")
    ap.add_argument("--part-order", default="app,app_every_token,app_before",
                    help="--load, vllm: the order in which the apps run at each level (after the engine's own)")
    ap.add_argument("--app-overhead", action="store_true",
                    help="only the app's own CPU per streamed chunk, against a fake zero-cost engine (--users, "
                         "--before-repo; writes bench/results/serve_overhead.json)")
    ap.add_argument("--chunks", type=int, default=300, help="--app-overhead: streamed chunks per answer")
    a = ap.parse_args()
    if a.app_overhead:
        res = app_overhead(a.users, a.chunks, a.before_repo, REPO / "bench" / "results" / "serve_overhead.json")
        print(json.dumps({k: v for k, v in res.items() if k != "apps"} | {
            p: {k: r[k] for k in ("cpu_ms_per_chunk", "cpu_ms_per_answer", "errors")} for p, r in res["apps"].items()},
            indent=2), flush=True)
        return
    if a.load:
        backends = [b.strip() for b in a.backends.split(",") if b.strip()]
        unknown = [b for b in backends if b not in LOAD_BACKENDS]
        if unknown:
            ap.error(f"--backends: unknown {unknown}; use {', '.join(LOAD_BACKENDS)}"
                     + (" (the app's --batch was removed in issue #18)" if "batch" in unknown else ""))
        levels = [int(n) for n in a.user_levels.split(",")]
        variants = {}
        if a.every_token_app:
            variants["app_every_token"] = (REPO, ["--stream-interval-ms", "0"])
        if a.before_repo:
            variants["app_before"] = (Path(a.before_repo).resolve(), [])
        order = [p.strip() for p in a.part_order.split(",") if p.strip()]
        known = {"app", "app_every_token", "app_before"}
        if len(order) != len(set(order)) or "app" not in order or not set(order) <= known:
            ap.error("--part-order: each of app, app_every_token, app_before at most once, and app")
        res = load_benchmark(backends, levels, a.turns, a.max_new_tokens, a.seed, a.vllm_python, Path(a.out),
                             app_variants=variants, part_order=order)
        print(json.dumps(res["comparison"], indent=2), flush=True)
        return

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
        # one generation at a time, token streaming (many users: part 3, through an engine)
        for mode, settings in (("queued", ChatSettings(max_new_tokens=a.max_new_tokens, concurrency=1)),):
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
                "answered": len(lat), "errors": len(run["errors"]),
                "error_samples": run["errors"][:5],
                "latency_p50_s": pct(lat, 0.5) if lat else None, "latency_p95_s": pct(lat, 0.95) if lat else None,
                "wall_s": run["wall_s"], "thumbs_up_clicked": run["likes"], "confirmed_saved": run["saved"],
                "unratable_no_final_answer": run["unratable"],
                "feedback_rows": len(rows), "exported_desirable": summary["unpaired_desirable"],
                "lost_feedback_rows": run["saved"] - len(rows),
            }
            print(mode, json.dumps(results["concurrent_users"][mode], indent=2), flush=True)
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "serve.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
