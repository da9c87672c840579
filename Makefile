# flor: `make demo` sets everything up and runs the tutorial twice; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.flor-installed

.PHONY: install demo test lint clean help bench bench-quick

help:
	@echo "make demo   - set up .venv (the package, torch==2.13.0 CPU, scikit-learn) and run the tutorial twice"
	@echo "make test   - set up, start a Prefect server and an S3 (moto) server on 127.0.0.1, run pytest"
	@echo "make lint   - ruff"
	@echo "make clean  - remove demo-store/"

$(PY):
	$(PYTHON) -m venv $(VENV)

# the README's set-up command; redone when pyproject.toml changes
$(STAMP): pyproject.toml | $(PY)
	$(VENV)/bin/pip install -e '.[dev]'
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/tutorial/demo.py

test: $(STAMP)
	bash .ci/test.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf demo-store

bench: $(STAMP)  ## the benchmark suite: benchmarks/RESULTS.md and plots (20-35 min on 2 cores)
	$(PY) benchmarks/run.py

bench-quick: $(STAMP)
	$(PY) benchmarks/run.py --quick
