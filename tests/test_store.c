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
    cr_assert_eq(khala__store_get(d, "k", 1, &v, &lvl), 0);
    cr_assert_eq(v.version, v2);
    khala__tier_value_free(&v);
    cr_assert_eq(khala__store_get(d, "gone", 4, &v, &lvl), KHALA_ENOTFOUND);
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
        khala_waiter_t leader = {NULL, 1};
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
