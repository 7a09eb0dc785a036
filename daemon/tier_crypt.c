/*
 * The encrypting tier (daemon/tier_crypt.h).
 *
 * HOW IT WORKS
 *
 * The wrapper is a khala_tier_t of its own whose ops are a copy of the table below, made per
 * wrapper so that the optional operations (tick, note_hits) stay NULL when the inner driver's
 * are, which is how daemon/tiers.c tells whether a driver has them. Each operation calls the
 * inner driver's and copies its err, so that messages keep naming the server and the cause.
 *
 *   put, mput   seal the value when its type is encrypted (a copy; the caller's stays plain)
 *   get, mget   open what comes back (the rule in the header); a refusal frees the value
 *   the rest    pass through: keys, types, versions and TTLs are not sealed
 *
 * Why a wrapper rather than a call in each driver: the drivers stay about storage only, L3
 * gets encryption by being wrapped, and the store (daemon/store.c) keeps one code path for
 * levels with and without encryption.
 */
#include "tier_crypt.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "debug.h"
#include "errbuf.h"
#include "khala/error.h"
#include "log.h"

/* Refusals logged in full before logging thins out to one in LOG_EVERY. */
#define LOG_FIRST 16u
#define LOG_EVERY 1024u

typedef struct ctier {
    khala_tier_t tier; /* first: a khala_tier_t pointer is a ctier_t pointer */
    khala_tier_ops_t ops;
    khala_tier_t *inner;
    khala_crypt_t *c;
    uint64_t refused; /* values refused by this wrapper, for the log's thinning */
} ctier_t;

static ctier_t *ct_of(khala_tier_t *t) {
    return (ctier_t *)t;
}

static void mirror_err(ctier_t *ct) {
    memcpy(ct->tier.err, ct->inner->err, sizeof(ct->tier.err));
}

/* Refuse a value read for key: count (done by unseal, or here for one in the clear), log, and
 * set the wrapper's err. */
static int refuse(ctier_t *ct, const void *key, size_t klen, int type, const char *why) {
    char q[KHALA_ERRBUF_QUOTE_CAP];
    khala__errbuf_quote(key, klen, q, sizeof(q));
    khala__errbuf_set(ct->tier.err, sizeof(ct->tier.err),
                      "%s: the value of '%s' failed authentication (%s): refused", ct->ops.name, q,
                      why);
    ct->refused++;
    if (ct->refused <= LOG_FIRST || ct->refused % LOG_EVERY == 0) {
        char n[32];
        snprintf(n, sizeof(n), "%llu", (unsigned long long)ct->refused);
        khala__log("warn", "a value below L1 failed authentication: refused, read as a miss",
                   "tier", khala__proto_level_name(ct->tier.level), "backend", ct->ops.name, "key",
                   q, "type", khala__proto_type_name((khala_type_t)type), "error",
                   khala_strerror(KHALA_EAUTH), "why", why, "refused_so_far", n, NULL);
    }
    return KHALA_EAUTH;
}

/* Open v in place (the read rule); on KHALA_EAUTH or -ENOMEM v is freed. */
static int open_value(ctier_t *ct, const void *key, size_t klen, khala_tier_value_t *v) {
    int sealed = khala__crypt_is_sealed(v->data, v->len);
    if (!sealed && !khala__crypt_wants(ct->c, (int)v->type))
        return 0;
    int rc;
    if (!sealed) {
        khala__crypt_count_failure(ct->c);
        rc = refuse(ct, key, klen, (int)v->type, "stored in the clear, but its type is encrypted");
    } else {
        char why[128];
        void *plain = NULL;
        size_t plen = 0;
        rc = khala__crypt_unseal(ct->c, key, klen, (int)v->type, v->data, v->len, &plain, &plen,
                                 why, sizeof(why));
        if (rc == 0) {
            khala__tier_value_free(v);
            v->data = plain;
            v->len = plen;
            return 0;
        }
        if (rc == KHALA_EAUTH)
            refuse(ct, key, klen, (int)v->type, why);
    }
    khala__tier_value_free(v);
    return rc;
}

/* v sealed into *out when its type wants it (sealed->data to free), else *out = *v. */
static int seal_value(ctier_t *ct, const void *key, size_t klen, const khala_tier_value_t *v,
                      khala_tier_value_t *out, int *owned) {
    *out = *v;
    *owned = 0;
    if (!khala__crypt_wants(ct->c, (int)v->type))
        return 0;
    void *env = NULL;
    size_t n = 0;
    int rc = khala__crypt_seal(ct->c, key, klen, (int)v->type, v->data, v->len, &env, &n);
    if (rc != 0) {
        khala__errbuf_set(ct->tier.err, sizeof(ct->tier.err), "%s: cannot seal a value: %s",
                          ct->ops.name, khala_strerror(rc));
        return rc;
    }
    out->data = env;
    out->len = n;
    *owned = 1;
    return 0;
}

