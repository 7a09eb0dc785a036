/*
 * The arena allocator: a TLSF (two-level segregated fit) allocator over offsets inside the
 * data segment. O(1) allocation and free, immediate coalescing, no header in the blocks: the
 * block boundaries live in writer-only bitmaps, so the writer never stores to a cache line that
 * holds a byte of a used block. Only the writer calls it. Start at the theory block of alloc.c.
 */
#ifndef KHALA_LIB_ALLOC_H
#define KHALA_LIB_ALLOC_H

#include <stddef.h>
#include <stdint.h>

#include "layout.h"

typedef struct khala_arena {
    uint8_t *base;           /* the segment mapping (offsets are from here) */
    khala_alloc_state_t *st; /* base + alloc_off */
    uint64_t *bits;          /* base + bitmap_off: one bit per 16-byte unit (alloc.c) */
    uint64_t lo;             /* arena_off */
    uint64_t hi;             /* arena_off + arena_size */
} khala_arena_t;

/* Smallest block: every block spans two KHALA_ALIGN units at least, so that a used block's
 * second unit is never marked (alloc.c). */
#define KHALA_BLOCK_MIN 32u

/* Point a at an arena of [lo, hi) in the mapping `base`, with its state at st and its bitmaps
 * (khala_arena_bitmap_bytes(hi - lo) bytes) at bits. */
void khala__alloc_bind(khala_arena_t *a, uint8_t *base, khala_alloc_state_t *st, void *bits,
                       uint64_t lo, uint64_t hi);

/* Format a fresh arena: one free block covering it. */
void khala__alloc_format(khala_arena_t *a);

/* Allocate a block with at least `payload` bytes; on success *off is its offset
 * (KHALA_ALIGN-aligned; the block's first byte is the payload's) and *block the bytes the block
 * takes. -ENOMEM when no free block is large enough. Writes nothing inside the block. */
int khala__alloc_alloc(khala_arena_t *a, uint64_t payload, uint64_t *off, uint64_t *block);

/* Free the block at `off` and coalesce it with free neighbours. */
void khala__alloc_free(khala_arena_t *a, uint64_t off);

/* Bytes the used block at `off` takes. */
uint64_t khala__alloc_block_size(const khala_arena_t *a, uint64_t off);

/* Fetch the bitmap words that freeing the block at `off` reads first. */
static inline void khala__alloc_prefetch(const khala_arena_t *a, uint64_t off) {
    __builtin_prefetch(a->bits + (off - a->lo) / KHALA_ALIGN / 64, 1);
}

/* Bytes a payload of `payload` bytes takes once rounded to a block. */
uint64_t khala__alloc_block_for(uint64_t payload);

/* The largest payload that could ever be allocated (the whole arena as one block). */
uint64_t khala__alloc_max_payload(const khala_arena_t *a);

/* Walk every block, both bitmaps and every free list; 0 if consistent, KHALA_ECORRUPT otherwise, with what
 * was wrong and at which offset in err (errlen bytes, truncated; err may be NULL). Safe on an
 * arena whose state and blocks hold anything: every offset, size and link is checked before it
 * is followed, and every walk is bounded. a->lo and a->hi themselves must lie in the mapping. */
int khala__alloc_check(const khala_arena_t *a, char *err, size_t errlen);

/* The fingerprint of one block payload offset; sums of it stand for sets of offsets. */
uint64_t khala__alloc_fp(uint64_t off);

/* The sum of khala__alloc_fp over the payload offsets of the used blocks. Call only on an arena
 * that khala__alloc_check passed: a caller that sums the offsets it holds (items, retired
 * items) proves they are exactly the used blocks, distinct, and nothing else. */
uint64_t khala__alloc_used_fp(const khala_arena_t *a);

#endif /* KHALA_LIB_ALLOC_H */
