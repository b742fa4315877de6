# Every target creates .venv when absent and installs what it needs into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q
# A CPU build of exactly this torch is what the parity tests need; an unpinned torch would
# pull several GB of CUDA packages.
TORCH ?= torch==2.13.0

.PHONY: demo test bench-sampler clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

$(VENV)/.core: $(PY) setup.py constraints.txt
	$(PIP) -c constraints.txt -e .
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(PIP) $(TORCH)
	$(PIP) -c constraints.txt -e ".[test]"
	touch $@

# pytest exits 5 when it collects no tests: that is a failure here, not a pass.
test: $(VENV)/.test
	@$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

clean:
	rm -rf $(VENV) .cache *.egg-info
