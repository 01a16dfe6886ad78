"""A small OpenAI-compatible HTTP server for tests (stdlib ``http.server``, run in a thread).

It answers ``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions`` from a
script of canned replies, with vLLM's response shapes: SSE streams (``data: {...}`` chunks, a
usage chunk when asked, ``data: [DONE]``), server-side stop strings (cut, not included), 404 for
an unknown model, 400 with vLLM's wording for a prompt over ``max_context`` characters, 503 for
the first ``fail_first`` requests, and a delay before answering. Every request body is recorded.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAIServer:
    def __init__(self, replies: list[str | dict] | None = None, model: str = "tiny", max_context: int = 100_000,
                 fail_first: int = 0, delay_s: float = 0.0, port: int = 0):
        self.replies = list(replies or ["Hello."])
        self.models = [model]  # served names; POST /v1/load_lora_adapter adds one (as vLLM does)
        self.model, self.max_context, self.fail_first, self.delay_s = model, max_context, fail_first, delay_s
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _json(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")  # a stopped server must look stopped
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True

            def do_GET(self):
                if self.path == "/health":
                    return self._json(200, {})
                if self.path.rstrip("/") == "/v1/models":
                    return self._json(200, {"object": "list", "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in owner.models]})
                return self._json(404, {"error": {"message": "Not Found", "code": 404}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with owner.lock:
                    owner.requests.append({"path": self.path, **body})
                    n = len(owner.requests)
                if owner.delay_s:
                    time.sleep(owner.delay_s)
                if n <= owner.fail_first:
                    return self._json(503, {"error": {"message": "server busy", "code": 503}})
                if self.path == "/v1/load_lora_adapter":
                    owner.models.append(body["lora_name"])
                    return self._json(200, {})
                if body.get("model") not in owner.models:
                    return self._json(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                                      "type": "NotFoundError", "code": 404}})
                chat = self.path.endswith("/chat/completions")
                prompt = json.dumps(body.get("messages")) if chat else body.get("prompt", "")
                if len(prompt) > owner.max_context:
                    return self._json(400, {"error": {
                        "message": f"This model's maximum context length is {owner.max_context} tokens. However, "
                                   f"you requested {len(prompt)} tokens. Please reduce the length of the input.",
                        "type": "BadRequestError", "code": 400}})
                with owner.lock:
                    reply = owner.replies.pop(0) if len(owner.replies) > 1 else owner.replies[0]
                calls = reply.get("tool_calls") if isinstance(reply, dict) else None
                text = reply.get("content", "") if isinstance(reply, dict) else reply
                for s in body.get("stop") or []:
                    if s in text:
                        text = text[: text.index(s)]
                tokens = max(1, len(text.split()))
                usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": tokens,
                         "total_tokens": tokens + len(prompt.split())}
                if not body.get("stream"):
                    if chat:
                        msg = {"role": "assistant", "content": text}
                        if calls:
                            msg["tool_calls"] = [{"id": f"c{i}", "type": "function", "function": {
                                "name": c["name"], "arguments": json.dumps(c["arguments"])}} for i, c in enumerate(calls)]
                        choice = {"index": 0, "message": msg, "finish_reason": "stop"}
                        obj = "chat.completion"
                    else:
                        choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
                        obj = "text_completion"
                    return self._json(200, {"id": "x", "object": obj, "created": 0, "model": body.get("model"),
                                            "choices": [choice], "usage": usage})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()

                def send(chunk: dict | str):
                    data = chunk if isinstance(chunk, str) else json.dumps(chunk)
                    self.wfile.write(f"data: {data}\n\n".encode())
                    self.wfile.flush()

                pieces = [text[i:i + 3] for i in range(0, len(text), 3)]
                obj = "chat.completion.chunk" if chat else "text_completion"
                for piece in pieces:
                    choice = ({"index": 0, "delta": {"content": piece}, "finish_reason": None} if chat
                              else {"index": 0, "text": piece, "finish_reason": None, "logprobs": None})
                    send({"id": "x", "object": obj, "created": 0, "model": body.get("model"), "choices": [choice]})
                if chat and calls:
                    for i, c in enumerate(calls):
                        args = json.dumps(c["arguments"])
                        for k, frag in enumerate([args[: len(args) // 2], args[len(args) // 2:]]):
                            fn = {"arguments": frag, **({"name": c["name"]} if k == 0 else {})}
                            send({"id": "x", "object": obj, "created": 0, "model": body.get("model"), "choices": [
                                {"index": 0, "delta": {"tool_calls": [{"index": i, "type": "function",
                                                                       **({"id": f"c{i}"} if k == 0 else {}),
                                                                       "function": fn}]},
                                 "finish_reason": None}]})
                if (body.get("stream_options") or {}).get("include_usage"):
                    send({"id": "x", "object": obj, "created": 0, "model": body.get("model"), "choices": [], "usage": usage})
                send("[DONE]")
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def posts(self) -> list[dict]:
        return [r for r in self.requests if r["path"] != "/v1/models"]
