/*
 * The disk tier's store (tier_disk_store.h): the LMDB environment, its transactions, and the
 * write set that keeps the in-memory index equal to the "items" database.
 *
 * FILES
 *
 *   <path>/data.mdb, lock.mdb   one LMDB environment (MDB_NOTLS), three named databases:
 *       "items"  key -> record      the items, in key order (scan, prefix invalidation)
 *       "lfu"    key -> counter     access counters, a hint written without fsync
 *       "meta"   "format" -> magic  refuses what is not ours or is newer than us
 *     and, with an archive (archive_retention_ms; daemon/tier_disk_archive.c), two more:
 *       "archive"     key -> record           copies evicted for space, expiry = retention end
 *       "archive_age" expiry, seq, key -> ""  the same, oldest first (retention, bound)
 *   <path>/khala.lock               flock'd while open: one opener per store
 *
 *   The records of "items" and "meta" are laid out in daemon/tier_disk_record.c.
 *   In memory: an index of the items (sizes, expiry, LFU counters; daemon/tier_disk_index.c).
 *
 * THE INDEX AND THE WRITE SET
 *
 * The index mirrors the items database exactly: same keys, bytes = klen + vlen, same expiry. It
 * is rebuilt at open by one pass over the records (plus one over "lfu" for the counters), and is
 * changed only after the LMDB commit that made the change on disk succeeded, so that a failed
 * write leaves both as they were. A write (built in daemon/tier_disk.c) therefore:
 *   1. records each change it makes in the transaction in the write set (act_push), pinning
 *      the index entries it touches and allocating the entries of new keys;
 *   2. reserves the index's room for the new entries (khala__disk_index_reserve);
 *   3. commits (wtxn_end); then
 *   4. on success applies the write set to the index (acts_apply), which cannot fail, or on
 *      failure forgets it (acts_discard), which frees the new entries and unpins the others.
 * Everything a write will need in memory is allocated before the commit, so nothing can fail
 * after it.
 *
 * DURABILITY. With sync_every_ms 0 a durable commit is fsync'd: when it returns, the items are
 * on disk. With sync_every_ms N the environment is MDB_NOSYNC: a commit writes its pages to the
 * file (the kernel's page cache) and returns, which survives a crash or SIGKILL of khalad; the
 * tier's tick fsyncs at most every N ms (d->dirty says whether anything is pending).
 * Transactions that only remove dead items or write hints (counters) commit without fsync
 * (MDB_NOSYNC for that transaction only); the next synced commit flushes them too.
 *
 * MAP SIZE. LMDB needs its maximum size up front. The first guess is twice the bytes the
 * capacities allow plus per-item overhead (B-tree pages are half full at worst, and
 * copy-on-write keeps old pages until the commit); a write that still hits MDB_MAP_FULL is
 * aborted, the map doubled (khala__disk_store_grow), and the write run again, so a put within
 * max_bytes never fails for the map's sake. On Linux the file grows with use, not with the map.
 *
 * LFU COUNTERS are kept in "lfu" by the tier's tick (changed ones, in bounded batches) and at
 * close; the time since the last flush is not known at open, so a reopened store's counters
 * restart their decay clock.
 *
 * Invariants:
 *   - index keys == items keys, with equal sizes and expiry, whenever no write is in flight.
 *   - "lfu" holds no key absent from "items" (a delete removes both in one transaction).
 *   - pinned is 0 on every entry outside a write (it marks the write's keys and victims).
 *   - nact is 0 outside a write.
 *
 * Rejected: keeping counters in the records (a get would become a synced write).
 */
#include "tier_disk_store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "errbuf.h"
#include "khala/error.h"
#include "lmdb_check.h"
#include "sys.h"
#include "tier_disk_archive.h"
#include "tier_disk_cleanup.h"
#include "tier_disk_record.h"

/* The key of the "meta" database's format record. */
#define META_KEY "format"

/* Map size: the smallest first map, the largest first guess (growth may go further). */
#define MAP_MIN ((size_t)16 << 20)
#define MAP_GUESS_MAX ((uint64_t)1 << 40)

typedef khala_disk_entry_t entry_t;
typedef khala_disk_store_t disk_t;
typedef khala_disk_act_t act_t;

