# wasmig developer entry points. `make demo` and `make test` install what they need themselves,
# from the lock file (requirements.lock: every direct and transitive dependency, pinned with hashes).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements.lock
LOWEST_LOCK := requirements-lowest.lock
TOOLS_LOCK := requirements-tools.lock
# re-install whenever the lock or the project's metadata changes
STAMP := $(VENV)/.installed-$(shell cat $(LOCK) pyproject.toml | sha1sum | cut -c1-12)
PIP_QUIET := -q --disable-pip-version-check
# `uv pip compile` options shared by both locks: one lock for every platform and Python >= 3.11
COMPILE := pip compile pyproject.toml --extra dev --universal --python-version 3.11 --generate-hashes --no-header

.PHONY: demo test test-lowest lock lint spec bench wabt clean

# A venv, then exactly the locked packages (hash-checked, nothing resolved), then wasmig itself without
# dependencies: a new release of anything on PyPI changes nothing here until `make lock` takes it.
define install_locked
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
		(apt-get update -qq && apt-get install -y -qq python3-venv)
	@test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	@$(1)/bin/python -m pip install $(PIP_QUIET) --require-hashes --no-deps -r $(2)
	@$(1)/bin/python -m pip install $(PIP_QUIET) --no-deps --no-build-isolation -e .
endef

$(STAMP): $(LOCK) pyproject.toml
	$(call install_locked,$(VENV),$(LOCK))
	@rm -f $(VENV)/.installed-* && touch $@

wabt:
	@command -v wast2json >/dev/null || (apt-get update -qq && apt-get install -y -qq wabt)

demo: $(STAMP)
	@$(PY) -m wasmig.examples.demo

lint: $(STAMP)
	@$(VENV)/bin/ruff check wasmig tests benchmarks

test: $(STAMP) wabt lint
	@$(PY) -m pytest -n 2 -q -rs --durations=20

# The suite on the lowest versions pyproject.toml allows (requirements-lowest.lock), in a venv of its own:
# how the lower bounds of the ranges are known to hold.
test-lowest: wabt
	$(call install_locked,.venv-lowest,$(LOWEST_LOCK))
	@.venv-lowest/bin/python -m pytest -n 2 -q -rs

# Re-resolve both locks from pyproject.toml's ranges (the newest and the lowest versions they allow),
# then run the suite on the new lock. Commit the locks only when it passes (and `make test-lowest` too).
lock:
	@test -x .venv-tools/bin/uv || ($(PYTHON) -m venv .venv-tools && \
		.venv-tools/bin/python -m pip install $(PIP_QUIET) --require-hashes --no-deps -r $(TOOLS_LOCK))
	.venv-tools/bin/uv $(COMPILE) --upgrade -o $(LOCK)
	.venv-tools/bin/uv $(COMPILE) --resolution lowest-direct -o $(LOWEST_LOCK)
	$(MAKE) test

spec: $(STAMP) wabt
	@$(PY) -m tests.spec.runner

bench: $(STAMP)
	@$(PY) benchmarks/interp_speed.py

clean:
	rm -rf $(VENV) .venv-lowest .venv-tools .cache .pytest_cache
