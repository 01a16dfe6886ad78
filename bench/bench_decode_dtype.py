"""Greedy decoding tokens/s of the embedded model, fp32 (baseline) vs bf16, same run.

    OMP_NUM_THREADS=1 python bench/bench_decode_dtype.py [--batches 8,16] [--tokens 48]

Decides the benchmark scripts' default dtype: on a CPU without native bf16 (no avx512_bf16/AMX)
bf16 is emulated and decodes slower than fp32.
"""
from __future__ import annotations

import argparse
import time

import torch

from align.generate import encode_chats
from align.models import load_policy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="8,16")
    ap.add_argument("--tokens", type=int, default=48)
    a = ap.parse_args()
    rates: dict[tuple[str, int], float] = {}
    for dtype in ("float32", "bfloat16"):
        model, tok, _ = load_policy("smollm2-135m", dtype=dtype)
        for bs in (int(b) for b in a.batches.split(",")):
            chats = [[{"role": "user", "content": f"What is {i} plus 7? Think step by step."}] for i in range(bs)]
            enc = encode_chats(tok, chats, model.device)
            started = time.perf_counter()
            with torch.no_grad():
                model.generate(**enc, max_new_tokens=a.tokens, min_new_tokens=a.tokens, do_sample=False,
                               pad_token_id=tok.pad_token_id)
            rates[dtype, bs] = bs * a.tokens / (time.perf_counter() - started)
    print("| batch | fp32 tok/s (baseline) | bf16 tok/s | bf16 / fp32 |\n|---|---|---|---|")
    for bs in (int(b) for b in a.batches.split(",")):
        f, b = rates["float32", bs], rates["bfloat16", bs]
        print(f"| {bs} | {f:.1f} | {b:.1f} | {b / f:.2f}x |")


if __name__ == "__main__":
    main()
