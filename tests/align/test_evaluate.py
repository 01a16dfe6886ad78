import json

from align.cli import main
from align.evaluate import format_results, gsm8k_suite
from align.models import load_policy
from tests.conftest import REPO



def test_gsm8k_suite_scores_with_the_checker(tiny_model_dir, monkeypatch):
    import align.evaluate as ev

    model, tok, _ = load_policy(str(tiny_model_dir))
    rows = [json.loads(l) for l in (REPO / "data" / "gsm8k" / "heldout.jsonl").read_text().splitlines()[:4]]
    finals = [r["answer"].rsplit("####", 1)[1].strip() for r in rows]
    scripted = [f"Final Answer: {finals[0]}", "I do not know", f"The answer is {float(finals[2]) + 1:g}",
                f"so #### {finals[3]}"]
    monkeypatch.setattr(ev, "generate_batch", lambda *a, **k: scripted)
    r = gsm8k_suite(model, tok, 4)
    assert r["problems"] == 4 and r["correct"] == 2 and r["no_number"] == 1 and r["accuracy"] == 0.5


def test_eval_cli_runs_gsm8k_and_winrate_on_a_real_generation(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", str(tiny_model_dir), "--suite", "gsm8k,winrate", "--n", "3", "--max-new-tokens", "8",
                 "--parent", str(tiny_model_dir), "--rm", "align.verifiers:gsm8k_format", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| gsm8k | 3 |" in printed and "win rate" in printed
    results = json.loads(out.read_text())["results"]
    win = results[1]
    # the same model against itself: greedy answers are identical, so every prompt is a tie
    assert win["win_rate"] == 0.5 and win["ties"] == 3 and abs(win["kl_to_parent"]) < 1e-4
    assert main(["eval", str(tiny_model_dir), "--suite", "winrate"]) == 2
    assert "needs --rm" in capsys.readouterr().err


def test_format_results_table():
    t = format_results([{"suite": "gsm8k", "problems": 2, "accuracy": 0.5, "correct": 1, "no_number": 0, "seconds": 1}])
    assert "accuracy 0.500" in t
