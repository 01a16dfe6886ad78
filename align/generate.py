"""Chat generation with a loaded policy: one reply, or a stream of text pieces."""
from __future__ import annotations

import threading
from typing import Iterator

import torch


def _inputs(tokenizer, messages: list[dict[str, str]], device):
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return {k: v.to(device) for k, v in enc.items()}


def encode_chats(tokenizer, conversations, device, max_length: int | None = None) -> dict:
    """A batch of chat prompts, generation prompt added, left-padded for ``generate``; with
    ``max_length`` only the last tokens of each are kept (the end of a prompt matters most)."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer.apply_chat_template(list(conversations), add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True, padding=True)
    finally:
        tokenizer.padding_side = side
    if max_length is not None:
        enc = {k: v[:, -max_length:] for k, v in enc.items()}
    return {k: v.to(device) for k, v in enc.items()}


def generation_kwargs(tokenizer, max_new_tokens: int, temperature: float = 0.0, top_p: float = 0.95,
                      stop: list[str] | None = None) -> dict:
    """``model.generate`` arguments: greedy at temperature 0, else sampled; optional stop strings."""
    kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    if stop:
        kwargs.update(stop_strings=list(stop), tokenizer=tokenizer)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


@torch.inference_mode()
def chat_reply(model, tokenizer, messages: list[dict[str, str]], max_new_tokens: int = 256,
               temperature: float = 0.0, top_p: float = 0.95) -> str:
    """One reply to ``messages`` (greedy at temperature 0), at most ``max_new_tokens`` tokens, stripped."""
    enc = _inputs(tokenizer, messages, model.device)
    out = model.generate(**enc, **generation_kwargs(tokenizer, max_new_tokens, temperature, top_p))
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def stream_reply(model, tokenizer, messages: list[dict[str, str]], max_new_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 0.95,
                 stop_event: threading.Event | None = None) -> Iterator[str]:
    """Yield text pieces as they are generated; ``stop_event`` ends generation early."""
    enc = _inputs(tokenizer, messages, model.device)
    yield from stream_generate(model, tokenizer, enc, generation_kwargs(tokenizer, max_new_tokens, temperature, top_p),
                               stop_event=stop_event)


class StreamStats:
    """Filled in by ``stream_generate``: how many new tokens the model produced."""
    new_tokens: int = 0


def stream_generate(model, tokenizer, enc: dict, gen_kwargs: dict, stop_event: threading.Event | None = None,
                    stats: StreamStats | None = None) -> Iterator[str]:
    """Run ``model.generate`` in a thread and yield decoded text pieces as they arrive.

    Closing the iterator early (a user pressed Stop, the consumer went away) stops generation at
    the next token, so an abandoned request does not keep the model busy.
    """
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    abandoned = threading.Event()
    prompt_len = enc["input_ids"].shape[1]

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            if stats is not None:
                stats.new_tokens = int(input_ids.shape[1] - prompt_len)
            return abandoned.is_set() or bool(stop_event is not None and stop_event.is_set())

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
    criteria = StoppingCriteriaList([_Stop(), *gen_kwargs.pop("stopping_criteria", [])])
    kwargs = dict(**enc, **gen_kwargs, streamer=streamer, stopping_criteria=criteria)
    errors: list[BaseException] = []

    def run():
        try:
            with torch.inference_mode():
                model.generate(**kwargs)
        except BaseException as e:  # noqa: BLE001 - surfaced to the consumer below
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        for piece in streamer:
            if piece:
                yield piece
    finally:
        abandoned.set()
    thread.join()
    if errors:
        raise errors[0]
