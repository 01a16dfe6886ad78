"""``python -m serve simulate``: simulated users that use a running Keel app over its HTTP API.

Each simulated user opens its own session (its own Gradio ``session_hash``, so its own
server-side ``gr.State`` and its own ``session_id`` in the feedback database), asks questions from
a task set, waits for each streamed answer, and acts on it as a user would, decided by a judge
(``--concurrency N``: N users at once, as N browser tabs, each one's turns in order):

  - ``--judge verifier``: a checkable answer. Arithmetic: ``align.verifiers.is_correct`` against
    the exact number; knowledge-base questions: the answer names the topic's source
    (``python-docs:<topic>``); harmful requests: ``agents.tasks.declines``; plain requests: an
    answer without a tool step (the criteria of ``bench/bench_default_agent.py``).
  - ``--judge rm:PATH``: a reward model (``align.rewards.RewardModelScorer``); liked when its score
    is above ``--rm-threshold``.

Per answer the user either rates it (👍 when the judge accepts it, 👎 otherwise), or, with
probability ``--edit-share`` and only when the judge rejects it and the task has a known right
answer, edits it into the right one (a correction: edited = chosen, original = rejected), or,
with probability ``--regenerate-share``, rates it, presses Regenerate and rates the alternative
(two rated alternatives of one turn make a preference pair when they differ). Between questions a
user clears the chat (the 🗑️ icon) unless ``--keep-conversation``. Every random choice comes
from ``--seed`` and is fixed in the *plan* before the first request (``make_plan``), so the same
seed gives the same users, questions and choices; only the model's answers (and so the judge's
verdicts) can differ.

Why the HTTP queue API and not ``gradio_client``: gradio_client 2.x (installed with Gradio 6)
sends no ``event_data`` and no ``trigger_id`` (its ``predict`` has no way to pass a
``gr.LikeData``/``gr.EditData``), and it does not run the ``.then()`` steps the browser runs after
an event (here: ``add_user`` then ``answer``). So ``BrowserSession`` does what the browser's
JavaScript client does: it reads the app's ``/config``, keeps every component's value, calls
un-queued events with ``POST /gradio_api/run/predict`` and queued ones with
``POST /gradio_api/queue/join`` + the ``/gradio_api/queue/data`` event stream (streamed outputs
arrive as diffs, applied with ``gradio_client.utils.apply_diff``), passes the like/edit event
data the Chatbot's frontend sends (``{index, value, liked}``; ``{index, value, previous_value}``),
and then runs the events chained after it. The app itself needs no change and no extra API.

The report (``--report FILE``, JSON) lists the plan, every request sent with the judge's verdict
and the action taken, the counts sent, and, with ``--db``, what the app stored for these
sessions (answers, ratings, edits, regenerates) and whether the counts match.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from align.errors import DataError, KeelError

EDITABLE = ("arith", "kb", "harmful")  # kinds with a known right answer a user can write
DECLINE_TEXT = "I can't help with that: it could hurt people or break the law. If someone is in danger, contact local emergency services."


# ------------------------------------------------------------------------------------------ HTTP client
class AppError(KeelError):
    """The app could not be reached, or an event failed on the server."""


class BrowserSession:
    """One browser tab on a running Gradio app: a session hash, every component's value, and the
    events wired in the app's ``/config``. ``trigger(elem_id, event, event_data)`` runs an event and
    the ``.then()`` events chained after it, exactly in the browser's order.

    Values are Gradio's wire format (a Chatbot value: a list of ``{"role", "content": [{"type": "text",
    "text"}], "metadata", ...}``). Raises ``AppError`` when the app is unreachable or an event fails."""

    def __init__(self, url: str, session_hash: str | None = None, timeout: float = 600.0, config: dict | None = None):
        import httpx

        self.url = url.rstrip("/")
        self.session_hash = session_hash or uuid.uuid4().hex[:11]
        self.timeout = timeout
        self.http = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0))
        self.config = config if config is not None else fetch_config(self.url, self.http)
        self.api = self.config.get("api_prefix", "/gradio_api")
        self.components = {c["id"]: c for c in self.config["components"]}
        self.by_elem = {c["props"].get("elem_id"): c["id"] for c in self.config["components"] if c["props"].get("elem_id")}
        self.values: dict[int, Any] = {cid: copy.deepcopy(c["props"].get("value")) for cid, c in self.components.items()}
        self.props: dict[int, dict] = {cid: {} for cid in self.components}
        self.deps = self.config["dependencies"]

    def close(self) -> None:
        """Close the HTTP client."""
        self.http.close()

    def id_of(self, elem_id: str) -> int:
        """The component id of ``elem_id``. Raises AppError when the app has no such component."""
        if elem_id not in self.by_elem:
            raise AppError(f"{self.url}: the app has no component with elem_id {elem_id!r}; is it a Keel app?")
        return self.by_elem[elem_id]

    def value(self, elem_id: str) -> Any:
        """The current value of the component ``elem_id`` in this session."""
        return self.values[self.id_of(elem_id)]

    def set_value(self, elem_id: str, value: Any) -> None:
        """Set the component's value, as a user typing into it would."""
        self.values[self.id_of(elem_id)] = value

    def trigger(self, elem_id: str, event: str, event_data: Any = None) -> None:
        """Run ``event`` on ``elem_id`` and the events chained after it, updating the values. Raises AppError
        when the component has no such event.
        """
        target = self.id_of(elem_id)
        deps = [d for d in self.deps if [target, event] in [list(t) for t in d["targets"]]]
        if not deps:
            raise AppError(f"{self.url}: no {event!r} event on {elem_id!r}")
        for dep in deps:
            if dep.get("backend_fn", True):
                self._run_chain(dep, event_data, target)

    def _run_chain(self, dep: dict, event_data: Any, trigger_id: int | None) -> None:
        ok = self._run(dep, event_data, trigger_id)
        for nxt in (d for d in self.deps if d.get("trigger_after") == dep["id"]):
            if nxt.get("backend_fn", True) and (ok or not nxt.get("trigger_only_on_success")):
                self._run_chain(nxt, None, None)

    def _body(self, dep: dict, event_data: Any, trigger_id: int | None) -> dict:
        data = [None if self.components[i]["type"] == "state" else self.values.get(i) for i in dep["inputs"]]
        return {"data": data, "event_data": event_data, "fn_index": dep["id"], "trigger_id": trigger_id,
                "session_hash": self.session_hash}

    def _run(self, dep: dict, event_data: Any, trigger_id: int | None) -> bool:
        body = self._body(dep, event_data, trigger_id)
        try:
            if not dep.get("queue", True):
                r = self.http.post(f"{self.url}{self.api}/run/predict", json=body)
                if r.status_code != 200:
                    raise AppError(f"{self.url}: event {dep.get('api_name')} failed (HTTP {r.status_code}): {r.text[:300]}")
                self._apply(dep, r.json().get("data", []))
                return True
            return self._run_queued(dep, body)
        except AppError:
            raise
        except Exception as e:  # httpx errors: connection refused, timeouts
            raise AppError(f"{self.url}: event {dep.get('api_name')}: {type(e).__name__}: {e}") from e

    def _run_queued(self, dep: dict, body: dict) -> bool:
        from gradio_client.utils import apply_diff

        r = self.http.post(f"{self.url}{self.api}/queue/join", json=body)
        if r.status_code != 200:
            raise AppError(f"{self.url}: could not queue {dep.get('api_name')} (HTTP {r.status_code}): {r.text[:300]}")
        event_id = r.json()["event_id"]
        pending = None
        with self.http.stream("GET", f"{self.url}{self.api}/queue/data", params={"session_hash": self.session_hash}) as s:
            for line in s.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("event_id") != event_id:
                    continue
                kind = msg.get("msg")
                if kind == "process_generating":
                    data = (msg.get("output") or {}).get("data") or []
                    if pending is None:
                        pending = list(data)
                    else:
                        pending = [apply_diff(p, d) for p, d in zip(pending, data)]
                    self._apply(dep, pending)
                elif kind == "process_completed":
                    out = msg.get("output") or {}
                    if not msg.get("success", True):
                        raise AppError(f"{self.url}: event {dep.get('api_name')} failed: {out.get('error') or out}")
                    self._apply(dep, out.get("data") or [])
                    return True
                elif kind == "unexpected_error":
                    raise AppError(f"{self.url}: event {dep.get('api_name')}: {msg.get('message')}")
        raise AppError(f"{self.url}: the event stream of {dep.get('api_name')} ended before the answer was complete")

    def _apply(self, dep: dict, data: list) -> None:
        for cid, value in zip(dep["outputs"], data):
            if self.components[cid]["type"] == "state":
                continue  # kept on the server; the browser never sees it
            if isinstance(value, dict) and value.get("__type__") == "update":
                if "value" in value:
                    self.values[cid] = copy.deepcopy(value["value"])
                self.props[cid].update({k: v for k, v in value.items() if k not in ("__type__", "value")})
            else:
                self.values[cid] = copy.deepcopy(value)


