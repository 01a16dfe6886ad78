#!/usr/bin/env bash
# The prepared GPU check of issue #19: every stage for a few steps with its GPU config, and the
# GPU-marked tests, in one script that fits a short GPU lease (under 8 minutes on one H100/H200).
#
#   bash bench/gpu_check.sh [OUT] [SECONDS]      # OUT default bench/results/gpu, SECONDS default 450
#
# Prints, per stage, seconds per step (median, warm-up excluded; CAI: seconds per prompt) and peak
# GPU memory (PyTorch allocator, allocated / reserved), and keeps everything under OUT:
# OUT/summary.txt (the table), OUT/<stage>.json, OUT/<stage>.log, OUT/pytest-gpu.log, OUT/gpu.txt.
# The stages run one after another (clean per-stage timings and memory); the GPU tests run beside
# them. RM runs first because PPO needs its model. GRPO uses vLLM (colocate) when vLLM is installed
# (use_vllm: null). PPO runs twice with the same config, rollouts from transformers' generate
# (`ppo`) and from the colocated vLLM engine (`ppo-vllm`, when vLLM is installed; docs/vllm-ppo.md),
# and the summary prints the ratio of their seconds per update. CAI likewise runs twice, on
# transformers (`cai`) and on a vLLM engine built from the checkpoint (`cai-vllm`, when installed;
# seconds per prompt include loading and the engine's start).
# Environment: PYTHON (default python), MODEL (default: each config's, the embedded SmolLM2-135M),
# DRY=1: the same commands with tiny batches, bf16 off and 3 steps each, to check them on a CPU.
set -u
OUT=${1:-bench/results/gpu}
BUDGET=${2:-450}
PY=${PYTHON:-python}
DRY=${DRY:-0}
START=$(date +%s)
left() { local s=$(( BUDGET - ($(date +%s) - START) )); echo $(( s > 1 ? s : 1 )); }
stamp() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*"; }
RUNS=$OUT/runs
rm -rf "$RUNS"; mkdir -p "$RUNS"
for n in rm sft dpo kto grpo ppo ppo-vllm cai cai-vllm; do rm -f "$OUT/$n.json" "$OUT/$n.log"; done  # no stale rows
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

HH=../shared/data/hh-rlhf/harmless.jsonl.gz; [ -f "$HH" ] || HH=data/hh-rlhf/harmless.jsonl.gz
GSM=../shared/data/gsm8k/train.jsonl; [ -f "$GSM" ] || GSM=data/gsm8k/train_sample.jsonl
MODEL_ARGS=(); [ -n "${MODEL:-}" ] && MODEL_ARGS=(--model "$MODEL")

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import sys, torch, transformers, trl, accelerate, peft, importlib.util as u; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'trl', trl.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__, 'vllm', 'installed' if u.find_spec('vllm') else 'not installed')"
} 2>&1 | tee "$OUT/gpu.txt"
$PY -c "from align.embedded import ensure_converted; print(ensure_converted('smollm2-135m'))" 2>&1 | tail -1

stamp "GPU-marked tests (beside the stages)"
timeout "$(left)" $PY -m pytest -q -p no:cacheprovider -m gpu tests/align/test_gpu.py >"$OUT/pytest-gpu.log" 2>&1 &
tests=$!

