#!/usr/bin/env bash
# The quick-start demo. Builds khala-cache (Release, in build/demo), then:
#   1. khala-demo: one writer process fills a shared-memory L1 with the eight KHALA data types and
#      forked worker processes read it lock-free (the L1 on its own, no daemon).
#   2. khalad on its embedded defaults (L2 and L3 on the local disk; no Redis, no SurrealDB),
#      and khala-workers: worker processes that read through the library (L1 hits, misses
#      through khalad, then L2, L3, then a loader under single-flight) and write through khalad
#      (L1, L2 and L3); then `khalactl stats`.
#   3. One value answered by each level in turn: L1; L2 once khalad restarts on an empty L1;
#      L3 once L2's store is gone too (the hit fills L2 and L1 again).
# Arguments are passed on to khala-demo (try --help).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/deps.sh

mkdir -p build
echo "==> building (Release) in build/demo"
cmake -S . -B build/demo -DCMAKE_BUILD_TYPE=Release -DKHALA_BUILD_TESTS=OFF \
    -DKHALA_BUILD_BENCH=OFF >build/demo.log 2>&1 || { cat build/demo.log; exit 1; }
cmake --build build/demo -j "$(nproc)" --target khala-demo khala-workers khalad khalactl \
    >>build/demo.log 2>&1 || { cat build/demo.log; exit 1; }

echo "==> 1. the L1 on its own: build/demo/tools/khala-demo $*"
build/demo/tools/khala-demo "$@"

# 2. khalad, on a cache and socket of the demo's own, stopped (and its segment removed) however
# the script ends.
NAME="demo-$$"
DIR=$(mktemp -d /tmp/khala-demo.XXXXXX)
SOCK="$DIR/khalad.sock"
KHALAD_PID=
cleanup() {
    if [[ -n $KHALAD_PID ]]; then
        kill "$KHALAD_PID" 2>/dev/null || true
        wait "$KHALAD_PID" 2>/dev/null || true
    fi
    rm -f "/dev/shm/khala.$NAME.data" "/dev/shm/khala.$NAME.readers"
    rm -rf "$DIR"
}
trap cleanup EXIT

echo
start_khalad() {
    # The stores go in the demo's directory (L3's next to L2's), so the demo leaves nothing.
    build/demo/daemon/khalad --foreground --name "$NAME" --set "cache.socket=$SOCK" \
        --set "l2.path=$DIR/l2" 2>>"$DIR/khalad.log" &
    KHALAD_PID=$!
    for _ in $(seq 100); do
        [[ -S $SOCK ]] && return 0
        sleep 0.05
    done
    echo "khalad did not start:" >&2
    cat "$DIR/khalad.log" >&2
    exit 1
}
stop_khalad() { # and its L1 segment: the next khalad starts on an empty L1
    kill "$KHALAD_PID"
    wait "$KHALAD_PID" || true
    KHALAD_PID=
    rm -f "/dev/shm/khala.$NAME.data" "/dev/shm/khala.$NAME.readers"
}
ctl() { build/demo/tools/khalactl --name "$NAME" --socket "$SOCK" "$@"; }

echo "==> 2. khalad on its defaults (cache $NAME, socket $SOCK, L2 and L3 on the local disk" \
    "in $DIR/l2 and $DIR/l3), log in $DIR/khalad.log"
start_khalad
build/demo/tools/khala-workers --name "$NAME" --socket "$SOCK" --workers 4 --ops 100000
echo
echo "==> build/demo/tools/khalactl --name $NAME stats"
ctl stats

echo
echo "==> 3. one value, answered by each level in turn (khalactl --json get says which)"
ctl put demo:levels "a memory entity, written through to L1, L2 and L3" >/dev/null
answered() { ctl --json get demo:levels | sed -n 's/.*"level":"\([a-z0-9]*\)".*/\1/p'; }
echo "   written:                                     answered by $(answered)"
stop_khalad
start_khalad
echo "   khalad restarted on an empty L1:             answered by $(answered)"
stop_khalad
rm -rf "$DIR/l2"
start_khalad
echo "   ... and with L2's store removed too:         answered by $(answered)"
echo "   asked again (the L3 hit filled L2 and L1):   answered by $(answered)"
ctl inspect demo:levels | sed -n 's/^levels */   now held by: /p'
