# One Makefile, the same commands locally and in CI.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test check lint types unit postgres bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/alerter demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

types: $(STAMP)
	$(BIN)/mypy

postgres:
	./scripts/postgres.sh

unit: $(STAMP)
	if [ -f scripts/postgres-env.sh ]; then . ./scripts/postgres-env.sh; fi; $(BIN)/pytest --cov --cov-report=term -q -rs

check: lint types unit

test: $(STAMP)
	-./scripts/postgres.sh
	$(MAKE) check

bench: $(STAMP)
	-./scripts/postgres.sh
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .coverage
