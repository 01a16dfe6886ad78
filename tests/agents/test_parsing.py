import pytest

from agents.parsing import ParseError, parse_react, parse_tool_calls


@pytest.mark.parametrize("text,action,args", [
    ('Thought: t\nAction: calculator\nAction Input: {"expression": "48/2"}', "calculator", {"expression": "48/2"}),
    ('Thought: t\nAction: calculator\nAction Input: ```json\n{"expression": "1+1"}\n```', "calculator", {"expression": "1+1"}),
    ('```\nThought: t\nAction: calculator\nAction Input: {"expression": "1+1"}\n```', "calculator", {"expression": "1+1"}),
    ("Action: calculator\nAction Input: {expression: 48/2}", "calculator", {"expression": "48/2"}),
    ("Action: calculator\nAction Input: {'expression': '3*4'} which should be 12", "calculator", {"expression": "3*4"}),
    ('Action: calculator\nAction Input: {"expression": "2+2"}\nObservation: 5\nFinal Answer: 5', "calculator",
     {"expression": "2+2"}),
    ("Action: calculator(2+2)", "calculator", "2+2"),
    ("Action: calculator\nAction Input: 5*5", "calculator", "5*5"),
    ("Action: `search`\nAction Input: {\"query\": \"faiss\", \"k\": 2}", "search", {"query": "faiss", "k": 2}),
    ("Action: [calculator]\nAction Input: {\"expression\": \"1+1\"}", "calculator", {"expression": "1+1"}),
    ("Action: **search**\nAction Input: {\"query\": \"a\"}", "search", {"query": "a"}),
    ("Action: current_date()", "current_date", None),
    ("Thought: hmm\nAction: current_date", "current_date", None),
    ("Action: current_date\nAction Input: {}", "current_date", None),
    ("Action: current_date\nAction Input: None", "current_date", None),
    ('Action: search\nAction Input: {"query": "first line\nsecond"}', "search", {"query": "first line\nsecond"}),
    # Python call syntax, keyword arguments (literals only, never eval)
    ('Action: search(query="faiss", k=2)', "search", {"query": "faiss", "k": 2}),
    ('Action: search\nAction Input: query="faiss"', "search", {"query": "faiss"}),
    ('Action: search("faiss")', "search", "faiss"),
    ('Action: calculator()\nAction Input: {"expression": "2+2"}', "calculator", {"expression": "2+2"}),
    ("Action: **Calculator**(2+2)", "Calculator", "2+2"),
    ("Action: [calculator](2+2)", "calculator", "2+2"),
    # JSON slips
    ('Action: search\nAction Input: {"query": "faiss", "k": 2,}', "search", {"query": "faiss", "k": 2}),
    ('Action: s\nAction Input: {"flag": True, "n": None}', "s", {"flag": True, "n": None}),
    ("Action: calculator\nAction Input: `2+2`", "calculator", "2+2"),
    ('**Action:** calculator\n**Action Input:** {"expression": "2+2"}', "calculator", {"expression": "2+2"}),
])
def test_tolerant_action_parsing(text, action, args):
    step = parse_react(text)
    assert (step.action, step.action_input, step.final_answer) == (action, args, None)


def test_final_answer_keeps_fences_and_label_words():
    text = "Thought: t\nFinal Answer: Like this:\n```python\nprint('Action: x')\n```\nThe Observation: label is ours."
    assert parse_react(text).final_answer == ("Like this:\n```python\nprint('Action: x')\n```\n"
                                              "The Observation: label is ours.")


@pytest.mark.parametrize("text,answer", [
    ("**Final Answer:** 4", "4"),
    ("Action: None\nFinal Answer: 4", "4"),
    ("Action: Final Answer\nAction Input: 4", "4"),
    ("```\nThought: t\nFinal Answer: 5\n```", "5"),
])
def test_final_answer_variants(text, answer):
    assert parse_react(text).final_answer == answer


def test_final_answer_and_thought():
    step = parse_react("Thought: done now\nFinal Answer: 72 apples\nObservation: junk")
    assert step.thought == "done now" and step.final_answer == "72 apples" and step.action is None


