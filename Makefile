# Two commands for a new machine:  `make dev` (the product locally) and `make test` (everything CI runs).
SHELL := /bin/bash
PYTHON ?= $(shell ls -d $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -1 | grep . || (python3.12 -c "" 2>/dev/null && command -v python3.12) || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test install services lint typecheck pytest sam-validate bench clean

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

clean:
	rm -rf $(VENV) .venv-sam .aws-sam .local .pytest_cache .mypy_cache .ruff_cache
