/*
 * Arena allocator: TLSF over segment offsets.
 *
 * HOW IT WORKS
 *
 * The arena is a sequence of blocks, each starting with a 16-byte khala_block_t:
 *
 *   +-----------+-----------------+------------------------------+
 *   | prev_size | size | flags    | payload (item, or free links) |
 *   +-----------+-----------------+------------------------------+
 *   ^ block offset                ^ payload offset = block + 16
 *
 * size includes the header and is a multiple of KHALA_ALIGN, so the low bits hold two flags:
 * FREE (this block is free) and PREV_FREE (the block before it is free). prev_size is valid only
 * while the previous block is free: it is the boundary tag that lets free() find and merge the
 * block before. A zero-size used block at the arena's end stops merges to the right.
 *
 * Free blocks are kept in KHALA_ALLOC_FL x KHALA_ALLOC_SL doubly linked lists: the first index
 * is floor(log2(size)), the second splits that power of two into KHALA_ALLOC_SL equal ranges.
 * Two bitmaps say which lists are non-empty, so finding a list with a block large enough is two
 * find-first-set instructions. Allocation rounds the request up to the next list boundary
 * ("good fit"), so any block of the list it finds is large enough and no list is walked.
 *
 * Why TLSF and not size-class slabs: the cache's eviction policy is global, and slabs tie
 * memory to size classes, so a shift in value sizes strands memory in the wrong class (the
 * "calcification" memcached needs a rebalancer for). TLSF coalesces, so memory freed by any
 * eviction serves any later size. Its cost is bounded: 16 bytes per block plus rounding to the
 * list boundary (at most 1/16 of the size); docs/segment.md reports the measured overhead.
 *
 * Invariants (checked by khala__alloc_check, which follows no offset it has not checked, since
 * it is what stands between a corrupted segment and a writer that trusts it):
 *   - Blocks tile [lo, hi - 16) exactly; no two free blocks are adjacent.
 *   - A block's PREV_FREE flag equals the FREE flag of the block before it.
 *   - Every free block is in exactly the list its size maps to, and free_bytes is their sum.
 *
 * Only the writer calls these functions, so nothing here is atomic.
 */
#include "alloc.h"

#include <errno.h>

#include "debug.h"
#include "errbuf.h"
#include "khala/error.h"

#define FLAGS_MASK ((uint64_t)KHALA_ALIGN - 1)
/* Blocks of the request's own list that step 2 of khala__alloc_alloc looks at. */
#define FIRST_FIT_SCAN 32

typedef struct free_links {
    uint64_t next; /* block offset of the next free block in the list, 0 = none */
    uint64_t prev; /* block offset of the previous one, 0 = none (this is the head) */
} free_links_t;

/* Block offsets stay inside the arena and aligned: the writer's own bookkeeping keeps them so,
 * and khala__alloc_check validates every offset it reads before it comes here. */
static inline khala_block_t *blk(const khala_arena_t *a, uint64_t b) {
    KHALA_ASSERT(b >= a->lo && b + KHALA_BLOCK_HDR <= a->hi && b % KHALA_ALIGN == 0);
    return (khala_block_t *)(a->base + b);
}

static inline free_links_t *links(const khala_arena_t *a, uint64_t b) {
    KHALA_ASSERT(b >= a->lo && b + KHALA_BLOCK_HDR + sizeof(free_links_t) <= a->hi);
    return (free_links_t *)(a->base + b + KHALA_BLOCK_HDR);
}

static inline uint64_t bsize(const khala_block_t *h) {
    return h->size_flags & ~FLAGS_MASK;
}

static inline int fls64(uint64_t v) {
    return 63 - __builtin_clzll(v);
}

/* The list a block of `size` bytes belongs in. */
static void mapping_insert(uint64_t size, int *fl, int *sl) {
    int f = fls64(size);
    *fl = f;
    *sl = (int)((size >> (f - KHALA_ALLOC_SL_LOG)) ^ (1u << KHALA_ALLOC_SL_LOG));
}

