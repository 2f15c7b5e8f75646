# `make demo` and `make test` set everything up on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stopwise-installed
# Where pip finds torch: empty = pip's own configuration. On Linux x86-64 plain PyPI gives the
# CUDA build (several GB); `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu`
# takes the CPU wheel instead.
TORCH_INDEX ?=

.PHONY: install demo test test-slow lint clean

install: $(STAMP)

# torch first (the CPU wheel where pip finds one: see TORCH_INDEX), then the package with its dev extras; redone only when pyproject changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/stopwise run sparse-recovery --preset quick --out runs/demo

test: install
	$(PY) -m pytest

test-slow: install
	HYPOTHESIS_PROFILE=explore $(PY) -m pytest -m slow

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
