/*
 * The L1 lookup: what a reader runs on the hash table in the data segment, inside a read
 * section (readers.h). It is the whole of the hit path, so everything here is inline: taking the
 * live index and its seed, hashing the key, comparing the tags of the key's bucket line and
 * checking the items they point to, walking the overflow chain with every offset checked, and
 * copying a value out. Workers link it through libkhalacache; the writer (l1_table.h) uses the
 * same lookup for its own finds. The table's design is at the top of l1_table.c, the reader
 * protocol in docs/segment.md.
 *
 * Start at khala__l1_lookup().
 */
#ifndef KHALA_LIB_L1_LOOKUP_H
#define KHALA_LIB_L1_LOOKUP_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "khala/error.h"
#if defined(__SSE2__) && !defined(KHALA_TSAN)
#include <emmintrin.h>
#endif
#include "layout.h"
#include "segment.h"
#include "sys.h"

/* gcc -Os (MinSizeRel) inlines XXH3's 17-to-128-byte path into callers that hash a small stack
 * buffer, then warns (-Warray-bounds) about reads that path makes only for lengths above 64,
 * which it cannot rule out. The reads are xxhash.h's, so the warning is silenced for its lines
 * only; our own code keeps it. */
#define XXH_INLINE_ALL
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Warray-bounds"
#include <xxhash.h>
#pragma GCC diagnostic pop

/* The live index, as a reader took it at one moment (khala__l1_index). */
typedef struct khala_l1_index {
    const khala_bucket_t *buckets; /* its bucket lines */
    uint64_t seed;                 /* its hash seed */
    uint64_t count;                /* the index_count it was taken at */
    unsigned which;                /* 0 or 1: the item's next word that chains it */
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
    ix.buckets = s->buckets + (ix.which ? s->bucket_count : 0);
    return ix;
}

/* The bucket of a key with this hash: fastrange of the hash's high half, (h * count) >> 32,
 * which maps evenly onto any count (< 2^32), so the index needs no power-of-two rounding. The
 * count is the reader's private copy, checked at attach: the result is always in range. */
static inline __attribute__((always_inline)) uint64_t khala__l1_bucket_index(const khala_seg_t *s,
                                                                             uint64_t hash) {
    return ((hash >> 32) * s->bucket_count) >> 32;
}

static inline __attribute__((always_inline)) const khala_bucket_t *
khala__l1_bucket(const khala_seg_t *s, const khala_l1_index_t *ix, uint64_t hash) {
    return &ix->buckets[khala__l1_bucket_index(s, hash)];
}

/* The key's tag in its bucket: the hash's low byte, bits the bucket choice does not use. A free
 * slot is one whose link is 0, and its tag is 0 too: a key whose tag is 0 (one in 256) also
 * loads the links of the free slots of its line, which are on the line already loaded. */
static inline __attribute__((always_inline)) uint8_t khala__l1_tag(uint64_t hash) {
    return (uint8_t)hash;
}

/* A mask of the slots of b whose tag is tag (bit i for slot i). The tags are hints: a reader may
 * see a slot's new tag with its old link or the reverse while the writer fills or frees it, and
 * the key compare after the link's acquire load decides (docs/segment.md, "Buckets and slots").
 * On x86-64 one 16-byte load and compare covers the twelve tags (and the chain word, masked
 * off). It is a plain load of bytes the writer stores atomically: on x86-64 each byte of an
 * aligned vector load is read whole, which is all a hint needs, and the load orders nothing.
 * TSan builds, which would call it a race, and other targets read the tags one by one,
 * relaxed. */
