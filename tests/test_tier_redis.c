/*
 * The Redis L2 driver (daemon/tier_redis.c) against real servers: the shared test servers of
 * scripts/test-servers.sh (one server on TCP and a Unix socket, a 3-master cluster) and private
 * redis-server processes that a test starts, kills and restarts itself.
 *
 * Every test works in its own namespace ("t<pid>-<tag>"); .fini deletes it (reopening it with
 * persistent = false) and puts back any cluster slot a test moved, because later tests share
 * the cluster.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "config.h"
#include "redis_cluster.h"
#include "redis_conn.h"
#include "redis_util.h"
#include "sys.h"
#include "tier_redis.h"

/* ------------------------------------------------------------------------------------------ */
/* Fixtures                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static khala_tier_t *g_t; /* the tier under test; closed by .fini */
static char g_ns[64];     /* its namespace */
static char g_url[256];   /* its URL, to purge the namespace in .fini */
static tu_redis_t g_priv; /* a private redis-server; stopped by .fini */

/* A cluster slot a test moved: .fini gives it back to its owner. */
static struct {
    int active;
    unsigned slot;
    unsigned owner_port, other_port;
} g_moved;

/* Fail the test now (cr_assert_fail does not return; abort() tells the compiler so). */
#define FATAL(...)                                                                                 \
    do {                                                                                           \
        cr_assert_fail(__VA_ARGS__);                                                               \
        abort();                                                                                   \
    } while (0)

static const char *ns(const char *tag) {
    snprintf(g_ns, sizeof(g_ns), "t%d-%s", (int)getpid(), tag);
    return g_ns;
}

static int open_tier(const char *url, const char *nspace, bool persistent, bool owned,
                     unsigned pool, khala_tier_t **out, char *err, size_t errlen) {
    khala_tier_redis_opts_t o = {.url = url,
                                 .ns = nspace,
                                 .level = KHALA_LEVEL_L2,
                                 .timeout_ms = 1000,
                                 .pool_size = pool,
                                 .persistent = persistent,
                                 .owned = owned};
    return khala__tier_redis_open(&o, out, err, errlen);
}

/* Open g_t on url in namespace tag (purged at open); fails the test on error. */
static khala_tier_t *tier(const char *url, const char *tag) {
    char err[256];
    snprintf(g_url, sizeof(g_url), "%s", url);
    int rc = open_tier(url, ns(tag), false, false, 2, &g_t, err, sizeof(err));
    cr_assert_eq(rc, 0, "open %s: %s (%s)", url, khala_strerror(rc), err);
    return g_t;
}

/* A direct hiredis connection to url (host:port, or the unix socket), database selected. */
static redisContext *direct(const char *url) {
    khala_config_redis_url_t u;
    char err[256];
    cr_assert_eq(khala__config_redis_url_parse(url, &u, err, sizeof(err)), 0, "%s", err);
    redisContext *c = NULL;
    cr_assert_eq(khala__redis_connect(&u, 2000, &c, err, sizeof(err)), 0, "%s", err);
    return c;
}

static redisContext *direct_port(unsigned port) {
    redisContext *c = redisConnect("127.0.0.1", (int)port);
    cr_assert(c && !c->err, "connect 127.0.0.1:%u", port);
    return c;
}

