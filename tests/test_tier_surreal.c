/*
 * The SurrealDB L3 driver (daemon/tier_surreal.c) against the real SurrealDB engine through the
 * test front (tests/support/surreal/front.mjs, docs/testing.md "SurrealDB"): the shared front
 * of scripts/test-servers.sh when KHALA_TEST_SURREAL_URL is set, else a private front per test
 * (tests/surreal_util.h); and private fronts that a test kills and restarts with their data.
 *
 * Every test works in its own table ("t<pid>_<tag>", and its "_archive"); .fini removes both.
 * Rows are also read behind the driver's back (raw(): a plain /rpc query through libcurl) to
 * check what the server holds: that a cleanup deleted rows, that the table survived an injection
 * attempt.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "http_pool.h"
#include "khala/error.h"
#include "surreal_util.h"
#include "sys.h"
#include "tier_surreal.h"

#define FATAL(...)                                                                                 \
    do {                                                                                           \
        cr_assert_fail(__VA_ARGS__);                                                               \
        abort();                                                                                   \
    } while (0)

/* A TCP port on 127.0.0.1 that was free a moment ago (for "nothing listens there"). */
static unsigned free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        FATAL("no free port: %s", strerror(errno));
    close(fd);
    return ntohs(a.sin_port);
}

/* ------------------------------------------------------------------------------------------ */
/* Fixtures                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static tu_surreal_t g_shared; /* the private stand-in for the shared front, when none is set */
static tu_surreal_t g_priv;   /* a test's own front (kill and restart) */
static const char *g_url;     /* the front the test uses */
static char g_table[64];
static khala_tier_t *g_t;

static void setup(void) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    g_url = getenv("KHALA_TEST_SURREAL_URL");
    if (!g_url || !*g_url) {
        tu_surreal_start(&g_shared);
        g_url = tu_surreal_url(&g_shared);
    }
    snprintf(g_table, sizeof(g_table), "t%d_x", (int)getpid());
}

/* A /rpc query behind the driver's back, on url (credentials in it); the reply's result array
 * (caller releases), or NULL. */
static json_t *raw_on(const char *url, const char *sql, json_t *vars) {
    char base[160];
    const char *at = strchr(url, '@');
    snprintf(base, sizeof(base), "http://%s/rpc", at ? at + 1 : url + 7);
    json_t *req = json_pack("{s:i, s:s, s:[s, o]}", "id", 1, "method", "query", "params", sql,
                            vars ? vars : json_object());
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    CURL *e = curl_easy_init();
    struct curl_slist *h = NULL;
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Accept: application/json");
    h = curl_slist_append(h, "surreal-ns: khala");
    h = curl_slist_append(h, "surreal-db: cache");
    char *out = NULL;
    size_t outlen = 0;
    FILE *mem = open_memstream(&out, &outlen);
    curl_easy_setopt(e, CURLOPT_URL, base);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_USERPWD, "root:root");
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, mem);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L);
    CURLcode c = curl_easy_perform(e);
    fclose(mem);
    curl_slist_free_all(h);
    curl_easy_cleanup(e);
    free(body);
    json_t *reply = c == CURLE_OK ? json_loads(out, 0, NULL) : NULL;
    free(out);
    json_t *res = json_incref(json_object_get(reply, "result"));
    json_decref(reply);
    return res;
}

/* Rows in table tb (-1 when the query fails: no such table in 3.x is an error). */
static long raw_count(const char *tb) {
    json_t *res = raw_on(g_url, "SELECT count() AS n FROM type::table($tb) GROUP ALL;",
                         json_pack("{s:s}", "tb", tb));
    json_t *s0 = json_array_get(res, 0);
    long n = -1;
    if (json_is_string(json_object_get(s0, "status")) &&
        strcmp(json_string_value(json_object_get(s0, "status")), "OK") == 0) {
        json_t *rows = json_object_get(s0, "result");
        n = json_array_size(rows)
                ? (long)json_integer_value(json_object_get(json_array_get(rows, 0), "n"))
                : 0;
    }
    json_decref(res);
    return n;
}

static void fake_stop(void);

static void teardown(void) {
    fake_stop(); /* a fake server still running when a test failed */
    if (g_t) {
        g_t->ops->close(g_t);
        g_t = NULL;
    }
    if (g_url && g_priv.pid == 0 && g_table[0]) {
        char sql[200];
        snprintf(sql, sizeof(sql), "REMOVE TABLE IF EXISTS %s; REMOVE TABLE IF EXISTS %s_archive;",
                 g_table, g_table);
        json_decref(raw_on(g_url, sql, NULL));
    }
    tu_surreal_stop(&g_priv);
    tu_surreal_stop(&g_shared);
}

TestSuite(tier_surreal, .init = setup, .fini = teardown, .timeout = 240);

static khala_tier_surreal_opts_t opts(const char *url) {
    return (khala_tier_surreal_opts_t){.url = url,
                                       .ns = "khala",
                                       .db = "cache",
                                       .table = g_table,
                                       .level = KHALA_LEVEL_L3,
                                       .timeout_ms = 5000,
                                       .pool_size = 2};
}

static khala_tier_t *open_with(const khala_tier_surreal_opts_t *o) {
    char err[256] = "";
    int rc = khala__tier_surreal_open(o, &g_t, err, sizeof(err));
    cr_assert_eq(rc, 0, "open: %d %s", rc, err);
    cr_assert_eq(g_t->ops->health(g_t), 0, "health: %s", g_t->err);
    return g_t;
}

static khala_tier_t *open_default(void) {
    khala_tier_surreal_opts_t o = opts(g_url);
    return open_with(&o);
}

static int put(khala_tier_t *t, const char *key, const void *data, size_t len, uint64_t version,
               int64_t ttl_ms, khala_type_t type) {
    khala_tier_value_t v = {
        .data = (void *)data, .len = len, .version = version, .ttl_ms = ttl_ms, .type = type};
    return t->ops->put(t, key, strlen(key), &v);
}

/* get key and require value text (NUL-free) and version. */
static void expect(khala_tier_t *t, const char *key, const char *text, uint64_t version) {
    khala_tier_value_t v = {0};
    int rc = t->ops->get(t, key, strlen(key), &v);
    cr_assert_eq(rc, 0, "get '%s': %d %s", key, rc, t->err);
    cr_assert_eq(v.len, strlen(text), "get '%s': %zu bytes", key, v.len);
    cr_assert(memcmp(v.data, text, v.len) == 0, "get '%s': wrong bytes", key);
    cr_assert_eq(v.version, version, "get '%s': version %llu", key, (unsigned long long)v.version);
    khala__tier_value_free(&v);
}

static void expect_miss(khala_tier_t *t, const char *key) {
    khala_tier_value_t v = {0};
    int rc = t->ops->get(t, key, strlen(key), &v);
    cr_assert_eq(rc, KHALA_ENOTFOUND, "get '%s': %d, expected a miss (%s)", key, rc, t->err);
}

/* Wait until the tier's background requests were answered (up to 20 s). */
static void settle(khala_tier_t *t) {
    khala_http_pool_t *p = khala__tier_surreal_pool(t);
    for (int w = 0; w < 20000 && khala__http_inflight(p) > 0; w++) {
        usleep(1000);
        khala__http_progress(p);
    }
    cr_assert_eq(khala__http_inflight(p), 0, "a background request still in flight after 20 s");
}

/* Run n cleanup steps: each tick (on a clock past any interval and the access-count flush)
 * submits one step in the background; wait until it (and any flush) was answered. */
