/*
 * khalad's link index (daemon/links.h).
 *
 * FILES
 *
 *   <dir>/data.mdb, lock.mdb   one LMDB environment (MDB_NOTLS), four named databases:
 *       "rels"  rel -> record      seq (u64, little-endian), then the ends: n x (u8 len, bytes)
 *       "ends"  end -> rel         MDB_DUPSORT: one duplicate per relationship linked to end
 *       "age"   seq -> rel         seq big-endian, so that the first record is the oldest
 *       "meta"  "format" -> FORMAT_MAGIC; "seq" -> the next seq (u64, little-endian)
 *
 * Keys are at most KHALA_KEY_MAX (250) bytes, within LMDB's 511-byte limit for keys and for the
 * data of a DUPSORT database, and within the one length byte of a record.
 *
 * Invariants (whenever no call is running):
 *   - "ends" holds (e, r) exactly when "rels" holds r and its record lists e.
 *   - "age" holds (s, r) exactly when "rels" holds r with seq s.
 *   - the entries of "ends" (the links) are at most max_links.
 * Every change is one write transaction, so a failed or interrupted change leaves the index as
 * it was. With sync_every_ms N the environment is MDB_NOSYNC (a commit reaches the page cache,
 * which a crash of khalad keeps; the tick fsyncs), as the disk store and the journal do.
 *
 * Why LMDB rather than a table in memory rebuilt from the levels: the levels do not know the
 * links (Redis holds values only), and the index must survive a restart of khalad, or an end
 * written after the restart would leave its relationships stale. Why a directory of its own
 * rather than tables in the disk store: L2 may be Redis, and the journal set the precedent of a
 * sub-directory of the level's state directory.
 */
#include "links.h"

#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "debug.h"
#include "dirs.h"
#include "errbuf.h"
#include "khala/error.h"
#include "lmdb_check.h"
#include "sys.h"

/* What the "format" record holds; a newer layout gets a new magic. */
#define FORMAT_MAGIC "khala-links-1"
/* The map: sparse on Linux, so a large bound costs only address space. */
#define MAP_SIZE ((size_t)4 << 30)

struct khala_links {
    MDB_env *env;
    MDB_dbi rels, ends, age, meta;
    uint64_t max_links;     /* the bound, in "ends" entries */
    uint32_t sync_every_ms; /* 0 = each commit fsync'd */
    int dirty;              /* commits not yet fsync'd (sync_every_ms > 0) */
    int64_t last_sync_ms;
    char dir[512];
    char err[640];
};

#define fail(lx, rc, ...) khala__errbuf((lx)->err, sizeof((lx)->err), (rc), __VA_ARGS__)

/* An LMDB failure of a change as a khala code: the index cannot take it now. */
static int mdb_fail(khala_links_t *lx, int rc, const char *what) {
    if (rc == ENOMEM)
        return fail(lx, -ENOMEM, "link index %s: %s: out of memory", lx->dir, what);
    return fail(lx, KHALA_ETIER, "link index %s: %s: %s", lx->dir, what, mdb_strerror(rc));
}

/* Keys lists ---------------------------------------------------------------------------------- */

void khala__links_keys_free(khala_links_keys_t *k) {
    free(k->buf);
    memset(k, 0, sizeof(*k));
}

int khala__links_keys_push(khala_links_keys_t *k, const void *key, size_t klen) {
    KHALA_ASSERT(klen > 0 && klen <= KHALA_KEY_MAX);
    if (k->len + 1 + klen > k->cap) {
        size_t cap = k->cap ? 2 * k->cap : 1024;
        while (cap < k->len + 1 + klen)
            cap *= 2;
        uint8_t *b = realloc(k->buf, cap);
        if (!b)
            return -ENOMEM;
        k->buf = b;
        k->cap = cap;
    }
    k->buf[k->len] = (uint8_t)klen;
    memcpy(k->buf + k->len + 1, key, klen);
    k->len += 1 + klen;
    k->n++;
    return 0;
}

int khala__links_keys_next(khala_links_keys_t *k, const uint8_t **key, size_t *klen) {
    if (k->cursor >= k->len)
        return 0;
    *klen = k->buf[k->cursor];
    *key = k->buf + k->cursor + 1;
    k->cursor += 1 + *klen;
    return 1;
}

void khala__links_keys_rewind(khala_links_keys_t *k) {
    k->cursor = 0;
}

/* Records ------------------------------------------------------------------------------------- */

static void put_u64le(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void put_u64be(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * (7 - i)));
}

/* Walk the ends of a "rels" record: 1 and the next end while there is one, 0 at the end, -1
 * when the record is damaged. */
