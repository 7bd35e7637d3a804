# Two commands on a fresh machine (Python 3.11+, Node.js 20+, and redis-server or root to install it):
#   make demo   runs the content-moderation workflow end to end on local emulators
#   make test   runs the whole suite
# Everything else is installed here, into .venv and node_modules.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help deps demo dev test test-fast lint bench fuzz mutate clean check-tools

help:
	@echo "make demo    run a real workflow end to end on local emulators (Azurite, Cosmos stand-in, Redis)"
	@echo "make test    run the whole test suite (unit, integration, end-to-end, infra)"
	@echo "make dev     serve the Functions app on http://localhost:7071/api against local emulators"
	@echo "make lint    ruff and mypy"
	@echo "make bench   benchmarks (in-process and distributed) printing throughput and requests per node"
	@echo "make fuzz    SEED=0 N=100: differential fuzzing (reference vs in-process vs distributed, with faults)"
	@echo "make mutate  mutation testing of the core rule modules (slow, not in CI; see docs/testing.md)"

check-tools:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null || \
		{ echo "error: Python 3.11+ is required as '$(PYTHON)' (set PYTHON=/path/to/python3.11)"; exit 1; }
	@command -v node >/dev/null 2>&1 || { echo "error: Node.js 20+ is required for the local emulators (node not on PATH)"; exit 1; }
	@command -v npm >/dev/null 2>&1 || { echo "error: npm is required for the local emulators (npm not on PATH)"; exit 1; }
	@node -e 'process.exit(parseInt(process.versions.node) >= 20 ? 0 : 1)' || \
		{ echo "error: Node.js 20+ is required, found $$(node --version)"; exit 1; }
	@command -v redis-server >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing redis-server (apt-get)"; \
			(apt-get install -y -q redis-server >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null)) \
			|| { echo "error: could not install redis-server with apt-get"; exit 1; }; \
		else \
			echo "error: redis-server is required on PATH (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis)"; exit 1; \
		fi; }
	@# The run view's browser test drives Debian's chromium with Playwright (never `playwright install`).
	@test -x /usr/bin/chromium || { \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing chromium (apt-get)"; \
			(apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) \
			|| { echo "error: could not install chromium with apt-get"; exit 1; }; \
		else \
			echo "error: /usr/bin/chromium is required for the run view's browser test (Debian/Ubuntu: sudo apt-get install chromium)"; exit 1; \
		fi; }

$(VENV)/.deps: requirements.txt requirements-dev.txt
	@$(MAKE) --no-print-directory check-tools
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@

node_modules/.deps: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

deps: check-tools $(VENV)/.deps node_modules/.deps

demo: deps
	$(PY) scripts/demo.py

dev: deps
	$(PY) scripts/dev.py --port 7071

test: deps
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: deps
	$(PY) -m pytest -m "not slow and not emulators" $(PYTEST_ARGS)

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: deps
	$(PY) bench/inprocess.py
	$(PY) bench/distributed.py
	$(PY) bench/cosmos_latency.py

# Not part of `make test` (which runs the fixed seed set in tests/differential): N more seeds from SEED,
# distributed with faults; every disagreement is shrunk and printed. FUZZ_ARGS=--inprocess-only skips Azure.
SEED ?= 0
N ?= 100
FUZZ_ARGS ?=
fuzz: deps
	$(PY) -m tests.differential.fuzz --seed $(SEED) -n $(N) $(FUZZ_ARGS)

# Mutation testing (docs/testing.md): mutmut mutates the rule modules listed in pyproject.toml's
# [tool.mutmut] in a copy (mutants/, whose node_modules links to ours for the emulators) and runs the tests
# reaching each mutant. MUTANTS picks which (fnmatch patterns on mutant names; the default is the rule
# functions, about 40 minutes on 2 busy cores; MUTANTS='*' is all of them, several hours); MUTATE_JOBS workers.
MUTATE_JOBS ?= 2
MUTANTS ?= $(MUTATE_RULES)
MUTATE_RULES := 'flowcraft_core.routing.*' \
	'flowcraft_core.memory.x_decide_gate*' 'flowcraft_core.memory.xǁInMemoryRunStoreǁcommit*' \
	'flowcraft_core.memory.xǁInMemoryRunStoreǁreplace*' 'flowcraft_core.memory.xǁInMemoryStatusStoreǁfinalize*' \
	'flowcraft_core.memory.xǁInMemoryStatusStoreǁset_status*' 'flowcraft_core.memory.xǁInMemoryCoordinationStoreǁarrive*' \
	'flowcraft_core.memory.xǁInMemoryCoordinationStoreǁclaim*' \
	'flowcraft_core.memory.xǁInMemoryCoordinationStoreǁresolve_terminal*' \
	'flowcraft_core.protocols.x_change_status*' 'flowcraft_core.protocols.x_fold_context*' \
	'flowcraft_core.protocols.x_apply_record*' \
	'flowcraft_core.azure.cosmos.xǁCosmosStatusStoreǁ_conditional_update*' \
	'flowcraft_core.azure.redis_store.xǁRedisCoordinationStoreǁarrive*' \
	'flowcraft_core.executor.xǁNodeExecutorǁ_attempts*' \
	'flowcraft_core.engine.xǁEngineǁ_arrive*' 'flowcraft_core.engine.xǁEngineǁ_resolve_terminal*' \
	'flowcraft_core.engine.xǁEngineǁ_complete_run*' 'flowcraft_core.engine.xǁEngineǁ_claim_join*' \
	'flowcraft_core.engine.x__scheduled*' 'flowcraft_core.engine.xǁEngineǁ_skip*'

mutate: deps
	rm -rf mutants
	mkdir -p mutants
	ln -s ../node_modules mutants/node_modules
	$(VENV)/bin/mutmut run --max-children $(MUTATE_JOBS) $(MUTANTS)
	$(PY) scripts/mutation_report.py

clean:
	rm -rf $(VENV) node_modules .emulators .pytest_cache .mypy_cache .ruff_cache .fuzz mutants
