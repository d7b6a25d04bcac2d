# The map of the developer workflow. Every target installs what it needs into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
E2E_NODE := tests/e2e/node
E2E_STAMP := $(E2E_NODE)/node_modules/.e2e-lock-sha256

.PHONY: run test unit integration lint envoy-config clean e2e e2e-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: Envoy + smartgate + a demo FHIR server on loopback, with the embedded default config
run: $(STAMP)
	$(BIN)/smartgate demo --state-dir .smartgate-dev

## test: the whole suite (unit + real-Envoy integration + end-to-end with real components)
test: $(STAMP) e2e-deps
	$(BIN)/pytest -q

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

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

## lint: ruff and mypy
lint: $(STAMP)
	$(BIN)/ruff check service tests tools
	$(BIN)/mypy

## envoy-config: regenerate the shipped envoy/envoy.yaml
envoy-config: $(STAMP)
	$(BIN)/smartgate envoy-config > envoy/envoy.yaml

clean:
	rm -rf $(VENV) .smartgate-dev .pytest_cache .mypy_cache .ruff_cache
