#!/usr/bin/env bash
# Builds the root filesystem of Ferrum's container image in a folder, without a container
# engine. The Dockerfile's final stages are `FROM scratch` + a COPY of what this script makes,
# so the folder measured here is byte for byte the image.
#
#   slim  ferrum + the onnxruntime backend
#   full  ferrum + every CPU backend of the install tree (onnxruntime, openvino, pytorch,
#         python with the Python runtime it embeds, fil and the example backends)
#
# What goes in:
#   /opt/ferrum/bin/ferrum, /opt/ferrum/backends/<name>/   from the install tree, stripped
#   the shared libraries all of them load (glibc, libstdc++, libgcc_s, the dynamic loader,
#     libpython, ...), found with ldd and copied to the paths they have on this machine, with
#     the symbolic links on the way (merged /usr: /lib -> usr/lib), so the loader's default
#     search path and every RUNPATH find them unchanged
#   for the python backend: the interpreter's standard library (no tests, idle, tkinter,
#     ensurepip, bytecode caches, ...) at the path libpython was built for, and numpy as the
#     install tree ships it (backends/python/site-packages, without its tests)
#   /etc/passwd and /etc/group with the user nonroot (65532), /etc/nsswitch.conf, the CA
#     bundle (/etc/ssl/certs/ca-certificates.crt) when this machine has one, /tmp (1777),
#     /models (empty; the default model repository)
#
# Usage: scripts/rootfs.sh slim|full [install tree, default dist] [out dir, default
#        target/rootfs-<variant>]
# The out dir is replaced; one that is not empty must be an earlier rootfs (it holds
# opt/ferrum/bin/ferrum). Prints what is inside and the uncompressed size (bytes, as du -sb
# counts them, and MB = 10^6 bytes, as docker images shows them).
# Environment:
#   PYTHON                 the interpreter whose libpython the python plugin links (its
#                          standard library is copied); default: the first of $PYO3_PYTHON,
#                          .venv/bin/python3, python3, python3.X whose libpython is the one
#                          the plugin loads
#   FERRUM_ROOTFS_LIMIT_MB fail (exit 3) when the rootfs is larger than this many MB
set -euo pipefail
umask 022

die() {
  echo "rootfs: $*" >&2
  exit 1
}
say() { echo "rootfs: $*" >&2; }

variant=${1:-}
case "$variant" in
  slim | full) ;;
  *) die "usage: scripts/rootfs.sh slim|full [install tree] [out dir]" ;;
esac
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tree=${2:-$root/dist}
out=${3:-$root/target/rootfs-$variant}

for tool in strip readelf ldd tar du; do
  command -v "$tool" >/dev/null || die "'$tool' is missing (strip and readelf come with binutils, ldd with libc-bin)"
done
[[ -x $tree/bin/ferrum ]] || die "$tree/bin/ferrum is missing: lay out an install tree first (make build)"
[[ -d $tree/backends ]] || die "$tree/backends is missing"
tree=$(cd "$tree" && pwd)

# The backends each variant ships. tensorrt needs a GPU and NVIDIA's libraries: never here.
backends=()
if [[ $variant == slim ]]; then
  backends=(onnxruntime)
