# Two commands on a fresh machine with Python 3.11 and pip:  make demo   /   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv pip install --compile-bytecode --python $(BIN)/python

.PHONY: demo test bench notebook clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(UV) -e . || $(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(UV) -e '.[test]' || $(BIN)/python -m pip install -e '.[test]'
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/maeprobe demo --out outputs/demo

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -ra

notebook: | $(BIN)/python
	$(UV) -e '.[notebook]' || $(BIN)/python -m pip install -e '.[notebook]'
	$(BIN)/jupyter lab examples/quickstart.ipynb

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/probe_overhead.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
