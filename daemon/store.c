/*
 * khalad's store (daemon/store.h): every write at every level goes through here.
 *
 * HOW IT WORKS
 *
 * A write is one operation (put, delete, invalidation) applied to each level in turn, L1 by
 * the writer API (lib/l1_table.h), the levels below through the tier seam (daemon/tier.h) and
 * their write queues (daemon/writeq.c). For the levels below there is ONE rule, apply_or_queue():
 *
 *   apply    the level is healthy and nothing is queued for it: the driver is called now. A
 *            KHALA_ETIER marks the level down (daemon/tiers.c) and falls through to "queue".
 *   queue    the level is down, or writes are queued for it (a write never overtakes them), or
 *            the write is write-behind: the write is queued, drained later by the flusher.
 *
 * and ONE admission check, admit(), made before anything is written: every level that is going
 * to queue has room for the write, else the caller hears KHALA_EQUEUE and nothing changed
 * (back-pressure, never a silent drop). Only a level with a journal (Redis's) ever queues: the
 * queue of a level without one (the local disk) would be in khalad's memory only, and a write
 * acknowledged from it is lost by a SIGKILL; such a level that is down or fails a write refuses
 * it with KHALA_ETIER instead (room()).
 *
 * A put, in order (the numbers are used in the code):
 *
 *   0. refuse what no level would take (a value over [l1] max_value_bytes); compare-and-set;
 *      the placeholder rule for fills.
 *   1. admit().
 *   2. drop the L1 copy, when a level below is written before L1 (see "Crash ordering").
 *   3. write-through levels: apply_or_queue().
 *   4. L1 (or, when the type does not live in L1 or L1 refused, no L1 copy at all).
 *   5. write-behind levels: queue.
 *   6. publish to other hosts (not for fills).
 *
 * Crash ordering. khalad may die (SIGKILL, OOM) between any two steps, and the next khalad
 * adopts the L1 segment as it was. The rule: after any crash, no level serves a value older
 * than a lower level's. Writing L2 before L1 alone breaks it (killed between 3 and 4, the
 * adopted L1 serves the old value while L2 holds the new one), so step 2 removes the old L1
 * copy first: killed after 2, L1 misses and the read goes to L2, whichever of old or new it
 * holds. Write-behind writes L1 first and the journal after: killed between 4 and 5, L1 holds
 * a value newer than L2's, never older. Deletes and invalidations empty L1 first for the same
 * reason. The alternative, reconciling the adopted L1 against L2 and the journal at start,
 * costs a scan of L2 at every restart and still needs the journal of a write-through level,
 * which has none. KHALAD_TEST_CRASH_AT=<step> (tests only) makes khalad raise SIGKILL at a
 * named step, so that tests/integration/test_khalad.c can kill it there.
 *
 * Versions come from khala__store_version(): the wall clock in ms shifted left by 20 bits, and
 * strictly increasing here, so versions from different hosts order writes by time and every
 * level keeps the newest (tier.h's rule). One TTL rule, khala__store_ttl(), serves puts,
 * touches and queued writes.
 *
 * Why a module of its own rather than tiers.c grown: tiers.c was "the levels below L1" and
 * wrote L1 too, and handlers.c wrote L1 directly for touch with its own TTL rule. Putting every
 * write in one file makes the order of the steps, the crash ordering and the queueing rule one
 * piece of code that tests/test_store.c drives through a fake driver. Reads below L1, marking a
 * level down and publishing live here too, because writes need them (compare-and-set reads the
 * current version; a failed write marks its level down; every write is published): with them
 * here, the store calls nothing of tiers.c, and tiers.c (the levels' lifecycle) calls the store,
 * so the modules have no circle.
 */
#include "store.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "deadline.h"
#include "errbuf.h"
#include "khala/error.h"
#include "khalad.h"
#include "relationships.h"

/* The message a reply will carry (d->errmsg). */
#define set_msg(d, ...) khala__errbuf_set((d)->errmsg, sizeof((d)->errmsg), __VA_ARGS__)

/* Tests only: die here when KHALAD_TEST_CRASH_AT names this step. */
static void crash_point(const khalad_t *d, const char *step) {
    if (d->crash_at[0] && strcmp(d->crash_at, step) == 0)
        raise(SIGKILL);
}

void khala__store_init(khalad_t *d) {
    const char *at = getenv("KHALAD_TEST_CRASH_AT");
    snprintf(d->crash_at, sizeof(d->crash_at), "%s", at ? at : "");
    if (!d->rng)
        d->rng = (uint64_t)khala__sys_now_ms() * 0x9E3779B97F4A7C15ull | 1;
}

uint32_t khala__store_type_levels(const khalad_t *d, khala_type_t type) {
    return (unsigned)type < KHALA_CONFIG_NTYPES ? d->cfg.types[type].levels
                                                : KHALA_CONFIG_LEVEL_L1 | KHALA_CONFIG_LEVEL_L2;
}

static int on_level(const khalad_t *d, const khalad_tier_t *lt, khala_type_t type) {
    uint32_t bit = lt->t->level == KHALA_LEVEL_L3 ? KHALA_CONFIG_LEVEL_L3 : KHALA_CONFIG_LEVEL_L2;
    return (khala__store_type_levels(d, type) & bit) != 0;
}

static int in_l1(const khalad_t *d, khala_type_t type) {
    return (khala__store_type_levels(d, type) & KHALA_CONFIG_LEVEL_L1) != 0;
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

int64_t khala__store_ttl(khalad_t *d, int64_t ttl_ms, khala_type_t type, int level) {
    if (ttl_ms > 0)
        return ttl_ms;
    return jitter(d, (int64_t)khala__config_type_ttl(&d->cfg, (int)type, level) * 1000);
}

uint64_t khala__store_version(khalad_t *d) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    uint64_t v = ms << 20;
    if (v <= d->last_version)
        v = d->last_version + 1;
    d->last_version = v;
    return v;
}

uint64_t khala__store_current_version(khalad_t *d, const void *key, size_t klen) {
    const khala_item_t *it;
    if (khala__l1_find(d->l1, key, klen, &it) == 0)
        return it->version;
    khala_tier_value_t v;
    khala_level_t lvl;
    if (khala__store_get(d, key, klen, &v, &lvl, NULL) != 0)
        return 0;
    uint64_t ver = v.version;
    khala__tier_value_free(&v);
    return ver;
}

/* Levels below L1: failures, reads, publishing ------------------------------------------------- */

const char *khala__store_level_name(const khalad_tier_t *lt) {
    return lt->t->level == KHALA_LEVEL_L3 ? "L3" : "L2";
}

void khala__store_level_failed(khalad_t *d, khalad_tier_t *lt, int rc) {
    if (rc != KHALA_ETIER)
        return;
    if (lt->t->healthy) {
        lt->t->healthy = 0;
        lt->outages++;
        /* Invalidations it was running stay queued (journaled) and reads skip it now: their
         * callers hear success, as for any write queued while a level is down. */
        khala__invwait_done(d->invwait, (int)(lt - d->tiers), UINT64_MAX, 0);
        lt->next_health_ms = khala__sys_now_ms() + KHALAD_HEALTH_EVERY_MS;
        khala__log("warn",
                   lt->journaled ? "a level is down; reads skip it and writes queue"
                                 : "a level is down; reads skip it and writes are refused",
                   "tier", khala__store_level_name(lt), "backend", lt->t->ops->name, "error",
                   lt->t->err, NULL);
    }
    (void)d;
}

