import json

import pytest

from align.errors import ConfigError
from serve.cli import main, serve_config
from serve.feedback import FeedbackStore
from tests.conftest import REPO


def test_config_file_then_flags():
    cfg = serve_config(["--config", str(REPO / "configs" / "serve.yaml"), "--port", "9999", "--no-agent"])
    assert cfg.port == 9999 and cfg.agent.enabled is False and cfg.host == "127.0.0.1"
    assert serve_config([]).feedback_db == "runs/feedback.db"
    # the flag vLLM's start-timeout error names, over the config file's key
    assert serve_config(["--config", str(REPO / "configs" / "serve.yaml")]).engine_start_timeout_s == 900
    assert serve_config(["--engine-start-timeout", "1800"]).engine_start_timeout_s == 1800


def test_bad_config_names_the_key(tmp_path):
    bad = tmp_path / "serve.yaml"
    bad.write_text("prot: 80\n")
    with pytest.raises(ConfigError, match="prot"):
        serve_config(["--config", str(bad)])


@pytest.mark.parametrize("flag,value,field", [("--concurrency", "0", "concurrency"),
                                              ("--max-new-tokens", "0", "max_new_tokens"),
                                              ("--temperature", "-1", "temperature"),
                                              ("--temperature", "nan", "temperature"),
                                              ("--max-steps", "0", "max_steps"), ("--port", "70000", "port"),
                                              ("--stream-interval-ms", "-1", "stream_interval_ms"),
                                              ("--stream-interval-ms", "inf", "stream_interval_ms"),
                                              ("--engine-start-timeout", "0", "engine_start_timeout_s"),
                                              ("--engine-start-timeout", "inf", "engine_start_timeout_s")])
def test_out_of_range_settings_are_refused_naming_the_field(flag, value, field):
    with pytest.raises(ConfigError, match=field):
        serve_config([flag, value])


def test_export_feedback_command(tmp_path, capsys):
    store = FeedbackStore(tmp_path / "fb.db")
    store.add_feedback("rating", session_id="s", checkpoint_id="c", prompt=[{"role": "user", "content": "q"}],
                       completion="a", label=True)
    store.close()
    assert main(["export-feedback", "--db", str(tmp_path / "fb.db"), "--out", str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out)["unpaired_rows"] == 1
    assert main(["export-feedback", "--db", str(tmp_path / "none.db"), "--out", str(tmp_path / "o2")]) == 2
    assert "none.db" in capsys.readouterr().err


def test_first_start_says_it_builds_the_knowledge_base_once(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import retrieval.default_kb as kb
    from serve.cli import create_app

    monkeypatch.setenv("KEEL_CACHE_DIR", str(tmp_path / "cache"))
    opened = []

    def fake_open(progress=True, folder=None):
        folder = kb.default_index_dir()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.json").write_text("{}")
        opened.append(folder)
        return None

    monkeypatch.setattr(kb, "open_default_index", fake_open)
    args = ["--checkpoint", str(tiny_model_dir), "--feedback-db", "none"]
    create_app(serve_config(args))
    first = capsys.readouterr().out
    assert "first start: building the default knowledge base" in first and "once" in first and "minutes" in first
    assert "ready in" in first and "loading the model" in first
    create_app(serve_config(args))
    later = capsys.readouterr().out
    assert "first start" not in later and "opening the default knowledge base" in later and len(opened) == 2


# --- issue 17: one serve config object, one default system prompt ----------------------------------

def test_the_chat_model_runs_on_the_served_config_itself(tiny_model_dir):
    """ChatModel reads the ServeConfig it is given (no second settings object copied field by field):
    every generation setting of the chat model is a key of the app's config, defined once."""
    from serve.chat import ChatModel
    from serve.cli import ServeConfig
    from serve.settings import ChatSettings

    assert issubclass(ServeConfig, ChatSettings)
    own = set(ServeConfig.model_fields) - set(ChatSettings.model_fields)
    assert not {"max_new_tokens", "temperature", "concurrency", "agent", "max_steps", "batch",
                "regenerate_temperature"} & own
    cfg = serve_config(["--config", str(REPO / "configs" / "serve.yaml"), "--no-agent", "--concurrency",
                        "3", "--max-new-tokens", "5", "--temperature", "0", "--regenerate-temperature", "1.3",
                        "--checkpoint", str(tiny_model_dir)])
    chat = ChatModel(cfg.checkpoint, cfg)
    assert chat.settings is cfg and cfg.concurrency == 3 and chat.sample_temperature() == 1.3
    reply = list(chat.respond("hi", [], None))
    assert reply and all(isinstance(r, str) for r in reply)  # --no-agent: plain text, streamed
    # `agent: false` in a file still reads as agent.enabled false, for the chat settings alone too
    assert ChatSettings(agent=False).agent.enabled is False
    assert ChatSettings.model_validate({"agent": {"constrained": False}}).agent.constrained is False


def test_the_default_system_prompt_is_written_once():
    """The app, its config and the agent share agents.agent's default; no file repeats its text."""
    import inspect

    from agents.agent import DEFAULT_SYSTEM_PROMPT, react_system_prompt
    from agents.tools import ToolRegistry
    from serve.app import build_app
    from serve.cli import ServeConfig

    assert ServeConfig().system_prompt == DEFAULT_SYSTEM_PROMPT == serve_config([]).system_prompt
    assert serve_config(["--config", str(REPO / "configs" / "serve.yaml")]).system_prompt == DEFAULT_SYSTEM_PROMPT
    assert inspect.signature(build_app).parameters["system_prompt"].default == DEFAULT_SYSTEM_PROMPT
    assert react_system_prompt(ToolRegistry([])).startswith(DEFAULT_SYSTEM_PROMPT)
    copies = [str(p.relative_to(REPO)) for folder in ("agents", "align", "retrieval", "serve", "configs", "bench")
              for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".yaml", ".yml", ".json", ".js")
              and DEFAULT_SYSTEM_PROMPT in p.read_text(errors="ignore")]
    assert copies == ["agents/agent.py"], copies


# --- issue 18: the in-process batcher is gone; the engine batches ------------------------------------

def test_the_removed_batch_setting_says_to_use_the_engine(tmp_path, capsys):
    from serve.settings import ChatSettings

    old = tmp_path / "old.yaml"
    old.write_text("concurrency: 8\nbatch: true\n")
    with pytest.raises(ConfigError, match=r"old\.yaml: batch: .*removed.*--engine vllm"):
        serve_config(["--config", str(old)])
    old.write_text("concurrency: 8\nbatch: false\n")  # a copy of the old configs/serve.yaml still loads
    assert serve_config(["--config", str(old)]).concurrency == 8
    assert "batch" not in ChatSettings().model_dump()
    with pytest.raises(SystemExit) as exit_:  # the flag is gone: argparse refuses it
        serve_config(["--no-agent", "--batch"])
    assert exit_.value.code == 2 and "unrecognized arguments: --batch" in capsys.readouterr().err