static int rec_next(const MDB_val *v, size_t *off, const uint8_t **e, size_t *elen) {
    if (*off == 0)
        *off = 8;
    if (*off >= v->mv_size)
        return 0;
    const uint8_t *p = (const uint8_t *)v->mv_data;
    size_t len = p[*off];
    if (len == 0 || *off + 1 + len > v->mv_size)
        return -1;
    *e = p + *off + 1;
    *elen = len;
    *off += 1 + len;
    return 1;
}

/* Open and close ------------------------------------------------------------------------------ */

static int open_dbs(khala_links_t *lx, char *err, size_t errlen) {
    MDB_txn *txn;
    int rc = mdb_txn_begin(lx->env, NULL, 0, &txn);
    if (rc)
        return khala__errbuf(err, errlen, -EIO, "link index %s: %s", lx->dir, mdb_strerror(rc));
    MDB_val k = {6, "format"}, v;
    rc = mdb_dbi_open(txn, "meta", 0, &lx->meta);
    if (rc == MDB_NOTFOUND) {
        MDB_dbi main_db;
        MDB_stat st;
        rc = mdb_dbi_open(txn, NULL, 0, &main_db);
        if (!rc)
            rc = mdb_stat(txn, main_db, &st);
        if (!rc && st.ms_entries) {
            mdb_txn_abort(txn);
            return khala__errbuf(err, errlen, KHALA_ECONFIG,
                                 "%s is not a khala link index (an LMDB store without its format "
                                 "record)",
                                 lx->dir);
        }
        if (!rc)
            rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &lx->meta);
        v = (MDB_val){sizeof(FORMAT_MAGIC) - 1, FORMAT_MAGIC};
        if (!rc)
            rc = mdb_put(txn, lx->meta, &k, &v, 0);
    } else if (!rc) {
        rc = mdb_get(txn, lx->meta, &k, &v);
        if (rc == MDB_NOTFOUND || (rc == 0 && (v.mv_size != sizeof(FORMAT_MAGIC) - 1 ||
                                               memcmp(v.mv_data, FORMAT_MAGIC, v.mv_size)))) {
            mdb_txn_abort(txn);
            return khala__errbuf(err, errlen, KHALA_ECONFIG,
                                 "%s is not a link index this khalad reads (format record "
                                 "missing or not '%s')",
                                 lx->dir, FORMAT_MAGIC);
        }
    } else if (rc == MDB_INCOMPATIBLE) {
        mdb_txn_abort(txn);
        return khala__errbuf(err, errlen, KHALA_ECONFIG, "%s is not a khala link index", lx->dir);
    }
    if (!rc)
        rc = mdb_dbi_open(txn, "rels", MDB_CREATE, &lx->rels);
    if (!rc)
        rc = mdb_dbi_open(txn, "ends", MDB_CREATE | MDB_DUPSORT, &lx->ends);
    if (!rc)
        rc = mdb_dbi_open(txn, "age", MDB_CREATE, &lx->age);
    if (rc) {
        mdb_txn_abort(txn);
        return khala__errbuf(err, errlen, -EIO, "link index %s: opening its databases: %s", lx->dir,
                             mdb_strerror(rc));
    }
    if ((rc = mdb_txn_commit(txn)) != 0)
        return khala__errbuf(err, errlen, -EIO, "link index %s: %s", lx->dir, mdb_strerror(rc));
    return 0;
}

int khala__links_open(const char *dir, uint64_t max_links, uint32_t sync_every_ms,
                      khala_links_t **out, char *err, size_t errlen) {
    KHALA_ASSERT(dir && out);
    if (strlen(dir) >= sizeof(((khala_links_t *)0)->dir))
        return khala__errbuf(err, errlen, -ENAMETOOLONG, "link index directory '%s' is too long",
                             dir);
    int rc = khala__dirs_make(dir, 0700, err, errlen);
    if (rc != 0)
        return rc;
    if ((rc = khala__lmdb_check(dir, "the link index", err, errlen)) != 0)
        return rc;
    khala_links_t *lx = calloc(1, sizeof(*lx));
    if (!lx)
        return khala__errbuf(err, errlen, -ENOMEM, "link index %s: out of memory", dir);
    snprintf(lx->dir, sizeof(lx->dir), "%s", dir);
    lx->max_links = max_links ? max_links : KHALA_LINKS_MAX_DEFAULT;
    lx->sync_every_ms = sync_every_ms;
    lx->last_sync_ms = khala__sys_now_ms();
    rc = mdb_env_create(&lx->env);
    if (!rc)
        rc = mdb_env_set_maxdbs(lx->env, 8);
    if (!rc)
        rc = mdb_env_set_mapsize(lx->env, MAP_SIZE);
    if (!rc)
        rc = mdb_env_open(lx->env, dir, MDB_NOTLS | (sync_every_ms ? MDB_NOSYNC : 0), 0600);
    if (rc) {
        int code = rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH ? KHALA_ECORRUPT : -EIO;
        khala__errbuf(err, errlen, code, "link index %s: %s", dir, mdb_strerror(rc));
        if (lx->env)
            mdb_env_close(lx->env);
        free(lx);
        return code;
    }
    if ((rc = open_dbs(lx, err, errlen)) != 0) {
        mdb_env_close(lx->env);
        free(lx);
        return rc;
    }
    *out = lx;
    return 0;
}

