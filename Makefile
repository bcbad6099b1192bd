# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, and only if missing: a bare `torch` requirement would pull a multi-GB CUDA build.
	# To choose the build (CPU, a CUDA version), install torch into .venv first: this step then keeps it.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# The main job on the embedded default: every method on the shapes world's shipped base model (<= 15 min, CPU).
demo: $(STAMP)
	$(VENV)/bin/trl-rpo demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest tests

lint: $(STAMP)
	$(VENV)/bin/ruff check trl_rpo tests examples benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
