# Two commands for a new machine:  `make dev` (the product locally) and `make test` (everything CI runs).
SHELL := /bin/bash
PYTHON ?= $(shell ls -d $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -1 | grep . || (python3.12 -c "" 2>/dev/null && command -v python3.12) || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test install services lint typecheck pytest pytest-pgbouncer sam-validate lock lock-upgrade lock-check bench bench-surfaces bench-peers bench-lambda clean

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

## make test — installs, makes sure Postgres, Redis and PgBouncer are there, then lint, types, the
## dependency locks, template checks, all tests, and the money path again through PgBouncer.
test: install services lint typecheck lock-check sam-validate pytest pytest-pgbouncer

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

## The gateway's connections through a real PgBouncer in transaction mode (as Neon's -pooler /
## Supabase's port 6543): reserve/settle, webhooks, the chat route, the catalogue copy's version
## check, the first connection opened beside the imports (serve.py), the e2e chat path.
PGBOUNCER_TESTS := tests/integration/test_ledger.py tests/integration/test_ledger_functions.py tests/integration/test_billing_webhooks.py \
	tests/integration/test_chat.py tests/integration/test_catalog_registry.py tests/integration/test_db_first_connection.py tests/e2e/test_query_e2e.py tests/e2e/test_smoke_e2e.py
pytest-pgbouncer:
	TEST_DB_VIA=pgbouncer $(BIN)/pytest -q -p no:cacheprovider $(PGBOUNCER_TESTS)

## make lock — the hashed requirements SAM installs (layer + functions), from pyproject.toml, for
## python3.12/arm64; lock-upgrade re-resolves to the newest allowed versions.
lock: install
	@bash .ci/lock.sh

lock-upgrade: install
	@bash .ci/lock.sh --upgrade

lock-check:
	@bash .ci/lock.sh --check

bench: install services
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.surfaces

## make bench-surfaces — overhead of chat, /v1/messages (native, translated), /v1/responses and
## /v1/embeddings over a direct call to the fake upstream, c=1 and c=16, then the money check
bench-surfaces: install services
	$(BIN)/python -m bench.surfaces $(BENCH_ARGS)

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
