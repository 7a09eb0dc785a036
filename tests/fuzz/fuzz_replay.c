/*
 * Plain driver of tests/fuzz/fuzz_segment.c, run by ctest in every build: the valid seed
 * segment, then a fixed number of deterministic mutations of it (byte and word overwrites
 * aimed at the header, the buckets and the arena, with offsets pointing anywhere, and
 * truncations), each attached and read. The target must survive all of them; the program
 * counts how many attached and how many were refused, and fails if the seed itself does not
 * attach (which would mean the target tests nothing).
 *
 *   fuzz_segment_replay [ROUNDS]          replay (default DEFAULT_ROUNDS mutations)
 *   fuzz_segment_replay --write-seed DIR  write the seed segment into DIR for libFuzzer
 */
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
    const khala_seg_header_t *h = (const khala_seg_header_t *)(const void *)seed;
    uint64_t regions[] = {0, h->bucket_off, h->arena_off, h->arena_off + 4096};
    long accepted = 0;
    for (long r = 0; r < rounds; r++) {
        memcpy(img, seed, len);
        size_t n = len;
        int edits = 1 + (int)(rnd() % 4);
        for (int e = 0; e < edits; e++) {
            uint64_t base = regions[rnd() % 4];
            size_t at = (size_t)((base + rnd() % 8192) % len) & ~(size_t)7;
            uint64_t v;
            switch (rnd() % 5) {
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
    fuzz_segment_teardown();
    free(img);
    printf("fuzz_segment: %ld mutations, %ld attached, %ld refused; seed %s\n", rounds, accepted,
           rounds - accepted, seed_ok ? "attached" : "REFUSED");
    printf("%d passed, %d failed\n", seed_ok ? 1 : 0, seed_ok ? 0 : 1);
    return seed_ok ? 0 : 1;
}
