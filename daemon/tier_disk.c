/*
 * The embedded disk tier: L2 / L3 on LMDB in a local directory.
 *
 * HOW IT WORKS
 *
 *   <path>/data.mdb, lock.mdb   one LMDB environment (MDB_NOTLS), three named databases:
 *       "items"  key -> record      the items, in key order (scan, prefix invalidation)
 *       "lfu"    key -> counter     access counters, a hint written without fsync
 *       "meta"   "format" -> magic  refuses what is not ours or is newer than us
 *   <path>/khala.lock               flock'd while open: one opener per store
 *
 *   record (host byte order: an LMDB file is not portable across architectures anyway):
 *
 *     0        1      2            8               16               24
 *     +--------+------+------------+---------------+----------------+------------ - -
 *     | format | type | zero       | version (u64) | expire_ms (i64)| value bytes
 *     +--------+------+------------+---------------+----------------+------------ - -
 *
 *   expire_ms is an absolute CLOCK_REALTIME time in ms (0 = never), so a TTL survives a restart
 *   (the monotonic clock does not). format is REC_FORMAT; a record of another format is corrupt.
 *
 *   in memory:  an index of the items (sizes, expiry, LFU counters; daemon/tier_disk_index.c)
 *
 * The index mirrors the items database exactly: same keys, bytes = klen + vlen, same expiry. It
 * is rebuilt at open by one pass over the records (plus one over "lfu" for the counters), and is
 * changed only after the LMDB commit that made the change on disk succeeded, so that a failed
 * write leaves both as they were. Everything a write will need in memory (new entries, table
 * room) is allocated before the commit, so nothing can fail after it.
 *
 * Writes. A put or mput is one write transaction. With sync_every_ms 0 it is committed with
 * fsync: when it returns 0, the items are on disk and survive a crash of khalad or of the host.
 * With sync_every_ms N (khalad's default: [l2] sync_every_ms) the environment is MDB_NOSYNC:
 * a commit writes its pages to the file (the kernel's page cache) and returns, which survives a
 * crash or SIGKILL of khalad; tick() fsyncs at most every N ms, so a crash of the host loses at
 * most the last N ms of writes (Redis's appendfsync everysec, by default). Per item, in the
 * transaction:
 *   1. read the stored record; if it is live and its version is above the new one, refuse
 *      (put: KHALA_EVERSION; mput: skip that item, the level already holds newer data);
 *   2. write the record (MDB_RESERVE, then fill it in place);
 * and then, once for the transaction:
 *   3. while the projected items or bytes exceed max_items / max_bytes, pick a victim (below)
 *      and delete it in the same transaction;
 *   4. commit; 5. apply the changes to the index.
 * Lazy expiry (a get that finds an expired item), tick()'s sweep and the counter flushes
 * remove or write what is only a hint or is already dead, so they commit without fsync
 * (MDB_NOSYNC for that transaction only); the next synced commit flushes them too.
 *
 * LFU. Each entry has Redis's logarithmic 8-bit counter, and a victim is the coldest of a few
 * random entries: approximate LFU, O(1) per eviction, like Redis's allkeys-lfu (the index
 * module, daemon/tier_disk_index.c, holds the counters, their decay and the victim choice).
 * Counters are kept in "lfu" by tick() (changed ones, in bounded batches, at most once a second)
 * and at close; the time since the last flush is not known at open, so a reopened store's
 * counters restart their decay clock.
 *
 * Map size. LMDB needs its maximum size up front. The first guess is twice the bytes the
 * capacities allow plus per-item overhead (B-tree pages are half full at worst, and
 * copy-on-write keeps old pages until the commit); a write that still hits MDB_MAP_FULL is
 * aborted, the map doubled, and the write run again, so a put within max_bytes never fails for
 * the map's sake. On Linux the file grows with use, not with the map.
 *
 * Scans. LMDB keeps keys in order, so a scan resumes strictly after the last key it visited;
 * every key present for the whole scan is visited exactly once. That key (up to KHALA_KEY_MAX
 * bytes) does not fit a 64-bit cursor, so the cursor names one of SCAN_SLOTS slots that holds
 * it; the least recently used slot is reused, and a cursor whose slot was reused (or that comes
 * from an earlier open) is refused with -EINVAL rather than silently restarted.
 *
 * Invariants:
 *   - index keys == items keys, with equal sizes and expiry, whenever no write is in flight.
 *   - "lfu" holds no key absent from "items" (a delete removes both in one transaction).
 *   - pinned is 0 on every entry outside a write (it marks the write's keys and victims).
 *
 * Rejected: keeping counters in the records (a get would become a synced write); a cursor made
 * of the key's first 8 bytes (keys sharing a long prefix, the common case, would never make
 * progress). daemon/tier_disk_index.c gives what was rejected for the index.
 */
#include "tier_disk.h"

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <lmdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dirs.h"
#include "errbuf.h"
#include "khala/error.h"
#include "sys.h"
#include "tier_disk_index.h"

/* Record header; see the layout above. */
#define REC_HDR 24u
#define REC_OFF_FORMAT 0
#define REC_OFF_TYPE 1
#define REC_OFF_VERSION 8
#define REC_OFF_EXPIRE 16
#define REC_FORMAT 1u

/* The "meta" database's one record: META_MAGIC (8 bytes) then the store format (u32) and a
 * reserved u32. A store whose format is above STORE_FORMAT is refused: it was written by a
 * newer khalad whose records this one would misread. */
#define META_KEY "format"
#define META_MAGIC "KHALADSK"
#define META_SIZE 16u
#define STORE_FORMAT 1u

/* tick() bounds: entries examined and removed by one expiry sweep; counters written by one
 * flush and entries it examines; time between flushes. A few ms at most on a slow disk. */
#define SWEEP_EXAMINE 512u
#define SWEEP_MAX 128u
#define FLUSH_EXAMINE 4096u
#define FLUSH_MAX 1024u
#define FLUSH_INTERVAL_MS 1000
/* note_hits raises a counter at most this often per call: the log counter saturates by then. */
#define NOTE_RAISES_MAX 255u

/* Deletions per transaction in invalidate and in the trim at open: bounds a transaction's dirty
 * pages well under LMDB's limit (MDB_TXN_FULL). */
#define BATCH_MAX 8192u

/* Scans: cursor slots, and the keys a page examines when the caller gives no count. */
#define SCAN_SLOTS 16
#define SCAN_COUNT_DEFAULT 100u

