"""Grammar-constrained steps on a tiny random model: whatever it samples is a readable, valid step."""
import json

import pytest

from agents.agent import ReActAgent, TransformersLLM
from agents.batching import BatchedLLM
from agents.grammar import GrammarError, GrammarLogitsProcessor, check_grammar, native_grammar, react_grammar
from agents.parsing import parse_react, parse_tool_calls
from agents.tools import ToolRegistry, calculator_tool, date_tool, default_tools


def _tools_with_custom() -> ToolRegistry:
    tools = ToolRegistry([calculator_tool(), date_tool()])

    @tools.tool
    def convert(amount: float, currency: str, rounded: bool = False) -> str:
        "Convert an amount of money into another currency."
        return f"{amount} {currency}"

    return tools


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from align.models import load_policy

    model, tok, _ = load_policy(str(tiny_model_dir))
    return model, tok


def _llm(tiny, temperature=1.0):
    import torch

    torch.manual_seed(0)
    return TransformersLLM(*tiny, temperature=temperature)


class _PreferEnding:
    """Test-only: a random model rarely ends a string or a step; push it towards closing tokens so
    that most samples finish. The grammar still decides which tokens are allowed."""

    def __init__(self, tok):
        self.ids = sorted({tok.eos_token_id, *[i for t, i in tok.get_vocab().items()
                                                 if t in ('"', "}", '"}', "Ċ", "ĠAction", "Action", "1", ",")]})

    def __call__(self, input_ids, scores):
        scores[:, self.ids] += 6.0
        return scores


def _sample_steps(tiny, grammar, prompt_messages, n=12, max_new_tokens=200, continue_final=True):
    import torch
    from transformers import LogitsProcessorList

    from agents.grammar import GrammarLogitsProcessor

    model, tok = tiny
    torch.manual_seed(0)
    enc = tok.apply_chat_template(prompt_messages, continue_final_message=continue_final,
                                  add_generation_prompt=not continue_final, return_tensors="pt", return_dict=True)
    texts = []
    for _ in range(n):
        procs = LogitsProcessorList([_PreferEnding(tok), GrammarLogitsProcessor(grammar, tok)])
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, top_k=0,
                             logits_processor=procs, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = out[0, enc["input_ids"].shape[1]:]
        if new[-1].item() == tok.eos_token_id:  # finished by the grammar, not cut by the token limit
            texts.append(tok.decode(new, skip_special_tokens=True))
    assert len(texts) >= n // 2, f"only {len(texts)} of {n} samples finished"
    return texts


def test_sampled_react_steps_always_parse_to_a_registered_tool_with_valid_arguments(tiny):
    tools = _tools_with_custom()
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                {"role": "assistant", "content": "Thought:"}]
    for text in _sample_steps(tiny, react_grammar(tools), messages):
        step = parse_react("Thought:" + text)
        if step.final_answer is not None:
            assert step.final_answer.strip()
            continue
        tool = tools.get(step.action)
        assert tool is not None and tool.name == step.action, text
        tool.args_schema.model_validate(tool.coerce(step.action_input))  # raises if the schema rejects it


def test_without_the_grammar_the_same_model_writes_unreadable_steps(tiny):
    llm = _llm(tiny)
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "Thought:"}]
    gen = llm.generate(messages, stop=[], max_new_tokens=40, continue_final=True)
    with pytest.raises(ValueError):
        parse_react("Thought:" + gen.text)


def test_the_agent_passes_its_grammar_to_the_backend(tiny):
    seen = []

    class Recording(TransformersLLM):
        def generate(self, messages, **kwargs):
            seen.append(kwargs.get("grammar"))
            return super().generate(messages, **kwargs)

    agent = ReActAgent(Recording(*tiny), _tools_with_custom(), max_steps=1, max_new_tokens=8, constrained=True)
    agent.run("q")
    assert seen and seen[0] == react_grammar(_tools_with_custom())
    seen.clear()
    ReActAgent(Recording(*tiny), _tools_with_custom(), max_steps=1, max_new_tokens=8, constrained=False).run("q")
    assert seen == [None]


def test_native_grammar_allows_text_or_valid_calls(tiny):
    tools = _tools_with_custom()
    for text in _sample_steps(tiny, native_grammar(tools), [{"role": "user", "content": "q"}], continue_final=False):
        assert "<tool_call>" not in text or parse_tool_calls(text)
        for name, args in parse_tool_calls(text):
            tool = tools.get(name)
            assert tool is not None and tool.name == name
            tool.args_schema.model_validate(args)


