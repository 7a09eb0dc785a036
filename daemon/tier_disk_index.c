/*
 * The disk tier's in-memory index and its approximate LFU. See daemon/tier_disk_index.h.
 *
 * HOW IT WORKS
 *
 *   tab    entry*[tab_cap]   open addressing, linear probing on the key's XXH3 (seeded)
 *   dense  entry*[n]         the same entries, packed, for O(1) random sampling
 *   entry  { bytes, expire_ms, counter, decay_min, seq, slot, hash, key }
 *
 * The table stays under 3/4 full; it grows (doubling, from 64) only in
 * khala__disk_index_reserve, which a caller runs before the LMDB commit whose changes it will
 * insert, so that no insert can fail after the commit. A removal shifts back the entries after
 * the hole that would no longer be found past it (no tombstones), and moves dense's last entry
 * into the removed one's slot.
 *
 * LFU. Each entry has Redis's logarithmic 8-bit counter: a new item starts at LFU_INIT (so it
 * is not the next victim), a get raises it with probability 1 / ((c - LFU_INIT) * LFU_LOG_FACTOR
 * + 1), and it loses one per LFU_DECAY_MIN minutes without a get (applied lazily, from
 * decay_min). A victim is the entry with the lowest decayed counter among EVICT_SAMPLES random
 * entries of dense (an expired entry beats any live one; among equal counters the least
 * recently used, by seq, goes first): approximate LFU, O(1) per eviction, like Redis's
 * allkeys-lfu. The disk tier keeps the counters in its "lfu" database (the dirty flag marks the
 * changed ones); the time since the last flush is not known at open, so a reopened store's
 * counters restart their decay clock.
 *
 * Invariants:
 *   - tab and dense hold the same entries; dense[e->slot] == e; bytes is the sum of theirs.
 *   - every entry is found from its home slot (hash & (tab_cap - 1)) without crossing a NULL.
 *
 * Rejected: an exact LFU heap (O(log n) per get for little gain over sampling); uthash for the
 * index (it can fail inside an add, after the commit).
 */
#include "tier_disk_index.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "debug.h"
#include "khala/cache.h"
#include "sys.h"

/* LFU (see above). LFU_INIT is Redis's LFU_INIT_VAL, LFU_LOG_FACTOR its default lfu-log-factor
 * (a counter of 255 takes about a million gets), LFU_DECAY_MIN its lfu-decay-time. */
#define LFU_INIT 5
#define LFU_LOG_FACTOR 10
#define LFU_DECAY_MIN 1
#define EVICT_SAMPLES 16

typedef khala_disk_entry_t entry_t;

void khala__disk_index_init(khala_disk_index_t *ix, uint64_t seed, int64_t now_ms) {
    ix->seed = seed;
    ix->rng = seed | 1;
    ix->clock0_ms = now_ms;
}

uint32_t khala__disk_index_now_min(const khala_disk_index_t *ix) {
    return (uint32_t)((khala__sys_now_ms() - ix->clock0_ms) / 60000);
}

static uint64_t rnd(khala_disk_index_t *ix) {
    uint64_t x = ix->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return ix->rng = x;
}

