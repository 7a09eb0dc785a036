/*
 * L1 eviction: S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction",
 * SOSP 2023), a policy that needs no write on a hit.
 *
 * HOW IT WORKS
 *
 * Exact LRU moves an item on every hit, which in a shared segment would make every reader
 * write to lines other processes read. S3-FIFO needs only a small saturating counter per item,
 * and readers do not even write that: they append the desc index of each hit to a ring in their
 * own reader slot, and the writer drains the rings into desc.freq (readers.c). The policy itself
 * runs entirely in the writer, over the desc table:
 *
 *   new key --> [ small FIFO, ~10% ] --freq >= 1--> [ main FIFO, ~90% ] --freq == 0--> evicted
 *                      |                             ^      |  freq > 0: freq--, back to head
 *                      | freq == 0: evicted,         |      +---------------------+
 *                      v  hash kept in the ghost     |
 *                   [ ghost ] --- key seen again ----+  (enters main directly)
 *
 * Step 1. On insert, a key whose hash is in the ghost goes to the head of main; any other key
 *         goes to the head of small. Most keys are one-hit wonders and die young in small.
 * Step 2. To evict: if small holds at least KHALA_S3_SMALL_PERCENT of the items (or main is
 *         empty), look at the tail of small, else at the tail of main.
 * Step 3. Tail of small: if it was hit at least KHALA_S3_MOVE_THRESHOLD times, move it to the
 *         head of main with freq 0 and go to step 2; else it is the victim and its hash goes
 *         into the ghost.
 * Step 4. Tail of main: if freq > 0, decrement it, move it to the head of main, go to step 2;
 *         else it is the victim.
 *
 * The ghost is a table of (32-bit fingerprint, 32-bit sequence) pairs, probed linearly over a
 * few slots from the position the hash's low bits choose. An entry
 * counts only while fewer than ghost_window insertions have happened since it was made, which
 * ages the ghost like a FIFO without a list; an insertion overwrites the oldest of its probe
 * window. Collisions cost a little accuracy and never correctness.
 *
 * Why S3-FIFO: replayed on the traces in ../shared/traces and on Zipf traces, it beat exact
 * LRU in every case we tried, beat SIEVE, CLOCK and 2Q on average, and its parameters (10%,
 * threshold 1, ghost of about the cache size) are the paper's defaults, not tuned to one trace.
 * docs/eviction.md has the numbers.
 *
 * Queues are doubly linked through desc.prev/next (prev toward the head, the newest), so a
 * delete or expiry can unlink any key in O(1). Writer-only: nothing here is atomic.
 */
#include "evict.h"

#include "errbuf.h"
#include "khala/error.h"

#define GHOST_PROBE 8u

static void q_push_head(khala_policy_t *p, uint32_t idx, uint8_t q) {
    khala_wstate_t *w = p->w;
    khala_desc_t *d = &p->desc[idx];
    d->queue = q;
    d->prev = KHALA_NIL;
    d->next = w->q_head[q];
    if (w->q_head[q] != KHALA_NIL)
        p->desc[w->q_head[q]].prev = idx;
    else
        w->q_tail[q] = idx;
    w->q_head[q] = idx;
    w->q_count[q]++;
}

static void q_unlink(khala_policy_t *p, uint32_t idx) {
    khala_wstate_t *w = p->w;
    khala_desc_t *d = &p->desc[idx];
    uint8_t q = d->queue;
    if (q == KHALA_Q_NONE)
        return;
    if (d->prev != KHALA_NIL)
        p->desc[d->prev].next = d->next;
    else
        w->q_head[q] = d->next;
    if (d->next != KHALA_NIL)
        p->desc[d->next].prev = d->prev;
    else
        w->q_tail[q] = d->prev;
    w->q_count[q]--;
    d->queue = KHALA_Q_NONE;
    d->prev = d->next = KHALA_NIL;
}

uint32_t khala__policy_ghost_fp(uint64_t hash) {
    uint32_t fp = (uint32_t)(hash >> 32); /* the low bits already chose the probe position */
    return fp ? fp : 1;                   /* 0 marks an empty entry */
}

/* Ghost insertions since entry g was made (sequence numbers wrap at 2^32; the window is
 * below 2^31, so the difference is exact for every entry that still counts). */
static uint32_t ghost_age(const khala_policy_t *p, const khala_ghost_t *g) {
    return (uint32_t)p->w->ghost_seq - g->seq;
}

static void ghost_add(khala_policy_t *p, uint64_t hash) {
    uint32_t fp = khala__policy_ghost_fp(hash);
    p->w->ghost_seq++;
    uint64_t pos = hash & p->ghost_mask, oldest = pos;
    for (uint32_t i = 0; i < GHOST_PROBE; i++) {
        khala_ghost_t *g = &p->ghost[(pos + i) & p->ghost_mask];
        if (g->fp == 0 || g->fp == fp || ghost_age(p, g) >= p->ghost_window) {
            oldest = (pos + i) & p->ghost_mask;
            break;
        }
        if (ghost_age(p, g) > ghost_age(p, &p->ghost[oldest]))
            oldest = (pos + i) & p->ghost_mask;
    }
    p->ghost[oldest].fp = fp;
    p->ghost[oldest].seq = (uint32_t)p->w->ghost_seq;
}