# stage NAME CONFIG ALIGN-STAGE OVERRIDES... : one stage, its result in OUT/NAME.json
stage() {
  local name=$1 config=$2 st=$3; shift 3
  local dry=()
  if [ "$DRY" = 1 ]; then
    case $st in
      ppo) dry=(--training.bf16 false --ppo.batch_size 2 --ppo.mini_batch_size 2 --ppo.ppo_epochs 1
                --rollout.max_new_tokens 8 --updates 3) ;;
      cai) dry=(--data.max_rows 2 --batch_size 2 --max_new_tokens 16 --rounds 1) ;;
      grpo) dry=(--training.bf16 false --training.max_steps 3 --training.per_device_train_batch_size 4
                 --num_generations 2 --max_completion_length 8 --use_vllm false) ;;
      *) dry=(--training.bf16 false --training.max_steps 3 --training.per_device_train_batch_size 2
              --training.max_length 128 --training.dataloader_num_workers 0) ;;
    esac
  fi
  stamp "$name: python -m align $st --config $config $*"
  timeout "$(left)" $PY bench/gpu_stage.py "$name" "$OUT/$name.json" "$st" --config "$config" \
    --output_dir "$RUNS/$name" "${MODEL_ARGS[@]}" "$@" "${dry[@]}" >"$OUT/$name.log" 2>&1
  grep "^\[gpu_stage\]" "$OUT/$name.log" || { echo "[gpu_stage] $name: no result (exit $?)"; tail -5 "$OUT/$name.log"; }
}
TRL=(--training.logging_steps 1 --training.save_steps 1000 --data.eval_size 0)
stage rm   configs/rm-gpu.yaml   rm   --data.path "$HH"  --training.max_steps 20 "${TRL[@]}"
stage sft  configs/sft-gpu.yaml  sft  --data.path "$GSM" --training.max_steps 20 "${TRL[@]}" --training.eval_steps 1000
stage dpo  configs/dpo-gpu.yaml  dpo  --data.path "$HH"  --training.max_steps 15 "${TRL[@]}"
stage kto  configs/kto-gpu.yaml  kto  --data.path "$HH"  --training.max_steps 15 "${TRL[@]}"
stage grpo configs/grpo-gpu.yaml grpo --data.path "$GSM" --training.max_steps 6 --training.logging_steps 1 \
  --training.save_steps 1000
stage ppo  configs/ppo-gpu.yaml  ppo  --data.path "$HH"  --reward "$RUNS/rm/model" --updates 6 --training.save_steps 1000 \
  --rollout.engine transformers
if $PY -c "import importlib.util as u, sys; sys.exit(u.find_spec('vllm') is None)"; then
  stage ppo-vllm configs/ppo-gpu.yaml ppo --data.path "$HH" --reward "$RUNS/rm/model" --updates 6 \
    --training.save_steps 1000 --rollout.engine vllm
else
  stamp "ppo-vllm: skipped, vllm is not installed in $PY"
fi
stage cai  configs/cai-gpu.yaml  cai  --data.path "$HH"  --data.max_rows 64 --engine transformers
if $PY -c "import importlib.util as u, sys; sys.exit(u.find_spec('vllm') is None)"; then
  stage cai-vllm configs/cai-gpu.yaml cai --data.path "$HH" --data.max_rows 64 --engine vllm
else
  stamp "cai-vllm: skipped, vllm is not installed in $PY"
fi
wait $tests; stamp "GPU tests exit $?: $(tail -1 "$OUT/pytest-gpu.log")"

$PY - "$OUT" <<'PYEOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"{'stage':<8} {'rc':>3} {'steps':>6} {'s/step':>9} {'peak alloc MiB':>15} {'peak reserved MiB':>18} {'wall s':>7}  device")
per_step = {}
for name in ("rm", "sft", "dpo", "kto", "grpo", "ppo", "ppo-vllm", "cai", "cai-vllm"):
    f = out / f"{name}.json"
    if not f.is_file():
        if (out / f"{name}.log").is_file():
            print(f"{name:<8} no result (timed out or failed: {name}.log)")
        else:
            print(f"{name:<8} skipped (not run here: vLLM not installed, or out of time)")
        continue
    r = json.loads(f.read_text())
    per = r.get("s_per_step", r.get("s_per_prompt"))
    unit = "" if "s_per_step" in r else " (s/prompt)"
    per_step[name] = per if r["rc"] == 0 else None
    print(f"{name:<8} {r['rc']:>3} {r['steps']:>6} {per if per is not None else '-':>9} "
          f"{r['peak_allocated_mib'] if r['peak_allocated_mib'] is not None else '-':>15} "
          f"{r['peak_reserved_mib'] if r['peak_reserved_mib'] is not None else '-':>18} {r['wall_s']:>7}  {r['device']}{unit}")
if per_step.get("ppo") and per_step.get("ppo-vllm"):
    print(f"PPO seconds per update, same config, this run: vLLM rollouts {per_step['ppo-vllm']} s, transformers "
          f"rollouts {per_step['ppo']} s, ratio {per_step['ppo-vllm'] / per_step['ppo']:.2f} (issue #19 aims <= 0.5)")
if per_step.get("cai") and per_step.get("cai-vllm"):
    print(f"CAI seconds per prompt, same config, this run: vLLM engine {per_step['cai-vllm']} s, transformers "
          f"{per_step['cai']} s, ratio {per_step['cai-vllm'] / per_step['cai']:.2f}")
PYEOF
stamp "done"
