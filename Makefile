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

.PHONY: install demo test bench e2e
install: $(BIN)/.installed

## build the corpus from the bundled demo web (local Ray, 127.0.0.1) into ./mella_out
demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python jobs/build_corpus.py

## the whole loop on the demo corpus (docs/training.md): a tiny RANDOM Qwen2-VL base (it also captions D_ling), a
## tiny Marian (translates) and a tiny COMETKiwi (QE), one LoRA adapter per language (jobs/train.py), the Serve
## app, evaluate base vs adapters (keyword accuracy; BLEU / ROUGE-L / METEOR on D_ling), the Table-3 report
E2E ?= mella_e2e
E2E_LANGS ?=
# D_ling target languages (default: each image's page language)
E2E_DLING_LANGS ?=
# the tiny models' budgets: Qwen2-VL images at 56²..112² px, short captions and translations; four D_ling actor
# pools at 0.25 CPU leave Ray Data's read and write tasks a CPU on 2 cores (as tests/test_dling.py does)
E2E_DLING_SET ?= d_ling.caption.mllm.min_pixels=3136 d_ling.caption.mllm.max_pixels=12544 \
  d_ling.caption.generation.max_new_tokens=16 d_ling.caption.generation.min_new_tokens=8 \
  d_ling.caption.generation.repetition_penalty=1.5 d_ling.translate.seq2seq.generation.max_new_tokens=16 \
  d_ling.translate.seq2seq.generation.min_new_tokens=6 d_ling.categorise.num_cpus=0.25 d_ling.caption.num_cpus=0.25 \
  d_ling.translate.num_cpus=0.25 d_ling.qe.num_cpus=0.25
e2e: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python jobs/make_tiny_model.py --backbone qwen2-vl --output $(E2E)/base-tiny-qwen2-vl
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python jobs/make_tiny_model.py --backbone marian --output $(E2E)/tiny-marian
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python jobs/make_tiny_model.py --backbone cometkiwi --output $(E2E)/tiny-cometkiwi
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python jobs/build_corpus.py --output $(E2E)/corpus -q \
	  --d-ling --caption-model $(E2E)/base-tiny-qwen2-vl --mt-backend seq2seq --mt-model $(E2E)/tiny-marian \
	  $(if $(E2E_DLING_LANGS),--translate-to $(E2E_DLING_LANGS)) d_ling.qe.model_path=$(E2E)/tiny-cometkiwi/kiwi $(E2E_DLING_SET)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python jobs/e2e.py --data $(E2E)/corpus --model $(E2E)/base-tiny-qwen2-vl --output $(E2E) $(if $(E2E_LANGS),--langs $(E2E_LANGS))

## the whole test suite (pytest's "no tests collected", exit 5, counts as success)
test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc
