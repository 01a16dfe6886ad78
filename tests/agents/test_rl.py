import json
from types import SimpleNamespace

import torch

from agents.rl import final_answer_correct, run_episodes, tool_format
from agents.tools import ToolRegistry, calculator_tool
from align.models import load_tokenizer


class ScriptedModel:
    """Stands in for a policy in ``generate``: writes scripted text, one step per call."""

    def __init__(self, tok, steps):
        self.tok, self.steps, self.device, self.training = tok, list(steps), torch.device("cpu"), True
        self.vocab = len(tok)

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode

    def generate(self, input_ids, attention_mask, **kw):
        rows = []
        for _ in range(input_ids.shape[0]):
            rows.append(self.tok(self.steps[0], add_special_tokens=False)["input_ids"])
        self.steps.pop(0)
        width = max(map(len, rows))
        new = torch.full((len(rows), width), self.tok.pad_token_id)
        for i, r in enumerate(rows):
            new[i, :len(r)] = torch.tensor(r)
        logits = [torch.zeros(len(rows), self.vocab) for _ in range(width)]
        return SimpleNamespace(sequences=torch.cat([input_ids, new], 1), logits=logits)


def test_episode_runs_the_tool_and_masks_the_observation(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    model = ScriptedModel(tok, [' compute\nAction: calculator\nAction Input: {"expression": "6*7"}\nObservation:',
                                " I know it.\nFinal Answer: 42<|im_end|>"])
    prompts = [[{"role": "user", "content": "What is 6 times 7?"}]]
    out = run_episodes(model, tok, prompts, ToolRegistry([calculator_tool()]), max_steps=4, tokens_per_step=64,
                       max_completion_length=256)
    ids, mask, lps = out["completion_ids"][0], out["env_mask"][0], out["logprobs"][0]
    assert len(ids) == len(mask) == len(lps)
    text = tok.decode(ids, skip_special_tokens=True)
    assert "Observation: 42\nThought: I know it." in text and text.rstrip().endswith("Final Answer: 42")
    observation = tok.decode([t for t, m in zip(ids, mask) if m == 0])
    assert observation == " 42\nThought:"  # the tool's result (and the next priming) is not trained on
    assert model.training  # restored
    completions = [[{"role": "assistant", "content": text}]]
    assert final_answer_correct(prompts, completions, answer=["42"]) == [1.0]
    assert final_answer_correct(prompts, [[{"role": "assistant", "content": "Observation: 42"}]], answer=["42"]) == [0.0]
    assert tool_format(prompts, completions) == [1.0]


def test_grpo_with_the_tool_loop_trains_and_writes_a_checkpoint(tmp_path, tiny_model_dir, gsm8k_small):
    from align.config import load_config
    from align.grpo import GRPOStageConfig, run_grpo
    from align.training import read_metrics
    from tests.conftest import REPO

    cfg = load_config(GRPOStageConfig, REPO / "configs" / "grpo-tools.yaml", [
        "--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "g"), "--data.path", str(gsm8k_small),
        "--data.max_rows", "4", "--training.max_steps", "1", "--training.per_device_train_batch_size", "4",
        "--num_generations", "2", "--max_completion_length", "32", "--tool_loop.tokens_per_step", "8",
        "--tool_loop.max_steps", "2"])
    out = run_grpo(cfg)
    assert json.loads((out / "keel.json").read_text())["config"]["tool_loop"]["tools"] == ["calculator"]
    assert any("rewards/final_answer_correct/mean" in r for r in read_metrics(tmp_path / "g"))


class ScriptedLLM:
    """Stands in for the agent's LLM: replays canned steps."""

    supports_native_tools = False

    def __init__(self, outputs):
        self.outputs = list(outputs)

    def generate(self, messages, **_):
        from agents.agent import Generation

        return Generation(self.outputs.pop(0), 5)


def test_a_parser_change_reaches_the_agent_and_the_grpo_tool_loop(tiny_model_dir, monkeypatch):
    """ReActAgent and GRPO's tool loop read each step with the one ``agents.agent.react_step``: a
    parser that also reads "Tool:" as "Action:" changes what both do (before, the rollout had its
    own copy of the step and kept the old parser)."""
    import agents.agent
    from agents.agent import ReActAgent

    real = agents.agent.parse_react
    monkeypatch.setattr(agents.agent, "parse_react", lambda text: real(text.replace("Tool:", "Action:")))
    step = ' compute\nTool: calculator\nAction Input: {"expression": "6*7"}'
    tools = ToolRegistry([calculator_tool()])

    trace = ReActAgent(ScriptedLLM([step, " I know it.\nFinal Answer: 42"]), tools, format="text").run("6*7?")
    assert [(e.type, e.tool) for e in trace.events if e.type in ("tool_call", "observation", "error")] == \
        [("tool_call", "calculator"), ("observation", "calculator")]
    assert trace.answer == "42"

    tok = load_tokenizer(str(tiny_model_dir))
    model = ScriptedModel(tok, [step + "\nObservation:", " I know it.\nFinal Answer: 42<|im_end|>"])
    out = run_episodes(model, tok, [[{"role": "user", "content": "6*7?"}]], tools, max_steps=4, tokens_per_step=64,
                       max_completion_length=256)
    ids, mask = out["completion_ids"][0], out["env_mask"][0]
    assert tok.decode([t for t, m in zip(ids, mask) if m == 0]) == " 42\nThought:"


def test_unreadable_step_gets_the_same_observation_in_the_agent_and_the_tool_loop(tiny_model_dir):
    """A step the parser refuses: both loops give the model the parse error as its observation."""
    from agents.agent import ReActAgent

    bad = " hmm\nAction:\nAction Input: {}"
    tools = ToolRegistry([calculator_tool()])

    trace = ReActAgent(ScriptedLLM([bad, " ok\nFinal Answer: 1"]), tools, format="text",
                       plain_answer_is_final=False).run("?")
    tok = load_tokenizer(str(tiny_model_dir))
    model = ScriptedModel(tok, [bad + "\nObservation:", " ok\nFinal Answer: 1<|im_end|>"])
    out = run_episodes(model, tok, [[{"role": "user", "content": "?"}]], tools, max_steps=4, tokens_per_step=64,
                       max_completion_length=512)
    env = tok.decode([t for t, m in zip(out["completion_ids"][0], out["env_mask"][0]) if m == 0])
    assert env.startswith(" 'Action:' names no tool.") and env.endswith("\nThought:")
    assert f"\nObservation:{env[:-len(chr(10) + 'Thought:')]}\n" in trace.transcript
