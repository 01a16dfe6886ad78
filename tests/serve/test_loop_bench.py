"""bench/bench_loop.py: the round verdict (fell / best so far) and, slow, one whole round end to end."""
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "bench"))

import bench_loop  # noqa: E402


def held(success, n=100):
    return bench_loop._heldout({"tasks": n, "success": success, "format_errors_per_task": 0.0, "mean_steps": 1.0})


def test_a_round_that_falls_beyond_its_noise_is_reported_and_a_tie_keeps_the_earlier_best():
    v = bench_loop.round_verdict(held(0.60), held(0.45), held(0.60))
    assert v["fell"] and not v["new_best"] and 0.06 < v["noise"] < 0.08  # sqrt(2 * 0.24 / 100) ~ 0.069
    v = bench_loop.round_verdict(held(0.60), held(0.56), held(0.60))
    assert not v["fell"] and not v["new_best"]  # within the noise
    assert bench_loop.round_verdict(held(0.60), held(0.60), held(0.60))["new_best"] is False
    assert bench_loop.round_verdict(held(0.50), held(0.62), held(0.60))["new_best"] is True
    # fewer tasks, more noise: the same drop is not a fall on 8 tasks
    assert not bench_loop.round_verdict(held(0.75, 8), held(0.625, 8), held(0.75, 8))["fell"]


def test_users_ask_the_held_out_kinds_but_never_a_held_out_question(tmp_path):
    import types

    from agents.tasks import ARITH_TEMPLATES

    a = types.SimpleNamespace(user_split="test", tasks="arith", seed=0, turns=2)
    held_out = bench_loop.heldout_tasks("arith", 100, 1000)
    path = bench_loop.user_tasks(a, 1, 50, held_out, tmp_path)
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert len(rows) == 100 and not {r["question"] for r in rows} & {t["question"] for t in held_out}
    test_templates = {t.__name__.lstrip("_") for t in ARITH_TEMPLATES["test"]}
    assert {r["template"] for r in rows} <= test_templates and any(not r["template_trained"] for r in rows)
    second = [json.loads(line) for line in Path(bench_loop.user_tasks(a, 2, 50, held_out, tmp_path)).read_text().splitlines()]
    assert [r["question"] for r in second] != [r["question"] for r in rows]  # each round its own questions
    a.user_split = "train"
    assert bench_loop.user_tasks(a, 1, 50, held_out, tmp_path) == "arith"  # sim draws the train split itself


