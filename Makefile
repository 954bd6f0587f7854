# The two quick-start commands: `make dev` runs the relay, `make test` runs the tests.
# Each creates .venv and installs what it needs; only Python 3.11+ and make are required.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

dev: $(STAMP)
	$(BIN)/podpost dev

lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check schemas runtime ingress dispatcher reconciler admin console podpost loadkit tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) .podpost
