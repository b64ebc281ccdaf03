# Entry points (README Quick start): `make run` and `make test`. Both set up .venv first, from the lock file.
VENV   ?= .venv
PY     := $(VENV)/bin/python
LATEST ?= .venv-latest
LOCK   := requirements/lock.txt
# extras locked into $(LOCK) and installed by `make setup` (add an extra here and run `make lock`)
LOCK_EXTRAS := dev
comma := ,
empty :=
EXTRAS_SPEC := $(subst $(empty) $(empty),$(comma),$(strip $(LOCK_EXTRAS)))
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run test test-latest lock demo clean

setup: $(VENV)/.installed

# Exact versions with hashes (docs/install.md): every package from the lock, nothing resolved at install time;
# then slimkv itself, editable, without touching the locked set.
$(VENV)/.installed: pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $@

# Refresh the lock: newest versions inside pyproject's ranges and requirements/pins.txt, CPU torch.
lock:
	python3 -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip pip-tools
	.venv-lock/bin/pip-compile --quiet --upgrade --generate-hashes --allow-unsafe --strip-extras \
	    --build-deps-for editable $(addprefix --extra ,$(LOCK_EXTRAS)) \
	    -c requirements/torch-cpu.txt -c requirements/pins.txt --no-emit-index-url --no-emit-find-links \
	    --output-file $(LOCK) pyproject.toml

run: setup
	$(VENV)/bin/slimkv main

demo: setup
	$(VENV)/bin/slimkv demo

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# The suite against the newest releases pyproject's ranges allow (CPU torch kept), in a second venv.
test-latest:
	python3 -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -c requirements/torch-cpu.txt \
	    -e ".[$(EXTRAS_SPEC)]"
	$(LATEST)/bin/python -m pip check
	@$(LATEST)/bin/python -c "import torch, transformers, tokenizers; print('latest: torch', torch.__version__, \
	    '| transformers', transformers.__version__, '| tokenizers', tokenizers.__version__)"
	$(LATEST)/bin/python -m pytest -q -n 2 --dist loadfile tests

clean:
	rm -rf $(VENV) $(LATEST) .venv-lock .pytest_cache .hypothesis