static void run_cleanup(khala_tier_t *t, int n) {
    static int64_t clock_ms;
    for (int i = 0; i < n; i++) {
        int64_t now = khala__sys_now_ms();
        clock_ms = (clock_ms > now ? clock_ms : now) + 2000;
        t->ops->tick(t, clock_ms);
        settle(t);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Data                                                                                         */
/* ------------------------------------------------------------------------------------------ */

Test(tier_surreal, every_type_and_binary_values_round_trip) {
    khala_tier_t *t = open_default();
    cr_assert_str_eq(t->ops->name, "surrealdb");
    uint8_t all[512];
    for (size_t i = 0; i < sizeof(all); i++)
        all[i] = (uint8_t)(i % 256); /* every byte value, NULs included */
    /* An embedding's value of a multiple of 4 bytes is also sent as a float vector: arbitrary
     * bytes make floats up to 3.4e38, which the test front cannot pass on (its JSON.parse turns
     * an integral 1e38 into a number its CBOR encoder refuses; the real server parses it as a
     * float). So the embedding gets 510 bytes (not a vector) here; similar_* test vectors. */
    for (int ty = 0; ty < KHALA_TYPE_COUNT; ty++) {
        char key[32];
        size_t len = ty == KHALA_TYPE_EMBEDDING ? sizeof(all) - 2 : sizeof(all);
        snprintf(key, sizeof(key), "type-%d", ty);
        cr_assert_eq(put(t, key, all, len, 100 + ty, 0, ty), 0, "%s", t->err);
    }
    for (int ty = 0; ty < KHALA_TYPE_COUNT; ty++) {
        char key[32];
        size_t len = ty == KHALA_TYPE_EMBEDDING ? sizeof(all) - 2 : sizeof(all);
        snprintf(key, sizeof(key), "type-%d", ty);
        khala_tier_value_t v = {0};
        cr_assert_eq(t->ops->get(t, key, strlen(key), &v), 0, "%s", t->err);
        cr_assert_eq(v.type, (khala_type_t)ty);
        cr_assert_eq(v.version, 100u + ty);
        cr_assert_eq(v.ttl_ms, 0);
        cr_assert_eq(v.len, len);
        cr_assert(memcmp(v.data, all, len) == 0);
        khala__tier_value_free(&v);
    }
    /* An empty value, and a binary key. */
    const char bkey[] = {'k', 0, '\xff', '\n', 'z'};
    khala_tier_value_t e = {.data = NULL, .len = 0, .version = 1, .type = KHALA_TYPE_VERIFICATION};
    cr_assert_eq(t->ops->put(t, bkey, sizeof(bkey), &e), 0, "%s", t->err);
    khala_tier_value_t v = {0};
    cr_assert_eq(t->ops->get(t, bkey, sizeof(bkey), &v), 0, "%s", t->err);
    cr_assert_eq(v.len, 0);
    cr_assert_null(v.data);
    /* A 1 MiB value of pseudo-random bytes. */
    size_t big = 1u << 20;
    uint8_t *b = malloc(big);
    uint32_t x = 12345;
    for (size_t i = 0; i < big; i++) {
        x = x * 1103515245u + 12345u;
        b[i] = (uint8_t)(x >> 16);
    }
    cr_assert_eq(put(t, "big", b, big, 7, 0, KHALA_TYPE_SEARCH_INDEX), 0, "%s", t->err);
    cr_assert_eq(t->ops->get(t, "big", 3, &v), 0, "%s", t->err);
    cr_assert_eq(v.len, big);
    cr_assert(memcmp(v.data, b, big) == 0);
    khala__tier_value_free(&v);
    free(b);
    /* A version near 2^61 comes back exact (no double on the way). */
    uint64_t ver = (UINT64_C(1) << 61) + 12345;
    cr_assert_eq(put(t, "bigver", "x", 1, ver, 0, 0), 0, "%s", t->err);
    expect(t, "bigver", "x", ver);
    cr_assert_eq(put(t, "bigver", "y", 1, ver - 1, 0, 0), KHALA_EVERSION);
    /* Versions above SurrealDB's i64 are refused with a message. */
    cr_assert_eq(put(t, "huge", "x", 1, UINT64_MAX, 0, 0), KHALA_EINVAL);
    cr_assert(strstr(t->err, "version"), "%s", t->err);
}

Test(tier_surreal, injection_attempts_in_keys_are_only_data) {
    khala_tier_t *t = open_default();
    static const char *keys[] = {
        "it's",
        "\"double\"",
        "<angle>",
        "`backtick`",
        "a;b",
        "x -- comment",
        "\xe2\x9f\xa8"
        "bracket"
        "\xe2\x9f\xa9", /* ⟨bracket⟩ */
        "$k",
        "$tb",
        "x; REMOVE TABLE cache_table; --",
        "'; DELETE type::table($tb); --",
        "\"; REMOVE TABLE t; SELECT \"",
        "x` ; REMOVE TABLE x; `",
        "} ELSE { DELETE type::table($tb) }",
        "type::record('cache_table', 'x')",
        "\\",
        "\\\"",
    };
    size_t n = sizeof(keys) / sizeof(keys[0]);
    for (size_t i = 0; i < n; i++) {
        char val[32];
        snprintf(val, sizeof(val), "v%zu", i);
        cr_assert_eq(put(t, keys[i], val, strlen(val), 1, 0, 0), 0, "put '%s': %s", keys[i],
                     t->err);
    }
    for (size_t i = 0; i < n; i++) {
        char val[32];
        snprintf(val, sizeof(val), "v%zu", i);
        expect(t, keys[i], val, 1);
    }
    cr_assert_eq(raw_count(g_table), (long)n, "the table holds every key, distinct");
    /* The same keys through the batch path. */
    khala_bytes_t kb[32];
    khala_tier_value_t out[32];
    int rcs[32];
    for (size_t i = 0; i < n; i++)
        kb[i] = (khala_bytes_t){.ptr = (const uint8_t *)keys[i], .len = strlen(keys[i])};
    cr_assert_eq(t->ops->mget(t, n, kb, out, rcs), 0, "%s", t->err);
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(rcs[i], 0, "mget '%s': %d", keys[i], rcs[i]);
        khala__tier_value_free(&out[i]);
    }
    cr_assert_eq(t->ops->del(t, keys[9], strlen(keys[9])), 0, "%s", t->err);
    cr_assert_eq(raw_count(g_table), (long)n - 1);
}

Test(tier_surreal, a_stale_version_never_replaces_a_newer_one) {
    khala_tier_t *t = open_default();
    cr_assert_eq(put(t, "k", "five", 4, 5, 0, 0), 0, "%s", t->err);
    cr_assert_eq(put(t, "k", "four", 4, 4, 0, 0), KHALA_EVERSION, "%s", t->err);
    expect(t, "k", "five", 5);
    cr_assert_eq(put(t, "k", "FIVE", 4, 5, 0, 0), 0, "an equal version is a retry: accepted");
    expect(t, "k", "FIVE", 5);
    cr_assert_eq(put(t, "k", "six", 3, 6, 0, 0), 0);
    expect(t, "k", "six", 6);
    /* A second open of the same table (khalad restarted, another host): the schema's DEFINEs
     * are idempotent and the rule holds across both. */
    khala_tier_surreal_opts_t o = opts(g_url);
    khala_tier_t *u = NULL;
    char err[256] = "";
    cr_assert_eq(khala__tier_surreal_open(&o, &u, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(u->ops->health(u), 0, "%s", u->err);
    expect(u, "k", "six", 6);
    cr_assert_eq(put(u, "k", "five", 4, 5, 0, 0), KHALA_EVERSION);
    u->ops->close(u);
}

Test(tier_surreal, items_expire_and_an_expired_row_is_overwritten_by_any_version) {
    khala_tier_t *t = open_default();
    cr_assert_eq(put(t, "short", "v", 1, 10, 300, 0), 0, "%s", t->err);
    khala_tier_value_t v = {0};
    int rc = t->ops->get(t, "short", 5, &v);
    if (rc == 0) { /* a slow machine may already be past 300 ms */
        cr_assert(v.ttl_ms > 0 && v.ttl_ms <= 300, "ttl %lld", (long long)v.ttl_ms);
        khala__tier_value_free(&v);
    }
    for (int i = 0; i < 200 && t->ops->get(t, "short", 5, &v) == 0; i++) {
        khala__tier_value_free(&v);
        usleep(50 * 1000);
    }
    expect_miss(t, "short");
    cr_assert_eq(put(t, "short", "old", 3, 1, 0, 0), 0, "an expired row is no obstacle: %s",
                 t->err);
    expect(t, "short", "old", 1);
    cr_assert_eq(put(t, "forever", "v", 1, 1, 0, 0), 0);
    cr_assert_eq(t->ops->get(t, "forever", 7, &v), 0);
    cr_assert_eq(v.ttl_ms, 0);
    khala__tier_value_free(&v);
}

Test(tier_surreal, mput_and_mget_answer_per_key) {
    khala_tier_t *t = open_default();
    cr_assert_eq(put(t, "k3", "newer", 5, 50, 0, 0), 0);
    khala_bytes_t keys[5];
    khala_tier_value_t vals[5];
    char names[5][8], data[5][8];
    for (int i = 0; i < 5; i++) {
        snprintf(names[i], sizeof(names[i]), "k%d", i);
        snprintf(data[i], sizeof(data[i]), "d%d", i);
        keys[i] = (khala_bytes_t){.ptr = (uint8_t *)names[i], .len = strlen(names[i])};
        vals[i] = (khala_tier_value_t){.data = data[i], .len = 2, .version = 10, .type = 1};
    }
    cr_assert_eq(t->ops->mput(t, 5, keys, vals), KHALA_EVERSION, "k3 is newer: %s", t->err);
    expect(t, "k3", "newer", 50);
    expect(t, "k4", "d4", 10);
    khala_bytes_t q[4] = {keys[0],
                          {.ptr = (const uint8_t *)"nope", .len = 4},
                          keys[3],
                          {.ptr = (const uint8_t *)"", .len = 0}};
    khala_tier_value_t out[4];
    int rcs[4];
    cr_assert_eq(t->ops->mget(t, 4, q, out, rcs), 0, "%s", t->err);
    cr_assert_eq(rcs[0], 0);
    cr_assert_eq(rcs[1], KHALA_ENOTFOUND);
    cr_assert_eq(rcs[2], 0);
    cr_assert_eq(rcs[3], KHALA_EKEY);
    cr_assert_eq(out[0].len, 2);
    cr_assert(memcmp(out[0].data, "d0", 2) == 0);
    cr_assert_eq(out[2].version, 50);
    khala__tier_value_free(&out[0]);
    khala__tier_value_free(&out[2]);
    /* A bad item refuses the whole batch before anything is written. */
    vals[1].type = (khala_type_t)99;
    vals[0].version = 11;
    cr_assert_eq(t->ops->mput(t, 2, keys, vals), KHALA_EINVAL);
    expect(t, "k0", "d0", 10);
    cr_assert_eq(t->ops->del(t, "k0", 2), 0);
    cr_assert_eq(t->ops->del(t, "k0", 2), KHALA_ENOTFOUND);
    expect_miss(t, "k0");
    khala_tier_stats_t st;
    t->ops->stats(t, &st);
    cr_assert_eq(st.puts, 6);
    cr_assert(st.hits >= 4 && st.misses >= 2);
}

Test(tier_surreal, big_batches_are_split_under_the_server_body_limit) {
    khala_tier_t *t = open_default();
    /* Three values of 2 MiB: 8 MiB of base64 in all, twice the server's 4 MiB body limit. */
    size_t len = 2u << 20;
    uint8_t *buf = malloc(3 * len);
    for (size_t i = 0; i < 3 * len; i++)
        buf[i] = (uint8_t)(i * 7 + i / len);
    khala_bytes_t keys[3];
    khala_tier_value_t vals[3];
    const char *names[3] = {"m0", "m1", "m2"};
    for (int i = 0; i < 3; i++) {
        keys[i] = (khala_bytes_t){.ptr = (const uint8_t *)names[i], .len = 2};
        vals[i] = (khala_tier_value_t){.data = buf + i * len, .len = len, .version = 1};
    }
    cr_assert_eq(t->ops->mput(t, 3, keys, vals), 0, "%s", t->err);
    for (int i = 0; i < 3; i++) {
        khala_tier_value_t v = {0};
        cr_assert_eq(t->ops->get(t, names[i], 2, &v), 0, "%s", t->err);
        cr_assert_eq(v.len, len);
        cr_assert(memcmp(v.data, buf + i * len, len) == 0);
        khala__tier_value_free(&v);
    }
    free(buf);
    /* Above the largest value: refused before the server, with the limit named. */
    khala_tier_value_t huge = {.data = "x", .len = KHALA_TIER_SURREAL_VALUE_MAX + 1, .version = 1};
    cr_assert_eq(t->ops->put(t, "huge", 4, &huge), KHALA_ETOOBIG);
    cr_assert(strstr(t->err, "max"), "%s", t->err);
}

Test(tier_surreal, a_statement_the_server_refuses_fails_its_key_only) {
    khala_tier_t *t = open_default();
    /* An operator's rule on the table: a value of 12 bytes or more (16 of base64) is refused. */
    char sql[200];
    snprintf(sql, sizeof(sql),
             "DEFINE FIELD OVERWRITE data ON %s TYPE string ASSERT string::len($value) < 16;",
             g_table);
    json_decref(raw_on(g_url, sql, NULL));
    khala_bytes_t keys[3] = {{.ptr = (const uint8_t *)"ok1", .len = 3},
                             {.ptr = (const uint8_t *)"too-long", .len = 8},
                             {.ptr = (const uint8_t *)"ok2", .len = 3}};
    khala_tier_value_t vals[3] = {{.data = "short", .len = 5, .version = 1},
                                  {.data = "a value far too long", .len = 20, .version = 1},
                                  {.data = "small", .len = 5, .version = 1}};
    cr_assert_eq(t->ops->mput(t, 3, keys, vals), KHALA_EREFUSED, "%s", t->err);
    cr_assert(strstr(t->err, "L3 (surrealdb)") && strstr(t->err, "too-long"), "%s", t->err);
    expect(t, "ok1", "short", 1);
    expect(t, "ok2", "small", 1);
    expect_miss(t, "too-long");
    cr_assert_eq(t->ops->health(t), 0, "a refused request leaves the level up");
}

static int collect_key(void *arg, const void *key, size_t klen) {
    char *buf = arg;
    strncat(buf, key, klen);
    strcat(buf, ",");
    return 0;
}

Test(tier_surreal, scan_pages_and_invalidate_by_prefix_and_type) {
    khala_tier_t *t = open_default();
    const char *ks[] = {"a:1", "a:2", "a:3", "a:4", "a:5", "b:1", "b:2", "ab"};
    for (int i = 0; i < 8; i++)
        cr_assert_eq(put(t, ks[i], "v", 1, 1, 0, i == 6 ? 3 : 1), 0, "%s", t->err);
    char seen[256] = "";
    uint64_t cursor = 0;
    int pages = 0;
    do {
        cr_assert_eq(t->ops->scan(t, &cursor, "a:*", 2, collect_key, seen), 0, "%s", t->err);
        pages++;
    } while (cursor != 0 && pages < 100);
    cr_assert_str_eq(seen, "a:1,a:2,a:3,a:4,a:5,", "scan saw %s", seen);
    cr_assert(pages >= 4, "pages of 2 over 8 rows: %d", pages);
    uint64_t removed = 0;
    cr_assert_eq(t->ops->invalidate(t, "a:", 2, -1, &removed), 0, "%s", t->err);
    cr_assert_eq(removed, 5);
    expect_miss(t, "a:3");
    expect(t, "ab", "v", 1);
    cr_assert_eq(t->ops->invalidate(t, "b", 1, 3, &removed), 0, "%s", t->err);
    cr_assert_eq(removed, 1);
    expect_miss(t, "b:2");
    expect(t, "b:1", "v", 1);
    /* Bounded steps: one step removes at most count. */
    for (int i = 0; i < 10; i++) {
        char k[16];
        snprintf(k, sizeof(k), "s%d", i);
        cr_assert_eq(put(t, k, "v", 1, 1, 0, 5), 0);
    }
    cursor = 0;
    cr_assert_eq(t->ops->invalidate_step(t, NULL, 0, 5, &cursor, 4, &removed), 0, "%s", t->err);
    cr_assert_eq(removed, 4);
    cr_assert_neq(cursor, 0);
    cr_assert_eq(raw_count(g_table), 2 + 6);
    cr_assert_eq(t->ops->invalidate(t, NULL, 0, -1, &removed), 0);
    cr_assert_eq(removed, 8);
    cr_assert_eq(raw_count(g_table), 0);
}

Test(tier_surreal, hot_ranks_keys_by_their_hits) {
    khala_tier_t *t = open_default();
    cr_assert_eq(put(t, "cold", "v", 1, 1, 0, 0), 0);
    cr_assert_eq(put(t, "warm", "v", 1, 1, 0, 0), 0);
    cr_assert_eq(put(t, "hot", "v", 1, 1, 0, 0), 0);
    t->ops->note_hits(t, "hot", 3, 50);
    t->ops->note_hits(t, "warm", 4, 5);
    char seen[128] = "";
    cr_assert_eq(t->ops->hot(t, 10, collect_key, seen), 0, "%s", t->err);
    cr_assert_str_eq(seen, "hot,warm,", "hot saw %s", seen);
}

/* ------------------------------------------------------------------------------------------ */
/* Cleanup and archive                                                                          */
/* ------------------------------------------------------------------------------------------ */

Test(tier_surreal, cleanup_deletes_expired_rows_in_bounded_batches) {
    khala_tier_surreal_opts_t o = opts(g_url);
    o.cleanup_interval_ms = 1;
    o.cleanup_batch = 3;
    khala_tier_t *t = open_with(&o);
    for (int i = 0; i < 10; i++) {
        char k[16];
        snprintf(k, sizeof(k), "e%d", i);
        cr_assert_eq(put(t, k, "v", 1, 1, 200, 0), 0, "%s", t->err);
    }
    cr_assert_eq(put(t, "keep", "v", 1, 1, 0, 0), 0);
    cr_assert_eq(put(t, "later", "v", 1, 1, 600000, 0), 0);
    usleep(400 * 1000);
    cr_assert_eq(raw_count(g_table), 12, "expired rows stay until a cleanup");
    /* A tick submits the step and returns: it never waits on the server. */
    t->ops->tick(t, khala__sys_now_ms() + 1000);
    cr_assert_eq(khala__http_inflight(khala__tier_surreal_pool(t)), 1, "one step in flight");
    settle(t);
    khala_tier_stats_t st;
    long prev = raw_count(g_table);
    cr_assert(prev >= 9 && prev < 12, "the first step deleted 1 to 3 rows: %ld left", prev);
    int steps = 1; /* the one above */
    for (int i = 0; i < 40 && prev > 2; i++) {
        run_cleanup(t, 1);
        long now = raw_count(g_table);
        cr_assert(prev - now <= 3, "one step deleted %ld rows, batch 3", prev - now);
        if (now < prev)
            steps++;
        prev = now;
    }
    cr_assert_eq(prev, 2);
    cr_assert(steps >= 4, "10 rows in batches of 3: %d steps", steps);
    run_cleanup(t, 5);
    cr_assert_eq(raw_count(g_table), 2, "rows that have not expired stay");
    t->ops->stats(t, &st);
    cr_assert_eq(st.expirations, 10);
    expect(t, "keep", "v", 1);
    expect(t, "later", "v", 1);
}

/* Put 8 rows, 5 of them read; max_entries 5 moves the 3 others. */
static void fill_for_eviction(khala_tier_t *t) {
    for (int i = 0; i < 8; i++) {
        char k[16], v[16];
        snprintf(k, sizeof(k), "r%d", i);
        snprintf(v, sizeof(v), "value%d", i);
        cr_assert_eq(put(t, k, v, strlen(v), 1 + i, 0, i % 3), 0, "%s", t->err);
    }
    for (int i = 3; i < 8; i++) {
        char k[16];
        snprintf(k, sizeof(k), "r%d", i);
        t->ops->note_hits(t, k, strlen(k), 10 + i);
    }
}

Test(tier_surreal, max_entries_moves_the_least_valuable_rows_to_the_archive) {
    khala_tier_surreal_opts_t o = opts(g_url);
    o.cleanup_interval_ms = 1;
    o.cleanup_batch = 2;
    o.max_entries = 5;
    o.archive_retention_ms = 600000;
    khala_tier_t *t = open_with(&o);
    fill_for_eviction(t);
    run_cleanup(t, 12);
    cr_assert_eq(raw_count(g_table), 5);
    char arch[80];
    snprintf(arch, sizeof(arch), "%s_archive", g_table);
    cr_assert_eq(raw_count(arch), 3);
    for (int i = 0; i < 8; i++) {
        char k[16], v[16];
        snprintf(k, sizeof(k), "r%d", i);
        snprintf(v, sizeof(v), "value%d", i);
        khala_tier_value_t a = {0};
        if (i < 3) {
            expect_miss(t, k);
            cr_assert_eq(t->ops->archive_get(t, k, strlen(k), &a), 0, "%s: %s", k, t->err);
            cr_assert_eq(a.len, strlen(v));
            cr_assert(memcmp(a.data, v, a.len) == 0);
            cr_assert_eq(a.version, 1u + i);
            cr_assert_eq(a.type, (khala_type_t)(i % 3));
            cr_assert(a.ttl_ms > 0 && a.ttl_ms <= 600000);
            khala__tier_value_free(&a);
        } else {
            expect(t, k, v, 1 + i);
            cr_assert_eq(t->ops->archive_get(t, k, strlen(k), &a), KHALA_ENOTFOUND);
        }
    }
    khala_tier_stats_t st;
    t->ops->stats(t, &st);
    cr_assert_eq(st.evictions, 3);
}

Test(tier_surreal, archive_retention_deletes_archived_rows) {
    khala_tier_surreal_opts_t o = opts(g_url);
    o.cleanup_interval_ms = 1;
    o.max_entries = 5;
    o.archive_retention_ms = 300;
    khala_tier_t *t = open_with(&o);
    fill_for_eviction(t);
    run_cleanup(t, 6);
    char arch[80];
    snprintf(arch, sizeof(arch), "%s_archive", g_table);
    cr_assert_eq(raw_count(arch), 3);
    usleep(500 * 1000);
    khala_tier_value_t a = {0};
    cr_assert_eq(t->ops->archive_get(t, "r0", 2, &a), KHALA_ENOTFOUND, "past its retention");
    run_cleanup(t, 6);
    cr_assert_eq(raw_count(arch), 0);
}

Test(tier_surreal, without_an_archive_evicted_rows_are_deleted) {
    khala_tier_surreal_opts_t o = opts(g_url);
    o.cleanup_interval_ms = 1;
    o.max_entries = 5;
    o.archive_retention_ms = 0;
    khala_tier_t *t = open_with(&o);
    fill_for_eviction(t);
    run_cleanup(t, 6);
    cr_assert_eq(raw_count(g_table), 5);
    char arch[80];
    snprintf(arch, sizeof(arch), "%s_archive", g_table);
    cr_assert_eq(raw_count(arch), 0);
    khala_tier_value_t a = {0};
    cr_assert_eq(t->ops->archive_get(t, "r0", 2, &a), KHALA_ENOTFOUND);
    expect_miss(t, "r0");
}

/* ------------------------------------------------------------------------------------------ */
/* Semantic look-ups                                                                            */
/* ------------------------------------------------------------------------------------------ */

static int put_vec(khala_tier_t *t, const char *key, const float *v, uint32_t dim) {
    uint8_t buf[64];
    for (uint32_t i = 0; i < dim; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        buf[4 * i] = (uint8_t)u;
        buf[4 * i + 1] = (uint8_t)(u >> 8);
        buf[4 * i + 2] = (uint8_t)(u >> 16);
        buf[4 * i + 3] = (uint8_t)(u >> 24);
    }
    return put(t, key, buf, 4 * dim, 1, 0, KHALA_TYPE_EMBEDDING);
}

static void similar_checks(khala_tier_t *t) {
    const float a[4] = {1, 0, 0, 0}, b[4] = {0.9f, 0.1f, 0, 0}, c[4] = {0, 0, 1, 0},
                d[4] = {0, 1, 0, 0};
    cr_assert_eq(put_vec(t, "va", a, 4), 0, "%s", t->err);
    cr_assert_eq(put_vec(t, "vb", b, 4), 0, "%s", t->err);
    cr_assert_eq(put_vec(t, "vc", c, 4), 0, "%s", t->err);
    cr_assert_eq(put_vec(t, "vd", d, 4), 0, "%s", t->err);
    const float three[3] = {1, 0, 0};
    cr_assert_eq(put_vec(t, "v3", three, 3), 0, "another dimension: %s", t->err);
    cr_assert_eq(put(t, "notvec", "abc", 3, 1, 0, KHALA_TYPE_EMBEDDING), 0,
                 "3 bytes: not a vector, stored and never a match");
    khala_tier_match_t m[8];
    uint32_t n = 0;
    const float q[4] = {1, 0.01f, 0, 0};
    cr_assert_eq(t->ops->similar(t, q, 4, 0.95f, 8, m, &n), 0, "%s", t->err);
    cr_assert_eq(n, 2, "near duplicates: va and vb, not vc or vd");
    cr_assert_eq(m[0].klen, 2);
    cr_assert(memcmp(m[0].key, "va", 2) == 0, "the most similar first");
    cr_assert(m[0].similarity > 0.99f && m[0].similarity <= 1.0001f, "%f", m[0].similarity);
    cr_assert(memcmp(m[1].key, "vb", 2) == 0);
    cr_assert(m[1].similarity >= 0.95f && m[1].similarity < m[0].similarity);
    cr_assert_eq(m[0].val.len, 16);
    cr_assert_eq(m[0].val.type, KHALA_TYPE_EMBEDDING);
    for (uint32_t i = 0; i < n; i++)
        khala__tier_match_free(&m[i]);
    /* The threshold holds: at 0.999 only va. */
    cr_assert_eq(t->ops->similar(t, q, 4, 0.999f, 8, m, &n), 0, "%s", t->err);
    cr_assert_eq(n, 1);
    khala__tier_match_free(&m[0]);
    /* A far query misses. */
    const float far[4] = {0, 0, 0, 1};
    cr_assert_eq(t->ops->similar(t, far, 4, 0.5f, 8, m, &n), 0, "%s", t->err);
    cr_assert_eq(n, 0);
    /* Deleted entries never come back. */
    cr_assert_eq(t->ops->del(t, "va", 2), 0);
    cr_assert_eq(t->ops->similar(t, q, 4, 0.95f, 8, m, &n), 0, "%s", t->err);
    cr_assert_eq(n, 1);
    cr_assert(memcmp(m[0].key, "vb", 2) == 0);
    khala__tier_match_free(&m[0]);
    /* A bad query. */
    const float zero[4] = {0, 0, 0, 0};
    cr_assert_eq(t->ops->similar(t, zero, 4, 0.5f, 8, m, &n), KHALA_EINVAL);
    cr_assert_eq(t->ops->similar(t, q, 0, 0.5f, 8, m, &n), KHALA_EINVAL);
}

Test(tier_surreal, similar_by_exact_scan_finds_near_duplicates_only) {
    similar_checks(open_default());
}

Test(tier_surreal, similar_through_the_hnsw_index_finds_near_duplicates_only) {
    khala_tier_surreal_opts_t o = opts(g_url);
    o.embedding_dim = 4;
    similar_checks(open_with(&o));
}

/* ------------------------------------------------------------------------------------------ */
/* The asynchronous read                                                                        */
/* ------------------------------------------------------------------------------------------ */

/* The descriptors the pool asked to watch: a stand-in for khalad's loop. */
typedef struct loop {
    int fd[16];
    unsigned ev[16];
    int n;
} loop_t;

static void loop_watch(void *arg, int fd, unsigned events) {
    loop_t *l = arg;
    for (int i = 0; i < l->n; i++) {
        if (l->fd[i] == fd) {
            if (events) {
                l->ev[i] = events;
            } else {
                l->fd[i] = l->fd[--l->n];
                l->ev[i] = l->ev[l->n];
            }
            return;
        }
    }
    if (events && l->n < 16) {
        l->fd[l->n] = fd;
        l->ev[l->n++] = events;
    }
}

static void loop_run(khala_http_pool_t *p, loop_t *l) {
    for (int spins = 0; khala__http_inflight(p) > 0 && spins < 20000; spins++) {
        struct pollfd pf[16];
        int n = l->n;
        for (int i = 0; i < n; i++)
            pf[i] = (struct pollfd){.fd = l->fd[i],
                                    .events = (short)((l->ev[i] & KHALA_HTTP_IN ? POLLIN : 0) |
                                                      (l->ev[i] & KHALA_HTTP_OUT ? POLLOUT : 0))};
        int64_t t = khala__http_timeout_ms(p);
        if (poll(pf, (nfds_t)n, t < 0 || t > 100 ? 100 : (int)t) <= 0) {
            khala__http_on_timeout(p);
            continue;
        }
        for (int i = 0; i < n; i++) {
            unsigned ev = (pf[i].revents & (POLLIN | POLLHUP | POLLERR) ? KHALA_HTTP_IN : 0) |
                          (pf[i].revents & POLLOUT ? KHALA_HTTP_OUT : 0);
            if (ev)
                khala__http_on_fd(p, pf[i].fd, ev);
        }
    }
}

typedef struct got {
    int calls, rc;
    khala_tier_value_t v;
} got_t;

static void on_got(void *arg, int rc, khala_tier_value_t *val) {
    got_t *g = arg;
    g->calls++;
    g->rc = rc;
    if (val) {
        g->v = *val; /* take the bytes: what is left is freed after the call */
        val->data = NULL;
        val->len = 0;
    }
}

Test(tier_surreal, an_asynchronous_get_answers_through_the_loop_hooks) {
    khala_tier_t *t = open_default();
    cr_assert_eq(put(t, "ak", "async value", 11, 9, 0, KHALA_TYPE_AGENT_RESPONSE), 0, "%s", t->err);
    khala_http_pool_t *p = khala__tier_surreal_pool(t);
    loop_t l = {0};
    khala__http_pool_set_watch(p, loop_watch, &l);
    got_t hit = {0}, miss = {0};
    cr_assert_eq(khala__tier_surreal_get_start(t, "ak", 2, on_got, &hit), 0, "%s", t->err);
    cr_assert_eq(khala__tier_surreal_get_start(t, "nope", 4, on_got, &miss), 0, "%s", t->err);
    cr_assert_eq(hit.calls + miss.calls, 0, "never inside the call");
    cr_assert_eq(khala__tier_surreal_get_start(t, "", 0, on_got, &miss), KHALA_EKEY);
    loop_run(p, &l);
    cr_assert_eq(hit.calls, 1);
    cr_assert_eq(hit.rc, 0, "%s", t->err);
    cr_assert_eq(hit.v.len, 11);
    cr_assert(memcmp(hit.v.data, "async value", 11) == 0);
    cr_assert_eq(hit.v.version, 9);
    cr_assert_eq(hit.v.type, KHALA_TYPE_AGENT_RESPONSE);
    khala__tier_value_free(&hit.v);
    cr_assert_eq(miss.calls, 1);
    cr_assert_eq(miss.rc, KHALA_ENOTFOUND);
    khala_tier_stats_t st;
    t->ops->stats(t, &st);
    cr_assert_eq(st.hits, 1);
    cr_assert_eq(st.misses, 1);
    /* The seam's shape: one descriptor to watch, poll() when it is readable. */
    int fd = khala__tier_surreal_poll_fd(t);
    cr_assert(fd >= 0);
    got_t viafd = {0};
    cr_assert_eq(khala__tier_surreal_get_start(t, "ak", 2, on_got, &viafd), 0, "%s", t->err);
    for (int i = 0; i < 2000 && viafd.calls == 0; i++) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 10) > 0)
            cr_assert(pf.revents & POLLIN);
        khala__tier_surreal_poll(t); /* readable, or the tick's call for timeouts */
    }
    cr_assert_eq(viafd.calls, 1);
    cr_assert_eq(viafd.rc, 0, "%s", t->err);
    cr_assert_eq(viafd.v.len, 11);
    khala__tier_value_free(&viafd.v);
    /* Closing with a request in flight runs its callback with KHALA_ETIER. */
    got_t late = {0};
    cr_assert_eq(khala__tier_surreal_get_start(t, "ak", 2, on_got, &late), 0);
    t->ops->close(t);
    g_t = NULL;
    cr_assert_eq(late.calls, 1);
    if (late.rc == 0)
        khala__tier_value_free(&late.v);
    else
        cr_assert_eq(late.rc, KHALA_ETIER);
}

