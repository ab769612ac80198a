#!/usr/bin/env bash
# Builds the `compat` test backend (tests/compat/plugin) twice, outside the workspace:
#  - against the frozen backend-api 1.0 copy (tests/compat/backend-api-1.0): a library from
#    an older minor version, which this server must load;
#  - against the current backend-api with its minor version raised by one: a library from a
#    newer minor version, which this server must refuse.
# tests/rust/compat.rs loads both from <target>/compat/libferrum_compat_{1_0,future}.so.
# Usage: scripts/build-compat-plugins.sh [cargo target dir, default target]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=$(realpath -m "${1:-$root/target}")
cargo=${CARGO:-cargo}
out="$target/compat"
work="$out/src"
mkdir -p "$out"

$cargo build --quiet --manifest-path "$root/tests/compat/plugin/Cargo.toml" --target-dir "$target"
cp "$target/debug/libferrum_compat.so" "$out/libferrum_compat_1_0.so"

# A standalone copy of the current backend-api, one minor version ahead.
rm -rf "$work"
mkdir -p "$work"
cp -r "$root/backend-api" "$work/backend-api"
cp -r "$root/tests/compat/plugin" "$work/plugin"
current=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/backend-api/Cargo.toml" | head -n 1)
IFS=. read -r major minor _ <<<"$current"
future="$major.$((minor + 1)).0"
sed -i \
  -e "s/^version = \".*\"$/version = \"$future\"/" \
  -e 's/^edition.workspace = true$/edition = "2024"/' \
  -e 's/^license.workspace = true$/license = "Apache-2.0"/' \
  -e 's/^abi_stable.workspace = true$/abi_stable = "0.11.3"/' \
  -e 's/^serde_json.workspace = true$/serde_json = { version = "1", features = ["preserve_order"] }/' \
  -e '/^\[lints\]$/,/^workspace = true$/d' \
  "$work/backend-api/Cargo.toml"
sed -i 's|path = "../backend-api-1.0"|path = "../backend-api"|' "$work/plugin/Cargo.toml"
$cargo build --quiet --manifest-path "$work/plugin/Cargo.toml" --target-dir "$target"
cp "$target/debug/libferrum_compat.so" "$out/libferrum_compat_future.so"