def test_the_engine_the_app_started_is_found_in_its_log(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("[keel] starting vLLM on keel-agent at http://127.0.0.1:4001/v1; log: runs/engine/a.log (first start...)\n"
                   "some line\n[keel] starting vLLM on round-1/model at http://127.0.0.1:4002/v1; log: b.log\n")
    assert bench_loop.engine_of(log) == "http://127.0.0.1:4002/v1"  # the latest start (a switch restarts it)
    log.write_text("Running on local URL: http://127.0.0.1:7860\n")
    with pytest.raises(SystemExit, match="--engine vllm"):
        bench_loop.engine_of(log)


@pytest.mark.slow
def test_one_round_end_to_end_on_the_tiny_model(tiny_model_dir, tmp_path):
    """App start, simulate (stored = sent), retrain, switch the running app, held-out, KL, keep-best
    (the round-0 model stays best on a tie: the app is restarted on it), JSON and curve."""
    out = tmp_path / "loop"
    assert bench_loop.main(["--rounds", "1", "--answers", "8", "--heldout", "2", "--checkpoint", str(tiny_model_dir),
                            "--max-new-tokens", "8", "--max-steps", "1", "--kl-tokens", "4", "--edit-share", "0.6",
                            "--keep-best", "--out", str(out), "--retrain-arg=--training.max_length=256",
                            "--open-judge", f"rm:{tiny_model_dir}", "--open-requests", "2"]) == 0
    r1 = json.loads((out / "round-1.json").read_text())
    assert r1["stored_vs_sent"]["match"] and r1["counts_sent"]["answers"] >= 8
    assert (out / "ckpts" / "round-1" / "model" / "keel.json").is_file()
    assert r1["kept"].startswith("round 0") and r1["served_next"] == str(tiny_model_dir)
    # KL to round 0 both ways of asking: the agent's ReAct prompt and plain chat, against the stated bound
    assert r1["kl_to_round0_agent"] != r1["kl_to_round0"] and isinstance(r1["kl_within_bound"], bool)
    # and two more, reported beside the bound: the app's plain-chat prompt, and open requests no user rated
    kls = [r1[f"kl_to_round0_{w}"] for w in ("app_chat", "plain_requests")]
    assert all(isinstance(k, float) and math.isfinite(k) for k in kls)
    # open requests scored by the reward model each round, round 0 included (the baseline)
    r0 = json.loads((out / "round-0.json").read_text())
    for r in (r0, r1):
        assert r["open_requests"]["n"] == 2 and len(r["open_requests"]["scores"]) == 2
        assert r["open_requests"]["judge"].startswith("rm:") and "open" in r["wall_s"]
    assert (out / "loop-rounds.png").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_round"] == 0 and summary["projection"]["total_hours"] > 0
    # a round 2 that stopped part-way (a partial checkpoint folder, its users' file), then --resume: round 2
    # runs again from round 1's end, and rounds 0-1 are kept as they were
    (out / "ckpts" / "round-2").mkdir()
    (out / "users-2.jsonl").write_text("partial\n")
    before = (out / "round-1.json").read_text()
    assert bench_loop.main(["--rounds", "2", "--answers", "8", "--heldout", "2", "--checkpoint", str(tiny_model_dir),
                            "--max-new-tokens", "8", "--max-steps", "1", "--kl-tokens", "4", "--keep-best",
                            "--out", str(out), "--resume", "--retrain-arg=--training.max_length=256"]) == 0
    assert (out / "round-1.json").read_text() == before
    r2 = json.loads((out / "round-2.json").read_text())
    assert r2["round"] == 2 and r2["stored_vs_sent"]["match"] and (out / "ckpts" / "round-2" / "model" / "keel.json").is_file()
    assert [r["round"] for r in json.loads((out / "summary.json").read_text())["rounds"]] == [0, 1, 2]
    assert len(list(out.glob("feedback-before-resume-*.db"))) == 1 and (out / "app-resume-2.log").is_file()


@pytest.mark.parametrize("flag", ["--turns", "--concurrency", "--answers", "--kl-prompts", "--open-requests"])
def test_a_count_below_one_is_refused_before_the_app_starts(flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench_loop.main([flag, "0", "--out", str(tmp_path / "run")])
    assert e.value.code == 2 and f"{flag} must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing started, no run folder


def test_an_open_judge_that_is_not_a_reward_model_is_refused_before_the_app_starts(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench_loop.main(["--open-judge", "verifier", "--out", str(tmp_path / "run")])
    assert e.value.code == 2 and "--open-judge 'verifier': use rm:PATH" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, says", [(["--stage", "kto", "--anchor", "0.5"], "anchor rows are for --stage sft"),
                                         (["--stage", "sft", "--anchor", "-1"], "from 0 (off) to 10"),
                                         (["--stage", "sft", "--anchor", "nan"], "from 0 (off) to 10")])
def test_anchor_rows_are_checked_before_the_app_starts(flags, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench_loop.main([*flags, "--out", str(tmp_path / "run")])
    assert e.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_run_folder_that_holds_an_earlier_run_is_refused(tmp_path, capsys):
    """Every retrain reads the run's feedback.db as "all feedback so far": an earlier run's would mix in."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "feedback.db").write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        bench_loop.main(["--out", str(run)])
    assert e.value.code == 2 and "the folder is not empty" in capsys.readouterr().err
    assert sorted(x.name for x in run.iterdir()) == ["feedback.db"]  # nothing added


def test_resume_sets_aside_what_an_unfinished_round_stored(tmp_path, capsys):
    """Answers and feedback stored after the last finished round are deleted (a copy of the database is kept)
    with that round's partial files; what the finished rounds stored stays."""
    import sqlite3
    import time

    from serve.feedback import FeedbackStore

    out = tmp_path / "run"
    (out / "ckpts" / "round-2").mkdir(parents=True)
    (out / "ckpts" / ".retrain-abc").mkdir()
    store = FeedbackStore(out / "feedback.db")
    chat = [{"role": "user", "content": "q"}]
    store.add_feedback("rating", session_id="s1", checkpoint_id="c", prompt=chat, completion="kept", label=True)
    store.close()
    time.sleep(0.05)
    for r in (0, 1):
        (out / f"round-{r}.json").write_text(json.dumps({"round": r, "records": [1]}))
    time.sleep(0.05)
    store = FeedbackStore(out / "feedback.db")
    store.add_feedback("rating", session_id="s2", checkpoint_id="c", prompt=chat, completion="unfinished", label=False)
    store.close()
    for name in ("users-2.jsonl", "simulate-2.json", "retrain-2.log"):
        (out / name).write_text("x")
    done = bench_loop.finished_rounds(out)
    assert [r["round"] for r in done] == [0, 1] and "records" not in done[0] and done[1]["ended_at"] > 0
    bench_loop.set_aside_unfinished(out, out / "feedback.db", 2, done[1]["ended_at"])
    with sqlite3.connect(out / "feedback.db") as con:
        assert [c for (c,) in con.execute("SELECT completion FROM feedback")] == ["kept"]
    (copy,) = out.glob("feedback-before-resume-*.db")
    with sqlite3.connect(copy) as con:
        assert sorted(c for (c,) in con.execute("SELECT completion FROM feedback")) == ["kept", "unfinished"]
    assert not any((out / n).exists() for n in ("users-2.jsonl", "simulate-2.json", "retrain-2.log"))
    assert not (out / "ckpts" / "round-2").exists() and not (out / "ckpts" / ".retrain-abc").exists()
    assert "set aside round 2's unfinished feedback" in capsys.readouterr().out


@pytest.mark.parametrize("rounds, files, says", [(3, [], "no round-0.json"),
                                                 (1, ["round-0.json", "round-1.json"], "already has rounds 0-1")])
def test_resume_needs_a_finished_round_and_rounds_left(rounds, files, says, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in files:
        (run / name).write_text(json.dumps({"round": int(name[6])}))
    with pytest.raises(SystemExit) as e:
        bench_loop.main(["--rounds", str(rounds), "--out", str(run), "--resume"])
    assert e.value.code == 2 and says in capsys.readouterr().err
    assert sorted(x.name for x in run.iterdir()) == sorted(files)  # nothing started, nothing added