/* ------------------------------------------------------------------------------------------ */
/* Failures                                                                                     */
/* ------------------------------------------------------------------------------------------ */

Test(tier_surreal, a_killed_front_is_etier_and_after_a_restart_the_data_is_there) {
    tu_surreal_start(&g_priv);
    khala_tier_surreal_opts_t o = opts(tu_surreal_url(&g_priv));
    o.timeout_ms = 2000;
    khala_tier_t *t = open_with(&o);
    cr_assert_eq(put(t, "durable", "v", 1, 1, 0, 0), 0, "%s", t->err);
    tu_surreal_kill(&g_priv);
    khala_tier_value_t v = {0};
    cr_assert_eq(t->ops->get(t, "durable", 7, &v), KHALA_ETIER);
    cr_assert(strstr(t->err, "L3 (surrealdb)"), "%s", t->err);
    cr_assert(strstr(t->err, "refused") || strstr(t->err, "transport"), "%s", t->err);
    cr_assert_neq(t->ops->health(t), 0);
    cr_assert_eq(put(t, "x", "v", 1, 1, 0, 0), KHALA_ETIER, "down: fails at once");
    tu_surreal_start(&g_priv);
    int rc = -1;
    for (int i = 0; i < 300 && (rc = t->ops->health(t)) != 0; i++)
        usleep(100 * 1000);
    cr_assert_eq(rc, 0, "health after the restart: %s", t->err);
    expect(t, "durable", "v", 1);
    khala_tier_stats_t st;
    t->ops->stats(t, &st);
    cr_assert(st.reconnects >= 1);
    cr_assert(st.errors >= 1);
}

Test(tier_surreal, a_front_that_stops_answering_is_a_timeout_then_comes_back) {
    tu_surreal_start(&g_priv);
    khala_tier_surreal_opts_t o = opts(tu_surreal_url(&g_priv));
    o.timeout_ms = 500;
    khala_tier_t *t = open_with(&o);
    cr_assert_eq(put(t, "k", "v", 1, 1, 0, 0), 0, "%s", t->err);
    kill(g_priv.pid, SIGSTOP); /* the connection stays open; nothing answers */
    khala_tier_value_t v = {0};
    int rc = t->ops->get(t, "k", 1, &v);
    kill(g_priv.pid, SIGCONT);
    cr_assert_eq(rc, KHALA_ETIER);
    cr_assert(strstr(t->err, "L3 (surrealdb)") && strstr(t->err, "timed out"), "%s", t->err);
    for (int i = 0; i < 300 && (rc = t->ops->health(t)) != 0; i++)
        usleep(100 * 1000);
    cr_assert_eq(rc, 0, "health after SIGCONT: %s", t->err);
    expect(t, "k", "v", 1);
}

Test(tier_surreal, bad_credentials_are_a_clear_authentication_error) {
    const char *at = strchr(g_url, '@');
    char url[160];
    snprintf(url, sizeof(url), "http://root:wrong@%s", at ? at + 1 : g_url + 7);
    khala_tier_surreal_opts_t o = opts(url);
    char err[256] = "";
    cr_assert_eq(khala__tier_surreal_open(&o, &g_t, err, sizeof(err)), 0);
    cr_assert(strstr(err, "authentication failed"), "open says: %s", err);
    khala_tier_value_t v = {0};
    cr_assert_neq(g_t->ops->health(g_t), 0);
    usleep(6000 * 1000); /* past the longest backoff */
    cr_assert_eq(g_t->ops->get(g_t, "k", 1, &v), KHALA_ETIER);
    cr_assert(strstr(g_t->err, "L3 (surrealdb)") && strstr(g_t->err, "authentication failed"), "%s",
              g_t->err);
}

