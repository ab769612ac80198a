#!/usr/bin/env bash
# Fetches libtorch 2.13.0 (what tch 0.26 needs) from PyPI wheels into the download cache,
# once, and prints the paths the build and the layout need.
#
# The PyPI torch wheel is a CUDA build, but its libtorch_cpu.so + libc10.so run CPU models.
# They want libcudart.so.13 and libcupti.so.13 at load time, which come from two small NVIDIA
# wheels. Only what a CPU build links and loads is unzipped:
#
#   $CACHE/wheels/                  the three wheels as downloaded (sha256 checked)
#   $CACHE/site/torch/include/      headers (tch compiles its C++ wrapper against them)
#   $CACHE/site/torch/lib/          libtorch_cpu.so libc10.so libtorch.so libgomp.so.1
#   $CACHE/site/nvidia/cu13/lib/    libcudart.so.13 libcupti.so.13 (where the RPATH
#                                   $ORIGIN/../../nvidia/cu13/lib of torch/lib finds them)
#   $CACHE/libtorch/                what LIBTORCH points at: include/ and a lib/ holding the
#                                   CPU libraries only, so tch links no CUDA library
#
# with CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/ferrum/libtorch-2.13.0 (never inside the clone).
# It also points <repo>/.deps/libtorch at $CACHE/libtorch; .cargo/config.toml sets LIBTORCH
# to that link, so a plain `cargo build --workspace` works once this script has run.
#
# Usage: scripts/fetch-libtorch.sh            fetch if needed, print `export NAME=value` lines
#        eval "$(scripts/fetch-libtorch.sh)"  the same, into the current shell
#        scripts/fetch-libtorch.sh --runtime-files
#                                             fetch if needed, print the runtime libraries'
#                                             paths, one a line (for backends/pytorch/runtime.sh)
# Environment: PYTHON (default python3) runs pip; FERRUM_CACHE_DIR overrides the cache root.
set -euo pipefail

TORCH_VERSION=2.13.0
CUDART_VERSION=13.0.96
CUPTI_VERSION=13.0.85
# The wheels, pinned by file name and content. The torch wheel's libtorch does not depend on
# the Python version; the cp311 build is fetched whatever Python runs pip.
TORCH_WHEEL=torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl
TORCH_SHA256=60fcdcb2f3876e21146cb4524ef06397d727ca9ad5f020818547e25075fe3cb7
CUDART_WHEEL=nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
CUDART_SHA256=7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
CUPTI_WHEEL=nvidia_cuda_cupti-13.0.85-py3-none-manylinux_2_25_x86_64.whl
CUPTI_SHA256=4eb01c08e859bf924d222250d2e8f8b8ff6d3db4721288cf35d14252a4d933c8

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="${FERRUM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrum}"
CACHE="$CACHE_ROOT/libtorch-$TORCH_VERSION"
STAMP="$CACHE/.complete"
PY="${PYTHON:-python3}"

# The libraries a CPU build links against, and those it loads at run time.
LINK_LIBS=(libtorch_cpu.so libc10.so libtorch.so libgomp.so.1)
RUNTIME_TORCH_LIBS=(libtorch_cpu.so libc10.so libgomp.so.1)
RUNTIME_CUDA_LIBS=(libcudart.so.13 libcupti.so.13)

log() { echo "fetch-libtorch: $*" >&2; }

# Downloads one wheel into $CACHE/wheels unless it is there with the right checksum.
fetch_wheel() {
  local file=$1 sha=$2 spec=$3 platform=$4
  local dest="$CACHE/wheels/$file"
  if [[ -f "$dest" ]] && echo "$sha  $dest" | sha256sum --check --status; then
    return
  fi
  log "downloading $spec"
  local tmp
  tmp=$(mktemp -d "$CACHE/wheels/.download.XXXXXX")
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip download --quiet --no-deps \
    --only-binary=:all: --implementation cp --python-version 3.11 \
    --platform "$platform" --dest "$tmp" "$spec" >&2
  if [[ ! -f "$tmp/$file" ]]; then
    log "pip did not produce $file (got: $(ls "$tmp"))"
    rm -rf -- "$tmp"
    exit 1
  fi
  if ! echo "$sha  $tmp/$file" | sha256sum --check --status; then
    log "checksum mismatch for $file: expected $sha"
    rm -rf -- "$tmp"
    exit 1
  fi
  mv -f "$tmp/$file" "$dest"
  rm -rf -- "$tmp"
}

