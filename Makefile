# The map of the developer workflow. Every target installs what it needs into .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test unit integration lint envoy-config clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: Envoy + smartgate + a demo FHIR server on loopback, with the embedded default config
run: $(STAMP)
	$(BIN)/smartgate demo --state-dir .smartgate-dev

## test: the whole suite (unit + real-Envoy integration)
test: $(STAMP)
	$(BIN)/pytest -q

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

## lint: ruff and mypy
lint: $(STAMP)
	$(BIN)/ruff check service tests tools
	$(BIN)/mypy

## envoy-config: regenerate the shipped envoy/envoy.yaml
envoy-config: $(STAMP)
	$(BIN)/smartgate envoy-config > envoy/envoy.yaml

clean:
	rm -rf $(VENV) .smartgate-dev .pytest_cache .mypy_cache .ruff_cache