Test(tier_surreal, an_unreachable_server_opens_and_reports_etier) {
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u", free_port());
    khala_tier_surreal_opts_t o = opts(url);
    char err[256] = "";
    cr_assert_eq(khala__tier_surreal_open(&o, &g_t, err, sizeof(err)), 0);
    cr_assert(strstr(err, "L3 (surrealdb)") && strstr(err, "refused"), "%s", err);
    cr_assert_eq(g_t->ops->health(g_t), KHALA_ETIER);
    khala_tier_value_t v = {0};
    cr_assert_eq(g_t->ops->get(g_t, "k", 1, &v), KHALA_ETIER);
}

Test(tier_surreal, bad_options_are_config_errors_naming_the_problem) {
    char err[256];
    khala_tier_surreal_opts_t o = opts("http://127.0.0.1:1");
    khala_tier_t *t = NULL;
    o.table = "cache; REMOVE TABLE x";
    cr_assert_eq(khala__tier_surreal_open(&o, &t, err, sizeof(err)), KHALA_ECONFIG);
    cr_assert(strstr(err, "surrealdb_table"), "%s", err);
    o.table = "9abc";
    cr_assert_eq(khala__tier_surreal_open(&o, &t, err, sizeof(err)), KHALA_ECONFIG);
    o = opts("redis://127.0.0.1:1");
    cr_assert_eq(khala__tier_surreal_open(&o, &t, err, sizeof(err)), KHALA_ECONFIG);
    cr_assert(strstr(err, "http://"), "%s", err);
    o = opts("http://127.0.0.1:1");
    o.ns = "a\r\nX-Evil: 1";
    cr_assert_eq(khala__tier_surreal_open(&o, &t, err, sizeof(err)), KHALA_ECONFIG);
    cr_assert_null(t);
    /* Bad input at the operations. */
    khala_tier_t *u = open_default();
    char big[KHALA_KEY_MAX + 1];
    memset(big, 'k', sizeof(big));
    khala_tier_value_t v = {.data = "x", .len = 1, .version = 1};
    cr_assert_eq(u->ops->put(u, big, sizeof(big), &v), KHALA_EKEY);
    cr_assert_eq(u->ops->get(u, big, 0, &v), KHALA_EKEY);
    v.ttl_ms = -5;
    cr_assert_eq(u->ops->put(u, "k", 1, &v), KHALA_EINVAL);
    cr_assert(strstr(u->err, "TTL"), "%s", u->err);
}