else
  for dir in "$tree"/backends/*/; do
    name=$(basename "$dir")
    [[ $name == tensorrt ]] && continue
    backends+=("$name")
  done
fi
for name in "${backends[@]}"; do
  [[ -f $tree/backends/$name/libferrum_$name.so ]] \
    || die "$tree/backends/$name/libferrum_$name.so is missing"
done

# A fresh out dir; never remove anything that is not an earlier rootfs.
mkdir -p "$out"
out=$(cd "$out" && pwd)
[[ $out != / ]] || die "refusing to build into /"
if [[ -n $(ls -A "$out") ]]; then
  [[ -f $out/opt/ferrum/bin/ferrum ]] \
    || die "$out is not empty and is not an earlier rootfs (no opt/ferrum/bin/ferrum); give an empty or new folder"
  rm -rf -- "$out"
  mkdir -p "$out"
fi

# True when the file is an ELF object with a symbol table that strip would remove. (Not
# `readelf | grep -q`: grep's early exit fails readelf with SIGPIPE, and pipefail with it.)
has_symtab() {
  [[ $(readelf -S "$1" 2>/dev/null) == *.symtab* ]]
}

# Copies a file; ELF files with a symbol table are stripped on the way.
copy_file() {
  local src=$1 dst=$2
  if has_symtab "$src"; then
    strip --strip-unneeded -o "$dst" "$src"
    chmod --reference="$src" "$dst"
  else
    cp --preserve=mode "$src" "$dst"
  fi
}

# Copies the host path $1 (file or folder, folders without their contents) into $out at the
# same path, recreating every symbolic link met on the way, link by link. Never follows a
# link inside $out: the walk resolves each link on the host, so an absolute link target (as
# /usr/lib64/ld-linux-x86-64.so.2 -> /lib/...) cannot lead outside $out.
replicate() {
  local rest=${1#/} cur="" comp next target hops=0
  while [[ -n $rest ]]; do
    comp=${rest%%/*}
    if [[ $rest == */* ]]; then rest=${rest#*/}; else rest=""; fi
    case "$comp" in
      "" | .) continue ;;
      ..) cur=${cur%/*}; continue ;;
    esac
    next="$cur/$comp"
    if [[ -L $next ]]; then
      hops=$((hops + 1))
      ((hops < 40)) || die "too many symbolic links resolving $1"
      target=$(readlink "$next")
      [[ -L $out$next || -e $out$next ]] || ln -s "$target" "$out$next"
      if [[ $target == /* ]]; then
        cur=""
        rest="${target#/}${rest:+/$rest}"
      else
        rest="$target${rest:+/$rest}"
      fi
    elif [[ -d $next ]]; then
      [[ -d $out$next ]] || mkdir "$out$next"
      cur=$next
    elif [[ -f $next && -z $rest ]]; then
      [[ -e $out$next ]] || copy_file "$next" "$out$next"
      cur=$next
    else
      return 1
    fi
  done
}

# 1. The layout, ferrum and the backends.
mkdir -p "$out"/{opt/ferrum/bin,opt/ferrum/backends,models,tmp,etc,home/nonroot}
copy_file "$tree/bin/ferrum" "$out/opt/ferrum/bin/ferrum"
# What never runs: bytecode caches, tests, type stubs, C headers, numpy's build tools.
tar -C "$tree/backends" -cf - \
  --exclude=__pycache__ --exclude='*.pyc' --exclude=tests --exclude=conftest.py \
  --exclude='*.pyi' --exclude='*.pxd' \
  --exclude='site-packages/numpy/f2py' --exclude='site-packages/numpy/distutils' \
  --exclude='site-packages/numpy/_pyinstaller' --exclude='site-packages/numpy/_core/include' \
  --exclude='site-packages/numpy/_core/lib' \
  --exclude='.*.tmp' \
  "${backends[@]}" | tar -C "$out/opt/ferrum/backends" -xf -
# Strip the plugins and the runtime libraries beside them; the wheels' files under
# site-packages are left as their makers built them (already small, and patched with patchelf).
find "$out/opt/ferrum/backends" -path '*/site-packages' -prune -o -type f -name '*.so*' -print0 \
  | while IFS= read -r -d '' lib; do
      if has_symtab "$lib"; then
        strip --strip-unneeded "$lib"
      fi
    done

# 2. The Python runtime the python plugin embeds.
python_note=""
libpython=""
if [[ " ${backends[*]} " == *" python "* ]]; then
  plugin="$tree/backends/python/libferrum_python.so"
  soname=$(readelf -d "$plugin" | sed -n 's/.*(NEEDED).*\[\(libpython[^]]*\)\].*/\1/p' | head -n1)
  libpython="" minor=""
  if [[ -n $soname ]]; then
    libpython=$(env -u LD_LIBRARY_PATH ldd "$plugin" | awk -v so="$soname" '$1 == so && $2 == "=>" { print $3 }')
    [[ -n $libpython && -f $libpython ]] \
      || die "$plugin needs $soname, which the loader does not find here"
    libpython=$(realpath "$libpython")
    minor=${soname#libpython}
    minor=${minor%%.so*}
  else
    # A Python built without a shared library is linked into the plugin; its standard
    # library is still needed: the interpreter asked below is taken as the one.
    say "$plugin links no libpython (a static Python); taking the first interpreter found"
  fi
  candidates=()
  [[ -n ${PYTHON:-} ]] && candidates+=("$PYTHON")
  [[ -n ${PYO3_PYTHON:-} ]] && candidates+=("$PYO3_PYTHON")
  candidates+=("$root/.venv/bin/python3" python3)
  [[ -n $minor ]] && candidates+=("python$minor")
  query='import sys, sysconfig as s, os
print(os.path.realpath(os.path.join(s.get_config_var("LIBDIR") or "", s.get_config_var("INSTSONAME") or "")))
print(s.get_path("stdlib")); print(s.get_path("platstdlib"))'
  stdlib="" platstdlib=""
  for py in "${candidates[@]}"; do
    command -v "$py" >/dev/null 2>&1 || continue
    answer=$("$py" -c "$query" 2>/dev/null) || continue
    mapfile -t lines <<<"$answer"
    if [[ -z $libpython || ${lines[0]} == "$libpython" ]]; then
      stdlib=${lines[1]} platstdlib=${lines[2]}
      break
    fi
  done
  [[ -n $stdlib ]] \
    || die "no interpreter found whose library is ${libpython:-any} (the python plugin's); set PYTHON to it"
  dirs=("$stdlib")
  [[ $(realpath "$platstdlib") == $(realpath "$stdlib") ]] || dirs+=("$platstdlib")
  for dir in "${dirs[@]}"; do
    [[ -d $dir ]] || die "the standard library folder $dir is missing"
    replicate "$dir" || die "cannot copy $dir"
    real=$(realpath "$dir")
    tar -C "$real" -cf - \
      --exclude=__pycache__ --exclude='*.pyc' --exclude='*.pyo' \
      --exclude=test --exclude=tests --exclude=idle_test \
      --exclude=./idlelib --exclude=./tkinter --exclude=./turtledemo --exclude=./turtle.py \
      --exclude=./ensurepip --exclude=./lib2to3 --exclude=./pydoc_data --exclude=./distutils \
      --exclude=./site-packages --exclude=./dist-packages --exclude='./config-*' \
      --exclude=./sqlite3 --exclude=./curses --exclude=./venv \
      --exclude='lib-dynload/_test*' --exclude='lib-dynload/_ctypes_test*' \
      --exclude='lib-dynload/_xxtestfuzz*' --exclude='lib-dynload/xxlimited*' \
      --exclude='lib-dynload/_tkinter*' --exclude='lib-dynload/_curses*' \
      --exclude='lib-dynload/readline*' --exclude='lib-dynload/_sqlite3*' \
      --exclude='lib-dynload/_dbm*' --exclude='lib-dynload/_gdbm*' --exclude='lib-dynload/nis*' \
      --exclude='lib-dynload/ossaudiodev*' --exclude='lib-dynload/spwd*' \
      --exclude='lib-dynload/_crypt*' \
      . | tar -C "$out$real" -xf -
  done
  python_note=yes
fi

# 3. The shared-library closure: every ELF file in the rootfs, through ldd. Libraries found
# inside the rootfs (a backend's own, by $ORIGIN) are there already; the rest are copied.
mapfile -d '' elves < <(find "$out" -type f \( -name '*.so' -o -name '*.so.*' \) -print0)
elves+=("$out/opt/ferrum/bin/ferrum")
interp=$(readelf -l "$tree/bin/ferrum" | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')
[[ -n $interp ]] || die "$tree/bin/ferrum names no program interpreter"
needed=("$interp")
missing=()
# ldd runs the libraries' own loader over each; a file that is not an ELF object is skipped.
ldd_out=$(env -u LD_LIBRARY_PATH ldd "${elves[@]}" 2>/dev/null || true)
current=""
while IFS= read -r line; do
  if [[ $line == /*: ]]; then
    current=${line%:}
    continue
  fi
  if [[ $line == *"=> not found"* ]]; then
    lib=$(echo "$line" | awk '{ print $1 }')
    if [[ $current == "$out"/*/lib-dynload/* && -f $current ]]; then
      # An optional native module of the standard library whose library this machine
      # lacks (Python imports what it needs of these lazily): left out, not fatal.
      say "leaving out ${current#"$out"}: it needs $lib, which is not installed here"
      rm -f -- "$current"
      continue
    fi
    missing+=("${current#"$out"} needs $lib")
  elif [[ $line == *" => /"* ]]; then
    needed+=("$(echo "$line" | awk '{ print $3 }')")
  elif [[ $line =~ ^[[:space:]]+(/[^[:space:]]+)[[:space:]]\(0x ]]; then
    needed+=("${BASH_REMATCH[1]}")
  fi
done <<<"$ldd_out"
if ((${#missing[@]})); then
  printf 'rootfs: missing library: %s\n' "${missing[@]}" >&2
  die "the loader cannot find the libraries above here; install them or drop what needs them"
fi
mapfile -t needed < <(printf '%s\n' "${needed[@]}" | sort -u)
syslibs=0
for lib in "${needed[@]}"; do
  [[ $lib == "$out"/* ]] && continue
  replicate "$lib" || die "cannot copy $lib"
  syslibs=$((syslibs + 1))
done
# A link copied with the libraries whose target was not (a library's version link, Debian's
# sitecustomize.py -> /etc/...): copy the target, or drop the link when this machine has none.
while IFS= read -r -d '' link; do
  host=${link#"$out"}
  target=$(readlink "$link")
  if [[ $target != /* ]]; then
    # Relative: resolves inside the rootfs already when the target was copied.
    [[ -e $link ]] && continue
    target="$(dirname "$host")/$target"
  fi
  if ! replicate "$target" 2>/dev/null; then
    say "dropping the dangling link $host -> $(readlink "$link")"
    rm -f -- "$link"
  fi
done < <(find "$out" -type l -print0)

# 4. Users, name service, certificates.
cat >"$out/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$out/etc/group" <<'EOF'
root:x:0:
nonroot:x:65532:
EOF
cat >"$out/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files dns
EOF
certs=""
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
  replicate /etc/ssl/certs/ca-certificates.crt || die "cannot copy /etc/ssl/certs/ca-certificates.crt"
  # OpenSSL (Python's ssl) looks in its own folder; on Debian that is a link to the bundle.
  if [[ -L /usr/lib/ssl/cert.pem ]]; then
    replicate /usr/lib/ssl/cert.pem || true
  fi
  certs=" CA certificates,"
else
  say "no /etc/ssl/certs/ca-certificates.crt here: the image has no CA certificates"
fi

# 5. Modes: everything readable by everyone, nothing writable but /tmp. The nonroot user's
# home is not writable either, so a server runs the same with a read-only root filesystem as
# without (ONNX Runtime, for one, would keep a telemetry id under ~/.cache where it can).
chmod -R a+rX,go-w "$out"
chmod 1777 "$out/tmp"

# 6. What is inside, and how big it is (on stdout).
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }
size_of() { du -sb "$@" | awk '{ s += $1 } END { print s + 0 }'; }
echo "rootfs: the $variant rootfs in $out, from $tree:"
printf '  %-28s %10s\n' "ferrum" "$(mb "$(size_of "$out/opt/ferrum/bin")")"
for name in "${backends[@]}"; do
  printf '  %-28s %10s\n' "backend $name" "$(mb "$(size_of "$out/opt/ferrum/backends/$name")")"
done
if [[ -n $libpython ]]; then
  printf '  %-28s %10s  (%s)\n' "$(basename "$libpython")" "$(mb "$(size_of "$out$libpython")")" "$(dirname "$libpython")"
fi
if [[ -n $python_note ]]; then
  printf '  %-28s %10s  (%s)\n' "python standard library" "$(mb "$(size_of "$out$(realpath "$stdlib")")")" "$(realpath "$stdlib")"
fi
printf '  %-28s\n' "$syslibs system libraries,$certs passwd, group"
total=$(size_of "$out")
echo "rootfs $variant: $total bytes ($(mb "$total")) in $out"
if [[ -n ${FERRUM_ROOTFS_LIMIT_MB:-} ]]; then
  limit=$((FERRUM_ROOTFS_LIMIT_MB * 1000000))
  if ((total > limit)); then
    echo "rootfs: the $variant rootfs is $(mb "$total"), over its limit of ${FERRUM_ROOTFS_LIMIT_MB} MB" >&2
    exit 3
  fi
fi