/* Map size: the smallest first map, the largest first guess (growth may go further), and how
 * many times one write may double the map. */
#define MAP_MIN ((size_t)16 << 20)
#define MAP_GUESS_MAX ((uint64_t)1 << 40)
#define MAP_GROW_TRIES 16

typedef khala_disk_entry_t entry_t;

/* What a write transaction changes in the index once it has committed. */
typedef enum act_kind {
    ACT_PUT,    /* key written: update old, or insert fresh */
    ACT_EVICT,  /* victim removed for the capacities */
    ACT_EXPIRE, /* expired item removed */
    ACT_DEL,    /* removed by del or invalidate */
} act_kind_t;

typedef struct act {
    act_kind_t kind;
    entry_t *old;   /* PUT: the index entry at build time, or NULL; else the removed entry */
    entry_t *fresh; /* PUT with old == NULL: a new entry, allocated before the commit */
    uint32_t bytes; /* PUT: klen + vlen */
    int64_t expire_ms;
} act_t;

typedef struct scan_slot {
    uint64_t id;   /* the cursor handed out; 0 = free */
    uint64_t used; /* d->ix.seq when last used: the least recently used slot is reused */
    uint8_t klen;  /* last key visited */
    uint8_t key[KHALA_KEY_MAX];
} scan_slot_t;

/* All fields belong to khalad's loop thread (tier.h). */
typedef struct disk {
    khala_tier_t tier; /* what open returns; tier.impl points back here */

    /* Immutable after open. */
    char *path;
    MDB_env *env;
    MDB_dbi items, lfu, meta;
    int lock_fd;
    uint64_t max_items, max_bytes;
    uint32_t max_value;
    uint32_t sync_every_ms; /* 0: fsync each durable commit; else at most this often (tick) */

    int dirty;            /* commits since the last fsync (sync_every_ms only) */
    int64_t last_sync_ms; /* when tick last synced */

    MDB_txn *rtxn; /* a reset read transaction, renewed by each read; NULL until the first */

    khala_disk_index_t ix; /* the items in memory; its seed and clock are set at open */

    /* The write being built (reused buffers). */
    act_t *acts;
    size_t nact, act_cap;

    /* tick(). */
    size_t sweep_pos, flush_pos;
    int64_t last_flush_ms;

    scan_slot_t scans[SCAN_SLOTS];
    uint64_t scan_next; /* ids handed out; mixed with seed so ids differ between opens */

    khala_tier_stats_t st;
} disk_t;

static const khala_tier_ops_t disk_ops;

/* ------------------------------------------------------------------------------------------ */
/* Small helpers                                                                              */
/* ------------------------------------------------------------------------------------------ */

