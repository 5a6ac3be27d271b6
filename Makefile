# The project's whole set-up: `make test` and `make bench` build .venv when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Re-install only when the dependency files change; a no-op `make venv` takes a second.
STAMP := $(VENV)/.installed
# The C loops, built in place by the editable install (a venv restored from a cache lacks them).
NATIVE := src/shardcache/core/_native$(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")

.PHONY: venv test test-fast lint bench bench-full bench-peers soak clean

venv: $(STAMP) $(NATIVE)

$(STAMP): pyproject.toml constraints.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23.2"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $(STAMP)

$(NATIVE): src/shardcache/core/_native.c | $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt -e .

lint: venv
	$(BIN)/ruff check --no-cache src tests benchmarks
	$(BIN)/ruff format --no-cache --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -m "not soak" -p no:cacheprovider

# Unit tests only: the quick loop while editing.
test-fast: venv
	$(BIN)/python -m pytest -m "not slow and not soak" -p no:cacheprovider -q

bench: venv
	$(BIN)/python -m benchmarks.tiers --quick
	$(BIN)/python -m benchmarks.mednet --quick

bench-full: venv
	$(BIN)/python -m benchmarks.tiers
	$(BIN)/python -m benchmarks.mednet
	$(BIN)/python -m benchmarks.cooperative

# Peers on the same workload: LitData and HF datasets (pinned by constraints.txt), and
# MosaicML Streaming without its dependencies (its own pins make pip backtrack for minutes).
bench-peers: venv
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[peers]'
	$(BIN)/python -m pip install --quiet -c constraints.txt transformers Brotli catalogue python-snappy zstd \
	  && $(BIN)/python -m pip install --quiet --no-deps -c constraints.txt mosaicml-streaming || true
	$(BIN)/python -m benchmarks.peers

soak: venv
	$(BIN)/python -m pytest -m soak -p no:cacheprovider

clean:
	rm -rf $(VENV) bench-data bench-results .pytest_cache .mypy_cache .ruff_cache
