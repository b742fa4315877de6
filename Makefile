# Every target creates .venv when absent and installs what it needs into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q
# A CPU build of exactly this torch is what the parity tests need; an unpinned torch would
# pull several GB of CUDA packages.
TORCH ?= torch==2.13.0

.PHONY: demo pipeline test bench-sampler bench-step clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

$(VENV)/.core: $(PY) setup.py constraints.txt
	$(PIP) -c constraints.txt -e .
	touch $@

# The tests include the RL step benchmark's cross-check against TRL, hence the bench extra.
$(VENV)/.test: $(VENV)/.core
	$(PIP) $(TORCH)
	$(PIP) -c constraints.txt -e ".[test,bench]"
	touch $@

# The CPU demo: warm start + DAPO on a tiny model; prints held-out accuracy before / after RL
# and writes runs/demo_cpu/curves.png.
demo: $(VENV)/.core
	JAX_PLATFORMS=cpu $(VENV)/bin/r1jax-train --config=configs/demo_cpu.py

# The R1 pipeline on the demo task: cold-start SFT -> DAPO -> rejection sampling -> SFT -> RL,
# held-out accuracy after each stage, runs/pipeline/stages.png.
pipeline: $(VENV)/.core
	JAX_PLATFORMS=cpu $(PY) -m r1jax.pipeline --run_dir=runs/pipeline

bench-sampler: $(VENV)/.test
	JAX_PLATFORMS=cpu $(PY) -m r1jax.benchmarks.sampler

bench-step: $(VENV)/.test
	JAX_PLATFORMS=cpu $(PY) -m r1jax.benchmarks.step

# pytest exits 5 when it collects no tests: that is a failure here, not a pass. Tests run in
# PYTEST_WORKERS processes (pytest-xdist); most of their time is single-threaded compilation.
PYTEST_WORKERS ?= 2
test: $(VENV)/.test
	@$(PY) -m pytest -q -n $(PYTEST_WORKERS) tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

clean:
	rm -rf $(VENV) .cache *.egg-info
