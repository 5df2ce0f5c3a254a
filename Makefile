# HVS observability lab. `make help` lists the targets.
# Tunables (override on the command line or in the environment):
PYTHON ?= python3
VENV ?= .venv
PORT ?= 5001
WORKERS ?=
MLRUNS_DIR ?= $(CURDIR)/mlruns
IMAGE ?= hvs-prediction-api:latest
COMPOSE ?= docker compose
# The slowest tests are listed, so that the suite keeps within its 25-minute budget.
PYTEST_ARGS ?= --durations=15
# make load: a bounded headless Locust run against the API.
HOST ?= http://127.0.0.1:5001
USERS ?= 20
SPAWN_RATE ?= 5
DURATION ?= 1m
SCENARIO ?= SteadyUser
RESULTS ?= results
# make bench-rules: the size of the synthetic TSDB (the HPA's 10 instances, the SLO's 30 days).
BENCH_DAYS ?= 30
BENCH_INSTANCES ?= 10

BIN := $(VENV)/bin
# Rebuilt whenever a dependency list changes.
VENV_STAMP := $(VENV)/.installed
# checkov, in a virtual environment of its own (see requirements-checkov.txt).
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
# The Compose specification's JSON schema, as the dclint package on npm ships it.
DCLINT_VERSION := 3.1.0
COMPOSE_SCHEMA := .cache/compose.schema.json

.DEFAULT_GOAL := help

.PHONY: help  ## list the targets
help:
	@grep -E '^\.PHONY: [a-z0-9-]+ +## ' $(MAKEFILE_LIST) | sed -E 's/^\.PHONY: ([a-z0-9-]+) +## (.*)/  make \1\t\2/' | expand -t 24

$(VENV_STAMP): api/requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	# The project itself, editable: it registers the hvs-store artifact repository with MLflow.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

.PHONY: venv  ## create .venv with the pinned runtime and test dependencies
venv: $(VENV_STAMP)

.PHONY: system-deps  ## install Prometheus 3.5, Alertmanager 0.33 and the blackbox exporter (Debian sid), the container engine and browser (as root)
system-deps:
	tests/system-deps.sh

$(CHECKOV_STAMP): requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --disable-pip-version-check -q -r requirements-checkov.txt
	touch $@

$(COMPOSE_SCHEMA):
	mkdir -p .cache/dclint
	cd .cache/dclint && npm pack --silent dclint@$(DCLINT_VERSION) >/dev/null \
	  && tar -xzf dclint-$(DCLINT_VERSION).tgz package/schemas/compose.schema.json
	cp .cache/dclint/package/schemas/compose.schema.json $@

.PHONY: train  ## train the candidate models into ./mlruns and register the champion
train: $(VENV_STAMP)
	MLRUNS_DIR=$(MLRUNS_DIR) $(BIN)/python -m hvs_model.train

.PHONY: serve  ## run the API with gunicorn on 127.0.0.1:$PORT (WORKERS= to override) from ./mlruns
serve: $(VENV_STAMP)
	cd api && MLRUNS_DIR=$(MLRUNS_DIR) HOST=127.0.0.1 PORT=$(PORT) WORKERS=$(WORKERS) \
	  PROMETHEUS_MULTIPROC_DIR=$${PROMETHEUS_MULTIPROC_DIR:-/tmp/hvs-api-metrics-$(PORT)} \
	  $(CURDIR)/$(BIN)/gunicorn --config gunicorn.conf.py

