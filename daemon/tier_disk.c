/*
 * The embedded disk tier: L2 / L3 on LMDB in a local directory, as the khala_tier_t operations
 * (tier.h). This file holds what each operation does; the rest of the driver is one module per
 * file:
 *
 *   daemon/tier_disk_store.c   the LMDB environment, transactions, the write set that keeps the
 *                              index equal to the records, opening and closing the store
 *   daemon/tier_disk_record.c  the bytes of a record (header: format, type, version, expiry)
 *   daemon/tier_disk_index.c   the in-memory index of the items and its approximate LFU
 *
 * Writes. A put or mput is one write transaction. With sync_every_ms 0 it is committed with
 * fsync: when it returns 0, the items are on disk and survive a crash of khalad or of the host.
 * With sync_every_ms N (khalad's default: [l2] sync_every_ms) the environment is MDB_NOSYNC:
 * a commit reaches the page cache, which survives a crash or SIGKILL of khalad, and tick()
 * fsyncs at most every N ms, so a crash of the host loses at most the last N ms of writes
 * (Redis's appendfsync everysec, by default). Per item, in the transaction:
 *   1. read the stored record; if it is live and its version is above the new one, refuse
 *      (put: KHALA_EVERSION; mput: skip that item, the level already holds newer data);
 *   2. write the record (MDB_RESERVE, then fill it in place);
 * and then, once for the transaction:
 *   3. while the projected items or bytes exceed max_items / max_bytes, pick a victim (below)
 *      and delete it in the same transaction;
 *   4. commit; 5. apply the changes to the index (the store's write set).
 * Lazy expiry (a get that finds an expired item), tick()'s sweep and the counter flushes
 * remove or write what is only a hint or is already dead, so they commit without fsync.
 * A write that hits MDB_MAP_FULL is run again after the map was doubled.
 *
 * LFU. Each entry has Redis's logarithmic 8-bit counter, and a victim is the coldest of a few
 * random entries: approximate LFU, O(1) per eviction, like Redis's allkeys-lfu (the index
 * module, daemon/tier_disk_index.c, holds the counters, their decay and the victim choice).
 * tick() writes changed counters to the store, in bounded batches, at most once a second.
 *
 * Scans. LMDB keeps keys in order, so a scan resumes strictly after the last key it visited;
 * every key present for the whole scan is visited exactly once. That key (up to KHALA_KEY_MAX
 * bytes) does not fit a 64-bit cursor, so the cursor names one of KHALA_DISK_SCAN_SLOTS slots
 * that holds it; the least recently used slot is reused, and a cursor whose slot was reused (or
 * that comes from an earlier open) is refused with -EINVAL rather than silently restarted.
 *
 * Invariants: those of the store (daemon/tier_disk_store.c); every operation leaves the write
 * set empty and no entry pinned when it returns.
 *
 * Rejected: a cursor made of the key's first 8 bytes (keys sharing a long prefix, the common
 * case, would never make progress). daemon/tier_disk_index.c gives what was rejected for the
 * index, daemon/tier_disk_store.c for the store.
 *
 * Historical note: until issue 9 the whole driver, store and record format were this one file
 * (1,549 lines), split then along the lines above with no change of behaviour.
 */
#include "tier_disk.h"

#include <errno.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <lmdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dirs.h"
#include "errbuf.h"
#include "khala/error.h"
#include "tier_disk_archive.h"
#include "tier_disk_cleanup.h"
#include "tier_disk_index.h"
#include "tier_disk_record.h"
#include "tier_disk_store.h"
#include "tier_disk_vectors.h"

/* tick() bounds: entries examined and removed by one expiry sweep; counters written by one
 * flush and entries it examines; time between flushes. A few ms at most on a slow disk. */
#define SWEEP_EXAMINE 512u
#define SWEEP_MAX 128u
#define FLUSH_EXAMINE 4096u
#define FLUSH_MAX 1024u
#define FLUSH_INTERVAL_MS 1000

/* Scans: the keys a page examines when the caller gives no count. */
#define SCAN_COUNT_DEFAULT 100u

typedef khala_disk_entry_t entry_t;
typedef khala_disk_store_t disk_t;
typedef khala_disk_act_t act_t;

static const khala_tier_ops_t disk_ops;

