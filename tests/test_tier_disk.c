/*
 * The disk tier (daemon/tier_disk.c): round trips, the version rule, TTLs, LFU eviction within
 * both capacities, persistence and durability across a SIGKILL, hot, scan, invalidate, and the
 * errors of bad input and bad stores. Each test gets a fresh directory under /tmp, removed by
 * .fini.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <lmdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "sys.h"
#include "testutil.h"
#include "tier_disk.h"
#include "tier_disk_index.h"
#include "tier_disk_store.h"

static char g_dir[64];   /* the test's temporary directory */
static char g_store[96]; /* the store inside it */
static char g_err[256];

static void setup(void) {
    strcpy(g_dir, "/tmp/khala-disk-XXXXXX");
    cr_assert_not_null(mkdtemp(g_dir));
    snprintf(g_store, sizeof(g_store), "%s/store", g_dir);
}

static void teardown(void) {
    harness_rmtree(g_dir);
}

TestSuite(tier_disk, .init = setup, .fini = teardown, .timeout = 120);

static khala_tier_disk_opts_t opts(uint64_t max_items, uint64_t max_bytes, bool persistent) {
    return (khala_tier_disk_opts_t){.path = g_store,
                                    .level = KHALA_LEVEL_L2,
                                    .max_items = max_items,
                                    .max_bytes = max_bytes,
                                    .persistent = persistent,
                                    .max_value = 0};
}

static khala_tier_t *open_with(khala_tier_disk_opts_t o) {
    khala_tier_t *t = NULL;
    int rc = khala__tier_disk_open(&o, &t, g_err, sizeof(g_err));
    cr_assert_eq(rc, 0, "open: %d %s", rc, g_err);
    cr_assert_not_null(t);
    cr_assert_str_eq(t->ops->name, "disk");
    return t;
}

static khala_tier_t *open_store(uint64_t max_items, uint64_t max_bytes) {
    return open_with(opts(max_items, max_bytes, true));
}

static int put(khala_tier_t *t, const char *key, const char *val, uint64_t version,
               khala_type_t type, int64_t ttl_ms) {
    khala_tier_value_t v = {(void *)val, strlen(val), version, ttl_ms, type};
    return t->ops->put(t, key, strlen(key), &v);
}

/* The value of key as a string ("" if absent), and the get's code in *rc. */
static const char *get_str(khala_tier_t *t, const char *key, int *rc, khala_tier_value_t *meta) {
    static char buf[4096];
    khala_tier_value_t v = {0};
    *rc = t->ops->get(t, key, strlen(key), &v);
    buf[0] = '\0';
    if (*rc == 0) {
        cr_assert_lt(v.len, sizeof(buf));
        if (v.len)
            memcpy(buf, v.data, v.len);
        buf[v.len] = '\0';
        if (meta)
            *meta = v;
        khala__tier_value_free(&v);
    }
    return buf;
}

static int present(khala_tier_t *t, const char *key) {
    int rc;
    get_str(t, key, &rc, NULL);
    cr_assert(rc == 0 || rc == KHALA_ENOTFOUND, "get %s: %d %s", key, rc, t->err);
    return rc == 0;
}

static khala_tier_stats_t stats(khala_tier_t *t) {
    khala_tier_stats_t s;
    t->ops->stats(t, &s);
    return s;
}

