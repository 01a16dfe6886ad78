"""Keel's agent core: a ReAct loop over any chat model, typed tools, and traces as data."""
from agents.agent import Event, Generation, ReActAgent, Trace, TransformersLLM
from agents.tools import Tool, ToolError, ToolRegistry, calculator_tool, date_tool, default_tools, search_tool

__all__ = ["ReActAgent", "Trace", "Event", "Generation", "TransformersLLM", "Tool", "ToolError", "ToolRegistry",
           "calculator_tool", "date_tool", "search_tool", "default_tools"]