static int c_get(khala_tier_t *t, const void *key, size_t klen, khala_tier_value_t *out) {
    ctier_t *ct = ct_of(t);
    int rc = ct->inner->ops->get(ct->inner, key, klen, out);
    mirror_err(ct);
    return rc == 0 ? open_value(ct, key, klen, out) : rc;
}

/* The archived copy was sealed when it was written, as the live item was. */
static int c_archive_get(khala_tier_t *t, const void *key, size_t klen, khala_tier_value_t *out) {
    ctier_t *ct = ct_of(t);
    int rc = ct->inner->ops->archive_get(ct->inner, key, klen, out);
    mirror_err(ct);
    return rc == 0 ? open_value(ct, key, klen, out) : rc;
}

static int c_mget(khala_tier_t *t, size_t n, const khala_bytes_t *keys, khala_tier_value_t *out,
                  int *rcs) {
    ctier_t *ct = ct_of(t);
    int rc = ct->inner->ops->mget(ct->inner, n, keys, out, rcs);
    mirror_err(ct);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < n; i++)
        if (rcs[i] == 0)
            rcs[i] = open_value(ct, keys[i].ptr, keys[i].len, &out[i]);
    return 0;
}

static int c_put(khala_tier_t *t, const void *key, size_t klen, const khala_tier_value_t *val) {
    ctier_t *ct = ct_of(t);
    khala_tier_value_t v;
    int owned, rc = seal_value(ct, key, klen, val, &v, &owned);
    if (rc != 0)
        return rc;
    rc = ct->inner->ops->put(ct->inner, key, klen, &v);
    mirror_err(ct);
    if (owned)
        free(v.data);
    return rc;
}

static int c_mput(khala_tier_t *t, size_t n, const khala_bytes_t *keys,
                  const khala_tier_value_t *vals) {
    ctier_t *ct = ct_of(t);
    khala_tier_value_t *sv = calloc(n ? n : 1, sizeof(*sv));
    unsigned char *owned = calloc(n ? n : 1, 1);
    int rc = sv && owned ? 0 : -ENOMEM;
    size_t i = 0;
    for (; rc == 0 && i < n; i++) {
        int o = 0;
        rc = seal_value(ct, keys[i].ptr, keys[i].len, &vals[i], &sv[i], &o);
        owned[i] = (unsigned char)o;
    }
    if (rc == 0) {
        rc = ct->inner->ops->mput(ct->inner, n, keys, sv);
        mirror_err(ct);
    } else if (!sv || !owned) {
        khala__errbuf_set(ct->tier.err, sizeof(ct->tier.err), "%s: out of memory", ct->ops.name);
    }
    for (size_t j = 0; sv && owned && j < i; j++)
        if (owned[j])
            free(sv[j].data);
    free(sv);
    free(owned);
    return rc;
}

static int c_del(khala_tier_t *t, const void *key, size_t klen) {
    ctier_t *ct = ct_of(t);
    int rc = ct->inner->ops->del(ct->inner, key, klen);
    mirror_err(ct);
    return rc;
}

static int c_scan(khala_tier_t *t, uint64_t *cursor, const char *pattern, size_t count,
                  khala_tier_scan_fn fn, void *arg) {
    ctier_t *ct = ct_of(t);
    int rc = ct->inner->ops->scan(ct->inner, cursor, pattern, count, fn, arg);
    mirror_err(ct);
    return rc;
}

static int c_hot(khala_tier_t *t, size_t max, khala_tier_scan_fn fn, void *arg) {
    ctier_t *ct = ct_of(t);
    int rc = ct->inner->ops->hot(ct->inner, max, fn, arg);
    mirror_err(ct);
    return rc;
}

static int c_invalidate(khala_tier_t *t, const void *prefix, size_t plen, int type,
                        uint64_t *removed) {
    ctier_t *ct = ct_of(t);
    int rc = ct->inner->ops->invalidate(ct->inner, prefix, plen, type, removed);
    mirror_err(ct);
    return rc;
}

static int c_invalidate_step(khala_tier_t *t, const void *prefix, size_t plen, int type,
                             uint64_t *cursor, size_t count, uint64_t *removed) {
    ctier_t *ct = ct_of(t);
    int rc = ct->inner->ops->invalidate_step(ct->inner, prefix, plen, type, cursor, count, removed);
    mirror_err(ct);
    return rc;
}

static int c_health(khala_tier_t *t) {
    ctier_t *ct = ct_of(t);
    int rc = ct->inner->ops->health(ct->inner);
    mirror_err(ct);
    return rc;
}

static void c_stats(khala_tier_t *t, khala_tier_stats_t *out) {
    ctier_t *ct = ct_of(t);
    ct->inner->ops->stats(ct->inner, out);
}

static void c_tick(khala_tier_t *t, int64_t now_ms) {
    ctier_t *ct = ct_of(t);
    ct->inner->ops->tick(ct->inner, now_ms);
    mirror_err(ct);
}

static void c_note_hits(khala_tier_t *t, const void *key, size_t klen, uint64_t hits) {
    ctier_t *ct = ct_of(t);
    ct->inner->ops->note_hits(ct->inner, key, klen, hits);
}

