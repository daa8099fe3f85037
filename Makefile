# One Makefile, the same commands locally and in CI.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test check lint types unit bench soak clean screenshots

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

unit: $(STAMP)
	$(BIN)/pytest --cov --cov-report=term -q -rs

check: lint types unit

# The tests run beside a private PostgreSQL cluster, started and removed by the script.
test: $(STAMP)
	./scripts/ensure-chromium.sh
	./scripts/with-postgres.sh $(MAKE) check

# The console's screenshots in docs/screenshots, taken by the browser tests against demo-like data.
screenshots: $(STAMP)
	./scripts/ensure-chromium.sh
	ALERTER_SCREENSHOTS=1 $(BIN)/pytest -q tests/test_console_browser.py -k screenshots

bench: $(STAMP)
	./scripts/with-postgres.sh $(BIN)/python -m bench.run

# Not part of `make test`: the service under churn and faults for SOAK_DURATION, then exactly-once,
# flat memory and clean logs are checked (bench/soak.py). SOAK_STORE=postgres runs it beside a
# private cluster, which it also stops and starts; SOAK_ARGS passes more options.
SOAK_DURATION ?= 10m
SOAK_STORE ?= sqlite
soak: $(STAMP)
	$(if $(filter postgres,$(SOAK_STORE)),./scripts/with-postgres.sh )$(BIN)/python -m bench.soak \
		--duration $(SOAK_DURATION) --store $(SOAK_STORE) $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .coverage
