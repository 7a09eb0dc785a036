/*
 * khalad's store: the one owner of every write at every level, L1 included. A put (with or
 * without compare-and-set), a touch, a delete, an invalidation (by key, prefix, type or all), a
 * promotion of a value read below L1, and what another host told this one to forget all go
 * through here, and nothing else in khalad writes a level. With the writes come what they need
 * of the levels below: reading a key there (the queued writes first, then each healthy level),
 * marking a level down when it fails, and publishing a change to other hosts.
 *
 * The layering has no circle: daemon/handlers.c (decode, call, reply) and daemon/tiers.c (the
 * levels' lifecycle: which driver, health checks, the flusher, warming, coherence's callbacks)
 * call the store; the store calls neither, only lib/l1_table.h, the drivers (daemon/tier.h),
 * the queues (daemon/writeq.h), single-flight and coherence's publish.
 *
 * Start at khala__store_put(); daemon/store.c's top comment has the order of the steps and the
 * crash ordering.
 *
 * Every function that fails leaves a message naming the level and the cause in d->errmsg.
 * Called from khalad's loop thread only.
 */
#ifndef KHALA_DAEMON_STORE_H
#define KHALA_DAEMON_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "coherence.h"
#include "tier.h"

typedef struct khalad khalad_t;
typedef struct khalad_tier khalad_tier_t;

/** khala__store_put() flags. */
enum {
    /** A loader's fill: the placeholder rule applies (see khala__store_put()), and it is not
     * published to other hosts (nothing changed there). */
    KHALA_STORE_FILL = 1u << 0,
    /** Compare-and-set: write only if the key's current version is the one given (0 = the key
     * must not exist at any level). */
    KHALA_STORE_CAS = 1u << 1,
};

/**
 * @brief Read the crash-test hook (KHALAD_TEST_CRASH_AT) and seed the TTL jitter. Call once
 *        before the first write.
 * @param[in,out] d khalad.
 */
void khala__store_init(khalad_t *d);

/**
 * @brief A new version: ordered across hosts by the wall clock (milliseconds << 20), and
 *        strictly increasing within this khalad.
 * @param[in,out] d khalad.
 * @return the version.
 */
uint64_t khala__store_version(khalad_t *d);

/**
 * @brief The TTL a write gets on a level: the caller's when it gave one, else the type's TTL on
 *        that level with up to +-[policies] ttl_jitter_pct percent of jitter. The one TTL rule
 *        for puts, touches and the write queues.
 * @param[in,out] d khalad (the jitter's generator).
 * @param[in] ttl_ms the caller's TTL, 0 = none given.
 * @param[in] type the item's type.
 * @param[in] level 1, 2 or 3.
 * @return the TTL in ms, 0 = no expiry.
 */
int64_t khala__store_ttl(khalad_t *d, int64_t ttl_ms, khala_type_t type, int level);

/**
 * @brief Levels a type lives on, as KHALA_CONFIG_LEVEL_* bits.
 */
uint32_t khala__store_type_levels(const khalad_t *d, khala_type_t type);

/**
 * @brief The version of @p key at the first level that has it (L1, queued writes, L2...),
 *        for compare-and-set. 0 when no level has it.
 */
uint64_t khala__store_current_version(khalad_t *d, const void *key, size_t klen);

