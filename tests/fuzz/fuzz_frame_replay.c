/*
 * Plain driver of tests/fuzz/fuzz_frame.c, run by ctest in every build: the seed frames (a
 * request and a reply of every op, made by the encoder), then a fixed number of deterministic
 * mutations of them, each fed to the target. Mutations flip bits, overwrite bytes with values
 * that matter to msgpack (type bytes, 0xc1, lengths of 0, 0xff..), insert and delete bytes,
 * rewrite the length prefix, truncate, and splice two seeds. The target must survive all of
 * them; the program counts how many inputs decoded, and fails if a seed does not decode (the
 * target would then test nothing). Each seed is used twice: as a frame, and as its bare body.
 *
 *   fuzz_frame_replay [ROUNDS]          replay (default DEFAULT_ROUNDS mutations)
 *   fuzz_frame_replay --write-seed DIR  write the seed frames into DIR for libFuzzer
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_frame.h"
#include "fuzz_rand.h"

#define DEFAULT_ROUNDS 100000
#define SEEDS_MAX 80
/* Largest mutated input: a seed plus what insertions and splices add. */
#define INPUT_MAX 8192

static uint64_t g_rng = 0x2545f4914f6cdd1dull;

static uint64_t rnd(void) {
    return fuzz_rand(&g_rng);
}

/* Bytes that change how msgpack reads what follows. */
static const uint8_t interesting[] = {
    0x00, 0x01, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6,
    0xc7, 0xc9, 0xca, 0xcb, 0xcf, 0xd3, 0xd4, 0xd8, 0xd9, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff};

typedef struct seed {
    uint8_t *p;
    size_t len;
} seed_t;

static int write_seeds(const char *dir, const seed_t *seeds, int n) {
    for (int i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/seed-frame-%02d", dir, i);
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
            case 5: /* rewrite the length prefix */
                if (len >= 4) {
                    uint32_t v =
                        rnd() % 3 == 0 ? (uint32_t)rnd() : (uint32_t)(len - 4 + (rnd() % 9) - 4);
                    out[0] = (uint8_t)(v >> 24);
                    out[1] = (uint8_t)(v >> 16);
                    out[2] = (uint8_t)(v >> 8);
                    out[3] = (uint8_t)v;
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
    seed_t seeds[SEEDS_MAX];
    int nseeds = 0, rc;
    for (;;) {
        khala_buf_t b;
        khala__proto_buf_init(&b);
        rc = fuzz_frame_seed(nseeds, &b);
        if (rc <= 0 || nseeds == SEEDS_MAX) {
            khala__proto_buf_free(&b);
            break;
        }
        seeds[nseeds].p = b.data;
        seeds[nseeds].len = b.len;
        nseeds++;
    }
    /* The same messages as bare bodies, for the target's body path. */
    int nframes = nseeds;
    for (int i = 0; i < nframes && nseeds < SEEDS_MAX && rc >= 0; i++) {
        const uint8_t *f = seeds[i].p;
        size_t n = seeds[i].len - 4;
        if (n != ((size_t)f[0] << 24 | (size_t)f[1] << 16 | (size_t)f[2] << 8 | f[3]))
            continue; /* several frames: no single body */
        uint8_t *p = malloc(n);
        if (!p)
            return 2;
        memcpy(p, seeds[i].p + 4, n);
        seeds[nseeds].p = p;
        seeds[nseeds].len = n;
        nseeds++;
    }
    int failed = rc < 0 || nseeds == 0;
    if (failed)
        fprintf(stderr, "fuzz_frame: the encoder refused seed %d\n", nseeds);
    if (!failed && seed_dir) {
        rc = write_seeds(seed_dir, seeds, nseeds);
        for (int i = 0; i < nseeds; i++)
            free(seeds[i].p);
        return rc;
    }
    /* Every seed decodes: otherwise every mutation below would be refused at the door. */
    for (int i = 0; i < nseeds && !failed; i++) {
        if (fuzz_frame_one(seeds[i].p, seeds[i].len) == 0) {
            fprintf(stderr, "fuzz_frame: seed %d does not decode\n", i);
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
        decoded += fuzz_frame_one(in, n) > 0;
        free(in);
    }
    for (int i = 0; i < nseeds; i++)
        free(seeds[i].p);
    printf("fuzz_frame: %d seeds, %ld mutations, %ld decoded something, %ld refused\n", nseeds,
           failed ? 0 : rounds, decoded, failed ? 0 : rounds - decoded);
    printf("%d passed, %d failed\n", failed ? 0 : 1, failed ? 1 : 0);
    return failed ? 1 : 0;
}