/* ------------------------------------------------------------------------------------------ */
/* Servers that are not (or not quite) SurrealDB                                               */
/* ------------------------------------------------------------------------------------------ */

/* A forked HTTP server on a loopback port answering every request with a canned reply by path:
 * GET /health 200, GET /version `version`, POST /rpc status `rpc_status` with body `rpc_body`.
 * One request per connection (Connection: close). */
typedef struct fake {
    pid_t pid;
    unsigned port;
} fake_t;

static fake_t g_fake;

static void fake_reply(int c, int status, const char *body) {
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     status, strlen(body));
    if (write(c, head, (size_t)n) < 0 || write(c, body, strlen(body)) < 0)
        return;
}

static void fake_serve(int ls, const char *version, int rpc_status, const char *rpc_body) {
    for (;;) {
        int c = accept(ls, NULL, NULL);
        if (c < 0)
            continue;
        char req[65536];
        size_t len = 0;
        ssize_t r;
        while (len < sizeof(req) - 1 && (r = read(c, req + len, sizeof(req) - 1 - len)) > 0) {
            len += (size_t)r;
            req[len] = 0;
            char *eoh = strstr(req, "\r\n\r\n");
            if (!eoh)
                continue;
            const char *cl = strcasestr(req, "Content-Length:");
            size_t want = cl ? strtoul(cl + 15, NULL, 10) : 0;
            if (len >= (size_t)(eoh + 4 - req) + want)
                break;
        }
        if (strncmp(req, "GET /version", 12) == 0)
            fake_reply(c, 200, version);
        else if (strncmp(req, "POST /rpc", 9) == 0)
            fake_reply(c, rpc_status, rpc_body);
        else
            fake_reply(c, 200, "");
        close(c);
    }
}

static const char *fake_start_on(unsigned port, const char *version, int rpc_status,
                                 const char *rpc_body) {
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((uint16_t)port)};
    socklen_t alen = sizeof(a);
    if (ls >= 0)
        setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(ls, 16) != 0 ||
        getsockname(ls, (struct sockaddr *)&a, &alen) != 0)
        FATAL("fake server: %s", strerror(errno));
    g_fake.port = ntohs(a.sin_port);
    pid_t pid = fork();
    if (pid < 0)
        FATAL("fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlives the test */
        fake_serve(ls, version, rpc_status, rpc_body);
        _exit(0);
    }
    close(ls);
    g_fake.pid = pid;
    static char url[64];
    snprintf(url, sizeof(url), "http://root:root@127.0.0.1:%u", g_fake.port);
    return url;
}

static const char *fake_start(const char *version, int rpc_status, const char *rpc_body) {
    return fake_start_on(0, version, rpc_status, rpc_body);
}

static void fake_stop(void) {
    if (g_fake.pid > 0) {
        kill(g_fake.pid, SIGKILL);
        waitpid(g_fake.pid, NULL, 0);
    }
    g_fake = (fake_t){0};
}

/* Open on a fake server: the open succeeds (an unreachable level is not an error of the open)
 * and err says why the level is down. */
static void open_fake(const char *url, char *err, size_t errlen) {
    if (g_t) { /* a test that opens twice: the first tier is closed here */
        g_t->ops->close(g_t);
        g_t = NULL;
    }
    khala_tier_surreal_opts_t o = opts(url);
    o.timeout_ms = 2000;
    err[0] = 0;
    cr_assert_eq(khala__tier_surreal_open(&o, &g_t, err, errlen), 0, "%s", err);
}

Test(tier_surreal, a_server_older_than_surrealdb_2_is_refused_naming_its_version) {
    char err[256];
    open_fake(fake_start("surrealdb-1.5.4", 200, "{}"), err, sizeof(err));
    cr_assert(strstr(err, "surrealdb-1.5.4") && strstr(err, "2.0 or newer"), "%s", err);
    cr_assert_eq(g_t->ops->health(g_t), KHALA_ETIER);
    khala_tier_value_t v = {0};
    cr_assert_eq(g_t->ops->get(g_t, "k", 1, &v), KHALA_ETIER);
    cr_assert_null(v.data);
    fake_stop();
}

Test(tier_surreal, a_server_that_is_not_surrealdb_is_refused_quoting_its_version_reply) {
    char err[256];
    open_fake(fake_start("nginx/1.25", 200, "{}"), err, sizeof(err));
    cr_assert(strstr(err, "nginx/1.25") && strstr(err, "not surrealdb-X.Y.Z"), "%s", err);
    cr_assert_eq(g_t->ops->health(g_t), KHALA_ETIER);
    fake_stop();
}

Test(tier_surreal, a_query_the_server_refuses_at_open_names_the_tables_and_the_message) {
    char err[256];
    open_fake(fake_start("surrealdb-3.0.2", 200,
                         "{\"id\":1,\"error\":{\"code\":-32000,\"message\":\"no space left\"}}"),
              err, sizeof(err));
    cr_assert(strstr(err, "defining the tables") && strstr(err, g_table) &&
                  strstr(err, "refused the query: no space left"),
              "%s", err);
    cr_assert_eq(g_t->ops->health(g_t), KHALA_ETIER);
    fake_stop();
}

Test(tier_surreal, an_rpc_error_about_permissions_is_an_authentication_error) {
    char err[256];
    open_fake(fake_start("surrealdb-3.0.2", 200,
                         "{\"id\":1,\"error\":{\"code\":-32000,\"message\":\"IAM error: Not "
                         "enough permissions\"}}"),
              err, sizeof(err));
    cr_assert(strstr(err, "authentication failed") && strstr(err, "permissions"), "%s", err);
    fake_stop();
}

Test(tier_surreal, an_http_error_status_is_etier_quoting_the_body) {
    char err[256];
    open_fake(fake_start("surrealdb-3.0.2", 503, "overloaded, try later"), err, sizeof(err));
    cr_assert(strstr(err, "HTTP 503") && strstr(err, "overloaded, try later"), "%s", err);
    cr_assert_eq(g_t->ops->health(g_t), KHALA_ETIER);
    fake_stop();
}

