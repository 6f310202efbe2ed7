# mfcd developer entry points. `make run` starts the daemon with local paths; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := $(shell grep -v '^\#' .ci/apt-packages)

.PHONY: deps venv run test unit lint demo bench clean

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

# Runs the daemon in the foreground with dev/mfcd.conf (socket and state under .run/).
# In a second shell: .venv/bin/mfcctl --socket .run/mfcd.sock show
run: venv
	mkdir -p .run
	$(VENV)/bin/mfcd --config dev/mfcd.conf

lint: venv
	$(VENV)/bin/ruff check src tests bench lab
	$(VENV)/bin/ruff format --check src tests bench lab
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest -q tests/unit

# Everything: lint, type checks, unit tests, and (as root) the namespace, package and benchmark smoke tests.
test: venv lint
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) .run build dist src/*.egg-info .mypy_cache .ruff_cache .pytest_cache
