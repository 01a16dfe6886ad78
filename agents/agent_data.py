"""The training mix for Keel's default agent: ReAct trajectories the project builds from what it ships.

``python -m agents make-mix --out runs/data/agent_mix.jsonl`` writes TRL conversational
prompt-completion rows, every one with the app's own system prompt and tool list (search,
calculator, current_date), so what the adapter learns is exactly what the app asks of it:

  - ``arith``: seeded multi-step arithmetic word problems (``agents.tasks``, train split), one
    calculator call with the whole expression, the real calculator's result, the answer;
  - ``gsm8k``: GSM8K worked solutions, one calculator call per ``<<a*b=c>>`` annotation
    (``agents.trajectories``);
  - ``kb``: questions about knowledge-base topics of the train split; the real retriever's
    passages as the observation, and an answer that quotes the passage and cites its source;
  - ``plain``: greetings, short writing and translations answered without a tool; the answer is
    the embedded model's own plain-chat reply (self-distillation: the adapter learns the format,
    not new content);
  - ``harmless``: single-turn HH-RLHF harmless requests whose "chosen" reply declines or
    redirects (``agents.tasks.declines``), answered without a tool;
  - ``refusal``: harmful requests of the train split of ``agents.tasks.harmful_tasks`` (acts and
    phrasings the evaluation never uses), declined with the reason and a safer alternative;
  - ``tool_error``: arithmetic problems whose first calculator call has a mistake small models make
    (a unit or word in the expression, an unclosed bracket, a variable name); the observation is the
    real calculator's error and the agent writes the expression again, rather than inventing a number;
  - ``lookup`` (``--n-lookup``, 0 by default: not in the shipped adapter's mix yet): questions about
    made-up named things, as users ask about documents they uploaded, answered by a search: the
    real knowledge base's passages for the query, a synthetic note's passage among them (or not),
    and an answer that quotes and cites the note (or says the knowledge base has nothing on it);
  - ``compose`` (``--n-compose``, 0 by default, as ``lookup``): arithmetic word problems composed
    from parts (``agents.compose``: quantity phrases, operations, sentence orders and question
    forms over lists of settings), answered as ``arith`` rows are;
  - ``multi_turn``: rows of the kinds above asked after one or two earlier exchanges (as the app
    sends the chat history), so a follow-up question is answered on its own terms instead of
    repeating the previous answer.

A summary (rows per kind, skips, sha256 of the file) is returned and written beside the file.
"""
from __future__ import annotations

import ast
import gzip
import hashlib
import json
import random
import re
from pathlib import Path

from agents.agent import DEFAULT_SYSTEM_PROMPT, react_system_prompt
from agents.calculator import calculate, format_number
from agents.tasks import _CAPABILITY_TRAIN, arith_word_tasks, declines, harmful_tasks, kb_tasks, plain_tasks
from agents.tools import ToolRegistry, default_tools

REPO = Path(__file__).resolve().parent.parent
GSM8K_SAMPLE = REPO / "data" / "gsm8k" / "train_sample.jsonl"
HH_SAMPLE = REPO / "data" / "hh-rlhf" / "harmless.jsonl.gz"

NO_TOOL_THOUGHT = "This needs no tool; I can answer directly."
DECLINE_THOUGHT = "This request could hurt someone, so I will not help with it."
# What the agent says it can do when asked ("What tools do you have?"): written here, not distilled,
# because the bare model answers such questions about itself wrongly ("I don't have any tools").
CAPABILITY_ANSWER = ("I can search the knowledge base (the Python reference and any documents you upload) and "
                     "cite what I find, work out arithmetic with a calculator, tell you today's date, and help "
                     "with short writing such as notes, poems and translations. What would you like to do?")


def _row(system: str, question: str, steps: str, kind: str) -> dict:
    return {"prompt": [{"role": "system", "content": system}, {"role": "user", "content": question}],
            "completion": [{"role": "assistant", "content": steps}], "kind": kind}


