# cascade — the two commands a fresh machine needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SGLANG_VERSION := 0.5.23
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup run test unit lint bench live redis-server chromium contract-deps clean

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "cascade needs Python 3.11+"'
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "installing python3-venv"; $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PIP) install -q -U pip
	$(PIP) install -q -e '.[dev,video]'
	@touch $@

setup: $(VENV)/.installed

# SGLang's own request/response models and parsers, for the contract suite: the package itself
# without its (GPU) dependencies, plus the few packages those modules import.
$(VENV)/.contract: $(VENV)/.installed tests/contract/requirements.txt
	$(PIP) install -q --no-deps sglang==$(SGLANG_VERSION)
	$(PIP) install -q -r tests/contract/requirements.txt
	@touch $@

contract-deps: $(VENV)/.contract

redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server"; $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq redis-server; }

# The status page's browser test drives Debian's chromium (Playwright's own browser downloads
# are not used: tests launch /usr/bin/chromium).
chromium:
	@command -v chromium >/dev/null || { \
	  echo "installing chromium"; $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq chromium; }

run: setup redis-server
	$(VENV)/bin/cascade up

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app tools workers

test: contract-deps redis-server chromium lint
	$(PY) -m pytest -q

# The fast loop while editing: unit tests only (no Redis, no subprocess servers), under 15 s.
unit: setup
	$(PY) -m pytest -q tests/unit

# Against a real runtime (not part of `make test`, which has none): the doctor's checks, then a
# short end-to-end run (session, tools, image, batch of 10) through a temporary `cascade up`.
live: setup redis-server
	@[ -n "$$CASCADE_LIVE_RUNTIME_URL" ] || { \
	  echo "make live: set CASCADE_LIVE_RUNTIME_URL (and CASCADE_LIVE_RUNTIME_API_KEY if needed)"; \
	  exit 2; }
	env CASCADE_RUNTIME_URL="$$CASCADE_LIVE_RUNTIME_URL" \
	  $${CASCADE_LIVE_RUNTIME_API_KEY:+CASCADE_RUNTIME_API_KEY="$$CASCADE_LIVE_RUNTIME_API_KEY"} \
	  $(PY) -m app.cli doctor
	$(PY) -m tests.live

bench: setup redis-server
	$(PY) -m tests.bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