/**
 * @brief Write a value to every level its type lives on, L1 included, in its write mode.
 *
 *        Write-through levels are written before L1 (a level that is down, or has writes
 *        queued, gets the write queued instead); write-behind levels get it queued after L1.
 *        Before any level below is written the L1 copy is dropped, so that a crash between
 *        the steps never leaves L1 older than a level below (daemon/store.c, "Crash
 *        ordering"). Then the change is published to other hosts.
 *
 *        The placeholder rule: a fill (KHALA_STORE_FILL) of a key invalidated while its
 *        leader loaded may be older than the invalidation, so it is cached at no level; the
 *        call succeeds with *version 0 (d->fills_dropped counts them).
 * @param[in,out] d khalad.
 * @param[in] key the key. @param[in] klen its bytes.
 * @param[in] val the value. @param[in] vlen its bytes.
 * @param[in] ttl_ms the caller's TTL, 0 = the type's default per level.
 * @param[in] type the item's type.
 * @param[in] flags KHALA_STORE_* flags.
 * @param[in] expect with KHALA_STORE_CAS: the version the caller last saw (0 = must not exist).
 * @param[out] version the version written (0 when the placeholder rule dropped a fill).
 * @return 0; KHALA_ETOOBIG (over [l1] max_value_bytes: nothing is written); KHALA_EVERSION (the
 *         compare-and-set failed, or a level holds a newer version); KHALA_EQUEUE (a level is
 *         down or behind and its queue is full: no level below changed); -ENOMEM, -EIO (a
 *         queue could not take the write); an L1 error (KHALA_EFULL, KHALA_EBLOCKED): then the
 *         levels below hold the new value (and other hosts heard of it) but L1 holds no copy;
 *         the error of deleting a relationship item linked to the key (a put that is not a
 *         fill deletes them first, daemon/relationships.h): then nothing of this put is written.
 */
int khala__store_put(khalad_t *d, const void *key, size_t klen, const void *val, size_t vlen,
                     int64_t ttl_ms, khala_type_t type, unsigned flags, uint64_t expect,
                     uint64_t *version);

/**
 * @brief Give the L1 copy of @p key a fresh deadline (the same value and version; items are
 *        immutable, so it is written again). The TTL follows khala__store_ttl() for L1.
 * @param[in] ttl_ms the caller's TTL, 0 = the type's L1 default.
 * @param[out] version the item's version.
 * @return 0; KHALA_ENOTFOUND (not in L1); -ENOMEM; an L1 error.
 */
int khala__store_touch(khalad_t *d, const void *key, size_t klen, int64_t ttl_ms,
                       uint64_t *version);

/**
 * @brief Delete a key from every level and tell other hosts. Loads in flight lose their right
 *        to be cached. The items linked to the key go first (daemon/relationships.h), and the
 *        key's own links after it.
 * @param[out] in_l1 whether L1 held it (may be NULL).
 * @return 0; KHALA_ENOTFOUND when no level held it (a level that is down counts as holding
 *         it); KHALA_EQUEUE when a level is down and its queue full (nothing changed).
 */
int khala__store_del(khalad_t *d, const void *key, size_t klen, int *in_l1);

/**
 * @brief khala__store_del() without the relationship cascade (daemon/relationships.h): the key
 *        alone, from every level. For the cascade itself.
 * @return as khala__store_del().
 */
int khala__store_del_key(khalad_t *d, const void *key, size_t klen, int *in_l1);

/**
 * @brief Remove every key with @p prefix (plen 0 = all) and, when @p type >= 0, of that type,
 *        from every level, and tell other hosts.
 * @param[out] removed how many L1 items went (may be NULL).
 * @return 0; KHALA_EQUEUE as for khala__store_del().
 */
int khala__store_invalidate(khalad_t *d, const void *prefix, size_t plen, int type,
                            uint64_t *removed);

/**
 * @brief khala__store_invalidate(), telling the caller which levels run it in steps from the
 *        tick (a healthy Redis level: issue 10, bug 9), so that it can answer its own caller once
 *        they have finished (daemon/inv_wait.h). L1 is done when it returns.
 * @param[out] version the invalidation's version (what khala__invwait_done() reports); may be
 *             NULL.
 * @param[out] levels bit i set: level i runs it in steps (0 = nothing to wait for); may be NULL.
 * @return as khala__store_invalidate().
 */
int khala__store_invalidate_steps(khalad_t *d, const void *prefix, size_t plen, int type,
                                  uint64_t *removed, uint64_t *version, unsigned *levels);

/**
 * @brief Put a value found below L1 into L1 with its version, for the time it has left but at
 *        most its type's L1 TTL.
 * @return 0; KHALA_ENOTFOUND when the type does not live in L1; an L1 error.
 */
