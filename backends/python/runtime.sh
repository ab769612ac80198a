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
wheel=$("$root/scripts/cached-wheel.sh" numpy "$numpy_version" "$cache")
tmp="$dest/.site-packages.tmp"
rm -rf -- "$tmp"
mkdir -p "$tmp"
"$py" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$wheel" "$tmp"
rm -rf -- "$dest/site-packages"
mv "$tmp" "$dest/site-packages"
