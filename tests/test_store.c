/*
 * khalad's store (daemon/store.c) through the tier seam, with a fake level below L1
 * (tests/fake_tier.c) and a real L1 segment: the order of the steps of a write, write-through
 * and write-behind, the queue when a level is down or full, recovery, versions, compare-and-set
 * and the placeholder rule for fills. Links khala_daemon_core alone (no khalad.c, no
 * handlers.c).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_tier.h"
#include "khala/error.h"
#include "khalad.h"
#include "sys.h"
#include "testutil.h"

static khalad_t *d;
static fake_tier_t *fk;
static char g_name[64];

/* A store over a fresh L1 and one fake L2 whose queue holds queue_max writes. */
static void open_store(size_t queue_max, khala_config_write_mode_t mode, int journaled) {
    d = calloc(1, sizeof(*d));
    cr_assert_not_null(d);
    snprintf(g_name, sizeof(g_name), "%s", tu_name("store"));
    cr_assert_eq(khala__config_defaults(&d->cfg, g_name), 0);
    d->cfg.policies.write_mode = mode;
    d->cfg.policies.ttl_jitter_pct = 0;
    d->l1 = tu_writer(g_name, 1024, 1u << 20);
    cr_assert_eq(khala__flight_open(&d->flight, 3000, 1024), 0);
    d->coh_fd = -1;
    khala__store_init(d);
    fk = fake_tier_new(KHALA_LEVEL_L2);
    cr_assert_not_null(fk);
    d->tiers[0].t = &fk->tier;
    cr_assert_eq(khala__wq_new(queue_max, 1u << 20, &d->tiers[0].wq), 0);
    d->tiers[0].journaled = journaled;
    d->ntiers = 1;
}

/* A level with a journal (like Redis's): it queues while down. */
static void setup(void) {
    open_store(64, KHALA_CONFIG_WRITE_THROUGH, 1);
}

static void teardown(void) {
    if (!d)
        return;
    fk->down = 0;
    fk->latency_ms = 0;
    khala__tiers_close(d);
    khala__flight_close(d->flight);
    khala__l1_close(d->l1, 1);
    free(d);
    d = NULL;
}

TestSuite(store, .init = setup, .fini = teardown, .timeout = 30);

/* Helpers ----------------------------------------------------------------------------------- */

static int put(const char *key, const char *val, uint64_t *ver) {
    return khala__store_put(d, key, strlen(key), val, strlen(val), 0, KHALA_TYPE_MEMORY_ENTITY, 0,
                            0, ver);
}

static int put_cas(const char *key, const char *val, uint64_t expect, uint64_t *ver) {
    return khala__store_put(d, key, strlen(key), val, strlen(val), 0, KHALA_TYPE_MEMORY_ENTITY,
                            KHALA_STORE_CAS, expect, ver);
}

/* The L1 copy of key: 1 with its version (and value), else 0. */
static int l1_has(const char *key, uint64_t *ver, char *val, size_t cap) {
    const khala_item_t *it;
    if (khala__l1_find(d->l1, key, strlen(key), &it) != 0)
        return 0;
    if (ver)
        *ver = it->version;
    if (val) {
        size_t n = it->value_len < cap - 1 ? it->value_len : cap - 1;
        memcpy(val, khala__item_value(it), n);
        val[n] = '\0';
    }
    return 1;
}

static uint64_t queued(void) {
    khala_wq_stats_t ws;
    khala__wq_stats(d->tiers[0].wq, &ws);
    return ws.len;
}

/* Ask the level's health now (not after the back-off) and run one tick. */
static void tick_now(void) {
    d->tiers[0].next_health_ms = 0;
    khala__tiers_tick(d);
}

/* What L1 held of the key each time the fake was about to store it. */
static struct {
    int calls, l1_held;
    uint64_t l1_version;
} seen;

static void look_at_l1(void *arg, const void *key, size_t klen, uint64_t version) {
    (void)arg;
    (void)version;
    const khala_item_t *it;
    seen.calls++;
    if (khala__l1_find(d->l1, key, klen, &it) == 0) {
        seen.l1_held++;
        seen.l1_version = it->version;
    }
}

/* Write-through --------------------------------------------------------------------------- */

Test(store, write_through_stores_the_same_version_at_every_level) {
    uint64_t ver = 0, v1 = 0, v2 = 0;
    char val[32];
    cr_assert_eq(put("k", "one", &ver), 0);
    cr_assert_neq(ver, 0);
    cr_assert(fake_tier_find(fk, "k", &v2, val, sizeof(val)));
    cr_assert_str_eq(val, "one");
    cr_assert(l1_has("k", &v1, val, sizeof(val)));
    cr_assert_str_eq(val, "one");
    cr_assert_eq(v1, ver);
    cr_assert_eq(v2, ver);
    cr_assert_eq(queued(), 0);
}

/* Crash ordering: while the level below is written, L1 holds no older copy of the key (a
 * crash there must not leave L1 serving the old value over the level's new one). */
Test(store, write_through_drops_the_old_l1_copy_before_writing_below) {
    uint64_t old = 0, ver = 0;
    cr_assert_eq(put("k", "old", &old), 0);
    cr_assert(l1_has("k", NULL, NULL, 0));
    fk->before_put = look_at_l1;
    cr_assert_eq(put("k", "new", &ver), 0);
    cr_assert_eq(seen.calls, 1);
    cr_assert_eq(seen.l1_held, 0, "L1 still held version %llu while L2 took %llu",
                 (unsigned long long)seen.l1_version, (unsigned long long)ver);
    char val[16];
    cr_assert(l1_has("k", NULL, val, sizeof(val)));
    cr_assert_str_eq(val, "new");
}

Test(store, a_level_refusing_a_stale_write_leaves_l1_without_a_copy) {
    /* Another host wrote a newer version to the shared level. */
    uint64_t ver = 0;
    cr_assert_eq(put("k", "mine", &ver), 0);
    fake_tier_seed(fk, "k", "theirs", UINT64_MAX - 1);
    cr_assert_eq(put("k", "mine again", NULL), KHALA_EVERSION);
    cr_assert_not(l1_has("k", NULL, NULL, 0), "L1 must not keep a copy older than L2's");
    cr_assert_neq(strstr(d->errmsg, "newer version"), NULL, "%s", d->errmsg);
}

Test(store, a_failing_level_fails_the_put_with_its_error) {
    fk->fail_n = 1;
    fk->fail_rc = -EIO;
    cr_assert_eq(put("k", "v", NULL), -EIO);
    cr_assert_not(l1_has("k", NULL, NULL, 0));
    cr_assert_eq(queued(), 0, "an error that is not an outage is not queued");
    cr_assert(d->tiers[0].t->healthy, "nor does it mark the level down");
}

/* Write-behind ---------------------------------------------------------------------------- */

Test(store, write_behind_writes_l1_now_and_the_level_in_order_at_the_flush) {
    teardown();
    open_store(64, KHALA_CONFIG_WRITE_BEHIND, 1);
    fk->before_put = look_at_l1;
    uint64_t v[3];
    cr_assert_eq(put("a", "1", &v[0]), 0);
    cr_assert_eq(put("b", "2", &v[1]), 0);
    cr_assert_eq(put("a", "3", &v[2]), 0);
    cr_assert_eq(fk->nlog, 0, "nothing reaches the level before the flush");
    cr_assert(l1_has("a", NULL, NULL, 0) && l1_has("b", NULL, NULL, 0));
    cr_assert_eq(queued(), 2, "the two writes to a are coalesced");
    khala__tiers_tick(d);
    cr_assert_eq(queued(), 0);
    cr_assert_eq(fk->nlog, 2);
    cr_assert_str_eq(fk->log[0].key, "b", "the flush keeps the order of the last writes");
    cr_assert_eq(fk->log[0].version, v[1]);
    cr_assert_str_eq(fk->log[1].key, "a");
    cr_assert_eq(fk->log[1].version, v[2]);
    cr_assert_eq(seen.l1_held, 2, "write-behind: L1 is newer than the level, never older");
}

Test(store, write_behind_is_not_slowed_by_a_slow_level) {
    teardown();
    open_store(64, KHALA_CONFIG_WRITE_BEHIND, 1);
    fk->latency_ms = 200;
    int64_t t0 = khala__sys_now_ms();
    for (int i = 0; i < 5; i++) {
        char key[16];
        snprintf(key, sizeof(key), "k%d", i);
        cr_assert_eq(put(key, "v", NULL), 0);
    }
    cr_assert_lt(khala__sys_now_ms() - t0, 200, "five puts waited for the slow level");
    khala__tiers_tick(d); /* one batch, one round trip */
    cr_assert_eq(fk->nlog, 5);
}

Test(store, write_behind_without_a_journal_is_written_through) {
    teardown();
    open_store(64, KHALA_CONFIG_WRITE_BEHIND, 0);
    cr_assert_eq(put("k", "v", NULL), 0);
    cr_assert_eq(fk->nlog, 1);
    cr_assert_eq(queued(), 0);
}

/* Outages and the queue ---------------------------------------------------------------------- */

Test(store, an_outage_queues_writes_and_recovery_drains_them_in_order) {
    uint64_t v1, v2;
    cr_assert_eq(put("k", "before", &v1), 0);
    fk->down = 1;
    cr_assert_eq(put("k", "during", &v2), 0, "the caller still hears success");
    cr_assert_not(d->tiers[0].t->healthy, "the failure marked the level down");
    cr_assert_eq(put("gone", "x", NULL), 0);
    cr_assert_eq(khala__store_del(d, "gone", 4, NULL), 0);
    cr_assert_eq(queued(), 2, "the put of k, and the delete that replaced the put of gone");
    /* Reads see the queued writes. */
    khala_tier_value_t v;
    khala_level_t lvl;
    cr_assert_eq(khala__store_get(d, "k", 1, &v, &lvl, NULL), 0);
    cr_assert_eq(v.version, v2);
    khala__tier_value_free(&v);
    cr_assert_eq(khala__store_get(d, "gone", 4, &v, &lvl, NULL), KHALA_ENOTFOUND);
    /* Still down: nothing drains. */
    tick_now();
    cr_assert_eq(queued(), 2);
    /* Back: the queue drains, oldest first. */
    fk->down = 0;
    size_t before = fk->nlog;
    tick_now();
    cr_assert(d->tiers[0].t->healthy);
    cr_assert_eq(queued(), 0);
    cr_assert_eq(fk->nlog, before + 2);
    cr_assert_eq(fk->log[before].kind, 'p');
    cr_assert_eq(fk->log[before].version, v2);
    cr_assert_eq(fk->log[before + 1].kind, 'd');
    uint64_t ver;
    char val[16];
    cr_assert(fake_tier_find(fk, "k", &ver, val, sizeof(val)));
    cr_assert_eq(ver, v2);
    cr_assert_str_eq(val, "during");
    cr_assert_not(fake_tier_find(fk, "gone", NULL, NULL, 0));
}

