/* The segment fuzz target's pieces, shared by its libFuzzer entry and its replay program. */
#ifndef KHALA_TESTS_FUZZ_SEGMENT_H
#define KHALA_TESTS_FUZZ_SEGMENT_H

#include <stddef.h>
#include <stdint.h>

/* Create the cache the target writes into; *image is a valid data file (owned by the target)
 * of *len bytes, the seed of every mutation. 0 or -1. */
int fuzz_segment_setup(uint8_t **image, size_t *len);
/* Attach to a data file made of exactly these bytes and read from it: 1 if it attached, 0 if
 * it was refused. Never crashes, whatever the bytes. */
int fuzz_segment_one(const uint8_t *data, size_t size);
/* Remove the cache. */
void fuzz_segment_teardown(void);

#endif /* KHALA_TESTS_FUZZ_SEGMENT_H */
