import json
from datetime import date

import pytest

from agents.agent import STOP_SEQUENCES, Generation, ReActAgent, Trace
from agents.tools import Tool, ToolRegistry, calculator_tool, date_tool, default_tools, search_tool


class ScriptedLLM:
    """Replays canned model outputs and records what the agent asked for."""

    def __init__(self, outputs, native=False):
        self.outputs, self.calls, self.supports_native_tools = list(outputs), [], native

    def generate(self, messages, *, stop, max_new_tokens, continue_final=False, tools=None):
        self.calls.append({"messages": messages, "stop": stop, "continue_final": continue_final, "tools": tools})
        text = self.outputs.pop(0)
        return Generation(text, len(text.split()))


def test_loop_drives_tool_calls_to_a_final_answer():
    llm = ScriptedLLM([
        ' I need 48/2.\nAction: calculator\nAction Input: {"expression": "48/2"}',
        " Now add.\nAction: calculator\nAction Input: {expression: 48+24}",
        " I know it.\nFinal Answer: 72",
    ])
    trace = ReActAgent(llm, default_tools()).run("How many clips?")
    assert trace.answer == "72" and trace.stopped == "final_answer" and trace.steps == 3
    assert [e.type for e in trace.events] == ["thought", "tool_call", "observation", "thought", "tool_call",
                                              "observation", "thought", "final_answer"]
    assert [e.content for e in trace.events if e.type == "observation"] == ["24", "72"]
    # The model can never write its own observation, and sees the real one on the next step.
    assert all(c["stop"] == STOP_SEQUENCES and c["continue_final"] for c in llm.calls)
    last_scratch = llm.calls[2]["messages"][-1]["content"]
    assert "Observation: 24\n" in last_scratch and "Observation: 72\n" in last_scratch
    assert "calculator:" in llm.calls[0]["messages"][0]["content"]
    assert trace.transcript.endswith("Final Answer: 72")


def test_parse_failure_and_tool_errors_become_observations():
    llm = ScriptedLLM([
        " hmm\nAction: calculator",  # no Action Input
        ' try\nAction: calculator\nAction Input: {"expression": "1/0"}',
        ' try\nAction: weather\nAction Input: {"city": "Oslo"}',
        ' fine\nAction: calculator\nAction Input: {"expr": "1+1", "extra": 1}',
        " give up\nFinal Answer: unknown",
    ])
    trace = ReActAgent(llm, default_tools()).run("q")
    obs = [e for e in trace.events if e.type in ("observation", "error")]
    assert obs[0].ok is False and "calculator needs arguments" in obs[0].content and "expression" in obs[0].content
    assert obs[1].ok is False and "division by zero" in obs[1].content
    assert obs[2].ok is False and "unknown tool 'weather'" in obs[2].content
    assert obs[3].ok is False and "invalid arguments for calculator" in obs[3].content
    assert trace.tool_errors == 4 and trace.answer == "unknown"
    assert "Observation: Error: calculator needs arguments" in llm.calls[1]["messages"][-1]["content"]


def test_limits_end_the_loop():
    looping = ' again\nAction: calculator\nAction Input: {"expression": "1+1"}'
    trace = ReActAgent(ScriptedLLM([looping] * 10), default_tools(), max_steps=3).run("q")
    assert trace.stopped == "max_steps" and trace.steps == 3 and trace.answer is None
    trace = ReActAgent(ScriptedLLM([looping] * 10), default_tools(), token_budget=10).run("q")
    assert trace.stopped == "token_budget" and trace.steps < 10


def test_plain_prose_is_an_answer_unless_strict():
    assert ReActAgent(ScriptedLLM([" Paris is the capital."]), default_tools()).run("q").answer == "Paris is the capital."
    strict = ReActAgent(ScriptedLLM([" Paris.", " ok\nFinal Answer: Paris"]), default_tools(), plain_answer_is_final=False)
    trace = strict.run("q")
    assert trace.events[0].type == "error" and trace.answer == "Paris"


def test_plain_prose_ends_where_the_model_runs_on_into_a_thought():
    run_on = " Van Gogh painted it.\nThought : I answered.\nThought: again"
    assert ReActAgent(ScriptedLLM([run_on]), default_tools()).run("q").answer == "Van Gogh painted it."


def test_trace_round_trips_through_json():
    llm = ScriptedLLM([' x\nAction: calculator\nAction Input: {"expression": "2*3"}', " y\nFinal Answer: 6"])
    trace = ReActAgent(llm, default_tools()).run("q")
    again = Trace.from_dict(json.loads(trace.to_json()))
    assert again == trace and again.tool_calls[0].args == {"expression": "2*3"}