def arith_rows(system: str, n: int, seed: int, tasks: list[dict] | None = None, kind: str = "arith") -> list[dict]:
    """``n`` SFT rows (prompt/completion chat messages, ``kind`` 'arith'): a word problem answered with one
    calculator call. ``tasks``: these problems instead of ``arith_word_tasks``' train split.
    """
    rows = []
    for t in (tasks if tasks is not None else arith_word_tasks(n, seed, split="train")):
        result = format_number(calculate(t["expression"]))
        steps = (f"Thought: I need to calculate {t['expression']}.\nAction: calculator\n"
                 f"Action Input: {json.dumps({'expression': t['expression']})}\nObservation: {result}\n"
                 f"Thought: The calculator gives {result}.\nFinal Answer: {result}")
        rows.append(_row(system, t["question"], steps, kind))
    return rows


_PRECEDENCE = {ast.Add: 1, ast.Sub: 1, ast.Mult: 2, ast.Div: 2, ast.FloorDiv: 2, ast.Mod: 2}


def _bracketed(parent: ast.BinOp, child: ast.AST, right: bool) -> bool:
    """Whether ``child`` is written in brackets under ``parent`` (``(a + b) * c``, ``a - (b - c)``)."""
    if not isinstance(child, ast.BinOp) or type(child.op) not in _PRECEDENCE:
        return False
    p, c = _PRECEDENCE[type(parent.op)], _PRECEDENCE[type(child.op)]
    return c < p or (right and c == p and not isinstance(parent.op, (ast.Add, ast.Mult)))


def stepwise_expressions(expression: str) -> list[str] | None:
    """The calculator calls that work an expression out brackets first: each bracketed group on its
    own, innermost first, then the rest with the groups' results in their place.

    ``"(348 + 15) * 27"`` -> ``["348 + 15", "363 * 27"]``; ``"(8*12 - 6) / 5"`` -> ``["8 * 12 - 6",
    "90 / 5"]``; an expression without brackets is one call (``["3 * 4 + 5"]``). ``None`` where the
    expression holds anything but numbers and + - * / // % (a function call, a power, a percentage),
    which stays one call. Parsed with ``ast`` (never evaluated here); the results come from
    ``agents.calculator``.
    """
    try:
        tree = ast.parse(expression.replace("×", "*").replace("÷", "/"), mode="eval").body
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and type(node.op) not in _PRECEDENCE:
            return None
        if not isinstance(node, (ast.BinOp, ast.Constant, ast.UnaryOp, ast.operator, ast.unaryop)):
            return None
    calls: list[str] = []

    def inner(node: ast.AST) -> ast.AST | None:  # a bracketed group with no bracketed group inside
        if not isinstance(node, ast.BinOp):
            return None
        for child, right in ((node.left, False), (node.right, True)):
            found = inner(child)
            if found is not None:
                return found
            if _bracketed(node, child, right):
                return child
        return None

    while (group := inner(tree)) is not None:
        text = ast.unparse(group)
        calls.append(text)
        # the result as the calculator shows it (the observation the next call copies): 12.5, not 12.50000001
        shown = ast.parse(format_number(calculate(text)), mode="eval").body
        tree = _replace(tree, group, shown)
    calls.append(ast.unparse(tree))
    return calls


def _replace(tree: ast.AST, old: ast.AST, new: ast.AST) -> ast.AST:
    if tree is old:
        return new
    if isinstance(tree, ast.BinOp):
        tree.left, tree.right = _replace(tree.left, old, new), _replace(tree.right, old, new)
    return tree


def arith_step_rows(system: str, tasks: list[dict], kind: str) -> list[dict]:
    """Rows like ``arith_rows`` whose bracketed expressions are worked out one group per calculator
    call (``stepwise_expressions``): the bracket a small model leaves out when it writes the whole
    expression at once (``a + b * c`` for ``(a + b) * c``) becomes a call of its own. Expressions
    without brackets stay one call."""
    rows = []
    for t in tasks:
        calls = stepwise_expressions(t["expression"])
        whole = format_number(calculate(t["expression"]))
        if (calls is None or len(calls) == 1 or len(calls) > 3  # the agent has 4 steps: 3 calls and an answer
                or format_number(calculate(calls[-1])) != whole):  # a rounded middle result changed the answer
            rows += arith_rows(system, 1, 0, tasks=[t], kind=kind)
            continue
        steps, result = [], None
        for i, call in enumerate(calls):
            result = format_number(calculate(call))
            first = "First I need" if i == 0 else "Now I need"
            steps.append(f"Thought: {first} {call}.\nAction: calculator\n"
                         f"Action Input: {json.dumps({'expression': call})}\nObservation: {result}")
        steps.append(f"Thought: The calculator gives {result}.\nFinal Answer: {result}")
        rows.append(_row(system, t["question"], "\n".join(steps), kind))
    return rows


