# `make demo` and `make test` each build .venv from nothing on a machine that has
# only Python 3.10+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench references clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps re-run the install whenever pyproject.toml changes.
$(VENV)/.demo: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.demo
	$(BIN)/python -m cadence demo

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q --nbmake notebooks

# The parity references (test-only; `make bench` compares against torch too):
# torch, transformers, timm, schedulefree, bitsandbytes, and the client
# frameworks flax and equinox. torch is pinned to the CPU build that this
# machine's package index serves, and installed first so that bitsandbytes and
# schedulefree find it; timm is installed without its torchvision dependency,
# which has no CPU build here: the tests load timm's modules directly.
references: $(VENV)/.test
	$(BIN)/python -m pip install --quiet torch==2.13.0 transformers
	$(BIN)/python -m pip install --quiet --no-deps timm
	$(BIN)/python -m pip install --quiet schedulefree==1.4.1 bitsandbytes flax equinox

bench: references
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build dist
