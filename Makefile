# Two commands on a fresh machine with Python 3.11 and pip:  make demo   /   make test
# While editing: make test-fast (the tests not marked slow, under 3 minutes on 2 cores; make test runs them all)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv pip install --compile-bytecode --python $(BIN)/python

.PHONY: demo test test-fast test-latest lock bench notebook notebook-run clean

# Installs come from lock files of the tested set (requirements/*.lock: every version pinned, with hashes; one
# universal resolution, Linux/macOS/Windows, Python >= 3.10; CI tests the Python 3.11 Linux set), so a fresh
# clone gets what CI tested. `make lock` resolves them again; `make test-latest` tests the newest versions.
LOCK_MAIN := requirements/main.lock
LOCK_TEST := requirements/test.lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv

$(VENV)/.installed: pyproject.toml $(LOCK_MAIN) | $(BIN)/python
	( $(UV) --require-hashes -r $(LOCK_MAIN) && $(UV) --no-deps -e . ) || \
	( $(BIN)/python -m pip install --require-hashes -r $(LOCK_MAIN) && $(BIN)/python -m pip install --no-deps -e . )
	touch $@

$(VENV)/.installed-test: pyproject.toml $(LOCK_TEST) | $(BIN)/python
	( $(UV) --require-hashes -r $(LOCK_TEST) && $(UV) --no-deps -e . ) || \
	( $(BIN)/python -m pip install --require-hashes -r $(LOCK_TEST) && $(BIN)/python -m pip install --no-deps -e . )
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/maeprobe demo --out outputs/demo

# The tests run in one pytest-xdist worker per core (TEST_WORKERS; 0 = one process), each test module whole in one
# worker (--dist loadscope: a module's shared fixtures are built once).
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope)

# Every test, the slow ones included (CI: .ci/run). 6 min 43 s on a clean clone, 2 cores (target: 8).
test: $(VENV)/.installed-test
	$(BIN)/ruff check maeprobe tests benchmarks scripts
	$(BIN)/python -m pytest -q -ra $(XDIST)

# The contributor loop: every module's fast tests, without those marked slow (trainings, several processes,
# the notebook, the GPU check's dry run). At most 3 minutes on 2 cores.
test-fast: $(VENV)/.installed-test
	$(BIN)/ruff check maeprobe tests benchmarks scripts
	$(BIN)/python -m pytest -q -ra -m "not slow" $(XDIST)

# The newest versions the registry has (no lock), in a separate environment: run before each change, so that a
# dependency that changed behaviour is seen before users see it. Prints what differs from the lock.
LATEST ?= .venv-latest
test-latest: | $(BIN)/python
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(BIN)/uv pip install --quiet --python $(LATEST)/bin/python --upgrade --refresh -e '.[test]'
	$(BIN)/uv pip freeze --python $(LATEST)/bin/python --exclude-editable | \
	  $(BIN)/python requirements/drift.py $(LOCK_TEST)
	$(LATEST)/bin/python -m pytest -q -ra $(XDIST)

lock: | $(BIN)/python
	$(BIN)/uv pip compile pyproject.toml --extra test --generate-hashes --universal --python-version 3.10 \
	  --no-header --upgrade -o $(LOCK_TEST)
	$(BIN)/uv pip compile pyproject.toml --generate-hashes --universal --python-version 3.10 --no-header \
	  -c $(LOCK_TEST) -o $(LOCK_MAIN)

# JupyterLab refuses to start as root unless told (containers often run as root): --allow-root then.
RUN_UID ?= $(shell id -u 2>/dev/null)
ALLOW_ROOT = $(if $(filter 0,$(RUN_UID)),--allow-root)
NOTEBOOK_RUN ?= outputs/notebook

notebook: | $(BIN)/python
	$(UV) -e '.[notebook]' || $(BIN)/python -m pip install -e '.[notebook]'
	$(BIN)/jupyter lab $(ALLOW_ROOT) examples/quickstart.ipynb

# The quickstart executed headless, top to bottom; the executed copy goes to $(NOTEBOOK_RUN)/ (ignored), never over
# the committed notebook.
notebook-run: | $(BIN)/python
	$(UV) -e '.[notebook]' || $(BIN)/python -m pip install -e '.[notebook]'
	mkdir -p $(NOTEBOOK_RUN)
	$(BIN)/jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=1800 \
	  --output-dir $(NOTEBOOK_RUN) --output quickstart.executed.ipynb examples/quickstart.ipynb
	@echo "executed copy: $(NOTEBOOK_RUN)/quickstart.executed.ipynb"

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/probe_overhead.py

clean:
	rm -rf $(VENV) $(LATEST) outputs .pytest_cache
