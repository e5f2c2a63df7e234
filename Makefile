# Loka — the front door. `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON    ?= python3
VENV      := .venv
PY        := $(VENV)/bin/python
EXTRAS    ?= operator,trainer,dev
# Reinstall when pyproject.toml changes (the stamp carries its hash).
VENV_STAMP = $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)-$(subst $(comma),_,$(EXTRAS))
comma := ,

.PHONY: help venv cluster-build cluster-up cluster-down cluster-status test test-unit test-cluster lint typecheck fmt bench-cluster clean

help: ## List every target with one line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(VENV_STAMP) ## Create .venv with the operator, trainer and dev extras

cluster-build: venv ## Build the control plane's Go components into ~/.cache/loka (cached by version)
	$(PY) -m tests.cluster build

cluster-up: cluster-build ## Start the local control plane (etcd, apiserver, KWOK, KubeRay, Kueue, MinIO); idempotent
	$(PY) -m tests.cluster up

cluster-down: ## Stop every control-plane component by its recorded PID and remove its data
	@test -x $(PY) && $(PY) -m tests.cluster down || true

cluster-status: ## Show each control-plane component, its PID and whether it is healthy
	$(PY) -m tests.cluster status

test: cluster-build ## Run every test (starts the local control plane when it is not up)
	$(PY) -m pytest

test-unit: venv ## Run the tests that need no cluster
	$(PY) -m pytest -m 'not cluster and not e2e'

test-cluster: cluster-build ## Run the control-plane tests only
	$(PY) -m pytest tests/cluster

lint: venv ## ruff (lint + format check) and mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy operator/loka_operator trainer-image/loka_trainer tests bench

typecheck: venv ## mypy only
	$(PY) -m mypy operator/loka_operator trainer-image/loka_trainer tests bench

fmt: venv ## Format and autofix with ruff
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench-cluster: cluster-build ## Print build times, warm cluster-up time and idle RSS of each component
	$(PY) bench/cluster.py

clean: cluster-down ## Remove the venv and local state (the Go build cache stays)
	rm -rf $(VENV) .cluster .pytest_cache .mypy_cache .ruff_cache
