/*
 * Semantic look-ups for workers (include/khala/cache.h: khala_cache_similar,
 * khala_matches_free, khala_similar_options_init).
 *
 * HOW IT WORKS
 *
 * One "similar" request on the calling thread's connection (client_internal.h): the query goes
 * as its little-endian float32 bytes in "v", k in "count", the threshold in "sim" (left out for
 * khalad's own). The query is checked here first, with the messages khalad would give, so that
 * a bad vector never costs a round trip. The reply's "matches" point into its frame, which the
 * thread's next call overwrites, so they are copied into one block the caller owns:
 *
 *   +-------------------------+--------------------------------------------------------+
 *   | khala_match_t[n]        | key 0, value 0 (8-aligned), key 1, value 1, ...        |
 *   +-------------------------+--------------------------------------------------------+
 *
 * Values start on 8-byte boundaries, so that a caller on a little-endian host may read a value
 * as floats in place. One free (khala_matches_free) releases it all.
 */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"
#include "debug.h"

void khala_similar_options_init(khala_similar_options_t *opts) {
    KHALA_ASSERT(opts != NULL);
    opts->k = 1;
    opts->min_similarity = NAN;
}

void khala_matches_free(khala_match_t *matches) {
    free(matches);
}

static size_t align8(size_t n) {
    return (n + 7) & ~(size_t)7;
}

/* Copy the reply's matches into one block (see the top of the file). */
static int copy_matches(khala_cache_t *c, const khala_msg_t *rep, khala_match_t **out, size_t *n) {
    uint32_t nm = rep->nmatches;
    if (nm == 0) {
        *out = NULL;
        *n = 0;
        return 0;
    }
    size_t bytes = align8(nm * sizeof(khala_match_t));
    for (uint32_t i = 0; i < nm; i++)
        bytes += align8(rep->matches[i].key.len) + align8(rep->matches[i].value.len);
    khala_match_t *ms = malloc(bytes);
    if (!ms)
        return khala__client_fail(c, -ENOMEM,
                                  "out of memory copying %" PRIu32 " matches (%zu "
                                  "bytes)",
                                  nm, bytes);
    uint8_t *p = (uint8_t *)ms + align8(nm * sizeof(khala_match_t));
    for (uint32_t i = 0; i < nm; i++) {
        const khala_proto_match_t *x = &rep->matches[i];
        memcpy(p, x->key.ptr, x->key.len);
        ms[i].key = p;
        ms[i].klen = x->key.len;
        p += align8(x->key.len);
        if (x->value.len)
            memcpy(p, x->value.ptr, x->value.len);
        ms[i].value = p;
        ms[i].len = x->value.len;
        p += align8(x->value.len);
        ms[i].similarity = (float)x->sim;
        ms[i].meta.level = (rep->has & KHALA_F_LVL) ? rep->lvl : KHALA_LEVEL_NONE;
        ms[i].meta.version = x->ver;
        ms[i].meta.ttl_left_ms = x->ttl_ms ? (int64_t)x->ttl_ms : -1;
        ms[i].meta.type = KHALA_TYPE_EMBEDDING;
    }
    *out = ms;
    *n = nm;
    return 0;
}

int khala_cache_similar(khala_cache_t *c, const float *vec, uint32_t dim,
                        const khala_similar_options_t *opts, khala_match_t **out, size_t *n) {
    KHALA_ASSERT(c != NULL && out != NULL && n != NULL);
    khala_similar_options_t o;
    if (opts)
        o = *opts;
    else
        khala_similar_options_init(&o);
    if (!vec || dim == 0 || dim > KHALA_SIMILAR_DIM_MAX)
        return khala__client_fail(c, KHALA_EINVAL,
                                  "the query vector has %" PRIu32 " components; 1..%u are accepted",
                                  vec ? dim : 0, KHALA_SIMILAR_DIM_MAX);
    if (o.k == 0 || o.k > KHALA_SIMILAR_K_MAX)
        return khala__client_fail(c, KHALA_EINVAL, "k is %" PRIu32 "; similar returns 1..%u", o.k,
                                  KHALA_SIMILAR_K_MAX);
    if (!isnan(o.min_similarity) && !(o.min_similarity >= -1.0f && o.min_similarity <= 1.0f))
        return khala__client_fail(c, KHALA_EINVAL,
                                  "min_similarity is %g; a cosine similarity is -1..1",
                                  (double)o.min_similarity);
    double norm = 0;
    for (uint32_t i = 0; i < dim; i++) {
        if (!isfinite(vec[i]))
            return khala__client_fail(c, KHALA_EINVAL,
                                      "component %" PRIu32 " of the query vector is %s", i,
                                      isnan(vec[i]) ? "NaN" : "infinite");
        norm += (double)vec[i] * vec[i];
    }
    if (norm == 0)
        return khala__client_fail(c, KHALA_EINVAL,
                                  "the query vector is a zero vector: it has no direction");
    uint32_t *le = malloc((size_t)dim * 4);
    if (!le)
        return khala__client_fail(c, -ENOMEM, "out of memory (%" PRIu32 " floats)", dim);
    for (uint32_t i = 0; i < dim; i++) {
        uint32_t u;
        memcpy(&u, &vec[i], 4);
        le[i] = htole32(u);
    }
    khala_msg_t req, rep;
    khala__proto_msg_init(&req);
    khala__proto_msg_init(&rep);
    req.op = KHALA_OP_SIMILAR;
    req.value.ptr = (const uint8_t *)le;
    req.value.len = (size_t)dim * 4;
    req.count = o.k;
    req.has = KHALA_F_V | KHALA_F_COUNT;
    if (!isnan(o.min_similarity)) {
        req.sim = o.min_similarity;
        req.has |= KHALA_F_SIM;
    }
    int rc = khala__client_call(c, &req, &rep, 0);
    free(le);
    if (rc != 0)
        return rc;
    rc = rep.rc != 0 ? khala__client_reply_fail(c, &rep) : copy_matches(c, &rep, out, n);
    khala__proto_msg_free(&rep);
    return rc;
}
