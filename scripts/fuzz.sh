#!/usr/bin/env bash
# Run every libFuzzer target in tests/fuzz for a long time (10 M inputs each by default) under
# ASan and UBSan, and fail on any crash. Not part of CI (scripts/test.sh runs the same targets
# for a few seconds each, from the same committed corpora); docs/reliability.md has the figures.
#
#   scripts/fuzz.sh [--runs N] [--time SECONDS] [--merge] [TARGET...]
#
#   --runs N        inputs per target (libFuzzer's -runs); default 10000000
#   --time SECONDS  stop a target after this long even if it has not run N inputs
#                   (-max_total_time); default none. The summary says how many inputs ran.
#   --merge         afterwards, minimize what the run found plus the committed corpus into
#                   tests/fuzz/corpus/<target>/ (-merge=1: the smallest set of inputs with the
#                   same coverage), for a commit; at most CORPUS_FILES_MAX inputs and
#                   CORPUS_BYTES_MAX bytes per target are kept, the smallest first, so that the
#                   repository stays small (a segment input is a whole 96 KiB segment)
#   TARGET...       some of: segment config frame inval rvalue (default: all)
#
# Build tree: build/test-fuzz (clang, KHALA_FUZZ=ON, KHALA_SANITIZE=address,undefined), the one
# scripts/test.sh uses. Each target starts from its replay program's seed and its committed
# corpus tests/fuzz/corpus/<target>/; crashes are written to build/test-fuzz/artifacts/<target>/.
# Run it niced on a shared machine: `nice -n 10 scripts/fuzz.sh`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# "name:max_len", the same list as scripts/test.sh's FUZZ_TARGETS.
ALL_TARGETS=(segment:200000 config:16384 frame:65536 inval:2048 rvalue:4096)
RUNS=10000000
CORPUS_FILES_MAX=300
CORPUS_BYTES_MAX=$((1024 * 1024))
TIME=0
MERGE=0
WANT=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --runs) RUNS=$2; shift 2 ;;
        --time) TIME=$2; shift 2 ;;
        --merge) MERGE=1; shift ;;
        -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) WANT+=("$1"); shift ;;
    esac
done

TARGETS=()
for entry in "${ALL_TARGETS[@]}"; do
    name=${entry%%:*}
    if [[ ${#WANT[@]} -eq 0 ]] || [[ " ${WANT[*]} " == *" $name "* ]]; then
        TARGETS+=("$entry")
    fi
done
if [[ ${#TARGETS[@]} -eq 0 ]]; then
    echo "fuzz.sh: no such target: ${WANT[*]} (targets: segment config frame inval rvalue)" >&2
    exit 2
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:abort_on_error=0:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

DIR=build/test-fuzz
builds=()
for entry in "${TARGETS[@]}"; do
    builds+=("fuzz_${entry%%:*}" "fuzz_${entry%%:*}_replay")
done
echo "==> fuzz: configure and build in $DIR (clang, ASan + UBSan)"
cmake -S . -B "$DIR" -DCMAKE_C_COMPILER="$(command -v clang)" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DKHALA_FUZZ=ON -DKHALA_SANITIZE=address,undefined -DKHALA_BUILD_BENCH=OFF >/dev/null
cmake --build "$DIR" -j "$(nproc)" --target "${builds[@]}"

SUMMARY=()
FAILED=0
for entry in "${TARGETS[@]}"; do
    name=${entry%%:*}
    max_len=${entry#*:}
    work=$DIR/fuzz-corpus/$name
    artifacts=$DIR/artifacts/$name
    committed=tests/fuzz/corpus/$name
    rm -rf "$work"
    mkdir -p "$work" "$artifacts"
    "$DIR/tests/fuzz_${name}_replay" --write-seed "$work"
    if [[ -d $committed ]]; then
        cp -f "$committed"/* "$work"/ 2>/dev/null || true
    fi
    limit=()
    if [[ $TIME -gt 0 ]]; then
        limit=(-max_total_time="$TIME")
    fi
    log=$DIR/fuzz_$name.long.log
    echo "==> fuzz: fuzz_$name, up to $RUNS inputs${limit[*]:+ (${limit[*]})}, log in $log"
    status=0
    "$DIR/tests/fuzz_$name" -runs="$RUNS" -max_len="$max_len" "${limit[@]}" \
        -print_final_stats=1 -artifact_prefix="$artifacts/" "$work" >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    if [[ $status -ne 0 ]]; then
        tail -n 60 "$log"
        SUMMARY+=("$(printf '%-14s FAIL  crash after %s inputs, see %s' "fuzz_$name" \
            "${runs:-?}" "$artifacts")")
        FAILED=1
        continue
    fi
    SUMMARY+=("$(printf '%-14s PASS  %s inputs in %s s (%s exec/s), 0 crashes' "fuzz_$name" \
        "${runs:-?}" "${secs:-?}" "${rate:-?}")")
    if [[ $MERGE -eq 1 ]]; then
        merged=$DIR/fuzz-merged/$name
        rm -rf "$merged"
        mkdir -p "$merged"
        "$DIR/tests/fuzz_$name" -merge=1 -max_len="$max_len" "$merged" "$work" \
            >"$DIR/fuzz_$name.merge.log" 2>&1
        rm -rf "$committed"
        mkdir -p "$committed"
        kept=0
        bytes=0
        while read -r size file; do
            if [[ $kept -ge $CORPUS_FILES_MAX || $((bytes + size)) -gt $CORPUS_BYTES_MAX ]]; then
                break
            fi
            cp "$file" "$committed"/
            kept=$((kept + 1))
            bytes=$((bytes + size))
        done < <(find "$merged" -type f -printf '%s %p\n' | sort -n)
        echo "==> fuzz: tests/fuzz/corpus/$name: $kept of $(find "$merged" -type f | wc -l)" \
            "minimized inputs kept ($bytes bytes)"
    fi
done

echo
echo "==> summary"
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED
