# The two commands of the README: `make demo` and `make test`. Each creates .venv when it is
# missing and installs the project into it (editable, with the dev extra) first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint install clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m harness demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check harness methods tests benchmarks
	$(VENV)/bin/ruff format --check harness methods tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