def test_batched_rows_each_follow_their_own_grammar(tiny):
    import torch

    torch.manual_seed(1)
    llm = BatchedLLM(*tiny, max_batch=4, temperature=1.0)
    grammar = react_grammar(default_tools())
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "Thought:"}]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        gens = list(pool.map(lambda _: llm.generate(messages, stop=[], max_new_tokens=150, continue_final=True,
                                                    grammar=grammar), range(4)))
    for gen in gens:
        if gen.tokens < 150:
            parse_react("Thought:" + gen.text)


def test_grammar_text_and_errors(tiny):
    _, tok = tiny
    g = react_grammar(_tools_with_custom())
    assert '"convert"' in g and '"currency"' in g and "%json" in g
    check_grammar(g, tok)
    check_grammar(native_grammar(_tools_with_custom()), tok)
    with pytest.raises(GrammarError, match="invalid tool-call grammar"):
        GrammarLogitsProcessor("start: (", tok)


def test_processor_masks_per_row(tiny):
    import torch

    _, tok = tiny
    proc = GrammarLogitsProcessor('%llguidance {}\nstart: "yes" | "no"', tok, batch_size=2)
    scores = torch.zeros(2, len(tok))
    out = proc(torch.zeros(2, 3, dtype=torch.long), scores)
    allowed = [tok.decode([i]) for i in torch.nonzero(torch.isfinite(out[0])).flatten().tolist()]
    assert allowed and all("yes".startswith(a) or "no".startswith(a) for a in allowed)
    assert json.dumps(allowed)  # plain strings


def test_enum_and_nested_argument_schemas_compile_in_both_formats(tiny):
    import enum

    import llguidance
    from pydantic import BaseModel

    from agents.grammar import _ll_tokenizer

    class Colour(enum.Enum):
        red = "red"
        blue = "blue"

    class Point(BaseModel):
        x: int
        y: int

    tools = ToolRegistry()

    @tools.tool
    def paint(colour: Colour, at: Point) -> str:
        "Paint a point."
        return "ok"

    _, tok = tiny
    lt = _ll_tokenizer(tok)

    def accepts(grammar, text):
        m = llguidance.LLMatcher(lt, grammar, log_level=0)
        assert not m.is_error(), m.get_error()
        return m.consume_tokens(tok(text, add_special_tokens=False)["input_ids"]) and m.is_accepting()

    good = '{"colour": "red", "at": {"x": 1, "y": 2}}'
    bad = '{"colour": "green", "at": {"x": 1, "y": 2}}'
    assert accepts(react_grammar(tools), f" t\nAction: paint\nAction Input: {good}")
    assert not accepts(react_grammar(tools), f" t\nAction: paint\nAction Input: {bad}")
    assert accepts(native_grammar(tools), f'<tool_call>\n{{"name": "paint", "arguments": {good}}}\n</tool_call>')
    assert not accepts(native_grammar(tools), f'<tool_call>\n{{"name": "paint", "arguments": {bad}}}\n</tool_call>')
    assert accepts(react_grammar(tools), " t\nFinal Answer:\n```python\nx = 1\n```")


