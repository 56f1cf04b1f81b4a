# wasmig developer entry points. `make demo` and `make test` install what they need themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: demo test lint spec bench wabt clean

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
		(apt-get update -qq && apt-get install -y -qq python3-venv)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

wabt:
	@command -v wast2json >/dev/null || (apt-get update -qq && apt-get install -y -qq wabt)

demo: $(STAMP)
	@$(PY) -m wasmig.examples.demo

lint: $(STAMP)
	@$(VENV)/bin/ruff check wasmig tests benchmarks

test: $(STAMP) wabt lint
	@$(PY) -m pytest -n 2 -q -rs

spec: $(STAMP) wabt
	@$(PY) -m tests.spec.runner

bench: $(STAMP)
	@$(PY) benchmarks/interp_speed.py

clean:
	rm -rf $(VENV) .cache .pytest_cache