Test(store, writes_queue_behind_a_queue_that_has_not_drained) {
    fk->down = 1;
    cr_assert_eq(put("a", "1", NULL), 0);
    fk->down = 0; /* back, but khalad has not asked yet */
    cr_assert_eq(put("b", "2", NULL), 0);
    cr_assert_eq(fk->nlog, 0, "b must not overtake a");
    cr_assert_eq(queued(), 2);
    tick_now();
    cr_assert_str_eq(fk->log[0].key, "a");
    cr_assert_str_eq(fk->log[1].key, "b");
}

Test(store, a_full_queue_refuses_the_write_and_changes_nothing) {
    teardown();
    open_store(2, KHALA_CONFIG_WRITE_THROUGH, 1);
    uint64_t old;
    cr_assert_eq(put("k", "old", &old), 0);
    fk->down = 1;
    cr_assert_eq(put("a", "1", NULL), 0);
    cr_assert_eq(put("b", "2", NULL), 0);
    cr_assert_eq(put("k", "new", NULL), KHALA_EQUEUE);
    cr_assert_neq(strstr(d->errmsg, "queue is full"), NULL, "%s", d->errmsg);
    uint64_t ver;
    char val[16];
    cr_assert(l1_has("k", &ver, val, sizeof(val)), "L1 keeps the old value");
    cr_assert_str_eq(val, "old");
    cr_assert_eq(ver, old);
    cr_assert_eq(khala__store_del(d, "k", 1, NULL), KHALA_EQUEUE);
    cr_assert(l1_has("k", NULL, NULL, 0), "a refused delete removes nothing");
    cr_assert_eq(khala__store_invalidate(d, "", 0, -1, NULL), KHALA_EQUEUE);
    cr_assert(l1_has("k", NULL, NULL, 0), "a refused invalidation removes nothing");
    cr_assert_eq(d->tiers[0].refused, 3);
}

/* A level without a journal (the local disk) never queues in memory: khalad's SIGKILL would
 * lose what it acknowledged from there (found by tests/chaos/chaos_check.c with the disk full:
 * 2,091 acknowledged writes lost). A failed write and every write while the level is down are
 * refused, with the level's reason, and nothing is queued. */
Test(store, a_level_without_a_journal_refuses_writes_it_cannot_take_and_queues_nothing) {
    teardown();
    open_store(64, KHALA_CONFIG_WRITE_THROUGH, 0);
    uint64_t old;
    cr_assert_eq(put("k", "old", &old), 0);
    fk->down = 1;
    cr_assert_eq(put("k", "new", NULL), KHALA_ETIER, "the failed write was acknowledged");
    cr_assert_neq(strstr(d->errmsg, "nothing was written"), NULL, "%s", d->errmsg);
    cr_assert_neq(strstr(d->errmsg, "fake: down"), NULL, "the level's reason: %s", d->errmsg);
    cr_assert_eq(queued(), 0);
    /* Down now: refused at admission, before any level changes. */
    cr_assert_eq(put("a", "1", NULL), KHALA_ETIER);
    cr_assert_not(l1_has("a", NULL, NULL, 0), "a refused put reached L1");
    cr_assert_eq(khala__store_del(d, "k", 1, NULL), KHALA_ETIER);
    cr_assert_eq(khala__store_invalidate(d, "", 0, -1, NULL), KHALA_ETIER);
    cr_assert_eq(queued(), 0);
    uint64_t v2;
    char val[16];
    cr_assert(fake_tier_find(fk, "k", &v2, val, sizeof(val)), "the level keeps the old value");
    cr_assert_str_eq(val, "old");
    cr_assert_eq(v2, old);
    /* Back: writes are taken again. */
    fk->down = 0;
    tick_now();
    cr_assert_eq(put("k", "new", NULL), 0);
    cr_assert(fake_tier_find(fk, "k", NULL, val, sizeof(val)));
    cr_assert_str_eq(val, "new");
}

Test(store, an_invalidation_during_an_outage_is_queued_and_applied_on_return) {
    cr_assert_eq(put("user:1", "a", NULL), 0);
    cr_assert_eq(put("user:2", "b", NULL), 0);
    cr_assert_eq(put("other", "c", NULL), 0);
    fk->down = 1;
    uint64_t n = 0;
    cr_assert_eq(khala__store_invalidate(d, "user:", 5, -1, &n), 0);
    cr_assert_eq(n, 2, "L1 lost both at once");
    cr_assert_not(l1_has("user:1", NULL, NULL, 0));
    cr_assert(l1_has("other", NULL, NULL, 0));
    cr_assert(fake_tier_find(fk, "user:1", NULL, NULL, 0), "the level is down: still there");
    fk->down = 0;
    tick_now();
    cr_assert_not(fake_tier_find(fk, "user:1", NULL, NULL, 0));
    cr_assert(fake_tier_find(fk, "other", NULL, NULL, 0));
}

/* Versions ------------------------------------------------------------------------------------ */

/* A long random mix of puts, deletes, outages and flushes, in both modes: every level only
 * ever moves a key forward, and once the queue drains every level holds the last value. */
