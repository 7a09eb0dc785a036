/*
 * Plain driver of tests/fuzz/fuzz_rvalue.c, run by ctest in every build: the seed values (made
 * by the encoder, valid ones it never writes, byte strings that are not ours), then a fixed
 * number of deterministic mutations of them, each fed to the target. Mutations flip bits,
 * overwrite bytes with values that matter to the format (0x93, 0xcf, the bin headers, types
 * 7 and 8, 0xff..), rewrite the bin header with a length that matches the bytes that follow or
 * misses by a little, insert and delete bytes, truncate, and splice two seeds. The target must
 * survive all of them; the program counts how many decoded, and fails if a valid seed is
 * refused or another decodes (the target would then test less than it says). Last, one value
 * of 64 KiB checks the bin32 header the encoder writes for large values. The engine and main()
 * are shared with the other replay drivers (fuzz_mutate.c).
 *
 *   fuzz_rvalue_replay [ROUNDS]          replay (default 100000 mutations)
 *   fuzz_rvalue_replay --write-seed DIR  write the seeds into DIR for libFuzzer
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "fuzz_mutate.h"
#include "fuzz_rand.h"
#include "fuzz_rvalue.h"
#include "khala/cache.h"
#include "tier_redis.h"

/* Bytes that change how the value is read. */
static const uint8_t interesting[] = {0x00, 0x01, 0x07, 0x08, 0x7f, 0x80, 0x92, 0x93, 0x94,
                                      0xc0, 0xc1, 0xc4, 0xc5, 0xc6, 0xce, 0xcf, 0xd9, 0xff};

/* The value's own edit: a new bin header (at byte 11) with the length of what follows, or
 * nearly. */
static size_t edit_bin_header(uint8_t *out, size_t len, size_t at, size_t max, uint64_t *rng) {
    (void)at;
    if (len >= 12 && len + 8 <= max) {
        unsigned old = out[11] >= 0xc4 && out[11] <= 0xc6 ? 1u << (out[11] - 0xc4) : 0;
        size_t from = 12 + old <= len ? 12 + old : 12;
        unsigned w = (unsigned)(fuzz_rand(rng) % 3), hl = 1u << w;
        uint64_t n = len - from;
        if (fuzz_rand(rng) % 2)
            n += (fuzz_rand(rng) % 5) - 2;
        memmove(out + 12 + hl, out + from, len - from);
        len = 12 + hl + (len - from);
        out[11] = (uint8_t)(0xc4 + w);
        for (unsigned i = 0; i < hl; i++)
            out[12 + i] = (uint8_t)(n >> (8 * (hl - 1 - i)));
    }
    return len;
}

/* The seed values of fuzz_rvalue_seed, each with whether it must decode. */
static int make_seeds(fuzz_seed_t *seeds, int max, int *n) {
    return fuzz_make_seeds_from(seeds, max, n, FUZZ_RVALUE_SEED_MAX, fuzz_rvalue_seed);
}

/* One value large enough for the bin32 header: too large to mutate by the thousand. */
static int check_large_value(void) {
    khala_tier_value_t v = {.len = 1u << 16, .version = 7, .type = KHALA_TYPE_EMBEDDING};
    msgpack_sbuffer sb;
    int failed = 0;
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
    return failed;
}

int main(int argc, char **argv) {
    static const fuzz_replay_target_t target = {
        .name = "rvalue",
        .rng_seed = 0xbb67ae8584caa73bull,
        .seeds_max = 64,
        .mutator = {.interesting = interesting,
                    .ninteresting = sizeof(interesting),
                    .edit = edit_bin_header,
                    .input_max = 4096},
        .make_seeds = make_seeds,
        .seed_error = "cannot build seed",
        .run = fuzz_rvalue_one,
        .invalid_decodes = "is not ours but decodes",
        .show_valid = 1,
        .decoded_label = "decoded",
        .finish = check_large_value,
    };
    return fuzz_replay_main(argc, argv, &target);
}
