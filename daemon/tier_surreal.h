/*
 * The SurrealDB L3 driver: a khala_tier_ops_t (daemon/tier.h) over a SurrealDB server's HTTP
 * API (POST /rpc, method "query"), through daemon/http_pool.h (libcurl). daemon/tier_surreal.c
 * opens with the design (the schema, the statements, how keys and values are bound, cleanup
 * and archive, semantic look-ups); docs/tiers.md "SurrealDB" explains the choices. This header
 * is the reference for the one entry point, khala__tier_surreal_open().
 *
 * What this driver adds to tier.h's contract:
 * - del() returns KHALA_ENOTFOUND when the key was not there.
 * - mget() returns 0 when every key got an answer in rcs[] (0, KHALA_ENOTFOUND, KHALA_EKEY);
 *   else the failure of the request (KHALA_ETIER).
 * - mput() checks every key and value first (KHALA_EKEY, KHALA_ETOOBIG, KHALA_EINVAL: nothing is
 *   written); then it returns 0 when every item was stored, KHALA_EVERSION when some were older
 *   than what the level holds (the others are stored), KHALA_EREFUSED when the server refused
 *   some statement for another reason (the others are stored; t->err names the key), or
 *   KHALA_ETIER.
 * - Versions above INT64_MAX are refused (KHALA_EINVAL): SurrealDB's integers are signed 64-bit.
 * - stats(): items is the row count of the last cleanup pass (UINT64_MAX before the first),
 *   bytes UINT64_MAX; evictions counts rows moved to the archive (or deleted when there is
 *   none), expirations rows deleted because they expired.
 *
 * Thread safety: like every driver, used from khalad's loop thread only.
 */
#ifndef KHALA_DAEMON_TIER_SURREAL_H
#define KHALA_DAEMON_TIER_SURREAL_H

#include <stddef.h>
#include <stdint.h>

#include "tier.h"

/** Longest table name (the archive table appends "_archive"). */
#define KHALA_TIER_SURREAL_TABLE_MAX 64u

/** Largest stored value: 3 MiB, whose base64 text (4 MiB less 85 KiB) with its statement must
 * fit the server's default limit of a /rpc request body, 4 MiB (SURREAL_HTTP_MAX_RPC_BODY_SIZE);
 * a server configured lower refuses bigger puts (KHALA_EREFUSED). */
#define KHALA_TIER_SURREAL_VALUE_MAX (3u * 1024u * 1024u - 64u * 1024u)

/** Largest vector stored as `vec` (searchable by similar): 16384 float32s, whose text stays well
 * within a request body. A longer embedding is stored (data) but never a match. */
#define KHALA_TIER_SURREAL_VEC_MAX 16384u

/** Default request timeout when timeout_ms is 0. */
#define KHALA_TIER_SURREAL_TIMEOUT_MS_DEFAULT 2000u

/** Default rows one cleanup step deletes or moves when cleanup_batch is 0. */
#define KHALA_TIER_SURREAL_BATCH_DEFAULT 1000u

/** Options of khala__tier_surreal_open(). */
typedef struct khala_tier_surreal_opts {
    const char *url;             /* http(s)://[user:password@]host:port (Basic auth when given) */
    const char *ns;              /* namespace (surreal-ns header), non-empty */
    const char *db;              /* database (surreal-db header), non-empty */
    const char *table;           /* [A-Za-z_][A-Za-z0-9_]*, 1..KHALA_TIER_SURREAL_TABLE_MAX bytes */
    khala_level_t level;         /* KHALA_LEVEL_L3 */
    unsigned timeout_ms;         /* connect and request timeout, 0 = the default */
    unsigned pool_size;          /* keep-alive connections, 0 = 1 */
    uint64_t max_entries;        /* rows kept; 0 = no limit */
    int64_t cleanup_interval_ms; /* between cleanup passes; 0 = no cleanup */
    uint32_t cleanup_batch;      /* rows one cleanup step deletes or moves, 0 = default */
    int64_t archive_retention_ms; /* how long evicted rows stay in <table>_archive; 0 = no
                                     archive (evicted rows are deleted) */
    uint32_t embedding_dim;       /* > 0: an HNSW index over vectors of this dimension */
} khala_tier_surreal_opts_t;

