"""One sampling / log-prob / KL path for PPO, the monitor and evaluation (issue 17, item 1).

The reference computation is per sequence and unpadded: each prompt alone, no pad tokens, so no
position can be miscounted. The model under test has learned *absolute* position embeddings
(GPT-2): a RoPE model (Llama) scores a left-padded row the same whatever constant the positions
are shifted by, so it cannot show a position_ids fault; an absolute-position model does."""
from __future__ import annotations

import pytest
import torch

from align.monitor import sample_and_kl

PROMPTS = [[{"role": "user", "content": "hi"}],
           [{"role": "user", "content": "a much longer question, padded least of all in the batch"}],
           [{"role": "user", "content": "a middle one here"}]]


@pytest.fixture(scope="module")
def gpt2_pair(tiny_model_dir):
    """(policy, reference, tokenizer): two tiny random GPT-2 models (absolute positions) with
    SmolLM2's tokenizer; the reference is the policy with noise added to every weight."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # larger position embeddings: a miscounted position changes the scores visibly
        policy.transformer.wpe.weight.normal_(0, 1.0)
    reference = GPT2LMHeadModel(cfg).eval()
    reference.load_state_dict(policy.state_dict())
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return policy, reference, tok


def _unpadded_logprobs(model, prompt_ids: list[int], response_ids: list[int], temperature: float) -> torch.Tensor:
    """log pi(y_t | x, y_<t) for one sequence, alone and unpadded: shape (len(response_ids),)."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response_ids)[:, None]).squeeze(-1)


def _rows(tok, enc_ids, enc_mask, sequences):
    """Per row: (prompt ids without pads, response ids up to and including the first EOS)."""
    width = enc_ids.shape[1]
    out = []
    for i in range(len(sequences)):
        prompt = enc_ids[i][enc_mask[i].bool()].tolist()
        response = sequences[i, width:].tolist()
        if tok.eos_token_id in response:
            response = response[:response.index(tok.eos_token_id) + 1]
        out.append((prompt, response))
    return out


def test_monitor_kl_equals_the_unpadded_per_sequence_sum_on_a_left_padded_batch(gpt2_pair):
    """The monitor's KL (also behind the eval win-rate KL) equals sum_t k1 computed on each
    sequence alone, and its samples come from the untruncated policy (top_k=0, top_p=1)."""
    policy, reference, tok = gpt2_pair
    seen = {}
    generate = policy.generate

    def recording_generate(*args, **kwargs):
        out = generate(*args, **kwargs)
        seen.update(kwargs=kwargs, sequences=getattr(out, "sequences", out))
        return out

    policy.generate = recording_generate
    try:
        _, kl = sample_and_kl(policy, reference, tok, PROMPTS, max_new_tokens=12, temperature=0.8)
    finally:
        del policy.generate
    kw = seen["kwargs"]
    assert kw.get("top_k") == 0 and kw.get("top_p", 1.0) == 1.0, "samples must come from pi itself"
    mask = kw["attention_mask"]
    assert len(set(mask.sum(1).tolist())) == len(PROMPTS), "the prompts must differ in length (left padding)"
    rows = _rows(tok, kw["input_ids"], mask, seen["sequences"])
    expected = [float((_unpadded_logprobs(policy, p, r, 0.8) - _unpadded_logprobs(reference, p, r, 0.8)).sum())
                for p, r in rows]
    assert kl == pytest.approx(sum(expected) / len(expected), abs=1e-4)


def test_kl_of_a_policy_to_itself_is_zero(gpt2_pair):
    """The policy's log-probs come from the sampling logits (generate's cached passes) and the
    reference's from one scoring forward pass: with the reference = the policy they agree, and
    KL = 0, only if both count positions the same way on left-padded rows."""
    policy, other, tok = gpt2_pair
    responses, kl = sample_and_kl(policy, policy, tok, PROMPTS, max_new_tokens=12, temperature=1.0)
    assert len(responses) == len(PROMPTS) and kl == pytest.approx(0.0, abs=1e-4)
    _, kl2 = sample_and_kl(policy, other, tok, PROMPTS * 4, max_new_tokens=16, temperature=1.0)
    assert kl2 > 0.05


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_sampled_and_scored_logprobs_equal_the_unpadded_ones(arch, gpt2_pair, tiny_model_dir):
    """PPO's old log-probs (``sample``, from the sampling logits) and its reference/training
    log-probs (``response_logprobs``, one forward pass) equal a per-sequence unpadded forward."""
    from align.generate import encode_chats
    from align.logprobs import response_logprobs, sample
    from align.models import load_policy

    if arch == "gpt2":
        model, _, tok = gpt2_pair
    else:
        model, tok, _ = load_policy(str(tiny_model_dir))
        model.eval()
    enc = encode_chats(tok, PROMPTS, "cpu")
    torch.manual_seed(0)
    s = sample(model, tok, enc, max_new_tokens=10, temperature=0.7)
    scored = response_logprobs(model, s.input_ids, s.attention_mask, s.responses, 0.7)
    for i, (p, r) in enumerate(_rows(tok, enc["input_ids"], enc["attention_mask"], torch.cat([enc["input_ids"], s.responses], 1))):
        r = r[:int(s.mask[i].sum())]
        expected = _unpadded_logprobs(model, p, r, 0.7)
        assert torch.allclose(s.logprobs[i, :len(r)], expected, atol=1e-4), i
        assert torch.allclose(scored[i, :len(r)], expected, atol=1e-4), i
        assert (s.logprobs[i, len(r):] == 0).all()


def test_kl_estimators_k1_k2_k3_on_samples_from_pi():
    from align.logprobs import kl_estimate

    logp, logp_ref = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.0])
    assert torch.allclose(kl_estimate(logp, logp_ref, "k1"), torch.tensor([1.0, 0.0]))
    assert torch.allclose(kl_estimate(logp, logp_ref, "k2"), torch.tensor([0.5, 0.0]))
    assert torch.allclose(kl_estimate(logp, logp_ref, "k3"), torch.tensor([torch.e ** -1, 0.0]))
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.4, 0.4, 0.2])
    true_kl = float((p * (p / q).log()).sum())
    y = torch.multinomial(p, 200000, replacement=True, generator=torch.Generator().manual_seed(0))
    for est in ("k1", "k3"):  # unbiased on samples from p
        assert float(kl_estimate(p.log()[y], q.log()[y], est).mean()) == pytest.approx(true_kl, abs=0.01)
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_estimate(logp, logp_ref, "k4")
