"""GSM8K accuracy on the 200 held-out problems: the default model vs after SFT vs after SFT then GRPO.

    python -m align sft  --config configs/sft.yaml --output_dir runs/sft
    python -m align grpo --config configs/grpo.yaml --model runs/sft --output_dir runs/grpo-sft
    python bench/bench_gsm8k.py --models smollm2-135m,runs/sft,runs/grpo-sft [--n 200]

Greedy decoding, batch 8 (``--batch``); one dtype (``--dtype``), prompt suffix and answer extraction
(align.verifiers) for all; the first model is the baseline. ``--out`` lets several invocations
score models side by side (accuracy does not depend on timing).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from align.evaluate import gsm8k_suite
from align.models import load_policy

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2-135m,runs/sft,runs/grpo-sft")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "gsm8k.json"))
    ap.add_argument("--dtype", default="auto", help="auto (fp32 on CPU) or bfloat16")
    a = ap.parse_args()
    rows = []
    for ref in a.models.split(","):
        model, tok, _ = load_policy(ref, dtype=a.dtype)
        r = gsm8k_suite(model, tok, a.n, max_new_tokens=a.max_new_tokens, batch_size=a.batch)
        rows.append({"model": ref, "dtype": a.dtype, **{k: v for k, v in r.items() if k != "records"}})
        print(json.dumps(rows[-1]), flush=True)
        del model
    print("\n| model | problems | accuracy | correct | no number | seconds |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['problems']} | {r['accuracy']:.3f} | {r['correct']} | {r['no_number']} | {r['seconds']:.0f} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
