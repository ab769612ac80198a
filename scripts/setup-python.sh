#!/usr/bin/env bash
# Creates <repo>/.venv (when missing) and installs the Python packages that
# the end-to-end suite in tests/python needs: tests/python/requirements.txt
# from the package index, and Python torch (tests/python/requirements-torch.txt)
# from a wheel folder in the download cache.
#
# Python torch pulls 2.6 GB of CUDA wheels. They are downloaded once into
# $WHEELS (never inside the clone) and installed from there with --no-index,
# so a second clean setup (a new venv, another clone) downloads nothing.
# pip's own HTTP cache is not relied on: a registry mirror that sends no
# caching headers leaves it empty.
#
# Idempotent: a stamp file inside the venv records a hash of both
# requirements files plus the interpreter version; when it matches, the
# script exits at once without touching pip.
#
# Environment:
#   PYTHON            interpreter used to create the venv (default: python3)
#   FERRUM_VENV       venv location (default: <repo>/.venv)
#   FERRUM_CACHE_DIR  download cache root (default: ${XDG_CACHE_HOME:-~/.cache}/ferrum);
#                     the torch wheels go to its python-wheels/
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FERRUM_VENV:-$ROOT/.venv}"
REQ="$ROOT/tests/python/requirements.txt"
REQ_TORCH="$ROOT/tests/python/requirements-torch.txt"
PY="${PYTHON:-python3}"
STAMP="$VENV/.ferrum-requirements.stamp"
CACHE_ROOT="${FERRUM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrum}"
WHEELS="$CACHE_ROOT/python-wheels"

for req in "$REQ" "$REQ_TORCH"; do
    if [[ ! -f "$req" ]]; then
        echo "setup-python: missing $req" >&2
        exit 1
    fi
done

venv_python_ok() {
    [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1
}

stamp_key() {
    {
        sha256sum "$REQ" "$REQ_TORCH" | cut -d' ' -f1
        "$VENV/bin/python" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
}

# Fast path: venv works and was set up from these exact requirements files.
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

# Installs requirements-torch.txt from $WHEELS alone; fails, installing nothing, when a wheel
# is missing there.
install_torch_offline() {
    "$VENV/bin/python" -m pip install --quiet --no-index --find-links "$WHEELS" \
        --requirement "$REQ_TORCH"
}

# Downloads what requirements-torch.txt needs into $WHEELS. Into a fresh folder first, then
# each complete file renamed into place: an interrupted download never leaves half a wheel
# where pip would take it for a whole one. Wheels already in $WHEELS are copied instead of
# downloaded again. --no-cache-dir: the wheels are kept here, a second copy in pip's cache
# would only take room.
download_torch_wheels() {
    echo "setup-python: downloading the torch wheels into $WHEELS"
    download_tmp=$(mktemp -d "$WHEELS/.download.XXXXXX")
    trap 'rm -rf -- "$download_tmp"' EXIT
    "$VENV/bin/python" -m pip download --quiet --no-cache-dir --dest "$download_tmp" \
        --find-links "$WHEELS" --requirement "$REQ_TORCH"
    mv -f -- "$download_tmp"/*.whl "$WHEELS/"
    rm -rf -- "$download_tmp"
    trap - EXIT
}

mkdir -p "$WHEELS"
if ! install_torch_offline 2>/dev/null; then
    # One download at a time into the shared folder (other clones may be setting up too);
    # one that waited tries the folder again first.
    exec 9>"$WHEELS/.lock"
    flock 9
    installed=no
    if install_torch_offline 2>/dev/null; then
        installed=yes
    else
        download_torch_wheels
    fi
    flock -u 9
    exec 9>&-
    if [[ $installed == no ]]; then
        install_torch_offline
    fi
fi

# Check that everything the suite imports really imports.
"$VENV/bin/python" - "$ROOT/scripts/fetch-libtorch.sh" <<'PYCHECK'
import grpc, numpy, pytest, requests, xdist, pytest_timeout  # noqa: F401
import tritonclient.grpc, tritonclient.http, tritonclient.utils  # noqa: F401
import onnx, onnxruntime, openvino  # noqa: F401
import re, sys, torch
# The torch that makes and checks the TorchScript models must be the plugin's libtorch.
text = open(sys.argv[1]).read()
libtorch = re.search(r"^TORCH_VERSION=(\S+)$", text, re.MULTILINE).group(1)
if torch.__version__.split("+")[0] != libtorch:
    sys.exit(f"setup-python: torch {torch.__version__} installed, but the pytorch plugin "
             f"links libtorch {libtorch} (scripts/fetch-libtorch.sh); pin that version in "
             "tests/python/requirements-torch.txt")
PYCHECK

stamp_key > "$STAMP"
echo "setup-python: $VENV ready"
