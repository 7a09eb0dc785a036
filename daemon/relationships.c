/*
 * Relationship caching (daemon/relationships.h).
 *
 * HOW IT WORKS
 *
 * A put that carries "links" records them in the link index (daemon/links.c) BEFORE the item is
 * written: if the index cannot take them, the put is refused and nothing is written, so no
 * level ever holds a linked item the index does not know. A put of an item without "links"
 * leaves its links as they were (an item wrongly linked is deleted too early, which a cache
 * may do; an item wrongly unlinked would be served stale, which it may not).
 *
 * The cascade, khala__rel_cascade_key(K): a worklist of ends, starting with K.
 *   1. take the next end E; read the items linked to E (a copy: the index changes below);
 *   2. for each such item R other than K: delete R at every level through the store's own
 *      delete (khala__store_del_key: L1 first, then each level or its queue, published to
 *      other hosts, loads in flight of R lose their right to be cached);
 *   3. unlink R (its links as a relationship), count it, and add R to the worklist: what is
 *      linked to R goes too.
 * Termination: each R is unlinked in step 3 before the worklist reaches it, so no item is found
 * twice, and a cycle (R1 linked to R2 linked to R1) ends after each was deleted once; K is
 * skipped in step 2, so a cycle through K never deletes the value being written. The work is
 * bounded by the index's size (daemon/links.h), with no recursion. A delete that fails in step
 * 2 stops the cascade with its error before R is unlinked: the caller's put or delete is then
 * refused (the put's cascade runs before it writes anything), and a retry finds R still linked.
 *
 * Who calls it: daemon/store.c, for a put (not a loader's fill: a fill reads the source of
 * truth, it does not change it, as it is not published to other hosts either), a delete and an
 * invalidation by key (before the write), an invalidation by prefix or type (after it), and
 * daemon/tiers.c for what another host published (each host cascades over the links IT
 * recorded, since the others do not know them).
 *
 * The preload ([policies] preload_relationships): daemon/handlers.c queues an entity read into
 * L1 from below (a get that missed L1 and was answered by L2 or L3) or filled by a loader; the
 * tick takes a few, reads below L1 each item linked to them that L1 does not hold, and promotes
 * it (khala__store_promote). The queue is a ring of KHALA_REL_PRELOAD_QUEUE keys; when full, an
 * entity is not queued (a hint lost, counted).
 *
 * Rejected: keeping the links in the items (a field of the value at each level): Redis and
 * SurrealDB would need a second look-up structure anyway to go from an end to its items, and
 * every level would have to agree on it.
 */
#include "relationships.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errbuf.h"
#include "khala/error.h"
#include "khalad.h"
#include "links.h"

#define set_msg(d, ...) khala__errbuf_set((d)->errmsg, sizeof((d)->errmsg), __VA_ARGS__)

/* One slot of the preload ring: a key and its length (0 = empty). */
typedef struct slot {
    uint8_t len;
    uint8_t key[KHALA_KEY_MAX];
} slot_t;

struct khala_rel {
    khala_links_t *lx; /* the index */
    slot_t *ring;      /* the preload queue, KHALA_REL_PRELOAD_QUEUE slots; NULL = no preload */
    uint32_t head, n;  /* first queued slot, slots queued */
    uint64_t cascaded, evicted, preloaded, preload_dropped;
};

