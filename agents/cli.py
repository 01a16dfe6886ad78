"""``python -m agents {run,eval,make-data}``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from align.errors import KeelError


def _positive(text: str) -> int:
    """argparse type: a whole number >= 1 (steps, tokens, tasks, batch)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is out of range: use 1 or more")
    return value


def main(argv: list[str] | None = None) -> int:
    """``python -m agents``: ``run`` answers one question and prints the trace; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m agents", description="Keel's ReAct agent")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="answer one question with the agent and print its trace")
    r.add_argument("question")
    r.add_argument("--checkpoint", default="keel-agent",
                   help="keel-agent (Keel's agent adapter, default), smollm2-135m (the bare model), or any model reference")
    r.add_argument("--index", default="default",
                   help="retrieval index folder for the search tool: 'default' (the built-in one) or 'none'")
    r.add_argument("--max-steps", type=_positive, default=4)
    r.add_argument("--agent.constrained", dest="constrained", choices=["true", "false"], default="true",
                   help="grammar-constrained tool calls")
    r.add_argument("--agent.citations", dest="citations", choices=["required", "allowed"], default="required",
                   help="with constrained steps: an answer after a search must cite a source it listed "
                        "(required) or may (allowed)")
    r.add_argument("--json", action="store_true", help="print the trace as JSON")
    r.add_argument("--llm-url", help="generate on this OpenAI-compatible server (http://HOST:PORT/v1), e.g. vLLM")
    r.add_argument("--llm-model", help="model name on that server (default: the only one it serves)")
    r.add_argument("--llm-api-key-env", metavar="VAR", help="environment variable holding the server's API key")
    r.add_argument("--llm-template", choices=["server", "checkpoint"], default="server",
                   help="with --llm-url: the server's chat template (default), or --checkpoint's applied here")
    e = sub.add_parser("eval", help="success rate, mean steps, tool-error rate")
    e.add_argument("--checkpoint", default="keel-agent")
    e.add_argument("--tasks", choices=["arith", "gsm8k"], default="arith")
    e.add_argument("--n", type=_positive, default=200)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--max-steps", type=_positive, default=6)
    e.add_argument("--max-new-tokens", type=_positive, default=128, help="per step")
    e.add_argument("--batch", type=_positive, default=8, help="tasks run at once, batched into one generate call")
    e.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on a GPU) or bfloat16/float32")
    e.add_argument("--out", help="write the JSON report here")
    d = sub.add_parser("make-data", help="GSM8K worked solutions -> ReAct trajectories (TRL prompt-completion)")
    d.add_argument("src", help="GSM8K JSONL file")
    d.add_argument("--out", required=True)
    d.add_argument("--limit", type=int)
    m = sub.add_parser("make-mix", help="the default agent's training mix (arith, gsm8k, kb, plain, harmless, "
                                        "refusal, tool_error, lookup, compose, multi_turn)")
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--n-arith", type=int, default=1500)
    m.add_argument("--n-gsm8k", type=int, default=150)
    m.add_argument("--n-kb", type=int, default=None,
                   help="at most this many (train-split questions that retrieve); default: all of them")
    m.add_argument("--n-plain", type=int, default=300)
    m.add_argument("--n-harmless", type=int, default=150)
    m.add_argument("--n-refusal", type=int, default=150, help="Keel's own harmful requests (train split), declined")
    m.add_argument("--n-tool-error", type=int, default=200, help="calculator mistakes, then a corrected call")
    m.add_argument("--n-multi-turn", type=int, default=500, help="rows asked after earlier exchanges")
    m.add_argument("--n-lookup", type=int, default=0,
                   help="questions about made-up named things answered by a search (as about uploaded documents)")
    m.add_argument("--n-compose", type=int, default=0,
                   help="arithmetic word problems composed from parts (agents/compose.py)")
    m.add_argument("--arith-steps", action="store_true",
                   help="work bracketed expressions out one group per calculator call, not in one call")
    m.add_argument("--model", default="smollm2-135m", help="writes the plain replies (self-distillation)")
    m.add_argument("--replay", help="an earlier mix (JSONL) to take answers without a tool from")
    m.add_argument("--n-replay", type=int, default=0, help="rows taken from --replay")
    sh = sub.add_parser("ship", help="copy a LoRA run's adapter into models/keel-agent (fp16 weights, manifest)")
    sh.add_argument("run", help="run folder of configs/agent-sft.yaml (runs/agent-sft)")
    sh.add_argument("--dest", default=str(Path(__file__).resolve().parent.parent / "models" / "keel-agent"))
    sh.add_argument("--metrics", help="JSON file of evaluation figures to record in keel.json")
    a = p.parse_args(argv)
    if a.cmd == "run" and not a.question.strip():
        p.error("the question is empty")
    try:
        if a.cmd == "ship":
            from agents.agent_data import ship_adapter

            metrics = json.loads(Path(a.metrics).read_text()) if a.metrics else None
            print(json.dumps(ship_adapter(Path(a.run), Path(a.dest), metrics), indent=2))
        elif a.cmd == "make-mix":
            from agents.agent_data import build_mix

            print(json.dumps(build_mix(Path(a.out), seed=a.seed, n_arith=a.n_arith, n_gsm8k=a.n_gsm8k, n_kb=a.n_kb,
                                       n_plain=a.n_plain, n_harmless=a.n_harmless,
                                       n_refusal=a.n_refusal, n_tool_error=a.n_tool_error,
                                       n_multi_turn=a.n_multi_turn, model=a.model,
                                       replay=a.replay, n_replay=a.n_replay, n_lookup=a.n_lookup,
                                       n_compose=a.n_compose, arith_steps=a.arith_steps), indent=2))
        elif a.cmd == "make-data":
            from agents.trajectories import convert_file

            print(json.dumps(convert_file(Path(a.src), Path(a.out), a.limit)))
        elif a.cmd == "run":
            from agents.agent import ReActAgent, TransformersLLM
            from agents.tools import default_tools
            from align.models import load_policy

            retriever = None
            if a.index != "none":
                from retrieval import Retriever
                from retrieval.default_kb import open_default_index

                retriever = open_default_index() if a.index == "default" else Retriever.open(a.index)
            if a.llm_url:
                from agents.openai_llm import OpenAILLM, api_key_from_env
                from align.models import load_tokenizer

                tok = load_tokenizer(a.checkpoint, padding_side="left") if a.llm_template == "checkpoint" else None
                llm = OpenAILLM(a.llm_url, a.llm_model, api_key=api_key_from_env(a.llm_api_key_env), tokenizer=tok)
            else:
                model, tok, _ = load_policy(a.checkpoint)
                llm = TransformersLLM(model, tok)
            agent = ReActAgent(llm, default_tools(retriever), max_steps=a.max_steps,
                               constrained=a.constrained == "true", force_final_answer=True,
                               citations=a.citations)
            trace = agent.run(a.question)
            if a.json:
                print(trace.to_json())
            else:
                for ev in trace.events:
                    label = ev.type + (f" [{ev.tool}]" if ev.tool else "")
                    print(f"{ev.step}. {label}: {ev.content}")
                print(f"-> {trace.answer!r} ({trace.stopped}, {trace.steps} steps, {trace.tokens} tokens)")
        elif a.cmd == "eval":
            from agents.evaluate import arith_tasks, build_agent, evaluate, gsm8k_tasks

            tasks = arith_tasks(a.n, a.seed) if a.tasks == "arith" else gsm8k_tasks(a.n)
            report = evaluate(build_agent(a.checkpoint, a.max_steps, a.max_new_tokens, a.batch, a.dtype), tasks,
                              workers=a.batch)
            report.update(checkpoint=a.checkpoint, task_set=a.tasks)
            print(json.dumps({k: v for k, v in report.items() if k != "records"}, indent=2))
            if a.out:
                Path(a.out).write_text(json.dumps(report, indent=2))
    except KeelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
