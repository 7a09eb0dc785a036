/*
 * khalad's file-descriptor limit: raised at start from the soft RLIMIT_NOFILE to the hard one,
 * and compared with [server] max_connections, so that an operator learns at start, not under
 * load, that the limit would refuse connections before max_connections does. What khalad does
 * when descriptors run out anyway (EMFILE at accept) is daemon/server.c's business. Start at
 * khala__fdlimit_raise().
 */
#ifndef KHALA_DAEMON_FDLIMIT_H
#define KHALA_DAEMON_FDLIMIT_H

#include <stddef.h>
#include <stdint.h>

/** Descriptors khalad keeps for itself beyond its connections: stdio, the segment, epoll, the
 * listening socket and its spare, the L2 store or the Redis pool, the journal, pub/sub. */
#define KHALA_FDLIMIT_RESERVE 64u

/**
 * @brief Raise the soft RLIMIT_NOFILE to the hard limit.
 * @param[out] soft the soft limit now in force (raised or not).
 * @param[out] hard the hard limit.
 * @return 0 when the soft limit now equals the hard one; -errno from getrlimit or setrlimit
 *         (then *soft and *hard hold what is in force, or 0 when even getrlimit failed).
 * @note Call at start, before any thread exists.
 */
int khala__fdlimit_raise(uint64_t *soft, uint64_t *hard);

/**
 * @brief Can @p max_conns connections be served within @p soft descriptors?
 * @param[in] max_conns [server] max_connections.
 * @param[in] soft the soft RLIMIT_NOFILE in force.
 * @param[out] msg when not, a sentence saying so and what to do; may be NULL.
 * @param[in] msglen size of @p msg.
 * @return 1 when max_conns + KHALA_FDLIMIT_RESERVE fit in soft, else 0.
 */
int khala__fdlimit_fits(uint32_t max_conns, uint64_t soft, char *msg, size_t msglen);

#endif /* KHALA_DAEMON_FDLIMIT_H */