def compose_rows(system: str, n: int, seed: int, steps: bool = False) -> list[dict]:
    """``n`` rows (``kind`` 'compose') like ``arith_rows`` on problems composed from parts
    (``agents.compose``): many wordings of each expression shape instead of one story per template.
    ``steps``: bracketed expressions one group per call (``arith_step_rows``)."""
    from agents.compose import compose_arith_tasks

    tasks = compose_arith_tasks(n, seed)
    return arith_step_rows(system, tasks, "compose") if steps else arith_rows(system, n, seed, tasks=tasks,
                                                                               kind="compose")


def gsm8k_rows(system: str, tools: ToolRegistry, n: int) -> list[dict]:
    """Up to ``n`` SFT rows from GSM8K's train sample, each solution rewritten as ReAct steps with calculator
    calls (rows that do not convert are skipped).
    """
    from agents.trajectories import gsm8k_to_react

    rows = []
    for line in GSM8K_SAMPLE.read_text(encoding="utf-8").splitlines():
        if len(rows) >= n:
            break
        try:
            r = gsm8k_to_react(json.loads(line), tools)
        except (ValueError, KeyError):
            continue
        rows.append(_row(system, r["prompt"][1]["content"], r["completion"][0]["content"], "gsm8k"))
    return rows


_SENTENCE = re.compile(r"[A-Z][^.!?]{30,240}[.!?](?=\s|$)")


def _answer_sentence(passage: str) -> str | None:
    """The first prose sentence of a passage (its title, grammar rules and code lines are skipped)."""
    passage = re.sub(r"^.*?\*{3,}\s*", "", passage)  # "Title ***** " underline from the reference text
    for m in _SENTENCE.finditer(passage):
        s = m.group(0)
        if "::=" not in s and "*" * 3 not in s and not s.startswith(("Note", "See ")):
            return s
    return None


class _Prefetched:
    """A retriever's answers to known queries, fetched in one batch (one embedding pass, not one per row)."""

    def __init__(self, retriever, queries: list[str], k: int):
        unique = list(dict.fromkeys(queries))
        self.k, self.hits = k, dict(zip(unique, retriever.search_batch(unique, k=k)))

    def search(self, query: str, k: int = 3):
        assert k == self.k, (k, self.k)
        return self.hits[query]


def kb_rows(system: str, retriever, max_rows: int | None = None) -> tuple[list[dict], int]:
    """SFT rows that answer the knowledge-base tasks with one search call through ``retriever``; returns
    ``(rows, skipped)``, skipped counting the tasks whose source passage the search does not return.
    """
    from agents.tools import SearchArgs, search_tool

    tasks = kb_tasks(split="train")
    k = SearchArgs.model_fields["k"].default  # what the agent's search call returns by default
    if hasattr(retriever, "search_batch"):
        retriever = _Prefetched(retriever, [t["subject"] for t in tasks], k)
    search = search_tool(retriever)
    rows, skipped = [], 0
    for t in tasks:
        if max_rows is not None and len(rows) >= max_rows:
            break
        query = t["subject"]
        observation = search.run({"query": query}).text
        passages = re.split(r"\n(?=\[\d+\] )", observation)
        cite = next((i for i, p in enumerate(passages)
                     if re.match(rf"\[\d+\] \({re.escape(t['source'])}( §|\))", p)), None)
        sentence = _answer_sentence(passages[cite].split(") ", 1)[-1]) if cite is not None else None
        if sentence is None:
            skipped += 1
            continue
        steps = (f"Thought: I should search the knowledge base for {query}.\nAction: search\n"
                 f"Action Input: {json.dumps({'query': query})}\nObservation: {observation}\n"
                 f"Thought: Passage [{cite + 1}] answers this.\nFinal Answer: {sentence} (source: {t['source']})")
        rows.append(_row(system, t["question"], steps, "kb"))
    return rows, skipped


