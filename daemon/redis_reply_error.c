/*
 * Redis error replies: level down, or this request refused (daemon/redis_reply_error.h).
 *
 * HOW IT WORKS
 *
 * Redis starts every error reply with an upper-case code word ("-WRONGTYPE Operation against a
 * key...", "-OOM command not allowed...", "-ERR invalid expire time..."). A short list of codes
 * means the server as a whole cannot serve now, or will refuse every later command of ours
 * (credentials); they make the level down, so that reads skip it and writes queue until health()
 * sees it back. Every other code is about the one command: the request fails with
 * KHALA_EREFUSED and Redis's text, and the level stays up.
 *
 * The list errs towards "refused": an unknown code fails one request, where marking the level
 * down on it would stall every client's writes behind a queue that the same error keeps from
 * draining. A script's errors come back with their own code first (Redis 7), so the put script's
 * SET is classified like a plain SET.
 */
#include "redis_reply_error.h"

#include <string.h>

#include "khala/error.h"

/* Codes that mean "the server cannot serve anyone now" (see the header). */
static const char *const down_codes[] = {
    "LOADING",  "BUSY",       "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "MISCONF",
    "READONLY", "NOREPLICAS", "NOAUTH",     "WRONGPASS",   "NOPERM",
};

int khala__redis_error_code(const char *str, size_t len) {
    size_t word = 0;
    while (word < len && str[word] != ' ' && str[word] != '\0')
        word++;
    for (size_t i = 0; i < sizeof(down_codes) / sizeof(down_codes[0]); i++)
        if (strlen(down_codes[i]) == word && memcmp(str, down_codes[i], word) == 0)
            return KHALA_ETIER;
    return KHALA_EREFUSED;
}
