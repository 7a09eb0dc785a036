/*
 * The write queue of a slower level (daemon/writeq.h).
 *
 * HOW IT WORKS
 *
 * A doubly linked list keeps the order; a uthash index over the keys of queued puts and
 * deletes finds the entry a new write to the same key replaces. Invalidations are not indexed:
 * they are ordered barriers, and a write after one is appended after it. Every entry is one
 * allocation (the struct, then key and value bytes). Bounds are checked before anything
 * changes, so a refused push leaves the queue as it was.
 *
 * The journal is one LMDB environment with one database: big-endian 64-bit sequence numbers
 * (so the B-tree's order is the queue's order) to records
 *
 *     | u32 magic | u8 kind | u8 pad[3] | i32 type | u32 klen | u32 vlen | u32 pad2 |
 *     | u64 version | i64 expire (CLOCK_REALTIME ms, 0 = none) | key | value |
 *
 * (native byte order: a journal is read back by the same machine). pad2 is the record's
 * checksum (JOURNAL_MAGIC). A record whose fields do not agree (kind, lengths, type, padding,
 * checksum) makes the journal KHALA_ECORRUPT.
 *
 * With a codec (khala__wq_set_codec: encryption at rest, daemon/tier_crypt.h) a put's value is
 * encoded as its record is written and decoded as it is read back; vlen is the encoded length.
 * A record the codec refuses at read-back (KHALA_EAUTH) is deleted in the read-back's
 * transaction, never queued, and counted (unreadable).
 *
 * A push appends with the next sequence number (and, when it replaces a queued write to the
 * same key, deletes that record in the same transaction); LMDB commits are durable. Deadlines
 * are stored on the wall clock, since the monotonic clock restarts with the machine.
 */
#include "writeq.h"

#include <errno.h>
#include <inttypes.h>
#include <lmdb.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "deadline.h"
#include "debug.h"
#include "dirs.h"
#include "errbuf.h"
#include "khala/cache.h"
#include "lmdb_check.h"
#include "khala/error.h"
#include "sys.h"

/* Out of memory in the index (its table or a bucket array) is an error like any other: the add
 * is rolled back and push() returns -ENOMEM with the queue as it was (uthash's non-fatal mode
 * leaves the element's hh.tbl NULL when it could not be added). */
#define HASH_NONFATAL_OOM 1
#include <uthash.h>
#include <xxhash.h>

/* A record's magic. KJQ2 records carry XXH32 of the whole record (with the field zero) in
 * pad2: LMDB has no checksums, and a flipped byte in a queued value would be replayed to L2 as
 * the value (the disk store's records had the same hole; tests/chaos/chaos_check.c found it).
 * KJQ1 records, written before, have pad2 zero and are read unchecked. */
#define JOURNAL_MAGIC_V1 0x4b4a5131u  /* "KJQ1" */
#define JOURNAL_MAGIC 0x4b4a5132u     /* "KJQ2" */
#define JOURNAL_MAP_SIZE (1ull << 34) /* address space only; the file grows as needed */

typedef struct entry {
    khala_wq_op_t op; /* first: an op pointer is an entry pointer */
    UT_hash_handle hh;
    uint64_t seq;                      /* its journal record, 0 = none */
    struct entry *inv_prev, *inv_next; /* invalidations only: the list of queued ones, in order */
} entry_t;

typedef struct jrec {
    uint32_t magic;
    uint8_t kind, pad[3]; /* pad and pad2 are 0: no uninitialised bytes reach the file */
    int32_t type;
    uint32_t klen, vlen;
    uint32_t pad2;
    uint64_t version;
    int64_t expire_wall_ms;
} jrec_t;
_Static_assert(sizeof(jrec_t) == 40, "jrec_t has no hidden padding");

/* The checksum of a KJQ2 record of size bytes at rec: XXH32 of it with pad2 taken as zero. */
static uint32_t jrec_sum(const uint8_t *rec, size_t size) {
    /* The bytes up to and including pad2, with pad2 zero, seed the sum of the rest. */
    enum { HEAD = offsetof(jrec_t, pad2) + sizeof(uint32_t) };
    uint8_t head[HEAD];
    memcpy(head, rec, HEAD);
    memset(head + offsetof(jrec_t, pad2), 0, sizeof(uint32_t));
    return XXH32(rec + HEAD, size - HEAD, XXH32(head, HEAD, 0));
}