@pytest.mark.parametrize("text,msg", [
    ("just chatting", "No 'Action:'"),
    ('Action: calculator\nAction Input: {"expression": ', "not valid JSON"),
    ("Action:\nAction Input: {}", "names no tool"),
    ("Final Answer:", "empty"),
])
def test_parse_failures_explain_the_format(text, msg):
    with pytest.raises(ParseError, match=msg) as e:
        parse_react(text)
    assert "Final Answer: <answer>" in str(e.value)


def test_native_tool_calls():
    text = 'ok <tool_call>\n{"name": "calculator", "arguments": {"expression": "1+2"}}\n</tool_call>' \
           '<tool_call>{"name": "current_date", "arguments": "{}"}</tool_call>'
    assert parse_tool_calls(text) == [("calculator", {"expression": "1+2"}), ("current_date", {})]
    assert parse_tool_calls("no calls here") == []
    with pytest.raises(ParseError):
        parse_tool_calls('<tool_call>{"arguments": {}}</tool_call>')


# --- the parser as attack surface (issue 21, item 11) ------------------------------------------
import time  # noqa: E402

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from agents.parsing import MAX_JSON_DEPTH  # noqa: E402
from agents.rl import tool_format  # noqa: E402


@pytest.mark.parametrize("depth", [100, 1_000, 100_000])
def test_deeply_nested_arguments_are_a_parse_error_in_both_formats(depth):
    nested = "[" * depth + "]" * depth
    for text in (f"Action: calculator\nAction Input: {nested}",
                 f'Action: calculator\nAction Input: {{"expression": {nested}}}',
                 f"Action: calculator({nested})",
                 "Action: calculator\nAction Input: " + '{"a":' * depth):
        with pytest.raises(ParseError, match="nested"):
            parse_react(text)
    for text in (f'<tool_call>{{"name": "calculator", "arguments": {nested}}}</tool_call>',
                 '<tool_call>{"name": "calculator", "arguments": ' + '{"a": ' * depth,
                 f'<tool_call>{{"name": "calculator", "arguments": "{nested}"}}</tool_call>'):
        with pytest.raises(ParseError, match="nested"):
            parse_tool_calls(text)


def test_nesting_within_the_limit_still_parses():
    value = {"a": 1}
    for _ in range(MAX_JSON_DEPTH - 1):
        value = {"a": value}
    import json

    step = parse_react("Action: search\nAction Input: " + json.dumps(value))
    assert step.action_input == value
    brackets_in_a_string = '{"query": "' + "[" * 500 + '"}'
    assert parse_react("Action: search\nAction Input: " + brackets_in_a_string).action_input == \
        {"query": "[" * 500}


