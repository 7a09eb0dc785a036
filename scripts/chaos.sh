#!/usr/bin/env bash
# Faults under load, the full version (minutes; not in CI): tests/chaos/chaos_check.c kills and
# restarts khalad under write-through and write-behind load (L2 on the local disk and in Redis),
# kills and stops redis-server mid-burst, fills the disk under the disk store and under the
# write journal (a small tmpfs; needs root, skipped otherwise), and starts khalad on corrupt
# files; with L3 in SurrealDB (a private front, node + tests/support/surreal) it kills khalad,
# kills and hangs the front, and kills Redis and the front in one run; then it checks every
# acknowledged write at every level (docs/reliability.md).
#
#   scripts/chaos.sh [--kills N] [--redis-kills N] [--redis-stops N] [--surreal-kills N]
#                    [--surreal-stops N] [--writers N] [--keys N] [--seed N]
#                    [--only load|l3|disk-full|corrupt] [--keep] [--verbose]
#
# Defaults: --kills 100 (per load scenario: disk write-through, Redis write-through, Redis
# write-behind, and the L3 scenarios that kill khalad), --redis-kills 40, --redis-stops 40,
# --surreal-kills 20, --surreal-stops 20, 4 writers on 2,000 keys. The seed is
# printed first: --seed replays the same schedule. The short version (a few faults of each
# kind) is the ctest chaos_short, which scripts/test.sh runs in the plain tree.
#
# Build tree: build/chaos (RelWithDebInfo, assertions on), or an existing tree named by
# KHALA_CHAOS_BUILD (only built, not reconfigured). Needs redis-server and node on PATH, and
# tests/support/surreal/node_modules (scripts/deps.sh).
# Exit status: chaos_check's (0: nothing lost or stale, no crash).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

ARGS=(--kills 100 --redis-kills 40 --redis-stops 40 --surreal-kills 20 --surreal-stops 20)
if [[ $# -gt 0 ]]; then
    case $1 in
        -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
    esac
fi
# Later options override the defaults (chaos_check reads them in order).
ARGS+=("$@")

DIR=${KHALA_CHAOS_BUILD:-build/chaos}
if [[ -z ${KHALA_CHAOS_BUILD:-} ]]; then
    echo "==> chaos: configure in $DIR"
    cmake -S . -B "$DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKHALA_ASSERTS=ON \
        -DKHALA_BUILD_BENCH=OFF >/dev/null
fi
echo "==> chaos: build in $DIR"
cmake --build "$DIR" -j "$(nproc)" --target chaos_check khalad
echo "==> chaos: $DIR/tests/chaos_check ${ARGS[*]}"
exec "$DIR/tests/chaos_check" "${ARGS[@]}"
