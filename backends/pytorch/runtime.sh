#!/usr/bin/env bash
# Puts the libtorch runtime the pytorch plugin loads beside it: libtorch_cpu.so, libc10.so,
# libgomp.so.1 (from the torch wheel) and libcudart.so.13, libcupti.so.13 (which
# libtorch_cpu.so links although a CPU model never calls them). The plugin's RUNPATH is
# $ORIGIN and libtorch's own RPATH includes $ORIGIN, so this folder is all they search.
# Called by scripts/layout.sh with the plugin's install folder; fetches into the download
# cache first when needed (scripts/fetch-libtorch.sh).
# Usage: backends/pytorch/runtime.sh <dest folder>
set -euo pipefail
dest=${1:?install folder of the pytorch plugin}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$dest"
mapfile -t libs < <("$root/scripts/fetch-libtorch.sh" --runtime-files)
for lib in "${libs[@]}"; do
  name=$(basename "$lib")
  # Skip a copy that is already there and the same; otherwise write a new file and rename it
  # over the old one (a running server may have the old one mapped).
  if [[ -f "$dest/$name" ]] && cmp -s "$lib" "$dest/$name"; then
    continue
  fi
  cp "$lib" "$dest/.$name.tmp"
  mv -f "$dest/.$name.tmp" "$dest/$name"
done
