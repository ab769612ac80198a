#!/usr/bin/env bash
# Creates <repo>/.venv (when missing) and installs the Python packages that
# the end-to-end suite in tests/python needs (tests/python/requirements.txt).
#
# Idempotent: a stamp file inside the venv records a hash of the
# requirements file plus the interpreter version; when it matches, the
# script exits at once without touching pip.
#
# Environment:
#   PYTHON       interpreter used to create the venv (default: python3)
#   FERRUM_VENV  venv location (default: <repo>/.venv)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FERRUM_VENV:-$ROOT/.venv}"
REQ="$ROOT/tests/python/requirements.txt"
PY="${PYTHON:-python3}"
STAMP="$VENV/.ferrum-requirements.stamp"

if [[ ! -f "$REQ" ]]; then
    echo "setup-python: missing $REQ" >&2
    exit 1
fi

venv_python_ok() {
    [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1
}

stamp_key() {
    {
        sha256sum "$REQ" | cut -d' ' -f1
        "$VENV/bin/python" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
}

# Fast path: venv works and was set up from this exact requirements file.
if venv_python_ok && [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$(stamp_key)" ]]; then
    echo "setup-python: $VENV is up to date"
    exit 0
fi

# A venv whose interpreter no longer runs (e.g. the base Python moved) is
# rebuilt; only a directory that really is a venv is ever removed.
if [[ -d "$VENV" ]] && ! venv_python_ok; then
    if [[ -f "$VENV/pyvenv.cfg" ]]; then
        echo "setup-python: $VENV is broken, recreating it"
        rm -rf -- "$VENV"
    else
        echo "setup-python: $VENV exists but is not a venv; refusing to touch it" >&2
        exit 1
    fi
fi

if [[ ! -d "$VENV" ]]; then
    echo "setup-python: creating $VENV with $("$PY" --version 2>&1)"
    "$PY" -m venv "$VENV"
fi

rm -f -- "$STAMP"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/python" -m pip install --quiet --requirement "$REQ"

# Check that everything the suite imports really imports.
"$VENV/bin/python" - <<'PYCHECK'
import grpc, numpy, pytest, requests, xdist, pytest_timeout  # noqa: F401
import tritonclient.grpc, tritonclient.http, tritonclient.utils  # noqa: F401
import onnx, onnxruntime, openvino  # noqa: F401
PYCHECK

stamp_key > "$STAMP"
echo "setup-python: $VENV ready"
