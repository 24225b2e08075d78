# The README's two commands are `make demo` and `make test`; everything else helps them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test browser-deps pg15-deps lab bench soak lint clean db-start db-stop

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
test: install browser-deps pg15-deps
	$(BIN)/python -m pytest

## Debian's chromium (when root with apt-get) and the playwright package, for tests/browser/.
## Nothing is downloaded at test time; `playwright install` is never run.
browser-deps: install
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "browser-deps: installing Debian's chromium for the browser tests"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null; \
	fi
	@$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/python -m pip install --quiet playwright
	@[ -x /usr/bin/chromium ] || echo "browser-deps: /usr/bin/chromium is missing and cannot be \
	installed here (needs root and apt-get): run 'sudo apt-get install chromium'. The browser \
	tests fail until then (PLAYBOOK_SKIP_BROWSER=1 skips them knowingly)."

## Debian's PostgreSQL 15 (what Supabase runs): the suite runs its both_versions tests on it.
## --reinstall: also when the package is registered but its files are gone.
pg15-deps:
	@if [ ! -x /usr/lib/postgresql/15/bin/initdb ] && \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "pg15-deps: installing Debian's postgresql-15 for the PostgreSQL 15 tests"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq >/dev/null && \
	  apt-get install -y -qq --reinstall postgresql-15 postgresql-client-15 >/dev/null; \
	fi

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
