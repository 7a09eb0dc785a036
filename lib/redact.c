/*
 * Redaction of URL passwords (lib/redact.h).
 *
 * HOW IT WORKS
 *
 * The text is copied byte by byte. At each "://" the authority that follows is looked at: it
 * ends at the first byte that cannot be part of one ('/', '?', '#', a blank, a quote, a control
 * byte, the end). When the authority holds an '@', everything before its last '@' is the
 * userinfo (the rule khala__config_redis_url_parse() uses), and the part of the userinfo after
 * its first ':' is the password: it is written as KHALA_REDACTED and skipped.
 *
 * Invariant: no byte of a password reaches out, even when out is too small (the copy stops
 * before the password rather than cutting it).
 *
 * Rejected: redacting only [l2] redis_url where it is printed. Drivers echo the URL in their
 * errors, error messages travel to peers and logs, and every new print site would have to
 * remember; one function over the final text cannot be forgotten by a new message.
 */
#include "redact.h"

#include <string.h>

#include "debug.h"
/* Bytes that end a URL's authority when they appear in free text. */
static int ends_authority(char c) {
    return c == '\0' || c == '/' || c == '?' || c == '#' || c == ' ' || c == '\t' || c == '"' ||
           c == '\'' || c == ',' || c == ';' || c == '<' || c == '>' || (unsigned char)c < 0x20;
}

/* Where the password of the authority at p begins and ends, or 0 when it has none. */
static int find_password(const char *p, const char **pw, const char **pw_end) {
    const char *end = p, *at = NULL;
    while (!ends_authority(*end)) {
        if (*end == '@')
            at = end;
        end++;
    }
    if (!at)
        return 0;
    const char *colon = memchr(p, ':', (size_t)(at - p));
    if (!colon)
        return 0;
    *pw = colon + 1;
    *pw_end = at;
    return 1;
}

const char *khala__redact(const char *in, char *out, size_t outlen) {
    size_t o = 0;
    KHALA_ASSERT(in && out && in != out);
    if (outlen == 0)
        return out;
    for (const char *p = in; *p;) {
        const char *pw, *pw_end;
        if (p[0] == ':' && p[1] == '/' && p[2] == '/' && find_password(p + 3, &pw, &pw_end)) {
            /* Copy up to the password, then the mark, then skip the password. */
            size_t head = (size_t)(pw - p), mark = strlen(KHALA_REDACTED);
            if (o + head >= outlen)
                break;
            memcpy(out + o, p, head);
            o += head;
            if (o + mark >= outlen)
                break; /* the text stops where the password would be */
            memcpy(out + o, KHALA_REDACTED, mark);
            o += mark;
            p = pw_end;
            continue;
        }
        if (o + 1 >= outlen)
            break;
        out[o++] = *p++;
    }
    out[o] = '\0';
    return out;
}

int khala__redact_needed(const char *text) {
    for (const char *p = strstr(text, "://"); p; p = strstr(p + 3, "://")) {
        const char *pw, *pw_end;
        if (find_password(p + 3, &pw, &pw_end))
            return 1;
    }
    return 0;
}
