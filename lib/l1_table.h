/*
 * The L1 table: the hash table in the data segment, its single writer, and the lookup that
 * readers run. The writer handle (khala_l1_t) is what khalad uses; workers only ever call
 * khala__l1_lookup() through the client API.
 *
 * Start at khala__l1_open() and khala__l1_put(); the design is at the top of l1_table.c.
 */
#ifndef KHALA_LIB_L1_TABLE_H
#define KHALA_LIB_L1_TABLE_H

#include <stddef.h>
#include <stdint.h>

#include <string.h>

#include "khala/error.h"
#include "layout.h"
#include "segment.h"
#include "segment_create.h"
#include "sys.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

/* The writer's handle. Not thread-safe: one thread of one process drives it. */
typedef struct khala_l1 khala_l1_t;

/* Counters of the table, as the writer sees them. */
typedef struct khala_l1_stats {
    uint64_t items, item_bytes, payload_bytes; /* live items; arena bytes; key+value bytes */
    uint64_t arena_bytes, free_bytes;          /* arena size; bytes in free blocks */
    uint64_t retired, retired_bytes;           /* unlinked items waiting for readers */
    uint64_t sets, overwrites, deletes, evictions, expirations;
    uint64_t reader_hits, reader_misses; /* summed over reader slots */
    uint32_t readers;                    /* reader slots in use */
    uint32_t max_items;
    uint64_t epoch;        /* global epoch */
    uint64_t small, main;  /* items in the policy's queues */
    int oldest_reader_pid; /* pid of the reader pinning the oldest epoch, 0 if none */
    uint64_t oldest_reader_epoch;
    int stuck_reader_pid;   /* a reader that made a wait for readers fail and is still inside
                                that section (stopped, in a debugger, frozen), 0 if none */
    int64_t stuck_since_ms; /* when it was found stuck (monotonic ms), 0 if none */
    uint64_t blocked_ops;   /* writer operations refused (KHALA_EBLOCKED) or, for deletes and
                                invalidations, done by marking the item expired, because of a
                                reader stuck in a section; since open */
    uint64_t stuck_waits;   /* waits for readers that ran out their whole budget (GRACE_WAIT_NS
                               per operation); one per stuck reader while it stays stuck */
    uint64_t membarriers;   /* membarrier() calls of the writer's reader scans, since open */
    uint64_t rehashes;      /* rehashes with a new seed (hash flooding defence) */
} khala_l1_stats_t;

/* khala__l1_open_ex flags. */
enum {
    KHALA_L1_DEFAULT = 0,
    /* Adopt the segment that exists under the name when it has the same sizes, no live writer
     * and passes khala__l1_check (khalad restarting): readers keep their mapping, the items
     * stay. Otherwise make it anew, as without the flag, and say why in khala__l1_errmsg. */
    KHALA_L1_REATTACH = 1u << 0,
};

/* Create cache `name` anew with the given sizes (NULL for defaults) and become its writer. An
 * existing segment without a live writer is replaced (its readers reattach). Returns 0,
 * KHALA_EEXIST, KHALA_ECONFIG, KHALA_ENAME, -ENOMEM or -errno; on failure *err (if not NULL)
 * gets a message naming the problem. */
int khala__l1_open(const char *name, const khala_seg_config_t *cfg, khala_l1_t **out, char *err,
                   size_t errlen);

/* khala__l1_open with flags (KHALA_L1_REATTACH). Same returns; KHALA_EEXIST also when the
 * existing segment still has a live writer. */
int khala__l1_open_ex(const char *name, const khala_seg_config_t *cfg, unsigned flags,
                      khala_l1_t **out, char *err, size_t errlen);

/* 1 if khala__l1_open_ex adopted an existing segment, 0 if it made one. */
int khala__l1_reattached(const khala_l1_t *t);

/* Close the writer; with unlink != 0 also remove the segment files. */
void khala__l1_close(khala_l1_t *t, int unlink);