/* ------------------------------------------------------------------------------------------ */
/* Messages                                                                                   */
/* ------------------------------------------------------------------------------------------ */

int64_t khala__disk_store_realtime_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Format "<path>: <message>" into t->err and return rc. */
int khala__disk_store_fail(disk_t *d, int rc, const char *fmt, ...) {
    int off = snprintf(d->tier.err, sizeof(d->tier.err), "%s: ", d->path);
    if (off < 0 || (size_t)off >= sizeof(d->tier.err))
        off = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->tier.err + off, sizeof(d->tier.err) - (size_t)off, fmt, ap);
    va_end(ap);
    return rc;
}

/* An LMDB (or errno) failure of an operation as a khala code. A damaged file is ECORRUPT; any
 * other failure means the level cannot serve now (disk full, I/O error), which is ETIER:
 * khalad then marks the tier unhealthy and queues its writes. */
static int mdb_code(int rc) {
    switch (rc) {
        case ENOMEM:
            return -ENOMEM;
        case MDB_CORRUPTED:
        case MDB_PAGE_NOTFOUND:
        case MDB_INVALID:
        case MDB_VERSION_MISMATCH:
            return KHALA_ECORRUPT;
        default:
            return KHALA_ETIER;
    }
}

/* 1 if rc is LMDB's (MDB_* or a positive errno) rather than a khala code or a -errno. */
int khala__disk_store_is_mdb(int rc) {
    return rc > 0 || (rc >= MDB_KEYEXIST && rc <= MDB_LAST_ERRCODE);
}

/* Report the failure rc (LMDB's or ours) of `what` and count it. */
int khala__disk_store_mdb_fail(disk_t *d, int rc, const char *what) {
    d->st.errors++;
    if (!khala__disk_store_is_mdb(rc))
        return khala__disk_store_fail(d, rc, "%s: %s", what, khala_strerror(rc));
    return khala__disk_store_fail(d, mdb_code(rc), "%s: %s", what, mdb_strerror(rc));
}

/* ------------------------------------------------------------------------------------------ */
/* The write set                                                                              */
/* ------------------------------------------------------------------------------------------ */

int khala__disk_store_act_push(disk_t *d, act_t a) {
    if (d->nact == d->act_cap) {
        size_t cap = d->act_cap ? d->act_cap * 2 : 64;
        act_t *acts = realloc(d->acts, cap * sizeof(*acts));
        if (!acts)
            return -ENOMEM;
        d->acts = acts;
        d->act_cap = cap;
    }
    d->acts[d->nact++] = a;
    return 0;
}

/* Forget the write being built: free the fresh entries, unpin the others. */
void khala__disk_store_acts_discard(disk_t *d) {
    for (size_t i = 0; i < d->nact; i++) {
        act_t *a = &d->acts[i];
        free(a->fresh);
        if (a->old)
            a->old->pinned = 0;
    }
    d->nact = 0;
    d->arch_dn = d->arch_dbytes = 0;
}

