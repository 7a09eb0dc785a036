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
static uint64_t *g_bits;
static khala_arena_t g_arena;

/* Format an arena of `size` bytes (a multiple of KHALA_ALIGN) in a fresh buffer. */
static khala_arena_t *arena_make(uint64_t size) {
    free(g_buf);
    free(g_bits);
    g_buf = aligned_alloc(4096, ARENA_LO + size);
    g_bits = malloc(khala_arena_bitmap_bytes(size));
    cr_assert_not_null(g_buf);
    cr_assert_not_null(g_bits);
    memset(g_buf, 0xa5, ARENA_LO + size);
    memset(g_bits, 0xa5, khala_arena_bitmap_bytes(size));
    khala__alloc_bind(&g_arena, g_buf, g_state, g_bits, ARENA_LO, ARENA_LO + size);
    khala__alloc_format(&g_arena);
    cr_assert_eq(khala__alloc_check(&g_arena, NULL, 0), 0);
    return &g_arena;
}

/* Every byte of the arena is either free or in a used block. */
static uint64_t arena_usable(const khala_arena_t *a) {
    return a->hi - a->lo;
}

static void setup(void) {
    g_state = calloc(1, sizeof(*g_state));
    cr_assert_not_null(g_state);
    g_buf = NULL;
    g_bits = NULL;
}

static void teardown(void) {
    free(g_buf);
    free(g_bits);
    free(g_state);
}

TestSuite(alloc, .init = setup, .fini = teardown, .timeout = 30);

Test(alloc, fresh_arena_is_one_free_block) {
    khala_arena_t *a = arena_make(64 * 1024);
    cr_assert_eq(a->st->free_bytes, arena_usable(a));
    cr_assert_eq(a->st->used_blocks, 0);
    cr_assert_eq(khala__alloc_max_payload(a), 64 * 1024);
}

Test(alloc, block_sizes_and_overhead_are_as_documented) {
    /* No header: the payload rounded to KHALA_ALIGN, never below KHALA_BLOCK_MIN. */
    cr_assert_eq(khala__alloc_block_for(0), KHALA_BLOCK_MIN);
    cr_assert_eq(khala__alloc_block_for(1), KHALA_BLOCK_MIN);
    cr_assert_eq(khala__alloc_block_for(32), KHALA_BLOCK_MIN);
    cr_assert_eq(khala__alloc_block_for(33), 48);
    cr_assert_eq(khala__alloc_block_for(100), 112);
    cr_assert_eq(khala__alloc_block_for(1000), 1008);
    for (uint64_t p = 0; p < 5000; p++) {
        uint64_t b = khala__alloc_block_for(p);
        cr_assert_eq(b % KHALA_ALIGN, 0, "payload %llu", (unsigned long long)p);
        cr_assert_geq(b, p);
        cr_assert_lt(b, p + KHALA_ALIGN > KHALA_BLOCK_MIN ? p + KHALA_ALIGN : KHALA_BLOCK_MIN + 1);
    }
    /* A bit of bitmap per KHALA_ALIGN bytes of arena (and two past it), in whole words. */
    cr_assert_eq(khala_arena_bitmap_bytes(64 * 1024), 8 * 65);
}

