#!/usr/bin/env bash
# Lays out an install tree from a cargo build: <dest>/bin/ferrum (and ferrum-analyze) and
# <dest>/backends/<name>/libferrum_<name>.so for every backend crate under backends/.
# A backend that needs a native runtime beside it has an executable backends/<name>/runtime.sh;
# it is called with the backend's install folder and puts the runtime's libraries there
# (fetching them into the download cache first when needed).
# Usage: scripts/layout.sh <cargo profile dir, e.g. target/release> <dest>
set -euo pipefail
src=${1:?cargo output folder}
dest=${2:?install folder}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dest/bin" "$dest/backends"
install -m 755 "$src/ferrum" "$dest/bin/ferrum"
install -m 755 "$root/tools/analyze/ferrum-analyze" "$dest/bin/ferrum-analyze"
for crate in "$root"/backends/*/; do
  name=$(basename "$crate")
  lib="$src/libferrum_$name.so"
  if [ ! -f "$lib" ]; then
    echo "layout: $lib is missing (was backends/$name built?)" >&2
    exit 1
  fi
  mkdir -p "$dest/backends/$name"
  # Copy to a new file, never over the old one in place: a running server may have it mapped.
  cp "$lib" "$dest/backends/$name/.libferrum_$name.so.tmp"
  mv -f "$dest/backends/$name/.libferrum_$name.so.tmp" "$dest/backends/$name/libferrum_$name.so"
  if [ -x "$crate/runtime.sh" ]; then
    "$crate/runtime.sh" "$dest/backends/$name"
  fi
done
