#!/usr/bin/env bash
# Runs the tap suite over the built tests and ends with the plain summary line
# "N passed, N failed". `npm test` runs scripts/setup.sh first (its pretest).
set -uo pipefail
cd "$(dirname "$0")/.."
files=("$@")
[ ${#files[@]} -gt 0 ] || mapfile -t files < <(ls dist/test/*.test.js)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
npx tap "${files[@]}" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
summary=$(grep -E '^# \{ total: [0-9]+' "$out" | tail -n 1)
total=$(sed -E 's/.*total: ([0-9]+).*/\1/' <<<"$summary")
pass=$(sed -nE 's/.*pass: ([0-9]+).*/\1/p' <<<"$summary")
fail=$(sed -nE 's/.*fail: ([0-9]+).*/\1/p' <<<"$summary")
skip=$(sed -nE 's/.*skip: ([0-9]+).*/\1/p' <<<"$summary")
[ -n "$total" ] || { echo "0 passed, 1 failed"; exit 1; }
echo "${pass:-0} passed, ${fail:-0} failed${skip:+, $skip skipped}"
if [ "$rc" -ne 0 ] && [ "${fail:-0}" = 0 ]; then echo "tap exited $rc" >&2; fi
exit "$rc"
