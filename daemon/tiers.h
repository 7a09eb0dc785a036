/*
 * khalad's levels below L1, as a whole: which drivers config picks (daemon/tier_disk.c,
 * daemon/tier_redis.c), the order a miss asks them in, how a write, a delete and an
 * invalidation reach every level (write-through, write-behind, and the queue that holds a
 * level's writes while it is down), health checks, cross-host invalidation (daemon/coherence.c),
 * warming, and the stats of it all. daemon/handlers.c calls these; they never reply.
 *
 * Start at khala__tiers_open(), khala__tiers_put() and khala__tiers_tick().
 *
 * Every function that fails leaves a message naming the level and the cause in d->errmsg.
 */
#ifndef KHALA_DAEMON_TIERS_H
#define KHALA_DAEMON_TIERS_H

#include <stddef.h>
#include <stdint.h>

#include "tier.h"

typedef struct khalad khalad_t;

/** Bytes a level's write queue may hold at most (keys and values), beside [l2] queue_max. */
#define KHALAD_QUEUE_BYTES_MAX (256ull << 20)
/** Writes the flusher sends to a level in one batch (one mput). */
#define KHALAD_FLUSH_BATCH 256u
/** Batches the flusher sends per tick (so that a long queue does not stall the loop). */
#define KHALAD_FLUSH_BATCHES_PER_TICK 8u
/** How often an unhealthy level is asked whether it is back, in ms: first after this, then
 * twice as long after each failed check, up to KHALAD_HEALTH_MAX_MS. */
#define KHALAD_HEALTH_EVERY_MS 250
#define KHALAD_HEALTH_MAX_MS 5000
/** Keys warmed per batch (one mget). */
#define KHALAD_WARM_BATCH 256u

/** khala__tiers_put() flags. */
enum {
    KHALA_TIERS_FILL = 1 << 0, /**< a loader's fill: not published to other hosts */
};

/**
 * @brief Open the levels the configuration asks for (L2 today) and cross-host invalidation.
 *        A Redis that cannot be reached is not an error: L2 starts unhealthy and recovers.
 * @param[in,out] d khalad, with cfg, l1 and srv set.
 * @return 0; KHALA_ECONFIG (bad URL, refused credentials), or a driver's error, with the
 *         message in d->errmsg.
 */
int khala__tiers_open(khalad_t *d);

/**
 * @brief Drain what can be drained (bounded by a short deadline), then close every level.
 *        Writes still queued are reported in the log: they are lost with the process.
 * @param[in,out] d khalad.
 */
void khala__tiers_close(khalad_t *d);

/**
 * @brief A new version: ordered across hosts by the wall clock (milliseconds << 20), and
 *        strictly increasing within this khalad.
 * @param[in,out] d khalad.
 * @return the version.
 */
uint64_t khala__tiers_version(khalad_t *d);

/**
 * @brief Look a key up below L1: first the writes still queued for a level (so that a write
 *        waiting for Redis is read back), then each healthy level in order. A level that
 *        fails is marked unhealthy and skipped.
 * @param[in,out] d khalad.
 * @param[in] key the key. @param[in] klen its bytes.
 * @param[out] out the value (free with khala__tier_value_free()).
 * @param[out] lvl the level that answered.
 * @return 0; KHALA_ENOTFOUND.
 */
int khala__tiers_get(khalad_t *d, const void *key, size_t klen, khala_tier_value_t *out,
                     khala_level_t *lvl);

/**
 * @brief Write a value to every level its type lives on, L1 included, in its write mode:
 *        write-through writes the slower levels first (a level that is down gets the write
 *        queued); write-behind queues it for the flusher. Then L1, then the invalidation is
 *        published to other hosts.
 * @param[in,out] d khalad.
 * @param[in] key the key. @param[in] klen its bytes.
 * @param[in] val the value. @param[in] vlen its bytes.
 * @param[in] ttl_ms the caller's TTL, 0 = the type's default per level.
 * @param[in] type the item's type.
 * @param[in] flags KHALA_TIERS_* flags.
 * @param[out] version the version written.
 * @return 0; KHALA_ETOOBIG (over [l1] max_value_bytes: nothing is written); KHALA_EVERSION (a
 *         level holds a newer version); KHALA_EQUEUE (the level is down or behind and its queue
 *         is full); an L1 error (KHALA_EFULL, KHALA_EBLOCKED): then the levels below hold the
 *         new value (and other hosts heard of it) but L1 holds no copy of the key.
 */
