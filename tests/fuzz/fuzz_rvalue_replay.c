/*
 * Plain driver of tests/fuzz/fuzz_rvalue.c, run by ctest in every build: the seed values (made
 * by the encoder, valid ones it never writes, byte strings that are not ours), then a fixed
 * number of deterministic mutations of them, each fed to the target. Mutations flip bits,
 * overwrite bytes with values that matter to the format (0x93, 0xcf, the bin headers, types
 * 7 and 8, 0xff..), rewrite the bin header with a length that matches the bytes that follow or
 * misses by a little, insert and delete bytes, truncate, and splice two seeds. The target must
 * survive all of them; the program counts how many decoded, and fails if a valid seed is
 * refused or another decodes (the target would then test less than it says). Last, one value
 * of 64 KiB checks the bin32 header the encoder writes for large values.
 *
 *   fuzz_rvalue_replay [ROUNDS]          replay (default DEFAULT_ROUNDS mutations)
 *   fuzz_rvalue_replay --write-seed DIR  write the seeds into DIR for libFuzzer
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "fuzz_rand.h"
#include "fuzz_rvalue.h"
#include "khala/cache.h"
#include "tier_redis.h"

#define DEFAULT_ROUNDS 100000
#define SEEDS_MAX 64
/* Largest mutated input: a seed plus what insertions and splices add. */
#define INPUT_MAX 4096

static uint64_t g_rng = 0xbb67ae8584caa73bull;

static uint64_t rnd(void) {
    return fuzz_rand(&g_rng);
}

/* Bytes that change how the value is read. */
static const uint8_t interesting[] = {0x00, 0x01, 0x07, 0x08, 0x7f, 0x80, 0x92, 0x93, 0x94,
                                      0xc0, 0xc1, 0xc4, 0xc5, 0xc6, 0xce, 0xcf, 0xd9, 0xff};

typedef struct seed {
    uint8_t p[FUZZ_RVALUE_SEED_MAX];
    size_t len;
    int valid;
} seed_t;

static int write_seeds(const char *dir, const seed_t *seeds, int n) {
    for (int i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/seed-rvalue-%02d", dir, i);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(seeds[i].p, 1, seeds[i].len, f) != seeds[i].len) {
            perror(path);
            if (f)
                fclose(f);
            return 1;
        }
        if (fclose(f) != 0)
            return 1;
    }
    return 0;
}

/* One mutation of in (len bytes) into out; returns the new length (<= INPUT_MAX). */
static size_t mutate(const seed_t *seeds, int nseeds, const uint8_t *in, size_t len, uint8_t *out) {
    memcpy(out, in, len);
    int edits = rnd() % 4 ? 1 : 2 + (int)(rnd() % 3);
    for (int e = 0; e < edits; e++) {
        size_t at = len ? (size_t)(rnd() % len) : 0;
        switch (rnd() % 8) {
            case 0: /* flip a bit */
                if (len)
                    out[at] ^= (uint8_t)(1u << (rnd() % 8));
                break;
            case 1: /* an interesting byte */
                if (len)
                    out[at] = interesting[rnd() % sizeof(interesting)];
                break;
            case 2: /* a random byte */
                if (len)
                    out[at] = (uint8_t)rnd();
                break;
            case 3: /* insert a few bytes */
                if (len + 8 <= INPUT_MAX) {
                    size_t k = 1 + (size_t)(rnd() % 8);
                    memmove(out + at + k, out + at, len - at);
                    for (size_t i = 0; i < k; i++)
                        out[at + i] =
                            rnd() % 2 ? interesting[rnd() % sizeof(interesting)] : (uint8_t)rnd();
                    len += k;
                }
                break;
            case 4: /* delete a few bytes */
                if (len) {
                    size_t k = 1 + (size_t)(rnd() % 8);
                    if (k > len - at)
                        k = len - at;
                    memmove(out + at, out + at + k, len - at - k);
                    len -= k;
                }
                break;
            case 5: /* a new bin header: the length of what follows, or nearly */
                if (len >= 12 && len + 8 <= INPUT_MAX) {
                    unsigned old = out[11] >= 0xc4 && out[11] <= 0xc6 ? 1u << (out[11] - 0xc4) : 0;
                    size_t from = 12 + old <= len ? 12 + old : 12;
                    unsigned w = (unsigned)(rnd() % 3), hl = 1u << w;
                    uint64_t n = len - from;
                    if (rnd() % 2)
                        n += (rnd() % 5) - 2;
                    memmove(out + 12 + hl, out + from, len - from);
                    len = 12 + hl + (len - from);
                    out[11] = (uint8_t)(0xc4 + w);
                    for (unsigned i = 0; i < hl; i++)
                        out[12 + i] = (uint8_t)(n >> (8 * (hl - 1 - i)));
                }
                break;
            case 6: /* truncate */
                len = at;
                break;
            default: { /* splice: the tail of another seed after our head */
                const seed_t *s = &seeds[rnd() % (uint64_t)nseeds];
                size_t from = s->len ? (size_t)(rnd() % s->len) : 0;
                size_t k = s->len - from;
                if (at + k > INPUT_MAX)
                    k = INPUT_MAX - at;
                memcpy(out + at, s->p + from, k);
                len = at + k;
                break;
            }
        }
    }
    return len;
}

