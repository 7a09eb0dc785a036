/*
 * What lib/client.c shares with the other files of the worker library that talk to khalad
 * (lib/client_fetch.c): a request on the calling thread's connection, and the per-thread error
 * message. Private; never installed.
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
 * @brief Set the calling thread's message for @p c to @p msg.
 * @return rc.
 */
int khala__client_fail(const khala_cache_t *c, int rc, const char *msg);

#endif /* KHALA_LIB_CLIENT_INTERNAL_H */
