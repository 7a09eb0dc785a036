/*
 * khalad's levels below L1 (daemon/tiers.h).
 *
 * HOW IT WORKS
 *
 * Config picks one driver per level (L2: "disk" on LMDB, or "redis"); each opened level gets a
 * write queue (daemon/writeq.c). The rules:
 *
 *   write-through   put: the level first (a stale write is refused there, by version), then
 *                   L1, then the publish to other hosts. A level that is down (KHALA_ETIER)
 *                   gets the write queued instead, and the caller still hears success: the
 *                   write is held in order and drained when the level returns.
 *   write-behind    put: L1, then the queue; the flusher (tick) drains every level's queue in
 *                   batches (mput), writes to one key coalesced.
 *   queue full      checked before anything is written: the caller gets KHALA_EQUEUE and no
 *                   level changes (back-pressure, never a silent drop).
 *   reads           L1 (handlers), then the queued writes (a write waiting for its level is
 *                   read back, a queued delete hides the level's copy), then each healthy
 *                   level in order. A hit is promoted into L1 with the level's version.
 *   outages         an operation failing with KHALA_ETIER marks the level unhealthy: reads
 *                   skip it, writes queue. Every KHALAD_HEALTH_EVERY_MS the tick asks
 *                   health(); when it passes, the queue drains, oldest first, and the level
 *                   serves reads again only once its queue is empty (until then the queue
 *                   and the level together are the truth, and reads consult both anyway).
 *
 * Versions come from khala__tiers_version(): the wall clock in ms shifted left by 20 bits, and
 * strictly increasing here, so versions from different hosts order writes by time and every
 * level keeps the newest (tier.h's rule).
 *
 * Cross-host invalidation (daemon/coherence.c, [policies] coherence = pubsub): every put,
 * delete, invalidation and flush is published on the namespace's channel; a message from
 * another khalad removes the key(s) from this L1. When the subscription is lost this khalad
 * can no longer prove its L1 current, so it empties L1, and it empties it again when the
 * subscription is back (what was cached meanwhile was not covered either).
 */
#include "tiers.h"

#include <errno.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "errbuf.h"
#include "khala/error.h"
#include "khalad.h"
#include "tier_disk.h"
#include "tier_redis.h"

/* The message a reply will carry (d->errmsg). */
#define set_msg(d, ...) khala__errbuf_set((d)->errmsg, sizeof((d)->errmsg), __VA_ARGS__)

static const char *level_name(const khalad_tier_t *lt) {
    return lt->t->level == KHALA_LEVEL_L3 ? "L3" : "L2";
}

/* A level failed with rc: mark it unhealthy when the cause is the server. */
static void level_failed(khalad_t *d, khalad_tier_t *lt, int rc) {
    if (rc != KHALA_ETIER)
        return;
    if (lt->t->healthy) {
        lt->t->healthy = 0;
        lt->outages++;
        lt->next_health_ms = khala__sys_now_ms() + KHALAD_HEALTH_EVERY_MS;
        khala__log("warn", "a level is down; reads skip it and writes queue", "level",
                   level_name(lt), "backend", lt->t->ops->name, "error", lt->t->err, NULL);
    }
    (void)d;
}

/* Levels a type lives on, as KHALA_CONFIG_LEVEL_* bits. */
static uint32_t type_levels(const khalad_t *d, khala_type_t type) {
    return (unsigned)type < KHALA_CONFIG_NTYPES ? d->cfg.types[type].levels
                                                : KHALA_CONFIG_LEVEL_L1 | KHALA_CONFIG_LEVEL_L2;
}

static int on_level(const khalad_t *d, const khalad_tier_t *lt, khala_type_t type) {
    uint32_t bit = lt->t->level == KHALA_LEVEL_L3 ? KHALA_CONFIG_LEVEL_L3 : KHALA_CONFIG_LEVEL_L2;
    return (type_levels(d, type) & bit) != 0;
}

/* A TTL with up to +-ttl_jitter_pct percent of jitter, so warmed keys do not expire together. */
static int64_t jitter(khalad_t *d, int64_t ttl_ms) {
    uint32_t pct = d->cfg.policies.ttl_jitter_pct;
    if (!ttl_ms || !pct)
        return ttl_ms;
    d->rng ^= d->rng << 13;
    d->rng ^= d->rng >> 7;
    d->rng ^= d->rng << 17;
    int64_t span = ttl_ms * (int64_t)pct / 100;
    if (span <= 0)
        return ttl_ms;
    int64_t j = (int64_t)(d->rng % (uint64_t)(2 * span + 1)) - span;
    return ttl_ms + j > 0 ? ttl_ms + j : 1;
}

/* The TTL of a write on a level (1, 2, 3): the caller's, else the type's on that level. */
static int64_t level_ttl(khalad_t *d, int64_t ttl_ms, khala_type_t type, int level) {
    if (ttl_ms > 0)
        return ttl_ms;
    return jitter(d, (int64_t)khala__config_type_ttl(&d->cfg, (int)type, level) * 1000);
}

uint64_t khala__tiers_version(khalad_t *d) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    uint64_t v = ms << 20;
    if (v <= d->last_version)
        v = d->last_version + 1;
    d->last_version = v;
    return v;
}

/* Opening and closing ------------------------------------------------------------------------ */

static void on_inval(void *arg, const khala_inv_t *m);
static void on_coh_event(void *arg, khala_coh_event_t ev, const char *why);

static void coh_readable(void *arg) {
    khalad_t *d = arg;
    khala__coherence_readable(d->coh);
}

/* The subscription's descriptor changes when it reconnects: keep the loop watching the live one. */
static void coh_rewatch(khalad_t *d) {
    int fd = d->coh ? khala__coherence_fd(d->coh) : -1;
    if (fd == d->coh_fd || !d->srv)
        return;
    if (khala__server_watch(d->srv, d->coh_fd, fd, coh_readable, d) != 0)
        fd = -1;
    d->coh_fd = fd;
}

/* mkdir -p, mode 0700 for what it creates. */
static int mkdirs(const char *path) {
    char buf[KHALA_CONFIG_PATH_MAX + 64];
    if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
        return -ENAMETOOLONG;
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char ch = *p;
        *p = '\0';
        if (mkdir(buf, 0700) != 0 && errno != EEXIST)
            return -errno;
        *p = ch;
        if (!ch)
            return 0;
    }
}

static int open_l2(khalad_t *d, khalad_tier_t *lt) {
    char err[KHALA_CONFIG_PATH_MAX + 128] = ""; /* room for a message naming a store path */
    int rc;
    if (d->cfg.l2.backend == KHALA_CONFIG_L2_REDIS) {
        khala_tier_redis_opts_t o = {
            .url = d->cfg.l2.redis_url,
            .ns = khala__config_l2_namespace(&d->cfg),
            .level = KHALA_LEVEL_L2,
            .timeout_ms = d->cfg.l2.timeout_ms,
            .pool_size = d->cfg.l2.pool_size,
            .persistent = d->cfg.l2.persistent,
            .owned = d->cfg.l2.redis_owned,
        };
        rc = khala__tier_redis_open(&o, &lt->t, err, sizeof(err));
    } else {
        char path[KHALA_CONFIG_PATH_MAX + 64];
        if ((rc = khala__config_store_path(&d->cfg, 2, path, sizeof(path))) != 0) {
            set_msg(d, "L2 disk store: cannot derive its directory: %s", khala_strerror(rc));
            return rc;
        }
        khala_tier_disk_opts_t o = {
            .path = path,
            .level = KHALA_LEVEL_L2,
            .max_items = d->cfg.l2.max_items,
            .max_bytes = (uint64_t)d->cfg.l2.max_memory_mb << 20,
            .persistent = d->cfg.l2.persistent,
            .max_value = d->cfg.l1.max_value_bytes,
            .sync_every_ms = d->cfg.l2.sync_every_ms,
        };
        rc = khala__tier_disk_open(&o, &lt->t, err, sizeof(err));
    }
    if (rc != 0) {
        set_msg(d, "L2 (%s): %s", d->cfg.l2.backend == KHALA_CONFIG_L2_REDIS ? "redis" : "disk",
                err);
        return rc;
    }
    lt->t->healthy = lt->t->ops->health(lt->t) == 0;
    if (!lt->t->healthy) {
        lt->outages++;
        khala__log("warn", "L2 is not reachable at start; reads skip it and writes queue",
                   "backend", lt->t->ops->name, "error", lt->t->err, NULL);
    } else if (lt->t->err[0]) {
        khala__log("warn", "L2 opened with a warning", "backend", lt->t->ops->name, "detail",
                   lt->t->err, NULL);
    }
    if ((rc = khala__wq_new(d->cfg.l2.queue_max, KHALAD_QUEUE_BYTES_MAX, &lt->wq)) != 0) {
        lt->t->ops->close(lt->t);
        lt->t = NULL;
        set_msg(d, "out of memory");
        return rc;
    }
    if (d->cfg.l2.backend == KHALA_CONFIG_L2_REDIS) {
        /* A server can be down: its queue is journaled on the local disk, so that writes
         * acknowledged meanwhile (and write-behind writes) survive khalad. */
        char dir[KHALA_CONFIG_PATH_MAX + 64];
        uint64_t recovered = 0;
        if ((rc = khala__config_store_path(&d->cfg, 2, dir, sizeof(dir) - 16)) == 0 &&
            (rc = mkdirs(dir)) == 0) {
            strcat(dir, "/journal");
            rc = khala__wq_journal_open(lt->wq, dir, d->cfg.l2.sync_every_ms, &recovered, err,
                                        sizeof(err));
        } else {
            snprintf(err, sizeof(err), "write journal under %s: %s", dir, khala_strerror(rc));
        }
        if (rc != 0) {
            set_msg(d, "L2 (redis): %s", err);
            return rc;
        }
        lt->journaled = 1;
        if (recovered) {
            char n[32];
            snprintf(n, sizeof(n), "%" PRIu64, recovered);
            khala__log("info", "read back writes an earlier khalad had queued for L2", "writes", n,
                       "journal", dir, NULL);
        }
    }
    return 0;
}

int khala__tiers_open(khalad_t *d) {
    int rc;
    d->coh_fd = -1;
    d->rng = (uint64_t)khala__sys_now_ms() * 0x9E3779B97F4A7C15ull | 1;
    if ((rc = open_l2(d, &d->tiers[0])) != 0)
        return rc;
    d->ntiers = 1;
    if (d->cfg.policies.coherence == KHALA_CONFIG_COHERENCE_PUBSUB) {
        char err[512] = "";
        khala_coherence_opts_t o = {.url = d->cfg.l2.redis_url,
                                    .ns = khala__config_l2_namespace(&d->cfg),
                                    .timeout_ms = d->cfg.l2.timeout_ms};
        khala_coherence_cb_t cb = {.on_inval = on_inval, .on_event = on_coh_event, .arg = d};
        if ((rc = khala__coherence_open(&o, &cb, &d->coh, err, sizeof(err))) != 0) {
            set_msg(d, "cross-host invalidation: %s", err);
            return rc;
        }
        coh_rewatch(d);
        if (khala__l1_reattached(d->l1)) {
            /* The adopted L1 missed what other hosts changed while no khalad listened. */
            uint64_t n = khala__tiers_l1_remove(d, NULL, 0, -1);
            char items[32];
            snprintf(items, sizeof(items), "%" PRIu64, n);
            khala__log("info",
                       "emptied the adopted L1: other hosts' invalidations were not "
                       "heard while khalad was down",
                       "items", items, NULL);
        }
    }
    if (d->cfg.policies.predictive_cache)
        khala__log("warn",
                   "predictive_cache is accepted but does nothing: on the real traces it did not "
                   "raise the L1 hit ratio (docs/benchmarks.md, \"Predictive warming\")",
                   NULL);
    return 0;
}