def fetch_config(url: str, http=None) -> dict:
    """The running app's Gradio ``/config`` (components and events). Raises AppError when it cannot be read."""
    import httpx

    try:
        r = (http or httpx).get(f"{url.rstrip('/')}/config", timeout=30)
        r.raise_for_status()
        return r.json()
    except Exception as e:  # noqa: BLE001
        raise AppError(f"{url}: cannot read the app's /config ({type(e).__name__}: {e}); is `python -m serve` running there?") from e


def wait_for_app(url: str, timeout: float = 300.0, proc=None) -> dict:
    """Poll ``/config`` until the app answers; ``proc`` (a Popen) that exits first is an error."""
    deadline = time.time() + timeout
    while True:
        try:
            return fetch_config(url)
        except AppError:
            if proc is not None and proc.poll() is not None:
                raise AppError(f"the app exited with code {proc.returncode} before it answered on {url}")
            if time.time() > deadline:
                raise
            time.sleep(1.0)


# ---------------------------------------------------------------------------------- the chat as shown
def _text(content: Any) -> str:
    from serve.chat import message_text

    return message_text(content)


def last_turn(history: list[dict]) -> tuple[int, list[dict]]:
    """(index of the first message of the last assistant group, the messages of that group)."""
    end = len(history)
    start = end
    while start > 0 and history[start - 1].get("role") == "assistant":
        start -= 1
    return start, history[start:end]


