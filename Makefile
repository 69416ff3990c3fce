# Set-up and checks. Both targets install what is missing first (scripts/install.sh is
# idempotent and takes a few seconds when everything is already there).
PYTHON ?= python
export PYTHON

.PHONY: install demo test

install:
	bash scripts/install.sh

demo: install
	$(PYTHON) tools/demo.py

test: install
	$(PYTHON) -m pytest -q