/* ------------------------------------------------------------------------------------------ */
/* The table                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static uint64_t key_hash(const khala_disk_index_t *ix, const void *key, size_t klen) {
    return XXH3_64bits_withSeed(key, klen, ix->seed);
}

entry_t *khala__disk_index_find(const khala_disk_index_t *ix, const void *key, size_t klen) {
    if (!ix->tab_cap || klen > KHALA_KEY_MAX)
        return NULL;
    uint64_t h = key_hash(ix, key, klen);
    size_t mask = ix->tab_cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        entry_t *e = ix->tab[i];
        if (!e)
            return NULL;
        if (e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0)
            return e;
    }
}

static void tab_place(entry_t **tab, size_t cap, entry_t *e) {
    size_t mask = cap - 1;
    size_t i = e->hash & mask;
    while (tab[i])
        i = (i + 1) & mask;
    tab[i] = e;
}

int khala__disk_index_reserve(khala_disk_index_t *ix, size_t extra) {
    size_t need = ix->n + extra;
    if (need * 4 >= ix->tab_cap * 3) {
        size_t cap = ix->tab_cap ? ix->tab_cap : 64;
        while (need * 4 >= cap * 3)
            cap *= 2;
        entry_t **tab = calloc(cap, sizeof(*tab));
        if (!tab)
            return -ENOMEM;
        for (size_t i = 0; i < ix->n; i++)
            tab_place(tab, cap, ix->dense[i]);
        free(ix->tab);
        ix->tab = tab;
        ix->tab_cap = cap;
    }
    if (need > ix->dense_cap) {
        size_t cap = ix->dense_cap ? ix->dense_cap : 64;
        while (cap < need)
            cap *= 2;
        entry_t **dense = realloc(ix->dense, cap * sizeof(*dense));
        if (!dense)
            return -ENOMEM;
        ix->dense = dense;
        ix->dense_cap = cap;
    }
    return 0;
}

entry_t *khala__disk_index_entry_new(const khala_disk_index_t *ix, const void *key, size_t klen) {
    entry_t *e = calloc(1, sizeof(*e) + klen);
    if (!e)
        return NULL;
    e->klen = (uint8_t)klen;
    memcpy(e->key, key, klen);
    e->hash = key_hash(ix, key, klen);
    e->counter = LFU_INIT;
    return e;
}

void khala__disk_index_insert(khala_disk_index_t *ix, entry_t *e) {
    tab_place(ix->tab, ix->tab_cap, e);
    e->slot = (uint32_t)ix->n;
    ix->dense[ix->n++] = e;
    ix->bytes += e->bytes;
}

/* Linear probing deletes by shifting back the entries after the hole that would no longer be
 * found past it. */
void khala__disk_index_remove(khala_disk_index_t *ix, entry_t *e) {
    size_t mask = ix->tab_cap - 1;
    size_t i = e->hash & mask;
    while (ix->tab[i] != e)
        i = (i + 1) & mask;
    ix->tab[i] = NULL;
    for (size_t j = (i + 1) & mask; ix->tab[j]; j = (j + 1) & mask) {
        size_t home = ix->tab[j]->hash & mask;
        /* Leave tab[j] when its home lies cyclically in (i, j]. */
        int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            ix->tab[i] = ix->tab[j];
            ix->tab[j] = NULL;
            i = j;
        }
    }
    entry_t *last = ix->dense[--ix->n];
    ix->dense[e->slot] = last;
    last->slot = e->slot;
    ix->bytes -= e->bytes;
    free(e);
}

void khala__disk_index_resize(khala_disk_index_t *ix, entry_t *e, uint32_t bytes) {
    ix->bytes = ix->bytes - e->bytes + bytes;
    e->bytes = bytes;
}

void khala__disk_index_clear(khala_disk_index_t *ix) {
    for (size_t i = 0; i < ix->n; i++)
        free(ix->dense[i]);
    ix->n = 0;
    ix->bytes = 0;
    if (ix->tab)
        memset(ix->tab, 0, ix->tab_cap * sizeof(*ix->tab));
}

