#!/bin/bash
# Build the fault-injecting PKCS#11 shim into build/pkcs11-fault/libfault-pkcs11.so (gitignored).
# Usage: scripts/faults/pkcs11-fault/build.sh [OUT_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
out="${1:-$repo/build/pkcs11-fault}"
mkdir -p "$out"
# Build to a temp name and rename: a daemon loading the library never sees a half-written file.
gcc -O2 -Wall -Wextra -Werror -shared -fPIC -fvisibility=hidden \
  -I "$repo/node_modules/pkcs11js/includes" \
  -o "$out/libfault-pkcs11.so.tmp.$$" "$here/fault-pkcs11.c" -ldl -lpthread
mv "$out/libfault-pkcs11.so.tmp.$$" "$out/libfault-pkcs11.so"
echo "$out/libfault-pkcs11.so"
