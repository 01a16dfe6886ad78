"""The feedback loop, measured: rounds of simulated users -> retrain -> switch the running app -> held-out score.

    # the issue's measurement as run (bench/RESULTS.md, "The loop, measured"; hours on 2 CPU cores):
    # the app on vLLM's CPU engine (scripts/setup_vllm_cpu.sh), 8 simulated users at once, held-out
    # tasks scored 8 at a time on the engine the app serves from, SFT on what users liked with anchor
    # rows, 60 steps a round, KL bound stated before the run (--out: a new or empty folder)
    OMP_NUM_THREADS=2 python bench/bench_loop.py --rounds 3 --answers 200 --heldout 100 --checkpoint keel-agent \
        --engine vllm --concurrency 8 --keep-best --kl-prompts 32 --stage sft --anchor 0.5 --kl-bound 5 \
        --retrain-arg=--training.max_steps --retrain-arg=60 --plot docs/img/loop-rounds.png
    # in-process instead of vLLM (one task at a time: about 5 hours for 3 x 200)
    OMP_NUM_THREADS=1 python bench/bench_loop.py --rounds 3 --answers 200 --heldout 100 --checkpoint keel-agent \
        --stage sft --keep-best
    # a smoke run of every phase (minutes):
    OMP_NUM_THREADS=1 python bench/bench_loop.py --rounds 1 --answers 8 --heldout 8 --checkpoint keel-agent

What one run does:
  1. starts the app (``python -m serve``) on ``--checkpoint``, on a free port, with its own feedback
     database and ``--switch-root`` on this run's checkpoint folder;
  2. round 0: scores the served checkpoint on held-out tasks (the *test* split of the same kinds;
     the simulated users ask other questions of that split, ``--user-split test``, the default,
     with every held-out question left out, so no round sees a held-out task; ``--user-split
     train`` asks the training templates instead, which keel-agent already solves), scored with
     ``bench/bench_default_agent.py``'s ``score``/``summarise`` (success, format errors), agent settings
     as the app's (tools, ``--max-steps``, ``--max-new-tokens``, greedy, forced final answer);
  3. each round: ``python -m serve simulate`` logic (``serve.simulate.run``) sends ``--answers``
     questions from ``--users`` sessions and rates/edits/regenerates as the judge decides;
     ``python -m align retrain --from-feedback DB`` (KTO on the ratings and edits by default,
     ``--stage dpo`` for the pairs from edits and rated alternatives, ``--stage sft`` on the liked and
     edited answers: rejection-sampling fine-tuning) trains a new checkpoint, from the
     round-0 model on all the feedback so far (``--train-from round0``, default: no compounding of
     repeated data) or from the served one (``current``); the app is switched to it through its own
     switch event (the "Model" accordion's Load button, over HTTP); it is scored on the same held-out
     tasks, and its KL to the round-0 model is estimated on held-out prompts
     (``align.monitor.sample_and_kl``: mean over sampled answers of sum_t log pi/pi_0, nats per answer);
  4. a round whose held-out success falls by more than its noise (one binomial standard error of the
     difference) is reported as ``fell``; with ``--keep-best`` the app is switched back to the best
     checkpoint so far (restarted on it, with the same database, when that is the round-0 model, which
     is not under the switch root), which then serves the next round;
  5. with ``--gold`` (and ``--stage dpo --proxy``) each retrain runs the over-optimisation monitor
     (``align.monitor``: gold and proxy reward and KL on samples during training); its warnings are
     copied into the round's JSON.

With ``--engine vllm`` the app generates on vLLM (``python -m serve --engine vllm``, which restarts
the server on each new checkpoint) and the held-out tasks are scored on that same server, through
``agents.openai_llm.OpenAILLM`` with the checkpoint's chat template and the same grammar, so the
score is of exactly what the app serves; ``--concurrency N`` runs N simulated users (and N held-out
tasks) at once, and the app with ``--concurrency N``. The default (transformers) scores in this
process, one task at a time.

Writes ``OUT/round-<r>.json`` per round (simulation counts, what the app stored, retrain summary,
held-out scores, KL, wall time per phase), ``OUT/summary.json`` (with a projection of the wall time of
3 rounds x 200 answers from this run's per-unit times) and the curve ``OUT/loop-rounds.png``
(``--plot`` copies it, e.g. to ``docs/img/loop-rounds.png``). Baseline in the same run: round 0, the
checkpoint the loop started from; each round reports its success minus round 0's and the ratio.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def heldout_tasks(kinds: str, n: int, seed: int) -> list[dict]:
    from agents.tasks import arith_word_tasks, harmful_tasks, kb_tasks, plain_tasks

    if kinds == "arith":
        return arith_word_tasks(n, seed=seed, split="test")
    if kinds == "kb":
        return kb_tasks(n, seed=seed, split="test")
    if kinds == "hh":
        return harmful_tasks((n + 1) // 2, seed=seed, split="test") + plain_tasks(n // 2, seed=seed, split="test")
    raise SystemExit(f"--tasks {kinds}: held-out scoring knows arith, kb and hh")


def evaluate(ref: str, tasks: list[dict], max_steps: int, max_new_tokens: int, retriever) -> dict:
    """Held-out score of checkpoint ``ref``, run as the app runs it (agent, tools, greedy)."""
    from tqdm.auto import tqdm

    from agents.agent import ReActAgent, TransformersLLM
    from agents.tools import default_tools
    from align.models import load_policy
    from bench_default_agent import score, summarise

    model, tok, _ = load_policy(ref)
    constrained = True  # the app's default (agent.constrained), used when the LLM supports grammars
    llm = TransformersLLM(model, tok)
    agent = ReActAgent(llm, default_tools(retriever), max_steps=max_steps, max_new_tokens=max_new_tokens,
                       force_final_answer=True, constrained=constrained and getattr(llm, "supports_grammar", False))
    records = [score(t, agent.run(t["question"])) for t in tqdm(tasks, desc=f"held-out {Path(ref).name}")]
    return {**summarise(records), "records": records}


def user_tasks(a, r: int, users: int, held: list[dict], out: Path) -> str:
    """What round ``r``'s simulated users ask: ``a.tasks`` (from ``a.user_split``) or, from the test split, a task
    file ``OUT/users-<r>.jsonl`` of that split's questions less any held-out question (never scored on what a
    round trained on)."""
    from serve import simulate as sim

    if a.user_split == "train" or a.tasks not in ("arith", "kb", "hh"):
        return a.tasks
    asked = {t["question"] for t in held}
    pool = sim.load_tasks(a.tasks, 4 * users * a.turns + len(held), a.seed + 100 * r, "test")
    rows = [t for t in pool if t["question"] not in asked][:users * a.turns]
    if len(rows) < users * a.turns:
        raise SystemExit(f"[loop] round {r}: only {len(rows)} test-split questions besides the held-out ones")
    path = out / f"users-{r}.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in rows))
    return str(path)


def engine_of(app_log: Path) -> str:
    """The OpenAI base URL of the vLLM server an app started (``[keel] starting vLLM on X at URL;`` in its log)."""
    import re

    found = re.findall(r"starting vLLM on .* at (http://\S+/v1);", app_log.read_text(errors="replace"))
    if not found:
        raise SystemExit(f"[loop] {app_log} names no vLLM server: is the app running with --engine vllm?")
    return found[-1]


def evaluate_engine(ref: str, url: str, tasks: list[dict], max_steps: int, max_new_tokens: int, retriever,
                    concurrency: int) -> dict:
    """Held-out score of checkpoint ``ref`` as the app's vLLM server at ``url`` serves it: the same
    agent settings as ``evaluate``, generation on the server (``concurrency`` tasks at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from tqdm.auto import tqdm

    from agents.agent import ReActAgent
    from agents.openai_llm import OpenAILLM
    from agents.tools import default_tools
    from align.models import load_tokenizer, resolve_model
    from bench_default_agent import score, summarise
    from serve.engine import _lora_name

    source = resolve_model(ref)
    names = [m["id"] for m in httpx.get(f"{url}/models", timeout=30).json()["data"]]
    want = source.ref if source.kind in ("embedded", "hub") else _lora_name(source)
    if want not in names:
        raise SystemExit(f"[loop] the app's vLLM server at {url} serves {names}, not {ref} ({want})")
    llm = OpenAILLM(url, want, tokenizer=load_tokenizer(source, padding_side="left"), temperature=0.0, timeout_s=600)
    agent = ReActAgent(llm, default_tools(retriever), max_steps=max_steps, max_new_tokens=max_new_tokens,
                       force_final_answer=True, constrained=llm.supports_grammar)
    with ThreadPoolExecutor(concurrency) as pool:
        traces = list(tqdm(pool.map(lambda t: agent.run(t["question"]), tasks), total=len(tasks),
                           desc=f"held-out {Path(ref).name} on vLLM"))
    records = [score(t, tr) for t, tr in zip(tasks, traces)]
    return {**summarise(records), "records": records}


def kl_to_round0(ref: str, ref0: str, tasks: list[dict], max_new_tokens: int, seed: int, retriever=None,
                 only: tuple[str, ...] | None = None) -> dict:
    """Mean sampled KL(pi || pi_0) in nats per answer (``max_new_tokens`` sampled tokens at most),
    four ways. On the held-out questions: ``agent``, under the app's ReAct system prompt with its
    tools (``retriever``: the app's search tool too; the prompts the app serves and the loop trains
    on); ``chat``, the question alone (the chat template's default system prompt: drift off the
    agent's prompts, where the anchor rows of an SFT retrain are asked); ``app_chat``, under the
    app's plain-chat system prompt (``agents.agent.DEFAULT_SYSTEM_PROMPT``: the prompt users' edits
    are stored with, so their targets pull here). And ``plain_requests``: as many held-out open
    requests (``open_requests``: greetings, writing, translation), under the app's plain-chat
    prompt: drift on what no user rated. Same prompts and seeds for every checkpoint. ``only``:
    these ways alone (a later probe of a run's checkpoints)."""
    from agents.agent import DEFAULT_SYSTEM_PROMPT, react_system_prompt
    from agents.tools import default_tools
    from align.models import load_policy
    from align.monitor import sample_and_kl

    if ref == ref0:
        return {"agent": 0.0, "chat": 0.0, "app_chat": 0.0, "plain_requests": 0.0}
    policy, tok, _ = load_policy(ref, padding_side="left")
    reference, _, _ = load_policy(ref0, padding_side="left")
    system = react_system_prompt(default_tools(retriever))
    plain = open_requests(len(tasks), seed + 5000)
    ways = {"agent": [[{"role": "system", "content": system}, {"role": "user", "content": t["question"]}] for t in tasks],
            "chat": [[{"role": "user", "content": t["question"]}] for t in tasks],
            "app_chat": [[{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": t["question"]}]
                         for t in tasks],
            "plain_requests": [[{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                {"role": "user", "content": t["question"]}] for t in plain]}
    if only:
        ways = {w: ways[w] for w in only}
    out = {}
    for way, prompts in ways.items():
        kls = []
        for i in range(0, len(prompts), 4):
            _, kl = sample_and_kl(policy, reference, tok, prompts[i:i + 4], max_new_tokens, 1.0, seed=seed + i)
            kls.append(kl * len(prompts[i:i + 4]))
        out[way] = sum(kls) / len(prompts)
    return out


def open_requests(n: int, seed: int) -> list[dict]:
    """``n`` held-out open requests (``agents.tasks.plain_tasks``, test split): no checkable answer."""
    from agents.tasks import plain_tasks

    return plain_tasks(n, seed=seed, split="test")


@functools.lru_cache(maxsize=1)
def _scorer(rm_path: str):
    """The --open-judge reward model, loaded once per run (not once per round)."""
    from align.rewards import RewardModelScorer

    return RewardModelScorer(rm_path, batch_size=4)


def open_scores(rm_path: str, tasks: list[dict], answers: list[str]) -> dict:
    """Mean (and standard error) of a reward model's scores of each (question, answer); ``scores`` in order."""
    scorer = _scorer(rm_path)
    scores = [float(x) for x in scorer([[{"role": "user", "content": t["question"]}] for t in tasks], answers)]
    n = len(scores)
    mean = sum(scores) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in scores) / (n - 1)) if n > 1 else 0.0
    return {"judge": scorer.name, "n": n, "mean": round(mean, 4), "stderr": round(sd / math.sqrt(n), 4),
            "scores": [round(x, 4) for x in scores]}


def start_app(checkpoint: str, db: Path, roots: Path, port: int, args, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "serve", "--checkpoint", checkpoint, "--feedback-db", str(db), "--port", str(port),
           "--switch-root", str(roots), "--index", args.index, "--max-steps", str(args.max_steps),
           "--max-new-tokens", str(args.max_new_tokens), "--concurrency", str(args.concurrency)]
    if args.engine == "vllm":
        cmd += ["--engine", "vllm"] + (["--vllm-python", args.vllm_python] if args.vllm_python else [])
    return subprocess.Popen(cmd, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)


def switch(url: str, name: str) -> str:
    from serve.simulate import AppError, BrowserSession

    tab = BrowserSession(url)
    try:
        tab.trigger("switch-refresh", "click")  # as a user does: ↻ lists the new checkpoint, then choose it, Load
        tab.set_value("switch-to", name)
        tab.trigger("switch-load", "click")
        status = str(tab.value("switch-status") or "")
    finally:
        tab.close()
    if "Now serving" not in status:
        raise AppError(f"switching the app to {name} failed: {status}")
    return status


def plot(rounds: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["round"] for r in rounds]
    succ = [100 * r["heldout"]["success"] for r in rounds]
    err = [100 * r["heldout"]["stderr"] for r in rounds]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.errorbar(xs, succ, yerr=err, marker="o", capsize=3, label="held-out success (%)")
    ax.plot(xs, [100 * r["heldout"]["format_errors_per_task"] for r in rounds], marker="s", ls="--",
            label="format errors per 100 tasks")
    ax.set_xlabel("round")
    ax.set_ylabel("%")
    ax.set_xticks(xs)
    ax2 = ax.twinx()
    ax2.plot(xs, [r["kl_to_round0"] for r in rounds], color="tab:red", marker="^", label="KL to round 0, question alone")
    ax2.plot(xs, [r.get("kl_to_round0_agent", 0.0) for r in rounds], color="tab:purple", marker="v", ls=":",
             label="KL to round 0, agent prompt")
    ax2.set_ylabel("KL to round 0 (nats per answer)")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="best", fontsize=8)
    n = rounds[0]["heldout"]["tasks"]
    ax.set_title(f"Keel feedback loop: {rounds[-1].get('answers', 0)} answers/round, {n} held-out tasks")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--answers", type=int, default=200, help="simulated answers per round")
    p.add_argument("--turns", type=int, default=2, help="questions per simulated user")
    p.add_argument("--heldout", type=int, default=100, help="held-out tasks scored after each round")
    p.add_argument("--checkpoint", default="keel-agent", help="round-0 model")
    p.add_argument("--tasks", default="arith", help="arith | kb | hh (the simulated users' and held-out kinds)")
    p.add_argument("--judge", default="verifier", help="verifier | rm:PATH")
    p.add_argument("--stage", default="kto", choices=["kto", "dpo", "sft"],
                   help="retrain on ratings (kto), pairs (dpo), or the liked and edited answers (sft)")
    p.add_argument("--user-split", default="test", choices=["train", "test"],
                   help="the split the simulated users ask from: test (default: the held-out tasks' own kinds and "
                        "templates, other questions; any question equal to a held-out one is left out) or train "
                        "(the templates the agent was trained on, which it already solves)")
    p.add_argument("--train-from", default="round0", choices=["round0", "current"])
    p.add_argument("--edit-share", type=float, default=0.2)
    p.add_argument("--regenerate-share", type=float, default=0.2)
    p.add_argument("--keep-best", action="store_true", help="serve the best checkpoint so far after each round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--index", default="none", help="the app's retrieval index (kb tasks need 'default')")
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--kl-tokens", type=int, default=48, help="sampled tokens per answer for the KL estimate")
    p.add_argument("--kl-prompts", type=int, default=32, help="held-out prompts for the KL estimate (the first N)")
    p.add_argument("--kl-bound", type=float, default=5.0,
                   help="the stated bound on KL to round 0, nats per answer, on both ways of asking (reported per round)")
    p.add_argument("--open-judge", metavar="rm:PATH",
                   help="after each round, score the served model's answers to --open-requests held-out open requests "
                        "(plain requests, test split) with this reward model; reports the mean")
    p.add_argument("--open-requests", type=int, default=24)
    p.add_argument("--anchor", type=float, help="--stage sft: anchor rows per feedback row (align retrain --anchor; "
                                                "default retrain's 0.5, 0: off)")
    p.add_argument("--engine", default="transformers", choices=["transformers", "vllm"],
                   help="the app generates in process, or on vLLM (then held-out scoring uses the same server)")
    p.add_argument("--vllm-python", help="the Python of vLLM's venv (default: the app's, .venv-vllm/bin/python)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="simulated users (and held-out tasks) at once; the app's --concurrency")
    p.add_argument("--gold", help="gold reward (RM checkpoint, ensemble or module:function): runs the "
                                  "over-optimisation monitor in each round's retrain (DPO stage; needs --proxy)")
    p.add_argument("--proxy", help="proxy reward for the monitor (the reward the preference data stands for)")
    p.add_argument("--retrain-arg", action="append", default=[], help="extra `align retrain` flag (repeatable), "
                                                                         "e.g. --retrain-arg=--training.max_length=512")
    p.add_argument("--out", help="run folder (default runs/loop-<time>; a new or empty folder)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out after its last finished round: the app starts on the checkpoint "
                        "that round served, an unfinished round's feedback is set aside (the database is copied "
                        "first) and that round runs again")
    p.add_argument("--plot", help="also copy the curve here (e.g. docs/img/loop-rounds.png)")
    a = p.parse_args(argv)
    for flag, value in (("--rounds", a.rounds), ("--answers", a.answers), ("--turns", a.turns),
                        ("--heldout", a.heldout), ("--concurrency", a.concurrency), ("--kl-prompts", a.kl_prompts),
                        ("--open-requests", a.open_requests)):
        if value < 1:  # before the app starts or a run folder is made
            p.error(f"{flag} must be at least 1, got {value}")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    from serve import simulate as sim

    if a.open_judge is not None and (not a.open_judge.startswith("rm:") or len(a.open_judge) < 4):
        p.error(f"--open-judge {a.open_judge!r}: use rm:PATH (a reward model checkpoint)")
    if a.anchor is not None:
        if a.stage != "sft":
            p.error("--anchor: anchor rows are for --stage sft")
        if not (math.isfinite(a.anchor) and 0 <= a.anchor <= 10):
            p.error(f"--anchor {a.anchor}: give a share of the feedback rows from 0 (off) to 10")
        a.retrain_arg += ["--anchor", str(a.anchor)]
    if a.gold:
        if a.stage != "dpo" or not a.proxy:
            raise SystemExit("--gold: the over-optimisation monitor runs in DPO retrains (--stage dpo) and needs --proxy")
        a.retrain_arg += ["--monitor.gold", a.gold, "--monitor.proxy", a.proxy]
    out = Path(a.out or REPO / "runs" / f"loop-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    done: list[dict] = []
    if a.resume:
        if not a.out:
            p.error("--resume: name the run folder to continue with --out")
        done = finished_rounds(out)
        if not done:
            p.error(f"--resume: {out} has no round-0.json, so no finished round to continue from; start a new run")
        if len(done) > a.rounds:
            p.error(f"--resume: {out} already has rounds 0-{len(done) - 1}; ask for more with --rounds")
    elif out.exists() and any(out.iterdir()):
        # An earlier run's feedback.db would be read by every retrain as "all feedback so far", and
        # its checkpoints and round files mixed with this run's.
        p.error(f"--out {out}: the folder is not empty (an earlier run's feedback.db, checkpoints or round "
                "files would mix into this run); give a new or empty folder")
    roots = out / "ckpts"
    roots.mkdir(parents=True, exist_ok=True)
    db = out / "feedback.db"
    if done:
        set_aside_unfinished(out, db, len(done), done[-1]["ended_at"])
    retriever = None
    if a.index != "none":
        from retrieval.default_kb import open_default_index

        retriever = open_default_index(progress=False)
    held = heldout_tasks(a.tasks, a.heldout, a.seed + 1000)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    app_log = out / (f"app-resume-{len(done)}.log" if done else "app.log")
    served = done[-1].get("served_next", a.checkpoint) if done else a.checkpoint
    app = start_app(served, db, roots, port, a, app_log)
    rounds: list[dict] = []

    def score_served(ref: str, tasks: list[dict] | None = None) -> dict:
        tasks = held if tasks is None else tasks
        if a.engine == "vllm":
            return evaluate_engine(ref, engine_of(app_log), tasks, a.max_steps, a.max_new_tokens, retriever,
                                   a.concurrency)
        return evaluate(ref, tasks, a.max_steps, a.max_new_tokens, retriever)

    open_tasks = open_requests(a.open_requests, a.seed + 2000) if a.open_judge else []

    def judge_open(ref: str) -> dict | None:
        """The served model's answers to held-out open requests, scored by --open-judge's reward model."""
        if not a.open_judge:
            return None
        ev = score_served(ref, open_tasks)
        return open_scores(a.open_judge[3:], open_tasks, [r["answer"] for r in ev["records"]])

    try:
        sim.wait_for_app(url, timeout=900, proc=app)
        startup_s = time.perf_counter() - t0
        print(f"[loop] app on {url} after {startup_s:.0f} s; run folder {out}"
              + (f"; resuming after round {len(done) - 1}, serving {served}" if done else ""), flush=True)
        if done:
            rounds = list(done)
            r0 = best = rounds[0]
            for row in rounds[1:]:
                if round_verdict(row["heldout"], row["heldout"], best["heldout"])["new_best"]:
                    best = row
        else:
            t = time.perf_counter()
            ev = score_served(a.checkpoint)
            r0 = {"round": 0, "checkpoint": a.checkpoint, "served": a.checkpoint, "answers": 0,
                  "heldout": _heldout(ev), "kl_to_round0": 0.0, "kl_to_round0_agent": 0.0,
                  "kl_to_round0_app_chat": 0.0, "kl_to_round0_plain_requests": 0.0,
                  "wall_s": {"app_start": round(startup_s, 1), "heldout": round(time.perf_counter() - t, 1)}}
            t = time.perf_counter()
            r0["open_requests"] = judge_open(a.checkpoint)
            if a.open_judge:
                r0["wall_s"]["open"] = round(time.perf_counter() - t, 1)
            r0["ended_at"] = time.time()
            (out / "round-0.json").write_text(json.dumps({**r0, "records": ev["records"]}, indent=2))
            rounds.append(r0)
            print(f"[loop] round 0: held-out success {r0['heldout']['success']:.3f}", flush=True)
            best = r0
        users = max(1, math.ceil(a.answers / a.turns))
        for r in range(len(rounds), a.rounds + 1):
            wall = {}
            t = time.perf_counter()
            report = sim.run(url, user_tasks(a, r, users, held, out), users, a.turns, a.judge, seed=a.seed + r,
                             edit_share=a.edit_share, regenerate_share=a.regenerate_share, db=str(db),
                             report=str(out / f"simulate-{r}.json"), concurrency=a.concurrency, split=a.user_split)
            wall["simulate"] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            ckpt_dir = roots / f"round-{r}"
            parent = a.checkpoint if a.train_from == "round0" else served
            cmd = [sys.executable, "-m", "align", "retrain", "--from-feedback", str(db),
                   "--config", str(REPO / "configs" / f"{a.stage}.yaml"), "--output_dir", str(ckpt_dir),
                   "--model", parent, *a.retrain_arg]
            # the retrain's MKL threads follow OpenMP's (the app's vLLM keeps MKL 1: with 2 its simulated answers
            # took 2-3x longer). Same SFT, same machine, minutes apart: MKL 1 ran on one core at 46 s per step,
            # MKL 2 at 28-37 s per step.
            env = {**os.environ, "MKL_NUM_THREADS": os.environ["OMP_NUM_THREADS"]}
            with (out / f"retrain-{r}.log").open("w") as log:
                rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
            wall["retrain"] = round(time.perf_counter() - t, 1)
            if rc != 0:
                tail = (out / f"retrain-{r}.log").read_text()[-600:]
                raise SystemExit(f"[loop] round {r}: retrain failed (exit {rc}); {out}/retrain-{r}.log ends:\n{tail}")
            new = str(ckpt_dir / "model")
            t = time.perf_counter()
            switch(url, f"{roots.name}/round-{r}/model")
            wall["switch"] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            ev = score_served(new)
            wall["heldout"] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            kls = kl_to_round0(new, a.checkpoint, held[:a.kl_prompts], a.kl_tokens, a.seed, retriever)
            kl = kls["chat"]
            wall["kl"] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            opened = judge_open(new)
            if a.open_judge:
                wall["open"] = round(time.perf_counter() - t, 1)
            h = _heldout(ev)
            prev = rounds[-1]["heldout"]
            verdict = round_verdict(prev, h, best["heldout"])
            row = {"round": r, "stage": a.stage, "checkpoint": new, "parent": parent, "answers": report["counts_sent"]["answers"],
                   "counts_sent": report["counts_sent"], "stored": report.get("stored"),
                   "stored_vs_sent": report.get("stored_vs_sent"), "judge_accept_rate": report["judge_accept_rate"],
                   "retrain_summary": _json(ckpt_dir / "feedback" / "summary.json"), "heldout": h,
                   "monitor_warnings": [line for line in (out / f"retrain-{r}.log").read_text().splitlines()
                                        if "[keel] WARNING" in line],
                   "open_requests": opened,
                   "kl_to_round0": round(kl, 4), "kl_to_round0_agent": round(kls["agent"], 4),
                   "kl_to_round0_app_chat": round(kls["app_chat"], 4),
                   "kl_to_round0_plain_requests": round(kls["plain_requests"], 4),
                   "kl_within_bound": kl <= a.kl_bound and kls["agent"] <= a.kl_bound, "change_vs_previous": round(h["success"] - prev["success"], 4),
                   "noise": round(verdict["noise"], 4), "fell": verdict["fell"],
                   "vs_round0": {"difference": round(h["success"] - r0["heldout"]["success"], 4),
                                 "ratio": round(h["success"] / r0["heldout"]["success"], 3)
                                 if r0["heldout"]["success"] else None}}
            if row["fell"]:
                print(f"[loop] round {r}: held-out success FELL {prev['success']:.3f} -> {h['success']:.3f} "
                      f"(noise {verdict['noise']:.3f})", flush=True)
            served = new
            if verdict["new_best"]:
                best = row
            elif a.keep_best and best is not row:
                t = time.perf_counter()
                if best["round"] == 0:  # not under the switch root: restart the app on it (same database)
                    app.terminate()
                    app.wait(60)
                    app_log = out / f"app-{r}.log"
                    app = start_app(a.checkpoint, db, roots, port, a, app_log)
                    sim.wait_for_app(url, timeout=900, proc=app)
                    served = a.checkpoint
                    row["kept"] = "round 0 (app restarted on it)"
                else:
                    switch(url, f"{roots.name}/round-{best['round']}/model")
                    served = best["checkpoint"]
                    row["kept"] = f"round {best['round']}"
                wall["keep_best_switch"] = round(time.perf_counter() - t, 1)
            row["served_next"] = served
            row["wall_s"] = wall
            row["ended_at"] = time.time()
            rounds.append(row)
            (out / f"round-{r}.json").write_text(json.dumps({**row, "records": ev["records"]}, indent=2))
            print(f"[loop] round {r}: held-out success {h['success']:.3f} (round 0 {r0['heldout']['success']:.3f}), "
                  f"KL {kl:.3f} question alone, {kls['agent']:.3f} agent prompt (bound {a.kl_bound:g}); "
                  f"{kls['app_chat']:.3f} app's plain chat, {kls['plain_requests']:.3f} open requests"
                  + (f", open requests {opened['judge']} mean {opened['mean']:.3f}" if opened else "")
                  + f", wall {wall}", flush=True)
    finally:
        app.terminate()
        try:
            app.wait(30)
        except subprocess.TimeoutExpired:
            app.kill()
    summary = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
               "checkpoint": a.checkpoint, "tasks": a.tasks, "user_split": a.user_split, "stage": a.stage,
               "train_from": a.train_from, "kl_bound": a.kl_bound, "anchor": a.anchor,
               "best_round": best["round"], "rounds": rounds, "projection": project(rounds, a.heldout)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if len(rounds) > 1:
        plot(rounds, out / "loop-rounds.png")
        if a.plot:
            Path(a.plot).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / "loop-rounds.png", a.plot)
    print(json.dumps({"projection": summary["projection"], "best_round": best["round"]}, indent=2))
    return 0


def finished_rounds(out: Path) -> list[dict]:
    """The rounds a run folder finished: ``round-0.json``, ``round-1.json``, ... while they exist, each without
    its per-task records, with ``ended_at`` (seconds since the epoch; the file's time for runs before it was
    recorded)."""
    rounds = []
    while (path := out / f"round-{len(rounds)}.json").is_file():
        row = json.loads(path.read_text())
        row.pop("records", None)
        row.setdefault("ended_at", path.stat().st_mtime)
        rounds.append(row)
    return rounds


def set_aside_unfinished(out: Path, db: Path, r: int, since: float) -> None:
    """Before round ``r`` runs again: copy ``db`` to ``feedback-before-resume-<time>.db``, then delete from it
    the answers and feedback stored after ``since`` (when round ``r - 1`` ended: what an unfinished round's
    users sent, which its retrain would otherwise read twice), and that round's partial files and checkpoint."""
    import sqlite3
    from contextlib import closing

    from serve.feedback import FeedbackStore

    if db.is_file():
        keep = out / f"feedback-before-resume-{time.strftime('%Y%m%d-%H%M%S')}.db"
        with closing(sqlite3.connect(db)) as src, closing(sqlite3.connect(keep)) as dst:
            src.backup(dst)  # consistent with the WAL, unlike a file copy
        store = FeedbackStore(db)
        try:
            n = store.remove_after(since)
        finally:
            store.close()
        print(f"[loop] resume: set aside round {r}'s unfinished feedback ({n['responses']} answers, {n['feedback']} "
              f"ratings, edits and regenerates; the database before: {keep.name})", flush=True)
    for name in (f"users-{r}.jsonl", f"simulate-{r}.json", f"retrain-{r}.log"):
        (out / name).unlink(missing_ok=True)
    for folder in [out / "ckpts" / f"round-{r}", *(out / "ckpts").glob(".retrain-*")]:
        shutil.rmtree(folder, ignore_errors=True)


def round_verdict(prev: dict, new: dict, best: dict) -> dict:
    """Did a round's held-out success fall, and is it the best so far? ``prev``/``new``/``best`` are
    held-out summaries ``{"success", "stderr"}`` (fractions). ``noise`` is the standard error of the
    difference of two binomial proportions; ``fell``: the success dropped by more than that;
    ``new_best``: strictly better than the best so far (a tie keeps the earlier, already-served one)."""
    noise = math.sqrt(prev["stderr"] ** 2 + new["stderr"] ** 2)
    return {"noise": noise, "fell": new["success"] < prev["success"] - noise, "new_best": new["success"] > best["success"]}


def _heldout(ev: dict) -> dict:
    n, s = ev["tasks"], ev["success"]
    return {"tasks": n, "success": s, "stderr": math.sqrt(max(s * (1 - s), 1e-12) / n),
            "format_errors_per_task": ev["format_errors_per_task"], "mean_steps": ev["mean_steps"]}


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def project(rounds: list[dict], heldout: int, answers: int = 200, n_rounds: int = 3, target_heldout: int = 100) -> dict:
    """Wall time of ``n_rounds`` x ``answers`` from this run's per-answer, per-row (KTO rows or DPO pairs)
    and per-task times."""
    done = [r for r in rounds if r["round"] > 0]
    if not done:
        return {}
    per_answer = sum(r["wall_s"]["simulate"] for r in done) / max(1, sum(r["answers"] for r in done))
    rows = [((r.get("retrain_summary") or {}).get("pairs" if r.get("stage") == "dpo" else "unpaired_rows") or 1)
            for r in done]
    per_row = sum(r["wall_s"]["retrain"] for r in done) / max(1, sum(rows))
    per_task = sum(r["wall_s"]["heldout"] for r in rounds) / (len(rounds) * heldout)
    per_kl = sum(r["wall_s"]["kl"] for r in done) / (len(done) * heldout)
    rows_per_answer = sum(rows) / max(1, sum(r["answers"] for r in done))
    seconds = 0.0
    for k in range(1, n_rounds + 1):  # the retrain sees all feedback so far
        seconds += per_answer * answers + per_row * rows_per_answer * answers * k
        seconds += (per_task + per_kl) * target_heldout
    seconds += per_task * target_heldout  # round 0
    return {"rounds": n_rounds, "answers_per_round": answers, "heldout": target_heldout,
            "s_per_answer": round(per_answer, 2), "retrain_s_per_row": round(per_row, 2),
            "heldout_s_per_task": round(per_task, 2), "kl_s_per_task": round(per_kl, 2),
            "total_hours": round(seconds / 3600, 1),
            "note": "linear in answers/rows/tasks from this run's times; retrain has a fixed start-up cost too, so "
                    "the per-row rate of a tiny run overstates it"}


if __name__ == "__main__":
    raise SystemExit(main())
