"""Tools: typed objects with a name, a description and a pydantic argument schema.

    registry = ToolRegistry([calculator_tool()])

    @registry.tool
    def word_count(text: str) -> int:
        "Count the words in a text."
        return len(text.split())

A tool's ``run`` validates the arguments against the schema and returns the observation text;
bad arguments and tool failures become error observations for the model, never exceptions.
"""
from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass
from datetime import date
from typing import Any, Callable

from pydantic import BaseModel, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from agents.calculator import CalculatorError, calculate, format_number

MAX_OBSERVATION_CHARS = 2000


class ToolError(Exception):
    """Raised by a tool for a failure the model should read and correct."""


@dataclass
class ToolResult:
    """A tool's answer: ``ok`` False when the text is an error message for the model."""

    ok: bool
    text: str


class Tool:
    """A named function the agent can call: arguments validated by ``args_schema`` (pydantic). Raises
    ValueError when ``name`` is not an identifier.
    """

    def __init__(self, name: str, description: str, args_schema: type[BaseModel], fn: Callable[..., Any],
                 sources_of: Callable[[str], list[str]] | None = None):
        if not name.isidentifier():
            raise ValueError(f"tool name {name!r} must be an identifier")
        self.name, self.description, self.args_schema, self.fn = name, description.strip(), args_schema, fn
        # For a retrieval tool: the citable sources in one of its observations. With such a tool
        # registered, constrained decoding lets an answer cite only sources it returned.
        self.sources_of = sources_of

    def json_schema(self) -> dict:
        """OpenAI-style function schema, as chat templates with tool support expect."""
        params = self.args_schema.model_json_schema()
        params.pop("title", None)
        for prop in params.get("properties", {}).values():
            prop.pop("title", None)
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": params}}

    def signature(self) -> str:
        """The tool as the text-ReAct prompt lists it: name, description and argument types."""
        props = self.args_schema.model_json_schema().get("properties", {})
        args = ", ".join(f'"{k}": {v.get("type", "any")}' for k, v in props.items())
        return f"{self.name}: {self.description} Arguments: {{{args}}}"

    def coerce(self, args: Any) -> dict:
        """A bare value stands for the tool's only argument (``"2+2"`` -> ``{"expression": "2+2"}``)."""
        fields = list(self.args_schema.model_fields)
        required = [f for f, info in self.args_schema.model_fields.items() if info.is_required()]
        if not fields and not isinstance(args, dict):
            return {}  # a tool without arguments ignores "none", "No input needed", ...
        if args is None or args == "" or args == []:  # called without arguments: current_date()
            if required:
                raise ToolError(f"{self.name} needs arguments: a JSON object with keys {required}")
            return {}
        if not isinstance(args, dict):
            if len(required) == 1:
                return {required[0]: args}
            raise ToolError(f"{self.name} takes a JSON object with keys {fields}")
        if len(fields) == 1 and fields[0] not in args and len(args) == 1:
            return {fields[0]: next(iter(args.values()))}
        return args

    def run(self, args: Any) -> ToolResult:
        """Validate ``args`` and call the tool. Never raises: invalid arguments, ToolError, CalculatorError
        and any other failure come back as ``ToolResult(False, "Error: ...")``; long output is truncated.
        """
        try:
            parsed = self.args_schema.model_validate(self.coerce(args))
            out = self.fn(**parsed.model_dump())
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'input'}: {x['msg']}" for x in e.errors())
            return ToolResult(False, f"Error: invalid arguments for {self.name}: {problems}")
        except (ToolError, CalculatorError) as e:
            return ToolResult(False, f"Error: {e}")
        except Exception as e:  # noqa: BLE001 - a tool bug must not end the conversation
            return ToolResult(False, f"Error: {self.name} failed: {type(e).__name__}: {e}")
        text = out if isinstance(out, str) else json.dumps(out, default=str)
        if len(text) > MAX_OBSERVATION_CHARS:
            text = text[:MAX_OBSERVATION_CHARS] + " …[truncated]"
        return ToolResult(True, text)


def tool_from_function(fn: Callable[..., Any], name: str | None = None, description: str | None = None) -> Tool:
    """A ``Tool`` from a typed function: its annotated parameters become the argument schema (a ``Field``
    default keeps its limits), its docstring the description. Raises TypeError for a parameter without an
    annotation.
    """
    sig = inspect.signature(fn)
    fields = {}
    for pname, p in sig.parameters.items():
        if p.annotation is inspect.Parameter.empty:
            raise TypeError(f"tool {fn.__name__}: parameter {pname!r} needs a type annotation")
        if isinstance(p.default, FieldInfo):  # def f(k: int = Field(..., ge=1)): keep its limits
            fields[pname] = (p.annotation, p.default)
            continue
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[pname] = (p.annotation, Field(default))
    schema = create_model(f"{fn.__name__}_args", __config__={"extra": "forbid"}, **fields)
    desc = description or inspect.getdoc(fn) or ""
    if not desc:
        raise TypeError(f"tool {fn.__name__} needs a description (a docstring)")
    return Tool(name or fn.__name__, desc, schema, fn)


