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