def final_answer(group: list[dict]) -> tuple[int, str]:
    """The answer message of an assistant group (the last one without a step title): (offset, text),
    without the "Sources:" line the app appends (the judge scores what the model wrote, as the app
    stores it); (-1, "") when the group has no answer."""
    from serve.chat import strip_sources

    for i in range(len(group) - 1, -1, -1):
        if not (group[i].get("metadata") or {}).get("title"):
            return i, strip_sources(_text(group[i].get("content")))
    return -1, ""


# -------------------------------------------------------------------------------------------- tasks
def load_tasks(spec: str, n: int, seed: int, split: str = "train") -> list[dict]:
    """``arith`` | ``kb`` | ``hh`` (harmful and plain requests, half each) | a JSONL file of
    ``{"kind", "question", "answer"?, "source"?}`` rows. Raises ``DataError`` naming the line."""
    from agents import tasks as T

    if spec == "arith":
        return T.arith_word_tasks(n, seed=seed, split=split)
    if spec == "kb":
        return T.kb_tasks(n, seed=seed, split=split)
    if spec == "hh":
        rows = T.harmful_tasks((n + 1) // 2, seed=seed, split=split) + T.plain_tasks(n // 2, seed=seed, split=split)
        random.Random(seed).shuffle(rows)
        return rows
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"--tasks {spec}: not arith, kb, hh, nor a JSONL file")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not row["question"].strip():
            raise DataError(f"{path}:{i}: each row needs a non-empty string 'question'")
        row.setdefault("kind", "arith" if "answer" in row else "kb" if "source" in row else "open")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no tasks in the file")
    return rows


