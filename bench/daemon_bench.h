/*
 * khala-bench put / miss: round trips through a real khalad, against a Redis server over a Unix
 * socket measured in the same run (daemon_bench.c). See docs/benchmarks.md, section "khalad:
 * puts and misses against Redis".
 */
#ifndef KHALA_BENCH_DAEMON_BENCH_H
#define KHALA_BENCH_DAEMON_BENCH_H

#include "bench.h"

/* cmd is "put" or "miss". pipeline: requests in flight per client (put only; 1 = round trips
 * through khala_cache_put). Prints one line per round and the final key=value line.
 * 0, or -1 after printing the reason to stderr. */
int bench_daemon(const char *cmd, const bench_opts_t *o, unsigned pipeline);

#endif /* KHALA_BENCH_DAEMON_BENCH_H */
