/* The frame fuzz target's pieces, shared by its libFuzzer entry and its replay program. */
#ifndef KHALA_TESTS_FUZZ_FRAME_H
#define KHALA_TESTS_FUZZ_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"

/* Append seed number i (a valid frame: requests and replies of every op, made by the encoder)
 * to out. 1 when it appended one, 0 when i is past the last seed, -1 when the encoder failed. */
int fuzz_frame_seed(int i, khala_buf_t *out);

/* Run bytes through khala__proto_frame_check and both decoders, as a stream of frames and as
 * one bare body; re-encode what decodes and check that it decodes to the same message. Returns
 * how many messages decoded; never crashes whatever the bytes, and aborts when the round-trip
 * property fails (a bug the fuzzer reports as a crash). */
int fuzz_frame_one(const uint8_t *data, size_t size);

#endif /* KHALA_TESTS_FUZZ_FRAME_H */