/* Insert or overwrite. ttl_ms 0 means no expiry. On success *version (if not NULL) is the new
 * item's version. Errors: KHALA_EKEY, KHALA_ETOOBIG (value above max_value or larger than the
 * arena), KHALA_EBLOCKED (reclamation held back by a live reader), KHALA_EFULL, and on all of
 * them the table is unchanged. */
int khala__l1_put(khala_l1_t *t, const void *key, size_t klen, const void *val, size_t vlen,
                  int64_t ttl_ms, uint8_t type, uint64_t *version);

/* As khala__l1_put, with the item's version chosen by the caller (khalad gives every level the
 * same version, ordered across hosts); want_version 0 means "the next of this table's own". The
 * table's own sequence moves past want_version, so later own versions stay larger. */
int khala__l1_put_v(khala_l1_t *t, const void *key, size_t klen, const void *val, size_t vlen,
                    int64_t ttl_ms, uint8_t type, uint64_t want_version, uint64_t *version);

/* Remove a key. 0, KHALA_ENOTFOUND or KHALA_EKEY. Never refused for a reader stuck in a read
 * section: when the item cannot be retired it is marked expired in place, so no reader returns
 * it again, and the sweep unlinks it later. */
int khala__l1_delete(khala_l1_t *t, const void *key, size_t klen);

/* Housekeeping a writer runs often (khalad: every loop turn; tests: after bursts): drain the
 * hit rings into the policy, free retired items whose grace period has passed, reap slots of
 * dead readers that pin memory. Returns the number of items freed, or -errno. */
int khala__l1_maintain(khala_l1_t *t);

/* Examine up to `budget` descs from the sweep cursor and remove expired items; returns how
 * many were removed. A full sweep is max_items / budget calls. */
size_t khala__l1_sweep(khala_l1_t *t, size_t budget);

void khala__l1_stats(khala_l1_t *t, khala_l1_stats_t *st);

/* A visitor of live items: return 1 to remove the item, 0 to keep it, or KHALA_L1_STOP to end
 * the walk before this item (the cursor then points at it, so the next call visits it first).
 * The item is valid only during the call. */
#define KHALA_L1_STOP (-1)
typedef int (*khala_l1_visit_fn)(void *arg, const khala_item_t *it);

/* Visit the live items of up to `budget` descs from *cursor (a position, 0 to start), removing
 * those fn asks to remove. *cursor is set to where the next call goes on, 0 once the walk has
 * reached the end. Returns how many items were removed. Keys may be put or removed between
 * calls; an item present for the whole walk is visited exactly once. */
size_t khala__l1_scan(khala_l1_t *t, uint64_t *cursor, size_t budget, khala_l1_visit_fn fn,
                      void *arg);

/* Hits readers recorded for the key of item it (a lower bound: the rings are lossy and are
 * drained by khala__l1_maintain). */
uint32_t khala__l1_item_hits(const khala_l1_t *t, const khala_item_t *it);

/* The writer's own lookup (no read section: nothing is freed while the writer runs). The item
 * is valid until the writer's next call that changes the table. */
int khala__l1_find(khala_l1_t *t, const void *key, size_t klen, const khala_item_t **out);

/* Walk the whole table, the queues and the arena, verifying every invariant. 0 or
 * KHALA_ECORRUPT (with the detail in khala__l1_errmsg). */
int khala__l1_check(khala_l1_t *t);

/* Detail of the last failure on t. */
const char *khala__l1_errmsg(const khala_l1_t *t);

/* The writer's segment (tests use it to attach readers to the same mapping under TSan). */
khala_seg_t *khala__l1_seg(khala_l1_t *t);

/* Reader side ------------------------------------------------------------------------------*/

/* The live index, as a reader took it at one moment (khala__l1_index). */
typedef struct khala_l1_index {
    const khala_atomic_u32 *buckets; /* its bucket array */
    uint64_t seed;                   /* its hash seed */
    uint64_t count;                  /* the index_count it was taken at */
    unsigned which;                  /* 0 or 1: the item's next word that chains it */
} khala_l1_index_t;

/* Take the live index. A reader may take it before entering its section (to hash and prefetch
 * early) if it checks after entering that index_count has not moved: the writer rewrites an
 * index's seed and buckets only after a grace period that follows the switch away from it. */
