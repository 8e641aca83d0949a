# Two commands matter: `make run` (demo stack) and `make test` (everything CI runs).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
PROTO_SRC := $(shell find proto -name '*.proto')
PROTO_OUT := sidecar/_proto
PROTO_STAMP := $(PROTO_OUT)/.built

.PHONY: install proto lint format typecheck test test-unit test-e2e run check clean

install: $(STAMP) $(PROTO_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
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

test-e2e: install
	$(BIN)/pytest tests/e2e

test: lint typecheck
	$(BIN)/pytest

check: install
	$(PY) -m sidecar check examples/policy.yaml --envoy-config envoy/envoy.yaml

run: install
	$(PY) -m sidecar_demo run --policy examples/policy.yaml --envoy-config envoy/envoy.yaml

clean:
	rm -rf $(VENV) $(PROTO_OUT) .mypy_cache .ruff_cache .pytest_cache
