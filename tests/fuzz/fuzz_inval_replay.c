/*
 * Plain driver of tests/fuzz/fuzz_inval.c, run by ctest in every build: the seed messages
 * (valid ones of every kind, valid ones the encoder never writes, malformed ones), then a fixed
 * number of deterministic mutations of them, each fed to the target. Mutations flip bits,
 * overwrite bytes with values that matter to msgpack (type bytes, 0xc1, lengths of 0, 0xff..),
 * insert field names and kind names, insert and delete bytes, truncate, and splice two seeds.
 * The target must survive all of them; the program counts how many decoded, and fails if a
 * valid seed is refused or a malformed one decodes (the target would then test less than it
 * says). The engine and main() are shared with the other replay drivers (fuzz_mutate.c).
 *
 *   fuzz_inval_replay [ROUNDS]          replay (default 100000 mutations)
 *   fuzz_inval_replay --write-seed DIR  write the seeds into DIR for libFuzzer
 */
#include "fuzz_inval.h"
#include "fuzz_mutate.h"

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

/* The seed messages of fuzz_inval_seed, each with whether it must decode. */
static int make_seeds(fuzz_seed_t *seeds, int max, int *n) {
    return fuzz_make_seeds_from(seeds, max, n, FUZZ_INVAL_SEED_MAX, fuzz_inval_seed);
}

int main(int argc, char **argv) {
    static const fuzz_replay_target_t target = {
        .name = "inval",
        .rng_seed = 0x6a09e667f3bcc909ull,
        .seeds_max = 64,
        .mutator = {.interesting = interesting,
                    .ninteresting = sizeof(interesting),
                    .dict = DICT,
                    .ndict = sizeof(DICT) / sizeof(DICT[0]),
                    .input_max = 4096},
        .make_seeds = make_seeds,
        .seed_error = "cannot build seed",
        .run = fuzz_inval_one,
        .invalid_decodes = "is malformed but decodes",
        .show_valid = 1,
        .decoded_label = "decoded",
    };
    return fuzz_replay_main(argc, argv, &target);
}
