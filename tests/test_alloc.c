/*
 * Tests of the TLSF arena allocator (lib/alloc.c) on a malloc'd buffer standing in for a
 * segment: a shadow model of the live blocks checks that blocks never overlap, stay inside the
 * arena and keep their contents, and khala__alloc_check runs after every operation.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "khala/error.h"

#define ARENA_LO 4096u /* offsets start here, as in a segment: 0 means "none" in the lists */

static uint8_t *g_buf;
static khala_alloc_state_t *g_state;
static khala_arena_t g_arena;

/* Format an arena of `size` bytes (a multiple of KHALA_ALIGN) in a fresh buffer. */
static khala_arena_t *arena_make(uint64_t size) {
    free(g_buf);
    g_buf = aligned_alloc(4096, ARENA_LO + size);
    cr_assert_not_null(g_buf);
    memset(g_buf, 0xa5, ARENA_LO + size);
    g_arena.base = g_buf;
    g_arena.st = g_state;
    g_arena.lo = ARENA_LO;
    g_arena.hi = ARENA_LO + size;
    khala__alloc_format(&g_arena);
    cr_assert_eq(khala__alloc_check(&g_arena, NULL, 0), 0);
    return &g_arena;
}

/* Every byte between the first block and the sentinel is either free or in a used block. */
static uint64_t arena_usable(const khala_arena_t *a) {
    return a->hi - a->lo - KHALA_BLOCK_HDR;
}

static void setup(void) {
    g_state = calloc(1, sizeof(*g_state));
    cr_assert_not_null(g_state);
    g_buf = NULL;
}

static void teardown(void) {
    free(g_buf);
    free(g_state);
}

TestSuite(alloc, .init = setup, .fini = teardown, .timeout = 30);

Test(alloc, fresh_arena_is_one_free_block) {
    khala_arena_t *a = arena_make(64 * 1024);
    cr_assert_eq(a->st->free_bytes, arena_usable(a));
    cr_assert_eq(a->st->used_blocks, 0);
    cr_assert_eq(khala__alloc_max_payload(a), 64 * 1024 - 2 * KHALA_BLOCK_HDR);
}

Test(alloc, block_sizes_and_overhead_are_as_documented) {
    /* 16 bytes of header, rounded to KHALA_ALIGN, never below KHALA_BLOCK_MIN. */
    cr_assert_eq(KHALA_BLOCK_HDR, 16);
    cr_assert_eq(khala__alloc_block_for(0), KHALA_BLOCK_MIN);
    cr_assert_eq(khala__alloc_block_for(1), KHALA_BLOCK_MIN);
    cr_assert_eq(khala__alloc_block_for(16), KHALA_BLOCK_MIN);
    cr_assert_eq(khala__alloc_block_for(17), 48);
    cr_assert_eq(khala__alloc_block_for(100), 128);
    cr_assert_eq(khala__alloc_block_for(1000), 1024);
    for (uint64_t p = 0; p < 5000; p++) {
        uint64_t b = khala__alloc_block_for(p);
        cr_assert_eq(b % KHALA_ALIGN, 0, "payload %llu", (unsigned long long)p);
        cr_assert_geq(b, p + KHALA_BLOCK_HDR);
        cr_assert_lt(b, (p + KHALA_BLOCK_HDR + KHALA_ALIGN > KHALA_BLOCK_MIN
                             ? p + KHALA_BLOCK_HDR + KHALA_ALIGN
                             : KHALA_BLOCK_MIN + 1));
    }
}

