/*
 * What lib/client.c shares with the other files of the worker library that talk to khalad
 * (lib/client_fetch.c, lib/client_admin.c): a request on the calling thread's connection, the
 * requests they build alike, and the per-thread error message. Private; never installed.
 */
#ifndef KHALA_LIB_CLIENT_INTERNAL_H
#define KHALA_LIB_CLIENT_INTERNAL_H

#include "khala/cache.h"
#include "proto.h"

/**
 * @brief Send @p req on the calling thread's connection to khalad and wait for the reply.
 * @param[in] c handle.
 * @param[in] req the request.
 * @param[out] rep the reply (free it with khala__proto_msg_free()), set when 0 is returned.
 * @param[in] wait 0: the handle's timeout; 1: twice it, for a get that may wait on another
 *            worker's load.
 * @return 0 when a reply came (its rc is khalad's answer); else the failure to reach khalad
 *         (KHALA_EDAEMON, -ETIMEDOUT...) with khala_cache_errmsg() set.
 * @note Safe from any thread: each thread has its own connection.
 */
int khala__client_call(khala_cache_t *c, khala_msg_t *req, khala_msg_t *rep, int wait);

/**
 * @brief Set the calling thread's message to khalad's reason for @p rep's nonzero rc.
 * @return rep->rc.
 */
int khala__client_reply_fail(khala_cache_t *c, const khala_msg_t *rep);

/**
 * @brief Set the calling thread's message for @p c (printf-style), as every failing call does.
 * @return rc.
 */
int khala__client_fail(const khala_cache_t *c, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** @brief A request of op for key (field "k" set), everything else empty. */
khala_msg_t khala__client_key_request(khala_op_t op, const void *key, size_t klen);

/**
 * @brief The request a load's leader sends once its loader returned @p lrc: a fill of the value
 *        @p val, @p vlen with @p type and @p ttl_ms (0 = the type's default) when lrc is 0,
 *        else a fill_fail carrying @p why (the loader's message) so that khalad's waiters ask
 *        again. The request points into val and why: keep them until it is sent.
 */
khala_msg_t khala__client_fill_request(const void *key, size_t klen, int lrc, const void *val,
                                       size_t vlen, khala_type_t type, uint64_t ttl_ms,
                                       const char *why);

#endif /* KHALA_LIB_CLIENT_INTERNAL_H */
