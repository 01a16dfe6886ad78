from concurrent.futures import ThreadPoolExecutor

from agents.agent import TransformersLLM
from agents.batching import BatchedLLM
from align.models import load_policy


def test_batched_generation_matches_one_at_a_time(tiny_model_dir):
    model, tok, _ = load_policy(str(tiny_model_dir))
    single = TransformersLLM(model, tok)
    batched = BatchedLLM(model, tok, max_batch=4, max_wait_s=0.2)
    convs = [[{"role": "user", "content": q}] for q in ("hi", "what is two plus two, really?", "tell me", "x y z w")]
    want = [single.generate(c, stop=["Observation:"], max_new_tokens=12) for c in convs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda c: batched.generate(c, stop=["Observation:"], max_new_tokens=12), convs))
    assert [g.text for g in got] == [w.text for w in want]
