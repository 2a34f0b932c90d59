# Two commands set everything up on a fresh machine:
#   make demo   - create .venv, install mtlda, train + evaluate the multi-task demo on built-in toycity data
#   make test   - create/update .venv, install the test extras, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --no-cache-dir -e .
	touch $@

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-cache-dir -e ".[test]"
	touch $@

venv: $(STAMP)

# A second `make demo` continues (or, when finished, re-evaluates) the demo's run instead of starting it over.
DEMO_RUN := runs/toycity_sdn_mteb/s0
demo: $(STAMP)
	$(PY) scripts/supervised.py $(if $(wildcard $(DEMO_RUN)/last.pt),--resume)

test: $(TEST_STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
