# HVS observability lab. `make help` lists the targets.
# Tunables (override on the command line or in the environment):
PYTHON ?= python3
VENV ?= .venv
PORT ?= 5001
WORKERS ?=
MLRUNS_DIR ?= $(CURDIR)/mlruns
IMAGE ?= hvs-prediction-api:latest
PYTEST_ARGS ?=

BIN := $(VENV)/bin
# Rebuilt whenever a dependency list changes.
VENV_STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

.PHONY: help  ## list the targets
help:
	@grep -E '^\.PHONY: [a-z-]+ +## ' $(MAKEFILE_LIST) | sed -E 's/^\.PHONY: ([a-z-]+) +## (.*)/  make \1\t\2/' | expand -t 24

$(VENV_STAMP): api/requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	# The project itself, editable: it registers the hvs-store artifact repository with MLflow.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

.PHONY: venv  ## create .venv with the pinned runtime and test dependencies
venv: $(VENV_STAMP)

.PHONY: system-deps  ## install promtool from Debian's packages when missing (as root), else say what to install
system-deps:
	@if ! command -v promtool >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager; \
	  else \
	    echo "promtool is missing: install Debian's 'prometheus' and 'prometheus-alertmanager' packages" \
	         "(sudo apt-get install --no-install-recommends prometheus prometheus-alertmanager)"; exit 1; \
	  fi; \
	fi

.PHONY: train  ## train the candidate models into ./mlruns and register the champion
train: $(VENV_STAMP)
	MLRUNS_DIR=$(MLRUNS_DIR) $(BIN)/python -m hvs_api.train

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
test: $(VENV_STAMP) system-deps lint
	$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: image  ## build the API image (needs a Docker engine)
image:
	docker build -f api/Dockerfile -t $(IMAGE) .

.PHONY: clean  ## remove the virtual environment and caches (keeps ./mlruns)
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