/* Put keys "<prefix><i>" for i in [from, to) with value "v<i>", in one mput. */
static void mput_range(khala_tier_t *t, const char *prefix, int from, int to, khala_type_t type) {
    int n = to - from;
    khala_bytes_t *keys = calloc((size_t)n, sizeof(*keys));
    khala_tier_value_t *vals = calloc((size_t)n, sizeof(*vals));
    char(*kb)[32] = calloc((size_t)n, 32);
    char(*vb)[32] = calloc((size_t)n, 32);
    for (int i = 0; i < n; i++) {
        snprintf(kb[i], 32, "%s%d", prefix, from + i);
        snprintf(vb[i], 32, "v%d", from + i);
        keys[i] = (khala_bytes_t){(const uint8_t *)kb[i], strlen(kb[i])};
        vals[i] = (khala_tier_value_t){vb[i], strlen(vb[i]), 1, 0, type};
    }
    int rc = t->ops->mput(t, (size_t)n, keys, vals);
    cr_assert_eq(rc, 0, "mput: %d %s", rc, t->err);
    free(keys);
    free(vals);
    free(kb);
    free(vb);
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

Test(tier_disk, round_trip_keeps_value_version_type_and_ttl_for_every_type) {
    khala_tier_t *t = open_store(100, 1 << 20);
    for (int ty = 0; ty < KHALA_TYPE_COUNT; ty++) {
        char key[16];
        uint8_t val[300];
        size_t len = ty == 3 ? 0 : (size_t)(ty * 37 + 1); /* one empty value */
        for (size_t i = 0; i < len; i++)
            val[i] = (uint8_t)(i * 7 + ty); /* binary, with NULs */
        snprintf(key, sizeof(key), "k%d", ty);
        khala_tier_value_t v = {val, len, 100u + (uint64_t)ty, ty % 2 ? 60000 : 0,
                                (khala_type_t)ty};
        cr_assert_eq(t->ops->put(t, key, strlen(key), &v), 0, "%s", t->err);
    }
    for (int ty = 0; ty < KHALA_TYPE_COUNT; ty++) {
        char key[16];
        snprintf(key, sizeof(key), "k%d", ty);
        size_t len = ty == 3 ? 0 : (size_t)(ty * 37 + 1);
        khala_tier_value_t v = {0};
        cr_assert_eq(t->ops->get(t, key, strlen(key), &v), 0, "%s", t->err);
        cr_assert_eq(v.len, len);
        for (size_t i = 0; i < len; i++)
            cr_assert_eq(((uint8_t *)v.data)[i], (uint8_t)(i * 7 + ty));
        cr_assert_eq(v.version, 100u + (uint64_t)ty);
        cr_assert_eq(v.type, (khala_type_t)ty);
        if (ty % 2)
            cr_assert(v.ttl_ms > 0 && v.ttl_ms <= 60000, "ttl left %lld", (long long)v.ttl_ms);
        else
            cr_assert_eq(v.ttl_ms, 0);
        khala__tier_value_free(&v);
    }
    khala_tier_stats_t s = stats(t);
    cr_assert_eq(s.items, KHALA_TYPE_COUNT);
    cr_assert_eq(s.puts, KHALA_TYPE_COUNT);
    cr_assert_eq(s.hits, KHALA_TYPE_COUNT);
    cr_assert_eq(t->ops->health(t), 0);
    t->ops->close(t);
}

Test(tier_disk, older_version_is_refused_equal_and_newer_accepted) {
    khala_tier_t *t = open_store(100, 1 << 20);
    int rc;
    cr_assert_eq(put(t, "k", "five", 5, KHALA_TYPE_MEMORY_ENTITY, 0), 0);
    cr_assert_eq(put(t, "k", "three", 3, KHALA_TYPE_MEMORY_ENTITY, 0), KHALA_EVERSION);
    cr_assert(strstr(t->err, g_store) && strstr(t->err, "version 3"), "%s", t->err);
    cr_assert_str_eq(get_str(t, "k", &rc, NULL), "five");
    cr_assert_eq(put(t, "k", "five again", 5, KHALA_TYPE_MEMORY_ENTITY, 0), 0, "a retry");
    cr_assert_str_eq(get_str(t, "k", &rc, NULL), "five again");
    cr_assert_eq(put(t, "k", "seven", 7, KHALA_TYPE_MEMORY_ENTITY, 0), 0);
    cr_assert_str_eq(get_str(t, "k", &rc, NULL), "seven");

    /* mput skips the stale item and writes the others. */
    khala_bytes_t keys[2] = {{(const uint8_t *)"k", 1}, {(const uint8_t *)"other", 5}};
    khala_tier_value_t vals[2] = {{"stale", 5, 6, 0, 0}, {"new", 3, 1, 0, 0}};
    cr_assert_eq(t->ops->mput(t, 2, keys, vals), 0, "%s", t->err);
    cr_assert_str_eq(get_str(t, "k", &rc, NULL), "seven");
    cr_assert_str_eq(get_str(t, "other", &rc, NULL), "new");

    /* An expired item no longer holds its version. */
    cr_assert_eq(put(t, "e", "nine", 9, KHALA_TYPE_MEMORY_ENTITY, 30), 0);
    for (int i = 0; i < 500 && present(t, "e"); i++)
        sleep_ms(10);
    cr_assert_eq(put(t, "e", "one", 1, KHALA_TYPE_MEMORY_ENTITY, 0), 0, "%s", t->err);
    cr_assert_str_eq(get_str(t, "e", &rc, NULL), "one");
    t->ops->close(t);
}

Test(tier_disk, expired_item_is_a_miss_and_tick_sweeps_the_rest) {
    khala_tier_t *t = open_store(100, 1 << 20);
    int rc;
    cr_assert_eq(put(t, "short", "s", 1, KHALA_TYPE_SEARCH_RESULT, 50), 0);
    cr_assert_eq(put(t, "long", "l", 1, KHALA_TYPE_SEARCH_RESULT, 3600000), 0);
    for (int i = 0; i < 500 && present(t, "short"); i++)
        sleep_ms(10);
    get_str(t, "short", &rc, NULL);
    cr_assert_eq(rc, KHALA_ENOTFOUND);
    cr_assert_str_eq(get_str(t, "long", &rc, NULL), "l");
    khala_tier_stats_t s = stats(t);
    cr_assert_eq(s.expirations, 1, "removed lazily by the get");
    cr_assert_eq(s.items, 1);

    /* Items nobody reads are swept by tick. */
    for (int i = 0; i < 10; i++) {
        char k[8];
        snprintf(k, sizeof(k), "t%d", i);
        cr_assert_eq(put(t, k, "x", 1, KHALA_TYPE_SEARCH_RESULT, 40), 0);
    }
    cr_assert_eq(stats(t).items, 11);
    for (int i = 0; i < 500 && stats(t).items > 1; i++) {
        sleep_ms(10);
        t->ops->tick(t, khala__sys_now_ms());
    }
    s = stats(t);
    cr_assert_eq(s.items, 1);
    cr_assert_eq(s.expirations, 11);
    cr_assert_str_eq(get_str(t, "long", &rc, NULL), "l");
    t->ops->close(t);
}

Test(tier_disk, lfu_keeps_the_frequent_keys_and_evicts_cold_ones) {
    enum { CAP = 200, HOT = 20 };
    khala_tier_t *t = open_store(CAP, 1 << 24);
    mput_range(t, "k", 0, CAP, KHALA_TYPE_MEMORY_ENTITY);
    cr_assert_eq(stats(t).items, CAP);
    for (int r = 0; r < 50; r++)
        for (int i = 0; i < HOT; i++) {
            char k[16];
            snprintf(k, sizeof(k), "k%d", i);
            cr_assert(present(t, k));
        }
    for (int b = 0; b < 10; b++) /* 200 new keys, in batches of 20 */
        mput_range(t, "new", b * 20, b * 20 + 20, KHALA_TYPE_MEMORY_ENTITY);
    khala_tier_stats_t s = stats(t);
    cr_assert_eq(s.items, CAP);
    cr_assert_eq(s.evictions, CAP);
    int hot_kept = 0, cold_kept = 0;
    for (int i = 0; i < CAP; i++) {
        char k[16];
        snprintf(k, sizeof(k), "k%d", i);
        if (present(t, k))
            *(i < HOT ? &hot_kept : &cold_kept) += 1;
    }
    cr_assert_geq(hot_kept, HOT - 2, "frequent keys kept: %d of %d", hot_kept, HOT);
    cr_assert_leq(cold_kept, (CAP - HOT) / 2, "cold keys kept: %d of %d", cold_kept, CAP - HOT);
    t->ops->close(t);
}

Test(tier_disk, byte_limit_binds) {
    khala_tier_t *t = open_store(1000, 10000);
    char val[1001];
    memset(val, 'x', 1000);
    val[1000] = '\0';
    for (int i = 0; i < 50; i++) {
        char k[16];
        snprintf(k, sizeof(k), "b%02d", i);
        cr_assert_eq(put(t, k, val, 1, KHALA_TYPE_EMBEDDING, 0), 0, "%s", t->err);
        cr_assert_leq(stats(t).bytes, 10000);
    }
    khala_tier_stats_t s = stats(t);
    cr_assert_eq(s.items, 9, "9 items of 1003 bytes fit 10000");
    cr_assert_eq(s.bytes, 9 * 1003);
    cr_assert_eq(s.evictions, 41);
    cr_assert(present(t, "b49"), "the newest survives");

    /* An item larger than the whole store is refused. */
    char *big = malloc(10001);
    memset(big, 'y', 10000);
    big[10000] = '\0';
    cr_assert_eq(put(t, "big", big, 1, KHALA_TYPE_EMBEDDING, 0), KHALA_ETOOBIG);
    cr_assert(strstr(t->err, "max_bytes"), "%s", t->err);
    free(big);
    t->ops->close(t);
}

Test(tier_disk, persistent_store_survives_reopen_and_others_are_emptied) {
    khala_tier_t *t = open_store(100, 1 << 20);
    cr_assert_eq(put(t, "a", "alpha", 3, KHALA_TYPE_AGENT_RESPONSE, 0), 0);
    cr_assert_eq(put(t, "b", "beta", 4, KHALA_TYPE_VERIFICATION, 3600000), 0);
    cr_assert_eq(put(t, "c", "gamma", 5, KHALA_TYPE_SEARCH_INDEX, 0), 0);
    for (int i = 0; i < 300; i++)
        cr_assert(present(t, "c"));
    t->ops->tick(t, khala__sys_now_ms() + 5000); /* flushes the counters (close would too) */
    t->ops->close(t);

    t = open_store(100, 1 << 20);
    int rc;
    khala_tier_value_t m;
    cr_assert_str_eq(get_str(t, "a", &rc, &m), "alpha");
    cr_assert_eq(m.version, 3);
    cr_assert_eq(m.type, KHALA_TYPE_AGENT_RESPONSE);
    cr_assert_str_eq(get_str(t, "b", &rc, &m), "beta");
    cr_assert(m.ttl_ms > 0 && m.ttl_ms <= 3600000);
    cr_assert_eq(stats(t).items, 3);
    cr_assert_eq(stats(t).bytes, 1 + 5 + 1 + 4 + 1 + 5);
    t->ops->close(t);

    t = open_with(opts(100, 1 << 20, false));
    cr_assert_eq(stats(t).items, 0);
    get_str(t, "a", &rc, NULL);
    cr_assert_eq(rc, KHALA_ENOTFOUND);
    t->ops->close(t);
}

static int hot_first(void *arg, const void *key, size_t klen) {
    char *first = arg;
    if (!first[0]) {
        memcpy(first, key, klen);
        first[klen] = '\0';
    }
    return 0;
}

Test(tier_disk, counters_survive_reopen) {
    khala_tier_t *t = open_store(100, 1 << 20);
    mput_range(t, "k", 0, 10, KHALA_TYPE_MEMORY_ENTITY);
    for (int i = 0; i < 1000; i++)
        cr_assert(present(t, "k7"));
    t->ops->close(t); /* close writes the counters */
    t = open_store(100, 1 << 20);
    char first[32] = "";
    cr_assert_eq(t->ops->hot(t, 3, hot_first, first), 0);
    cr_assert_str_eq(first, "k7");
    t->ops->close(t);
}

/* The child of the durability test: put items one by one, acknowledge each on the pipe. */
static void durable_writer(int fd) {
    khala_tier_disk_opts_t o = opts(100000, 1 << 28, true);
    khala_tier_t *t;
    if (khala__tier_disk_open(&o, &t, NULL, 0))
        _exit(2);
    for (uint32_t i = 0; i < 100000; i++) {
        char k[16];
        uint8_t val[200];
        snprintf(k, sizeof(k), "d%u", i);
        tu_value_make(val, sizeof(val), i, 1);
        khala_tier_value_t v = {val, sizeof(val), i + 1, 0, KHALA_TYPE_MEMORY_ENTITY};
        if (t->ops->put(t, k, strlen(k), &v))
            _exit(3);
        if (write(fd, &i, sizeof(i)) != sizeof(i))
            _exit(4);
    }
    _exit(0);
}

Test(tier_disk, acknowledged_puts_survive_sigkill) {
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(p[0]);
        durable_writer(p[1]);
    }
    close(p[1]);
    uint32_t acked = 0, idx;
    int have = 0;
    while (acked < 60 && read(p[0], &idx, sizeof(idx)) == sizeof(idx)) {
        cr_assert_eq(idx, acked);
        acked++;
        have = 1;
    }
    cr_assert(have, "the writer acknowledged nothing");
    kill(pid, SIGKILL);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    /* Acknowledgements already in the pipe count too. */
    while (read(p[0], &idx, sizeof(idx)) == sizeof(idx)) {
        cr_assert_eq(idx, acked);
        acked++;
    }
    close(p[0]);

    khala_tier_t *t = open_with(opts(100000, 1 << 28, true));
    for (uint32_t i = 0; i < acked; i++) {
        char k[16];
        snprintf(k, sizeof(k), "d%u", i);
        khala_tier_value_t v = {0};
        int rc = t->ops->get(t, k, strlen(k), &v);
        cr_assert_eq(rc, 0, "acknowledged item %u of %u lost: %s", i, acked, t->err);
        cr_assert_eq(v.len, 200);
        cr_assert(tu_value_ok(v.data, v.len, i), "item %u damaged", i);
        cr_assert_eq(v.version, i + 1);
        khala__tier_value_free(&v);
    }
    cr_assert_geq(stats(t).items, acked);
    t->ops->close(t);
}

