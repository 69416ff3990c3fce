# Set-up and checks. Both targets install what is missing first (scripts/install.sh is
# idempotent and takes a few seconds when everything is already there).
PYTHON ?= python
export PYTHON

.PHONY: install demo test test-fast

install:
	bash scripts/install.sh

demo: install
	$(PYTHON) tools/demo.py

# pytest-xdist runs the test files in parallel, one worker per core, each worker's torch on one
# thread (tests/conftest.py); the end-to-end tests run their tools on one thread too.
PYTEST_PARALLEL ?= -n auto --dist loadfile

test: install
	$(PYTHON) -m pytest -q $(PYTEST_PARALLEL)

# Development loop: everything except the tests marked slow (training through the tools,
# distributed runs, subprocess CLI checks). `make test` (and CI) still runs them all.
test-fast: install
	$(PYTHON) -m pytest -q -m "not slow" $(PYTEST_PARALLEL)

