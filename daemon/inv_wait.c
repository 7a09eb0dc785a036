/*
 * Replies waiting for invalidations to finish below L1 (daemon/inv_wait.h).
 *
 * HOW IT WORKS
 *
 * A small array of waiters, each a connection and request, the count to report, the version the
 * invalidation was made at, and a bit per level still to finish. khala__invwait_done(level, v)
 * clears that level's bit in every waiter of version <= v (a level's queue drains in order, and
 * invalidations are queued in increasing version, so finishing v finishes every older one),
 * then answers and removes the waiters with no bit left. Waiters are few (one per caller of an
 * invalidation in progress), so a linear array is enough; the order of answers is the order of
 * the array.
 *
 * An answer may be sent from inside done(), which the flusher calls from the tick: the callback
 * only encodes a reply for the connection (daemon/handlers.c), it never re-enters the queue.
 */
#include "inv_wait.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct waiter {
    khala_conn_t *conn; /* NULL once the connection closed: dropped at the next done() */
    uint64_t req_id;
    int op;
    uint64_t count;
    uint64_t version; /* the invalidation's version */
    unsigned levels;  /* bit i: level i has not finished it yet */
    int rc;           /* the first error a level finished it with */
} waiter_t;

struct khala_invwait {
    waiter_t *w;
    size_t n, cap;
    khala_invwait_fn fn;
    void *arg;
};

int khala__invwait_new(khala_invwait_fn fn, void *arg, khala_invwait_t **out) {
    khala_invwait_t *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->fn = fn;
    w->arg = arg;
    *out = w;
    return 0;
}

void khala__invwait_free(khala_invwait_t *w) {
    if (!w)
        return;
    free(w->w);
    free(w);
}

int khala__invwait_add(khala_invwait_t *w, khala_conn_t *c, uint64_t req_id, int op, uint64_t count,
                       uint64_t version, unsigned levels) {
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 8;
        waiter_t *nw = realloc(w->w, cap * sizeof(*nw));
        if (!nw)
            return -ENOMEM;
        w->w = nw;
        w->cap = cap;
    }
    w->w[w->n++] = (waiter_t){c, req_id, op, count, version, levels, 0};
    return 0;
}

void khala__invwait_done(khala_invwait_t *w, int level, uint64_t version, int rc) {
    if (!w)
        return;
    size_t keep = 0;
    for (size_t i = 0; i < w->n; i++) {
        waiter_t x = w->w[i];
        if (x.version <= version && (x.levels & (1u << level))) {
            x.levels &= ~(1u << level);
            if (rc != 0 && x.rc == 0)
                x.rc = rc;
        }
        if (x.levels && x.conn) {
            w->w[keep++] = x;
            continue;
        }
        if (x.conn)
            w->fn(w->arg, x.conn, x.req_id, x.op, x.count, x.rc);
    }
    w->n = keep;
}

void khala__invwait_forget_conn(khala_invwait_t *w, const khala_conn_t *c) {
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++)
        if (w->w[i].conn == c)
            w->w[i].conn = NULL;
}

size_t khala__invwait_count(const khala_invwait_t *w) {
    size_t n = 0;
    for (size_t i = 0; w && i < w->n; i++)
        n += w->w[i].conn != NULL;
    return n;
}
