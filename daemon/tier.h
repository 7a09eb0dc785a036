/*
 * The tier seam: what khalad asks of a slower level (L2: Redis or local disk; L3: SurrealDB or
 * local disk). A driver is one file (daemon/tier_<name>.c) that fills a khala_tier_ops_t and
 * offers an open function (daemon/tier_<name>.h); config alone picks which driver serves a
 * level (daemon/tiers.c), and the rest of khalad never knows which it is.
 *
 * Rules every driver keeps:
 * - Every operation returns 0 or a negative code: KHALA_ENOTFOUND for a miss (an expired item
 *   is a miss), KHALA_EVERSION when a put is older than what the level holds, KHALA_ETIER when
 *   the server cannot be reached or did not answer in time (khalad then marks the tier
 *   unhealthy, skips it for reads and queues its writes until health() returns 0), -ENOMEM,
 *   KHALA_EKEY / KHALA_ETOOBIG for input the level cannot hold, KHALA_EREFUSED when the server
 *   answered this one request with an error that does not concern the others (Redis's OOM for a
 *   write, WRONGTYPE, an expiry it refuses): the request fails with t->err, the level stays
 *   healthy and nothing is queued. Deletes and invalidations never return it (a removal that
 *   failed must not be dropped while the level serves reads: it is KHALA_ETIER).
 * - Versions order writes: a put stores its value only if the level holds no live item of the
 *   key or holds one with a lower version (a stale write never overwrites a newer one); an equal
 *   version is accepted (a retry of the same write).
 * - TTLs are relative, in milliseconds; 0 means "no expiry". A get returns the time left.
 * - Drivers are called from khalad's loop thread only, and keep their own counters (stats).
 */
#ifndef KHALA_DAEMON_TIER_H
#define KHALA_DAEMON_TIER_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "proto.h"

typedef struct khala_tier khala_tier_t;

/* A value a tier returns. data is the driver's allocation, released with
 * khala__tier_value_free(). */
typedef struct khala_tier_value {
    void *data;       /* value bytes; NULL when len == 0 */
    size_t len;       /* bytes */
    uint64_t version; /* the item's version */
    int64_t ttl_ms;   /* time left, 0 = no expiry */
    khala_type_t type;
} khala_tier_value_t;

/* A key visited by scan or hot; return non-zero to stop. */
typedef int (*khala_tier_scan_fn)(void *arg, const void *key, size_t klen);

/* A driver's counters, since it was opened. */
typedef struct khala_tier_stats {
    uint64_t gets, hits, misses; /* single and batched reads, per key */
    uint64_t puts, dels;         /* per key */
    uint64_t errors;             /* operations that failed with KHALA_ETIER or worse */
    uint64_t items, bytes;       /* held now (bytes: keys + values); UINT64_MAX if unknown */
    uint64_t evictions;          /* items removed to stay within max_items / max_bytes */
    uint64_t expirations;        /* items removed because their TTL passed */
    uint64_t reconnects;         /* connections re-established (servers only) */
    uint64_t archive_items;      /* copies in the level's archive (archive_get); 0 or UINT64_MAX
                                    when it keeps none (a driver that does not set them: 0) */
    uint64_t archive_bytes;      /* their bytes (keys + values), as archive_items */
} khala_tier_stats_t;

/* One answer of a semantic look-up (similar): an embedding item and its cosine similarity to
 * the query. key and val.data are the driver's allocations, released with
 * khala__tier_match_free(). */
typedef struct khala_tier_match {
    void *key;        /* the item's key */
    size_t klen;      /* bytes */
    float similarity; /* cosine similarity to the query, -1..1 */
    khala_tier_value_t val;
} khala_tier_match_t;

/* The completion of a get_start(): rc as get() returns it; on 0, *v holds the value (the callee
 * may take v->data, setting it to NULL; what is left is freed after the call). Called from
 * poll() (or close(), with KHALA_ETIER) on khalad's loop thread, exactly once per started get. */
typedef void (*khala_tier_get_done_fn)(void *arg, int rc, khala_tier_value_t *v);