# Unzips the parts a CPU build needs into a fresh folder and swaps it in.
unpack() {
  local work="$CACHE/.unpack.$$"
  rm -rf -- "$work"
  mkdir -p "$work/site"
  log "unpacking libtorch (CPU libraries and headers)"
  local members=("torch/include/*" "torch/version.py")
  for lib in "${LINK_LIBS[@]}"; do members+=("torch/lib/$lib"); done
  unzip -q -o "$CACHE/wheels/$TORCH_WHEEL" "${members[@]}" -d "$work/site"
  unzip -q -o "$CACHE/wheels/$CUDART_WHEEL" "nvidia/cu13/lib/libcudart.so.13" -d "$work/site"
  unzip -q -o "$CACHE/wheels/$CUPTI_WHEEL" "nvidia/cu13/lib/libcupti.so.13" -d "$work/site"

  local version
  version=$(sed -n "s/^__version__ = '\(.*\)'$/\1/p" "$work/site/torch/version.py")
  if [[ "${version%%+*}" != "$TORCH_VERSION" ]]; then
    log "the wheel says torch $version, expected $TORCH_VERSION"
    exit 1
  fi
  mkdir -p "$work/libtorch/lib"
  ln -s ../site/torch/include "$work/libtorch/include"
  for lib in "${LINK_LIBS[@]}"; do
    ln -s "../../site/torch/lib/$lib" "$work/libtorch/lib/$lib"
  done
  # tch's build script checks this file against the version it was written for.
  echo "$version" >"$work/libtorch/build-version"

  rm -rf -- "$CACHE/site" "$CACHE/libtorch"
  mv "$work/site" "$CACHE/site"
  mv "$work/libtorch" "$CACHE/libtorch"
  rm -rf -- "$work"
}

ensure() {
  mkdir -p "$CACHE/wheels"
  exec 9>"$CACHE/.lock"
  flock 9
  if [[ ! -f "$STAMP" ]]; then
    fetch_wheel "$TORCH_WHEEL" "$TORCH_SHA256" "torch==$TORCH_VERSION" manylinux_2_28_x86_64
    fetch_wheel "$CUDART_WHEEL" "$CUDART_SHA256" "nvidia-cuda-runtime==$CUDART_VERSION" \
      manylinux_2_17_x86_64
    fetch_wheel "$CUPTI_WHEEL" "$CUPTI_SHA256" "nvidia-cuda-cupti==$CUPTI_VERSION" \
      manylinux_2_25_x86_64
    unpack
    touch "$STAMP"
    log "libtorch $TORCH_VERSION ready in $CACHE"
  fi
  flock -u 9
  exec 9>&-
  mkdir -p "$ROOT/.deps"
  if [[ "$(readlink "$ROOT/.deps/libtorch" 2>/dev/null)" != "$CACHE/libtorch" ]]; then
    ln -sfn "$CACHE/libtorch" "$ROOT/.deps/libtorch"
  fi
}

ensure
case "${1:-}" in
  --runtime-files)
    for lib in "${RUNTIME_TORCH_LIBS[@]}"; do echo "$CACHE/site/torch/lib/$lib"; done
    for lib in "${RUNTIME_CUDA_LIBS[@]}"; do echo "$CACHE/site/nvidia/cu13/lib/$lib"; done
    ;;
  "")
    echo "export LIBTORCH='$CACHE/libtorch'"
    echo "export FERRUM_LIBTORCH_LIB='$CACHE/site/torch/lib'"
    ;;
  *)
    echo "usage: $0 [--runtime-files]" >&2
    exit 2
    ;;
esac
