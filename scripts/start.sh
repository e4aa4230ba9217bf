#!/usr/bin/env bash
# The README's main job: install what is missing, build, create the default volume (with its own
# SoftHSM2 token) if there is none, and mount the drive; prints where it is and how to stop it.
#   STRATA_DATA=DIR   data directory (default: $XDG_DATA_HOME/strata or ~/.local/share/strata)
#   STRATA_MOUNT=DIR  mount point (default: ~/Strata)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
data="${STRATA_DATA:-${XDG_DATA_HOME:-$HOME/.local/share}/strata}"
mnt="${STRATA_MOUNT:-$HOME/Strata}"
if [ ! -f "$data/strata.json" ]; then
  node bin/strata.js init --data "$data"
fi
if [ -f "$data/daemon.json" ] && node bin/strata.js status --data "$data" >/dev/null 2>&1; then
  echo "The drive in $data is already mounted:"
  node bin/strata.js status --data "$data"
  exit 0
fi
mkdir -p "$mnt"
node bin/strata.js mount "$mnt" --data "$data"
cat <<MSG

Use it like any folder: $mnt (encrypted at rest in $data; the token and its PIN are there too).
  node bin/strata.js status --data "$data"     what is mounted, team state, figures
  node bin/strata.js unmount "$mnt"            stop it (dirty data sealed, volume closed)
MSG