typedef struct khala_tier_ops {
    const char *name; /* "redis", "disk", "surrealdb" */
    int (*get)(khala_tier_t *t, const void *key, size_t klen, khala_tier_value_t *out);
    /* n keys at once; rcs[i] and out[i] per key. */
    int (*mget)(khala_tier_t *t, size_t n, const khala_bytes_t *keys, khala_tier_value_t *out,
                int *rcs);
    int (*put)(khala_tier_t *t, const void *key, size_t klen, const khala_tier_value_t *val);
    /* n items at once (warming, write-behind flushes). */
    int (*mput)(khala_tier_t *t, size_t n, const khala_bytes_t *keys,
                const khala_tier_value_t *vals);
    int (*del)(khala_tier_t *t, const void *key, size_t klen);
    /* Visit keys matching a glob (fnmatch, NULL = all) from *cursor (0 starts; set to 0 at the
     * end). One call visits a bounded batch (about `count` keys, 0 = the driver's default), so
     * that a caller can page and show progress. Keys are given without any driver prefix. */
    int (*scan)(khala_tier_t *t, uint64_t *cursor, const char *pattern, size_t count,
                khala_tier_scan_fn fn, void *arg);
    /* Visit up to max keys with the highest access counts (the driver's own decayed counts of
     * gets), most used first: what preload_common warms at start. */
    int (*hot)(khala_tier_t *t, size_t max, khala_tier_scan_fn fn, void *arg);
    /* Remove every item whose key starts with prefix (plen 0 = every key) and, when type >= 0,
     * whose type is type. *removed (may be NULL) gets how many. For invalidation and flush. */
    int (*invalidate)(khala_tier_t *t, const void *prefix, size_t plen, int type,
                      uint64_t *removed);
    /* One bounded step of invalidate(), for a level whose removal is a scan of the whole server
     * (Redis): from *cursor (0 starts), look at about `count` keys, remove those that match,
     * and set *cursor to where the next step starts (0 = done); *removed (may be NULL) gets
     * how many this step removed. khalad queues the invalidation and runs steps from its tick,
     * between requests (daemon/tiers.c). May be NULL: invalidate() is then called whole. */
    int (*invalidate_step)(khala_tier_t *t, const void *prefix, size_t plen, int type,
                           uint64_t *cursor, size_t count, uint64_t *removed);
    int (*health)(khala_tier_t *t); /* 0 when the level can serve (may try to reconnect) */
    void (*stats)(khala_tier_t *t, khala_tier_stats_t *out);
    /* Periodic work, from khalad's tick (about every 10 ms): flush batched access counts,
     * decay them, sweep expired items. Keep it short (a few ms at most). May be NULL. */
    void (*tick)(khala_tier_t *t, int64_t now_ms);
    /* Add `hits` reads of key that a faster level served (L1 hits, which khalad counts from the
     * readers' hit rings) to the key's access count, so that hot() ranks keys by all their
     * reads. A hint: no error, nothing if the level does not hold the key. May be NULL. */
    void (*note_hits)(khala_tier_t *t, const void *key, size_t klen, uint64_t hits);
    /* Read key from the level's archive: the items it evicted for space (not for expiry) and
     * keeps for [l3] archive_retention_seconds. KHALA_ENOTFOUND when it holds none. ttl_ms is
     * the time the archived copy has left. May be NULL (no archive). */
    int (*archive_get)(khala_tier_t *t, const void *key, size_t klen, khala_tier_value_t *out);
    /* Semantic look-up over the level's live embedding items (type KHALA_TYPE_EMBEDDING, whose
     * value is a vector of little-endian float32, dim = len / 4): the at most k items of the
     * same dimension as q whose cosine similarity to q is at least min_sim, most similar first,
     * into out[0 .. *n). KHALA_EINVAL for a bad query (dim 0, a zero vector); -ENOTSUP when the
     * level cannot search what it holds (encrypted embeddings: daemon/tier_crypt.c). May be
     * NULL. */
    int (*similar)(khala_tier_t *t, const float *q, uint32_t dim, float min_sim, uint32_t k,
                   khala_tier_match_t *out, uint32_t *n);
    /* Asynchronous reads, for a level behind a network round trip (SurrealDB), so that a miss
     * waiting on it never holds up khalad's other clients: get_start() sends the request and
     * returns at once (0, or a code as get() returns and then done is never called); done runs
     * later from poll(). poll_fd() is a descriptor khalad's loop watches (readable: call poll());
     * khalad also calls poll() from its tick, for timeouts. All three NULL when the driver reads
     * synchronously only (then get() is used). close() completes what is pending with
     * KHALA_ETIER. */
    int (*get_start)(khala_tier_t *t, const void *key, size_t klen, khala_tier_get_done_fn done,
                     void *arg);
    int (*poll_fd)(khala_tier_t *t);
    void (*poll)(khala_tier_t *t);
    void (*close)(khala_tier_t *t); /* frees t too */
} khala_tier_ops_t;

struct khala_tier {
    const khala_tier_ops_t *ops;
    khala_level_t level; /* KHALA_LEVEL_L2 or KHALA_LEVEL_L3 */
    int healthy;         /* 1 until an operation fails; health() restores it (khalad's flag) */
    void *impl;          /* the driver's state */
    char err[256];       /* the driver's last error message, naming the server and the cause */
};

/* Release what a driver allocated for v; v becomes empty. */
static inline void khala__tier_value_free(khala_tier_value_t *v) {
    free(v->data);
    v->data = NULL;
    v->len = 0;
}

/* Release what a driver allocated for m; m becomes empty. */
static inline void khala__tier_match_free(khala_tier_match_t *m) {
    free(m->key);
    m->key = NULL;
    m->klen = 0;
    khala__tier_value_free(&m->val);
}

#endif /* KHALA_DAEMON_TIER_H */