typedef struct seen {
    char keys[64][32];
    int n;
    int stop_after; /* 0 = never stop */
} seen_t;

static int collect(void *arg, const void *key, size_t klen) {
    seen_t *s = arg;
    cr_assert_lt(s->n, 64);
    cr_assert_lt(klen, 32);
    memcpy(s->keys[s->n], key, klen);
    s->keys[s->n][klen] = '\0';
    s->n++;
    return s->stop_after && s->n >= s->stop_after;
}

Test(tier_disk, hot_lists_the_most_used_first) {
    khala_tier_t *t = open_store(100, 1 << 20);
    mput_range(t, "k", 0, 4, KHALA_TYPE_MEMORY_ENTITY);
    for (int i = 0; i < 3000; i++)
        cr_assert(present(t, "k2"));
    for (int i = 0; i < 150; i++)
        cr_assert(present(t, "k0"));
    cr_assert(present(t, "k3"));
    seen_t s = {0};
    cr_assert_eq(t->ops->hot(t, 10, collect, &s), 0);
    cr_assert_eq(s.n, 4);
    cr_assert_str_eq(s.keys[0], "k2");
    cr_assert_str_eq(s.keys[1], "k0");
    cr_assert_str_eq(s.keys[2], "k3");
    cr_assert_str_eq(s.keys[3], "k1");
    seen_t two = {0};
    cr_assert_eq(t->ops->hot(t, 2, collect, &two), 0);
    cr_assert_eq(two.n, 2);
    cr_assert_str_eq(two.keys[1], "k0");
    seen_t stop = {.stop_after = 1};
    cr_assert_eq(t->ops->hot(t, 10, collect, &stop), 0);
    cr_assert_eq(stop.n, 1, "a non-zero return stops the visit");
    t->ops->close(t);
}

/* scan: count visits per key index ("s<i>"). */
typedef struct tally {
    int visits[400];
    int calls;
} tally_t;

static int tally_key(void *arg, const void *key, size_t klen) {
    tally_t *tl = arg;
    char buf[32];
    cr_assert_lt(klen, sizeof(buf));
    memcpy(buf, key, klen);
    buf[klen] = '\0';
    int i = atoi(buf + 1);
    cr_assert(i >= 0 && i < 400);
    tl->visits[i]++;
    tl->calls++;
    return 0;
}

Test(tier_disk, scan_visits_every_key_across_pages) {
    khala_tier_t *t = open_store(1000, 1 << 20);
    mput_range(t, "s", 0, 250, KHALA_TYPE_MEMORY_ENTITY);
    tally_t tl = {0};
    uint64_t cursor = 0;
    int pages = 0;
    do {
        cr_assert_eq(t->ops->scan(t, &cursor, NULL, 17, tally_key, &tl), 0, "%s", t->err);
        pages++;
        if (pages == 3) {
            /* Change the store mid-scan: new keys and deletions of others. */
            mput_range(t, "s", 300, 320, KHALA_TYPE_MEMORY_ENTITY);
            cr_assert_eq(t->ops->del(t, "s249", 4), 0);
            cr_assert_eq(t->ops->del(t, "s0", 2), 0);
        }
        cr_assert_lt(pages, 1000);
    } while (cursor != 0);
    cr_assert_geq(pages, 250 / 17);
    for (int i = 1; i < 249; i++)
        cr_assert_geq(tl.visits[i], 1, "key s%d was not visited", i);

    /* A pattern filters; the page size counts examined keys. */
    tally_t ones = {0};
    cursor = 0;
    do
        cr_assert_eq(t->ops->scan(t, &cursor, "s1?", 0, tally_key, &ones), 0);
    while (cursor != 0);
    cr_assert_eq(ones.calls, 10, "s10..s19");

    /* A stopping callback resumes after the key it stopped at. */
    seen_t s = {.stop_after = 1};
    cursor = 0;
    cr_assert_eq(t->ops->scan(t, &cursor, NULL, 50, collect, &s), 0);
    cr_assert_neq(cursor, 0);
    s.stop_after = 0;
    cr_assert_eq(t->ops->scan(t, &cursor, NULL, 1, collect, &s), 0);
    cr_assert_eq(s.n, 2);
    cr_assert(strcmp(s.keys[0], s.keys[1]) < 0, "%s then %s", s.keys[0], s.keys[1]);

    uint64_t bogus = 12345;
    cr_assert_eq(t->ops->scan(t, &bogus, NULL, 10, collect, &s), -EINVAL);
    cr_assert(strstr(t->err, "cursor"), "%s", t->err);
    t->ops->close(t);
}

Test(tier_disk, invalidate_by_prefix_type_and_all) {
    khala_tier_t *t = open_store(1000, 1 << 20);
    mput_range(t, "user:", 0, 30, KHALA_TYPE_MEMORY_ENTITY);
    mput_range(t, "users", 0, 5, KHALA_TYPE_MEMORY_ENTITY);
    mput_range(t, "emb:", 0, 20, KHALA_TYPE_EMBEDDING);
    mput_range(t, "user:e", 0, 4, KHALA_TYPE_EMBEDDING);
    uint64_t removed = 0;
    cr_assert_eq(t->ops->invalidate(t, "user:", 5, -1, &removed), 0, "%s", t->err);
    cr_assert_eq(removed, 34);
    cr_assert(!present(t, "user:7"));
    cr_assert(!present(t, "user:e1"));
    cr_assert(present(t, "users1"));
    cr_assert(present(t, "emb:3"));
    cr_assert_eq(stats(t).items, 25);

    mput_range(t, "x", 0, 5, KHALA_TYPE_EMBEDDING);
    cr_assert_eq(t->ops->invalidate(t, NULL, 0, KHALA_TYPE_EMBEDDING, &removed), 0);
    cr_assert_eq(removed, 25);
    cr_assert(!present(t, "emb:3"));
    cr_assert(present(t, "users1"));

    mput_range(t, "e", 0, 5, KHALA_TYPE_EMBEDDING);
    mput_range(t, "ee", 0, 5, KHALA_TYPE_CONSOLIDATION);
    cr_assert_eq(t->ops->invalidate(t, "ee", 2, KHALA_TYPE_CONSOLIDATION, &removed), 0);
    cr_assert_eq(removed, 5);
    cr_assert(present(t, "e1"));

    cr_assert_eq(t->ops->invalidate(t, NULL, 0, -1, &removed), 0);
    cr_assert_eq(removed, 10);
    cr_assert_eq(stats(t).items, 0);
    cr_assert(!present(t, "users1"));
    cr_assert_eq(put(t, "after", "ok", 1, KHALA_TYPE_MEMORY_ENTITY, 0), 0, "usable after");
    cr_assert(present(t, "after"));
    t->ops->close(t);
}

