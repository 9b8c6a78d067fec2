# Two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first.
# `make docs` builds the documentation into docs/_build/html (a warning fails it).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench docs clean

$(BIN)/taskmill: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

demo: $(BIN)/taskmill
	$(BIN)/taskmill run -n 4 examples/monte_carlo_pi.py

test: $(BIN)/taskmill
	.ci/install-debian-packages
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(BIN)/taskmill
	$(BIN)/pip install -q -e '.[bench,test]'
	$(BIN)/python benchmarks/compare.py

$(VENV)/.docs-installed: $(BIN)/taskmill
	$(BIN)/pip install -q -e '.[docs]'
	@touch $@

docs: $(VENV)/.docs-installed
	rm -rf docs/_build
	$(BIN)/python -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: open docs/_build/html/index.html"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis docs/_build