static inline __attribute__((always_inline)) khala_l1_index_t
khala__l1_index(const khala_seg_t *s) {
    khala_l1_index_t ix;
    /* acquire: pairs with the writer's release store of index_count, made after the index and
     * its seed were complete. */
    ix.count = khala_load_acquire(&s->hdr->index_count);
    ix.which = (unsigned)(ix.count & 1);
    /* acquire: a seed written for a later index is seen only with a later index_count. */
    ix.seed = khala_load_acquire(&s->hdr->index_seed[ix.which]);
    ix.buckets = s->buckets + (ix.which ? s->bucket_mask + 1 : 0);
    return ix;
}

/* The key hash: XXH3 with the given seed. Keys of up to 16 bytes (the common case) take XXH3's
 * short-input path inline, which is exactly what XXH3_64bits_withSeed computes for them,
 * without the call and its length dispatch (test_l1_table checks the two agree). */
static inline __attribute__((always_inline)) uint64_t
khala__l1_hash_with(uint64_t seed, const void *key, size_t klen) {
#if XXH_VERSION_NUMBER >= 800 && XXH_VERSION_NUMBER < 900
    if (__builtin_expect(klen <= 16, 1))
        return XXH3_len_0to16_64b((const xxh_u8 *)key, klen, XXH3_kSecret, seed);
#endif
    return XXH3_64bits_withSeed(key, klen, seed);
}

/* The key hash under the live index's seed. */
static inline uint64_t khala__l1_hash(const khala_seg_t *s, const void *key, size_t klen) {
    return khala__l1_hash_with(khala__l1_index(s).seed, key, klen);
}

/* 1 if the n bytes at a and b are equal. Short keys (up to 16 bytes) compare with two loads
 * each, overlapping, never past either end; longer ones call memcmp. */
static inline __attribute__((always_inline)) int khala__l1_key_eq(const void *a, const void *b,
                                                                  size_t n) {
    const uint8_t *x = a, *y = b;
    if (__builtin_expect(n >= 8 && n <= 16, 1)) {
        uint64_t x0, y0, x1, y1;
        __builtin_memcpy(&x0, x, 8);
        __builtin_memcpy(&y0, y, 8);
        __builtin_memcpy(&x1, x + n - 8, 8);
        __builtin_memcpy(&y1, y + n - 8, 8);
        return ((x0 ^ y0) | (x1 ^ y1)) == 0;
    }
    if (n >= 4 && n < 8) {
        uint32_t x0, y0, x1, y1;
        __builtin_memcpy(&x0, x, 4);
        __builtin_memcpy(&y0, y, 4);
        __builtin_memcpy(&x1, x + n - 4, 4);
        __builtin_memcpy(&y1, y + n - 4, 4);
        return ((x0 ^ y0) | (x1 ^ y1)) == 0;
    }
    if (n < 4) /* first, middle and last byte cover 1 to 3 bytes */
        return n == 0 || (x[0] == y[0] && x[n / 2] == y[n / 2] && x[n - 1] == y[n - 1]);
    return memcmp(x, y, n) == 0;
}

/* Copy n bytes from src to dst (which do not overlap) inline, without a call through the PLT:
 * up to 128 bytes in at most eight 16-byte moves and no loop (the first and the last 16, 32 or
 * 64 bytes, which may overlap each other inside dst), up to 256 with a loop of them in the
 * middle; larger values go to memcpy, where its setup cost no longer shows. */
