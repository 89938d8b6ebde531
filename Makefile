# Set-up and checks for django-kms-fields. Every target creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

# Extra packages by database: mysqlclient builds against libmariadb-dev.
ifneq ($(filter mysql%,$(DATABASE_URL)),)
TEST_EXTRAS := test,mysql
else
TEST_EXTRAS := test
endif

EXAMPLE := example_project
PORT ?= 8000

.PHONY: demo moto-start moto-stop test lint typecheck docs bench tox clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "Python 3.10 or newer is required (set PYTHON=python3.x)."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e ".[$*]"
	touch $@

## demo: run the example project on http://127.0.0.1:$(PORT)/admin/ with demo data
demo: $(VENV)/.installed-example
	cd $(EXAMPLE) && ../$(BIN)/python manage.py migrate --noinput
	cd $(EXAMPLE) && ../$(BIN)/python manage.py seed_demo
	cd $(EXAMPLE) && ../$(BIN)/python manage.py create_demo_users --url http://127.0.0.1:$(PORT)/admin/
	cd $(EXAMPLE) && ../$(BIN)/python manage.py runserver 127.0.0.1:$(PORT)

## moto-start, moto-stop: a moto_server on 127.0.0.1 standing in for AWS KMS
moto-start: $(VENV)/.installed-example
	$(BIN)/python $(EXAMPLE)/moto_kms.py start

moto-stop: | $(BIN)/python
	$(BIN)/python $(EXAMPLE)/moto_kms.py stop

## test: run the test suite (SQLite; set DATABASE_URL for PostgreSQL or MariaDB)
test: $(VENV)/.installed-$(TEST_EXTRAS)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## lint: ruff
lint: $(VENV)/.installed-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## typecheck: mypy with django-stubs
typecheck: $(VENV)/.installed-typecheck
	$(BIN)/mypy

# Interpreters for tox: pyenv's Python 3.10 to 3.13, where pyenv installed them.
PYENV_BINS := $(subst $(eval) ,:,$(wildcard $(HOME)/.pyenv/versions/3.1[0-3].*/bin))

## docs: build the documentation, failing on any warning
docs: $(VENV)/.installed-docs
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html
	$(BIN)/sphinx-build -W --keep-going -b doctest docs docs/_build/doctest

BENCH_POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/kms_fields_bench
BENCH_ROWS ?= 1000 10000 100000

## bench: field benchmarks on SQLite and PostgreSQL, written to docs/benchmark-results.inc
bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/fields.py --rows $(BENCH_ROWS) --json benchmarks/results-sqlite.json
	DATABASE_URL=$(BENCH_POSTGRES_URL) $(BIN)/python benchmarks/fields.py \
		--rows $(BENCH_ROWS) --json benchmarks/results-postgresql.json
	$(BIN)/python benchmarks/render.py benchmarks/results-sqlite.json \
		benchmarks/results-postgresql.json > docs/benchmark-results.inc

## tox: the Django and Python matrix of tox.ini
tox: | $(BIN)/python
	$(PIP) install --quiet "tox>=4"
	PATH="$(PYENV_BINS):$$PATH" $(BIN)/tox run-parallel --parallel 2 --parallel-no-spinner $(TOX_ARGS)

clean:
	rm -rf $(VENV) .tox .pytest_cache .mypy_cache .ruff_cache *.egg-info test-results
