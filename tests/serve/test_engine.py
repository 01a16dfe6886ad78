"""serve.engine: the app answering through an OpenAI-compatible server, and the vLLM child process
(driven here with a stand-in ``vllm`` package that serves tests/agents/fake_openai.py)."""
from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from agents.openai_llm import LLMUnreachableError
from align.errors import KeelError
from serve.chat import ChatSettings
from serve.cli import serve_config
from serve.engine import EngineError, RemoteChatModel, VLLMEngine
from tests.agents.fake_openai import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[2]
CALL = 'Add them.\nAction: calculator\nAction Input: {"expression": "2 + 3"}'
FINAL = " Done.\nFinal Answer: 5"


def test_answers_through_a_server_and_feedback_names_the_served_model(tmp_path, tiny_model_dir):
    from serve.feedback import FeedbackStore

    store = FeedbackStore(tmp_path / "fb.db")
    with FakeOpenAIServer([CALL, FINAL]) as srv:
        # the server's own template (chat API): the checkpoint is the server's model name and URL
        chat = RemoteChatModel(None, ChatSettings(), url=srv.url, local_template=False)
        turn: dict = {}
        shown = list(chat.respond("2+3?", [], None, turn=turn))[-1]
        assert turn["answer"] == "5" and shown[-1]["content"].startswith("5")
        assert chat.checkpoint_id == f"tiny @ {srv.url}" == turn["trace"]["served_by"]
        assert srv.posts[0]["path"] == "/v1/chat/completions" and srv.posts[0]["continue_final_message"] is True
        rid = store.add_response("s", chat.checkpoint_id, [{"role": "user", "content": "2+3?"}], turn["answer"],
                                 trace=turn["trace"])
        assert store.response(rid).checkpoint_id == f"tiny @ {srv.url}"
        # the checkpoint's template applied here (completions API): feedback names the checkpoint
        srv.replies = [FINAL]
        chat = RemoteChatModel(str(tiny_model_dir), ChatSettings(agent=False), url=srv.url, local_template=True)
        assert chat.checkpoint_id == str(tiny_model_dir) and chat.model is None  # no weights loaded here
        turn = {}
        list(chat.respond("hi", [], "Be brief.", turn=turn))
        assert turn["answer"] == FINAL.strip() and turn["trace"] == {"served_by": f"tiny @ {srv.url}"}
        assert srv.posts[-1]["path"] == "/v1/completions" and "Be brief." in srv.posts[-1]["prompt"]
        # Regenerate samples on the server
        list(chat.respond("hi", [], None, turn={}, sample=True))
        assert srv.posts[-1]["temperature"] == pytest.approx(0.8) and srv.posts[-1]["top_p"] == pytest.approx(0.95)
        with pytest.raises(KeelError, match="needs --engine vllm"):
            chat.switch(str(tiny_model_dir))


def test_a_server_that_is_down_stops_the_start_with_one_line(tmp_path):
    from serve.cli import main

    url = "http://127.0.0.1:9/v1"
    rc = main(["--llm-url", url, "--feedback-db", "none", "--index", "none"])
    assert rc == 2


def test_serve_flags_and_config(tmp_path):
    cfg = serve_config(["--llm-url", "http://h:1/v1", "--llm-model", "m", "--llm-api-key-env", "K",
                        "--llm-template", "checkpoint"])
    assert (cfg.llm_url, cfg.llm_model, cfg.llm_api_key_env, cfg.llm_template) == ("http://h:1/v1", "m", "K",
                                                                                  "checkpoint")
    cfg = serve_config(["--engine", "vllm", "--vllm-python", "/x/python", "--vllm-arg=--enforce-eager"])
    assert cfg.engine == "vllm" and cfg.vllm_python == "/x/python" and cfg.vllm_args == ["--enforce-eager"]
    yaml = tmp_path / "s.yaml"
    yaml.write_text("engine: vllm\nvllm_args: ['--max-num-seqs', '8']\n")
    assert serve_config(["--config", str(yaml)]).vllm_args == ["--max-num-seqs", "8"]
    with pytest.raises(KeelError, match="drop --llm-url"):
        serve_config(["--engine", "vllm", "--llm-url", "http://h:1/v1"])
    yaml.write_text("engine: sglang\n")
    with pytest.raises(KeelError, match="engine"):
        serve_config(["--config", str(yaml)])


