# Two entry points for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test

.PHONY: run test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(TSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(STAMP)

# Run the daemon in the foreground on the bundled jobs/ (Ctrl-C stops every job cleanly).
run: $(STAMP)
	mkdir -p run/logs run/state
	$(BIN)/taskmasterd --jobs-dir jobs --log-dir run/logs --state-dir run/state

# The whole test suite, a test file per worker on every core (pytest-xdist). Tools it takes
# from Debian, as tool:package: systemd-analyze checks the unit files, curl sends the
# cross-protocol HTTP request and scrapes the metrics endpoint as a monitoring system would,
# faketime steps a daemon's wall clock, tmux is the real terminal in which taskmasterctl top is
# run and its screen read.
# Missing ones are installed when possible; otherwise the tests that need them are skipped.
TEST_TOOLS := systemd-analyze:systemd curl:curl faketime:faketime tmux:tmux
test: $(TSTAMP)
	@for pair in $(TEST_TOOLS); do tool=$${pair%%:*}; package=$${pair#*:}; \
	  command -v $$tool >/dev/null 2>&1 || { \
	  command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$package >/dev/null) || \
	  echo "warning: $$tool unavailable; the tests that need it will be skipped"; }; done
	$(BIN)/python -m pytest -n auto --dist loadfile $(PYTEST_ARGS)

# Benchmarks are run by hand; supervisord is installed only to compare capture rates in the same run.
bench: $(TSTAMP)
	$(BIN)/pip install --quiet supervisor
	for script in bench/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) run
