# The two commands (see README): `make run` and `make test`. Both bootstrap .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EVM_TOOLS := tools/evm/node_modules/.package-lock.json

.PHONY: run test lint bench install clean docs evm-tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## the server on embedded defaults (SQLite + in-process), http://127.0.0.1:8000
	$(BIN)/defi-realtime serve --sample  # an empty store first gets the packaged real-data sample

# Two test processes (pytest-xdist), each taking whole files: most tests wait on servers,
# services and subprocesses, so two share the machine's cores better than one.
# With npm on the machine, the on-chain tests' local chain and compiler come first (pinned);
# without it those tests skip, and fail under CI=true, as a missing service does.
test: $(STAMP) $(if $(shell command -v npm 2>/dev/null),$(EVM_TOOLS))  ## every test: unit, contract, property, integration (real services), e2e
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts examples
	$(BIN)/ruff format --check src tests bench scripts examples
	$(BIN)/mypy src
	$(BIN)/lint-imports

evm-tools: $(EVM_TOOLS)  ## the local EVM chain and compiler of the on-chain tests (ganache, solc: npm, pinned)

$(EVM_TOOLS): tools/evm/package-lock.json
	cd tools/evm && npm ci --no-audit --no-fund --loglevel=error

docs: $(STAMP)  ## regenerate docs/configuration.md's table from the settings model
	$(BIN)/python scripts/configuration_reference.py

bench: $(STAMP)
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_ws_latency.py

clean:
	rm -rf $(VENV) var .mypy_cache .pytest_cache .ruff_cache .hypothesis