/* A record's header is one this module writes: kind, lengths and type agree, and a KJQ2
 * record's checksum matches its bytes (rec, size). */
static int jrec_valid(const jrec_t *h, const uint8_t *rec, size_t size) {
    if ((h->magic != JOURNAL_MAGIC && h->magic != JOURNAL_MAGIC_V1) || h->pad[0] || h->pad[1] ||
        h->pad[2] || (h->magic == JOURNAL_MAGIC_V1 && h->pad2) ||
        size != sizeof(*h) + (size_t)h->klen + h->vlen || h->klen > KHALA_KEY_MAX)
        return 0;
    if (h->magic == JOURNAL_MAGIC && jrec_sum(rec, size) != h->pad2)
        return 0;
    switch (h->kind) {
        case KHALA_WQ_PUT:
            return h->klen >= 1 && h->type >= 0 && h->type < KHALA_TYPE_COUNT;
        case KHALA_WQ_DEL:
            return h->klen >= 1 && h->vlen == 0 && h->type == -1;
        case KHALA_WQ_INVALIDATE:
            return h->vlen == 0 && h->type >= -1 && h->type < KHALA_TYPE_COUNT;
        default:
            return 0;
    }
}

struct khala_wq {
    entry_t *index; /* puts and deletes by key */
    entry_t *invs;  /* queued invalidations, oldest first (inv_prev of the first is the last) */
    khala_wq_op_t *head, *tail;
    size_t max_ops, max_bytes;
    khala_wq_stats_t st;
    MDB_env *env; /* the journal, or NULL */
    MDB_dbi dbi;
    uint64_t next_seq;
    uint64_t *dead; /* records to delete at the next sync */
    size_t ndead, capdead;
    uint32_t sync_every_ms; /* 0: fsync each push; else MDB_NOSYNC and fsync at most this often */
    int dirty;              /* commits since the last fsync */
    int64_t last_sync_ms;
    khala_wq_codec_t codec; /* put values in records; seal NULL = as pushed */
};

static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A deadline on khala__sys_now_ms()'s clock moved to the wall clock, saturated (never 0: a
 * deadline so far it saturates stays a deadline). */
static int64_t wall_deadline(int64_t expire_ms) {
    int64_t w =
        khala__deadline_add(wall_ms(), khala__deadline_add(expire_ms, -khala__sys_now_ms()));
    return w > 0 ? w : 1;
}

static void be64(uint8_t out[8], uint64_t v) {
    for (int i = 7; i >= 0; i--, v >>= 8)
        out[i] = (uint8_t)v;
}

static uint64_t from_be64(const uint8_t in[8]) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | in[i];
    return v;
}

int khala__wq_new(size_t max_ops, size_t max_bytes, khala_wq_t **out) {
    khala_wq_t *q = calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    q->max_ops = max_ops ? max_ops : 1;
    q->max_bytes = max_bytes ? max_bytes : 1;
    *out = q;
    return 0;
}

static void unlink_op(khala_wq_t *q, khala_wq_op_t *op) {
    if (op->prev)
        op->prev->next = op->next;
    else
        q->head = op->next;
    if (op->next)
        op->next->prev = op->prev;
    else
        q->tail = op->prev;
    q->st.len--;
    q->st.bytes -= op->klen + op->vlen;
}

/* The list of queued invalidations (khala__wq_superseded walks it): a utlist-style doubly
 * linked list whose head's inv_prev is the tail, so appending is O(1). */
static void inv_append(khala_wq_t *q, entry_t *e) {
    e->inv_next = NULL;
    if (!q->invs) {
        e->inv_prev = e;
        q->invs = e;
        return;
    }
    e->inv_prev = q->invs->inv_prev;
    q->invs->inv_prev->inv_next = e;
    q->invs->inv_prev = e;
}

