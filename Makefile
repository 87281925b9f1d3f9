# One entry point for developers and CI. `make test` must pass on a fresh machine as root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SITE = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PYTEST_ARGS ?=

.PHONY: all venv build test lint typecheck pytest clean

all: test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# Make the checkout's `tests` package (the harness) importable from anywhere via this venv.
	echo "$(CURDIR)" > "$(SITE)/nitrokms-checkout.pth"
	touch $@

venv: $(STAMP)

# Compiled helpers the tests and the harness need.
NSM_PRELOAD := build/libnsmsim.so

build: venv $(NSM_PRELOAD)

$(NSM_PRELOAD): tests/harness/nsm/preload.c
	mkdir -p $(@D)
	gcc -shared -fPIC -O2 -Wall -Wextra -Werror -o $@ $< -ldl -lpthread

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

pytest: build
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache .hypothesis
