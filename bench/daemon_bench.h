/*
 * khala-bench put / miss / warm: calls through a real khalad, against a Redis server over a Unix
 * socket measured in the same run. daemon_bench.c holds put and miss and the pieces every khalad
 * bench shares (the private directory, redis-server, khalad instances with their own L2, preloads
 * and stats); warm_bench.c holds warm. See docs/benchmarks.md, sections "khalad: puts and misses
 * against Redis" and "L2: misses and warming".
 *
 * Start at bench_daemon() and bench_warm(); a new khalad bench starts with bench_env_start(),
 * then bench_khalad_init() and bench_khalad_start() per khalad.
 */
#ifndef KHALA_BENCH_DAEMON_BENCH_H
#define KHALA_BENCH_DAEMON_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "bench.h"
#include "harness.h"
#include "khala/cache.h"

/** Most extra --set options a khalad of the bench takes. */
#define BENCH_KHALAD_SETS_MAX 8u

/** Which L2 a khalad of the bench runs with ([l2] backend). */
enum { BENCH_L2_DISK = 0, BENCH_L2_REDIS = 1 };

/** The bench's private directory and redis-server, shared by all its khalads. */
typedef struct bench_env {
    char dir[64];          /**< /tmp/khala-bench-PID; "" = not created */
    char rsock[108];       /**< redis-server's Unix socket, in dir */
    unsigned rport;        /**< redis-server's loopback TCP port (127.0.0.1) too; 0 = Unix only */
    harness_redis_t redis; /**< the redis-server (tests/harness/harness.h); pid 0 = not running */
    unsigned seq;          /**< khalads named so far: makes each name unique */
} bench_env_t;

/** One khalad the bench runs: a unique cache name, its socket and its L2 in env's directory. */
typedef struct bench_khalad {
    /** The process (tests/harness/harness.h): h.name is the cache name khbenchPID_N (also the
     * name of its L1 segment), h.sock its socket in env->dir, h.sets its --set options in order
     * (the bench's own: socket, [l2]; then the caller's), h.pid 0 when not running. */
    harness_khalad_t h;
    char l2dir[128]; /**< its [l2] path: the LMDB store, or the Redis write journal */
    int backend;     /**< BENCH_L2_DISK or BENCH_L2_REDIS */
} bench_khalad_t;

/**
 * @brief Create the private directory and, when asked, start redis-server on a Unix socket in
 *        it (no port, no persistence), waiting at most 5 s for it to listen.
 * @param[out] e the environment.
 * @param[in] want_redis 1 to start redis-server.
 * @return 0; -1 after printing the reason to stderr (nothing is left running or created).
 * @note Servers get PR_SET_PDEATHSIG (the harness), so they die with the bench.
 */
int bench_env_start(bench_env_t *e, int want_redis);

/**
 * @brief bench_env_start(), and with @p tcp redis-server listens also on a free loopback TCP
 *        port (127.0.0.1, e->rport); khalads with the redis backend then reach it over TCP.
 * @param[out] e the environment.
 * @param[in] want_redis 1 to start redis-server.
 * @param[in] tcp 1 to add the TCP port (only with want_redis).
 * @return 0; -1 after printing the reason to stderr (nothing is left running or created).
 */
int bench_env_start_tcp(bench_env_t *e, int want_redis, int tcp);

/**
 * @brief Stop redis-server and remove the private directory with everything in it.
 * @param[in,out] e the environment; stopping twice is harmless.
 * @note Stop the khalads first (bench_khalad_stop()).
 */
void bench_env_stop(bench_env_t *e);

/**
 * @brief Name a khalad and choose its configuration, without starting it: socket and [l2] path
 *        in env's directory, [l2] max_items at least 2 x keys, and for the redis backend
 *        redis_url = env's redis-server (redis://127.0.0.1:PORT/1 when env has a TCP port,
 *        else its Unix socket), database 1, namespace = the cache name.
 * @param[in,out] e the environment (its seq advances).
 * @param[out] k the khalad.
 * @param[in] backend BENCH_L2_DISK or BENCH_L2_REDIS.
 * @param[in] keys the most keys the bench will put.
 * @param[in] sets extra "section.key=value" options applied after those, in order.
 * @param[in] nsets how many; at most BENCH_KHALAD_SETS_MAX.
 * @return 0; -1 when an option is too long or there are too many (printed).
 */
int bench_khalad_init(bench_env_t *e, bench_khalad_t *k, int backend, uint32_t keys,
                      const char *const *sets, unsigned nsets);

/**
 * @brief Start khalad (KHALAD_PATH) with k's configuration and wait at most 5 s for its socket.
 *        Starting again after bench_khalad_stop() reuses the configuration, the L2 and, unless
 *        it was unlinked, the L1 segment (khalad adopts it).
 * @param[in,out] k the khalad (pid set).
 * @return 0; -1 after printing the reason (KHALA_BENCH_VERBOSE=1 shows khalad's stderr).
 */
int bench_khalad_start(bench_khalad_t *k);