def test_native_tool_call_format():
    llm = ScriptedLLM(['<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>',
                       "The answer is 42."], native=True)
    trace = ReActAgent(llm, default_tools()).run("6 times 7?")
    assert trace.format == "native" and trace.answer == "The answer is 42."
    assert llm.calls[0]["tools"][0]["function"]["name"] == "calculator"
    assert llm.calls[1]["messages"][-1] == {"role": "tool", "name": "calculator", "content": "42"}


def test_user_tools_by_decorator_and_builtins():
    reg = ToolRegistry([calculator_tool(), date_tool(lambda: date(2026, 11, 27))])

    @reg.tool
    def word_count(text: str, min_len: int = 1) -> int:
        """Count the words in a text."""
        return sum(len(w) >= min_len for w in text.split())

    assert reg.get("word_count").run({"text": "a bb ccc", "min_len": 2}).text == "2"
    assert reg.get("word_count").run("one two").text == "2"  # a bare value fills the only required field
    assert reg.get("current_date").run({}).text == "2026-11-27 (Friday)"
    schema = reg.get("word_count").json_schema()["function"]
    assert schema["parameters"]["required"] == ["text"] and schema["description"] == "Count the words in a text."
    with pytest.raises(ValueError, match="already registered"):
        reg.add(calculator_tool())

    @reg.tool
    def broken(x: int) -> str:
        """Always fails."""
        raise RuntimeError("boom")

    assert reg.get("broken").run({"x": 1}).text == "Error: broken failed: RuntimeError: boom"


def test_search_tool_cites_sources():
    class FakeHit:
        def __init__(self, text, source, heading):
            self.text, self.source, self.heading = text, source, heading

    class FakeRetriever:
        def search(self, query, k):
            return [FakeHit("Keel resumes with --resume.", "README.md", "Run folders")][:k]

    out = search_tool(FakeRetriever()).run({"query": "resume"}).text
    assert out == "[1] (README.md § Run folders) Keel resumes with --resume."
    empty = search_tool(FakeRetriever()).run({"query": "  "})
    assert not empty.ok and empty.text == "Error: the query is empty: say what to look for"


def test_step_limit_can_force_a_final_answer_from_what_the_steps_found():
    steps = [' compute\nAction: calculator\nAction Input: {"expression": "6*7"}'] * 2
    trace = ReActAgent(ScriptedLLM(steps + [" 42"]), default_tools(), max_steps=2, force_final_answer=True).run("6*7?")
    assert trace.answer == "42" and trace.stopped == "forced_answer" and trace.steps == 2
    plain = ReActAgent(ScriptedLLM(list(steps)), default_tools(), max_steps=2).run("6*7?")
    assert plain.answer is None and plain.stopped == "max_steps"


# ---------------------------------------------------------------- failure kinds from peer frameworks
@pytest.mark.parametrize("written", ["current_date()", "current_date", "current_date\nAction Input:",
                                     "current_date\nAction Input: {}", "[current_date]\nAction Input: none",
                                     "`current_date`()", "Current_Date\nAction Input: null"])
def test_a_tool_without_arguments_is_called_however_it_is_written(written):
    llm = ScriptedLLM([f" today?\nAction: {written}", " ok\nFinal Answer: done"])
    tools = ToolRegistry([date_tool(lambda: date(2026, 1, 2)), calculator_tool()])
    trace = ReActAgent(llm, tools).run("What day is it?")
    obs = [e for e in trace.events if e.type == "observation"]
    assert obs and obs[0].ok and obs[0].content == "2026-01-02 (Friday)", trace.events
    assert trace.stopped == "final_answer"


@pytest.mark.parametrize("name", ["[calculator]", "**calculator**", '"calculator"', "<calculator>", "Calculator",
                                  "calculator.", "calculator tool", "Calculator Tool", "use calculator",
                                  "the calculator tool", "CALCULATOR", "calculator function"])
def test_decorated_tool_names_resolve(name):
    llm = ScriptedLLM([f' x\nAction: {name}\nAction Input: {{"expression": "6*7"}}', " y\nFinal Answer: 42"])
    trace = ReActAgent(llm, default_tools()).run("q")
    obs = [e for e in trace.events if e.type == "observation"]
    assert obs[0].ok and obs[0].content == "42" and obs[0].tool == "calculator"


