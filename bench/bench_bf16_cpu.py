"""fp32 vs bf16 autocast for one SmolLM2-135M forward+backward on this CPU, same run.

    python bench/bench_bf16_cpu.py [--batch 8] [--tokens 200] [--repeats 2]
"""
import argparse
import time

import torch

from align.models import load_policy
from align.training import cpu_has_native_bf16


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    model, _, _ = load_policy("smollm2-135m", device="cpu", dtype="float32")
    model.train()
    x = torch.randint(100, 40000, (a.batch, a.tokens), generator=torch.Generator().manual_seed(0))
    best = {}
    for mode in ("fp32", "bf16-autocast"):
        times = []
        for _ in range(a.repeats + 1):  # first is warm-up
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode != "fp32"):
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            model.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t)
        best[mode] = min(times[1:])
    print(f"native bf16 on this CPU: {cpu_has_native_bf16()}")
    print(f"| mode | s per fwd+bwd ({a.batch}x{a.tokens}) |\n|---|---|")
    for k, v in best.items():
        print(f"| {k} | {v:.1f} |")
    print(f"| ratio bf16 / fp32 | {best['bf16-autocast'] / best['fp32']:.2f} |")


if __name__ == "__main__":
    main()
