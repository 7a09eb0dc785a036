/*
 * Plain driver of tests/fuzz/fuzz_frame.c, run by ctest in every build: the seed frames (a
 * request and a reply of every op, made by the encoder), then a fixed number of deterministic
 * mutations of them, each fed to the target. Mutations flip bits, overwrite bytes with values
 * that matter to msgpack (type bytes, 0xc1, lengths of 0, 0xff..), insert and delete bytes,
 * rewrite the length prefix, truncate, and splice two seeds. The target must survive all of
 * them; the program counts how many inputs decoded, and fails if a seed does not decode (the
 * target would then test nothing). Each seed is used twice: as a frame, and as its bare body.
 * The engine and main() are shared with the other replay drivers (fuzz_mutate.c).
 *
 *   fuzz_frame_replay [ROUNDS]          replay (default 100000 mutations)
 *   fuzz_frame_replay --write-seed DIR  write the seed frames into DIR for libFuzzer
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_frame.h"
#include "fuzz_mutate.h"
#include "fuzz_rand.h"

/* Bytes that change how msgpack reads what follows. */
static const uint8_t interesting[] = {
    0x00, 0x01, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6,
    0xc7, 0xc9, 0xca, 0xcb, 0xcf, 0xd3, 0xd4, 0xd8, 0xd9, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff};

/* The frame's own edit: rewrite the length prefix, with a random value or one near the length
 * of what follows. */
static size_t edit_prefix(uint8_t *out, size_t len, size_t at, size_t max, uint64_t *rng) {
    (void)at;
    (void)max;
    if (len >= 4) {
        uint32_t v = fuzz_rand(rng) % 3 == 0 ? (uint32_t)fuzz_rand(rng)
                                             : (uint32_t)(len - 4 + (fuzz_rand(rng) % 9) - 4);
        out[0] = (uint8_t)(v >> 24);
        out[1] = (uint8_t)(v >> 16);
        out[2] = (uint8_t)(v >> 8);
        out[3] = (uint8_t)v;
    }
    return len;
}

/* The seed frames made by the encoder, then the same messages as bare bodies, for the target's
 * body path; all of them must decode. */
static int make_seeds(fuzz_seed_t *seeds, int max, int *n) {
    int nseeds = 0, rc;
    for (;;) {
        khala_buf_t b;
        khala__proto_buf_init(&b);
        rc = fuzz_frame_seed(nseeds, &b);
        if (rc <= 0 || nseeds == max) {
            khala__proto_buf_free(&b);
            break;
        }
        seeds[nseeds] = (fuzz_seed_t){.p = b.data, .len = b.len, .valid = 1};
        nseeds++;
    }
    int nframes = nseeds;
    for (int i = 0; i < nframes && nseeds < max && rc >= 0; i++) {
        const uint8_t *f = seeds[i].p;
        size_t len = seeds[i].len - 4;
        if (len != ((size_t)f[0] << 24 | (size_t)f[1] << 16 | (size_t)f[2] << 8 | f[3]))
            continue; /* several frames: no single body */
        uint8_t *p = malloc(len);
        if (!p)
            return -2;
        memcpy(p, seeds[i].p + 4, len);
        seeds[nseeds] = (fuzz_seed_t){.p = p, .len = len, .valid = 1};
        nseeds++;
    }
    *n = nseeds;
    return rc < 0 ? -1 : 0;
}

int main(int argc, char **argv) {
    static const fuzz_replay_target_t target = {
        .name = "frame",
        .rng_seed = 0x2545f4914f6cdd1dull,
        .seeds_max = 80,
        .mutator = {.interesting = interesting,
                    .ninteresting = sizeof(interesting),
                    .edit = edit_prefix,
                    .input_max = 8192},
        .make_seeds = make_seeds,
        .seed_error = "the encoder refused seed",
        .run = fuzz_frame_one,
        .invalid_decodes = "decodes", /* unused: every seed is valid */
        .show_valid = 0,
        .decoded_label = "decoded something",
    };
    return fuzz_replay_main(argc, argv, &target);
}
