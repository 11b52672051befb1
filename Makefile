# The two commands of the README: `make demo` and `make test`. Each creates .venv when it is
# missing and installs the tested environment into it first: every package at the exact version
# and hash of requirements.lock, then the project itself (editable). Where the lock does not fit
# the interpreter or platform (it says which it was resolved for), pyproject.toml's ranges are
# installed instead, with a warning: that combination is untested.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
LATEST := .venv-latest
PIP    := -m pip install --quiet --disable-pip-version-check

# The test-latest subset: data, decode, methods and the command line (a few minutes).
LATEST_TESTS := tests/harness/test_decode.py tests/harness/test_decode_backends.py \
	tests/harness/test_dataset.py tests/harness/test_synth.py tests/harness/test_transforms.py \
	tests/harness/test_check.py tests/harness/test_manifest.py tests/methods tests/harness/test_cli.py

.PHONY: demo test test-fast test-latest lock lint install clean docs

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if $(PYTHON) .ci/lock.py usable; then \
		$(PY) $(PIP) --require-hashes -r requirements.lock && \
		$(PY) $(PIP) --no-deps --no-build-isolation -e . ; \
	else \
		echo "warning: requirements.lock was resolved for another interpreter or platform;" \
			"installing pyproject.toml's ranges (an untested combination)" >&2; \
		$(PY) $(PIP) -e '.[dev]' ; \
	fi
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m harness demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Regenerate requirements.lock from pyproject.toml in a clean venv (then run `make test`).
lock:
	$(PYTHON) .ci/lock.py write

# The newest versions pyproject.toml allows, in a venv of their own: a one-trial demo from an
# empty folder (the installed wheel, its shipped specs; nothing cached), then the data, decode,
# method and CLI tests. Prints the versions that differ from the lock first.
test-latest:
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python $(PIP) --upgrade --upgrade-strategy eager '.[dev]'
	$(LATEST)/bin/python .ci/lock.py diff
	rm -rf $(LATEST)/run && mkdir $(LATEST)/run
	cd $(LATEST)/run && ../bin/rho demo --spec studies/cpu/smoke.yaml
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider $(LATEST_TESTS)

# The docs site (mkdocs.yml, docs/): the reference pages generated from the code, then a strict
# build into site/ (every warning an error: broken links and anchors, pages left out of the nav).
docs: $(STAMP)
	$(PY) docs/gen_reference.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(VENV)/bin/ruff check harness methods tests benchmarks examples docs
	$(VENV)/bin/ruff format --check harness methods tests benchmarks examples docs

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache .ruff_cache site