# Lookup rows: a question about a made-up named thing, as users ask about a document they uploaded. The
# agent searches; the observation is the real search tool's output over the knowledge base's own
# passages for that query, with (most of the time) a passage of a synthetic uploaded note at a random
# rank; the answer quotes the note's sentence and cites it, or says the knowledge base has nothing on
# it. Names are built from syllables, things and question forms are lists of their own: none is one of
# ``agents.tasks.lookup_tasks``' (the evaluation's), which a test holds.
_LOOKUP_HEADS = ["Fen", "Gar", "Hal", "Lin", "Mor", "Nes", "Pal", "Rud", "Sel", "Tor", "Wen", "Bry", "Cal", "Dar",
                 "Eld", "Gil", "Jor", "Kest", "Lom", "Quin"]
_LOOKUP_TAILS = ["wick", "mere", "stead", "holm", "brook", "ridge", "cott", "ley", "ford", "dale", "haven", "shaw",
                 "ton", "burn", "garth"]
_LOOKUP_TRAIN_THINGS = ["water tower", "radio mast", "museum", "orchard", "dataset", "tram depot", "lighthouse",
                        "garden", "lab", "market", "service", "app", "team", "pipeline", "clinic", "school"]
_PEOPLE = ["Ada Brenner", "Tomas Okafor", "Lucia Marsh", "Priya Nair", "Owen Castell", "Mina Sato", "Jonas Reiter",
           "Sara Lindqvist", "Kwame Mensah", "Elena Ruiz", "the city council", "a volunteer group"]
_PLACES_LOOKUP = ["the north end of the harbour", "the old mill district", "the hill above the station",
                  "the east side of the river", "the university campus", "the edge of the industrial park"]
_PURPOSES = ["stores rainwater for the town's gardens", "relays weather readings to the regional office",
             "keeps the records of local shipping", "trains apprentices in repair work",
             "collects sensor logs for the research group", "schedules deliveries for the shops nearby"]
_KNOWN = ["its copper roof", "a yearly open day in June", "never missing a day in forty years",
          "the mural on its north wall", "its collection of old maps", "running entirely on solar power"]
# (question forms, the fact each asks for); {n} name, {t} thing
_LOOKUP_TRAIN_FORMS = [
    ("In which year did the {n} {t} open?", "opened"), ("What year was the {n} {t} founded?", "opened"),
    ("Who looks after the {n} {t}?", "maintained"), ("Who is responsible for the {n} {t}?", "maintained"),
    ("What is the purpose of the {n} {t}?", "purpose"), ("What is the {n} {t} for?", "purpose"),
    ("Can you tell me where the {n} {t} is located?", "where"), ("Where can I find the {n} {t}?", "where"),
    ("How many staff does the {n} {t} have?", "staff"), ("How big is the team at the {n} {t}?", "staff"),
    ("How frequently is the {n} {t} reset?", "reset"), ("What is the reset schedule of the {n} {t}?", "reset"),
    ("Why is the {n} {t} famous?", "known"), ("According to my documents, what is the {n} {t} best known for?", "known"),
    ("What did the uploaded file say about the {n} {t}?", "purpose"), ("Tell me about the {n} {t}.", "purpose"),
]
LOOKUP_THOUGHT = "I do not know the {thing}, so I will search the knowledge base for it."
_NOT_FOUND = ("The knowledge base has nothing about the {thing}: none of the passages it returned mention it. "
              "If you upload a document about it, I can look it up there.")


def _lookup_facts(rng: random.Random, name: str, thing: str) -> dict[str, str]:
    the = f"The {name} {thing}"
    return {"opened": f"{the} opened in {rng.randint(1890, 2022)}.",
            "maintained": f"{the} is maintained by {rng.choice(_PEOPLE)}.",
            "purpose": f"{the} {rng.choice(_PURPOSES)}.",
            "where": f"{the} is on {rng.choice(_PLACES_LOOKUP)}.",
            "staff": f"{rng.randint(3, 240)} people work at the {name} {thing}.",
            "reset": f"{the} is reset every {rng.randint(2, 60)} {rng.choice(['minutes', 'hours', 'days', 'weeks'])}.",
            "known": f"{the} is best known for {rng.choice(_KNOWN)}."}


