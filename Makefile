# Roost: the two commands of a fresh machine are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit docs clean install

# make install: a virtual environment under $(PREFIX) (pip), then `roost setup`.
# DESTDIR stages everything under another directory (the tests install into a temp dir);
# SETUP_ARGS adds options to `roost setup` (e.g. --mail-owner NAME, --force-links).
PREFIX     ?= /opt/roost
DESTDIR    ?=
LINKPREFIX ?= /usr
SETUP_ARGS ?=

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

## install: as root, install roost under $(PREFIX) and prepare the host (docs/install.md)
install:
	$(PYTHON) -m venv $(DESTDIR)$(PREFIX)
	$(DESTDIR)$(PREFIX)/bin/pip install --quiet .
	install -d -m 0755 $(DESTDIR)$(PREFIX)/share/doc/roost $(DESTDIR)$(PREFIX)/share/roost
	install -m 0644 docs/*.md README.md $(DESTDIR)$(PREFIX)/share/doc/roost/
	install -m 0644 etc/roost.service etc/roost-vmail.service $(DESTDIR)$(PREFIX)/share/roost/
	install -d -m 0755 $(DESTDIR)/etc/pam.d
	test -e $(DESTDIR)/etc/pam.d/roost || install -m 0644 etc/pam.d/roost $(DESTDIR)/etc/pam.d/roost
	$(DESTDIR)$(PREFIX)/bin/roost setup --roost $(PREFIX)/bin/roost --prefix $(LINKPREFIX) \
		$(if $(DESTDIR),--destdir $(DESTDIR)) $(SETUP_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
