#!/usr/bin/env bash
# Measure test coverage: build with KHALA_COVERAGE=ON in build/coverage, run every test against
# the real servers (scripts/test-servers.sh, as scripts/test.sh does), then report with gcovr:
#
#   - line and branch coverage per directory (lib/, daemon/, tools/) and in total, on stdout;
#   - an HTML report, one page per source file, at build/coverage/html/index.html;
#   - the per-file figures as JSON at build/coverage/coverage.json.
#
# Only the project's sources count (lib/, daemon/, tools/); tests/, bench/ and generated files do
# not. The build is a plain RelWithDebInfo tree, which KHALA_COVERAGE turns to -O0, without
# sanitizers; a test that fails is reported but the report is still written (its coverage
# counts). The exit status is non-zero when a test failed or the build failed.
#
# Environment: KHALA_COVERAGE_DIR (default build/coverage), CTEST_PARALLEL_LEVEL (ctest's own),
# KHALA_TEST_REDIS_PORT / KHALA_TEST_CLUSTER_PORT (default: free ports picked here).
# docs/testing.md has the figures of the last run and how to read them.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
DIR=${KHALA_COVERAGE_DIR:-build/coverage}

scripts/deps.sh

# Free ports for the servers unless given, so that a run next to scripts/test.sh (or another
# coverage run) does not collide with its servers: a base from the pid, moved on until the
# single server's port and the cluster's three are all free.
port_is_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
if [[ -z ${KHALA_TEST_REDIS_PORT:-} || -z ${KHALA_TEST_CLUSTER_PORT:-} ]]; then
    base=$((20000 + ($$ % 2000) * 10))
    while ! { port_is_free "$base" && port_is_free $((base + 1)) && port_is_free $((base + 2)) &&
        port_is_free $((base + 3)); }; do
        base=$((base + 10))
    done
    export KHALA_TEST_REDIS_PORT=$base KHALA_TEST_CLUSTER_PORT=$((base + 1))
fi
export KHALA_SERVERS_DIR=$ROOT/$DIR/servers

# shellcheck source=scripts/test-servers.sh
source scripts/test-servers.sh
trap stop_test_servers EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

status=0
echo "==> coverage: configure and build in $DIR"
cmake -S . -B "$DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKHALA_COVERAGE=ON -DKHALA_SANITIZE= \
    -DKHALA_BUILD_TESTS=ON -DKHALA_BUILD_BENCH=OFF >/dev/null
cmake --build "$DIR" -j "$(nproc)"

# Counters of an earlier run would add up with this one's.
find "$DIR" -name '*.gcda' -delete

echo "==> coverage: servers: redis-server on 127.0.0.1:$KHALA_TEST_REDIS_PORT, a 3-node cluster" \
    "from 127.0.0.1:$KHALA_TEST_CLUSTER_PORT"
start_test_servers

echo "==> coverage: ctest"
if ! ctest --test-dir "$DIR" --output-on-failure --no-tests=error; then
    echo "coverage.sh: some tests failed (above); the report below still counts what ran"
    status=1
fi
stop_test_servers

echo "==> coverage: gcovr"
rm -rf "$DIR/html"
mkdir -p "$DIR/html"
gcovr --root "$ROOT" --object-directory "$DIR" \
    --filter "$ROOT/lib/" --filter "$ROOT/daemon/" --filter "$ROOT/tools/" \
    --exclude-unreachable-branches --gcov-ignore-parse-errors \
    --html-details "$DIR/html/index.html" --html-title "khala-cache coverage" \
    --json-summary "$DIR/coverage.json" --json-summary-pretty \
    --print-summary >/dev/null

# Per directory: the sums of the per-file figures.
python3 - "$DIR/coverage.json" <<'EOF'
import json
import sys

files = json.load(open(sys.argv[1]))["files"]
rows = {}
for f in files:
    top = f["filename"].split("/")[0] + "/"
    r = rows.setdefault(top, [0, 0, 0, 0, 0])
    r[0] += f["line_covered"]
    r[1] += f["line_total"]
    r[2] += f["branch_covered"]
    r[3] += f["branch_total"]
    r[4] += 1


def pct(a, b):
    return f"{100.0 * a / b:5.1f} %" if b else "    - "


print(f"{'directory':<10} {'files':>5} {'lines':>16} {'':>7} {'branches':>16} {'':>7}")
total = [0, 0, 0, 0, 0]
for top in sorted(rows):
    r = rows[top]
    total = [t + x for t, x in zip(total, r)]
    print(f"{top:<10} {r[4]:>5} {r[0]:>7} / {r[1]:<6} {pct(r[0], r[1])} "
          f"{r[2]:>7} / {r[3]:<6} {pct(r[2], r[3])}")
r = total
print(f"{'total':<10} {r[4]:>5} {r[0]:>7} / {r[1]:<6} {pct(r[0], r[1])} "
      f"{r[2]:>7} / {r[3]:<6} {pct(r[2], r[3])}")
EOF
echo "coverage.sh: HTML report at $DIR/html/index.html"
exit $status
