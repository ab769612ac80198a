#!/usr/bin/env bash
# Puts what the python plugin needs beside it: triton_python_backend_utils.py (the pb_utils
# models import) and site-packages/ with numpy, which pb_utils needs and which the plugin
# puts last on the interpreter's module search path (a model's own environment, named by
# EXECUTION_ENV_PATH, comes first). numpy comes from its PyPI wheel (the version the tests pin),
# kept in the download cache.
# Called by scripts/layout.sh with the plugin's install folder.
# Usage: backends/python/runtime.sh <dest folder>
set -euo pipefail
dest=${1:?install folder of the python plugin}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
mkdir -p "$dest"

for file in "$here"/python/*.py; do
  name=$(basename "$file")
  if [[ -f "$dest/$name" ]] && cmp -s "$file" "$dest/$name"; then
    continue
  fi
  cp "$file" "$dest/.$name.tmp"
  mv -f "$dest/.$name.tmp" "$dest/$name"
done

# numpy: the wheel pinned in tests/python/requirements.txt for this interpreter's version,
# downloaded once into the download cache and unzipped here (no virtual environment needed).
numpy_version=$(sed -n 's/^numpy==\([^ ]*\).*/\1/p' "$root/tests/python/requirements.txt")
if [[ -z "$numpy_version" ]]; then
  echo "python runtime: no numpy==<version> pin in tests/python/requirements.txt" >&2
  exit 1
fi
py="${PYTHON:-python3}"
tag=$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
cache="${FERRUM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrum}/numpy-$numpy_version-$tag"
info="numpy-$numpy_version.dist-info"
if [[ -d "$dest/site-packages/$info" ]]; then
  exit 0
fi
mkdir -p "$cache"
wheel=$(find "$cache" -maxdepth 1 -name "numpy-$numpy_version-*.whl" -print -quit)
if [[ -z "$wheel" ]]; then
  echo "python runtime: downloading numpy==$numpy_version ($tag) from PyPI into $cache" >&2
  download=$(mktemp -d "$cache/.download.XXXXXX")
  trap 'rm -rf "$download"' EXIT
  if ! PIP_DISABLE_PIP_VERSION_CHECK=1 "$py" -m pip download --quiet --no-deps \
      --only-binary=:all: --dest "$download" "numpy==$numpy_version"; then
    echo "python runtime: could not download numpy==$numpy_version with '$py -m pip'" >&2
    exit 1
  fi
  fetched=$(find "$download" -maxdepth 1 -name "numpy-$numpy_version-*.whl" -print -quit)
  [[ -n "$fetched" ]] || { echo "python runtime: pip left no numpy wheel" >&2; exit 1; }
  wheel="$cache/$(basename "$fetched")"
  mv -f "$fetched" "$wheel"
fi
tmp="$dest/.site-packages.tmp"
rm -rf -- "$tmp"
mkdir -p "$tmp"
"$py" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$wheel" "$tmp"
rm -rf -- "$dest/site-packages"
mv "$tmp" "$dest/site-packages"
