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
 *               archive when the store keeps one. The phase's first step plans: it ranks every
 *               entry (khala__disk_index_rank), takes the least valuable until the store would
 *               fit, and sorts those victims by key; the steps then evict them in key order;
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
 * Why a plan in key order: LMDB rewrites every page a transaction touches. Victims sampled at
 * random (as a put evicts) are spread over the whole B-tree, so each step of 1,000 rewrote most
 * of the store's pages, and a cleanup of 100 k rows over max_entries took seconds (measured:
 * 728 ms for 20 k rows). In key order, the steps walk the B-tree once: each page is written
 * about once in the whole cleanup. The plan is a snapshot: a victim deleted or rewritten since
 * is skipped (it is no longer the entry that was ranked), and the phase stops as soon as the
 * store fits. Planning ranks and sorts every entry (a radix sort) and sorts the victims by key
 * (qsort), in one tick: the longest step of such a cleanup (see docs/benchmarks.md).
 *
 * Rejected: the whole cleanup in one transaction (100 k deletions hold khalad's loop thread for
 * tens of ms, and a transaction's dirty pages are bounded); a cursor over "items" for expiry (a
 * read of every record from the map, where the index already holds every expiry).
 */
#include "tier_disk_cleanup.h"

#include <errno.h>
#include <inttypes.h>
#include <lmdb.h>
#include <stdlib.h>
#include <string.h>

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

/* Phase 2's plan: every entry ranked at once (khala__disk_index_rank), the least valuable
 * taken until the store would be within its capacities, and those victims sorted by key. */
typedef struct cand {
    uint64_t rank;
    entry_t *e;
} cand_t;

/* Sort c[0 .. n) by rank: LSD radix sort by bytes, skipping the bytes every rank shares (the
 * counter byte and the high bytes of seq mostly are): a few linear passes, where qsort took
 * 28 ms for 200 k entries. tmp has room for n. */
static void sort_by_rank(cand_t *c, cand_t *tmp, size_t n) {
    for (int shift = 0; shift < 64; shift += 8) {
        size_t count[256] = {0};
        for (size_t i = 0; i < n; i++)
            count[(c[i].rank >> shift) & 0xff]++;
        if (count[(c[0].rank >> shift) & 0xff] == n)
            continue; /* one digit for all: this pass changes nothing */
        size_t pos = 0;
        for (int b = 0; b < 256; b++) {
            size_t k = count[b];
            count[b] = pos;
            pos += k;
        }
        for (size_t i = 0; i < n; i++)
            tmp[count[(c[i].rank >> shift) & 0xff]++] = c[i];
        memcpy(c, tmp, n * sizeof(*c));
    }
}

static int by_key(const void *a, const void *b) {
    const entry_t *x = ((const cand_t *)a)->e, *y = ((const cand_t *)b)->e;
    size_t n = x->klen < y->klen ? x->klen : y->klen;
    int c = memcmp(x->key, y->key, n);
    return c ? c : (int)x->klen - (int)y->klen;
}

static int over(const disk_t *d) {
    return d->ix.n > d->max_items || d->ix.bytes > d->max_bytes;
}

static int plan(disk_t *d, int64_t now_rt) {
    size_t n = d->ix.n, k = 0, len = 0;
    cand_t *c = malloc(2 * n * sizeof(*c));
    if (!c)
        return -ENOMEM;
    uint32_t now_min = khala__disk_index_now_min(&d->ix);
    for (size_t i = 0; i < n; i++)
        c[i] = (cand_t){khala__disk_index_rank(d->ix.dense[i], now_min, now_rt), d->ix.dense[i]};
    sort_by_rank(c, c + n, n);
    uint64_t items = n, bytes = d->ix.bytes;
    while (k < n && (items > d->max_items || bytes > d->max_bytes)) {
        items--;
        bytes -= c[k].e->bytes;
        len += 1 + c[k++].e->klen;
    }
    qsort(c, k, sizeof(*c), by_key);
    uint8_t *p = malloc(len ? len : 1);
    if (!p) {
        free(c);
        return -ENOMEM;
    }
    for (size_t i = 0, off = 0; i < k; i++) {
        p[off] = c[i].e->klen;
        memcpy(p + off + 1, c[i].e->key, c[i].e->klen);
        off += 1 + c[i].e->klen;
    }
    free(c);
    d->cleanup_plan = p;
    d->cleanup_plan_len = len;
    d->cleanup_plan_off = 0;
    return 0;
}

static void plan_free(disk_t *d) {
    free(d->cleanup_plan);
    d->cleanup_plan = NULL;
    d->cleanup_plan_len = d->cleanup_plan_off = 0;
}

/* Phase 2, one step: the plan's next victims (planned at the phase's first step). */
static int evict_step(disk_t *d, int64_t now_rt, size_t *rows, int *done) {
    *rows = 0;
    *done = !over(d);
    if (*done) {
        plan_free(d);
        return 0;
    }
    int rc;
    if (!d->cleanup_plan && (rc = plan(d, now_rt)) != 0)
        return rc;
    MDB_txn *txn;
    if ((rc = khala__disk_store_wtxn_begin(d, 1, &txn)) != 0)
        return rc;
    size_t off = d->cleanup_plan_off, n = 0;
    uint64_t items = d->ix.n, bytes = d->ix.bytes;
    while (!rc && off < d->cleanup_plan_len && n < d->cleanup_batch &&
           (items > d->max_items || bytes > d->max_bytes)) {
        size_t klen = d->cleanup_plan[off];
        const uint8_t *key = d->cleanup_plan + off + 1;
        off += 1 + klen;
        entry_t *e = khala__disk_index_find(&d->ix, key, klen);
        if (!e || e->pinned) /* removed or rewritten since the plan: not a victim now */
            continue;
        int live = khala__disk_live(e->expire_ms, now_rt);
        if (live && d->archive_retention_ms)
            rc = khala__disk_archive_move_txn(d, txn, e->key, e->klen, now_rt);
        if (!rc)
            rc = khala__disk_store_del_both(d, txn, e->key, e->klen);
        if (rc == MDB_NOTFOUND)
            rc = 0;
        if (!rc)
            rc = khala__disk_store_act_push(
                d, (act_t){.kind = live ? KHALA_DISK_ACT_EVICT : KHALA_DISK_ACT_EXPIRE, .old = e});
        if (rc)
            break;
        e->pinned = 1;
        items--;
        bytes -= e->bytes;
        n++;
    }
    rc = khala__disk_store_wtxn_end(d, txn, 1, rc);
    if (rc) {
        khala__disk_store_acts_discard(d);
        return rc; /* the plan resumes where this step began */
    }
    khala__disk_store_acts_apply(d);
    d->cleanup_plan_off = off;
    *rows = n;
    *done = !over(d) || off >= d->cleanup_plan_len;
    if (*done)
        plan_free(d); /* still over (puts since the plan): the next cleanup plans again */
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
