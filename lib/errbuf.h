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

#endif /* KHALA_LIB_ERRBUF_H */
