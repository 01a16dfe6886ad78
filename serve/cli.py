"""``python -m serve``: start the chat app. ``python -m serve export-feedback``: feedback -> TRL datasets."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from typing import Literal

from pydantic import Field, field_validator

from align.config import load_config
from align.errors import KeelError
from serve.settings import DEFAULT_SYSTEM_PROMPT, ChatSettings


class ServeConfig(ChatSettings):
    """``python -m serve``'s config (configs/serve.yaml): the chat model's ``ChatSettings`` (agent,
    steps, tokens, temperatures, concurrency) and the app's own keys below."""

    checkpoint: str = "keel-agent"
    index: str = "default"
    host: str = "127.0.0.1"
    port: int = Field(7860, ge=0, le=65535)  # 0: any free port
    feedback_db: str = "runs/feedback.db"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    auth: str | None = None
    # Folders whose Keel checkpoints users may switch the app to (for everyone). Empty: switching is off.
    switch_roots: list[str] = Field(default_factory=list)
    # Generation in a serving engine (docs/serving.md). engine: transformers = in this process;
    # vllm = the app starts vLLM's OpenAI server on `checkpoint` (Python: vllm_python).
    engine: Literal["transformers", "vllm"] = "transformers"
    # An OpenAI-compatible server that is already running (http://HOST:PORT/v1); llm_model: its
    # model name (default: the only one it serves); llm_api_key_env: the variable holding its key.
    llm_url: str | None = None
    llm_model: str | None = None
    llm_api_key_env: str | None = None
    # llm_url only: "server" = the server applies its chat template (chat API); "checkpoint" = Keel
    # applies `checkpoint`'s template (completions API; `checkpoint` must be what the server serves).
    llm_template: Literal["server", "checkpoint"] = "server"
    llm_timeout_s: float = Field(120.0, gt=0, le=3600)
    # A streamed answer updates the chat at most once per this many ms (the first text, each agent step
    # and the complete answer at once); every update costs the app a Gradio postprocess, diff and SSE
    # message. 0: every token (docs/serving.md).
    stream_interval_ms: float = Field(100.0, ge=0, le=10_000, allow_inf_nan=False)
    vllm_python: str | None = None  # default: .venv-vllm/bin/python (scripts/setup_vllm_cpu.sh)
    vllm_args: list[str] = Field(default_factory=list)  # more `vllm serve` flags
    vllm_max_model_len: int = Field(2048, ge=128)
    engine_start_timeout_s: float = Field(900.0, gt=0, allow_inf_nan=False)
    engine_log_dir: str = "runs/engine"  # vLLM's log goes here
    # This app's own knowledge base (serve/kb.py): uploads from the chat go here, to a copy of --index
    # made on the first upload; the shipped default is never written. 'none' turns uploads off.
    kb_dir: str = "runs/kb"
    upload_max_mb: float = Field(20.0, gt=0, le=10_000, allow_inf_nan=False)  # per file
    upload_max_files: int = Field(10, ge=1, le=1000)  # per upload
    upload_types: list[str] = Field(default_factory=lambda: [".txt", ".md", ".markdown", ".html", ".htm", ".pdf",
                                                             ".jsonl"])

    @field_validator("upload_types")
    @classmethod
    def _known_types(cls, value):
        from retrieval.loaders import SUFFIXES

        value = [v.lower() if v.startswith(".") else "." + v.lower() for v in value]
        unknown = [v for v in value if v not in SUFFIXES]
        if unknown:
            raise ValueError(f"{unknown} cannot be indexed; the retrieval loaders read {', '.join(SUFFIXES)}")
        return value


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serve", description="Keel chat app. Subcommand: export-feedback.")
    p.add_argument("--config", help="YAML file (configs/serve.yaml); flags below override it")
    p.add_argument("--checkpoint", help="model: keel-agent (default: Keel's agent adapter), smollm2-135m (the bare "
                                        "embedded model), a Keel checkpoint or run folder, an HF folder or hub id")
    p.add_argument("--index", help="retrieval index for the search tool: a folder, 'default' or 'none'")
    p.add_argument("--host", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--concurrency", type=int, help="generations running at once; others queue")
    p.add_argument("--auth", help="USER:PASSWORD required to open the app")
    p.add_argument("--no-agent", action="store_true", help="plain chat, streamed token by token, without tools")
    p.add_argument("--max-steps", type=int, help="agent steps per answer")
    p.add_argument("--agent.constrained", dest="constrained", choices=["true", "false"],
                   help="grammar-constrained tool calls (default true)")
    p.add_argument("--agent.citations", dest="citations", choices=["required", "allowed"],
                   help="with constrained steps: an answer after a search must cite a source it listed "
                        "(required, default) or may (allowed)")
    p.add_argument("--feedback-db", help="feedback database: a SQLite file (default runs/feedback.db), sqlite:///PATH, "
                                         "or postgresql://USER@HOST:PORT/DB to share one among app replicas; "
                                         "'none' turns it off")
    p.add_argument("--system-prompt")
    p.add_argument("--regenerate-temperature", type=float,
                   help="sampling temperature of Regenerate when --temperature is 0 (default 0.8)")
    p.add_argument("--switch-root", action="append", metavar="DIR",
                   help="let users switch the app (for everyone) to the Keel checkpoints in DIR; repeatable. "
                        "Without it switching is off")
    p.add_argument("--engine", choices=["transformers", "vllm"],
                   help="transformers: generate in this process (default); vllm: start vLLM's OpenAI server on the "
                        "checkpoint as a child process (docs/serving.md)")
    p.add_argument("--vllm-python", help="the Python of vLLM's venv (default .venv-vllm/bin/python)")
    p.add_argument("--vllm-arg", action="append", metavar="ARG",
                   help="one more flag for `vllm serve` (repeatable; e.g. --vllm-arg=--gpu-memory-utilization=0.5)")
    p.add_argument("--engine-start-timeout", dest="engine_start_timeout_s", type=float, metavar="S",
                   help="seconds to wait for the vLLM server to get healthy (default 900)")
    p.add_argument("--llm-url", help="answer through this running OpenAI-compatible server (http://HOST:PORT/v1)")
    p.add_argument("--llm-model", help="model name on that server (default: the only one it serves)")
    p.add_argument("--llm-api-key-env", metavar="VAR", help="environment variable holding the server's API key")
    p.add_argument("--llm-template", choices=["server", "checkpoint"],
                   help="with --llm-url: the server's chat template (default), or --checkpoint's applied here")
    p.add_argument("--kb-dir", help="this app's knowledge base folder for uploaded documents (default runs/kb; "
                                     "'none' turns uploads off)")
    p.add_argument("--upload-max-mb", type=float, help="largest uploaded file, in MB (default 20)")
    p.add_argument("--stream-interval-ms", type=float,
                   help="a streamed answer updates the chat at most once per this many ms (default 100; 0: every token)")
    return p


def serve_config(argv: list[str] | None) -> ServeConfig:
    """``python -m serve``'s flags (and ``--config`` file) -> a validated ``ServeConfig``. Raises ConfigError
    naming the key and its source.
    """
    a = _serve_parser().parse_args(argv)
    overrides = []
    for key in ("checkpoint", "index", "host", "port", "max_new_tokens", "temperature", "concurrency", "auth",
                "max_steps", "feedback_db", "system_prompt", "regenerate_temperature", "engine", "vllm_python",
                "engine_start_timeout_s", "llm_url", "llm_model", "llm_api_key_env", "llm_template",
                "kb_dir", "upload_max_mb", "stream_interval_ms"):
        value = getattr(a, key)
        if value is not None:
            overrides += [f"--{key}", str(value)]
    if a.no_agent:
        overrides += ["--agent.enabled", "false"]
    if a.constrained is not None:
        overrides += ["--agent.constrained", a.constrained]
    if a.citations is not None:
        overrides += ["--agent.citations", a.citations]
    cfg = load_config(ServeConfig, a.config, overrides)
    if a.switch_root:
        cfg.switch_roots = list(a.switch_root)
    if a.vllm_arg:
        cfg.vllm_args = list(a.vllm_arg)
    if cfg.engine == "vllm" and cfg.llm_url:
        raise KeelError("--engine vllm starts its own server; drop --llm-url (or drop --engine to use that server)")
    return cfg


def export_main(argv: list[str]) -> int:
    """``python -m serve export-feedback --db DB --out DIR``: write kto.jsonl and preference.jsonl (TRL
    formats); returns the exit status.
    """
    p = argparse.ArgumentParser(prog="python -m serve export-feedback",
                                description="Write the app's feedback as TRL datasets: kto.jsonl (prompt, completion, "
                                            "label) and preference.jsonl (prompt, chosen, rejected)")
    p.add_argument("--db", default="runs/feedback.db", help="the app's --feedback-db: a SQLite file or a "
                                                             "postgresql:// URL")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--view", choices=["auto", "answers", "trajectories"], default="auto",
                   help="a rated agent answer as the agent's steps (trajectories: ReAct prompt + scratchpad), as "
                        "the chat showed it (answers), or steps where stored (auto, default)")
    a = p.parse_args(argv)
    from serve.feedback import export_feedback

    summary = export_feedback(a.db, a.out, a.view)
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m serve`` (the app), ``export-feedback`` or ``simulate``; returns the exit status, a Keel
    error printed as one line.
    """
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] == "export-feedback":
            return export_main(argv[1:])
        if argv and argv[0] == "simulate":
            from serve.simulate import simulate_main

            return simulate_main(argv[1:])
        cfg = serve_config(argv)
        auth = None
        if cfg.auth:
            auth = tuple(cfg.auth.split(":", 1))
            if len(auth) != 2:
                raise KeelError("--auth must be USER:PASSWORD")
        demo = create_app(cfg, auth_required=auth is not None)
    except KeelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    demo.queue(default_concurrency_limit=cfg.concurrency).launch(**launch_options(cfg, auth))
    return 0


def launch_options(cfg: ServeConfig, auth: tuple[str, str] | None = None) -> dict:
    """The keyword arguments of ``gradio.Blocks.launch`` for ``cfg``.

    ``max_file_size`` is Keel's per-file upload limit in bytes (``upload_max_mb`` x 2**20, the MB
    that Gradio's refusal message shows): Gradio then refuses a larger file while it streams in (HTTP 413, and the file control says so), before
    it is written to Gradio's upload folder; Keel's own check (serve/kb.py) stays for files that
    reach the handler another way. ``show_error=False``: an unexpected handler error reaches the
    browser as a short message (the handlers catch and log it); Python's error text stays in the log.
    """
    from serve.app import APP_CSS

    return {"server_name": cfg.host, "server_port": cfg.port, "auth": auth, "show_error": False, "css": APP_CSS,
            "max_file_size": int(cfg.upload_max_mb * 2**20)}


def _engine_chat(cfg: ServeConfig, settings: ChatSettings, retriever):
    """The chat model when an engine generates: a vLLM child process, or a server at --llm-url."""
    from agents.openai_llm import api_key_from_env
    from serve.engine import RemoteChatModel, VLLMEngine, engine_python_default, stop_on_sigterm

    key = api_key_from_env(cfg.llm_api_key_env)
    if cfg.engine == "vllm":
        engine = VLLMEngine(cfg.vllm_python or engine_python_default(), cfg.engine_log_dir,
                            max_model_len=cfg.vllm_max_model_len, extra_args=cfg.vllm_args,
                            start_timeout_s=cfg.engine_start_timeout_s, api_key=key)
        stop_on_sigterm()
        chat = RemoteChatModel(cfg.checkpoint, settings, retriever, engine=engine, api_key=key,
                               timeout_s=cfg.llm_timeout_s)
    else:
        print(f"[keel] answering through {cfg.llm_url}", flush=True)
        chat = RemoteChatModel(cfg.checkpoint if cfg.llm_template == "checkpoint" else None, settings, retriever,
                               url=cfg.llm_url, model=cfg.llm_model, api_key=key,
                               local_template=cfg.llm_template == "checkpoint", timeout_s=cfg.llm_timeout_s)
    print(f"[keel] generation: {chat.served_by}", flush=True)
    return chat


def create_app(cfg: ServeConfig, auth_required: bool = False):
    """Load the model, the retriever and the feedback store once, and build the app."""
    from serve.app import build_app
    from serve.chat import ChatModel
    from serve.feedback import FeedbackStore

    import time

    started = time.time()
    # First: a damaged or read-only feedback database stops the start at once (FeedbackDBError, one line).
    store = None if cfg.feedback_db == "none" else FeedbackStore(cfg.feedback_db)
    if not cfg.llm_url or cfg.llm_template == "checkpoint":
        from align.models import resolve_model

        resolve_model(cfg.checkpoint)  # a misspelt --checkpoint fails now, not after the knowledge base opens
    retriever = base_folder = base_lock = None
    if cfg.agent.enabled and cfg.index != "none":
        from retrieval import Retriever
        from retrieval.default_kb import default_index_dir, open_default_index

        if cfg.index == "default":
            if not (default_index_dir() / "manifest.json").is_file():
                print(f"[keel] first start: building the default knowledge base (the Python language reference "
                      f"topics and Keel's docs) in {default_index_dir()}. This happens once and takes about "
                      "1-2 minutes on 2 CPU cores; later starts open it in seconds.", flush=True)
            else:
                print("[keel] opening the default knowledge base (re-embedding Keel's docs only if they changed)",
                      flush=True)
            retriever = open_default_index()
            base_folder = default_index_dir()
            base_lock = str(base_folder.parent / f".{base_folder.name}.lock")  # open_default_index's lock
        else:
            print(f"[keel] opening the knowledge base {cfg.index}", flush=True)
            retriever = Retriever.open(cfg.index)
            base_folder = retriever.folder
    kb = None
    if retriever is not None and cfg.kb_dir != "none":
        from serve.kb import AppKnowledgeBase, UploadLimits

        base_name = "default" if cfg.index == "default" else str(Path(cfg.index).expanduser().resolve())
        kb = AppKnowledgeBase(cfg.kb_dir, retriever, base_folder, base_name, base_lock,
                              UploadLimits(cfg.upload_max_mb, cfg.upload_max_files, tuple(cfg.upload_types)))
        print(f"[keel] uploads -> {kb.dir} ("
              + ("this app's copy of the knowledge base" if kb.copied else "copied from the base on the first upload")
              + ")", flush=True)
        retriever = kb  # the search tool reads the app's knowledge base, which uploads replace in place
    if cfg.engine == "vllm" or cfg.llm_url:
        chat = _engine_chat(cfg, cfg, retriever)
    else:
        print(f"[keel] loading the model {cfg.checkpoint}", flush=True)
        chat = ChatModel(cfg.checkpoint, cfg, retriever=retriever)
    if store is not None:
        print(f"feedback -> {store.location} (export: python -m serve export-feedback --db {store.location} --out DIR)")
    if cfg.switch_roots:
        print(f"checkpoint switching on, limited to: {', '.join(cfg.switch_roots)}")
    demo = build_app(chat, store, cfg.system_prompt, switch_roots=cfg.switch_roots, kb=kb,
                     auth_required=auth_required, stream_interval_ms=cfg.stream_interval_ms)
    print(f"[keel] ready in {time.time() - started:.0f} s: serving {chat.short_name} on http://{cfg.host}:{cfg.port}",
          flush=True)
    return demo
