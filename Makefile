# Two commands for a fresh machine: `make quickstart` and `make test`.
# Both create .venv if missing and (re)install only when pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=

.PHONY: quickstart test test-slow lint install install-dev clean-playground

quickstart: $(RUN_STAMP)
	$(VENV)/bin/vitsplit-vlm quickstart

test: $(DEV_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: $(DEV_STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check vitsplit_vlm tests benchmarks

install: $(RUN_STAMP)
install-dev: $(DEV_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --quiet -e '.[dev]'
	touch $@ $(RUN_STAMP)

clean-playground:
	rm -rf playground/tiny playground/data
