# Ferrum's entry points. `make run` serves model_repository/; `make test` runs every test.
# Both set up everything they need on a fresh clone.

CARGO ?= cargo
PORT_HTTP ?= 8000
PORT_GRPC ?= 8001
PORT_METRICS ?= 8002
# Debug build used by the tests, laid out like an install tree.
TEST_BACKENDS := target/debug/backends

.PHONY: all build run test test-rust test-python lint bench clean fuzz

all: build

## build: release build, laid out as the relocatable install tree dist/
build:
	$(CARGO) build --release --workspace
	scripts/layout.sh target/release dist

## run: build and serve model_repository/ on 8000 (HTTP), 8001 (gRPC), 8002 (metrics)
run: build
	dist/bin/ferrum --model-repository model_repository \
		--http-port $(PORT_HTTP) --grpc-port $(PORT_GRPC) --metrics-port $(PORT_METRICS)

## test: build once (debug), then Rust unit + end-to-end tests and the tritonclient suite
test: test-build test-rust test-python

.PHONY: test-build
test-build:
	$(CARGO) build --workspace --all-targets
	scripts/layout.sh target/debug target/debug-dist
	rm -rf $(TEST_BACKENDS) && cp -r target/debug-dist/backends $(TEST_BACKENDS)

test-rust: test-build
	$(CARGO) test --workspace

test-python: test-build
	scripts/setup-python.sh
	.venv/bin/python -m pytest -n 2 tests/python

## lint: formatting and clippy, as CI wants them
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## bench: throughput and latency of the example models over HTTP and gRPC (release build)
bench: build
	scripts/setup-python.sh
	.venv/bin/python scripts/bench.py --server dist/bin/ferrum --repository model_repository

clean:
	$(CARGO) clean
	rm -rf dist .venv

## fuzz: run every cargo-fuzz target for FUZZ_RUNS executions (needs `cargo install cargo-fuzz`)
FUZZ_RUNS ?= 1000000
fuzz:
	cd fuzz && for t in http_infer grpc_infer config_pbtxt bytes_tensor; do \
		RUSTC_BOOTSTRAP=1 cargo fuzz run $$t -s none -- -runs=$(FUZZ_RUNS) || exit 1; done
