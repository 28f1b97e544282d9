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

# The whole test suite. systemd-analyze (Debian package systemd) checks the unit file; curl
# scrapes the metrics endpoint as a monitoring system would.
test: $(TSTAMP)
	@missing=""; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	[ -z "$$missing" ] || { \
	  command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) || \
	  echo "warning: could not install$$missing; the tests that need them will be skipped"; }
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Benchmarks are run by hand; supervisord is installed only to compare capture rates in the same run.
bench: $(TSTAMP)
	$(BIN)/pip install --quiet supervisor
	for script in bench/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) run
