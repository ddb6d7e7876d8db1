# The README's two commands: `make run` (the whole product) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Extra arguments for pytest, e.g. `make test PYTEST_ARGS="-k downloads -x"`.
PYTEST_ARGS ?=
# Three workers on two cores: much of the suite waits on the processes it starts (workers, servers, a lease to
# expire), so a third test runs in that idle time (measured: 8.6 instead of 10.9 minutes, CPU time unchanged).
PYTEST_WORKERS ?= 3

.PHONY: run test test-fast lint format bench install install-dev browser migrations-check clean

# setuptools warns on every editable install of this (flat) layout, "Editable installation ... be careful with
# folders in your working directory with the same name as your package": nothing to act on, and it sat between
# the install and the first-run login. Only that message is silenced; tests/foundation/test_packaging.py builds
# without the filter and fails on any deprecation warning about our packaging.
QUIET_BUILD := PYTHONWARNINGS="ignore:Editable installation"

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(QUIET_BUILD) $(PIP) install -q -c constraints.txt -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(QUIET_BUILD) $(PIP) install -q -c constraints.txt -e ".[dev]"
	@touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# runstack creates the first admin account itself and prints its login last, once the stack answers.
run: $(VENV)/.installed
	DEV_SECRETS=1 $(PY) manage.py migrate --noinput --verbosity 0
	DEV_SECRETS=1 $(PY) manage.py runstack

migrations-check: $(VENV)/.installed-dev
	@mkdir -p var/check
	DEV_SECRETS=1 VAR_DIR=var/check DATABASE_URL=sqlite:///var/check/db.sqlite3 $(PY) manage.py makemigrations --check --dry-run

# Headless Chromium for the browser tests (Debian package; Playwright drives it, nothing is downloaded).
browser:
	@command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }

test: $(VENV)/.installed-dev migrations-check
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# The inner loop: in-process tests only. It skips the fault-injection and browser suites and every test that
# starts a process (a worker, a server, manage.py: the `processes` marker, set in tests/conftest.py).
test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m "not reliability and not browser and not processes" $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(VENV)/.installed-dev
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf var/test var/check .pytest_cache