static int64_t realtime_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Format "<path>: <message>" into t->err and return rc. */
__attribute__((format(printf, 3, 4))) static int fail(disk_t *d, int rc, const char *fmt, ...) {
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
static int is_mdb(int rc) {
    return rc > 0 || (rc >= MDB_KEYEXIST && rc <= MDB_LAST_ERRCODE);
}

/* Report the failure rc (LMDB's or ours) of `what` and count it. */
static int mdb_fail(disk_t *d, int rc, const char *what) {
    d->st.errors++;
    if (!is_mdb(rc))
        return fail(d, rc, "%s: %s", what, khala_strerror(rc));
    return fail(d, mdb_code(rc), "%s: %s", what, mdb_strerror(rc));
}

/* A key in a message: the one way keys are shown (lib/errbuf.h). */
#define key_show(key, klen, buf, cap) khala__errbuf_quote((key), (klen), (buf), (cap))

static int key_check(disk_t *d, const void *key, size_t klen) {
    char kb[KHALA_ERRBUF_QUOTE_CAP];
    if (klen == 0 || !key)
        return fail(d, KHALA_EKEY, "the empty key is refused");
    if (klen > KHALA_KEY_MAX)
        return fail(d, KHALA_EKEY, "key '%s' is %zu bytes, max %d",
                    key_show(key, klen, kb, sizeof(kb)), klen, KHALA_KEY_MAX);
    return 0;
}

/* Record header access; records are only 2-byte aligned in LMDB's pages. */
static uint64_t rec_version(const uint8_t *r) {
    uint64_t v;
    memcpy(&v, r + REC_OFF_VERSION, sizeof(v));
    return v;
}

static int64_t rec_expire(const uint8_t *r) {
    int64_t v;
    memcpy(&v, r + REC_OFF_EXPIRE, sizeof(v));
    return v;
}

static int rec_ok(const MDB_val *v) {
    const uint8_t *r = v->mv_data;
    return v->mv_size >= REC_HDR && r[REC_OFF_FORMAT] == REC_FORMAT &&
           r[REC_OFF_TYPE] < KHALA_TYPE_COUNT && v->mv_size - REC_HDR <= UINT32_MAX;
}

static void rec_write(uint8_t *r, const khala_tier_value_t *val, int64_t expire_ms) {
    memset(r, 0, REC_HDR);
    r[REC_OFF_FORMAT] = REC_FORMAT;
    r[REC_OFF_TYPE] = (uint8_t)val->type;
    memcpy(r + REC_OFF_VERSION, &val->version, sizeof(val->version));
    memcpy(r + REC_OFF_EXPIRE, &expire_ms, sizeof(expire_ms));
    if (val->len)
        memcpy(r + REC_HDR, val->data, val->len);
}

/* ------------------------------------------------------------------------------------------ */
/* Transactions                                                                               */
/* ------------------------------------------------------------------------------------------ */

static int act_push(disk_t *d, act_t a) {
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
static void acts_discard(disk_t *d) {
    for (size_t i = 0; i < d->nact; i++) {
        act_t *a = &d->acts[i];
        free(a->fresh);
        if (a->old)
            a->old->pinned = 0;
    }
    d->nact = 0;
}

/* Apply a committed write to the index (cannot fail: room was reserved). */
static void acts_apply(disk_t *d) {
    for (size_t i = 0; i < d->nact; i++) {
        act_t *a = &d->acts[i];
        if (a->kind != ACT_PUT) {
            if (a->kind == ACT_EVICT)
                d->st.evictions++;
            else if (a->kind == ACT_EXPIRE)
                d->st.expirations++;
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
    }
    d->nact = 0;
}

/* Double the map after MDB_MAP_FULL. No transaction may be open in this process. */
static int grow(disk_t *d) {
    MDB_envinfo info;
    if (d->rtxn) {
        mdb_txn_abort(d->rtxn);
        d->rtxn = NULL;
    }
    mdb_env_info(d->env, &info);
    if (info.me_mapsize > SIZE_MAX / 2)
        return mdb_fail(d, MDB_MAP_FULL, "cannot grow the map further");
    int rc = mdb_env_set_mapsize(d->env, info.me_mapsize * 2);
    if (rc)
        return mdb_fail(d, rc, "growing the map");
    return 0;
}

/* Begin a write transaction; nosync for those that only remove dead items or write hints. */
static int wtxn_begin(disk_t *d, int nosync, MDB_txn **txn) {
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
static int wtxn_end(disk_t *d, MDB_txn *txn, int nosync, int rc) {
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

static int rtxn_begin(disk_t *d, MDB_txn **txn) {
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
        return mdb_fail(d, rc, "beginning a read transaction");
    }
    *txn = d->rtxn;
    return 0;
}

static void rtxn_end(disk_t *d) {
    mdb_txn_reset(d->rtxn);
}

/* Delete key from "items" and "lfu" in txn. Returns an LMDB code (MDB_NOTFOUND if absent). */
static int del_both(disk_t *d, MDB_txn *txn, const void *key, size_t klen) {
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
static int evict_txn(disk_t *d, MDB_txn *txn, int64_t items_delta, int64_t bytes_delta,
                     int64_t now_rt, size_t max) {
    int64_t items = (int64_t)d->ix.n + items_delta;
    int64_t bytes = (int64_t)d->ix.bytes + bytes_delta;
    for (size_t chosen = 0; chosen < max; chosen++) {
        if ((uint64_t)items <= d->max_items && (uint64_t)bytes <= d->max_bytes)
            break;
        entry_t *v = khala__disk_index_pick_victim(&d->ix, now_rt);
        if (!v)
            return fail(d, KHALA_EFULL,
                        "%" PRId64 " items of %" PRId64 " bytes in one write "
                        "exceed max_items %" PRIu64 " / max_bytes %" PRIu64,
                        items, bytes, d->max_items, d->max_bytes);
        int rc = del_both(d, txn, v->key, v->klen);
        if (rc)
            return rc;
        act_kind_t kind = khala__disk_live(v->expire_ms, now_rt) ? ACT_EVICT : ACT_EXPIRE;
        rc = act_push(d, (act_t){.kind = kind, .old = v});
        if (rc)
            return rc;
        v->pinned = 1;
        items--;
        bytes -= v->bytes;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Writes                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static int value_check(disk_t *d, const void *key, size_t klen, const khala_tier_value_t *v) {
    char kb[KHALA_ERRBUF_QUOTE_CAP];
    int rc = key_check(d, key, klen);
    if (rc)
        return rc;
    if (v->len > d->max_value)
        return fail(d, KHALA_ETOOBIG, "value of key '%s' is %zu bytes, max %" PRIu32,
                    key_show(key, klen, kb, sizeof(kb)), v->len, d->max_value);
    if (klen + v->len > d->max_bytes)
        return fail(d, KHALA_ETOOBIG,
                    "item '%s' is %zu bytes, more than the store's max_bytes %" PRIu64,
                    key_show(key, klen, kb, sizeof(kb)), klen + v->len, d->max_bytes);
    if ((unsigned)v->type >= (unsigned)KHALA_TYPE_COUNT || v->ttl_ms < 0 || (v->len && !v->data))
        return fail(d, -EINVAL, "item '%s': bad type %d, ttl_ms %" PRId64 " or value",
                    key_show(key, klen, kb, sizeof(kb)), (int)v->type, v->ttl_ms);
    return 0;
}

/* One attempt at a put / mput (steps 1-5). Returns 0, a khala code, or an LMDB code for the
 * caller to report (MDB_MAP_FULL: grow and try again). strict: refuse a stale item (put)
 * rather than skip it (mput). */
static int put_txn(disk_t *d, size_t n, const khala_bytes_t *keys, const khala_tier_value_t *vals,
                   int strict, int64_t now_rt) {
    MDB_txn *txn;
    int rc = wtxn_begin(d, 0, &txn);
    if (rc)
        return rc;
    int64_t items_delta = 0, bytes_delta = 0;
    size_t nfresh = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        const khala_tier_value_t *v = &vals[i];
        MDB_val k = {keys[i].len, (void *)keys[i].ptr}, r;
        int present = 0;
        uint64_t old_bytes = 0;
        rc = mdb_get(txn, d->items, &k, &r);
        if (rc == 0) {
            present = 1;
            old_bytes = k.mv_size + (r.mv_size >= REC_HDR ? r.mv_size - REC_HDR : 0);
            if (rec_ok(&r) && khala__disk_live(rec_expire(r.mv_data), now_rt) &&
                rec_version(r.mv_data) > v->version) {
                /* Step 1: the level holds newer data. */
                char kb[KHALA_ERRBUF_QUOTE_CAP];
                uint64_t held = rec_version(r.mv_data);
                if (strict) {
                    rc = fail(d, KHALA_EVERSION,
                              "key '%s': version %" PRIu64 " is older than the stored %" PRIu64,
                              key_show(k.mv_data, k.mv_size, kb, sizeof(kb)), v->version, held);
                    break;
                }
                continue;
            }
        } else if (rc != MDB_NOTFOUND) {
            break;
        }
        /* Step 2. */
        int64_t expire = 0;
        if (v->ttl_ms > 0)
            expire = v->ttl_ms > INT64_MAX - now_rt ? INT64_MAX : now_rt + v->ttl_ms;
        r.mv_size = REC_HDR + v->len;
        rc = mdb_put(txn, d->items, &k, &r, MDB_RESERVE);
        if (rc)
            break;
        rec_write(r.mv_data, v, expire);
        act_t a = {.kind = ACT_PUT, .bytes = (uint32_t)(k.mv_size + v->len), .expire_ms = expire};
        a.old = khala__disk_index_find(&d->ix, k.mv_data, k.mv_size);
        if (a.old) {
            a.old->pinned = 1;
        } else {
            a.fresh = khala__disk_index_entry_new(&d->ix, k.mv_data, k.mv_size);
            if (!a.fresh) {
                rc = -ENOMEM;
                break;
            }
            nfresh++;
        }
        rc = act_push(d, a);
        if (rc) {
            free(a.fresh);
            break;
        }
        items_delta += !present;
        bytes_delta += (int64_t)(k.mv_size + v->len) - (int64_t)old_bytes;
    }
    if (!rc)
        rc = evict_txn(d, txn, items_delta, bytes_delta, now_rt, SIZE_MAX); /* step 3 */
    if (!rc)
        rc = khala__disk_index_reserve(&d->ix, nfresh);
    rc = wtxn_end(d, txn, 0, rc); /* step 4 */
    if (rc) {
        acts_discard(d);
        return rc;
    }
    acts_apply(d); /* step 5 */
    return 0;
}

static int put_items(disk_t *d, size_t n, const khala_bytes_t *keys, const khala_tier_value_t *vals,
                     int strict) {
    for (size_t i = 0; i < n; i++) {
        int rc = value_check(d, keys[i].ptr, keys[i].len, &vals[i]);
        if (rc)
            return rc;
    }
    int64_t now_rt = realtime_ms();
    int rc = 0;
    for (int tries = 0; tries <= MAP_GROW_TRIES; tries++) {
        rc = put_txn(d, n, keys, vals, strict, now_rt);
        if (rc != MDB_MAP_FULL)
            break;
        if ((rc = grow(d)) != 0)
            return rc;
        rc = MDB_MAP_FULL;
    }
    if (is_mdb(rc))
        return mdb_fail(d, rc, "writing");
    if (rc == -ENOMEM || rc == KHALA_EFULL)
        d->st.errors++;
    if (rc == -ENOMEM)
        return fail(d, rc, "out of memory writing %zu items", n);
    if (rc == 0)
        d->st.puts += n;
    return rc;
}

/* Remove the n keys (those present) in one transaction. kind: ACT_DEL or ACT_EXPIRE (an
 * expired item: commits without fsync, like every removal of dead data). *removed (may be
 * NULL) gets how many were present; *was_live whether the first one was live. */
static int drop_keys(disk_t *d, size_t n, const khala_bytes_t *keys, act_kind_t kind,
                     size_t *removed, int *was_live) {
    int nosync = kind == ACT_EXPIRE;
    int64_t now_rt = realtime_ms();
    int rc = 0;
    for (int tries = 0; tries <= MAP_GROW_TRIES; tries++) {
        MDB_txn *txn;
        size_t count = 0;
        rc = wtxn_begin(d, nosync, &txn);
        if (rc)
            break;
        for (size_t i = 0; i < n && !rc; i++) {
            MDB_val k = {keys[i].len, (void *)keys[i].ptr}, r;
            rc = mdb_get(txn, d->items, &k, &r);
            if (rc == MDB_NOTFOUND) {
                rc = 0;
                continue;
            }
            if (rc)
                break;
            int is_live = !rec_ok(&r) || khala__disk_live(rec_expire(r.mv_data), now_rt);
            if (i == 0 && was_live)
                *was_live = is_live;
            if (kind == ACT_EXPIRE && is_live)
                continue;
            entry_t *e = khala__disk_index_find(&d->ix, k.mv_data, k.mv_size);
            if (e && e->pinned) /* the same key twice */
                continue;
            rc = del_both(d, txn, k.mv_data, k.mv_size);
            if (!rc && e) {
                rc = act_push(d, (act_t){.kind = is_live ? ACT_DEL : ACT_EXPIRE, .old = e});
                e->pinned = 1;
            }
            count++;
        }
        rc = wtxn_end(d, txn, nosync, rc);
        if (rc) {
            acts_discard(d);
            if (rc == MDB_MAP_FULL && grow(d) == 0)
                continue;
            break;
        }
        acts_apply(d);
        if (removed)
            *removed = count;
        return 0;
    }
    if (rc == -ENOMEM)
        return fail(d, rc, "out of memory removing %zu items", n);
    return mdb_fail(d, rc, "removing items");
}

/* ------------------------------------------------------------------------------------------ */
/* Reads                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* Look key up in txn. 0 (out filled, value copied), KHALA_ENOTFOUND (*expired set when the
 * record was expired), or a failure with t->err set. */
static int get_one(disk_t *d, MDB_txn *txn, const void *key, size_t klen, khala_tier_value_t *out,
                   int64_t now_rt, int *expired) {
    char kb[KHALA_ERRBUF_QUOTE_CAP];
    MDB_val k = {klen, (void *)key}, r;
    int rc = mdb_get(txn, d->items, &k, &r);
    if (rc == MDB_NOTFOUND)
        return fail(d, KHALA_ENOTFOUND, "no key '%s'", key_show(key, klen, kb, sizeof(kb)));
    if (rc)
        return mdb_fail(d, rc, "reading");
    if (!rec_ok(&r)) {
        d->st.errors++;
        return fail(d, KHALA_ECORRUPT, "record of key '%s' is malformed (%zu bytes)",
                    key_show(key, klen, kb, sizeof(kb)), r.mv_size);
    }
    const uint8_t *rec = r.mv_data;
    int64_t expire = rec_expire(rec);
    if (!khala__disk_live(expire, now_rt)) {
        *expired = 1;
        return fail(d, KHALA_ENOTFOUND, "key '%s' has expired",
                    key_show(key, klen, kb, sizeof(kb)));
    }
    size_t len = r.mv_size - REC_HDR;
    void *data = NULL;
    if (len) {
        data = malloc(len);
        if (!data)
            return fail(d, -ENOMEM, "out of memory for a value of %zu bytes", len);
        memcpy(data, rec + REC_HDR, len);
    }
    out->data = data;
    out->len = len;
    out->version = rec_version(rec);
    out->type = (khala_type_t)rec[REC_OFF_TYPE];
    out->ttl_ms = expire ? expire - now_rt : 0;
    entry_t *e = khala__disk_index_find(&d->ix, key, klen);
    if (e)
        khala__disk_index_touch(&d->ix, e);
    return 0;
}

/* L1 hits reported by khalad: raise the key's counter as that many gets would (the counter is
 * logarithmic, so a few dozen raises saturate it: at most NOTE_RAISES_MAX). */
static void disk_note_hits(khala_tier_t *t, const void *key, size_t klen, uint64_t hits) {
    disk_t *d = t->impl;
    if (!hits || !key || klen == 0 || klen > KHALA_KEY_MAX)
        return;
    entry_t *e = khala__disk_index_find(&d->ix, key, klen);
    for (uint64_t i = 0; e && i < hits && i < NOTE_RAISES_MAX; i++)
        khala__disk_index_touch(&d->ix, e);
}

static int disk_get(khala_tier_t *t, const void *key, size_t klen, khala_tier_value_t *out) {
    disk_t *d = t->impl;
    d->st.gets++;
    int rc = key_check(d, key, klen);
    if (rc) {
        d->st.misses++;
        return rc;
    }
    MDB_txn *txn;
    if ((rc = rtxn_begin(d, &txn)) != 0) {
        d->st.misses++;
        return rc;
    }
    int expired = 0;
    khala_tier_value_t v = {0};
    rc = get_one(d, txn, key, klen, &v, realtime_ms(), &expired);
    rtxn_end(d);
    if (rc) {
        d->st.misses++;
        if (expired) {
            khala_bytes_t kb = {key, klen};
            char msg[sizeof(t->err)];
            memcpy(msg, t->err, sizeof(msg));
            drop_keys(d, 1, &kb, ACT_EXPIRE, NULL, NULL); /* lazily; a failure changes nothing */
            memcpy(t->err, msg, sizeof(msg));
        }
        return rc;
    }
    d->st.hits++;
    *out = v;
    return 0;
}

static int disk_mget(khala_tier_t *t, size_t n, const khala_bytes_t *keys, khala_tier_value_t *out,
                     int *rcs) {
    disk_t *d = t->impl;
    MDB_txn *txn;
    int rc = rtxn_begin(d, &txn);
    if (rc) {
        d->st.gets += n;
        d->st.misses += n;
        return rc;
    }
    int64_t now_rt = realtime_ms();
    khala_bytes_t *expired_keys = NULL; /* allocated at the first expired key */
    size_t nexp = 0;
    for (size_t i = 0; i < n; i++) {
        int expired = 0;
        d->st.gets++;
        rcs[i] = key_check(d, keys[i].ptr, keys[i].len);
        if (!rcs[i]) {
            khala_tier_value_t v = {0};
            rcs[i] = get_one(d, txn, keys[i].ptr, keys[i].len, &v, now_rt, &expired);
            if (!rcs[i])
                out[i] = v;
        }
        if (rcs[i])
            d->st.misses++;
        else
            d->st.hits++;
        if (expired && !expired_keys)
            expired_keys = malloc(n * sizeof(*expired_keys)); /* NULL: tick() removes them */
        if (expired && expired_keys)
            expired_keys[nexp++] = keys[i];
    }
    rtxn_end(d);
    if (nexp) {
        /* Remove the expired ones lazily, in one transaction; a failure changes nothing. */
        char msg[sizeof(t->err)];
        memcpy(msg, t->err, sizeof(msg));
        drop_keys(d, nexp, expired_keys, ACT_EXPIRE, NULL, NULL);
        memcpy(t->err, msg, sizeof(msg));
    }
    free(expired_keys);
    return 0;
}

static int disk_put(khala_tier_t *t, const void *key, size_t klen, const khala_tier_value_t *val) {
    khala_bytes_t k = {key, klen};
    return put_items(t->impl, 1, &k, val, 1);
}

static int disk_mput(khala_tier_t *t, size_t n, const khala_bytes_t *keys,
                     const khala_tier_value_t *vals) {
    return n ? put_items(t->impl, n, keys, vals, 0) : 0;
}

static int disk_del(khala_tier_t *t, const void *key, size_t klen) {
    disk_t *d = t->impl;
    char kb[KHALA_ERRBUF_QUOTE_CAP];
    int rc = key_check(d, key, klen);
    if (rc)
        return rc;
    khala_bytes_t k = {key, klen};
    size_t removed = 0;
    int was_live = 0;
    rc = drop_keys(d, 1, &k, ACT_DEL, &removed, &was_live);
    if (rc)
        return rc;
    d->st.dels++;
    if (!removed || !was_live)
        return fail(d, KHALA_ENOTFOUND, "no key '%s'", key_show(key, klen, kb, sizeof(kb)));
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Scan, hot, invalidate                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* Keys collected while a transaction is open, handed to the callback after it ends (the
 * callback may call back into the tier, which may need to grow the map). */
typedef struct keybuf {
    uint8_t *buf; /* each key: its length byte, then its bytes */
    size_t len, cap, count;
} keybuf_t;

static int keybuf_add(keybuf_t *kb, const void *key, size_t klen) {
    if (kb->len + 1 + klen > kb->cap) {
        size_t cap = kb->cap ? kb->cap * 2 : 4096;
        while (cap < kb->len + 1 + klen)
            cap *= 2;
        uint8_t *buf = realloc(kb->buf, cap);
        if (!buf)
            return -ENOMEM;
        kb->buf = buf;
        kb->cap = cap;
    }
    kb->buf[kb->len] = (uint8_t)klen;
    memcpy(kb->buf + kb->len + 1, key, klen);
    kb->len += 1 + klen;
    kb->count++;
    return 0;
}

/* Does key match the glob? A key holding a NUL byte matches only when there is no pattern. */
static int key_matches(const char *pattern, const void *key, size_t klen) {
    if (!pattern)
        return 1;
    char s[KHALA_KEY_MAX + 1];
    if (memchr(key, 0, klen))
        return 0;
    memcpy(s, key, klen);
    s[klen] = '\0';
    return fnmatch(pattern, s, 0) == 0;
}

static scan_slot_t *scan_slot_find(disk_t *d, uint64_t id) {
    for (int i = 0; i < SCAN_SLOTS; i++)
        if (d->scans[i].id == id)
            return &d->scans[i];
    return NULL;
}

static scan_slot_t *scan_slot_new(disk_t *d) {
    scan_slot_t *s = &d->scans[0];
    for (int i = 0; i < SCAN_SLOTS; i++) {
        if (!d->scans[i].id) {
            s = &d->scans[i];
            break;
        }
        if (d->scans[i].used < s->used)
            s = &d->scans[i];
    }
    do
        s->id = ++d->scan_next ^ d->ix.seed;
    while (s->id == 0 || scan_slot_find(d, s->id) != s);
    return s;
}

static int disk_scan(khala_tier_t *t, uint64_t *cursor, const char *pattern, size_t count,
                     khala_tier_scan_fn fn, void *arg) {
    disk_t *d = t->impl;
    scan_slot_t *slot = NULL;
    if (*cursor) {
        slot = scan_slot_find(d, *cursor);
        if (!slot)
            return fail(d, -EINVAL,
                        "scan cursor %" PRIu64 " is unknown: it expired (more than "
                        "%d scans at once) or comes from an earlier open; start again from 0",
                        *cursor, SCAN_SLOTS);
    }
    if (!count)
        count = SCAN_COUNT_DEFAULT;
    keybuf_t kb = {0};
    uint8_t last[KHALA_KEY_MAX];
    size_t last_len = 0;
    int end = 0;
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    int rc = rtxn_begin(d, &txn);
    if (rc)
        return rc;
    rc = mdb_cursor_open(txn, d->items, &c);
    MDB_val k, r;
    if (!rc && slot) {
        k = (MDB_val){slot->klen, slot->key};
        rc = mdb_cursor_get(c, &k, &r, MDB_SET_RANGE);
        if (!rc && k.mv_size == slot->klen && memcmp(k.mv_data, slot->key, slot->klen) == 0)
            rc = mdb_cursor_get(c, &k, &r, MDB_NEXT);
    } else if (!rc) {
        rc = mdb_cursor_get(c, &k, &r, MDB_FIRST);
    }
    int64_t now_rt = realtime_ms();
    for (size_t seen = 0; !rc && seen < count; seen++) {
        if (k.mv_size > KHALA_KEY_MAX) {
            rc = MDB_CORRUPTED;
            break;
        }
        memcpy(last, k.mv_data, k.mv_size);
        last_len = k.mv_size;
        if (rec_ok(&r) && khala__disk_live(rec_expire(r.mv_data), now_rt) &&
            key_matches(pattern, k.mv_data, k.mv_size) && keybuf_add(&kb, k.mv_data, k.mv_size)) {
            rc = -ENOMEM;
            break;
        }
        rc = mdb_cursor_get(c, &k, &r, MDB_NEXT);
    }
    if (rc == MDB_NOTFOUND) {
        end = 1;
        rc = 0;
    }
    if (c)
        mdb_cursor_close(c);
    rtxn_end(d);
    if (rc) {
        free(kb.buf);
        return rc == -ENOMEM ? fail(d, rc, "out of memory scanning") : mdb_fail(d, rc, "scanning");
    }
    /* Visit, then remember where to resume: after the last key examined, or after the key
     * whose callback stopped the scan. */
    for (size_t off = 0; off < kb.len;) {
        size_t klen = kb.buf[off];
        const uint8_t *key = kb.buf + off + 1;
        off += 1 + klen;
        if (fn(arg, key, klen)) {
            memcpy(last, key, klen);
            last_len = klen;
            end = 0;
            break;
        }
    }
    free(kb.buf);
    if (end || last_len == 0) {
        if (slot)
            slot->id = 0;
        *cursor = 0;
        return 0;
    }
    if (!slot)
        slot = scan_slot_new(d);
    slot->used = ++d->ix.seq;
    slot->klen = (uint8_t)last_len;
    memcpy(slot->key, last, last_len);
    *cursor = slot->id;
    return 0;
}

static int disk_hot(khala_tier_t *t, size_t max, khala_tier_scan_fn fn, void *arg) {
    disk_t *d = t->impl;
    int64_t now_rt = realtime_ms();
    if (max > d->ix.n)
        max = d->ix.n;
    if (!max)
        return 0;
    entry_t **h = malloc(max * sizeof(*h));
    if (!h)
        return fail(d, -ENOMEM, "out of memory listing %zu hot keys", max);
    size_t n = khala__disk_index_hottest(&d->ix, h, max, now_rt);
    /* Copy the keys: a callback may change the index. */
    keybuf_t kb = {0};
    for (size_t i = 0; i < n; i++) {
        if (keybuf_add(&kb, h[i]->key, h[i]->klen)) {
            free(h);
            free(kb.buf);
            return fail(d, -ENOMEM, "out of memory listing %zu hot keys", max);
        }
    }
    free(h);
    for (size_t off = 0; off < kb.len;) {
        size_t klen = kb.buf[off];
        if (fn(arg, kb.buf + off + 1, klen))
            break;
        off += 1 + klen;
    }
    free(kb.buf);
    return 0;
}

/* Everything at once: empty both databases. */
static int flush_all(disk_t *d, uint64_t *removed) {
    MDB_txn *txn;
    int rc = wtxn_begin(d, 0, &txn);
    if (!rc) {
        rc = mdb_drop(txn, d->items, 0);
        if (!rc)
            rc = mdb_drop(txn, d->lfu, 0);
        rc = wtxn_end(d, txn, 0, rc);
    }
    if (rc)
        return mdb_fail(d, rc, "emptying the store");
    uint64_t n = d->ix.n;
    khala__disk_index_clear(&d->ix);
    d->st.dels += n;
    if (removed)
        *removed = n;
    return 0;
}

/* One batch of an invalidation: up to BATCH_MAX removals from *from on. Sets *from_len to 0 at
 * the end of the range; returns an LMDB code, a khala code or 0. */
static int invalidate_batch(disk_t *d, const uint8_t *prefix, size_t plen, int type, uint8_t *from,
                            size_t *from_len, uint64_t *count) {
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    int rc = wtxn_begin(d, 0, &txn);
    if (rc)
        return rc;
    int64_t now_rt = realtime_ms();
    size_t n = 0;
    rc = mdb_cursor_open(txn, d->items, &c);
    MDB_val k = {*from_len, from}, r;
    if (!rc)
        rc = *from_len ? mdb_cursor_get(c, &k, &r, MDB_SET_RANGE)
                       : mdb_cursor_get(c, &k, &r, MDB_FIRST);
    while (!rc) {
        if (plen && (k.mv_size < plen || memcmp(k.mv_data, prefix, plen) != 0)) {
            rc = MDB_NOTFOUND; /* past the range */
            break;
        }
        if (k.mv_size > KHALA_KEY_MAX) {
            rc = MDB_CORRUPTED; /* we never write such a key */
            break;
        }
        if (n == BATCH_MAX) { /* resume here in the next transaction */
            memcpy(from, k.mv_data, k.mv_size);
            *from_len = k.mv_size;
            break;
        }
        if (type < 0 || (rec_ok(&r) && ((const uint8_t *)r.mv_data)[REC_OFF_TYPE] == type)) {
            uint8_t key[KHALA_KEY_MAX];
            size_t klen = k.mv_size;
            memcpy(key, k.mv_data, klen);
            int is_live = !rec_ok(&r) || khala__disk_live(rec_expire(r.mv_data), now_rt);
            rc = mdb_cursor_del(c, 0);
            if (!rc) {
                MDB_val lk = {klen, key};
                rc = mdb_del(txn, d->lfu, &lk, NULL);
                rc = rc == MDB_NOTFOUND ? 0 : rc;
            }
            entry_t *e = rc ? NULL : khala__disk_index_find(&d->ix, key, klen);
            if (e)
                rc = act_push(d, (act_t){.kind = is_live ? ACT_DEL : ACT_EXPIRE, .old = e});
            if (rc)
                break;
            if (e)
                e->pinned = 1;
            n++;
        }
        /* After a delete the cursor already stands on the next key, and MDB_NEXT returns it. */
        rc = mdb_cursor_get(c, &k, &r, MDB_NEXT);
    }
    if (rc == MDB_NOTFOUND) {
        *from_len = 0;
        rc = 0;
    }
    if (c)
        mdb_cursor_close(c);
    rc = wtxn_end(d, txn, 0, rc);
    if (rc) {
        acts_discard(d);
        return rc;
    }
    d->st.dels += n;
    acts_apply(d);
    *count += n;
    return 0;
}

static int disk_invalidate(khala_tier_t *t, const void *prefix, size_t plen, int type,
                           uint64_t *removed) {
    disk_t *d = t->impl;
    if (type >= KHALA_TYPE_COUNT || (plen && !prefix))
        return fail(d, -EINVAL, "invalidate: bad type %d or prefix", type);
    if (plen == 0 && type < 0)
        return flush_all(d, removed);
    uint64_t count = 0;
    if (plen > KHALA_KEY_MAX) { /* no key is that long */
        if (removed)
            *removed = 0;
        return 0;
    }
    uint8_t from[KHALA_KEY_MAX];
    size_t from_len = plen;
    if (plen)
        memcpy(from, prefix, plen);
    int rc = 0, grown = 0;
    do {
        rc = invalidate_batch(d, prefix, plen, type < 0 ? -1 : type, from, &from_len, &count);
        if (rc == MDB_MAP_FULL && grown++ < MAP_GROW_TRIES && grow(d) == 0) {
            rc = 0;
            continue;
        }
    } while (!rc && from_len);
    if (removed)
        *removed = count;
    if (rc == -ENOMEM)
        return fail(d, rc, "out of memory invalidating (%" PRIu64 " removed)", count);
    if (rc)
        return mdb_fail(d, rc, "invalidating");
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Health, stats, tick, close                                                                 */
/* ------------------------------------------------------------------------------------------ */

static int disk_health(khala_tier_t *t) {
    (void)t;
    return 0;
}

static void disk_stats(khala_tier_t *t, khala_tier_stats_t *out) {
    disk_t *d = t->impl;
    *out = d->st;
    out->items = d->ix.n;
    out->bytes = d->ix.bytes;
    out->reconnects = 0;
}

/* Write up to max changed counters to "lfu", examining up to examine entries from
 * d->flush_pos on, in one transaction without fsync (counters are hints). */
static int flush_counters(disk_t *d, size_t examine, size_t max) {
    if (!d->ix.n)
        return 0;
    MDB_txn *txn;
    int rc = wtxn_begin(d, 1, &txn);
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
    rc = wtxn_end(d, txn, 1, rc);
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

static void disk_tick(khala_tier_t *t, int64_t now_ms) {
    disk_t *d = t->impl;
    /* Sweep: examine a window of entries, remove the expired ones found. */
    if (d->ix.n) {
        int64_t now_rt = realtime_ms();
        khala_bytes_t keys[SWEEP_MAX];
        size_t nk = 0, examine = d->ix.n < SWEEP_EXAMINE ? d->ix.n : SWEEP_EXAMINE;
        size_t pos = d->sweep_pos % d->ix.n;
        for (size_t i = 0; i < examine && nk < SWEEP_MAX; i++, pos = (pos + 1) % d->ix.n) {
            entry_t *e = d->ix.dense[pos];
            if (!khala__disk_live(e->expire_ms, now_rt))
                keys[nk++] = (khala_bytes_t){e->key, e->klen};
        }
        d->sweep_pos = pos;
        /* The keys point into entries; drop_keys frees them only after its last use of keys. */
        if (nk)
            drop_keys(d, nk, keys, ACT_EXPIRE, NULL, NULL);
    }
    if (now_ms - d->last_flush_ms >= FLUSH_INTERVAL_MS) {
        d->last_flush_ms = now_ms;
        if (flush_counters(d, FLUSH_EXAMINE, FLUSH_MAX))
            d->st.errors++;
    }
    /* Periodic durability: what was committed since the last sync reaches the disk. */
    if (d->sync_every_ms && d->dirty && now_ms - d->last_sync_ms >= (int64_t)d->sync_every_ms) {
        d->last_sync_ms = now_ms;
        d->dirty = 0;
        int rc = mdb_env_sync(d->env, 1);
        if (rc) {
            d->st.errors++;
            (void)mdb_fail(d, rc, "syncing the store to disk");
        }
    }
}

static void disk_free(disk_t *d) {
    if (d->rtxn)
        mdb_txn_abort(d->rtxn);
    if (d->env)
        mdb_env_close(d->env);
    if (d->lock_fd >= 0)
        close(d->lock_fd);
    khala__disk_index_free(&d->ix);
    free(d->acts);
    free(d->path);
    free(d);
}

static void disk_close(khala_tier_t *t) {
    if (!t)
        return;
    disk_t *d = t->impl;
    /* Keep every changed counter (one transaction), then make it all durable. A failure loses
     * only hints. */
    flush_counters(d, d->ix.n, SIZE_MAX);
    mdb_env_sync(d->env, 1);
    disk_free(d);
}

static const khala_tier_ops_t disk_ops = {
    .name = "disk",
    .get = disk_get,
    .mget = disk_mget,
    .put = disk_put,
    .mput = disk_mput,
    .del = disk_del,
    .scan = disk_scan,
    .hot = disk_hot,
    .invalidate = disk_invalidate,
    .health = disk_health,
    .stats = disk_stats,
    .tick = disk_tick,
    .note_hits = disk_note_hits,
    .close = disk_close,
};

/* ------------------------------------------------------------------------------------------ */
/* Open                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* The first map size (see "Map size" above). */
static size_t map_guess(const khala_tier_disk_opts_t *o, uint32_t max_value) {
    uint64_t per_item = REC_HDR + 16 /* LMDB node */ + 16 /* its "lfu" twin */;
    uint64_t g = MAP_GUESS_MAX;
    if (o->max_bytes < MAP_GUESS_MAX / 4 && o->max_items < MAP_GUESS_MAX / (4 * per_item)) {
        g = 2 * (o->max_bytes + o->max_items * per_item) + 2 * (uint64_t)max_value + MAP_MIN;
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
            uint8_t m[META_SIZE] = {0};
            uint32_t f = STORE_FORMAT;
            memcpy(m, META_MAGIC, 8);
            memcpy(m + 8, &f, sizeof(f));
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
        if (!rc && v.mv_size >= 12)
            memcpy(&f, (const uint8_t *)v.mv_data + 8, sizeof(f));
        if (rc == MDB_NOTFOUND || (!rc && (v.mv_size < 12 || memcmp(v.mv_data, META_MAGIC, 8)))) {
            mdb_txn_abort(txn);
            return khala__errbuf(err, errlen, KHALA_ECONFIG,
                                 "%s is not a khala disk store (no valid format record)", d->path);
        }
        if (!rc && f > STORE_FORMAT) {
            mdb_txn_abort(txn);
            return khala__errbuf(err, errlen, KHALA_ECONFIG,
                                 "%s was written by a newer khala (store format %" PRIu32
                                 "; this build reads format %u)",
                                 d->path, f, STORE_FORMAT);
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
    char kb[KHALA_ERRBUF_QUOTE_CAP];
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
        if (k.mv_size == 0 || k.mv_size > KHALA_KEY_MAX || !rec_ok(&v)) {
            mdb_cursor_close(c);
            mdb_txn_abort(txn);
            return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                 "%s: record of key '%s' is malformed (%zu bytes); remove the "
                                 "store to start afresh",
                                 d->path, key_show(k.mv_data, k.mv_size, kb, sizeof(kb)),
                                 v.mv_size);
        }
        entry_t *e = khala__disk_index_entry_new(&d->ix, k.mv_data, k.mv_size);
        if (!e || khala__disk_index_reserve(&d->ix, 1)) {
            free(e);
            rc = ENOMEM;
            break;
        }
        e->bytes = (uint32_t)(k.mv_size + v.mv_size - REC_HDR);
        e->expire_ms = rec_expire(v.mv_data);
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
 * transactions of at most BATCH_MAX removals. */
static int trim(disk_t *d, char *err, size_t errlen) {
    int grown = 0;
    while (d->ix.n > d->max_items || d->ix.bytes > d->max_bytes) {
        MDB_txn *txn;
        int rc = wtxn_begin(d, 0, &txn);
        if (!rc) {
            rc = evict_txn(d, txn, 0, 0, realtime_ms(), BATCH_MAX);
            rc = wtxn_end(d, txn, 0, rc);
        }
        if (rc) {
            acts_discard(d);
            if (rc == MDB_MAP_FULL && grown++ < MAP_GROW_TRIES && grow(d) == 0)
                continue;
            return khala__errbuf(err, errlen, is_mdb(rc) ? mdb_code(rc) : rc,
                                 "%s: evicting down to the capacities: %s", d->path,
                                 is_mdb(rc) ? mdb_strerror(rc) : khala_strerror(rc));
        }
        acts_apply(d);
    }
    return 0;
}

int khala__tier_disk_open(const khala_tier_disk_opts_t *o, khala_tier_t **out, char *err,
                          size_t errlen) {
    if (!o || !out || !o->path || !o->path[0])
        return khala__errbuf(err, errlen, KHALA_ECONFIG, "disk store: no path");
    if (o->level != KHALA_LEVEL_L2 && o->level != KHALA_LEVEL_L3)
        return khala__errbuf(err, errlen, KHALA_ECONFIG, "%s: level %d is not L2 or L3", o->path,
                             (int)o->level);
    if (!o->max_items || !o->max_bytes)
        return khala__errbuf(err, errlen, KHALA_ECONFIG,
                             "%s: max_items (%" PRIu64 ") and max_bytes (%" PRIu64
                             ") must be at least 1",
                             o->path, o->max_items, o->max_bytes);
    uint32_t max_value = o->max_value ? o->max_value : KHALA_TIER_DISK_VALUE_MAX;
    if (max_value > KHALA_TIER_DISK_VALUE_MAX)
        return khala__errbuf(err, errlen, KHALA_ECONFIG, "%s: max_value %" PRIu32 " is over %u",
                             o->path, max_value, KHALA_TIER_DISK_VALUE_MAX);
    int rc = khala__dirs_make(o->path, 0700, err, errlen);
    if (rc)
        return rc;

    disk_t *d = calloc(1, sizeof(*d));
    if (!d || !(d->path = strdup(o->path))) {
        free(d);
        return khala__errbuf(err, errlen, -ENOMEM, "%s: out of memory", o->path);
    }
    d->lock_fd = -1;
    d->max_items = o->max_items;
    d->max_bytes = o->max_bytes;
    d->max_value = max_value;
    khala__disk_index_init(&d->ix, khala__sys_random_u64(), khala__sys_now_ms());
    d->last_flush_ms = d->ix.clock0_ms;
    d->tier.ops = &disk_ops;
    d->tier.level = o->level;
    d->tier.healthy = 1;
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

    rc = mdb_env_create(&d->env);
    if (!rc)
        rc = mdb_env_set_maxdbs(d->env, 3);
    if (!rc)
        rc = mdb_env_set_mapsize(d->env, map_guess(o, max_value));
    if (rc) {
        rc = khala__errbuf(err, errlen, mdb_code(rc), "%s: %s", o->path, mdb_strerror(rc));
        goto fail;
    }
    /* MDB_NOTLS: read transactions are not tied to a thread (we reuse one, reset, across
     * calls). Commits sync: an acknowledged write survives a crash. */
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
    if ((rc = trim(d, err, errlen)) != 0)
        goto fail;
    *out = &d->tier;
    return 0;

fail:
    disk_free(d);
    return rc;
}
