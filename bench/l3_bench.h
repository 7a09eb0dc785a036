/*
 * khala-bench's L3 pieces (issue 12): a private SurrealDB front for the bench, the L3 cases of
 * `miss` (l3disk, l3surreal) with their `direct` reference (the same row read straight from the
 * front with one POST /rpc), and `drain` (write-behind drain rates to L2 Redis and L3
 * SurrealDB). See docs/benchmarks.md, "Issue 12: L3".
 *
 * daemon_bench.c runs the miss rounds; it calls bench_l3_khalad_sets() to configure the L3
 * khalads, bench_l3_get() and bench_l3_direct() for one timed request of a client, and
 * bench_l3_wait_queue() after a preload. bench_drain() is the drain subcommand.
 */
#ifndef KHALA_BENCH_L3_BENCH_H
#define KHALA_BENCH_L3_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "bench.h"
#include "daemon_bench.h"
#include "khala/cache.h"

/** A private SurrealDB front (tests/harness/harness.h harness_surreal_t: node running
 * tests/support/surreal/front.mjs) on a loopback port, its store under h.dir/data (kept across
 * bench_front_kill(), so a restart finds its rows), and what the direct reference needs. */
typedef struct bench_front {
    harness_surreal_t h; /**< the front: h.dir set by the caller, h.url once started */
    char base[64];       /**< http://127.0.0.1:PORT, after a start */
    const char *rec;     /**< the record-id function of its engine: type::thing or type::record */
} bench_front_t;

/**
 * @brief Start the front (harness_surreal_start(): waits until GET /health answers 200), then
 *        read GET /version to pick the record-id function as khalad's driver does.
 * @param[in,out] f the front: h.dir set, not running.
 * @return 0; -1 after printing the reason (its output is in h.dir/front.log).
 * @note The front dies with the bench (the harness sets PR_SET_PDEATHSIG).
 */
int bench_front_start(bench_front_t *f);

/** @brief SIGKILL the front and reap it; port and dir are kept for a restart. */
void bench_front_kill(bench_front_t *f);

/**
 * @brief The "section.key=value" options of a khalad whose type consolidation lives on L3
 *        alone (levels = l3, quota 0): [l3] on the disk (path in env's directory) or, with
 *        @p f, SurrealDB through that front. Up to 6 options, written into @p buf.
 * @param[in] e the environment (its directory). @param[in] f the front, or NULL for the disk.
 * @param[in] keys the most keys the bench puts (max_entries is twice that).
 * @param[out] buf room for the options. @param[out] sets pointers into buf.
 * @return how many options.
 */
unsigned bench_l3_khalad_sets(const bench_env_t *e, const bench_front_t *f, uint32_t keys,
                              char buf[][160], const char **sets);

/**
 * @brief One get that must miss L1 and be answered by L3: khala_cache_get_l1() (a hit is a
 *        level mismatch), then khala_cache_fetch() (the value must be @p vsize bytes and its
 *        level KHALA_LEVEL_L3).
 * @param[in] c an open handle. @param[in] key, klen the key. @param[in] vsize the value's size.
 * @param[out] mismatch set to 1 when another level answered.
 * @return 0; 1 on a failure or a bad value.
 */
int bench_l3_get(khala_cache_t *c, const char *key, size_t klen, uint32_t vsize, int *mismatch);

/** A client's connection to the front for the direct reference (a libcurl easy handle). */
typedef struct bench_direct bench_direct_t;

/**
 * @brief Open a keep-alive connection to @p f for direct queries of @p table (namespace khala,
 *        database cache, as khalad's driver uses by default).
 * @return the connection, or NULL (printed).
 */
bench_direct_t *bench_direct_open(const bench_front_t *f, const char *table);

/** @brief Close a connection of bench_direct_open(); NULL is ignored. */
void bench_direct_close(bench_direct_t *d);

/**
 * @brief The direct reference: one POST /rpc with the driver's own SELECT of the key's record
 *        (by record id, bound variables), the reply parsed and its value's size checked.
 * @param[in] d the connection. @param[in] key, klen the key. @param[in] vsize the value's size.
 * @return 0; 1 on a failure or a bad reply.
 */
int bench_l3_direct(bench_direct_t *d, const char *key, size_t klen, uint32_t vsize);

/**
 * @brief Wait (at most 120 s) until khalad's @p section ("l2", "l3") write queue is empty.
 * @return 0; -1 after printing the reason.
 */
int bench_l3_wait_queue(const bench_khalad_t *k, const char *section);

/**
 * @brief drain: for each level of @p backends ("redis": L2 on Redis, "l3surreal": L3 on
 *        SurrealDB through a private front), o->keys embedding puts (write-behind by default,
 *        values of o->value_size bytes = float32 vectors) queued while that level is down, then
 *        the level restarted and the time for its queue to reach 0: writes/s drained. o->rounds
 *        rounds. Prints one line per round, then the final key=value line.
 * @return 0; -1 after printing the reason.
 */
int bench_drain(const bench_opts_t *o, const char *backends);

#endif /* KHALA_BENCH_L3_BENCH_H */