static void drain(khalad_t *d, khalad_tier_t *lt, size_t batches);

/* L1 scan visitor: report an item's reader hits to L2's access counts. */
typedef struct hits_ctx {
    khalad_t *d;
    khala_tier_t *t;
    uint64_t noted;
} hits_ctx_t;

static int note_item_hits(void *arg, const khala_item_t *it) {
    hits_ctx_t *h = arg;
    uint32_t hits = khala__l1_item_hits(h->d->l1, it);
    if (hits && (type_levels(h->d, (khala_type_t)it->type) & KHALA_CONFIG_LEVEL_L2)) {
        h->t->ops->note_hits(h->t, khala__item_key(it), it->key_len, hits);
        h->noted++;
    }
    return 0; /* keep it */
}

/* Workers' L1 hits never reach L2, so L2's access counts would rank the hottest keys by the
 * few reads that brought them into L1. At a graceful stop they are added (note_hits), so that
 * the next start's preload warms what was really read most. */
static void note_l1_hits(khalad_t *d) {
    if (!d->ntiers || !d->tiers[0].t->ops->note_hits || !d->l1)
        return;
    (void)khala__l1_maintain(d->l1); /* drain the readers' hit rings into the items */
    hits_ctx_t h = {d, d->tiers[0].t, 0};
    uint64_t cursor = 0;
    do
        (void)khala__l1_scan(d->l1, &cursor, 65536, note_item_hits, &h);
    while (cursor != 0);
    char n[32];
    snprintf(n, sizeof(n), "%" PRIu64, h.noted);
    khala__log("info", "added L1 hits to L2's access counts (for the next preload)", "keys", n,
               NULL);
}

void khala__tiers_close(khalad_t *d) {
    note_l1_hits(d);
    for (int i = 0; i < d->ntiers; i++) {
        khalad_tier_t *lt = &d->tiers[i];
        if (!lt->t)
            continue;
        /* Last chance for queued writes: a healthy level gets them now. */
        int64_t deadline = khala__sys_now_ms() + 5000;
        while (khala__wq_head(lt->wq) && lt->t->healthy && khala__sys_now_ms() < deadline)
            drain(d, lt, 1);
        khala_wq_stats_t ws;
        khala__wq_stats(lt->wq, &ws);
        if (ws.len) {
            char n[32];
            snprintf(n, sizeof(n), "%" PRIu64, ws.len);
            if (lt->journaled)
                khala__log("warn",
                           "writes still queued for a level stay in its journal for "
                           "the next start",
                           "level", level_name(lt), "writes", n, NULL);
            else
                khala__log("error", "writes still queued for a level that is down are lost",
                           "level", level_name(lt), "writes", n, NULL);
        }
        khala__wq_free(lt->wq);
        lt->t->ops->close(lt->t);
        lt->t = NULL;
        lt->wq = NULL;
    }
    d->ntiers = 0;
    if (d->coh) {
        if (d->coh_fd >= 0 && d->srv)
            (void)khala__server_watch(d->srv, d->coh_fd, -1, NULL, NULL);
        khala__coherence_close(d->coh);
        d->coh = NULL;
        d->coh_fd = -1;
    }
}

/* Cross-host invalidation -------------------------------------------------------------------- */

static void publish(khalad_t *d, khala_inv_by_t by, const void *key, size_t klen, int type,
                    uint64_t version) {
    if (!d->coh)
        return;
    khala_inv_t m = {.by = by, .key = key, .klen = klen, .type = type, .version = version};
    if (khala__coherence_publish(d->coh, &m) != 0) {
        d->publish_errors++;
        d->publish_lost = 1; /* other hosts missed a change: tick() tells them to flush */
        khala__log("warn", "cannot publish an invalidation to other hosts", "error",
                   khala__coherence_errmsg(d->coh), NULL);
    }
}

/* L1 scan visitor: remove by prefix and type. */
typedef struct match {
    const uint8_t *prefix;
    size_t plen;
    int type;
} match_t;

static int match_item(void *arg, const khala_item_t *it) {
    const match_t *mt = arg;
    if (mt->plen &&
        (it->key_len < mt->plen || memcmp(khala__item_key(it), mt->prefix, mt->plen) != 0))
        return 0;
    return mt->type < 0 || it->type == mt->type;
}

uint64_t khala__tiers_l1_remove(khalad_t *d, const void *prefix, size_t plen, int type) {
    match_t mt = {prefix, plen, type};
    uint64_t cursor = 0, removed = 0;
    do
        removed += khala__l1_scan(d->l1, &cursor, 65536, match_item, &mt);
    while (cursor != 0);
    return removed;
}

/* What another khalad changed: drop it here. Loads in flight lose their right to be cached. */
static void on_inval(void *arg, const khala_inv_t *m) {
    khalad_t *d = arg;
    d->inval_received++;
    switch (m->by) {
        case KHALA_INV_KEY:
            khala__flight_invalidate(d->flight, m->key, m->klen, 0);
            (void)khala__l1_delete(d->l1, m->key, m->klen);
            break;
        case KHALA_INV_PREFIX:
            khala__flight_invalidate(d->flight, m->key, m->klen, 1);
            (void)khala__tiers_l1_remove(d, m->key, m->klen, -1);
            break;
        case KHALA_INV_TYPE:
            khala__flight_invalidate(d->flight, "", 0, 1);
            (void)khala__tiers_l1_remove(d, NULL, 0, m->type);
            break;
        case KHALA_INV_ALL:
            khala__flight_invalidate(d->flight, "", 0, 1);
            (void)khala__tiers_l1_remove(d, NULL, 0, m->type);
            break;
    }
}

