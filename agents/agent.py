"""The ReAct loop: Thought -> Action -> Observation, until a Final Answer (Yao et al. 2022).

Two formats:
  - ``text``: the model writes ``Thought/Action/Action Input`` into one growing assistant message;
    generation stops at ``Observation:`` so the model cannot invent a tool result, the tool's
    output is appended as the observation and generation continues. Works with any chat model.
  - ``native``: tools are passed to the chat template and the model answers with
    ``<tool_call>`` blocks; results come back as ``tool`` messages. ``auto`` picks native when the
    tokenizer's template knows about tools.
Every step is an ``Event``; a run is a ``Trace``, plain data that serialises to JSON.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Literal, Protocol

from agents.parsing import (FORMAT_REMINDER, ParseError, has_labels as _has_labels, parse_react, parse_tool_calls,
                            run_on_start)
from agents.tools import ToolRegistry

# "token" events carry the text of the step being generated so far (for live display); they are
# not kept in the trace.
EventType = Literal["thought", "tool_call", "observation", "final_answer", "error", "token"]
# An invented observation starts a line; "Observation:" mid-sentence is part of the text.
STOP_SEQUENCES = ["\nObservation:"]
# What the agent writes before the answer it asks for at the step limit (force_final_answer).
FORCED_ANSWER_PREFIX = "Thought: I must answer now.\nFinal Answer:"
# The default system prompt of the agent and of the chat app (serve): defined here only.
DEFAULT_SYSTEM_PROMPT = "You are a helpful, honest and harmless assistant."
_LABEL_START = re.compile(r"^\s*(?:\*\*)?(Action|Action Input|Final Answer)\s*(?:\*\*)?\s*:", re.I)
NATIVE_REMINDER = ('Call a tool as <tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>, '
                   "or answer in plain text.")


@dataclass
class Event:
    """One thing that happened in a run: a thought, tool call, observation, final answer, format
    error, or (live display only) the text generated so far; ``step`` counts from 1.
    """

    type: EventType
    content: str
    step: int
    tool: str | None = None
    args: dict | str | None = None
    ok: bool | None = None
    duration_s: float = 0.0
    raw: str | None = None  # "error" events: what the model wrote that could not be read


@dataclass
class Trace:
    """A whole run as plain data (JSON via ``to_dict``/``from_dict``): the events, the answer, steps
    and tokens used, why it stopped, the format, and the text-format scratchpad.
    """

    question: str
    events: list[Event] = field(default_factory=list)
    answer: str | None = None
    steps: int = 0
    tokens: int = 0
    stopped: str = ""  # final_answer | forced_answer | max_steps | token_budget
    format: str = "text"
    transcript: str = ""  # the text-format scratchpad, for training data
    # The messages each step continued from (text format: system prompt with the tools, the chat
    # history, the question), so feedback on this answer can train the agent as it ran (serve.feedback).
    prompt: list[dict] | None = None

    def to_dict(self) -> dict:
        """The trace as plain data (events as dicts), for JSON and the feedback store."""
        return asdict(self)

    def to_json(self) -> str:
        """``to_dict`` as a JSON string."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "Trace":
        """Inverse of ``to_dict``. Raises TypeError on a key that ``Trace`` or ``Event`` does not have."""
        return cls(**{**d, "events": [Event(**e) for e in d.get("events", [])]})

    @property
    def tool_calls(self) -> list[Event]:
        """The ``tool_call`` events, in order."""
        return [e for e in self.events if e.type == "tool_call"]

    @property
    def tool_errors(self) -> int:
        """Observations that were errors (unknown tool, invalid arguments, a tool that failed)."""
        return sum(1 for e in self.events if e.type == "observation" and e.ok is False)


@dataclass
class Generation:
    """One generation: the text (cut at the first stop string) and the number of new tokens generated."""

    text: str
    tokens: int