Test(tier_disk, del_removes_and_a_missing_key_is_enotfound) {
    khala_tier_t *t = open_store(100, 1 << 20);
    cr_assert_eq(put(t, "k", "v", 1, KHALA_TYPE_MEMORY_ENTITY, 0), 0);
    cr_assert_eq(t->ops->del(t, "k", 1), 0);
    cr_assert(!present(t, "k"));
    cr_assert_eq(t->ops->del(t, "k", 1), KHALA_ENOTFOUND);
    cr_assert_eq(stats(t).items, 0);
    t->ops->close(t);
}

Test(tier_disk, bad_input_gets_clear_codes_and_messages) {
    khala_tier_disk_opts_t o = opts(100, 1 << 20, true);
    o.max_value = 1000;
    khala_tier_t *t = open_with(o);
    char key[KHALA_KEY_MAX + 2];
    memset(key, 'a', sizeof(key));
    khala_tier_value_t v = {"x", 1, 1, 0, KHALA_TYPE_MEMORY_ENTITY};
    khala_tier_value_t out = {0};

    cr_assert_eq(t->ops->put(t, "", 0, &v), KHALA_EKEY);
    cr_assert(strstr(t->err, "empty") && strstr(t->err, g_store), "%s", t->err);
    cr_assert_eq(t->ops->get(t, "", 0, &out), KHALA_EKEY);
    cr_assert_eq(t->ops->del(t, "", 0), KHALA_EKEY);

    cr_assert_eq(t->ops->put(t, key, KHALA_KEY_MAX + 1, &v), KHALA_EKEY);
    cr_assert(strstr(t->err, "251 bytes, max 250"), "%s", t->err);
    cr_assert_eq(t->ops->get(t, key, KHALA_KEY_MAX + 1, &out), KHALA_EKEY);
    cr_assert_eq(t->ops->put(t, key, KHALA_KEY_MAX, &v), 0, "a key of KHALA_KEY_MAX is fine");

    char big[1001];
    memset(big, 'b', sizeof(big));
    khala_tier_value_t bv = {big, 1001, 1, 0, KHALA_TYPE_MEMORY_ENTITY};
    cr_assert_eq(t->ops->put(t, "big", 3, &bv), KHALA_ETOOBIG);
    cr_assert(strstr(t->err, "1001 bytes, max 1000"), "%s", t->err);
    bv.len = 1000;
    cr_assert_eq(t->ops->put(t, "big", 3, &bv), 0);

    khala_tier_value_t bt = {"x", 1, 1, 0, (khala_type_t)9};
    cr_assert_eq(t->ops->put(t, "badtype", 7, &bt), -EINVAL);
    cr_assert_eq(t->ops->invalidate(t, NULL, 0, 8, NULL), -EINVAL);

    /* A failing mput writes nothing. */
    khala_bytes_t keys[2] = {{(const uint8_t *)"fine", 4}, {(const uint8_t *)"", 0}};
    khala_tier_value_t vals[2] = {v, v};
    cr_assert_eq(t->ops->mput(t, 2, keys, vals), KHALA_EKEY);
    cr_assert(!present(t, "fine"));
    cr_assert_eq(stats(t).items, 2);
    t->ops->close(t);
}

Test(tier_disk, bad_options_and_paths_are_refused_clearly) {
    khala_tier_t *t = NULL;
    khala_tier_disk_opts_t o = opts(0, 100, true);
    cr_assert_eq(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), KHALA_ECONFIG);
    cr_assert(strstr(g_err, "max_items"), "%s", g_err);
    o = opts(10, 100, true);
    o.level = KHALA_LEVEL_L1;
    cr_assert_eq(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), KHALA_ECONFIG);

    /* A path through a regular file. */
    char file[128], under[160];
    snprintf(file, sizeof(file), "%s/plainfile", g_dir);
    FILE *f = fopen(file, "w");
    fputs("not a directory", f);
    fclose(f);
    snprintf(under, sizeof(under), "%s/store", file);
    o = opts(10, 1000, true);
    o.path = under;
    cr_assert_eq(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), -ENOTDIR);
    cr_assert(strstr(g_err, under), "%s", g_err);
    o.path = file;
    cr_assert_eq(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), -ENOTDIR);
    cr_assert(strstr(g_err, "not a directory"), "%s", g_err);

    /* A directory we may not write (root may write anywhere: only checked for others). */
    if (geteuid() != 0) {
        char ro[128];
        snprintf(ro, sizeof(ro), "%s/readonly", g_dir);
        cr_assert_eq(mkdir(ro, 0500), 0);
        o = opts(10, 1000, true);
        o.path = ro;
        cr_assert_eq(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), -EACCES);
        cr_assert(strstr(g_err, ro), "%s", g_err);
        chmod(ro, 0700);
    }

    /* Garbage where the data file should be. */
    char data[160];
    mkdir(g_store, 0700);
    snprintf(data, sizeof(data), "%s/data.mdb", g_store);
    f = fopen(data, "w");
    for (int i = 0; i < 2000; i++)
        fputs("garbage!", f);
    fclose(f);
    o = opts(10, 1000, true);
    cr_assert_eq(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), KHALA_ECORRUPT);
    cr_assert(strstr(g_err, "is not a khala disk store") && strstr(g_err, g_store), "%s", g_err);
    cr_assert_null(t);
}

Test(tier_disk, foreign_and_newer_stores_are_refused) {
    /* An LMDB store that is not ours. */
    mkdir(g_store, 0700);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_open(env, g_store, 0, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
    MDB_val k = {3, "abc"}, v = {3, "xyz"};
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    khala_tier_t *t = NULL;
    khala_tier_disk_opts_t o = opts(10, 1000, true);
    cr_assert_eq(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), KHALA_ECONFIG);
    cr_assert(strstr(g_err, "is not a khala disk store"), "%s", g_err);

    /* A khala store of a future format. */
    snprintf(g_store, sizeof(g_store), "%s/newer", g_dir);
    t = open_store(10, 1000);
    t->ops->close(t);
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 4), 0);
    cr_assert_eq(mdb_env_open(env, g_store, 0, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
    uint8_t meta[16] = "KHALADSK";
    uint32_t fmt = 2;
    memcpy(meta + 8, &fmt, 4);
    k = (MDB_val){6, "format"};
    v = (MDB_val){16, meta};
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    o = opts(10, 1000, true);
    cr_assert_eq(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), KHALA_ECONFIG);
    cr_assert(strstr(g_err, "newer"), "%s", g_err);
}

Test(tier_disk, a_store_has_one_opener) {
    khala_tier_t *t = open_store(10, 1000);
    khala_tier_t *t2 = NULL;
    khala_tier_disk_opts_t o = opts(10, 1000, true);
    cr_assert_eq(khala__tier_disk_open(&o, &t2, g_err, sizeof(g_err)), -EBUSY);
    cr_assert(strstr(g_err, "in use"), "%s", g_err);
    t->ops->close(t);
    t = open_store(10, 1000);
    t->ops->close(t);
}

