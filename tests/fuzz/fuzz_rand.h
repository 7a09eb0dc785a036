/* The fixed-seed pseudo-random sequence the fuzz replay drivers mutate with (xorshift64), so
 * that every replay is the same run after run. state must not be 0. */
#ifndef KHALA_TESTS_FUZZ_RAND_H
#define KHALA_TESTS_FUZZ_RAND_H

#include <stdint.h>

static inline uint64_t fuzz_rand(uint64_t *state) {
    uint64_t s = *state;
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return *state = s;
}

#endif /* KHALA_TESTS_FUZZ_RAND_H */
