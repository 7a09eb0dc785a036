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
 *               archive when the store keeps one. It works in passes over "items" in key
 *               order: a pass estimates, from RANK_SAMPLES random entries, the rank
 *               (khala__disk_index_rank) below which RANK_MARGIN of the excess lies, then its
 *               steps walk the records from where the last stopped (examining at most
 *               EXAMINE_FACTOR times cleanup_batch) and evict those ranked at or below it. Passes
 *               repeat while the excess is a batch or more; the last rows go as a put evicts
 *               them (the coldest of random samples);
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
 * Why passes in key order: LMDB rewrites every page a transaction touches. Victims sampled at
 * random (as a put evicts) are spread over the whole B-tree, so each step of 1,000 rewrote most
 * of the store's pages, and a cleanup of 100 k rows over max_entries took seconds (measured:
 * 728 ms for 20 k rows). In key order a pass walks the B-tree once, each page written about
 * once. The order of eviction is approximate LFU, as a put's: a pass takes what ranks below a
 * sampled threshold, aiming under the excess so that it rarely takes an entry more valuable
 * than needed.
 *
 * Rejected: the whole cleanup in one transaction (100 k deletions hold khalad's loop thread for
 * tens of ms, and a transaction's dirty pages are bounded); a cursor over "items" for expiry (a
 * read of every record from the map, where the index already holds every expiry); ranking and
 * sorting every entry, then the victims by key, at the phase's start (exact LFU, but 60-80 ms in
 * one tick for 200 k entries: a stall).
 */
#include "tier_disk_cleanup.h"

#include <errno.h>
#include <inttypes.h>
#include <lmdb.h>
#include <stdlib.h>
#include <string.h>

#include "khala/error.h"
#include "sys.h"
#include "tier_disk_archive.h"

/* Entries phase 1 (in memory) and phase 2 (records, in key order) examine per step, per row
 * they may remove. */
#define EXAMINE_FACTOR 16u
/* Phase 2: entries sampled to estimate a pass's rank threshold, and the share of the store's
 * excess one pass aims at (below 1, so that sampling error rarely evicts an entry more valuable
 * than needed: the next pass, or the final sampled step, takes the rest). */
#define RANK_SAMPLES 1024
#define RANK_MARGIN 0.9

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

static int over(const disk_t *d) {
    return d->ix.n > d->max_items || d->ix.bytes > d->max_bytes;
}

static int by_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Start a pass of phase 2: the rank below which it evicts, estimated from RANK_SAMPLES random
 * entries as the RANK_MARGIN share of the fraction of the store that must go. */
static void pass_start(disk_t *d) {
    uint64_t ranks[RANK_SAMPLES], x = khala__sys_random_u64() | 1;
    uint32_t now_min = khala__disk_index_now_min(&d->ix);
    int64_t now_rt = khala__disk_store_realtime_ms();
    double need = 0;
    if (d->ix.n > d->max_items)
        need = (double)(d->ix.n - d->max_items) / (double)d->ix.n;
    if (d->ix.bytes > d->max_bytes && (double)(d->ix.bytes - d->max_bytes) / d->ix.bytes > need)
        need = (double)(d->ix.bytes - d->max_bytes) / (double)d->ix.bytes;
    for (int i = 0; i < RANK_SAMPLES; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ranks[i] = khala__disk_index_rank(d->ix.dense[x % d->ix.n], now_min, now_rt);
    }
    qsort(ranks, RANK_SAMPLES, sizeof(ranks[0]), by_u64);
    size_t at = (size_t)(need * RANK_MARGIN * RANK_SAMPLES);
    d->cleanup_rank_max = ranks[at < RANK_SAMPLES ? at : RANK_SAMPLES - 1];
    d->cleanup_pass_rows = 0;
    d->cleanup_walking = 1;
    d->cleanup_key_len = 0;
}

