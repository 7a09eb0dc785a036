#!/usr/bin/env bash
# Build and test khala-cache the way CI does. Four build trees:
#
#   build/test-plain  Debug (gcc, -O0, assertions on), every test
#   build/test-asan   RelWithDebInfo, KHALA_SANITIZE=address,undefined, every test but the
#                     chaos checker's (label `chaos`, plain tree only)
#                     Both run the Python binding's tests (label `python`: pytest, the install
#                     checks); in the ASan tree CMake gives their interpreter the ASan runtime
#                     (LD_PRELOAD) and its own ASAN_OPTIONS (docs/testing.md, "The Python tests")
#   build/test-tsan   KHALA_SANITIZE=thread (built with clang), the tests labelled `concurrency`
#   build/test-fuzz   clang, KHALA_FUZZ: each libFuzzer target for KHALA_FUZZ_RUNS runs, seeded
#                     with tests/fuzz/corpus/<target>/ (scripts/fuzz.sh runs them for 10 M)
#
# plus a clang-format check of every tracked .c/.h. Every stage runs even when an earlier one
# failed, so one run reports everything; the exit status is non-zero if any stage failed, and
# the last lines are one summary line per stage.
#
# Environment: CTEST_PARALLEL_LEVEL (ctest's own; default sequential, since the multi-process
# tests fork their own readers), KHALA_TEST_TREES (subset, e.g. "plain tsan"), and the usual
# *SAN_OPTIONS, which override the defaults below.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/deps.sh

JOBS=$(nproc)
TREES=${KHALA_TEST_TREES:-plain asan tsan fuzz}
FUZZ_RUNS=${KHALA_FUZZ_RUNS:-50000}

# halt_on_error: the first report fails the test instead of scrolling past. Leaks are errors.
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:abort_on_error=0:detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}

# ---------------------------------------------------------------------------------------------
# The real servers the tests need (scripts/test-servers.sh: a redis-server on a loopback port and
# a Unix socket, a 3-node Redis Cluster; SurrealDB with the L3 issue). start_servers exports
# where they are (KHALA_TEST_REDIS_URL...); the EXIT trap stops them however the script ends.
# ---------------------------------------------------------------------------------------------
# shellcheck source=scripts/test-servers.sh
source scripts/test-servers.sh
start_servers() {
    echo "==> servers: redis-server on 127.0.0.1:$KHALA_TEST_REDIS_PORT and a Unix socket," \
        "a 3-node cluster from 127.0.0.1:$KHALA_TEST_CLUSTER_PORT, the SurrealDB front on" \
        "127.0.0.1:${KHALA_TEST_SURREAL_PORT:-38000}"
    if ! start_test_servers; then
        echo "test.sh: cannot start the test servers (above); the tests that need them will fail"
        record servers FAIL "cannot start redis-server or the SurrealDB front (see above)"
    fi
}
stop_servers() {
    stop_test_servers
}
trap stop_servers EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

SUMMARY=()
FAILED=0

record() { # record <stage> <status> <detail>
    SUMMARY+=("$(printf '%-7s %-4s %s' "$1" "$2" "$3")")
    if [[ $2 != PASS ]]; then
        FAILED=1
    fi
}

