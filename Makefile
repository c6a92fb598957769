# Two commands matter: `make run` and `make test`. Everything else they need is set up here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_CONFIG := config/demo.toml

.PHONY: run test lint bench conformance clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/mailledger --config $(DEMO_CONFIG) demo init
	$(VENV)/bin/mailledger --config $(DEMO_CONFIG) serve

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports  # DESIGN §8's layers, from [tool.importlinter] in pyproject.toml

bench: $(STAMP)
	$(PY) -m bench.run

# The published SPF (RFC 7208) and ARC suites, read from ../shared/vectors; `make test` runs them too.
conformance: $(STAMP)
	$(PY) -m pytest -q tests/conformance

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
