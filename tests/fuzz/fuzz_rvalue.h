/* The Redis value fuzz target's pieces, shared by its libFuzzer entry and its replay program. */
#ifndef KHALA_TESTS_FUZZ_RVALUE_H
#define KHALA_TESTS_FUZZ_RVALUE_H

#include <stddef.h>
#include <stdint.h>

/* Largest seed, in bytes (the seeds stay well below the libFuzzer max_len of scripts/test.sh). */
#define FUZZ_RVALUE_SEED_MAX 1024

/* Write seed number i into out (FUZZ_RVALUE_SEED_MAX bytes) and its length into *len: values
 * made by khala__tier_redis_value_encode (empty, small, with bin8 and bin16 headers, every
 * type), valid ones it never writes (a wider bin header than needed), and byte strings that are
 * not ours. *valid says whether it must decode. 1 when it wrote one, 0 when i is past the last
 * seed, -1 when building it failed. */
int fuzz_rvalue_seed(int i, uint8_t *out, size_t *len, int *valid);

/* Decode these bytes as a value read back from Redis and check the result (see fuzz_rvalue.c).
 * 1 if they decoded, 0 if they read as a miss; never crashes whatever the bytes, and aborts when
 * a property fails (a bug the fuzzer reports as a crash). */
int fuzz_rvalue_one(const uint8_t *data, size_t size);

#endif /* KHALA_TESTS_FUZZ_RVALUE_H */