/* ------------------------------------------------------------------------------------------ */
/* Checks                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* Decode the record r (no message: each caller words its own). 0 or KHALA_ECORRUPT. */
static int rec_get(const MDB_val *r, khala_disk_rec_t *out) {
    return khala__disk_rec_decode(r->mv_data, r->mv_size, out, NULL, 0);
}

static int key_check(disk_t *d, const void *key, size_t klen) {
    char kb[KHALA_ERRBUF_QUOTE_CAP];
    if (klen == 0 || !key)
        return khala__disk_store_fail(d, KHALA_EKEY, "the empty key is refused");
    if (klen > KHALA_KEY_MAX)
        return khala__disk_store_fail(d, KHALA_EKEY, "key '%s' is %zu bytes, max %d",
                                      khala__disk_store_key_show(key, klen, kb, sizeof(kb)), klen,
                                      KHALA_KEY_MAX);
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
        return khala__disk_store_fail(
            d, KHALA_ETOOBIG, "value of key '%s' is %zu bytes, max %" PRIu32,
            khala__disk_store_key_show(key, klen, kb, sizeof(kb)), v->len, d->max_value);
    if (klen + v->len > d->max_bytes)
        return khala__disk_store_fail(
            d, KHALA_ETOOBIG, "item '%s' is %zu bytes, more than the store's max_bytes %" PRIu64,
            khala__disk_store_key_show(key, klen, kb, sizeof(kb)), klen + v->len, d->max_bytes);
    if ((unsigned)v->type >= (unsigned)KHALA_TYPE_COUNT || v->ttl_ms < 0 || (v->len && !v->data))
        return khala__disk_store_fail(
            d, -EINVAL, "item '%s': bad type %d, ttl_ms %" PRId64 " or value",
            khala__disk_store_key_show(key, klen, kb, sizeof(kb)), (int)v->type, v->ttl_ms);
    return 0;
}

/* One attempt at a put / mput (steps 1-5). Returns 0, a khala code, or an LMDB code for the
 * caller to report (MDB_MAP_FULL: grow and try again). strict: refuse a stale item (put)
 * rather than skip it (mput). */