void khala__store_publish(khalad_t *d, khala_inv_by_t by, const void *key, size_t klen, int type,
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

/* What another khalad changed: drop it here. Loads in flight lose their right to be cached. */
/* Reads -------------------------------------------------------------------------------------- */

int khala__store_superseded(const khalad_t *d, const void *key, size_t klen, int type,
                            uint64_t version) {
    for (int i = 0; i < d->ntiers; i++)
        if (khala__wq_superseded(d->tiers[i].wq, key, klen, type, version))
            return 1;
    return 0;
}

/* A queued write of key, looked for in every level's queue (the first level's first). */
int khala__store_queued_get(khalad_t *d, const void *key, size_t klen, khala_tier_value_t *out) {
    for (int i = 0; i < d->ntiers; i++) {
        khala_wq_op_t *op = khala__wq_find(d->tiers[i].wq, key, klen);
        if (!op)
            continue;
        if (op->kind == KHALA_WQ_DEL)
            return KHALA_ENOTFOUND;
        /* A put queued before an invalidation that covers it is gone. */
        if (khala__store_superseded(d, key, klen, op->type, op->version))
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

int khala__store_get(khalad_t *d, const void *key, size_t klen, khala_tier_value_t *out,
                     khala_level_t *lvl, khalad_tier_t **async_at) {
    memset(out, 0, sizeof(*out));
    if (async_at)
        *async_at = NULL;
    int rc = khala__store_queued_get(d, key, klen, out);
    if (rc <= 0) {
        if (rc == 0) { /* the level whose queue holds it */
            *lvl = d->tiers[0].t->level;
            for (int i = 0; i < d->ntiers; i++)
                if (khala__wq_find(d->tiers[i].wq, key, klen)) {
                    *lvl = d->tiers[i].t->level;
                    break;
                }
        }
        return rc == 0 ? 0 : KHALA_ENOTFOUND;
    }
    for (int i = 0; i < d->ntiers; i++) {
        khalad_tier_t *lt = &d->tiers[i];
        if (!lt->t->healthy)
            continue;
        if (async_at && lt->t->ops->get_start) {
            *async_at = lt;
            return KHALA_ENOTFOUND;
        }
        rc = lt->t->ops->get(lt->t, key, klen, out);
        if (rc == 0 && khala__store_superseded(d, key, klen, (int)out->type, out->version)) {
            /* The level still holds a value an invalidation in progress covers: a miss. */
            khala__tier_value_free(out);
            memset(out, 0, sizeof(*out));
            continue;
        }
        if (rc == 0) {
            *lvl = lt->t->level;
            return 0;
        }
        if (rc != KHALA_ENOTFOUND)
            khala__store_level_failed(d, lt, rc);
    }
    return KHALA_ENOTFOUND;
}

/* Apply or queue ----------------------------------------------------------------------------- */

/* One write to a level below L1. */
typedef struct op {
    khala_wq_kind_t kind; /* KHALA_WQ_PUT, KHALA_WQ_DEL or KHALA_WQ_INVALIDATE */
    const void *key;      /* the key, or the prefix of an invalidation */
    size_t klen;
    const void *val; /* puts only */
    size_t vlen;
    uint64_t version;
    int64_t ttl_ms; /* relative, 0 = no expiry */
    int type;       /* the item's type; for an invalidation, -1 = any */
} op_t;

static const char *op_what(const op_t *op) {
    return op->kind == KHALA_WQ_PUT   ? "write"
           : op->kind == KHALA_WQ_DEL ? "delete"
                                      : "invalidation";
}

/* Does op go to lt's queue rather than to the level now? write_behind: the op's mode. An
 * invalidation of a level whose removal is a scan of the whole server (the driver has
 * invalidate_step) always does, when the queue is journaled: the flusher runs it step by step
 * from the tick, so that khalad's loop never stalls on it (issue 10, bug 9), and the journal
 * keeps it across a crash. Until it has drained, reads treat what it covers as gone
 * (khala__store_superseded), and later writes queue behind it, so it never removes them. */
static int must_queue(const khalad_tier_t *lt, const op_t *op, int write_behind) {
    if (op->kind == KHALA_WQ_INVALIDATE && lt->journaled && lt->t->ops->invalidate_step)
        return 1;
    return write_behind || !lt->t->healthy || khala__wq_head(lt->wq) != NULL;
}

/* Room in lt's queue for op, else KHALA_EQUEUE with the message. A level without a journal
 * (the local disk) has no room at all: its queue is in khalad's memory only, and a write
 * acknowledged from there would be lost by a SIGKILL (chaos_check found it with the disk full),
 * so such a write is refused with KHALA_ETIER, the level's own error in the message. */
static int room(khalad_t *d, khalad_tier_t *lt, const op_t *op) {
    if (!lt->journaled) {
        lt->refused++;
        set_msg(d, "%s (%s) cannot take the %s now: %s; nothing was written, retry later",
                khala__store_level_name(lt), lt->t->ops->name, op_what(op),
                lt->t->err[0] ? lt->t->err : "it is down");
        return KHALA_ETIER;
    }
    if (khala__wq_room(lt->wq, op->kind == KHALA_WQ_INVALIDATE ? NULL : op->key, op->klen,
                       op->vlen))
        return 0;
    khala_wq_stats_t ws;
    khala__wq_stats(lt->wq, &ws);
    lt->refused++;
    set_msg(d,
            "%s (%s) is %s and its write queue is full (%" PRIu64
            " writes, [l2] queue_max %u); retry later",
            khala__store_level_name(lt), lt->t->ops->name, lt->t->healthy ? "behind" : "down",
            ws.len, d->cfg.l2.queue_max);
    return KHALA_EQUEUE;
}

/* Push op onto lt's queue. */
static int enqueue(khalad_t *d, khalad_tier_t *lt, const op_t *op) {
    int rc;
    if (op->kind == KHALA_WQ_PUT)
        rc = khala__wq_put(lt->wq, op->key, op->klen, op->val, op->vlen, op->version,
                           khala__deadline_of(khala__sys_now_ms(), op->ttl_ms), op->type);
    else if (op->kind == KHALA_WQ_DEL)
        rc = khala__wq_del(lt->wq, op->key, op->klen);
    else
        rc = khala__wq_invalidate_at(lt->wq, op->key, op->klen, op->type, op->version);
    if (rc != 0) {
        if (rc == KHALA_EQUEUE)
            return room(d, lt, op);
        set_msg(d,
                "%s (%s) is %s and its write %s cannot take the %s: %s; nothing was written, retry "
                "later",
                khala__store_level_name(lt), lt->t->ops->name, lt->t->healthy ? "behind" : "down",
                lt->journaled ? "journal" : "queue", op_what(op), khala_strerror(rc));
        return rc;
    }
    lt->queued++;
    return 0;
}

/* What apply_or_queue() did, beside 0 = applied. */
#define QUEUED 1

/*
 * The one rule for a write to a level below L1: apply it now, or queue it (see the top
 * comment). Returns 0 (applied), QUEUED, KHALA_ENOTFOUND (a delete of what the level does not
 * hold), or the level's error (KHALA_EVERSION, KHALA_EQUEUE...) with the message.
 */
static int apply_or_queue(khalad_t *d, khalad_tier_t *lt, const op_t *op, int write_behind) {
    if (!must_queue(lt, op, write_behind)) {
        int rc;
        if (op->kind == KHALA_WQ_PUT) {
            khala_tier_value_t v = {(void *)op->val, op->vlen, op->version, op->ttl_ms,
                                    (khala_type_t)op->type};
            rc = lt->t->ops->put(lt->t, op->key, op->klen, &v);
        } else if (op->kind == KHALA_WQ_DEL) {
            rc = lt->t->ops->del(lt->t, op->key, op->klen);
        } else {
            rc = lt->t->ops->invalidate(lt->t, op->key, op->klen, op->type, NULL);
        }
        if (rc == 0 || (rc == KHALA_ENOTFOUND && op->kind == KHALA_WQ_DEL)) {
            if (op->kind == KHALA_WQ_PUT)
                lt->writes++;
            return rc;
        }
        khala__store_level_failed(d, lt, rc);
        if (rc == KHALA_ETIER && !lt->journaled)
            return room(d, lt, op);
        if (rc != KHALA_ETIER) {
            lt->write_errors++;
            if (rc == KHALA_EVERSION)
                set_msg(d, "%s (%s) holds a newer version of this key (written elsewhere)",
                        khala__store_level_name(lt), lt->t->ops->name);
            else
                set_msg(d, "%s (%s): %s", khala__store_level_name(lt), lt->t->ops->name,
                        lt->t->err[0] ? lt->t->err : khala_strerror(rc));
            return rc;
        }
    }
    int rc = enqueue(d, lt, op);
    return rc == 0 ? QUEUED : rc;
}

/* Step 1: every level op will be queued on has room for it. write_behind[i]: level i's mode. */
static int admit(khalad_t *d, const op_t *op, const int *write_behind) {
    for (int i = 0; i < d->ntiers; i++) {
        khalad_tier_t *lt = &d->tiers[i];
        if (op->kind == KHALA_WQ_PUT && !on_level(d, lt, (khala_type_t)op->type))
            continue;
        if (must_queue(lt, op, write_behind[i])) {
            int rc = room(d, lt, op);
            if (rc != 0)
                return rc;
        }
    }
    return 0;
}

/* Writes ------------------------------------------------------------------------------------- */

int khala__store_put(khalad_t *d, const void *key, size_t klen, const void *val, size_t vlen,
                     int64_t ttl_ms, khala_type_t type, unsigned flags, uint64_t expect,
                     uint64_t *version) {
    /* 0. What no level would take is refused before any level is written ([l1] max_value_bytes
     * is the cache's limit, and the disk store's). */
    uint32_t max_value = khala__l1_seg(d->l1)->max_value;
    if (vlen > max_value) {
        set_msg(d, "value is %zu bytes, max %u ([l1] max_value_bytes)", vlen, max_value);
        return KHALA_ETOOBIG;
    }
    if (flags & KHALA_STORE_CAS) {
        uint64_t cur = khala__store_current_version(d, key, klen);
        if (cur != expect) {
            set_msg(
                d, "version conflict: the key is at version %" PRIu64 ", the put expected %" PRIu64,
                cur, expect);
            return KHALA_EVERSION;
        }
    }
    if ((flags & KHALA_STORE_FILL) && khala__flight_invalidated(d->flight, key, klen)) {
        d->fills_dropped++;
        if (version)
            *version = 0;
        return 0;
    }
    /* Relationship items linked to this key go first, at every level (daemon/relationships.c);
     * a fill changes nothing, so it cascades nothing. */
    int crc = (flags & KHALA_STORE_FILL) ? 0 : khala__rel_cascade_key(d, key, klen);
    if (crc != 0)
        return crc;
    khala_config_write_mode_t mode = khala__config_type_write_mode(&d->cfg, (int)type);
    op_t op = {KHALA_WQ_PUT,
               key,
               klen,
               val,
               vlen,
               khala__store_version(d),
               khala__store_ttl(d, ttl_ms, type, 2),
               (int)type};
    /* Write-behind needs the journal: a level without one (the local disk, whose own commit
     * costs what a journal's would) is written through. */
    int behind[KHALAD_TIERS_MAX] = {0}, before_l1 = 0;
    for (int i = 0; i < d->ntiers; i++) {
        behind[i] = mode == KHALA_CONFIG_WRITE_BEHIND && d->tiers[i].journaled;
        before_l1 |= on_level(d, &d->tiers[i], type) && !behind[i];
    }
    /* 1. */
    int rc = admit(d, &op, behind);
    if (rc != 0)
        return rc;
    /* 2. Crash ordering: no older L1 copy may outlive a crash once a level below is newer. */
    if (before_l1) {
        (void)khala__l1_delete(d->l1, key, klen);
        crash_point(d, "after_l1_drop");
    }
    /* Each level its own TTL (the type's l2_ttl_seconds, l3_ttl_seconds), unless the caller
     * gave one. */
    op_t at[KHALAD_TIERS_MAX];
    for (int i = 0; i < d->ntiers; i++) {
        at[i] = op;
        if (d->tiers[i].t->level == KHALA_LEVEL_L3)
            at[i].ttl_ms = khala__store_ttl(d, ttl_ms, type, 3);
    }
    /* 3. */
    for (int i = 0; i < d->ntiers; i++) {
        if (!on_level(d, &d->tiers[i], type) || behind[i])
            continue;
        rc = apply_or_queue(d, &d->tiers[i], &at[i], 0);
        if (rc < 0)
            return rc;
    }
    crash_point(d, "after_l2");
    /* 4. A failure leaves no older copy behind: the levels below have the new one (the
     * write-behind ones get it in step 5; the caller hears of L1's refusal). */
    int l1rc = 0;
    if (in_l1(d, type)) {
        l1rc = khala__l1_put_v(d->l1, key, klen, val, vlen, khala__store_ttl(d, ttl_ms, type, 1),
                               (uint8_t)type, op.version, NULL);
        if (l1rc != 0)
            set_msg(d, "%s", khala__l1_errmsg(d->l1));
    }
    if (l1rc != 0 || !in_l1(d, type))
        (void)khala__l1_delete(d->l1, key, klen);
    crash_point(d, "after_l1");
    /* 5. Room was checked in step 1. */
    for (int i = 0; i < d->ntiers; i++) {
        if (!on_level(d, &d->tiers[i], type) || !behind[i])
            continue;
        rc = apply_or_queue(d, &d->tiers[i], &at[i], 1);
        if (rc < 0)
            return rc;
    }
    /* 6. The levels below hold the new value even when L1 refused it: other hosts must hear. */
    if (!(flags & KHALA_STORE_FILL))
        khala__store_publish(d, KHALA_INV_KEY, key, klen, -1, op.version);
    if (l1rc != 0)
        return l1rc;
    if (version)
        *version = op.version;
    return 0;
}

int khala__store_touch(khalad_t *d, const void *key, size_t klen, int64_t ttl_ms,
                       uint64_t *version) {
    const khala_item_t *it;
    int rc = khala__l1_find(d->l1, key, klen, &it);
    if (rc != 0) {
        set_msg(d, "%s", rc == KHALA_ENOTFOUND ? "the key is not in L1" : khala__l1_errmsg(d->l1));
        return rc;
    }
    /* Items are immutable: a touch writes the same value again with a fresh deadline. The
     * value is copied first, since the put may evict or free the old item. */
    khala_type_t type = (khala_type_t)it->type;
    uint64_t it_version = it->version;
    size_t vlen = it->value_len;
    void *copy = malloc(vlen ? vlen : 1);
    if (!copy) {
        set_msg(d, "out of memory copying a value of %zu bytes", vlen);
        return -ENOMEM;
    }
    memcpy(copy, khala__item_value(it), vlen);
    /* Same value, same version: a touch changes only when the L1 copy expires. */
    rc = khala__l1_put_v(d->l1, key, klen, copy, vlen, khala__store_ttl(d, ttl_ms, type, 1),
                         (uint8_t)type, it_version, version);
    free(copy);
    if (rc != 0)
        set_msg(d, "%s", khala__l1_errmsg(d->l1));
    return rc;
}

int khala__store_del(khalad_t *d, const void *key, size_t klen, int *in_l1_out) {
    /* Relationship items linked to the key go first (daemon/relationships.c), then the key,
     * then its own links. */
    int rc = khala__rel_cascade_key(d, key, klen);
    if (rc != 0)
        return rc;
    rc = khala__store_del_key(d, key, klen, in_l1_out);
    if (rc == 0 || rc == KHALA_ENOTFOUND)
        khala__rel_gone(d, key, klen);
    return rc;
}

int khala__store_del_key(khalad_t *d, const void *key, size_t klen, int *in_l1_out) {
    op_t op = {KHALA_WQ_DEL, key, klen, NULL, 0, 0, 0, -1};
    int behind[KHALAD_TIERS_MAX] = {0};
    int rc = admit(d, &op, behind);
    if (rc != 0)
        return rc;
    khala__flight_invalidate(d->flight, key, klen, 0);
    int found = khala__l1_delete(d->l1, key, klen) == 0;
    if (in_l1_out)
        *in_l1_out = found;
    for (int i = 0; i < d->ntiers; i++) {
        rc = apply_or_queue(d, &d->tiers[i], &op, 0);
        if (rc < 0 && rc != KHALA_ENOTFOUND)
            return rc;
        /* A queued delete: the level may hold the key, which cannot be told until it is back. */
        found |= rc == 0 || rc == QUEUED;
    }
    khala__store_publish(d, KHALA_INV_KEY, key, klen, -1, 0);
    if (!found) {
        set_msg(d, "no level holds this key");
        return KHALA_ENOTFOUND;
    }
    return 0;
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

static uint64_t l1_remove(khalad_t *d, const void *prefix, size_t plen, int type) {
    match_t mt = {prefix, plen, type};
    uint64_t cursor = 0, removed = 0;
    do
        removed += khala__l1_scan(d->l1, &cursor, 65536, match_item, &mt);
    while (cursor != 0);
    return removed;
}

int khala__store_invalidate(khalad_t *d, const void *prefix, size_t plen, int type,
                            uint64_t *removed) {
    return khala__store_invalidate_steps(d, prefix, plen, type, removed, NULL, NULL);
}

int khala__store_invalidate_steps(khalad_t *d, const void *prefix, size_t plen, int type,
                                  uint64_t *removed, uint64_t *version, unsigned *levels) {
    if (levels)
        *levels = 0;
    /* Its version: what every level holds of the prefix now is older (superseded). */
    op_t op = {
        KHALA_WQ_INVALIDATE, plen ? prefix : "", plen, NULL, 0, khala__store_version(d), 0, type};
    int behind[KHALAD_TIERS_MAX] = {0};
    int rc = admit(d, &op, behind);
    if (rc != 0)
        return rc;
    khala__flight_invalidate(d->flight, op.key, plen, 1);
    uint64_t n = l1_remove(d, prefix, plen, type);
    for (int i = 0; i < d->ntiers; i++) {
        /* Queued on a level that is up: it runs in steps from the tick (must_queue). */
        int up = d->tiers[i].t->healthy;
        rc = apply_or_queue(d, &d->tiers[i], &op, 0);
        if (rc < 0)
            return rc;
        if (rc == QUEUED && up && levels && d->tiers[i].journaled &&
            d->tiers[i].t->ops->invalidate_step)
            *levels |= 1u << i;
    }
    if (version)
        *version = op.version;
    /* What was linked to the removed keys goes too (daemon/relationships.c). */
    int crc = khala__rel_invalidated(d, prefix, plen, type);
    if (plen)
        khala__store_publish(d, KHALA_INV_PREFIX, prefix, plen, type, 0);
    else
        khala__store_publish(d, type >= 0 ? KHALA_INV_TYPE : KHALA_INV_ALL, NULL, 0, type, 0);
    if (removed)
        *removed = n;
    return crc;
}

int khala__store_promote(khalad_t *d, const void *key, size_t klen, const khala_tier_value_t *v) {
    if (!in_l1(d, v->type))
        return KHALA_ENOTFOUND; /* this type does not live in L1 */
    if (khala__store_superseded(d, key, klen, (int)v->type, v->version))
        return KHALA_ENOTFOUND; /* an invalidation in progress covers it (warming reads L2) */
    int64_t ttl = (int64_t)khala__config_type_ttl(&d->cfg, (int)v->type, 1) * 1000;
    if (v->ttl_ms > 0 && (ttl == 0 || v->ttl_ms < ttl))
        ttl = v->ttl_ms;
    int rc =
        khala__l1_put_v(d->l1, key, klen, v->data, v->len, ttl, (uint8_t)v->type, v->version, NULL);
    if (rc == 0)
        d->promotions++;
    return rc;
}

int khala__store_promote_below(khalad_t *d, const void *key, size_t klen,
                               const khala_tier_value_t *v, khala_level_t from) {
    int filled = 0;
    for (int i = 0; i < d->ntiers; i++) {
        khalad_tier_t *lt = &d->tiers[i];
        if (lt->t->level >= from)
            break;
        if (!on_level(d, lt, v->type) || !lt->t->healthy || khala__wq_head(lt->wq))
            continue;
        if (khala__store_superseded(d, key, klen, (int)v->type, v->version))
            return filled;
        khala_tier_value_t w = *v;
        int64_t ttl = (int64_t)khala__config_type_ttl(&d->cfg, (int)v->type,
                                                      lt->t->level == KHALA_LEVEL_L3 ? 3 : 2) *
                      1000;
        if (v->ttl_ms > 0 && (ttl == 0 || v->ttl_ms < ttl))
            ttl = v->ttl_ms;
        w.ttl_ms = ttl;
        int rc = lt->t->ops->put(lt->t, key, klen, &w);
        if (rc == 0) {
            filled++;
            d->promotions_below++;
        } else if (rc == KHALA_ETIER) {
            khala__store_level_failed(d, lt, rc);
        }
    }
    return filled;
}

uint64_t khala__store_forget(khalad_t *d, int by_key, const void *key, size_t klen, int type) {
    khala__flight_invalidate(d->flight, klen ? key : "", klen, !by_key);
    if (by_key)
        return khala__l1_delete(d->l1, key, klen) == 0;
    return l1_remove(d, key, klen, type);
}
