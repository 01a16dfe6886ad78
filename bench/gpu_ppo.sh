#!/usr/bin/env bash
# The PPO real run on one GPU (issue: PPO), in one prepared script that fits a short GPU lease.
#
#   bash bench/gpu_ppo.sh OUT [SECONDS]          # about 9 minutes on one H100/H200
#
# 1. Reward models from configs/rm.yaml (one epoch of HH harmless pairs), trained side by side:
#    the full fine-tune is PPO's reward, the LoRA one is the gold RM of the over-optimisation monitor.
#    The align/ GPU unit tests (tiny model, CUDA path) run beside them.
# 2. PPO from configs/ppo.yaml on the HH harmless prompts at batch 64 (minibatches of 16), one run
#    per VARIANTS entry lr:beta0:horizon, side by side on the one GPU.
# Every job is stopped by SECONDS after the start (default 540); what finished is under OUT:
# OUT/runs/*/metrics.jsonl, OUT/*.log, OUT/gpu.txt. Plot with `python -m align plot OUT/runs/ppo-lr...`.
# Environment: PYTHON (default python), VARIANTS (default the four of bench/RESULTS.md), UPDATES (default 150),
# RM_EXTRA / PPO_EXTRA (extra CLI overrides, e.g. for a dry run on CPU).
set -u
OUT=${1:?usage: bash bench/gpu_ppo.sh OUT [SECONDS]}
BUDGET=${2:-540}
PY=${PYTHON:-python}
VARIANTS=${VARIANTS:-"3e-6:0.05:640 1e-5:0.05:640 3e-6:0.2:640 3e-6:0.1:320"}
UPDATES=${UPDATES:-150}
RM_EXTRA=${RM_EXTRA:-}
PPO_EXTRA=${PPO_EXTRA:-}
START=$(date +%s)
left() { local s=$(( BUDGET - ($(date +%s) - START) )); echo $(( s > 1 ? s : 1 )); }
stamp() { echo "[gpu_ppo +$(( $(date +%s) - START ))s] $*"; }

RUNS=$OUT/runs
mkdir -p "$RUNS"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import sys, torch, transformers, trl, accelerate, peft; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'trl', trl.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__)"
} 2>&1 | tee "$OUT/gpu.txt"

stamp "embedded model"
$PY -c "from align.embedded import ensure_converted; print(ensure_converted('smollm2-135m'))" 2>&1 | tail -2

stamp "reward models (full, LoRA) and the GPU unit tests"
timeout "$(left)" $PY -m align rm --config configs/rm.yaml --output_dir "$RUNS/rm" $RM_EXTRA >"$OUT/rm.log" 2>&1 &
rm_full=$!
timeout "$(left)" $PY -m align rm --config configs/rm.yaml --output_dir "$RUNS/rm-lora" --lora.enabled true \
  $RM_EXTRA >"$OUT/rm-lora.log" 2>&1 &
rm_lora=$!
timeout "$(left)" $PY -m pytest -q -p no:cacheprovider tests/align/test_ppo.py tests/align/test_rm.py \
  >"$OUT/pytest-gpu.log" 2>&1 &
wait $rm_full; stamp "rm exit $?"
wait $rm_lora; stamp "rm-lora exit $?"
if [ ! -f "$RUNS/rm/model/config.json" ]; then
  stamp "no reward model; see $OUT/rm.log"; tail -20 "$OUT/rm.log"; wait; exit 1
fi
GOLD=()
[ -f "$RUNS/rm-lora/model/config.json" ] && GOLD=(--monitor.gold "$RUNS/rm-lora/model" --monitor.every_n_steps 5)

stamp "PPO, lr:beta0:horizon = $VARIANTS"
for v in $VARIANTS; do
  IFS=: read -r lr beta horizon <<<"$v"
  name=ppo-lr$lr-beta$beta-h$horizon
  timeout "$(left)" $PY -m align ppo --config configs/ppo.yaml --reward "$RUNS/rm/model" \
    --output_dir "$RUNS/$name" --updates "$UPDATES" --ppo.batch_size 64 --ppo.mini_batch_size 16 \
    --training.learning_rate "$lr" --kl.beta "$beta" --kl.horizon "$horizon" --training.save_steps 50 "${GOLD[@]}" $PPO_EXTRA \
    >"$OUT/$name.log" 2>&1 &
done
wait
stamp "done"
tail -3 "$OUT/pytest-gpu.log"
$PY - "$RUNS" <<'EOF'
import sys
from pathlib import Path
from align.training import read_metrics
for run in sorted(p for p in Path(sys.argv[1]).iterdir() if (p / "metrics.jsonl").is_file()):
    rows = read_metrics(run)
    evals = [r["eval_accuracy"] for r in rows if "eval_accuracy" in r]
    updates = [r for r in rows if "score" in r]
    if evals:
        print(f"{run.name}: eval_accuracy {evals[-1]:.3f}")
    elif updates:
        k = max(1, len(updates) // 5)
        first, last = updates[:k], updates[-k:]
        mean = lambda rs, f: sum(r[f] for r in rs) / len(rs)
        print(f"{run.name}: {len(updates)} updates; first {k}: score {mean(first, 'score'):.3f} kl "
              f"{mean(first, 'kl'):.2f}; last {k}: score {mean(last, 'score'):.3f} kl {mean(last, 'kl'):.2f}, "
              f"beta {updates[-1]['beta']:.4f}")
EOF
