/*
 * The disk tier's vector index and its exact search (semantic look-ups, issue 12).
 *
 * Layout. One group per dimension; a group holds its rows in one malloc'd array, each
 * row the item's vector divided by its norm and padded with zeros to a multiple of 16 floats,
 * so that a scan streams contiguous memory and the inner loop needs no tail:
 *
 *   vx->groups[g]  dim 384, pdim 384     vecs: [row 0: 384 floats][row 1]...[row n-1]
 *                                        expire_ms[n], owner[n] -> khala_disk_vkey_t
 *   vx->tab        key -> khala_disk_vkey_t {group, row, hash, key}   (linear probing)
 *
 * A removal moves the group's last row into the hole (and fixes that row's key), so rows stay
 * dense; the key table deletes with backward shifts (no tombstones).
 *
 * Search. Both sides are unit vectors, so the cosine similarity is their dot product. dot()
 * uses GCC's vector extensions (4-float vectors, four accumulators, one 64-byte row chunk per
 * iteration): the compiler emits packed multiplies and adds (SSE on baseline x86-64, NEON on
 * aarch64), which a plain loop does not get, because reordering a float sum needs -ffast-math.
 * A row enters a k-entry min-heap only when it beats the threshold
 * and the heap's worst; only then is its expiry checked, so the hot loop is the dot product.
 *
 * Invariants: every key in tab owns exactly one row, owner[row] points back to it; once built
 * (at the first look-up, from the records: a level nobody searches keeps no vectors), a key is
 * in the index iff the store holds it as an embedding whose value is a usable vector (and
 * memory allowed storing it): the store calls set / remove for every change it commits.
 *
 * Why an exact scan. At the sizes a cache level holds (max_entries, 10^4..10^5 vectors) a scan
 * of dim-384 float32 rows costs a few ms (docs/tiers.md has the figures), is exact (a near
 * duplicate is never missed, which is what deduplication needs), costs nothing per write and no
 * memory beyond the vectors. An approximate index (HNSW, IVF) trades recall and per-write work
 * for speed that matters only at millions of vectors. FAISS is in Debian 12 (libfaiss-dev 1.7.3)
 * but its flat index is the same exact scan through BLAS, and its C API would add a C++
 * dependency to khalad for no gain at these sizes.
 */
#include "tier_disk_vectors.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <lmdb.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "debug.h"
#include "khala/cache.h"
#include "khala/error.h"
#include "tier_disk_record.h"
#include "tier_disk_store.h"

/* Floats per row are a multiple of this (64 bytes: one cache line, four 4-float vectors). */
#define PAD 16u

struct khala_disk_vkey {
    uint64_t hash;  /* XXH3 of the key with vx->seed */
    uint32_t group; /* index in vx->groups */
    uint32_t row;   /* row in that group */
    uint8_t klen;   /* 1..KHALA_KEY_MAX */
    uint8_t key[];
};

typedef khala_disk_vkey_t vkey_t;
typedef khala_disk_vgroup_t group_t;
typedef float vf4 __attribute__((vector_size(16)));

/* ------------------------------------------------------------------------------------------ */
/* The key table                                                                              */
/* ------------------------------------------------------------------------------------------ */

static uint64_t key_hash(const khala_disk_vectors_t *vx, const void *key, size_t klen) {
    return XXH3_64bits_withSeed(key, klen, vx->seed);
}

/* The slot holding key, or the empty slot where it would go. tab_cap > 0. */
static size_t tab_slot(const khala_disk_vectors_t *vx, uint64_t h, const void *key, size_t klen) {
    size_t mask = vx->tab_cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        const vkey_t *e = vx->tab[i];
        if (!e || (e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0))
            return i;
    }
}

/* Room for one more key at a load factor of at most 1/2. 0 or -ENOMEM. */
static int tab_reserve(khala_disk_vectors_t *vx) {
    if ((vx->n + 1) * 2 <= vx->tab_cap)
        return 0;
    size_t cap = vx->tab_cap ? vx->tab_cap * 2 : 64;
    vkey_t **tab = calloc(cap, sizeof(*tab));
    if (!tab)
        return -ENOMEM;
    for (size_t i = 0; i < vx->tab_cap; i++) {
        vkey_t *e = vx->tab[i];
        if (!e)
            continue;
        size_t j = e->hash & (cap - 1);
        while (tab[j])
            j = (j + 1) & (cap - 1);
        tab[j] = e;
    }
    free(vx->tab);
    vx->tab = tab;
    vx->tab_cap = cap;
    return 0;
}

