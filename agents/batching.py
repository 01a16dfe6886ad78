"""Batch generation requests that arrive from many threads into one ``model.generate`` call.

Each agent (or app user) runs in its own thread and calls ``generate`` as usual; a worker thread
collects the requests waiting at that moment (up to ``max_batch``), left-pads them into one batch
and hands every caller its own result. On a CPU a batch of 8 decodes several times more tokens
per second than 8 requests one after another (bench/RESULTS.md), and nothing changes for callers.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

from agents.agent import Generation


class BatchedLLM:
    """An ``LLM`` that batches concurrent callers: ``generate`` calls from several threads wait at most
    ``max_wait_s`` seconds and run as one left-padded batch of up to ``max_batch`` prompts on a worker
    thread. Sampled when ``temperature`` > 0.
    """

    supports_grammar = True

    def __init__(self, model, tokenizer, max_batch: int = 8, max_wait_s: float = 0.5, temperature: float = 0.0):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_wait_s, self.temperature = max_batch, max_wait_s, temperature
        template = tokenizer.chat_template or ""
        self.supports_native_tools = "tools" in template if isinstance(template, str) else False
        self._queue: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._serve, daemon=True, name="keel-batched-llm")
        self._worker.start()

    def generate(self, messages, *, stop, max_new_tokens, continue_final=False, tools=None,
                 grammar=None) -> Generation:
        """``LLM.generate``; blocks until the batch holding this prompt is done. Raises what the model call
        raised.
        """
        prompt = self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=not continue_final,
                                                    continue_final_message=continue_final, tokenize=False)
        fut: Future = Future()
        self._queue.put((prompt, tuple(stop or ()), max_new_tokens, fut, grammar))
        return fut.result()

    def _serve(self) -> None:
        while True:
            batch = [self._queue.get()]
            # Wait a little for the others: one decode step costs far more than the wait, and agents
            # that drifted apart by a step would otherwise run in batches of one.
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            # One generate call needs one set of stop strings; group requests that share theirs.
            # Grammars are per row (one matcher each), so they need no grouping.
            groups: dict[tuple, list] = {}
            for item in batch:
                groups.setdefault(item[1], []).append(item)
            for stop, items in groups.items():
                try:
                    results = self._run([i[0] for i in items], list(stop), max(i[2] for i in items), [i[2] for i in items],
                                        [i[4] for i in items])
                    for item, res in zip(items, results):
                        item[3].set_result(res)
                except BaseException as e:  # noqa: BLE001 - every waiting caller gets the error
                    for item in items:
                        if not item[3].done():
                            item[3].set_exception(e)

    def _run(self, prompts: list[str], stop: list[str], max_new_tokens: int, limits: list[int],
             grammars: list[str | None] | None = None) -> list[Generation]:
        import torch

        from align.generate import generation_kwargs

        tok = self.tokenizer
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        kwargs = generation_kwargs(tok, max_new_tokens, self.temperature, stop=stop)
        if grammars and any(grammars):
            from transformers import LogitsProcessorList

            from agents.grammar import GrammarLogitsProcessor, free_text_grammar

            rows = [g or free_text_grammar() for g in grammars]
            kwargs["logits_processor"] = LogitsProcessorList([GrammarLogitsProcessor(rows, tok, len(rows))])
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        width = enc["input_ids"].shape[1]
        results = []
        for row, limit in zip(out, limits):
            new = row[width:width + limit]
            ids = new.tolist()
            for end_id in (tok.eos_token_id, tok.pad_token_id):
                if end_id in ids:
                    ids = ids[: ids.index(end_id) + (1 if end_id == tok.eos_token_id else 0)]
            text = tok.decode(ids, skip_special_tokens=True)
            for s in stop:
                if s in text:
                    text = text[: text.index(s)]
            results.append(Generation(text, len(ids)))
        return results