Test(tier_disk, lowered_capacity_trims_at_open) {
    khala_tier_t *t = open_store(100, 1 << 20);
    mput_range(t, "k", 0, 100, KHALA_TYPE_MEMORY_ENTITY);
    t->ops->close(t);
    t = open_store(40, 1 << 20);
    khala_tier_stats_t s = stats(t);
    cr_assert_eq(s.items, 40);
    cr_assert_eq(s.evictions, 60);
    t->ops->close(t);
}

Test(tier_disk, mget_mixes_hits_and_misses) {
    khala_tier_t *t = open_store(100, 1 << 20);
    cr_assert_eq(put(t, "a", "alpha", 1, KHALA_TYPE_MEMORY_ENTITY, 0), 0);
    cr_assert_eq(put(t, "b", "beta", 2, KHALA_TYPE_EMBEDDING, 0), 0);
    cr_assert_eq(put(t, "gone", "g", 1, KHALA_TYPE_EMBEDDING, 20), 0);
    sleep_ms(60);
    khala_bytes_t keys[5] = {{(const uint8_t *)"a", 1},
                             {(const uint8_t *)"missing", 7},
                             {(const uint8_t *)"b", 1},
                             {(const uint8_t *)"gone", 4},
                             {(const uint8_t *)"", 0}};
    khala_tier_value_t out[5] = {0};
    int rcs[5];
    cr_assert_eq(t->ops->mget(t, 5, keys, out, rcs), 0);
    cr_assert_eq(rcs[0], 0);
    cr_assert_eq(rcs[1], KHALA_ENOTFOUND);
    cr_assert_eq(rcs[2], 0);
    cr_assert_eq(rcs[3], KHALA_ENOTFOUND);
    cr_assert_eq(rcs[4], KHALA_EKEY);
    cr_assert_eq(out[0].len, 5);
    cr_assert_eq(memcmp(out[0].data, "alpha", 5), 0);
    cr_assert_eq(out[2].version, 2);
    cr_assert_eq(out[2].type, KHALA_TYPE_EMBEDDING);
    cr_assert_eq(memcmp(out[2].data, "beta", 4), 0);
    khala__tier_value_free(&out[0]);
    khala__tier_value_free(&out[2]);
    khala_tier_stats_t s = stats(t);
    cr_assert_eq(s.hits, 2);
    cr_assert_eq(s.misses, 3);
    cr_assert_eq(s.expirations, 1);
    cr_assert_eq(s.items, 2);
    t->ops->close(t);
}

/* The map grows when it is full: a reader elsewhere (here another process's LMDB read
 * transaction) pins the pages of an old snapshot, so overwrites cannot reuse them and the store
 * outgrows its first map (about 20 MiB for these capacities). Every put within the capacities
 * still succeeds and the last value is read back. */
Test(tier_disk, puts_succeed_when_a_pinned_snapshot_fills_the_first_map) {
    khala_tier_disk_opts_t o = opts(10, 1 << 20, true);
    o.max_value = 1 << 20;
    o.sync_every_ms = 1000; /* no fsync per put: this test is about room, not durability */
    khala_tier_t *t = open_with(o);
    static char val[512 * 1024 + 1];
    memset(val, 'a', sizeof(val) - 1);
    cr_assert_eq(put(t, "big", val, 1, KHALA_TYPE_MEMORY_ENTITY, 0), 0, "%s", t->err);

    int up[2], down[2];
    cr_assert_eq(pipe(up), 0);
    cr_assert_eq(pipe(down), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(up[0]);
        close(down[1]); /* so that the read below ends if the test process dies */
        MDB_env *env;
        MDB_txn *txn;
        char c = 'x';
        if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 3) ||
            mdb_env_open(env, g_store, 0, 0600) || mdb_txn_begin(env, NULL, MDB_RDONLY, &txn))
            c = 'e';
        char q;
        if (write(up[1], &c, 1) != 1 || read(down[0], &q, 1) != 1 || c == 'e')
            _exit(1);
        mdb_txn_abort(txn); /* frees its reader slot: a dead process's would pin the pages */
        mdb_env_close(env);
        _exit(0);
    }
    close(up[1]);
    close(down[0]);
    char c = 0;
    cr_assert_eq(read(up[0], &c, 1), 1);
    cr_assert_eq(c, 'x', "the reader could not start");

    for (int i = 2; i <= 60; i++) {
        memset(val, 'a' + i % 26, sizeof(val) - 1);
        int rc = put(t, "big", val, (uint64_t)i, KHALA_TYPE_MEMORY_ENTITY, 0);
        cr_assert_eq(rc, 0, "put %d: %d %s", i, rc, t->err);
    }
    cr_assert_eq(write(down[1], "q", 1), 1);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);

    char data[160];
    struct stat sb;
    snprintf(data, sizeof(data), "%s/data.mdb", g_store);
    cr_assert_eq(stat(data, &sb), 0);
    cr_assert_gt(sb.st_size, 24 << 20, "%lld bytes: the store went beyond its first map",
                 (long long)sb.st_size);
    khala_tier_value_t got = {0};
    cr_assert_eq(t->ops->get(t, "big", 3, &got), 0, "%s", t->err);
    cr_assert_eq(got.version, 60);
    cr_assert_eq(got.len, sizeof(val) - 1);
    cr_assert_eq(memcmp(got.data, val, got.len), 0, "the last value is read back");
    khala__tier_value_free(&got);
    khala_tier_stats_t s = stats(t);
    cr_assert_eq(s.items, 1);
    cr_assert_eq(s.errors, 0);
    t->ops->close(t);
    close(up[0]);
    close(down[1]);
}

/* A store whose lock file cannot be opened (here: a directory is in its place) is refused with
 * the lock file named. */
Test(tier_disk, an_unopenable_lock_file_is_named) {
    char lock[160];
    cr_assert_eq(mkdir(g_store, 0700), 0);
    snprintf(lock, sizeof(lock), "%s/khala.lock", g_store);
    cr_assert_eq(mkdir(lock, 0700), 0);
    khala_tier_t *t = NULL;
    khala_tier_disk_opts_t o = opts(10, 1000, true);
    cr_assert_eq(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), -EISDIR);
    cr_assert(strstr(g_err, "cannot open") && strstr(g_err, lock), "%s", g_err);
    cr_assert_null(t);
}

/* LMDB stores that look almost like ours: a plain record named "meta" where our database
 * should be, or a "meta" database without the format record. Both are refused as not ours. */
Test(tier_disk, stores_without_a_valid_meta_database_are_refused) {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    khala_tier_t *t = NULL;
    khala_tier_disk_opts_t o = opts(10, 1000, true);

    cr_assert_eq(mkdir(g_store, 0700), 0);
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_open(env, g_store, 0, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
    MDB_val k = {4, "meta"}, v = {3, "xyz"};
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    cr_assert_eq(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), KHALA_ECONFIG);
    cr_assert(strstr(g_err, "not a khala disk store") && strstr(g_err, "not a database") &&
                  strstr(g_err, g_store),
              "%s", g_err);
    cr_assert_null(t);

    snprintf(g_store, sizeof(g_store), "%s/nometa", g_dir);
    o = opts(10, 1000, true);
    cr_assert_eq(mkdir(g_store, 0700), 0);
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 3), 0);
    cr_assert_eq(mdb_env_open(env, g_store, 0, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "meta", MDB_CREATE, &dbi), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    cr_assert_eq(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), KHALA_ECONFIG);
    cr_assert(strstr(g_err, "no valid format record") && strstr(g_err, g_store), "%s", g_err);
    cr_assert_null(t);
}

