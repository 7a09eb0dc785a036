/*
 * Deadlines in milliseconds without overflow: every "now + ttl" and every conversion of a
 * deadline between clocks goes through khala__deadline_add(), which saturates instead of
 * wrapping. A TTL near 2^63 ms once wrapped a queued write's deadline negative, so it drained
 * as already expired (issue 10, bug 7); TTLs are now bounded at the protocol boundary
 * (KHALA_TTL_MAX_MS), and this keeps a deadline meaningful whatever reaches it.
 */
#ifndef KHALA_LIB_DEADLINE_H
#define KHALA_LIB_DEADLINE_H

#include <stdint.h>

/**
 * @brief @p t + @p d, clamped to [INT64_MIN, INT64_MAX] instead of overflowing.
 * @param[in] t a time (or deadline) in ms. @param[in] d a signed duration in ms.
 * @return the sum, or INT64_MAX / INT64_MIN when it does not fit.
 * @note Pure; safe from any thread.
 */
static inline int64_t khala__deadline_add(int64_t t, int64_t d) {
    if (d > 0 && t > INT64_MAX - d)
        return INT64_MAX;
    if (d < 0 && t < INT64_MIN - d)
        return INT64_MIN;
    return t + d;
}

/**
 * @brief The absolute deadline of a relative TTL: 0 (no expiry) for @p ttl_ms <= 0, else
 *        @p now_ms + @p ttl_ms, saturated at INT64_MAX (never expires in practice).
 * @param[in] now_ms the clock's now. @param[in] ttl_ms the time to live in ms.
 * @return the deadline on the same clock, or 0.
 * @note Pure; safe from any thread.
 */
static inline int64_t khala__deadline_of(int64_t now_ms, int64_t ttl_ms) {
    return ttl_ms > 0 ? khala__deadline_add(now_ms, ttl_ms) : 0;
}

#endif /* KHALA_LIB_DEADLINE_H */