/* The first list whose every block holds `size` bytes: round up to the next list boundary. */
static int mapping_search(uint64_t size, int *fl, int *sl) {
    int f = fls64(size);
    uint64_t rounded = size + ((1ull << (f - KHALA_ALLOC_SL_LOG)) - 1);
    if (fls64(rounded) >= KHALA_ALLOC_FL)
        return -ENOMEM;
    mapping_insert(rounded, fl, sl);
    return 0;
}

static void list_insert(khala_arena_t *a, uint64_t b, uint64_t size) {
    khala_alloc_state_t *st = a->st;
    int fl, sl;
    mapping_insert(size, &fl, &sl);
    uint64_t head = st->free_head[fl][sl];
    links(a, b)->next = head;
    links(a, b)->prev = 0;
    if (head)
        links(a, head)->prev = b;
    st->free_head[fl][sl] = b;
    st->sl_bitmap[fl] |= 1u << sl;
    st->fl_bitmap |= 1ull << fl;
    st->free_bytes += size;
}

static void list_remove(khala_arena_t *a, uint64_t b, uint64_t size) {
    khala_alloc_state_t *st = a->st;
    int fl, sl;
    mapping_insert(size, &fl, &sl);
    free_links_t *l = links(a, b);
    if (l->prev)
        links(a, l->prev)->next = l->next;
    else
        st->free_head[fl][sl] = l->next;
    if (l->next)
        links(a, l->next)->prev = l->prev;
    if (!st->free_head[fl][sl]) {
        st->sl_bitmap[fl] &= ~(1u << sl);
        if (!st->sl_bitmap[fl])
            st->fl_bitmap &= ~(1ull << fl);
    }
    st->free_bytes -= size;
}

/* Make [b, b+size) a free block in its list, and tell the block after it. The PREV_FREE flag
 * of b itself is kept. */
static void make_free(khala_arena_t *a, uint64_t b, uint64_t size) {
    khala_block_t *h = blk(a, b);
    h->size_flags = size | KHALA_BLOCK_FREE | (h->size_flags & KHALA_BLOCK_PREV_FREE);
    khala_block_t *next = blk(a, b + size);
    next->prev_size = size;
    next->size_flags |= KHALA_BLOCK_PREV_FREE;
    list_insert(a, b, size);
}

void khala__alloc_format(khala_arena_t *a) {
    khala_alloc_state_t *st = a->st;
    for (int f = 0; f < KHALA_ALLOC_FL; f++) {
        st->sl_bitmap[f] = 0;
        for (int s = 0; s < KHALA_ALLOC_SL; s++)
            st->free_head[f][s] = 0;
    }
    st->fl_bitmap = 0;
    st->free_bytes = 0;
    st->used_blocks = 0;
    uint64_t sentinel = a->hi - KHALA_BLOCK_HDR;
    blk(a, sentinel)->prev_size = 0;
    blk(a, sentinel)->size_flags = 0; /* size 0, used */
    blk(a, a->lo)->size_flags = 0;
    make_free(a, a->lo, sentinel - a->lo);
}

uint64_t khala__alloc_block_for(uint64_t payload) {
    uint64_t need = (payload + KHALA_BLOCK_HDR + FLAGS_MASK) & ~FLAGS_MASK;
    return need < KHALA_BLOCK_MIN ? KHALA_BLOCK_MIN : need;
}

uint64_t khala__alloc_max_payload(const khala_arena_t *a) {
    return a->hi - a->lo - 2 * KHALA_BLOCK_HDR;
}