static void on_coh_event(void *arg, khala_coh_event_t ev, const char *why) {
    khalad_t *d = arg;
    /* Either way, what L1 holds may have changed elsewhere unseen: drop it. */
    khala__flight_invalidate(d->flight, "", 0, 1);
    uint64_t n = khala__tiers_l1_remove(d, NULL, 0, -1);
    d->coherence_flushes++;
    char items[32];
    snprintf(items, sizeof(items), "%" PRIu64, n);
    khala__log(ev == KHALA_COH_LOST ? "warn" : "info",
               ev == KHALA_COH_LOST
                   ? "lost the invalidation subscription; emptied L1 (it can no longer be proven "
                     "current)"
                   : "invalidation subscription is back; emptied L1 of what was cached unseen",
               "items", items, "detail", why ? why : "", NULL);
}

/* Reads -------------------------------------------------------------------------------------- */

/* A queued write of key, looked for in every level's queue (the first level's first). */
static int queued_get(khalad_t *d, const void *key, size_t klen, khala_tier_value_t *out) {
    for (int i = 0; i < d->ntiers; i++) {
        khala_wq_op_t *op = khala__wq_find(d->tiers[i].wq, key, klen);
        if (!op)
            continue;
        if (op->kind == KHALA_WQ_DEL)
            return KHALA_ENOTFOUND;
        int64_t now = khala__sys_now_ms();
        if (op->expire_ms && op->expire_ms <= now)
            return KHALA_ENOTFOUND;
        out->data = malloc(op->vlen ? op->vlen : 1);
        if (!out->data)
            return -ENOMEM;
        memcpy(out->data, op->val, op->vlen);
        out->len = op->vlen;
        out->version = op->version;
        out->ttl_ms = op->expire_ms ? op->expire_ms - now : 0;
        out->type = (khala_type_t)op->type;
        return 0;
    }
    return 1; /* not queued */
}

int khala__tiers_get(khalad_t *d, const void *key, size_t klen, khala_tier_value_t *out,
                     khala_level_t *lvl) {
    memset(out, 0, sizeof(*out));
    int rc = queued_get(d, key, klen, out);
    if (rc <= 0) {
        if (rc == 0)
            *lvl = d->tiers[0].t->level;
        return rc == 0 ? 0 : KHALA_ENOTFOUND;
    }
    for (int i = 0; i < d->ntiers; i++) {
        khalad_tier_t *lt = &d->tiers[i];
        if (!lt->t->healthy)
            continue;
        rc = lt->t->ops->get(lt->t, key, klen, out);
        if (rc == 0) {
            *lvl = lt->t->level;
            return 0;
        }
        if (rc != KHALA_ENOTFOUND)
            level_failed(d, lt, rc);
    }
    return KHALA_ENOTFOUND;
}

uint64_t khala__tiers_current_version(khalad_t *d, const void *key, size_t klen) {
    const khala_item_t *it;
    if (khala__l1_find(d->l1, key, klen, &it) == 0)
        return it->version;
    khala_tier_value_t v;
    khala_level_t lvl;
    if (khala__tiers_get(d, key, klen, &v, &lvl) != 0)
        return 0;
    uint64_t ver = v.version;
    khala__tier_value_free(&v);
    return ver;
}

/* Promote a value found below L1 into L1, with its version, for at most the type's L1 TTL. */
int khala__tiers_promote(khalad_t *d, const void *key, size_t klen, const khala_tier_value_t *v) {
    int64_t ttl = (int64_t)khala__config_type_ttl(&d->cfg, (int)v->type, 1) * 1000;
    if (v->ttl_ms > 0 && (ttl == 0 || v->ttl_ms < ttl))
        ttl = v->ttl_ms;
    if (!(type_levels(d, v->type) & KHALA_CONFIG_LEVEL_L1))
        return KHALA_ENOTFOUND; /* this type does not live in L1 */
    int rc =
        khala__l1_put_v(d->l1, key, klen, v->data, v->len, ttl, (uint8_t)v->type, v->version, NULL);
    if (rc == 0)
        d->promotions++;
    return rc;
}

/* Writes ------------------------------------------------------------------------------------- */

