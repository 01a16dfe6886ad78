"""agents.openai_llm against an in-process fake OpenAI-compatible server (tests/agents/fake_openai.py)."""
from __future__ import annotations

import json
import socket
import time

import pytest

from agents.agent import STOP_SEQUENCES, Generation, ReActAgent
from agents.grammar import react_grammar
from agents.openai_llm import (ContextTooLongError, LLMServerError, LLMUnreachableError, ModelNotServedError,
                               OpenAILLM, api_key_from_env)
from agents.tools import default_tools
from align.errors import KeelError
from tests.agents.fake_openai import FakeOpenAIServer

CALL = 'I need to compute.\nAction: calculator\nAction Input: {"expression": "17 * 23"}\nObservation: 999'
FINAL = " I know the answer.\nFinal Answer: 391"


@pytest.fixture(scope="module")
def tokenizer(embedded_dir):
    from align.models import load_tokenizer

    return load_tokenizer(str(embedded_dir))


def _streamed(llm, messages, **kw):
    pieces, gen = [], None
    for item in llm.stream_generate(messages, **kw):
        if isinstance(item, Generation):
            gen = item
        else:
            pieces.append(item)
    return pieces, gen


def test_completions_stream_applies_the_template_locally_and_cuts_at_stop(tokenizer):
    with FakeOpenAIServer([CALL]) as srv:
        llm = OpenAILLM(srv.url, tokenizer=tokenizer)
        assert llm.api == "completions" and llm.model == "tiny"  # the only model the server lists
        messages = [{"role": "user", "content": "17*23?"}, {"role": "assistant", "content": "Thought:"}]
        pieces, gen = _streamed(llm, messages, stop=STOP_SEQUENCES, max_new_tokens=64, continue_final=True)
        body = srv.posts[-1]
    assert len(pieces) > 1  # streamed in pieces over SSE
    assert gen.text == "".join(pieces) == CALL.split("\nObservation:")[0]
    assert gen.tokens == len(gen.text.split())  # from the usage chunk
    assert body["path"] == "/v1/completions" and body["stream"] is True
    assert body["stop"] == STOP_SEQUENCES and body["max_tokens"] == 64
    # continue_final: the prompt ends with the partial assistant message, no new turn opened after it
    assert body["prompt"].endswith("<|im_start|>assistant\nThought:")
    assert body["add_special_tokens"] is False


def test_agent_answers_a_calculator_question_with_the_grammar_sent(tokenizer):
    tools = default_tools(None)
    with FakeOpenAIServer([CALL, FINAL]) as srv:
        llm = OpenAILLM(srv.url, tokenizer=tokenizer)
        trace = ReActAgent(llm, tools, max_steps=3, constrained=True, stream_tokens=True).run("What is 17*23?")
        posts = srv.posts
    assert trace.answer == "391"
    call = trace.tool_calls[0]
    assert call.tool == "calculator" and call.args == {"expression": "17 * 23"}
    assert [e.content for e in trace.events if e.type == "observation"] == ["391"]
    assert len(posts) == 2
    for body in posts:
        assert body["structured_outputs"] == {"grammar": react_grammar(tools)}
    # the second step continues after the real observation, not the invented one
    assert "Observation: 391\nThought:" in posts[1]["prompt"] and "999" not in posts[1]["prompt"]


def test_grammar_none_runs_unconstrained(tokenizer):
    with FakeOpenAIServer([FINAL]) as srv:
        llm = OpenAILLM(srv.url, tokenizer=tokenizer, grammar="none")
        assert not llm.supports_grammar
        with pytest.raises(ValueError, match="constrained=False"):
            ReActAgent(llm, default_tools(None), constrained=True)
        ReActAgent(llm, default_tools(None), constrained=None).run("hi")
        assert "structured_outputs" not in srv.posts[-1]


