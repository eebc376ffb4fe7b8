# make run   — install into .venv and start the server on http://127.0.0.1:8000 with demo data
# make test  — install everything the tests need (chromium included) and run the whole suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint system-packages bench bench-volume clean

$(VENV)/.run-installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.run-installed requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: $(VENV)/.run-installed
	$(PY) app.py serve --host $(HOST) --port $(PORT)

# Debian's packages the tests use: chromium for the browser tests (Playwright cannot
# download browsers here), redis-server for the BROKER_URL tests and nginx for
# deploy/nginx.conf. The tests start their own servers; the service Debian starts when it
# installs nginx is stopped again.
APT_NEEDS := $(if $(shell command -v chromium),,chromium) $(if $(shell command -v redis-server),,redis-server) \
	$(if $(shell command -v nginx || test -x /usr/sbin/nginx && echo yes),,nginx-light)
system-packages:
ifneq ($(strip $(APT_NEEDS)),)
	@echo "installing with apt-get: $(APT_NEEDS)"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_NEEDS) >/dev/null
	-service nginx stop >/dev/null 2>&1
endif

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .

test: $(VENV)/.dev-installed system-packages lint
	$(PY) -m pytest

# Fan-out at the machine's limit (issue 12): the reference load generator (../shared/bench,
# Node + ws, its node_modules in the gitignored benchmarks/.node/) against one `app.py serve`.
# Writes benchmarks/results/fanout.{json,png,md}. Options: make bench ARGS="--quick"
# (or --cases sweep,handshakes,..., --rates 1,2,4, --profile /path/to/py-spy; see --help)
BENCH_NODE := benchmarks/.node
$(VENV)/.bench-installed: $(VENV)/.run-installed requirements-bench.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	touch $@

$(BENCH_NODE)/.installed: ../shared/bench/package.json
	mkdir -p $(BENCH_NODE) && cp ../shared/bench/package.json $(BENCH_NODE)/package.json
	cd $(BENCH_NODE) && npm install --no-audit --no-fund --silent
	touch $@

bench: $(VENV)/.bench-installed $(BENCH_NODE)/.installed
	ulimit -n $$(ulimit -Hn) && BENCH_NODE_MODULES=$(CURDIR)/$(BENCH_NODE)/node_modules $(PY) benchmarks/fanout.py $(ARGS)

# A year of data (100,000 parcels, 1M locations) loaded once into benchmarks/.volume-data/,
# then every operation timed against 50 ms and 1,000 location updates/s sustained.
# Options: make bench-volume ARGS="--quick" (or --skip-load-test, --load-seconds N, --reload)
bench-volume: $(VENV)/.dev-installed $(BENCH_NODE)/.installed
	BENCH_NODE_MODULES=$(CURDIR)/$(BENCH_NODE)/node_modules $(PY) benchmarks/volume.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