# One family per way a pattern can go quadratic on untrusted output (a line-start anchor followed
# by whitespace that crosses lines; a lazy body followed by optional whitespace; a scan from every
# colon; a fence whose language tag and whitespace can trade characters; a line repeating a label).
_FAMILIES = {
    "blank lines": lambda n: "\n" * n,
    "blank lines after the primed Thought": lambda n: "Thought:" + "\n" * n,
    "blank lines inside a final answer": lambda n: "Final Answer: x" + "\n" * n + "y",
    "unclosed fence then spaces": lambda n: "```" + " " * n,
    "fences and newlines": lambda n: "```\n" * (n // 4),
    "colons in an input": lambda n: 'Action: x\nAction Input: {"a": ' + ":b" * (n // 2),
    "unquoted keys": lambda n: "Action: x\nAction Input: {" + "a:" * (n // 2),
    "spaces in a native call": lambda n: "<tool_call>{" + " " * n + "x",
    "bold labels": lambda n: "\n" + "**" * (n // 2),
    "repeated labels": lambda n: "Thought: a\n" * (n // 11),
}


def _parse_time(text: str, fn) -> float:
    started = time.perf_counter()
    try:
        fn(text)
    except ParseError:
        pass
    return time.perf_counter() - started


@pytest.mark.parametrize("family", list(_FAMILIES))
def test_parsing_time_is_linear_in_the_output_length(family):
    make = _FAMILIES[family]
    fn = parse_tool_calls if "native" in family else parse_react
    # Quadratic patterns took 4-20 s here at 12,500 characters; linear ones take milliseconds.
    assert _parse_time(make(20_000), fn) < 0.5
    times = {n: min(_parse_time(make(n), fn) for _ in range(3)) for n in (50_000, 100_000, 200_000)}
    assert times[200_000] < 0.05 + 8 * times[50_000], times  # 4x the text: ~4x the time, not 16x


def test_tool_format_reward_is_linear_and_unchanged():
    assert tool_format(None, ["Action: calculator\nAction Input: {}\nObservation: 4\nFinal Answer: 4"]) == [1.0]
    assert tool_format(None, ["Action: calculator\n\n  Action Input: {} Observation: 4"]) == [0.5]
    assert tool_format(None, ["Action Input: {}\nObservation: 4"]) == [0.0]
    started = time.perf_counter()
    tool_format(None, ["Action:" * 30_000])  # the single regex took 3.5 s at 20,000 repeats
    assert time.perf_counter() - started < 0.5


_VALID_OUTPUTS = [
    'Thought: I need to add.\nAction: calculator\nAction Input: {"expression": "48/2"}',
    "Thought: t\nAction: calculator\nAction Input: ```json\n{'expression': '1+1'}\n```",
    'Action: search(query="faiss", k=2)',
    "Action: **search**\nAction Input: {query: faiss index, k: 2,}",
    "Thought: done\nFinal Answer: ```python\nprint(1)\n```\nObservation: x",
    'ok <tool_call>\n{"name": "calculator", "arguments": {"expression": "1+2"}}\n</tool_call>',
    '<tool_call>{"name": "current_date", "arguments": "{}"}</tool_call><tool_call>{"name": "x"',
]
_TOKENS = ["\n", " ", "Thought:", "Action:", "Action Input:", "Final Answer:", "Observation:", "**", "```", "`",
           "{", "}", "[", "]", "(", ")", '"', "'", ":", ",", "=", "\\", "<tool_call>", "</tool_call>", "True",
           "None", "null", "-1e999", "\x00", "\ufeff", "é", "[" * 60, "{\"a\":" * 40, "[" * 3000,
           "{\"a\": " * 1500]


@st.composite
def _mutated(draw):
    text = draw(st.sampled_from(_VALID_OUTPUTS))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "duplicate", "truncate", "nest"]))
        colons = [i + 1 for i, ch in enumerate(text) if ch in ":(["]
        if kind == "nest" and colons:  # deep nesting where a value starts
            at = draw(st.sampled_from(colons))
            text = text[:at] + draw(st.sampled_from(["[", "{\"a\": ", "("])) * draw(st.integers(1, 5000)) + text[at:]
        elif kind == "insert":
            text = text[:pos] + draw(st.sampled_from(_TOKENS + [draw(st.text(max_size=5))])) + text[pos:]
        elif kind == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 8)):]
        elif kind == "duplicate":
            text = text[:pos] + text[pos:pos + draw(st.integers(1, 30))] * draw(st.integers(2, 5)) + text[pos:]
        else:
            text = text[:pos]
    return text


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_mutated_outputs_raise_only_parse_errors(text):
    for fn in (parse_react, parse_tool_calls):
        try:
            result = fn(text)
        except ParseError:
            continue
        if fn is parse_tool_calls:
            assert all(isinstance(name, str) for name, _ in result)
        else:
            assert result.action is not None or result.final_answer is not None


@pytest.mark.parametrize("text,answer", [
    # a small model runs on from its answer into another step: the answer ends there
    ("Thought: t\nFinal Answer: Canberra.\nThought: Passage [1] answers this.\nFinal Answer: x", "Canberra."),
    ("Thought: t\nFinal Answer: Van Gogh painted it.\nThought : done", "Van Gogh painted it."),
    ("Thought: t\nFinal Answer: 42\n  Action: calculator\nAction Input: {}", "42"),
    ("Thought: t\nFinal Answer: 42\nFinal Answer: 42", "42"),
    ("Thought: t\nFinal Answer: 42\nobservation: made up", "42"),
    # a label inside a code fence, or not at a line's start, or lower-case prose: kept
    ("Thought: t\nFinal Answer: Like this:\n```\nThought: plan\nAction: search\n```\ndone", 
     "Like this:\n```\nThought: plan\nAction: search\n```\ndone"),
    ("Thought: t\nFinal Answer: Next action: rest.\nthought: a note", "Next action: rest.\nthought: a note"),
])
def test_final_answer_ends_at_a_run_on_step(text, answer):
    assert parse_react(text).final_answer == answer
