#!/usr/bin/env bash
# Puts the OpenVINO runtime that the openvino backend loads beside it.
#
# Usage: backends/openvino/runtime.sh <backend install folder>
#
# The libraries come from the PyPI wheel openvino==$OPENVINO_VERSION (a wheel is a zip; it is
# unzipped, never pip-installed). The wheel and the libraries unpacked from it are kept in
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ferrum/openvino-$OPENVINO_VERSION/
# so only the first run downloads anything. Copied into the destination: the C and C++
# runtime, the CPU plugin, the IR and ONNX frontends, TBB (with hwloc), and plugins.xml when the wheel
# has one, with the unversioned names libopenvino.so and libopenvino_c.so as symlinks.
# Idempotent: files already in place and unchanged are left alone.
#
# Environment:
#   PYTHON  interpreter whose pip downloads the wheel (default: python3)
set -euo pipefail

OPENVINO_VERSION=2026.4.1
dest=${1:?usage: runtime.sh <backend install folder>}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/ferrum/openvino-$OPENVINO_VERSION"
libs="$cache/libs"

say() { echo "openvino runtime: $*" >&2; }

# What the CPU plugin needs from the wheel's openvino/libs/ (the GPU and NPU plugins and the
# other frontends stay out).
wanted=(
  'libopenvino.so.*' 'libopenvino_c.so.*'
  'libopenvino_intel_cpu_plugin.so'
  'libopenvino_ir_frontend.so.*' 'libopenvino_onnx_frontend.so.*'
  'libtbb.so*' 'libtbbmalloc.so*' 'libtbbbind*.so*' 'libhwloc.so*'
  'plugins.xml'
)

# 1. The unpacked libraries in the cache (download and unzip on the first run).
if [ ! -f "$libs/.complete" ]; then
  wheel=$("$root/scripts/cached-wheel.sh" openvino "$OPENVINO_VERSION" "$cache")
  say "unpacking openvino/libs from $(basename "$wheel")"
  unpack=$(mktemp -d "$cache/.unpack.XXXXXX")
  members=()
  for pattern in "${wanted[@]}"; do members+=("openvino/libs/$pattern"); done
  # Exit status 11 only says that a pattern (plugins.xml) matched nothing.
  rc=0
  unzip -qq -o "$wheel" "${members[@]}" -d "$unpack" 2>/dev/null || rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 11 ] || [ ! -d "$unpack/openvino/libs" ]; then
    rm -rf "$unpack"
    say "cannot unzip $wheel (a partial download? delete it and run again)"
    exit 1
  fi
  rm -rf "$libs"
  mv "$unpack/openvino/libs" "$libs"
  rm -rf "$unpack"
  touch "$libs/.complete"
fi

# 2. What the CPU plugin needs, into the destination.
mkdir -p "$dest"
copied=0
for pattern in "${wanted[@]}"; do
  for file in "$libs"/$pattern; do
    [ -e "$file" ] || continue
    name=$(basename "$file")
    if [ -L "$file" ]; then
      # Keep the wheel's own symlinks (libtbb.so.12 -> libtbb.so.12.x) as symlinks.
      ln -sfn "$(readlink "$file")" "$dest/$name"
    elif ! cmp -s "$file" "$dest/$name"; then
      # A new file renamed into place: a running server may have the old one mapped.
      cp "$file" "$dest/.$name.tmp"
      mv -f "$dest/.$name.tmp" "$dest/$name"
      copied=$((copied + 1))
    fi
  done
done

# 3. The unversioned names the backend (and the openvino crate's finder) look for.
for base in libopenvino libopenvino_c; do
  versioned=$(cd "$dest" && ls -1 "$base".so.* 2>/dev/null | sort | tail -n 1)
  if [ -z "$versioned" ]; then
    say "$base.so.* is missing from $libs; delete $cache and run again"
    exit 1
  fi
  ln -sfn "$versioned" "$dest/$base.so"
done
if [ "$copied" -gt 0 ]; then
  say "copied $copied libraries into $dest"
fi
