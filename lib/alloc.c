/*
 * Arena allocator: TLSF over segment offsets, with the block boundaries kept off the arena.
 *
 * HOW IT WORKS
 *
 * The arena is a sequence of blocks that tile [lo, hi). A block has no header: a used block is
 * the item and nothing else, and its first byte is the item's. Where blocks start and which are
 * free is kept in one writer-only bitmap (the region at bitmap_off, layout.h), one bit per
 * KHALA_ALIGN-byte unit of the arena. Every block spans two units at least (KHALA_BLOCK_MIN),
 * and its bits are:
 *
 *   used block      1 0 0 0 0 0      its first unit only
 *   free block      1 1 0 0 0 1      its first, second and last unit
 *   free, 2 units   1 1              (second and last are one)
 *   the arena's end 1 0              bit hi is set, bit hi + 1 is clear
 *
 * So, for a block starting at unit g: it is free iff bit g + 1. The block that ends just before
 * g is free iff bit g - 1 (a used block's last unit is never marked, since it is not its first).
 * A used block ends at the next set bit after g + 1. A free block's end: take the first set bit
 * q >= g + 2; it is the block's last unit if bit q + 1 is set (q + 1 then starts the next
 * block), else it is already the next block's start (a two-unit free block, followed by a used
 * block or the end, whose second bit is clear). Backwards, from a free block's last unit: the
 * last set bit r below it is the block's first unit or its second; it is the second iff bit
 * r - 1 is set (a used block's last unit, before a free block, is clear). Finding a used
 * block's size costs a word of bitmap per KiB of block, far less than writing its item did.
 *
 * A free block keeps its TLSF record (size, next, prev) at the start of the first cache line
 * that lies wholly inside it, and its size again (the footer) in the last 8 bytes of the last
 * such line; such a block is *listed*. A free block with no whole line inside (at most 112
 * bytes, since a block starts at most 48 bytes before a line boundary) is *dust*: it holds
 * nothing and sits in no list; it comes back when a neighbour is freed and merges with it. A
 * free block's size is decoded from the bitmap when its bits lie within 8 units (blocks of up
 * to 128 bytes, every dust block among them), else read from its record (a block of 144 bytes
 * or more is always listed); the start of the free block before a freed one likewise from the
 * bitmap within 8 units back, else from its footer.
 *
 *   first whole line      last whole line
 *   v                     v
 *   | size next prev ...  | ...         size |   <- a listed free block [b, b + size)
 *
 * Readers' lines. Readers load the lines of live items, and a store to one of those lines by
 * the writer makes every reader that cached it miss on its next get. So the writer never stores
 * to a line that holds a byte of a used block, except the block it hands out, which it fills
 * before the item is linked: it stores to the bitmap, to khala_alloc_state_t, and to lines that
 * lie wholly inside free blocks (records, footers). Allocation writes nothing in the block it
 * returns. tests/test_alloc.c (churn_never_stores_to_a_line_of_a_used_block) holds us to it.
 *
 * Free blocks are kept in KHALA_ALLOC_FL x KHALA_ALLOC_SL doubly linked lists: the first index
 * is floor(log2(size)), the second splits that power of two into KHALA_ALLOC_SL equal ranges.
 * Two small bitmaps in khala_alloc_state_t say which lists are non-empty, so finding a list with a block large enough is two
 * find-first-set instructions. Allocation rounds the request up to the next list boundary
 * ("good fit"), so any block of the list it finds is large enough and no list is walked.
 *
 * Why TLSF and not size-class slabs: the cache's eviction policy is global, and slabs tie
 * memory to size classes, so a shift in value sizes strands memory in the wrong class (the
 * "calcification" memcached needs a rebalancer for). TLSF coalesces, so memory freed by any
 * eviction serves any later size. Its cost is bounded: one bit per 16 bytes of arena (arena/128
 * bytes) plus rounding to the list boundary (at most 1/16 of the size), plus dust, at most 112
 * bytes beside a used block until that block is freed; docs/segment.md reports the measured
 * overhead.
 *
 * Why a bitmap and not the size in the desc: a used block's size must be known to free it and to
 * walk the arena in the check, and a retired item's desc may already hold another key. Why one
 * bitmap and not two (block starts, free ends: simpler to decode): the second would cost
 * another arena/128 bytes, which for the items of a large-value cache is more than the 16-byte
 * header it replaces.
 *
 * Historical note. Until layout version 4 each block began with a 16-byte header (prev_size,
 * size | FREE | PREV_FREE), the classic TLSF boundary tag, and a free block kept its links in
 * its first bytes. Freeing or splitting block N wrote block N + 1's header (prev_size and
 * PREV_FREE), and allocating without a split cleared that flag; that header shares a line with
 * item N + 1's own header, so the writer's churn invalidated readers' copies of live items that
 * it never changed, and each item paid 16 bytes for a header readers never read.
 *
 * Invariants (checked by khala__alloc_check, which follows no offset it has not checked, since
 * it is what stands between a corrupted segment and a writer that trusts it):
 *   - The bits set are exactly those drawn above: every block's first unit, a free block's
 *     second and last, and unit hi. Blocks are at least KHALA_BLOCK_MIN bytes; no two free
 *     blocks are adjacent.
 *   - A free block is listed iff it holds a whole cache line; a listed block's record and
 *     footer hold its size; it is in exactly the list its size maps to.
 *   - free_bytes is the sum of all free blocks (dust included); used_blocks counts the used.
 *
 * Only the writer calls these functions, so nothing here is atomic.
 */
#include "alloc.h"

#include <errno.h>

#include "debug.h"
#include "errbuf.h"
#include "khala/error.h"

#define LINE ((uint64_t)KHALA_CACHE_LINE)
/* Blocks of the request's own list that step 2 of khala__alloc_alloc looks at. */
#define FIRST_FIT_SCAN 32
/* Units of bitmap the writer reads to decode a free block's size or start before it turns to
 * the block's record or footer: every block larger is listed (> 112 bytes). */
#define WINDOW 8

/* A listed free block's record, at the start of its first whole cache line. */
typedef struct free_rec {
    uint64_t size; /* bytes of the block */
    uint64_t next; /* offset of the next free block in the list, 0 = none */
    uint64_t prev; /* offset of the previous one, 0 = none (this is the head) */
} free_rec_t;

static inline uint64_t line_up(uint64_t x) {
    return (x + LINE - 1) & ~(LINE - 1);
}

static inline uint64_t line_down(uint64_t x) {
    return x & ~(LINE - 1);
}

/* 1 if [b, b + size) holds a whole cache line, and so a record and a footer. */
static inline int listed(uint64_t b, uint64_t size) {
    return line_up(b) + LINE <= b + size;
}

/* Offsets stay inside the arena and aligned: the writer's own bookkeeping keeps them so, and
 * khala__alloc_check validates every offset it reads before it comes here. */
static inline free_rec_t *rec(const khala_arena_t *a, uint64_t b) {
    KHALA_ASSERT(b >= a->lo && line_up(b) + sizeof(free_rec_t) <= a->hi && b % KHALA_ALIGN == 0);
    return (free_rec_t *)(a->base + line_up(b));
}

/* The footer of the listed free block that ends at e. */
static inline uint64_t *footer(const khala_arena_t *a, uint64_t e) {
    KHALA_ASSERT(line_down(e) >= a->lo + LINE && e <= a->hi);
    return (uint64_t *)(a->base + line_down(e) - sizeof(uint64_t));
}

static inline uint64_t unit(const khala_arena_t *a, uint64_t off) {
    KHALA_ASSERT(off >= a->lo && off <= a->hi && off % KHALA_ALIGN == 0);
    return (off - a->lo) / KHALA_ALIGN;
}

static inline uint64_t units(const khala_arena_t *a) {
    return (a->hi - a->lo) / KHALA_ALIGN;
}

static inline int bit(const khala_arena_t *a, uint64_t g) {
    return (int)((a->bits[g / 64] >> (g % 64)) & 1);
}

