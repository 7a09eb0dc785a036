/*
 * Detail messages for internal calls that take a caller's (err, errlen) buffer: format the
 * message (truncated safely; err may be NULL) and return the code, so that a failure is one
 * statement: `return khala__errbuf(err, errlen, KHALA_ECONFIG, "max_items is %u", n);`.
 */
#ifndef KHALA_LIB_ERRBUF_H
#define KHALA_LIB_ERRBUF_H

#include <stddef.h>

/* Write the message into err (when err and errlen are not 0) and return rc. */
int khala__errbuf(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The same where the code is decided elsewhere: write the message only. A module whose message
 * buffer sits in a handle wraps this in a one-line macro naming that buffer (for example
 * `#define terr(rt, ...) khala__errbuf_set(rt->tier.err, sizeof(rt->tier.err), __VA_ARGS__)`),
 * so that every formatted detail message goes through khala__errbuf. */
#define khala__errbuf_set(err, errlen, ...) ((void)khala__errbuf((err), (errlen), 0, __VA_ARGS__))

/* Bytes of a key (or any peer's string) a message quotes, and the room khala__errbuf_quote needs
 * for them: each byte may become \xNN, plus "..." and the NUL. */
#define KHALA_ERRBUF_QUOTE_MAX 40u
#define KHALA_ERRBUF_QUOTE_CAP (KHALA_ERRBUF_QUOTE_MAX * 4u + 4u)

/* The one way a key is shown in a message: its first KHALA_ERRBUF_QUOTE_MAX bytes, printable
 * ASCII as is, anything else (and \ and ') as \xNN, "..." when cut; no quotes around it. out
 * holds cap bytes (KHALA_ERRBUF_QUOTE_CAP shows every quoted byte; less cuts earlier). Returns
 * out, so that it can be an argument of the message's format. */
const char *khala__errbuf_quote(const void *p, size_t len, char *out, size_t cap);

#endif /* KHALA_LIB_ERRBUF_H */
