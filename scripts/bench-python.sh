#!/usr/bin/env bash
# The Python binding's benchmarks (issue 11; docs/benchmarks.md, "Python binding (issue 11)").
#
#   scripts/bench-python.sh [BUILD_DIR] [bench_python.py options...]
#
# Builds khalad and the extension in BUILD_DIR (default build-bench, Release, as the other
# benchmarks), starts a private khalad (own cache name, socket and L2 directory under a temporary
# directory) and a private redis-server on a Unix socket only (no port, no persistence), runs
# bench/python/bench_python.py with the interpreter the build found against both, and stops them
# and removes the directory however the script ends. Needs redis-server and python3-redis
# (scripts/deps.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=build-bench
if [[ $# -gt 0 && $1 != -* ]]; then
    build=$1
    shift
fi

if [[ ! -f $build/CMakeCache.txt ]]; then
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DKHALA_BUILD_TESTS=OFF >/dev/null
fi
cmake --build "$build" -j "$(nproc)" --target khalad khala_python >/dev/null
python=$(sed -n 's/^Python3_EXECUTABLE:[A-Z]*=//p' "$build/CMakeCache.txt")
python=${python:-/usr/bin/python3}

tmp=$(mktemp -d /tmp/khala-benchpy-XXXXXX)
name=kbenchpy$$
khalad_pid=
redis_pid=
cleanup() {
    local pid
    for pid in $khalad_pid $redis_pid; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -f /dev/shm/khala."$name".*
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_socket <path> <pid> <what>: up to 10 s for a Unix socket to appear, while pid lives.
wait_socket() {
    local i
    for i in $(seq 100); do
        [[ -S $1 ]] && return 0
        kill -0 "$2" 2>/dev/null || { echo "bench-python: $3 exited at start" >&2; return 1; }
        sleep 0.1
    done
    echo "bench-python: $3 did not listen on $1 within 10 s" >&2
    return 1
}

redis-server --port 0 --unixsocket "$tmp/redis.sock" --save '' --appendonly no --dir "$tmp" \
    >"$tmp/redis.log" 2>&1 &
redis_pid=$!
"$build/daemon/khalad" --foreground --name "$name" --set "cache.socket=$tmp/khalad.sock" \
    --set "l2.path=$tmp/l2" --set l1.max_memory_mb=64 2>"$tmp/khalad.log" &
khalad_pid=$!
wait_socket "$tmp/redis.sock" "$redis_pid" redis-server || { cat "$tmp/redis.log" >&2; exit 1; }
wait_socket "$tmp/khalad.sock" "$khalad_pid" khalad || { cat "$tmp/khalad.log" >&2; exit 1; }

echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) CPUs," \
    "redis-server $(redis-server --version | sed -n 's/.*v=\([0-9.]*\).*/\1/p')"
PYTHONPATH="$PWD/$build/python" "$python" bench/python/bench_python.py --name "$name" \
    --socket "$tmp/khalad.sock" --redis-unix "$tmp/redis.sock" "$@"
