/*
 * Error codes to words. The table is generated from KHALA_ERRNO_MAP in include/khala/error.h,
 * so a code cannot exist without its message and name. Negative errno values go to strerror's
 * list through strerrordesc_np / strerrorname_np (glibc 2.32), which are thread-safe and static.
 */
#include "khala/error.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "debug.h"
#include "errbuf.h"

const char *khala_strerror(int err) {
    if (err == 0)
        return "success";
    switch (err) {
#define KHALA__ERR_MSG(name, off, msg)                                                             \
    case KHALA_##name:                                                                             \
        return msg;
        KHALA_ERRNO_MAP(KHALA__ERR_MSG)
#undef KHALA__ERR_MSG
        default:
            break;
    }
    if (err < 0 && err > KHALA_ERR_BASE) {
        const char *s = strerrordesc_np(-err);
        if (s)
            return s;
    }
    return "unknown error";
}

const char *khala_err_name(int err) {
    if (err == 0)
        return "OK";
    switch (err) {
#define KHALA__ERR_NAME(name, off, msg)                                                            \
    case KHALA_##name:                                                                             \
        return "KHALA_" #name;
        KHALA_ERRNO_MAP(KHALA__ERR_NAME)
#undef KHALA__ERR_NAME
        default:
            break;
    }
    if (err < 0 && err > KHALA_ERR_BASE) {
        const char *s = strerrorname_np(-err);
        if (s)
            return s;
    }
    return "UNKNOWN";
}

int khala__errbuf(char *err, size_t errlen, int rc, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

const char *khala__errbuf_quote(const void *p, size_t len, char *out, size_t cap) {
    const uint8_t *s = p;
    size_t o = 0, i = 0;
    if (!cap)
        return out;
    for (; i < len && i < KHALA_ERRBUF_QUOTE_MAX && o + 8 <= cap; i++) {
        if (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\\' && s[i] != '\'')
            out[o++] = (char)s[i];
        else
            o += (size_t)snprintf(out + o, 5, "\\x%02x", s[i]);
    }
    if (i < len && o + 4 <= cap) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
    return out;
}

void khala__assert_fail(const char *what, const char *file, int line, const char *func) {
    fprintf(stderr, "khala: assertion failed: %s (%s:%d, %s)\n", what, file, line, func);
    abort();
}
