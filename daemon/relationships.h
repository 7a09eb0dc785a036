/*
 * Relationship caching in khalad: an item put with "links" (usually the cached answer of a
 * relationship query, type entity_relationship) is linked to its end entities, so that a put,
 * delete or invalidation of an end (here, or on another host through cross-host invalidation)
 * deletes it at every level; and, with [policies] preload_relationships, the relationship
 * items linked to an entity read into L1 from below are promoted into L1 too, from the tick.
 *
 * The link index itself is daemon/links.c; this module is what the store and the handlers call
 * around it (daemon/store.c calls the cascade, daemon/handlers.c records links and queues
 * preloads). docs/tiers.md, "Relationship caching", explains the rules and why.
 *
 * Start at khala__rel_link() and khala__rel_cascade_key().
 *
 * Every function that fails leaves a message naming the cause in d->errmsg. Called from
 * khalad's loop thread only.
 */
#ifndef KHALA_DAEMON_RELATIONSHIPS_H
#define KHALA_DAEMON_RELATIONSHIPS_H

#include <stddef.h>
#include <stdint.h>

#include "coherence.h"
#include "proto.h"

typedef struct khalad khalad_t;
typedef struct khala_rel khala_rel_t;

/** Entities the preload queue holds at most; beyond, a loaded entity is not queued (counted in
 * relationship_preload_dropped): preloading is a hint. */
#define KHALA_REL_PRELOAD_QUEUE 1024u
/** Entities the tick takes from the preload queue at most, and relationship items it reads
 * below L1 at most, per tick (each read may be a round trip to Redis). */
#define KHALA_REL_PRELOAD_ENTITIES_PER_TICK 32u
#define KHALA_REL_PRELOAD_READS_PER_TICK 128u

/** Counters of relationship caching, for stats. */
typedef struct khala_rel_stats {
    uint64_t rels;            /* relationship items linked now */
    uint64_t links;           /* (end, relationship) links now */
    uint64_t cascaded;        /* relationship items deleted because an end changed */
    uint64_t evicted;         /* relationship items deleted to keep the index within its bound */
    uint64_t preloaded;       /* relationship items promoted into L1 by the preload */
    uint64_t preload_dropped; /* loaded entities not queued: the preload queue was full */
} khala_rel_stats_t;

/**
 * @brief Open the link index (in the L2 state directory's "links", daemon/links.h) and, with
 *        [policies] preload_relationships, the preload queue.
 * @param[in,out] d khalad, with cfg set.
 * @return 0; the index's error (KHALA_ECONFIG, KHALA_ECORRUPT, -errno) with d->errmsg.
 */
int khala__rel_open(khalad_t *d);

/** @brief Close what khala__rel_open() opened; safe when it did not run or failed. */
void khala__rel_close(khalad_t *d);

/**
 * @brief Link @p rel to @p ends before @p rel is written, replacing its earlier links. When
 *        the index is full, the oldest relationships are deleted from every level (and
 *        unlinked) until it has room.
 * @return 0; KHALA_EINVAL (a bad link: empty, too long, the item's own key); KHALA_ETIER (the
 *         index could not record it: nothing is written); an error of the delete of an old
 *         relationship; -ENOMEM.
 */
int khala__rel_link(khalad_t *d, const void *rel, size_t rlen, const khala_bytes_t *ends, size_t n);

/**
 * @brief @p key is about to change (a put) or go (a delete, an invalidation by key): delete at
 *        every level each item linked to it, then each item linked to those, and so on,
 *        unlinking each. @p key's own links are kept (a put keeps them; a delete drops them
 *        with khala__rel_gone()). Cycles end: an item is unlinked before what links to it is
 *        followed, and @p key itself is never deleted.
 * @return 0; the error of a delete that failed (nothing more is deleted; the items not yet
 *         deleted keep their links), with the message naming the item.
 */
int khala__rel_cascade_key(khalad_t *d, const void *key, size_t klen);

/**
 * @brief @p key is gone from every level: drop its own links.
 */
void khala__rel_gone(khalad_t *d, const void *key, size_t klen);

/**
 * @brief An invalidation by prefix (plen > 0), type (plen 0, type >= 0) or of everything (plen
 *        0, type -1) was applied at every level: cascade from every end it covered. By prefix:
 *        the ends under the prefix. By type: every linked item (the index does not know the
 *        types of the ends: coarser, but never stale). Everything: the index is emptied.
 * @return 0; as khala__rel_cascade_key().
 */
int khala__rel_invalidated(khalad_t *d, const void *prefix, size_t plen, int type);

/**
 * @brief Another host changed what @p m names (daemon/coherence.h): cascade from it here, for
 *        the items this host linked (the other host does not know them). Failures are logged.
 */
void khala__rel_remote(khalad_t *d, const khala_inv_t *m);

/**
 * @brief This host may have missed what other hosts published (cross-host invalidation was
 *        not listening: khalad was down, or the subscription was lost or is back): every item
 *        it linked is deleted at every level, since any of their ends may have changed unseen.
 *        Failures are logged (the items not deleted keep their links).
 * @param[in] why for the log line.
 */
void khala__rel_unproven(khalad_t *d, const char *why);

/**
 * @brief An entity was read into L1 from below, or filled by a loader: queue it for the
 *        preload of its relationships (nothing without [policies] preload_relationships).
 */
void khala__rel_loaded(khalad_t *d, const void *key, size_t klen);

/** @brief Periodic work: the preload (bounded per tick), the index's fsync. */
void khala__rel_tick(khalad_t *d);

/** @brief The counters (zeros when the index is not open). */
void khala__rel_stats(khalad_t *d, khala_rel_stats_t *out);

#endif /* KHALA_DAEMON_RELATIONSHIPS_H */
