# Two commands for a new machine:  `make dev` (the product locally) and `make test` (everything CI runs).
SHELL := /bin/bash
PYTHON ?= $(shell ls -d $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -1 | grep . || (python3.12 -c "" 2>/dev/null && command -v python3.12) || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test install services lint typecheck pytest sam-validate bench bench-peers bench-lambda clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## make dev — every function of template.yaml on http://127.0.0.1:8080 (PORT overrides) with
## Postgres, the Upstash bridge and the fake providers; prints a dev API key.
dev: install
	$(BIN)/python -m infra.local.devserver

## make test — installs, makes sure Postgres and Redis are up, then lint, types, template checks and all tests.
test: install services lint typecheck sam-validate pytest

services:
	@bash .ci/services.sh

lint:
	$(BIN)/ruff check .

typecheck:
	$(BIN)/mypy

sam-validate:
	@bash .ci/sam-validate.sh

pytest:
	$(BIN)/pytest -q -p no:cacheprovider

bench: install services
	$(BIN)/python -m bench.run

## make bench-peers — our gateway next to LiteLLM, Portkey, a naive billing gateway and a bare
## passthrough (installed on first use into .local/peers/), same fake upstream; prints the issue-15 table.
bench-peers: install services
	$(BIN)/python -m bench.peers $(BENCH_ARGS)

## make bench-lambda — each function's Mangum handler invoked in-process with API Gateway v2 events,
## the streaming function under uvicorn, cold starts; billed ms and cost per million requests.
bench-lambda: install services
	$(BIN)/python -m bench.lambda_bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-sam .aws-sam .local .pytest_cache .mypy_cache .ruff_cache