/* Apply a committed write to the index (cannot fail: room was reserved). */
void khala__disk_store_acts_apply(disk_t *d) {
    for (size_t i = 0; i < d->nact; i++) {
        act_t *a = &d->acts[i];
        if (a->kind != KHALA_DISK_ACT_PUT) {
            if (a->kind == KHALA_DISK_ACT_EVICT)
                d->st.evictions++;
            else if (a->kind == KHALA_DISK_ACT_EXPIRE)
                d->st.expirations++;
            khala__disk_vectors_remove(&d->vec, a->old->key, a->old->klen);
            khala__disk_index_remove(&d->ix, a->old);
            continue;
        }
        entry_t *e =
            a->old ? a->old : khala__disk_index_find(&d->ix, a->fresh->key, a->fresh->klen);
        if (e) {
            free(a->fresh);
            e->pinned = 0;
            khala__disk_index_resize(&d->ix, e, a->bytes);
        } else {
            e = a->fresh;
            e->bytes = a->bytes;
            e->decay_min = khala__disk_index_now_min(&d->ix);
            khala__disk_index_insert(&d->ix, e);
        }
        e->expire_ms = a->expire_ms;
        e->seq = ++d->ix.seq;
        if (a->val)
            (void)khala__disk_vectors_set(&d->vec, e->key, e->klen, a->val->type, a->val->data,
                                          a->val->len, a->expire_ms);
        else
            khala__disk_vectors_remove(&d->vec, e->key, e->klen);
    }
    d->nact = 0;
    d->arch_n = (uint64_t)((int64_t)d->arch_n + d->arch_dn);
    d->arch_bytes = (uint64_t)((int64_t)d->arch_bytes + d->arch_dbytes);
    d->arch_dn = d->arch_dbytes = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Transactions                                                                               */
/* ------------------------------------------------------------------------------------------ */

/* Double the map after MDB_MAP_FULL. No transaction may be open in this process. */
int khala__disk_store_grow(disk_t *d) {
    MDB_envinfo info;
    if (d->rtxn) {
        mdb_txn_abort(d->rtxn);
        d->rtxn = NULL;
    }
    mdb_env_info(d->env, &info);
    if (info.me_mapsize > SIZE_MAX / 2)
        return khala__disk_store_mdb_fail(d, MDB_MAP_FULL, "cannot grow the map further");
    int rc = mdb_env_set_mapsize(d->env, info.me_mapsize * 2);
    if (rc)
        return khala__disk_store_mdb_fail(d, rc, "growing the map");
    return 0;
}

/* Begin a write transaction; nosync for those that only remove dead items or write hints. */
int khala__disk_store_wtxn_begin(disk_t *d, int nosync, MDB_txn **txn) {
    if (d->sync_every_ms)
        nosync = 0; /* the whole environment is MDB_NOSYNC: nothing to switch */
    if (nosync)
        mdb_env_set_flags(d->env, MDB_NOSYNC, 1);
    int rc = mdb_txn_begin(d->env, NULL, 0, txn);
    if (rc == MDB_MAP_RESIZED) { /* another process grew it; cannot happen under khala.lock */
        mdb_env_set_mapsize(d->env, 0);
        rc = mdb_txn_begin(d->env, NULL, 0, txn);
    }
    if (rc && nosync)
        mdb_env_set_flags(d->env, MDB_NOSYNC, 0);
    return rc;
}

/* Commit (or abort, when rc != 0) a write transaction; returns the commit's result. */
int khala__disk_store_wtxn_end(disk_t *d, MDB_txn *txn, int nosync, int rc) {
    if (d->sync_every_ms)
        nosync = 0;
    if (rc)
        mdb_txn_abort(txn);
    else
        rc = mdb_txn_commit(txn);
    if (rc == 0)
        d->dirty = 1;
    if (nosync)
        mdb_env_set_flags(d->env, MDB_NOSYNC, 0);
    return rc;
}

int khala__disk_store_rtxn_begin(disk_t *d, MDB_txn **txn) {
    int rc = d->rtxn ? mdb_txn_renew(d->rtxn) : mdb_txn_begin(d->env, NULL, MDB_RDONLY, &d->rtxn);
    if (rc == MDB_MAP_RESIZED) {
        if (d->rtxn)
            mdb_txn_abort(d->rtxn);
        d->rtxn = NULL;
        mdb_env_set_mapsize(d->env, 0);
        rc = mdb_txn_begin(d->env, NULL, MDB_RDONLY, &d->rtxn);
    }
    if (rc) {
        if (d->rtxn)
            mdb_txn_abort(d->rtxn);
        d->rtxn = NULL;
        return khala__disk_store_mdb_fail(d, rc, "beginning a read transaction");
    }
    *txn = d->rtxn;
    return 0;
}

void khala__disk_store_rtxn_end(disk_t *d) {
    mdb_txn_reset(d->rtxn);
}

/* Delete key from "items" and "lfu" in txn. Returns an LMDB code (MDB_NOTFOUND if absent). */
int khala__disk_store_del_both(disk_t *d, MDB_txn *txn, const void *key, size_t klen) {
    MDB_val k = {klen, (void *)key};
    int rc = mdb_del(txn, d->items, &k, NULL);
    if (rc)
        return rc;
    rc = mdb_del(txn, d->lfu, &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Step 3 of a write: evict until the projection (index plus the write's changes, items_delta
 * and bytes_delta) is within the capacities, or max victims were chosen. Victims are deleted in
 * txn and recorded. */
int khala__disk_store_evict_txn(disk_t *d, MDB_txn *txn, int64_t items_delta, int64_t bytes_delta,
                                int64_t now_rt, size_t max, int relaxed) {
    int64_t items = (int64_t)d->ix.n + items_delta;
    int64_t bytes = (int64_t)d->ix.bytes + bytes_delta;
    uint64_t cap_items = d->max_items, cap_bytes = d->max_bytes;
    if (relaxed && d->ix.n > cap_items)
        cap_items = d->ix.n;
    if (relaxed && d->ix.bytes > cap_bytes)
        cap_bytes = d->ix.bytes;
    for (size_t chosen = 0; chosen < max; chosen++) {
        if ((uint64_t)items <= cap_items && (uint64_t)bytes <= cap_bytes)
            break;
        entry_t *v = khala__disk_index_pick_victim(&d->ix, now_rt);
        if (!v)
            return khala__disk_store_fail(d, KHALA_EFULL,
                                          "%" PRId64 " items of %" PRId64 " bytes in one write "
                                          "exceed max_items %" PRIu64 " / max_bytes %" PRIu64,
                                          items, bytes, d->max_items, d->max_bytes);
        khala_disk_act_kind_t kind =
            khala__disk_live(v->expire_ms, now_rt) ? KHALA_DISK_ACT_EVICT : KHALA_DISK_ACT_EXPIRE;
        int rc = 0;
        if (kind == KHALA_DISK_ACT_EVICT && d->archive_retention_ms)
            rc = khala__disk_archive_move_txn(d, txn, v->key, v->klen, NULL, now_rt);
        if (!rc)
            rc = khala__disk_store_del_both(d, txn, v->key, v->klen);
        if (rc)
            return rc;
        rc = khala__disk_store_act_push(d, (act_t){.kind = kind, .old = v});
        if (rc)
            return rc;
        v->pinned = 1;
        items--;
        bytes -= v->bytes;
    }
    return 0;
}

/* Write up to max changed counters to "lfu", examining up to examine entries from
 * d->flush_pos on, in one transaction without fsync (counters are hints). */
int khala__disk_store_flush_counters(disk_t *d, size_t examine, size_t max) {
    if (!d->ix.n)
        return 0;
    MDB_txn *txn;
    int rc = khala__disk_store_wtxn_begin(d, 1, &txn);
    if (rc)
        return rc;
    size_t written = 0, pos = d->flush_pos;
    if (examine > d->ix.n)
        examine = d->ix.n;
    for (size_t i = 0; i < examine && written < max && !rc; i++, pos++) {
        entry_t *e = d->ix.dense[pos % d->ix.n];
        if (!e->dirty)
            continue;
        MDB_val k = {e->klen, e->key}, v = {1, &e->counter};
        rc = mdb_put(txn, d->lfu, &k, &v, 0);
        written++;
    }
    rc = khala__disk_store_wtxn_end(d, txn, 1, rc);
    if (rc)
        return rc;
    /* Committed: mark what was written clean. */
    for (size_t i = 0, p = d->flush_pos; i < examine && written; i++, p++) {
        entry_t *e = d->ix.dense[p % d->ix.n];
        if (e->dirty) {
            e->dirty = 0;
            written--;
        }
    }
    d->flush_pos = pos % d->ix.n;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Open and close                                                                             */
/* ------------------------------------------------------------------------------------------ */

static void store_free(disk_t *d) {
    if (d->rtxn)
        mdb_txn_abort(d->rtxn);
    if (d->env)
        mdb_env_close(d->env);
    if (d->lock_fd >= 0)
        close(d->lock_fd);
    khala__disk_index_free(&d->ix);
    free(d->arch_buf);
    khala__disk_vectors_free(&d->vec);
    free(d->acts);
    free(d->path);
    free(d);
}

/* The first map size (see MAP SIZE above). */
static size_t map_guess(const khala_tier_disk_opts_t *o, uint32_t max_value) {
    uint64_t per_item = KHALA_DISK_REC_HDR + 16 /* LMDB node */ + 16 /* its "lfu" twin */;
    uint64_t g = MAP_GUESS_MAX;
    int copies = o->archive_retention_ms ? 2 : 1; /* the archive holds the capacities again */
    if (o->max_bytes < MAP_GUESS_MAX / 4 && o->max_items < MAP_GUESS_MAX / (4 * per_item)) {
        g = 2 * copies * (o->max_bytes + o->max_items * per_item) + 2 * (uint64_t)max_value +
            MAP_MIN;
        if (g > MAP_GUESS_MAX)
            g = MAP_GUESS_MAX;
    }
    if (g > SIZE_MAX / 2)
        g = SIZE_MAX / 2;
    g = (g + (1u << 20) - 1) & ~(uint64_t)((1u << 20) - 1);
    return (size_t)g;
}

/* Open the databases, checking or writing the format record; empty them if not persistent. */
static int open_dbs(disk_t *d, bool persistent, char *err, size_t errlen) {
    MDB_txn *txn;
    MDB_dbi main_db;
    MDB_stat st;
    MDB_val k = {sizeof(META_KEY) - 1, META_KEY}, v;
    int rc = mdb_txn_begin(d->env, NULL, 0, &txn);
    if (rc)
        return khala__errbuf(err, errlen, mdb_code(rc), "%s: %s", d->path, mdb_strerror(rc));
    rc = mdb_dbi_open(txn, "meta", 0, &d->meta);
    if (rc == MDB_NOTFOUND) {
        /* No meta: a new store only if LMDB's main database is empty. */
        rc = mdb_dbi_open(txn, NULL, 0, &main_db);
        if (!rc)
            rc = mdb_stat(txn, main_db, &st);
        if (!rc && st.ms_entries) {
            mdb_txn_abort(txn);
            return khala__errbuf(err, errlen, KHALA_ECONFIG,
                                 "%s is not a khala disk store (an LMDB store without khala's "
                                 "format record)",
                                 d->path);
        }
        if (!rc)
            rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &d->meta);
        if (!rc) {
            uint8_t m[KHALA_DISK_META_SIZE];
            khala__disk_meta_encode(m);
            v = (MDB_val){sizeof(m), m};
            rc = mdb_put(txn, d->meta, &k, &v, 0);
        }
    } else if (rc == MDB_INCOMPATIBLE) {
        mdb_txn_abort(txn);
        return khala__errbuf(err, errlen, KHALA_ECONFIG,
                             "%s is not a khala disk store (its 'meta' is not a database)",
                             d->path);
    } else if (!rc) {
        rc = mdb_get(txn, d->meta, &k, &v);
        uint32_t f = 0;
        int checked = rc ? 0 : khala__disk_meta_check(v.mv_data, v.mv_size, &f);
        if (rc == MDB_NOTFOUND || checked == KHALA_ECORRUPT) {
            mdb_txn_abort(txn);
            return khala__errbuf(err, errlen, KHALA_ECONFIG,
                                 "%s is not a khala disk store (no valid format record)", d->path);
        }
        if (checked == KHALA_EVERSION) {
            mdb_txn_abort(txn);
            return khala__errbuf(err, errlen, KHALA_ECONFIG,
                                 "%s was written by a newer khala (store format %" PRIu32
                                 "; this build reads format %u)",
                                 d->path, f, KHALA_DISK_STORE_FORMAT);
        }
    }
    if (!rc)
        rc = mdb_dbi_open(txn, "items", MDB_CREATE, &d->items);
    if (!rc)
        rc = mdb_dbi_open(txn, "lfu", MDB_CREATE, &d->lfu);
    if (!rc && !persistent) {
        rc = mdb_drop(txn, d->items, 0);
        if (!rc)
            rc = mdb_drop(txn, d->lfu, 0);
    }
    if (!rc)
        rc = khala__disk_archive_open_dbs(d, txn, persistent);
    if (rc) {
        mdb_txn_abort(txn);
        return khala__errbuf(err, errlen, mdb_code(rc), "%s: opening the databases: %s", d->path,
                             mdb_strerror(rc));
    }
    rc = mdb_txn_commit(txn);
    if (rc)
        return khala__errbuf(err, errlen, mdb_code(rc), "%s: %s", d->path, mdb_strerror(rc));
    return 0;
}

/* Rebuild the index from the records, then the counters from "lfu". */
static int load_index(disk_t *d, char *err, size_t errlen) {
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    MDB_val k, v;
    char kb[KHALA_ERRBUF_QUOTE_CAP], why[80];
    int rc = mdb_txn_begin(d->env, NULL, MDB_RDONLY, &txn);
    if (rc)
        return khala__errbuf(err, errlen, mdb_code(rc), "%s: %s", d->path, mdb_strerror(rc));
    MDB_stat st;
    rc = mdb_stat(txn, d->items, &st);
    if (!rc && khala__disk_index_reserve(&d->ix, st.ms_entries) != 0)
        rc = ENOMEM;
    if (!rc)
        rc = mdb_cursor_open(txn, d->items, &c);
    if (!rc)
        rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    uint32_t now = khala__disk_index_now_min(&d->ix);
    for (; !rc; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        khala_disk_rec_t rec;
        if (k.mv_size == 0 || k.mv_size > KHALA_KEY_MAX)
            snprintf(why, sizeof(why), "a key of %zu bytes", k.mv_size);
        if (k.mv_size == 0 || k.mv_size > KHALA_KEY_MAX ||
            khala__disk_rec_decode(v.mv_data, v.mv_size, &rec, why, sizeof(why)) != 0) {
            mdb_cursor_close(c);
            mdb_txn_abort(txn);
            return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                 "%s: record of key '%s' is malformed (%zu bytes: %s); remove "
                                 "the store to start afresh",
                                 d->path,
                                 khala__disk_store_key_show(k.mv_data, k.mv_size, kb, sizeof(kb)),
                                 v.mv_size, why);
        }
        entry_t *e = khala__disk_index_entry_new(&d->ix, k.mv_data, k.mv_size);
        if (!e || khala__disk_index_reserve(&d->ix, 1)) {
            free(e);
            rc = ENOMEM;
            break;
        }
        e->bytes = (uint32_t)(k.mv_size + rec.len);
        e->expire_ms = rec.expire_ms;
        e->decay_min = now;
        khala__disk_index_insert(&d->ix, e);
    }
    if (c)
        mdb_cursor_close(c);
    c = NULL;
    if (rc == MDB_NOTFOUND)
        rc = mdb_cursor_open(txn, d->lfu, &c);
    if (!rc)
        rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    for (; !rc; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        entry_t *e = khala__disk_index_find(&d->ix, k.mv_data, k.mv_size);
        if (e && v.mv_size == 1)
            e->counter = *(const uint8_t *)v.mv_data;
    }
    if (c)
        mdb_cursor_close(c);
    mdb_txn_abort(txn);
    if (rc != MDB_NOTFOUND)
        return khala__errbuf(err, errlen, mdb_code(rc), "%s: reading the records: %s", d->path,
                             mdb_strerror(rc));
    return 0;
}

/* Evict down to the capacities (they may have been lowered since the store was written), in
 * transactions of at most KHALA_DISK_BATCH_MAX removals. */
static int trim(disk_t *d, char *err, size_t errlen) {
    int grown = 0;
    while (d->ix.n > d->max_items || d->ix.bytes > d->max_bytes) {
        MDB_txn *txn;
        int rc = khala__disk_store_wtxn_begin(d, 0, &txn);
        if (!rc) {
            rc = khala__disk_store_evict_txn(d, txn, 0, 0, khala__disk_store_realtime_ms(),
                                             KHALA_DISK_BATCH_MAX, 0);
            rc = khala__disk_store_wtxn_end(d, txn, 0, rc);
        }
        if (rc) {
            khala__disk_store_acts_discard(d);
            if (rc == MDB_MAP_FULL && grown++ < KHALA_DISK_MAP_GROW_TRIES &&
                khala__disk_store_grow(d) == 0)
                continue;
            return khala__errbuf(err, errlen, khala__disk_store_is_mdb(rc) ? mdb_code(rc) : rc,
                                 "%s: evicting down to the capacities: %s", d->path,
                                 khala__disk_store_is_mdb(rc) ? mdb_strerror(rc)
                                                              : khala_strerror(rc));
        }
        khala__disk_store_acts_apply(d);
    }
    return 0;
}

int khala__disk_store_open(const khala_tier_disk_opts_t *o, uint32_t max_value,
                           khala_disk_store_t **out, char *err, size_t errlen) {
    int rc;
    disk_t *d = calloc(1, sizeof(*d));
    if (!d || !(d->path = strdup(o->path))) {
        free(d);
        return khala__errbuf(err, errlen, -ENOMEM, "%s: out of memory", o->path);
    }
    d->lock_fd = -1;
    d->max_items = o->max_items;
    d->max_bytes = o->max_bytes;
    d->max_value = max_value;
    d->archive_retention_ms = o->archive_retention_ms;
    d->cleanup_interval_ms = o->cleanup_interval_ms;
    d->cleanup_batch = o->cleanup_batch ? o->cleanup_batch : KHALA_DISK_CLEANUP_BATCH_DEFAULT;
    khala__disk_index_init(&d->ix, khala__sys_random_u64(), khala__sys_now_ms());
    khala__disk_vectors_init(&d->vec, d->ix.seed);
    d->last_flush_ms = d->ix.clock0_ms;
    d->tier.impl = d;

    char lock[4200];
    snprintf(lock, sizeof(lock), "%s/khala.lock", o->path);
    d->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (d->lock_fd < 0) {
        rc = khala__errbuf(err, errlen, -errno, "%s: cannot open %s: %s", o->path, lock,
                           strerror(errno));
        goto fail;
    }
    if (flock(d->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
        khala__errbuf(err, errlen, rc, "%s: the store is in use by another process (%s)", o->path,
                      lock);
        goto fail;
    }

    /* A damaged file is refused here, not met by a SIGBUS or SIGSEGV at a read (lmdb_check.c). */
    if ((rc = khala__lmdb_check(o->path, "the disk store", err, errlen)) != 0)
        goto fail;
    rc = mdb_env_create(&d->env);
    if (!rc)
        rc = mdb_env_set_maxdbs(d->env, 3 + KHALA_DISK_ARCHIVE_DBS);
    if (!rc)
        rc = mdb_env_set_mapsize(d->env, map_guess(o, max_value));
    if (rc) {
        rc = khala__errbuf(err, errlen, mdb_code(rc), "%s: %s", o->path, mdb_strerror(rc));
        goto fail;
    }
    /* MDB_NOTLS: read transactions are not tied to a thread (we reuse one, reset, across
     * calls). Commits sync unless sync_every_ms (see DURABILITY above). */
    d->sync_every_ms = o->sync_every_ms;
    rc = mdb_env_open(d->env, o->path, MDB_NOTLS | (o->sync_every_ms ? MDB_NOSYNC : 0), 0600);
    if (rc) {
        if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH || rc == MDB_CORRUPTED)
            rc = khala__errbuf(err, errlen, KHALA_ECORRUPT,
                               "%s is not a khala disk store (data.mdb: %s)", o->path,
                               mdb_strerror(rc));
        else if (rc > 0)
            rc = khala__errbuf(err, errlen, -rc, "%s: cannot open the store: %s", o->path,
                               mdb_strerror(rc));
        else
            rc = khala__errbuf(err, errlen, mdb_code(rc), "%s: cannot open the store: %s", o->path,
                               mdb_strerror(rc));
        goto fail;
    }
    if ((rc = open_dbs(d, o->persistent, err, errlen)) != 0)
        goto fail;
    if ((rc = load_index(d, err, errlen)) != 0)
        goto fail;
    if ((rc = khala__disk_archive_load(d, err, errlen)) != 0)
        goto fail;
    /* With a periodic cleanup, its first run (at the first tick) evicts in bounded steps what is
     * over the capacities, so that the open of a large store is not held up by it. */
    if (!d->cleanup_interval_ms && (rc = trim(d, err, errlen)) != 0)
        goto fail;
    *out = d;
    return 0;

fail:
    store_free(d);
    return rc;
}

void khala__disk_store_close(khala_disk_store_t *d) {
    if (!d)
        return;
    khala__disk_store_flush_counters(d, d->ix.n, SIZE_MAX);
    mdb_env_sync(d->env, 1);
    store_free(d);
}