/**
 * @brief SIGTERM khalad and wait for it (SIGKILL after 10 s); with unlink_l1, remove its L1
 *        segment too, so that the next start begins with an empty L1 (L2 is kept).
 * @param[in,out] k the khalad; a khalad that is not running is left alone.
 * @param[in] unlink_l1 1 to unlink the segment.
 */
void bench_khalad_stop(bench_khalad_t *k, int unlink_l1);

/**
 * @brief The size of item @p i's value in a preload: vmin when vmin == vmax, else spread
 *        uniformly (by a hash of i) over vmin..vmax. Preload and verification agree on it.
 */
uint32_t bench_value_size(uint32_t i, uint32_t vmin, uint32_t vmax);

/**
 * @brief The byte every position of item @p i's preloaded value holds.
 */
char bench_value_byte(uint32_t i);

/**
 * @brief Put keys PREFIX%08u for i in 0..n-1 through khalad: write-behind put frames, 256 in
 *        flight on one connection, values of bench_value_size() bytes of bench_value_byte();
 *        then wait (at most 60 s) until khalad's L2 write queue is empty, so that every item is
 *        in L2 and none is answered from the queue.
 * @param[in] k a running khalad.
 * @param[in] prefix key prefix; keys must stay within KHALA_KEY_MAX.
 * @param[in] n how many. @param[in] vmin, vmax value sizes.
 * @param[in] type the items' type.
 * @param[out] ms wall time of the puts and the drain, may be NULL.
 * @return 0; -1 after printing the reason (a put refused, the queue did not drain).
 */
int bench_khalad_preload(const bench_khalad_t *k, const char *prefix, uint32_t n, uint32_t vmin,
                         uint32_t vmax, khala_type_t type, double *ms);

/**
 * @brief Read one counter of khalad's stats reply, data.SECTION.FIELD ("l1", "l2", "khalad").
 * @param[in] k a running khalad.
 * @param[in] section, field the entry.
 * @param[out] v its value.
 * @return 0; -1 when khalad does not answer or has no such counter (printed).
 */
int bench_khalad_stat(const bench_khalad_t *k, const char *section, const char *field, uint64_t *v);

/**
 * @brief put or miss. put: puts through khalad (pipeline 1: khala_cache_put round trips; P > 1:
 *        P raw put frames per batch) against SET. miss: gets that miss L1, for each backend of
 *        @p backends ("none": the key is nowhere, khalad answers not found, against a GET of a
 *        missing key; "disk", "redis": the key is in that L2 only, against a GET of an
 *        existing key of the same size; "l3disk", "l3surreal": the key is in L3 only, on the
 *        disk or on SurrealDB through a private front, every reply's level checked, against a
 *        GET or, for l3surreal, a direct query of the front: bench/l3_bench.h). Prints one line
 *        per target and round, then the final key=value line (miss: ending with
 *        transport=tcp|unix).
 * @param[in] cmd "put" or "miss".
 * @param[in] o options (procs, keys, value_size, seconds, rounds).
 * @param[in] pipeline put: requests in flight per client; 1 = round trips.
 * @param[in] backends miss: comma-separated list of none, disk, redis, l3disk, l3surreal, or
 *            "all"; NULL = "disk,redis".
 * @param[in] redis_tcp miss: 1 = redis-server listens also on a loopback TCP port, and both
 *            khalad's redis L2 and the Redis reference rounds reach it over TCP (workers still
 *            reach khalad over its Unix socket); 0 = the Unix socket for both. put: must be 0.
 * @return 0; -1 after printing the reason to stderr.
 */
int bench_daemon(const char *cmd, const bench_opts_t *o, unsigned pipeline, const char *backends,
                 int redis_tcp);

/**
 * @brief warm: put o->keys items into L2 through khalad, then, for each backend and round,
 *        restart khalad with an empty L1 and time warming every item into L1 by keys (warm
 *        requests of up to 1024 keys) and, after another restart, by prefix (paged with the
 *        cursor until it is 0). Each warming is checked: L1 holds every item, and a worker
 *        reads every one from L1 without asking khalad. Prints one line per round, then the
 *        final key=value line (warm_bench.c).
 * @param[in] o options (keys, value_size..value_size_max, rounds).
 * @param[in] backends comma-separated list of disk, redis, or "all"; NULL = both.
 * @return 0; -1 after printing the reason to stderr.
 */
int bench_warm(const bench_opts_t *o, const char *backends);

/**
 * @brief Parse a --backend list: comma-separated names of @p names (n of them), or "all".
 * @param[in] list the list; NULL selects @p dflt.
 * @param[in] names the accepted names. @param[in] n how many.
 * @param[in] dflt the bits selected by NULL.
 * @param[out] bits bit i set for names[i].
 * @return 0; -1 after printing the unknown name.
 */
int bench_backends_parse(const char *list, const char *const *names, unsigned n, unsigned dflt,
                         unsigned *bits);

#endif /* KHALA_BENCH_DAEMON_BENCH_H */