static inline __attribute__((always_inline)) unsigned khala__l1_tag_match(const khala_bucket_t *b,
                                                                          uint8_t tag) {
#if defined(__SSE2__) && !defined(KHALA_TSAN)
    __m128i line = _mm_load_si128((const __m128i *)(const void *)b);
    __m128i eq = _mm_cmpeq_epi8(line, _mm_set1_epi8((char)tag));
    return (unsigned)_mm_movemask_epi8(eq) & ((1u << KHALA_BUCKET_SLOTS) - 1);
#else
    unsigned m = 0;
    for (unsigned i = 0; i < KHALA_BUCKET_SLOTS; i++)
        m |= (unsigned)(khala_load_relaxed(&b->tag[i]) == tag) << i;
    return m;
#endif
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

/* Check the item at off (a link just loaded with acquire) against key: 1 if it is key's live
 * item (*out set), 0 if it holds another key; KHALA_ENOTFOUND if it is key's item but expired;
 * KHALA_ECORRUPT if it does not fit the arena. The item is checked against its own lengths
 * before any byte past its header is read. */
static inline __attribute__((always_inline)) int khala__l1_item_is(const khala_seg_t *s,
                                                                   uint64_t off, const void *key,
                                                                   size_t klen,
                                                                   const khala_item_t **out) {
    /* An item whose header fits the arena starts at most this far into it; one unsigned
     * compare rejects offsets below the arena too. */
    if (__builtin_expect(off - s->arena_lo > s->arena_hi - s->arena_lo - sizeof(khala_item_t), 0))
        return KHALA_ECORRUPT;
    const khala_item_t *it = (const khala_item_t *)(s->base + off);
    /* The value's address depends only on klen, which we know: fetch the lines of the header,
     * the key and the start of the value at once, so that a hit costs one memory round trip
     * after the bucket line instead of two. */
    const char *v = (const char *)it + KHALA_ITEM_VALUE_OFF(klen);
    __builtin_prefetch(it);
    __builtin_prefetch(v);
    __builtin_prefetch(v + KHALA_CACHE_LINE);
    if (it->key_len != klen)
        return 0;
    /* The item's own lengths: its key and value must fit before we read them. */
    if (__builtin_expect(
            KHALA_ITEM_SIZE((uint64_t)it->key_len, (uint64_t)it->value_len) > s->arena_hi - off, 0))
        return KHALA_ECORRUPT;
    if (!khala__l1_key_eq(it + 1, key, klen))
        return 0;
    int64_t deadline = __atomic_load_n(&it->expire_ms, __ATOMIC_RELAXED); /* see remove_or_expire */
    if (deadline && khala__sys_now_coarse_upper_ms() >= deadline)
        return KHALA_ENOTFOUND;
    *out = it;
    return 1;
}

/* Find the live item for key in index ix, with hash its hash under ix's seed, and b its bucket
 * line there (khala__l1_bucket; khala__l1_lookup below finds it). Call inside a read section
 * (or from the writer). 0 and *out; KHALA_ENOTFOUND (absent, expired, or behind an
 * overflow chain longer than KHALA_CHAIN_MAX: a flooded chain is a miss, not an error);
 * KHALA_ECORRUPT if an item does not fit the arena. Inline: it is the whole of the hit path.
 *
 * The key's bucket line first: every slot whose tag matches, then the overflow chain. A key
 * never moves between slots, nor from the chain to a slot, while it stays in the index (an
 * overwrite swings the link where the key is), so a key present throughout a lookup is found
 * whatever the writer does meanwhile (docs/segment.md). */
static inline __attribute__((always_inline)) int
khala__l1_lookup_in(const khala_seg_t *s, const khala_l1_index_t *ix, const khala_bucket_t *b,
                    const void *key, size_t klen, uint64_t hash, const khala_item_t **out) {
    int r;
    for (unsigned m = khala__l1_tag_match(b, khala__l1_tag(hash)); m; m &= m - 1) {
        /* acquire: pairs with the release that filled the slot; the item's fields are
         * visible. */
        uint64_t off = khala_link_off(khala_load_acquire(&b->link[__builtin_ctz(m)]));
        if (off && (r = khala__l1_item_is(s, off, key, klen, out)) != 0)
            return r > 0 ? 0 : r;
    }
    /* acquire: pairs with the release that linked the chain's first item. */
    uint64_t off = khala_link_off(khala_load_acquire(&b->chain));
    for (uint32_t n = 0; off; n++) {
        if (__builtin_expect(n >= KHALA_CHAIN_MAX, 0))
            return KHALA_ENOTFOUND;
        if ((r = khala__l1_item_is(s, off, key, klen, out)) != 0)
            return r > 0 ? 0 : r;
        /* acquire: as above, for the next item of the chain. */
        off = khala_link_off(
            khala_load_acquire(&((const khala_item_t *)(s->base + off))->next[ix->which]));
    }
    return KHALA_ENOTFOUND;
}

static inline __attribute__((always_inline)) int
khala__l1_lookup(const khala_seg_t *s, const khala_l1_index_t *ix, const void *key, size_t klen,
                 uint64_t hash, const khala_item_t **out) {
    return khala__l1_lookup_in(s, ix, khala__l1_bucket(s, ix, hash), key, klen, hash, out);
}

static inline const uint8_t *khala__item_key(const khala_item_t *it) {
    return (const uint8_t *)(it + 1);
}

static inline const uint8_t *khala__item_value(const khala_item_t *it) {
    return (const uint8_t *)it + KHALA_ITEM_VALUE_OFF(it->key_len);
}

#endif /* KHALA_LIB_L1_LOOKUP_H */