Test(tier_surreal, a_reply_that_is_not_a_list_of_results_is_etier) {
    char err[256];
    open_fake(fake_start("surrealdb-3.0.2", 200, "{\"id\":1,\"result\":{\"x\":1}}"), err,
              sizeof(err));
    cr_assert(strstr(err, "not a list of statement results"), "%s", err);
    fake_stop();
    open_fake(fake_start("surrealdb-3.0.2", 200, "{\"id\":1,\"result\":[{\"x\":1}]}"), err,
              sizeof(err));
    cr_assert(strstr(err, "lacks the result of statement 1"), "%s", err);
    cr_assert_eq(g_t->ops->health(g_t), KHALA_ETIER);
    fake_stop();
}

Test(tier_surreal, a_request_above_the_server_body_limit_is_erefused_and_the_level_stays_up) {
    /* The schema is defined on the real front; then a fake that answers 413 to every query
     * stands where the front was (same port): the level is up, and a put is refused alone. */
    tu_surreal_start(&g_priv);
    khala_tier_surreal_opts_t o = opts(tu_surreal_url(&g_priv));
    o.timeout_ms = 2000;
    khala_tier_t *t = open_with(&o);
    cr_assert_eq(put(t, "k", "v", 1, 1, 0, 0), 0, "%s", t->err);
    tu_surreal_kill(&g_priv);
    fake_start_on(g_priv.port, "surrealdb-3.0.2", 413, "Payload Too Large");
    cr_assert_eq(put(t, "k", "w", 1, 2, 0, 0), KHALA_EREFUSED, "%s", t->err);
    cr_assert(strstr(t->err, "body limit") && strstr(t->err, "SURREAL_HTTP_MAX_RPC_BODY_SIZE"),
              "%s", t->err);
    cr_assert_eq(t->healthy, 1, "the server is up; it refused one request");
    fake_stop();
}

/* ------------------------------------------------------------------------------------------ */
/* An unreachable server, bad input                                                             */
/* ------------------------------------------------------------------------------------------ */

static int count_key(void *arg, const void *key, size_t klen) {
    (void)key;
    (void)klen;
    ++*(int *)arg;
    return 0;
}

static void on_got_any(void *arg, int rc, khala_tier_value_t *v) {
    (void)v;
    *(int *)arg = rc;
}

Test(tier_surreal, every_operation_on_an_unreachable_server_is_etier_and_writes_nothing) {
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u", free_port());
    khala_tier_surreal_opts_t o = opts(url);
    o.timeout_ms = 500;
    char err[256] = "";
    cr_assert_eq(khala__tier_surreal_open(&o, &g_t, err, sizeof(err)), 0, "%s", err);
    khala_tier_t *t = g_t;
    cr_assert_eq(t->ops->del(t, "k", 1), KHALA_ETIER);
    cr_assert(strstr(t->err, "L3 (surrealdb)"), "%s", t->err);
    uint64_t cur = 0;
    int seen = 0;
    cr_assert_eq(t->ops->scan(t, &cur, "*", 0, count_key, &seen), KHALA_ETIER);
    cr_assert_eq(t->ops->hot(t, 10, count_key, &seen), KHALA_ETIER);
    cr_assert_eq(seen, 0, "no key reported by a level that is down");
    uint64_t removed = 77;
    cur = 0;
    cr_assert_eq(t->ops->invalidate_step(t, "p", 1, -1, &cur, 0, &removed), KHALA_ETIER);
    cr_assert_eq(removed, 0);
    removed = 77;
    cr_assert_eq(t->ops->invalidate(t, "p", 1, -1, &removed), KHALA_ETIER);
    float q[2] = {1, 0};
    khala_tier_match_t m[2];
    uint32_t n = 2;
    cr_assert_eq(t->ops->similar(t, q, 2, 0.5f, 2, m, &n), KHALA_ETIER);
    khala_bytes_t keys[2] = {{.ptr = (const uint8_t *)"a", .len = 1},
                             {.ptr = (const uint8_t *)"", .len = 0}};
    khala_tier_value_t out[2];
    int rcs[2];
    cr_assert_eq(t->ops->mget(t, 2, keys, out, rcs), KHALA_ETIER);
    cr_assert_eq(rcs[0], KHALA_ETIER, "a good key is etier");
    cr_assert_eq(rcs[1], KHALA_EKEY, "a bad key keeps its own error");
    int got = 1;
    cr_assert_eq(khala__tier_surreal_get_start(t, "k", 1, on_got_any, &got), KHALA_ETIER);
    cr_assert_eq(got, 1, "a failed start never runs the callback");
    khala_tier_stats_t st;
    t->ops->stats(t, &st);
    cr_assert_eq(st.puts + st.dels, 0);
}

Test(tier_surreal, bad_input_is_refused_before_the_server_and_nothing_is_written) {
    khala_tier_t *t = open_default();
    khala_tier_value_t v = {.data = NULL, .len = 3, .version = 1};
    cr_assert_eq(t->ops->put(t, "nodata", 6, &v), KHALA_EINVAL);
    cr_assert(strstr(t->err, "nodata") && strstr(t->err, "no value bytes"), "%s", t->err);
    expect_miss(t, "nodata");
    char big[KHALA_KEY_MAX + 1];
    memset(big, 'p', sizeof(big));
    cr_assert_eq(t->ops->del(t, big, sizeof(big)), KHALA_EKEY);
    cr_assert_eq(put(t, "keep", "v", 1, 1, 0, 0), 0, "%s", t->err);
    uint64_t cur = 0, removed = 5;
    cr_assert_eq(t->ops->invalidate_step(t, big, sizeof(big), -1, &cur, 10, &removed), KHALA_EKEY);
    cr_assert(strstr(t->err, "prefix") && strstr(t->err, "max"), "%s", t->err);
    cr_assert_eq(removed, 0);
    expect(t, "keep", "v", 1);
    /* k = 0 asks for nothing: no matches, no error. */
    float q[2] = {1, 0};
    khala_tier_match_t m[1];
    uint32_t n = 1;
    cr_assert_eq(t->ops->similar(t, q, 2, 0.5f, 0, m, &n), 0, "%s", t->err);
    cr_assert_eq(n, 0);
    /* Hits noted for a bad key are dropped, not sent. */
    t->ops->note_hits(t, "", 0, 3);
    t->ops->note_hits(t, "keep", 4, 0);
    t->ops->note_hits(t, big, sizeof(big), 3);
}

Test(tier_surreal, bad_urls_and_names_are_config_errors_naming_the_problem) {
    char err[256];
    khala_tier_t *t = NULL;
    khala_tier_surreal_opts_t o = opts("");
    cr_assert_eq(khala__tier_surreal_open(&o, &t, err, sizeof(err)), KHALA_ECONFIG);
    cr_assert(strstr(err, "no surrealdb_url"), "%s", err);
    o = opts("http://exa mple:80/");
    cr_assert_eq(khala__tier_surreal_open(&o, &t, err, sizeof(err)), KHALA_ECONFIG);
    cr_assert(strstr(err, "is not a URL"), "%s", err);
    o = opts("http://127.0.0.1:1/?ns=x");
    cr_assert_eq(khala__tier_surreal_open(&o, &t, err, sizeof(err)), KHALA_ECONFIG);
    cr_assert(strstr(err, "no query"), "%s", err);
    char longurl[1200];
    memset(longurl, 'a', sizeof(longurl) - 1);
    longurl[sizeof(longurl) - 1] = 0;
    memcpy(longurl, "http://127.0.0.1:1/", 19);
    o = opts(longurl);
    cr_assert_eq(khala__tier_surreal_open(&o, &t, err, sizeof(err)), KHALA_ECONFIG);
    cr_assert(strstr(err, "too long"), "%s", err);
    o = opts("http://127.0.0.1:1");
    o.ns = "";
    cr_assert_eq(khala__tier_surreal_open(&o, &t, err, sizeof(err)), KHALA_ECONFIG);
    cr_assert(strstr(err, "surrealdb_namespace"), "%s", err);
    cr_assert_null(t);
}

Test(tier_surreal, a_stored_row_that_is_not_a_khala_row_reads_as_a_miss_and_counts_an_error) {
    khala_tier_t *t = open_default();
    cr_assert_eq(put(t, "good", "v", 1, 1, 0, 0), 0, "%s", t->err);
    /* Rows written behind the driver's back that the schema lets through (its field types
     * hold) but no driver wrote: data that is not base64, a type out of range.
     * hex("bad1") = 62616431. */
    const char *bad[][2] = {
        {"62616431", "{key: '62616431', type: 1, version: 1, data: '!!!', created: 0, hits: 0}"},
        {"62616432", "{key: '62616432', type: 999, version: 1, data: '', created: 0, hits: 0}"}};
    for (size_t i = 0; i < 2; i++) {
        char sql[256];
        snprintf(sql, sizeof(sql), "UPSERT type::record($tb, $k) CONTENT %s;", bad[i][1]);
        json_t *res = raw_on(g_url, sql, json_pack("{s:s, s:s}", "tb", g_table, "k", bad[i][0]));
        const char *st = json_string_value(json_object_get(json_array_get(res, 0), "status"));
        cr_assert(st && strcmp(st, "OK") == 0, "raw upsert %zu refused", i);
        json_decref(res);
    }
    khala_tier_stats_t before, after;
    t->ops->stats(t, &before);
    for (int i = 1; i <= 2; i++) {
        char key[8];
        snprintf(key, sizeof(key), "bad%d", i);
        expect_miss(t, key);
        cr_assert(strstr(t->err, key) && strstr(t->err, "not a khala row"), "%s: %s", key, t->err);
    }
    t->ops->stats(t, &after);
    cr_assert_eq(after.errors - before.errors, 2, "one error per corrupt row");
    cr_assert_eq(t->ops->health(t), 0, "a corrupt row does not take the level down");
    expect(t, "good", "v", 1);
}

