/*
 * Single-flight table.
 *
 * HOW IT WORKS
 *
 *   key --> flight { leader, waiters[], started_ms, invalidated }
 *
 * The first worker to miss a key with a loader joins as leader; the entry records it. Every
 * later miss of the key joins as a waiter and gets no reply yet. When the leader fills (or
 * reports that the source has no such key), every waiter is answered with that result and the
 * entry is forgotten. So one load runs per key however many workers miss it at once.
 *
 * Three things can go wrong, and each has its rule:
 *   - The leader takes longer than the timeout: every waiter gets -ETIMEDOUT, the key is
 *     forgotten, and the next miss starts a new flight. (A leader that fills late still fills
 *     the cache; there is just nobody left to answer.)
 *   - The leader's connection goes away: the oldest waiter is promoted and told to load.
 *   - The key is invalidated while the load runs: the result may be older than the
 *     invalidation, so the entry is marked and the caller must not cache it (the placeholder
 *     rule of Redis client-side caching). Waiters still get the value: they asked before the
 *     invalidation.
 *
 * The table is a uthash hash keyed by the key's bytes (a well-kept header-only library, from
 * Debian's uthash-dev). Expiry scans the table; it is bounded by max_keys and runs on khalad's
 * tick, not per request.
 */
#include "flight.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Out of memory in the table (uthash's own arrays) is an error like any other: the add is rolled
 * back, the element's hh.tbl is left NULL, and khala__flight_join() returns -ENOMEM (the caller
 * then loads without single-flight, as when the table is full). */
#define HASH_NONFATAL_OOM 1
#include <uthash.h>

typedef struct flight {
    UT_hash_handle hh;
    khala_waiter_t leader;
    khala_waiter_t *waiters; /* growable array */
    size_t nwait, capwait;
    uint64_t started_ms;
    int invalidated;
    size_t klen;
    uint8_t key[]; /* the hash key */
} flight_t;

struct khala_flight {
    flight_t *map;
    uint64_t timeout_ms;
    size_t max_keys;
};

int khala__flight_open(khala_flight_t **out, uint64_t timeout_ms, size_t max_keys) {
    khala_flight_t *f = calloc(1, sizeof(*f));
    if (!f)
        return -ENOMEM;
    f->timeout_ms = timeout_ms;
    f->max_keys = max_keys;
    *out = f;
    return 0;
}

static void forget(khala_flight_t *f, flight_t *e) {
    HASH_DEL(f->map, e);
    free(e->waiters);
    free(e);
}

void khala__flight_close(khala_flight_t *f) {
    if (!f)
        return;
    flight_t *e, *tmp;
    HASH_ITER(hh, f->map, e, tmp) {
        forget(f, e);
    }
    free(f);
}

size_t khala__flight_count(const khala_flight_t *f) {
    return HASH_COUNT(f->map);
}

static flight_t *lookup(const khala_flight_t *f, const void *key, size_t klen) {
    flight_t *e = NULL;
    HASH_FIND(hh, f->map, key, klen, e);
    return e;
}

int khala__flight_join(khala_flight_t *f, const void *key, size_t klen, const khala_waiter_t *w,
                       uint64_t now_ms) {
    flight_t *e = lookup(f, key, klen);
    if (!e) {
        if (HASH_COUNT(f->map) >= f->max_keys)
            return -EBUSY;
        e = calloc(1, sizeof(*e) + klen);
        if (!e)
            return -ENOMEM;
        memcpy(e->key, key, klen);
        e->klen = klen;
        e->leader = *w;
        e->started_ms = now_ms;
        HASH_ADD(hh, f->map, key, klen, e);
        if (e->hh.tbl == NULL) {
            free(e);
            return -ENOMEM;
        }
        return KHALA_FLIGHT_LEADER;
    }
    if (e->leader.owner == w->owner) {
        e->leader.req_id = w->req_id;
        return KHALA_FLIGHT_LEADER;
    }
    if (e->nwait == e->capwait) {
        size_t cap = e->capwait ? e->capwait * 2 : 4;
        khala_waiter_t *p = realloc(e->waiters, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        e->waiters = p;
        e->capwait = cap;
    }
    e->waiters[e->nwait++] = *w;
    return KHALA_FLIGHT_WAITER;
}

size_t khala__flight_finish(khala_flight_t *f, const void *key, size_t klen, int rc,
                            const void *val, size_t vlen, khala_flight_cb cb, void *arg) {
    flight_t *e = lookup(f, key, klen);
    if (!e)
        return 0;
    size_t n = e->nwait;
    /* Unlink first: a callback may join a new flight of the same key. */
    HASH_DEL(f->map, e);
    for (size_t i = 0; i < n; i++)
        cb(arg, &e->waiters[i], rc, val, vlen);
    free(e->waiters);
    free(e);
    return n;
}

void khala__flight_invalidate(khala_flight_t *f, const void *key, size_t klen, int prefix) {
    if (!prefix) {
        flight_t *e = lookup(f, key, klen);
        if (e)
            e->invalidated = 1;
        return;
    }
    flight_t *e, *tmp;
    HASH_ITER(hh, f->map, e, tmp) {
        if (e->klen >= klen && memcmp(e->key, key, klen) == 0)
            e->invalidated = 1;
    }
}

void *khala__flight_leader(const khala_flight_t *f, const void *key, size_t klen) {
    const flight_t *e = lookup(f, key, klen);
    return e ? e->leader.owner : NULL;
}

int khala__flight_invalidated(const khala_flight_t *f, const void *key, size_t klen) {
    const flight_t *e = lookup(f, key, klen);
    return e ? e->invalidated : 0;
}

size_t khala__flight_expire(khala_flight_t *f, uint64_t now_ms, khala_flight_cb cb, void *arg) {
    size_t expired = 0;
    flight_t *e, *tmp;
    HASH_ITER(hh, f->map, e, tmp) {
        if (now_ms - e->started_ms < f->timeout_ms)
            continue;
        HASH_DEL(f->map, e);
        for (size_t i = 0; i < e->nwait; i++)
            cb(arg, &e->waiters[i], -ETIMEDOUT, NULL, 0);
        free(e->waiters);
        free(e);
        expired++;
    }
    return expired;
}

void khala__flight_forget_owner(khala_flight_t *f, void *owner, uint64_t now_ms, khala_flight_cb cb,
                                void *arg) {
    flight_t *e, *tmp;
    HASH_ITER(hh, f->map, e, tmp) {
        size_t j = 0;
        for (size_t i = 0; i < e->nwait; i++)
            if (e->waiters[i].owner != owner)
                e->waiters[j++] = e->waiters[i];
        e->nwait = j;
        if (e->leader.owner != owner)
            continue;
        if (e->nwait == 0) {
            forget(f, e);
            continue;
        }
        /* Promote the oldest waiter; it loads from now on. */
        e->leader = e->waiters[0];
        e->started_ms = now_ms; /* the new leader gets the whole timeout */
        memmove(e->waiters, e->waiters + 1, (e->nwait - 1) * sizeof(*e->waiters));
        e->nwait--;
        cb(arg, &e->leader, KHALA_FLIGHT_LEADER, NULL, 0);
    }
}