/* Phase 2, one step: the end of the store's excess by sampling, or a step of the pass. */
static int evict_step(disk_t *d, int64_t now_rt, size_t *rows, int *done) {
    *rows = 0;
    *done = !over(d);
    if (*done) {
        d->cleanup_walking = d->cleanup_sampled = 0;
        return 0;
    }
    uint64_t before = d->ix.n;
    MDB_txn *txn;
    int rc;
    if (!d->cleanup_walking &&
        (d->cleanup_sampled ||
         (d->ix.n - (d->ix.n > d->max_items ? d->max_items : d->ix.n) < d->cleanup_batch &&
          d->ix.bytes <= d->max_bytes))) {
        /* A few left: the coldest of random samples, as a put evicts. */
        if ((rc = khala__disk_store_wtxn_begin(d, 1, &txn)) != 0)
            return rc;
        rc = khala__disk_store_evict_txn(d, txn, 0, 0, now_rt, d->cleanup_batch, 0);
        rc = khala__disk_store_wtxn_end(d, txn, 1, rc);
        if (rc) {
            khala__disk_store_acts_discard(d);
            return rc;
        }
        khala__disk_store_acts_apply(d);
        *rows = (size_t)(before - d->ix.n);
        *done = !over(d);
        if (*done)
            d->cleanup_sampled = 0;
        return 0;
    }
    if (!d->cleanup_walking)
        pass_start(d);
    if ((rc = khala__disk_store_wtxn_begin(d, 1, &txn)) != 0)
        return rc;
    MDB_cursor *c = NULL;
    MDB_val k = {d->cleanup_key_len, d->cleanup_key}, r;
    rc = mdb_cursor_open(txn, d->items, &c);
    if (!rc)
        rc = d->cleanup_key_len ? mdb_cursor_get(c, &k, &r, MDB_SET_RANGE)
                                : mdb_cursor_get(c, &k, &r, MDB_FIRST);
    uint32_t now_min = khala__disk_index_now_min(&d->ix);
    uint64_t items = d->ix.n, bytes = d->ix.bytes;
    size_t n = 0, examined = 0, limit = (size_t)d->cleanup_batch * EXAMINE_FACTOR;
    while (!rc && n < d->cleanup_batch && examined < limit &&
           (items > d->max_items || bytes > d->max_bytes)) {
        examined++;
        entry_t *e = khala__disk_index_find(&d->ix, k.mv_data, k.mv_size);
        if (!e || e->pinned || khala__disk_index_rank(e, now_min, now_rt) > d->cleanup_rank_max) {
            rc = mdb_cursor_get(c, &k, &r, MDB_NEXT);
            continue;
        }
        int live = khala__disk_live(e->expire_ms, now_rt);
        if (live && d->archive_retention_ms)
            rc = khala__disk_archive_move_txn(d, txn, e->key, e->klen, &r, now_rt);
        if (!rc)
            rc = mdb_cursor_del(c, 0);
        if (!rc) {
            MDB_val lk = {e->klen, e->key};
            rc = mdb_del(txn, d->lfu, &lk, NULL);
            rc = rc == MDB_NOTFOUND ? 0 : rc;
        }
        if (!rc)
            rc = khala__disk_store_act_push(
                d, (act_t){.kind = live ? KHALA_DISK_ACT_EVICT : KHALA_DISK_ACT_EXPIRE, .old = e});
        if (rc)
            break;
        e->pinned = 1;
        items--;
        bytes -= e->bytes;
        n++;
        /* After a delete the cursor stands on the next key, and MDB_NEXT returns it. */
        rc = mdb_cursor_get(c, &k, &r, MDB_NEXT);
    }
    int end = rc == MDB_NOTFOUND;
    if (end)
        rc = 0;
    uint8_t next[KHALA_KEY_MAX];
    size_t next_len = 0;
    if (!rc && !end && k.mv_size <= KHALA_KEY_MAX) {
        memcpy(next, k.mv_data, k.mv_size);
        next_len = k.mv_size;
    }
    if (c)
        mdb_cursor_close(c);
    rc = khala__disk_store_wtxn_end(d, txn, 1, rc);
    if (rc) {
        khala__disk_store_acts_discard(d);
        return rc; /* the pass resumes where this step began */
    }
    khala__disk_store_acts_apply(d);
    memcpy(d->cleanup_key, next, next_len);
    d->cleanup_key_len = (uint8_t)next_len;
    d->cleanup_pass_rows += n;
    if (end || !next_len) {
        /* The pass is over: the next step starts another if needed, or samples when this one
         * found nothing to take (ranks all above an unlucky threshold). */
        d->cleanup_walking = 0;
        d->cleanup_sampled = d->cleanup_pass_rows == 0;
    }
    *rows = n;
    *done = !over(d);
    if (*done)
        d->cleanup_walking = d->cleanup_sampled = 0;
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
