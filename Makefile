# make run   — install into .venv and start the server on http://127.0.0.1:8000 with demo data
# make test  — install everything the tests need (chromium included) and run the whole suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint browser bench clean

$(VENV)/.run-installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.run-installed requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: $(VENV)/.run-installed
	$(PY) app.py serve --host $(HOST) --port $(PORT)

# Debian's chromium for the browser tests (Playwright cannot download browsers here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .

test: $(VENV)/.dev-installed browser lint
	$(PY) -m pytest

bench: $(VENV)/.dev-installed
	$(PY) benchmarks/fanout.py

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
