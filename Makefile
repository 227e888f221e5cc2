# The two commands the README opens with: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test test-all test-slow lint typecheck schemas clean

setup:
	@deploy/setup-local.sh $(VENV)

demo: setup  ## start the local stack, stream real listings, print their tags, stop
	$(VENV)/bin/tagloop demo

test: setup lint typecheck  ## the default suite (unit + integration + e2e on the real stack)
	$(PY) -m pytest -m "not slow" -q --durations=15  # the slowest tests: what to move to test-slow

test-slow: setup  ## long fault tests and quality runs
	$(PY) -m pytest -m slow -q || [ $$? -eq 5 ]  # exit 5: no slow tests selected

test-all: setup lint typecheck
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check shared services bench tests

typecheck: setup
	$(VENV)/bin/mypy shared services

schemas: setup
	$(VENV)/bin/tagloop schemas write

clean:
	-$(VENV)/bin/tagloop dev down
	rm -rf .tagloop .pytest_cache .mypy_cache .ruff_cache