Test(tier_disk, a_max_value_over_the_limit_is_refused) {
    khala_tier_t *t = NULL;
    khala_tier_disk_opts_t o = opts(10, 1000, true);
    o.max_value = KHALA_TIER_DISK_VALUE_MAX + 1;
    cr_assert_eq(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), KHALA_ECONFIG);
    cr_assert(strstr(g_err, "max_value") && strstr(g_err, g_store), "%s", g_err);
    cr_assert_null(t);
    struct stat sb;
    cr_assert_neq(stat(g_store, &sb), 0, "nothing was created");
}

/* No key is longer than KHALA_KEY_MAX: a longer prefix matches nothing and removes nothing. */
Test(tier_disk, invalidating_a_prefix_longer_than_any_key_removes_nothing) {
    khala_tier_t *t = open_store(100, 1 << 20);
    char prefix[KHALA_KEY_MAX + 2];
    memset(prefix, 'k', sizeof(prefix));
    char key[KHALA_KEY_MAX + 1];
    memset(key, 'k', KHALA_KEY_MAX);
    key[KHALA_KEY_MAX] = '\0';
    cr_assert_eq(put(t, key, "v", 1, KHALA_TYPE_MEMORY_ENTITY, 0), 0, "%s", t->err);
    uint64_t removed = 99;
    cr_assert_eq(t->ops->invalidate(t, prefix, KHALA_KEY_MAX + 1, -1, &removed), 0, "%s", t->err);
    cr_assert_eq(removed, 0);
    cr_assert(present(t, key));
    cr_assert_eq(stats(t).items, 1);
    t->ops->close(t);
}

/* ---- A disk that refuses writes ----------------------------------------------------------- */

/* A disk that refuses every write, shown for real: the process's file-size limit
 * (RLIMIT_FSIZE) set below the store's data pages makes each pwrite of a page fail with EFBIG,
 * as a full or failing disk fails it, while reads and LMDB's meta pages (the first two) are
 * untouched. SIGXFSZ, which the kernel sends too, is ignored. disk_refuse(1) starts it,
 * disk_refuse(0) ends it; no Criterion assertion runs in between (its reports are files). */
static void disk_refuse(int on) {
    static struct rlimit saved;
    if (on) {
        cr_assert_eq(getrlimit(RLIMIT_FSIZE, &saved), 0);
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit lim = {2 * (rlim_t)sysconf(_SC_PAGESIZE), saved.rlim_max};
        cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    } else {
        cr_assert_eq(setrlimit(RLIMIT_FSIZE, &saved), 0);
    }
}

/* The codes and messages of the writes made while the disk refuses them. */
typedef struct refused {
    int rc;
    char err[256];
} refused_t;

static void note(refused_t *r, khala_tier_t *t, int rc) {
    r->rc = rc;
    memcpy(r->err, t->err, sizeof(r->err));
}

static void assert_refused(const refused_t *r, const char *what) {
    cr_assert_eq(r->rc, KHALA_ETIER, "%s: %d %s", what, r->rc, r->err);
    cr_assert(strstr(r->err, g_store) && strstr(r->err, strerror(EFBIG)),
              "%s: the message names the store and the cause: %s", what, r->err);
}

/* Every kind of write fails with KHALA_ETIER (khalad then marks the level down and queues) and a
 * message naming the store and the system's error; each failed write leaves the store as it
 * was (the old value, the key not deleted, nothing invalidated), in memory and on disk; and once
 * the disk takes writes again the same writes succeed, without a reopen. */
Test(tier_disk, writes_to_a_disk_that_refuses_them_fail_cleanly_and_succeed_once_it_takes_them) {
    khala_tier_t *t = open_store(100, 1 << 20);
    cr_assert_eq(put(t, "a", "old", 1, KHALA_TYPE_MEMORY_ENTITY, 0), 0, "%s", t->err);
    cr_assert_eq(put(t, "b", "kept", 1, KHALA_TYPE_MEMORY_ENTITY, 0), 0, "%s", t->err);
    cr_assert_eq(put(t, "c", "kept", 1, KHALA_TYPE_EMBEDDING, 0), 0, "%s", t->err);
    uint64_t errors_before = stats(t).errors;

    refused_t r_put, r_mput, r_del, r_prefix, r_type, r_all;
    uint64_t removed_prefix = 99, removed_all = 99;
    int r_del_missing;
    disk_refuse(1);
    note(&r_put, t, put(t, "a", "new", 2, KHALA_TYPE_MEMORY_ENTITY, 0));
    khala_bytes_t keys[2] = {{(const uint8_t *)"d", 1}, {(const uint8_t *)"e", 1}};
    khala_tier_value_t vals[2] = {{"vd", 2, 1, 0, KHALA_TYPE_MEMORY_ENTITY},
                                  {"ve", 2, 1, 0, KHALA_TYPE_MEMORY_ENTITY}};
    note(&r_mput, t, t->ops->mput(t, 2, keys, vals));
    note(&r_del, t, t->ops->del(t, "b", 1));
    r_del_missing = t->ops->del(t, "nothing", 7); /* nothing to write: no disk access */
    note(&r_prefix, t, t->ops->invalidate(t, "b", 1, -1, &removed_prefix));
    note(&r_type, t, t->ops->invalidate(t, NULL, 0, KHALA_TYPE_EMBEDDING, NULL));
    note(&r_all, t, t->ops->invalidate(t, NULL, 0, -1, &removed_all));
    /* Counters are written by the tick, once a second: make it due. */
    khala_tier_value_t got = {0};
    if (t->ops->get(t, "b", 1, &got) == 0)
        khala__tier_value_free(&got);
    t->ops->tick(t, khala__sys_now_ms() + 60 * 1000);
    disk_refuse(0);

    assert_refused(&r_put, "put");
    assert_refused(&r_mput, "mput");
    assert_refused(&r_del, "del");
    assert_refused(&r_prefix, "invalidate a prefix");
    assert_refused(&r_type, "invalidate a type");
    assert_refused(&r_all, "invalidate everything");
    cr_assert_eq(r_del_missing, KHALA_ENOTFOUND);
    cr_assert_eq(removed_prefix, 0, "nothing was removed");
    khala_tier_stats_t s = stats(t);
    cr_assert_geq(s.errors, errors_before + 6, "every refused write is counted: %llu",
                  (unsigned long long)s.errors);
    cr_assert_eq(s.items, 3);
    int rc;
    cr_assert_str_eq(get_str(t, "a", &rc, NULL), "old");
    cr_assert_str_eq(get_str(t, "b", &rc, NULL), "kept");
    cr_assert_str_eq(get_str(t, "c", &rc, NULL), "kept");
    cr_assert(!present(t, "d") && !present(t, "e"));

    /* The disk takes writes again: the same writes succeed. */
    cr_assert_eq(t->ops->health(t), 0);
    cr_assert_eq(put(t, "a", "new", 2, KHALA_TYPE_MEMORY_ENTITY, 0), 0, "%s", t->err);
    cr_assert_eq(t->ops->mput(t, 2, keys, vals), 0, "%s", t->err);
    cr_assert_eq(t->ops->del(t, "b", 1), 0, "%s", t->err);
    cr_assert_eq(t->ops->invalidate(t, NULL, 0, KHALA_TYPE_EMBEDDING, NULL), 0, "%s", t->err);
    cr_assert_str_eq(get_str(t, "a", &rc, NULL), "new");
    cr_assert_eq(stats(t).items, 3, "a, d and e");
    t->ops->close(t);

    /* What memory said is what the disk holds. */
    t = open_store(100, 1 << 20);
    cr_assert_eq(stats(t).items, 3);
    cr_assert_str_eq(get_str(t, "a", &rc, NULL), "new");
    cr_assert_str_eq(get_str(t, "d", &rc, NULL), "vd");
    cr_assert(!present(t, "b") && !present(t, "c"));
    t->ops->close(t);
}