int khala__rel_open(khalad_t *d) {
    char dir[KHALA_CONFIG_PATH_MAX + 64], err[KHALA_CONFIG_PATH_MAX + 256] = "";
    int rc = khala__config_store_path(&d->cfg, 2, dir, sizeof(dir) - 8);
    if (rc != 0) {
        set_msg(d, "link index: cannot derive its directory: %s", khala_strerror(rc));
        return rc;
    }
    strcat(dir, "/links");
    khala_rel_t *r = calloc(1, sizeof(*r));
    if (!r) {
        set_msg(d, "link index: out of memory");
        return -ENOMEM;
    }
    if (d->cfg.policies.preload_relationships &&
        !(r->ring = calloc(KHALA_REL_PRELOAD_QUEUE, sizeof(*r->ring)))) {
        free(r);
        set_msg(d, "relationship preload queue: out of memory");
        return -ENOMEM;
    }
    /* Tests only: KHALAD_TEST_LINKS_MAX bounds the index lower, so that eviction is reached. */
    const char *tmax = getenv("KHALAD_TEST_LINKS_MAX");
    uint64_t max = tmax ? strtoull(tmax, NULL, 10) : 0;
    rc = khala__links_open(dir, max, d->cfg.l2.sync_every_ms, &r->lx, err, sizeof(err));
    if (rc != 0) {
        set_msg(d, "%s", err);
        free(r->ring);
        free(r);
        return rc;
    }
    d->rel = r;
    return 0;
}

void khala__rel_close(khalad_t *d) {
    if (!d->rel)
        return;
    khala__links_close(d->rel->lx);
    free(d->rel->ring);
    free(d->rel);
    d->rel = NULL;
}

/* Steps 1-3 of the cascade over the ends in work (walked from its cursor; appended to). */
static int cascade(khalad_t *d, khala_links_keys_t *work, const void *origin, size_t olen) {
    khala_rel_t *r = d->rel;
    const uint8_t *e;
    size_t elen;
    int rc = 0;
    while (rc == 0 && khala__links_keys_next(work, &e, &elen)) {
        uint8_t end[KHALA_KEY_MAX];
        size_t endlen = elen;
        memcpy(end, e, elen); /* work may move when it grows */
        khala_links_keys_t rels = {0};
        /* 1. */
        if ((rc = khala__links_rels_of(r->lx, end, endlen, &rels)) != 0) {
            set_msg(d, "%s", khala__links_errmsg(r->lx));
            khala__links_keys_free(&rels);
            break;
        }
        const uint8_t *rk;
        size_t rlen;
        while (rc == 0 && khala__links_keys_next(&rels, &rk, &rlen)) {
            if (origin && rlen == olen && memcmp(rk, origin, olen) == 0)
                continue; /* the key being written is never deleted by its own cascade */
            /* 2. */
            int drc = khala__store_del_key(d, rk, rlen, NULL);
            if (drc != 0 && drc != KHALA_ENOTFOUND) {
                char q1[KHALA_ERRBUF_QUOTE_CAP], q2[KHALA_ERRBUF_QUOTE_CAP], why[sizeof(d->errmsg)];
                memcpy(why, d->errmsg, sizeof(why));
                set_msg(d,
                        "the relationship item '%s' linked to '%s' could not be deleted: %s; "
                        "nothing more was changed, retry later",
                        khala__errbuf_quote(rk, rlen, q1, sizeof(q1)),
                        khala__errbuf_quote(end, endlen, q2, sizeof(q2)), why);
                rc = drc;
                break;
            }
            /* 3. */
            if ((rc = khala__links_drop(r->lx, rk, rlen)) != 0) {
                set_msg(d, "%s", khala__links_errmsg(r->lx));
                break;
            }
            r->cascaded++;
            if ((rc = khala__links_keys_push(work, rk, rlen)) != 0)
                set_msg(d, "relationship cascade: out of memory");
        }
        khala__links_keys_free(&rels);
    }
    return rc;
}

int khala__rel_cascade_key(khalad_t *d, const void *key, size_t klen) {
    if (!d->rel)
        return 0;
    khala_links_keys_t work = {0};
    int rc = khala__links_keys_push(&work, key, klen);
    if (rc == 0)
        rc = cascade(d, &work, key, klen);
    else
        set_msg(d, "relationship cascade: out of memory");
    khala__links_keys_free(&work);
    return rc;
}

void khala__rel_gone(khalad_t *d, const void *key, size_t klen) {
    if (d->rel && khala__links_drop(d->rel->lx, key, klen) != 0)
        khala__log("warn", "cannot unlink a deleted item (its links stay, harmless)", "error",
                   khala__links_errmsg(d->rel->lx), NULL);
}