# The format check: every tracked .c/.h (plus new files not yet added, so a developer hears about
# them before committing; a clean clone has none).
check_format() {
    local start=$SECONDS files=()
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        mapfile -d '' files < <(git ls-files -z --cached --others --exclude-standard -- '*.c' '*.h')
    else
        mapfile -d '' files < <(find include lib tests bench tools daemon -name '*.[ch]' -print0 2>/dev/null)
    fi
    local existing=() f
    for f in "${files[@]}"; do
        [[ -f $f ]] && existing+=("$f")
    done
    echo "==> format: clang-format --dry-run -Werror over ${#existing[@]} files"
    if [[ ${#existing[@]} -eq 0 ]] || clang-format --dry-run -Werror "${existing[@]}"; then
        record format PASS "${#existing[@]} files ($((SECONDS - start))s)"
    else
        record format FAIL "unformatted files above; fix with clang-format -i"
    fi
}

# run_tree <name> <compiler> <ctest args...> -- <cmake args...>
run_tree() {
    local name=$1 dir=build/test-$1 cc
    cc=$(command -v "$2")
    shift 2
    local ctest_args=() cmake_args=()
    while [[ $# -gt 0 && $1 != -- ]]; do
        ctest_args+=("$1")
        shift
    done
    shift
    cmake_args=("$@")

    local start=$SECONDS
    echo "==> $name: configure and build in $dir ($cc)"
    # A tree configured with another compiler cannot be switched in place.
    if [[ -f $dir/CMakeCache.txt ]] && ! grep -qx "CMAKE_C_COMPILER:[A-Z]*=$cc" "$dir/CMakeCache.txt"; then
        rm -rf "$dir"
    fi
    if ! cmake -S . -B "$dir" -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        "${cmake_args[@]}"; then
        record "$name" FAIL "configure failed"
        return
    fi
    if ! cmake --build "$dir" -j "$JOBS"; then
        record "$name" FAIL "build failed ($((SECONDS - start))s)"
        return
    fi
    local built=$((SECONDS - start))
    echo "==> $name: ctest ${ctest_args[*]}"
    local wrap=()
    if [[ $name == tsan ]] && setarch "$(uname -m)" -R true 2>/dev/null; then
        # TSan's shadow memory needs a fixed layout; kernels with high mmap randomization break
        # it ("unexpected memory mapping"), so run without ASLR.
        wrap=(setarch "$(uname -m)" -R)
    fi
    if "${wrap[@]}" ctest --test-dir "$dir" --output-on-failure --no-tests=error "${ctest_args[@]}"; then
        record "$name" PASS "build ${built}s, tests $((SECONDS - start - built))s"
    else
        record "$name" FAIL "ctest failed (build ${built}s, tests $((SECONDS - start - built))s)"
    fi
}

# The libFuzzer targets (clang, KHALA_FUZZ), each for a bounded number of runs from its seed
# corpus (written by its replay program). Every other tree already replays the same targets
# through a plain main(). FUZZ_TARGETS: "name:max_len" for build/test-fuzz/tests/fuzz_<name>.
FUZZ_TARGETS=(segment:200000 config:16384 frame:65536 inval:2048 rvalue:4096)
run_fuzz() {
    local dir=build/test-fuzz start=$SECONDS cc entry name max_len targets=() failed=() ran=()
    cc=$(command -v clang)
    for entry in "${FUZZ_TARGETS[@]}"; do
        targets+=("fuzz_${entry%%:*}" "fuzz_${entry%%:*}_replay")
    done
    echo "==> fuzz: configure and build in $dir ($cc)"
    if ! cmake -S . -B "$dir" -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DKHALA_FUZZ=ON -DKHALA_SANITIZE=address,undefined -DKHALA_BUILD_BENCH=OFF ||
        ! cmake --build "$dir" -j "$JOBS" --target "${targets[@]}"; then
        record fuzz FAIL "configure or build failed"
        return
    fi
    for entry in "${FUZZ_TARGETS[@]}"; do
        name=${entry%%:*}
        max_len=${entry#*:}
        local corpus=$dir/corpus/$name
        rm -rf "$corpus"
        mkdir -p "$corpus"
        echo "==> fuzz: fuzz_$name, $FUZZ_RUNS runs"
        local log=$dir/fuzz_$name.log status=0
        if ! "$dir/tests/fuzz_${name}_replay" --write-seed "$corpus"; then
            failed+=("fuzz_$name: cannot write the seed corpus")
            continue
        fi
        # The committed corpus (minimized by scripts/fuzz.sh --merge) seeds the run too.
        if [[ -d tests/fuzz/corpus/$name ]]; then
            cp -f tests/fuzz/corpus/"$name"/* "$corpus"/ 2>/dev/null || true
        fi
        "$dir/tests/fuzz_$name" -runs="$FUZZ_RUNS" -max_len="$max_len" -max_total_time=300 \
            "$corpus" >"$log" 2>&1 || status=$?
        grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|ERROR|SUMMARY|^Done' "$log" || true
        if [[ $status -eq 0 ]]; then
            ran+=("fuzz_$name")
        else
            tail -n 60 "$log"
            failed+=("fuzz_$name found a crash (see above)")
        fi
    done
    if [[ ${#failed[@]} -eq 0 ]]; then
        record fuzz PASS "${ran[*]} $FUZZ_RUNS runs each ($((SECONDS - start))s)"
    else
        record fuzz FAIL "$(IFS=';'; echo "${failed[*]}")"
    fi
}

start_servers

check_format
for tree in $TREES; do
    case $tree in
        # Debug for the plain tree: the other trees are RelWithDebInfo, and a warning that only
        # -O0 shows (gcc's -Wformat-truncation, say) must fail here rather than for a developer.
        # docs/testing.md lists the build types and compilers that must all compile.
        plain) run_tree plain gcc -- -DKHALA_SANITIZE= -DCMAKE_BUILD_TYPE=Debug ;;
        # The chaos checker's short run (label `chaos`) runs in the plain tree only: it times
        # nothing, but it starts dozens of khalad and redis-server processes.
        asan) run_tree asan gcc -LE chaos -- -DKHALA_SANITIZE=address,undefined -DKHALA_BUILD_BENCH=OFF ;;
        # clang for TSan: it is TSan's reference implementation, and gcc 12 refuses
        # atomic_thread_fence under -fsanitize=thread (-Wtsan, an error with KHALA_WERROR). It
        # also puts a second compiler's warnings in front of every change.
        # No Python binding there: no test labelled `concurrency` uses it.
        tsan) run_tree tsan clang -L concurrency -- -DKHALA_SANITIZE=thread -DKHALA_BUILD_BENCH=OFF \
            -DKHALA_BUILD_PYTHON=OFF ;;
        fuzz) run_fuzz ;;
        *)
            echo "test.sh: unknown tree '$tree' in KHALA_TEST_TREES" >&2
            record "$tree" FAIL "unknown tree"
            ;;
    esac
done

stop_servers

echo
echo "==> summary"
for line in "${SUMMARY[@]}"; do
    echo "$line"
done
if [[ $FAILED -ne 0 ]]; then
    echo "test.sh: FAILED"
    exit 1
fi
echo "test.sh: all passed"
