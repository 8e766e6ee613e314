# The README's two commands: `make demo` (set up + run the offline main job) and `make test` (set up + tests).
# Set-up installs the pinned CPU torch wheel first so that the package's `torch>=2.3` range pulls nothing more.
# Override with e.g. `make TORCH_PIN='torch==2.5.1' test` or `make TORCH_PIN= test` to keep your own torch.
PYTHON ?= python3
VENV ?= .venv
TORCH_PIN ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.tractable-installed
PYTEST_ARGS ?=

# Avoid the 100-1000x OpenMP stalls of busy-waiting threads on small VMs.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup demo test test-all bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@if [ -n "$(TORCH_PIN)" ]; then $(PIP) install -q "$(TORCH_PIN)"; fi
	$(PIP) install -q -e '.[dev,plot]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tractable demo

test: $(STAMP)
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -n 2 -m '' $(PYTEST_ARGS)

bench: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/tract_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
