/*
 * Connections to Redis, shared by the L2 driver (daemon/tier_redis.c) and cross-host
 * invalidation (daemon/coherence.c): open a hiredis context from a parsed redis_url (TCP or
 * Unix socket) with a connect and command timeout, authenticate (AUTH password, or AUTH user
 * password for an ACL user), and select the URL's database.
 *
 * Every message names the server ("redis 127.0.0.1:6379: ...", "redis unix:/run/r.sock: ...")
 * and the cause, so that an operator reading khalad's log knows what to fix.
 */
#ifndef KHALA_DAEMON_REDIS_CONN_H
#define KHALA_DAEMON_REDIS_CONN_H

#include <stddef.h>

#include <hiredis/hiredis.h>

#include "config.h"

/** Connect and command timeout used when a caller passes 0. */
#define KHALA_REDIS_TIMEOUT_MS_DEFAULT 1000u

/**
 * @brief Open a connection to the server @p u names, authenticate and select its database.
 * @param[in] u a parsed redis_url (khala__config_redis_url_parse).
 * @param[in] timeout_ms connect and command timeout; 0 = KHALA_REDIS_TIMEOUT_MS_DEFAULT.
 * @param[out] out the connection, in blocking mode with the command timeout set.
 * @param[out] err message buffer; may be NULL.
 * @param[in] errlen size of @p err.
 * @return 0; KHALA_ETIER when the server cannot be reached or does not answer; KHALA_ECONFIG
 *         when it refuses the credentials or the database (AUTH / SELECT errors); -ENOMEM.
 */
int khala__redis_connect(const khala_config_redis_url_t *u, unsigned timeout_ms, redisContext **out,
                         char *err, size_t errlen);

/**
 * @brief As khala__redis_connect(), to another node of the same deployment (a Redis Cluster
 *        node named by a redirection): host and port replace the URL's; credentials are kept;
 *        no SELECT (a cluster has database 0 only).
 * @param[in] u the parsed redis_url the deployment was configured with.
 * @param[in] host the node's host (an address or a name).
 * @param[in] port the node's port.
 * @param[in] timeout_ms as for khala__redis_connect().
 * @param[out] out the connection.
 * @param[out] err message buffer; may be NULL.
 * @param[in] errlen size of @p err.
 * @return as khala__redis_connect().
 */
int khala__redis_connect_node(const khala_config_redis_url_t *u, const char *host, unsigned port,
                              unsigned timeout_ms, redisContext **out, char *err, size_t errlen);

/**
 * @brief A short name of the server @p u names, for messages: "127.0.0.1:6379" or
 *        "unix:/run/redis.sock".
 * @param[in] u a parsed redis_url.
 * @param[out] buf the name (truncated to fit).
 * @param[in] len size of @p buf.
 * @return @p buf.
 */
const char *khala__redis_name(const khala_config_redis_url_t *u, char *buf, size_t len);

#endif /* KHALA_DAEMON_REDIS_CONN_H */
