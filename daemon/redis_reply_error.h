/*
 * What a Redis error reply means for the level: the server cannot serve (the level is down), or
 * it refused this one command (the level is up). The Redis driver (daemon/tier_redis.c) maps
 * every error reply to a request through khala__redis_error_code(); start there.
 *
 * Why: an error reply used to mark L2 down whatever it said, so one put Redis refused (an expiry
 * out of range, a key of another Redis type, out of memory for that write) made L2 look down to
 * every client and queued the write for ever (issue 10, bug 7).
 */
#ifndef KHALA_DAEMON_REDIS_REPLY_ERROR_H
#define KHALA_DAEMON_REDIS_REPLY_ERROR_H

#include <stddef.h>

/**
 * @brief The code a request gets for a Redis error reply with text @p str (@p len bytes).
 * @param[in] str the reply's text (hiredis's redisReply.str); may be NULL when @p len is 0.
 * @param[in] len its bytes.
 * @return KHALA_ETIER when the text says the server cannot serve anyone now: LOADING, BUSY,
 *         MASTERDOWN, CLUSTERDOWN, TRYAGAIN, MISCONF, READONLY, NOREPLICAS, and the
 *         authentication and permission errors (NOAUTH, WRONGPASS, NOPERM), which refuse every
 *         later command too; KHALA_EREFUSED for any other error reply (ERR, WRONGTYPE, OOM,
 *         EXECABORT, a script's own error...), which concerns this command alone.
 * @note Pure function; safe from any thread. Redirections (MOVED, ASK) and NOSCRIPT are the
 *       router's (daemon/redis_cluster.c) and never reach it.
 */
int khala__redis_error_code(const char *str, size_t len);

#endif /* KHALA_DAEMON_REDIS_REPLY_ERROR_H */
