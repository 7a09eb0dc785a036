/*
 * Helpers shared by the tests: unique segment names (Criterion forks each test, so a name holds
 * the pid and the test's own tag) and small configurations.
 */
#ifndef KHALA_TESTS_TESTUTIL_H
#define KHALA_TESTS_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

#include "l1_table.h"
#include "segment.h"

/* A cache name unique to this process and tag: "t<pid>-<tag>". Returns a static buffer. */
const char *tu_name(const char *tag);

/* A small configuration: max_items items, max_bytes bytes, the other sizes at defaults. */
khala_seg_config_t tu_config(uint32_t max_items, uint64_t max_bytes);

/* Open a writer on a fresh segment; aborts the test on failure. */
khala_l1_t *tu_writer(const char *name, uint32_t max_items, uint64_t max_bytes);

/* xorshift64: a fast, fixed-seed pseudo-random sequence for workloads; state must not be 0. */
uint64_t tu_rand(uint64_t *state);
/* A key index in [0, n): half the draws from the first `hot` keys, half from all of them. */
uint32_t tu_pick_key(uint64_t *state, uint32_t hot, uint32_t n);

/* Fill buf with a value for (key, round): the key, the round and a checksum of the rest, so a
 * reader can prove it read exactly a value that was written for that key. len >= 24. */
void tu_value_make(uint8_t *buf, size_t len, uint64_t key, uint64_t round);
/* 1 if buf (len bytes) is a value tu_value_make made for key. */
int tu_value_ok(const uint8_t *buf, size_t len, uint64_t key);

#endif /* KHALA_TESTS_TESTUTIL_H */
