/*
 * Semantic look-ups in khalad: the query check and the choice of level (daemon/similar.h says
 * which level answers and why). The search itself is each driver's: daemon/tier_disk_vectors.c
 * for the disk store, daemon/tier_surreal.c for SurrealDB.
 *
 * Steps of khala__similar_ask:
 *   1. walk the levels from the slowest (L3) to the fastest (L2), skipping a level without
 *      ops->similar, one the embedding type does not live on ([type.embedding] levels), and one
 *      marked down;
 *   2. ask it; a failure of its server (KHALA_ETIER) marks it down and the next one is asked;
 *      a refusal (KHALA_EINVAL, or -ENOTSUP: an encrypted type it cannot search) ends the
 *      look-up with the level's reason;
 *   3. drop the matches that are gone for other reads (an invalidation in progress covers them;
 *      a queued write deletes or replaces them): what remains, possibly nothing, is the answer.
 *      The next level is not asked when the first found nothing: it holds the same embeddings
 *      or fewer (a type lives on every level it is placed on), and asking it would double the
 *      time of every look-up that finds no duplicate (the common case) and make that level
 *      build an index of its own (memory: daemon/tier_disk_vectors.c builds one at the first
 *      look-up).
 */
#include "similar.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "khala/cache.h"
#include "khala/error.h"
#include "khalad.h"
#include "store.h"

int khala__similar_query(const void *v, size_t len, float *q, uint32_t *dim, char *why,
                         size_t whylen) {
    char dummy[1];
    if (!why) {
        why = dummy;
        whylen = sizeof(dummy);
    }
    if (len == 0) {
        snprintf(why, whylen, "the query vector is empty");
        return KHALA_EINVAL;
    }
    if (len % 4) {
        snprintf(why, whylen,
                 "the query vector is %zu bytes, not a whole number of float32 components", len);
        return KHALA_EINVAL;
    }
    if (len / 4 > KHALA_SIMILAR_DIM_MAX) {
        snprintf(why, whylen, "the query vector has %zu components, max %u", len / 4,
                 KHALA_SIMILAR_DIM_MAX);
        return KHALA_EINVAL;
    }
    uint32_t n = (uint32_t)(len / 4);
    double s = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, (const uint8_t *)v + 4 * (size_t)i, 4);
        u = le32toh(u);
        float f;
        memcpy(&f, &u, 4);
        if (!isfinite(f)) {
            snprintf(why, whylen, "component %" PRIu32 " of the query vector is %s", i,
                     isnan(f) ? "NaN" : "infinite");
            return KHALA_EINVAL;
        }
        s += (double)f * f;
    }
    if (s == 0 || !isfinite(s)) {
        snprintf(why, whylen, "the query vector is a %s vector: it has no direction",
                 s == 0 ? "zero" : "too large a");
        return KHALA_EINVAL;
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, (const uint8_t *)v + 4 * (size_t)i, 4);
        u = le32toh(u);
        memcpy(&q[i], &u, 4);
    }
    *dim = n;
    return 0;
}

float khala__similar_threshold(const char *text) {
    char *end = NULL;
    double t = text ? strtod(text, &end) : NAN;
    if (!text || end == text || *end || !(t >= -1.0 && t <= 1.0))
        return 0.9f;
    return (float)t;
}

/* Step 3: is match m gone for other reads? */
static int gone(khalad_t *d, const khala_tier_match_t *m) {
    if (khala__store_superseded(d, m->key, m->klen, (int)m->val.type, m->val.version))
        return 1;
    khala_tier_value_t q;
    int rc = khala__store_queued_get(d, m->key, m->klen, &q);
    if (rc == 1)
        return 0;
    int same = rc == 0 && q.version == m->val.version;
    if (rc == 0)
        khala__tier_value_free(&q);
    return !same;
}

int khala__similar_ask(khalad_t *d, const float *q, uint32_t dim, float min_sim, uint32_t k,
                       khala_tier_match_t *out, uint32_t *n, khala_level_t *lvl) {
    int capable = 0, rc = 0;
    uint32_t placed = d->cfg.types[KHALA_TYPE_EMBEDDING].levels;
    *n = 0;
    *lvl = KHALA_LEVEL_NONE;
    d->errmsg[0] = '\0';
    for (int i = d->ntiers - 1; i >= 0; i--) { /* step 1 */
        khalad_tier_t *lt = &d->tiers[i];
        if (!lt->t->ops->similar || !(placed & KHALA_LEVEL_BIT(lt->t->level)))
            continue;
        capable++;
        if (!lt->t->healthy) {
            snprintf(d->errmsg, sizeof(d->errmsg), "%s (%s) is down", khala__store_level_name(lt),
                     lt->t->ops->name);
            rc = KHALA_ETIER;
            continue;
        }
        uint32_t got = 0;
        rc = lt->t->ops->similar(lt->t, q, dim, min_sim, k, out, &got); /* step 2 */
        if (rc) {
            snprintf(d->errmsg, sizeof(d->errmsg), "%s (%s): %s", khala__store_level_name(lt),
                     lt->t->ops->name, lt->t->err);
            if (rc == KHALA_ETIER) {
                khala__store_level_failed(d, lt, rc);
                continue;
            }
            return rc == -EINVAL ? KHALA_EINVAL : rc;
        }
        uint32_t kept = 0; /* step 3 */
        for (uint32_t j = 0; j < got; j++) {
            if (gone(d, &out[j]))
                khala__tier_match_free(&out[j]);
            else
                out[kept++] = out[j];
        }
        *n = kept;
        *lvl = lt->t->level;
        return 0;
    }
    if (!capable) {
        snprintf(d->errmsg, sizeof(d->errmsg),
                 "no level below L1 that holds embeddings answers look-ups by vector (L2 %s%s%s; "
                 "[type.embedding] levels); configure the disk store or SurrealDB for one of them",
                 d->ntiers > 0 ? d->tiers[0].t->ops->name : "none", d->ntiers > 1 ? ", L3 " : "",
                 d->ntiers > 1 ? d->tiers[1].t->ops->name : "");
        return -ENOTSUP;
    }
    return KHALA_ETIER; /* every level that would answer is down; d->errmsg names the last */
}
