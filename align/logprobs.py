"""Sampling, per-token log-probs and KL estimates: the one implementation behind PPO's rollout and
evaluation (``align.ppo``), the over-optimisation monitor and the eval win-rate KL
(``align.monitor``), and GRPO's tool-loop rollout (``agents.rl``).

Two things every caller needs and that are easy to get wrong on a batch:

- **Positions.** Batches are left-padded for ``generate``. ``generate`` derives ``position_ids``
  from the attention mask; a plain forward pass counts the pads, so a model with absolute
  position embeddings (GPT-2, OPT) scores every token of a padded row at a shifted position.
  (RoPE models happen to be invariant to a constant shift; the code must not rely on it.)
  ``response_logits`` passes ``position_ids(attention_mask)``.
- **Untruncated sampling.** The KL estimates below are unbiased only for samples from the
  distribution whose log-probs they use. ``sampling_kwargs`` sets ``top_k=0`` (transformers
  defaults to 50); ``top_p`` < 1 truncates too and is the caller's explicit choice.

Notation (Schulman, "Approximating KL divergence", 2020): samples y ~ pi, and r = pi_ref(y) / pi(y).
    k1 = -log r                 unbiased for KL(pi || pi_ref), high variance, can be negative
    k2 = (log r)^2 / 2          biased, low variance (its expectation is a f-divergence)
    k3 = (r - 1) - log r        unbiased, low variance, never negative
Summed over a response's tokens, k1 and k3 give an unbiased estimate of the sequence-level KL
between the temperature-scaled policies, in nats per sequence, when every token was sampled from
pi at that temperature without truncation.

Hand-written rather than taken from TRL: TRL's equivalents (``selective_log_softmax`` and the
KL terms) are private helpers of its trainers, not a public API, and each is a few lines here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as ``generate`` computes them.

    attention_mask: (B, L) of 0/1. Returns (B, L) long; pads get position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token]: logits (B, T, V) float, tokens (B, T) long -> (B, T), nats."""
    return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position: (B, T, V) -> (B, T), nats."""
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


def kl_estimate(logp: torch.Tensor, logp_ref: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the log-probs of tokens sampled from pi.

    logp, logp_ref: log pi(y_t) and log pi_ref(y_t), same shape (any), nats. Returns that shape,
    nats per token; sum over a response for nats per sequence. ``estimator`` is k1, k2 or k3 of
    Schulman (module docstring), with r = pi_ref / pi. Raises ValueError for another name."""
    log_r = logp_ref - logp
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r ** 2
    if estimator == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator {estimator!r}; one of {', '.join(KL_ESTIMATORS)}")


def response_mask(responses: torch.Tensor, eos_id: int, pad_id: int | None = None) -> torch.Tensor:
    """(B, T) long: 1 up to and including the first EOS, 0 after it. With ``pad_id`` (generation
    that can stop on a stop string, after which ``generate`` pads), a row also ends before its
    first pad token."""
    ended = responses == eos_id
    after = torch.cumsum(ended.long(), 1) - ended.long()
    mask = after == 0
    if pad_id is not None and pad_id != eos_id:
        mask &= torch.cumsum((responses == pad_id).long(), 1) == 0
    return mask.long()


def sampling_kwargs(tokenizer, max_new_tokens: int, temperature: float, top_p: float = 1.0,
                    stop: list[str] | None = None) -> dict:
    """``generate`` arguments that sample from softmax(logits / temperature) itself: ``top_k=0``
    (no truncation; transformers' default is 50) and ``top_p`` as given (1.0: none).
    Raises ValueError for temperature <= 0 (greedy decoding has no log-probs to estimate with)."""
    from align.generate import generation_kwargs

    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to sample, got {temperature}")
    kwargs = generation_kwargs(tokenizer, max_new_tokens, temperature, top_p, stop=stop)
    kwargs["top_k"] = 0
    return kwargs


@dataclass
class Samples:
    """Responses sampled by ``sample`` for a left-padded batch of B prompts of width P."""

    prompt_ids: torch.Tensor      # (B, P) long, left-padded
    prompt_mask: torch.Tensor     # (B, P) long, 0 on the left pads
    responses: torch.Tensor       # (B, T) long, pad_token_id after each response's end
    mask: torch.Tensor            # (B, T) long, 1 on response tokens (up to and including EOS)
    logprobs: torch.Tensor | None  # (B, T) float32, log pi(y_t) at the sampling temperature, 0 off the
                                  # mask; None from an engine whose log-probs are not pi's (vLLM)

    @property
    def input_ids(self) -> torch.Tensor:
        """(B, P + T): prompt and response, the rows a forward pass scores."""
        return torch.cat([self.prompt_ids, self.responses], 1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, P + T): 1 on real prompt tokens and response tokens."""
        return torch.cat([self.prompt_mask, self.mask], 1)


@torch.no_grad()
def sample(model, tokenizer, enc: dict, max_new_tokens: int, temperature: float, top_p: float = 1.0,
           stop: list[str] | None = None) -> Samples:
    """Sample one response per row of ``enc`` (``input_ids``/``attention_mask``, (B, P), left-padded)
    and keep log pi(y_t) from the sampling logits: the forward pass generation already ran, so
    no second one. ``stop``: stop strings; a row ends at EOS, a stop string or max_new_tokens."""
    out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                         **sampling_kwargs(tokenizer, max_new_tokens, temperature, top_p, stop),
                         output_logits=True, return_dict_in_generate=True)
    width = enc["input_ids"].shape[1]
    responses = out.sequences[:, width:]
    T = responses.shape[1]
    mask = response_mask(responses, tokenizer.eos_token_id, tokenizer.pad_token_id if stop else None)
    logits = torch.stack(out.logits, 1)[:, :T].float().to(responses.device) / temperature
    logprobs = token_logprobs(logits, responses) * mask
    del logits
    responses = torch.where(mask.bool(), responses, torch.full_like(responses, tokenizer.pad_token_id))
    return Samples(enc["input_ids"], enc["attention_mask"].long(), responses, mask, logprobs)


def response_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_response: int, **kwargs):
    """One forward pass with positions that skip left padding and logits only where they predict
    the last ``n_response`` tokens (plus one). input_ids, attention_mask: (B, L). Returns the
    model's output; ``kwargs`` go to the model (e.g. ``output_hidden_states=True``)."""
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                 logits_to_keep=n_response + 1, use_cache=False, **kwargs)


def response_logits(output, temperature: float) -> torch.Tensor:
    """From ``response_forward``'s output: the (B, T, V) float32 logits / temperature that predict
    the T response tokens."""
    return output.logits[:, :-1].float() / temperature


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, responses: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """log p(y_t | x, y_<t) at ``temperature`` for the last T = responses.shape[1] tokens of each
    row of ``input_ids`` (B, L): (B, T) float32, nats (not masked)."""
    out = response_forward(model, input_ids, attention_mask, responses.shape[1])
    return token_logprobs(response_logits(out, temperature), responses)
