# Progressive delivery of scikit-learn models on MLServer / Seldon Core.
# `make demo` and `make test` set everything up themselves; `make help` lists the targets.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
BIN     := $(VENV)/bin
MODELS  ?= models
STAMP   := $(VENV)/.installed-stamp

# Python 3.12 exactly (seldon-core 1.19 needs >=3.12, mlserver 1.7 needs <3.13):
# first a python3.12 on PATH that really runs (a pyenv shim may not), then pyenv's versions.
define find_python312
for c in "$$(command -v python3.12 2>/dev/null)" $$(ls -d "$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)"/versions/3.12*/bin/python3.12 2>/dev/null); do \
  if [ -n "$$c" ] && "$$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then echo "$$c"; exit 0; fi; \
done; exit 1
endef
PYTHON312 = $(shell $(find_python312))

# The local router's data plane: nginx with its Lua module and lua-cjson, from Debian's packages.
DATAPLANE_PACKAGES := nginx-light libnginx-mod-http-lua lua-cjson
define have_dataplane
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } && [ -f /usr/lib/nginx/modules/ngx_http_lua_module.so ] && ls /usr/lib/*/lua/5.1/cjson.so >/dev/null 2>&1
endef

.PHONY: help setup dataplane browser console lock models serve up down status demo batch test lint pytest manifests bench bench-speed bench-comparator loadtest clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory dataplane
	@$(MAKE) --no-print-directory browser
	@py="$(PYTHON312)"; if [ -z "$$py" ]; then \
	  echo "error: Python 3.12 not found (seldon-core 1.19 needs >=3.12, mlserver 1.7 needs <3.13)."; \
	  echo "  install it, e.g. 'apt-get install python3.12 python3.12-venv' or 'pyenv install 3.12', then re-run make."; \
	  exit 1; fi; \
	echo "using $$py"; \
	[ -x $(BIN)/python ] || "$$py" -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,console,flow]'
	@touch $@

setup: $(STAMP) ## Create .venv with Python 3.12 and the pinned dependencies (+ nginx, see dataplane)

dataplane: ## Install nginx + its Lua module (the local router's data plane) from Debian if missing
	@if { $(have_dataplane); then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "error: the local router needs nginx with its Lua module and lua-cjson"; \
	  echo "  (Debian/Ubuntu packages: $(DATAPLANE_PACKAGES)); install them, then re-run make."; exit 1; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi; \
	echo "installing $(DATAPLANE_PACKAGES) (Debian packages) for the local router"; \
	{ $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq \
	  --no-install-recommends $(DATAPLANE_PACKAGES); } >/tmp/serving-apt.log 2>&1 || { \
	  echo "error: could not install them (log: /tmp/serving-apt.log); run: apt-get install $(DATAPLANE_PACKAGES)"; exit 1; }

browser: ## Install Debian's chromium (the console's browser tests drive it with Playwright) if missing
	@if [ -x /usr/bin/chromium ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "warning: no /usr/bin/chromium and no apt-get; the console's browser test will skip"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi; \
	echo "installing chromium (Debian package) for the console's browser test"; \
	{ $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq \
	  --no-install-recommends chromium; } >/tmp/serving-apt-chromium.log 2>&1 || \
	  echo "warning: could not install chromium (log: /tmp/serving-apt-chromium.log); the console's browser test will skip"

lock: ## Re-pin constraints.txt from a fresh resolve of pyproject.toml
	rm -rf .lock-venv && "$(PYTHON312)" -m venv .lock-venv
	.lock-venv/bin/pip install --quiet '.[dev,console,flow]'
	{ head -3 constraints.txt; .lock-venv/bin/pip freeze | grep -vi '^serving'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .lock-venv

models: $(STAMP) ## Train the model versions into models/ (deterministic)
	$(BIN)/serving train --out $(MODELS)

serve: models ## Serve the stable version in one MLServer (REST 8080, gRPC 8081; `serving serve --all` serves every version)
	$(BIN)/serving serve --models $(MODELS)

up: models ## Start the local stack from the chart's values (router :8003 REST, :8004 gRPC)
	$(BIN)/serving up --values charts/seldon-model/values.yaml --models $(MODELS)

console: $(STAMP) ## The console page for the local stack (http://127.0.0.1:8501; start the stack with make up)
	$(BIN)/serving console

down: ## Stop the local stack
	$(BIN)/serving down

status: ## Predictors, weights, health, errors, shadow agreement of the local stack
	$(BIN)/serving status

lint: $(STAMP) ## ruff and mypy on serving/
	$(BIN)/ruff check serving tests loadtest
	$(BIN)/mypy serving

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint pytest ## Lint, then the whole test suite

demo: models ## Run the local demo of the whole flow
	$(BIN)/serving demo --models $(MODELS)

batch: models ## Score the hold-out set with the batch Metaflow flow, locally (prints where the predictions are)
	$(BIN)/python -m serving.batch.flow_local --models $(MODELS)

manifests: $(STAMP) ## Render the chart's defaults into manifests/ (+ values.schema.json from serving/spec.py)
	$(BIN)/serving manifests

loadtest: models ## Load test the local stack (started if not running): per-predictor report, SLO gate, scaling (reports/)
	$(BIN)/serving loadtest --values charts/seldon-model/values.yaml --models $(MODELS) --scaling 1,2

bench: models ## Performance figures: MLServer defaults vs tuned, direct vs router vs shadow (reports/)
	$(BIN)/python -m serving.bench.all --models $(MODELS)

bench-speed: models ## Plain FastAPI app vs MLServer vs the stack (wrk), compiled vs scikit-learn per row
	$(BIN)/python -m serving.bench.speed --models $(MODELS)

bench-comparator: ## The comparator: events per core vs a no-op HTTP handler, memory with 10,000 pending pairs, lag
	$(BIN)/python -m serving.bench.comparator_bench

clean: ## Remove the venv, trained models and reports
	rm -rf $(VENV) reports .pytest_cache .mypy_cache .ruff_cache
	find $(MODELS) -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
