/*
 * The disk tier as L3 (daemon/tier_disk_archive.c, daemon/tier_disk_cleanup.c): items evicted
 * for space move to the archive (expired ones do not), archive_get reads them back until their
 * retention ends, the archive keeps its bound, deletes and invalidations remove archived copies,
 * and the periodic cleanup runs in bounded steps that complete. Each test gets a fresh directory
 * under /tmp, removed by .fini.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "testutil.h"
#include "tier_disk.h"

static char g_dir[64];   /* the test's temporary directory */
static char g_store[96]; /* the store inside it */
static char g_err[256];

static void setup(void) {
    strcpy(g_dir, "/tmp/khala-arch-XXXXXX");
    cr_assert_not_null(mkdtemp(g_dir));
    snprintf(g_store, sizeof(g_store), "%s/store", g_dir);
}

static void teardown(void) {
    harness_rmtree(g_dir);
}

TestSuite(tier_disk_archive, .init = setup, .fini = teardown, .timeout = 120);

/* An L3 store: max_items items, 1 MiB, the archive kept retention_ms, cleanup every interval. */
static khala_tier_disk_opts_t l3_opts(uint64_t max_items, int64_t retention_ms, int64_t interval_ms,
                                      uint32_t batch) {
    return (khala_tier_disk_opts_t){.path = g_store,
                                    .level = KHALA_LEVEL_L3,
                                    .max_items = max_items,
                                    .max_bytes = 1 << 20,
                                    .persistent = true,
                                    .sync_every_ms = 1000,
                                    .archive_retention_ms = retention_ms,
                                    .cleanup_interval_ms = interval_ms,
                                    .cleanup_batch = batch};
}

static khala_tier_t *open_with(khala_tier_disk_opts_t o) {
    khala_tier_t *t = NULL;
    int rc = khala__tier_disk_open(&o, &t, g_err, sizeof(g_err));
    cr_assert_eq(rc, 0, "open: %d %s", rc, g_err);
    cr_assert_not_null(t->ops->archive_get);
    return t;
}

static int put(khala_tier_t *t, const char *key, const char *val, uint64_t version,
               int64_t ttl_ms) {
    khala_tier_value_t v = {(void *)val, strlen(val), version, ttl_ms, KHALA_TYPE_MEMORY_ENTITY};
    return t->ops->put(t, key, strlen(key), &v);
}

static int live(khala_tier_t *t, const char *key) {
    khala_tier_value_t v = {0};
    int rc = t->ops->get(t, key, strlen(key), &v);
    cr_assert(rc == 0 || rc == KHALA_ENOTFOUND, "get %s: %d %s", key, rc, t->err);
    khala__tier_value_free(&v);
    return rc == 0;
}

/* archive_get of key: its code, and the value as a string into buf (when 0). */
static int archived(khala_tier_t *t, const char *key, char *buf, size_t cap,
                    khala_tier_value_t *meta) {
    khala_tier_value_t v = {0};
    int rc = t->ops->archive_get(t, key, strlen(key), &v);
    if (rc == 0) {
        cr_assert_lt(v.len, cap);
        memcpy(buf, v.data, v.len);
        buf[v.len] = '\0';
        if (meta)
            *meta = v;
        khala__tier_value_free(&v);
    }
    return rc;
}

