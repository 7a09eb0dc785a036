/*
 * khala-bench's subcommands, as khala_bench.c dispatches them. Each returns 0, or -1 after
 * printing the reason to stderr; khala_bench.c prints the final key=value line.
 *
 * Modules: l1_bench.c (the real L1: get, mixed, sweep, overhead), plain_table.c (the reference
 * shared-memory table), lmdb_ref.c (LMDB multi-process reads), replay.c (trace replay through
 * the L1 and through an exact-LRU simulation; it also loads the traces), predict_replay.c
 * (predictive warming on a trace), bench_util.c (clocks, workloads, the runner).
 */
#ifndef KHALA_BENCH_BENCH_H
#define KHALA_BENCH_BENCH_H

#include <stdint.h>

#include "bench_util.h"
#include "khala/cache.h"
#include "l1_table.h"

/* Options of every subcommand; each reads the ones it needs. */
typedef struct bench_opts {
    unsigned procs;          /* reader processes */
    uint32_t keys;           /* keys in the table */
    uint32_t value_size;     /* value bytes (overhead: smallest size of the range) */
    uint32_t value_size_max; /* overhead: largest value size; == value_size for a fixed size */
    int dist;                /* BU_DIST_* */
    double seconds;          /* timed interval of a get run */
    uint64_t write_rate;     /* l1-mixed: target puts per second */
    uint32_t items;          /* sweep, overhead: items to fill */
    const char *trace;       /* replay: trace file */
    int oracle;              /* replay: 1 for oracleGeneral, 0 for csv */
    uint32_t capacity;       /* replay: capacity in items */
    int lru;                 /* replay: 1 for the exact-LRU simulation instead of the L1 */
    uint32_t maintain_every; /* replay: requests between two khala__l1_maintain calls */
    unsigned rounds;         /* get runs: timed rounds (compare/scale/l1-mixed alternate) */
    uint32_t expired_pct;    /* sweep: percent of the items that have expired, 0 to 100 */
} bench_opts_t;

/* l1-mixed adds the writer's achieved rate to a get result. */
typedef struct bench_get {
    bu_get_result_t r;
    double puts_s;      /* puts per second achieved by the writer during the reads */
    uint64_t put_fails; /* puts that returned an error */
} bench_get_t;

/* A get target: set up once (create and fill), then run any number of timed rounds, so that
 * rounds of different targets can alternate and see the same machine load. */
typedef struct bench_target bench_target_t;

bench_target_t *bench_l1_setup(const bench_opts_t *o, const bu_workload_t *w);
bench_target_t *bench_plain_setup(const bench_opts_t *o, const bu_workload_t *w);
bench_target_t *bench_lmdb_setup(const bench_opts_t *o, const bu_workload_t *w);
/* Make the plain target's rounds read through plain_get_fair (fair = 1) or the inlined
 * plain_get (0, the default). */
void bench_plain_set_fair(bench_target_t *plain, int fair);
/* One timed round with `procs` readers; for the L1, write_rate > 0 makes the writer overwrite
 * keys at that rate meanwhile (ignored by the references). 0 or -1. */
int bench_target_run(bench_target_t *t, const bu_workload_t *w, unsigned procs, double seconds,
                     uint64_t write_rate, bench_get_t *out);
void bench_target_free(bench_target_t *t);

/* What each target module provides behind bench_target_t. */
struct bench_target {
    const char *name;
    int (*run)(bench_target_t *t, const bu_workload_t *w, unsigned procs, double seconds,
               uint64_t write_rate, bench_get_t *out);
    void (*free)(bench_target_t *t);
};

typedef struct bench_sweep {
    uint64_t removed; /* expired items the sweep removed */
    double ms;        /* wall time of the full sweep */
    double fill_s;    /* seconds to fill */
} bench_sweep_t;

int bench_sweep(const bench_opts_t *o, bench_sweep_t *out);

/* cleanup (cleanup_bench.c): one full periodic cleanup of the disk store as L3, over o->items
 * rows, in steps of `batch` rows, timed step by step. */
typedef enum bench_cleanup_case {
    BENCH_CLEANUP_EXPIRED, /* o->items expired rows deleted */
    BENCH_CLEANUP_OVER,    /* o->items rows over a lowered max_entries evicted to the archive */
} bench_cleanup_case_t;

typedef struct bench_cleanup {
    uint64_t rows;      /* rows the cleanup removed or moved */
    unsigned steps;     /* ticks it took (one step each) */
    double ms;          /* the ticks' times, summed: the full cleanup's work */
    double cpu_ms;      /* the ticks' CPU time (this thread), summed: the same, less the time
                           other processes took the CPU away (a loaded machine) */
    double max_step_ms; /* the longest tick: how long a client could wait behind one */
    double fill_s;      /* seconds to fill the store */
} bench_cleanup_t;

int bench_cleanup(const bench_opts_t *o, bench_cleanup_case_t c, uint32_t batch,
                  bench_cleanup_t *out);

typedef struct bench_overhead {
    uint64_t items, item_bytes, payload_bytes;
    double meta_per_item; /* segment bytes outside the arena (buckets, descs, ...) per item */
    double meta_resident_per_item; /* of those, bytes in pages actually resident (the second
                                      index stays untouched until a rehash) */
} bench_overhead_t;

int bench_overhead(const bench_opts_t *o, bench_overhead_t *out);

/* hitloop: o->keys keys of o->value_size bytes in a fresh L1, then o->rounds passes of
 * khala_cache_get over them, in this process, untimed (no rdtscp, so valgrind can run it).
 * *gets and *hits count the loop. 0 or -1 (with a message). */
int bench_hitloop(const bench_opts_t *o, uint64_t *gets, uint64_t *hits);

typedef struct bench_replay {
    uint64_t requests, hits, objects;
} bench_replay_t;

int bench_replay(const bench_opts_t *o, bench_replay_t *out);

/* Load a trace as one array of 64-bit object ids, in request order (replay.c's top comment gives
 * the formats). oracle: 1 for libCacheSim's oracleGeneral, 0 for csv (the id is XXH3-64 of the
 * key text; empty keys are skipped). On success *ids (free() it) and *n are set; else they are
 * untouched and the return is -errno of the open or -ENOMEM. 0 or that code. */
int bench_trace_load(const char *path, int oracle, uint64_t **ids, uint64_t *n);

/* Bytes of the value every replay stores per object. */
#define BENCH_REPLAY_VALUE 16

/* The L1 a replay runs on: this process as its writer (*t: max_items = capacity, at least 16,
 * and an arena large enough that only the item count binds) and as a reader (*c), on a
 * segment named khala-bench-WHAT-PID. Close with khala_cache_close(*c) and
 * khala__l1_close(*t, 1). 0, or -1 with the reason printed (nothing is left open). */
int bench_replay_l1_open(const char *what, uint32_t capacity, khala_l1_t **t, khala_cache_t **c);

/* predict: predictive warming on a trace (predict_replay.c): prints a table. 0 or -1. */
int bench_predict(const bench_opts_t *o);

#endif /* KHALA_BENCH_BENCH_H */
