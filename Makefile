# The two commands: `make run` serves the platform, `make test` checks it. Both start with setup.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup builtins run test lint bench bench-tools profile fuzz soak clean builtin-artifacts image image-test server-lock

# Dependencies, then the built-in models (trained / converted once, when not registered yet).
setup: $(STAMP) builtins

builtins: $(STAMP)
	$(BIN)/modelport builtins install

# Idempotent: reinstalls only when the lock or the project metadata changed.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: setup
	$(BIN)/modelport serve

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: setup lint
	$(BIN)/pytest --cov --cov-report=term-missing $(PYTEST_ARGS)

# Side by side with the bare floor and Seldon MLServer, one table (about 10 minutes; needs wrk,
# PostgreSQL and Redis, see benchmarks/README.md). BENCH_ARGS=--quick: a few seconds per cell.
BENCH_ARGS ?=
bench: setup bench-tools
	$(BIN)/python benchmarks/bench.py --profile $(BENCH_ARGS)

# wrk, the load generator (a Debian package; installed here when missing and we may).
bench-tools:
	@command -v wrk >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && apt-get install -y -qq wrk >/dev/null; } || \
	  { echo "make bench needs wrk: install it from your system's packages" >&2; exit 1; }

# Only the flame graph of a production worker at c=64, into benchmarks/profiles/.
profile: setup bench-tools
	$(BIN)/python benchmarks/bench.py --profile-only $(BENCH_ARGS)

# Longer than the fuzzing `make test` runs: FUZZ_EXAMPLES requests per operation and caller,
# every phase for every caller, and a new seed each run, printed so that a failure can be
# replayed with MODELPORT_FUZZ_SEED=<seed> make fuzz.
FUZZ_EXAMPLES ?= 100
fuzz: setup
	@seed=$${MODELPORT_FUZZ_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	echo "MODELPORT_FUZZ_SEED=$$seed"; \
	MODELPORT_FUZZ_SEED=$$seed MODELPORT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) MODELPORT_FUZZ_ALL_PHASES=1 \
		$(BIN)/pytest tests/fuzz -p no:cacheprovider $(PYTEST_ARGS)

# The whole system at saturation for SOAK_SECONDS (10 minutes): two servers and a job runner on
# PostgreSQL, a private redis-server and moto S3; reports errors, RSS growth (goal under 10 %),
# open files and database connections before and after (docs/reliability.md). Not in `make test`.
SOAK_SECONDS ?= 600
soak: setup
	SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python benchmarks/soak.py

# The container image (docs/deployment.md). The image holds no PyTorch: the ImageNet classifier
# is converted to ONNX here first and copied in from deploy/builtins/.
builtin-artifacts: $(STAMP)
	$(BIN)/python deploy/docker/convert_builtins.py

image: builtin-artifacts
	docker build -t modelport .

# Build the image against a base made from Debian's packages and smoke-test two containers of it
# against the local PostgreSQL and Redis (run by CI after `make test`).
image-test: $(STAMP)
	bash deploy/ci/image-test.sh

# After changing requirements.lock: the image's pinned subset of it.
server-lock: $(STAMP)
	$(BIN)/python deploy/docker/server_lock.py

# Where `make run` keeps its database, artifacts and JWT secret: the directory the server's
# settings resolve (so MODELPORT_VAR_DIR from the environment or .env counts), or its default
# when the venv is gone. Never the filesystem root, your home or this checkout.
VAR_DIR = $(or $(shell test -x $(BIN)/python && $(BIN)/python -c \
	'from modelport.settings import load_settings; print(load_settings().var_dir)' 2>/dev/null),\
	$(or $(MODELPORT_VAR_DIR),$(or $(XDG_STATE_HOME),$(HOME)/.local/state)/modelport))

# `var` is where versions before the state directory kept it, inside the checkout.
clean:
	@case "$(VAR_DIR)" in ""|/|"$(HOME)"|"$(HOME)/"|"$(CURDIR)") ;; \
	  *) echo 'rm -rf $(VAR_DIR)'; rm -rf '$(VAR_DIR)';; esac
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .coverage