def _accepts(grammar: str, tok, text: str) -> bool:
    """Whether ``grammar`` accepts ``text`` as a whole step (tokenized as the model would write it)."""
    import llguidance

    from agents.grammar import _ll_tokenizer

    import numpy as np
    from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

    matcher = llguidance.LLMatcher(_ll_tokenizer(tok), grammar, log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    mask = allocate_token_bitmask(1, (len(tok) + 31) // 32 * 32)
    for token in tok.encode(text, add_special_tokens=False):
        # As in decoding: the mask is computed before each token (a grammar too complex for the lexer
        # fails here, not in consume_token), and the token must be in it.
        fill_next_token_bitmask(matcher, mask, 0)
        assert not matcher.is_error(), matcher.get_error()
        if not (np.uint32(mask[0, token // 32].view(np.uint32)) >> np.uint32(token % 32)) & 1:
            return False
        if not matcher.consume_token(token):
            return False
    return not matcher.is_error() and matcher.is_accepting()


CITING = [" x\nFinal Answer: It is module-level. (source: python-docs:global)",
          " x\nFinal Answer: See (source: python-docs:global) and (source: notes/café menu.md).",
          " x\nFinal Answer: Use the return statement:\n```python\ndef f():\n    return (1, 2)\n```"]
MISCITING = [" x\nFinal Answer: It is module-level.\n[2] (python-docs:global § The global statement) It is",
             " x\nFinal Answer: [1] (python-docs:global) The global statement",
             " x\nFinal Answer: It is module-level. (source: python-docs:globals)",
             " x\nFinal Answer: The relay resets. (source: thequillfeatherrelayreset)",
             " x\nFinal Answer: See (source: python-docs:global) and (source:python-docs:nonlocal)."]


def _citation_case(tiny, make):
    """The tokenizer, tools and two sources the citation tests share, and how a step's text becomes what
    ``make`` decodes (a native reply is the answer alone)."""
    _, tok = tiny
    strip = (lambda t: t) if make is react_grammar else (lambda t: t.split("Final Answer: ", 1)[1])
    return tok, default_tools(), ["python-docs:global", "notes/café menu.md"], strip


@pytest.mark.parametrize("make", [react_grammar, native_grammar])
def test_an_answer_can_cite_only_the_sources_the_episode_retrieved(tiny, make):
    tok, tools, sources, strip = _citation_case(tiny, make)
    for text in CITING:
        assert _accepts(make(tools, sources), tok, strip(text)), text
    for text in MISCITING:
        assert not _accepts(make(tools, sources), tok, strip(text)), text
        assert _accepts(make(tools), tok, strip(text)), text  # no rule without sources given
    # Before any search: no citation at all; an answer without one is fine.
    assert not _accepts(make(tools, []), tok, strip(CITING[0]))
    assert _accepts(make(tools, []), tok, strip(CITING[2]))


def test_the_agent_constrains_citations_to_what_its_search_returned(tiny):
    from agents.agent import Generation
    from agents.tools import search_tool
    from retrieval.retriever import Hit

    class Retriever:
        def search(self, query, k=3):
            return [Hit(1, 0.9, "The global statement declares names.", "python-docs:global", "global",
                        "The global statement", 0, 10),
                    Hit(2, 0.8, "Names refer to objects.", "python-docs:naming", "naming", "", 0, 10)]

    grammars = []
    steps = iter([' I search.\nAction: search\nAction Input: {"query": "global"}',
                  " Passage 1.\nFinal Answer: It declares names. (source: python-docs:global)"])

    class Scripted:
        supports_grammar = True

        def generate(self, messages, **kwargs):
            grammars.append(kwargs["grammar"])
            return Generation(next(steps), 10)

    tools = ToolRegistry([search_tool(Retriever()), calculator_tool()])
    trace = ReActAgent(Scripted(), tools, max_steps=3, constrained=True).run("What does global do?")
    assert trace.answer.endswith("(source: python-docs:global)")
    _, tok = tiny
    first, second = grammars
    assert first == react_grammar(tools, [], citations="required") and second == react_grammar(
        tools, ["python-docs:global", "python-docs:naming"], ["python-docs:global", "python-docs:naming"], "required")
    assert not _accepts(first, tok, CITING[0]) and _accepts(second, tok, CITING[0])
    assert not _accepts(second, tok, MISCITING[0])
    # Tools that return no sources: no citation rule (a user's own tools are not constrained).
    grammars.clear()
    steps = iter([" Done.\nFinal Answer: 4 (source: my head)"])
    ReActAgent(Scripted(), ToolRegistry([calculator_tool()]), max_steps=1, constrained=True).run("2+2?")
    assert grammars == [react_grammar(ToolRegistry([calculator_tool()]))]


@pytest.mark.parametrize("text, ok", [
    (" Passage [1] answers this.\nFinal Answer: It resets every 47 minutes. (source: uploads/relay.md)", True),
    (" Passage [1] answers this.\nFinal Answer: It resets every 47 minutes. (source: python-docs:try)", False),
    (" Passage [1] answers this.\nFinal Answer: It resets. (source: python-docs:global)", False),
    (" Passage [3] answers this.\nFinal Answer: Use try. (source: python-docs:try)", True),
    (" Passage [3] answers this.\nFinal Answer: Use try. (source: keel-docs:README.md)", False),
    (" Passage [1] answers this.\nFinal Answer: It resets every 47 minutes.", True),
    (" Passage [1] answers this.\nFinal Answer: x\n[2] (keel-docs:README.md) y", False),
    (" Passage [1] answers this.\nAction: calculator\nAction Input: {\"expression\": \"47 * 2\"}", True),
    # a thought that does not begin with a passage of the latest search keeps the episode-wide rule
    (" The passages agree.\nFinal Answer: Use try. (source: python-docs:try)", True),
    (" The passages agree.\nFinal Answer: It is global. (source: python-docs:global)", True),
    (" Passage [7] is missing.\nFinal Answer: See the README. (source: keel-docs:README.md)", True),
    (" I think Passage [1] answers.\nFinal Answer: Use try. (source: python-docs:try)", True),
    (" The passages agree.\nFinal Answer: Use while. (source: python-docs:while)", False),
])
def test_a_thought_beginning_with_a_passage_binds_the_citation_to_that_passage(tiny, text, ok):
    _, tok = tiny
    passages = ["uploads/relay.md", "keel-docs:README.md", "python-docs:try"]  # the latest search, [1]..[3]
    sources = ["python-docs:global", *passages]  # an earlier search of the episode also found python-docs:global
    assert _accepts(react_grammar(default_tools(), sources, passages), tok, text) is ok


@pytest.mark.parametrize("make", [react_grammar, native_grammar])
def test_required_citations_make_an_answer_after_a_search_cite_a_listed_source(tiny, make):
    from agents.grammar import MAX_ANSWER_TOKENS_AFTER_CITATION, MAX_ANSWER_TOKENS_BEFORE_CITATION

    tok, tools, sources, strip = _citation_case(tiny, make)
    required = make(tools, sources, citations="required")
    for text in CITING[:2]:
        assert _accepts(required, tok, strip(text)), text
    for text in [CITING[2], *MISCITING]:  # no citation, or a wrong one
        assert not _accepts(required, tok, strip(text)), text
        assert _accepts(make(tools, sources, citations="allowed"), tok, strip(text)) is (text == CITING[2])
    # Before a search (no sources yet) and without a source-reporting tool nothing is required.
    assert _accepts(make(tools, [], citations="required"), tok, strip(CITING[2]))
    assert _accepts(make(tools, None, citations="required"), tok, strip(CITING[2]))
    # The bounds: the citation must come within the first N tokens of the answer (then it is the only
    # continuation: "(source:" may be left to the grammar), and at most M tokens follow it.
    word = " word"
    assert len(tok.encode(word * 10, add_special_tokens=False)) == 10
    head = " x\nFinal Answer:"
    n, m = MAX_ANSWER_TOKENS_BEFORE_CITATION, MAX_ANSWER_TOKENS_AFTER_CITATION
    assert _accepts(required, tok, strip(head + word * (n - 8) + " (source: python-docs:global)"))
    # (native replies with tools: no bound before the citation, see agents.grammar._answer)
    bounded = make is react_grammar
    assert _accepts(required, tok, strip(head + word * (n + 5) + " (source: python-docs:global)")) is not bounded
    assert _accepts(required, tok, strip(head + word * n + " python-docs:global)")) is bounded
    assert _accepts(required, tok, strip(head + " It is. (source: python-docs:global)" + word * (m - 2)))
    assert not _accepts(required, tok, strip(head + " It is. (source: python-docs:global)" + word * (m + 2)))
    # after the citation more text, but no line that starts another ReAct step inside the answer
    assert _accepts(required, tok, strip(head + " It is. (source: python-docs:global) Also this.\n\n```python\nx = 1\n```"))
    for label in ("Thought: more", "Final Answer: again"):  # (native replies have no such labels)
        assert _accepts(required, tok, strip(head + " It is. (source: python-docs:global)\n" + label)) is not bounded
    # a passage line copied without its space is still a copied passage line
    assert not _accepts(required, tok, strip(head + " It is.\n[4](python-docs:global § x) y (source: python-docs:global)"))
    # the bounds scale (the agent passes half and a quarter of its step's max_new_tokens)
    small = make(tools, sources, citations="required", answer_tokens=(20, 8))
    assert _accepts(small, tok, strip(head + word * 30 + " (source: python-docs:global)")) is not bounded
    assert _accepts(small, tok, strip(head + " It is. (source: python-docs:global)" + word * 6))
    assert not _accepts(small, tok, strip(head + " It is. (source: python-docs:global)" + word * 12))
    with pytest.raises(ValueError, match="citations"):
        make(tools, sources, citations="sometimes")


def test_a_bare_name_the_bound_forced_becomes_a_citation():
    from agents.grammar import complete_citation

    srcs = ["python-docs:lists", "python-docs:list", "uploads/a b.md"]
    assert complete_citation("A list display ... (list python-docs:lists)", srcs) == \
        "A list display ... (list (source: python-docs:lists)"
    assert complete_citation("It is global python-docs:list)", srcs) == "It is global (source: python-docs:list)"
    assert complete_citation("See the notes uploads/a b.md)", srcs) == "See the notes (source: uploads/a b.md)"
    for done in ["It is. (source: python-docs:list)", "No citation here.", "Named python-docs:list but no bracket"]:
        assert complete_citation(done, srcs) == done
    # the text may end in "(source:" and the citation begin with it again (seen in the browser test)
    assert complete_citation("Every 47 minutes. (source: (source: uploads/a b.md))", srcs) == \
        "Every 47 minutes. (source: uploads/a b.md)"
    assert complete_citation("See (source:(source: python-docs:list) and more.", srcs) == \
        "See (source: python-docs:list) and more."
    assert complete_citation("Two (source: python-docs:lists) (source: python-docs:list)", srcs) == \
        "Two (source: python-docs:lists) (source: python-docs:list)"


def test_required_citations_follow_the_passage_a_thought_names(tiny):
    _, tok = tiny
    passages = ["uploads/relay.md", "python-docs:try"]
    grammar = react_grammar(default_tools(), ["python-docs:global", *passages], passages, citations="required")
    assert _accepts(grammar, tok, " Passage [1] answers this.\nFinal Answer: Every 47 minutes. (source: uploads/relay.md)")
    assert not _accepts(grammar, tok, " Passage [1] answers this.\nFinal Answer: Every 47 minutes.")
    assert not _accepts(grammar, tok, " Passage [1] answers this.\nFinal Answer: Use try. (source: python-docs:try)")
    assert _accepts(grammar, tok, " Both agree.\nFinal Answer: It is global. (source: python-docs:global)")
    assert not _accepts(grammar, tok, " Both agree.\nFinal Answer: It is global.")
    assert _accepts(grammar, tok, ' Passage [2] helps.\nAction: calculator\nAction Input: {"expression": "2 * 3"}')


def test_agent_citations_setting(tiny):
    from agents.agent import Generation

    class Scripted:
        supports_grammar = True

        def generate(self, messages, **kwargs):
            return Generation(" x\nFinal Answer: y", 1)

    from agents.tools import search_tool

    class NoRetriever:
        def search(self, query, k=3):
            return []

    tools = ToolRegistry([search_tool(NoRetriever()), calculator_tool()])
    assert "answer_head" in ReActAgent(Scripted(), tools, constrained=True)._grammar(["a:b"], ["a:b"])
    assert "answer_head" not in ReActAgent(Scripted(), tools, constrained=True, citations="allowed")._grammar(["a:b"])
    with pytest.raises(ValueError, match="citations"):
        ReActAgent(Scripted(), tools, constrained=True, citations="always")


def test_the_agent_completes_a_citation_the_bound_left_bare():
    from agents.agent import Generation
    from agents.tools import search_tool
    from retrieval.retriever import Hit

    class Retriever:
        def search(self, query, k=3):
            return [Hit(1, 0.9, "The global statement declares names.", "python-docs:global", "global", "", 0, 10)]

    def run(citations):
        steps = iter([' I search.\nAction: search\nAction Input: {"query": "global"}',
                      " x\nFinal Answer: It declares module names python-docs:global)"])

        class Scripted:
            supports_grammar = True

            def generate(self, messages, **kwargs):
                return Generation(next(steps), 10)

        tools = ToolRegistry([search_tool(Retriever())])
        return ReActAgent(Scripted(), tools, max_steps=3, constrained=True, citations=citations).run("global?").answer

    assert run("required") == "It declares module names (source: python-docs:global)"
    assert run("allowed") == "It declares module names python-docs:global)"  # only required citations are completed


def test_the_forced_answer_at_the_step_limit_keeps_the_citation_rules(tiny):
    """At the step limit the agent asks once more for the answer; that generation is constrained too:
    after a search it must cite a listed source (and a bare name the bound forced is completed)."""
    from agents.agent import Generation
    from agents.grammar import answer_grammar
    from agents.tools import search_tool
    from retrieval.retriever import Hit

    class Retriever:
        def search(self, query, k=3):
            return [Hit(1, 0.9, "The global statement declares names.", "python-docs:global", "global", "", 0, 10)]

    grammars = []
    steps = iter([' I search.\nAction: search\nAction Input: {"query": "global"}', " It declares names python-docs:global)"])

    class Scripted:
        supports_grammar = True

        def generate(self, messages, **kwargs):
            grammars.append(kwargs.get("grammar"))
            return Generation(next(steps), 10)

    agent = ReActAgent(Scripted(), ToolRegistry([search_tool(Retriever())]), max_steps=1, constrained=True,
                       force_final_answer=True)
    trace = agent.run("global?")
    assert trace.stopped == "forced_answer" and trace.answer == "It declares names (source: python-docs:global)"
    forced = grammars[-1]
    assert forced == answer_grammar(["python-docs:global"], "required", (64, 32))
    _, tok = tiny
    assert _accepts(forced, tok, " It declares names. (source: python-docs:global)")
    assert not _accepts(forced, tok, " It declares names.")
    assert not _accepts(forced, tok, " It declares names. (source: python-docs:nonlocal)")
