# Two entry points do all setup on a fresh machine (Python 3.11, CPU only is fine):
#   make run    set up .venv, then simulate the bundled default scenario
#   make test   set up .venv, then run the test suite (what CI runs)
# The venv installs exactly requirements.lock (pip constraints, made by `make lock`).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
EXTRAS := kernels,accuracy,dev,ray,search

.PHONY: run test check setup lock bench clean

# uv (pinned in the lock, installed by pip) installs exactly the lock's lines, in parallel and
# without resolving (--no-deps: the lock holds every package); the torch CPU wheel comes from
# the local wheel folder pip is pointed at (PIP_FIND_LINKS)
FIND_LINKS := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c $(LOCK) uv
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -r $(LOCK) --build-constraint $(LOCK) $(FIND_LINKS) -e .
	$(PY) .ci/lock.py installed
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/alisa run

test: $(STAMP)
	$(PY) -m pytest

# lint, format and types; and the lock against pyproject.toml
check: $(STAMP)
	$(PY) .ci/lock.py check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) .ci/typecheck.py

# resolve every dependency again in a fresh venv and pin what it installs: after changing
# dependencies in pyproject.toml, or deliberately to take newer releases (`make lock KEEP=1`
# keeps the current versions wherever the new lists admit them)
lock:
	$(PYTHON) .ci/lock.py write --extras $(EXTRAS) $(if $(KEEP),--keep,)
	rm -f $(STAMP)

bench: $(STAMP)
	$(PY) benchmarks/sim_speed.py

clean:
	rm -rf $(VENV) results .pytest_cache .hypothesis .mypy_cache .ruff_cache
