# Two entry points (README Quick start): `make run` and `make test`. Both set up .venv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run test demo clean

setup: $(VENV)/.installed

# torch first, pinned: the machines carry a local CPU wheel of 2.13.0; unpinned, pip would pull CUDA builds.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

run: setup
	$(VENV)/bin/slimkv main

demo: setup
	$(VENV)/bin/slimkv demo

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile tests

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