void khala__links_close(khala_links_t *lx) {
    if (!lx)
        return;
    if (lx->dirty)
        (void)mdb_env_sync(lx->env, 1);
    mdb_env_close(lx->env);
    free(lx);
}

const char *khala__links_errmsg(const khala_links_t *lx) {
    return lx->err;
}

void khala__links_tick(khala_links_t *lx, int64_t now_ms) {
    if (!lx || !lx->dirty || now_ms - lx->last_sync_ms < (int64_t)lx->sync_every_ms)
        return;
    if (mdb_env_sync(lx->env, 1) == 0)
        lx->dirty = 0;
    lx->last_sync_ms = now_ms;
}

/* Changes ------------------------------------------------------------------------------------- */

static int commit(khala_links_t *lx, MDB_txn *txn, const char *what) {
    int rc = mdb_txn_commit(txn);
    if (rc)
        return mdb_fail(lx, rc, what);
    if (lx->sync_every_ms)
        lx->dirty = 1;
    return 0;
}

/* Remove rel's record, its "age" entry and its "ends" entries in txn. Returns an LMDB code. */
static int drop_txn(khala_links_t *lx, MDB_txn *txn, const void *rel, size_t rlen) {
    MDB_val rk = {rlen, (void *)rel}, rv;
    int rc = mdb_get(txn, lx->rels, &rk, &rv);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return rc;
    if (rv.mv_size < 8)
        return MDB_CORRUPTED;
    /* rv points into the map, which a del in this transaction may change: copy it first. */
    uint8_t *copy = malloc(rv.mv_size);
    if (!copy)
        return ENOMEM;
    memcpy(copy, rv.mv_data, rv.mv_size);
    MDB_val cv = {rv.mv_size, copy};
    uint8_t seq[8];
    put_u64be(seq, get_u64le(copy));
    MDB_val sk = {8, seq};
    rc = mdb_del(txn, lx->age, &sk, NULL);
    if (rc == MDB_NOTFOUND)
        rc = 0;
    size_t off = 0;
    const uint8_t *e;
    size_t elen;
    int more;
    while (!rc && (more = rec_next(&cv, &off, &e, &elen)) != 0) {
        if (more < 0) {
            rc = MDB_CORRUPTED;
            break;
        }
        MDB_val ek = {elen, (void *)e}, ev = {rlen, (void *)rel};
        rc = mdb_del(txn, lx->ends, &ek, &ev);
        if (rc == MDB_NOTFOUND)
            rc = 0;
    }
    free(copy);
    if (!rc)
        rc = mdb_del(txn, lx->rels, &rk, NULL);
    return rc;
}