class LLM(Protocol):
    """What the agent needs from a model: ``generate`` (and optionally ``stream_generate``).

    Implemented by ``TransformersLLM`` (in process), ``agents.batching.BatchedLLM`` (concurrent callers
    batched) and ``agents.openai_llm.OpenAILLM`` (an OpenAI-compatible server).
    """

    supports_native_tools: bool
    # Whether ``generate`` takes ``grammar=`` (llguidance Lark text, agents.grammar) and keeps
    # every token inside it. Backends without it run unconstrained.
    supports_grammar: bool

    def generate(self, messages: list[dict], *, stop: list[str], max_new_tokens: int,
                 continue_final: bool = False, tools: list[dict] | None = None,
                 grammar: str | None = None) -> Generation:
        """Continue ``messages`` (chat-template dicts) by at most ``max_new_tokens`` tokens, cut at the first
        of ``stop``. ``continue_final``: extend the last (assistant) message instead of starting a new one;
        ``tools``: JSON schemas for templates with native tool calls; ``grammar``: Lark text that every
        token must follow (when ``supports_grammar``).
        """

    # Optional: ``stream_generate`` (same arguments) yields text pieces and then one Generation.


class TransformersLLM:
    """Greedy (or sampled) generation from a loaded policy with stop strings and an optional grammar."""

    supports_grammar = True

    def __init__(self, model, tokenizer, temperature: float = 0.0):
        self.model, self.tokenizer, self.temperature = model, tokenizer, temperature
        template = tokenizer.chat_template or ""
        self.supports_native_tools = "tools" in template if isinstance(template, str) else False

    def _kwargs(self, max_new_tokens, stop, grammar) -> dict:
        from align.generate import generation_kwargs

        kwargs = generation_kwargs(self.tokenizer, max_new_tokens, self.temperature, stop=stop)
        if grammar:
            from transformers import LogitsProcessorList

            from agents.grammar import GrammarLogitsProcessor

            kwargs["logits_processor"] = LogitsProcessorList([GrammarLogitsProcessor(grammar, self.tokenizer)])
        return kwargs

    def _encode(self, messages, continue_final, tools) -> dict:
        enc = self.tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=not continue_final, continue_final_message=continue_final,
            return_tensors="pt", return_dict=True)
        return {k: v.to(self.model.device) for k, v in enc.items()}

    def stream_generate(self, messages, *, stop, max_new_tokens, continue_final=False,
                        tools=None, grammar=None) -> Iterator["str | Generation"]:
        """As ``generate``, yielding text pieces as they are decoded and, last, the ``Generation``."""
        from align.generate import StreamStats, stream_generate

        stats = StreamStats()
        text = ""
        for piece in stream_generate(self.model, self.tokenizer, self._encode(messages, continue_final, tools),
                                     self._kwargs(max_new_tokens, stop, grammar), stats=stats):
            text += piece
            yield piece
        yield Generation(_cut_at_stop(text, stop), stats.new_tokens)

    def generate(self, messages, *, stop, max_new_tokens, continue_final=False, tools=None,
                 grammar=None) -> Generation:
        """``LLM.generate`` with the loaded model (batch of one, greedy at temperature 0), under
        ``torch.inference_mode``.
        """
        import torch

        enc = self._encode(messages, continue_final, tools)
        kwargs = self._kwargs(max_new_tokens, stop, grammar)
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        new = out[0, enc["input_ids"].shape[1]:]
        return Generation(_cut_at_stop(self.tokenizer.decode(new, skip_special_tokens=True), stop), int(new.shape[0]))


def _cut_at_stop(text: str, stop: list[str] | None) -> str:
    for s in stop or []:
        if s in text:
            text = text[: text.index(s)]
    return text


def react_system_prompt(tools: ToolRegistry, preamble: str | None = None) -> str:
    """The text-ReAct system prompt: the preamble, the tools with their arguments, the format."""
    lines = [(preamble or DEFAULT_SYSTEM_PROMPT).strip(), "Use a tool only when it helps, and answer from its results.",
             "", "Tools:"]
    lines += [f"- {t.signature()}" for t in tools]
    lines += ["", "Answer in this format:", "Thought: what to do next",
              f"Action: the tool to use, one of: {', '.join(tools.names())}",
              "Action Input: a JSON object of arguments",
              "Observation: the tool's result (given to you)", "... (Thought/Action/Observation can repeat)",
              "Thought: I know the answer", "Final Answer: the answer to the question"]
    return "\n".join(lines)


def call_tool(tools: ToolRegistry, name: str, args, step: int) -> Event:
    """Run the tool ``name`` with ``args``; returns its "observation" Event (``ok`` False, and a
    message listing the tools, for a name ``tools`` does not have; the tool's own errors are
    in its result text)."""
    tool = tools.get(name)
    started = time.perf_counter()
    if tool is None:
        return Event("observation", f"Error: unknown tool {name!r}. Available tools: {', '.join(tools.names())}.",
                     step, tool=name, ok=False)
    result = tool.run(args)
    return Event("observation", result.text, step, tool=tool.name, ok=result.ok,
                 duration_s=round(time.perf_counter() - started, 4))


