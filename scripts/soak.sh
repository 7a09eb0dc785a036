#!/usr/bin/env bash
# The soak (issue 10): 1,000 connected clients on a private khalad, mixed gets, puts,
# invalidations and misses for a fixed count of operations; prints khalad's memory and the p99
# of each minute, and whether memory stayed flat and p99 within 2x of the first minute
# (bench/soak.c says how it judges). Minutes long; not run by CI or scripts/test.sh.
#
#   scripts/soak.sh [BUILD_DIR] [-- khala-soak options]
#
# BUILD_DIR defaults to build/soak (a RelWithDebInfo tree made here if missing); the defaults
# are 1000 clients, 8 processes, 4,000,000 operations (about 5 to 10 minutes on a small box).
# Everything runs at nice 10. Exit status: khala-soak's (0 = flat and steady).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build/soak}"
[[ $# -gt 0 ]] && shift
[[ "${1:-}" == "--" ]] && shift
if [[ ! -x "$build/bench/khala-soak" ]]; then
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  nice -n 10 cmake --build "$build" --target khala-soak -j2
fi
exec nice -n 10 "$build/bench/khala-soak" "$@"
