/*
 * khalad's levels below L1, as a whole: which drivers config picks (daemon/tier_disk.c,
 * daemon/tier_redis.c), the order a miss asks them in, health checks, the flusher that drains
 * the write queues, cross-host invalidation (daemon/coherence.c), warming, and the stats of it
 * all. Writes are not here: every write at every level, and the rule that applies a write to a
 * level or queues it, is daemon/store.c's. daemon/handlers.c calls these; they never reply.
 *
 * Start at khala__tiers_open() and khala__tiers_tick().
 *
 * Every function that fails leaves a message naming the level and the cause in d->errmsg.
 */
#ifndef KHALA_DAEMON_TIERS_H
#define KHALA_DAEMON_TIERS_H

#include <stddef.h>
#include <stdint.h>

#include "coherence.h"
#include "tier.h"

typedef struct khalad khalad_t;
typedef struct khalad_tier khalad_tier_t;

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
 * @brief A level failed with @p rc: when the cause is its server (KHALA_ETIER), mark it down
 *        (reads skip it, writes queue, the tick asks it whether it is back) and log it once.
 * @param[in,out] d khalad. @param[in,out] lt the level. @param[in] rc the driver's code.
 */
void khala__tiers_failed(khalad_t *d, khalad_tier_t *lt, int rc);

/** @brief "L2" or "L3", for messages. */
const char *khala__tiers_level_name(const khalad_tier_t *lt);

/**
 * @brief Tell other hosts (cross-host invalidation, when configured) that a key, a prefix, a
 *        type or everything changed. A failure is logged and remembered: once publishing works
 *        again, every other host is told to empty its L1.
 * @param[in] by what changed. @param[in] key the key or prefix. @param[in] klen its bytes.
 * @param[in] type the type (-1 = any). @param[in] version the new version (0 = a removal).
 */
void khala__tiers_publish(khalad_t *d, khala_inv_by_t by, const void *key, size_t klen, int type,
                          uint64_t version);

#endif /* KHALA_DAEMON_TIERS_H */