int khala__alloc_alloc(khala_arena_t *a, uint64_t payload, uint64_t *off, uint64_t *block) {
    khala_alloc_state_t *st = a->st;
    int fl, sl;
    if (payload > khala__alloc_max_payload(a))
        return -ENOMEM;
    uint64_t need = khala__alloc_block_for(payload);
    uint64_t b = 0;
    /* Step 1: good fit. The first non-empty list at or above the rounded-up class holds only
     * blocks large enough; take its head. */
    if (mapping_search(need, &fl, &sl) == 0) {
        uint32_t sl_map = st->sl_bitmap[fl] & (~0u << sl);
        if (!sl_map) {
            uint64_t fl_map = fl + 1 < 64 ? st->fl_bitmap & (~0ull << (fl + 1)) : 0;
            if (fl_map) {
                fl = __builtin_ctzll(fl_map);
                sl_map = st->sl_bitmap[fl];
            }
        }
        if (sl_map)
            b = st->free_head[fl][__builtin_ctz(sl_map)];
    }
    /* Step 2: the rounding can skip a block that is large enough but shares the request's own
     * list (for a request near the arena's size, the only block). Look there, first fit, for a
     * bounded number of blocks. */
    if (!b) {
        mapping_insert(need, &fl, &sl);
        uint64_t x = st->free_head[fl][sl];
        for (int n = 0; x && n < FIRST_FIT_SCAN; n++, x = links(a, x)->next) {
            if (bsize(blk(a, x)) >= need) {
                b = x;
                break;
            }
        }
        if (!b)
            return -ENOMEM;
    }
    uint64_t size = bsize(blk(a, b));
    list_remove(a, b, size);
    khala_block_t *h = blk(a, b);
    if (size - need >= KHALA_BLOCK_MIN) {
        /* Split: the tail becomes a free block; its own PREV_FREE is clear (b is used). */
        uint64_t rest = b + need;
        blk(a, rest)->size_flags = 0;
        make_free(a, rest, size - need);
        size = need;
    } else {
        blk(a, b + size)->size_flags &= ~(uint64_t)KHALA_BLOCK_PREV_FREE;
    }
    h->size_flags = size | (h->size_flags & KHALA_BLOCK_PREV_FREE);
    st->used_blocks++;
    *off = b + KHALA_BLOCK_HDR;
    *block = size;
    return 0;
}

void khala__alloc_free(khala_arena_t *a, uint64_t off) {
    uint64_t b = off - KHALA_BLOCK_HDR;
    khala_block_t *h = blk(a, b);
    uint64_t size = bsize(h);
    a->st->used_blocks--;
    /* Merge with the block after, if free. */
    khala_block_t *next = blk(a, b + size);
    if (next->size_flags & KHALA_BLOCK_FREE) {
        uint64_t nsize = bsize(next);
        list_remove(a, b + size, nsize);
        size += nsize;
    }
    /* Merge with the block before, if free (its size is in our boundary tag). */
    if (h->size_flags & KHALA_BLOCK_PREV_FREE) {
        uint64_t prev = b - h->prev_size;
        uint64_t psize = bsize(blk(a, prev));
        list_remove(a, prev, psize);
        b = prev;
        size += psize;
    }
    make_free(a, b, size);
}

uint64_t khala__alloc_block_size(const khala_arena_t *a, uint64_t off) {
    return bsize(blk(a, off - KHALA_BLOCK_HDR));
}

/* A well-mixed 64-bit image of a block offset (the splitmix64 finalizer). Sums of it over two
 * sets of distinct offsets are equal only if the sets are (but for a 2^-64 accident), so the
 * check can prove that the free lists hold exactly the free blocks of the walk, and the caller
 * that the used blocks are exactly the ones it holds, in O(1) memory. */
