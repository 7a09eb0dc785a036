/*
 * The tier seam: what khalad asks of a slower level (L2: Redis or local disk; L3: SurrealDB or
 * local disk). A driver is one file (daemon/tier_<name>.c) that fills a khala_tier_ops_t; config
 * alone picks which driver serves a level, and the rest of khalad never knows which it is.
 *
 * Today no driver exists (they come with the L2 and L3 issues, and no fake one stands in): khalad
 * holds an empty list of tiers, and its miss path goes from L1 straight to the caller's loader
 * through the same loop that will ask L2 and L3 first (daemon/handlers.c, op_get).
 *
 * Every operation returns 0 or a negative code (KHALA_ENOTFOUND for a miss, -ETIMEDOUT or
 * KHALA_EDAEMON-like codes for an unreachable server); khalad marks a tier unhealthy on such
 * errors and skips it until health() says otherwise. Drivers are called from khalad's loop
 * thread only.
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

/* A key visited by scan; return non-zero to stop. */
typedef int (*khala_tier_scan_fn)(void *arg, const void *key, size_t klen);

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
    /* Visit keys matching a glob from *cursor (0 starts; set to 0 at the end). */
    int (*scan)(khala_tier_t *t, uint64_t *cursor, const char *pattern, khala_tier_scan_fn fn,
                void *arg);
    int (*health)(khala_tier_t *t); /* 0 when the level can serve */
    void (*close)(khala_tier_t *t);
} khala_tier_ops_t;

struct khala_tier {
    const khala_tier_ops_t *ops;
    khala_level_t level; /* KHALA_LEVEL_L2 or KHALA_LEVEL_L3 */
    int healthy;         /* 1 until an operation fails; health() restores it */
    void *impl;          /* the driver's state */
};

/* Release what a driver allocated for v; v becomes empty. */
static inline void khala__tier_value_free(khala_tier_value_t *v) {
    free(v->data);
    v->data = NULL;
    v->len = 0;
}

#endif /* KHALA_DAEMON_TIER_H */
