# l2s-data: `make demo` and `make test` work on a fresh clone; both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Tests start many Python processes (pytest workers, Ray workers, jobs, servers); each one would
# compile l2s_data and rewrite the test modules again where the environment turns bytecode caches
# off. The caches live in __pycache__ folders of this clone (ignored by git).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: venv demo test test-fast bench-store bench-extract bench-train bench-evaluate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/l2s demo

# Two pytest workers (one per core); the tests on the session's Ray head run as one group on one
# worker, so the session starts one Ray head (tests/conftest.py, SLOW_FIXTURES).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup tests

# Every test that starts no process (no Ray, no subprocess, no server).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow" tests

bench-store: $(STAMP)
	$(BIN)/python benchmarks/store.py

bench-extract: $(STAMP)
	$(BIN)/python benchmarks/extract.py

bench-train: $(STAMP)
	$(BIN)/python benchmarks/train.py

bench-evaluate: $(STAMP)
	$(BIN)/python benchmarks/evaluate.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
