# stuisession — developer entry points. Every target creates .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
RUN_STAMP := $(VENV)/.installed-run
DOCS_PORT ?= 8000
BIND ?= tcp://127.0.0.1:5555
STORE ?= ./.stuisession
SRC := src tests examples benchmarks scripts
# pytest-xdist workers for make test and make check (this is a 2-core machine)
PYTEST_WORKERS ?= 2

.PHONY: run test check lint typecheck pytest docs docs-serve dist bench faults rust-test cluster-demo clean

# the installs say what they do: the first one takes about a minute
$(STAMP): pyproject.toml
	@echo "==> installing stuisession and the dev, docs and release tools into $(VENV) (about a minute, once)"
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,docs,release]'
	touch $(STAMP) $(RUN_STAMP)

# serving needs only the package and pyzmq
$(RUN_STAMP): pyproject.toml
	@echo "==> installing stuisession with the zmq extra into $(VENV)"
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[zmq]'
	touch $(RUN_STAMP)

## run: start the bridge server on the embedded default (file store in ./.stuisession).
## Stops cleanly on Ctrl-C and on SIGTERM to make's PID (`make run & ... kill $$!`):
## the recipe execs the server, so the signal reaches it and it drains and exits 0.
run: $(RUN_STAMP)
	exec $(BIN)/stuisession serve --bind $(BIND) --store $(STORE)

## test: lint, type-check, the test suite with the 90% branch-coverage gate, the docs build
test: lint typecheck pytest docs rust-test

## check: the quick everyday gate: ruff, mypy, pytest without coverage, `slow` or `heavy`
check: $(STAMP)
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadgroup -m "not slow and not heavy" -x

lint: $(STAMP)
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# two pytest-xdist workers (tests/ports.py keeps their ports apart; each has its own
# redis-server); `heavy` tests (slower extra instances of a guarantee) run in make faults;
# progress: one dot per test (-o console_output_style=count);
# coverage: only the files below 100%, missing lines wrapped at 100 columns
pytest: $(STAMP)
	rm -f .coverage .coverage.*
	$(BIN)/python -m pytest -p no:cacheprovider -o console_output_style=count \
		-n $(PYTEST_WORKERS) --dist loadgroup -m "not heavy" \
		--cov=stuisession --cov-branch --cov-report= --durations=15
	$(BIN)/python -m coverage combine -q 2>/dev/null || true
	$(BIN)/python scripts/coverage_report.py 90

## docs: build the documentation site with strict warnings (into ./site; open site/index.html)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet -d site

## docs-serve: serve the site with live reload on http://127.0.0.1:$(DOCS_PORT)/
docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 exec $(BIN)/mkdocs serve -a 127.0.0.1:$(DOCS_PORT)

## dist: wheel and sdist in ./dist, checked by twine
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --sdist --wheel --outdir dist .
	$(BIN)/twine check --strict dist/*

## faults: the fault-injection suite in full (500 SIGKILLs of a writer), the property
## and fuzz tests at full volume (make test runs them with fewer examples), the `heavy`
## tests make test leaves out (the other e2e SIGKILL variants, the cluster failover, the
## cluster recipe), and the adversarial suite (issue 17: attacks on a real serve; writes
## benchmarks/results/adversarial.json); one process, no xdist
faults: $(STAMP)
	STUISESSION_FAULT_ITERATIONS=500 $(BIN)/python -m pytest -q -p no:cacheprovider tests/faults tests/adversarial
	STUISESSION_FULL_VOLUME=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m "volume or heavy" tests \
		--ignore=tests/faults --ignore=tests/adversarial

## rust-test: the Rust client crate's tests (clients/rust) against a real bridge from the venv;
## needs cargo and the Debian crate packages (clients/rust/install-deps.sh); never skips
rust-test: $(STAMP)
	@command -v cargo >/dev/null 2>&1 || { echo "rust-test: cargo not found on PATH; install a Rust toolchain (e.g. apt-get install cargo) and run clients/rust/install-deps.sh" >&2; exit 1; }
	cd clients/rust && STUISESSION_BIN=$(abspath $(BIN))/stuisession cargo test --no-fail-fast

## bench: the whole benchmark suite (~5 min): prints figures, ratios and verdicts, writes
## benchmarks/results/latest.json and renders docs/performance.md + docs/img/ (nothing asserted)
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run_all.py

## cluster-demo: a loopback 3-primary Redis Cluster with replicas, two bridges on it, a
## short client load through both, then everything stopped (needs redis-server, redis-cli)
cluster-demo: $(STAMP)
	$(BIN)/python examples/cluster_recipe.py

clean:
	rm -rf $(VENV) .coverage .coverage.* .pytest_cache .mypy_cache .ruff_cache build dist
