# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= frontdesk.toml

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Every channel's SDK ([all]); `pip install frontdesk` alone is the core (email), and
# frontdesk[twilio], [telegram], [slack], [imap] add one part each.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[all]'
	touch $@

# [test] includes [all].
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	@test -f $(CONFIG) || $(BIN)/frontdesk init -c $(CONFIG)
	$(BIN)/frontdesk db upgrade -c $(CONFIG)
	exec $(BIN)/frontdesk run -c $(CONFIG)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks.smtp_ingest

clean:
	rm -rf $(VENV) build *.egg-info
