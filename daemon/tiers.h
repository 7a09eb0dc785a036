/*
 * khalad's levels below L1, as a whole: which drivers config picks (daemon/tier_disk.c,
 * daemon/tier_redis.c), health checks, the flusher that drains the write queues, cross-host
 * invalidation's callbacks (daemon/coherence.c), warming, and the stats of it all. Writes are
 * not here: every write at every level, reads below L1 and the rule that applies a write to a
 * level or queues it are daemon/store.c's. daemon/handlers.c calls these; they never reply.
 *
 * Start at khala__tiers_open() and khala__tiers_tick().
 *
 * Every function that fails leaves a message naming the level and the cause in d->errmsg.
 */
#ifndef KHALA_DAEMON_TIERS_H
#define KHALA_DAEMON_TIERS_H

#include <stddef.h>
#include <stdint.h>

#include "tier.h"

typedef struct khalad khalad_t;
typedef struct khalad_tier khalad_tier_t;

/** Bytes a level's write queue may hold at most (keys and values), beside [l2] queue_max. */
#define KHALAD_QUEUE_BYTES_MAX (256ull << 20)
/** Writes the flusher sends to a level in one batch (one mput). */
#define KHALAD_FLUSH_BATCH 256u
/** Batches the flusher sends per tick (so that a long queue does not stall the loop). */
#define KHALAD_FLUSH_BATCHES_PER_TICK 8u
/** The time the flusher may spend on one level in one tick (at least one batch runs), and the
 * time one batch should take: a batch that takes longer halves the level's batch size for the
 * next, one much shorter doubles it (up to KHALAD_FLUSH_BATCH). A slow server (SurrealDB takes
 * milliseconds per write) then holds the loop for tens of ms per tick, not seconds, and a fast
 * one (Redis) keeps its full batches. */
#define KHALAD_FLUSH_TICK_MS 20
#define KHALAD_FLUSH_BATCH_MS 10
/** How often an unhealthy level is asked whether it is back, in ms: first after this, then
 * twice as long after each failed check, up to KHALAD_HEALTH_MAX_MS. */
#define KHALAD_HEALTH_EVERY_MS 250
#define KHALAD_HEALTH_MAX_MS 5000
/** An invalidation that scans the server (Redis) runs in steps from the tick: the keys one
 * step looks at (SCAN COUNT), and the time the steps of one tick may take at most (at least one
 * step runs), so that other clients are answered between them (issue 10, bug 9). */
#define KHALAD_INVALIDATE_STEP_KEYS 1000u
#define KHALAD_INVALIDATE_TICK_MS 5
/** Keys warmed per batch (one mget). */
#define KHALAD_WARM_BATCH 256u

/**
 * @brief Open the levels the configuration asks for (L2, then L3) and cross-host invalidation.
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
#define KHALAD_TIERS_STATS_MAX 40u

/**
 * @brief Stats of one level below L1 (its driver, its queue) as entries of a "data" map; L2's
 *        map also holds khalad's warming, promotion and cross-host invalidation counters.
 * @param[in] d khalad.
 * @param[in] i the level's index in d->tiers (0 = L2, 1 = L3).
 * @param[out] kv the entries; string values point into the driver (valid until its next call).
 * @param[in] max room in @p kv; at least KHALAD_TIERS_STATS_MAX or nothing is written.
 * @return entries written; 0 when there is no such level.
 */
size_t khala__tiers_stats(khalad_t *d, int i, khala_kv_t *kv, size_t max);

#endif /* KHALA_DAEMON_TIERS_H */