int khala__tiers_put(khalad_t *d, const void *key, size_t klen, const void *val, size_t vlen,
                     int64_t ttl_ms, khala_type_t type, int flags, uint64_t *version) {
    khala_config_write_mode_t mode = khala__config_type_write_mode(&d->cfg, (int)type);
    uint64_t ver = khala__tiers_version(d);
    int64_t now = khala__sys_now_ms();
    int64_t ttl2 = level_ttl(d, ttl_ms, type, 2); /* one jittered TTL for every level below */
    int queue[KHALAD_TIERS_MAX] = {0};
    /* 0. What no level would take is refused before any level is written ([l1] max_value_bytes
     * is the cache's limit, and the disk store's). */
    uint32_t max_value = khala__l1_seg(d->l1)->max_value;
    if (vlen > max_value) {
        set_msg(d, "value is %zu bytes, max %u ([l1] max_value_bytes)", vlen, max_value);
        return KHALA_ETOOBIG;
    }
    /* 1. Room in every queue this write may need, before anything changes. */
    for (int i = 0; i < d->ntiers; i++) {
        khalad_tier_t *lt = &d->tiers[i];
        if (!on_level(d, lt, type))
            continue;
        /* Write-behind needs the journal: a level without one (the local disk, whose own
         * commit costs what a journal's would) is written through. */
        queue[i] = (mode == KHALA_CONFIG_WRITE_BEHIND && lt->journaled) || !lt->t->healthy ||
                   khala__wq_head(lt->wq) != NULL; /* keep order behind what is queued */
        if (queue[i] && !khala__wq_room(lt->wq, key, klen, vlen)) {
            khala_wq_stats_t ws;
            khala__wq_stats(lt->wq, &ws);
            lt->refused++;
            set_msg(d,
                    "%s (%s) is %s and its write queue is full (%" PRIu64
                    " writes, [l2] queue_max %u); retry later",
                    level_name(lt), lt->t->ops->name, lt->t->healthy ? "behind" : "down", ws.len,
                    d->cfg.l2.queue_max);
            return KHALA_EQUEUE;
        }
    }
    /* 2. Write-through levels, now. */
    for (int i = 0; i < d->ntiers; i++) {
        khalad_tier_t *lt = &d->tiers[i];
        if (!on_level(d, lt, type) || queue[i])
            continue;
        khala_tier_value_t v = {(void *)val, vlen, ver, ttl2, type};
        int rc = lt->t->ops->put(lt->t, key, klen, &v);
        if (rc == 0) {
            lt->writes++;
            continue;
        }
        if (rc == KHALA_ETIER) {
            level_failed(d, lt, rc);
            queue[i] = 1;
            if (!khala__wq_room(lt->wq, key, klen, vlen)) {
                lt->refused++;
                set_msg(d, "%s (%s) is down and its write queue is full; retry later",
                        level_name(lt), lt->t->ops->name);
                return KHALA_EQUEUE;
            }
            continue;
        }
        lt->write_errors++;
        set_msg(d, "%s (%s): %s", level_name(lt), lt->t->ops->name,
                lt->t->err[0] ? lt->t->err : khala_strerror(rc));
        if (rc == KHALA_EVERSION)
            set_msg(d, "%s (%s) holds a newer version of this key (written elsewhere)",
                    level_name(lt), lt->t->ops->name);
        return rc;
    }
    /* 3. L1. A failure leaves no older copy behind: the levels below have the new one (the
     * queued ones still get it in step 4; the caller hears of L1's refusal). */
    int l1rc = 0;
    if (type_levels(d, type) & KHALA_CONFIG_LEVEL_L1) {
        l1rc = khala__l1_put_v(d->l1, key, klen, val, vlen, level_ttl(d, ttl_ms, type, 1),
                               (uint8_t)type, ver, NULL);
        if (l1rc != 0)
            set_msg(d, "%s", khala__l1_errmsg(d->l1));
    }
    if (l1rc != 0 || !(type_levels(d, type) & KHALA_CONFIG_LEVEL_L1))
        (void)khala__l1_delete(d->l1, key, klen);
    /* 4. Queued levels. Room was checked above. */
    for (int i = 0; i < d->ntiers; i++) {
        if (!queue[i])
            continue;
        int rc = khala__wq_put(d->tiers[i].wq, key, klen, val, vlen, ver, ttl2 ? now + ttl2 : 0,
                               (int)type);
        if (rc != 0) {
            set_msg(d, "cannot queue the write: %s", khala_strerror(rc));
            return rc;
        }
        d->tiers[i].queued++;
    }
    /* The levels below hold the new value even when L1 refused it: other hosts must hear. */
    if (!(flags & KHALA_TIERS_FILL))
        publish(d, KHALA_INV_KEY, key, klen, -1, ver);
    if (l1rc != 0)
        return l1rc;
    if (version)
        *version = ver;
    return 0;
}

int khala__tiers_del(khalad_t *d, const void *key, size_t klen) {
    for (int i = 0; i < d->ntiers; i++) {
        khalad_tier_t *lt = &d->tiers[i];
        if (!lt->t->healthy || khala__wq_head(lt->wq)) {
            if (!khala__wq_room(lt->wq, key, klen, 0)) {
                set_msg(d, "%s (%s) is down and its write queue is full; retry later",
                        level_name(lt), lt->t->ops->name);
                return KHALA_EQUEUE;
            }
        }
    }
    khala__flight_invalidate(d->flight, key, klen, 0);
    int found = khala__l1_delete(d->l1, key, klen) == 0;
    for (int i = 0; i < d->ntiers; i++) {
        khalad_tier_t *lt = &d->tiers[i];
        int rc = KHALA_ETIER;
        if (lt->t->healthy && !khala__wq_head(lt->wq)) {
            rc = lt->t->ops->del(lt->t, key, klen);
            found |= rc == 0;
            if (rc == 0 || rc == KHALA_ENOTFOUND)
                continue;
            level_failed(d, lt, rc);
            if (rc != KHALA_ETIER) {
                set_msg(d, "%s (%s): %s", level_name(lt), lt->t->ops->name, lt->t->err);
                return rc;
            }
        }
        if ((rc = khala__wq_del(lt->wq, key, klen)) != 0) {
            set_msg(d, "%s (%s): cannot queue the delete: %s", level_name(lt), lt->t->ops->name,
                    khala_strerror(rc));
            return rc;
        }
        lt->queued++;
        found = 1; /* the level may hold it: cannot tell until it is back */
    }
    publish(d, KHALA_INV_KEY, key, klen, -1, 0);
    if (!found)
        set_msg(d, "no level holds this key");
    return found ? 0 : KHALA_ENOTFOUND;
}

