# Set-up and everyday commands. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
EXAMPLE ?= experiments/ring_digits.yaml

.PHONY: run test install install-dev lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Installs are stamped so a second `make` skips them; they rerun when pyproject.toml changes.
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -c constraints.txt -e '.[dev,ray,flower]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## run the embedded default experiment (scikit-learn digits, offline) and print where the report is
run: install
	$(BIN)/dfl-sim run $(EXAMPLE)

## check the import layers (.importlinter), then run the test suite
test: install-dev
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -n 2 --durations=15

lint: install-dev
	$(BIN)/ruff check dfl topologies defenses attacks tests benchmarks

bench: install-dev
	$(BIN)/python benchmarks/bench_serial.py

clean:
	rm -rf runs .pytest_cache
