#!/usr/bin/env bash
# Puts the ONNX Runtime shared library beside the onnxruntime backend plugin.
#
# Usage: backends/onnxruntime/runtime.sh <backend install folder>
#
# Called by scripts/layout.sh during `make build` / `make test`. The library comes from the
# PyPI wheel onnxruntime==$ORT_VERSION (a wheel is a zip; nothing is pip-installed): the wheel is
# downloaded once into the cache folder, and only onnxruntime/capi/libonnxruntime.so.<version>
# is taken out of it. Later runs copy from the cache and touch no network.
#
# Environment:
#   XDG_CACHE_HOME   cache root (default ~/.cache); the cache is <root>/ferrum/onnxruntime-<version>/
#   PYTHON           interpreter whose pip downloads the wheel (default python3)
set -euo pipefail

ORT_VERSION=1.31.1
dest=${1:?usage: runtime.sh <backend install folder>}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/ferrum/onnxruntime-$ORT_VERSION"
lib_name="libonnxruntime.so.$ORT_VERSION"
cached_lib="$cache/$lib_name"
py="${PYTHON:-python3}"

log() { echo "onnxruntime runtime: $*" >&2; }

if [ ! -s "$cached_lib" ]; then
  wheel=$("$root/scripts/cached-wheel.sh" onnxruntime "$ORT_VERSION" "$cache")
  # Take the one library out of the wheel (a zip), through a temporary name so that an
  # interrupted run never leaves a half-written library in the cache.
  "$py" - "$wheel" "onnxruntime/capi/$lib_name" "$cached_lib" <<'PY'
import shutil
import sys
import zipfile

wheel, member, target = sys.argv[1:4]
partial = target + ".partial"
with zipfile.ZipFile(wheel) as zf:
    try:
        info = zf.getinfo(member)
    except KeyError:
        sys.exit(f"onnxruntime runtime: {wheel} has no {member}")
    with zf.open(info) as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst)
shutil.move(partial, target)
PY
  rm -f "$wheel"  # only the library is needed from now on
  log "cached $cached_lib"
fi

mkdir -p "$dest"
if ! cmp -s "$cached_lib" "$dest/$lib_name"; then
  # A new file, never an overwrite in place: a running server may have the old one mapped.
  cp "$cached_lib" "$dest/.$lib_name.tmp"
  mv -f "$dest/.$lib_name.tmp" "$dest/$lib_name"
fi
ln -sfn "$lib_name" "$dest/libonnxruntime.so"
