/*
 * khalad's log (daemon/log.h): one JSON object per line on stderr. Keys and values are escaped
 * as JSON strings; nothing is buffered across lines, so a crash loses at most the line being
 * written.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "debug.h"
#include "redact.h"

/* Write s as a JSON string body (without quotes), its URL passwords redacted (lib/redact.h):
 * messages carry drivers' errors, which may quote a redis_url. */
static void json_str(FILE *f, const char *s) {
    char clean[4096];
    if (khala__redact_needed(s))
        s = khala__redact(s, clean, sizeof(clean));
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
}

void khala__log(const char *level, const char *msg, ...) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    fprintf(stderr, "{\"ts\":%lld.%03ld,\"level\":\"%s\",\"msg\":\"", (long long)ts.tv_sec,
            ts.tv_nsec / 1000000, level);
    json_str(stderr, msg);
    fputc('"', stderr);
    va_list ap;
    va_start(ap, msg);
    for (const char *k; (k = va_arg(ap, const char *)) != NULL;) {
        const char *v = va_arg(ap, const char *);
        /* The line's own fields: a second "level" (say, a cache level) makes an object whose
         * meaning depends on the JSON parser; name it "tier" or the like. */
        KHALA_ASSERT(strcmp(k, "ts") != 0 && strcmp(k, "level") != 0 && strcmp(k, "msg") != 0);
        fputs(",\"", stderr);
        json_str(stderr, k);
        fputs("\":\"", stderr);
        json_str(stderr, v ? v : "");
        fputc('"', stderr);
    }
    va_end(ap);
    fputs("}\n", stderr);
    fflush(stderr);
}