class _Listed:
    """A retriever that answers one query with a fixed list of hits (so the search tool formats them)."""

    def __init__(self, hits):
        self.hits = hits

    def search(self, query: str, k: int = 3):
        return self.hits[:k]


def lookup_rows(system: str, retriever, n: int, seed: int, found_share: float = 0.75) -> list[dict]:
    """``n`` SFT rows (``kind`` 'lookup') about made-up named things, answered by one search call.

    ``retriever`` gives the knowledge base's passages for the query (``search_batch`` or ``search``);
    in a ``found_share`` of rows a synthetic note's passage (source ``<name>-<thing>.md``, holding the
    asked fact and two others) takes a random rank among them and the answer is its sentence with
    ``(source: NAME)``; in the rest the answer says the knowledge base has nothing about it.
    Raises ValueError when ``n`` exceeds the distinct (name, thing, form) combinations (19,200)."""
    from agents.tools import SearchArgs, search_tool
    from retrieval.retriever import Hit

    names = [h + t for h in _LOOKUP_HEADS for t in _LOOKUP_TAILS]
    combos = [(nm, th, f) for nm in names for th in _LOOKUP_TRAIN_THINGS for f in _LOOKUP_TRAIN_FORMS]
    if n > len(combos):
        raise ValueError(f"lookup_rows: n={n} is more than the {len(combos)} distinct questions")
    if n <= 0:
        return []
    rng = random.Random(f"lookup-rows-{seed}")
    picked = rng.sample(combos, n)
    k = SearchArgs.model_fields["k"].default
    queries = [f"{nm} {th}" for nm, th, _ in picked]
    if hasattr(retriever, "search_batch"):
        retriever = _Prefetched(retriever, queries, k)
    rows = []
    for (name, thing, (form, fact)), query in zip(picked, queries):
        facts = _lookup_facts(rng, name, thing)
        hits = list(retriever.search(query, k=k))
        found = rng.random() < found_share
        thought = LOOKUP_THOUGHT.format(thing=f"{name} {thing}")
        if found:
            others = rng.sample([f for f in facts if f != fact], 2)
            order = [fact, *others]
            rng.shuffle(order)
            source = f"{name.lower()}-{thing.replace(' ', '-')}.md"
            note = Hit(id=-1, score=1.0, text=" ".join(facts[f] for f in order), source=source,
                       title=f"{name} {thing}", heading="", start=0, end=0)
            rank = rng.randrange(min(len(hits), k - 1) + 1)
            hits = (hits[:rank] + [note] + hits[rank:])[:k]
            observation = search_tool(_Listed(hits)).run({"query": query}).text
            assert facts[fact] in observation, (facts[fact], observation)
            answer = (f"Thought: Passage [{rank + 1}] is about the {name} {thing}.\n"
                      f"Final Answer: {facts[fact]} (source: {source})")
        else:
            observation = search_tool(_Listed(hits)).run({"query": query}).text
            answer = (f"Thought: No passage mentions the {name} {thing}.\n"
                      f"Final Answer: {_NOT_FOUND.format(thing=f'{name} {thing}')}")
        steps = (f"Thought: {thought}\nAction: search\nAction Input: {json.dumps({'query': query})}\n"
                 f"Observation: {observation}\n{answer}")
        rows.append(_row(system, form.format(n=name, t=thing), steps, "lookup"))
    return rows


def degenerate(reply: str) -> bool:
    """Whether a reply loops: one 4-word sequence three times or more ("a cat, a cat, a cat, ..."), or
    fewer than 40% distinct words in 12 or more. Such replies teach the adapter to repeat itself (a
    newcomer's "two-line poem" ran to 25 lines), so ``plain_rows`` leaves them out."""
    words = re.findall(r"\w+", reply.lower())
    grams: dict[tuple, int] = {}
    for i in range(len(words) - 3):
        g = tuple(words[i:i + 4])
        grams[g] = grams.get(g, 0) + 1
        if grams[g] >= 3:
            return True
    return len(words) >= 12 and len(set(words)) / len(words) < 0.4


