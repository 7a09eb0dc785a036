/*
 * Precondition and invariant assertions, SQLite style: on in Debug builds and in every build
 * with the tests (KHALA_ASSERTS, which defines KHALA_DEBUG), compiled out elsewhere, so the
 * worker library a user installs from a Release build never aborts on them. They state what a
 * function's caller must guarantee (a lock held by a *_locked function, a read section around
 * a lookup, an offset inside the segment); conditions that can occur in the field (bad input,
 * a corrupt segment, a dead peer) are errors, never assertions (STYLE.md).
 */
#ifndef KHALA_LIB_DEBUG_H
#define KHALA_LIB_DEBUG_H

/* Report a failed assertion on stderr and abort (lib/error.c). Out of line and cold, so an
 * assertion costs its caller a compare and a branch. */
__attribute__((cold, noreturn)) void khala__assert_fail(const char *what, const char *file,
                                                        int line, const char *func);

#ifdef KHALA_DEBUG

#define KHALA_ASSERT(x)                                                                            \
    (__builtin_expect(!!(x), 1) ? (void)0 : khala__assert_fail(#x, __FILE__, __LINE__, __func__))
#else
#define KHALA_ASSERT(x) ((void)0)
#endif

/* A read section is open on the slot (its epoch is published): lookups run only inside one. */
#define KHALA_ASSERT_IN_READ(slot) KHALA_ASSERT(khala_load_relaxed(&(slot)->epoch) != 0)

#endif /* KHALA_LIB_DEBUG_H */