/* Remove slot i's key from the table (backward shift: the probe chains stay unbroken). */
static void tab_delete(khala_disk_vectors_t *vx, size_t i) {
    size_t mask = vx->tab_cap - 1;
    vx->tab[i] = NULL;
    for (size_t j = (i + 1) & mask; vx->tab[j]; j = (j + 1) & mask) {
        size_t home = vx->tab[j]->hash & mask;
        /* The entry at j may fill the hole at i when i lies on its probe path home..j. */
        if (((j - home) & mask) >= ((j - i) & mask)) {
            vx->tab[i] = vx->tab[j];
            vx->tab[j] = NULL;
            i = j;
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Groups                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static group_t *group_get(khala_disk_vectors_t *vx, uint32_t dim, int create) {
    for (size_t g = 0; g < vx->ngroups; g++)
        if (vx->groups[g].dim == dim)
            return &vx->groups[g];
    if (!create)
        return NULL;
    group_t *groups = realloc(vx->groups, (vx->ngroups + 1) * sizeof(*groups));
    if (!groups)
        return NULL;
    vx->groups = groups;
    group_t *grp = &groups[vx->ngroups++];
    *grp = (group_t){.dim = dim, .pdim = (dim + PAD - 1) / PAD * PAD};
    return grp;
}

/* Room for one more row in grp. 0 or -ENOMEM. The rows grow with realloc, not aligned_alloc
 * and a copy: glibc moves a large block with mremap, so that the build at the first look-up
 * neither copies the rows nor faults their pages in again at each doubling (page faults were
 * most of its time). malloc's 16 bytes of alignment are what the 4-float loads need. */
static int group_reserve(group_t *grp) {
    if (grp->n < grp->cap)
        return 0;
    size_t cap = grp->cap ? grp->cap * 2 : 16;
    size_t row_bytes = (size_t)grp->pdim * sizeof(float);
    float *vecs = realloc(grp->vecs, cap * row_bytes);
    if (!vecs)
        return -ENOMEM;
    grp->vecs = vecs;
    int64_t *exp = realloc(grp->expire_ms, cap * sizeof(*exp));
    if (!exp)
        return -ENOMEM;
    grp->expire_ms = exp;
    vkey_t **owner = realloc(grp->owner, cap * sizeof(*owner));
    if (!owner)
        return -ENOMEM;
    grp->owner = owner;
    grp->cap = cap;
    return 0;
}

/* Remove row r of group g: the last row moves into it. */
static void group_drop_row(khala_disk_vectors_t *vx, uint32_t g, uint32_t r) {
    group_t *grp = &vx->groups[g];
    size_t last = grp->n - 1;
    if (r != last) {
        memcpy(grp->vecs + (size_t)r * grp->pdim, grp->vecs + last * grp->pdim,
               (size_t)grp->pdim * sizeof(float));
        grp->expire_ms[r] = grp->expire_ms[last];
        grp->owner[r] = grp->owner[last];
        grp->owner[r]->row = r;
    }
    grp->n--;
}

/* ------------------------------------------------------------------------------------------ */
/* Changes                                                                                    */
/* ------------------------------------------------------------------------------------------ */

void khala__disk_vectors_init(khala_disk_vectors_t *vx, uint64_t seed) {
    KHALA_ASSERT(vx && vx->n == 0 && vx->tab == NULL);
    vx->seed = seed;
}

void khala__disk_vectors_clear(khala_disk_vectors_t *vx) {
    if (!vx->tab_cap && !vx->ngroups)
        return;
    for (size_t i = 0; i < vx->tab_cap; i++) {
        free(vx->tab[i]);
        vx->tab[i] = NULL;
    }
    for (size_t g = 0; g < vx->ngroups; g++)
        vx->groups[g].n = 0;
    vx->n = 0;
}

void khala__disk_vectors_free(khala_disk_vectors_t *vx) {
    khala__disk_vectors_clear(vx);
    for (size_t g = 0; g < vx->ngroups; g++) {
        free(vx->groups[g].vecs);
        free(vx->groups[g].expire_ms);
        free(vx->groups[g].owner);
    }
    free(vx->groups);
    free(vx->tab);
    *vx = (khala_disk_vectors_t){0};
}

void khala__disk_vectors_remove(khala_disk_vectors_t *vx, const void *key, size_t klen) {
    if (!vx->built || !vx->tab_cap || klen == 0 || klen > KHALA_KEY_MAX)
        return;
    size_t i = tab_slot(vx, key_hash(vx, key, klen), key, klen);
    vkey_t *e = vx->tab[i];
    if (!e)
        return;
    group_drop_row(vx, e->group, e->row);
    tab_delete(vx, i);
    free(e);
    vx->n--;
}

/* Read a little-endian float32 at p (no alignment). */
static float load_le_f32(const uint8_t *p) {
    uint32_t u;
    memcpy(&u, p, 4);
    u = le32toh(u);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* The norm of the vector in value (dim floats, LE), or 0 when it is not usable (NaN, inf). */
static double value_norm(const uint8_t *value, uint32_t dim) {
    double s = 0;
    for (uint32_t i = 0; i < dim; i++) {
        float f = load_le_f32(value + 4 * (size_t)i);
        if (!isfinite(f))
            return 0;
        s += (double)f * f;
    }
    return isfinite(s) ? sqrt(s) : 0;
}

int khala__disk_vectors_set(khala_disk_vectors_t *vx, const void *key, size_t klen,
                            khala_type_t type, const void *value, size_t len, int64_t expire_ms) {
    KHALA_ASSERT(klen >= 1 && klen <= KHALA_KEY_MAX);
    if (!vx->built)
        return 0;
    khala__disk_vectors_remove(vx, key, klen);
    if (type != KHALA_TYPE_EMBEDDING || len == 0 || len % 4 || len / 4 > KHALA_DISK_VEC_DIM_MAX)
        return 0;
    uint32_t dim = (uint32_t)(len / 4);
    double norm = value_norm(value, dim);
    if (norm == 0)
        return 0;
    group_t *grp = group_get(vx, dim, 1);
    vkey_t *e = malloc(sizeof(*e) + klen);
    if (!grp || !e || group_reserve(grp) || tab_reserve(vx)) {
        free(e);
        vx->dropped++;
        return -ENOMEM;
    }
    e->hash = key_hash(vx, key, klen);
    e->group = (uint32_t)(grp - vx->groups);
    e->row = (uint32_t)grp->n;
    e->klen = (uint8_t)klen;
    memcpy(e->key, key, klen);
    float *row = grp->vecs + grp->n * grp->pdim;
    for (uint32_t i = 0; i < dim; i++)
        row[i] = (float)(load_le_f32((const uint8_t *)value + 4 * (size_t)i) / norm);
    for (uint32_t i = dim; i < grp->pdim; i++)
        row[i] = 0;
    grp->expire_ms[grp->n] = expire_ms;
    grp->owner[grp->n] = e;
    grp->n++;
    vx->tab[tab_slot(vx, e->hash, key, klen)] = e;
    vx->n++;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Search                                                                                     */
/* ------------------------------------------------------------------------------------------ */

int khala__disk_vectors_normalise(const float *q, uint32_t dim, float *unit, char *why,
                                  size_t whylen) {
    if (dim == 0 || dim > KHALA_DISK_VEC_DIM_MAX) {
        if (why)
            snprintf(why, whylen, "the query has %" PRIu32 " components; 1..%u are accepted", dim,
                     KHALA_DISK_VEC_DIM_MAX);
        return -EINVAL;
    }
    double s = 0;
    for (uint32_t i = 0; i < dim; i++) {
        if (!isfinite(q[i])) {
            if (why)
                snprintf(why, whylen, "component %" PRIu32 " of the query is %s", i,
                         isnan(q[i]) ? "NaN" : "infinite");
            return -EINVAL;
        }
        s += (double)q[i] * q[i];
    }
    if (s == 0 || !isfinite(s)) {
        if (why)
            snprintf(why, whylen, "the query is a %s vector: it has no direction",
                     s == 0 ? "zero" : "too large a");
        return -EINVAL;
    }
    if (unit) {
        double norm = sqrt(s);
        for (uint32_t i = 0; i < dim; i++)
            unit[i] = (float)(q[i] / norm);
    }
    return 0;
}

/* a . b over pdim floats (a multiple of PAD), both 16-byte aligned. Four 4-float accumulators:
 * one cache line per iteration, and the sums stay in registers (8-float vectors on an SSE
 * target are lowered to pairs that GCC keeps on the stack). */
static inline float dot(const float *a, const float *b, uint32_t pdim) {
    const vf4 *va = (const vf4 *)__builtin_assume_aligned(a, 16);
    const vf4 *vb = (const vf4 *)__builtin_assume_aligned(b, 16);
    vf4 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    for (uint32_t i = 0; i < pdim / 4; i += 4) {
        s0 += va[i] * vb[i];
        s1 += va[i + 1] * vb[i + 1];
        s2 += va[i + 2] * vb[i + 2];
        s3 += va[i + 3] * vb[i + 3];
    }
    s0 = (s0 + s1) + (s2 + s3);
    return (s0[0] + s0[1]) + (s0[2] + s0[3]);
}

typedef struct cand {
    float sim;
    const vkey_t *key;
} cand_t;

/* 1 if a ranks below b: lower similarity, or equal and a later key. */
static int worse(const cand_t *a, const cand_t *b) {
    if (a->sim != b->sim)
        return a->sim < b->sim;
    size_t m = a->key->klen < b->key->klen ? a->key->klen : b->key->klen;
    int c = memcmp(a->key->key, b->key->key, m);
    return c ? c > 0 : a->key->klen > b->key->klen;
}

/* A min-heap on worse(): h[0] is the worst kept. */
static void heap_down(cand_t *h, size_t n, size_t i) {
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        if (l < n && worse(&h[l], &h[m]))
            m = l;
        if (l + 1 < n && worse(&h[l + 1], &h[m]))
            m = l + 1;
        if (m == i)
            return;
        cand_t t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static void heap_up(cand_t *h, size_t i) {
    while (i && worse(&h[i], &h[(i - 1) / 2])) {
        cand_t t = h[i];
        h[i] = h[(i - 1) / 2];
        h[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
}

int khala__disk_vectors_search(const khala_disk_vectors_t *vx, const float *q, uint32_t dim,
                               float min_sim, uint32_t k, int64_t now_rt, khala_disk_vhit_t *out,
                               uint32_t *n) {
    KHALA_ASSERT(vx && out && n);
    if (k == 0 || k > KHALA_DISK_VEC_K_MAX || khala__disk_vectors_normalise(q, dim, NULL, NULL, 0))
        return -EINVAL;
    *n = 0;
    group_t *grp = NULL;
    for (size_t g = 0; g < vx->ngroups; g++)
        if (vx->groups[g].dim == dim)
            grp = &vx->groups[g];
    if (!grp || grp->n == 0)
        return 0;
    float *unit = malloc((size_t)grp->pdim * sizeof(float));
    if (!unit)
        return -ENOMEM;
    (void)khala__disk_vectors_normalise(q, dim, unit, NULL, 0);
    for (uint32_t i = dim; i < grp->pdim; i++)
        unit[i] = 0;
    cand_t heap[KHALA_DISK_VEC_K_MAX];
    size_t nh = 0;
    const float *row = grp->vecs;
    for (size_t r = 0; r < grp->n; r++, row += grp->pdim) {
        float s = dot(unit, row, grp->pdim);
        if (s < min_sim || (nh == k && s < heap[0].sim))
            continue;
        if (!khala__disk_live(grp->expire_ms[r], now_rt))
            continue;
        cand_t c = {.sim = s > 1.0f ? 1.0f : (s < -1.0f ? -1.0f : s), .key = grp->owner[r]};
        if (nh < k) {
            heap[nh] = c;
            heap_up(heap, nh++);
        } else if (worse(&heap[0], &c)) {
            heap[0] = c;
            heap_down(heap, nh, 0);
        }
    }
    free(unit);
    /* Pop worst first into the back of out: out ends most similar first. */
    for (size_t i = nh; i > 0; i--) {
        out[i - 1] = (khala_disk_vhit_t){heap[0].key->key, heap[0].key->klen, heap[0].sim};
        heap[0] = heap[i - 1];
        heap_down(heap, i - 1, 0);
    }
    *n = (uint32_t)nh;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The tier operation                                                                         */
/* ------------------------------------------------------------------------------------------ */

/* Build the index from the store's records (the first look-up). A record that does not decode
 * is left out (a get of it reports it). 0, or a failure reported in t->err. */
static int build(khala_disk_store_t *d) {
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    MDB_val k, r;
    int rc = khala__disk_store_rtxn_begin(d, &txn);
    if (rc)
        return rc;
    d->vec.built = 1;
    rc = mdb_cursor_open(txn, d->items, &c);
    if (!rc)
        rc = mdb_cursor_get(c, &k, &r, MDB_FIRST);
    for (; !rc; rc = mdb_cursor_get(c, &k, &r, MDB_NEXT)) {
        khala_disk_rec_t rec;
        if (k.mv_size == 0 || k.mv_size > KHALA_KEY_MAX ||
            khala__disk_rec_decode(r.mv_data, r.mv_size, &rec, NULL, 0) != 0)
            continue;
        (void)khala__disk_vectors_set(&d->vec, k.mv_data, k.mv_size, rec.type, rec.value, rec.len,
                                      rec.expire_ms);
    }
    if (c)
        mdb_cursor_close(c);
    khala__disk_store_rtxn_end(d);
    if (rc != MDB_NOTFOUND) {
        khala__disk_vectors_clear(&d->vec);
        d->vec.built = 0;
        return khala__disk_store_mdb_fail(d, rc, "building the vector index");
    }
    return 0;
}

int khala__disk_similar(khala_tier_t *t, const float *q, uint32_t dim, float min_sim, uint32_t k,
                        khala_tier_match_t *out, uint32_t *n) {
    khala_disk_store_t *d = t->impl;
    char why[120];
    if (!q || khala__disk_vectors_normalise(q, dim, NULL, why, sizeof(why)))
        return khala__disk_store_fail(d, KHALA_EINVAL, "similar: %s", q ? why : "no query");
    if (k == 0 || k > KHALA_DISK_VEC_K_MAX)
        return khala__disk_store_fail(d, KHALA_EINVAL, "similar: k is %" PRIu32 "; 1..%u", k,
                                      KHALA_DISK_VEC_K_MAX);
    if (!(min_sim >= -1.0f && min_sim <= 1.0f))
        return khala__disk_store_fail(d, KHALA_EINVAL, "similar: the threshold %g is outside -1..1",
                                      min_sim);
    int rc;
    if (!d->vec.built && (rc = build(d)) != 0)
        return rc;
    khala_disk_vhit_t hits[KHALA_DISK_VEC_K_MAX];
    uint32_t nh = 0;
    int64_t now_rt = khala__disk_store_realtime_ms();
    rc = khala__disk_vectors_search(&d->vec, q, dim, min_sim, k, now_rt, hits, &nh);
    if (rc)
        return khala__disk_store_fail(d, rc, "out of memory searching %" PRIu32 " floats", dim);
    /* Read each answer's item; the index views stay valid: nothing below changes it. */
    MDB_txn *txn;
    if ((rc = khala__disk_store_rtxn_begin(d, &txn)) != 0)
        return rc;
    uint32_t got = 0;
    for (uint32_t i = 0; i < nh && !rc; i++) {
        MDB_val kv = {hits[i].klen, (void *)hits[i].key}, r;
        khala_disk_rec_t rec;
        int mrc = mdb_get(txn, d->items, &kv, &r);
        if (mrc == MDB_NOTFOUND)
            continue; /* cannot happen while the index is kept; never answer without a record */
        if (mrc) {
            rc = khala__disk_store_mdb_fail(d, mrc, "reading an embedding");
            break;
        }
        if (khala__disk_rec_decode(r.mv_data, r.mv_size, &rec, NULL, 0) ||
            !khala__disk_live(rec.expire_ms, now_rt) || rec.type != KHALA_TYPE_EMBEDDING)
            continue;
        khala_tier_match_t *m = &out[got];
        *m = (khala_tier_match_t){.klen = hits[i].klen, .similarity = hits[i].similarity};
        m->key = malloc(hits[i].klen);
        m->val.data = rec.len ? malloc(rec.len) : NULL;
        if (!m->key || (rec.len && !m->val.data)) {
            khala__tier_match_free(m);
            rc = khala__disk_store_fail(d, -ENOMEM, "out of memory copying %zu bytes", rec.len);
            break;
        }
        memcpy(m->key, hits[i].key, hits[i].klen);
        if (rec.len)
            memcpy(m->val.data, rec.value, rec.len);
        m->val.len = rec.len;
        m->val.version = rec.version;
        m->val.type = rec.type;
        m->val.ttl_ms = rec.expire_ms ? rec.expire_ms - now_rt : 0;
        got++;
    }
    khala__disk_store_rtxn_end(d);
    if (rc) {
        for (uint32_t i = 0; i < got; i++)
            khala__tier_match_free(&out[i]);
        return rc;
    }
    *n = got; /* not counted as gets: the level's hit ratio is about reads by key */
    return 0;
}
