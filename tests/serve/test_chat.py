import re
import urllib.request

from serve.app import build_app
from serve.chat import ChatModel, ChatSettings, answered_turn, literal_markdown, message_text, to_chat_messages
from tests.agents.test_agent import ScriptedLLM
from agents.tools import ToolRegistry, calculator_tool, search_tool


def test_gradio_content_parts_become_plain_messages_and_steps_are_left_out():
    history = [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
               {"role": "assistant", "content": "`calculator` {}", "metadata": {"title": "🛠️ calculator"}},
               {"role": "assistant", "content": "hello"}]
    msgs = to_chat_messages(history, [{"type": "text", "text": "again"}], "be brief")
    assert msgs == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}]
    assert message_text(None) == "" and message_text({"text": "x"}) == "x"


def test_plain_chat_streams_a_growing_answer(tiny_model_dir):
    chat = ChatModel(str(tiny_model_dir), ChatSettings(max_new_tokens=8, agent=False))
    chunks = list(chat.respond("hello", [], "sys"))
    assert chunks and all(b.startswith(a) for a, b in zip(chunks, chunks[1:]))


class FakeHit:
    text, source, heading = "Resume with --resume.", "README.md", "Run folders"


class FakeRetriever:
    def search(self, query, k):
        return [FakeHit(), FakeHit()]  # two chunks of the same section: one source


class BracketHit:
    text, source, heading = "The crane lifts 38 tonnes.", "uploads/notes (1).md", "Harbour crane (v4)"


class BracketRetriever:
    def search(self, query, k):
        return [BracketHit(), FakeHit()]


def test_sources_whose_names_hold_brackets_are_listed_whole(tiny_model_dir):
    llm = ScriptedLLM([' look it up\nAction: search\nAction Input: {"query": "crane"}', " done\nFinal Answer: 38 tonnes."])
    chat = ChatModel(str(tiny_model_dir), ChatSettings(), llm=llm, tools=ToolRegistry([search_tool(BracketRetriever())]))
    final = list(chat.respond("crane?", [], None, turn={}))[-1]
    assert final[-1]["content"].endswith("**Sources:** uploads/notes (1).md § Harbour crane (v4); README.md § Run folders")


def test_agent_turn_shows_collapsible_steps_then_the_answer_with_sources(tiny_model_dir):
    llm = ScriptedLLM([' look it up\nAction: search\nAction Input: {"query": "resume"}',
                       ' compute\nAction: calculator\nAction Input: {"expression": "6*7"}',
                       " done\nFinal Answer: Use --resume; and 42."])
    tools = ToolRegistry([search_tool(FakeRetriever()), calculator_tool()])
    chat = ChatModel(str(tiny_model_dir), ChatSettings(), llm=llm, tools=tools)
    turn = {}
    updates = list(chat.respond("how?", [], None, turn=turn))
    final = updates[-1]
    titles = [m.get("metadata", {}).get("title") for m in final]
    assert titles == ["💭 Thought", '🛠️ search(query="resume")', "💭 Thought", '🛠️ calculator(expression="6*7")',
                      "💭 Thought", None]
    calc = final[3]
    assert calc["metadata"]["status"] == "done" and "**Observation**:\n42" in calc["content"]
    assert final[-1]["content"] == "Use --resume; and 42.\n\n**Sources:** README.md § Run folders"
    assert len(updates) > 3  # streamed step by step
    assert turn["answer"] == "Use --resume; and 42." and len(turn["trace"]["events"]) == 8


class StreamingLLM(ScriptedLLM):
    """Scripted steps streamed ``chunk`` characters at a time, then the Generation."""

    def __init__(self, steps, chunk: int = 4):
        super().__init__(steps)
        self.chunk = chunk

    def stream_generate(self, messages, **kw):
        gen = self.generate(messages, **kw)
        for i in range(0, len(gen.text), self.chunk):
            yield gen.text[i:i + self.chunk]
        yield gen


def test_answer_streams_token_by_token_through_the_agent(tiny_model_dir):
    llm = StreamingLLM([" easy\nFinal Answer: The answer is forty-two."])
    chat = ChatModel(str(tiny_model_dir), ChatSettings(), llm=llm, tools=ToolRegistry([calculator_tool()]))
    updates = list(chat.respond("q", [], None))
    answers = [u[-1]["content"] for u in updates if not u[-1].get("metadata")]
    assert len(answers) >= 5 and answers[-1] == "The answer is forty-two."
    assert all(answers[-1].startswith(a) for a in answers[:-2] if a)  # grows piece by piece
    assert any((u[-1].get("metadata") or {}).get("title") == "💭 Thinking…" for u in updates)


def test_answered_turn_finds_the_answer_of_a_grouped_turn():
    history = [{"role": "user", "content": "q"},
               {"role": "assistant", "content": "step", "metadata": {"title": "🛠️ calculator"}},
               {"role": "assistant", "content": "42\n\n**Sources:** a.md"},
               {"role": "user", "content": "q2"}, {"role": "assistant", "content": "x"}]
    before, text, idx = answered_turn(history, 1)  # a like on the tool step rates the turn's answer
    assert before == history[:1] and text == "42" and idx == 2
    assert answered_turn(history, 4)[1] == "x" and answered_turn(history, 0) is None


def test_app_serves_on_loopback(tiny_model_dir):
    demo = build_app(ChatModel(str(tiny_model_dir), ChatSettings(agent=False)))
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True)
    try:
        assert demo.server_name == "127.0.0.1"
        with urllib.request.urlopen(demo.local_url, timeout=30) as r:
            assert r.status == 200 and b"Keel" in r.read()
    finally:
        demo.close()


def test_an_unreadable_step_is_one_collapsed_line_with_what_the_model_wrote(tiny_model_dir):
    llm = ScriptedLLM([" I think\nAction:\nAction Input: 1036", " ok\nFinal Answer: 9396"])
    chat = ChatModel(str(tiny_model_dir), ChatSettings(), llm=llm, tools=ToolRegistry([calculator_tool()]))
    chat_agent_strict = chat.respond_agent("What is 348 * 27?", [], None)
    final = list(chat_agent_strict)[-1]
    err = next(m for m in final if (m.get("metadata") or {}).get("title", "").startswith("⚠️"))
    assert err["metadata"]["status"] == "done" and "\n" not in err["metadata"]["title"]
    assert "Action Input: 1036" in err["content"] and "names no tool" in err["metadata"]["title"]
    assert "Use exactly this format" not in err["content"]
    assert final[-1]["content"] == "9396"


def test_thoughts_are_shown_as_written_not_as_markdown(tiny_model_dir):
    llm = ScriptedLLM([" The second group costs 3*5* = $15, then 12*3 _each_ [1]\nFinal Answer: **96**"])
    chat = ChatModel(str(tiny_model_dir), ChatSettings(), llm=llm, tools=ToolRegistry([calculator_tool()]))
    final = list(chat.respond("how much?", [], None, turn={}))[-1]
    thought = final[0]["content"]
    assert thought == r"The second group costs 3\*5\* = \$15, then 12\*3 \_each\_ \[1\]"
    assert final[-1]["content"] == "**96**"  # the answer keeps its Markdown
    assert re.sub(r"\\(.)", r"\1", literal_markdown("a*b_c `x` <b> # 1. - !|~")) == "a*b_c `x` <b> # 1. - !|~"
