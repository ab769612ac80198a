# Ferrum's entry points. `make run` serves model_repository/; `make test` runs every test.
# Both set up everything they need on a fresh clone.

CARGO ?= cargo
PORT_HTTP ?= 8000
PORT_GRPC ?= 8001
PORT_METRICS ?= 8002
# Debug build used by the tests, laid out like an install tree.
TEST_BACKENDS := target/debug/backends

.PHONY: all build run test test-rust test-python lint bench soak clean fuzz libtorch

all: build

# Further targets, one file per area (deployment, container images).
include $(wildcard mk/*.mk)

## libtorch: fetch libtorch for the pytorch backend into the download cache (once) and point
## .deps/libtorch at it, where .cargo/config.toml's LIBTORCH looks; every build runs it first
libtorch:
	scripts/fetch-libtorch.sh >/dev/null

# TorchScript test models traced with Python torch (not in git), for the tests only: `make run`
# needs no Python torch (the example model_repository/pytorch_mlp/1/model.pt, 17 KB, is in
# git; the generator also writes a fresh copy under target/torch-models/ that
# tests/python/test_pytorch.py compares it with). Remade only when their generator or the
# pinned torch changed. The generator runs in .venv, which scripts/setup-python.sh brings up
# to date first.
TORCH_MODEL_GEN := scripts/make-torch-models.py
TORCH_MODELS := tests/models/pytorch/.generated target/torch-models/pytorch_mlp/1/model.pt

$(TORCH_MODELS) &: $(TORCH_MODEL_GEN) tests/python/requirements-torch.txt
	scripts/setup-python.sh
	.venv/bin/python $(TORCH_MODEL_GEN) target/torch-models tests/models/pytorch
	touch $(TORCH_MODELS)

## build: release build, laid out as the relocatable install tree dist/
build: libtorch
	$(CARGO) build --release --workspace
	scripts/layout.sh target/release dist

## run: build and serve model_repository/ on 8000 (HTTP), 8001 (gRPC), 8002 (metrics)
run: build
	dist/bin/ferrum --model-repository model_repository \
		--http-port $(PORT_HTTP) --grpc-port $(PORT_GRPC) --metrics-port $(PORT_METRICS)

## test: build once (debug), then Rust unit + end-to-end tests, the tritonclient suite, and
## the embedding APIs (C under valgrind, Java)
test: test-build test-rust test-python test-embedding

.PHONY: test-build
test-build: libtorch
	$(CARGO) build --workspace --all-targets
	CARGO=$(CARGO) scripts/build-compat-plugins.sh target
	scripts/layout.sh target/debug target/debug-dist
	$(MAKE) --no-print-directory $(TORCH_MODELS)
	rm -rf $(TEST_BACKENDS) && cp -r target/debug-dist/backends $(TEST_BACKENDS)

test-rust: test-build
	$(CARGO) test --workspace

test-python: test-build
	scripts/setup-python.sh
	scripts/setup-test-tools.sh
	.venv/bin/python -m pytest -n 2 tests/python

.PHONY: test-embedding
## test-embedding: the C API smoke test under valgrind and the Java binding (JNI)
test-embedding: test-build
	CARGO=$(CARGO) scripts/test-embedding.sh

## lint: formatting and clippy, as CI wants them
lint: libtorch
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## bench: throughput and latency of the example models over HTTP and gRPC, and the tree
## backend against XGBoost in-process (release build)
bench: build
	scripts/setup-python.sh
	.venv/bin/python scripts/bench.py --server dist/bin/ferrum --repository model_repository
	.venv/bin/python scripts/bench_fil.py --server dist/bin/ferrum

## soak: SOAK_MINUTES (default 10) at concurrency 64 over HTTP and gRPC across the example
## models, reloading every 30 s, with an isolated model that crashes and restarts
SOAK_MINUTES ?= 10
soak: build
	scripts/setup-python.sh
	.venv/bin/python scripts/soak.py --server dist/bin/ferrum --minutes $(SOAK_MINUTES)

clean:
	$(CARGO) clean
	rm -rf dist .venv model_repository/pytorch_mlp/1 tests/models/pytorch

## fuzz: run every cargo-fuzz target for FUZZ_RUNS executions (needs `cargo install cargo-fuzz`)
FUZZ_RUNS ?= 1000000
fuzz:
	cd fuzz && for t in http_infer grpc_infer config_pbtxt bytes_tensor; do \
		RUSTC_BOOTSTRAP=1 cargo fuzz run $$t -s none -- -runs=$(FUZZ_RUNS) || exit 1; done