/* 1 if hash is in the ghost (and consumes the entry). */
static int ghost_take(khala_policy_t *p, uint64_t hash) {
    uint32_t fp = khala__policy_ghost_fp(hash);
    uint64_t pos = hash & p->ghost_mask;
    for (uint32_t i = 0; i < GHOST_PROBE; i++) {
        khala_ghost_t *g = &p->ghost[(pos + i) & p->ghost_mask];
        if (g->fp == fp) {
            int live = ghost_age(p, g) < p->ghost_window;
            g->fp = 0;
            return live;
        }
    }
    return 0;
}

void khala__policy_insert(khala_policy_t *p, uint32_t idx) {
    khala_desc_t *d = &p->desc[idx];
    d->freq = 0;
    /* Step 1. */
    q_push_head(p, idx, ghost_take(p, d->hash) ? KHALA_Q_MAIN : KHALA_Q_SMALL);
}

void khala__policy_remove(khala_policy_t *p, uint32_t idx) {
    q_unlink(p, idx);
}

void khala__policy_hit(khala_policy_t *p, uint32_t idx) {
    khala_desc_t *d = &p->desc[idx];
    if (d->freq < KHALA_S3_FREQ_MAX)
        d->freq++;
}

uint32_t khala__policy_victim(khala_policy_t *p) {
    khala_wstate_t *w = p->w;
    for (;;) {
        uint64_t small = w->q_count[KHALA_Q_SMALL], main = w->q_count[KHALA_Q_MAIN];
        if (small + main == 0)
            return KHALA_NIL;
        /* Step 2. */
        if (small && (small * 100 >= (small + main) * KHALA_S3_SMALL_PERCENT || main == 0)) {
            /* Step 3. */
            uint32_t t = w->q_tail[KHALA_Q_SMALL];
            khala_desc_t *d = &p->desc[t];
            q_unlink(p, t);
            if (d->freq >= KHALA_S3_MOVE_THRESHOLD) {
                d->freq = 0;
                q_push_head(p, t, KHALA_Q_MAIN);
                continue;
            }
            ghost_add(p, d->hash);
            return t;
        }
        /* Step 4. */
        uint32_t t = w->q_tail[KHALA_Q_MAIN];
        khala_desc_t *d = &p->desc[t];
        q_unlink(p, t);
        if (d->freq > 0) {
            d->freq--;
            q_push_head(p, t, KHALA_Q_MAIN);
            continue;
        }
        return t;
    }
}

/* Every index is checked against max_items before its desc is read. A walk ends after
 * max_items entries whatever q_count says, and each entry's prev must be the entry before it,
 * which a cycle breaks (it re-enters a desc whose prev is already another), so a corrupted
 * queue ends in KHALA_ECORRUPT, never in a hang. The ghost needs no check: it is indexed only
 * through ghost_mask, and any fingerprint or sequence in it is a valid (if useless) entry. */
int khala__policy_check(const khala_policy_t *p, char *err, size_t errlen) {
    const khala_wstate_t *w = p->w;
    for (uint8_t q = KHALA_Q_SMALL; q <= KHALA_Q_MAIN; q++) {
        const char *name = q == KHALA_Q_SMALL ? "small" : "main";
        if (w->q_count[q] > p->max_items)
            return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                 "eviction queue %s: count %llu exceeds max_items %u", name,
                                 (unsigned long long)w->q_count[q], p->max_items);
        uint64_t n = 0;
        uint32_t prev = KHALA_NIL;
        for (uint32_t i = w->q_head[q]; i != KHALA_NIL; i = p->desc[i].next) {
            if (i >= p->max_items)
                return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                     "eviction queue %s: link %u (after %u) is past max_items %u",
                                     name, i, prev, p->max_items);
            const khala_desc_t *d = &p->desc[i];
            if (++n > w->q_count[q])
                return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                     "eviction queue %s: longer than its count %llu at desc %u",
                                     name, (unsigned long long)w->q_count[q], i);
            if (d->queue != q || d->prev != prev || d->item_off == 0)
                return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                     "eviction queue %s: desc %u has queue %u, prev %u (want "
                                     "%u), item_off %llu",
                                     name, i, d->queue, d->prev, prev,
                                     (unsigned long long)d->item_off);
            prev = i;
        }
        if (n != w->q_count[q] || w->q_tail[q] != prev)
            return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                 "eviction queue %s: %llu entries ending at %u, header says %llu "
                                 "ending at %u",
                                 name, (unsigned long long)n, prev,
                                 (unsigned long long)w->q_count[q], w->q_tail[q]);
    }
    return 0;
}
