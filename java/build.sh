#!/usr/bin/env bash
# Builds the Java binding of Ferrum's C API: the JNI shim (java/jni/ferrum_jni.c, compiled by
# gcc against target/debug/libferrum.so) and the classes (javac only), into target/java/.
# Needs a JDK (javac, jni.h) and gcc; `cargo build -p ferrum-capi` first (scripts/test-embedding.sh
# does both). Usage: java/build.sh [PROFILE_DIR]   (default: target/debug)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lib_dir="$(cd "${1:-$root/target/debug}" && pwd)"
out="$root/target/java"
javac_bin="$(command -v javac)" || { echo "java/build.sh: javac not found (install a JDK)" >&2; exit 1; }
java_home="${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$javac_bin")")")}"
header_dir="$root/target/include"
[ -f "$header_dir/ferrum.h" ] || header_dir="$root/capi/include"
mkdir -p "$out/classes"
gcc -std=c11 -D_GNU_SOURCE -O1 -g -Wall -Wextra -Werror -shared -fPIC \
    -I"$java_home/include" -I"$java_home/include/linux" -I"$header_dir" \
    "$root/java/jni/ferrum_jni.c" -L"$lib_dir" -lferrum -lpthread \
    -Wl,-rpath,"$lib_dir" -o "$out/libferrum_jni.so"
javac -Xlint:all -Werror -d "$out/classes" "$root"/java/src/io/ferrum/*.java
echo "java/build.sh: built $out/libferrum_jni.so and $out/classes"