int khala__tiers_invalidate(khalad_t *d, const void *prefix, size_t plen, int type,
                            uint64_t *removed) {
    for (int i = 0; i < d->ntiers; i++) {
        khalad_tier_t *lt = &d->tiers[i];
        if ((!lt->t->healthy || khala__wq_head(lt->wq)) && !khala__wq_room(lt->wq, NULL, plen, 0)) {
            set_msg(d, "%s (%s) is down and its write queue is full; retry later", level_name(lt),
                    lt->t->ops->name);
            return KHALA_EQUEUE;
        }
    }
    khala__flight_invalidate(d->flight, plen ? prefix : "", plen, 1);
    uint64_t n = khala__tiers_l1_remove(d, prefix, plen, type);
    for (int i = 0; i < d->ntiers; i++) {
        khalad_tier_t *lt = &d->tiers[i];
        int rc = KHALA_ETIER;
        if (lt->t->healthy && !khala__wq_head(lt->wq)) {
            rc = lt->t->ops->invalidate(lt->t, prefix, plen, type, NULL);
            if (rc == 0)
                continue;
            level_failed(d, lt, rc);
            if (rc != KHALA_ETIER) {
                set_msg(d, "%s (%s): %s", level_name(lt), lt->t->ops->name, lt->t->err);
                return rc;
            }
        }
        if ((rc = khala__wq_invalidate(lt->wq, prefix, plen, type)) != 0) {
            set_msg(d, "%s (%s): cannot queue the invalidation: %s", level_name(lt),
                    lt->t->ops->name, khala_strerror(rc));
            return rc;
        }
        lt->queued++;
    }
    if (plen)
        publish(d, KHALA_INV_PREFIX, prefix, plen, type, 0);
    else
        publish(d, type >= 0 ? KHALA_INV_TYPE : KHALA_INV_ALL, NULL, 0, type, 0);
    if (removed)
        *removed = n;
    return 0;
}

/* The flusher ---------------------------------------------------------------------------------- */

/* Send up to `batches` batches of lt's queue: runs of puts as one mput, deletes and
 * invalidations one by one. Stops at the first KHALA_ETIER (the level went down again). */
static void drain(khalad_t *d, khalad_tier_t *lt, size_t batches) {
    khala_bytes_t keys[KHALAD_FLUSH_BATCH];
    khala_tier_value_t vals[KHALAD_FLUSH_BATCH];
    khala_wq_op_t *ops[KHALAD_FLUSH_BATCH];
    while (batches-- > 0 && lt->t->healthy) {
        khala_wq_op_t *op = khala__wq_head(lt->wq);
        if (!op)
            return;
        int64_t now = khala__sys_now_ms();
        int rc;
        if (op->kind == KHALA_WQ_PUT) {
            size_t n = 0;
            for (khala_wq_op_t *o = op; o && o->kind == KHALA_WQ_PUT && n < KHALAD_FLUSH_BATCH;
                 o = o->next) {
                ops[n] = o;
                keys[n] = (khala_bytes_t){o->key, o->klen};
                vals[n] = (khala_tier_value_t){o->val, o->vlen, o->version,
                                               o->expire_ms ? o->expire_ms - now : 0,
                                               (khala_type_t)o->type};
                if (o->expire_ms && o->expire_ms <= now)
                    vals[n].ttl_ms = 1; /* expired while queued: still written, gone at once */
                n++;
            }
            rc = lt->t->ops->mput(lt->t, n, keys, vals);
            if (rc == KHALA_ETIER) {
                level_failed(d, lt, rc);
                return;
            }
            if (rc == KHALA_EVERSION)
                lt->stale_drops++; /* some item had a newer version there: it stays */
            else if (rc != 0)
                lt->write_errors++;
            /* Now L2 has them: other hosts that re-read the old values from L2 since the
             * first publish drop them again. */
            for (size_t i = 0; i < n; i++) {
                publish(d, KHALA_INV_KEY, ops[i]->key, ops[i]->klen, -1, ops[i]->version);
                khala__wq_remove(lt->wq, ops[i]);
            }
            lt->drained += n;
            continue;
        }
        if (op->kind == KHALA_WQ_DEL)
            rc = lt->t->ops->del(lt->t, op->key, op->klen);
        else
            rc = lt->t->ops->invalidate(lt->t, op->key, op->klen, op->type, NULL);
        if (rc == KHALA_ETIER) {
            level_failed(d, lt, rc);
            return;
        }
        if (rc != 0 && rc != KHALA_ENOTFOUND)
            lt->write_errors++;
        if (op->kind == KHALA_WQ_DEL)
            publish(d, KHALA_INV_KEY, op->key, op->klen, -1, 0);
        else if (op->klen)
            publish(d, KHALA_INV_PREFIX, op->key, op->klen, op->type, 0);
        else
            publish(d, op->type >= 0 ? KHALA_INV_TYPE : KHALA_INV_ALL, NULL, 0, op->type, 0);
        khala__wq_remove(lt->wq, op);
        lt->drained++;
    }
}

