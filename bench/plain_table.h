/*
 * The plain table: the reference for the physical limit of a shared-memory lookup on this
 * machine. Fixed-size open addressing (linear probing) in one MAP_SHARED mapping, values
 * inline in the slot, one writer, readers copying a value out under the slot's sequence
 * counter (a seqlock). It has none of what the L1 needs to be a cache (variable sizes,
 * eviction, TTL, deletes without tombstones, reclamation, corruption checks, reader slots),
 * which is the point: it bounds from above what any design can do per get.
 *
 * Synchronization table (slot fields):
 *
 *   field           | written by         | read by  | order
 *   ----------------+--------------------+----------+----------------------------------------
 *   seq             | writer             | readers  | writer: odd (relaxed), release fence,
 *                   |                    |          | fields, even (release); reader: acquire
 *                   |                    |          | load, fields, acquire fence, reload
 *   hash,klen,vlen, | writer, inside an  | readers  | plain; a reader discards what it read
 *   key,value       | odd seq            |          | unless seq was even and unchanged
 *
 * The reader's plain loads race with the writer's stores by design (as in Linux seqlocks); the
 * sequence check discards any torn copy.
 */
#ifndef KHALA_BENCH_PLAIN_TABLE_H
#define KHALA_BENCH_PLAIN_TABLE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

/* Longest key stored inline. */
#define PLAIN_KEY_MAX 32u

typedef struct plain_slot {
    _Atomic uint32_t seq; /* even: stable; odd: the writer is changing the slot */
    uint16_t klen;        /* key bytes; 0 = empty slot */
    uint16_t pad;
    uint32_t vlen; /* value bytes */
    uint32_t pad2;
    uint64_t hash; /* full key hash */
    uint8_t key[PLAIN_KEY_MAX];
    uint8_t value[]; /* value_cap bytes */
} plain_slot_t;

/* The table; immutable after plain_create except the mapping's contents. */
typedef struct plain_table {
    uint8_t *base;      /* the MAP_SHARED mapping, inherited by forked readers */
    size_t map_size;    /* bytes mapped */
    uint64_t nslots;    /* slots; the load factor is at most 3/4 */
    uint32_t slot_size; /* bytes per slot, a multiple of 64 so a slot starts a cache line */
    uint32_t value_cap; /* largest value */
    uint64_t seed;      /* hash seed */
} plain_table_t;

/* Map a table for `keys` keys of values up to value_cap bytes. 0 or -errno. */
int plain_create(plain_table_t *t, uint64_t keys, uint32_t value_cap);
void plain_destroy(plain_table_t *t);
/* Insert or overwrite (writer only). 0, -E2BIG for a key or value too long, -ENOSPC. */
int plain_put(plain_table_t *t, const void *key, size_t klen, const void *val, size_t vlen);

static inline plain_slot_t *plain_slot(const plain_table_t *t, uint64_t i) {
    return (plain_slot_t *)(t->base + i * t->slot_size);
}

static inline uint64_t plain_home(const plain_table_t *t, uint64_t hash) {
    return (uint64_t)(((unsigned __int128)hash * t->nslots) >> 64);
}

/* Copy the value of key into buf. 1 on a hit (*len set), 0 on a miss, -1 if cap is too
 * small. Lock-free; retries a slot while the writer changes it. */
static inline int plain_get(const plain_table_t *t, const void *key, size_t klen, void *buf,
                            size_t cap, size_t *len) {
    uint64_t hash = XXH3_64bits_withSeed(key, klen, t->seed);
    uint64_t i = plain_home(t, hash);
    for (uint64_t n = 0; n < t->nslots; n++) {
        const plain_slot_t *s = plain_slot(t, i);
        for (;;) {
            /* acquire: pairs with the writer's final release store; the fields read below are
             * at least as new as this even value. */
            uint32_t s1 = atomic_load_explicit(&s->seq, memory_order_acquire);
            if (s1 & 1)
                continue;
            int r;
            uint32_t vlen = s->vlen;
            if (s->klen == 0) {
                r = 0;
            } else if (s->hash != hash || s->klen != klen || memcmp(s->key, key, klen) != 0) {
                r = 2; /* another key: probe on */
            } else if (vlen > cap) {
                r = -1;
            } else {
                memcpy(buf, s->value, vlen);
                r = 1;
            }
            /* acquire fence: orders the field loads above before the reload of seq; pairs
             * with the writer's release fence after it made seq odd. */
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(&s->seq, memory_order_relaxed) != s1)
                continue;
            if (r == 2)
                break;
            if (r == 1)
                *len = vlen;
            return r;
        }
        if (++i == t->nslots)
            i = 0;
    }
    return 0;
}

/* plain_get as a worker's call would be: out of line, through a real call, with the key length
 * known only at run time (noipa keeps the compiler from cloning it for the benchmark's
 * constant length). The "fair" reference for khala_cache_get, which a worker reaches the same
 * way; plain_get inlined into the loop is the other, the physical limit. */
int plain_get_fair(const plain_table_t *t, const void *key, size_t klen, void *buf, size_t cap,
                   size_t *len);

#endif /* KHALA_BENCH_PLAIN_TABLE_H */
