# Two commands for a newcomer: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export AWS_DEFAULT_REGION ?= us-east-1

.PHONY: run test fuzz lint check-template unit bench clean import

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "needs $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m infra.local

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

check-template: $(STAMP)
	$(BIN)/cfn-lint template.yaml
	$(BIN)/python -m infra.check_template template.yaml

test: lint check-template
	$(BIN)/python -m pytest -n 2 --dist loadfile

# Schemathesis at length (every phase, SCHEMATHESIS_MAX_EXAMPLES per operation, default 100):
# minutes, not part of `make test`.
fuzz: $(STAMP)
	$(BIN)/python -m pytest -m fuzz tests/e2e/test_schemathesis.py

bench: $(STAMP)
	$(BIN)/python -m bench

# Uploads FILE to the running stack's imports bucket (`make run` in another terminal) and follows
# the import to its end: make import FILE=events/orders-sample.csv
import: $(STAMP)
	@test -n "$(FILE)" || { echo "usage: make import FILE=path/to/orders.csv (or .jsonl)"; exit 2; }
	$(BIN)/python -m infra.local.import_cli "$(FILE)"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

# `sam build` (BuildMethod: makefile) calls these: the function's code is this package, installed
# with its runtime dependencies and its entry points (so built-in plugins load as on a laptop).
build-ApiFunction build-AuthorizerFunction:
	python -m pip install --quiet --no-compile . -t "$(ARTIFACTS_DIR)"
build-ImportSplitterFunction build-ImportWorkerFunction:
	python -m pip install --quiet --no-compile . -t "$(ARTIFACTS_DIR)"