# --- the vLLM child process, with a stand-in vllm package --------------------------------------
FAKE_API_SERVER = textwrap.dedent('''
    import argparse, os, sys, time
    sys.path.insert(0, os.environ["KEEL_REPO"])
    from tests.agents.fake_openai import FakeOpenAIServer
    print("fake vllm argv:", " ".join(sys.argv[1:]), flush=True)
    print("api key set:", bool(os.environ.get("VLLM_API_KEY")), flush=True)
    if os.environ.get("FAKE_VLLM_FAIL"):
        print("RuntimeError: cannot load the model", flush=True)
        sys.exit(1)
    p = argparse.ArgumentParser()
    p.add_argument("--model"); p.add_argument("--served-model-name"); p.add_argument("--port", type=int)
    p.add_argument("--lora-modules", nargs="*", default=[])
    a, _ = p.parse_known_args()
    time.sleep(float(os.environ.get("FAKE_VLLM_WARMUP", "0")))
    srv = FakeOpenAIServer([" Done.\\nFinal Answer: 5"], model=a.served_model_name, port=a.port)
    srv.models += [m.split("=")[0] for m in a.lora_modules]
    srv.httpd.serve_forever()
''')


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    pkg = tmp_path / "fakevllm" / "vllm" / "entrypoints" / "openai"
    pkg.mkdir(parents=True)
    for d in (pkg.parent.parent, pkg.parent, pkg):
        (d / "__init__.py").write_text("")
    (pkg / "api_server.py").write_text(FAKE_API_SERVER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fakevllm"))
    monkeypatch.setenv("KEEL_REPO", str(REPO))
    return tmp_path


def _adapter(tmp_path: Path, name: str, base: Path, r: int = 8) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "r": r,
                                                            "peft_type": "LORA"}))
    return folder


def test_vllm_not_installed_is_a_clear_error(tmp_path):
    with pytest.raises(EngineError, match="does not exist. Create vLLM's venv with scripts/setup_vllm_cpu.sh"):
        VLLMEngine(str(tmp_path / "nope" / "python")).check_installed()
    if shutil.which("python3") and os.environ.get("PYTHONPATH", "").find("fakevllm") < 0:
        with pytest.raises(EngineError, match="vLLM is not installed for"):
            VLLMEngine(sys.executable).check_installed()


def test_engine_serves_a_lora_on_its_base_loads_adapters_and_restarts_for_full_checkpoints(
        fake_vllm, tmp_path, tiny_model_dir):
    first = _adapter(tmp_path, "sft-a", tiny_model_dir)
    second = _adapter(tmp_path, "sft-b", tiny_model_dir)
    engine = VLLMEngine(sys.executable, tmp_path / "run" / "engine", start_timeout_s=60)
    chat = RemoteChatModel(str(first), ChatSettings(agent=False), engine=engine)
    try:
        log = engine.log_path.read_text()
        assert engine.log_path.parent == tmp_path / "run" / "engine"
        assert f"--model {tiny_model_dir}" in log and f"--lora-modules sft-a={first}" in log
        assert "--enable-lora --max-lora-rank 8" in log and "--dtype float32" in log
        assert "--structured-outputs-config.backend guidance" in log
        assert chat.llm.model == "sft-a" and chat.llm.api == "completions"
        assert chat.checkpoint_id == str(first)
        turn: dict = {}
        list(chat.respond("hi", [], None, turn=turn))
        assert turn["answer"] == "Done.\nFinal Answer: 5"
        pid = engine.proc.pid
        chat.switch(str(second))  # same base: loaded into the running server
        assert engine.proc.pid == pid and chat.llm.model == "sft-b" and engine.served_model == "sft-b"
        list(chat.respond("hi", [], None, turn={}))
        chat.switch(str(tiny_model_dir))  # a full model: a new server
        assert engine.proc.pid != pid and chat.llm.model == tiny_model_dir.name
        proc = engine.proc
    finally:
        engine.stop()
    assert proc.poll() is not None  # stopped with the app
    with pytest.raises(LLMUnreachableError):
        chat.llm.generate([{"role": "user", "content": "x"}], stop=[], max_new_tokens=2)