def plain_rows(system: str, n: int, seed: int, model_ref: str, batch: int = 16) -> list[dict]:
    """Up to ``n`` plain requests answered by the model's own plain-chat reply, in the ReAct answer
    format; replies that are empty, hold ReAct keywords or loop (``degenerate``) are left out, and a
    quarter more requests than ``n`` are asked to make up for them."""
    import torch
    from tqdm.auto import tqdm

    from align.generate import encode_chats, generation_kwargs
    from align.models import load_policy

    if n <= 0:
        return []
    tasks = plain_tasks(n + n // 4, seed, split="train")
    model, tok, _ = load_policy(model_ref)
    rows = []
    for i in tqdm(range(0, len(tasks), batch), desc="plain replies"):
        chunk = tasks[i:i + batch]
        enc = encode_chats(tok, [[{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                  {"role": "user", "content": t["question"]}] for t in chunk], model.device)
        with torch.inference_mode():
            out = model.generate(**enc, **generation_kwargs(tok, 96))
        for t, ids in zip(chunk, out[:, enc["input_ids"].shape[1]:]):
            if t["question"] in _CAPABILITY_TRAIN:
                rows.append(_row(system, t["question"], f"Thought: {NO_TOOL_THOUGHT}\nFinal Answer: {CAPABILITY_ANSWER}",
                                 "plain"))
                continue
            reply = tok.decode(ids, skip_special_tokens=True).strip()
            if not reply or re.search(r"^\s*(Action|Observation|Thought)\s*:", reply, re.M) or degenerate(reply):
                continue
            if ids[-1].item() not in (tok.eos_token_id, tok.pad_token_id):  # cut at the token limit: end on a sentence
                reply = reply[: max(reply.rfind(". "), reply.rfind(".\n")) + 1] or reply
            rows.append(_row(system, t["question"], f"Thought: {NO_TOOL_THOUGHT}\nFinal Answer: {reply}", "plain"))
    return rows[:n]


def harmless_rows(system: str, n: int, seed: int, path: Path = HH_SAMPLE) -> list[dict]:
    """``n`` SFT rows from HH-RLHF's chosen one-turn replies (``path``), answered without a tool."""
    from align.data import parse_hh_transcript

    rows = []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig") as f:
        for line in f:
            chat = parse_hh_transcript(json.loads(line)["chosen"])
            if len(chat) != 2 or chat[0]["role"] != "user":
                continue
            reply = chat[1]["content"].strip()
            if not (30 <= len(reply) <= 600) or "Human:" in reply or not declines(reply):
                continue
            rows.append(_row(system, chat[0]["content"], f"Thought: {DECLINE_THOUGHT}\nFinal Answer: {reply}",
                             "harmless"))
    random.Random(seed).shuffle(rows)
    return rows[:n]


_REFUSALS = ["I can't help with that: {why}. {instead}", "Sorry, I won't help with this, because {why}. {instead}",
             "I cannot assist with that request. {Why}. {instead}", "I'm sorry, but I can't help with that; {why}. {instead}"]


def refusal_rows(system: str, n: int, seed: int) -> list[dict]:
    """``n`` SFT rows that decline a harmful request, giving the reason and a safer alternative."""
    rng = random.Random(f"refusal-{seed}")
    rows = []
    for t in harmful_tasks(n, seed, split="train"):
        reply = rng.choice(_REFUSALS).format(why=t["why"], Why=t["why"][0].upper() + t["why"][1:],
                                             instead=t["instead"])
        assert declines(reply), reply
        rows.append(_row(system, t["question"], f"Thought: {DECLINE_THOUGHT}\nFinal Answer: {reply}", "refusal"))
    return rows

_UNITS = ["dollars", "kg", "liters", "meters", "items", "hours", "km", "apples", "euros", "boxes"]
_NAMES_FOR_NUMBERS = ["price", "total", "rate", "count", "width", "cost"]
RETRY_THOUGHT = "The calculator takes only numbers and operators, so I will write the expression again correctly."


def _mistake(expression: str, rng: random.Random) -> str:
    """A wrong first try at ``expression`` of a kind small models write (the calculator rejects it)."""
    first = re.match(r"\(?\s*(\d+(?:\.\d+)?)", expression)
    kinds = ["unit", "trailing", "name"] + (["times"] if " * " in expression else []) + ["bracket"]
    kind = rng.choice(kinds)
    if kind == "unit" and first:
        return expression[:first.end()] + f" {rng.choice(_UNITS)}" + expression[first.end():]
    if kind == "times":
        return expression.replace(" * ", " times ", 1)
    if kind == "bracket":
        return expression[:-1] if expression.endswith(")") else "(" + expression
    if kind == "name" and first:
        return expression[:first.start(1)] + rng.choice(_NAMES_FOR_NUMBERS) + expression[first.end(1):]
    return expression + f" = {rng.choice(['total', 'answer', 'x'])}"


def tool_error_rows(system: str, tools: ToolRegistry, n: int, seed: int) -> list[dict]:
    """Recovering from a calculator error: the real tool's error, a corrected call, the answer."""
    rng = random.Random(f"tool-error-{seed}")
    calculator = tools.get("calculator")
    rows = []
    for t in arith_word_tasks(n, seed + 1, split="train"):
        wrong = _mistake(t["expression"], rng)
        error = calculator.run({"expression": wrong})
        if error.ok:  # the calculator read it after all: not an error row
            continue
        result = format_number(calculate(t["expression"]))
        steps = (f"Thought: I need to calculate this.\nAction: calculator\n"
                 f"Action Input: {json.dumps({'expression': wrong})}\nObservation: {error.text}\n"
                 f"Thought: {RETRY_THOUGHT}\nAction: calculator\n"
                 f"Action Input: {json.dumps({'expression': t['expression']})}\nObservation: {result}\n"
                 f"Thought: The calculator gives {result}.\nFinal Answer: {result}")
        rows.append(_row(system, t["question"], steps, "tool_error"))
    return rows


def _final_answer(row: dict) -> str:
    return row["completion"][0]["content"].rsplit("Final Answer: ", 1)[-1].strip()


def multi_turn_rows(rows: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` rows asked after one or two earlier exchanges taken from other rows of the mix.

    The history is what the app sends: each earlier question and the answer it showed (for a search
    answer, with the sources line the app appends)."""
    rng = random.Random(f"multi-turn-{seed}")
    targets = [r for r in rows if r["kind"] in ("arith", "kb", "plain", "refusal", "tool_error", "lookup", "compose")]
    out = []
    for _ in range(n):
        row = rng.choice(targets)
        history = []
        for earlier in rng.sample(rows, rng.choice([1, 1, 2])):
            if earlier is row:
                continue
            answer = _final_answer(earlier)
            source = re.search(r"\(source: ([^)]+)\)$", answer)
            if source:
                answer += f"\n\n**Sources:** {source.group(1)}"
            history += [{"role": "user", "content": earlier["prompt"][-1]["content"]},
                        {"role": "assistant", "content": answer}]
        prompt = [row["prompt"][0], *history, row["prompt"][-1]]
        out.append({"prompt": prompt, "completion": row["completion"], "kind": "multi_turn"})
    return out


def replay_rows(path: Path, n: int, seed: int) -> list[dict]:
    """``n`` rows of an earlier mix file whose completion calls no tool, drawn with ``seed``."""
    from align.errors import DataError

    no_tool = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                text = row["completion"][0]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                raise DataError(f"{path}:{line_no}: not a prompt-completion row of a mix") from None
            if not re.search(r"^\s*Action\s*:", text, re.M):
                no_tool.append({"prompt": row["prompt"], "completion": row["completion"], "kind": "replay"})
    if len(no_tool) < n:
        raise DataError(f"{path}: {len(no_tool)} rows answered without a tool, {n} asked for (--n-replay)")
    return random.Random(f"replay-{seed}").sample(no_tool, n)


def build_mix(out: Path, *, seed: int = 0, n_arith: int = 1500, n_gsm8k: int = 150, n_kb: int | None = None,
              n_plain: int = 300, n_harmless: int = 150, n_refusal: int = 150, n_tool_error: int = 200,
              n_multi_turn: int = 500, model: str = "smollm2-135m", retriever=None,
              replay: Path | None = None, n_replay: int = 0, n_lookup: int = 0, n_compose: int = 0,
              arith_steps: bool = False) -> dict:
    """Write the mix to ``out`` (JSONL, shuffled) and return a summary with its sha256.

    ``replay``/``n_replay``: also take ``n_replay`` rows answered without a tool (plain requests,
    harmless replies, refusals) from an earlier mix, seeded, so that a run continuing an adapter on
    new rows keeps those answers without generating plain replies again. Raises DataError naming the
    file when it has fewer such rows. ``n_lookup``: rows about made-up named things answered by a
    search (``lookup_rows``); ``n_compose``: arithmetic composed from parts (``compose_rows``); 0 and 0
    keep the mix the shipped adapter was trained on. ``arith_steps``: arithmetic rows (``arith``,
    ``compose`` and the multi-turn rows made of them) work bracketed expressions out one group per
    calculator call (``arith_step_rows``) instead of in one call."""
    if retriever is None:
        from retrieval.default_kb import open_default_index

        retriever = open_default_index()
    tools = default_tools(retriever)
    system = react_system_prompt(tools)
    kb, kb_skipped = kb_rows(system, retriever, n_kb)
    arith = (arith_step_rows(system, arith_word_tasks(n_arith, seed, split="train"), "arith") if arith_steps
             else arith_rows(system, n_arith, seed))
    rows = (arith + gsm8k_rows(system, tools, n_gsm8k) + kb
            + harmless_rows(system, n_harmless, seed) + refusal_rows(system, n_refusal, seed)
            + tool_error_rows(system, tools, n_tool_error, seed) + plain_rows(system, n_plain, seed, model)
            + lookup_rows(system, retriever, n_lookup, seed) + compose_rows(system, n_compose, seed, arith_steps))
    rows += multi_turn_rows(rows, n_multi_turn, seed)
    if replay is not None and n_replay > 0:
        rows += replay_rows(Path(replay), n_replay, seed)
    random.Random(seed).shuffle(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"prompt": r["prompt"], "completion": r["completion"]}) + "\n")
    tmp.replace(out)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["kind"]] = counts.get(r["kind"], 0) + 1
    summary = {"out": str(out), "rows": len(rows), "per_kind": counts, "kb_skipped": kb_skipped, "seed": seed,
               "sha256": hashlib.sha256(out.read_bytes()).hexdigest()}
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))
    return summary


SHIPPED_FILES = ("adapter_config.json", "adapter_model.safetensors", "keel.json")


def ship_adapter(run: Path, dest: Path, metrics: dict | None = None, dtype: str = "float16") -> dict:
    """Copy a LoRA run's adapter into ``dest`` (the repo's ``models/keel-agent``): adapter weights
    stored in ``dtype`` (half the size; loading casts them back to the model's dtype), config, and
    the manifest with the parent named and ``metrics`` merged in. Tokenizer files are left out: the
    base's tokenizer is used. Written to a temporary folder and renamed into place."""
    import shutil
    import tempfile

    import torch
    from safetensors.torch import load_file, save_file

    from align.checkpoint import MANIFEST_NAME, load_manifest

    src = run / "model" if (run / "model" / MANIFEST_NAME).is_file() else run
    manifest = load_manifest(src)
    if not (src / "adapter_config.json").is_file():
        raise ValueError(f"{src} holds no LoRA adapter (train with lora.enabled true, lora.merge_on_save false)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp.", dir=dest.parent))
    try:
        weights = load_file(str(src / "adapter_model.safetensors"))
        save_file({k: v.to(getattr(torch, dtype)).contiguous() for k, v in weights.items()},
                  str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        shutil.copy(src / "adapter_config.json", tmp / "adapter_config.json")
        data = manifest.model_dump()
        data["parents"] = data.get("parents") or [manifest.base_model]
        data["metrics"] = {**data.get("metrics", {}), **(metrics or {})}
        data["shipped"] = {"from_run": str(run), "weights_dtype": dtype}
        (tmp / MANIFEST_NAME).write_text(json.dumps(data, indent=2, default=str))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"dest": str(dest), "files": sorted(p.name for p in dest.iterdir()),
            "bytes": sum(p.stat().st_size for p in dest.iterdir())}
