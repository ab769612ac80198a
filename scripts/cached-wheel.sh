#!/usr/bin/env bash
# Prints the path of the PyPI wheel <package>==<version> for this interpreter, kept in <cache
# dir>: downloaded with pip (no dependencies, binary only) the first time, through a temporary
# folder so that an interrupted download never leaves a partial wheel in the cache. Used by
# the backends' runtime.sh scripts, which unpack what they need from the wheel.
# Usage: scripts/cached-wheel.sh <package> <version> <cache dir>
# Environment: PYTHON (default python3) runs pip.
set -euo pipefail
package=${1:?package}
version=${2:?version}
cache=${3:?cache folder}
py=${PYTHON:-python3}
# Wheel file names spell the package with underscores.
stem="${package//-/_}-$version-"

mkdir -p "$cache"
wheel=$(find "$cache" -maxdepth 1 -name "$stem*.whl" -print -quit)
if [ -z "$wheel" ]; then
  echo "downloading $package==$version from PyPI into $cache" >&2
  download=$(mktemp -d "$cache/.download.XXXXXX")
  trap 'rm -rf "$download"' EXIT
  if ! PIP_DISABLE_PIP_VERSION_CHECK=1 "$py" -m pip download --quiet --no-deps \
      --only-binary=:all: --dest "$download" "$package==$version"; then
    echo "could not download $package==$version with '$py -m pip' (is PyPI reachable? is pip" \
      "installed for $py?); or put the wheel into $cache by hand" >&2
    exit 1
  fi
  fetched=$(find "$download" -maxdepth 1 -name "$stem*.whl" -print -quit)
  if [ -z "$fetched" ]; then
    echo "pip download finished but left no $package-$version wheel" >&2
    exit 1
  fi
  wheel="$cache/$(basename "$fetched")"
  mv -f "$fetched" "$wheel"
fi
echo "$wheel"