Test(alloc, allocation_is_aligned_sized_and_counted) {
    khala_arena_t *a = arena_make(64 * 1024);
    uint64_t before = a->st->free_bytes;
    uint64_t off = 0, block = 0;
    cr_assert_eq(khala__alloc_alloc(a, 100, &off, &block), 0);
    cr_assert_eq(off % KHALA_ALIGN, 0);
    cr_assert_geq(off, a->lo);
    cr_assert_leq(off + 100, a->hi);
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
    cr_assert_eq(off, a->lo);
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
    cr_assert_geq(off, offs[100]);
    cr_assert_leq(off + 8000, offs[400]);
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
        uint64_t b = sorted[i].off;
        cr_assert_geq(b, a->lo);
        cr_assert_leq(b + sorted[i].block, a->hi);
        cr_assert_eq(khala__alloc_block_size(a, sorted[i].off), sorted[i].block);
        if (i > 0)
            cr_assert_leq(sorted[i - 1].off + sorted[i - 1].block, b,
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

/* The bitmap unit of off. */
static uint64_t unit_of(const khala_arena_t *a, uint64_t off) {
    return (off - a->lo) / KHALA_ALIGN;
}

static void flip(const khala_arena_t *a, uint64_t g) {
    a->bits[g / 64] ^= 1ull << (g % 64);
}

Test(alloc, check_detects_a_corrupted_block_boundary) {
    khala_arena_t *a = arena_make(64 * 1024);
    uint64_t off, block;
    cr_assert_eq(khala__alloc_alloc(a, 100, &off, &block), 0);
    cr_assert_eq(khala__alloc_alloc(a, 100, &off, &block), 0);
    flip(a, unit_of(a, off + block)); /* the block now overlaps the next one */
    cr_assert_eq(khala__alloc_check(a, NULL, 0), KHALA_ECORRUPT);
}

/* Corruptions the check must report without following them (each crashed or hung it once). */

/* An arena of five used blocks with the second and fourth freed: two free blocks in one list,
 * plus the free tail. g_off holds the block offsets. */
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

/* The record (size, next, prev) of the listed free block at b. */
static uint64_t *rec_of(const khala_arena_t *a, uint64_t b) {
    return (uint64_t *)(a->base + ((b + KHALA_CACHE_LINE - 1) & ~(uint64_t)(KHALA_CACHE_LINE - 1)));
}

/* The list head that holds the free blocks 1 and 3. */
static uint64_t *hole_head(const khala_arena_t *a) {
    for (int f = 0; f < KHALA_ALLOC_FL; f++)
        for (int s = 0; s < KHALA_ALLOC_SL; s++)
            if (a->st->free_head[f][s] == g_off[1] || a->st->free_head[f][s] == g_off[3])
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
    rec_of(a, *hole_head(a))[1] = UINT64_MAX - 7;
    expect_corrupt(a, "outside the arena");
}

Test(alloc, free_list_next_into_a_used_block_is_ecorrupt) {
    khala_arena_t *a = holey_arena();
    uint64_t head = *hole_head(a);
    uint64_t fake = g_off[2] + 64; /* inside a used block's payload, dressed as a free block */
    uint64_t fake_rec[3] = {rec_of(a, head)[0], 0, head};
    memcpy(rec_of(a, fake), fake_rec, sizeof(fake_rec));
    uint64_t real_next = rec_of(a, head)[1];
    cr_assert_neq(real_next, 0);
    rec_of(a, head)[1] = fake; /* the fake replaces the real second block */
    expect_corrupt(a, "not a listed free block");
}

Test(alloc, free_list_cycle_is_ecorrupt) {
    khala_arena_t *a = holey_arena();
    uint64_t head = *hole_head(a);
    uint64_t second = rec_of(a, head)[1];
    rec_of(a, second)[1] = head; /* back to the head */
    expect_corrupt(a, "free list");
}

Test(alloc, used_block_marked_free_is_ecorrupt) {
    khala_arena_t *a = holey_arena();
    flip(a, unit_of(a, g_off[2]) + 1); /* its second unit says free, beside free block 1 */
    expect_corrupt(a, "so is the block before");
}

Test(alloc, free_block_without_an_end_mark_is_ecorrupt) {
    khala_arena_t *a = arena_make(64 * 1024);
    uint64_t off[3], block;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(khala__alloc_alloc(a, 100, &off[i], &block), 0);
    flip(a, unit_of(a, off[1]) + 1); /* "free", between used blocks, but its end is unmarked */
    expect_corrupt(a, "end mark");
}

Test(alloc, block_running_past_the_arena_end_is_ecorrupt) {
    khala_arena_t *a = holey_arena();
    flip(a, unit_of(a, a->hi) - 1); /* a one-unit block before the end, "free" by bit hi */
    cr_assert_eq(khala__alloc_check(a, NULL, 0), KHALA_ECORRUPT);
}

Test(alloc, record_size_that_disagrees_with_the_bitmap_is_ecorrupt) {
    khala_arena_t *a = holey_arena();
    rec_of(a, g_off[1])[0] = UINT64_MAX & ~(uint64_t)(KHALA_ALIGN - 1);
    expect_corrupt(a, "record says size");
}

Test(alloc, footer_that_disagrees_with_the_bitmap_is_ecorrupt) {
    khala_arena_t *a = holey_arena();
    /* The footer of free block 1 is the last word of the last whole line before block 2. */
    uint64_t e = g_off[2] & ~(uint64_t)(KHALA_CACHE_LINE - 1);
    *(uint64_t *)(a->base + e - 8) = g_off[2] + 4096; /* would start below the arena */
    expect_corrupt(a, "footer");
}

Test(alloc, stray_bits_are_ecorrupt) {
    khala_arena_t *a = holey_arena();
    flip(a, unit_of(a, g_off[2]) + 3); /* inside a used block: splits it in two */
    expect_corrupt(a, "used blocks");
    flip(a, unit_of(a, g_off[2]) + 3);
    cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
    flip(a, unit_of(a, a->hi) + 1); /* past the arena's end */
    expect_corrupt(a, "bitmap holds");
    flip(a, unit_of(a, a->hi) + 1);
    cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
    flip(a, unit_of(a, g_off[1]) + 1); /* a listed free block marked used */
    cr_assert_eq(khala__alloc_check(a, NULL, 0), KHALA_ECORRUPT);
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

/* The property the allocator's layout exists for (alloc.c, "Readers' lines"): while a block is
 * used, no allocation, split, free or merge of any other block stores to a cache line that holds
 * a byte of it. Readers keep their copies of a live item's lines however busy the writer is.
 * Every fourth block is held; the rest churn (freed, merged, split and reallocated, of other
 * sizes) and get no payload writes, so any change to a held block's lines is the allocator's. */
Test(alloc, churn_never_stores_to_a_line_of_a_used_block) {
    khala_arena_t *a = arena_make(256 * 1024);
    enum { N = 1024 };
    uint64_t off[N], size[N], block;
    int n = 0;
    for (; n < N; n++) {
        size[n] = 48 + rng() % 200; /* payload bytes, as an item's */
        if (khala__alloc_alloc(a, size[n], &off[n], &block) != 0)
            break;
        memset(a->base + off[n], 0x5a, size[n]);
    }
    cr_assert_gt(n, 256);
    /* Snapshot the arena; held blocks are those with i % 4 == 0. */
    uint64_t len = a->hi;
    uint8_t *snap = malloc(len);
    cr_assert_not_null(snap);
    memcpy(snap, a->base, len);
    int live = 0;
    for (int i = 0; i < n; i++)
        if (i % 4 != 0) {
            khala__alloc_free(a, off[i]);
            off[i] = 0;
        } else {
            live++;
        }
    /* Churn: allocate and free other blocks of other sizes many times over. */
    uint64_t churn[N];
    int c = 0;
    for (int op = 0; op < 20000; op++) {
        if (c < N && (c == 0 || rng() % 100 < 55)) {
            uint64_t payload = rng() % 8 == 0 ? rng() % 2000 : 16 + rng() % 300;
            if (khala__alloc_alloc(a, payload, &churn[c], &block) == 0)
                c++;
        } else {
            int i = (int)(rng() % (uint64_t)c);
            khala__alloc_free(a, churn[i]);
            churn[i] = churn[--c];
        }
    }
    while (c > 0)
        khala__alloc_free(a, churn[--c]);
    cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
    /* Every line holding a byte of a held block's payload is as it was. */
    for (int i = 0; i < n; i += 4) {
        uint64_t first = off[i] & ~(uint64_t)(KHALA_CACHE_LINE - 1);
        uint64_t end =
            (off[i] + size[i] + KHALA_CACHE_LINE - 1) & ~(uint64_t)(KHALA_CACHE_LINE - 1);
        for (uint64_t x = first; x < end; x++)
            cr_assert_eq(a->base[x], snap[x],
                         "byte %llu, on a line of the used block at %llu (%llu bytes), changed",
                         (unsigned long long)x, (unsigned long long)off[i],
                         (unsigned long long)size[i]);
    }
    cr_assert_gt(live, 64);
    free(snap);
}

/* Free blocks of two to ten units are decoded from the bitmap alone (alloc.c), at every
 * alignment to the cache line: free them beside each other in every order and merge them. */
Test(alloc, small_free_blocks_decode_and_merge_at_every_alignment) {
    khala_arena_t *a = arena_make(64 * 1024);
    uint64_t off[600], block;
    int n = 0;
    while (n < 600 && khala__alloc_alloc(a, 32 + 16 * (uint64_t)(n % 9), &off[n], &block) == 0)
        n++;
    cr_assert_gt(n, 300);
    for (int i = 1; i < n; i += 3) {
        khala__alloc_free(a, off[i]);
        cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
    }
    for (int i = 0; i < n; i += 3) { /* merges after */
        khala__alloc_free(a, off[i]);
        cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
    }
    for (int i = 2; i < n; i += 3) { /* merges before and after */
        khala__alloc_free(a, off[i]);
        cr_assert_eq(khala__alloc_check(a, NULL, 0), 0);
    }
    cr_assert_eq(a->st->free_bytes, arena_usable(a));
    cr_assert_eq(a->st->used_blocks, 0);
    uint64_t o;
    cr_assert_eq(khala__alloc_alloc(a, arena_usable(a), &o, &block), 0);
    cr_assert_eq(o, a->lo);
}