/* A level searches the bytes it holds: when embeddings are encrypted, those are ciphertext, and
 * no similarity over them means anything. Refused, naming why and what to change. A match whose
 * value is sealed (stored while the type was encrypted) is dropped for the same reason. */
static int c_similar(khala_tier_t *t, const float *q, uint32_t dim, float min_sim, uint32_t k,
                     khala_tier_match_t *out, uint32_t *n) {
    ctier_t *ct = ct_of(t);
    if (khala__crypt_wants(ct->c, KHALA_TYPE_EMBEDDING)) {
        khala__errbuf_set(ct->tier.err, sizeof(ct->tier.err),
                          "%s: the embedding type is encrypted ([type.embedding] encrypt = true), "
                          "so this level holds only ciphertext and cannot search it by vector",
                          ct->ops.name);
        return -ENOTSUP;
    }
    uint32_t got = 0, kept = 0;
    int rc = ct->inner->ops->similar(ct->inner, q, dim, min_sim, k, out, &got);
    mirror_err(ct);
    if (rc != 0)
        return rc;
    for (uint32_t i = 0; i < got; i++) {
        if (khala__crypt_is_sealed(out[i].val.data, out[i].val.len))
            khala__tier_match_free(&out[i]);
        else
            out[kept++] = out[i];
    }
    *n = kept;
    return 0;
}

static void c_close(khala_tier_t *t) {
    ctier_t *ct = ct_of(t);
    ct->inner->ops->close(ct->inner);
    free(ct);
}

static const khala_tier_ops_t CRYPT_OPS = {
    .name = NULL, /* the inner driver's */
    .get = c_get,
    .mget = c_mget,
    .put = c_put,
    .mput = c_mput,
    .del = c_del,
    .scan = c_scan,
    .hot = c_hot,
    .invalidate = c_invalidate,
    .invalidate_step = c_invalidate_step,
    .health = c_health,
    .stats = c_stats,
    .tick = c_tick,
    .note_hits = c_note_hits,
    .archive_get = c_archive_get,
    .similar = c_similar,
    .close = c_close,
};

int khala__tier_crypt_wrap(khala_tier_t *inner, khala_crypt_t *c, khala_tier_t **out) {
    KHALA_ASSERT(inner && c && out);
    ctier_t *ct = calloc(1, sizeof(*ct));
    if (!ct)
        return -ENOMEM;
    ct->ops = CRYPT_OPS;
    ct->ops.name = inner->ops->name;
    if (!inner->ops->tick)
        ct->ops.tick = NULL;
    if (!inner->ops->note_hits)
        ct->ops.note_hits = NULL;
    if (!inner->ops->invalidate_step) /* invalidated whole, as the inner driver is */
        ct->ops.invalidate_step = NULL;
    if (!inner->ops->archive_get)
        ct->ops.archive_get = NULL;
    if (!inner->ops->similar)
        ct->ops.similar = NULL;
    ct->inner = inner;
    ct->c = c;
    ct->tier.ops = &ct->ops;
    ct->tier.level = inner->level;
    ct->tier.healthy = inner->healthy;
    ct->tier.impl = ct;
    mirror_err(ct);
    *out = &ct->tier;
    return 0;
}

/* The journal's codec ------------------------------------------------------------------------ */

static int j_seal(void *arg, const void *key, size_t klen, int type, const void *val, size_t vlen,
                  void **out, size_t *outlen) {
    khala_crypt_t *c = arg;
    if (!khala__crypt_wants(c, type))
        return 1;
    return khala__crypt_seal(c, key, klen, type, val, vlen, out, outlen);
}

static int j_unseal(void *arg, const void *key, size_t klen, int type, const void *in, size_t inlen,
                    void **out, size_t *outlen) {
    khala_crypt_t *c = arg;
    int sealed = khala__crypt_is_sealed(in, inlen);
    if (!sealed && !khala__crypt_wants(c, type))
        return 1;
    char why[128] = "stored in the clear, but its type is encrypted";
    int rc = KHALA_EAUTH;
    if (sealed)
        rc = khala__crypt_unseal(c, key, klen, type, in, inlen, out, outlen, why, sizeof(why));
    else
        khala__crypt_count_failure(c);
    if (rc == KHALA_EAUTH) {
        char q[KHALA_ERRBUF_QUOTE_CAP];
        khala__log("warn", "a queued write in the journal failed authentication: dropped", "key",
                   khala__errbuf_quote(key, klen, q, sizeof(q)), "type",
                   khala__proto_type_name((khala_type_t)type), "error", khala_strerror(KHALA_EAUTH),
                   "why", why, NULL);
    }
    return rc;
}

void khala__tier_crypt_journal_codec(khala_crypt_t *c, khala_wq_codec_t *out) {
    KHALA_ASSERT(c && out);
    out->seal = j_seal;
    out->unseal = j_unseal;
    out->arg = c;
}
