#!/usr/bin/env bash
# Build khala-cache (Release, in build/demo) and run khala-demo: one writer process fills a
# shared-memory L1 with the eight KHALA data types, forked worker processes read it lock-free,
# and their misses go back to the writer, as they will go to khalad. Arguments are passed on to
# khala-demo (try --help).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/deps.sh

mkdir -p build
echo "==> building (Release) in build/demo"
cmake -S . -B build/demo -DCMAKE_BUILD_TYPE=Release -DKHALA_BUILD_TESTS=OFF \
    -DKHALA_BUILD_BENCH=OFF >build/demo.log 2>&1 || { cat build/demo.log; exit 1; }
cmake --build build/demo -j "$(nproc)" --target khala-demo >>build/demo.log 2>&1 ||
    { cat build/demo.log; exit 1; }

echo "==> build/demo/tools/khala-demo $*"
exec build/demo/tools/khala-demo "$@"