int khala__store_promote(khalad_t *d, const void *key, size_t klen, const khala_tier_value_t *v);

/**
 * @brief Copy a value found at level @p from into the levels between L1 and it (a hit at L3
 *        fills L2) that its type lives on, with its version and the time it has left, but at
 *        most the type's TTL on that level. Best effort, as a promotion into L1 is: a level
 *        that is down, has writes queued, or holds a newer version is skipped (nothing is
 *        queued: the value is where it came from), and a level that fails is marked down.
 * @return how many levels were filled.
 */
int khala__store_promote_below(khalad_t *d, const void *key, size_t klen,
                               const khala_tier_value_t *v, khala_level_t from);

/**
 * @brief Forget in L1 only what another host changed (or everything, when this host can no
 *        longer prove its L1 current): the key, or every key with the prefix (plen 0 = all)
 *        and, when @p type >= 0, of that type. Loads in flight lose their right to be cached.
 * @param[in] by_key 1: @p key is one key; 0: a prefix.
 * @return how many L1 items went.
 */
uint64_t khala__store_forget(khalad_t *d, int by_key, const void *key, size_t klen, int type);

/* Below L1: failures, reads, publishing ------------------------------------------------------ */

/**
 * @brief Look a key up below L1: first the writes still queued for a level (so that a write
 *        waiting for Redis is read back), then each healthy level in order. A level that
 *        fails is marked unhealthy and skipped.
 * @param[in,out] d khalad.
 * @param[in] key the key. @param[in] klen its bytes.
 * @param[out] out the value (free with khala__tier_value_free()).
 * @param[out] lvl the level that answered.
 * @param[out] async_at NULL: every level is read here, synchronously. Else, on a miss, the
 *             first healthy level that reads asynchronously (get_start), which was NOT asked:
 *             the caller asks it (no level after it is asked either); NULL when there is none.
 * @return 0; KHALA_ENOTFOUND.
 */
int khala__store_get(khalad_t *d, const void *key, size_t klen, khala_tier_value_t *out,
                     khala_level_t *lvl, khalad_tier_t **async_at);

/**
 * @brief A level failed with @p rc: when the cause is its server (KHALA_ETIER), mark it down
 *        (reads skip it, writes queue, the tick asks it whether it is back) and log it once.
 * @param[in,out] d khalad. @param[in,out] lt the level. @param[in] rc the driver's code.
 */
void khala__store_level_failed(khalad_t *d, khalad_tier_t *lt, int rc);

/** @brief "L2" or "L3", for messages. */
const char *khala__store_level_name(const khalad_tier_t *lt);

/**
 * @brief Tell other hosts (cross-host invalidation, when configured) that a key, a prefix, a
 *        type or everything changed. A failure is logged and remembered: once publishing works
 *        again, every other host is told to empty its L1.
 * @param[in] by what changed. @param[in] key the key or prefix. @param[in] klen its bytes.
 * @param[in] type the type (-1 = any). @param[in] version the new version (0 = a removal).
 */
void khala__store_publish(khalad_t *d, khala_inv_by_t by, const void *key, size_t klen, int type,
                          uint64_t version);

/**
 * @brief Whether an invalidation still queued for some level (one in progress: a Redis scan
 *        runs step by step) covers the item @p key of @p type at @p version, which is then gone
 *        for every read even while a level still holds it.
 * @return 1 if superseded, else 0 (see khala__wq_superseded()).
 */
int khala__store_superseded(const khalad_t *d, const void *key, size_t klen, int type,
                            uint64_t version);

/**
 * @brief The write queued for @p key at the first level that has one: a put (its value), a
 *        delete, an expired put or a put a later queued invalidation covers (KHALA_ENOTFOUND),
 *        or none (1).
 * @param[out] out the value (free with khala__tier_value_free()).
 * @return 0; KHALA_ENOTFOUND; 1 when nothing is queued for the key; -ENOMEM.
 */
int khala__store_queued_get(khalad_t *d, const void *key, size_t klen, khala_tier_value_t *out);

#endif /* KHALA_DAEMON_STORE_H */
