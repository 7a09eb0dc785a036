/*
 * Plain driver of tests/fuzz/fuzz_segment.c, run by ctest in every build: the valid seed
 * segment, then a fixed number of deterministic mutations of it (word overwrites aimed at the
 * header, the buckets, the arena, and most often at the regions only the writer reads: its
 * header state, the descs, the retire ring, the allocator's state and block bitmap; with
 * offsets and indexes pointing anywhere, and truncations), each attached and read, then
 * restarted as a writer. The target must survive all of them; the program counts how many
 * attached, were refused, were adopted by the writer and were made anew, and fails if the
 * seed itself does not attach or is not adopted (which would mean the target tests nothing).
 *
 *   fuzz_segment_replay [ROUNDS]          replay (default DEFAULT_ROUNDS mutations)
 *   fuzz_segment_replay --write-seed DIR  write the seed segment into DIR for libFuzzer
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_segment.h"
#include "fuzz_rand.h"
#include "segment.h"

#define DEFAULT_ROUNDS 20000

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void) {
    return fuzz_rand(&g_rng);
}

/* Write the seed segment into dir, as the libFuzzer target's starting corpus. */
static int write_seed(const char *dir, const uint8_t *seed, size_t len) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/seed-segment", dir);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(seed, 1, len, f) != len) {
        perror(path);
        if (f)
            fclose(f);
        return 1;
    }
    return fclose(f) == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    uint8_t *seed;
    size_t len;
    long rounds = DEFAULT_ROUNDS;
    const char *seed_dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--write-seed") == 0 && i + 1 < argc)
            seed_dir = argv[++i];
        else
            rounds = strtol(argv[i], NULL, 10);
    }
    if (fuzz_segment_setup(&seed, &len) != 0)
        return 2;
    if (seed_dir) {
        int rc = write_seed(seed_dir, seed, len);
        fuzz_segment_teardown();
        return rc;
    }
    uint8_t *img = malloc(len);
    if (!img)
        return 2;
    /* The seed attaches: otherwise every mutation below would be refused at the door. */
    int seed_ok = fuzz_segment_one(seed, len);
    long seed_adopted;
    fuzz_segment_counts(&seed_adopted, &(long){0});
    seed_ok = seed_ok && seed_adopted == 1;
    const khala_seg_header_t *h = (const khala_seg_header_t *)(const void *)seed;
    /* (offset, span) of the regions a mutation aims at; the writer-only ones come often. */
    const struct {
        uint64_t off, span;
    } regions[] = {
        {0, 256},
        {offsetof(khala_seg_header_t, w), sizeof(khala_wstate_t)},
        {offsetof(khala_seg_header_t, w), sizeof(khala_wstate_t)},
        {h->bucket_off, h->bucket_count * 2 * sizeof(khala_bucket_t)},
        {h->desc_off, (uint64_t)h->max_items * sizeof(khala_desc_t)},
        {h->desc_off, (uint64_t)h->max_items * sizeof(khala_desc_t)},
        {h->ghost_off, h->ghost_cap * sizeof(khala_ghost_t)},
        {h->retire_off, 64 * sizeof(khala_retired_t)},
        {h->alloc_off, sizeof(khala_alloc_state_t)},
        {h->alloc_off + offsetof(khala_alloc_state_t, free_head), 6 * 16 * 8 + 512},
        {h->arena_off, 8192},
        {h->bitmap_off, 1024},                                    /* the first blocks' bits */
        {h->bitmap_off, khala_arena_bitmap_bytes(h->arena_size)}, /* the block bitmap */
    };
    const int nregions = (int)(sizeof(regions) / sizeof(regions[0]));
    long accepted = 0;
    for (long r = 0; r < rounds; r++) {
        memcpy(img, seed, len);
        size_t n = len;
        int edits = 1 + (int)(rnd() % 4);
        for (int e = 0; e < edits; e++) {
            int k = (int)(rnd() % (uint64_t)nregions);
            size_t at = (size_t)((regions[k].off + rnd() % regions[k].span) % len) & ~(size_t)7;
            uint64_t v;
            switch (rnd() % 7) {
                case 0:
                    v = rnd();
                    break; /* anything */
                case 1:
                    v = h->arena_off + rnd() % (len * 2);
                    break; /* an offset */
                case 2:
                    v = (h->arena_off + rnd() % len) & ~15ull;
                    break; /* aligned */
                case 3:
                    v = 0;
                    break;
                case 4: /* a desc index, near the table or KHALA_NIL */
                    v = rnd() % 3 == 0 ? KHALA_NIL : rnd() % (h->max_items * 2u + 2);
                    break;
                case 5: /* a small change of what was there: a count or a size off by a bit */
                    memcpy(&v, img + at, 8);
                    v += (rnd() % 2 ? 1 : -1) * (1ull << (rnd() % 8 * 4));
                    break;
                default:
                    v = UINT64_MAX - rnd() % 64;
                    break;
            }
            if (at + 8 <= len)
                memcpy(img + at, &v, 8);
        }
        if (rnd() % 16 == 0)
            n = (size_t)(rnd() % len); /* truncated */
        accepted += fuzz_segment_one(img, n);
    }
    long adopted, rebuilt;
    fuzz_segment_counts(&adopted, &rebuilt);
    fuzz_segment_teardown();
    free(img);
    printf("fuzz_segment: %ld mutations, %ld attached, %ld refused; writer adopted %ld, made "
           "anew %ld; seed %s\n",
           rounds, accepted, rounds - accepted, adopted - 1, rebuilt,
           seed_ok ? "attached and adopted" : "REFUSED");
    printf("%d passed, %d failed\n", seed_ok ? 1 : 0, seed_ok ? 0 : 1);
    return seed_ok ? 0 : 1;
}
