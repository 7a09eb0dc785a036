/*
 * Plain driver of tests/fuzz/fuzz_inval.c, run by ctest in every build: the seed messages
 * (valid ones of every kind, valid ones the encoder never writes, malformed ones), then a fixed
 * number of deterministic mutations of them, each fed to the target. Mutations flip bits,
 * overwrite bytes with values that matter to msgpack (type bytes, 0xc1, lengths of 0, 0xff..),
 * insert field names and kind names, insert and delete bytes, truncate, and splice two seeds.
 * The target must survive all of them; the program counts how many decoded, and fails if a
 * valid seed is refused or a malformed one decodes (the target would then test less than it
 * says).
 *
 *   fuzz_inval_replay [ROUNDS]          replay (default DEFAULT_ROUNDS mutations)
 *   fuzz_inval_replay --write-seed DIR  write the seeds into DIR for libFuzzer
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_inval.h"
#include "fuzz_rand.h"

#define DEFAULT_ROUNDS 100000
#define SEEDS_MAX 64
/* Largest mutated input: a seed plus what insertions and splices add. */
#define INPUT_MAX 4096

static uint64_t g_rng = 0x6a09e667f3bcc909ull;

static uint64_t rnd(void) {
    return fuzz_rand(&g_rng);
}

/* Bytes that change how msgpack reads what follows. */
static const uint8_t interesting[] = {
    0x00, 0x01, 0x07, 0x08, 0x7f, 0x80, 0x82, 0x85, 0x8f, 0x90, 0x9f, 0xa0, 0xa1, 0xa2, 0xbf, 0xc0,
    0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xca, 0xcb, 0xcc, 0xcf, 0xd0, 0xd3, 0xd9, 0xde, 0xdf, 0xff};

/* Fragments of the format: field names and kinds as fixstr ("\x62" is 'b', "\x61" 'a', written
 * so because a hex escape would swallow them), a one-byte bin, the largest uint64. */
static const char *const DICT[] = {"\xa1o",
                                   "\xa2\x62y",
                                   "\xa1k",
                                   "\xa1t",
                                   "\xa1v",
                                   "\xa3key",
                                   "\xa6prefix",
                                   "\xa4type",
                                   "\xa3\x61ll",
                                   "\xc4\x01k",
                                   "\xcf\xff\xff\xff\xff\xff\xff\xff\xff"};
#define NDICT (sizeof(DICT) / sizeof(DICT[0]))

typedef struct seed {
    uint8_t p[FUZZ_INVAL_SEED_MAX];
    size_t len;
    int valid;
} seed_t;

static int write_seeds(const char *dir, const seed_t *seeds, int n) {
    for (int i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/seed-inval-%02d", dir, i);
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
            case 5: { /* insert a fragment of the format */
                const char *d = DICT[rnd() % NDICT];
                size_t k = strlen(d);
                if (len + k <= INPUT_MAX) {
                    memmove(out + at + k, out + at, len - at);
                    memcpy(out + at, d, k);
                    len += k;
                }
                break;
            }
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
    while (nseeds < SEEDS_MAX && (rc = fuzz_inval_seed(nseeds, seeds[nseeds].p, &seeds[nseeds].len,
                                                       &seeds[nseeds].valid)) > 0)
        nseeds++;
    if (rc < 0 || nseeds == 0) {
        fprintf(stderr, "fuzz_inval: cannot build seed %d\n", nseeds);
        failed = 1;
    }
    if (!failed && seed_dir)
        return write_seeds(seed_dir, seeds, nseeds);
    /* Each seed decodes exactly when it should: otherwise the target tests less than it says. */
    int nvalid = 0;
    for (int i = 0; i < nseeds && !failed; i++) {
        int ok = fuzz_inval_one(seeds[i].p, seeds[i].len);
        nvalid += ok;
        if (ok != seeds[i].valid) {
            fprintf(stderr, "fuzz_inval: seed %d %s\n", i,
                    seeds[i].valid ? "does not decode" : "is malformed but decodes");
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
        decoded += fuzz_inval_one(in, n);
        free(in);
    }
    printf("fuzz_inval: %d seeds (%d valid), %ld mutations, %ld decoded, %ld refused\n", nseeds,
           nvalid, failed ? 0 : rounds, decoded, failed ? 0 : rounds - decoded);
    printf("%d passed, %d failed\n", failed ? 0 : 1, failed ? 1 : 0);
    return failed ? 1 : 0;
}