@dataclass
class StepResult:
    """What one text-ReAct step left behind (``react_step``'s return value)."""

    transcript: str                  # what the step adds to the scratchpad, its observation included
    final_answer: str | None = None  # set when the step answered: the episode is over
    observation: str | None = None   # the text given back to the model: the tool's result or the parse error


def _step_text(generated: str) -> str:
    """The model's text after the primed "Thought:", as one step starting with "Thought:"."""
    if _LABEL_START.match(generated):  # " Final Answer: 4" right after the primed "Thought:"
        return "Thought:\n" + generated.lstrip()
    return "Thought:" + (generated if generated.startswith((" ", "\n")) else " " + generated)


def react_step(generated: str, tools: ToolRegistry, step: int, *,
               plain_answer_is_final: bool = False) -> Iterator[Event]:
    """One text-ReAct step (Yao et al. 2022), shared by ``ReActAgent`` and GRPO's tool-loop rollout
    (``agents.rl``): read what the model wrote after the primed ``Thought:`` (up to, not
    including, ``Observation:``), and run the tool it calls.

    A generator: yields the step's Events (thought, tool_call, observation; or error when the text
    cannot be read) as they happen and returns a ``StepResult``; a final answer is in the result,
    for the caller to record before it announces it. Text that cannot
    be read is answered with the parse error as the observation; with ``plain_answer_is_final``,
    text with no ReAct label at all is the final answer. Raises nothing for any model text."""
    text = _step_text(generated)
    try:
        parsed = parse_react(text)
    except ParseError as e:
        plain = generated[:run_on_start(generated)].strip()  # a reply with no label (a run-on "Thought:" cut)
        if plain_answer_is_final and not _has_labels(generated) and plain:
            return StepResult(text.rstrip(), final_answer=plain)
        yield Event("error", str(e).replace(FORMAT_REMINDER, "").strip(), step, raw=generated.strip())
        return StepResult(text.rstrip() + f"\nObservation: {e}\n", observation=str(e))
    if parsed.thought:
        yield Event("thought", parsed.thought, step)
    if parsed.final_answer is not None:
        return StepResult(parsed.consumed, final_answer=parsed.final_answer)
    args = parsed.action_input
    yield Event("tool_call", json.dumps(args) if not isinstance(args, str) else args, step,
                tool=parsed.action, args=args)
    obs = call_tool(tools, parsed.action, args, step)
    yield obs
    return StepResult(parsed.consumed + f"\nObservation: {obs.content}\n", observation=obs.content)


