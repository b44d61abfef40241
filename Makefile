# make demo:      set up .venv on first use, then run the main job on the
#                 embedded data (teacher, heads, vanilla/KD/MHKD students).
# make test:      set up .venv (with the torch extra) and run every test.
# make test-fast: the fast tier (docs/testing.md): under 3 minutes here.
# make bench:     the JAX vs PyTorch step benchmark (experiments/), on the
#                 devices the installed wheels see: the CPU here.
# make bench-gpu: the same on an NVIDIA GPU: first installs the CUDA jaxlib
#                 (the `cuda` extra) into .venv.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_STAMP := $(VENV)/.installed-torch
DEMO_WORKDIR ?= demo_workdir

.PHONY: demo test test-fast bench bench-gpu clean

# What the demo needs: the pinned requirements and the package.
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The torch extra, for the tests and the benchmark (the PyTorch baseline
# and checkpoint import). This exact version is a local CPU wheel on these
# machines; an unpinned torch would pull a multi-GB CUDA build.
$(TORCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet torch==2.13.0
	touch $(TORCH_STAMP)

demo: $(STAMP)
	$(PY) -m mhkd_jax.tools.demo --workdir=$(DEMO_WORKDIR)

# Two pytest workers, a whole test file each (2 cores here; each worker's
# XLA uses every core it is given, so more workers than cores only adds
# memory), in the order tests/conftest.py gives (longest first; xdist's
# own order is most tests first, which put the few long multi-process
# tests last). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2

PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile \
	--no-loadscope-reorder

test: $(TORCH_STAMP)
	$(PYTEST) tests

# Everything not marked slow (multi-process, several students, parity
# against PyTorch, full runs): docs/testing.md says which tier when.
test-fast: $(TORCH_STAMP)
	$(PYTEST) -m 'not slow' tests

bench: $(TORCH_STAMP)
	$(PY) -m experiments.benchmark_step

# requirements.txt pins the CPU jaxlib, with which jax sees no GPU; the
# `cuda` extra (pyproject.toml) adds the CUDA 13 plugin and libraries.
# The torch stamp's torch==2.13.0 is a CUDA build where it comes from PyPI.
CUDA_STAMP := $(VENV)/.installed-cuda

$(CUDA_STAMP): $(TORCH_STAMP)
	$(PY) -m pip install --quiet -e '.[cuda]'
	touch $(CUDA_STAMP)

bench-gpu: $(CUDA_STAMP)
	$(PY) -m experiments.benchmark_step

clean:
	rm -rf $(VENV) $(DEMO_WORKDIR)
