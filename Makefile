# Two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# OpenMP threads sleep instead of spinning: a busy shared machine otherwise slows training 4-8x
export OMP_WAIT_POLICY ?= PASSIVE
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build (an unpinned torch pulls a multi-GB CUDA build)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/defakeq run suite.yaml

test: install
	$(VENV)/bin/pytest -q

test-fast: install
	$(VENV)/bin/pytest -q -m "not slow"

bench: install
	@mkdir -p benchmarks/out
	@set -e; for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f; done

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs benchmarks/out .pytest_cache