Test(store, versions_never_go_backwards_at_any_level) {
    for (int mode = 0; mode < 2; mode++) {
        teardown();
        open_store(4096, mode ? KHALA_CONFIG_WRITE_BEHIND : KHALA_CONFIG_WRITE_THROUGH, 1);
        uint64_t rng = 0x9E3779B97F4A7C15ull;
        uint64_t last[8] = {0};
        uint64_t l1_seen[8] = {0};
        for (int step = 0; step < 2000; step++) {
            uint64_t r = tu_rand(&rng);
            int k = (int)(r % 8);
            char key[8];
            snprintf(key, sizeof(key), "k%d", k);
            switch ((r >> 8) % 10) {
                case 0:
                    fk->down = !fk->down;
                    break;
                case 1:
                    tick_now();
                    break;
                case 2:
                    if (khala__store_del(d, key, strlen(key), NULL) != KHALA_EQUEUE)
                        last[k] = 0;
                    break;
                default: {
                    uint64_t ver;
                    cr_assert_eq(put(key, "v", &ver), 0);
                    cr_assert_gt(ver, last[k]);
                    last[k] = ver;
                }
            }
            uint64_t v;
            if (l1_has(key, &v, NULL, 0)) {
                cr_assert_geq(v, l1_seen[k], "L1 went back for %s", key);
                l1_seen[k] = v;
            }
        }
        /* The level's own log: per key, each put newer than the one before. */
        uint64_t prev[8] = {0};
        for (size_t i = 0; i < fk->nlog; i++) {
            int k = fk->log[i].key[1] - '0';
            if (fk->log[i].kind == 'p') {
                cr_assert_gt(fk->log[i].version, prev[k], "L2 went back for k%d at write %zu", k,
                             i);
                prev[k] = fk->log[i].version;
            }
        }
        fk->down = 0;
        for (int i = 0; i < 100 && queued(); i++)
            tick_now();
        cr_assert_eq(queued(), 0);
        for (int k = 0; k < 8; k++) {
            char key[8];
            snprintf(key, sizeof(key), "k%d", k);
            uint64_t v2 = 0, v1 = 0;
            int in2 = fake_tier_find(fk, key, &v2, NULL, 0), in1 = l1_has(key, &v1, NULL, 0);
            cr_assert_eq(in2, last[k] != 0, "k%d at L2", k);
            if (last[k]) {
                cr_assert_eq(v2, last[k], "L2 holds the last write of k%d", k);
                if (in1)
                    cr_assert_eq(v1, last[k], "L1 holds the last write of k%d", k);
            } else {
                cr_assert_not(in1, "k%d was deleted last", k);
            }
        }
        cr_assert_eq(fk->stale, 0);
    }
}

/* Compare-and-set ------------------------------------------------------------------------------ */

Test(store, compare_and_set_writes_only_over_the_version_seen) {
    uint64_t v1, v2;
    cr_assert_eq(put_cas("k", "first", 0, &v1), 0, "0: must not exist, and it does not");
    cr_assert_eq(put_cas("k", "again", 0, NULL), KHALA_EVERSION);
    cr_assert_neq(strstr(d->errmsg, "version conflict"), NULL, "%s", d->errmsg);
    cr_assert_eq(put_cas("k", "second", v1, &v2), 0);
    cr_assert_gt(v2, v1);
    cr_assert_eq(put_cas("k", "stale", v1, NULL), KHALA_EVERSION);
    char val[16];
    cr_assert(l1_has("k", NULL, val, sizeof(val)));
    cr_assert_str_eq(val, "second");
    cr_assert(fake_tier_find(fk, "k", NULL, val, sizeof(val)));
    cr_assert_str_eq(val, "second", "a failed compare-and-set writes no level");
}

Test(store, compare_and_set_sees_the_version_below_l1) {
    uint64_t v1;
    cr_assert_eq(put("k", "first", &v1), 0);
    cr_assert_eq(khala__l1_delete(d->l1, "k", 1), 0); /* evicted from L1, still in L2 */
    cr_assert_eq(put_cas("k", "x", 0, NULL), KHALA_EVERSION);
    cr_assert_eq(put_cas("k", "second", v1, NULL), 0);
    /* And in a queue, while the level is down. */
    fk->down = 1;
    uint64_t v3;
    cr_assert_eq(put("k", "third", &v3), 0);
    cr_assert_eq(khala__l1_delete(d->l1, "k", 1), 0);
    cr_assert_eq(khala__store_current_version(d, "k", 1), v3);
}

/* Fills and single-flight ---------------------------------------------------------------------- */

Test(store, a_fill_is_cached_at_every_level) {
    uint64_t ver = 0;
    cr_assert_eq(khala__store_put(d, "k", 1, "loaded", 6, 0, KHALA_TYPE_MEMORY_ENTITY,
                                  KHALA_STORE_FILL, 0, &ver),
                 0);
    cr_assert_neq(ver, 0);
    cr_assert(l1_has("k", NULL, NULL, 0));
    cr_assert(fake_tier_find(fk, "k", NULL, NULL, 0));
    cr_assert_eq(d->fills_dropped, 0);
}

/* The placeholder rule: a key invalidated while its loader ran may be filled with a value read
 * before the invalidation; it is cached nowhere (the waiters still get it from the handler). */
Test(store, an_invalidation_during_a_load_drops_the_fill_at_every_level) {
    static const char *how[] = {"del", "prefix", "forget"};
    for (int i = 0; i < 3; i++) {
        khala_waiter_t leader = {NULL, 1, 0};
        int rc = khala__flight_join(d->flight, "k", 1, &leader, (uint64_t)khala__sys_now_ms());
        cr_assert_eq(rc, KHALA_FLIGHT_LEADER);
        if (i == 0)
            (void)khala__store_del(d, "k", 1, NULL);
        else if (i == 1)
            cr_assert_eq(khala__store_invalidate(d, "k", 1, -1, NULL), 0);
        else
            (void)khala__store_forget(d, 1, "k", 1, -1); /* another host changed it */
        uint64_t ver = 1;
        cr_assert_eq(khala__store_put(d, "k", 1, "stale", 5, 0, KHALA_TYPE_MEMORY_ENTITY,
                                      KHALA_STORE_FILL, 0, &ver),
                     0);
        cr_assert_eq(ver, 0, "%s: the fill was dropped", how[i]);
        cr_assert_not(l1_has("k", NULL, NULL, 0), "%s: not in L1", how[i]);
        cr_assert_not(fake_tier_find(fk, "k", NULL, NULL, 0), "%s: not in L2", how[i]);
        cr_assert_eq(d->fills_dropped, (uint64_t)i + 1);
        (void)khala__flight_finish(d->flight, "k", 1, 0, "stale", 5, NULL, NULL);
    }
}

/* Touch and the TTL rule ----------------------------------------------------------------------- */

Test(store, touch_keeps_the_version_and_follows_the_one_ttl_rule) {
    d->cfg.l1.ttl_seconds = 100;
    d->cfg.policies.ttl_jitter_pct = 20;
    uint64_t ver, tver;
    cr_assert_eq(put("k", "v", &ver), 0);
    int64_t lo = INT64_MAX, hi = 0;
    for (int i = 0; i < 64; i++) {
        cr_assert_eq(khala__store_touch(d, "k", 1, 0, &tver), 0);
        cr_assert_eq(tver, ver, "a touch keeps the version");
        const khala_item_t *it;
        cr_assert_eq(khala__l1_find(d->l1, "k", 1, &it), 0);
        int64_t left = it->expire_ms - khala__sys_now_ms();
        lo = left < lo ? left : lo;
        hi = left > hi ? left : hi;
    }
    cr_assert_geq(lo, 79000, "within -20%%: %lld", (long long)lo);
    cr_assert_leq(hi, 120000, "within +20%%: %lld", (long long)hi);
    cr_assert_gt(hi - lo, 1000, "touches are jittered like puts");
    /* The caller's TTL wins, unjittered. */
    cr_assert_eq(khala__store_touch(d, "k", 1, 5000, NULL), 0);
    const khala_item_t *it;
    cr_assert_eq(khala__l1_find(d->l1, "k", 1, &it), 0);
    cr_assert_leq(it->expire_ms - khala__sys_now_ms(), 5000);
    cr_assert_eq(khala__store_touch(d, "nope", 4, 0, NULL), KHALA_ENOTFOUND);
}

Test(store, an_oversized_value_reaches_no_level) {
    size_t n = (size_t)khala__l1_seg(d->l1)->max_value + 1;
    char *big = calloc(1, n);
    cr_assert_not_null(big);
    cr_assert_eq(khala__store_put(d, "big", 3, big, n, 0, KHALA_TYPE_MEMORY_ENTITY, 0, 0, NULL),
                 KHALA_ETOOBIG);
    free(big);
    cr_assert_eq(fk->calls, 0);
    cr_assert_not(l1_has("big", NULL, NULL, 0));
}

/* The flusher and warming (daemon/tiers.c) --------------------------------------------------- */

/* A level that comes back and fails again while its queue drains is marked down again, and
 * nothing of the queue is lost or reordered: whether the batch that failed was puts or a
 * delete, the next recovery drains the same writes in the same order. */
Test(store, a_level_failing_again_while_draining_keeps_its_queue_in_order) {
    cr_assert_eq(put("c", "1", NULL), 0);
    size_t base = fk->nlog;
    fk->down = 1;
    cr_assert_eq(put("a", "1", NULL), 0);
    cr_assert_eq(put("b", "1", NULL), 0);
    cr_assert_eq(queued(), 2);
    fk->down = 0;
    fk->fail_n = 1; /* the health check passes; the batch of puts fails */
    fk->fail_rc = KHALA_ETIER;
    tick_now();
    cr_assert_not(d->tiers[0].t->healthy, "failing while draining marks the level down again");
    cr_assert_eq(d->tiers[0].outages, 2);
    cr_assert_eq(queued(), 2, "nothing left the queue");
    cr_assert_eq(fk->nlog, base);

    /* Now a delete heads the queue, and it is what fails. */
    tick_now();
    cr_assert_eq(queued(), 0);
    cr_assert_eq(fk->nlog, base + 2);
    fk->down = 1;
    cr_assert_eq(khala__store_del(d, "c", 1, NULL), 0);
    cr_assert_eq(put("d", "1", NULL), 0);
    fk->down = 0;
    fk->fail_n = 1;
    tick_now();
    cr_assert_not(d->tiers[0].t->healthy);
    cr_assert_eq(d->tiers[0].outages, 4);
    cr_assert_eq(queued(), 2);
    cr_assert(fake_tier_find(fk, "c", NULL, NULL, 0), "the delete did not happen");

    tick_now();
    cr_assert(d->tiers[0].t->healthy);
    cr_assert_eq(queued(), 0);
    cr_assert_eq(fk->nlog, base + 4);
    cr_assert_str_eq(fk->log[base].key, "a");
    cr_assert_str_eq(fk->log[base + 1].key, "b");
    cr_assert_eq(fk->log[base + 2].kind, 'd');
    cr_assert_str_eq(fk->log[base + 2].key, "c");
    cr_assert_str_eq(fk->log[base + 3].key, "d");
    cr_assert_not(fake_tier_find(fk, "c", NULL, NULL, 0));
    cr_assert_eq(d->tiers[0].write_errors, 0);
}

/* A queued write the level refuses for good is not retried: one older than what the level holds
 * now (another host wrote a newer version meanwhile) is dropped and the newer value stays; a
 * put or a delete refused for another reason (not an outage) is counted as a write error. */
Test(store, queued_writes_the_level_refuses_are_dropped_and_counted) {
    uint64_t mine, ver;
    char val[16];
    fk->down = 1;
    cr_assert_eq(put("k", "mine", &mine), 0);
    fake_tier_seed(fk, "k", "theirs", mine + 1000);
    fk->down = 0;
    tick_now();
    cr_assert_eq(queued(), 0);
    cr_assert_eq(d->tiers[0].stale_drops, 1);
    cr_assert(fake_tier_find(fk, "k", &ver, val, sizeof(val)));
    cr_assert_str_eq(val, "theirs", "the newer value stays");
    cr_assert_eq(ver, mine + 1000);

    cr_assert_eq(put("gone", "1", NULL), 0);
    fk->down = 1;
    cr_assert_eq(put("e", "1", NULL), 0);
    cr_assert_eq(khala__store_del(d, "gone", 4, NULL), 0);
    fk->down = 0;
    fk->fail_n = 2; /* the put, then the delete */
    fk->fail_rc = -EIO;
    tick_now();
    cr_assert(d->tiers[0].t->healthy, "a refused write is not an outage");
    cr_assert_eq(queued(), 0, "not retried");
    cr_assert_eq(d->tiers[0].write_errors, 2);
    cr_assert_not(fake_tier_find(fk, "e", NULL, NULL, 0));
    cr_assert(fake_tier_find(fk, "gone", NULL, NULL, 0));
}

/* Warming by keys reads the queued writes first (they are newer than the level), skips a level
 * that is down, and marks down a level whose read fails. */
Test(store, warming_takes_queued_writes_first_and_skips_a_level_that_is_down) {
    cr_assert_eq(put("k", "old", NULL), 0);
    fk->down = 1;
    cr_assert_eq(put("k", "new", NULL), 0);
    fake_tier_seed(fk, "j", "below", 5);
    (void)khala__store_forget(d, 0, NULL, 0, -1); /* L1 emptied, as by another host */
    khala_bytes_t keys[2] = {{(const uint8_t *)"k", 1}, {(const uint8_t *)"j", 1}};
    cr_assert_eq(khala__tiers_warm_keys(d, 2, keys), 1, "only the queued write: L2 is down");
    char val[16];
    cr_assert(l1_has("k", NULL, val, sizeof(val)));
    cr_assert_str_eq(val, "new", "the queued value, not the level's older one");
    cr_assert_not(l1_has("j", NULL, NULL, 0));

    fk->down = 0;
    tick_now();
    cr_assert_eq(queued(), 0);
    fk->fail_n = 1;
    fk->fail_rc = KHALA_ETIER;
    cr_assert_eq(khala__tiers_warm_keys(d, 1, &keys[1]), 0);
    cr_assert_not(d->tiers[0].t->healthy, "a failed read marks the level down");
    tick_now();
    cr_assert_eq(khala__tiers_warm_keys(d, 1, &keys[1]), 1);
    cr_assert(l1_has("j", NULL, val, sizeof(val)));
    cr_assert_str_eq(val, "below");
}

/* Warming by prefix takes the prefix literally (glob characters in it match only themselves),
 * by type promotes only that type, and fails clearly when the level is down or its scan
 * fails. */
Test(store, warming_by_prefix_or_type_and_its_failures) {
    fake_tier_seed(fk, "a*b1", "1", 1);
    fake_tier_seed(fk, "a*b2", "2", 1);
    fake_tier_seed(fk, "axb3", "3", 1);
    fake_tier_seed(fk, "a[c]4", "4", 1);
    uint64_t cursor = 0, warmed = 0;
    cr_assert_eq(khala__tiers_warm_scan(d, "a*b", 3, -1, &cursor, &warmed), 0, "%s", d->errmsg);
    cr_assert_eq(warmed, 2);
    cr_assert(l1_has("a*b1", NULL, NULL, 0) && l1_has("a*b2", NULL, NULL, 0));
    cr_assert_not(l1_has("axb3", NULL, NULL, 0), "'*' is not a wildcard in a prefix");
    cr_assert_eq(khala__tiers_warm_scan(d, "a[c]", 4, -1, &cursor, &warmed), 0, "%s", d->errmsg);
    cr_assert_eq(warmed, 1);
    cr_assert(l1_has("a[c]4", NULL, NULL, 0));
    cr_assert_eq(khala__tiers_warm_scan(d, "a\0", 2, -1, &cursor, &warmed), 0, "%s", d->errmsg);
    cr_assert_eq(warmed, 0, "no key holds that NUL");

    cr_assert_eq(khala__tiers_warm_scan(d, "", 0, KHALA_TYPE_EMBEDDING, &cursor, &warmed), 0);
    cr_assert_eq(warmed, 0, "every seeded key is a memory entity");
    cr_assert_not(l1_has("axb3", NULL, NULL, 0));
    cr_assert_eq(khala__tiers_warm_scan(d, "", 0, KHALA_TYPE_MEMORY_ENTITY, &cursor, &warmed), 0);
    cr_assert_eq(warmed, 4);
    cr_assert(l1_has("axb3", NULL, NULL, 0));

    fk->fail_n = 1;
    fk->fail_rc = KHALA_ETIER;
    cr_assert_eq(khala__tiers_warm_scan(d, "a", 1, -1, &cursor, &warmed), KHALA_ETIER);
    cr_assert(strstr(d->errmsg, "scan failed") && strstr(d->errmsg, "injected failure"), "%s",
              d->errmsg);
    cr_assert_not(d->tiers[0].t->healthy);
    cr_assert_eq(khala__tiers_warm_scan(d, "a", 1, -1, &cursor, &warmed), KHALA_ETIER);
    cr_assert(strstr(d->errmsg, "L2 is down: nothing to warm from"), "%s", d->errmsg);
    cr_assert_eq(warmed, 0);
}

/* The preload at start promotes every key the level lists as most used, across batches; it
 * promotes nothing from a level that is down, and a failing listing marks the level down. */
Test(store, preload_promotes_the_hot_keys_in_batches_and_not_from_a_level_down) {
    char key[16];
    int n = (int)KHALAD_WARM_BATCH + 44;
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "hot%d", i);
        fake_tier_seed(fk, key, "v", 1);
    }
    fk->down = 1;
    d->tiers[0].t->healthy = 0;
    cr_assert_eq(khala__tiers_preload(d), 0);
    cr_assert_not(l1_has("hot0", NULL, NULL, 0));
    fk->down = 0;
    tick_now();
    fk->fail_n = 1;
    fk->fail_rc = KHALA_ETIER;
    cr_assert_eq(khala__tiers_preload(d), 0);
    cr_assert_not(d->tiers[0].t->healthy);
    tick_now();
    cr_assert_eq(khala__tiers_preload(d), (uint64_t)n);
    snprintf(key, sizeof(key), "hot%d", n - 1);
    cr_assert(l1_has("hot0", NULL, NULL, 0) && l1_has(key, NULL, NULL, 0));
}

/* Deadlines and refusals (issue 10, bug 7) --------------------------------------------------- */

/* A TTL near 2^63 ms (khalad refuses it at the protocol boundary; the store must not break on
 * one anyway): the queued write's deadline saturates instead of wrapping negative, so it is
 * still read back while queued and drains with a TTL, not as already expired. */
Test(store, a_huge_ttl_saturates_the_queued_deadline_instead_of_expiring_the_write) {
    fk->down = 1;
    uint64_t ver = 0;
    cr_assert_eq(
        khala__store_put(d, "far", 3, "v", 1, INT64_MAX - 1, KHALA_TYPE_MEMORY_ENTITY, 0, 0, &ver),
        0);
    cr_assert_eq(queued(), 1);
    khala_wq_op_t *op = khala__wq_head(d->tiers[0].wq);
    cr_assert_gt(op->expire_ms, khala__sys_now_ms(), "deadline %lld wrapped",
                 (long long)op->expire_ms);
    khala_tier_value_t v;
    khala_level_t lvl;
    cr_assert_eq(khala__store_get(d, "far", 3, &v, &lvl, NULL), 0,
                 "the queued write read as expired");
    cr_assert_gt(v.ttl_ms, 1);
    khala__tier_value_free(&v);
    fk->down = 0;
    tick_now();
    cr_assert_eq(queued(), 0);
    cr_assert(fake_tier_find(fk, "far", NULL, NULL, 0), "drained as already expired");
}

/* A level that refuses one write (KHALA_EREFUSED: Redis's OOM, say) fails that put with its
 * message; the level stays up, nothing is queued, L1 keeps no copy, and the next write goes
 * straight to the level. */
Test(store, a_write_the_level_refuses_fails_alone_and_the_level_stays_up) {
    uint64_t v1;
    cr_assert_eq(put("k", "before", &v1), 0);
    fk->fail_n = 1;
    fk->fail_rc = KHALA_EREFUSED;
    cr_assert_eq(put("k", "refused", NULL), KHALA_EREFUSED);
    cr_assert(strstr(d->errmsg, "L2 (fake): fake: injected failure"), "message: %s", d->errmsg);
    cr_assert(d->tiers[0].t->healthy, "one refused write does not make the level down");
    cr_assert_eq(queued(), 0, "nor is it queued");
    cr_assert_not(l1_has("k", NULL, NULL, 0), "L1 keeps no copy older or newer than the level");
    uint64_t v3;
    cr_assert_eq(put("k", "after", &v3), 0);
    char val[16];
    cr_assert(fake_tier_find(fk, "k", NULL, val, sizeof(val)));
    cr_assert_str_eq(val, "after");
}

/* Invalidation in steps (issue 10, bug 9) ----------------------------------------------------- */

static struct {
    int calls, rc;
    uint64_t count;
    khala_conn_t *conn;
} answered;

static void record_answer(void *arg, khala_conn_t *c, uint64_t req_id, int op, uint64_t count,
                          int rc) {
    (void)arg, (void)req_id, (void)op;
    answered.calls++;
    answered.conn = c;
    answered.count = count;
    answered.rc = rc;
}

/* A Redis-like level (it has invalidate_step): the invalidation is queued and run in steps from
 * the tick; L1 is done at once. While it runs, what it covers is gone for every read (the level
 * still holds it), a write made meanwhile queues behind it and is kept, and the caller waiting
 * for it is answered once the last step is done. */
Test(store, a_stepped_invalidation_hides_what_it_covers_until_done_and_keeps_later_writes) {
    teardown();
    open_store(64, KHALA_CONFIG_WRITE_THROUGH, 1);
    fake_tier_stepped(fk);
    memset(&answered, 0, sizeof(answered));
    cr_assert_eq(khala__invwait_new(record_answer, NULL, &d->invwait), 0);
    cr_assert_eq(put("user:1", "old", NULL), 0);
    cr_assert_eq(put("user:2", "old", NULL), 0);
    cr_assert_eq(put("other:1", "kept", NULL), 0);
    fk->step_pause = 1;
    uint64_t n = 0, version = 0;
    unsigned levels = 0;
    cr_assert_eq(khala__store_invalidate_steps(d, "user:", 5, -1, &n, &version, &levels), 0);
    cr_assert_eq(n, 2, "L1's count");
    cr_assert_eq(levels, 1u, "level 0 runs it in steps");
    cr_assert_not(l1_has("user:1", NULL, NULL, 0), "L1 is done at once");
    cr_assert_eq(queued(), 1);
    khala_conn_t *conn = (khala_conn_t *)&answered; /* any address: never dereferenced */
    cr_assert_eq(khala__invwait_add(d->invwait, conn, 7, 0, n, version, levels), 0);

    tick_now();
    cr_assert_gt(fk->steps, 0);
    cr_assert_eq(queued(), 1, "paused: still in progress");
    cr_assert(fake_tier_find(fk, "user:1", NULL, NULL, 0), "the level still holds it");
    khala_tier_value_t v;
    khala_level_t lvl;
    cr_assert_eq(khala__store_get(d, "user:1", 6, &v, &lvl, NULL), KHALA_ENOTFOUND,
                 "a covered key read from the level during the invalidation");
    cr_assert_eq(khala__store_get(d, "other:1", 7, &v, &lvl, NULL), 0,
                 "what it does not cover is read");
    khala__tier_value_free(&v);
    khala_tier_value_t stale = {(void *)"old", 3, 1, 0, KHALA_TYPE_MEMORY_ENTITY};
    cr_assert_eq(khala__store_promote(d, "user:2", 6, &stale), KHALA_ENOTFOUND,
                 "warming does not bring a covered value back into L1");
    cr_assert_eq(put("user:1", "new", NULL), 0);
    cr_assert_eq(queued(), 2, "a later write queues behind the invalidation");
    cr_assert_eq(khala__store_get(d, "user:1", 6, &v, &lvl, NULL), 0, "and is read");
    khala__tier_value_free(&v);
    cr_assert_eq(answered.calls, 0, "the caller waits");

    fk->step_pause = 0;
    for (int i = 0; i < 100 && queued(); i++)
        tick_now();
    cr_assert_eq(queued(), 0);
    cr_assert_not(fake_tier_find(fk, "user:2", NULL, NULL, 0), "removed at the level");
    char val[16];
    cr_assert(fake_tier_find(fk, "user:1", NULL, val, sizeof(val)), "the later write was kept");
    cr_assert_str_eq(val, "new");
    cr_assert(fake_tier_find(fk, "other:1", NULL, NULL, 0));
    cr_assert_eq(answered.calls, 1, "answered once it was done");
    cr_assert_eq(answered.conn, conn);
    cr_assert_eq(answered.count, 2);
    cr_assert_eq(answered.rc, 0);
}

/* A level that goes down during a stepped invalidation: it stays queued for the level's return,
 * reads skip the level meanwhile, and the waiting caller hears success at once (as for any write
 * queued while a level is down); a caller whose connection closed is never answered. */
Test(store, a_level_down_during_a_stepped_invalidation_answers_the_caller) {
    teardown();
    open_store(64, KHALA_CONFIG_WRITE_THROUGH, 1);
    fake_tier_stepped(fk);
    memset(&answered, 0, sizeof(answered));
    cr_assert_eq(khala__invwait_new(record_answer, NULL, &d->invwait), 0);
    cr_assert_eq(put("user:1", "old", NULL), 0);
    fk->step_pause = 1;
    uint64_t n = 0, v1 = 0, v2 = 0;
    unsigned levels = 0;
    cr_assert_eq(khala__store_invalidate_steps(d, "user:", 5, -1, &n, &v1, &levels), 0);
    khala_conn_t *gone = (khala_conn_t *)&n, *conn = (khala_conn_t *)&answered;
    cr_assert_eq(khala__invwait_add(d->invwait, gone, 1, 0, n, v1, levels), 0);
    cr_assert_eq(khala__store_invalidate_steps(d, "user:", 5, -1, &n, &v2, &levels), 0);
    cr_assert_eq(khala__invwait_add(d->invwait, conn, 2, 0, n, v2, levels), 0);
    khala__invwait_forget_conn(d->invwait, gone);
    cr_assert_eq(khala__invwait_count(d->invwait), 1);
    fk->down = 1;
    tick_now();
    cr_assert_not(d->tiers[0].t->healthy);
    cr_assert_eq(answered.calls, 1, "only the caller still connected is answered");
    cr_assert_eq(answered.conn, conn);
    cr_assert_eq(answered.rc, 0);
    cr_assert_eq(queued(), 2, "both stay queued for the level's return");
    fk->down = 0;
    fk->step_pause = 0;
    for (int i = 0; i < 100 && queued(); i++)
        tick_now();
    cr_assert_eq(queued(), 0);
    cr_assert_not(fake_tier_find(fk, "user:1", NULL, NULL, 0));
    cr_assert_eq(answered.calls, 1);
}