int khala__links_set(khala_links_t *lx, const void *rel, size_t rlen, const khala_bytes_t *ends,
                     size_t n) {
    if (rlen == 0 || rlen > KHALA_KEY_MAX)
        return fail(lx, KHALA_EINVAL, "relationship key is %zu bytes, expected 1..%d", rlen,
                    KHALA_KEY_MAX);
    if (n > KHALA_PROTO_ARRAY_MAX)
        return fail(lx, KHALA_EINVAL, "%zu links, max %u", n, KHALA_PROTO_ARRAY_MAX);
    for (size_t i = 0; i < n; i++) {
        if (ends[i].len == 0 || ends[i].len > KHALA_KEY_MAX)
            return fail(lx, KHALA_EINVAL, "link %zu is %zu bytes, expected 1..%d", i, ends[i].len,
                        KHALA_KEY_MAX);
        if (ends[i].len == rlen && memcmp(ends[i].ptr, rel, rlen) == 0)
            return fail(lx, KHALA_EINVAL, "link %zu is the item's own key", i);
    }
    MDB_txn *txn;
    int rc = mdb_txn_begin(lx->env, NULL, 0, &txn);
    if (rc)
        return mdb_fail(lx, rc, "begin");
    uint8_t *rec = NULL;
    rc = drop_txn(lx, txn, rel, rlen);
    if (rc || n == 0)
        goto done;
    /* The next seq. */
    MDB_val mk = {3, "seq"}, mv;
    uint64_t seq = 1;
    rc = mdb_get(txn, lx->meta, &mk, &mv);
    if (rc == 0 && mv.mv_size == 8)
        seq = get_u64le(mv.mv_data);
    else if (rc && rc != MDB_NOTFOUND)
        goto done;
    uint8_t next[8];
    put_u64le(next, seq + 1);
    mv = (MDB_val){8, next};
    if ((rc = mdb_put(txn, lx->meta, &mk, &mv, 0)) != 0)
        goto done;
    /* The record: seq, then each distinct end. */
    size_t cap = 8;
    for (size_t i = 0; i < n; i++)
        cap += 1 + ends[i].len;
    if (!(rec = malloc(cap))) {
        rc = ENOMEM;
        goto done;
    }
    put_u64le(rec, seq);
    size_t len = 8;
    for (size_t i = 0; i < n; i++) {
        MDB_val ek = {ends[i].len, (void *)ends[i].ptr}, ev = {rlen, (void *)rel};
        rc = mdb_put(txn, lx->ends, &ek, &ev, MDB_NODUPDATA);
        if (rc == MDB_KEYEXIST) {
            rc = 0; /* a duplicate end: listed once */
            continue;
        }
        if (rc)
            goto done;
        rec[len] = (uint8_t)ends[i].len;
        memcpy(rec + len + 1, ends[i].ptr, ends[i].len);
        len += 1 + ends[i].len;
    }
    MDB_stat st;
    if ((rc = mdb_stat(txn, lx->ends, &st)) != 0)
        goto done;
    if (st.ms_entries > lx->max_links) {
        mdb_txn_abort(txn);
        free(rec);
        return fail(lx, KHALA_EFULL, "link index %s is full (%zu links, max %llu)", lx->dir,
                    (size_t)st.ms_entries, (unsigned long long)lx->max_links);
    }
    MDB_val rk = {rlen, (void *)rel}, rv = {len, rec};
    if ((rc = mdb_put(txn, lx->rels, &rk, &rv, 0)) != 0)
        goto done;
    uint8_t sk[8];
    put_u64be(sk, seq);
    MDB_val skv = {8, sk};
    rc = mdb_put(txn, lx->age, &skv, &rk, 0);
done:
    free(rec);
    if (rc) {
        mdb_txn_abort(txn);
        return mdb_fail(lx, rc, "recording links");
    }
    return commit(lx, txn, "recording links");
}

int khala__links_drop(khala_links_t *lx, const void *rel, size_t rlen) {
    KHALA_ASSERT(rlen > 0 && rlen <= KHALA_KEY_MAX);
    MDB_txn *txn;
    int rc = mdb_txn_begin(lx->env, NULL, 0, &txn);
    if (rc)
        return mdb_fail(lx, rc, "begin");
    if ((rc = drop_txn(lx, txn, rel, rlen)) != 0) {
        mdb_txn_abort(txn);
        return mdb_fail(lx, rc, "dropping links");
    }
    return commit(lx, txn, "dropping links");
}

int khala__links_clear(khala_links_t *lx) {
    MDB_txn *txn;
    int rc = mdb_txn_begin(lx->env, NULL, 0, &txn);
    if (!rc)
        rc = mdb_drop(txn, lx->rels, 0);
    if (!rc)
        rc = mdb_drop(txn, lx->ends, 0);
    if (!rc)
        rc = mdb_drop(txn, lx->age, 0);
    if (rc) {
        if (txn)
            mdb_txn_abort(txn);
        return mdb_fail(lx, rc, "clearing");
    }
    return commit(lx, txn, "clearing");
}

/* Reads --------------------------------------------------------------------------------------- */

static int rtxn(khala_links_t *lx, MDB_txn **txn) {
    int rc = mdb_txn_begin(lx->env, NULL, MDB_RDONLY, txn);
    return rc ? mdb_fail(lx, rc, "read") : 0;
}

/* The end of a read: rc an LMDB code (MDB_NOTFOUND = done) or a khala code. */
static int rdone(khala_links_t *lx, MDB_txn *txn, MDB_cursor *c, int rc, const char *what) {
    if (c)
        mdb_cursor_close(c);
    mdb_txn_abort(txn);
    if (rc == 0 || rc == MDB_NOTFOUND)
        return 0;
    if (rc == -ENOMEM)
        return fail(lx, -ENOMEM, "link index %s: %s: out of memory", lx->dir, what);
    return mdb_fail(lx, rc, what);
}