static int put_txn(disk_t *d, size_t n, const khala_bytes_t *keys, const khala_tier_value_t *vals,
                   int strict, int64_t now_rt) {
    MDB_txn *txn;
    int rc = khala__disk_store_wtxn_begin(d, 0, &txn);
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
            khala_disk_rec_t held;
            old_bytes =
                k.mv_size + (r.mv_size >= KHALA_DISK_REC_HDR ? r.mv_size - KHALA_DISK_REC_HDR : 0);
            if (rec_get(&r, &held) == 0 && khala__disk_live(held.expire_ms, now_rt) &&
                held.version > v->version) {
                /* Step 1: the level holds newer data. */
                char kb[KHALA_ERRBUF_QUOTE_CAP];
                if (strict) {
                    rc = khala__disk_store_fail(
                        d, KHALA_EVERSION,
                        "key '%s': version %" PRIu64 " is older than the stored %" PRIu64,
                        khala__disk_store_key_show(k.mv_data, k.mv_size, kb, sizeof(kb)),
                        v->version, held.version);
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
        r.mv_size = khala__disk_rec_size(v->len);
        rc = mdb_put(txn, d->items, &k, &r, MDB_RESERVE);
        if (rc)
            break;
        khala__disk_rec_encode(r.mv_data, v->type, v->version, expire, v->data, v->len);
        act_t a = {.kind = KHALA_DISK_ACT_PUT,
                   .bytes = (uint32_t)(k.mv_size + v->len),
                   .expire_ms = expire,
                   .val = v};
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
        rc = khala__disk_store_act_push(d, a);
        if (rc) {
            free(a.fresh);
            break;
        }
        items_delta += !present;
        bytes_delta += (int64_t)(k.mv_size + v->len) - (int64_t)old_bytes;
    }
    if (!rc)
        rc = khala__disk_store_evict_txn(d, txn, items_delta, bytes_delta, now_rt, SIZE_MAX,
                                         1); /* step 3 */
    if (!rc)
        rc = khala__disk_index_reserve(&d->ix, nfresh);
    rc = khala__disk_store_wtxn_end(d, txn, 0, rc); /* step 4 */
    if (rc) {
        khala__disk_store_acts_discard(d);
        return rc;
    }
    khala__disk_store_acts_apply(d); /* step 5 */
    return 0;
}

static int put_items(disk_t *d, size_t n, const khala_bytes_t *keys, const khala_tier_value_t *vals,
                     int strict) {
    for (size_t i = 0; i < n; i++) {
        int rc = value_check(d, keys[i].ptr, keys[i].len, &vals[i]);
        if (rc)
            return rc;
    }
    int64_t now_rt = khala__disk_store_realtime_ms();
    int rc = 0;
    for (int tries = 0; tries <= KHALA_DISK_MAP_GROW_TRIES; tries++) {
        rc = put_txn(d, n, keys, vals, strict, now_rt);
        if (rc != MDB_MAP_FULL)
            break;
        if ((rc = khala__disk_store_grow(d)) != 0)
            return rc;
        rc = MDB_MAP_FULL;
    }
    if (khala__disk_store_is_mdb(rc))
        return khala__disk_store_mdb_fail(d, rc, "writing");
    if (rc == -ENOMEM || rc == KHALA_EFULL)
        d->st.errors++;
    if (rc == -ENOMEM)
        return khala__disk_store_fail(d, rc, "out of memory writing %zu items", n);
    if (rc == 0)
        d->st.puts += n;
    return rc;
}

/* Remove the n keys (those present) in one transaction. kind: KHALA_DISK_ACT_DEL or
 * KHALA_DISK_ACT_EXPIRE (an expired item: commits without fsync, like every removal of dead
 * data). *removed (may be NULL) gets how many were present; *was_live whether the first one was
 * live. */
static int drop_keys(disk_t *d, size_t n, const khala_bytes_t *keys, khala_disk_act_kind_t kind,
                     size_t *removed, int *was_live) {
    int nosync = kind == KHALA_DISK_ACT_EXPIRE;
    int64_t now_rt = khala__disk_store_realtime_ms();
    int rc = 0;
    for (int tries = 0; tries <= KHALA_DISK_MAP_GROW_TRIES; tries++) {
        MDB_txn *txn;
        size_t count = 0;
        rc = khala__disk_store_wtxn_begin(d, nosync, &txn);
        if (rc)
            break;
        for (size_t i = 0; i < n && !rc; i++) {
            MDB_val k = {keys[i].len, (void *)keys[i].ptr}, r;
            if (kind == KHALA_DISK_ACT_DEL) /* a deleted key leaves no archived copy either */
                rc = khala__disk_archive_del_txn(d, txn, k.mv_data, k.mv_size);
            if (!rc)
                rc = mdb_get(txn, d->items, &k, &r);
            if (rc == MDB_NOTFOUND) {
                rc = 0;
                continue;
            }
            if (rc)
                break;
            khala_disk_rec_t rec;
            int is_live = rec_get(&r, &rec) != 0 || khala__disk_live(rec.expire_ms, now_rt);
            if (i == 0 && was_live)
                *was_live = is_live;
            if (kind == KHALA_DISK_ACT_EXPIRE && is_live)
                continue;
            entry_t *e = khala__disk_index_find(&d->ix, k.mv_data, k.mv_size);
            if (e && e->pinned) /* the same key twice */
                continue;
            rc = khala__disk_store_del_both(d, txn, k.mv_data, k.mv_size);
            if (!rc && e) {
                rc = khala__disk_store_act_push(
                    d, (act_t){.kind = is_live ? KHALA_DISK_ACT_DEL : KHALA_DISK_ACT_EXPIRE,
                               .old = e});
                e->pinned = 1;
            }
            count++;
        }
        rc = khala__disk_store_wtxn_end(d, txn, nosync, rc);
        if (rc) {
            khala__disk_store_acts_discard(d);
            if (rc == MDB_MAP_FULL && khala__disk_store_grow(d) == 0)
                continue;
            break;
        }
        khala__disk_store_acts_apply(d);
        if (removed)
            *removed = count;
        return 0;
    }
    if (rc == -ENOMEM)
        return khala__disk_store_fail(d, rc, "out of memory removing %zu items", n);
    return khala__disk_store_mdb_fail(d, rc, "removing items");
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
        return khala__disk_store_fail(d, KHALA_ENOTFOUND, "no key '%s'",
                                      khala__disk_store_key_show(key, klen, kb, sizeof(kb)));
    if (rc)
        return khala__disk_store_mdb_fail(d, rc, "reading");
    khala_disk_rec_t rec;
    char why[80];
    if (khala__disk_rec_decode(r.mv_data, r.mv_size, &rec, why, sizeof(why)) != 0) {
        d->st.errors++;
        return khala__disk_store_fail(
            d, KHALA_ECORRUPT, "record of key '%s' is malformed (%zu bytes: %s)",
            khala__disk_store_key_show(key, klen, kb, sizeof(kb)), r.mv_size, why);
    }
    int64_t expire = rec.expire_ms;
    if (!khala__disk_live(expire, now_rt)) {
        *expired = 1;
        return khala__disk_store_fail(d, KHALA_ENOTFOUND, "key '%s' has expired",
                                      khala__disk_store_key_show(key, klen, kb, sizeof(kb)));
    }
    size_t len = rec.len;
    void *data = NULL;
    if (len) {
        data = malloc(len);
        if (!data)
            return khala__disk_store_fail(d, -ENOMEM, "out of memory for a value of %zu bytes",
                                          len);
        memcpy(data, rec.value, len);
    }
    out->data = data;
    out->len = len;
    out->version = rec.version;
    out->type = rec.type;
    out->ttl_ms = expire ? expire - now_rt : 0;
    entry_t *e = khala__disk_index_find(&d->ix, key, klen);
    if (e)
        khala__disk_index_touch(&d->ix, e);
    return 0;
}

/* L1 hits reported by khalad: raise the key's counter as that many gets would on average
 * (khala__disk_index_add_hits: a sum, not that many random draws). */
static void disk_note_hits(khala_tier_t *t, const void *key, size_t klen, uint64_t hits) {
    disk_t *d = t->impl;
    if (!hits || !key || klen == 0 || klen > KHALA_KEY_MAX)
        return;
    entry_t *e = khala__disk_index_find(&d->ix, key, klen);
    if (e)
        khala__disk_index_add_hits(&d->ix, e, hits);
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
    if ((rc = khala__disk_store_rtxn_begin(d, &txn)) != 0) {
        d->st.misses++;
        return rc;
    }
    int expired = 0;
    khala_tier_value_t v = {0};
    rc = get_one(d, txn, key, klen, &v, khala__disk_store_realtime_ms(), &expired);
    khala__disk_store_rtxn_end(d);
    if (rc) {
        d->st.misses++;
        if (expired) {
            khala_bytes_t kb = {key, klen};
            char msg[sizeof(t->err)];
            memcpy(msg, t->err, sizeof(msg));
            drop_keys(d, 1, &kb, KHALA_DISK_ACT_EXPIRE, NULL,
                      NULL); /* lazily; a failure changes nothing */
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
    int rc = khala__disk_store_rtxn_begin(d, &txn);
    if (rc) {
        d->st.gets += n;
        d->st.misses += n;
        return rc;
    }
    int64_t now_rt = khala__disk_store_realtime_ms();
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
    khala__disk_store_rtxn_end(d);
    if (nexp) {
        /* Remove the expired ones lazily, in one transaction; a failure changes nothing. */
        char msg[sizeof(t->err)];
        memcpy(msg, t->err, sizeof(msg));
        drop_keys(d, nexp, expired_keys, KHALA_DISK_ACT_EXPIRE, NULL, NULL);
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
    rc = drop_keys(d, 1, &k, KHALA_DISK_ACT_DEL, &removed, &was_live);
    if (rc)
        return rc;
    d->st.dels++;
    if (!removed || !was_live)
        return khala__disk_store_fail(d, KHALA_ENOTFOUND, "no key '%s'",
                                      khala__disk_store_key_show(key, klen, kb, sizeof(kb)));
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

static khala_disk_scan_slot_t *scan_slot_find(disk_t *d, uint64_t id) {
    for (int i = 0; i < KHALA_DISK_SCAN_SLOTS; i++)
        if (d->scans[i].id == id)
            return &d->scans[i];
    return NULL;
}

static khala_disk_scan_slot_t *scan_slot_new(disk_t *d) {
    khala_disk_scan_slot_t *s = &d->scans[0];
    for (int i = 0; i < KHALA_DISK_SCAN_SLOTS; i++) {
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
    khala_disk_scan_slot_t *slot = NULL;
    if (*cursor) {
        slot = scan_slot_find(d, *cursor);
        if (!slot)
            return khala__disk_store_fail(
                d, -EINVAL,
                "scan cursor %" PRIu64 " is unknown: it expired (more than "
                "%d scans at once) or comes from an earlier open; start again from 0",
                *cursor, KHALA_DISK_SCAN_SLOTS);
    }
    if (!count)
        count = SCAN_COUNT_DEFAULT;
    keybuf_t kb = {0};
    uint8_t last[KHALA_KEY_MAX];
    size_t last_len = 0;
    int end = 0;
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    int rc = khala__disk_store_rtxn_begin(d, &txn);
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
    int64_t now_rt = khala__disk_store_realtime_ms();
    for (size_t seen = 0; !rc && seen < count; seen++) {
        if (k.mv_size > KHALA_KEY_MAX) {
            rc = MDB_CORRUPTED;
            break;
        }
        memcpy(last, k.mv_data, k.mv_size);
        last_len = k.mv_size;
        khala_disk_rec_t rec;
        if (rec_get(&r, &rec) == 0 && khala__disk_live(rec.expire_ms, now_rt) &&
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
    khala__disk_store_rtxn_end(d);
    if (rc) {
        free(kb.buf);
        return rc == -ENOMEM ? khala__disk_store_fail(d, rc, "out of memory scanning")
                             : khala__disk_store_mdb_fail(d, rc, "scanning");
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
    int64_t now_rt = khala__disk_store_realtime_ms();
    if (max > d->ix.n)
        max = d->ix.n;
    if (!max)
        return 0;
    entry_t **h = malloc(max * sizeof(*h));
    if (!h)
        return khala__disk_store_fail(d, -ENOMEM, "out of memory listing %zu hot keys", max);
    size_t n = khala__disk_index_hottest(&d->ix, h, max, now_rt);
    /* Copy the keys: a callback may change the index. */
    keybuf_t kb = {0};
    for (size_t i = 0; i < n; i++) {
        if (keybuf_add(&kb, h[i]->key, h[i]->klen)) {
            free(h);
            free(kb.buf);
            return khala__disk_store_fail(d, -ENOMEM, "out of memory listing %zu hot keys", max);
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

/* Everything at once: empty every database but "meta" (the archive too). */
static int flush_all(disk_t *d, uint64_t *removed) {
    MDB_txn *txn;
    int rc = khala__disk_store_wtxn_begin(d, 0, &txn);
    if (!rc) {
        rc = mdb_drop(txn, d->items, 0);
        if (!rc)
            rc = mdb_drop(txn, d->lfu, 0);
        if (!rc)
            rc = khala__disk_archive_clear_txn(d, txn);
        rc = khala__disk_store_wtxn_end(d, txn, 0, rc);
    }
    if (rc)
        return khala__disk_store_mdb_fail(d, rc, "emptying the store");
    uint64_t n = d->ix.n;
    d->arch_n = d->arch_bytes = 0;
    khala__disk_index_clear(&d->ix);
    khala__disk_vectors_clear(&d->vec);
    d->st.dels += n;
    if (removed)
        *removed = n;
    return 0;
}

/* One batch of an invalidation: up to KHALA_DISK_BATCH_MAX removals from *from on. Sets
 * *from_len to 0 at the end of the range; returns an LMDB code, a khala code or 0. */
static int invalidate_batch(disk_t *d, const uint8_t *prefix, size_t plen, int type, uint8_t *from,
                            size_t *from_len, uint64_t *count) {
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    int rc = khala__disk_store_wtxn_begin(d, 0, &txn);
    if (rc)
        return rc;
    int64_t now_rt = khala__disk_store_realtime_ms();
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
        if (n == KHALA_DISK_BATCH_MAX) { /* resume here in the next transaction */
            memcpy(from, k.mv_data, k.mv_size);
            *from_len = k.mv_size;
            break;
        }
        khala_disk_rec_t tr;
        if (type < 0 || (rec_get(&r, &tr) == 0 && (int)tr.type == type)) {
            uint8_t key[KHALA_KEY_MAX];
            size_t klen = k.mv_size;
            memcpy(key, k.mv_data, klen);
            khala_disk_rec_t rec;
            int is_live = rec_get(&r, &rec) != 0 || khala__disk_live(rec.expire_ms, now_rt);
            rc = mdb_cursor_del(c, 0);
            if (!rc) {
                MDB_val lk = {klen, key};
                rc = mdb_del(txn, d->lfu, &lk, NULL);
                rc = rc == MDB_NOTFOUND ? 0 : rc;
            }
            entry_t *e = rc ? NULL : khala__disk_index_find(&d->ix, key, klen);
            if (e)
                rc = khala__disk_store_act_push(
                    d, (act_t){.kind = is_live ? KHALA_DISK_ACT_DEL : KHALA_DISK_ACT_EXPIRE,
                               .old = e});
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
    rc = khala__disk_store_wtxn_end(d, txn, 0, rc);
    if (rc) {
        khala__disk_store_acts_discard(d);
        return rc;
    }
    d->st.dels += n;
    khala__disk_store_acts_apply(d);
    *count += n;
    return 0;
}

static int disk_invalidate(khala_tier_t *t, const void *prefix, size_t plen, int type,
                           uint64_t *removed) {
    disk_t *d = t->impl;
    if (type >= KHALA_TYPE_COUNT || (plen && !prefix))
        return khala__disk_store_fail(d, -EINVAL, "invalidate: bad type %d or prefix", type);
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
        if (rc == MDB_MAP_FULL && grown++ < KHALA_DISK_MAP_GROW_TRIES &&
            khala__disk_store_grow(d) == 0) {
            rc = 0;
            continue;
        }
    } while (!rc && from_len);
    if (removed)
        *removed = count;
    if (rc == -ENOMEM)
        return khala__disk_store_fail(d, rc, "out of memory invalidating (%" PRIu64 " removed)",
                                      count);
    if (rc)
        return khala__disk_store_mdb_fail(d, rc, "invalidating");
    /* Then the archived copies (tier_disk_archive.c says why); *removed counts live items. */
    return khala__disk_archive_invalidate(d, prefix, plen, type < 0 ? -1 : type, NULL);
}

static int disk_archive_get(khala_tier_t *t, const void *key, size_t klen,
                            khala_tier_value_t *out) {
    return khala__disk_archive_get(t->impl, key, klen, out);
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
    out->archive_items = d->archive_retention_ms ? d->arch_n : UINT64_MAX;
    out->archive_bytes = d->archive_retention_ms ? d->arch_bytes : UINT64_MAX;
}

static void disk_tick(khala_tier_t *t, int64_t now_ms) {
    disk_t *d = t->impl;
    /* The periodic cleanup's step; while one runs, its phase 1 does the sweep's work. */
    int cleaning = khala__disk_cleanup_tick(d, now_ms);
    /* Sweep: examine a window of entries, remove the expired ones found. */
    if (d->ix.n && !cleaning) {
        int64_t now_rt = khala__disk_store_realtime_ms();
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
            drop_keys(d, nk, keys, KHALA_DISK_ACT_EXPIRE, NULL, NULL);
    }
    if (now_ms - d->last_flush_ms >= FLUSH_INTERVAL_MS) {
        d->last_flush_ms = now_ms;
        if (khala__disk_store_flush_counters(d, FLUSH_EXAMINE, FLUSH_MAX))
            d->st.errors++;
    }
    /* Periodic durability: what was committed since the last sync reaches the disk. */
    if (d->sync_every_ms && d->dirty && now_ms - d->last_sync_ms >= (int64_t)d->sync_every_ms) {
        d->last_sync_ms = now_ms;
        d->dirty = 0;
        int rc = mdb_env_sync(d->env, 1);
        if (rc) {
            d->st.errors++;
            (void)khala__disk_store_mdb_fail(d, rc, "syncing the store to disk");
        }
    }
}

static void disk_close(khala_tier_t *t) {
    if (!t)
        return;
    khala__disk_store_close(t->impl);
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
    .archive_get = disk_archive_get,
    .similar = khala__disk_similar,
    .close = disk_close,
};

/* ------------------------------------------------------------------------------------------ */
/* Open                                                                                       */
/* ------------------------------------------------------------------------------------------ */

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
    if (o->archive_retention_ms < 0 || o->cleanup_interval_ms < 0)
        return khala__errbuf(err, errlen, KHALA_ECONFIG,
                             "%s: archive_retention_ms (%" PRId64
                             ") and cleanup_interval_ms (%" PRId64 ") must not be negative",
                             o->path, o->archive_retention_ms, o->cleanup_interval_ms);
    int rc = khala__dirs_make(o->path, 0700, err, errlen);
    if (rc)
        return rc;

    disk_t *d = NULL;
    if ((rc = khala__disk_store_open(o, max_value, &d, err, errlen)) != 0)
        return rc;
    d->tier.ops = &disk_ops;
    d->tier.level = o->level;
    d->tier.healthy = 1;
    *out = &d->tier;
    return 0;
}