static int stop_at_two(void *arg, const void *key, size_t klen) {
    (void)key;
    (void)klen;
    return ++*(int *)arg == 2;
}

/* tier.h: a non-zero from the visitor stops the visit; it is not the level's error (khalad's
 * warm scan stops that way when its batch is full, and a scan error marks the level failed). */
Test(tier_surreal, a_scan_visitor_that_returns_non_zero_stops_the_visit_without_an_error) {
    khala_tier_t *t = open_default();
    for (int i = 0; i < 5; i++) {
        char k[8];
        snprintf(k, sizeof(k), "s%d", i);
        cr_assert_eq(put(t, k, "v", 1, 1, 0, 0), 0, "%s", t->err);
    }
    uint64_t cur = 0;
    int seen = 0;
    cr_assert_eq(t->ops->scan(t, &cur, "*", 0, stop_at_two, &seen), 0, "%s", t->err);
    cr_assert_eq(seen, 2, "no key after the callback failed");
    seen = 0;
    cur = 0;
    cr_assert_eq(t->ops->scan(t, &cur, "*", 0, count_key, &seen), 0, "%s", t->err);
    cr_assert_eq(seen, 5, "count 0 is the default page: all 5 keys");
    cr_assert_eq(cur, 0);
}

Test(tier_surreal, health_of_a_level_that_was_up_finds_a_dead_server_and_takes_the_level_down) {
    tu_surreal_start(&g_priv);
    khala_tier_surreal_opts_t o = opts(tu_surreal_url(&g_priv));
    o.timeout_ms = 1000;
    khala_tier_t *t = open_with(&o);
    cr_assert_eq(put(t, "k", "v", 1, 1, 0, 0), 0, "%s", t->err);
    tu_surreal_kill(&g_priv);
    cr_assert_eq(t->ops->health(t), KHALA_ETIER);
    cr_assert(strstr(t->err, "L3 (surrealdb)") && strstr(t->err, "GET /health"), "%s", t->err);
    cr_assert_eq(put(t, "k", "w", 1, 2, 0, 0), KHALA_ETIER, "down: fails at once");
}

Test(tier_surreal, health_of_a_level_that_was_up_fails_when_the_server_refuses_queries) {
    tu_surreal_start(&g_priv);
    khala_tier_surreal_opts_t o = opts(tu_surreal_url(&g_priv));
    o.timeout_ms = 1000;
    khala_tier_t *t = open_with(&o);
    tu_surreal_kill(&g_priv);
    /* GET /health answers 200, every query an error: the engine behind the front is broken. */
    fake_start_on(g_priv.port, "surrealdb-3.0.2", 200,
                  "{\"id\":1,\"error\":{\"code\":-32000,\"message\":\"storage is read-only\"}}");
    /* Each operation fails alone with the server's words, and reports nothing. */
    uint64_t cur = 0, removed = 9;
    int seen = 0;
    cr_assert_eq(t->ops->scan(t, &cur, NULL, 0, count_key, &seen), KHALA_ETIER);
    cr_assert(strstr(t->err, "storage is read-only"), "%s", t->err);
    cr_assert_eq(t->ops->hot(t, 5, count_key, &seen), KHALA_ETIER);
    cr_assert_eq(seen, 0);
    cr_assert_eq(t->ops->invalidate_step(t, "p", 1, 2, &cur, 0, &removed), KHALA_ETIER);
    cr_assert_eq(removed, 0);
    float q[2] = {0, 1};
    khala_tier_match_t m[1];
    uint32_t n = 1;
    cr_assert_eq(t->ops->similar(t, q, 2, 0.1f, 1, m, &n), KHALA_ETIER);
    cr_assert_eq(t->ops->del(t, "k", 1), KHALA_ETIER);
    cr_assert_eq(t->ops->health(t), KHALA_ETIER);
    cr_assert(strstr(t->err, "refused the query: storage is read-only"), "%s", t->err);
    khala_tier_value_t v = {0};
    cr_assert_eq(t->ops->get(t, "k", 1, &v), KHALA_ETIER);
    cr_assert_null(v.data);
    fake_stop();
}

Test(tier_surreal, a_background_cleanup_the_server_refuses_is_counted_as_an_error) {
    tu_surreal_start(&g_priv);
    khala_tier_surreal_opts_t o = opts(tu_surreal_url(&g_priv));
    o.timeout_ms = 1000;
    o.cleanup_interval_ms = 1;
    khala_tier_t *t = open_with(&o);
    tu_surreal_kill(&g_priv);
    fake_start_on(g_priv.port, "surrealdb-3.0.2", 200,
                  "{\"id\":1,\"result\":[{\"status\":\"ERR\",\"result\":\"disk full\"}]}");
    khala_tier_stats_t before, after;
    t->ops->stats(t, &before);
    run_cleanup(t, 2);
    t->ops->stats(t, &after);
    cr_assert_eq(after.errors - before.errors, 2, "one per refused step: %llu -> %llu",
                 (unsigned long long)before.errors, (unsigned long long)after.errors);
    cr_assert_eq(t->healthy, 1, "a refused background step does not take the level down");
    fake_stop();
    /* A server that answers nothing usable (HTTP 500) is counted the same way. */
    fake_start_on(g_priv.port, "surrealdb-3.0.2", 500, "internal error");
    run_cleanup(t, 1);
    t->ops->stats(t, &after);
    cr_assert_eq(after.errors - before.errors, 3);
    fake_stop();
}

Test(tier_surreal, closing_with_requests_in_flight_to_a_stalled_server_answers_them_etier) {
    tu_surreal_start(&g_priv);
    khala_tier_surreal_opts_t o = opts(tu_surreal_url(&g_priv));
    o.timeout_ms = 5000;
    o.cleanup_interval_ms = 1;
    khala_tier_t *t = open_with(&o);
    kill(g_priv.pid, SIGSTOP); /* nothing will answer before the close */
    got_t a = {0}, b = {0};
    cr_assert_eq(khala__tier_surreal_get_start(t, "k1", 2, on_got, &a), 0, "%s", t->err);
    cr_assert_eq(khala__tier_surreal_get_start(t, "k2", 2, on_got, &b), 0, "%s", t->err);
    t->ops->tick(t, khala__sys_now_ms() + 5000); /* a cleanup step in flight too */
    t->ops->close(t);
    g_t = NULL;
    kill(g_priv.pid, SIGCONT);
    cr_assert_eq(a.calls, 1, "every callback runs once, at the close");
    cr_assert_eq(a.rc, KHALA_ETIER);
    cr_assert_eq(b.calls, 1);
    cr_assert_eq(b.rc, KHALA_ETIER);
}

Test(tier_surreal, a_reply_without_the_statement_results_fails_a_batch_etier_and_fills_nothing) {
    tu_surreal_start(&g_priv);
    khala_tier_surreal_opts_t o = opts(tu_surreal_url(&g_priv));
    o.timeout_ms = 1000;
    khala_tier_t *t = open_with(&o);
    tu_surreal_kill(&g_priv);
    /* A proxy in front of the server that mangles replies: a list, but no statement's status. */
    fake_start_on(g_priv.port, "surrealdb-3.0.2", 200, "{\"id\":1,\"result\":[{\"x\":1}]}");
    khala_bytes_t keys[2] = {{.ptr = (const uint8_t *)"a", .len = 1},
                             {.ptr = (const uint8_t *)"b", .len = 1}};
    khala_tier_value_t vals[2] = {{.data = "1", .len = 1, .version = 1},
                                  {.data = "2", .len = 1, .version = 1}};
    cr_assert_eq(t->ops->mput(t, 2, keys, vals), KHALA_ETIER);
    cr_assert(strstr(t->err, "lacks the result of statement"), "%s", t->err);
    khala_tier_value_t out[2];
    int rcs[2] = {0, 0};
    cr_assert_eq(t->ops->mget(t, 2, keys, out, rcs), KHALA_ETIER, "%s", t->err);
    cr_assert_eq(rcs[0], KHALA_ETIER);
    cr_assert_eq(rcs[1], KHALA_ETIER);
    cr_assert_null(out[0].data);
    cr_assert_null(out[1].data);
    fake_stop();
}
