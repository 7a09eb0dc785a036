/*
 * The disk tier's periodic cleanup (tier_disk_cleanup.h).
 *
 * HOW IT WORKS. Every cleanup_interval_ms (the first right after open) a cleanup runs through
 * three phases, one bounded step per tick of khalad (about every 10 ms):
 *   1. EXPIRE   walk the index's dense array downwards from its end, deleting expired items,
 *               at most cleanup_batch per step (and examining at most EXAMINE_FACTOR times
 *               that many entries, all in memory);
 *   2. EVICT    while the store is over max_items / max_bytes (they were lowered since it was
 *               written: the open then does not trim), evict up to cleanup_batch victims per
 *               step, least valuable first (the index's LFU counters, then age), into the
 *               archive when the store keeps one;
 *   3. ARCHIVE  delete up to cleanup_batch archived copies past their retention, oldest first.
 * Each step is one LMDB transaction committed without fsync: it removes dead items or moves
 * items to the archive, and a step lost in a crash leaves the item where it was, so nothing
 * acknowledged is lost. A phase that finds nothing to do passes to the next in the same tick.
 * While a cleanup runs, the tier's own expiry sweep is skipped (phase 1 does its work), so a
 * tick removes at most cleanup_batch rows of the items and the archive.
 *
 * Why the walk goes downwards: removing an entry moves the dense array's last entry into its
 * slot. Walking from the end, every entry below the position is still unexamined and never
 * moves (moves take entries from above), so one pass examines every entry that was there when
 * the cleanup began, whatever the puts and removals between steps; entries written since are
 * new and live.
 *
 * Rejected: the whole cleanup in one transaction (100 k deletions hold khalad's loop thread for
 * tens of ms, and a transaction's dirty pages are bounded); a cursor over "items" for expiry (a
 * read of every record from the map, where the index already holds every expiry).
 */
#include "tier_disk_cleanup.h"

#include <inttypes.h>
#include <lmdb.h>

#include "khala/error.h"
#include "tier_disk_archive.h"

/* Entries phase 1 examines per step, per row it may remove: in memory, a few µs per thousand. */
#define EXAMINE_FACTOR 16u

typedef khala_disk_store_t disk_t;
typedef khala_disk_entry_t entry_t;
typedef khala_disk_act_t act_t;

/* Phase 1, one step. *done when the walk reached the bottom. */
static int expire_step(disk_t *d, int64_t now_rt, size_t *rows, int *done) {
    size_t batch = d->cleanup_batch, examine = (size_t)batch * EXAMINE_FACTOR;
    if (d->cleanup_pos > d->ix.n)
        d->cleanup_pos = d->ix.n;
    size_t pos = d->cleanup_pos, n = 0;
    /* Examine first, so that a step with nothing to remove opens no transaction. */
    size_t first = pos;
    for (size_t i = 0; i < examine && first > 0 && n < batch; i++)
        if (!khala__disk_live(d->ix.dense[--first]->expire_ms, now_rt))
            n++;
    if (!n) {
        d->cleanup_pos = first;
        *done = first == 0;
        *rows = 0;
        return 0;
    }
    MDB_txn *txn;
    int rc = khala__disk_store_wtxn_begin(d, 1, &txn);
    if (rc)
        return rc;
    n = 0;
    while (pos > first && !rc) {
        entry_t *e = d->ix.dense[--pos];
        if (khala__disk_live(e->expire_ms, now_rt) || e->pinned)
            continue;
        rc = khala__disk_store_del_both(d, txn, e->key, e->klen);
        if (rc == MDB_NOTFOUND) /* cannot happen (the index mirrors "items"): drop the entry */
            rc = 0;
        if (!rc)
            rc = khala__disk_store_act_push(d, (act_t){.kind = KHALA_DISK_ACT_EXPIRE, .old = e});
        if (!rc)
            e->pinned = 1;
        n++;
    }
    rc = khala__disk_store_wtxn_end(d, txn, 1, rc);
    if (rc) {
        khala__disk_store_acts_discard(d);
        return rc;
    }
    khala__disk_store_acts_apply(d);
    d->cleanup_pos = first;
    *done = first == 0;
    *rows = n;
    return 0;
}

/* Phase 2, one step. */
static int evict_step(disk_t *d, int64_t now_rt, size_t *rows, int *done) {
    *rows = 0;
    *done = d->ix.n <= d->max_items && d->ix.bytes <= d->max_bytes;
    if (*done)
        return 0;
    uint64_t before = d->ix.n;
    MDB_txn *txn;
    int rc = khala__disk_store_wtxn_begin(d, 1, &txn);
    if (rc)
        return rc;
    rc = khala__disk_store_evict_txn(d, txn, 0, 0, now_rt, d->cleanup_batch, 0);
    rc = khala__disk_store_wtxn_end(d, txn, 1, rc);
    if (rc) {
        khala__disk_store_acts_discard(d);
        return rc;
    }
    khala__disk_store_acts_apply(d);
    *rows = (size_t)(before - d->ix.n);
    *done = d->ix.n <= d->max_items && d->ix.bytes <= d->max_bytes;
    return 0;
}

int khala__disk_cleanup_tick(disk_t *d, int64_t now_ms) {
    if (!d->cleanup_interval_ms)
        return 0;
    if (d->cleanup_phase == KHALA_DISK_CLEANUP_IDLE) {
        if (now_ms < d->cleanup_next_ms)
            return 0;
        d->cleanup_phase = KHALA_DISK_CLEANUP_EXPIRE;
        d->cleanup_pos = d->ix.n;
    }
    int64_t now_rt = khala__disk_store_realtime_ms();
    size_t rows = 0;
    int rc = 0, done = 0;
    while (!rc && rows == 0 && d->cleanup_phase != KHALA_DISK_CLEANUP_IDLE) {
        done = 0;
        switch (d->cleanup_phase) {
            case KHALA_DISK_CLEANUP_EXPIRE:
                rc = expire_step(d, now_rt, &rows, &done);
                break;
            case KHALA_DISK_CLEANUP_EVICT:
                rc = evict_step(d, now_rt, &rows, &done);
                break;
            default:
                rc = khala__disk_archive_expire_step(d, now_rt, d->cleanup_batch, &rows);
                done = !rc && rows < d->cleanup_batch;
                break;
        }
        if (rc || !done)
            break;
        if (d->cleanup_phase == KHALA_DISK_CLEANUP_ARCHIVE) {
            d->cleanup_phase = KHALA_DISK_CLEANUP_IDLE;
            d->cleanup_next_ms = now_ms + d->cleanup_interval_ms;
            d->cleanups++;
        } else {
            d->cleanup_phase++;
        }
    }
    if (rc) {
        if (rc == MDB_MAP_FULL)
            (void)khala__disk_store_grow(d);
        else
            (void)khala__disk_store_mdb_fail(d, rc, "cleaning up");
        if (rc == MDB_MAP_FULL)
            d->st.errors++;
    }
    return d->cleanup_phase != KHALA_DISK_CLEANUP_IDLE;
}
