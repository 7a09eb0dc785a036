/*
 * The Redis L2 driver: a khala_tier_ops_t (daemon/tier.h) over one Redis server or a Redis
 * Cluster, through hiredis's blocking API and daemon/redis_conn.h. daemon/tier_redis.c opens
 * with the design (value format, the version script, the connection pool and its backoff, slot
 * routing); this header is the reference for the one entry point, khala__tier_redis_open().
 *
 * Every key is stored as "khala:<ns>:<key>". One more key of the namespace is the driver's own:
 * "khala:<ns>:~hot", a sorted set of access counts that hot() reads; the key "~hot" itself is
 * therefore refused (KHALA_EKEY), and scan() and invalidate() never visit it.
 *
 * What this driver adds to tier.h's contract:
 * - del() returns KHALA_ENOTFOUND when the key was not there.
 * - mget() returns 0 when every key got an answer in rcs[] (0, KHALA_ENOTFOUND, or KHALA_EKEY
 *   for a bad key), else the first other failure (KHALA_ETIER for keys of an unreachable node).
 * - mput() checks every key and value first (KHALA_EKEY, KHALA_ETOOBIG, -EINVAL: nothing is
 *   written); then it returns 0 when every item was stored, KHALA_EVERSION when some were older
 *   than what Redis holds (the others are stored), or the first failure.
 * - A stored value that is not a khala value (another program's bytes, another Redis type)
 *   reads as a miss, counts an error and leaves a message in t->err; a put overwrites it.
 * - stats(): items and bytes are UINT64_MAX (unknown per namespace), evictions and
 *   expirations 0 (Redis counts them per server, not per namespace).
 *
 * Thread safety: like every driver, a Redis tier is used from khalad's loop thread only.
 */
#ifndef KHALA_DAEMON_TIER_REDIS_H
#define KHALA_DAEMON_TIER_REDIS_H

#include <stdbool.h>
#include <stddef.h>

#include "tier.h"

/** The key suffix of the access-count sorted set ("khala:<ns>:~hot"), reserved in every
 * namespace. */
#define KHALA_TIER_REDIS_HOT_KEY "~hot"

/** Most members kept in the access-count sorted set; the decay trims the rest (lowest first). */
#define KHALA_TIER_REDIS_HOT_MAX 100000u

/** Largest stored value (Redis's string limit, 512 MiB, minus the 15-byte header). */
#define KHALA_TIER_REDIS_VALUE_MAX (512u * 1024u * 1024u - 16u)

/** Options of khala__tier_redis_open(). */
typedef struct khala_tier_redis_opts {
    const char *url;     /* redis_url: redis://[user:pass@]host:port/db or unix:///path?db=N */
    const char *ns;      /* namespace: every key is stored as "khala:<ns>:<key>"; 1..KHALA_NAME_MAX
                            bytes */
    khala_level_t level; /* KHALA_LEVEL_L2 */
    unsigned timeout_ms; /* connect and command timeout, 0 = KHALA_REDIS_TIMEOUT_MS_DEFAULT */
    unsigned pool_size;  /* connections (per node in a cluster), >= 1 (0 is taken as 1) */
    bool persistent;     /* false: delete the namespace's keys at open (or, if the server is
                            down then, when it first answers; before any operation succeeds) */
    bool owned;          /* khalad owns the instance: CONFIG SET maxmemory-policy allkeys-lfu;
                            else only check it (CONFIG GET) and put a warning in t->err */
} khala_tier_redis_opts_t;

/**
 * @brief Open the Redis driver on the server (or cluster) @p o->url names.
 *
 * Connects one connection, authenticates and selects the URL's database, tells a Redis Cluster
 * (INFO cluster) from a single server and loads the slot map (CLUSTER SLOTS), loads the version
 * script, sets or checks maxmemory-policy, and deletes the namespace's keys unless
 * @p o->persistent. The other connections of the pool open on first use.
 *
 * @param[in] o the options; the strings are copied.
 * @param[out] out the tier (ops->name is "redis"); written only on success. Release it with
 *             (*out)->ops->close(*out).
 * @param[out] err message buffer, naming the server and the cause; may be NULL.
 * @param[in] errlen size of @p err.
 * @return 0, also when the server is merely unreachable: the tier then fails its operations with
 *         KHALA_ETIER and its health() is non-zero until the server answers, and @p err (and
 *         t->err) say why; KHALA_ECONFIG for a bad URL, an empty or too long namespace, a
 *         rediss:// URL, or credentials or a database the server refuses; -ENOMEM.
 * @note With owned false and a maxmemory-policy other than allkeys-lfu, the open succeeds and
 *       t->err holds the warning (t->err is otherwise empty after a clean open).
 */
int khala__tier_redis_open(const khala_tier_redis_opts_t *o, khala_tier_t **out, char *err,
                           size_t errlen);

/* ---- The value format (daemon/tier_redis.c "Values"), exposed for the tests and
 * tests/fuzz/fuzz_rvalue.c; khalad itself goes through the tier's get and put. ------------- */

struct msgpack_sbuffer;

/**
 * @brief Encode @p v as a stored value: 0x93 0xcf <version, u64 BE> <type> <bin header>
 *        <bytes>.
 * @param[in] v the value, already checked as put checks it (type below KHALA_TYPE_COUNT, len at
 *            most KHALA_TIER_REDIS_VALUE_MAX, data non-NULL when len != 0); ttl_ms is not
 *            part of it.
 * @param[out] sb initialized here; on success the caller releases it with
 *             msgpack_sbuffer_destroy(), on failure it is already released.
 * @return 0 or -ENOMEM.
 */
int khala__tier_redis_value_encode(const khala_tier_value_t *v, struct msgpack_sbuffer *sb);

/**
 * @brief Decode bytes read back from Redis: any bytes at all (another program may have
 *        written the key).
 * @param[in] s the bytes; only @p len of them are read.
 * @param[in] len their length.
 * @param[out] out the value, written only on success: data is a copy (NULL when len is 0),
 *             released with khala__tier_value_free(); type is below KHALA_TYPE_COUNT;
 *             ttl_ms is 0 (the TTL lives in Redis).
 * @return 0; -EBADMSG for bytes of any other shape (the caller reads them as a miss);
 *         -ENOMEM.
 */
int khala__tier_redis_value_decode(const char *s, size_t len, khala_tier_value_t *out);

#endif /* KHALA_DAEMON_TIER_REDIS_H */
