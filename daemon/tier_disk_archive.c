/*
 * The disk tier's archive (tier_disk_archive.h).
 *
 * LAYOUT. Two named databases in the store's LMDB environment, written in the same transactions
 * as "items", so that a crash never leaves an item both live and archived or lost in between:
 *
 *   "archive"      key -> be64(seq) record            seq: the copy's archival number; record:
 *                                                      tier_disk_record.c's, its expiry
 *                                                      rewritten to the end of the retention
 *   "archive_age"  be64(expiry) be64(seq) key -> ""   the same copies in archival order (one
 *                                                      retention for all: oldest first; seq
 *                                                      orders those of one millisecond)
 *
 * WHAT IS ARCHIVED. Only a live item evicted for space (the LFU victim of a put, of the cleanup
 * after max_entries was lowered, of the open's trim): that is the data a cache dropped for its
 * own reasons and an operator may want back. An expired item is dead by its owner's choice, and
 * a deleted or invalidated one is wrong or unwanted: neither is archived.
 *
 * DELETES AND INVALIDATIONS REMOVE THE ARCHIVED COPY. An archive read is explicit and labelled,
 * so keeping the copy would be arguable; but a key is invalidated because its data is wrong or
 * must go (a user's data erased, a bad deploy), and the one who invalidates it expects it gone
 * from every place the cache keeps it. So del removes the key's archived copy, and invalidate
 * removes the archived copies matching its prefix and type (a second pass over "archive", after
 * the live items). A put does not touch the archive: the copy stays readable as what was evicted
 * last, and is replaced when the key is evicted again.
 *
 * THE BOUND. The archive holds at most the live capacities again (max_items items and max_bytes
 * bytes of keys + values), so the store's disk use at most doubles; when an archived copy would
 * exceed them, the oldest copies are dropped first (the first of "archive_age"), in the same
 * transaction. Copies past their retention are invisible to archive_get at once, and removed by
 * the cleanup's retention phase (khala__disk_archive_expire_step), oldest first, in bounded
 * steps.
 *
 * Invariants (outside a write):
 *   - "archive" and "archive_age" hold the same keys, each with the expiry of its record;
 *   - d->arch_n / d->arch_bytes are the count and the bytes (klen + vlen) of "archive";
 *   - with archive_retention_ms 0 neither database is open, and the store holds neither.
 *
 * Rejected: a separate LMDB environment for the archive (a move would be two commits, and a
 * crash between them could lose the item or keep it twice); keeping the original expiry (an
 * item with a short TTL would vanish from the archive at once, and the retention is the
 * operator's promise).
 */
#include "tier_disk_archive.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errbuf.h"
#include "khala/error.h"
#include "tier_disk_record.h"

typedef khala_disk_store_t disk_t;

/* An "archive" value: the copy's sequence number (8 bytes), then its record. */
#define SEQ_LEN 8
/* An "archive_age" key: expiry, sequence number, key. */
#define AGE_HDR 16
#define AGE_KEY_MAX (AGE_HDR + KHALA_KEY_MAX)

static void be64_put(uint8_t *out, uint64_t v) {
    for (int i = 7; i >= 0; i--, v >>= 8)
        out[i] = (uint8_t)v;
}