int main(int argc, char **argv) {
    long rounds = DEFAULT_ROUNDS;
    const char *seed_dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--write-seed") == 0 && i + 1 < argc)
            seed_dir = argv[++i];
        else
            rounds = strtol(argv[i], NULL, 10);
    }
    static seed_t seeds[SEEDS_MAX];
    int nseeds = 0, rc = 0, failed = 0;
    while (nseeds < SEEDS_MAX && (rc = fuzz_rvalue_seed(nseeds, seeds[nseeds].p, &seeds[nseeds].len,
                                                        &seeds[nseeds].valid)) > 0)
        nseeds++;
    if (rc < 0 || nseeds == 0) {
        fprintf(stderr, "fuzz_rvalue: cannot build seed %d\n", nseeds);
        failed = 1;
    }
    if (!failed && seed_dir)
        return write_seeds(seed_dir, seeds, nseeds);
    /* Each seed decodes exactly when it should: otherwise the target tests less than it says. */
    int nvalid = 0;
    for (int i = 0; i < nseeds && !failed; i++) {
        int ok = fuzz_rvalue_one(seeds[i].p, seeds[i].len);
        nvalid += ok;
        if (ok != seeds[i].valid) {
            fprintf(stderr, "fuzz_rvalue: seed %d %s\n", i,
                    seeds[i].valid ? "does not decode" : "is not ours but decodes");
            failed = 1;
        }
    }
    static uint8_t buf[INPUT_MAX];
    long decoded = 0;
    for (long r = 0; r < rounds && !failed; r++) {
        const seed_t *s = &seeds[rnd() % (uint64_t)nseeds];
        size_t n = mutate(seeds, nseeds, s->p, s->len, buf);
        /* Run the input from a heap block of exactly its size, so ASan sees any overread. */
        uint8_t *in = malloc(n ? n : 1);
        if (!in)
            return 2;
        memcpy(in, buf, n);
        decoded += fuzz_rvalue_one(in, n);
        free(in);
    }
    /* One value large enough for the bin32 header: too large to mutate by the thousand. */
    if (!failed) {
        khala_tier_value_t v = {.len = 1u << 16, .version = 7, .type = KHALA_TYPE_EMBEDDING};
        msgpack_sbuffer sb;
        v.data = calloc(1, v.len);
        if (!v.data || khala__tier_redis_value_encode(&v, &sb) != 0)
            return 2;
        if (sb.size != 16 + v.len || (uint8_t)sb.data[11] != 0xc6 ||
            fuzz_rvalue_one((const uint8_t *)sb.data, sb.size) != 1) {
            fprintf(stderr, "fuzz_rvalue: a 64 KiB value does not round-trip\n");
            failed = 1;
        }
        msgpack_sbuffer_destroy(&sb);
        free(v.data);
    }
    printf("fuzz_rvalue: %d seeds (%d valid), %ld mutations, %ld decoded, %ld refused\n", nseeds,
           nvalid, failed ? 0 : rounds, decoded, failed ? 0 : rounds - decoded);
    printf("%d passed, %d failed\n", failed ? 0 : 1, failed ? 1 : 0);
    return failed ? 1 : 0;
}
