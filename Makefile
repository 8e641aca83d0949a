# Two commands matter: `make run` (demo stack) and `make test` (everything CI runs).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
PROTO_SRC := $(shell find proto -name '*.proto')
PROTO_OUT := sidecar/_proto
PROTO_STAMP := $(PROTO_OUT)/.built

# xds-protos ships an old copy of opentelemetry/proto that overwrites opentelemetry-proto's
# files when it is installed later: put the real ones back, then check they import.
FIX_OTEL_PROTO = $(BIN)/pip install --quiet --force-reinstall --no-deps \
	"opentelemetry-proto==$$($(PY) -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')" \
	&& $(PY) -c 'from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope'

.PHONY: install proto lint format typecheck test test-unit test-e2e run check clean redis-server chromium

install: $(STAMP) $(PROTO_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(FIX_OTEL_PROTO)
	touch $@

# The project's own wire contracts, compiled by the build (never committed).
$(PROTO_STAMP): $(PROTO_SRC) $(STAMP)
	rm -rf $(PROTO_OUT)
	mkdir -p $(PROTO_OUT)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) $(PROTO_SRC)
	find $(PROTO_OUT) -type d -exec touch {}/__init__.py \;
	touch $@

proto: $(PROTO_STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install
	$(BIN)/mypy

test-unit: install
	$(BIN)/pytest tests/unit tests/extproc

test-e2e: install chromium
	$(BIN)/pytest tests/e2e

# The store contract tests run against a real redis-server (Debian's), installed if missing.
redis-server:
	sh tools/install-debian-package.sh redis-server redis-server "make test"

# The status page is tested in a real headless browser (Debian's chromium).
chromium:
	sh tools/install-debian-package.sh chromium chromium "make test"

test: lint typecheck redis-server chromium
	$(BIN)/pytest

check: install
	$(PY) -m sidecar check examples/policy.yaml --envoy-config envoy/envoy.yaml

run: install
	$(PY) -m sidecar_demo run --policy examples/policy.yaml --envoy-config envoy/envoy.yaml

clean:
	rm -rf $(VENV) $(PROTO_OUT) .mypy_cache .ruff_cache .pytest_cache

# Envoy alone vs Envoy + sidecar under load (wrk), side by side: bench/results.{md,json}.
# Uses the same ports as `make run` and the end-to-end tests. Installs Debian's wrk if missing.
# Options: make bench BENCH_ARGS="--duration 5 --concurrency 1 16 64" (see python -m bench.run -h).
.PHONY: bench
bench: install
	sh tools/install-debian-package.sh wrk wrk "make bench"
	$(PY) -m bench.run $(BENCH_ARGS)