static inline void bit_set(khala_arena_t *a, uint64_t g) {
    a->bits[g / 64] |= 1ull << (g % 64);
}

static inline void bit_clr(khala_arena_t *a, uint64_t g) {
    a->bits[g / 64] &= ~(1ull << (g % 64));
}

/* The first set bit in [from, to), or to if none. Reads only words that hold such bits. */
static uint64_t bit_next(const khala_arena_t *a, uint64_t from, uint64_t to) {
    if (from >= to)
        return to;
    uint64_t i = from / 64;
    uint64_t word = a->bits[i] & (~0ull << (from % 64));
    for (;;) {
        if (word) {
            uint64_t g = i * 64 + (uint64_t)__builtin_ctzll(word);
            return g < to ? g : to;
        }
        if (++i * 64 >= to)
            return to;
        word = a->bits[i];
    }
}

/* The last set bit in [from, to), or UINT64_MAX if none. For short ranges. */
static uint64_t bit_prev(const khala_arena_t *a, uint64_t from, uint64_t to) {
    for (uint64_t g = to; g-- > from;)
        if (bit(a, g))
            return g;
    return UINT64_MAX;
}

/* The unit after the free block at unit g, decoded from the first set bit q in [g + 2, to): q is
 * the block's last unit if q + 1 is set, else the next block's first. `to` if q is not there. */
static uint64_t free_end(const khala_arena_t *a, uint64_t g, uint64_t to) {
    uint64_t q = bit_next(a, g + 2, to);
    if (q == to)
        return to;
    return bit(a, q + 1) ? q + 1 : q;
}

/* Bytes of the used block at b: up to the next set bit (its second unit is clear). */
static uint64_t span(const khala_arena_t *a, uint64_t b) {
    uint64_t g = unit(a, b);
    return (bit_next(a, g + 2, units(a) + 1) - g) * KHALA_ALIGN;
}

/* Bytes of the free block at b: from the bitmap when its end is near, else from its record. */
static uint64_t free_size(const khala_arena_t *a, uint64_t b) {
    uint64_t g = unit(a, b), to = g + WINDOW < units(a) + 1 ? g + WINDOW : units(a) + 1;
    uint64_t e = free_end(a, g, to);
    if (e != to)
        return (e - g) * KHALA_ALIGN;
    return rec(a, b)->size;
}

/* The offset of the free block that ends at e: the last set bit r below e's last unit is the
 * block's second unit if r - 1 is set, else its first. */
static uint64_t free_start_before(const khala_arena_t *a, uint64_t e) {
    uint64_t g = unit(a, e) - 1, from = g >= WINDOW ? g - WINDOW : 0;
    uint64_t r = bit_prev(a, from, g);
    if (r == UINT64_MAX)
        return e - *footer(a, e);
    if (r > 0 && bit(a, r - 1))
        r--;
    return a->lo + r * KHALA_ALIGN;
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
    free_rec_t *r = rec(a, b);
    r->size = size;
    r->next = head;
    r->prev = 0;
    if (head)
        rec(a, head)->prev = b;
    st->free_head[fl][sl] = b;
    st->sl_bitmap[fl] |= 1u << sl;
    st->fl_bitmap |= 1ull << fl;
}

static void list_remove(khala_arena_t *a, uint64_t b, uint64_t size) {
    khala_alloc_state_t *st = a->st;
    int fl, sl;
    mapping_insert(size, &fl, &sl);
    free_rec_t *r = rec(a, b);
    if (r->prev)
        rec(a, r->prev)->next = r->next;
    else
        st->free_head[fl][sl] = r->next;
    if (r->next)
        rec(a, r->next)->prev = r->prev;
    if (!st->free_head[fl][sl]) {
        st->sl_bitmap[fl] &= ~(1u << sl);
        if (!st->sl_bitmap[fl])
            st->fl_bitmap &= ~(1ull << fl);
    }
}