def test_engine_start_failures_name_the_log(fake_vllm, tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_FAIL", "1")
    engine = VLLMEngine(sys.executable, tmp_path / "logs", start_timeout_s=60)
    from align.models import resolve_model

    with pytest.raises(EngineError, match=r"vLLM exited with code 1 while starting(.|\n)*cannot load the model"):
        engine.start(resolve_model(str(tiny_model_dir)))
    monkeypatch.delenv("FAKE_VLLM_FAIL")
    monkeypatch.setenv("FAKE_VLLM_WARMUP", "30")
    engine = VLLMEngine(sys.executable, tmp_path / "logs", start_timeout_s=2)
    with pytest.raises(EngineError, match="did not become healthy within 2 s"):
        engine.start(resolve_model(str(tiny_model_dir)))
    assert not engine.running


def test_serve_cli_engine_vllm_wires_the_child_process(fake_vllm, tmp_path, tiny_model_dir, monkeypatch):
    from serve.cli import _engine_chat

    monkeypatch.setenv("KEEL_TEST_VLLM_KEY", "sk-secret")
    adapter = _adapter(tmp_path, "run-x", tiny_model_dir, r=12)
    yaml = tmp_path / "s.yaml"
    yaml.write_text(f"engine_log_dir: {tmp_path / 'logs'}\nengine_start_timeout_s: 60\n")
    cfg = serve_config(["--config", str(yaml), "--engine", "vllm", "--vllm-python", sys.executable,
                        "--checkpoint", str(adapter), "--vllm-arg=--max-num-seqs=4",
                        "--llm-api-key-env", "KEEL_TEST_VLLM_KEY"])
    chat = _engine_chat(cfg, ChatSettings(), None)
    try:
        log = chat.engine.log_path.read_text()
        assert chat.engine.log_path.parent == tmp_path / "logs"
        assert "--max-lora-rank 16" in log  # rank 12 rounded up to one vLLM accepts
        assert "api key set: True" in log and "sk-secret" not in log  # in its environment, not argv
        assert "--max-num-seqs=4" in log and chat.served_by == f"run-x @ {chat.engine.url}"
    finally:
        chat.engine.stop()


def test_app_through_a_server_stores_the_served_model_and_reports_engine_failures(tmp_path, tiny_model_dir):
    from tests.serve.app_driver import AppDriver

    with FakeOpenAIServer([" ok\nFinal Answer: 5"], max_context=3000) as srv:
        chat = RemoteChatModel(None, ChatSettings(), url=srv.url, local_template=False, timeout_s=5)
        chat.llm.max_retries = 0
        chat.llm.client = chat.llm.client.with_options(max_retries=0)
        app = AppDriver(tiny_model_dir, tmp_path / "fb.db", [], chat=chat)
        app.ask("2+3?")
        assert app.history[-1]["content"][0]["text"] == "5"
        app.rate(0, True)
        rows = app.store.responses()
        assert [r["checkpoint_id"] for r in rows] == [f"tiny @ {srv.url}"]
        assert [f["checkpoint_id"] for f in app.store.feedback()] == [f"tiny @ {srv.url}"]
        assert json.loads(rows[0]["trace_json"])["served_by"] == f"tiny @ {srv.url}"
        status = app.ask("x" * 4000)  # over the fake's context
        assert "too long for the model" in status and "press the 🗑️ icon" in status
    app.clear()
    status = app.ask("again?")  # the server is gone
    assert "The model server did not answer" in status and srv.url not in status
    assert len(app.store.responses()) == 1  # nothing stored for the failures