static void inv_unlink(khala_wq_t *q, entry_t *e) {
    if (e == q->invs)
        q->invs = e->inv_next;
    else
        e->inv_prev->inv_next = e->inv_next;
    if (e->inv_next)
        e->inv_next->inv_prev = e->inv_prev;
    else if (q->invs)
        q->invs->inv_prev = e->inv_prev;
}

int khala__wq_superseded(const khala_wq_t *q, const void *key, size_t klen, int type,
                         uint64_t version) {
    for (const entry_t *e = q->invs; e; e = e->inv_next) {
        const khala_wq_op_t *op = &e->op;
        if (op->version > version && (op->type < 0 || op->type == type) && op->klen <= klen &&
            (op->klen == 0 || memcmp(op->key, key, op->klen) == 0))
            return 1;
    }
    return 0;
}

/* Make room in q->dead for `need` removals. A push reserves before it changes anything, so that
 * khala__wq_remove() never allocates: a removal it could not record would leave a drained delete
 * or invalidation in the journal, replayed at the next start over newer writes (issue 10,
 * bug 10). */
static int reserve_dead(khala_wq_t *q, size_t need) {
    if (need <= q->capdead)
        return 0;
    size_t cap = q->capdead ? q->capdead : 256;
    while (cap < need)
        cap *= 2;
    uint64_t *d = realloc(q->dead, cap * sizeof(*d));
    if (!d)
        return -ENOMEM;
    q->dead = d;
    q->capdead = cap;
    return 0;
}

void khala__wq_remove(khala_wq_t *q, khala_wq_op_t *op) {
    entry_t *e = (entry_t *)op;
    if (e->seq && q->env) {
        /* Invariant: capdead >= ndead + every queued entry with a record (reserve_dead). */
        KHALA_ASSERT(q->ndead < q->capdead);
        if (q->ndead < q->capdead)
            q->dead[q->ndead++] = e->seq;
    }
    unlink_op(q, op);
    if (op->kind != KHALA_WQ_INVALIDATE)
        HASH_DEL(q->index, e);
    else
        inv_unlink(q, e);
    free(e);
}

void khala__wq_free(khala_wq_t *q) {
    if (!q)
        return;
    (void)khala__wq_sync(q);
    if (q->env && q->dirty)
        (void)mdb_env_sync(q->env, 1);
    /* What is still queued stays in the journal for the next khalad. */
    while (q->head) {
        ((entry_t *)q->head)->seq = 0;
        khala__wq_remove(q, q->head);
    }
    if (q->env)
        mdb_env_close(q->env);
    free(q->dead);
    free(q);
}

int khala__wq_sync(khala_wq_t *q) {
    if (!q->env)
        return 0;
    if (q->ndead) {
        MDB_txn *txn;
        if (mdb_txn_begin(q->env, NULL, 0, &txn) != 0)
            return -EIO;
        for (size_t i = 0; i < q->ndead; i++) {
            uint8_t k[8];
            be64(k, q->dead[i]);
            MDB_val key = {8, k};
            int rc = mdb_del(txn, q->dbi, &key, NULL);
            if (rc != 0 && rc != MDB_NOTFOUND) {
                mdb_txn_abort(txn);
                return -EIO;
            }
        }
        if (mdb_txn_commit(txn) != 0)
            return -EIO;
        q->ndead = 0;
        q->dirty = 1;
    }
    int64_t now = khala__sys_now_ms();
    if (q->sync_every_ms && q->dirty && now - q->last_sync_ms >= (int64_t)q->sync_every_ms) {
        q->last_sync_ms = now;
        q->dirty = 0;
        if (mdb_env_sync(q->env, 1) != 0)
            return -EIO;
    }
    return 0;
}

void khala__wq_set_codec(khala_wq_t *q, const khala_wq_codec_t *codec) {
    if (codec)
        q->codec = *codec;
    else
        memset(&q->codec, 0, sizeof(q->codec));
}

/* A failed append as a khala code: the system's errno as is (-ENOSPC: the journal's disk is
 * full, which the caller reports as such), the journal's fixed map full as a full queue
 * (KHALA_EQUEUE), any other LMDB failure as -EIO. */
