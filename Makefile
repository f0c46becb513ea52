# Two commands do all the set-up (README):  make demo   |   make test
# Both create .venv on first use (torch 2.13.0 CPU build first, so nothing pulls CUDA wheels).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: install demo test bench
install: $(BIN)/.installed

## build the corpus from the bundled demo web (local Ray, 127.0.0.1) into ./mella_out
demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python jobs/build_corpus.py

## the whole test suite (pytest's "no tests collected", exit 5, counts as success)
test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc
