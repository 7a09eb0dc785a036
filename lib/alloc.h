/*
 * The arena allocator: a TLSF (two-level segregated fit) allocator over offsets inside the
 * data segment. O(1) allocation and free, immediate coalescing, 16 bytes of header per block.
 * Only the writer calls it. Start at khala__alloc_alloc().
 */
#ifndef KHALA_LIB_ALLOC_H
#define KHALA_LIB_ALLOC_H

#include <stddef.h>
#include <stdint.h>

#include "layout.h"

typedef struct khala_arena {
    uint8_t *base;           /* the segment mapping (offsets are from here) */
    khala_alloc_state_t *st; /* base + alloc_off */
    uint64_t lo;             /* arena_off */
    uint64_t hi;             /* arena_off + arena_size */
} khala_arena_t;

/* Smallest and largest payloads a block can hold. */
#define KHALA_BLOCK_MIN 32u

/* Format a fresh arena: one free block covering it and a zero-size sentinel at its end. */
void khala__alloc_format(khala_arena_t *a);

/* Allocate a block with at least `payload` bytes; on success *off is the payload offset
 * (KHALA_ALIGN-aligned) and *block the bytes the block takes. -ENOMEM when no free block
 * is large enough. */
int khala__alloc_alloc(khala_arena_t *a, uint64_t payload, uint64_t *off, uint64_t *block);

/* Free the block whose payload is at `off` and coalesce it with free neighbours. */
void khala__alloc_free(khala_arena_t *a, uint64_t off);

/* Bytes the block whose payload is at `off` takes, header included. */
uint64_t khala__alloc_block_size(const khala_arena_t *a, uint64_t off);

/* Bytes a payload of `payload` bytes takes once rounded to a block. */
uint64_t khala__alloc_block_for(uint64_t payload);

/* The largest payload that could ever be allocated (the whole arena as one block). */
uint64_t khala__alloc_max_payload(const khala_arena_t *a);

/* Walk every block and every free list; 0 if consistent, KHALA_ECORRUPT otherwise, with what
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