/* A store reopened with lower capacities is trimmed at open; when the disk refuses that write,
 * the open fails with KHALA_ETIER naming the store and the step, and succeeds (trimmed) once the
 * disk takes writes again. */
Test(tier_disk, an_open_that_must_trim_fails_cleanly_on_a_disk_that_refuses_writes) {
    khala_tier_t *t = open_store(100, 1 << 20);
    mput_range(t, "k", 0, 20, KHALA_TYPE_MEMORY_ENTITY);
    t->ops->close(t);

    khala_tier_disk_opts_t o = opts(5, 1 << 20, true);
    khala_tier_t *t2 = NULL;
    disk_refuse(1);
    int rc = khala__tier_disk_open(&o, &t2, g_err, sizeof(g_err));
    disk_refuse(0);
    cr_assert_eq(rc, KHALA_ETIER, "%d %s", rc, g_err);
    cr_assert(strstr(g_err, g_store) && strstr(g_err, "evicting down to the capacities") &&
                  strstr(g_err, strerror(EFBIG)),
              "%s", g_err);
    cr_assert_null(t2);

    t = open_with(o);
    cr_assert_eq(stats(t).items, 5);
    t->ops->close(t);
}

/* An L3 store (with an archive) whose periodic cleanup runs every second, 100 rows a step. */
static khala_tier_disk_opts_t l3_cleanup_opts(uint64_t max_items, int64_t retention_ms) {
    khala_tier_disk_opts_t o = opts(max_items, 1 << 20, true);
    o.level = KHALA_LEVEL_L3;
    o.archive_retention_ms = retention_ms;
    o.cleanup_interval_ms = 1000;
    o.cleanup_batch = 100;
    return o;
}

static void assert_cleanup_refused(khala_tier_t *t, const char *err, uint64_t errors_before) {
    cr_assert(strstr(err, g_store) && strstr(err, "cleaning up") && strstr(err, strerror(EFBIG)),
              "the message names the store, the step and the cause: %s", err);
    cr_assert_gt(stats(t).errors, errors_before);
}

/* The periodic cleanup's steps (deleting expired items, evicting down to lowered capacities into
 * the archive) change nothing while the disk refuses their writes, name the failure, and finish
 * the work once it takes them again. */
Test(tier_disk, an_l3_cleanup_on_a_disk_that_refuses_writes_keeps_everything_and_resumes) {
    khala_tier_disk_opts_t o = l3_cleanup_opts(1000, 60000);
    o.cleanup_interval_ms = 0;
    khala_tier_t *t = open_with(o);
    khala_bytes_t keys[220];
    khala_tier_value_t vals[220];
    char kb[220][16];
    for (int i = 0; i < 220; i++) {
        snprintf(kb[i], sizeof(kb[i]), "%s%d", i < 20 ? "dead" : "live", i);
        keys[i] = (khala_bytes_t){(const uint8_t *)kb[i], strlen(kb[i])};
        vals[i] = (khala_tier_value_t){"v", 1, 1, i < 20 ? 1 : 0, KHALA_TYPE_MEMORY_ENTITY};
    }
    cr_assert_eq(t->ops->mput(t, 220, keys, vals), 0, "%s", t->err);
    t->ops->close(t);
    sleep_ms(20); /* the 20 dead ones expire */

    t = open_with(l3_cleanup_opts(50, 60000)); /* 150 too many live ones: the cleanup evicts */
    uint64_t errors_before = stats(t).errors;
    char err_expire[256], err_evict[256];
    disk_refuse(1);
    t->ops->tick(t, 10); /* phase 1: the expired items */
    memcpy(err_expire, t->err, sizeof(err_expire));
    khala_tier_stats_t s_expire = stats(t);
    disk_refuse(0);
    assert_cleanup_refused(t, err_expire, errors_before);
    cr_assert_eq(s_expire.items, 220);
    cr_assert_eq(s_expire.expirations, 0);

    /* Phase 1 completes once the disk takes writes; then phase 2 is refused in its turn. */
    for (int i = 0; i < 10 && stats(t).expirations < 20; i++)
        t->ops->tick(t, 20 + i);
    cr_assert_eq(stats(t).expirations, 20, "%s", t->err);
    cr_assert_eq(stats(t).items, 200);
    errors_before = stats(t).errors;
    disk_refuse(1);
    t->ops->tick(t, 40);
    memcpy(err_evict, t->err, sizeof(err_evict));
    khala_tier_stats_t s_evict = stats(t);
    disk_refuse(0);
    assert_cleanup_refused(t, err_evict, errors_before);
    cr_assert_eq(s_evict.items, 200);
    cr_assert_eq(s_evict.evictions, 0);
    cr_assert_eq(s_evict.archive_items, 0);

    for (int i = 0; i < 20 && stats(t).items > 50; i++)
        t->ops->tick(t, 50 + i);
    khala_tier_stats_t s = stats(t);
    cr_assert_eq(s.items, 50, "%s", t->err);
    cr_assert_eq(s.evictions, 150);
    cr_assert_eq(s.archive_items, 50); /* bounded by max_items: the oldest copies dropped */
    t->ops->close(t);

    /* What memory said is what the disk holds. */
    t = open_with(l3_cleanup_opts(50, 60000));
    cr_assert_eq(stats(t).items, 50);
    cr_assert_eq(stats(t).archive_items, 50);
    t->ops->close(t);
}

/* The cleanup's last phase, removing archived copies past their retention, likewise. */
Test(tier_disk, archived_copies_past_retention_stay_while_the_disk_refuses_their_removal) {
    khala_tier_t *t = open_with(l3_cleanup_opts(1, 5));
    cr_assert_eq(put(t, "a", "1", 1, KHALA_TYPE_MEMORY_ENTITY, 0), 0, "%s", t->err);
    cr_assert_eq(put(t, "b", "2", 1, KHALA_TYPE_MEMORY_ENTITY, 0), 0, "%s", t->err); /* a goes */
    cr_assert_eq(stats(t).archive_items, 1);
    sleep_ms(20); /* past its retention */
    uint64_t errors_before = stats(t).errors;
    char err[256];
    disk_refuse(1);
    t->ops->tick(t, 10);
    memcpy(err, t->err, sizeof(err));
    khala_tier_stats_t s_refused = stats(t);
    disk_refuse(0);
    assert_cleanup_refused(t, err, errors_before);
    cr_assert_eq(s_refused.archive_items, 1);
    t->ops->tick(t, 20);
    cr_assert_eq(stats(t).archive_items, 0, "%s", t->err);
    cr_assert_eq(stats(t).items, 1);
    t->ops->close(t);
}

/* An invalidation that must remove archived copies fails whole on a disk that refuses it. */
Test(tier_disk, an_invalidation_of_archived_copies_on_a_disk_that_refuses_it_keeps_them) {
    khala_tier_disk_opts_t o = l3_cleanup_opts(2, 60000);
    o.cleanup_interval_ms = 0;
    khala_tier_t *t = open_with(o);
    cr_assert_eq(put(t, "p:a", "1", 1, KHALA_TYPE_MEMORY_ENTITY, 0), 0, "%s", t->err);
    cr_assert_eq(put(t, "p:b", "2", 1, KHALA_TYPE_MEMORY_ENTITY, 0), 0, "%s", t->err);
    cr_assert_eq(put(t, "q:a", "3", 1, KHALA_TYPE_MEMORY_ENTITY, 0), 0, "%s", t->err);
    cr_assert_eq(put(t, "q:b", "4", 1, KHALA_TYPE_MEMORY_ENTITY, 0), 0, "%s", t->err);
    cr_assert_eq(stats(t).archive_items, 2); /* p:a and p:b */
    cr_assert_eq(t->ops->del(t, "q:a", 3), 0, "%s", t->err);
    cr_assert_eq(t->ops->del(t, "q:b", 3), 0, "%s", t->err);
    refused_t r;
    uint64_t removed = 99;
    disk_refuse(1);
    note(&r, t, t->ops->invalidate(t, "p:", 2, -1, &removed));
    disk_refuse(0);
    cr_assert_eq(r.rc, KHALA_ETIER, "%d %s", r.rc, r.err);
    cr_assert(strstr(r.err, g_store) && strstr(r.err, "invalidating the archive") &&
                  strstr(r.err, strerror(EFBIG)),
              "%s", r.err);
    cr_assert_eq(stats(t).archive_items, 2);
    khala_tier_value_t v = {0};
    cr_assert_eq(t->ops->archive_get(t, "p:a", 3, &v), 0, "%s", t->err);
    khala__tier_value_free(&v);
    cr_assert_eq(t->ops->invalidate(t, "p:", 2, -1, &removed), 0, "%s", t->err);
    cr_assert_eq(stats(t).archive_items, 0);
    t->ops->close(t);
}

