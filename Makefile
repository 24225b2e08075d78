# The README's two commands are `make demo` and `make test`; everything else helps them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test lab bench soak lint clean db-start db-stop

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The main job: embedded PostgreSQL + demo database + the playbook run headlessly.
demo: install
	$(BIN)/playbook demo run

## The whole test suite (against real local PostgreSQL 16 and 15 that the suite starts).
test: install
	$(BIN)/python -m pytest

lab: install
	$(BIN)/playbook lab

bench: install
	$(BIN)/python tests/benchmarks/run.py $(BENCH)

soak: install
	$(BIN)/python -m pytest -m soak tests/

lint: install
	$(BIN)/ruff check lib tests

db-start: install
	$(BIN)/playbook db start

db-stop: install
	$(BIN)/playbook db stop

clean:
	-$(BIN)/playbook db destroy
	rm -rf $(VENV) .pytest_cache