static uint64_t be64_get(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* The "archive_age" key of a copy: its expiry and its sequence number big-endian (so that byte
 * order is archival order; expiries are positive), then the key. Returns its length. */
static size_t age_key(uint8_t *out, int64_t expire_ms, uint64_t seq, const void *key, size_t klen) {
    be64_put(out, (uint64_t)expire_ms);
    be64_put(out + 8, seq);
    memcpy(out + AGE_HDR, key, klen);
    return AGE_HDR + klen;
}

/* Decode an "archive" value: 0 or KHALA_ECORRUPT (why says what is wrong, when given). */
static int arch_decode(const MDB_val *r, khala_disk_rec_t *rec, uint64_t *seq, char *why,
                       size_t whylen) {
    if (r->mv_size < SEQ_LEN) {
        if (why)
            snprintf(why, whylen, "%zu bytes, shorter than its sequence number", r->mv_size);
        return KHALA_ECORRUPT;
    }
    *seq = be64_get(r->mv_data);
    return khala__disk_rec_decode((const uint8_t *)r->mv_data + SEQ_LEN, r->mv_size - SEQ_LEN, rec,
                                  why, whylen);
}

/* The bytes (key + value) an "archive" value counts for. */
static uint64_t arch_bytes(size_t klen, const MDB_val *r) {
    size_t hdr = SEQ_LEN + KHALA_DISK_REC_HDR;
    return klen + (r->mv_size > hdr ? r->mv_size - hdr : 0);
}

static int on(const disk_t *d) {
    return d->archive_retention_ms > 0;
}

int khala__disk_archive_open_dbs(disk_t *d, MDB_txn *txn, bool persistent) {
    int rc;
    if (!on(d)) {
        /* Turned off: delete what an earlier open with an archive left. */
        MDB_dbi dbi;
        const char *names[] = {"archive", "archive_age"};
        for (int i = 0; i < 2; i++) {
            rc = mdb_dbi_open(txn, names[i], 0, &dbi);
            if (rc == MDB_NOTFOUND)
                continue;
            if (!rc)
                rc = mdb_drop(txn, dbi, 1);
            if (rc)
                return rc;
        }
        return 0;
    }
    rc = mdb_dbi_open(txn, "archive", MDB_CREATE, &d->archive);
    if (!rc)
        rc = mdb_dbi_open(txn, "archive_age", MDB_CREATE, &d->archive_age);
    if (!rc && !persistent) {
        rc = mdb_drop(txn, d->archive, 0);
        if (!rc)
            rc = mdb_drop(txn, d->archive_age, 0);
    }
    return rc;
}

int khala__disk_archive_load(disk_t *d, char *err, size_t errlen) {
    d->arch_n = d->arch_bytes = 0;
    if (!on(d))
        return 0;
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    MDB_val k, v;
    int rc = mdb_txn_begin(d->env, NULL, MDB_RDONLY, &txn);
    if (!rc)
        rc = mdb_cursor_open(txn, d->archive, &c);
    if (!rc)
        rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    for (; !rc; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        d->arch_n++;
        d->arch_bytes += arch_bytes(k.mv_size, &v);
        uint64_t seq = v.mv_size >= SEQ_LEN ? be64_get(v.mv_data) : 0;
        if (seq >= d->arch_seq)
            d->arch_seq = seq + 1; /* new copies sort after every kept one of their millisecond */
    }
    if (c)
        mdb_cursor_close(c);
    if (txn)
        mdb_txn_abort(txn);
    if (rc != MDB_NOTFOUND)
        return khala__errbuf(err, errlen, rc == ENOMEM ? -ENOMEM : KHALA_ETIER,
                             "%s: reading the archive: %s", d->path, mdb_strerror(rc));
    return 0;
}

/* Remove the copy of key from both databases, given its record r in "archive" (read in txn).
 * A copy whose record is malformed has no known "archive_age" entry: it is removed alone (the
 * orphan age entry is skipped by whoever meets it). */
static int drop_copy_txn(disk_t *d, MDB_txn *txn, const void *key, size_t klen, const MDB_val *r) {
    khala_disk_rec_t rec;
    uint64_t bytes = arch_bytes(klen, r), seq;
    int rc = 0;
    if (arch_decode(r, &rec, &seq, NULL, 0) == 0) {
        uint8_t ak[AGE_KEY_MAX];
        MDB_val a = {age_key(ak, rec.expire_ms, seq, key, klen), ak};
        rc = mdb_del(txn, d->archive_age, &a, NULL);
        if (rc == MDB_NOTFOUND)
            rc = 0;
    }
    MDB_val k = {klen, (void *)key};
    if (!rc)
        rc = mdb_del(txn, d->archive, &k, NULL);
    if (!rc) {
        d->arch_dn--;
        d->arch_dbytes -= (int64_t)bytes;
    }
    return rc;
}

int khala__disk_archive_del_txn(disk_t *d, MDB_txn *txn, const void *key, size_t klen) {
    if (!on(d))
        return 0;
    MDB_val k = {klen, (void *)key}, r;
    int rc = mdb_get(txn, d->archive, &k, &r);
    if (rc == MDB_NOTFOUND)
        return 0;
    return rc ? rc : drop_copy_txn(d, txn, key, klen, &r);
}

/* Remove the first entry of "archive_age" (the oldest copy) and its copy, passing over the age
 * key keep (keep_len bytes; 0 = none: the copy just archived, which may share its millisecond
 * with older ones and sort before them by key). *expire_ms gets its expiry. MDB_NOTFOUND when
 * the archive holds nothing else. */
static int drop_oldest_txn(disk_t *d, MDB_txn *txn, const uint8_t *keep, size_t keep_len,
                           int64_t *expire_ms) {
    MDB_cursor *c;
    MDB_val ak, none, r;
    int rc = mdb_cursor_open(txn, d->archive_age, &c);
    if (rc)
        return rc;
    rc = mdb_cursor_get(c, &ak, &none, MDB_FIRST);
    if (!rc && keep_len && ak.mv_size == keep_len && memcmp(ak.mv_data, keep, keep_len) == 0)
        rc = mdb_cursor_get(c, &ak, &none, MDB_NEXT);
    if (!rc && (ak.mv_size <= AGE_HDR || ak.mv_size > AGE_KEY_MAX))
        rc = MDB_CORRUPTED;
    uint8_t key[KHALA_KEY_MAX];
    size_t klen = 0;
    uint64_t aseq = 0;
    if (!rc) {
        *expire_ms = (int64_t)be64_get(ak.mv_data);
        aseq = be64_get((const uint8_t *)ak.mv_data + 8);
        klen = ak.mv_size - AGE_HDR;
        memcpy(key, (const uint8_t *)ak.mv_data + AGE_HDR, klen);
        rc = mdb_cursor_del(c, 0);
    }
    mdb_cursor_close(c);
    if (rc)
        return rc;
    MDB_val k = {klen, key};
    rc = mdb_get(txn, d->archive, &k, &r);
    if (rc == MDB_NOTFOUND)
        return 0; /* an orphan age entry: gone now */
    if (rc)
        return rc;
    khala_disk_rec_t rec;
    uint64_t seq;
    if (arch_decode(&r, &rec, &seq, NULL, 0) == 0 && (rec.expire_ms != *expire_ms || seq != aseq))
        return 0; /* the key was archived again later: that copy stays */
    uint64_t bytes = arch_bytes(klen, &r);
    rc = mdb_del(txn, d->archive, &k, NULL);
    if (!rc) {
        d->arch_dn--;
        d->arch_dbytes -= (int64_t)bytes;
    }
    return rc;
}

int khala__disk_archive_move_txn(disk_t *d, MDB_txn *txn, const void *key, size_t klen,
                                 const MDB_val *item, int64_t now_rt) {
    if (!on(d))
        return 0;
    MDB_val k = {klen, (void *)key}, r, a;
    khala_disk_rec_t rec;
    int rc = 0;
    if (item)
        r = *item;
    else if ((rc = mdb_get(txn, d->items, &k, &r)) != 0)
        return rc == MDB_NOTFOUND ? 0 : rc;
    if (khala__disk_rec_decode(r.mv_data, r.mv_size, &rec, NULL, 0) != 0)
        return 0; /* not worth keeping, and it would not decode when read back */
    /* Copy the value out first: the puts below may move the page it is on (LMDB spills dirty
     * pages of a large transaction), and the view with it. */
    size_t vlen = rec.len;
    if (vlen > d->arch_buf_cap) {
        uint8_t *b = realloc(d->arch_buf, vlen);
        if (!b)
            return ENOMEM;
        d->arch_buf = b;
        d->arch_buf_cap = vlen;
    }
    if (vlen)
        memcpy(d->arch_buf, rec.value, vlen);
    int64_t expire =
        d->archive_retention_ms > INT64_MAX - now_rt ? INT64_MAX : now_rt + d->archive_retention_ms;
    a.mv_size = SEQ_LEN + khala__disk_rec_size(vlen);
    rc = mdb_put(txn, d->archive, &k, &a, MDB_RESERVE | MDB_NOOVERWRITE);
    if (rc == MDB_KEYEXIST) { /* an older archived copy: replaced */
        rc = drop_copy_txn(d, txn, key, klen, &a);
        a.mv_size = SEQ_LEN + khala__disk_rec_size(vlen);
        if (!rc)
            rc = mdb_put(txn, d->archive, &k, &a, MDB_RESERVE);
    }
    if (rc)
        return rc;
    uint64_t seq = d->arch_seq++; /* a hint of order: an aborted write only skips a number */
    be64_put(a.mv_data, seq);
    khala__disk_rec_encode((uint8_t *)a.mv_data + SEQ_LEN, rec.type, rec.version, expire,
                           d->arch_buf, vlen);
    uint8_t ak[AGE_KEY_MAX];
    MDB_val av = {age_key(ak, expire, seq, key, klen), ak}, none = {0, NULL};
    rc = mdb_put(txn, d->archive_age, &av, &none, 0);
    if (rc)
        return rc;
    d->arch_dn++;
    d->arch_dbytes += (int64_t)(klen + vlen);
    /* The bound: oldest first. */
    while ((int64_t)d->arch_n + d->arch_dn > (int64_t)d->max_items ||
           (int64_t)d->arch_bytes + d->arch_dbytes > (int64_t)d->max_bytes) {
        int64_t e;
        int64_t before = d->arch_dn;
        rc = drop_oldest_txn(d, txn, ak, av.mv_size, &e);
        if (rc == MDB_NOTFOUND)
            return 0;
        if (rc)
            return rc;
        if (d->arch_dn < before)
            d->arch_drops++; /* counted at once: a hint, even if the write aborts */
    }
    return 0;
}

int khala__disk_archive_clear_txn(disk_t *d, MDB_txn *txn) {
    if (!on(d))
        return 0;
    int rc = mdb_drop(txn, d->archive, 0);
    return rc ? rc : mdb_drop(txn, d->archive_age, 0);
}

int khala__disk_archive_expire_step(disk_t *d, int64_t now_rt, size_t max, size_t *removed) {
    *removed = 0;
    if (!on(d) || !d->arch_n || !max)
        return 0;
    MDB_txn *txn;
    int rc = khala__disk_store_wtxn_begin(d, 1, &txn);
    if (rc)
        return rc;
    size_t n = 0;
    while (n < max) {
        MDB_cursor *c;
        MDB_val ak, none;
        rc = mdb_cursor_open(txn, d->archive_age, &c);
        if (rc)
            break;
        rc = mdb_cursor_get(c, &ak, &none, MDB_FIRST);
        int64_t first = rc == 0 && ak.mv_size > AGE_HDR ? (int64_t)be64_get(ak.mv_data) : INT64_MAX;
        mdb_cursor_close(c);
        if (rc || khala__disk_live(first, now_rt))
            break;
        int64_t e;
        int64_t before = d->arch_dn;
        rc = drop_oldest_txn(d, txn, NULL, 0, &e);
        if (rc)
            break;
        n += d->arch_dn < before;
    }
    if (rc == MDB_NOTFOUND)
        rc = 0;
    rc = khala__disk_store_wtxn_end(d, txn, 1, rc);
    if (rc) {
        khala__disk_store_acts_discard(d);
        return rc;
    }
    khala__disk_store_acts_apply(d);
    d->arch_expirations += n;
    *removed = n;
    return 0;
}

/* One batch of khala__disk_archive_invalidate: like the tier's invalidate_batch over "items". */
static int invalidate_batch(disk_t *d, const uint8_t *prefix, size_t plen, int type, uint8_t *from,
                            size_t *from_len, uint64_t *count) {
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    int rc = khala__disk_store_wtxn_begin(d, 0, &txn);
    if (rc)
        return rc;
    size_t n = 0;
    rc = mdb_cursor_open(txn, d->archive, &c);
    MDB_val k = {*from_len, from}, r;
    if (!rc)
        rc = *from_len ? mdb_cursor_get(c, &k, &r, MDB_SET_RANGE)
                       : mdb_cursor_get(c, &k, &r, MDB_FIRST);
    while (!rc) {
        if (plen && (k.mv_size < plen || memcmp(k.mv_data, prefix, plen) != 0)) {
            rc = MDB_NOTFOUND;
            break;
        }
        if (k.mv_size == 0 || k.mv_size > KHALA_KEY_MAX) {
            rc = MDB_CORRUPTED;
            break;
        }
        if (n == KHALA_DISK_BATCH_MAX) {
            memcpy(from, k.mv_data, k.mv_size);
            *from_len = k.mv_size;
            break;
        }
        khala_disk_rec_t rec;
        uint64_t seq = 0;
        int bad = arch_decode(&r, &rec, &seq, NULL, 0) != 0;
        if (type < 0 || bad || (int)rec.type == type) {
            uint8_t key[KHALA_KEY_MAX];
            size_t klen = k.mv_size;
            memcpy(key, k.mv_data, klen);
            uint64_t bytes = arch_bytes(klen, &r);
            if (!bad) {
                uint8_t ak[AGE_KEY_MAX];
                MDB_val a = {age_key(ak, rec.expire_ms, seq, key, klen), ak};
                rc = mdb_del(txn, d->archive_age, &a, NULL);
                rc = rc == MDB_NOTFOUND ? 0 : rc;
            }
            if (!rc)
                rc = mdb_cursor_del(c, 0);
            if (rc)
                break;
            d->arch_dn--;
            d->arch_dbytes -= (int64_t)bytes;
            n++;
        }
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
    khala__disk_store_acts_apply(d);
    *count += n;
    return 0;
}

int khala__disk_archive_invalidate(disk_t *d, const void *prefix, size_t plen, int type,
                                   uint64_t *removed) {
    uint64_t count = 0;
    int rc = 0, grown = 0;
    if (removed)
        *removed = 0;
    if (!on(d) || plen > KHALA_KEY_MAX || !d->arch_n)
        return 0;
    uint8_t from[KHALA_KEY_MAX];
    size_t from_len = plen;
    if (plen)
        memcpy(from, prefix, plen);
    do {
        rc = invalidate_batch(d, prefix, plen, type, from, &from_len, &count);
        if (rc == MDB_MAP_FULL && grown++ < KHALA_DISK_MAP_GROW_TRIES &&
            khala__disk_store_grow(d) == 0) {
            rc = 0;
            continue;
        }
    } while (!rc && from_len);
    if (removed)
        *removed = count;
    return rc ? khala__disk_store_mdb_fail(d, rc, "invalidating the archive") : 0;
}

int khala__disk_archive_get(disk_t *d, const void *key, size_t klen, khala_tier_value_t *out) {
    char kb[KHALA_ERRBUF_QUOTE_CAP];
    if (klen == 0 || !key)
        return khala__disk_store_fail(d, KHALA_EKEY, "the empty key is refused");
    if (klen > KHALA_KEY_MAX)
        return khala__disk_store_fail(d, KHALA_EKEY, "key '%s' is %zu bytes, max %d",
                                      khala__disk_store_key_show(key, klen, kb, sizeof(kb)), klen,
                                      KHALA_KEY_MAX);
    if (!on(d))
        return khala__disk_store_fail(d, KHALA_ENOTFOUND,
                                      "no archive (archive_retention is 0): no key '%s' there",
                                      khala__disk_store_key_show(key, klen, kb, sizeof(kb)));
    MDB_txn *txn;
    int rc = khala__disk_store_rtxn_begin(d, &txn);
    if (rc)
        return rc;
    MDB_val k = {klen, (void *)key}, r;
    khala_disk_rec_t rec;
    uint64_t seq;
    char why[80];
    int64_t now_rt = khala__disk_store_realtime_ms();
    rc = mdb_get(txn, d->archive, &k, &r);
    if (rc == MDB_NOTFOUND) {
        rc = khala__disk_store_fail(d, KHALA_ENOTFOUND, "no archived copy of key '%s'",
                                    khala__disk_store_key_show(key, klen, kb, sizeof(kb)));
    } else if (rc) {
        rc = khala__disk_store_mdb_fail(d, rc, "reading the archive");
    } else if (arch_decode(&r, &rec, &seq, why, sizeof(why)) != 0) {
        d->st.errors++;
        rc = khala__disk_store_fail(
            d, KHALA_ECORRUPT, "archived record of key '%s' is malformed (%zu bytes: %s)",
            khala__disk_store_key_show(key, klen, kb, sizeof(kb)), r.mv_size, why);
    } else if (!khala__disk_live(rec.expire_ms, now_rt)) {
        rc = khala__disk_store_fail(d, KHALA_ENOTFOUND,
                                    "the archived copy of key '%s' is past its retention",
                                    khala__disk_store_key_show(key, klen, kb, sizeof(kb)));
    } else {
        void *data = NULL;
        if (rec.len && !(data = malloc(rec.len))) {
            rc = khala__disk_store_fail(d, -ENOMEM, "out of memory for a value of %zu bytes",
                                        rec.len);
        } else {
            if (rec.len)
                memcpy(data, rec.value, rec.len);
            *out = (khala_tier_value_t){.data = data,
                                        .len = rec.len,
                                        .version = rec.version,
                                        .ttl_ms = rec.expire_ms ? rec.expire_ms - now_rt : 0,
                                        .type = rec.type};
        }
    }
    khala__disk_store_rtxn_end(d);
    return rc;
}
