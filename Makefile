# backup-agent: every target installs what it needs first, so a fresh Debian machine needs only `make`.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: setup system-deps test lint demo bench install install-user clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	bash scripts/install-system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

lint: setup
	$(VENV)/bin/ruff check agent tests scripts $(wildcard bench)
	$(VENV)/bin/ruff format --check agent tests scripts $(wildcard bench)
	$(VENV)/bin/mypy

test: setup
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest

# the agent and its runtime dependencies only: no test extras, no database servers (the demo uses SQLite)
demo: $(VENV)/.installed-runtime
	$(PY) scripts/demo.py

$(VENV)/.installed-runtime: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e .
	touch $@

bench: setup
	$(PY) bench/run.py

# as root: user, folders, /opt/backup-agent, the systemd unit (enabled, not started); see docs/operations.md.
# DESTDIR=DIR installs into DIR only; INSTALL_FLAGS="--dry-run" shows every step and changes nothing.
install:
	DESTDIR="$(DESTDIR)" bash scripts/install.sh $(INSTALL_FLAGS)

# no root, no systemd: a virtualenv, config, storage and log under your home, and the crontab lines that
# keep `backup-agent run` alive (INSTALL_FLAGS="--cron" adds them to your crontab); see README.md.
install-user:
	bash scripts/install.sh --user $(INSTALL_FLAGS)

clean:
	rm -rf $(VENV) demo .pytest_cache .mypy_cache .ruff_cache
