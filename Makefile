# Set-up and checks. Both targets install what is missing first (scripts/install.sh is
# idempotent and takes a few seconds when everything is already there).
PYTHON ?= python
export PYTHON

.PHONY: install demo test test-fast

install:
	bash scripts/install.sh

demo: install
	$(PYTHON) tools/demo.py

test: install
	$(PYTHON) -m pytest -q

# Development loop: everything except the tests marked slow (training through the tools,
# distributed runs, subprocess CLI checks). `make test` (and CI) still runs them all.
test-fast: install
	$(PYTHON) -m pytest -q -m "not slow"