.PHONY: lint  ## ruff (lint and format check) and yamllint
lint: $(VENV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/yamllint -c .yamllint.yml .

.PHONY: test  ## install what is needed, lint, and run the whole test suite
test: $(VENV_STAMP) $(CHECKOV_STAMP) system-deps $(COMPOSE_SCHEMA) lint
	COMPOSE_SCHEMA=$(COMPOSE_SCHEMA) CHECKOV=$(CHECKOV_VENV)/bin/checkov $(BIN)/pytest $(PYTEST_ARGS)

# The edit-test loop: everything that starts no server, no container and no cluster (lint, the
# unit tests, the static checks of rules, dashboards, Compose and k8s, promtool's rule tests),
# without the rules' mutation check, which alone takes about two minutes here.
.PHONY: check  ## the fast tier: lint, unit and static tests, promtool test rules (a few minutes; make test runs everything)
check: $(VENV_STAMP) $(CHECKOV_STAMP) system-deps $(COMPOSE_SCHEMA) lint
	COMPOSE_SCHEMA=$(COMPOSE_SCHEMA) CHECKOV=$(CHECKOV_VENV)/bin/checkov $(BIN)/pytest -m "not integration and not container and not mutation" $(PYTEST_ARGS)

.PHONY: test-container  ## only the container stage: the lab under a real Docker engine (tests/container/)
test-container: $(VENV_STAMP) system-deps
	$(BIN)/pytest tests/container $(PYTEST_ARGS)

.PHONY: docs  ## regenerate docs/configuration.md's settings tables from api/hvs_settings
docs: $(VENV_STAMP)
	$(BIN)/python -m hvs_settings --write docs/configuration.md

.PHONY: k8s  ## regenerate k8s/base/generated/ from the rules, dashboards, runbook and alertmanager.yml
k8s: $(VENV_STAMP)
	$(BIN)/python k8s/generate.py

# The Kubernetes path (docs/kubernetes.md): the current kubectl context, kind or
# Docker Desktop; helm, kubectl and (for kind) kind installed. Not part of make test.
.PHONY: k8s-stack  ## install the pinned kube-prometheus-stack and metrics-server into the current cluster
k8s-stack:
	k8s/install-stack.sh

.PHONY: k8s-deploy  ## build the image, load it into the cluster, apply k8s/overlays/local, roll the pods onto it
k8s-deploy:
	k8s/deploy.sh

.PHONY: kind-smoke  ## create a kind cluster, install everything, and check docs/kubernetes.md's claims in it
kind-smoke:
	k8s/kind-smoke.sh

.PHONY: image  ## build the API image (needs a Docker engine)
image:
	docker build -f api/Dockerfile -t $(IMAGE) .

.PHONY: up  ## start the whole lab with docker compose and print its URLs
up:
	$(COMPOSE) up -d --build
	@echo "HVS lab is starting (the first start trains the model); default ports, .env's HVS_*_PORT move them:"
	@echo "  Grafana        http://localhost:3000   (dashboards, no login needed)"
	@echo "  Prometheus     http://localhost:9090"
	@echo "  Alertmanager   http://localhost:9093"
	@echo "  Alerts         http://localhost:9095   (every alert delivered, and the runbook)"
	@echo "  Locust         http://localhost:8089"
	@echo "  MLflow         http://localhost:5000"
	@echo "  API            http://localhost:5001   (/predict, /health, /metrics)"
	@echo "  cAdvisor       http://localhost:8080"

.PHONY: down  ## stop the lab, keeping its data
down:
	$(COMPOSE) down

.PHONY: reset  ## stop the lab and delete its volumes (model store, metrics, Grafana state)
reset:
	$(COMPOSE) down -v

.PHONY: retrain  ## train and promote a new champion inside the running lab
retrain:
	$(COMPOSE) run --rm trainer python -m hvs_model.train

.PHONY: load  ## headless Locust run (HOST, USERS, SPAWN_RATE, DURATION, SCENARIO) with reports in results/
load: $(VENV_STAMP)
	mkdir -p $(RESULTS)
	$(BIN)/locust -f loadtest/locustfile.py --headless -H $(HOST) -u $(USERS) -r $(SPAWN_RATE) -t $(DURATION) \
	  --csv $(RESULTS)/$(SCENARIO) --html $(RESULTS)/$(SCENARIO).html --only-summary $(SCENARIO)

.PHONY: bench  ## benchmark /predict against a bare Flask app, mlflow models serve and the model call (results/bench.md)
bench: $(VENV_STAMP)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-bench.txt
	$(BIN)/python -m loadtest.bench $(BENCH_ARGS)

.PHONY: profile  ## where an API worker spends its time under wrk, by py-spy (results/profile.md)
profile: $(VENV_STAMP)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-bench.txt
	$(BIN)/python -m loadtest.profile $(PROFILE_ARGS)

.PHONY: bench-rules  ## the rule groups' evaluation time on 30 days x 10 instances, before and after the long windows were recorded in tiles (results/bench-rules.json)
bench-rules: $(VENV_STAMP)
	BENCH_DAYS=$(BENCH_DAYS) BENCH_INSTANCES=$(BENCH_INSTANCES) $(BIN)/python -m loadtest.bench_rules $(BENCH_RULES_ARGS)

.PHONY: reliability  ## fuzzing, faults under load and restarts, then print their figures (results/reliability.json)
reliability: $(VENV_STAMP) system-deps
	rm -f $(RESULTS)/reliability.json
	$(BIN)/pytest -m reliability -q $(PYTEST_ARGS)
	@cat $(RESULTS)/reliability.json

.PHONY: clean  ## remove the virtual environment and caches (keeps ./mlruns)
clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .cache .pytest_cache .ruff_cache
