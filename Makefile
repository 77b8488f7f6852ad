# The README's two commands: `make demo` (train on the embedded demo dataset)
# and `make test` (the test suite). Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
WORKDIR ?= workdirs/demo

.PHONY: demo test test-fast test-slow lint format clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	# openpi's client (for the serving tests) pins numpy<2 but works with numpy 2: install it without its deps
	# (its real ones, msgpack, websockets, dm-tree, pillow, typing_extensions, are in the test extra or main deps).
	$(BIN)/python -m pip install -q --no-deps 'openpi-client==0.1.2'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/vla-jax train --config experiments/demo.py --workdir $(WORKDIR)

# Everything (what CI runs), on 2 workers; a test file stays on one worker, so its module fixtures (a trained
# run) are built once. test-fast leaves out the training-loop, multi-host and serving tests (marked slow).
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow"

test-slow: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m slow

lint: $(BIN)/.installed
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

format: $(BIN)/.installed
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) workdirs .pytest_cache
