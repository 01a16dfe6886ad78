"""What the chat model needs from the app's config: one definition, in a light module (pydantic
only), so that ``serve.cli`` can validate a config without importing torch or Gradio.

``ServeConfig`` (serve/cli.py) extends ``ChatSettings``; ``ChatModel`` and ``RemoteChatModel``
take either. The keys are the app's YAML keys and flags (configs/serve.yaml).
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from agents.agent import DEFAULT_SYSTEM_PROMPT
from align.config import Strict

__all__ = ["AgentSettings", "BATCH_REMOVED", "ChatSettings", "DEFAULT_SYSTEM_PROMPT"]


BATCH_REMOVED = ("the app's in-process batcher (--batch) was removed: the vLLM engine served 8 concurrent users "
                 "faster (issue #18, bench/RESULTS.md). Serve many users with --engine vllm (or --llm-url to a "
                 "running server), which batches continuously; delete `batch: true` from the config")


class AgentSettings(Strict):
    """``agent:``: answer through the ReAct agent with tools, and how its steps are decoded."""

    enabled: bool = True  # false: plain streamed chat, no tools
    # Decode every step under the tools' grammar (agents/grammar.py): tool names and arguments are
    # always valid. false: free decoding, as before.
    constrained: bool = True
    # With constrained steps: "required": an answer after a search that listed sources must cite one
    # of them, "(source: NAME)"; "allowed": it may cite them (never a source no search returned).
    citations: Literal["required", "allowed"] = "required"


class ChatSettings(Strict):
    """Generation settings of the chat model: tokens per step, temperatures, agent steps,
    concurrent generations (``concurrency``). ``agent: false`` is read as ``agent: {enabled: false}``.
    Concurrent users are batched by a serving engine (``engine: vllm`` or ``llm_url``), not in process."""

    agent: AgentSettings = Field(default_factory=AgentSettings)
    max_steps: int = Field(4, ge=1, le=64)  # agent steps per answer
    max_new_tokens: int = Field(256, ge=1, le=32768)  # per generation (one agent step, or a plain answer)
    temperature: float = Field(0.0, ge=0, le=2, allow_inf_nan=False)  # 0: greedy
    # Regenerate samples at this temperature (nucleus top_p 0.95) when `temperature` is 0 (greedy):
    # greedy decoding would write the same text again.
    regenerate_temperature: float = Field(0.8, gt=0, le=2)
    concurrency: int = Field(1, ge=1, le=1024)  # generations running at once; other requests queue
    # Removed (issue #18): the app's in-process batcher. Kept only so that an old config file says
    # what to do instead: `batch: false` is accepted (it is what the app does), `batch: true` is refused.
    batch: Literal[False] = Field(False, exclude=True)
    top_p: ClassVar[float] = 0.95  # nucleus sampling of Regenerate (and of temperature > 0); not a config key

    @field_validator("batch", mode="before")
    @classmethod
    def _batch_removed(cls, value):
        if value not in (False, "false", "False", 0, None):
            raise ValueError(BATCH_REMOVED)
        return False

    @field_validator("agent", mode="before")
    @classmethod
    def _agent_bool(cls, value):
        return {"enabled": value} if isinstance(value, bool) else value  # `agent: false` as before
