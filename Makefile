# `make run` and `make test` each set up .venv on first use; nothing else needs installing.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
QUESTION ?= How many commune-level military party cells were established?

.PHONY: install run demo test test-fast lint format bench clean

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	# torch first and pinned: the CPU build on disk, never the multi-GB CUDA default.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	HF_HUB_OFFLINE=1 $(BIN)/rag serve

demo: install
	$(BIN)/rag index
	$(BIN)/rag search "$(QUESTION)" --k 3
	$(BIN)/rag ask "$(QUESTION)"

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# No real model: the scripted LLM, a hashing embedder, parsers, offsets, settings, layering.
test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	# LlamaIndex is the baseline of bench_embed_backends.py only, never a package dependency.
	$(BIN)/pip install --quiet -r bench/requirements-llamaindex.txt
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) index/CURRENT index/gen-* index/.tmp-* index/.lock