uint64_t khala__alloc_fp(uint64_t off) {
    uint64_t z = off + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* 1 if b may be the offset of a block header: aligned, inside the arena, and with room for a
 * block of the minimum size before the sentinel. Checked before any header or link at b is
 * read, since b may come from a corrupted header, list head or link. */
static int block_off_ok(const khala_arena_t *a, uint64_t b) {
    return b % KHALA_ALIGN == 0 && b >= a->lo && b <= a->hi - KHALA_BLOCK_HDR - KHALA_BLOCK_MIN;
}

/* Steps (the code refers to them):
 * Step 1. The arena's own bounds, which every later comparison relies on.
 * Step 2. Walk the blocks from lo by their sizes. Each size is checked against the room left
 *         before it is added, so the walk cannot leave the arena, wrap, or loop (every step
 *         advances by at least KHALA_BLOCK_MIN). Flags, boundary tags and counters are
 *         compared on the way; the free blocks' offsets are summed as fingerprints.
 * Step 3. The bitmaps may name only lists that exist.
 * Step 4. Walk every free list. Each offset is checked (block_off_ok) before its header or
 *         links are read; a walk ends after free_blocks entries (a cycle cannot go on), and
 *         each entry's prev must be the entry before it (which a cycle also breaks). The
 *         entries' fingerprints must add up to the free blocks' own, so no list holds a block
 *         that the walk of step 2 did not find free. */
int khala__alloc_check(const khala_arena_t *a, char *err, size_t errlen) {
    const khala_alloc_state_t *st = a->st;
    /* Step 1. */
    if (a->lo % KHALA_ALIGN || a->hi % KHALA_ALIGN || a->hi < a->lo ||
        a->hi - a->lo < KHALA_BLOCK_MIN + KHALA_BLOCK_HDR)
        return khala__errbuf(err, errlen, KHALA_ECORRUPT, "arena [%llu, %llu) is malformed",
                             (unsigned long long)a->lo, (unsigned long long)a->hi);
    /* Step 2. */
    const uint64_t end = a->hi - KHALA_BLOCK_HDR; /* the sentinel */
    uint64_t b = a->lo, free_bytes = 0, free_blocks = 0, used = 0, free_fp = 0;
    int prev_free = 0;
    while (b < end) {
        const khala_block_t *h = blk(a, b);
        uint64_t size = bsize(h);
        int is_free = (h->size_flags & KHALA_BLOCK_FREE) != 0;
        if (size < KHALA_BLOCK_MIN || size > end - b)
            return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                 "block at %llu: size %llu, room before the arena's end %llu",
                                 (unsigned long long)b, (unsigned long long)size,
                                 (unsigned long long)(end - b));
        if (h->size_flags & FLAGS_MASK & ~(uint64_t)(KHALA_BLOCK_FREE | KHALA_BLOCK_PREV_FREE))
            return khala__errbuf(err, errlen, KHALA_ECORRUPT, "block at %llu: unknown flags 0x%llx",
                                 (unsigned long long)b,
                                 (unsigned long long)(h->size_flags & FLAGS_MASK));
        if (!!(h->size_flags & KHALA_BLOCK_PREV_FREE) != prev_free)
            return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                 "block at %llu: PREV_FREE is %d but the block before is %s",
                                 (unsigned long long)b, !prev_free, prev_free ? "free" : "used");
        if (is_free && prev_free)
            return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                 "block at %llu: free, and so is the block before it",
                                 (unsigned long long)b);
        if (is_free) {
            if (blk(a, b + size)->prev_size != size)
                return khala__errbuf(
                    err, errlen, KHALA_ECORRUPT,
                    "block at %llu: prev_size %llu, but the free block before it is %llu bytes",
                    (unsigned long long)(b + size), (unsigned long long)blk(a, b + size)->prev_size,
                    (unsigned long long)size);
            free_bytes += size;
            free_blocks++;
            free_fp += khala__alloc_fp(b);
        } else {
            used++;
        }
        prev_free = is_free;
        b += size;
    }
    if (bsize(blk(a, end)) != 0 || (blk(a, end)->size_flags & KHALA_BLOCK_FREE))
        return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                             "sentinel at %llu: size_flags 0x%llx, want a used block of size 0",
                             (unsigned long long)end, (unsigned long long)blk(a, end)->size_flags);
    if (!!(blk(a, end)->size_flags & KHALA_BLOCK_PREV_FREE) != prev_free)
        return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                             "sentinel at %llu: PREV_FREE is %d but the block before is %s",
                             (unsigned long long)end, !prev_free, prev_free ? "free" : "used");
    if (free_bytes != st->free_bytes || used != st->used_blocks)
        return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                             "counted %llu free bytes and %llu used blocks, the state says %llu "
                             "and %llu",
                             (unsigned long long)free_bytes, (unsigned long long)used,
                             (unsigned long long)st->free_bytes,
                             (unsigned long long)st->used_blocks);
    /* Step 3. */
    if (st->fl_bitmap >> KHALA_ALLOC_FL)
        return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                             "first-level bitmap 0x%llx names rows past %d",
                             (unsigned long long)st->fl_bitmap, KHALA_ALLOC_FL - 1);
    /* Step 4. */
    uint64_t listed = 0, listed_fp = 0;
    for (int f = 0; f < KHALA_ALLOC_FL; f++) {
        if (st->sl_bitmap[f] >> KHALA_ALLOC_SL)
            return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                 "second-level bitmap %d is 0x%x: names lists past %d", f,
                                 st->sl_bitmap[f], KHALA_ALLOC_SL - 1);
        for (int s = 0; s < KHALA_ALLOC_SL; s++) {
            uint64_t prev = 0;
            int nonempty = st->free_head[f][s] != 0;
            if (nonempty != !!(st->sl_bitmap[f] & (1u << s)))
                return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                     "free list [%d][%d] is %s but its bitmap bit is %d", f, s,
                                     nonempty ? "non-empty" : "empty", !nonempty);
            for (uint64_t x = st->free_head[f][s]; x; x = links(a, x)->next) {
                if (!block_off_ok(a, x))
                    return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                         "free list [%d][%d]: block offset %llu (after %llu) is "
                                         "outside the arena [%llu, %llu) or misaligned",
                                         f, s, (unsigned long long)x, (unsigned long long)prev,
                                         (unsigned long long)a->lo, (unsigned long long)a->hi);
                if (++listed > free_blocks)
                    return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                         "free lists hold more than the %llu free blocks (a "
                                         "cycle?) at [%d][%d], block %llu",
                                         (unsigned long long)free_blocks, f, s,
                                         (unsigned long long)x);
                const khala_block_t *h = blk(a, x);
                uint64_t size = bsize(h);
                if (!(h->size_flags & KHALA_BLOCK_FREE) || size < KHALA_BLOCK_MIN || size > end - x)
                    return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                         "free list [%d][%d]: block %llu is not a free block "
                                         "(size_flags 0x%llx)",
                                         f, s, (unsigned long long)x,
                                         (unsigned long long)h->size_flags);
                if (links(a, x)->prev != prev)
                    return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                         "free list [%d][%d]: block %llu has prev %llu, want "
                                         "%llu",
                                         f, s, (unsigned long long)x,
                                         (unsigned long long)links(a, x)->prev,
                                         (unsigned long long)prev);
                int xf, xs;
                mapping_insert(size, &xf, &xs);
                if (xf != f || xs != s)
                    return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                         "free list [%d][%d]: block %llu of %llu bytes belongs "
                                         "in [%d][%d]",
                                         f, s, (unsigned long long)x, (unsigned long long)size, xf,
                                         xs);
                listed_fp += khala__alloc_fp(x);
                prev = x;
            }
        }
        if (!!st->sl_bitmap[f] != !!(st->fl_bitmap & (1ull << f)))
            return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                 "first-level bitmap bit %d disagrees with its row", f);
    }
    if (listed != free_blocks || listed_fp != free_fp)
        return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                             "free lists hold %llu blocks, not exactly the %llu free blocks of "
                             "the arena",
                             (unsigned long long)listed, (unsigned long long)free_blocks);
    return 0;
}

uint64_t khala__alloc_used_fp(const khala_arena_t *a) {
    uint64_t fp = 0;
    for (uint64_t b = a->lo; b < a->hi - KHALA_BLOCK_HDR; b += bsize(blk(a, b)))
        if (!(blk(a, b)->size_flags & KHALA_BLOCK_FREE))
            fp += khala__alloc_fp(b + KHALA_BLOCK_HDR);
    return fp;
}