/* Make [b, b + size) a free block: its second and last bits and, if it holds a whole line, its
 * record, footer and list entry. Its first bit must be set, and no bit inside it. Stores only to
 * the bitmap and to lines wholly inside the block. */
static void make_free(khala_arena_t *a, uint64_t b, uint64_t size) {
    bit_set(a, unit(a, b) + 1);
    bit_set(a, unit(a, b + size) - 1);
    if (listed(b, size)) {
        list_insert(a, b, size);
        *footer(a, b + size) = size;
    }
}

/* Take the free block [b, b + size) out of the free state: its list entry and the bits that say
 * it is free. Its first bit stays. */
static void unmake_free(khala_arena_t *a, uint64_t b, uint64_t size) {
    if (listed(b, size))
        list_remove(a, b, size);
    bit_clr(a, unit(a, b) + 1);
    bit_clr(a, unit(a, b + size) - 1);
}

void khala__alloc_bind(khala_arena_t *a, uint8_t *base, khala_alloc_state_t *st, void *bits,
                       uint64_t lo, uint64_t hi) {
    a->base = base;
    a->st = st;
    a->bits = bits;
    a->lo = lo;
    a->hi = hi;
}

void khala__alloc_format(khala_arena_t *a) {
    khala_alloc_state_t *st = a->st;
    for (int f = 0; f < KHALA_ALLOC_FL; f++) {
        st->sl_bitmap[f] = 0;
        for (int s = 0; s < KHALA_ALLOC_SL; s++)
            st->free_head[f][s] = 0;
    }
    st->fl_bitmap = 0;
    st->free_bytes = a->hi - a->lo;
    st->used_blocks = 0;
    uint64_t words = khala_arena_bitmap_words(a->hi - a->lo);
    for (uint64_t i = 0; i < words; i++)
        a->bits[i] = 0;
    bit_set(a, 0);
    bit_set(a, units(a));
    make_free(a, a->lo, a->hi - a->lo);
}

uint64_t khala__alloc_block_for(uint64_t payload) {
    uint64_t need = (payload + KHALA_ALIGN - 1) & ~(uint64_t)(KHALA_ALIGN - 1);
    return need < KHALA_BLOCK_MIN ? KHALA_BLOCK_MIN : need;
}

uint64_t khala__alloc_max_payload(const khala_arena_t *a) {
    return a->hi - a->lo;
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
        for (int n = 0; x && n < FIRST_FIT_SCAN; n++, x = rec(a, x)->next) {
            if (rec(a, x)->size >= need) {
                b = x;
                break;
            }
        }
        if (!b)
            return -ENOMEM;
    }
    /* Step 3: take the block; the tail past `need`, if a block can be made of it, becomes a
     * free block of its own (listed or dust). Nothing is stored inside [b, b + need). */
    uint64_t size = rec(a, b)->size;
    unmake_free(a, b, size);
    if (size - need >= KHALA_BLOCK_MIN) {
        bit_set(a, unit(a, b + need));
        make_free(a, b + need, size - need);
        size = need;
    }
    st->free_bytes -= size;
    st->used_blocks++;
    *off = b;
    *block = size;
    return 0;
}

void khala__alloc_free(khala_arena_t *a, uint64_t off) {
    uint64_t b = off;
    uint64_t size = span(a, b);
    KHALA_ASSERT(!bit(a, unit(a, b) + 1));
    a->st->used_blocks--;
    a->st->free_bytes += size;
    /* Merge with the block after, if free. */
    uint64_t e = b + size;
    if (e < a->hi && bit(a, unit(a, e) + 1)) {
        uint64_t nsize = free_size(a, e);
        unmake_free(a, e, nsize);
        bit_clr(a, unit(a, e));
        size += nsize;
    }
    /* Merge with the block before, if free: its last unit is marked. */
    if (b > a->lo && bit(a, unit(a, b) - 1)) {
        uint64_t p = free_start_before(a, b);
        unmake_free(a, p, b - p);
        bit_clr(a, unit(a, b));
        size += b - p;
        b = p;
    }
    make_free(a, b, size);
}

