# Two commands for a fresh machine: `make quickstart` and `make test`.
# Both create .venv if missing and (re)install only when pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
ANALYSIS_STAMP := $(VENV)/.installed-analysis
ANALYSIS_OUT ?= runs/analysis
PYTEST_ARGS ?=

.PHONY: quickstart test test-slow lint install install-dev analysis clean-playground

quickstart: $(RUN_STAMP)
	$(VENV)/bin/vitsplit-vlm quickstart

test: $(DEV_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: $(DEV_STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# The README's analysis figures (Figs. 3-4 on the tiny pretrained DINOv2 and a playground
# segmentation run on it; ~15 CPU minutes the first time): ANALYSIS_OUT=docs/analysis redraws them.
analysis: $(ANALYSIS_STAMP)
	$(VENV)/bin/vitsplit-vlm make-tiny --pretrain
	$(VENV)/bin/vitsplit-vlm analyze cka --out $(ANALYSIS_OUT)
	test -f runs/analysis/seg-run/checkpoint.pt || $(VENV)/bin/vitsplit-vlm dense train \
		--task seg --preset playground --backbone playground/tiny/dinov2-pretrained \
		--task-head-lr-mult 1 --out runs/analysis/seg-run
	$(VENV)/bin/vitsplit-vlm analyze feature-maps --checkpoint runs/analysis/seg-run/checkpoint.pt \
		--max-images 3 --size 224 --out $(ANALYSIS_OUT)

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

$(ANALYSIS_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --quiet -e '.[analysis]'
	touch $@ $(RUN_STAMP)

$(DEV_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --quiet -e '.[dev]'
	touch $@ $(RUN_STAMP)

clean-playground:
	rm -rf playground/tiny playground/data playground/feature-cache
