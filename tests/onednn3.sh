#!/usr/bin/env bash
# tests/onednn3.sh (make onednn3-check): the same sources against oneDNN 3.x.
#
#   DNNL_ROOT=PREFIX [DNNL_LIBDIR=DIR]  an installed oneDNN 3.x (include/ and lib/ under PREFIX)
#   otherwise                           Debian trixie's libdnnl-dev and its library, fetched
#                                       with `apt-get download` through a private apt state in
#                                       build/onednn3 (nothing is installed system-wide) and
#                                       unpacked there with dpkg-deb -x
#
# Compiles every source and links the binary and the tests into build-dnnl/
# (make DNNL_ROOT=...), then runs the serial tests that exercise the kernels.
# Trixie's libdnnl needs glibc >= 2.38 and libstdc++ 14, newer than bookworm's:
# there the link resolves those through trixie's libc6, libstdc++6, libgcc-s1
# and libgomp1 (fetched and unpacked beside it), and the tests run under
# trixie's dynamic loader with those libraries ahead of the system's (the
# binaries themselves are bookworm's; glibc runs older binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
TESTS=(test_kernels test_ref test_model test_classify test_lora test_dpo)
DIR=$PWD/build/onednn3
ARCH=$(dpkg --print-architecture)
TRIPLET=$(gcc -print-multiarch)
RUNTIME_PKGS=(libc6 libstdc++6 libgcc-s1 libgomp1)

# apt ARGS...: apt-get against trixie with a private state under $DIR/apt
apt_trixie() {
  local cmd=$1; shift
  "$cmd" -q -o Dir::Etc::SourceList="$DIR/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$DIR/apt/lists" -o Dir::State::Status="$DIR/apt/status" \
    -o Dir::Cache="$DIR/apt/cache" -o APT::Architecture="$ARCH" -o APT::Sandbox::User=root "$@"
}

fetch_trixie() {
  mkdir -p "$DIR/apt/lists/partial" "$DIR/apt/cache/archives/partial" "$DIR/debs"
  echo "deb http://deb.debian.org/debian trixie main" > "$DIR/apt/sources.list"
  : > "$DIR/apt/status"
  apt_trixie apt-get update > "$DIR/apt/update.log"
  # the library package's name carries its soname (libdnnl3.6): take it from the -dev package
  local lib
  lib=$(apt_trixie apt-cache show libdnnl-dev | sed -n 's/^Depends:.*\b\(libdnnl[0-9.]*\) (.*/\1/p' | head -n 1)
  [ -n "$lib" ] || { echo "onednn3: no libdnnl library package named by trixie's libdnnl-dev" >&2; exit 1; }
  rm -rf "$DIR/root" "$DIR/runtime" "$DIR"/debs/*.deb
  (cd "$DIR/debs" && apt_trixie apt-get download libdnnl-dev "$lib" "${RUNTIME_PKGS[@]}")
  for p in libdnnl-dev "$lib"; do dpkg-deb -x "$DIR"/debs/"$p"_*.deb "$DIR/root"; done
  for p in "${RUNTIME_PKGS[@]}"; do dpkg-deb -x "$DIR"/debs/"$p"_*.deb "$DIR/runtime"; done
  echo "onednn3: trixie $(ls "$DIR"/debs | tr '\n' ' ')"
}

if [ -z "${DNNL_ROOT:-}" ]; then
  fetch_trixie
  DNNL_ROOT=$DIR/root/usr
  DNNL_LIBDIR=$DNNL_ROOT/lib/$TRIPLET
  RUNTIME=$DIR/runtime/usr/lib/$TRIPLET
fi
DNNL_LIBDIR=${DNNL_LIBDIR:-$DNNL_ROOT/lib}
grep -q '#define DNNL_VERSION_MAJOR 3' "$DNNL_ROOT"/include/oneapi/dnnl/dnnl_version.h ||
  { echo "onednn3: $DNNL_ROOT/include has no oneDNN 3.x" >&2; exit 1; }
echo "onednn3: oneDNN $(sed -n 's/#define DNNL_VERSION_\(MAJOR\|MINOR\|PATCH\) //p' \
  "$DNNL_ROOT"/include/oneapi/dnnl/dnnl_version.h | paste -sd.) from $DNNL_ROOT"

# Link: trixie's libraries (when fetched) resolve libdnnl's own needs; the
# symbols they want from a newer glibc are left to the loader that runs them.
LINK=""
if [ -n "${RUNTIME:-}" ]; then LINK="-Wl,-rpath-link=$RUNTIME -Wl,--allow-shlib-undefined"; fi
BUILD=build-dnnl
make --no-print-directory -j2 DNNL_ROOT="$DNNL_ROOT" DNNL_LIBDIR="$DNNL_LIBDIR" LDFLAGS="$LINK" \
  bin/shardtune-dnnl "${TESTS[@]/#/$BUILD/tests/}" > "$DIR.build.log" 2>&1 ||
  { tail -n 40 "$DIR.build.log"; echo "onednn3: build against oneDNN 3.x FAILED"; exit 1; }
echo "onednn3: every source compiled and linked against oneDNN 3.x (log: $DIR.build.log)"
syms=$(nm -D --undefined-only bin/shardtune-dnnl)
grep -q dnnl_matmul_primitive_desc_create <<< "$syms" ||
  { echo "onednn3: bin/shardtune-dnnl does not call the 3.x API" >&2; exit 1; }

# Run: under trixie's loader when its runtime was fetched, else directly.
RUN=()
if [ -n "${RUNTIME:-}" ]; then
  RUN=("$DIR/runtime/usr/lib64/ld-linux-x86-64.so.2" --library-path "$DNNL_LIBDIR:$RUNTIME:/usr/lib/$TRIPLET")
fi
export OMP_NUM_THREADS=1 SHARDTUNE_ROOT=$PWD SHARDTUNE_BIN=$PWD/bin/shardtune-dnnl
pass=0; fail=0
for t in "${TESTS[@]}"; do
  echo "=== $t (oneDNN 3.x)"
  if timeout 600 "${RUN[@]}" "$BUILD/tests/$t"; then pass=$((pass+1)); else fail=$((fail+1)); fi
done
echo "onednn3: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
