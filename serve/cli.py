"""``python -m serve``: start the chat app. ``python -m serve export-feedback``: feedback -> TRL datasets."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pydantic import Field, field_validator

from agents.agent import DEFAULT_PREAMBLE
from align.config import Strict, load_config
from align.errors import KeelError


class AgentSettings(Strict):
    enabled: bool = True  # false: plain streamed chat, no tools
    # Decode every step under the tools' grammar (agents/grammar.py): tool names and arguments are
    # always valid. false: free decoding, as before.
    constrained: bool = True


class ServeConfig(Strict):
    checkpoint: str = "keel-agent"
    index: str = "default"
    host: str = "127.0.0.1"
    port: int = Field(7860, ge=0, le=65535)  # 0: any free port
    agent: AgentSettings = Field(default_factory=AgentSettings)
    max_steps: int = Field(4, ge=1, le=64)
    max_new_tokens: int = Field(256, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0, le=2, allow_inf_nan=False)
    # Regenerate samples at this temperature (nucleus top_p 0.95) when `temperature` is 0 (greedy).
    regenerate_temperature: float = Field(0.8, gt=0, le=2)
    concurrency: int = Field(1, ge=1, le=1024)
    batch: bool = False
    feedback_db: str = "runs/feedback.db"
    system_prompt: str = DEFAULT_PREAMBLE
    auth: str | None = None
    # Folders whose Keel checkpoints users may switch the app to (for everyone). Empty: switching is off.
    switch_roots: list[str] = Field(default_factory=list)

    @field_validator("agent", mode="before")
    @classmethod
    def _agent_bool(cls, value):
        return {"enabled": value} if isinstance(value, bool) else value  # `agent: false` as before


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
    p.add_argument("--batch", action="store_true",
                   help="batch concurrent users' generations into one model call (higher throughput; "
                        "answers arrive step by step, not token by token)")
    p.add_argument("--auth", help="USER:PASSWORD required to open the app")
    p.add_argument("--no-agent", action="store_true", help="plain chat, streamed token by token, without tools")
    p.add_argument("--max-steps", type=int, help="agent steps per answer")
    p.add_argument("--agent.constrained", dest="constrained", choices=["true", "false"],
                   help="grammar-constrained tool calls (default true)")
    p.add_argument("--feedback-db", help="SQLite feedback database (default runs/feedback.db; 'none' turns it off)")
    p.add_argument("--system-prompt")
    p.add_argument("--regenerate-temperature", type=float,
                   help="sampling temperature of Regenerate when --temperature is 0 (default 0.8)")
    p.add_argument("--switch-root", action="append", metavar="DIR",
                   help="let users switch the app (for everyone) to the Keel checkpoints in DIR; repeatable. "
                        "Without it switching is off")
    return p


def serve_config(argv: list[str] | None) -> ServeConfig:
    a = _serve_parser().parse_args(argv)
    overrides = []
    for key in ("checkpoint", "index", "host", "port", "max_new_tokens", "temperature", "concurrency", "auth",
                "max_steps", "feedback_db", "system_prompt", "regenerate_temperature"):
        value = getattr(a, key)
        if value is not None:
            overrides += [f"--{key}", str(value)]
    if a.no_agent:
        overrides += ["--agent.enabled", "false"]
    if a.constrained is not None:
        overrides += ["--agent.constrained", a.constrained]
    if a.batch:
        overrides += ["--batch", "true"]
    cfg = load_config(ServeConfig, a.config, overrides)
    if a.switch_root:
        cfg.switch_roots = list(a.switch_root)
    return cfg


def export_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m serve export-feedback",
                                description="Write the app's feedback as TRL datasets: kto.jsonl (prompt, completion, "
                                            "label) and preference.jsonl (prompt, chosen, rejected)")
    p.add_argument("--db", default="runs/feedback.db")
    p.add_argument("--out", required=True, help="output folder")
    a = p.parse_args(argv)
    from serve.feedback import export_feedback

    summary = export_feedback(a.db, a.out)
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
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
        demo = create_app(cfg)
    except KeelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from serve.app import APP_CSS

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # show_error=False: an unexpected handler error reaches the browser as a short message (the
    # handlers catch and log it); Python's error text stays in the log.
    demo.queue(default_concurrency_limit=cfg.concurrency).launch(
        server_name=cfg.host, server_port=cfg.port, auth=auth, show_error=False, css=APP_CSS)
    return 0


def create_app(cfg: ServeConfig):
    """Load the model, the retriever and the feedback store once, and build the app."""
    from serve.app import build_app
    from serve.chat import ChatModel, ChatSettings
    from serve.feedback import FeedbackStore

    import time

    started = time.time()
    # First: a damaged or read-only feedback database stops the start at once (FeedbackDBError, one line).
    store = None if cfg.feedback_db == "none" else FeedbackStore(cfg.feedback_db)
    retriever = None
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
        else:
            print(f"[keel] opening the knowledge base {cfg.index}", flush=True)
            retriever = Retriever.open(cfg.index)
    settings = ChatSettings(cfg.max_new_tokens, cfg.temperature, cfg.concurrency, agent=cfg.agent.enabled,
                            max_steps=cfg.max_steps, batch=cfg.batch, constrained=cfg.agent.constrained,
                            regenerate_temperature=cfg.regenerate_temperature)
    print(f"[keel] loading the model {cfg.checkpoint}", flush=True)
    chat = ChatModel(cfg.checkpoint, settings, retriever=retriever)
    if store is not None:
        print(f"feedback -> {store.path} (export: python -m serve export-feedback --db {store.path} --out DIR)")
    if cfg.switch_roots:
        print(f"checkpoint switching on, limited to: {', '.join(cfg.switch_roots)}")
    demo = build_app(chat, store, cfg.system_prompt, switch_roots=cfg.switch_roots)
    print(f"[keel] ready in {time.time() - started:.0f} s: serving {chat.short_name} on http://{cfg.host}:{cfg.port}",
          flush=True)
    return demo
