/*
 * The disk tier's periodic cleanup: what a store with cleanup_interval_ms (L3's [l3]
 * cleanup_interval) does every interval, in bounded steps run from the tier's tick so that no
 * client waits behind it. Private to the disk tier (daemon/tier_disk.c calls it from tick).
 *
 * Start at khala__disk_cleanup_tick(); daemon/tier_disk_cleanup.c opens with the phases and why
 * a step is bounded the way it is.
 *
 * Thread safety: like the store, khalad's loop thread only.
 */
#ifndef KHALA_DAEMON_TIER_DISK_CLEANUP_H
#define KHALA_DAEMON_TIER_DISK_CLEANUP_H

#include <stdint.h>

#include "tier_disk_store.h"

/** Rows one cleanup step removes or moves when the options give no cleanup_batch. */
#define KHALA_DISK_CLEANUP_BATCH_DEFAULT 1000u

/** Where a cleanup stands (d->cleanup_phase). */
typedef enum khala_disk_cleanup_phase {
    KHALA_DISK_CLEANUP_IDLE = 0, /* waiting for d->cleanup_next_ms */
    KHALA_DISK_CLEANUP_EXPIRE,   /* 1. expired items deleted */
    KHALA_DISK_CLEANUP_EVICT,    /* 2. items over the capacities evicted (to the archive) */
    KHALA_DISK_CLEANUP_ARCHIVE,  /* 3. archived copies past their retention deleted */
} khala_disk_cleanup_phase_t;

/**
 * @brief The cleanup's share of a tick: start a cleanup when one is due (d->cleanup_next_ms;
 *        the first is due at the first tick after open), then, while one runs, one step of it:
 *        at most d->cleanup_batch rows removed or moved, in one transaction without fsync.
 * @param[in] now_ms khalad's monotonic clock, ms (the tick's).
 * @return 1 while a cleanup is in progress after this call (the tier then skips its own expiry
 *         sweep), 0 when idle.
 * @note A failure counts in d->st.errors, leaves its message in d->tier.err, and the step is
 *       tried again at the next tick (a full map is grown first).
 */
int khala__disk_cleanup_tick(khala_disk_store_t *d, int64_t now_ms);

#endif /* KHALA_DAEMON_TIER_DISK_CLEANUP_H */
