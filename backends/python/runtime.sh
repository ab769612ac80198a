#!/usr/bin/env bash
# Puts what the python plugin needs beside it: triton_python_backend_utils.py (the pb_utils
# models import) and site-packages/ with numpy, which pb_utils needs and which the plugin
# puts last on the interpreter's module search path (a model's own environment, named by
# EXECUTION_ENV_PATH, comes first). numpy is taken from the project's virtual environment
# (scripts/setup-python.sh makes it), hard-linked where the file system allows.
# Called by scripts/layout.sh with the plugin's install folder.
# Usage: backends/python/runtime.sh <dest folder>
set -euo pipefail
dest=${1:?install folder of the python plugin}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${FERRUM_VENV:-$root/.venv}
mkdir -p "$dest"

for file in "$here"/python/*.py; do
  name=$(basename "$file")
  if [[ -f "$dest/$name" ]] && cmp -s "$file" "$dest/$name"; then
    continue
  fi
  cp "$file" "$dest/.$name.tmp"
  mv -f "$dest/.$name.tmp" "$dest/$name"
done

site=$(echo "$venv"/lib/python3.*/site-packages)
if ! compgen -G "$site/numpy-*.dist-info" >/dev/null; then
  "$root/scripts/setup-python.sh" >&2
  site=$(echo "$venv"/lib/python3.*/site-packages)
fi
info=$(cd "$site" && echo numpy-*.dist-info)
if [[ ! -d "$site/$info" ]]; then
  echo "python runtime: no numpy in $site" >&2
  exit 1
fi
# Up to date: the same numpy is already there.
if [[ -d "$dest/site-packages/$info" ]]; then
  exit 0
fi
tmp="$dest/.site-packages.tmp"
rm -rf -- "$tmp"
mkdir -p "$tmp"
for part in numpy numpy.libs "$info"; do
  [[ -e "$site/$part" ]] || continue
  cp -al "$site/$part" "$tmp/" 2>/dev/null || cp -a "$site/$part" "$tmp/"
done
rm -rf -- "$dest/site-packages"
mv "$tmp" "$dest/site-packages"
