# Two entry points do all setup on a fresh machine (Python 3.11, CPU only is fine):
#   make run    set up .venv, then simulate the bundled default scenario
#   make test   set up .venv, then run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test setup bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[kernels,accuracy,dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/alisa run

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/sim_speed.py

clean:
	rm -rf $(VENV) results .pytest_cache .hypothesis