uint64_t khala__alloc_block_size(const khala_arena_t *a, uint64_t off) {
    return span(a, off);
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

/* 1 if b may be the offset of a listed free block: aligned, inside the arena, and with a whole
 * cache line (its record) before the arena's end. Checked before any record at b is read,
 * since b may come from a corrupted list head or link. */
static int block_off_ok(const khala_arena_t *a, uint64_t b) {
    return b % KHALA_ALIGN == 0 && b >= a->lo && b < a->hi && line_up(b) + LINE <= a->hi;
}

/* Steps (the code refers to them):
 * Step 1. The arena's own bounds, which every later comparison relies on.
 * Step 2. Walk the blocks from lo by the bitmap, decoding each the way the writer does (bit_next
 *         never reads past the bitmap, and every step advances by two units at least). A free
 *         block has its last unit marked, no free neighbour before it and, if listed, a record
 *         and a footer that hold its size; the listed blocks' offsets are summed as
 *         fingerprints. Counters are compared. The walk has decided every bit up to unit hi,
 *         so the bitmap's population count must be exactly the bits it expects: no other bit
 *         is set, even past hi.
 * Step 3. The list bitmaps may name only lists that exist.
 * Step 4. Walk every free list. Each offset is checked (block_off_ok) before its record is
 *         read; a walk ends after `listed` entries (a cycle cannot go on), and each entry's
 *         prev must be the entry before it (which a cycle also breaks). The entries'
 *         fingerprints must add up to the listed blocks' own, so no list holds a block that
 *         the walk of step 2 did not find free and listed. */
int khala__alloc_check(const khala_arena_t *a, char *err, size_t errlen) {
    const khala_alloc_state_t *st = a->st;
    /* Step 1. */
    if (a->lo % KHALA_ALIGN || a->hi % KHALA_ALIGN || a->hi < a->lo || a->hi - a->lo < 2 * LINE ||
        !a->bits)
        return khala__errbuf(err, errlen, KHALA_ECORRUPT, "arena [%llu, %llu) is malformed",
                             (unsigned long long)a->lo, (unsigned long long)a->hi);
    /* Step 2. */
    const uint64_t n_units = units(a), words = khala_arena_bitmap_words(a->hi - a->lo);
    uint64_t free_bytes = 0, free_blocks = 0, nlisted = 0, used = 0, free_fp = 0, marks = 1;
    int prev_free = 0;
    if (!bit(a, 0) || !bit(a, n_units))
        return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                             "block bitmap: no block starts at the arena's start, or its end is "
                             "unmarked");
    for (uint64_t g = 0; g < n_units;) {
        uint64_t b = a->lo + g * KHALA_ALIGN;
        int is_free = bit(a, g + 1);
        uint64_t next = is_free ? free_end(a, g, n_units + 1) : bit_next(a, g + 2, n_units + 1);
        if (next > n_units)
            return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                 "block at %llu: its size runs past the arena's end",
                                 (unsigned long long)b);
        uint64_t size = (next - g) * KHALA_ALIGN;
        if (size < KHALA_BLOCK_MIN)
            return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                 "block at %llu: size %llu, below the %u-byte minimum",
                                 (unsigned long long)b, (unsigned long long)size, KHALA_BLOCK_MIN);
        if (is_free && prev_free)
            return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                 "block at %llu: free, and so is the block before it",
                                 (unsigned long long)b);
        if (is_free) {
            if (!bit(a, next - 1))
                return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                     "free block at %llu (%llu bytes): its last unit has no end "
                                     "mark",
                                     (unsigned long long)b, (unsigned long long)size);
            if (listed(b, size)) {
                const free_rec_t *r = rec(a, b);
                uint64_t foot = *footer(a, b + size);
                if (r->size != size || foot != size)
                    return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                         "free block at %llu: %llu bytes by the bitmap, its record "
                                         "says size %llu and its footer %llu",
                                         (unsigned long long)b, (unsigned long long)size,
                                         (unsigned long long)r->size, (unsigned long long)foot);
                nlisted++;
                free_fp += khala__alloc_fp(b);
            }
            free_bytes += size;
            free_blocks++;
            marks += next - g == 2 ? 2 : 3;
        } else {
            used++;
            marks += 1;
        }
        prev_free = is_free;
        g = next;
    }
    if (free_bytes != st->free_bytes || used != st->used_blocks)
        return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                             "counted %llu free bytes and %llu used blocks, the state says %llu "
                             "and %llu",
                             (unsigned long long)free_bytes, (unsigned long long)used,
                             (unsigned long long)st->free_bytes,
                             (unsigned long long)st->used_blocks);
    uint64_t pop = 0;
    for (uint64_t i = 0; i < words; i++)
        pop += (uint64_t)__builtin_popcountll(a->bits[i]);
    if (pop != marks)
        return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                             "block bitmap holds %llu bits, the blocks account for %llu",
                             (unsigned long long)pop, (unsigned long long)marks);
    /* Step 3. */
    if (st->fl_bitmap >> KHALA_ALLOC_FL)
        return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                             "first-level bitmap 0x%llx names rows past %d",
                             (unsigned long long)st->fl_bitmap, KHALA_ALLOC_FL - 1);
    /* Step 4. */
    uint64_t listed_n = 0, listed_fp = 0;
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
            for (uint64_t x = st->free_head[f][s]; x; x = rec(a, x)->next) {
                if (!block_off_ok(a, x))
                    return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                         "free list [%d][%d]: block offset %llu (after %llu) is "
                                         "outside the arena [%llu, %llu) or misaligned",
                                         f, s, (unsigned long long)x, (unsigned long long)prev,
                                         (unsigned long long)a->lo, (unsigned long long)a->hi);
                if (++listed_n > nlisted)
                    return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                         "free lists hold more than the %llu listed free blocks "
                                         "(a cycle?) at [%d][%d], block %llu",
                                         (unsigned long long)nlisted, f, s, (unsigned long long)x);
                const free_rec_t *r = rec(a, x);
                uint64_t g = unit(a, x);
                if (!bit(a, g) || !bit(a, g + 1) || r->size < KHALA_BLOCK_MIN ||
                    r->size > a->hi - x || !listed(x, r->size))
                    return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                         "free list [%d][%d]: block %llu is not a listed free "
                                         "block (record size %llu)",
                                         f, s, (unsigned long long)x, (unsigned long long)r->size);
                if (r->prev != prev)
                    return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                         "free list [%d][%d]: block %llu has prev %llu, want "
                                         "%llu",
                                         f, s, (unsigned long long)x, (unsigned long long)r->prev,
                                         (unsigned long long)prev);
                int xf, xs;
                mapping_insert(r->size, &xf, &xs);
                if (xf != f || xs != s)
                    return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                         "free list [%d][%d]: block %llu of %llu bytes belongs "
                                         "in [%d][%d]",
                                         f, s, (unsigned long long)x, (unsigned long long)r->size,
                                         xf, xs);
                listed_fp += khala__alloc_fp(x);
                prev = x;
            }
        }
        if (!!st->sl_bitmap[f] != !!(st->fl_bitmap & (1ull << f)))
            return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                 "first-level bitmap bit %d disagrees with its row", f);
    }
    if (listed_n != nlisted || listed_fp != free_fp)
        return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                             "free lists hold %llu blocks, not exactly the %llu listed free "
                             "blocks of the arena",
                             (unsigned long long)listed_n, (unsigned long long)nlisted);
    return 0;
}

uint64_t khala__alloc_used_fp(const khala_arena_t *a) {
    uint64_t fp = 0;
    for (uint64_t g = 0; g < units(a);) {
        int is_free = bit(a, g + 1);
        if (!is_free)
            fp += khala__alloc_fp(a->lo + g * KHALA_ALIGN);
        g = is_free ? free_end(a, g, units(a) + 1) : bit_next(a, g + 2, units(a) + 1);
    }
    return fp;
}
