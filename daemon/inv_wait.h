/*
 * Replies that wait for an invalidation to finish at the levels below L1. An invalidation (by
 * prefix or type, or a flush) of a level whose removal scans the whole server (Redis) runs in
 * steps from khalad's tick (daemon/tiers.c), so that the loop never stalls on it (issue 10,
 * bug 9); its caller hears the reply once every such level has finished, so that after the
 * reply no host reads an invalidated value from L2 (the guarantee invalidation always had).
 * Start at khala__invwait_add().
 *
 * Only khalad's loop thread uses the table.
 */
#ifndef KHALA_DAEMON_INV_WAIT_H
#define KHALA_DAEMON_INV_WAIT_H

#include <stddef.h>
#include <stdint.h>

#include "server.h"

typedef struct khala_invwait khala_invwait_t;

/** What a waiting caller is answered with: its connection and request, the removed count to
 * report, and rc (0, or the error that ended the invalidation). */
typedef void (*khala_invwait_fn)(void *arg, khala_conn_t *c, uint64_t req_id, int op,
                                 uint64_t count, int rc);

/**
 * @brief Make an empty table whose answers go through @p fn (with @p arg).
 * @return 0; -ENOMEM.
 */
int khala__invwait_new(khala_invwait_fn fn, void *arg, khala_invwait_t **out);

/** @brief Free the table; waiting callers are not answered (khalad is stopping). NULL is fine. */
void khala__invwait_free(khala_invwait_t *w);

/**
 * @brief Answer request @p req_id (operation @p op) of connection @p c with @p count once every
 *        level in @p levels (bit i = level i) has finished the invalidation made at @p version.
 * @return 0; -ENOMEM (nothing added: the caller answers now).
 */
int khala__invwait_add(khala_invwait_t *w, khala_conn_t *c, uint64_t req_id, int op, uint64_t count,
                       uint64_t version, unsigned levels);

/**
 * @brief Level @p level has finished every invalidation made at or before @p version (its queue
 *        is in order): answer the waiters this completes. UINT64_MAX: all of them (the level went
 *        down; what is queued stays journaled, and reads skip a level that is down).
 * @param[in] rc 0, or the error to answer with.
 */
void khala__invwait_done(khala_invwait_t *w, int level, uint64_t version, int rc);

/** @brief Forget the waiters of connection @p c (it closed): they are never answered. */
void khala__invwait_forget_conn(khala_invwait_t *w, const khala_conn_t *c);

/** @brief How many callers are waiting. */
size_t khala__invwait_count(const khala_invwait_t *w);

#endif /* KHALA_DAEMON_INV_WAIT_H */
