# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
DEMO_STAMP := $(VENV)/.installed-demo
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: demo test lint install clean

install: $(DEV_STAMP)

# One venv, two install sets: the demo needs the runtime only; tests, lint and docs need the dev extras.
$(VENV)/.torch:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, and only if missing: a bare `torch` requirement would pull a multi-GB CUDA build.
	# To choose the build (CPU, a CUDA version), install torch into .venv first: this step then keeps it.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	touch $@

$(DEMO_STAMP): $(VENV)/.torch setup.py constraints.txt
	$(PY) -m pip install --quiet -c constraints.txt -e ".[demo]"
	touch $@

$(DEV_STAMP): $(VENV)/.torch setup.py constraints.txt
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

# The main job on the embedded default: every method on the shapes world's shipped base model (14 min: 834 s measured on 2 CPU cores, a quiet machine).
demo: $(DEMO_STAMP)
	$(VENV)/bin/trl-rpo demo $(DEMO_ARGS)

test: $(DEV_STAMP)
	$(PY) -m pytest tests --durations=30

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check trl_rpo tests examples benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
