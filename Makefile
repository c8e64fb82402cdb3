# Two commands a new user needs: `make repro` (whole pipeline on the phantom) and `make test`.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export TF_CPP_MIN_LOG_LEVEL := 3
export PYTHONHASHSEED := 0

.PHONY: setup repro test bench lint clean-venv

setup: $(STAMP)

# Reinstalls only when the pins change, so a second `make setup` is instant.
$(STAMP): requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

repro: setup
	dvc repro

test: setup
	python -m pytest -n 2 --dist loadfile -q

bench: setup
	set -e; for script in benchmarks/*.py; do echo "== $$script"; python $$script; done

lint: setup
	ruff check .

clean-venv:
	rm -rf $(VENV)