/* ---- Damaged and unusual stores ------------------------------------------------------------ */

/* A data file that cannot be opened (here: a directory in its place) is refused with the store
 * and the system's error named. */
Test(tier_disk, an_unopenable_data_file_is_named) {
    char data[160];
    cr_assert_eq(mkdir(g_store, 0700), 0);
    snprintf(data, sizeof(data), "%s/data.mdb", g_store);
    cr_assert_eq(mkdir(data, 0700), 0);
    khala_tier_t *t = NULL;
    khala_tier_disk_opts_t o = opts(10, 1000, true);
    cr_assert_eq(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), -EISDIR);
    cr_assert(strstr(g_err, "cannot open the store") && strstr(g_err, g_store) &&
                  strstr(g_err, strerror(EISDIR)),
              "%s", g_err);
    cr_assert_null(t);
    o.path = NULL;
    cr_assert_eq(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), KHALA_ECONFIG);
    cr_assert(strstr(g_err, "no path"), "%s", g_err);
}

/* A record damaged while the store is open (another process writing the LMDB file directly) is
 * reported as corrupt, naming the key, and never served; the other keys are, and a put
 * replaces the damaged record. */
Test(tier_disk, a_record_damaged_behind_the_store_is_reported_and_replaced_by_a_put) {
    khala_tier_t *t = open_store(100, 1 << 20);
    cr_assert_eq(put(t, "bad", "fine", 1, KHALA_TYPE_MEMORY_ENTITY, 0), 0, "%s", t->err);
    cr_assert_eq(put(t, "good", "fine", 1, KHALA_TYPE_MEMORY_ENTITY, 0), 0, "%s", t->err);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        MDB_env *env;
        MDB_txn *txn;
        MDB_dbi dbi;
        MDB_val k = {3, "bad"}, v = {2, "xx"};
        _exit(mdb_env_create(&env) || mdb_env_set_maxdbs(env, 3) ||
                      mdb_env_open(env, g_store, 0, 0600) || mdb_txn_begin(env, NULL, 0, &txn) ||
                      mdb_dbi_open(txn, "items", 0, &dbi) || mdb_put(txn, dbi, &k, &v, 0) ||
                      mdb_txn_commit(txn)
                  ? 1
                  : 0);
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the damaging writer failed");

    uint64_t errors = stats(t).errors;
    int rc;
    get_str(t, "bad", &rc, NULL);
    cr_assert_eq(rc, KHALA_ECORRUPT, "%s", t->err);
    cr_assert(strstr(t->err, "'bad'") && strstr(t->err, "malformed"), "%s", t->err);
    cr_assert_eq(stats(t).errors, errors + 1);
    cr_assert_str_eq(get_str(t, "good", &rc, NULL), "fine");
    cr_assert_eq(put(t, "bad", "new", 1, KHALA_TYPE_MEMORY_ENTITY, 0), 0, "%s", t->err);
    cr_assert_str_eq(get_str(t, "bad", &rc, NULL), "new");
    t->ops->close(t);
}

/* An invalidation larger than one transaction's batch (KHALA_DISK_BATCH_MAX removals) removes
 * every matching key, across transactions, and nothing else. */
Test(tier_disk, an_invalidation_larger_than_a_batch_removes_every_key) {
    int n = (int)KHALA_DISK_BATCH_MAX + 300;
    khala_tier_t *t = open_store((uint64_t)n + 10, 64 << 20);
    mput_range(t, "p", 0, n, KHALA_TYPE_MEMORY_ENTITY);
    cr_assert_eq(put(t, "q", "other", 1, KHALA_TYPE_MEMORY_ENTITY, 0), 0, "%s", t->err);
    uint64_t removed = 0;
    cr_assert_eq(t->ops->invalidate(t, "p", 1, -1, &removed), 0, "%s", t->err);
    cr_assert_eq(removed, (uint64_t)n);
    cr_assert_eq(stats(t).items, 1);
    cr_assert(present(t, "q"));
    cr_assert(!present(t, "p0") && !present(t, "p8500"));
    t->ops->close(t);
}

/* At most KHALA_DISK_SCAN_SLOTS scans are remembered: one more forgets the least recently used,
 * whose cursor is then refused with a message saying why; the others go on. */
Test(tier_disk, the_least_recent_of_too_many_scans_is_forgotten) {
    khala_tier_t *t = open_store(100, 1 << 20);
    mput_range(t, "s", 0, 10, KHALA_TYPE_MEMORY_ENTITY);
    uint64_t cursors[KHALA_DISK_SCAN_SLOTS + 1];
    for (int i = 0; i <= KHALA_DISK_SCAN_SLOTS; i++) {
        seen_t s = {0};
        cursors[i] = 0;
        cr_assert_eq(t->ops->scan(t, &cursors[i], NULL, 2, collect, &s), 0, "%s", t->err);
        cr_assert_neq(cursors[i], 0);
    }
    seen_t s = {0};
    cr_assert_eq(t->ops->scan(t, &cursors[0], NULL, 2, collect, &s), -EINVAL);
    cr_assert(strstr(t->err, "expired") && strstr(t->err, "start again"), "%s", t->err);
    for (int i = 1; i <= KHALA_DISK_SCAN_SLOTS; i++) {
        seen_t rest = {0};
        do
            cr_assert_eq(t->ops->scan(t, &cursors[i], NULL, 100, collect, &rest), 0, "%d: %s", i,
                         t->err);
        while (cursors[i] != 0);
        cr_assert_eq(rest.n, 8, "scan %d saw the 8 keys after its first page", i);
    }
    t->ops->close(t);
}

/* L1's hits reported at a graceful stop raise a key's counter by their sum, not by that many
 * random draws: 64 draws leave a counter of 6 unchanged about once in 450, which let keys read
 * three times outrank the key read most (a preload test failed so in CI). 64 hits from 6 always
 * reach 9 (a raise from c costs (c - 5) * 10 + 1 hits: 11 + 21 + 31 = 63), whatever the seed. */
Test(tier_disk, l1_hits_raise_the_counter_by_their_sum) {
    for (uint64_t seed = 1; seed <= 2000; seed++) {
        khala_disk_index_t ix;
        memset(&ix, 0, sizeof(ix));
        khala__disk_index_init(&ix, seed, khala__sys_now_ms());
        khala_disk_entry_t *e = khala__disk_index_entry_new(&ix, "h:0", 3);
        cr_assert_not_null(e);
        e->counter = 6;
        khala__disk_index_add_hits(&ix, e, 64);
        cr_assert_geq(e->counter, 9, "seed %llu: 64 hits from 6 left %u", (unsigned long long)seed,
                      e->counter);
        cr_assert_leq(e->counter, 10);
        cr_assert(e->dirty, "a raised counter is written back");
        uint64_t seq = e->seq;
        khala__disk_index_add_hits(&ix, e, UINT64_MAX);
        cr_assert_eq(e->counter, 255, "a huge count saturates");
        cr_assert_gt(e->seq, seq, "the entry counts as just read");
        free(e);
        khala__disk_index_free(&ix);
    }
}
