/*
 * Warming and khalad's statistics, for workers (include/khala/cache.h: khala_cache_warm,
 * khala_cache_warm_prefix, khala_cache_warm_type; include/khala/stats.h:
 * khala_cache_daemon_stats, khala_stats_free).
 *
 * HOW IT WORKS
 *
 * Both are requests on the calling thread's connection (client_internal.h), like every call
 * through khalad, with the loops khalactl runs done here:
 *   - warm by keys sends batches of at most KHALA_PROTO_ARRAY_MAX keys (1024 keys of at most
 *     KHALA_KEY_MAX bytes are ~260 KB, well inside the smallest frame khalad accepts);
 *   - warm by prefix or type: khalad warms one page of its L2 scan per request and answers
 *     with the cursor of the next one; ask until it comes back 0.
 *
 * Statistics: the reply's "data" map is a tree of khala_kv_t whose strings point into the
 * reply's frame, which the next call on the thread overwrites. It is copied into one block
 * that the caller owns (khala_stats_free): the nodes first, then every string, so that one
 * free releases it all. Two passes over the tree: count, then copy.
 *
 *   +-------------------------------+------------------------------------+
 *   | khala_stat_t[nodes]           | strings (names, values), NUL-ended |
 *   +-------------------------------+------------------------------------+
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"
#include "debug.h"

/* One warm request; adds the reply's count and returns its cursor in *cursor. */
static int warm_call(khala_cache_t *c, khala_msg_t *req, uint64_t *count, uint64_t *cursor) {
    khala_msg_t rep;
    khala__proto_msg_init(&rep);
    int rc = khala__client_call(c, req, &rep, 0);
    if (rc != 0)
        return rc;
    if (rep.rc != 0) {
        rc = khala__client_reply_fail(c, &rep);
    } else {
        *count += (rep.has & KHALA_F_COUNT) ? rep.count : 0;
        if (cursor)
            *cursor = (rep.has & KHALA_F_CURSOR) ? rep.cursor : 0;
    }
    khala__proto_msg_free(&rep);
    return rc;
}

int khala_cache_warm(khala_cache_t *c, const void *const *keys, const size_t *klens, size_t n,
                     uint64_t *count) {
    KHALA_ASSERT(c != NULL && (n == 0 || (keys && klens)));
    for (size_t i = 0; i < n; i++)
        if (klens[i] == 0 || klens[i] > KHALA_KEY_MAX)
            return khala__client_fail(c, KHALA_EKEY,
                                      "key %zu of %zu is %zu bytes; keys are 1..%d bytes", i, n,
                                      klens[i], KHALA_KEY_MAX);
    khala_bytes_t batch[KHALA_PROTO_ARRAY_MAX];
    uint64_t total = 0;
    for (size_t done = 0; done < n;) {
        size_t m = n - done < KHALA_PROTO_ARRAY_MAX ? n - done : KHALA_PROTO_ARRAY_MAX;
        for (size_t i = 0; i < m; i++) {
            batch[i].ptr = keys[done + i];
            batch[i].len = klens[done + i];
        }
        khala_msg_t req;
        khala__proto_msg_init(&req);
        req.op = KHALA_OP_WARM;
        req.keys = batch;
        req.nkeys = (uint32_t)m;
        req.has = KHALA_F_KEYS;
        int rc = warm_call(c, &req, &total, NULL);
        if (rc != 0)
            return rc;
        done += m;
    }
    if (count)
        *count = total;
    return 0;
}

/* Warm by prefix (prefix != NULL) or by type: every page of khalad's scan. */
static int warm_scan(khala_cache_t *c, const void *prefix, size_t plen, khala_type_t type,
                     uint64_t *count) {
    uint64_t total = 0, cursor = 0;
    do {
        khala_msg_t req;
        khala__proto_msg_init(&req);
        req.op = KHALA_OP_WARM;
        if (prefix) {
            req.prefix.ptr = prefix;
            req.prefix.len = plen;
            req.has = KHALA_F_PREFIX;
        } else {
            req.type = type;
            req.has = KHALA_F_TYPE;
        }
        req.cursor = cursor;
        req.has |= KHALA_F_CURSOR;
        int rc = warm_call(c, &req, &total, &cursor);
        if (rc != 0)
            return rc;
    } while (cursor != 0);
    if (count)
        *count = total;
    return 0;
}

int khala_cache_warm_prefix(khala_cache_t *c, const void *prefix, size_t plen, uint64_t *count) {
    KHALA_ASSERT(c != NULL);
    if (plen == 0 || plen > KHALA_KEY_MAX || !prefix)
        return khala__client_fail(c, KHALA_EKEY, "prefix is %zu bytes, 1..%d allowed", plen,
                                  KHALA_KEY_MAX);
    return warm_scan(c, prefix, plen, KHALA_TYPE_MEMORY_ENTITY, count);
}