class ReActAgent:
    """The ReAct loop (Yao et al. 2022) over any ``LLM`` backend and a ``ToolRegistry``, in the text
    or the native tool-call format (module docstring). ``run`` returns a Trace; ``stream``
    yields its Events as they happen. At most ``max_steps`` steps of ``max_new_tokens`` tokens,
    ``token_budget`` tokens in all. The text format's step is ``react_step``, which GRPO's
    tool rollout (``agents.rl``) shares.
    """

    def __init__(self, llm: LLM, tools: ToolRegistry, *, max_steps: int = 6, max_new_tokens: int = 256,
                 token_budget: int = 2048, format: Literal["auto", "text", "native"] = "auto",
                 system_prompt: str | None = None, plain_answer_is_final: bool = True, stream_tokens: bool = False,
                 force_final_answer: bool = False, constrained: bool | None = None,
                 citations: Literal["required", "allowed"] = "required"):
        """``constrained``: decode every step under the tools' grammar (agents.grammar), so a tool
        call with an unknown name or arguments its schema rejects cannot be written. True
        requires a backend that supports grammars (ValueError otherwise); None uses one when the
        backend has it; False turns it off. ``citations`` (constrained decoding, with a tool that
        reports sources): ``"required"``: an answer after a search that listed sources cites one of
        them; ``"allowed"``: it may cite them (and nothing else). ValueError for another value."""
        self.llm, self.tools = llm, tools
        supported = bool(getattr(llm, "supports_grammar", False))
        if constrained and not supported:
            raise ValueError(f"{type(llm).__name__} cannot constrain decoding to a grammar; "
                             "use constrained=False (--agent.constrained false)")
        self.constrained = supported if constrained is None else constrained
        if citations not in ("required", "allowed"):
            raise ValueError(f"citations: expected 'required' or 'allowed', got {citations!r}")
        self.citations = citations
        # A model that answers in plain prose (no ReAct labels at all) has answered; small chat
        # models do this often. Turn off to make the format strict (training, evaluation of format).
        self.plain_answer_is_final = plain_answer_is_final
        self.max_steps, self.max_new_tokens, self.token_budget = max_steps, max_new_tokens, token_budget
        self.format = ("native" if getattr(llm, "supports_native_tools", False) else "text") if format == "auto" else format
        self.system_prompt = system_prompt
        self.stream_tokens = stream_tokens and hasattr(llm, "stream_generate")
        # At the step limit, ask once more for the answer from what the steps found (as smolagents
        # does), rather than leave the user without one. Off for evaluation: it changes what counts.
        self.force_final_answer = force_final_answer

    def run(self, question: str, history: list[dict] | None = None) -> Trace:
        """Answer ``question`` (after the chat ``history``); returns the finished Trace."""
        trace = Trace(question=question, format=self.format)
        for _ in self.stream(question, history, trace):
            pass
        return trace

    def stream(self, question: str, history: list[dict] | None = None, trace: Trace | None = None) -> Iterator[Event]:
        """Run the loop, yielding each event as it happens; ``trace`` collects them."""
        trace = trace if trace is not None else Trace(question=question, format=self.format)
        loop = self._text_loop if self.format == "text" else self._native_loop
        for event in loop(question, history or [], trace):
            if event.type == "token":
                yield event
                continue
            trace.events.append(event)
            if event.type == "final_answer":
                trace.answer = event.content
                trace.stopped = "forced_answer" if event.tool == "forced" else "final_answer"
            yield event
        if not trace.stopped:
            trace.stopped = "token_budget" if trace.tokens >= self.token_budget else "max_steps"

    def _grammar(self, sources: list[str] | None = None, passages: list[str] | None = None) -> str | None:
        """The step grammar (None when unconstrained). ``sources``: what this episode's retrieval tools
        returned so far; when a tool can return sources, an answer may cite only these. ``passages``:
        the latest retrieval's passage sources in order (text format: "Passage [i]" binds to the i-th)."""
        if not self.constrained:
            return None
        if not any(t.sources_of for t in self.tools):
            sources = passages = None
        key = (None if sources is None else tuple(sources), tuple(passages or ()))
        cache = self.__dict__.setdefault("_grammar_texts", {})
        if key not in cache:
            from agents.grammar import native_grammar, react_grammar

            # the required citation within half the step's tokens, at most a quarter more after it
            bounds = (max(1, self.max_new_tokens // 2), max(1, self.max_new_tokens // 4))
            cache[key] = (react_grammar(self.tools, sources, passages, self.citations, bounds) if self.format == "text"
                          else native_grammar(self.tools, sources, self.citations, bounds))
        return cache[key]

    def _answer_grammar(self, sources: list[str], max_new_tokens: int) -> str | None:
        """The forced answer's grammar (text format, constrained): the answer's citation rules alone."""
        if not self.constrained or self.format != "text":
            return None
        from agents.grammar import answer_grammar

        cited = sources if any(t.sources_of for t in self.tools) else None
        return answer_grammar(cited, self.citations, (max(1, max_new_tokens // 2), max(1, max_new_tokens // 4)))

    def _cited(self, event: Event, sources: list[str], passages: list[str]) -> None:
        """After a successful retrieval observation: add the sources it lists to ``sources`` and make
        ``passages`` its passages' sources in order (both in place)."""
        tool = self.tools.get(event.tool) if event.type == "observation" and event.ok else None
        if tool is not None and tool.sources_of:
            found = tool.sources_of(event.content)
            sources.extend(s for s in dict.fromkeys(found) if s not in sources)
            passages[:] = found

    def _generate(self, messages, step: int, **kwargs) -> Iterator[Event]:
        """Call the model; with ``stream_tokens`` yield "token" events on the way. Returns the Generation."""
        if kwargs.get("grammar") is None:
            kwargs.pop("grammar", None)  # backends without grammar support need not know the argument
        if not self.stream_tokens:
            return self.llm.generate(messages, **kwargs)
        text, gen = "", None
        for item in self.llm.stream_generate(messages, **kwargs):
            if isinstance(item, Generation):
                gen = item
            else:
                text += item
                yield Event("token", text, step)
        return gen if gen is not None else Generation(text, 0)

    def _budget(self, trace: Trace) -> int:
        return min(self.max_new_tokens, self.token_budget - trace.tokens)

    def _call_tool(self, name: str, args, step: int) -> Event:
        return call_tool(self.tools, name, args, step)

    def _text_loop(self, question, history, trace) -> Iterator[Event]:
        system = {"role": "system", "content": react_system_prompt(self.tools, self.system_prompt)}
        base = [system, *history, {"role": "user", "content": question}]
        trace.prompt = base
        scratch = ""
        sources: list[str] = []
        passages: list[str] = []
        for step in range(1, self.max_steps + 1):
            if self._budget(trace) <= 0:
                return
            trace.steps = step
            # Each step starts with "Thought:" already written, which keeps small models in the format.
            messages = base + [{"role": "assistant", "content": scratch + "Thought:"}]
            gen = yield from self._generate(messages, step, stop=STOP_SEQUENCES, grammar=self._grammar(sources, passages),
                                            max_new_tokens=self._budget(trace), continue_final=True)
            trace.tokens += gen.tokens
            steps = react_step(gen.text, self.tools, step, plain_answer_is_final=self.plain_answer_is_final and step == 1)
            while True:
                try:
                    event = next(steps)
                except StopIteration as done:
                    result = done.value
                    break
                self._cited(event, sources, passages)
                yield event
            scratch += result.transcript
            trace.transcript = scratch
            if result.final_answer is not None:
                answer = result.final_answer
                if self.constrained and self.citations == "required" and sources:
                    from agents.grammar import complete_citation

                    answer = complete_citation(answer, sources)
                yield Event("final_answer", answer, step)
                return
        if self.force_final_answer and self._budget(trace) > 0:
            messages = base + [{"role": "assistant", "content": scratch + FORCED_ANSWER_PREFIX}]
            limit = min(128, self._budget(trace))
            gen = yield from self._generate(messages, self.max_steps, stop=STOP_SEQUENCES + ["\nThought:", "\nAction:"],
                                            max_new_tokens=limit, continue_final=True,
                                            grammar=self._answer_grammar(sources, limit))
            trace.tokens += gen.tokens
            answer = gen.text[:run_on_start(gen.text)].strip()
            if answer and self.constrained and self.citations == "required" and sources:
                from agents.grammar import complete_citation

                answer = complete_citation(answer, sources)
            if answer:
                yield Event("final_answer", answer, self.max_steps, tool="forced")

    def _native_loop(self, question, history, trace) -> Iterator[Event]:
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
        messages += [*history, {"role": "user", "content": question}]
        schemas = [t.json_schema() for t in self.tools]
        sources: list[str] = []
        passages: list[str] = []
        for step in range(1, self.max_steps + 1):
            if self._budget(trace) <= 0:
                return
            trace.steps = step
            gen = yield from self._generate(messages, step, stop=["</tool_call>\n\n"], grammar=self._grammar(sources),
                                            max_new_tokens=self._budget(trace), tools=schemas)
            trace.tokens += gen.tokens
            try:
                calls = parse_tool_calls(gen.text)
            except ParseError as e:
                reason = str(e).replace(FORMAT_REMINDER, "").strip()
                yield Event("error", reason, step, raw=gen.text.strip())
                messages.append({"role": "assistant", "content": gen.text})
                messages.append({"role": "user", "content": f"Your tool call could not be read: {reason} {NATIVE_REMINDER}"})
                continue
            thought = gen.text.split("<tool_call>")[0].strip()
            if not calls:
                yield Event("final_answer", gen.text.strip(), step)
                return
            if thought:
                yield Event("thought", thought, step)
            messages.append({"role": "assistant", "content": thought, "tool_calls": [
                {"type": "function", "function": {"name": n, "arguments": a}} for n, a in calls]})
            for name, args in calls:
                yield Event("tool_call", json.dumps(args), step, tool=name, args=args)
                obs = self._call_tool(name, args, step)
                self._cited(obs, sources, passages)
                yield obs
                messages.append({"role": "tool", "name": name, "content": obs.content})
