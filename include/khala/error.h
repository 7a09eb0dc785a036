/*
 * khala-cache error codes.
 *
 * Every fallible call in khala-cache returns an int: 0 on success, a negative code on failure.
 * System failures pass through as -errno (for example -ENOMEM, -ERANGE). Codes specific to
 * khala-cache live in a private range, KHALA_ERR_BASE down to KHALA_ERR_BASE - 99, below every
 * errno value, so the two ranges never collide. khala_strerror() describes both ranges.
 *
 * The list below is the single source of truth: KHALA_ERRNO_MAP generates the enum,
 * khala_strerror() and khala_err_name(). Start reading at KHALA_ERRNO_MAP.
 */
#ifndef KHALA_ERROR_H
#define KHALA_ERROR_H

#include "khala/version.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Top of the khala-specific range; every khala code is at or below it. */
#define KHALA_ERR_BASE (-1000)

/*
 * X(name, offset, message). The code's value is KHALA_ERR_BASE - offset. Never renumber a code:
 * callers in other languages store them.
 */
#define KHALA_ERRNO_MAP(X)                                                                         \
    X(ENOTFOUND, 0, "no such key")                                                                 \
    X(ETOOBIG, 1, "value too large")                                                               \
    X(EVERSION, 2, "version conflict (compare-and-set failed)")                                    \
    X(EDAEMON, 3, "khalad is unreachable")                                                         \
    X(ELAYOUT, 4, "segment layout or generation does not match")                                   \
    X(EKEY, 5, "bad key (empty or longer than KHALA_KEY_MAX)")                                     \
    X(ECORRUPT, 6, "segment is corrupted")                                                         \
    X(ENOREADER, 7, "no free reader slot")                                                         \
    X(EFULL, 8, "cache is full and nothing can be evicted")                                        \
    X(EBLOCKED, 9, "memory reclamation is blocked by a reader inside a read section")              \
    X(ESECTION, 10, "read section misuse (nested, missing or crossing threads)")                   \
    X(ECONFIG, 11, "bad configuration")                                                            \
    X(ENAME, 12, "bad cache name")                                                                 \
    X(EEXIST, 13, "a live writer already owns this segment")                                       \
    X(EPROTO, 14, "malformed protocol frame")                                                      \
    X(ETIER, 15, "a slower level (L2 or L3) is unreachable")                                       \
    X(EQUEUE, 16, "the write queue of a slower level is full; retry later")                        \
    X(EDENIED, 17, "permission denied (the peer lacks the right this request needs)")              \
    X(ELIMIT, 18, "a limit of khalad was reached (connections or buffered bytes); retry later")    \
    X(EINVAL, 19, "invalid argument (for example a TTL above the maximum)")                        \
    X(EAUTH, 20, "a stored value failed authentication (tampered, or its key is unknown)")         \
    X(EREFUSED, 21, "a slower level refused this one request (reason in the message); it is up")

/** khala-specific error codes. Values are KHALA_ERR_BASE - offset. */
typedef enum khala_errno {
#define KHALA__ERR_ENUM(name, off, msg) KHALA_##name = KHALA_ERR_BASE - (off),
    KHALA_ERRNO_MAP(KHALA__ERR_ENUM)
#undef KHALA__ERR_ENUM
        KHALA_ERR_LAST = KHALA_ERR_BASE - 99 /**< lowest value of the khala range */
} khala_errno_t;

/**
 * @brief Describe an error code in words.
 * @param[in] err a code returned by a khala call: 0, a negative errno or a KHALA_E* code.
 * @return a static, NUL-terminated message; never NULL. Unknown codes get "unknown error".
 * @note Safe from any thread; the string must not be freed.
 */
KHALA_API const char *khala_strerror(int err);

/**
 * @brief Name an error code, as written in the source ("KHALA_ENOTFOUND", "ENOMEM").
 * @param[in] err a code returned by a khala call.
 * @return a static, NUL-terminated name; "OK" for 0 and "UNKNOWN" for codes outside both ranges.
 * @note Safe from any thread; the string must not be freed.
 */
KHALA_API const char *khala_err_name(int err);

#ifdef __cplusplus
}
#endif

#endif /* KHALA_ERROR_H */