void khala__disk_index_free(khala_disk_index_t *ix) {
    khala__disk_index_clear(ix);
    free(ix->tab);
    free(ix->dense);
    ix->tab = NULL;
    ix->dense = NULL;
    ix->tab_cap = 0;
    ix->dense_cap = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* LFU                                                                                        */
/* ------------------------------------------------------------------------------------------ */

/* The counter after decay, without writing it. */
static uint8_t lfu_decayed(const entry_t *e, uint32_t now) {
    uint32_t periods = (now - e->decay_min) / LFU_DECAY_MIN;
    return periods >= e->counter ? 0 : (uint8_t)(e->counter - periods);
}

void khala__disk_index_touch(khala_disk_index_t *ix, entry_t *e) {
    uint32_t now = khala__disk_index_now_min(ix);
    uint8_t c = lfu_decayed(e, now);
    if (c < 255) {
        double base = c > LFU_INIT ? c - LFU_INIT : 0;
        double r = (double)(rnd(ix) >> 11) / (double)(1ull << 53);
        if (r < 1.0 / (base * LFU_LOG_FACTOR + 1))
            c++;
    }
    if (c != e->counter)
        e->dirty = 1;
    e->counter = c;
    e->decay_min = now;
    e->seq = ++ix->seq;
}

void khala__disk_index_add_hits(khala_disk_index_t *ix, entry_t *e, uint64_t hits) {
    KHALA_ASSERT(ix && e);
    uint32_t now = khala__disk_index_now_min(ix);
    uint8_t c = lfu_decayed(e, now);
    double left = (double)hits;
    while (c < 255 && left > 0) {
        double base = c > LFU_INIT ? c - LFU_INIT : 0;
        double step = base * LFU_LOG_FACTOR + 1; /* expected touches per raise from c */
        if (left >= step) {
            left -= step;
            c++;
            continue;
        }
        double r = (double)(rnd(ix) >> 11) / (double)(1ull << 53);
        if (r < left / step)
            c++;
        break;
    }
    if (c != e->counter)
        e->dirty = 1;
    e->counter = c;
    e->decay_min = now;
    e->seq = ++ix->seq;
}

/* 1 if a should be evicted before b. */
static int colder(const entry_t *a, const entry_t *b, uint32_t now, int64_t now_rt) {
    int ca = khala__disk_live(a->expire_ms, now_rt) ? lfu_decayed(a, now) : -1;
    int cb = khala__disk_live(b->expire_ms, now_rt) ? lfu_decayed(b, now) : -1;
    return ca != cb ? ca < cb : a->seq < b->seq;
}

uint64_t khala__disk_index_rank(const entry_t *e, uint32_t now_min, int64_t now_rt) {
    uint64_t c = khala__disk_live(e->expire_ms, now_rt) ? (uint64_t)lfu_decayed(e, now_min) + 1 : 0;
    return c << 56 | (e->seq & (((uint64_t)1 << 56) - 1));
}

entry_t *khala__disk_index_pick_victim(khala_disk_index_t *ix, int64_t now_rt) {
    uint32_t now = khala__disk_index_now_min(ix);
    entry_t *best = NULL;
    if (ix->n > 2 * EVICT_SAMPLES) {
        int got = 0;
        for (int tries = 0; got < EVICT_SAMPLES && tries < 4 * EVICT_SAMPLES; tries++) {
            entry_t *e = ix->dense[rnd(ix) % ix->n];
            if (e->pinned)
                continue;
            got++;
            if (!best || colder(e, best, now, now_rt))
                best = e;
        }
        if (best)
            return best;
    }
    /* A small index, or one whose samples were all pinned (a large write): look at all. */
    for (size_t i = 0; i < ix->n; i++) {
        entry_t *e = ix->dense[i];
        if (!e->pinned && (!best || colder(e, best, now, now_rt)))
            best = e;
    }
    return best;
}

/* hottest: a min-heap of the max hottest entries (root = the coldest of them). */
static void heap_sift_down(entry_t **h, size_t n, size_t i, uint32_t now) {
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        if (l < n && colder(h[l], h[m], now, 0))
            m = l;
        if (l + 1 < n && colder(h[l + 1], h[m], now, 0))
            m = l + 1;
        if (m == i)
            return;
        entry_t *x = h[i];
        h[i] = h[m];
        h[m] = x;
        i = m;
    }
}

size_t khala__disk_index_hottest(const khala_disk_index_t *ix, entry_t **h, size_t max,
                                 int64_t now_rt) {
    uint32_t now = khala__disk_index_now_min(ix);
    size_t n = 0;
    if (!max)
        return 0;
    for (size_t i = 0; i < ix->n; i++) {
        entry_t *e = ix->dense[i];
        if (!khala__disk_live(e->expire_ms, now_rt))
            continue;
        if (n < max) {
            h[n++] = e;
            if (n == max)
                for (size_t j = n / 2; j-- > 0;)
                    heap_sift_down(h, n, j, now);
        } else if (colder(h[0], e, now, 0)) {
            h[0] = e;
            heap_sift_down(h, n, 0, now);
        }
    }
    if (n < max)
        for (size_t j = n / 2; j-- > 0;)
            heap_sift_down(h, n, j, now);
    /* Heap order to hottest-first: pop the coldest to the end, repeatedly. */
    for (size_t m = n; m > 1; m--) {
        entry_t *x = h[0];
        h[0] = h[m - 1];
        h[m - 1] = x;
        heap_sift_down(h, m - 1, 0, now);
    }
    return n;
}
