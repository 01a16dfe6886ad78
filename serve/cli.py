"""``python -m serve [--checkpoint REF] [--host 127.0.0.1] [--port 7860]``: start the chat app."""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from align.errors import KeelError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serve", description="Keel chat app")
    p.add_argument("--checkpoint", default="smollm2-135m",
                   help="model reference: embedded name, Keel checkpoint or run folder, HF folder or hub id")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--concurrency", type=int, default=1, help="generations running at once; others queue")
    p.add_argument("--auth", help="USER:PASSWORD required to open the app")
    p.add_argument("--index", default="default",
                   help="retrieval index for the search tool: a folder, 'default' (Keel docs + Python reference), or 'none'")
    p.add_argument("--no-agent", action="store_true", help="plain chat, streamed token by token, without tools")
    p.add_argument("--max-steps", type=int, default=4, help="agent steps per answer")
    a = p.parse_args(argv)
    from serve.chat import ChatModel, ChatSettings, build_app

    try:
        retriever = None
        if not a.no_agent and a.index != "none":
            from retrieval import Retriever
            from retrieval.default_kb import open_default_index

            retriever = open_default_index() if a.index == "default" else Retriever.open(a.index)
        settings = ChatSettings(a.max_new_tokens, a.temperature, a.concurrency, agent=not a.no_agent,
                                max_steps=a.max_steps)
        chat = ChatModel(a.checkpoint, settings, retriever=retriever)
    except KeelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    auth = tuple(a.auth.split(":", 1)) if a.auth else None
    if a.auth and len(auth) != 2:
        print("error: --auth must be USER:PASSWORD", file=sys.stderr)
        return 2
    build_app(chat).queue(default_concurrency_limit=a.concurrency).launch(
        server_name=a.host, server_port=a.port, auth=auth, show_error=True)
    return 0