static long long cmd_int(redisContext *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert(r, "no reply: %s", c->errstr);
    cr_assert_eq(r->type, REDIS_REPLY_INTEGER, "not an integer: %s",
                 r->type == REDIS_REPLY_ERROR ? r->str : "?");
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

/* Run a command that must not fail. */
static void cmd_ok(redisContext *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert(r, "no reply: %s", c->errstr);
    cr_assert_neq(r->type, REDIS_REPLY_ERROR, "%s", r->str);
    freeReplyObject(r);
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void cluster_restore(void);

static void setup(void) {
    g_t = NULL;
    g_url[0] = '\0';
    memset(&g_priv, 0, sizeof(g_priv));
    memset(&g_moved, 0, sizeof(g_moved));
}

static void teardown(void) {
    cluster_restore();
    if (g_t)
        g_t->ops->close(g_t);
    g_t = NULL;
    if (g_url[0]) { /* purge the namespace, ~hot included */
        khala_tier_t *t = NULL;
        if (open_tier(g_url, g_ns, false, false, 1, &t, NULL, 0) == 0)
            t->ops->close(t);
    }
    tu_redis_stop(&g_priv);
}

TestSuite(tier_redis, .init = setup, .fini = teardown, .timeout = 60);

/* Values. */
static khala_tier_value_t val(const void *data, size_t len, uint64_t version, khala_type_t type,
                              int64_t ttl_ms) {
    return (khala_tier_value_t){(void *)data, len, version, ttl_ms, type};
}

static int put_str(khala_tier_t *t, const char *key, const char *v, uint64_t version,
                   khala_type_t type, int64_t ttl_ms) {
    khala_tier_value_t x = val(v, strlen(v), version, type, ttl_ms);
    return t->ops->put(t, key, strlen(key), &x);
}

/* Get key; returns the code, and the value as a string in buf on a hit. */
static int get_str(khala_tier_t *t, const char *key, char *buf, size_t cap,
                   khala_tier_value_t *meta) {
    khala_tier_value_t v = {0};
    int rc = t->ops->get(t, key, strlen(key), &v);
    if (rc == 0) {
        cr_assert_lt(v.len, cap);
        if (v.len)
            memcpy(buf, v.data, v.len);
        buf[v.len] = '\0';
        if (meta)
            *meta = v;
        khala__tier_value_free(&v);
    }
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Round trips, TTLs, versions                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* Put and get back a value of every type, with sizes that use each bin header (8/16/32). */
static void round_trip(khala_tier_t *t) {
    static const size_t sizes[KHALA_TYPE_COUNT] = {0, 1, 255, 256, 65535, 65536, 100000, 17};
    for (int type = 0; type < KHALA_TYPE_COUNT; type++) {
        size_t n = sizes[type];
        unsigned char *data = malloc(n ? n : 1);
        for (size_t i = 0; i < n; i++)
            data[i] = (unsigned char)(i * 31 + (size_t)type);
        char key[32];
        snprintf(key, sizeof(key), "type:%d", type);
        uint64_t version = (UINT64_C(1) << 61) + (uint64_t)type * 1000 + 1;
        khala_tier_value_t in = val(data, n, version, (khala_type_t)type, 60000);
        cr_assert_eq(t->ops->put(t, key, strlen(key), &in), 0, "%s", t->err);
        khala_tier_value_t out = {0};
        cr_assert_eq(t->ops->get(t, key, strlen(key), &out), 0, "%s", t->err);
        cr_assert_eq(out.len, n);
        cr_assert(n == 0 || memcmp(out.data, data, n) == 0, "type %d: bytes differ", type);
        cr_assert_eq(out.version, version);
        cr_assert_eq(out.type, (khala_type_t)type);
        cr_assert(out.ttl_ms > 0 && out.ttl_ms <= 60000, "ttl %lld", (long long)out.ttl_ms);
        khala__tier_value_free(&out);
        free(data);
    }
    khala_tier_stats_t st;
    t->ops->stats(t, &st);
    cr_assert_eq(st.puts, KHALA_TYPE_COUNT);
    cr_assert_eq(st.hits, KHALA_TYPE_COUNT);
    cr_assert_eq(st.errors, 0);
    cr_assert_eq(st.items, UINT64_MAX);
    cr_assert_eq(st.bytes, UINT64_MAX);
}

Test(tier_redis, round_trip_of_every_type_over_tcp) {
    khala_tier_t *t = tier(tu_redis_env("KHALA_TEST_REDIS_URL"), "rt-tcp");
    cr_assert_str_eq(t->ops->name, "redis");
    cr_assert_eq(t->ops->health(t), 0);
    round_trip(t);
}

Test(tier_redis, round_trip_of_every_type_over_the_unix_socket) {
    khala_tier_t *t = tier(tu_redis_env("KHALA_TEST_REDIS_UNIX_URL"), "rt-unix");
    round_trip(t);
}

Test(tier_redis, stored_value_is_msgpack_with_a_full_width_version) {
    const char *url = tu_redis_env("KHALA_TEST_REDIS_URL");
    khala_tier_t *t = tier(url, "fmt");
    cr_assert_eq(put_str(t, "k", "ab", 5, KHALA_TYPE_EMBEDDING, 0), 0);
    redisContext *c = direct(url);
    redisReply *r = redisCommand(c, "GET khala:%s:k", g_ns);
    static const unsigned char want[] = {0x93, 0xcf, 0, 0, 0, 0, 0, 0, 0, 5, 2, 0xc4, 2, 'a', 'b'};
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    cr_assert_eq(r->len, sizeof(want));
    cr_assert_arr_eq(r->str, want, sizeof(want));
    freeReplyObject(r);
    redisFree(c);
}

Test(tier_redis, ttl_is_set_and_expiry_makes_a_miss) {
    const char *url = tu_redis_env("KHALA_TEST_REDIS_URL");
    khala_tier_t *t = tier(url, "ttl");
    redisContext *c = direct(url);
    cr_assert_eq(put_str(t, "long", "v", 1, KHALA_TYPE_MEMORY_ENTITY, 60000), 0);
    long long pttl = cmd_int(c, "PTTL khala:%s:long", g_ns);
    cr_assert(pttl > 0 && pttl <= 60000, "PTTL %lld", pttl);

    cr_assert_eq(put_str(t, "forever", "v", 1, KHALA_TYPE_MEMORY_ENTITY, 0), 0);
    cr_assert_eq(cmd_int(c, "PTTL khala:%s:forever", g_ns), -1);
    khala_tier_value_t meta;
    char buf[16];
    cr_assert_eq(get_str(t, "forever", buf, sizeof(buf), &meta), 0);
    cr_assert_eq(meta.ttl_ms, 0, "no expiry reads back as 0");

    cr_assert_eq(put_str(t, "short", "v", 1, KHALA_TYPE_MEMORY_ENTITY, 30), 0);
    for (int i = 0; i < 200 && cmd_int(c, "PTTL khala:%s:short", g_ns) != -2; i++)
        sleep_ms(10);
    cr_assert_eq(get_str(t, "short", buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
    redisFree(c);
}

Test(tier_redis, an_older_version_is_refused_and_an_equal_one_accepted) {
    khala_tier_t *t = tier(tu_redis_env("KHALA_TEST_REDIS_URL"), "ver");
    const uint64_t base = UINT64_C(1) << 61; /* base and base + 1 are one double */
    char buf[16];
    cr_assert_eq(put_str(t, "k", "new", base + 1, 0, 60000), 0);
    cr_assert_eq(put_str(t, "k", "old", base, 0, 60000), KHALA_EVERSION);
    cr_assert_eq(get_str(t, "k", buf, sizeof(buf), NULL), 0);
    cr_assert_str_eq(buf, "new");
    cr_assert_eq(put_str(t, "k", "same", base + 1, 0, 60000), 0, "a retry is accepted");
    cr_assert_eq(put_str(t, "k", "newer", base + 2, 0, 60000), 0);
    cr_assert_eq(get_str(t, "k", buf, sizeof(buf), NULL), 0);
    cr_assert_str_eq(buf, "newer");
    /* The first differing byte decides, as an unsigned number. */
    cr_assert_eq(put_str(t, "b", "hi", UINT64_C(0x0100000000000000), 0, 0), 0);
    cr_assert_eq(put_str(t, "b", "lo", UINT64_C(0x00ffffffffffffff), 0, 0), KHALA_EVERSION);
    cr_assert_eq(put_str(t, "b", "top", UINT64_C(0xff00000000000000), 0, 0), 0);
    cr_assert_eq(put_str(t, "b", "x", UINT64_C(0x7fffffffffffffff), 0, 0), KHALA_EVERSION);
}

Test(tier_redis, bad_input_is_refused) {
    khala_tier_t *t = tier(tu_redis_env("KHALA_TEST_REDIS_URL"), "input");
    khala_tier_value_t v = val("x", 1, 1, 0, 0), out;
    char big[KHALA_KEY_MAX + 1];
    memset(big, 'k', sizeof(big));
    cr_assert_eq(t->ops->get(t, "", 0, &out), KHALA_EKEY);
    cr_assert_eq(t->ops->put(t, big, sizeof(big), &v), KHALA_EKEY);
    cr_assert_eq(t->ops->put(t, "~hot", 4, &v), KHALA_EKEY, "the access counts' key");
    v.type = (khala_type_t)KHALA_TYPE_COUNT;
    cr_assert_eq(t->ops->put(t, "k", 1, &v), -EINVAL);
    cr_assert_eq(t->ops->del(t, "k", 1), KHALA_ENOTFOUND);
}

/* ------------------------------------------------------------------------------------------ */
/* Batches                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static void mixed_batches(khala_tier_t *t) {
    enum { N = 40 };
    char names[N][16];
    khala_bytes_t keys[N + 1];
    khala_tier_value_t vals[N], out[N + 1];
    int rcs[N + 1];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof(names[i]), "m:%d", i);
        keys[i] = (khala_bytes_t){(const uint8_t *)names[i], strlen(names[i])};
        vals[i] = val(names[i], strlen(names[i]), 10 + (uint64_t)i, (khala_type_t)(i % 8), 60000);
    }
    /* Even keys only. */
    khala_bytes_t even_keys[N / 2];
    khala_tier_value_t even_vals[N / 2];
    for (int i = 0; i < N / 2; i++) {
        even_keys[i] = keys[2 * i];
        even_vals[i] = vals[2 * i];
    }
    cr_assert_eq(t->ops->mput(t, N / 2, even_keys, even_vals), 0, "%s", t->err);
    keys[N] = (khala_bytes_t){(const uint8_t *)"", 0};
    memset(out, 0, sizeof(out));
    cr_assert_eq(t->ops->mget(t, N + 1, keys, out, rcs), 0, "%s", t->err);
    for (int i = 0; i < N; i++) {
        if (i % 2) {
            cr_assert_eq(rcs[i], KHALA_ENOTFOUND, "key %d", i);
            continue;
        }
        cr_assert_eq(rcs[i], 0, "key %d: %s", i, khala_strerror(rcs[i]));
        cr_assert_eq(out[i].len, strlen(names[i]));
        cr_assert(memcmp(out[i].data, names[i], out[i].len) == 0);
        cr_assert_eq(out[i].version, 10 + (uint64_t)i);
        cr_assert_eq(out[i].type, (khala_type_t)(i % 8));
        cr_assert(out[i].ttl_ms > 0);
        khala__tier_value_free(&out[i]);
    }
    cr_assert_eq(rcs[N], KHALA_EKEY);
    /* One older item in a batch: the rest is stored, the call says EVERSION. */
    vals[0].version = 1;
    vals[1].data = "fresh";
    vals[1].len = 5;
    cr_assert_eq(t->ops->mput(t, 2, keys, vals), KHALA_EVERSION);
    char buf[32];
    cr_assert_eq(get_str(t, "m:1", buf, sizeof(buf), NULL), 0);
    cr_assert_str_eq(buf, "fresh");
    cr_assert_eq(get_str(t, "m:0", buf, sizeof(buf), NULL), 0);
    cr_assert_str_eq(buf, "m:0");
}

Test(tier_redis, mget_and_mput_mix_hits_and_misses) {
    mixed_batches(tier(tu_redis_env("KHALA_TEST_REDIS_URL"), "batch"));
}

/* ------------------------------------------------------------------------------------------ */
/* Access counts, scan, invalidate                                                              */
/* ------------------------------------------------------------------------------------------ */

typedef struct seen {
    int n;
    char keys[1200][32];
} seen_t;

static int collect(void *arg, const void *key, size_t klen) {
    seen_t *s = arg;
    cr_assert_lt(s->n, 1200);
    cr_assert_lt(klen, 32);
    memcpy(s->keys[s->n], key, klen);
    s->keys[s->n++][klen] = '\0';
    return 0;
}

static int seen_has(const seen_t *s, const char *key) {
    int n = 0;
    for (int i = 0; i < s->n; i++)
        n += strcmp(s->keys[i], key) == 0;
    return n;
}

Test(tier_redis, hot_lists_keys_by_hits_after_a_tick) {
    khala_tier_t *t = tier(tu_redis_env("KHALA_TEST_REDIS_URL"), "hot");
    const char *names[3] = {"warm", "hottest", "cold"};
    const int hits[3] = {3, 5, 1};
    char buf[16];
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(put_str(t, names[i], "v", 1, 0, 60000), 0);
        for (int j = 0; j < hits[i]; j++)
            cr_assert_eq(get_str(t, names[i], buf, sizeof(buf), NULL), 0);
    }
    get_str(t, "absent", buf, sizeof(buf), NULL); /* misses are not counted */
    t->ops->tick(t, khala__sys_now_ms());
    seen_t *s = calloc(1, sizeof(*s));
    cr_assert_eq(t->ops->hot(t, 10, collect, s), 0, "%s", t->err);
    cr_assert_eq(s->n, 3);
    cr_assert_str_eq(s->keys[0], "hottest");
    cr_assert_str_eq(s->keys[1], "warm");
    cr_assert_str_eq(s->keys[2], "cold");
    s->n = 0;
    cr_assert_eq(t->ops->hot(t, 1, collect, s), 0);
    cr_assert_eq(s->n, 1);
    free(s);
}

/* Page through everything with small pages; every key once, never ~hot. */
static void scan_all(khala_tier_t *t, const char *pattern, seen_t *s) {
    uint64_t cursor = 0;
    int pages = 0;
    do {
        cr_assert_eq(t->ops->scan(t, &cursor, pattern, 25, collect, s), 0, "%s", t->err);
        cr_assert_lt(++pages, 10000);
    } while (cursor != 0);
}

static void scan_visits_everything(khala_tier_t *t) {
    char key[32], buf[16];
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof(key), "%s:%d", i < 100 ? "p1" : "p2", i);
        cr_assert_eq(put_str(t, key, "v", 1, 0, 60000), 0);
    }
    cr_assert_eq(get_str(t, "p1:0", buf, sizeof(buf), NULL), 0);
    t->ops->tick(t, khala__sys_now_ms()); /* the ~hot key now exists */
    seen_t *s = calloc(1, sizeof(*s));
    scan_all(t, NULL, s);
    cr_assert_eq(seen_has(s, "~hot"), 0);
    cr_assert_eq(s->n, 300, "visited %d", s->n);
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof(key), "%s:%d", i < 100 ? "p1" : "p2", i);
        cr_assert_eq(seen_has(s, key), 1, "%s", key);
    }
    s->n = 0;
    scan_all(t, "p1:*", s);
    cr_assert_eq(s->n, 100);
    s->n = 0;
    scan_all(t, "*hot", s);
    cr_assert_eq(s->n, 0, "~hot is never visited");
    free(s);
}

Test(tier_redis, scan_pages_visit_every_key_and_never_the_hot_key) {
    scan_visits_everything(tier(tu_redis_env("KHALA_TEST_REDIS_URL"), "scan"));
}

