/* The segment fuzz target's pieces, shared by its libFuzzer entry and its replay program. */
#ifndef KHALA_TESTS_FUZZ_SEGMENT_H
#define KHALA_TESTS_FUZZ_SEGMENT_H

#include <stddef.h>
#include <stdint.h>

/* Create the cache the target writes into; *image is a valid data file (owned by the target)
 * of *len bytes, the seed of every mutation. 0 or -1. */
int fuzz_segment_setup(uint8_t **image, size_t *len);
/* Attach to a data file made of exactly these bytes and read from it, then restart a writer
 * on it (KHALA_L1_REATTACH): 1 if the reader attached, 0 if it was refused. Never crashes,
 * whatever the bytes; aborts if the writer adopts a segment and then breaks it. */
int fuzz_segment_one(const uint8_t *data, size_t size);
/* How many restarts adopted the segment and how many made it anew, so far. */
void fuzz_segment_counts(long *reattached, long *rebuilt);
/* Remove the cache. */
void fuzz_segment_teardown(void);

#endif /* KHALA_TESTS_FUZZ_SEGMENT_H */
