# stuisession — developer entry points. Every target creates .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
BIND ?= tcp://127.0.0.1:5555
STORE ?= ./.stuisession
SRC := src tests examples benchmarks

.PHONY: run test lint typecheck pytest docs dist bench faults rust-test cluster-demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,docs,release]'
	touch $(STAMP)

## run: start the bridge server on the embedded default (file store in ./.stuisession)
run: $(STAMP)
	$(BIN)/stuisession serve --bind $(BIND) --store $(STORE)

## test: lint, type-check, the test suite with the 90% branch-coverage gate, the docs build
test: lint typecheck pytest docs

lint: $(STAMP)
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	rm -f .coverage .coverage.*
	$(BIN)/python -m pytest -q -p no:cacheprovider --cov=stuisession --cov-branch \
		--cov-report=term --cov-fail-under=90

## docs: build the documentation site with strict warnings (into ./site)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet -d site

## dist: wheel and sdist in ./dist, checked by twine
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --sdist --wheel --outdir dist .
	$(BIN)/twine check --strict dist/*

## faults: the fault-injection suite in full (500 SIGKILLs of a writer)
faults: $(STAMP)
	STUISESSION_FAULT_ITERATIONS=500 $(BIN)/python -m pytest -q -p no:cacheprovider tests/faults

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