Test(alloc, allocation_is_aligned_sized_and_counted) {
    khala_arena_t *a = arena_make(64 * 1024);
    uint64_t before = a->st->free_bytes;
    uint64_t off = 0, block = 0;
    cr_assert_eq(khala__alloc_alloc(a, 100, &off, &block), 0);
    cr_assert_eq(off % KHALA_ALIGN, 0);
    cr_assert_geq(off, a->lo + KHALA_BLOCK_HDR);
    cr_assert_leq(off + 100, a->hi - KHALA_BLOCK_HDR);
    cr_assert_eq(block, khala__alloc_block_size(a, off));
    cr_assert_geq(block, khala__alloc_block_for(100));
    /* A split leaves less than a minimal block of slack. */
    cr_assert_lt(block, khala__alloc_block_for(100) + KHALA_BLOCK_MIN);
    cr_assert_eq(a->st->free_bytes, before - block);
    cr_assert_eq(a->st->used_blocks, 1);
    cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
}

Test(alloc, zero_byte_payload_gets_a_minimal_block) {
    khala_arena_t *a = arena_make(64 * 1024);
    uint64_t off = 0, block = 0;
    cr_assert_eq(khala__alloc_alloc(a, 0, &off, &block), 0);
    cr_assert_eq(block, KHALA_BLOCK_MIN);
    cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
    khala__alloc_free(a, off);
    cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
    cr_assert_eq(a->st->free_bytes, arena_usable(a));
}

Test(alloc, payload_above_max_is_enomem_and_changes_nothing) {
    khala_arena_t *a = arena_make(64 * 1024);
    uint64_t off = 77, block = 88;
    cr_assert_eq(khala__alloc_alloc(a, khala__alloc_max_payload(a) + 1, &off, &block), -ENOMEM);
    cr_assert_eq(khala__alloc_alloc(a, UINT64_MAX - 64, &off, &block), -ENOMEM);
    cr_assert_eq(off, 77);
    cr_assert_eq(block, 88);
    cr_assert_eq(a->st->free_bytes, arena_usable(a));
    cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
}

Test(alloc, max_payload_fits_a_fresh_arena) {
    /* alloc.h: khala__alloc_max_payload is "the largest payload that could ever be allocated
     * (the whole arena as one block)", and khala__l1_put relies on it to tell ETOOBIG from a
     * value that fits. */
    const uint64_t sizes[] = {64 * 1024, 100 * 1024, 1024 * 1024 + 4096};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        khala_arena_t *a = arena_make(sizes[i]);
        uint64_t max = khala__alloc_max_payload(a), off = 0, block = 0;
        int rc = khala__alloc_alloc(a, max, &off, &block);
        cr_expect_eq(rc, 0, "arena of %llu bytes: allocating max_payload %llu gives %d",
                     (unsigned long long)sizes[i], (unsigned long long)max, rc);
        /* Also a payload that needs most but not all of the arena. */
        if (rc == 0)
            khala__alloc_free(a, off);
        uint64_t most = max - max / 32;
        rc = khala__alloc_alloc(a, most, &off, &block);
        cr_expect_eq(rc, 0, "arena of %llu bytes: allocating %llu gives %d",
                     (unsigned long long)sizes[i], (unsigned long long)most, rc);
        cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
    }
}

Test(alloc, full_arena_gives_enomem_and_stays_consistent) {
    khala_arena_t *a = arena_make(64 * 1024);
    uint64_t off, block, used = 0, n = 0;
    while (khala__alloc_alloc(a, 200, &off, &block) == 0) {
        used += block;
        n++;
        cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
    }
    cr_assert_gt(n, 200);
    uint64_t free_before = a->st->free_bytes;
    cr_assert_lt(free_before,
                 khala__alloc_block_for(200) + (khala__alloc_block_for(200) >> 4) + KHALA_ALIGN);
    cr_assert_eq(khala__alloc_alloc(a, 200, &off, &block), -ENOMEM);
    cr_assert_eq(a->st->free_bytes, free_before);
    cr_assert_eq(a->st->used_blocks, n);
    cr_assert_eq(used + a->st->free_bytes, arena_usable(a));
    cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
}