static int journal_code(int rc) {
    if (rc == MDB_MAP_FULL)
        return KHALA_EQUEUE;
    return rc > 0 ? -rc : -EIO;
}

/* Append op's record (and delete the replaced one, old_seq) in one durable transaction. */
static int journal_append(khala_wq_t *q, entry_t *e, uint64_t old_seq) {
    khala_wq_op_t *op = &e->op;
    const void *vbytes = op->val;
    size_t vlen = op->vlen;
    void *sealed = NULL;
    if (q->codec.seal && op->kind == KHALA_WQ_PUT) {
        int src = q->codec.seal(q->codec.arg, op->key, op->klen, op->type, op->val, op->vlen,
                                &sealed, &vlen);
        if (src < 0)
            return src;
        if (src == 0)
            vbytes = sealed;
        else
            vlen = op->vlen;
    }
    if (vlen > UINT32_MAX) {
        free(sealed);
        return -EIO;
    }
    MDB_txn *txn;
    int rc = mdb_txn_begin(q->env, NULL, 0, &txn);
    if (rc != 0) {
        free(sealed);
        return journal_code(rc);
    }
    uint8_t k[8];
    uint64_t seq = q->next_seq;
    be64(k, seq);
    MDB_val key = {8, k}, val = {sizeof(jrec_t) + op->klen + vlen, NULL};
    rc = mdb_put(txn, q->dbi, &key, &val, MDB_RESERVE | MDB_APPEND);
    if (rc == 0) {
        jrec_t h = {.magic = JOURNAL_MAGIC,
                    .kind = (uint8_t)op->kind,
                    .type = op->type,
                    .klen = (uint32_t)op->klen,
                    .vlen = (uint32_t)vlen,
                    .version = op->version,
                    .expire_wall_ms = op->expire_ms ? wall_deadline(op->expire_ms) : 0};
        uint8_t *p = val.mv_data;
        memcpy(p, &h, sizeof(h));
        if (op->klen)
            memcpy(p + sizeof(h), op->key, op->klen);
        if (vlen)
            memcpy(p + sizeof(h) + op->klen, vbytes, vlen);
        uint32_t sum = jrec_sum(p, val.mv_size);
        memcpy(p + offsetof(jrec_t, pad2), &sum, sizeof(sum));
    }
    free(sealed);
    if (rc == 0 && old_seq) {
        uint8_t ok[8];
        be64(ok, old_seq);
        MDB_val okey = {8, ok};
        rc = mdb_del(txn, q->dbi, &okey, NULL);
        if (rc == MDB_NOTFOUND)
            rc = 0;
    }
    if (rc != 0) {
        mdb_txn_abort(txn);
        return journal_code(rc);
    }
    if ((rc = mdb_txn_commit(txn)) != 0)
        return journal_code(rc);
    q->dirty = 1;
    e->seq = seq;
    q->next_seq++;
    return 0;
}

khala_wq_op_t *khala__wq_head(khala_wq_t *q) {
    return q->head;
}

khala_wq_op_t *khala__wq_find(khala_wq_t *q, const void *key, size_t klen) {
    entry_t *e = NULL;
    HASH_FIND(hh, q->index, key, klen, e);
    return e ? &e->op : NULL;
}

void khala__wq_stats(const khala_wq_t *q, khala_wq_stats_t *out) {
    *out = q->st;
}

int khala__wq_room(khala_wq_t *q, const void *key, size_t klen, size_t vlen) {
    khala_wq_op_t *old = key ? khala__wq_find(q, key, klen) : NULL;
    size_t ops = q->st.len - (old ? 1 : 0) + 1;
    size_t bytes = q->st.bytes - (old ? old->klen + old->vlen : 0) + klen + vlen;
    return ops <= q->max_ops && bytes <= q->max_bytes;
}

