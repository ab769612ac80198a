#!/usr/bin/env bash
# Tests of the embedding APIs beyond `cargo test`: the C API's smoke test (capi/tests/c/smoke.c)
# under valgrind's leak checker, and the Java binding (java/) running its example. Both run the
# models of model_repository/ with the backends in target/debug/backends (`make test-build`
# lays them out; this script does not rebuild them). Installs gcc, valgrind and a JDK with apt-get
# when they are missing and it can (root on Debian/Ubuntu).
#
# Usage: scripts/test-embedding.sh        (FERRUM_BACKEND_DIRECTORY overrides the backends)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CARGO="${CARGO:-cargo}"
backends="${FERRUM_BACKEND_DIRECTORY:-$PWD/target/debug/backends}"

missing=()
command -v gcc >/dev/null || missing+=(gcc libc6-dev)
command -v valgrind >/dev/null || missing+=(valgrind)
command -v javac >/dev/null || missing+=(default-jdk-headless)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "test-embedding: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "test-embedding: missing ${missing[*]} (install them, or run as root with apt-get)" >&2
        exit 1
    fi
fi
for b in add_sub onnxruntime repeat identity; do
    [ -d "$backends/$b" ] || { echo "test-embedding: no '$b' backend in $backends (run make test-build)" >&2; exit 1; }
done

echo "== C API: build libferrum and the header"
"$CARGO" build -p ferrum-capi

echo "== C API: smoke test under valgrind (capi/tests/c/smoke.c)"
FERRUM_CAPI_VALGRIND=1 FERRUM_BACKEND_DIRECTORY="$backends" \
    "$CARGO" test -p ferrum-capi --test c_smoke -- --nocapture

echo "== Java binding: build (JNI shim + javac) and run io.ferrum.Example"
java/build.sh target/debug
java -Dferrum.jni.library="$PWD/target/java/libferrum_jni.so" -cp target/java/classes \
    io.ferrum.Example model_repository "$backends"

echo "test-embedding: all passed"
