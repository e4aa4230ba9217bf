#!/usr/bin/env bash
# Installs what is missing on a Debian 12 machine with Node 20, then builds:
#   Debian packages (softhsm2, libfuse2, fuse, libfuse-dev, pkg-config, patch; rsync, attr, sqlite3, git
#   for the application tests), npm dependencies, the build.
# Idempotent: a second run changes nothing and takes a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in softhsm2 libfuse2 fuse libfuse-dev pkg-config patch rsync attr sqlite3 git iproute2; do
  [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = 'install ok installed' ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "strata setup: missing Debian packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "strata setup: installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ! -d node_modules ] || [ package.json -nt node_modules/.package-lock.json ] || { [ -f package-lock.json ] && [ package-lock.json -nt node_modules/.package-lock.json ]; }; then
  echo "strata setup: installing npm dependencies"
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error; else npm install --no-audit --no-fund --loglevel=error; fi
fi

echo "strata setup: building"
npx tsc -p tsconfig.json
bash scripts/build-fuse.sh
# The PKCS#11 module probe (hsm/module-probe.ts), rebuilt when its source changed.
if [ ! -x build/pkcs11-probe ] || [ hsm/native/pkcs11-probe.c -nt build/pkcs11-probe ]; then
  mkdir -p build
  cc -O2 -Wall -Wextra -Werror -I node_modules/pkcs11js/includes -o build/pkcs11-probe hsm/native/pkcs11-probe.c -ldl
fi