Test(alloc, freeing_everything_coalesces_to_one_block) {
    khala_arena_t *a = arena_make(256 * 1024);
    uint64_t offs[512], block;
    size_t n = 0;
    while (n < 512 && khala__alloc_alloc(a, 64 + (n * 37) % 700, &offs[n], &block) == 0)
        n++;
    cr_assert_gt(n, 100);
    /* Free every other block first (no merges possible), then the rest (every free merges). */
    for (size_t i = 0; i < n; i += 2) {
        khala__alloc_free(a, offs[i]);
        cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
    }
    for (size_t i = 1; i < n; i += 2) {
        khala__alloc_free(a, offs[i]);
        cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
    }
    cr_assert_eq(a->st->free_bytes, arena_usable(a));
    cr_assert_eq(a->st->used_blocks, 0);
    /* One block again: a request for most of the arena is served from its start. */
    uint64_t off;
    cr_assert_eq(khala__alloc_alloc(a, arena_usable(a) - arena_usable(a) / 8, &off, &block), 0);
    cr_assert_eq(off, a->lo + KHALA_BLOCK_HDR);
}

Test(alloc, freed_memory_serves_any_later_size) {
    /* TLSF's reason to exist: small blocks freed together merge and serve one large request. */
    khala_arena_t *a = arena_make(64 * 1024);
    uint64_t offs[2048], block, off;
    size_t n = 0;
    while (khala__alloc_alloc(a, 48, &offs[n], &block) == 0)
        n++;
    cr_assert_eq(khala__alloc_alloc(a, 8000, &off, &block), -ENOMEM);
    for (size_t i = 100; i < 400; i++)
        khala__alloc_free(a, offs[i]);
    cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
    cr_assert_eq(khala__alloc_alloc(a, 8000, &off, &block), 0);
    cr_assert_geq(off, offs[100] - KHALA_BLOCK_HDR);
    cr_assert_leq(off + 8000, offs[400] - KHALA_BLOCK_HDR);
    cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
}

/* The shadow model: live blocks in allocation order, each with its fill byte. */
typedef struct live {
    uint64_t off, payload, block;
    uint8_t fill;
} live_t;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static int cmp_off(const void *x, const void *y) {
    const live_t *p = x, *q = y;
    return p->off < q->off ? -1 : p->off > q->off;
}

static void model_check(const khala_arena_t *a, live_t *live, size_t n) {
    live_t sorted[1024];
    uint64_t used = 0;
    memcpy(sorted, live, n * sizeof(*live));
    qsort(sorted, n, sizeof(*sorted), cmp_off);
    for (size_t i = 0; i < n; i++) {
        uint64_t b = sorted[i].off - KHALA_BLOCK_HDR;
        cr_assert_geq(b, a->lo);
        cr_assert_leq(b + sorted[i].block, a->hi - KHALA_BLOCK_HDR);
        cr_assert_eq(khala__alloc_block_size(a, sorted[i].off), sorted[i].block);
        if (i > 0)
            cr_assert_leq(sorted[i - 1].off - KHALA_BLOCK_HDR + sorted[i - 1].block, b,
                          "blocks at %llu and %llu overlap", (unsigned long long)sorted[i - 1].off,
                          (unsigned long long)sorted[i].off);
        uint64_t j = 0;
        while (j < sorted[i].payload && a->base[sorted[i].off + j] == sorted[i].fill)
            j++;
        cr_assert_eq(j, sorted[i].payload, "payload of %llu clobbered at byte %llu",
                     (unsigned long long)sorted[i].off, (unsigned long long)j);
        used += sorted[i].block;
    }
    cr_assert_eq(a->st->used_blocks, n);
    cr_assert_eq(used + a->st->free_bytes, arena_usable(a));
    cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
}

