# Roost: the two commands of a fresh machine are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,fast]'
	touch $(STAMP)

## run: create (once) the demo instance under ./var/ and run the daemon in the foreground
run: $(STAMP)
	$(BIN)/roost demo --dir var

## test: ruff, mypy --strict over src/, and pytest
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/ruff format --check src tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

unit: $(STAMP)
	$(BIN)/pytest -q

## docs: regenerate docs/configuration.md from the parameter table
docs: $(STAMP)
	$(BIN)/roost conf --markdown > docs/configuration.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
