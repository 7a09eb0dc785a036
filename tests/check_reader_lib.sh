#!/usr/bin/env bash
# The worker library holds no writer code (issue 8, "A worker library without the writer"): list
# every symbol of libkhalacache.so, local and hidden ones included (nm -a reads the full symbol
# table), and fail if any writer function is among them. Usage: check_reader_lib.sh LIB.so
set -euo pipefail
lib=${1:?usage: check_reader_lib.sh path/to/libkhalacache.so}
# Writer functions: the table's writes and checks, the allocator, the eviction policy, creating
# and removing a segment and the writer lock, and the writer's side of the reader slots (grace
# periods, reaping, draining), plus some static helpers of those files, which would show up if
# their object were linked in.
writer='khala__(l1_[a-z_]+|alloc_[a-z_]+|policy_[a-z_]+|seg_create|seg_unlink|seg_unlink_locked|seg_attach_writer|readers_(min_epoch|reap|oldest|drain|totals|in_use))$|^(make_room|synchronize|remove_or_expire|retire_existing|writer_lock|lock_open_gated|mapping_search|list_insert)$'
symbols=$(nm -a "$lib" | awk 'NF >= 3 { print $3 }')
if [[ -z $symbols ]]; then
    echo "check_reader_lib: no symbols in $lib (stripped?): cannot check" >&2
    exit 1
fi
# A reader symbol must be there, or the check proves nothing.
if ! grep -qx 'khala_cache_get' <<<"$symbols"; then
    echo "check_reader_lib: khala_cache_get is not in $lib: wrong file?" >&2
    exit 1
fi
found=$(grep -E "$writer" <<<"$symbols" || true)
if [[ -n $found ]]; then
    echo "check_reader_lib: $lib holds writer code:" >&2
    sed 's/^/  /' <<<"$found" >&2
    exit 1
fi
echo "check_reader_lib: $lib: $(wc -l <<<"$symbols") symbols, no writer function"