Test(alloc, random_alloc_free_matches_shadow_model) {
    khala_arena_t *a = arena_make(512 * 1024);
    live_t live[1024];
    size_t n = 0, enomem = 0;
    for (int op = 0; op < 6000; op++) {
        int do_alloc = n == 0 || (n < 1024 && rng() % 100 < 55);
        if (do_alloc) {
            /* Mostly small, sometimes large, as item sizes are. */
            uint64_t r = rng();
            uint64_t payload = r % 8 == 0 ? rng() % 20000 : rng() % 600;
            uint64_t off = 0, block = 0;
            int rc = khala__alloc_alloc(a, payload, &off, &block);
            if (rc == -ENOMEM) {
                enomem++;
                cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
                continue;
            }
            cr_assert_eq(rc, 0);
            cr_assert_eq(off % KHALA_ALIGN, 0);
            cr_assert_geq(block, khala__alloc_block_for(payload));
            live[n] = (live_t){off, payload, block, (uint8_t)(op * 7 + 1)};
            memset(a->base + off, live[n].fill, payload);
            n++;
        } else {
            size_t i = rng() % n;
            khala__alloc_free(a, live[i].off);
            live[i] = live[--n];
        }
        if (op % 16 == 0 || n < 8)
            model_check(a, live, n);
        else
            cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
    }
    model_check(a, live, n);
    while (n > 0) {
        khala__alloc_free(a, live[--n].off);
        cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
    }
    cr_assert_eq(a->st->free_bytes, arena_usable(a), "coalescing left %llu of %llu bytes free",
                 (unsigned long long)a->st->free_bytes, (unsigned long long)arena_usable(a));
    cr_assert_eq(a->st->used_blocks, 0);
    (void)enomem;
}

Test(alloc, check_detects_a_corrupted_block_header) {
    khala_arena_t *a = arena_make(64 * 1024);
    uint64_t off, block;
    cr_assert_eq(khala__alloc_alloc(a, 100, &off, &block), 0);
    cr_assert_eq(khala__alloc_alloc(a, 100, &off, &block), 0);
    khala_block_t *h = (khala_block_t *)(a->base + off - KHALA_BLOCK_HDR);
    h->size_flags += KHALA_ALIGN; /* the block now overlaps the next one */
    cr_assert_eq(khala__alloc_check(a, NULL, 0), KHALA_ECORRUPT);
}

/* Corruptions the check must report without following them (each crashed or hung it once). */

/* An arena of five used blocks with the second and fourth freed: two free blocks in one list,
 * plus the free tail. g_off holds the payload offsets. */
static uint64_t g_off[5];

static khala_arena_t *holey_arena(void) {
    khala_arena_t *a = arena_make(64 * 1024);
    uint64_t block;
    for (int i = 0; i < 5; i++)
        cr_assert_eq(khala__alloc_alloc(a, 100, &g_off[i], &block), 0);
    khala__alloc_free(a, g_off[1]);
    khala__alloc_free(a, g_off[3]);
    cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
    return a;
}

static khala_block_t *hdr_of(const khala_arena_t *a, uint64_t payload) {
    return (khala_block_t *)(a->base + payload - KHALA_BLOCK_HDR);
}

/* The free-list links (next, prev) of the free block whose payload is at payload. */
static uint64_t *links_of(const khala_arena_t *a, uint64_t payload) {
    return (uint64_t *)(a->base + payload);
}

/* The list head that holds the free blocks 1 and 3. */
static uint64_t *hole_head(const khala_arena_t *a) {
    for (int f = 0; f < KHALA_ALLOC_FL; f++)
        for (int s = 0; s < KHALA_ALLOC_SL; s++)
            if (a->st->free_head[f][s] == g_off[1] - KHALA_BLOCK_HDR ||
                a->st->free_head[f][s] == g_off[3] - KHALA_BLOCK_HDR)
                return &a->st->free_head[f][s];
    cr_assert_fail("no list holds the holes");
    return NULL;
}

static void expect_corrupt(const khala_arena_t *a, const char *why) {
    char err[256] = "";
    cr_assert_eq(khala__alloc_check(a, err, sizeof(err)), KHALA_ECORRUPT);
    cr_assert_neq(strstr(err, why), NULL, "message: %s", err);
}

Test(alloc, free_list_head_outside_the_arena_is_ecorrupt) {
    khala_arena_t *a = holey_arena();
    *hole_head(a) = 1ull << 40;
    expect_corrupt(a, "outside the arena");
}

