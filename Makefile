# Two commands a new user needs: `make repro` (whole pipeline on the phantom) and `make test`.
PYTHON ?= python3.11
VENV := .venv
# Which TensorFlow build: cpu (requirements.txt, the default) or cuda (requirements-cuda.txt:
# tensorflow[and-cuda] and its NVIDIA wheels). A venv set up for cuda stays cuda until
# `make setup ACCEL=cpu`, so `make test` after `make setup ACCEL=cuda` keeps the GPU build.
ACCEL ?= $(if $(wildcard $(VENV)/.installed-cuda),cuda,cpu)
LOCK_cpu := requirements.txt
LOCK_cuda := requirements-cuda.txt
# Both builds ship the same `tensorflow` package folder: remove the other one first.
OTHER_TENSORFLOW_cpu := tensorflow
OTHER_TENSORFLOW_cuda := tensorflow-cpu
LOCK := $(LOCK_$(ACCEL))
ifeq ($(LOCK),)
$(error ACCEL must be cpu or cuda, not '$(ACCEL)')
endif
# `.installed` marks the CPU build (as before ACCEL existed, so existing venvs stay current).
STAMP_cpu := $(VENV)/.installed
STAMP_cuda := $(VENV)/.installed-cuda
STAMP := $(STAMP_$(ACCEL))
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export TF_CPP_MIN_LOG_LEVEL := 3
export PYTHONHASHSEED := 0

.PHONY: setup repro test system-packages bench lint lock-cuda clean-venv

setup: $(STAMP)

# Reinstalls only when the pins (or ACCEL) change, so a second `make setup` is instant.
$(STAMP): $(LOCK)
	@if [ $(ACCEL) = cpu ] && command -v nvidia-smi >/dev/null 2>&1; then \
	  echo "note: nvidia-smi found; 'make setup ACCEL=cuda' installs TensorFlow for the GPU"; fi
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip uninstall --quiet --yes $(OTHER_TENSORFLOW_$(ACCEL))
	$(VENV)/bin/python -m pip install --quiet -r $(LOCK)
	rm -f $(STAMP_cpu) $(STAMP_cuda)
	touch $(STAMP)

# Regenerates requirements-cuda.txt from requirements.in and requirements.txt (needs the index).
lock-cuda: setup
	python tools/cuda_lock.py

repro: setup
	dvc repro

# Chromium, its driver and sshd come from Debian: installed when missing and possible, else
# a stop with what to install, before anything else (tools/system_packages.sh).
test: system-packages setup
	python -m pytest -n 2 --dist loadfile -q

system-packages:
	bash tools/system_packages.sh

# These two measure against a folder of real slices (--real DIR), which a clone does not hold.
REAL_CT_BENCHMARKS := benchmarks/realism.py benchmarks/real_transfer.py
# These need a workspace after `dvc repro`: the first trains the model once per seed, the
# second scores its trained model.
WORKSPACE_BENCHMARKS := benchmarks/training_seeds.py benchmarks/lesion_kinds.py
# This compares the runs training_seeds.py leaves (--baseline RUN... --candidate RUN...).
COMPARISON_BENCHMARKS := benchmarks/seed_compare.py

bench: setup
	set -e; for script in $(filter-out $(REAL_CT_BENCHMARKS) $(WORKSPACE_BENCHMARKS) $(COMPARISON_BENCHMARKS),$(wildcard benchmarks/*.py)); do \
	  echo "== $$script"; python $$script; done

lint: setup
	ruff check .

clean-venv:
	rm -rf $(VENV)
