# flexitok: two commands on a fresh machine:
#   make run    creates .venv if needed and runs the main job on the bundled default models
#   make test   creates .venv if needed and runs the default test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-v1
OUT ?= out/quickstart

.PHONY: run test test-slow lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch is pinned to the local CPU build; an unpinned torch would pull a multi-GB CUDA wheel.
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[eval,data,text,demo,tracking,dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/flexitok quickstart --out $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check flexitok tests benchmarks scripts
	$(BIN)/ruff format --check flexitok tests benchmarks scripts
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format flexitok tests benchmarks scripts
	$(BIN)/ruff check --fix flexitok tests benchmarks scripts

bench: $(STAMP)
	$(BIN)/flexitok bench tokenizer --preset tiny

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache
