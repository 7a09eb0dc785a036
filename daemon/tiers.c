/*
 * khalad's levels below L1 (daemon/tiers.h).
 *
 * HOW IT WORKS
 *
 * Config picks one driver per level (L2: "disk" on LMDB, or "redis"); each opened level gets a
 * write queue (daemon/writeq.c). Writes, and what they need of the levels (reads below L1,
 * marking a level down, publishing), are daemon/store.c's, which this file calls and which never
 * calls back. What stays here is the levels' lifecycle:
 *
 *   open/close      the drivers, the journal, coherence's subscription; at close, L1's hits
 *                   handed to L2's access counts and a last drain.
 *   outages         a level that failed with KHALA_ETIER (khala__store_level_failed) is asked
 *                   health() every KHALAD_HEALTH_EVERY_MS, backing off to KHALAD_HEALTH_MAX_MS;
 *                   when it passes, its queue drains, oldest first, and it takes writes
 *                   directly again only once its queue is empty (until then the queue and the
 *                   level together are the truth, and reads consult both).
 *   the flusher     the tick drains every level's queue in batches (mput): how write-behind
 *                   writes and the writes of an outage reach the level.
 *   warming         by keys, by a scan of L2, and the preload of L2's most used keys at start;
 *                   what is found is promoted into L1 through the store.
 *
 * Cross-host invalidation (daemon/coherence.c, [policies] coherence = pubsub): every put,
 * delete, invalidation and flush is published on the namespace's channel
 * (khala__store_publish); a message from another khalad removes the key(s) from this L1
 * (khala__store_forget). When the subscription is lost this khalad can no longer prove its L1
 * current, so it empties L1, and it empties it again when the subscription is back (what was
 * cached meanwhile was not covered either).
 *
 * Why the store is a file of its own and this one is not folded into it: the store is the
 * order of a write's steps, which tests/test_store.c drives through a fake driver; this file
 * is the lifecycle of real drivers (opening Redis or LMDB, health, the journal, coherence's
 * descriptor on the loop), which the integration tests drive. Folding them would make one file
 * of about 1,500 lines that mixes both.
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
#include "tier_crypt.h"
#include "khala/error.h"
#include "dirs.h"
#include "khalad.h"
#include "tier_disk.h"
#include "tier_redis.h"
#include "tier_surreal.h"

/* The message a reply will carry (d->errmsg). */
#define set_msg(d, ...) khala__errbuf_set((d)->errmsg, sizeof((d)->errmsg), __VA_ARGS__)

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

/* A level with asynchronous reads (get_start): its descriptor is readable, let it progress. */
static void tier_readable(void *arg) {
    khalad_tier_t *lt = arg;
    lt->t->ops->poll(lt->t);
}

/* Keep the loop watching the descriptor of a level's asynchronous work (it may change when
 * the driver reconnects); fd -1 unwatches. */
static void tier_rewatch(khalad_t *d, khalad_tier_t *lt, int fd) {
    if (fd == lt->poll_fd || !d->srv)
        return;
    if (khala__server_watch(d->srv, lt->poll_fd, fd, tier_readable, lt) != 0)
        fd = -1;
    lt->poll_fd = fd;
}

/* Every level below L1 (L2 and L3), once its driver is open: with a key file,
 * wrap the driver so that values of encrypted types are sealed below (daemon/tier_crypt.h).
 * On failure the driver is closed. */
static int seal_level(khalad_t *d, khalad_tier_t *lt) {
    khala_tier_t *sealed = NULL;
    if (!d->crypt)
        return 0;
    int rc = khala__tier_crypt_wrap(lt->t, d->crypt, &sealed);
    if (rc != 0) {
        set_msg(d, "%s: out of memory", khala__store_level_name(lt));
        lt->t->ops->close(lt->t);
        lt->t = NULL;
        return rc;
    }
    lt->t = sealed;
    return 0;
}

/* The driver of one level, as config picks it: L2 on disk or Redis, L3 on disk or SurrealDB.
 * *server says whether it is a server (its queue then gets a journal). */
static int open_driver(khalad_t *d, khalad_tier_t *lt, int level, int *server, char *err,
                       size_t errlen) {
    const khala_config_t *c = &d->cfg;
    /* A sealed value is KHALA_CRYPT_OVERHEAD bytes longer than the L1 limit allows. */
    uint32_t max_value = c->l1.max_value_bytes + (d->crypt ? KHALA_CRYPT_OVERHEAD : 0);
    *server = level == 2 ? c->l2.backend == KHALA_CONFIG_L2_REDIS
                         : c->l3.backend == KHALA_CONFIG_L3_SURREALDB;
    if (level == 2 && *server) {
        khala_tier_redis_opts_t o = {
            .url = c->l2.redis_url,
            .ns = khala__config_l2_namespace(c),
            .level = KHALA_LEVEL_L2,
            .timeout_ms = c->l2.timeout_ms,
            .pool_size = c->l2.pool_size,
            .persistent = c->l2.persistent,
            .owned = c->l2.redis_owned,
        };
        return khala__tier_redis_open(&o, &lt->t, err, errlen);
    }
    if (level == 3 && *server) {
        khala_tier_surreal_opts_t o = {
            .url = c->l3.surrealdb_url,
            .ns = c->l3.surrealdb_namespace,
            .db = c->l3.surrealdb_database,
            .table = c->l3.surrealdb_table,
            .level = KHALA_LEVEL_L3,
            .timeout_ms = c->l3.timeout_ms,
            .pool_size = c->l3.pool_size,
            .max_entries = c->l3.max_entries,
            .cleanup_interval_ms = (int64_t)c->l3.cleanup_interval * 1000,
            .cleanup_batch = c->l3.cleanup_batch,
            .archive_retention_ms = (int64_t)c->l3.archive_retention_seconds * 1000,
            .embedding_dim = c->l3.embedding_dim,
        };
        return khala__tier_surreal_open(&o, &lt->t, err, errlen);
    }
    char path[KHALA_CONFIG_PATH_MAX + 64];
    int rc = khala__config_store_path(c, level, path, sizeof(path));
    if (rc != 0) {
        khala__errbuf_set(err, errlen, "cannot derive the disk store's directory: %s",
                          khala_strerror(rc));
        return rc;
    }
    khala_tier_disk_opts_t o = {
        .path = path,
        .level = level == 2 ? KHALA_LEVEL_L2 : KHALA_LEVEL_L3,
        .max_items = level == 2 ? c->l2.max_items : c->l3.max_entries,
        .max_bytes = (uint64_t)(level == 2 ? c->l2.max_memory_mb : c->l3.max_memory_mb) << 20,
        .persistent = level == 2 ? c->l2.persistent : c->l3.persistent,
        .max_value = max_value,
        .sync_every_ms = level == 2 ? c->l2.sync_every_ms : c->l3.sync_every_ms,
        /* L3's housekeeping (daemon/tier_disk_cleanup.c, tier_disk_archive.c); L2 has none. */
        .archive_retention_ms = level == 2 ? 0 : (int64_t)c->l3.archive_retention_seconds * 1000,
        .cleanup_interval_ms = level == 2 ? 0 : (int64_t)c->l3.cleanup_interval * 1000,
        .cleanup_batch = level == 2 ? 0 : c->l3.cleanup_batch,
    };
    return khala__tier_disk_open(&o, &lt->t, err, errlen);
}

/* Open level 2 or 3 into lt: its driver (sealed with a key file), its write queue and, for a
 * server, the queue's journal on the local disk. */
static int open_level(khalad_t *d, khalad_tier_t *lt, int level) {
    char err[KHALA_CONFIG_PATH_MAX + 128] = ""; /* room for a message naming a store path */
    lt->poll_fd = -1;
    lt->flush_batch = 8; /* grows to KHALAD_FLUSH_BATCH on a fast level (drain()) */
    const char *lname = level == 2 ? "L2" : "L3";
    int server = 0;
    int rc = open_driver(d, lt, level, &server, err, sizeof(err));
    if (rc != 0) {
        set_msg(d, "%s (%s): %s", lname,
                level == 2
                    ? (d->cfg.l2.backend == KHALA_CONFIG_L2_REDIS ? "redis" : "disk")
                    : (d->cfg.l3.backend == KHALA_CONFIG_L3_SURREALDB ? "surrealdb" : "disk"),
                err);
        return rc;
    }
    if ((rc = seal_level(d, lt)) != 0)
        return rc;
    lt->t->healthy = lt->t->ops->health(lt->t) == 0;
    if (!lt->t->healthy) {
        lt->outages++;
        khala__log("warn",
                   level == 2 ? "L2 is not reachable at start; reads skip it and writes queue"
                              : "L3 is not reachable at start; reads skip it and writes queue",
                   "backend", lt->t->ops->name, "error", lt->t->err, NULL);
    } else if (lt->t->err[0]) {
        khala__log("warn", "a level opened with a warning", "tier", lname, "backend",
                   lt->t->ops->name, "detail", lt->t->err, NULL);
    }
    uint32_t queue_max = level == 2 ? d->cfg.l2.queue_max : d->cfg.l3.queue_max;
    if ((rc = khala__wq_new(queue_max, KHALAD_QUEUE_BYTES_MAX, &lt->wq)) != 0) {
        lt->t->ops->close(lt->t);
        lt->t = NULL;
        set_msg(d, "out of memory");
        return rc;
    }
    if (server) {
        /* A server can be down: its queue is journaled on the local disk, so that writes
         * acknowledged meanwhile (and write-behind writes) survive khalad. */
        char dir[KHALA_CONFIG_PATH_MAX + 64];
        uint64_t recovered = 0;
        if ((rc = khala__config_store_path(&d->cfg, level, dir, sizeof(dir) - 16)) == 0 &&
            (rc = khala__dirs_make(dir, 0700, err, sizeof(err))) == 0) {
            strcat(dir, "/journal");
            if (d->crypt) {
                khala_wq_codec_t codec;
                khala__tier_crypt_journal_codec(d->crypt, &codec);
                khala__wq_set_codec(lt->wq, &codec);
            }
            rc = khala__wq_journal_open(
                lt->wq, dir, level == 2 ? d->cfg.l2.sync_every_ms : d->cfg.l3.sync_every_ms,
                &recovered, err, sizeof(err));
        } else if (!err[0]) {
            khala__errbuf_set(err, sizeof(err), "write journal under %s: %s", dir,
                              khala_strerror(rc));
        }
        if (rc != 0) {
            /* Nothing of this level is kept: khala__tiers_close() only sees opened levels. */
            khala__wq_free(lt->wq);
            lt->wq = NULL;
            lt->t->ops->close(lt->t);
            lt->t = NULL;
            set_msg(d, "%s (%s): %s", lname, level == 2 ? "redis" : "surrealdb", err);
            return rc;
        }
        lt->journaled = 1;
        if (recovered) {
            char n[32];
            snprintf(n, sizeof(n), "%" PRIu64, recovered);
            khala__log("info", "read back writes an earlier khalad had queued for a level", "tier",
                       lname, "writes", n, "journal", dir, NULL);
        }
    }
    return 0;
}

int khala__tiers_open(khalad_t *d) {
    int rc;
    d->coh_fd = -1;
    if ((rc = open_level(d, &d->tiers[0], 2)) != 0)
        return rc;
    d->ntiers = 1;
    if ((rc = open_level(d, &d->tiers[1], 3)) != 0) {
        khala__tiers_close(d);
        return rc;
    }
    d->ntiers = 2;
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
            uint64_t n = khala__store_forget(d, 0, NULL, 0, -1);
            char items[32];
            snprintf(items, sizeof(items), "%" PRIu64, n);
            khala__log("info",
                       "emptied the adopted L1: other hosts' invalidations were not "
                       "heard while khalad was down",
                       "items", items, NULL);
        }
    }
    return 0;
}

static void drain(khalad_t *d, khalad_tier_t *lt, size_t batches);

/* L1 scan visitor: report an item's reader hits to L2's access counts. */
typedef struct hits_ctx {
    khalad_t *d;
    uint64_t noted;
} hits_ctx_t;

static int note_item_hits(void *arg, const khala_item_t *it) {
    hits_ctx_t *h = arg;
    uint32_t hits = khala__l1_item_hits(h->d->l1, it);
    if (!hits)
        return 0;
    uint32_t levels = khala__store_type_levels(h->d, (khala_type_t)it->type);
    for (int i = 0; i < h->d->ntiers; i++) {
        khala_tier_t *t = h->d->tiers[i].t;
        uint32_t bit = t->level == KHALA_LEVEL_L3 ? KHALA_CONFIG_LEVEL_L3 : KHALA_CONFIG_LEVEL_L2;
        if (t->ops->note_hits && t->healthy && (levels & bit))
            t->ops->note_hits(t, khala__item_key(it), it->key_len, hits);
    }
    h->noted++;
    return 0; /* keep it */
}

/* Workers' L1 hits never reach the levels below, so their access counts would rank the hottest
 * keys by the few reads that brought them into L1. At a graceful stop they are added
 * (note_hits), so that the next start's preload warms what was really read most, and L3's
 * cleanup evicts what was really read least. */
static void note_l1_hits(khalad_t *d) {
    if (!d->ntiers || !d->l1)
        return;
    (void)khala__l1_maintain(d->l1); /* drain the readers' hit rings into the items */
    hits_ctx_t h = {d, 0};
    uint64_t cursor = 0;
    do
        (void)khala__l1_scan(d->l1, &cursor, 65536, note_item_hits, &h);
    while (cursor != 0);
    char n[32];
    snprintf(n, sizeof(n), "%" PRIu64, h.noted);
    khala__log("info",
               "added L1 hits to the access counts of the levels below (for the next preload)",
               "keys", n, NULL);
}

void khala__tiers_close(khalad_t *d) {
    note_l1_hits(d);
    /* Callers still waiting for an invalidation are not answered (their connections close). */
    khala__invwait_free(d->invwait);
    d->invwait = NULL;
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
                           "tier", khala__store_level_name(lt), "writes", n, NULL);
            else
                khala__log("error", "writes still queued for a level that is down are lost", "tier",
                           khala__store_level_name(lt), "writes", n, NULL);
        }
        khala__wq_free(lt->wq);
        tier_rewatch(d, lt, -1);
        lt->t->ops->close(lt->t); /* completes pending asynchronous reads (KHALA_ETIER) */
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

static void on_inval(void *arg, const khala_inv_t *m) {
    khalad_t *d = arg;
    d->inval_received++;
    khala__rel_remote(d, m); /* the relationship items this host linked to it */
    switch (m->by) {
        case KHALA_INV_KEY:
            (void)khala__store_forget(d, 1, m->key, m->klen, -1);
            break;
        case KHALA_INV_PREFIX:
            (void)khala__store_forget(d, 0, m->key, m->klen, -1);
            break;
        case KHALA_INV_TYPE:
        case KHALA_INV_ALL:
            (void)khala__store_forget(d, 0, NULL, 0, m->type);
            break;
    }
}

static void on_coh_event(void *arg, khala_coh_event_t ev, const char *why) {
    khalad_t *d = arg;
    /* Either way, what L1 holds may have changed elsewhere unseen: drop it. */
    uint64_t n = khala__store_forget(d, 0, NULL, 0, -1);
    khala__rel_unproven(d, ev == KHALA_COH_LOST ? "subscription lost" : "subscription back");
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

/* The flusher ---------------------------------------------------------------------------------- */

/* Steps of the invalidation op at the head of lt's queue (the driver has invalidate_step), for
 * about KHALAD_INVALIDATE_TICK_MS of this tick and at least one step, so that khalad's loop
 * answers other clients between them (issue 10, bug 9). 0 when it is complete, 1 when steps
 * remain, or the driver's error. After an error the next attempt starts the scan again: the
 * cursor of a server that restarted means nothing, and removing twice is harmless. */
static int invalidate_steps(khalad_tier_t *lt, khala_wq_op_t *op) {
    int64_t until = khala__sys_now_ms() + KHALAD_INVALIDATE_TICK_MS;
    do {
        int rc = lt->t->ops->invalidate_step(lt->t, op->key, op->klen, op->type, &op->cursor,
                                             KHALAD_INVALIDATE_STEP_KEYS, NULL);
        if (rc != 0) {
            op->cursor = 0;
            return rc;
        }
        lt->invalidate_steps++;
        if (op->cursor == 0)
            return 0;
    } while (khala__sys_now_ms() < until);
    return 1;
}

/* Send up to `batches` batches of lt's queue: runs of puts as one mput, deletes and
 * invalidations one by one (an invalidation of a driver with invalidate_step in steps, a few
 * per tick, with nothing behind it sent before it completes). Stops at the first KHALA_ETIER
 * (the level went down again). */
static void drain(khalad_t *d, khalad_tier_t *lt, size_t batches) {
    khala_bytes_t keys[KHALAD_FLUSH_BATCH];
    khala_tier_value_t vals[KHALAD_FLUSH_BATCH];
    khala_wq_op_t *ops[KHALAD_FLUSH_BATCH];
    int64_t until = khala__sys_now_ms() + KHALAD_FLUSH_TICK_MS;
    for (size_t sent = 0; sent < batches && lt->t->healthy; sent++) {
        khala_wq_op_t *op = khala__wq_head(lt->wq);
        if (!op)
            return;
        int64_t now = khala__sys_now_ms();
        if (sent > 0 && now >= until)
            return; /* the rest at the next tick: other clients are answered meanwhile */
        int rc;
        if (op->kind == KHALA_WQ_PUT) {
            size_t n = 0, max = lt->flush_batch ? lt->flush_batch : KHALAD_FLUSH_BATCH;
            for (khala_wq_op_t *o = op; o && o->kind == KHALA_WQ_PUT && n < max; o = o->next) {
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
            /* Adapt the batch to the level's speed (KHALAD_FLUSH_BATCH_MS per batch). */
            int64_t took = khala__sys_now_ms() - now;
            if (took > KHALAD_FLUSH_BATCH_MS && n > 1)
                lt->flush_batch = n / 2;
            else if (took * 4 < KHALAD_FLUSH_BATCH_MS && n == max && max < KHALAD_FLUSH_BATCH)
                lt->flush_batch = max * 2 < KHALAD_FLUSH_BATCH ? max * 2 : KHALAD_FLUSH_BATCH;
            if (rc == KHALA_ETIER) {
                khala__store_level_failed(d, lt, rc);
                return;
            }
            if (rc == KHALA_EVERSION)
                lt->stale_drops++; /* some item had a newer version there: it stays */
            else if (rc != 0)
                lt->write_errors++;
            /* Now L2 has them: other hosts that re-read the old values from L2 since the
             * first publish drop them again. */
            for (size_t i = 0; i < n; i++) {
                khala__store_publish(d, KHALA_INV_KEY, ops[i]->key, ops[i]->klen, -1,
                                     ops[i]->version);
                khala__wq_remove(lt->wq, ops[i]);
            }
            lt->drained += n;
            continue;
        }
        if (op->kind == KHALA_WQ_DEL) {
            rc = lt->t->ops->del(lt->t, op->key, op->klen);
        } else if (lt->t->ops->invalidate_step) {
            rc = invalidate_steps(lt, op);
            if (rc == 1 || rc == -ENOMEM)
                return; /* more steps (or memory) at the next tick; order holds behind it */
        } else {
            rc = lt->t->ops->invalidate(lt->t, op->key, op->klen, op->type, NULL);
        }
        if (rc == KHALA_ETIER) {
            khala__store_level_failed(d, lt, rc);
            return;
        }
        if (rc != 0 && rc != KHALA_ENOTFOUND)
            lt->write_errors++;
        if (op->kind == KHALA_WQ_INVALIDATE)
            khala__invwait_done(d->invwait, (int)(lt - d->tiers), op->version,
                                rc == KHALA_ENOTFOUND ? 0 : rc);
        if (op->kind == KHALA_WQ_DEL)
            khala__store_publish(d, KHALA_INV_KEY, op->key, op->klen, -1, 0);
        else if (op->klen)
            khala__store_publish(d, KHALA_INV_PREFIX, op->key, op->klen, op->type, 0);
        else
            khala__store_publish(d, op->type >= 0 ? KHALA_INV_TYPE : KHALA_INV_ALL, NULL, 0,
                                 op->type, 0);
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
                khala__log("info", "a level is back; draining its queued writes", "tier",
                           khala__store_level_name(lt), "backend", lt->t->ops->name, "queued", n,
                           NULL);
            }
        }
        if (lt->t->healthy)
            drain(d, lt, KHALAD_FLUSH_BATCHES_PER_TICK);
        (void)khala__wq_sync(lt->wq); /* removals, and the periodic fsync */
        if (lt->t->ops->tick)
            lt->t->ops->tick(lt->t, now);
        if (lt->t->ops->poll) { /* asynchronous reads: their timeouts, and the descriptor */
            lt->t->ops->poll(lt->t);
            tier_rewatch(d, lt, lt->t->ops->poll_fd(lt->t));
        }
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
            if (khala__store_queued_get(d, keys[off + i].ptr, keys[off + i].len, &v) == 0) {
                warmed += khala__store_promote(d, keys[off + i].ptr, keys[off + i].len, &v) == 0;
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
                khala__store_level_failed(d, lt, rc);
                continue;
            }
            for (size_t j = 0; j < k; j++) {
                if (rcs[j] == 0) {
                    (void)khala__store_promote_below(d, want[j].ptr, want[j].len, &vals[j],
                                                     lt->t->level);
                    warmed += khala__store_promote(d, want[j].ptr, want[j].len, &vals[j]) == 0;
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
        khala__store_level_failed(d, lt, rc);
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
                khala__store_level_failed(d, lt, rc);
                break;
            }
            for (size_t j = 0; j < m; j++) {
                if (rcs[j] == 0 && (int)vals[j].type == type)
                    *warmed += khala__store_promote(d, s->keys[off + j].ptr, s->keys[off + j].len,
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
        khala__store_level_failed(d, lt, rc);
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

size_t khala__tiers_stats(khalad_t *d, int i, khala_kv_t *kv, size_t max) {
    size_t n = 0;
    if (i < 0 || i >= d->ntiers || max < KHALAD_TIERS_STATS_MAX)
        return 0;
    khalad_tier_t *lt = &d->tiers[i];
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
    if (ts.archive_items != UINT64_MAX && lt->t->ops->archive_get) {
        kv[n++] = KV_U("archive_items", ts.archive_items);
        kv[n++] = KV_U("archive_bytes", ts.archive_bytes);
    }
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
    kv[n++] = KV_U("invalidate_steps", lt->invalidate_steps);
    if (i > 0) {
        kv[n++] = KV_U("filled_above", d->promotions_below); /* hits here copied into L2 */
        if (lt->t->ops->get_start) {
            kv[n++] = KV_U("async_reads", d->async_reads);
            kv[n++] = KV_U("async_hits", d->async_hits);
            kv[n++] = KV_U("async_pending", d->async_reads_pending);
        }
        return n;
    }
    kv[n++] = KV_U("promotions", d->promotions);
    kv[n++] = KV_U("warmed", d->warmed);
    kv[n++] = KV_U("invalidations_received", d->inval_received);
    kv[n++] = KV_U("coherence_flushes", d->coherence_flushes);
    kv[n++] = KV_U("publish_errors", d->publish_errors);
    kv[n++] = KV_U("subscribed", d->coh ? (uint64_t)khala__coherence_subscribed(d->coh) : 0);
    return n;
}
