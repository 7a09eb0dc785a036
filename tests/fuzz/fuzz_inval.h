/* The invalidation-message fuzz target's pieces, shared by its libFuzzer entry and its replay
 * program. */
#ifndef KHALA_TESTS_FUZZ_INVAL_H
#define KHALA_TESTS_FUZZ_INVAL_H

#include <stddef.h>
#include <stdint.h>

/* Largest seed, in bytes: a message of KHALA_COH_MSG_MAX and one past it. */
#define FUZZ_INVAL_SEED_MAX 2048

/* Write seed number i into out (FUZZ_INVAL_SEED_MAX bytes) and its length into *len: valid
 * messages of every kind (made by khala__coherence_encode), valid ones the encoder never makes
 * (other integer widths, a str key, unknown fields, another field order), and malformed ones.
 * *valid says whether it must decode. 1 when it wrote one, 0 when i is past the last seed, -1
 * when building it failed. */
int fuzz_inval_seed(int i, uint8_t *out, size_t *len, int *valid);

/* Decode these bytes as a message heard on the channel and check what is decoded (see
 * fuzz_inval.c). 1 if they decoded, 0 if refused; never crashes whatever the bytes, and aborts
 * when a property fails (a bug the fuzzer reports as a crash). */
int fuzz_inval_one(const uint8_t *data, size_t size);

#endif /* KHALA_TESTS_FUZZ_INVAL_H */