static int push(khala_wq_t *q, khala_wq_kind_t kind, const void *key, size_t klen, const void *val,
                size_t vlen, uint64_t version, int64_t expire_ms, int type) {
    khala_wq_op_t *old = kind == KHALA_WQ_INVALIDATE ? NULL : khala__wq_find(q, key, klen);
    if (!khala__wq_room(q, kind == KHALA_WQ_INVALIDATE ? NULL : key, klen, vlen)) {
        q->st.refused++;
        return KHALA_EQUEUE;
    }
    entry_t *e = malloc(sizeof(*e) + klen + vlen);
    if (!e)
        return -ENOMEM;
    memset(e, 0, sizeof(*e));
    khala_wq_op_t *op = &e->op;
    op->kind = kind;
    op->key = (uint8_t *)(e + 1);
    op->klen = klen;
    if (klen)
        memcpy(op->key, key, klen);
    if (vlen) {
        op->val = op->key + klen;
        memcpy(op->val, val, vlen);
    }
    op->vlen = vlen;
    op->version = version;
    op->expire_ms = expire_ms;
    op->type = type;
    /* The index first, since it is the step that may fail for memory: until the old entry is
     * removed below, both are in it, the new one found first (uthash adds at the bucket's
     * head). */
    if (kind != KHALA_WQ_INVALIDATE) {
        HASH_ADD_KEYPTR(hh, q->index, op->key, op->klen, e);
        if (e->hh.tbl == NULL) {
            free(e);
            return -ENOMEM;
        }
    }
    if (q->env) {
        /* Step that may fail for memory, before the journal changes: the room to record this
         * entry's removal later (the queued ones' room is already there). */
        if (reserve_dead(q, q->ndead + q->st.len + 1) != 0) {
            if (kind != KHALA_WQ_INVALIDATE)
                HASH_DEL(q->index, e);
            free(e);
            return -ENOMEM;
        }
        uint64_t old_seq = old ? ((entry_t *)old)->seq : 0;
        int jrc = journal_append(q, e, old_seq);
        if (jrc != 0) {
            if (kind != KHALA_WQ_INVALIDATE)
                HASH_DEL(q->index, e);
            free(e);
            return jrc;
        }
        if (old)
            ((entry_t *)old)->seq = 0; /* its record went in the same transaction */
    }
    if (old) {
        khala__wq_remove(q, old);
        q->st.coalesced++;
    }
    if (kind == KHALA_WQ_INVALIDATE)
        inv_append(q, e);
    op->prev = q->tail;
    if (q->tail)
        q->tail->next = op;
    else
        q->head = op;
    q->tail = op;
    q->st.len++;
    q->st.bytes += klen + vlen;
    q->st.pushed++;
    return 0;
}

int khala__wq_put(khala_wq_t *q, const void *key, size_t klen, const void *val, size_t vlen,
                  uint64_t version, int64_t expire_ms, int type) {
    return push(q, KHALA_WQ_PUT, key, klen, val, vlen, version, expire_ms, type);
}

int khala__wq_del(khala_wq_t *q, const void *key, size_t klen) {
    return push(q, KHALA_WQ_DEL, key, klen, NULL, 0, 0, 0, -1);
}

int khala__wq_invalidate(khala_wq_t *q, const void *prefix, size_t plen, int type) {
    return push(q, KHALA_WQ_INVALIDATE, prefix, plen, NULL, 0, 0, 0, type);
}

int khala__wq_invalidate_at(khala_wq_t *q, const void *prefix, size_t plen, int type,
                            uint64_t version) {
    return push(q, KHALA_WQ_INVALIDATE, prefix, plen, NULL, 0, version, 0, type);
}

