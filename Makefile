# `make run`: set up everything on a fresh Debian 12 machine, then start the service.
# `make test`: the same set-up, then lint, type checks, import contracts and the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test check lint typecheck contracts alert-rules pytest system-deps test-deps venv \
	bench clean

run: system-deps venv
	$(VENV)/bin/triage up

test: system-deps test-deps venv check pytest

# Debian packages the service and its tests use as real peers; installed only when missing.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "Installing:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# Peers only the tests use: Orthanc as the PACS that receives our DICOM SR/KOS, Chromium and
# its driver for the worklist page, promtool (Debian's prometheus) for the alert rules.
# Debian starts Orthanc and Prometheus services listening on all interfaces on install; they
# are stopped and disabled again (the tests run their own Orthanc in a private network
# namespace; promtool needs no server).
test-deps:
	@missing=""; \
	command -v Orthanc >/dev/null || missing="$$missing orthanc"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  echo "Installing test peers:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	  case "$$missing" in *orthanc*) \
	    $(SUDO) systemctl disable --now orthanc 2>/dev/null || \
	    $(SUDO) service orthanc stop 2>/dev/null || true;; esac; \
	fi
	@if ! command -v promtool >/dev/null; then \
	  echo "Installing promtool (Debian's prometheus, without the recommended exporters)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    prometheus && \
	  { $(SUDO) systemctl disable --now prometheus 2>/dev/null || \
	    $(SUDO) service prometheus stop 2>/dev/null || true; }; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[worker,dev]'
	touch $@

check: lint typecheck contracts alert-rules

lint: venv
	$(VENV)/bin/ruff check triage workers models tests bench

typecheck: venv
	$(VENV)/bin/mypy

contracts: venv
	$(VENV)/bin/lint-imports

# The Prometheus alert rules: syntax, then their unit tests (promtool from Debian's prometheus).
alert-rules:
	promtool check config deploy/prometheus/prometheus.yml
	promtool check rules deploy/prometheus/rules/*.yml
	promtool test rules deploy/prometheus/tests/*.yml

pytest: venv
	TRIAGE_TEST_POSTGRES_URL="$$(deploy/dev/test-postgres.sh)" $(PY) -m pytest

# Needs root (private network namespace) and Debian's orthanc as a peer.  Debian starts an
# Orthanc service on install where systemd runs; it is stopped again, the benchmark runs its own.
bench: system-deps venv
	@command -v Orthanc >/dev/null || { \
	  echo "Installing orthanc (benchmark peer)"; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq orthanc; \
	  if command -v systemctl >/dev/null && systemctl is-active -q orthanc 2>/dev/null; then \
	    $(SUDO) systemctl disable --now orthanc; fi; }
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