def test_chat_api_continues_the_final_message_and_reads_native_tool_calls():
    reply = {"content": "", "tool_calls": [{"name": "calculator", "arguments": {"expression": "2+2"}}]}
    with FakeOpenAIServer([reply, "4"]) as srv:
        llm = OpenAILLM(srv.url, "tiny", native_tools=True)
        assert llm.api == "chat" and llm.supports_native_tools
        gen = llm.generate([{"role": "user", "content": "x"}, {"role": "assistant", "content": "Thought:"}],
                           stop=["\nObservation:"], max_new_tokens=8, continue_final=True)
        body = srv.posts[-1]
        assert body["path"] == "/v1/chat/completions"
        assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
        assert '"name": "calculator"' in gen.text and gen.text.startswith("<tool_call>")
        # the native loop end to end, streamed: tool call fragments are joined, results sent back with ids
        srv.replies = [reply, "The answer is 4."]
        trace = ReActAgent(llm, default_tools(None), format="native", constrained=False,
                           stream_tokens=True).run("2+2?")
        assert trace.answer == "The answer is 4." and trace.tool_calls[0].args == {"expression": "2+2"}
        last = srv.posts[-1]
        assert [t["function"]["name"] for t in last["tools"]] == ["calculator", "search"] or last["tools"]
        tool_msg = [m for m in last["messages"] if m["role"] == "tool"][0]
        call_msg = [m for m in last["messages"] if m.get("tool_calls")][0]
        assert tool_msg["tool_call_id"] == call_msg["tool_calls"][0]["id"]
        assert isinstance(call_msg["tool_calls"][0]["function"]["arguments"], str)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_is_down_is_a_clear_error():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    started = time.time()
    with pytest.raises(LLMUnreachableError, match="cannot reach the LLM server at .* is it running"):
        OpenAILLM(url, "tiny", max_retries=0, timeout_s=5)
    # a server that goes away after the start: the same error on generate
    with FakeOpenAIServer() as srv:
        llm = OpenAILLM(srv.url, "tiny", max_retries=0, timeout_s=5)
    with pytest.raises(LLMUnreachableError):
        llm.generate([{"role": "user", "content": "x"}], stop=[], max_new_tokens=4)
    assert time.time() - started < 20


def test_an_unknown_model_name_lists_the_served_ones():
    with FakeOpenAIServer() as srv:
        with pytest.raises(ModelNotServedError, match="does not serve a model named 'llama-70b'; it serves: tiny"):
            OpenAILLM(srv.url, "llama-70b", max_retries=0)  # checked at the start
        llm = OpenAILLM(srv.url, "llama-70b", max_retries=0, check=False)  # or unloaded later
        with pytest.raises(ModelNotServedError, match="does not serve a model named 'llama-70b'; it serves: tiny") as e:
            llm.generate([{"role": "user", "content": "x"}], stop=[], max_new_tokens=4)
        assert e.value.served == ["tiny"]
        with pytest.raises(ModelNotServedError):  # streamed too
            list(llm.stream_generate([{"role": "user", "content": "x"}], stop=[], max_new_tokens=4))


def test_a_context_that_is_too_long_is_named(tokenizer):
    with FakeOpenAIServer(max_context=200) as srv:
        llm = OpenAILLM(srv.url, tokenizer=tokenizer, max_retries=0)
        with pytest.raises(ContextTooLongError, match="too long for tiny .* maximum context length is 200"):
            llm.generate([{"role": "user", "content": "word " * 100}], stop=[], max_new_tokens=4)
        assert len(srv.posts) == 1  # a 400 is not retried


def test_transient_failures_are_retried_then_reported():
    with FakeOpenAIServer(["ok"], fail_first=2) as srv:
        llm = OpenAILLM(srv.url, "tiny", max_retries=2)
        assert llm.generate([{"role": "user", "content": "x"}], stop=[], max_new_tokens=4).text == "ok"
        assert len(srv.posts) == 3  # two 503s, then the answer
    with FakeOpenAIServer(["ok"], fail_first=10) as srv:
        llm = OpenAILLM(srv.url, "tiny", max_retries=1)
        with pytest.raises(LLMServerError, match=r"refused the request \(503\): server busy"):
            llm.generate([{"role": "user", "content": "x"}], stop=[], max_new_tokens=4)
        assert len(srv.posts) == 2


def test_a_slow_server_times_out_with_a_clear_error():
    with FakeOpenAIServer(["late"], delay_s=3) as srv:
        llm = OpenAILLM(srv.url, "tiny", max_retries=0, timeout_s=0.5)
        with pytest.raises(LLMUnreachableError, match="did not answer within 0.5 s"):
            llm.generate([{"role": "user", "content": "x"}], stop=[], max_new_tokens=4)


def test_api_key_env(monkeypatch):
    monkeypatch.delenv("KEEL_TEST_KEY", raising=False)
    with pytest.raises(KeelError, match="KEEL_TEST_KEY is not set"):
        api_key_from_env("KEEL_TEST_KEY")
    monkeypatch.setenv("KEEL_TEST_KEY", "sk-1")
    assert api_key_from_env("KEEL_TEST_KEY") == "sk-1"


def test_agents_cli_runs_through_a_server(capsys, embedded_dir):
    from agents.cli import main

    with FakeOpenAIServer([CALL, FINAL]) as srv:
        rc = main(["run", "What is 17*23?", "--index", "none", "--llm-url", srv.url, "--llm-template", "checkpoint",
                   "--checkpoint", str(embedded_dir), "--json"])
        assert rc == 0
        assert srv.posts[0]["path"] == "/v1/completions" and "structured_outputs" in srv.posts[0]
    trace = json.loads(capsys.readouterr().out)
    assert trace["answer"] == "391"
    with FakeOpenAIServer() as srv:
        assert main(["run", "hi", "--index", "none", "--llm-url", srv.url, "--llm-model", "nope"]) == 2
    assert "does not serve a model named 'nope'" in capsys.readouterr().err