int khala__tiers_put(khalad_t *d, const void *key, size_t klen, const void *val, size_t vlen,
                     int64_t ttl_ms, khala_type_t type, int flags, uint64_t *version);

/**
 * @brief The version of @p key at the first level that has it (L1, queued writes, L2...),
 *        for compare-and-set. 0 when no level has it.
 */
uint64_t khala__tiers_current_version(khalad_t *d, const void *key, size_t klen);

/**
 * @brief Delete a key from every level and tell other hosts.
 * @return 0; KHALA_ENOTFOUND when no level held it (a level that is down counts as holding
 *         it); KHALA_EQUEUE when a level is down and its queue full.
 */
int khala__tiers_del(khalad_t *d, const void *key, size_t klen);

/**
 * @brief Remove every key with @p prefix (plen 0 = all) and, when @p type >= 0, of that type,
 *        from every level, and tell other hosts.
 * @param[out] removed how many L1 items went.
 * @return 0; KHALA_EQUEUE as for khala__tiers_del().
 */
int khala__tiers_invalidate(khalad_t *d, const void *prefix, size_t plen, int type,
                            uint64_t *removed);

/**
 * @brief Promote keys from the slower levels into L1 (warming), in batches.
 * @param[in,out] d khalad.
 * @param[in] n how many keys. @param[in] keys the keys.
 * @return how many keys were found below L1 and are now in L1.
 */
uint64_t khala__tiers_warm_keys(khalad_t *d, size_t n, const khala_bytes_t *keys);

/**
 * @brief One page of warming by prefix or type: scan the first level from *cursor, promote
 *        what matches.
 * @param[in,out] d khalad.
 * @param[in] prefix key prefix, or NULL. @param[in] plen its bytes.
 * @param[in] type type filter, -1 = any.
 * @param[in,out] cursor 0 starts; 0 again when the scan is complete.
 * @param[out] warmed keys promoted in this page.
 * @return 0; KHALA_ETIER when no level can be scanned.
 */
int khala__tiers_warm_scan(khalad_t *d, const void *prefix, size_t plen, int type, uint64_t *cursor,
                           uint64_t *warmed);

/**
 * @brief Warm L1 with the most used keys of L2 (preload_common), at start.
 * @return keys promoted.
 */
uint64_t khala__tiers_preload(khalad_t *d);

/**
 * @brief Periodic work: health checks of unhealthy levels, the write-behind flusher and the
 *        drain of queues after an outage, the drivers' own ticks, cross-host invalidation.
 */
void khala__tiers_tick(khalad_t *d);

/** Entries khala__tiers_stats() writes at most. */
#define KHALAD_TIERS_STATS_MAX 32u

/**
 * @brief Stats of L2 (its driver, its queue, warming, invalidation) as entries of a "data" map.
 * @param[in] d khalad.
 * @param[out] kv the entries; string values point into the driver (valid until its next call).
 * @param[in] max room in @p kv; at least KHALAD_TIERS_STATS_MAX or nothing is written.
 * @return entries written; 0 when there is no L2.
 */
size_t khala__tiers_stats(khalad_t *d, khala_kv_t *kv, size_t max);

/**
 * @brief Put a value found below L1 into L1 with its version, for the time it has left but at
 *        most its type's L1 TTL.
 * @return 0; KHALA_ENOTFOUND when the type does not live in L1; an L1 error.
 */
int khala__tiers_promote(khalad_t *d, const void *key, size_t klen, const khala_tier_value_t *v);

/**
 * @brief Remove from L1 (only) every item with @p prefix (plen 0 = all) and, when @p type >= 0,
 *        of that type.
 * @return how many were removed.
 */
uint64_t khala__tiers_l1_remove(khalad_t *d, const void *prefix, size_t plen, int type);

#endif /* KHALA_DAEMON_TIERS_H */