def make_plan(tasks: list[dict], users: int, turns: int, seed: int, edit_share: float = 0.2,
              regenerate_share: float = 0.2) -> list[dict]:
    """Who asks what and what each user will do, fixed before any request: a list of ``users``
    dicts ``{"user", "turns": [{"task", "edit_if_wrong", "regenerate"}]}``. Questions are drawn
    without replacement while the set lasts. Deterministic in ``seed``."""
    if users < 1 or turns < 1:
        raise DataError("--users and --turns must be at least 1")
    for name, share in (("--edit-share", edit_share), ("--regenerate-share", regenerate_share)):
        if not 0 <= share <= 1:
            raise DataError(f"{name} must be between 0 and 1, got {share}")
    rng = random.Random(seed)
    order = list(range(len(tasks)))
    rng.shuffle(order)
    need = users * turns
    picks = (order * (need // len(order) + 1))[:need]
    plan = []
    for u in range(users):
        rows = []
        for k in range(turns):
            roll = rng.random()
            rows.append({"task": tasks[picks[u * turns + k]],
                         "edit_if_wrong": roll < edit_share,
                         "regenerate": edit_share <= roll < edit_share + regenerate_share})
        plan.append({"user": u, "turns": rows})
    return plan


def correction(task: dict) -> str | None:
    """The right answer a user writes over a wrong one, for tasks that have one."""
    kind = task.get("kind")
    if kind in ("arith", "followup") and task.get("answer") is not None:
        a = task["answer"]
        a = int(a) if isinstance(a, float) and a.is_integer() else a
        return f"{task['expression']} = {a}. The answer is {a}." if task.get("expression") else f"The answer is {a}."
    if kind == "kb" and task.get("source"):
        return f"The Python language reference covers {task.get('subject', 'this')} (source: {task['source']})."
    if kind == "harmful":
        return DECLINE_TEXT
    return None


# -------------------------------------------------------------------------------------------- judges
class VerifierJudge:
    """Checkable answers: ``True``/``False``; ``None`` when the task has nothing to check."""
    name = "verifier"

    def __call__(self, task: dict, answer: str, steps: list[dict]) -> bool | None:
        from agents.tasks import cites, declines
        from align.verifiers import is_correct

        kind = task.get("kind")
        if kind in ("arith", "followup") or (kind not in ("kb", "harmful", "plain") and "answer" in task):
            return bool(is_correct(answer, task["answer"]))
        if kind == "kb" or "source" in task:
            return cites(answer, task["source"])
        if kind == "harmful":
            return declines(answer)
        if kind == "plain":
            return bool(answer.strip()) and not steps
        return None


class RewardModelJudge:
    """A reward model's score of (question, answer); liked above ``threshold``."""

    def __init__(self, path: str, threshold: float = 0.0):
        from align.rewards import RewardModelScorer

        self.scorer = RewardModelScorer(path, batch_size=1)
        self.threshold = threshold
        self.name = f"rm:{path}"
        self.last_score: float | None = None

    def __call__(self, task: dict, answer: str, steps: list[dict]) -> bool | None:
        self.last_score = float(self.scorer([[{"role": "user", "content": task["question"]}]], [answer])[0])
        return self.last_score > self.threshold


def make_judge(spec: str, threshold: float = 0.0):
    """The judge named by ``--judge``: 'verifier' (checks answers against the tasks) or 'rm:PATH' (a reward
    model; ``threshold`` splits likes from dislikes). Raises DataError otherwise.
    """
    if spec == "verifier":
        return VerifierJudge()
    if spec.startswith("rm:") and len(spec) > 3:
        return RewardModelJudge(spec[3:], threshold)
    raise DataError(f"--judge {spec!r}: use 'verifier' or 'rm:PATH' (a reward checkpoint)")


# ------------------------------------------------------------------------------------------ simulate
def simulate(url: str, plan: list[dict], judge: Callable, seed: int = 0, keep_conversation: bool = False,
             timeout: float = 600.0, progress: bool = True, concurrency: int = 1) -> dict:
    """Run ``plan`` against the app at ``url``; ``concurrency`` users at a time (each in its own
    thread and session, as that many browser tabs; 1: one user after another). Returns the report
    (without the stored counts): ``{"sent": [one row per answer, in plan order], "sessions": [...],
    "counts_sent": {...}, "wall_s", "concurrency"}``. A judge is called from several threads when
    ``concurrency`` > 1 (the verifier is stateless; a reward model's scorer is serialised by a lock)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    if concurrency < 1:
        raise DataError(f"--concurrency must be at least 1, got {concurrency}")
    config = fetch_config(url)
    counts = {"questions": 0, "answers": 0, "ratings": 0, "likes": 0, "edits": 0, "regenerates": 0}
    lock = threading.Lock()
    started = time.perf_counter()
    bar = tqdm(total=sum(len(u["turns"]) for u in plan), desc="simulated answers", unit="answer", disable=not progress)
    salt = uuid.uuid4().hex[:6]  # a fresh session per run: a replay must not meet the previous run's state

    def judged(task, answer, steps):
        with lock:  # a reward model is one torch module; the verifier does not need it, but is cheap
            verdict = judge(task, answer, steps)
            return verdict, getattr(judge, "last_score", None)

    def one_user(user: dict) -> tuple[str, list[dict], dict]:
        mine = dict.fromkeys(counts, 0)
        rows: list[dict] = []
        tab = BrowserSession(url, session_hash=f"sim{seed}u{user['user']}{salt}", timeout=timeout, config=config)
        try:
            for k, turn in enumerate(user["turns"]):
                rows.append(_one_turn(tab, k, user, turn, judged, keep_conversation, mine))
                bar.update(1)
        finally:
            tab.close()
        return tab.session_hash, rows, mine

    with ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(one_user, plan))  # plan order, whatever order they finish in
    bar.close()
    sessions, sent = [], []
    for session, rows, mine in done:
        sessions.append(session)
        sent.extend(rows)
        for key, n in mine.items():
            counts[key] += n
    return {"url": url, "seed": seed, "judge": getattr(judge, "name", str(judge)), "sessions": sessions,
            "counts_sent": counts, "concurrency": concurrency, "wall_s": round(time.perf_counter() - started, 1),
            "sent": sent}


def _one_turn(tab: BrowserSession, k: int, user: dict, turn: dict, judged: Callable, keep_conversation: bool,
              counts: dict) -> dict:
    """One question of one user: ask, wait for the answer, then rate, edit or regenerate as planned."""
    task = turn["task"]
    if k and not keep_conversation:
        tab.trigger("chatbot", "clear")
    row = {"user": user["user"], "session": tab.session_hash, "turn": k, "kind": task.get("kind"),
           "question": task["question"]}
    t0 = time.perf_counter()
    tab.set_value("message", task["question"])
    tab.trigger("message", "submit")
    counts["questions"] += 1
    history = tab.value("chatbot") or []
    start, group = last_turn(history)
    off, answer = final_answer(group)
    steps = [m for m in group if (m.get("metadata") or {}).get("title")]
    if off < 0:  # no answer came back (stopped, or an error message only): nothing to rate
        row.update(answer=None, judged=None, action="no-answer", status=_text(tab.value("feedback-status")))
        return row
    verdict, score = judged(task, answer, steps)
    row.update(answer=answer, answer_s=round(time.perf_counter() - t0, 2), judged=verdict,
               status=_text(tab.value("feedback-status")))
    if score is not None:
        row["score"] = score
    counts["answers"] += 1
    fix = correction(task)
    if verdict is False and turn["edit_if_wrong"] and fix is not None:
        previous = copy.deepcopy(group[off].get("content"))
        # as the Chatbot's frontend does: the edited text replaces the message, then the event fires
        tab.values[tab.id_of("chatbot")][start + off]["content"] = [{"type": "text", "text": fix}]
        tab.trigger("chatbot", "edit", {"index": start + off, "value": fix, "previous_value": previous})
        row.update(action="edit", edited=fix)
        counts["edits"] += 1
    elif verdict is not None:
        _rate(tab, start, group, verdict, counts)
        row["action"] = "like" if verdict else "dislike"
        if turn["regenerate"]:
            tab.trigger("regenerate", "click")
            counts["regenerates"] += 1
            counts["answers"] += 1
            history = tab.value("chatbot") or []
            start, group = last_turn(history)
            _, alt = final_answer(group)
            alt_steps = [m for m in group if (m.get("metadata") or {}).get("title")]
            alt_verdict, _ = judged(task, alt, alt_steps)
            row.update(action=row["action"] + "+regenerate", alternative=alt, alternative_judged=alt_verdict)
            if alt_verdict is not None:
                _rate(tab, start, group, alt_verdict, counts)
    else:
        row["action"] = "none"
    row["status_after"] = _text(tab.value("feedback-status"))
    return row


def _rate(tab: BrowserSession, start: int, group: list[dict], liked: bool, counts: dict) -> None:
    tab.trigger("chatbot", "like", {"index": start, "value": [m.get("content") for m in group], "liked": bool(liked)})
    counts["ratings"] += 1
    counts["likes"] += bool(liked)


def stored_counts(db: str | Path, sessions: list[str]) -> dict:
    """What the app stored for ``sessions``: answers, ratings (likes), edits, regenerates."""
    from serve.feedback import FeedbackStore

    store = FeedbackStore(db, read_only=True)
    try:
        wanted = set(sessions)
        fb = [f for f in store.feedback() if f["session_id"] in wanted]
        responses = [r for r in store.responses() if r["session_id"] in wanted]
    finally:
        store.close()
    return {"answers": len(responses), "ratings": sum(f["kind"] == "rating" for f in fb),
            "likes": sum(f["kind"] == "rating" and bool(f["label"]) for f in fb),
            "edits": sum(f["kind"] == "edit" for f in fb), "regenerates": sum(f["kind"] == "regenerate" for f in fb)}


def compare(sent: dict, stored: dict) -> dict:
    """Compare what the simulated users sent (answers, ratings, likes, edits, regenerates) with what the
    database stored: ``{match, differences}``.
    """
    keys = ("answers", "ratings", "likes", "edits", "regenerates")
    return {"match": all(sent[k] == stored[k] for k in keys),
            "differences": {k: {"sent": sent[k], "stored": stored[k]} for k in keys if sent[k] != stored[k]}}


def run(url: str, tasks: str, users: int, turns: int, judge: str, seed: int = 0, edit_share: float = 0.2,
        regenerate_share: float = 0.2, db: str | None = None, report: str | None = None, rm_threshold: float = 0.0,
        keep_conversation: bool = False, split: str = "train", timeout: float = 600.0, progress: bool = True,
        concurrency: int = 1) -> dict:
    """Plan, simulate, compare with the store; write ``report`` (JSON) if given. Returns the report."""
    pool = load_tasks(tasks, max(users * turns, 1), seed, split)
    plan = make_plan(pool, users, turns, seed, edit_share, regenerate_share)
    judge_fn = make_judge(judge, rm_threshold)
    out = {"tasks": tasks, "split": split, "users": users, "turns": turns, "edit_share": edit_share,
           "regenerate_share": regenerate_share,
           **simulate(url, plan, judge_fn, seed, keep_conversation, timeout, progress, concurrency)}
    out["plan"] = [{"user": u["user"], "turns": [{"question": t["task"]["question"], "kind": t["task"].get("kind"),
                                                  "edit_if_wrong": t["edit_if_wrong"], "regenerate": t["regenerate"]}
                                                 for t in u["turns"]]} for u in plan]
    judged = [r["judged"] for r in out["sent"] if r["judged"] is not None]
    out["judge_accept_rate"] = sum(judged) / len(judged) if judged else None
    if db:
        out["stored"] = stored_counts(db, out["sessions"])
        out["stored_vs_sent"] = compare(out["counts_sent"], out["stored"])
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(report) + ".tmp")
        tmp.write_text(json.dumps(out, indent=2, ensure_ascii=False))
        tmp.replace(report)
    return out


def simulate_main(argv: list[str]) -> int:
    """``python -m serve simulate``: simulated users chat with a running app and rate, edit and regenerate;
    returns the exit status.
    """
    p = argparse.ArgumentParser(prog="python -m serve simulate",
                                description="Simulated users that chat with a running Keel app over its HTTP API "
                                            "and rate, edit and regenerate answers as a judge decides")
    p.add_argument("--url", default="http://127.0.0.1:7860")
    p.add_argument("--tasks", default="arith", help="arith | kb | hh (harmful + plain) | a JSONL file of tasks")
    p.add_argument("--split", default="train", choices=["train", "test"], help="task split (default train; "
                                                                              "keep test for held-out scoring)")
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--turns", type=int, default=2, help="questions per user")
    p.add_argument("--judge", default="verifier", help="verifier | rm:PATH")
    p.add_argument("--rm-threshold", type=float, default=0.0, help="rm judge: like when the score is above this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--edit-share", type=float, default=0.2, help="share of turns where a wrong answer is corrected")
    p.add_argument("--regenerate-share", type=float, default=0.2, help="share of turns where the user regenerates")
    p.add_argument("--keep-conversation", action="store_true", help="ask a user's questions in one conversation")
    p.add_argument("--db", help="the app's feedback database: compare what it stored with what was sent")
    p.add_argument("--report", help="write the report here (JSON)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one answer")
    p.add_argument("--concurrency", type=int, default=1,
                   help="users chatting at once, each in its own session (default 1: one after another)")
    a = p.parse_args(argv)
    out = run(a.url, a.tasks, a.users, a.turns, a.judge, a.seed, a.edit_share, a.regenerate_share, a.db, a.report,
              a.rm_threshold, a.keep_conversation, a.split, a.timeout, concurrency=a.concurrency)
    print(json.dumps({k: out[k] for k in ("counts_sent", "judge_accept_rate", "wall_s", "stored", "stored_vs_sent")
                      if k in out}, indent=2))
    if "stored_vs_sent" in out and not out["stored_vs_sent"]["match"]:
        print("error: the app stored other counts than were sent (see stored_vs_sent)", file=sys.stderr)
        return 1
    return 0
