# mfcd developer entry points. `make run` starts the daemon with local paths; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := $(shell grep -v '^\#' .ci/apt-packages)

.PHONY: deps venv run test unit lint demo bench bench-quick docs man clean

# System packages (needs root); skipped when everything is already installed.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; fi

$(VENV)/.done: pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q -e .
	touch $@

venv: $(VENV)/.done

# Runs the daemon in the foreground with dev/mfcd.conf (socket and state under /run/mfcd-dev/).
# In a second shell: .venv/bin/mfcctl --socket /run/mfcd-dev/mfcd.sock show
run: venv
	$(VENV)/bin/mfcd --config dev/mfcd.conf

CODE := $(wildcard src tests bench lab docs/*.py)

lint: venv
	$(VENV)/bin/ruff check $(CODE)
	$(VENV)/bin/ruff format --check $(CODE)
	$(VENV)/bin/mypy $(CODE)

unit: venv
	$(VENV)/bin/pytest -q tests/unit

# Everything: lint, type checks, unit tests, and (as root) the namespace, package and benchmark smoke tests.
test: venv lint
	$(VENV)/bin/pytest -q

# A guided tour in private namespaces: builds a small network, starts mfcd, routes, sends, cleans up.
demo: venv
	$(PY) -m lab.demo

# The full benchmark against smcroute and the raw kernel loop (up to 1,000,000 routes: about
# 15 minutes on 2 cores); results in bench/results/. BENCH_ARGS="--max-n 300000".
BENCH_ARGS ?=
bench: venv
	$(PY) bench/run.py $(BENCH_ARGS)

bench-quick: venv
	$(PY) bench/run.py --quick

# The documentation site (offline, warnings are errors) and the committed man pages.
docs: venv
	$(VENV)/bin/sphinx-build -q -W -b html docs docs/_build/html

man: venv
	$(PY) docs/build_man.py

clean:
	rm -rf $(VENV) .run build dist src/*.egg-info .mypy_cache .ruff_cache .pytest_cache