/**
 * @brief Open the SurrealDB driver on the server @p o->url names.
 *
 * Asks GET /version (which picks the record-id function: type::thing before 3.0, type::record
 * from 3.0) and defines the schema (idempotent DEFINE ... IF NOT EXISTS). If the server cannot
 * be reached, the tier is still returned: its operations fail with KHALA_ETIER and health()
 * is non-zero until the server answers and the schema is defined.
 *
 * @param[in] o the options; the strings are copied.
 * @param[out] out the tier (ops->name is "surrealdb"); written only on success. Release it with
 *             (*out)->ops->close(*out).
 * @param[out] err message buffer naming the level and the cause; may be NULL.
 * @param[in] errlen size of @p err.
 * @return 0 (also when the server is unreachable, or refuses the credentials: @p err and t->err
 *         say so); KHALA_ECONFIG for a bad URL, table, namespace or database; -ENOMEM.
 */
int khala__tier_surreal_open(const khala_tier_surreal_opts_t *o, khala_tier_t **out, char *err,
                             size_t errlen);

/* ---- Asynchronous reads: the tier seam's get_start / poll_fd / poll (khalad's main adds them
 * to khala_tier_ops_t; these are the driver's, with the same signatures). ------------------- */

struct khala_http_pool;

/** Called once when an asynchronous get finished: rc as get() returns it; on 0, *val holds the
 * value (the callee may take val->data, setting it to NULL; what is left is freed after the
 * call). The same type as tier.h's khala_tier_get_done_fn. */
typedef void (*khala_tier_surreal_get_fn)(void *arg, int rc, khala_tier_value_t *val);

/**
 * @brief get() without waiting for the server (the seam's get_start): the request is sent and
 *        @p fn runs when the answer came, from khala__tier_surreal_poll() (or any call of the
 *        tier that waits on the server, or close()).
 * @param[in] t a tier khala__tier_surreal_open() made.
 * @param[in] key, klen the key, 1 to KHALA_KEY_MAX bytes (copied).
 * @param[in] fn the callback, non-NULL; @p arg passed to it.
 * @return 0: fn runs exactly once, never inside this call (with KHALA_ETIER from close());
 *         else fn never runs: KHALA_EKEY, KHALA_ETIER (the level is down and its backoff not
 *         over, or the reconnect attempt made now failed), -ENOMEM.
 * @note When the level is down and the backoff allows an attempt, this call reconnects
 *       synchronously first (as health() does). Loop thread only.
 */
int khala__tier_surreal_get_start(khala_tier_t *t, const void *key, size_t klen,
                                  khala_tier_surreal_get_fn fn, void *arg);

/** @brief The seam's poll_fd: a descriptor readable when an answer may be waiting (an epoll
 * instance over the pool's connections; khala__http_pool_fd). Stable for the tier's life. */
int khala__tier_surreal_poll_fd(khala_tier_t *t);

/** @brief The seam's poll: progress without waiting, run the callbacks of what finished, and
 * time out what is late. Also what tick() does first. */
void khala__tier_surreal_poll(khala_tier_t *t);

/**
 * @brief The tier's HTTP pool, for a loop that wants the per-socket hooks instead
 *        (khala__http_pool_set_watch, khala__http_timeout_ms, khala__http_on_fd,
 *        khala__http_on_timeout in daemon/http_pool.h), and for tests.
 * @param[in] t a tier khala__tier_surreal_open() made. @return the pool, owned by the tier.
 */
struct khala_http_pool *khala__tier_surreal_pool(khala_tier_t *t);

#endif /* KHALA_DAEMON_TIER_SURREAL_H */