def test_tool_names_with_spaces_or_hyphens_resolve_and_ambiguity_resolves_to_none():
    tools = default_tools()
    for name in ("Current Date", "current-date", "[Current-Date]", "current date tool", "`current_date()`"):
        assert tools.get(name) is tools.get("current_date"), name
    for name in ("", "[]", "tool", "use", "calc", "date", "current"):
        assert tools.get(name) is None, name
    from agents.tools import DateArgs

    reg = ToolRegistry([Tool("search", "s", DateArgs, lambda: "a"), Tool("search_tool", "t", DateArgs, lambda: "b")])
    assert reg.get("search_tool").description == "t" and reg.get("Search Tool").description == "t"
    assert reg.get("search").description == "s" and reg.get("use search").description == "s"


def test_the_system_prompt_lists_tool_names_without_brackets():
    llm = ScriptedLLM([" ok\nFinal Answer: hi"])
    ReActAgent(llm, default_tools()).run("q")
    system = llm.calls[0]["messages"][0]["content"]
    assert "one of: calculator, current_date" in system and "[calculator" not in system


def test_a_final_answer_mentioning_observation_is_not_cut():
    # Only an "Observation:" label at the start of a line ends a step.
    assert all(s.startswith("\n") for s in STOP_SEQUENCES)
    text = " done\nFinal Answer: In the report, the Observation: field holds raw notes. Keep it short."
    trace = ReActAgent(ScriptedLLM([text]), default_tools()).run("q")
    assert trace.answer == "In the report, the Observation: field holds raw notes. Keep it short."


def test_code_fences_in_a_final_answer_are_kept():
    answer = "Use a list comprehension:\n```python\nsquares = [x * x for x in range(5)]\n```\nThat is all."
    trace = ReActAgent(ScriptedLLM([" easy\nFinal Answer: " + answer]), default_tools()).run("q")
    assert trace.answer == answer


def test_a_raw_newline_inside_a_json_string_is_accepted():
    seen = []
    tools = ToolRegistry()

    @tools.tool
    def echo(text: str) -> str:
        "Echo the text."
        seen.append(text)
        return text

    llm = ScriptedLLM([' x\nAction: echo\nAction Input: {"text": "first line\nsecond\tline"}', " y\nFinal Answer: ok"])
    trace = ReActAgent(llm, tools).run("q")
    assert seen == ["first line\nsecond\tline"] and trace.tool_errors == 0


def test_an_unreadable_step_keeps_what_the_model_wrote():
    llm = ScriptedLLM([" I think Action 1036 maybe", " ok\nFinal Answer: 1"])
    trace = ReActAgent(llm, default_tools(), plain_answer_is_final=False).run("q")
    err = trace.events[0]
    assert err.type == "error" and err.raw == "I think Action 1036 maybe"
    assert "Use exactly this format" not in err.content  # the reminder goes to the model, not the screen
    assert "Use exactly this format" in llm.calls[1]["messages"][-1]["content"]


def test_constrained_true_needs_a_backend_with_grammars():
    with pytest.raises(ValueError, match="constrained=False"):
        ReActAgent(ScriptedLLM([]), default_tools(), constrained=True)
    assert ReActAgent(ScriptedLLM([]), default_tools()).constrained is False


def test_a_label_right_after_the_primed_thought_is_read():
    trace = ReActAgent(ScriptedLLM([" Final Answer: 4"]), default_tools(), plain_answer_is_final=False).run("q")
    assert trace.answer == "4" and not [e for e in trace.events if e.type == "error"]
    llm = ScriptedLLM([' Action: calculator\nAction Input: {"expression": "6*7"}', " ok\nFinal Answer: 42"])
    trace = ReActAgent(llm, default_tools()).run("q")
    assert [e.content for e in trace.events if e.type == "observation"] == ["42"]


def test_tool_argument_kinds():
    from pydantic import Field

    tools = ToolRegistry([date_tool(lambda: date(2026, 1, 2)), calculator_tool()])

    @tools.tool
    def pick(k: int = Field(..., ge=1, le=10)) -> int:
        "Pick k."
        return k

    assert tools.get("current_date").run("No input needed").ok  # a tool without arguments ignores junk
    assert not tools.get("pick").run({}).ok and not tools.get("pick").run({"k": 99}).ok
    assert tools.get("pick").run({"k": 3}).text == "3"
    assert tools.get("calculator").run({"expression": 1500}).text == "1500"  # a number where text is expected
    assert tools.get("__calculator__") is tools.get("calculator")
