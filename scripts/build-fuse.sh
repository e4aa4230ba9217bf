#!/usr/bin/env bash
# Build Strata's patched fuse-native (see fs/fuse/native/README.md).
#
#   node_modules/fuse-native/{fuse-native.c,index.js,semaphore.h}   (2.2.6, pristine)
#   + fs/fuse/native/{fuse-native.c,index.js}.patch + fs/fuse/native/binding.gyp
#   -> build/fuse-native/ built with node-gyp against Debian's libfuse2 (pkg-config fuse)
#
# Entry point: createRequire(import.meta.url)('<repo>/build/fuse-native/index.js')
# Idempotent: skips the rebuild when the inputs are unchanged (--force rebuilds anyway).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/node_modules/fuse-native"
PATCHES="$ROOT/fs/fuse/native"
OUT="$ROOT/build/fuse-native"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

die () { echo "build-fuse: $*" >&2; exit 1; }

# --- prerequisites, each naming the Debian package that provides it ----------------
command -v pkg-config >/dev/null || die "pkg-config not found: apt-get install pkg-config"
pkg-config --exists fuse || die "libfuse2 headers not found (pkg-config fuse): apt-get install libfuse-dev"
ldconfig -p 2>/dev/null | grep -c 'libfuse\.so\.2' >/dev/null || die "libfuse.so.2 not found: apt-get install libfuse2"
command -v fusermount >/dev/null || [[ -x /bin/fusermount ]] || die "fusermount not found: apt-get install fuse"
command -v cc >/dev/null || die "no C compiler: apt-get install build-essential"
command -v make >/dev/null || die "make not found: apt-get install build-essential"
command -v python3 >/dev/null || die "python3 (needed by node-gyp) not found: apt-get install python3"
command -v patch >/dev/null || die "patch not found: apt-get install patch"
[[ -f "$SRC/fuse-native.c" && -f "$SRC/index.js" ]] || die "node_modules/fuse-native missing: run npm install"
VERSION="$(node -p "require('$SRC/package.json').version")"
[[ "$VERSION" == "2.2.6" ]] || die "fs/fuse/native patches are for fuse-native 2.2.6, found $VERSION"

NODEDIR_ARGS=()
if [[ -f /usr/include/node/node_api.h && -f /usr/include/node/common.gypi ]]; then
  NODEDIR_ARGS=(--nodedir=/usr)  # Debian's nodejs headers; no download
fi

if [[ -x "$ROOT/node_modules/.bin/node-gyp" ]]; then
  GYP=("$ROOT/node_modules/.bin/node-gyp")
elif NPM_GYP="$(dirname "$(readlink -f "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js" && [[ -f "$NPM_GYP" ]]; then
  GYP=(node "$NPM_GYP")
else
  GYP=(npx --yes node-gyp)
fi

# --- idempotence ---------------------------------------------------------------------
STAMP="$(cat "$SRC/fuse-native.c" "$SRC/index.js" "$PATCHES"/*.patch "$PATCHES/binding.gyp" "$0" \
  | sha256sum | cut -c1-64) $(node -p process.versions.modules) $(pkg-config --modversion fuse)"
if [[ $FORCE -eq 0 && -f "$OUT/build/Release/fuse.node" && -f "$OUT/.stamp" && "$(cat "$OUT/.stamp")" == "$STAMP" ]]; then
  echo "build-fuse: up to date ($OUT)"
  exit 0
fi

# --- copy, patch, build --------------------------------------------------------------
rm -rf "$OUT"
mkdir -p "$OUT"
cp "$SRC/fuse-native.c" "$SRC/index.js" "$SRC/semaphore.h" "$OUT/"
cp "$PATCHES/binding.gyp" "$OUT/binding.gyp"
for p in "$PATCHES"/*.patch; do
  patch -s -p1 -d "$OUT" --no-backup-if-mismatch < "$p" || die "patch $(basename "$p") does not apply"
done
echo '{ "name": "fuse-native-strata", "version": "2.2.6-strata", "private": true, "main": "index.js" }' > "$OUT/package.json"

(cd "$OUT" && "${GYP[@]}" rebuild "${NODEDIR_ARGS[@]}" >"$OUT/build.log" 2>&1) || {
  tail -n 30 "$OUT/build.log" >&2
  die "node-gyp build failed (full log: $OUT/build.log)"
}

# --- verify: loads, and links Debian's libfuse.so.2 rather than a bundled copy --------
node -e "require('$OUT/index.js')" || die "built module does not load"
LIBFUSE="$(ldd "$OUT/build/Release/fuse.node" | awk '/libfuse\.so/ { print $3 }')"
[[ "$LIBFUSE" == /usr/lib/* || "$LIBFUSE" == /lib/* ]] || die "fuse.node links '$LIBFUSE', expected Debian's libfuse2"

echo "$STAMP" > "$OUT/.stamp"
echo "build-fuse: built $OUT/build/Release/fuse.node (libfuse $(pkg-config --modversion fuse): $LIBFUSE)"