def _name_key(name: str) -> str:
    """``[Current-Date]`` -> ``current_date``: lower case, decorations stripped, runs of spaces and hyphens
    as one underscore."""
    return re.sub(r"[\s\-]+", "_", name.strip("`'\"[]<>*(){} .:;_").lower()).strip("_")


# A word models put around a tool's name: "use search", "the calculator tool", "call current_date function".
_FILLER = re.compile(r"^(?:(?:use|call|run|the|a)_)+|(?:_(?:tool|function|api))+$")


class ToolRegistry:
    """The tools of an agent, by name, in the order added."""

    def __init__(self, tools: list[Tool] | None = None):
        self.tools: dict[str, Tool] = {}
        for t in tools or []:
            self.add(t)

    def add(self, tool: Tool) -> Tool:
        """Register ``tool`` and return it. Raises ValueError when its name is taken."""
        if tool.name in self.tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self.tools[tool.name] = tool
        return tool

    def tool(self, fn: Callable | None = None, *, name: str | None = None, description: str | None = None):
        """Decorator: register a typed function as a tool."""
        def wrap(f):
            self.add(tool_from_function(f, name, description))
            return f
        return wrap(fn) if fn is not None else wrap

    def get(self, name: str) -> Tool | None:
        """The tool called ``name``, as models write a name: any case, in the brackets, quotes or markup
        they add (``[calculator]``, ``**search**``), with spaces or hyphens for underscores
        (``Current Date``), and with a word around it (``calculator tool``, ``use search``). None
        when no tool, or more than one, fits."""
        if name in self.tools:
            return self.tools[name]
        key = _name_key(name)
        if not key:
            return None
        for k in (key, _FILLER.sub("", key)):
            hits = [t for n, t in self.tools.items() if _name_key(n) == k]
            if len(hits) == 1:
                return hits[0]
        return None

    def __iter__(self):
        return iter(self.tools.values())

    def __len__(self):
        return len(self.tools)

    def names(self) -> list[str]:
        """The tool names, in the order added."""
        return list(self.tools)


# ---------------------------------------------------------------- built-in tools
# The argument models below are described in comments, not docstrings: pydantic copies a class
# docstring into the JSON schema (``Tool.json_schema``, agents/grammar.py) that the model sees.
# The calculator's argument: an expression (a number given as such is read as text).
class CalculatorArgs(BaseModel):
    model_config = {"extra": "forbid", "coerce_numbers_to_str": True}
    expression: str = Field(description="arithmetic expression, e.g. (48 + 24) / 3")


def calculator_tool() -> Tool:
    """The ``calculator`` tool (``agents.calculator.calculate``, no ``eval``)."""
    return Tool("calculator", "Evaluate an arithmetic expression (+ - * / // % **, sqrt, round).",
                CalculatorArgs, lambda expression: format_number(calculate(expression)))


# ``current_date`` takes no arguments.
class DateArgs(BaseModel):
    model_config = {"extra": "forbid"}


def date_tool(today: Callable[[], date] = date.today) -> Tool:
    """The ``current_date`` tool: ``today()`` in ISO format with the weekday."""
    return Tool("current_date", "Today's date (ISO format) and weekday.", DateArgs,
                lambda: f"{today().isoformat()} ({today().strftime('%A')})")


# The search tool's arguments: a query and ``k`` passages (1-10, default 3).
class SearchArgs(BaseModel):
    model_config = {"extra": "forbid", "coerce_numbers_to_str": True}
    query: str = Field(description="what to look for")
    k: int = Field(3, ge=1, le=10, description="number of passages")


# One passage line of the search tool's observation: "[1] (SOURCE § heading) text".
PASSAGE_LINE = re.compile(r"^\[\d+\] \((.*?)(?: § [^)]*)?\) ", re.M)


def passage_sources(observation: str) -> list[str]:
    """The source of each passage the search tool's observation text lists, in order (``[1]`` first;
    a source repeats when it has several passages). Under constrained decoding an answer may cite
    only these, and a thought naming ``Passage [i]`` only the i-th."""
    return PASSAGE_LINE.findall(observation)


def search_tool(retriever, max_chars: int = 300) -> Tool:
    """Passages from a ``retrieval.Retriever``, each with its source, for the model to cite."""
    def run(query: str, k: int = 3) -> str:
        if not query.strip():
            raise ToolError("the query is empty: say what to look for")
        hits = retriever.search(query, k=k)
        if not hits:
            return "No passages found."
        parts = []
        for i, h in enumerate(hits, 1):
            text = " ".join(h.text.split())[:max_chars]
            where = h.source + (f" § {h.heading}" if h.heading else "")
            parts.append(f"[{i}] ({where}) {text}")
        return "\n".join(parts)

    return Tool("search", "Search the knowledge base (documentation, Python reference) for passages.", SearchArgs, run,
                sources_of=passage_sources)


def default_tools(retriever=None) -> ToolRegistry:
    """calculator and current_date, and search first when a ``retriever`` is given."""
    tools = [calculator_tool(), date_tool()]
    if retriever is not None:
        tools.insert(0, search_tool(retriever))
    return ToolRegistry(tools)
