#!/usr/bin/env bash
# The README's main job: install what is missing, build, create the default volume (with its own
# SoftHSM2 token) if there is none, and exercise it. Until the FUSE drive lands (issue 3), the
# volume is used as a library: a write / read-back / verify demo plus fsck.
#   STRATA_DATA=DIR  use another data directory (default: $XDG_DATA_HOME/strata or ~/.local/share/strata)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
data="${STRATA_DATA:-${XDG_DATA_HOME:-$HOME/.local/share}/strata}"
if [ ! -f "$data/strata.json" ]; then
  node bin/strata.js init --data "$data"
fi
node bin/strata.js demo --data "$data"
node bin/strata.js status --data "$data"
cat <<MSG

Strata volume: $data (token and PIN inside it, PIN file mode 0600)
  node bin/strata.js fsck --data "$data"     verify every block, record and key
  node bin/strata.js status --data "$data"   figures
Nothing keeps running: there is nothing to stop. Remove the volume with: rm -rf "$data"
MSG