Test(alloc, free_list_head_below_the_arena_is_ecorrupt) {
    khala_arena_t *a = holey_arena();
    *hole_head(a) = 16; /* inside the allocator's state, not a block */
    expect_corrupt(a, "outside the arena");
}

Test(alloc, free_list_next_outside_the_arena_is_ecorrupt) {
    khala_arena_t *a = holey_arena();
    links_of(a, *hole_head(a) + KHALA_BLOCK_HDR)[0] = UINT64_MAX - 7;
    expect_corrupt(a, "outside the arena");
}

Test(alloc, free_list_next_into_a_used_block_is_ecorrupt) {
    khala_arena_t *a = holey_arena();
    uint64_t head = *hole_head(a);
    uint64_t fake = g_off[2] + 32; /* inside a used block's payload, dressed as a free block */
    memcpy(a->base + fake, hdr_of(a, head + KHALA_BLOCK_HDR), KHALA_BLOCK_HDR);
    uint64_t fake_links[2] = {0, head};
    memcpy(a->base + fake + KHALA_BLOCK_HDR, fake_links, sizeof(fake_links));
    uint64_t real_next = links_of(a, head + KHALA_BLOCK_HDR)[0];
    cr_assert_neq(real_next, 0);
    links_of(a, head + KHALA_BLOCK_HDR)[0] = fake; /* the fake replaces the real second block */
    expect_corrupt(a, "not exactly");
}

Test(alloc, free_list_cycle_is_ecorrupt) {
    khala_arena_t *a = holey_arena();
    uint64_t head = *hole_head(a);
    uint64_t second = links_of(a, head + KHALA_BLOCK_HDR)[0];
    links_of(a, second + KHALA_BLOCK_HDR)[0] = head; /* back to the head */
    expect_corrupt(a, "free list");
}

Test(alloc, block_size_of_zero_is_ecorrupt) {
    khala_arena_t *a = holey_arena();
    hdr_of(a, g_off[2])->size_flags &= KHALA_ALIGN - 1;
    expect_corrupt(a, "size 0");
}

Test(alloc, huge_block_size_is_ecorrupt) {
    khala_arena_t *a = holey_arena();
    hdr_of(a, g_off[2])->size_flags =
        (UINT64_MAX & ~(uint64_t)(KHALA_ALIGN - 1)) | KHALA_BLOCK_PREV_FREE;
    expect_corrupt(a, "size");
}

Test(alloc, block_size_that_wraps_to_the_arena_start_is_ecorrupt_not_a_loop) {
    khala_arena_t *a = holey_arena();
    uint64_t b = g_off[2] - KHALA_BLOCK_HDR;
    hdr_of(a, g_off[2])->size_flags = (0 - (b - a->lo)) | KHALA_BLOCK_PREV_FREE;
    expect_corrupt(a, "size");
}

Test(alloc, prev_size_pointing_before_the_arena_is_ecorrupt) {
    khala_arena_t *a = holey_arena();
    hdr_of(a, g_off[2])->prev_size = g_off[2] + 4096; /* block 1 would start below 0 */
    expect_corrupt(a, "prev_size");
}

Test(alloc, bitmap_naming_a_list_past_the_table_is_ecorrupt) {
    khala_arena_t *a = holey_arena();
    a->st->fl_bitmap |= 1ull << 63;
    expect_corrupt(a, "bitmap");
    a->st->fl_bitmap &= ~(1ull << 63);
    cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
    a->st->sl_bitmap[10] |= 1u << 31;
    expect_corrupt(a, "bitmap");
}

/* Preconditions are asserted in test and Debug builds (lib/debug.h): a block offset outside the
 * arena is a writer bug, caught at the first use rather than corrupting the segment. */
#ifdef KHALA_DEBUG
Test(alloc, free_of_an_offset_outside_the_arena_is_asserted, .signal = SIGABRT) {
    khala_arena_t *a = arena_make(64 * 1024);
    khala__alloc_free(a, a->hi + 4096);
}
#endif