void khala__tiers_tick(khalad_t *d) {
    int64_t now = khala__sys_now_ms();
    for (int i = 0; i < d->ntiers; i++) {
        khalad_tier_t *lt = &d->tiers[i];
        if (!lt->t->healthy && now >= lt->next_health_ms) {
            /* A hung server costs a timeout per check, on the loop: back off (250 ms doubling
             * to 5 s) so that khalad keeps serving everyone else meanwhile. */
            lt->health_backoff_ms =
                lt->health_backoff_ms ? 2 * lt->health_backoff_ms : KHALAD_HEALTH_EVERY_MS;
            if (lt->health_backoff_ms > KHALAD_HEALTH_MAX_MS)
                lt->health_backoff_ms = KHALAD_HEALTH_MAX_MS;
            int hrc = lt->t->ops->health(lt->t);
            lt->next_health_ms = khala__sys_now_ms() + lt->health_backoff_ms;
            if (hrc == 0) {
                lt->health_backoff_ms = 0;
                lt->t->healthy = 1;
                khala_wq_stats_t ws;
                khala__wq_stats(lt->wq, &ws);
                char n[32];
                snprintf(n, sizeof(n), "%" PRIu64, ws.len);
                khala__log("info", "a level is back; draining its queued writes", "level",
                           level_name(lt), "backend", lt->t->ops->name, "queued", n, NULL);
            }
        }
        if (lt->t->healthy)
            drain(d, lt, KHALAD_FLUSH_BATCHES_PER_TICK);
        (void)khala__wq_sync(lt->wq); /* removals, and the periodic fsync */
        if (lt->t->ops->tick)
            lt->t->ops->tick(lt->t, now);
    }
    if (d->coh) {
        khala__coherence_tick(d->coh, now);
        coh_rewatch(d);
        /* A change this khalad could not publish was missed by every other host, and which
         * keys it touched is not kept: once publishing works again, they all empty their L1
         * (what they re-read comes from L2, which has the change). */
        if (d->publish_lost && now >= d->next_flush_publish_ms) {
            khala_inv_t all = {.by = KHALA_INV_ALL, .type = KHALA_INV_ALL_TYPES};
            d->next_flush_publish_ms = now + KHALAD_HEALTH_EVERY_MS;
            if (khala__coherence_publish(d->coh, &all) == 0) {
                d->publish_lost = 0;
                khala__log("info",
                           "told other hosts to empty their L1: they missed changes "
                           "this khalad could not publish",
                           NULL);
            }
        }
    }
}

/* Warming ------------------------------------------------------------------------------------ */

uint64_t khala__tiers_warm_keys(khalad_t *d, size_t n, const khala_bytes_t *keys) {
    khala_tier_value_t vals[KHALAD_WARM_BATCH];
    int rcs[KHALAD_WARM_BATCH];
    uint64_t warmed = 0;
    for (size_t off = 0; off < n; off += KHALAD_WARM_BATCH) {
        size_t m = n - off < KHALAD_WARM_BATCH ? n - off : KHALAD_WARM_BATCH;
        int done[KHALAD_WARM_BATCH] = {0};
        /* Queued writes first, then each healthy level for what is still missing. */
        for (size_t i = 0; i < m; i++) {
            khala_tier_value_t v;
            if (queued_get(d, keys[off + i].ptr, keys[off + i].len, &v) == 0) {
                warmed += khala__tiers_promote(d, keys[off + i].ptr, keys[off + i].len, &v) == 0;
                khala__tier_value_free(&v);
                done[i] = 1;
            }
        }
        for (int l = 0; l < d->ntiers; l++) {
            khalad_tier_t *lt = &d->tiers[l];
            if (!lt->t->healthy)
                continue;
            khala_bytes_t want[KHALAD_WARM_BATCH];
            size_t idx[KHALAD_WARM_BATCH], k = 0;
            for (size_t i = 0; i < m; i++)
                if (!done[i]) {
                    want[k] = keys[off + i];
                    idx[k++] = i;
                }
            if (!k)
                break;
            memset(vals, 0, sizeof(vals[0]) * k);
            int rc = lt->t->ops->mget(lt->t, k, want, vals, rcs);
            if (rc != 0) {
                level_failed(d, lt, rc);
                continue;
            }
            for (size_t j = 0; j < k; j++) {
                if (rcs[j] == 0) {
                    warmed += khala__tiers_promote(d, want[j].ptr, want[j].len, &vals[j]) == 0;
                    done[idx[j]] = 1;
                }
                khala__tier_value_free(&vals[j]);
            }
        }
    }
    d->warmed += warmed;
    return warmed;
}

typedef struct scan_ctx {
    khala_bytes_t keys[KHALAD_WARM_BATCH * 4];
    uint8_t buf[KHALAD_WARM_BATCH * 4][KHALA_KEY_MAX];
    size_t n;
    const uint8_t *prefix;
    size_t plen;
} scan_ctx_t;

static int collect(void *arg, const void *key, size_t klen) {
    scan_ctx_t *s = arg;
    if (s->n == sizeof(s->keys) / sizeof(s->keys[0]) || klen > KHALA_KEY_MAX)
        return s->n == sizeof(s->keys) / sizeof(s->keys[0]);
    if (s->plen && (klen < s->plen || memcmp(key, s->prefix, s->plen) != 0))
        return 0;
    memcpy(s->buf[s->n], key, klen);
    s->keys[s->n] = (khala_bytes_t){s->buf[s->n], klen};
    s->n++;
    return 0;
}

int khala__tiers_warm_scan(khalad_t *d, const void *prefix, size_t plen, int type, uint64_t *cursor,
                           uint64_t *warmed) {
    *warmed = 0;
    khalad_tier_t *lt = d->ntiers ? &d->tiers[0] : NULL;
    if (!lt || !lt->t->healthy) {
        set_msg(d, "L2 is down: nothing to warm from (%s)", lt ? lt->t->err : "no L2");
        return KHALA_ETIER;
    }
    scan_ctx_t *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->prefix = prefix;
    s->plen = plen;
    /* A glob for the prefix, with its metacharacters escaped; the visitor checks it again. */
    char pat[2 * KHALA_KEY_MAX + 2], *p = pat;
    for (size_t i = 0; i < plen; i++) {
        char ch = ((const char *)prefix)[i];
        if (ch == '\0')
            break; /* a glob cannot hold NUL: match more, the visitor filters */
        if (strchr("*?[]\\", ch))
            *p++ = '\\';
        *p++ = ch;
    }
    *p++ = '*';
    *p = '\0';
    int rc = lt->t->ops->scan(lt->t, cursor, pat, KHALAD_WARM_BATCH, collect, s);
    if (rc != 0) {
        level_failed(d, lt, rc);
        set_msg(d, "L2 (%s): scan failed: %s", lt->t->ops->name, lt->t->err);
        free(s);
        return rc;
    }
    if (type < 0) {
        *warmed = khala__tiers_warm_keys(d, s->n, s->keys);
    } else {
        /* By type: read them, promote only that type. */
        for (size_t off = 0; off < s->n; off += KHALAD_WARM_BATCH) {
            size_t m = s->n - off < KHALAD_WARM_BATCH ? s->n - off : KHALAD_WARM_BATCH;
            khala_tier_value_t vals[KHALAD_WARM_BATCH];
            int rcs[KHALAD_WARM_BATCH];
            memset(vals, 0, sizeof(vals[0]) * m);
            if ((rc = lt->t->ops->mget(lt->t, m, s->keys + off, vals, rcs)) != 0) {
                level_failed(d, lt, rc);
                break;
            }
            for (size_t j = 0; j < m; j++) {
                if (rcs[j] == 0 && (int)vals[j].type == type)
                    *warmed += khala__tiers_promote(d, s->keys[off + j].ptr, s->keys[off + j].len,
                                                    &vals[j]) == 0;
                khala__tier_value_free(&vals[j]);
            }
        }
        d->warmed += *warmed;
    }
    free(s);
    return 0;
}