int khala__rel_invalidated(khalad_t *d, const void *prefix, size_t plen, int type) {
    if (!d->rel)
        return 0;
    khala_rel_t *r = d->rel;
    int rc;
    if (plen == 0 && type < 0) {
        /* Every level was emptied: every linked item went with it. */
        if ((rc = khala__links_clear(r->lx)) != 0)
            set_msg(d, "%s", khala__links_errmsg(r->lx));
        return rc;
    }
    /* By prefix: the ends under it. By type: every end (the types of ends are not known). */
    khala_links_keys_t work = {0};
    rc = khala__links_ends_with_prefix(r->lx, prefix, plen, &work);
    if (rc != 0)
        set_msg(d, "%s", khala__links_errmsg(r->lx));
    else
        rc = cascade(d, &work, NULL, 0);
    khala__links_keys_free(&work);
    if (rc != 0 || plen == 0)
        return rc;
    /* The linked items under the prefix went with the invalidation: unlink them. */
    khala_links_keys_t gone = {0};
    if ((rc = khala__links_rels_with_prefix(r->lx, prefix, plen, &gone)) == 0) {
        const uint8_t *k;
        size_t klen;
        while (rc == 0 && khala__links_keys_next(&gone, &k, &klen))
            rc = khala__links_drop(r->lx, k, klen);
    }
    if (rc != 0)
        set_msg(d, "%s", khala__links_errmsg(r->lx));
    khala__links_keys_free(&gone);
    return rc;
}

void khala__rel_remote(khalad_t *d, const khala_inv_t *m) {
    if (!d->rel)
        return;
    int rc;
    khala_links_keys_t work = {0};
    if (m->by == KHALA_INV_KEY) {
        rc = khala__rel_cascade_key(d, m->key, m->klen);
    } else {
        /* A prefix: its ends; a type or everything: every end (this host's levels below may
         * not be the other host's, so each linked item is deleted here rather than the index
         * emptied). */
        size_t plen = m->by == KHALA_INV_PREFIX ? m->klen : 0;
        rc = khala__links_ends_with_prefix(d->rel->lx, m->key, plen, &work);
        if (rc != 0)
            set_msg(d, "%s", khala__links_errmsg(d->rel->lx));
        else
            rc = cascade(d, &work, NULL, 0);
    }
    khala__links_keys_free(&work);
    if (rc != 0)
        khala__log("warn",
                   "another host changed an end entity, and a relationship item linked to it "
                   "could not be deleted here",
                   "error", d->errmsg, NULL);
}

void khala__rel_unproven(khalad_t *d, const char *why) {
    if (!d->rel)
        return;
    uint64_t rels, links, before = d->rel->cascaded;
    khala__links_count(d->rel->lx, &rels, &links);
    if (rels == 0)
        return;
    khala_links_keys_t work = {0};
    int rc = khala__links_ends_with_prefix(d->rel->lx, NULL, 0, &work);
    if (rc != 0)
        set_msg(d, "%s", khala__links_errmsg(d->rel->lx));
    else
        rc = cascade(d, &work, NULL, 0);
    khala__links_keys_free(&work);
    char n[32];
    snprintf(n, sizeof(n), "%" PRIu64, d->rel->cascaded - before);
    khala__log(rc == 0 ? "info" : "warn",
               rc == 0 ? "deleted every linked relationship item: other hosts' changes to their "
                         "ends may have been missed"
                       : "could not delete every linked relationship item after missing other "
                         "hosts' changes",
               "why", why, "deleted", n, "error", rc == 0 ? "" : d->errmsg, NULL);
}

