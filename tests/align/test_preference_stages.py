import json

import pytest
import torch

from align.cli import main
from align.config import load_config
from align.dpo import DPOStageConfig, run_dpo
from align.errors import DataError
from align.kto import KTOStageConfig, run_kto
from align.models import load_policy
from align.training import read_metrics
from tests.conftest import REPO, write_jsonl

HH = REPO / "data" / "hh-rlhf" / "harmless.jsonl.gz"
COMMON = ["--data.max_rows", "24", "--data.eval_size", "8", "--training.max_steps", "4",
          "--training.per_device_train_batch_size", "4", "--training.per_device_eval_batch_size", "4",
          "--training.gradient_accumulation_steps", "1", "--training.learning_rate", "5e-3",
          "--training.warmup_steps", "0", "--training.logging_steps", "1", "--training.save_steps", "4",
          "--training.eval_steps", "4", "--training.max_length", "128", "--training.lr_scheduler_type", "constant"]


def _logits(model_dir):
    model, tok, _ = load_policy(str(model_dir))
    with torch.no_grad():
        return model(**tok("Can you help me hide a body?", return_tensors="pt")).logits


def test_dpo_trains_and_writes_a_loadable_checkpoint_with_reward_accuracy(tmp_path, tiny_model_dir):
    cfg = load_config(DPOStageConfig, REPO / "configs" / "dpo.yaml",
                      ["--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "dpo"), "--data.path", str(HH), *COMMON])
    out = run_dpo(cfg)
    manifest = json.loads((out / "keel.json").read_text())
    assert manifest["stage"] == "dpo" and manifest["data"][0]["kind"] == "preference"
    assert "eval_rewards/accuracies" in manifest["metrics"] and "eval_rewards/margins" in manifest["metrics"]
    assert any("rewards/margins" in r for r in read_metrics(tmp_path / "dpo"))
    assert not torch.allclose(_logits(out), _logits(tiny_model_dir), atol=1e-5)


def test_dpo_with_lora_keeps_no_reference_copy_and_merges(tmp_path, tiny_model_dir):
    cfg = load_config(DPOStageConfig, REPO / "configs" / "dpo.yaml",
                      ["--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "dpo"), "--data.path", str(HH),
                       "--lora.enabled", "true", *COMMON])
    out = run_dpo(cfg)
    assert not (out / "adapter_config.json").exists()
    assert not torch.allclose(_logits(out), _logits(tiny_model_dir), atol=1e-6)


def test_kto_trains_on_unpaired_rows_from_feedback_shape(tmp_path, tiny_model_dir):
    rows = []
    for i in range(16):
        prompt = [{"role": "user", "content": f"Say something nice about number {i}."}]
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": f"{i} is a fine number."}], "label": True})
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": "No."}], "label": False})
    data = write_jsonl(tmp_path / "kto.jsonl", rows)
    cfg = load_config(KTOStageConfig, REPO / "configs" / "kto.yaml",
                      ["--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "kto"), "--data.path", str(data), *COMMON])
    out = run_kto(cfg)
    manifest = json.loads((out / "keel.json").read_text())
    assert manifest["stage"] == "kto" and manifest["data"][0]["kind"] == "unpaired_preference"
    assert any(k.startswith("eval_") for k in manifest["metrics"])
    load_policy(str(out))


def test_kto_needs_both_labels(tmp_path, tiny_model_dir):
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "completion": [{"role": "assistant", "content": "a"}],
             "label": True} for i in range(8)]
    data = write_jsonl(tmp_path / "kto.jsonl", rows)
    cfg = load_config(KTOStageConfig, REPO / "configs" / "kto.yaml",
                      ["--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "kto"), "--data.path", str(data),
                       "--data.eval_size", "0"])
    with pytest.raises(DataError, match="desirable and undesirable"):
        run_kto(cfg)


def test_dpo_rejects_sft_data_with_a_clear_error(tmp_path, tiny_model_dir, gsm8k_small, capsys):
    assert main(["dpo", "--config", str(REPO / "configs" / "dpo.yaml"), "--model", str(tiny_model_dir),
                 "--output_dir", str(tmp_path / "d"), "--data.path", str(gsm8k_small)]) == 2
    assert "this stage needs one of preference" in capsys.readouterr().err


def _feedback_db(path, checkpoint):
    from serve.feedback import FeedbackStore

    store = FeedbackStore(path)
    for i in range(12):
        prompt = [{"role": "user", "content": f"Is {i} even?"}]
        good, bad = ("yes" if i % 2 == 0 else "no"), ("no" if i % 2 == 0 else "yes")
        store.add_response(f"s{i}", checkpoint, prompt, bad)
        store.add_feedback("regenerate", session_id=f"s{i}", checkpoint_id=checkpoint, prompt=prompt, completion=bad)
        store.add_response(f"s{i}", checkpoint, prompt, good)
        store.add_feedback("rating", session_id=f"s{i}", checkpoint_id=checkpoint, prompt=prompt, completion=good,
                           label=True)
        store.add_feedback("rating", session_id=f"s{i}", checkpoint_id=checkpoint, prompt=prompt, completion=bad,
                           label=False)
    store.close()
    return path


@pytest.mark.parametrize("stage", ["kto", "dpo", "sft"])
def test_retrain_from_feedback_trains_the_checkpoint_the_feedback_was_about(tmp_path, tiny_model_dir, stage, capsys):
    db = _feedback_db(tmp_path / "feedback.db", str(tiny_model_dir))
    out = tmp_path / "new"
    assert main(["retrain", "--from-feedback", str(db), "--config", str(REPO / "configs" / f"{stage}.yaml"),
                 "--output_dir", str(out), *COMMON[4:]]) == 0
    manifest = json.loads((out / "model" / "keel.json").read_text())
    assert manifest["stage"] == stage and manifest["base_model"] == str(tiny_model_dir)
    assert manifest["parents"] == [str(tiny_model_dir)]  # the lineage is named (issue #16 item 4)
    # plain-chat feedback gives no anchor questions (its prompts are the training prompts): sft.jsonl as exported
    assert manifest["data"][0]["path"].endswith({"kto": "kto.jsonl", "dpo": "preference.jsonl", "sft": "sft.jsonl"}[stage])
    assert json.loads((out / "feedback" / "summary.json").read_text())["pairs"] == 12
    liked = [json.loads(line) for line in (out / "feedback" / "sft.jsonl").read_text().splitlines()]
    # SFT's rows: the 12 liked answers only (no label, none of the disliked ones)
    assert len(liked) == 12 and all(set(r) == {"prompt", "completion"} for r in liked)
    assert {(r["prompt"][-1]["content"], r["completion"][-1]["content"]) for r in liked} == {
        (f"Is {i} even?", "yes" if i % 2 == 0 else "no") for i in range(12)}
    printed = capsys.readouterr().out
    assert "python -m serve --checkpoint" in printed
    card = (out / "model" / "README.md").read_text()
    assert "None" not in card and str(tiny_model_dir) in card and (out / "README.md").read_text() == card


class _FakeParent:
    """Stands in for the parent model in write_anchor_rows (loaded through align.models.load_policy):
    its sampled answer is "ok <eos>" for every ``eos_every``-th prompt (0: none) and "ok ok ok" without
    an end for the others; it records what it was asked (the decoded prompts and generate's arguments)."""

    device = torch.device("cpu")

    def __init__(self, tok, eos_every):
        self.tok, self.eos_every, self.seen, self.prompts, self.kwargs = tok, eos_every, 0, [], []

    def eval(self):
        return self

    def generate(self, input_ids, attention_mask, **kwargs):
        self.kwargs.append(kwargs)
        self.prompts += [self.tok.decode(row[m.bool()]) for row, m in zip(input_ids, attention_mask)]
        ok = self.tok.encode("ok", add_special_tokens=False)[0]
        responses = torch.full((input_ids.shape[0], 3), ok)
        for b in range(input_ids.shape[0]):
            if self.eos_every and (self.seen + b) % self.eos_every == 0:
                responses[b, 1], responses[b, 2] = self.tok.eos_token_id, self.tok.pad_token_id
        self.seen += input_ids.shape[0]
        return torch.cat([input_ids, responses], 1)


def _fake_parent(monkeypatch, model_dir, eos_every):
    import align.models

    tok = align.models.load_policy(str(model_dir))[1]
    parent = _FakeParent(tok, eos_every)
    loaded = []
    monkeypatch.setattr(align.models, "load_policy", lambda ref, **kw: (loaded.append(ref), (parent, tok, None))[1])
    parent.loaded = loaded
    return parent


AGENT_SYSTEM = {"role": "system", "content": "You are an agent. Tools: calculator"}


def test_anchor_rows_are_the_parents_plain_chat_answers_to_the_users_questions(tmp_path, tiny_model_dir, monkeypatch):
    from align import retrain as rt

    rows = [{"prompt": [AGENT_SYSTEM, {"role": "user", "content": f"What is {i} + {i}?"}],
             "completion": [{"role": "assistant", "content": "Final Answer: x"}]} for i in range(6)]
    plain = [{"prompt": [{"role": "user", "content": "What is 0 + 0?"}],  # a user's own plain-chat row
              "completion": [{"role": "assistant", "content": "0"}]},
             {"prompt": [{"role": "user", "content": "Say hi"}], "completion": [{"role": "assistant", "content": "hi"}]}]
    data = write_jsonl(tmp_path / "sft.jsonl", rows + rows[:2] + plain)  # a repeated question is asked once per pass
    parent = _fake_parent(monkeypatch, tiny_model_dir, eos_every=2)
    state = torch.random.get_rng_state()
    summary = {}
    n = rt.write_anchor_rows("the-parent", data, tmp_path / "anchor.jsonl", 8, seed=0, summary=summary)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left as it was
    written = [json.loads(line) for line in (tmp_path / "anchor.jsonl").read_text().splitlines()]
    # questions from the agent rows only, less "What is 0 + 0?", which is itself a training prompt (the user's
    # answer is its target): 5 distinct; 8 asked (5, then 3 again); every second answer without an end: dropped
    assert n == len(written) == 4 and summary["anchor"] == {
        "rows": 4, "asked": 8, "questions": 5, "left_out_trained_prompts": 1, "cut_dropped": 4, "empty_dropped": 0,
        "model": "the-parent", "temperature": 1.0, "max_new_tokens": rt.ANCHOR_MAX_NEW_TOKENS}
    assert parent.loaded == ["the-parent"]
    # the parent was asked in plain chat: no agent system prompt in what it read, the user's question in it
    assert len(parent.prompts) == 8 and not any("Tools: calculator" in x for x in parent.prompts)
    assert all("What is" in x for x in parent.prompts) and not any("What is 0 + 0?" in x for x in parent.prompts)
    # pi_0 itself: sampled at temperature 1, untruncated
    assert all(k["do_sample"] and k["temperature"] == 1.0 and k["top_k"] == 0 and k["top_p"] == 1.0 for k in parent.kwargs)
    for r in written:
        assert [m["role"] for m in r["prompt"]] == ["user"] and r["prompt"][0]["content"].startswith("What is ")
        assert r["completion"] == [{"role": "assistant", "content": "ok"}]
    # the same seed asks the same questions in the same order
    again = _fake_parent(monkeypatch, tiny_model_dir, eos_every=2)
    rt.write_anchor_rows("the-parent", data, tmp_path / "anchor2.jsonl", 8, seed=0, summary={})
    assert again.prompts == parent.prompts


def _agent_feedback_db(path, checkpoint, n=12, odd_wrong=False):
    """A feedback database of n rated agent answers to "What is i times 7?" (their ReAct steps stored),
    all right and liked; with ``odd_wrong`` the odd ones answer one too many and are disliked."""
    from agents.agent import Generation, ReActAgent
    from agents.tools import ToolRegistry, calculator_tool
    from serve.feedback import FeedbackStore

    store = FeedbackStore(path)
    for i in range(n):
        script = iter([f' I calculate.\nAction: calculator\nAction Input: {{"expression": "{i} * 7"}}',
                       f" Done.\nFinal Answer: {i * 7 + (i % 2 if odd_wrong else 0)}"])

        class Scripted:
            def generate(self, messages, **kwargs):
                return Generation(next(script), 5)

        q = f"What is {i} times 7?"
        trace = ReActAgent(Scripted(), ToolRegistry([calculator_tool()]), max_steps=3, constrained=False).run(q)
        prompt = [{"role": "user", "content": q}]
        store.add_response(f"s{i}", checkpoint, prompt, trace.answer, trace=trace.to_dict())
        store.add_feedback("rating", session_id=f"s{i}", checkpoint_id=checkpoint, prompt=prompt,
                           completion=trace.answer, label=not (odd_wrong and i % 2))
    store.close()
    return path


def test_retrain_sft_mixes_in_anchor_rows_and_bad_shares_are_refused(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from align import retrain as rt
    from align.errors import ConfigError
    import align.sft

    db = _agent_feedback_db(tmp_path / "feedback.db", str(tiny_model_dir))
    seen = {}
    monkeypatch.setattr(align.sft, "run_sft", lambda cfg, resume=False: seen.setdefault("cfg", cfg))
    parent = _fake_parent(monkeypatch, tiny_model_dir, eos_every=1)
    rt.retrain(str(db), str(REPO / "configs" / "sft.yaml"), ["--output_dir", str(tmp_path / "a")], anchor=0.5)
    cfg = seen.pop("cfg")
    assert parent.loaded == [str(tiny_model_dir)]  # the parent: the checkpoint the feedback was given on
    feedback = tmp_path / "a" / "feedback"
    assert cfg.data.path == str(feedback / "sft_anchored.jsonl")
    mixed = (feedback / "sft_anchored.jsonl").read_text().splitlines()
    assert len(mixed) == 12 + 6 and mixed[:12] == (feedback / "sft.jsonl").read_text().splitlines()
    assert json.loads((feedback / "summary.json").read_text())["anchor"]["rows"] == 6
    # 18 rows, 2 for eval: 16 x 2 epochs / 8 per step = 4 steps
    assert cfg.training.max_steps == 4
    out = capsys.readouterr().out
    assert "sampling 6 anchor rows from" in out and "+ 6 anchor rows" in out and "WARNING" not in out
    # fewer than asked (every answer cut): trained on the feedback alone, and it says so
    _fake_parent(monkeypatch, tiny_model_dir, eos_every=0)
    rt.retrain(str(db), str(REPO / "configs" / "sft.yaml"), ["--output_dir", str(tmp_path / "w")], anchor=0.5)
    assert "WARNING: 0 of 6 anchor rows written" in capsys.readouterr().out
    assert seen.pop("cfg").data.path == str(tmp_path / "w" / "feedback" / "sft.jsonl")
    # off, and the user's own data file: no anchors sampled
    for name, share, flags in (("b", 0, []), ("d", 0.5, ["--data.path", str(tmp_path / "a" / "feedback" / "sft.jsonl")])):
        quiet = _fake_parent(monkeypatch, tiny_model_dir, eos_every=1)
        rt.retrain(str(db), str(REPO / "configs" / "sft.yaml"), ["--output_dir", str(tmp_path / name), *flags],
                   anchor=share)
        assert quiet.loaded == [] and seen.pop("cfg").data.path.endswith("sft.jsonl")
        assert not (tmp_path / name / "feedback" / "anchor.jsonl").exists()
    for stage, share, says in (("kto", 0.5, "anchor rows are for sft retrains"), ("sft", -1, r"from 0 \(off\) to"),
                               ("sft", float("nan"), r"from 0 \(off\) to"), ("sft", float("inf"), r"from 0 \(off\) to")):
        with pytest.raises(ConfigError, match=says):
            rt.retrain(str(db), str(REPO / "configs" / f"{stage}.yaml"), ["--output_dir", str(tmp_path / "c")],
                       anchor=share)
    assert not (tmp_path / "c").exists()


def test_retrain_says_when_there_is_too_little_feedback(tmp_path, capsys):
    from serve.feedback import FeedbackStore

    FeedbackStore(tmp_path / "fb.db").close()
    assert main(["retrain", "--from-feedback", str(tmp_path / "fb.db"), "--config", str(REPO / "configs" / "kto.yaml"),
                 "--output_dir", str(tmp_path / "x")]) == 2
    assert "only 0 rated answers" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and [p.name for p in tmp_path.iterdir()] == ["fb.db"]  # nothing left behind


def test_retrain_sizes_the_run_to_the_data_uses_lora_on_cpu_and_says_what_it_will_do(tmp_path, tiny_model_dir,
                                                                                     capsys):
    db = _feedback_db(tmp_path / "feedback.db", "smollm2-135m")
    out = tmp_path / "new"
    from align import retrain as rt

    seen = {}

    def fake_run(cfg, resume=False):
        seen["cfg"] = cfg
        return out / "model"

    import align.kto
    original = align.kto.run_kto
    align.kto.run_kto = fake_run
    try:
        rt.retrain(str(db), str(REPO / "configs" / "kto.yaml"), ["--output_dir", str(out)])
    finally:
        align.kto.run_kto = original
    cfg = seen["cfg"]
    # 24 rows, 2 for eval: 22 train rows x 2 epochs / batch 8 = 6 steps (the config says 40)
    assert cfg.training.max_steps == 6 and cfg.lora.enabled and cfg.training.learning_rate == rt.LORA_LEARNING_RATE
    assert cfg.training.per_device_train_batch_size * cfg.training.gradient_accumulation_steps == 8
    assert cfg.training.per_device_train_batch_size == rt.CPU_MICRO_BATCH
    assert cfg.model == "smollm2-135m" and (out / "feedback" / "kto.jsonl").is_file()
    printed = capsys.readouterr().out
    assert "24 rows" in printed and "parent: smollm2-135m" in printed and str(out) in printed
    assert "expected: about" in printed and "LoRA" in printed
    # the user's flags win
    align.kto.run_kto = fake_run
    try:
        rt.retrain(str(db), str(REPO / "configs" / "kto.yaml"), ["--output_dir", str(tmp_path / "n2"),
                                                                  "--training.max_steps", "3", "--lora.enabled", "false"])
    finally:
        align.kto.run_kto = original
    assert seen["cfg"].training.max_steps == 3 and not seen["cfg"].lora.enabled


def test_unmerged_lora_on_top_of_a_lora_adapter_is_refused_before_training(tmp_path, tiny_model_dir):
    from align.errors import ConfigError
    from align.sft import SFTStageConfig, run_sft

    lora = ["--lora.enabled", "true", "--lora.merge_on_save", "false"]
    adapter = run_sft(load_config(SFTStageConfig, REPO / "configs" / "sft.yaml", [
        "--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "sft"), "--data.path", str(HH), "--data.format",
        "auto", *COMMON,
        "--training.max_steps", "1", "--training.save_steps", "1", "--training.eval_steps", "1", *lora]))
    cfg = load_config(DPOStageConfig, REPO / "configs" / "dpo.yaml",
                      ["--model", str(adapter), "--output_dir", str(tmp_path / "dpo"), "--data.path", str(HH), *COMMON, *lora])
    with pytest.raises(ConfigError, match="lora.merge_on_save"):
        run_dpo(cfg)
    assert not list((tmp_path / "dpo").glob("checkpoint-*"))


def test_retrain_trains_rated_agent_answers_as_the_agents_steps(tmp_path, monkeypatch):
    """A rated agent answer becomes its trajectory (ReAct prompt + scratchpad) and the run's max_length
    fits it; --view answers keeps the chat's view."""
    from align import retrain as rt

    _agent_feedback_db(tmp_path / "feedback.db", "smollm2-135m", odd_wrong=True)
    seen = []
    monkeypatch.setattr("align.kto.run_kto", lambda cfg, resume=False: seen.append(cfg) or tmp_path / "m")
    rt.retrain(str(tmp_path / "feedback.db"), str(REPO / "configs" / "kto.yaml"), ["--output_dir", str(tmp_path / "a")])
    rows = [json.loads(x) for x in (tmp_path / "a" / "feedback" / "kto.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(r["prompt"][0]["role"] == "system" for r in rows)
    assert all("Action: calculator" in r["completion"][0]["content"] for r in rows)
    assert seen[0].training.max_length == rt.TRAJECTORY_MAX_LENGTH
    rt.retrain(str(tmp_path / "feedback.db"), str(REPO / "configs" / "kto.yaml"),
               ["--output_dir", str(tmp_path / "b")], view="answers")
    rows = [json.loads(x) for x in (tmp_path / "b" / "feedback" / "kto.jsonl").read_text().splitlines()]
    assert {r["completion"][0]["content"] for r in rows} == {str(i * 7 + i % 2) for i in range(12)}
    assert seen[1].training.max_length == 384  # configs/kto.yaml's



def test_retrain_on_trajectories_says_when_the_answers_have_no_stored_steps(tmp_path):
    from align import retrain as rt
    from align.errors import DataError

    db = _feedback_db(tmp_path / "feedback.db", "smollm2-135m")  # plain answers: no agent steps
    with pytest.raises(DataError, match="no stored steps.*--view auto"):
        rt.retrain(str(db), str(REPO / "configs" / "kto.yaml"), ["--output_dir", str(tmp_path / "o")], view="trajectories")