typedef struct hot_ctx {
    khalad_t *d;
    khala_bytes_t keys[KHALAD_WARM_BATCH];
    uint8_t buf[KHALAD_WARM_BATCH][KHALA_KEY_MAX];
    size_t n;
    uint64_t warmed;
} hot_ctx_t;

static int hot_visit(void *arg, const void *key, size_t klen) {
    hot_ctx_t *h = arg;
    if (klen > KHALA_KEY_MAX || klen == 0)
        return 0;
    memcpy(h->buf[h->n], key, klen);
    h->keys[h->n] = (khala_bytes_t){h->buf[h->n], klen};
    if (++h->n == KHALAD_WARM_BATCH) {
        h->warmed += khala__tiers_warm_keys(h->d, h->n, h->keys);
        h->n = 0;
    }
    return 0;
}

uint64_t khala__tiers_preload(khalad_t *d) {
    khalad_tier_t *lt = d->ntiers ? &d->tiers[0] : NULL;
    if (!lt || !lt->t->healthy)
        return 0;
    hot_ctx_t *h = calloc(1, sizeof(*h));
    if (!h)
        return 0;
    h->d = d;
    /* Half of L1: the rest stays for what the workers ask for. */
    size_t max = khala__config_l1_items(&d->cfg) / 2;
    int rc = lt->t->ops->hot(lt->t, max, hot_visit, h);
    if (rc != 0)
        level_failed(d, lt, rc);
    if (h->n)
        h->warmed += khala__tiers_warm_keys(d, h->n, h->keys);
    uint64_t n = h->warmed;
    free(h);
    return n;
}

/* Stats ---------------------------------------------------------------------------------------- */

#define KV_U(k, v)                                                                                 \
    (khala_kv_t) {                                                                                 \
        .key = {(const uint8_t *)(k), sizeof(k) - 1}, .kind = KHALA_KV_UINT, .as.u = (v)           \
    }
#define KV_S(k, v)                                                                                 \
    (khala_kv_t) {                                                                                 \
        .key = {(const uint8_t *)(k), sizeof(k) - 1}, .kind = KHALA_KV_STR, .as.s = {              \
            (const uint8_t *)(v),                                                                  \
            strlen(v)                                                                              \
        }                                                                                          \
    }

size_t khala__tiers_stats(khalad_t *d, khala_kv_t *kv, size_t max) {
    size_t n = 0;
    if (d->ntiers == 0 || max < KHALAD_TIERS_STATS_MAX)
        return 0;
    khalad_tier_t *lt = &d->tiers[0];
    khala_tier_stats_t ts;
    memset(&ts, 0, sizeof(ts));
    lt->t->ops->stats(lt->t, &ts);
    khala_wq_stats_t ws;
    khala__wq_stats(lt->wq, &ws);
    kv[n++] = KV_S("backend", lt->t->ops->name);
    kv[n++] = KV_U("healthy", (uint64_t)lt->t->healthy);
    kv[n++] = KV_U("gets", ts.gets);
    kv[n++] = KV_U("hits", ts.hits);
    kv[n++] = KV_U("misses", ts.misses);
    kv[n++] = KV_U("puts", ts.puts);
    kv[n++] = KV_U("dels", ts.dels);
    kv[n++] = KV_U("errors", ts.errors);
    if (ts.items != UINT64_MAX)
        kv[n++] = KV_U("items", ts.items);
    if (ts.bytes != UINT64_MAX)
        kv[n++] = KV_U("bytes", ts.bytes);
    kv[n++] = KV_U("evictions", ts.evictions);
    kv[n++] = KV_U("expirations", ts.expirations);
    kv[n++] = KV_U("reconnects", ts.reconnects);
    kv[n++] = KV_U("outages", lt->outages);
    kv[n++] = KV_U("queued_now", ws.len);
    kv[n++] = KV_U("queued_bytes", ws.bytes);
    kv[n++] = KV_U("queued_total", lt->queued);
    kv[n++] = KV_U("queue_coalesced", ws.coalesced);
    kv[n++] = KV_U("queue_refused", lt->refused);
    kv[n++] = KV_U("drained", lt->drained);
    kv[n++] = KV_U("stale_writes_dropped", lt->stale_drops);
    kv[n++] = KV_U("write_errors", lt->write_errors);
    kv[n++] = KV_U("promotions", d->promotions);
    kv[n++] = KV_U("warmed", d->warmed);
    kv[n++] = KV_U("invalidations_received", d->inval_received);
    kv[n++] = KV_U("coherence_flushes", d->coherence_flushes);
    kv[n++] = KV_U("publish_errors", d->publish_errors);
    kv[n++] = KV_U("subscribed", d->coh ? (uint64_t)khala__coherence_subscribed(d->coh) : 0);
    return n;
}