int khala__rel_link(khalad_t *d, const void *rel, size_t rlen, const khala_bytes_t *ends,
                    size_t n) {
    khala_rel_t *r = d->rel;
    if (!r) {
        set_msg(d, "links: the link index is not open");
        return KHALA_ETIER;
    }
    /* Full: delete the oldest relationship from every level, unlink it, try again. Each round
     * frees at least one link, and n links are needed at most. */
    for (size_t round = 0;; round++) {
        int rc = khala__links_set(r->lx, rel, rlen, ends, n);
        if (rc != KHALA_EFULL || round > n) {
            if (rc != 0)
                set_msg(d, "links: %s; nothing was written", khala__links_errmsg(r->lx));
            return rc;
        }
        uint8_t old[KHALA_KEY_MAX];
        size_t olen;
        if ((rc = khala__links_oldest(r->lx, old, &olen)) != 0) {
            set_msg(d, "links: the index is full and %s",
                    rc == KHALA_ENOTFOUND ? "holds no relationship to evict"
                                          : khala__links_errmsg(r->lx));
            return rc == KHALA_ENOTFOUND ? KHALA_EFULL : rc;
        }
        /* It may be an end of others: they go too. */
        if ((rc = khala__rel_cascade_key(d, old, olen)) != 0)
            return rc;
        rc = khala__store_del_key(d, old, olen, NULL);
        if (rc != 0 && rc != KHALA_ENOTFOUND)
            return rc;
        if ((rc = khala__links_drop(r->lx, old, olen)) != 0) {
            set_msg(d, "links: %s", khala__links_errmsg(r->lx));
            return rc;
        }
        r->evicted++;
    }
}

/* The preload -------------------------------------------------------------------------------- */

void khala__rel_loaded(khalad_t *d, const void *key, size_t klen) {
    khala_rel_t *r = d->rel;
    if (!r || !r->ring || klen == 0 || klen > KHALA_KEY_MAX)
        return;
    if (r->n == KHALA_REL_PRELOAD_QUEUE) {
        r->preload_dropped++;
        return;
    }
    slot_t *s = &r->ring[(r->head + r->n) % KHALA_REL_PRELOAD_QUEUE];
    s->len = (uint8_t)klen;
    memcpy(s->key, key, klen);
    r->n++;
}

/* Promote into L1 the items linked to one entity that L1 does not hold; *reads counts the
 * reads below L1 this tick may still make. */
static void preload_one(khalad_t *d, const slot_t *s, uint32_t *reads) {
    khala_rel_t *r = d->rel;
    khala_links_keys_t rels = {0};
    if (khala__links_rels_of(r->lx, s->key, s->len, &rels) != 0) {
        khala__links_keys_free(&rels);
        return; /* a hint: nothing to report to anyone */
    }
    const uint8_t *k;
    size_t klen;
    while (*reads > 0 && khala__links_keys_next(&rels, &k, &klen)) {
        const khala_item_t *it;
        if (khala__l1_find(d->l1, k, klen, &it) != KHALA_ENOTFOUND)
            continue; /* held (or L1 cannot say): nothing to do */
        khala_tier_value_t v;
        khala_level_t lvl;
        (*reads)--;
        if (khala__store_get(d, k, klen, &v, &lvl, NULL) != 0)
            continue;
        (void)khala__store_promote_below(d, k, klen, &v, lvl);
        if (khala__store_promote(d, k, klen, &v) == 0)
            r->preloaded++;
        khala__tier_value_free(&v);
    }
    khala__links_keys_free(&rels);
}

void khala__rel_tick(khalad_t *d) {
    khala_rel_t *r = d->rel;
    if (!r)
        return;
    khala__links_tick(r->lx, khala__sys_now_ms());
    uint32_t reads = KHALA_REL_PRELOAD_READS_PER_TICK;
    for (uint32_t i = 0; i < KHALA_REL_PRELOAD_ENTITIES_PER_TICK && r->n > 0 && reads > 0; i++) {
        slot_t *s = &r->ring[r->head];
        r->head = (r->head + 1) % KHALA_REL_PRELOAD_QUEUE;
        r->n--;
        preload_one(d, s, &reads);
    }
}

void khala__rel_stats(khalad_t *d, khala_rel_stats_t *out) {
    memset(out, 0, sizeof(*out));
    if (!d->rel)
        return;
    khala__links_count(d->rel->lx, &out->rels, &out->links);
    out->cascaded = d->rel->cascaded;
    out->evicted = d->rel->evicted;
    out->preloaded = d->rel->preloaded;
    out->preload_dropped = d->rel->preload_dropped;
}
