#!/usr/bin/env bash
# The quick-start demo. Builds khala-cache (Release, in build/demo), then:
#   1. khala-demo: one writer process fills a shared-memory L1 with the eight KHALA data types and
#      forked worker processes read it lock-free (the L1 on its own, no daemon).
#   2. khalad on its embedded defaults (L2 on the local disk; no Redis, no SurrealDB), and
#      khala-workers: worker processes that read through the library (L1 hits, misses through
#      khalad, then L2, then a loader under single-flight) and write through khalad (L1 and
#      L2); then `khalactl stats`.
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
echo "==> 2. khalad on its defaults (cache $NAME, socket $SOCK, L2 on the local disk in" \
    "$DIR/l2), log in $DIR/khalad.log"
# The L2 store goes in the demo's directory, so that the demo leaves nothing behind.
build/demo/daemon/khalad --foreground --name "$NAME" --set "cache.socket=$SOCK" \
    --set "l2.path=$DIR/l2" 2>"$DIR/khalad.log" &
KHALAD_PID=$!
for _ in $(seq 100); do
    [[ -S $SOCK ]] && break
    sleep 0.05
done
if [[ ! -S $SOCK ]]; then
    echo "khalad did not start:" >&2
    cat "$DIR/khalad.log" >&2
    exit 1
fi
build/demo/tools/khala-workers --name "$NAME" --socket "$SOCK" --workers 4 --ops 100000
echo
echo "==> build/demo/tools/khalactl --name $NAME stats"
build/demo/tools/khalactl --name "$NAME" --socket "$SOCK" stats