int khala__links_rels_of(khala_links_t *lx, const void *end, size_t elen, khala_links_keys_t *out) {
    KHALA_ASSERT(elen > 0 && elen <= KHALA_KEY_MAX);
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    int rc = rtxn(lx, &txn);
    if (rc)
        return rc;
    MDB_val k = {elen, (void *)end}, v;
    rc = mdb_cursor_open(txn, lx->ends, &c);
    if (!rc)
        rc = mdb_cursor_get(c, &k, &v, MDB_SET);
    for (; !rc; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT_DUP))
        if (v.mv_size > 0 && v.mv_size <= KHALA_KEY_MAX &&
            khala__links_keys_push(out, v.mv_data, v.mv_size))
            rc = -ENOMEM;
    return rdone(lx, txn, c, rc, "reading the links of an end");
}

int khala__links_ends_of(khala_links_t *lx, const void *rel, size_t rlen, khala_links_keys_t *out) {
    KHALA_ASSERT(rlen > 0 && rlen <= KHALA_KEY_MAX);
    MDB_txn *txn;
    int rc = rtxn(lx, &txn);
    if (rc)
        return rc;
    MDB_val k = {rlen, (void *)rel}, v;
    rc = mdb_get(txn, lx->rels, &k, &v);
    size_t off = 0;
    const uint8_t *e;
    size_t elen;
    int more;
    while (!rc && (more = rec_next(&v, &off, &e, &elen)) != 0) {
        if (more < 0)
            rc = MDB_CORRUPTED;
        else if (khala__links_keys_push(out, e, elen))
            rc = -ENOMEM;
    }
    return rdone(lx, txn, NULL, rc, "reading the ends of a relationship");
}

/* Every key of db starting with prefix, each once (a DUPSORT key once, not per duplicate). */
static int keys_with_prefix(khala_links_t *lx, MDB_dbi db, int dups, const void *prefix,
                            size_t plen, khala_links_keys_t *out) {
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    int rc = rtxn(lx, &txn);
    if (rc)
        return rc;
    MDB_val k = {plen, (void *)prefix}, v;
    rc = mdb_cursor_open(txn, db, &c);
    if (!rc)
        rc = plen ? mdb_cursor_get(c, &k, &v, MDB_SET_RANGE) : mdb_cursor_get(c, &k, &v, MDB_FIRST);
    for (; !rc; rc = mdb_cursor_get(c, &k, &v, dups ? MDB_NEXT_NODUP : MDB_NEXT)) {
        if (k.mv_size < plen || (plen && memcmp(k.mv_data, prefix, plen) != 0))
            break; /* keys are in order: past the prefix */
        if (k.mv_size > 0 && k.mv_size <= KHALA_KEY_MAX &&
            khala__links_keys_push(out, k.mv_data, k.mv_size))
            rc = -ENOMEM;
    }
    return rdone(lx, txn, c, rc, "listing keys");
}

int khala__links_ends_with_prefix(khala_links_t *lx, const void *prefix, size_t plen,
                                  khala_links_keys_t *out) {
    return keys_with_prefix(lx, lx->ends, 1, prefix, plen, out);
}

int khala__links_rels_with_prefix(khala_links_t *lx, const void *prefix, size_t plen,
                                  khala_links_keys_t *out) {
    return keys_with_prefix(lx, lx->rels, 0, prefix, plen, out);
}

int khala__links_oldest(khala_links_t *lx, uint8_t *rel, size_t *rlen) {
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    int rc = rtxn(lx, &txn);
    if (rc)
        return rc;
    MDB_val k, v;
    rc = mdb_cursor_open(txn, lx->age, &c);
    if (!rc)
        rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    int found = 0;
    if (!rc && v.mv_size > 0 && v.mv_size <= KHALA_KEY_MAX) {
        memcpy(rel, v.mv_data, v.mv_size);
        *rlen = v.mv_size;
        found = 1;
    }
    rc = rdone(lx, txn, c, rc, "finding the oldest relationship");
    if (rc)
        return rc;
    return found ? 0 : KHALA_ENOTFOUND;
}

void khala__links_count(khala_links_t *lx, uint64_t *rels, uint64_t *links) {
    MDB_txn *txn;
    MDB_stat st;
    *rels = *links = 0;
    if (!lx || mdb_txn_begin(lx->env, NULL, MDB_RDONLY, &txn) != 0)
        return;
    if (mdb_stat(txn, lx->rels, &st) == 0)
        *rels = st.ms_entries;
    if (mdb_stat(txn, lx->ends, &st) == 0)
        *links = st.ms_entries;
    mdb_txn_abort(txn);
}