int khala__wq_journal_open(khala_wq_t *q, const char *dir, uint32_t sync_every_ms,
                           uint64_t *recovered, char *err, size_t errlen) {
    if (recovered)
        *recovered = 0;
    int mrc = khala__dirs_make(dir, 0700, err, errlen);
    if (mrc != 0)
        return mrc;
    /* A damaged journal is refused here, not met by a SIGBUS or SIGSEGV (lmdb_check.c). */
    if ((mrc = khala__lmdb_check(dir, "the write journal", err, errlen)) != 0)
        return mrc;
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_cursor *cur = NULL;
    int rc = mdb_env_create(&env);
    if (rc == 0)
        rc = mdb_env_set_mapsize(env, JOURNAL_MAP_SIZE);
    if (rc == 0)
        rc = mdb_env_open(env, dir, MDB_NOTLS | (sync_every_ms ? MDB_NOSYNC : 0), 0600);
    if (rc == 0)
        rc = mdb_txn_begin(env, NULL, 0, &txn);
    if (rc == 0)
        rc = mdb_dbi_open(txn, NULL, 0, &q->dbi);
    if (rc == 0)
        rc = mdb_cursor_open(txn, q->dbi, &cur);
    if (rc != 0) {
        int code = rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH ? KHALA_ECORRUPT : -EIO;
        khala__errbuf(err, errlen, code, "write journal %s: %s", dir, mdb_strerror(rc));
        if (txn)
            mdb_txn_abort(txn);
        if (env)
            mdb_env_close(env);
        return code;
    }
    /* Read back what an earlier khalad left, in order. */
    MDB_val k, v;
    uint64_t n = 0, last = 0;
    int64_t now_wall = wall_ms(), now = khala__sys_now_ms();
    int ret = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        jrec_t h;
        if (k.mv_size != 8 || v.mv_size < sizeof(h)) {
            ret = KHALA_ECORRUPT;
            break;
        }
        memcpy(&h, v.mv_data, sizeof(h));
        if (!jrec_valid(&h, v.mv_data, v.mv_size)) {
            ret = KHALA_ECORRUPT;
            break;
        }
        last = from_be64(k.mv_data);
        const uint8_t *p = (const uint8_t *)v.mv_data + sizeof(h);
        int64_t expire =
            h.expire_wall_ms
                ? khala__deadline_add(now, khala__deadline_add(h.expire_wall_ms, -now_wall))
                : 0;
        if (expire && expire <= now)
            expire = 1; /* expired while khalad was away: still sent, gone at once */
        const void *vb = p + h.klen;
        size_t vl = h.vlen;
        void *plain = NULL;
        if (q->codec.unseal && h.kind == KHALA_WQ_PUT) {
            int urc = q->codec.unseal(q->codec.arg, p, h.klen, h.type, vb, vl, &plain, &vl);
            if (urc == KHALA_EAUTH) {
                /* Not trusted, so not sent: the record goes with this transaction. */
                q->st.unreadable++;
                if (mdb_cursor_del(cur, 0) != 0) {
                    ret = -EIO;
                    break;
                }
                continue;
            }
            if (urc < 0) {
                ret = urc;
                break;
            }
            if (urc == 0)
                vb = plain;
            else
                vl = h.vlen;
        }
        /* No journal yet on q: push only builds the queue. Bounds do not apply to recovery. */
        size_t mo = q->max_ops, mb = q->max_bytes;
        q->max_ops = SIZE_MAX;
        q->max_bytes = SIZE_MAX;
        int prc = push(q, (khala_wq_kind_t)h.kind, p, h.klen, vb, vl, h.version, expire, h.type);
        free(plain);
        q->max_ops = mo;
        q->max_bytes = mb;
        if (prc != 0) {
            ret = prc;
            break;
        }
        ((entry_t *)q->tail)->seq = last;
        n++;
    }
    mdb_cursor_close(cur);
    if (ret == 0 && mdb_txn_commit(txn) != 0)
        ret = -EIO;
    else if (ret != 0)
        mdb_txn_abort(txn);
    if (ret != 0) {
        khala__errbuf(err, errlen, ret, "write journal %s: %s", dir,
                      ret == KHALA_ECORRUPT ? "a record is damaged (not a khala write journal?)"
                                            : khala_strerror(ret));
        while (q->head)
            khala__wq_remove(q, q->head);
        q->ndead = 0;
        mdb_env_close(env);
        return ret;
    }
    if (reserve_dead(q, (size_t)n) != 0) {
        khala__errbuf(err, errlen, -ENOMEM, "write journal %s: no memory for %" PRIu64 " records",
                      dir, n);
        while (q->head)
            khala__wq_remove(q, q->head);
        q->ndead = 0;
        mdb_env_close(env);
        return -ENOMEM;
    }
    q->env = env;
    q->sync_every_ms = sync_every_ms;
    q->next_seq = last + 1;
    if (recovered)
        *recovered = n;
    return 0;
}