static khala_tier_stats_t stats(khala_tier_t *t) {
    khala_tier_stats_t s;
    memset(&s, 0, sizeof(s));
    t->ops->stats(t, &s);
    return s;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Put keys "<prefix><i>", i in [from, to), value "v<i>", ttl_ms, in one mput. */
static void mput_range(khala_tier_t *t, const char *prefix, int from, int to, int64_t ttl_ms) {
    int n = to - from;
    khala_bytes_t *keys = calloc((size_t)n, sizeof(*keys));
    khala_tier_value_t *vals = calloc((size_t)n, sizeof(*vals));
    char(*kb)[32] = calloc((size_t)n, 32);
    char(*vb)[32] = calloc((size_t)n, 32);
    for (int i = 0; i < n; i++) {
        snprintf(kb[i], 32, "%s%d", prefix, from + i);
        snprintf(vb[i], 32, "v%d", from + i);
        keys[i] = (khala_bytes_t){(const uint8_t *)kb[i], strlen(kb[i])};
        vals[i] = (khala_tier_value_t){vb[i], strlen(vb[i]), 1, ttl_ms, KHALA_TYPE_MEMORY_ENTITY};
    }
    int rc = t->ops->mput(t, (size_t)n, keys, vals);
    cr_assert_eq(rc, 0, "mput: %d %s", rc, t->err);
    free(keys);
    free(vals);
    free(kb);
    free(vb);
}

/* Put "k0".."k<n-1>" one by one into a store of max_items cap; evicted[] gets the keys evicted,
 * in the order they were evicted (found by which key stopped being live). Returns how many. */
static int put_and_track(khala_tier_t *t, int n, int evicted[]) {
    int ne = 0;
    char *gone = calloc((size_t)n, 1);
    for (int i = 0; i < n; i++) {
        char k[16], v[16];
        snprintf(k, sizeof(k), "k%d", i);
        snprintf(v, sizeof(v), "v%d", i);
        cr_assert_eq(put(t, k, v, (uint64_t)i + 1, 0), 0, "%s", t->err);
        for (int j = 0; j < i; j++) {
            snprintf(k, sizeof(k), "k%d", j);
            if (!gone[j] && !live(t, k)) {
                gone[j] = 1;
                evicted[ne++] = j;
            }
        }
    }
    free(gone);
    return ne;
}

Test(tier_disk_archive, an_item_evicted_for_space_is_archived_with_its_value_version_and_type) {
    khala_tier_t *t = open_with(l3_opts(3, 60000, 0, 0));
    int evicted[8];
    int ne = put_and_track(t, 4, evicted);
    cr_assert_eq(ne, 1);
    char key[16], want[16], buf[64];
    snprintf(key, sizeof(key), "k%d", evicted[0]);
    snprintf(want, sizeof(want), "v%d", evicted[0]);
    khala_tier_value_t meta = {0};
    cr_assert_eq(archived(t, key, buf, sizeof(buf), &meta), 0, "%s", t->err);
    cr_assert_str_eq(buf, want);
    cr_assert_eq(meta.version, (uint64_t)evicted[0] + 1);
    cr_assert_eq(meta.type, KHALA_TYPE_MEMORY_ENTITY);
    cr_assert(meta.ttl_ms > 0 && meta.ttl_ms <= 60000, "ttl %lld", (long long)meta.ttl_ms);
    khala_tier_stats_t s = stats(t);
    cr_assert_eq(s.evictions, 1);
    cr_assert_eq(s.archive_items, 1);
    cr_assert_eq(s.archive_bytes, strlen(key) + strlen(want));
    /* A live key has no archived copy. */
    cr_assert_eq(archived(t, "k3", buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
    t->ops->close(t);
}

Test(tier_disk_archive, an_expired_item_is_never_archived) {
    khala_tier_t *t = open_with(l3_opts(3, 60000, 0, 0));
    cr_assert_eq(put(t, "short", "x", 1, 1), 0);
    sleep_ms(20);
    /* The expired item is the victim of choice: removed for expiry, not archived. */
    for (int i = 0; i < 3; i++) {
        char k[8];
        snprintf(k, sizeof(k), "n%d", i);
        cr_assert_eq(put(t, k, "y", 1, 0), 0);
    }
    char buf[16];
    cr_assert_eq(archived(t, "short", buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
    cr_assert_eq(stats(t).archive_items, 0);
    cr_assert_eq(stats(t).evictions, 0);
    t->ops->close(t);
}

Test(tier_disk_archive, archive_get_refuses_bad_keys_and_misses_unknown_ones) {
    khala_tier_t *t = open_with(l3_opts(3, 60000, 0, 0));
    khala_tier_value_t v = {0};
    cr_assert_eq(t->ops->archive_get(t, "", 0, &v), KHALA_EKEY);
    char big[KHALA_KEY_MAX + 1];
    memset(big, 'a', sizeof(big));
    cr_assert_eq(t->ops->archive_get(t, big, sizeof(big), &v), KHALA_EKEY);
    cr_assert_not_null(strstr(t->err, "is 251 bytes"), "%s", t->err);
    cr_assert_eq(t->ops->archive_get(t, "nobody", 6, &v), KHALA_ENOTFOUND);
    cr_assert_not_null(strstr(t->err, "no archived copy of key 'nobody'"), "%s", t->err);
    t->ops->close(t);
}

Test(tier_disk_archive, without_retention_an_evicted_item_is_deleted_as_in_l2) {
    khala_tier_disk_opts_t o = l3_opts(3, 0, 0, 0);
    o.level = KHALA_LEVEL_L2;
    khala_tier_t *t = open_with(o);
    int evicted[8];
    cr_assert_eq(put_and_track(t, 4, evicted), 1);
    char key[16], buf[16];
    snprintf(key, sizeof(key), "k%d", evicted[0]);
    cr_assert_eq(archived(t, key, buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
    cr_assert_not_null(strstr(t->err, "no archive"), "%s", t->err);
    khala_tier_stats_t s = stats(t);
    cr_assert_eq(s.evictions, 1);
    cr_assert_eq(s.archive_items, UINT64_MAX);
    t->ops->close(t);
}

Test(tier_disk_archive, a_copy_past_its_retention_is_not_read_and_the_cleanup_removes_it) {
    khala_tier_t *t = open_with(l3_opts(1, 50, 1000, 100));
    cr_assert_eq(put(t, "a", "1", 1, 0), 0);
    cr_assert_eq(put(t, "b", "2", 1, 0), 0);
    char buf[16];
    cr_assert_eq(archived(t, "a", buf, sizeof(buf), NULL), 0, "%s", t->err);
    sleep_ms(120);
    cr_assert_eq(archived(t, "a", buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
    cr_assert_not_null(strstr(t->err, "past its retention"), "%s", t->err);
    cr_assert_eq(stats(t).archive_items, 1); /* still held until the cleanup */
    for (int i = 0; i < 5; i++)
        t->ops->tick(t, 1 + i);
    cr_assert_eq(stats(t).archive_items, 0);
    cr_assert_eq(stats(t).archive_bytes, 0);
    t->ops->close(t);
}

Test(tier_disk_archive, the_archive_keeps_max_items_dropping_the_oldest_first) {
    khala_tier_t *t = open_with(l3_opts(2, 60000, 0, 0));
    int evicted[16];
    int ne = put_and_track(t, 10, evicted);
    cr_assert_eq(ne, 8);
    cr_assert_eq(stats(t).archive_items, 2);
    char key[16], buf[16];
    for (int i = 0; i < ne; i++) {
        snprintf(key, sizeof(key), "k%d", evicted[i]);
        int want = i >= ne - 2 ? 0 : KHALA_ENOTFOUND;
        cr_assert_eq(archived(t, key, buf, sizeof(buf), NULL), want, "%s (evicted #%d)", key, i);
    }
    t->ops->close(t);
}

Test(tier_disk_archive, del_removes_the_archived_copy_and_a_put_keeps_it) {
    khala_tier_t *t = open_with(l3_opts(2, 60000, 0, 0));
    cr_assert_eq(put(t, "a", "old", 1, 0), 0);
    cr_assert_eq(put(t, "b", "2", 1, 0), 0);
    cr_assert_eq(put(t, "c", "3", 1, 0), 0); /* evicts a: equal counters, least recent first */
    char buf[16];
    cr_assert_eq(archived(t, "a", buf, sizeof(buf), NULL), 0, "%s", t->err);
    /* A new put of a does not touch the archived copy (it is what was evicted last). */
    cr_assert_eq(put(t, "a", "new", 2, 0), 0); /* evicts b */
    cr_assert_eq(archived(t, "a", buf, sizeof(buf), NULL), 0);
    cr_assert_str_eq(buf, "old");
    /* A delete removes it from everywhere. */
    cr_assert_eq(t->ops->del(t, "a", 1), 0);
    cr_assert_eq(archived(t, "a", buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
    /* Also when the key is only archived. */
    cr_assert_eq(archived(t, "b", buf, sizeof(buf), NULL), 0, "%s", t->err);
    cr_assert_eq(t->ops->del(t, "b", 1), KHALA_ENOTFOUND);
    cr_assert_eq(archived(t, "b", buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
    cr_assert_eq(stats(t).archive_items, 0);
    t->ops->close(t);
}

Test(tier_disk_archive, invalidate_removes_the_archived_copies_it_matches) {
    khala_tier_t *t = open_with(l3_opts(10, 60000, 0, 0));
    mput_range(t, "p:", 0, 10, 0);
    mput_range(t, "q:", 0, 10, 0); /* evicts 10 of the 20, into the archive */
    khala_tier_stats_t s = stats(t);
    cr_assert_eq(s.archive_items, 10);
    uint64_t removed = 0;
    cr_assert_eq(t->ops->invalidate(t, "p:", 2, -1, &removed), 0, "%s", t->err);
    char key[16], buf[16];
    int q_archived = 0;
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof(key), "p:%d", i);
        cr_assert_eq(archived(t, key, buf, sizeof(buf), NULL), KHALA_ENOTFOUND, "%s", key);
        snprintf(key, sizeof(key), "q:%d", i);
        q_archived += archived(t, key, buf, sizeof(buf), NULL) == 0;
    }
    cr_assert_eq(stats(t).archive_items, (uint64_t)q_archived);
    /* Everything: the archive is emptied too. */
    cr_assert_eq(t->ops->invalidate(t, NULL, 0, -1, &removed), 0, "%s", t->err);
    cr_assert_eq(stats(t).archive_items, 0);
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof(key), "q:%d", i);
        cr_assert_eq(archived(t, key, buf, sizeof(buf), NULL), KHALA_ENOTFOUND, "%s", key);
    }
    t->ops->close(t);
}

Test(tier_disk_archive, the_archive_survives_a_reopen_and_goes_when_retention_is_turned_off) {
    khala_tier_t *t = open_with(l3_opts(1, 60000, 0, 0));
    cr_assert_eq(put(t, "a", "1", 1, 0), 0);
    cr_assert_eq(put(t, "b", "2", 1, 0), 0);
    t->ops->close(t);
    t = open_with(l3_opts(1, 60000, 0, 0));
    char buf[16];
    cr_assert_eq(archived(t, "a", buf, sizeof(buf), NULL), 0, "%s", t->err);
    cr_assert_str_eq(buf, "1");
    cr_assert_eq(stats(t).archive_items, 1);
    cr_assert_eq(stats(t).archive_bytes, 2);
    t->ops->close(t);
    t = open_with(l3_opts(1, 0, 0, 0)); /* off: the archive is deleted */
    cr_assert_eq(archived(t, "a", buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
    t->ops->close(t);
    t = open_with(l3_opts(1, 60000, 0, 0));
    cr_assert_eq(archived(t, "a", buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
    cr_assert_eq(stats(t).archive_items, 0);
    cr_assert(live(t, "b"));
    t->ops->close(t);
}

Test(tier_disk_archive, negative_housekeeping_options_are_refused) {
    khala_tier_t *t = NULL;
    khala_tier_disk_opts_t o = l3_opts(1, -1, 0, 0);
    cr_assert_eq(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), KHALA_ECONFIG);
    cr_assert_not_null(strstr(g_err, "archive_retention_ms (-1)"), "%s", g_err);
    o = l3_opts(1, 0, -5, 0);
    cr_assert_eq(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), KHALA_ECONFIG);
    cr_assert_null(t);
}

Test(tier_disk_archive, the_cleanup_deletes_expired_items_in_bounded_steps_until_done) {
    khala_tier_t *t = open_with(l3_opts(100000, 60000, 1000, 100));
    mput_range(t, "dead:", 0, 1000, 1);
    mput_range(t, "alive:", 0, 200, 0);
    sleep_ms(20);
    uint64_t prev = 0;
    int ticks = 0;
    while (stats(t).expirations < 1000 && ticks < 100) {
        t->ops->tick(t, 10 + ticks);
        uint64_t now = stats(t).expirations;
        cr_assert_leq(now - prev, 100, "tick %d removed %llu rows", ticks,
                      (unsigned long long)(now - prev));
        prev = now;
        ticks++;
    }
    cr_assert_eq(stats(t).expirations, 1000, "after %d ticks", ticks);
    cr_assert_geq(ticks, 10); /* 1000 rows at 100 per step */
    cr_assert_eq(stats(t).items, 200);
    cr_assert_eq(stats(t).archive_items, 0); /* expired: not archived */
    cr_assert_eq(stats(t).errors, 0, "%s", t->err);
    t->ops->close(t);
}

Test(tier_disk_archive, the_cleanup_evicts_down_to_lowered_capacity_in_steps_into_the_archive) {
    khala_tier_t *t = open_with(l3_opts(1000, 60000, 0, 0));
    mput_range(t, "k", 0, 1000, 0);
    t->ops->close(t);
    /* max_entries lowered to 300: the open does not trim, the cleanup does, 100 per step. */
    t = open_with(l3_opts(300, 60000, 1000, 100));
    cr_assert_eq(stats(t).items, 1000);
    /* A put meanwhile does not grow the store, nor trims it all at once. */
    cr_assert_eq(put(t, "fresh", "x", 1, 0), 0);
    cr_assert_eq(stats(t).items, 1000);
    cr_assert_eq(stats(t).evictions, 1);
    uint64_t prev = stats(t).evictions;
    int ticks = 0;
    while (stats(t).items > 300 && ticks < 100) {
        t->ops->tick(t, 10 + ticks);
        uint64_t now = stats(t).evictions;
        cr_assert_leq(now - prev, 100, "tick %d evicted %llu", ticks,
                      (unsigned long long)(now - prev));
        prev = now;
        ticks++;
    }
    khala_tier_stats_t s = stats(t);
    cr_assert_eq(s.items, 300, "after %d ticks", ticks);
    cr_assert_eq(s.evictions, 701);
    cr_assert_geq(ticks, 7);
    cr_assert_eq(s.archive_items, 300); /* bounded by max_items: the oldest 401 dropped */
    /* Every key is live or archived or among the dropped: count the archived ones. */
    char key[16], buf[16];
    int in_archive = 0;
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        in_archive += archived(t, key, buf, sizeof(buf), NULL) == 0;
    }
    cr_assert_eq(in_archive, 300);
    t->ops->close(t);
}

Test(tier_disk_archive, an_l2_store_with_lowered_capacity_is_still_trimmed_at_open) {
    khala_tier_disk_opts_t o = l3_opts(100, 0, 0, 0);
    o.level = KHALA_LEVEL_L2;
    khala_tier_t *t = open_with(o);
    mput_range(t, "k", 0, 100, 0);
    t->ops->close(t);
    o.max_items = 10;
    t = open_with(o);
    cr_assert_eq(stats(t).items, 10);
    t->ops->close(t);
}

Test(tier_disk_archive, the_cleanup_evicts_the_least_valuable_first) {
    khala_tier_t *t = open_with(l3_opts(1000, 60000, 0, 0));
    mput_range(t, "k", 0, 1000, 0);
    /* Every tenth key is read a lot (as L1 hits reported at a graceful stop). */
    for (int i = 0; i < 1000; i += 10) {
        char key[16];
        snprintf(key, sizeof(key), "k%d", i);
        t->ops->note_hits(t, key, strlen(key), 1000);
    }
    t->ops->close(t); /* the counters go to "lfu" */
    t = open_with(l3_opts(100, 60000, 1000, 100));
    for (int i = 0; i < 100 && stats(t).items > 100; i++)
        t->ops->tick(t, 10 + i);
    cr_assert_eq(stats(t).items, 100);
    for (int i = 0; i < 1000; i += 10) {
        char key[16];
        snprintf(key, sizeof(key), "k%d", i);
        cr_assert(live(t, key), "%s, read most, was evicted", key);
    }
    t->ops->close(t);
}

Test(tier_disk_archive, a_key_evicted_again_replaces_its_archived_copy) {
    khala_tier_t *t = open_with(l3_opts(1, 60000, 0, 0));
    cr_assert_eq(put(t, "a", "one", 1, 0), 0);
    cr_assert_eq(put(t, "b", "x", 1, 0), 0);   /* evicts a (one) */
    cr_assert_eq(put(t, "a", "two", 2, 0), 0); /* evicts b */
    cr_assert_eq(put(t, "c", "y", 1, 0), 0);   /* evicts a (two): the copy is replaced */
    char buf[16];
    khala_tier_value_t meta = {0};
    cr_assert_eq(archived(t, "a", buf, sizeof(buf), &meta), 0, "%s", t->err);
    cr_assert_str_eq(buf, "two");
    cr_assert_eq(meta.version, 2);
    /* The archive holds 1 item (its bound): b went, the newest copy of a stayed. */
    cr_assert_eq(stats(t).archive_items, 1);
    cr_assert_eq(archived(t, "b", buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
    t->ops->close(t);
    /* Its size survives a reopen as counted. */
    t = open_with(l3_opts(1, 60000, 0, 0));
    cr_assert_eq(stats(t).archive_items, 1);
    cr_assert_eq(stats(t).archive_bytes, 4);
    t->ops->close(t);
}

/* Write value (vlen bytes) as the "archive" record of key, straight into the closed store. */
static void poke_archive(const char *key, const void *value, size_t vlen) {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 16), 0);
    cr_assert_eq(mdb_env_open(env, g_store, 0, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "archive", 0, &dbi), 0);
    MDB_val k = {strlen(key), (void *)key}, v = {vlen, (void *)value};
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

Test(tier_disk_archive, a_malformed_archived_copy_reads_as_corrupt_and_can_still_be_removed) {
    khala_tier_t *t = open_with(l3_opts(10, 60000, 0, 0));
    t->ops->close(t);
    poke_archive("bad", "xyz", 3);                /* shorter than its sequence number */
    poke_archive("bad2", "0123456789abcdef", 16); /* a sequence number, then no record */
    t = open_with(l3_opts(10, 60000, 0, 0));
    cr_assert_eq(stats(t).archive_items, 2);
    char buf[16];
    cr_assert_eq(archived(t, "bad", buf, sizeof(buf), NULL), KHALA_ECORRUPT);
    cr_assert_not_null(strstr(t->err, "key 'bad'"), "%s", t->err);
    cr_assert_not_null(strstr(t->err, "malformed"), "%s", t->err);
    cr_assert_not_null(strstr(t->err, "sequence number"), "%s", t->err);
    cr_assert_eq(archived(t, "bad2", buf, sizeof(buf), NULL), KHALA_ECORRUPT);
    cr_assert_not_null(strstr(t->err, "key 'bad2'"), "%s", t->err);
    cr_assert_eq(stats(t).errors, 2);
    /* The level stays up, and a delete or an invalidation removes such a copy. */
    cr_assert(t->healthy);
    cr_assert_eq(t->ops->del(t, "bad", 3), KHALA_ENOTFOUND);
    cr_assert_eq(archived(t, "bad", buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
    uint64_t removed = 0;
    cr_assert_eq(t->ops->invalidate(t, "bad", 3, KHALA_TYPE_MEMORY_ENTITY, &removed), 0, "%s",
                 t->err);
    cr_assert_eq(archived(t, "bad2", buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
    cr_assert_eq(stats(t).archive_items, 0);
    t->ops->close(t);
}

Test(tier_disk_archive, a_store_that_is_not_persistent_starts_with_an_empty_archive) {
    khala_tier_t *t = open_with(l3_opts(1, 60000, 0, 0));
    cr_assert_eq(put(t, "a", "1", 1, 0), 0);
    cr_assert_eq(put(t, "b", "2", 1, 0), 0); /* evicts a */
    t->ops->close(t);
    khala_tier_disk_opts_t o = l3_opts(1, 60000, 0, 0);
    o.persistent = false;
    t = open_with(o);
    char buf[16];
    cr_assert_eq(archived(t, "a", buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
    cr_assert_eq(stats(t).archive_items, 0);
    cr_assert_eq(stats(t).archive_bytes, 0);
    /* It archives as before. */
    cr_assert_eq(put(t, "c", "3", 1, 0), 0);
    cr_assert_eq(put(t, "d", "4", 1, 0), 0);
    cr_assert_eq(archived(t, "c", buf, sizeof(buf), NULL), 0, "%s", t->err);
    cr_assert_str_eq(buf, "3");
    t->ops->close(t);
}

Test(tier_disk_archive, an_invalidate_by_prefix_or_type_keeps_the_other_archived_copies) {
    khala_tier_t *t = open_with(l3_opts(30, 60000, 0, 0));
    mput_range(t, "a:", 0, 10, 0);
    mput_range(t, "p:", 0, 10, 0);
    mput_range(t, "z:", 0, 10, 0);
    mput_range(t, "live:", 0, 30, 0); /* evicts the 30 above, into the archive */
    cr_assert_eq(stats(t).archive_items, 30);
    uint64_t removed = 0;
    /* A type that none has: nothing goes. */
    cr_assert_eq(t->ops->invalidate(t, "p:", 2, KHALA_TYPE_MEMORY_ENTITY + 1, &removed), 0, "%s",
                 t->err);
    cr_assert_eq(stats(t).archive_items, 30);
    cr_assert_eq(t->ops->invalidate(t, "p:", 2, -1, &removed), 0, "%s", t->err);
    char key[16], buf[16];
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof(key), "p:%d", i);
        cr_assert_eq(archived(t, key, buf, sizeof(buf), NULL), KHALA_ENOTFOUND, "%s", key);
        snprintf(key, sizeof(key), "a:%d", i);
        cr_assert_eq(archived(t, key, buf, sizeof(buf), NULL), 0, "%s: %s", key, t->err);
        snprintf(key, sizeof(key), "z:%d", i);
        cr_assert_eq(archived(t, key, buf, sizeof(buf), NULL), 0, "%s: %s", key, t->err);
    }
    cr_assert_eq(stats(t).archive_items, 20);
    t->ops->close(t);
}

Test(tier_disk_archive, an_invalidate_of_more_copies_than_a_batch_removes_them_all) {
    khala_tier_disk_opts_t o = l3_opts(9000, 60000, 0, 0);
    o.max_bytes = 16 << 20;
    khala_tier_t *t = open_with(o);
    mput_range(t, "old:", 0, 9000, 0);
    mput_range(t, "new:", 0, 9000, 0); /* 9000 archived: more than one batch of 8192 */
    cr_assert_eq(stats(t).archive_items, 9000);
    uint64_t removed = 0;
    cr_assert_eq(t->ops->invalidate(t, "old:", 4, -1, &removed), 0, "%s", t->err);
    cr_assert_eq(stats(t).archive_items, 0);
    char buf[16];
    cr_assert_eq(archived(t, "old:0", buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
    cr_assert_eq(archived(t, "old:8999", buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
    cr_assert_eq(stats(t).items, 9000);
    t->ops->close(t);
}

Test(tier_disk_archive, a_key_archived_while_an_older_copy_is_kept_replaces_it) {
    khala_tier_t *t = open_with(l3_opts(2, 60000, 0, 0));
    cr_assert_eq(put(t, "a", "one", 1, 0), 0);
    cr_assert_eq(put(t, "b", "x", 1, 0), 0);
    t->ops->note_hits(t, "b", 1, 1000);
    cr_assert_eq(put(t, "c", "y", 1, 0), 0); /* evicts a (one): b is read more */
    t->ops->note_hits(t, "c", 1, 1000);
    cr_assert_eq(put(t, "a", "two", 2, 0), 0);
    cr_assert_eq(put(t, "d", "z", 1, 0), 0); /* a (two), read least, goes again */
    char buf[16];
    khala_tier_value_t meta = {0};
    cr_assert_eq(archived(t, "a", buf, sizeof(buf), &meta), 0, "%s", t->err);
    cr_assert_str_eq(buf, "two");
    cr_assert_eq(meta.version, 2);
    /* One copy per key, and the count says so. */
    int n = 0;
    const char *keys[] = {"a", "b", "c", "d"};
    for (int i = 0; i < 4; i++)
        n += archived(t, keys[i], buf, sizeof(buf), NULL) == 0;
    cr_assert_eq(stats(t).archive_items, (uint64_t)n);
    t->ops->close(t);
    t = open_with(l3_opts(2, 60000, 0, 0));
    cr_assert_eq(stats(t).archive_items, (uint64_t)n);
    t->ops->close(t);
}

Test(tier_disk_archive, the_cleanup_trims_an_excess_smaller_than_a_step_into_the_archive) {
    khala_tier_t *t = open_with(l3_opts(100, 60000, 0, 0));
    mput_range(t, "k", 0, 100, 0);
    t->ops->close(t);
    /* 5 over the new capacity, fewer than a step's 100: sampled as a put evicts. */
    t = open_with(l3_opts(95, 60000, 1000, 100));
    cr_assert_eq(stats(t).items, 100);
    for (int i = 0; i < 20 && stats(t).items > 95; i++)
        t->ops->tick(t, 10 + i);
    khala_tier_stats_t s = stats(t);
    cr_assert_eq(s.items, 95);
    cr_assert_eq(s.evictions, 5);
    cr_assert_eq(s.archive_items, 5);
    cr_assert_eq(s.errors, 0, "%s", t->err);
    t->ops->close(t);
}

Test(tier_disk_archive, the_cleanup_trims_a_store_over_its_lowered_byte_bound) {
    khala_tier_disk_opts_t o = l3_opts(100000, 60000, 0, 0);
    khala_tier_t *t = open_with(o);
    mput_range(t, "key", 0, 2000, 0);
    uint64_t bytes = stats(t).bytes;
    t->ops->close(t);
    /* Half the bytes, with room for every item: the byte bound is what the cleanup keeps. */
    o.max_bytes = bytes / 2;
    o.cleanup_interval_ms = 1000;
    o.cleanup_batch = 100;
    t = open_with(o);
    /* A put meanwhile evicts for itself only: the store does not grow. */
    cr_assert_eq(put(t, "fresh", "x", 1, 0), 0, "%s", t->err);
    cr_assert_leq(stats(t).bytes, bytes);
    for (int i = 0; i < 200 && stats(t).bytes > o.max_bytes; i++)
        t->ops->tick(t, 10 + i);
    khala_tier_stats_t s = stats(t);
    cr_assert_leq(s.bytes, o.max_bytes, "%llu bytes, max %llu", (unsigned long long)s.bytes,
                  (unsigned long long)o.max_bytes);
    cr_assert_geq(s.items, 900);
    cr_assert_eq(s.items + s.evictions, 2001);
    cr_assert_eq(s.errors, 0, "%s", t->err);
    t->ops->close(t);
}

Test(tier_disk_archive, deletes_between_the_cleanups_steps_do_not_derail_it) {
    khala_tier_t *t = open_with(l3_opts(100000, 60000, 1000, 100));
    mput_range(t, "dead:", 0, 1000, 1);
    sleep_ms(20);
    t->ops->tick(t, 10); /* the first step of phase 1, from the end of the index */
    uint64_t first = stats(t).expirations;
    cr_assert_eq(first, 100);
    /* Most of what is left goes by deletes before the next step. */
    for (int i = 0; i < 1000; i++) {
        char key[16];
        snprintf(key, sizeof(key), "dead:%d", i);
        (void)t->ops->del(t, key, strlen(key));
    }
    mput_range(t, "dead2:", 0, 50, 1);
    mput_range(t, "alive:", 0, 10, 0);
    sleep_ms(20);
    for (int i = 0; i < 50 && stats(t).items > 10; i++)
        t->ops->tick(t, 20 + i);
    khala_tier_stats_t s = stats(t);
    cr_assert_eq(s.items, 10, "%s", t->err);
    cr_assert_eq(s.errors, 0, "%s", t->err);
    cr_assert(live(t, "alive:0") && live(t, "alive:9"));
    t->ops->close(t);
}

Test(tier_disk_archive, a_write_larger_than_the_whole_store_is_refused_and_archives_nothing) {
    khala_tier_t *t = open_with(l3_opts(2, 60000, 0, 0));
    cr_assert_eq(put(t, "a", "1", 1, 0), 0);
    cr_assert_eq(put(t, "b", "2", 1, 0), 0);
    khala_bytes_t keys[3] = {
        {(const uint8_t *)"c", 1}, {(const uint8_t *)"d", 1}, {(const uint8_t *)"e", 1}};
    khala_tier_value_t vals[3] = {{"3", 1, 1, 0, KHALA_TYPE_MEMORY_ENTITY},
                                  {"4", 1, 1, 0, KHALA_TYPE_MEMORY_ENTITY},
                                  {"5", 1, 1, 0, KHALA_TYPE_MEMORY_ENTITY}};
    uint64_t errors = stats(t).errors;
    cr_assert_eq(t->ops->mput(t, 3, keys, vals), KHALA_EFULL);
    cr_assert_not_null(strstr(t->err, "exceed max_items 2"), "%s", t->err);
    cr_assert_eq(stats(t).errors, errors + 1);
    /* Nothing changed: a and b live, none of the three written, nothing archived. */
    khala_tier_stats_t s = stats(t);
    cr_assert_eq(s.items, 2);
    cr_assert_eq(s.evictions, 0);
    cr_assert_eq(s.archive_items, 0);
    cr_assert(live(t, "a") && live(t, "b") && !live(t, "c"));
    char buf[16];
    cr_assert_eq(archived(t, "a", buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
    /* a and b can still be evicted (and archived) by a write that fits. */
    cr_assert_eq(t->ops->mput(t, 2, keys, vals), 0, "%s", t->err);
    s = stats(t);
    cr_assert_eq(s.items, 2);
    cr_assert_eq(s.evictions, 2);
    cr_assert_eq(s.archive_items, 2);
    cr_assert_eq(archived(t, "a", buf, sizeof(buf), NULL), 0, "%s", t->err);
    cr_assert_str_eq(buf, "1");
    t->ops->close(t);
    t = open_with(l3_opts(2, 60000, 0, 0));
    cr_assert_eq(stats(t).items, 2);
    cr_assert_eq(stats(t).archive_items, 2);
    cr_assert(live(t, "c") && live(t, "d"));
    t->ops->close(t);
}

Test(tier_disk_archive, an_age_entry_left_by_a_damaged_copy_does_not_break_the_bound) {
    khala_tier_t *t = open_with(l3_opts(2, 60000, 0, 0));
    cr_assert_eq(put(t, "a", "1", 1, 0), 0);
    cr_assert_eq(put(t, "b", "2", 1, 0), 0);
    cr_assert_eq(put(t, "c", "3", 1, 0), 0); /* a archived */
    t->ops->close(t);
    poke_archive("a", "xyz", 3); /* its record damaged: its age entry is left over */
    t = open_with(l3_opts(2, 60000, 0, 0));
    char buf[16];
    cr_assert_eq(archived(t, "a", buf, sizeof(buf), NULL), KHALA_ECORRUPT);
    cr_assert_eq(t->ops->del(t, "a", 1), KHALA_ENOTFOUND); /* removes the damaged copy */
    cr_assert_eq(stats(t).archive_items, 0);
    /* The archive fills past its bound: the orphan age entry (the oldest) is passed over. */
    cr_assert_eq(put(t, "d", "4", 1, 0), 0);
    cr_assert_eq(put(t, "e", "5", 1, 0), 0);
    cr_assert_eq(put(t, "f", "6", 1, 0), 0);
    cr_assert_eq(put(t, "g", "7", 1, 0), 0); /* b, c, d, e archived in turn */
    khala_tier_stats_t s = stats(t);
    cr_assert_eq(s.archive_items, 2);
    cr_assert_eq(s.errors, 1, "%s", t->err); /* the damaged read only */
    int n = 0;
    const char *keys[] = {"b", "c", "d", "e"};
    for (int i = 0; i < 4; i++)
        n += archived(t, keys[i], buf, sizeof(buf), NULL) == 0;
    cr_assert_eq(n, 2);
    cr_assert_eq(archived(t, "e", buf, sizeof(buf), NULL), 0, "%s", t->err);
    cr_assert_str_eq(buf, "5");
    t->ops->close(t);
}