int khala_cache_warm_type(khala_cache_t *c, khala_type_t type, uint64_t *count) {
    KHALA_ASSERT(c != NULL);
    if ((unsigned)type >= KHALA_TYPE_COUNT)
        return khala__client_fail(c, -EINVAL, "type %d is not a data type (0..%d)", (int)type,
                                  KHALA_TYPE_COUNT - 1);
    return warm_scan(c, NULL, 0, type, count);
}

/* ---- statistics ------------------------------------------------------------------------ */

/* Pass 1: the nodes and string bytes (with their NULs) of n entries and everything below. */
static void measure(const khala_kv_t *kv, uint32_t n, size_t *nodes, size_t *bytes) {
    for (uint32_t i = 0; i < n; i++) {
        *nodes += 1;
        *bytes += kv[i].key.len + 1;
        if (kv[i].kind == KHALA_KV_STR || kv[i].kind == KHALA_KV_BIN)
            *bytes += kv[i].as.s.len + 1;
        else if (kv[i].kind == KHALA_KV_MAP)
            measure(kv[i].as.map.items, kv[i].as.map.n, nodes, bytes);
    }
}

/* Copy len bytes and a NUL to *pool; returns where they went. */
static const char *pool_put(char **pool, const void *p, size_t len) {
    char *s = *pool;
    if (len)
        memcpy(s, p, len);
    s[len] = '\0';
    *pool += len + 1;
    return s;
}

/* Pass 2: copy n entries into dst (n slots); their children go at *next. */
static void copy_tree(const khala_kv_t *kv, uint32_t n, khala_stat_t *dst, khala_stat_t **next,
                      char **pool) {
    for (uint32_t i = 0; i < n; i++) {
        khala_stat_t *d = &dst[i];
        memset(d, 0, sizeof(*d));
        d->name = pool_put(pool, kv[i].key.ptr, kv[i].key.len);
        switch (kv[i].kind) {
            case KHALA_KV_BOOL:
                d->kind = KHALA_STAT_BOOL;
                d->v.b = kv[i].as.b;
                break;
            case KHALA_KV_UINT:
                d->kind = KHALA_STAT_UINT;
                d->v.u = kv[i].as.u;
                break;
            case KHALA_KV_INT:
                d->kind = KHALA_STAT_INT;
                d->v.i = kv[i].as.i;
                break;
            case KHALA_KV_DOUBLE:
                d->kind = KHALA_STAT_DOUBLE;
                d->v.d = kv[i].as.d;
                break;
            case KHALA_KV_STR:
            case KHALA_KV_BIN:
                d->kind = KHALA_STAT_STR;
                d->v.str.s = pool_put(pool, kv[i].as.s.ptr, kv[i].as.s.len);
                d->v.str.len = kv[i].as.s.len;
                break;
            case KHALA_KV_MAP: {
                khala_stat_t *children = *next;
                *next += kv[i].as.map.n;
                d->kind = KHALA_STAT_MAP;
                d->v.map.items = children;
                d->v.map.n = kv[i].as.map.n;
                copy_tree(kv[i].as.map.items, kv[i].as.map.n, children, next, pool);
                break;
            }
            default:
                d->kind = KHALA_STAT_NIL;
                break;
        }
    }
}

int khala_cache_daemon_stats(khala_cache_t *c, khala_stat_t **out, size_t *n) {
    KHALA_ASSERT(c != NULL && out != NULL && n != NULL);
    khala_msg_t req, rep;
    khala__proto_msg_init(&req);
    khala__proto_msg_init(&rep);
    req.op = KHALA_OP_STATS;
    int rc = khala__client_call(c, &req, &rep, 0);
    if (rc != 0)
        return rc;
    if (rep.rc != 0) {
        rc = khala__client_reply_fail(c, &rep);
        khala__proto_msg_free(&rep);
        return rc;
    }
    size_t nodes = 0, bytes = 0;
    uint32_t top = (rep.has & KHALA_F_DATA) ? rep.ndata : 0;
    measure(rep.data, top, &nodes, &bytes);
    /* At least one byte, so that an empty answer still is a block to free. */
    khala_stat_t *block = malloc(nodes * sizeof(khala_stat_t) + bytes + 1);
    if (!block) {
        khala__proto_msg_free(&rep);
        return khala__client_fail(c, -ENOMEM, "out of memory for %zu statistics", nodes);
    }
    khala_stat_t *next = block + top;
    char *pool = (char *)(block + nodes);
    copy_tree(rep.data, top, block, &next, &pool);
    khala__proto_msg_free(&rep);
    *out = block;
    *n = top;
    return 0;
}

void khala_stats_free(khala_stat_t *stats) {
    free(stats);
}