static inline __attribute__((always_inline)) void khala__l1_copy(void *dst, const void *src,
                                                                 size_t n) {
    uint8_t *d = dst;
    const uint8_t *p = src;
    /* Every move is 16 bytes (one SSE load and store): a larger constant size lets the
     * compiler pick rep movs, whose start-up costs more than the whole copy. */
#define KHALA_COPY16(o) __builtin_memcpy(d + (o), p + (o), 16)
    if (n > 256) {
        memcpy(d, p, n);
    } else if (n > 64) {
        size_t e = n - 64;
        if (n > 128)
            for (size_t i = 64; i < e; i += 16)
                KHALA_COPY16(i);
        KHALA_COPY16(0);
        KHALA_COPY16(16);
        KHALA_COPY16(32);
        KHALA_COPY16(48);
        KHALA_COPY16(e);
        KHALA_COPY16(e + 16);
        KHALA_COPY16(e + 32);
        KHALA_COPY16(e + 48);
    } else if (n > 32) {
        KHALA_COPY16(0);
        KHALA_COPY16(16);
        KHALA_COPY16(n - 32);
        KHALA_COPY16(n - 16);
    } else if (n >= 16) {
        KHALA_COPY16(0);
        KHALA_COPY16(n - 16);
    } else if (n >= 8) {
        __builtin_memcpy(d, p, 8);
        __builtin_memcpy(d + n - 8, p + n - 8, 8);
    } else {
        for (size_t i = 0; i < n; i++)
            d[i] = p[i];
    }
#undef KHALA_COPY16
}

/* Find the live item for key in index ix, with hash its hash under ix's seed. Call inside a
 * read section (or from the writer). 0 and *out; KHALA_ENOTFOUND (absent, expired, or behind a
 * chain longer than KHALA_CHAIN_MAX: a flooded chain is a miss, not an error); KHALA_ECORRUPT if
 * an item does not fit the arena. Each item is checked against its own lengths before any byte
 * past its header is read. Inline: it is the whole of the hit path. */
static inline __attribute__((always_inline)) int
khala__l1_lookup(const khala_seg_t *s, const khala_l1_index_t *ix, const void *key, size_t klen,
                 uint64_t hash, const khala_item_t **out) {
    /* An item whose header fits the arena starts at most this far into it; one unsigned
     * compare rejects offsets below the arena too. */
    const uint64_t span = s->arena_hi - s->arena_lo - sizeof(khala_item_t);
    /* acquire: pairs with the release that linked the item; its fields are visible. */
    uint64_t off = khala_link_off(khala_load_acquire(&ix->buckets[hash & s->bucket_mask]));
    for (uint32_t n = 0; off; n++) {
        if (__builtin_expect(off - s->arena_lo > span, 0))
            return KHALA_ECORRUPT;
        if (__builtin_expect(n >= KHALA_CHAIN_MAX, 0))
            return KHALA_ENOTFOUND;
        const khala_item_t *it = (const khala_item_t *)(s->base + off);
        /* The value's address depends only on klen, which we know: fetch the lines of the
         * header, the key and the start of the value at once, so that a hit costs one memory
         * round trip after the bucket instead of two. */
        const char *v = (const char *)it + KHALA_ITEM_VALUE_OFF(klen);
        __builtin_prefetch(it);
        __builtin_prefetch(v);
        __builtin_prefetch(v + KHALA_CACHE_LINE);
        if (it->key_len == klen) {
            /* The item's own lengths: its key and value must fit before we read them. */
            if (__builtin_expect(KHALA_ITEM_SIZE((uint64_t)it->key_len, (uint64_t)it->value_len) >
                                     s->arena_hi - off,
                                 0))
                return KHALA_ECORRUPT;
            if (khala__l1_key_eq(it + 1, key, klen)) {
                int64_t deadline =
                    __atomic_load_n(&it->expire_ms, __ATOMIC_RELAXED); /* see remove_or_expire */
                if (deadline && khala__sys_now_coarse_upper_ms() >= deadline)
                    return KHALA_ENOTFOUND;
                *out = it;
                return 0;
            }
        }
        off = khala_link_off(khala_load_acquire(&it->next[ix->which]));
    }
    return KHALA_ENOTFOUND;
}

static inline const uint8_t *khala__item_key(const khala_item_t *it) {
    return (const uint8_t *)(it + 1);
}

static inline const uint8_t *khala__item_value(const khala_item_t *it) {
    return (const uint8_t *)it + KHALA_ITEM_VALUE_OFF(it->key_len);
}

#endif /* KHALA_LIB_L1_TABLE_H */