static void invalidation(khala_tier_t *t, redisContext *hot_node) {
    char key[32], buf[16];
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof(key), "user:%d", i);
        cr_assert_eq(put_str(t, key, "v", 1, i < 5 ? 0 : 1, 60000), 0);
    }
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof(key), "other:%d", i);
        cr_assert_eq(put_str(t, key, "v", 1, 1, 60000), 0);
    }
    cr_assert_eq(get_str(t, "other:0", buf, sizeof(buf), NULL), 0);
    t->ops->tick(t, khala__sys_now_ms());
    uint64_t removed = 0;
    cr_assert_eq(t->ops->invalidate(t, "user:", 5, 1, &removed), 0, "%s", t->err);
    cr_assert_eq(removed, 5);
    cr_assert_eq(get_str(t, "user:0", buf, sizeof(buf), NULL), 0, "other types stay");
    cr_assert_eq(get_str(t, "user:7", buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
    cr_assert_eq(get_str(t, "other:1", buf, sizeof(buf), NULL), 0, "other prefixes stay");
    cr_assert_eq(t->ops->invalidate(t, "user:", 5, -1, &removed), 0);
    cr_assert_eq(removed, 5);
    cr_assert_eq(get_str(t, "user:1", buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
    cr_assert_eq(get_str(t, "other:2", buf, sizeof(buf), NULL), 0);
    /* A prefix with glob metacharacters matches literally. */
    cr_assert_eq(put_str(t, "o*", "v", 1, 0, 0), 0);
    cr_assert_eq(t->ops->invalidate(t, "o*", 2, -1, &removed), 0);
    cr_assert_eq(removed, 1);
    cr_assert_eq(t->ops->invalidate(t, NULL, 0, -1, &removed), 0);
    cr_assert_eq(removed, 3);
    if (hot_node)
        cr_assert_eq(cmd_int(hot_node, "EXISTS khala:%s:~hot", g_ns), 1, "counts survive");
}

Test(tier_redis, invalidate_by_prefix_and_by_type) {
    const char *url = tu_redis_env("KHALA_TEST_REDIS_URL");
    redisContext *c = direct(url);
    invalidation(tier(url, "inval"), c);
    redisFree(c);
}

Test(tier_redis, persistent_false_clears_only_its_own_namespace) {
    const char *url = tu_redis_env("KHALA_TEST_REDIS_URL");
    char mine[64], other[64], err[256];
    snprintf(mine, sizeof(mine), "t%d-p*", (int)getpid()); /* a glob character in the ns */
    snprintf(other, sizeof(other), "t%d-pother", (int)getpid());
    khala_tier_t *a = NULL, *b = NULL;
    cr_assert_eq(open_tier(url, mine, true, false, 1, &a, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(open_tier(url, other, true, false, 1, &b, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(put_str(a, "k", "a", 1, 0, 60000), 0);
    cr_assert_eq(put_str(b, "k", "b", 1, 0, 60000), 0);
    a->ops->close(a);
    cr_assert_eq(open_tier(url, mine, true, false, 1, &a, err, sizeof(err)), 0);
    char buf[16];
    cr_assert_eq(get_str(a, "k", buf, sizeof(buf), NULL), 0, "persistent keeps keys");
    a->ops->close(a);
    cr_assert_eq(open_tier(url, mine, false, false, 1, &a, err, sizeof(err)), 0);
    cr_assert_eq(get_str(a, "k", buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
    cr_assert_eq(get_str(b, "k", buf, sizeof(buf), NULL), 0, "the other namespace is intact");
    a->ops->close(a);
    b->ops->close(b);
    snprintf(g_url, sizeof(g_url), "%s", url); /* .fini purges `other` */
    snprintf(g_ns, sizeof(g_ns), "%s", other);
}

Test(tier_redis, a_value_that_is_not_ours_is_a_miss_and_an_error) {
    const char *url = tu_redis_env("KHALA_TEST_REDIS_URL");
    khala_tier_t *t = tier(url, "bad");
    redisContext *c = direct(url);
    cmd_ok(c, "SET khala:%s:garbage %b", g_ns, "\x93\xcf\x01garbage", (size_t)10);
    cmd_ok(c, "SET khala:%s:short %b", g_ns, "\x93", (size_t)1);
    cmd_ok(c, "SET khala:%s:plain hello", g_ns);
    cmd_ok(c, "RPUSH khala:%s:list a", g_ns);
    const char *bad[] = {"garbage", "short", "plain", "list"};
    char buf[16];
    for (int i = 0; i < 4; i++) {
        khala_tier_stats_t before, after;
        t->ops->stats(t, &before);
        t->err[0] = '\0';
        int rc = get_str(t, bad[i], buf, sizeof(buf), NULL);
        t->ops->stats(t, &after);
        cr_assert_eq(rc, KHALA_ENOTFOUND, "%s: %s", bad[i], khala_strerror(rc));
        cr_assert_eq(after.misses, before.misses + 1);
        cr_assert_gt(after.errors, before.errors, "%s counts an error", bad[i]);
        cr_assert(t->err[0], "%s: a message", bad[i]);
    }
    khala_bytes_t keys[2] = {{(const uint8_t *)"garbage", 7}, {(const uint8_t *)"plain", 5}};
    khala_tier_value_t out[2];
    int rcs[2];
    cr_assert_eq(t->ops->mget(t, 2, keys, out, rcs), 0);
    cr_assert_eq(rcs[0], KHALA_ENOTFOUND);
    cr_assert_eq(rcs[1], KHALA_ENOTFOUND);
    cr_assert_eq(put_str(t, "garbage", "ok", 1, 0, 60000), 0, "a put replaces what is not ours");
    cr_assert_eq(get_str(t, "garbage", buf, sizeof(buf), NULL), 0);
    cr_assert_str_eq(buf, "ok");
    cr_assert_eq(put_str(t, "list", "ok", 1, 0, 60000), 0, "%s", t->err);
    cr_assert_eq(get_str(t, "list", buf, sizeof(buf), NULL), 0);
    redisFree(c);
}

/* ------------------------------------------------------------------------------------------ */
/* A private server: credentials, database, kill and restart                                   */
/* ------------------------------------------------------------------------------------------ */

/* Start the private server on g_priv.port (chosen on the first start) and wait for it. With
 * auth: a password for the default user and an ACL user alice. */
static void start_private(const char *mode) {
    static const char *const auth[] = {"--requirepass", "secret", "--user", "alice", "on",
                                       ">alicepw",      "~*",     "&*",     "+@all", NULL};
    tu_redis_start(&g_priv, mode && strcmp(mode, "auth") == 0 ? auth : NULL);
}

static const char *priv_url(const char *userinfo, unsigned db) {
    static char url[200];
    snprintf(url, sizeof(url), "redis://%s%s127.0.0.1:%u/%u", userinfo ? userinfo : "",
             userinfo ? "@" : "", g_priv.port, db);
    return url;
}

Test(tier_redis, right_credentials_work_and_wrong_ones_are_a_config_error) {
    start_private("auth");
    char err[256];
    khala_tier_t *t = NULL;
    cr_assert_eq(
        open_tier(priv_url(":secret", 0), ns("auth"), true, false, 1, &t, err, sizeof(err)), 0,
        "%s", err);
    cr_assert_eq(put_str(t, "k", "v", 1, 0, 60000), 0);
    t->ops->close(t);
    cr_assert_eq(
        open_tier(priv_url("alice:alicepw", 3), g_ns, true, false, 1, &t, err, sizeof(err)), 0,
        "%s", err);
    cr_assert_eq(put_str(t, "in3", "v", 1, 0, 60000), 0);
    t->ops->close(t);
    redisContext *c = direct(priv_url("alice:alicepw", 0));
    cr_assert_eq(cmd_int(c, "EXISTS khala:%s:in3", g_ns), 0, "not in db 0");
    cmd_ok(c, "SELECT 3");
    cr_assert_eq(cmd_int(c, "EXISTS khala:%s:in3", g_ns), 1, "in db 3");
    redisFree(c);

    t = NULL;
    int rc = open_tier(priv_url("alice:wrong", 0), g_ns, true, false, 1, &t, err, sizeof(err));
    cr_assert_eq(rc, KHALA_ECONFIG, "%s", khala_strerror(rc));
    cr_assert_null(t);
    cr_assert(strstr(err, "AUTH") && strstr(err, "127.0.0.1"), "message: %s", err);
    rc = open_tier(priv_url(":wrong", 0), g_ns, true, false, 1, &t, err, sizeof(err));
    cr_assert_eq(rc, KHALA_ECONFIG, "%s", err);
    rc = open_tier(priv_url(NULL, 0), g_ns, true, false, 1, &t, err, sizeof(err));
    cr_assert_eq(rc, KHALA_ECONFIG, "no password: %s", err);
    rc = open_tier("redis://127.0.0.1:notaport", g_ns, true, false, 1, &t, err, sizeof(err));
    cr_assert_eq(rc, KHALA_ECONFIG, "bad URL");
}

Test(tier_redis, owned_sets_lfu_and_unowned_warns) {
    start_private(NULL);
    char err[256];
    khala_tier_t *t = NULL;
    cr_assert_eq(open_tier(priv_url(NULL, 0), ns("own"), false, false, 1, &t, err, sizeof(err)), 0);
    cr_assert(strstr(err, "warning") && strstr(err, "allkeys-lfu"), "message: %s", err);
    t->ops->close(t);
    cr_assert_eq(open_tier(priv_url(NULL, 0), g_ns, false, true, 1, &t, err, sizeof(err)), 0);
    cr_assert_str_eq(err, "");
    t->ops->close(t);
    redisContext *c = direct(priv_url(NULL, 0));
    redisReply *r = redisCommand(c, "CONFIG GET maxmemory-policy");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert_str_eq(r->element[1]->str, "allkeys-lfu");
    freeReplyObject(r);
    redisFree(c);
}

/* Wait for health() to come back (up to ~15 s: the backoff tops at 5 s). */
static int wait_healthy(khala_tier_t *t) {
    for (int i = 0; i < 300; i++) {
        if (t->ops->health(t) == 0)
            return 0;
        sleep_ms(50);
    }
    return -1;
}

Test(tier_redis, a_killed_server_fails_fast_and_recovers_after_restart) {
    start_private(NULL);
    char err[256], buf[16], name[32];
    khala_tier_t *t = NULL;
    cr_assert_eq(open_tier(priv_url(NULL, 0), ns("kill"), false, false, 3, &t, err, sizeof(err)), 0,
                 "%s", err);
    g_t = t;
    for (int i = 0; i < 6; i++) /* use every connection of the pool */
        cr_assert_eq(put_str(t, "k", "v", 1, 0, 60000), 0);
    tu_redis_kill(&g_priv);
    for (int i = 0; i < 20; i++)
        cr_assert_eq(get_str(t, "k", buf, sizeof(buf), NULL), KHALA_ETIER, "op %d", i);
    snprintf(name, sizeof(name), "127.0.0.1:%u", g_priv.port);
    cr_assert(strstr(t->err, name), "message names the server: %s", t->err);
    int64_t t0 = khala__sys_now_ms();
    for (int i = 0; i < 1000; i++) /* within the backoff: no connect attempt, no waiting */
        cr_assert_eq(put_str(t, "k", "v", 2, 0, 0), KHALA_ETIER);
    cr_assert_lt(khala__sys_now_ms() - t0, 5000, "a dead server must cost nothing per request");
    cr_assert_neq(t->ops->health(t), 0);
    khala_tier_stats_t st;
    t->ops->stats(t, &st);
    cr_assert_geq(st.errors, 20);

    start_private(NULL);
    cr_assert_eq(wait_healthy(t), 0, "health after restart: %s", t->err);
    cr_assert_eq(put_str(t, "k", "back", 3, 0, 60000), 0, "%s", t->err);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(get_str(t, "k", buf, sizeof(buf), NULL), 0, "%s", t->err);
    cr_assert_str_eq(buf, "back");
    t->ops->stats(t, &st);
    cr_assert_geq(st.reconnects, 1);
}

Test(tier_redis, a_server_down_at_open_is_a_tier_that_recovers) {
    g_priv.port = tu_redis_free_port();
    char err[256], buf[16];
    khala_tier_t *t = NULL;
    cr_assert_eq(open_tier(priv_url(NULL, 0), ns("down"), false, false, 2, &t, err, sizeof(err)), 0,
                 "%s", err);
    g_t = t;
    cr_assert(strstr(err, "127.0.0.1"), "message: %s", err);
    cr_assert_neq(t->ops->health(t), 0);
    cr_assert_eq(get_str(t, "k", buf, sizeof(buf), NULL), KHALA_ETIER);
    start_private(NULL);
    cr_assert_eq(wait_healthy(t), 0, "%s", t->err);
    cr_assert_eq(put_str(t, "k", "v", 1, 0, 60000), 0, "%s", t->err);
    cr_assert_eq(get_str(t, "k", buf, sizeof(buf), NULL), 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Cluster                                                                                      */
/* ------------------------------------------------------------------------------------------ */

typedef struct cl_node {
    unsigned port;
    char id[48];
} cl_node_t;

/* The masters of the shared cluster, from CLUSTER NODES of the seed. */
static int cl_nodes(cl_node_t *out, int max) {
    khala_config_redis_url_t u;
    cr_assert_eq(
        khala__config_redis_url_parse(tu_redis_env("KHALA_TEST_REDIS_CLUSTER_URL"), &u, NULL, 0),
        0);
    redisContext *c = direct_port(u.port);
    redisReply *r = redisCommand(c, "CLUSTER NODES");
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    int n = 0;
    for (char *line = strtok(r->str, "\n"); line && n < max; line = strtok(NULL, "\n")) {
        char id[48], addr[64], flags[64];
        if (sscanf(line, "%47s %63s %63s", id, addr, flags) != 3 || !strstr(flags, "master"))
            continue;
        char *colon = strrchr(addr, ':');
        out[n].port = (unsigned)atoi(colon + 1);
        snprintf(out[n].id, sizeof(out[n].id), "%s", id);
        n++;
    }
    freeReplyObject(r);
    redisFree(c);
    return n;
}

static int cl_find(const cl_node_t *nodes, int n, unsigned port) {
    for (int i = 0; i < n; i++)
        if (nodes[i].port == port)
            return i;
    FATAL("no cluster node on port %u", port);
}

/* The port of the master owning slot. */
static unsigned cl_owner(unsigned slot) {
    cl_node_t nodes[8];
    int n = cl_nodes(nodes, 8);
    cr_assert_gt(n, 0);
    redisContext *c = direct_port(nodes[0].port);
    redisReply *r = redisCommand(c, "CLUSTER SLOTS");
    unsigned port = 0;
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *e = r->element[i];
        if ((unsigned)e->element[0]->integer <= slot && slot <= (unsigned)e->element[1]->integer)
            port = (unsigned)e->element[2]->element[1]->integer;
    }
    freeReplyObject(r);
    redisFree(c);
    return port;
}

/* Move every key of slot from one node to another (the slot must be MIGRATING/IMPORTING). */
static void cl_move_keys(redisContext *from, unsigned slot, unsigned to_port, bool asking) {
    for (;;) {
        redisReply *r = redisCommand(from, "CLUSTER GETKEYSINSLOT %u 100", slot);
        cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
        size_t n = r->elements;
        for (size_t i = 0; i < n; i++) {
            if (asking)
                cmd_ok(from, "ASKING");
            cmd_ok(from, "MIGRATE 127.0.0.1 %u %b 0 5000", to_port, r->element[i]->str,
                   r->element[i]->len);
        }
        freeReplyObject(r);
        if (n == 0)
            break;
    }
}

/* Move slot from node `from` to node `to` completely (MOVED afterwards). */
static void cl_move_slot(unsigned slot, unsigned from, unsigned to) {
    cl_node_t nodes[8];
    int n = cl_nodes(nodes, 8);
    const cl_node_t *src = &nodes[cl_find(nodes, n, from)], *dst = &nodes[cl_find(nodes, n, to)];
    redisContext *s = direct_port(from), *d = direct_port(to);
    cmd_ok(d, "CLUSTER SETSLOT %u IMPORTING %s", slot, src->id);
    cmd_ok(s, "CLUSTER SETSLOT %u MIGRATING %s", slot, dst->id);
    cl_move_keys(s, slot, to, false);
    cmd_ok(d, "CLUSTER SETSLOT %u NODE %s", slot, dst->id);
    cmd_ok(s, "CLUSTER SETSLOT %u NODE %s", slot, dst->id);
    for (int i = 0; i < n; i++) {
        if (nodes[i].port == from || nodes[i].port == to)
            continue;
        redisContext *o = direct_port(nodes[i].port);
        cmd_ok(o, "CLUSTER SETSLOT %u NODE %s", slot, dst->id);
        redisFree(o);
    }
    redisFree(s);
    redisFree(d);
}

/* .fini: give a moved slot back to its owner, whatever state a failed test left it in. */
static void cluster_restore(void) {
    if (!g_moved.active)
        return;
    g_moved.active = 0;
    unsigned slot = g_moved.slot, owner = g_moved.owner_port, other = g_moved.other_port;
    if (cl_owner(slot) == other) {
        cl_move_slot(slot, other, owner);
        return;
    }
    /* Owner still owns it (the ASK state). A MIGRATING owner answers ASK for keys it lacks,
     * so it goes STABLE first; the importing node serves its keys after ASKING. */
    redisContext *o = direct_port(other), *w = direct_port(owner);
    cmd_ok(w, "CLUSTER SETSLOT %u STABLE", slot);
    cl_move_keys(o, slot, owner, true);
    cmd_ok(o, "CLUSTER SETSLOT %u STABLE", slot);
    redisFree(o);
    redisFree(w);
}

/* A node other than port. */
static unsigned cl_other(unsigned port) {
    cl_node_t nodes[8];
    int n = cl_nodes(nodes, 8);
    for (int i = 0; i < n; i++)
        if (nodes[i].port != port)
            return nodes[i].port;
    FATAL("the cluster has one node");
}

Test(tier_redis, cluster_slot_function_matches_redis) {
    cr_assert_eq(khala__redis_cluster_slot("foo", 3), 12182);
    cr_assert_eq(khala__redis_cluster_slot("{user1000}.following", 20),
                 khala__redis_cluster_slot("{user1000}.followers", 20));
    cr_assert_eq(khala__redis_cluster_slot("foo{}{bar}", 10),
                 khala__redis_cluster_slot("foo{}{bar}", 10));
    redisContext *c = direct(tu_redis_env("KHALA_TEST_REDIS_CLUSTER_URL"));
    const char *keys[] = {"khala:x:a", "foo{}{bar}", "foo{{bar}}zap", "{a}b", "", "x{y}"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        cr_assert_eq((long long)khala__redis_cluster_slot(keys[i], strlen(keys[i])),
                     cmd_int(c, "CLUSTER KEYSLOT %s", keys[i]), "%s", keys[i]);
    redisFree(c);
    unsigned slot, port;
    char host[KHALA_REDIS_HOST_MAX];
    const char *m = "MOVED 3999 127.0.0.1:6381";
    cr_assert_eq(khala__redis_cluster_redirect(m, strlen(m), &slot, host, &port),
                 KHALA_REDIS_REDIRECT_MOVED);
    cr_assert_eq(slot, 3999);
    cr_assert_str_eq(host, "127.0.0.1");
    cr_assert_eq(port, 6381);
    m = "ASK 1 ::1:7000";
    cr_assert_eq(khala__redis_cluster_redirect(m, strlen(m), &slot, host, &port),
                 KHALA_REDIS_REDIRECT_ASK);
    cr_assert_str_eq(host, "::1");
    m = "MOVED x 1:2";
    cr_assert_eq(khala__redis_cluster_redirect(m, strlen(m), &slot, host, &port),
                 KHALA_REDIS_REDIRECT_NONE);
}

Test(tier_redis, cluster_spreads_keys_over_every_node) {
    khala_tier_t *t = tier(tu_redis_env("KHALA_TEST_REDIS_CLUSTER_URL"), "cl-spread");
    char key[32], buf[32];
    for (int i = 0; i < 60; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        cr_assert_eq(put_str(t, key, key, 1, 0, 60000), 0, "%s", t->err);
    }
    cl_node_t nodes[8];
    int n = cl_nodes(nodes, 8);
    cr_assert_eq(n, 3);
    for (int i = 0; i < n; i++) {
        redisContext *c = direct_port(nodes[i].port);
        cr_assert_gt(cmd_int(c, "DBSIZE"), 0);
        redisReply *r = redisCommand(c, "SCAN 0 MATCH khala:%s:* COUNT 100000", g_ns);
        cr_assert_gt(r->element[1]->elements, 0, "no key of ours on node %u", nodes[i].port);
        freeReplyObject(r);
        redisFree(c);
    }
    for (int i = 0; i < 60; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        cr_assert_eq(get_str(t, key, buf, sizeof(buf), NULL), 0, "%s", t->err);
        cr_assert_str_eq(buf, key);
    }
    seen_t *s = calloc(1, sizeof(*s));
    scan_all(t, NULL, s);
    cr_assert_eq(s->n, 60);
    free(s);
    cr_assert_eq(t->ops->health(t), 0);
}

Test(tier_redis, cluster_batches_scan_hot_and_invalidate) {
    khala_tier_t *t = tier(tu_redis_env("KHALA_TEST_REDIS_CLUSTER_URL"), "cl-batch");
    mixed_batches(t);
    cr_assert_eq(t->ops->invalidate(t, NULL, 0, -1, NULL), 0);
    scan_visits_everything(t);
    cr_assert_eq(t->ops->invalidate(t, NULL, 0, -1, NULL), 0);
    invalidation(t, NULL);
}

Test(tier_redis, cluster_follows_moved_after_a_slot_migration) {
    khala_tier_t *t = tier(tu_redis_env("KHALA_TEST_REDIS_CLUSTER_URL"), "cl-moved");
    char key[64], full[160], buf[16];
    snprintf(key, sizeof(key), "{m%d}a", (int)getpid());
    snprintf(full, sizeof(full), "khala:%s:%s", g_ns, key);
    cr_assert_eq(put_str(t, key, "before", 1, 0, 60000), 0, "%s", t->err);
    unsigned slot = khala__redis_cluster_slot(full, strlen(full));
    unsigned owner = cl_owner(slot), other = cl_other(owner);
    g_moved.slot = slot;
    g_moved.owner_port = owner;
    g_moved.other_port = other;
    g_moved.active = 1;
    cl_move_slot(slot, owner, other);
    cr_assert_eq(cl_owner(slot), other);
    cr_assert_eq(get_str(t, key, buf, sizeof(buf), NULL), 0, "%s", t->err);
    cr_assert_str_eq(buf, "before");
    cr_assert_eq(put_str(t, key, "after", 2, 0, 60000), 0, "%s", t->err);
    redisContext *c = direct_port(other);
    cr_assert_eq(cmd_int(c, "EXISTS %s", full), 1, "the write reached the new owner");
    redisFree(c);
    t->ops->tick(t, khala__sys_now_ms()); /* reloads the stale map */
    cr_assert_eq(get_str(t, key, buf, sizeof(buf), NULL), 0);
    cr_assert_str_eq(buf, "after");
    cl_move_slot(slot, other, owner);
    g_moved.active = 0;
    cr_assert_eq(cl_owner(slot), owner);
    cr_assert_eq(get_str(t, key, buf, sizeof(buf), NULL), 0, "%s", t->err);
    cr_assert_str_eq(buf, "after");
}

Test(tier_redis, cluster_follows_ask_during_a_migration) {
    khala_tier_t *t = tier(tu_redis_env("KHALA_TEST_REDIS_CLUSTER_URL"), "cl-ask");
    char key[64], key2[64], full[160], full2[160], buf[16];
    snprintf(key, sizeof(key), "{a%d}moved", (int)getpid());
    snprintf(key2, sizeof(key2), "{a%d}new", (int)getpid());
    snprintf(full, sizeof(full), "khala:%s:%s", g_ns, key);
    snprintf(full2, sizeof(full2), "khala:%s:%s", g_ns, key2);
    cr_assert_eq(put_str(t, key, "v", 1, 0, 60000), 0, "%s", t->err);
    unsigned slot = khala__redis_cluster_slot(full, strlen(full));
    unsigned owner = cl_owner(slot), other = cl_other(owner);
    cl_node_t nodes[8];
    int n = cl_nodes(nodes, 8);
    redisContext *s = direct_port(owner), *d = direct_port(other);
    g_moved.slot = slot;
    g_moved.owner_port = owner;
    g_moved.other_port = other;
    g_moved.active = 1;
    cmd_ok(d, "CLUSTER SETSLOT %u IMPORTING %s", slot, nodes[cl_find(nodes, n, owner)].id);
    cmd_ok(s, "CLUSTER SETSLOT %u MIGRATING %s", slot, nodes[cl_find(nodes, n, other)].id);
    cmd_ok(s, "MIGRATE 127.0.0.1 %u %s 0 5000", other, full);
    cmd_ok(d, "ASKING");
    cr_assert_eq(cmd_int(d, "EXISTS %s", full), 1, "the key is on the importing node");
    cr_assert_eq(get_str(t, key, buf, sizeof(buf), NULL), 0, "ASK followed: %s", t->err);
    cr_assert_str_eq(buf, "v");
    cr_assert_eq(put_str(t, key2, "w", 1, 0, 60000), 0, "%s", t->err);
    cmd_ok(d, "ASKING");
    cr_assert_eq(cmd_int(d, "EXISTS %s", full2), 1,
                 "a new key of a migrating slot goes to the "
                 "importing node");
    cr_assert_eq(cl_owner(slot), owner, "ASK does not move the slot");
    redisFree(s);
    redisFree(d);
    cluster_restore();
    cr_assert_eq(cl_owner(slot), owner);
    cr_assert_eq(get_str(t, key2, buf, sizeof(buf), NULL), 0, "%s", t->err);
    cr_assert_str_eq(buf, "w");
}

/* ------------------------------------------------------------------------------------------ */
/* Refusals, error replies, timeouts, script cache, noted hits (issue 9)                       */
/* ------------------------------------------------------------------------------------------ */

Test(tier_redis, open_refuses_bad_options_with_a_message_naming_the_problem) {
    char err[256], longns[KHALA_NAME_MAX + 2];
    khala_tier_t *t = NULL;
    cr_assert_eq(khala__tier_redis_open(NULL, &t, err, sizeof(err)), KHALA_ECONFIG);
    cr_assert(strstr(err, "no redis_url"), "message: %s", err);
    cr_assert_eq(open_tier(NULL, "ns", false, false, 1, &t, err, sizeof(err)), KHALA_ECONFIG);
    cr_assert(strstr(err, "no redis_url"), "message: %s", err);
    cr_assert_eq(open_tier("redis://127.0.0.1:1", "", false, false, 1, &t, err, sizeof(err)),
                 KHALA_ECONFIG);
    cr_assert(strstr(err, "namespace is 0 bytes"), "message: %s", err);
    memset(longns, 'n', sizeof(longns) - 1);
    longns[sizeof(longns) - 1] = '\0';
    cr_assert_eq(open_tier("redis://127.0.0.1:1", longns, false, false, 1, &t, err, sizeof(err)),
                 KHALA_ECONFIG);
    cr_assert(strstr(err, "namespace is"), "message: %s", err);
    cr_assert_eq(open_tier("http://127.0.0.1:1", "ns", false, false, 1, &t, err, sizeof(err)),
                 KHALA_ECONFIG);
    cr_assert(strstr(err, "redis_url") && strstr(err, "not a redis://"), "message: %s", err);
    cr_assert_eq(open_tier("rediss://127.0.0.1:1", "ns", false, false, 1, &t, err, sizeof(err)),
                 KHALA_ECONFIG);
    cr_assert(strstr(err, "TLS") && strstr(err, "not supported"), "message: %s", err);
    cr_assert_null(t, "no tier on a refused open");
}

Test(tier_redis, bad_invalidations_and_oversized_values_are_refused_before_redis) {
    khala_tier_t *t = tier(tu_redis_env("KHALA_TEST_REDIS_URL"), "refuse");
    char big[KHALA_KEY_MAX + 1];
    memset(big, 'p', sizeof(big));
    uint64_t removed = 99;
    cr_assert_eq(t->ops->invalidate(t, "p", 1, (int)KHALA_TYPE_COUNT, &removed), -EINVAL);
    cr_assert(strstr(t->err, "bad invalidation"), "message: %s", t->err);
    cr_assert_eq(t->ops->invalidate(t, big, sizeof(big), -1, &removed), KHALA_EKEY);
    cr_assert_eq(t->ops->invalidate(t, NULL, 3, -1, &removed), -EINVAL);
    cr_assert_eq(removed, 99, "nothing counted on a refusal");
    /* The length is refused before any byte is read: a 1-byte buffer is enough. */
    khala_tier_value_t huge = val("x", (size_t)KHALA_TIER_REDIS_VALUE_MAX + 1, 1, 0, 0);
    cr_assert_eq(t->ops->put(t, "k", 1, &huge), KHALA_ETOOBIG);
    cr_assert(strstr(t->err, "max"), "message: %s", t->err);
    khala_bytes_t key = {(const uint8_t *)"k", 1};
    cr_assert_eq(t->ops->mput(t, 1, &key, &huge), KHALA_ETOOBIG);
    cr_assert_eq(t->ops->mput(t, 0, &key, &huge), 0, "an empty batch is nothing to do");
    char buf[8];
    cr_assert_eq(get_str(t, "k", buf, sizeof(buf), NULL), KHALA_ENOTFOUND, "nothing was stored");
    khala_tier_stats_t st;
    t->ops->stats(t, &st);
    cr_assert_eq(st.puts, 0, "refused puts are not counted");
    cr_assert_eq(st.errors, 0, "a refusal is not a tier error");
}

Test(tier_redis, percent_escaped_credentials_are_decoded) {
    static const char *const args[] = {"--user", "bob", "on",    ">p@ss:w/rd",
                                       "~*",     "&*",  "+@all", NULL};
    tu_redis_start(&g_priv, args);
    char err[256], buf[16];
    khala_tier_t *t = NULL;
    int rc = open_tier(priv_url("b%6Fb:p%40ss%3aw%2Frd", 0), ns("pct"), true, false, 1, &t, err,
                       sizeof(err));
    cr_assert_eq(rc, 0, "%s", err);
    g_t = t;
    cr_assert_eq(put_str(t, "k", "v", 1, 0, 60000), 0, "%s", t->err);
    cr_assert_eq(get_str(t, "k", buf, sizeof(buf), NULL), 0, "%s", t->err);
    cr_assert_str_eq(buf, "v");
    khala_tier_t *u = NULL;
    rc = open_tier(priv_url("bob:p%40ss", 0), g_ns, true, false, 1, &u, err, sizeof(err));
    cr_assert_eq(rc, KHALA_ECONFIG, "a wrong decoded password is refused: %s", err);
    cr_assert(strstr(err, "AUTH refused"), "message: %s", err);
}

Test(tier_redis, a_user_who_may_not_load_scripts_is_a_config_error_at_open) {
    static const char *const args[] = {"--user", "ro",    "on",      ">pw", "~*",
                                       "&*",     "+@all", "-script", NULL};
    tu_redis_start(&g_priv, args);
    char err[256];
    khala_tier_t *t = NULL;
    int rc = open_tier(priv_url("ro:pw", 0), ns("noscript"), true, false, 1, &t, err, sizeof(err));
    cr_assert_eq(rc, KHALA_ECONFIG, "%s: %s", khala_strerror(rc), err);
    cr_assert_null(t);
    cr_assert(strstr(err, "SCRIPT LOAD refused") && strstr(err, "127.0.0.1"), "message: %s", err);
}

/* A user allowed to connect and load the script, refused everything else the driver sends. */
static const char *const limited_user[] = {"--user",  "lim",        "on",      ">pw",      "~*",
                                           "&*",      "+@all",      "-config", "-get",     "-mget",
                                           "-unlink", "-zrevrange", "-scan",   "-evalsha", NULL};

Test(tier_redis, error_replies_fail_each_operation_with_the_servers_words) {
    tu_redis_start(&g_priv, limited_user);
    char err[256], buf[16];
    khala_tier_t *t = NULL;
    int rc = open_tier(priv_url("lim:pw", 0), ns("errrep"), true, false, 1, &t, err, sizeof(err));
    cr_assert_eq(rc, 0, "%s", err);
    g_t = t;
    cr_assert(strstr(err, "warning") && strstr(err, "cannot read maxmemory-policy") &&
                  strstr(err, "NOPERM"),
              "an unreadable policy is a warning: %s", err);

    cr_assert_eq(put_str(t, "k", "v", 1, 0, 60000), KHALA_ETIER);
    cr_assert(strstr(t->err, "put") && strstr(t->err, "NOPERM"), "message: %s", t->err);
    cr_assert_eq(get_str(t, "k", buf, sizeof(buf), NULL), KHALA_ETIER);
    cr_assert(strstr(t->err, "GET 'k'") && strstr(t->err, "NOPERM"), "message: %s", t->err);
    cr_assert_eq(t->ops->del(t, "k", 1), KHALA_ETIER);
    cr_assert(strstr(t->err, "NOPERM"), "message: %s", t->err);
    khala_bytes_t keys[2] = {{(const uint8_t *)"a", 1}, {(const uint8_t *)"b", 1}};
    khala_tier_value_t out[2];
    int rcs[2] = {0, 0};
    cr_assert_eq(t->ops->mget(t, 2, keys, out, rcs), KHALA_ETIER);
    cr_assert_eq(rcs[0], KHALA_ETIER);
    cr_assert_eq(rcs[1], KHALA_ETIER);
    seen_t *s = calloc(1, sizeof(*s));
    cr_assert_eq(t->ops->hot(t, 10, collect, s), KHALA_ETIER);
    cr_assert(strstr(t->err, "ZREVRANGE") && strstr(t->err, "NOPERM"), "message: %s", t->err);
    uint64_t cursor = 0;
    cr_assert_eq(t->ops->scan(t, &cursor, NULL, 10, collect, s), KHALA_ETIER);
    cr_assert(strstr(t->err, "SCAN") && strstr(t->err, "NOPERM"), "message: %s", t->err);
    cr_assert_eq(t->ops->invalidate(t, NULL, 0, -1, NULL), KHALA_ETIER);
    cr_assert(strstr(t->err, "SCAN") && strstr(t->err, "NOPERM"), "message: %s", t->err);
    cr_assert_eq(s->n, 0, "no key reported");
    free(s);
    khala_tier_stats_t st;
    t->ops->stats(t, &st);
    cr_assert_geq(st.errors, 7, "every refused operation counts an error");
    cr_assert_eq(t->ops->health(t), 0, "PING is allowed: the server is healthy");
}

Test(tier_redis, owned_but_not_allowed_to_set_the_policy_warns) {
    tu_redis_start(&g_priv, limited_user);
    char err[256];
    khala_tier_t *t = NULL;
    int rc = open_tier(priv_url("lim:pw", 0), ns("ownlim"), true, true, 1, &t, err, sizeof(err));
    cr_assert_eq(rc, 0, "%s", err);
    g_t = t;
    cr_assert(strstr(err, "warning") && strstr(err, "CONFIG SET maxmemory-policy allkeys-lfu "
                                                    "refused"),
              "message: %s", err);
}

Test(tier_redis, a_flushed_script_cache_is_loaded_again) {
    tu_redis_start(&g_priv, NULL);
    char err[256], buf[16];
    khala_tier_t *t = NULL;
    cr_assert_eq(open_tier(priv_url(NULL, 0), ns("noscr"), false, false, 1, &t, err, sizeof(err)),
                 0, "%s", err);
    g_t = t;
    cr_assert_eq(put_str(t, "k", "one", 1, 0, 60000), 0, "%s", t->err);
    redisContext *c = direct(priv_url(NULL, 0));
    cmd_ok(c, "SCRIPT FLUSH");
    cr_assert_eq(put_str(t, "k", "two", 2, 0, 60000), 0, "put after SCRIPT FLUSH: %s", t->err);
    cr_assert_eq(get_str(t, "k", buf, sizeof(buf), NULL), 0);
    cr_assert_str_eq(buf, "two");
    cr_assert_eq(put_str(t, "k", "old", 1, 0, 60000), KHALA_EVERSION, "the script still decides");
    cmd_ok(c, "SCRIPT FLUSH");
    khala_bytes_t keys[3] = {
        {(const uint8_t *)"a", 1}, {(const uint8_t *)"b", 1}, {(const uint8_t *)"k", 1}};
    khala_tier_value_t vals[3] = {val("A", 1, 1, 0, 0), val("B", 1, 1, 0, 0), val("K", 1, 3, 0, 0)};
    cr_assert_eq(t->ops->mput(t, 3, keys, vals), 0, "mput after SCRIPT FLUSH: %s", t->err);
    cr_assert_eq(get_str(t, "b", buf, sizeof(buf), NULL), 0);
    cr_assert_str_eq(buf, "B");
    cr_assert_eq(get_str(t, "k", buf, sizeof(buf), NULL), 0);
    cr_assert_str_eq(buf, "K");
    redisFree(c);
}

Test(tier_redis, a_server_that_stops_answering_times_out_and_recovers) {
    tu_redis_start(&g_priv, NULL);
    char err[256], buf[16];
    khala_tier_t *t = NULL;
    khala_tier_redis_opts_t o = {.url = priv_url(NULL, 0),
                                 .ns = ns("stop"),
                                 .level = KHALA_LEVEL_L2,
                                 .timeout_ms = 200,
                                 .pool_size = 1};
    cr_assert_eq(khala__tier_redis_open(&o, &t, err, sizeof(err)), 0, "%s", err);
    g_t = t;
    cr_assert_eq(put_str(t, "k", "v", 1, 0, 60000), 0, "%s", t->err);
    cr_assert_eq(kill(g_priv.pid, SIGSTOP), 0);
    int64_t t0 = khala__sys_now_ms();
    int rc = get_str(t, "k", buf, sizeof(buf), NULL);
    int64_t took = khala__sys_now_ms() - t0;
    kill(g_priv.pid, SIGCONT);
    cr_assert_eq(rc, KHALA_ETIER);
    cr_assert(strstr(t->err, "no reply within 200 ms"), "message: %s", t->err);
    cr_assert(took >= 150 && took < 1500, "waited %lld ms", (long long)took);
    cr_assert_eq(wait_healthy(t), 0, "%s", t->err);
    cr_assert_eq(get_str(t, "k", buf, sizeof(buf), NULL), 0, "%s", t->err);
    cr_assert_str_eq(buf, "v");
}

Test(tier_redis, every_operation_of_a_tier_whose_server_is_down_fails_with_etier) {
    g_priv.port = tu_redis_free_port();
    char err[256];
    khala_tier_t *t = NULL;
    cr_assert_eq(open_tier(priv_url(NULL, 0), ns("alldown"), false, false, 1, &t, err, sizeof(err)),
                 0, "%s", err);
    g_t = t;
    char name[32];
    snprintf(name, sizeof(name), "127.0.0.1:%u", g_priv.port);
    khala_bytes_t keys[2] = {{(const uint8_t *)"a", 1}, {(const uint8_t *)"", 0}};
    khala_tier_value_t vals[2] = {val("A", 1, 1, 0, 0), val("B", 1, 1, 0, 0)}, out[2];
    int rcs[2];
    cr_assert_eq(put_str(t, "k", "v", 1, 0, 0), KHALA_ETIER);
    cr_assert(strstr(t->err, name), "message names the server: %s", t->err);
    cr_assert_eq(t->ops->mput(t, 1, keys, vals), KHALA_ETIER);
    cr_assert_eq(t->ops->mget(t, 2, keys, out, rcs), KHALA_ETIER);
    cr_assert_eq(rcs[0], KHALA_ETIER);
    cr_assert_eq(rcs[1], KHALA_EKEY, "a bad key keeps its own code");
    cr_assert_eq(t->ops->del(t, "k", 1), KHALA_ETIER);
    uint64_t cursor = 0;
    cr_assert_eq(t->ops->scan(t, &cursor, NULL, 10, collect, NULL), KHALA_ETIER);
    cr_assert_eq(t->ops->hot(t, 10, collect, NULL), KHALA_ETIER);
    cr_assert_eq(t->ops->invalidate(t, NULL, 0, -1, NULL), KHALA_ETIER);
    t->ops->tick(t, khala__sys_now_ms()); /* nothing to do before ready, and no crash */
    khala_tier_stats_t st;
    t->ops->stats(t, &st);
    cr_assert_eq(st.errors, 7);
    cr_assert(strstr(t->err, name), "message names the server: %s", t->err);
}

Test(tier_redis, a_password_changed_under_a_running_tier_is_etier_not_econfig) {
    start_private("auth");
    char err[256], buf[16];
    khala_tier_t *t = NULL;
    cr_assert_eq(
        open_tier(priv_url(":secret", 0), ns("repass"), true, false, 1, &t, err, sizeof(err)), 0,
        "%s", err);
    g_t = t;
    cr_assert_eq(put_str(t, "k", "v", 1, 0, 60000), 0, "%s", t->err);
    redisContext *c = direct(priv_url(":secret", 0));
    cmd_ok(c, "CONFIG SET requirepass changed");
    cmd_ok(c, "CLIENT KILL TYPE normal SKIPME yes");
    redisFree(c);
    /* The first call finds its socket closed; the next reconnects and is refused. */
    int rc = get_str(t, "k", buf, sizeof(buf), NULL);
    cr_assert_eq(rc, KHALA_ETIER, "%s", khala_strerror(rc));
    rc = get_str(t, "k", buf, sizeof(buf), NULL);
    if (!strstr(t->err, "AUTH")) /* the close was seen only now */
        rc = get_str(t, "k", buf, sizeof(buf), NULL);
    cr_assert_eq(rc, KHALA_ETIER, "a refused reconnect is an unreachable tier: %s",
                 khala_strerror(rc));
    cr_assert(strstr(t->err, "AUTH") && strstr(t->err, "refused"), "message: %s", t->err);
    cr_assert_neq(t->ops->health(t), 0);
}

Test(tier_redis, l1_hits_noted_by_khalad_rank_keys_and_decay_halves_them) {
    const char *url = tu_redis_env("KHALA_TEST_REDIS_URL");
    khala_tier_t *t = tier(url, "noted");
    t->ops->note_hits(t, "a", 1, 10);
    t->ops->note_hits(t, "b", 1, 3);
    t->ops->note_hits(t, "a", 1, 2);
    t->ops->note_hits(t, "~hot", 4, 100); /* the counts' own key: ignored */
    t->ops->note_hits(t, "c", 1, 0);      /* no hits: nothing */
    t->ops->note_hits(t, "", 0, 5);       /* not a key: nothing */
    int64_t now = khala__sys_now_ms();
    t->ops->tick(t, now); /* flushes; the first tick only schedules the decay */
    seen_t *s = calloc(1, sizeof(*s));
    cr_assert_eq(t->ops->hot(t, 10, collect, s), 0, "%s", t->err);
    cr_assert_eq(s->n, 2, "only a and b: %d", s->n);
    cr_assert_str_eq(s->keys[0], "a");
    cr_assert_str_eq(s->keys[1], "b");
    free(s);
    redisContext *c = direct(url);
    redisReply *r = redisCommand(c, "ZSCORE khala:%s:~hot a", g_ns);
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    cr_assert_str_eq(r->str, "12");
    freeReplyObject(r);
    t->ops->tick(t, now + 5 * 60 * 1000); /* HOT_DECAY_MS later: every score halves */
    r = redisCommand(c, "ZSCORE khala:%s:~hot a", g_ns);
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    cr_assert_str_eq(r->str, "6");
    freeReplyObject(r);
    r = redisCommand(c, "ZSCORE khala:%s:~hot b", g_ns);
    cr_assert_str_eq(r->str, "1.5");
    freeReplyObject(r);
    redisFree(c);
}

Test(tier_redis, malformed_redirections_are_not_followed) {
    unsigned slot, port;
    char host[KHALA_REDIS_HOST_MAX];
    const char *bad[] = {"MOVED 16384 127.0.0.1:7000", /* slot out of range */
                         "MOVED 1 127.0.0.1:0",        /* port 0 */
                         "MOVED 1 127.0.0.1:65536",    /* port out of range */
                         "MOVED 1 127.0.0.1",          /* no port */
                         "MOVED 1 127.0.0.1:",         /* empty port */
                         "MOVED 1",                    /* no address */
                         "MOVED  127.0.0.1:7000",      /* empty slot */
                         "ASK -1 h:1",
                         "MOVED ",
                         "ERR something else",
                         "NOSCRIPT No matching script"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(khala__redis_cluster_redirect(bad[i], strlen(bad[i]), &slot, host, &port),
                     KHALA_REDIS_REDIRECT_NONE, "%s", bad[i]);
    char longhost[KHALA_REDIS_HOST_MAX + 32];
    int n = snprintf(longhost, sizeof(longhost), "ASK 5 ");
    memset(longhost + n, 'h', KHALA_REDIS_HOST_MAX);
    snprintf(longhost + n + KHALA_REDIS_HOST_MAX,
             sizeof(longhost) - (size_t)n - KHALA_REDIS_HOST_MAX, ":7000");
    cr_assert_eq(khala__redis_cluster_redirect(longhost, strlen(longhost), &slot, host, &port),
                 KHALA_REDIS_REDIRECT_NONE, "a host longer than the buffer");
    const char *edge = "ASK 16383 :65535"; /* empty host: the node that answered */
    cr_assert_eq(khala__redis_cluster_redirect(edge, strlen(edge), &slot, host, &port),
                 KHALA_REDIS_REDIRECT_ASK);
    cr_assert_eq(slot, 16383);
    cr_assert_eq(port, 65535);
    cr_assert_str_eq(host, "");
}

/* A reply parsed from RESP text, as hiredis would hand it over. */
static redisReply *resp(const char *text) {
    redisReader *rd = redisReaderCreate();
    cr_assert(rd);
    cr_assert_eq(redisReaderFeed(rd, text, strlen(text)), REDIS_OK);
    void *r = NULL;
    cr_assert_eq(redisReaderGetReply(rd, &r), REDIS_OK);
    cr_assert(r, "incomplete RESP: %s", text);
    redisReaderFree(rd);
    return r;
}

typedef struct ranges {
    int n, stop_after;
    unsigned first[8], last[8], port[8];
    char host[8][32];
} ranges_t;

static int range_cb(void *arg, unsigned first, unsigned last, const char *host, unsigned port) {
    ranges_t *x = arg;
    cr_assert_lt(x->n, 8);
    x->first[x->n] = first;
    x->last[x->n] = last;
    x->port[x->n] = port;
    snprintf(x->host[x->n], sizeof(x->host[0]), "%s", host);
    return ++x->n == x->stop_after;
}

Test(tier_redis, cluster_slots_replies_are_checked_and_empty_hosts_mean_the_seed) {
    ranges_t x = {0};
    redisReply *r = resp("*3\r\n"
                         "*3\r\n:0\r\n:99\r\n*2\r\n$8\r\n10.0.0.1\r\n:7000\r\n"
                         "*4\r\n:100\r\n:200\r\n*3\r\n$0\r\n\r\n:7001\r\n$2\r\nid\r\n"
                         "*2\r\n$9\r\n127.0.0.9\r\n:7100\r\n" /* a replica: ignored */
                         "*3\r\n:201\r\n:16383\r\n*2\r\n$1\r\n?\r\n:7002\r\n");
    cr_assert_eq(khala__redis_cluster_slots_parse(r, "seed", range_cb, &x), 0);
    cr_assert_eq(x.n, 3);
    cr_assert_str_eq(x.host[0], "10.0.0.1");
    cr_assert_eq(x.port[0], 7000);
    cr_assert_eq(x.first[1], 100);
    cr_assert_eq(x.last[1], 200);
    cr_assert_str_eq(x.host[1], "seed", "an empty host is the node that answered");
    cr_assert_str_eq(x.host[2], "seed", "so is '?' (older servers)");
    cr_assert_eq(x.last[2], 16383);
    memset(&x, 0, sizeof(x));
    x.stop_after = 1;
    cr_assert_eq(khala__redis_cluster_slots_parse(r, "seed", range_cb, &x), 0);
    cr_assert_eq(x.n, 1, "the callback stops the walk");
    freeReplyObject(r);

    const char *bad[] = {
        "-ERR This instance has cluster support disabled\r\n",
        "*1\r\n:5\r\n",                                          /* a range that is no array */
        "*1\r\n*2\r\n:0\r\n:5\r\n",                              /* no master */
        "*1\r\n*3\r\n$1\r\n0\r\n:5\r\n*2\r\n$1\r\nh\r\n:1\r\n",  /* first not an integer */
        "*1\r\n*3\r\n:6\r\n:5\r\n*2\r\n$1\r\nh\r\n:1\r\n",       /* last < first */
        "*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$1\r\nh\r\n:1\r\n",   /* beyond the last slot */
        "*1\r\n*3\r\n:-1\r\n:5\r\n*2\r\n$1\r\nh\r\n:1\r\n",      /* negative */
        "*1\r\n*3\r\n:0\r\n:5\r\n*1\r\n$1\r\nh\r\n",             /* master without port */
        "*1\r\n*3\r\n:0\r\n:5\r\n*2\r\n:1\r\n:1\r\n",            /* host not a string */
        "*1\r\n*3\r\n:0\r\n:5\r\n*2\r\n$1\r\nh\r\n:0\r\n",       /* port 0 */
        "*1\r\n*3\r\n:0\r\n:5\r\n*2\r\n$1\r\nh\r\n:65536\r\n",   /* port too big */
        "*2\r\n*3\r\n:0\r\n:5\r\n*2\r\n$1\r\nh\r\n:1\r\n:9\r\n", /* good, then garbage */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&x, 0, sizeof(x));
        r = resp(bad[i]);
        cr_assert_eq(khala__redis_cluster_slots_parse(r, "seed", range_cb, &x), -EPROTO,
                     "reply %zu accepted", i);
        freeReplyObject(r);
    }
    cr_assert_eq(x.n, 1, "ranges before the bad one were passed on");
    cr_assert_eq(khala__redis_cluster_slots_parse(NULL, "seed", range_cb, &x), -EPROTO);
}

Test(tier_redis, a_cluster_slot_nobody_serves_fails_with_its_number_until_it_is_assigned) {
    static const char *const args[] = {"--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
                                       NULL};
    tu_redis_start(&g_priv, args); /* a cluster node with no slots yet */
    char err[256], buf[16], want[64];
    khala_tier_t *t = NULL;
    cr_assert_eq(open_tier(priv_url(NULL, 0), ns("noslot"), false, false, 1, &t, err, sizeof(err)),
                 0, "%s", err);
    g_t = t;
    char full[128];
    snprintf(full, sizeof(full), "khala:%s:k", g_ns);
    snprintf(want, sizeof(want), "no node serves slot %u",
             khala__redis_cluster_slot(full, strlen(full)));
    cr_assert_eq(put_str(t, "k", "v", 1, 0, 60000), KHALA_ETIER);
    cr_assert(strstr(t->err, want), "message: %s (want %s)", t->err, want);
    cr_assert_eq(get_str(t, "k", buf, sizeof(buf), NULL), KHALA_ETIER);
    khala_bytes_t keys[1] = {{(const uint8_t *)"k", 1}};
    khala_tier_value_t vals[1] = {val("v", 1, 1, 0, 0)}, out[1];
    int rcs[1];
    cr_assert_eq(t->ops->mget(t, 1, keys, out, rcs), KHALA_ETIER);
    cr_assert_eq(rcs[0], KHALA_ETIER);
    cr_assert_eq(t->ops->mput(t, 1, keys, vals), KHALA_ETIER);
    seen_t *s = calloc(1, sizeof(*s));
    uint64_t cursor = 0;
    cr_assert_eq(t->ops->scan(t, &cursor, NULL, 10, collect, s), 0, "no node: nothing to visit");
    cr_assert_eq(cursor, 0);
    cr_assert_eq(s->n, 0);
    free(s);

    redisContext *c = direct_port(g_priv.port);
    cmd_ok(c, "CLUSTER ADDSLOTSRANGE 0 16383");
    /* tick reloads the stale map: the slot now routes to the node, which answers CLUSTERDOWN
     * for its first 2 s (Redis's rejoin delay) and serves it afterwards. */
    t->ops->tick(t, khala__sys_now_ms());
    int rc = put_str(t, "k", "v", 1, 0, 60000);
    cr_assert(rc == 0 || (rc == KHALA_ETIER && strstr(t->err, "CLUSTERDOWN")),
              "the slot is routed after tick: %s: %s", khala_strerror(rc), t->err);
    redisFree(c);
}

Test(tier_redis, a_cluster_whose_slot_map_cannot_be_read_stays_not_ready_with_the_reason) {
    static const char *const args[] = {
        "--cluster-enabled", "yes", "--user", "nomap", "on", ">pw", "~*", "&*", "+@all",
        "-cluster|slots",    NULL};
    tu_redis_start(&g_priv, args);
    char err[256], buf[16];
    khala_tier_t *t = NULL;
    cr_assert_eq(
        open_tier(priv_url("nomap:pw", 0), ns("nomap"), false, false, 1, &t, err, sizeof(err)), 0,
        "the tier is returned, not ready: %s", err);
    g_t = t;
    cr_assert(strstr(err, "CLUSTER SLOTS") && strstr(err, "NOPERM"), "message: %s", err);
    cr_assert_neq(t->ops->health(t), 0);
    cr_assert_eq(get_str(t, "k", buf, sizeof(buf), NULL), KHALA_ETIER);
    cr_assert(strstr(t->err, "CLUSTER SLOTS"), "each call retries the open: %s", t->err);
    redisContext *c = direct_port(g_priv.port);
    cmd_ok(c, "ACL SETUSER nomap +cluster|slots");
    redisFree(c);
    /* The map reads now (empty: no slot assigned), so the open finishes and the call reaches
     * the routing step. */
    cr_assert_eq(get_str(t, "k", buf, sizeof(buf), NULL), KHALA_ETIER);
    cr_assert(strstr(t->err, "no node serves slot"), "message: %s", t->err);
}

Test(tier_redis, cluster_invalidate_by_type_finds_keys_of_a_migrating_slot) {
    khala_tier_t *t = tier(tu_redis_env("KHALA_TEST_REDIS_CLUSTER_URL"), "cl-invask");
    char tag[32], k1[64], k2[64], k3[64], f1[160], f2[160], buf[16];
    snprintf(tag, sizeof(tag), "{i%d}", (int)getpid());
    snprintf(k1, sizeof(k1), "%sgone", tag); /* type 1, migrated: removed */
    snprintf(k2, sizeof(k2), "%skept", tag); /* type 2, migrated: stays */
    snprintf(k3, sizeof(k3), "%shome", tag); /* type 1, still on the owner: removed */
    snprintf(f1, sizeof(f1), "khala:%s:%s", g_ns, k1);
    snprintf(f2, sizeof(f2), "khala:%s:%s", g_ns, k2);
    cr_assert_eq(put_str(t, k1, "v", 1, 1, 60000), 0, "%s", t->err);
    cr_assert_eq(put_str(t, k2, "v", 1, 2, 60000), 0, "%s", t->err);
    cr_assert_eq(put_str(t, k3, "v", 1, 1, 60000), 0, "%s", t->err);
    unsigned slot = khala__redis_cluster_slot(f1, strlen(f1));
    unsigned owner = cl_owner(slot), other = cl_other(owner);
    cl_node_t nodes[8];
    int n = cl_nodes(nodes, 8);
    redisContext *s = direct_port(owner), *d = direct_port(other);
    g_moved.slot = slot;
    g_moved.owner_port = owner;
    g_moved.other_port = other;
    g_moved.active = 1;
    cmd_ok(d, "CLUSTER SETSLOT %u IMPORTING %s", slot, nodes[cl_find(nodes, n, owner)].id);
    cmd_ok(s, "CLUSTER SETSLOT %u MIGRATING %s", slot, nodes[cl_find(nodes, n, other)].id);
    cmd_ok(s, "MIGRATE 127.0.0.1 %u %s 0 5000", other, f1);
    cmd_ok(s, "MIGRATE 127.0.0.1 %u %s 0 5000", other, f2);
    uint64_t removed = 0;
    cr_assert_eq(t->ops->invalidate(t, tag, strlen(tag), 1, &removed), 0, "%s", t->err);
    cr_assert_eq(removed, 2, "both type-1 keys, wherever they are");
    cmd_ok(d, "ASKING");
    cr_assert_eq(cmd_int(d, "EXISTS %s", f1), 0, "the migrated type-1 key is gone");
    cmd_ok(d, "ASKING");
    cr_assert_eq(cmd_int(d, "EXISTS %s", f2), 1, "the migrated type-2 key stays");
    redisFree(s);
    redisFree(d);
    cluster_restore();
    cr_assert_eq(get_str(t, k2, buf, sizeof(buf), NULL), 0, "%s", t->err);
    cr_assert_eq(get_str(t, k1, buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
    cr_assert_eq(get_str(t, k3, buf, sizeof(buf), NULL), KHALA_ENOTFOUND);
}

/* A migration set up on one side only: the owner says MIGRATING (ASK for keys it lacks) but the
 * target is not IMPORTING (MOVED back to the owner). The redirections would go round forever;
 * the driver follows KHALA_REDIS_REDIRECTS_MAX of them and fails with a message naming the
 * slot, and serves the slot again once the owner is STABLE. */
Test(tier_redis, a_redirection_loop_is_cut_and_named) {
    khala_tier_t *t = tier(tu_redis_env("KHALA_TEST_REDIS_CLUSTER_URL"), "cl-loop");
    char key[64], absent[64], full[160], buf[16], want[64];
    snprintf(key, sizeof(key), "{l%d}here", (int)getpid());
    snprintf(absent, sizeof(absent), "{l%d}absent", (int)getpid());
    snprintf(full, sizeof(full), "khala:%s:%s", g_ns, key);
    cr_assert_eq(put_str(t, key, "v", 1, 0, 60000), 0, "%s", t->err);
    unsigned slot = khala__redis_cluster_slot(full, strlen(full));
    unsigned owner = cl_owner(slot), other = cl_other(owner);
    cl_node_t nodes[8];
    int n = cl_nodes(nodes, 8);
    redisContext *s = direct_port(owner);
    g_moved.slot = slot;
    g_moved.owner_port = owner;
    g_moved.other_port = other;
    g_moved.active = 1;
    cmd_ok(s, "CLUSTER SETSLOT %u MIGRATING %s", slot, nodes[cl_find(nodes, n, other)].id);
    redisFree(s);

    cr_assert_eq(get_str(t, key, buf, sizeof(buf), NULL), 0, "a key the owner holds: %s", t->err);
    cr_assert_str_eq(buf, "v");
    cr_assert_eq(get_str(t, absent, buf, sizeof(buf), NULL), KHALA_ETIER);
    snprintf(want, sizeof(want), "more than %d redirections for slot %u", KHALA_REDIS_REDIRECTS_MAX,
             slot);
    cr_assert(strstr(t->err, want), "the message names the loop: %s", t->err);

    cluster_restore();
    cr_assert_eq(t->ops->health(t), 0, "%s", t->err);
    cr_assert_eq(get_str(t, absent, buf, sizeof(buf), NULL), KHALA_ENOTFOUND, "%s", t->err);
    cr_assert_eq(get_str(t, key, buf, sizeof(buf), NULL), 0, "%s", t->err);
    cr_assert_str_eq(buf, "v");
}
