/*
 * Secrets out of every output: the one function that takes passwords out of text before khalad,
 * khalactl or the library print it, log it or send it to a peer (issue 10, bug 5).
 *
 * What counts as a secret here is the password of a URL's userinfo
 * (scheme://user:PASSWORD@host), which is how [l2] redis_url carries Redis credentials; it is
 * the only secret khalad's configuration holds. The redaction works on any text (a URL alone,
 * a whole INI dump, a log message, an error from a driver), so that no caller has to know where
 * in its text a URL sits. Start at khala__redact().
 */
#ifndef KHALA_LIB_REDACT_H
#define KHALA_LIB_REDACT_H

#include <stddef.h>

/** What a password is replaced with. */
#define KHALA_REDACTED "***"

/**
 * @brief Copy @p in to @p out with the password of every URL userinfo replaced by
 *        KHALA_REDACTED: "redis://app:s3cret@h:6379/2" becomes "redis://app:***@h:6379/2",
 *        "rediss://:tok@h" becomes "rediss://:***@h". A userinfo without ':' (a user name alone)
 *        is kept. Text that holds no "://" is copied as is.
 * @param[in] in NUL-terminated text.
 * @param[out] out the redacted text, always NUL-terminated when @p outlen > 0; truncated to fit
 *             (never inside a password: a cut password is not written at all).
 * @param[in] outlen size of @p out.
 * @return @p out, so that the call can be an argument of a format.
 * @note Pure function; safe from any thread. @p in and @p out must not overlap.
 */
const char *khala__redact(const char *in, char *out, size_t outlen);

/**
 * @brief Whether @p text holds a URL password that khala__redact() would replace.
 * @param[in] text NUL-terminated text.
 * @return 1 or 0.
 */
int khala__redact_needed(const char *text);

#endif /* KHALA_LIB_REDACT_H */
