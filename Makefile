# Two commands do all the set-up (README):  make demo   |   make test   (then: make e2e, docs/training.md)
# Both create .venv on first use (torch 2.14.1 + torchvision 0.29.1 first, from the machine's disk).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: install demo test bench e2e reproduce-tiny
install: $(BIN)/.installed

## build the corpus from the bundled demo web (local Ray, 127.0.0.1) into ./mella_out
demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python jobs/build_corpus.py

## the whole loop on the demo corpus (docs/training.md): a tiny RANDOM Qwen2-VL base, one LoRA adapter per
## language (jobs/train.py), the Serve app, evaluate base vs adapters, the Table-3 report; into $(E2E)/
E2E ?= mella_e2e
E2E_LANGS ?=
e2e: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python jobs/build_corpus.py --output $(E2E)/corpus -q
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python jobs/make_tiny_model.py --backbone qwen2-vl --output $(E2E)/base-tiny-qwen2-vl
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python jobs/e2e.py --data $(E2E)/corpus --model $(E2E)/base-tiny-qwen2-vl --output $(E2E) $(if $(E2E_LANGS),--langs $(E2E_LANGS))

## the paper's grid (jobs/reproduce.py, experiments/tiny.yaml) on the demo corpus with D_ling (captioned and
## translated by the tiny random Qwen2-VL) and tiny RANDOM checkpoints of both backbones, on the CPU: Tables 3, 4, 5, 8
## in $(REPRO)/tables.md. A second run skips every finished cell (docs/experiments.md)
REPRO ?= mella_repro
REPRO_ARGS ?=
reproduce-tiny: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python jobs/make_tiny_model.py --backbone qwen2-vl --output $(REPRO)/base-tiny-qwen2-vl
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python jobs/make_tiny_model.py --backbone internvl2 --output $(REPRO)/base-tiny-internvl2
	test -f $(REPRO)/corpus/funnel.json -a -d $(REPRO)/corpus/d_ling || PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python \
	  jobs/build_corpus.py --output $(REPRO)/corpus -q --d-ling --caption-model $(REPRO)/base-tiny-qwen2-vl \
	  --mt-backend mllm --translate-to hu,cs
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python jobs/reproduce.py --config experiments/tiny.yaml --output $(REPRO) \
	  data=$(REPRO)/corpus backbones.qwen2-vl=$(REPRO)/base-tiny-qwen2-vl \
	  backbones.internvl2=$(REPRO)/base-tiny-internvl2 $(REPRO_ARGS)

## the whole test suite (pytest's "no tests collected", exit 5, counts as success)
test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc
