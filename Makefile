# The README's two commands. Each one sets everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-failover test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[jobs,dev,torch]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m zps.cli.demo

demo-failover: $(STAMP)
	$(PY) -m zps.cli.demo --failover --out out/demo-failover

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy zps
	$(VENV)/bin/mypy --explicit-package-bases bench

bench: $(STAMP)
	$(PY) bench/throughput.py

clean:
	rm -rf $(VENV) out bench/results
