/*
 * L2 through a real khalad: the local-disk store (the embedded default) and a real
 * redis-server (scripts/test-servers.sh). What a worker sees: every data type round-trips
 * through L2, a miss in L1 is answered by L2 and promoted, TTLs hold, nothing acknowledged is
 * lost when khalad is SIGKILLed, warming and preloading fill L1 from L2, two khalad instances
 * (two cache names, one Redis namespace) never read each other's writes stale once the
 * invalidation is delivered, and a Redis killed and restarted mid-run loses no acknowledged
 * write (queued, then drained) while a full queue is a clear error.
 *
 * Levels are checked over the real protocol (lib/channel.h: a get reports which level
 * answered; stats report the queue). No test asserts on timing: every wait is a bounded loop
 * on a condition.
 */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "channel.h"
#include "khala/cache.h"
#include "khala/error.h"
#include "khalad_util.h"
#include "proto.h"
#include "redis_util.h"
#include "segment.h"
#include "segment_create.h"

static pid_t g_pid2, g_relay;
static char g_name2[80];

static void setup(void) {
    khalad_env_init("l2");
    memset(khalad_extra_sets, 0, sizeof(khalad_extra_sets));
    g_pid2 = g_relay = 0;
    g_name2[0] = '\0';
}

/* A private redis-server on a free loopback port, for tests that kill it. */
static tu_redis_t g_redis;

/* What a test starts beside the suite's khalad and redis-server (g_pid2: a second khalad,
 * g_name2 its cache; g_relay: a relay's process group) is stopped here even when an assertion
 * ends the test early. */
static void teardown(void) {
    if (g_pid2 > 0) {
        kill(g_pid2, SIGKILL);
        waitpid(g_pid2, NULL, 0);
        g_pid2 = 0;
    }
    if (g_name2[0])
        khala__seg_unlink(g_name2);
    if (g_relay > 0) {
        kill(-g_relay, SIGKILL);
        waitpid(g_relay, NULL, 0);
        g_relay = 0;
    }
    tu_redis_stop(&g_redis);
    khalad_env_fini();
}

TestSuite(l2, .init = setup, .fini = teardown, .timeout = 120);

/* Helpers ------------------------------------------------------------------------------------ */

static khala_chan_t *chan_to(const char *sock, const char *name) {
    khala_chan_t *ch = NULL;
    char err[256];
    int rc = khala__chan_open(sock, name, 5000, &ch, err, sizeof(err));
    cr_assert_eq(rc, 0, "connect to %s: %s", sock, err);
    return ch;
}

static int call(khala_chan_t *ch, khala_msg_t *m, khala_msg_t *r) {
    return khalad_call(ch, m, r, 10000);
}

/* put over the protocol; returns the reply's rc, its message in msg. */
static int raw_put(khala_chan_t *ch, const char *key, const void *val, size_t vlen,
                   khala_type_t type, uint64_t ttl_ms, char *msg, size_t msglen) {
    khala_msg_t m = khalad_req(KHALA_OP_PUT, key), r;
    m.value.ptr = val;
    m.value.len = vlen;
    m.has |= KHALA_F_V | KHALA_F_TYPE;
    m.type = type;
    if (ttl_ms) {
        m.ttl_ms = ttl_ms;
        m.has |= KHALA_F_TTL;
    }
    int rc = call(ch, &m, &r);
    if (msg)
        snprintf(msg, msglen, "%.*s", (int)r.err.len, r.err.ptr ? (const char *)r.err.ptr : "");
    khala__proto_msg_free(&r);
    return rc;
}

static int put_str(khala_chan_t *ch, const char *key, const char *val) {
    char msg[256];
    int rc = raw_put(ch, key, val, strlen(val), KHALA_TYPE_MEMORY_ENTITY, 0, msg, sizeof(msg));
    cr_assert_eq(rc, 0, "put %s: %s (%s)", key, khala_strerror(rc), msg);
    return rc;
}

typedef struct got {
    char val[4096];
    size_t len;
    khala_level_t lvl;
    khala_type_t type;
    uint64_t ver;
} got_t;

static int raw_get(khala_chan_t *ch, const char *key, got_t *g) {
    khala_msg_t m = khalad_req(KHALA_OP_GET, key), r;
    int rc = call(ch, &m, &r);
    memset(g, 0, sizeof(*g));
    if (rc == 0) {
        cr_assert_lt(r.value.len, sizeof(g->val));
        memcpy(g->val, r.value.ptr, r.value.len);
        g->len = r.value.len;
        g->lvl = r.lvl;
        g->type = r.type;
        g->ver = r.ver;
    }
    khala__proto_msg_free(&r);
    return rc;
}

/* A counter of the stats reply: section ("l1", "l2", "khalad") and name; UINT64_MAX if absent. */
static uint64_t stat_u(khala_chan_t *ch, const char *section, const char *name) {
    return khalad_stat(ch, section, name, 10000);
}

/* Is key in L1 now? (inspect answers from L1 only.) */
/* Does L1 hold key? inspect looks at every level; its "levels" names those holding the key. */
static int in_l1(khala_chan_t *ch, const char *key) {
    khala_msg_t m = khalad_req(KHALA_OP_INSPECT, key), r;
    int rc = call(ch, &m, &r);
    const khala_kv_t *lv = rc == 0 ? khala__proto_kv_find(r.data, r.ndata, "levels") : NULL;
    int held =
        lv && lv->kind == KHALA_KV_STR && lv->as.s.len >= 2 && memcmp(lv->as.s.ptr, "l1", 2) == 0;
    khala__proto_msg_free(&r);
    return held;
}

/* Stop khalad (SIGKILL or SIGTERM), drop its L1 segment, start it again: L1 is empty, L2 is
 * whatever survived. */
static khala_chan_t *restart_empty_l1(khala_chan_t *ch, int sig) {
    khala__chan_close(ch);
    khalad_kill(sig);
    khala__seg_unlink(khalad_name);
    khalad_start();
    return chan_to(khalad_sock, khalad_name);
}

/* GET of the raw Redis key khala:<ns>:<key>; 1 if it exists. */
static int redis_has(const char *host, int port, const char *ns, const char *key) {
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout(host, port, tv);
    cr_assert(c && !c->err, "connect to redis %s:%d", host, port);
    redisReply *rep = redisCommand(c, "EXISTS khala:%s:%s", ns, key);
    cr_assert(rep && rep->type == REDIS_REPLY_INTEGER);
    int has = rep->integer == 1;
    freeReplyObject(rep);
    redisFree(c);
    return has;
}

/* Wait (bounded) until a stats counter reaches at least want. */
static uint64_t wait_stat(khala_chan_t *ch, const char *section, const char *name, uint64_t want) {
    uint64_t v = 0;
    for (int i = 0; i < 1000; i++) {
        v = stat_u(ch, section, name);
        if (v != UINT64_MAX && v >= want)
            return v;
        sleep_ms(10);
    }
    cr_assert_fail("stats %s.%s stayed at %llu, want >= %llu", section, name, (unsigned long long)v,
                   (unsigned long long)want);
    return v;
}

static char g_ns[64];

/* One more --set for the next khalad_start (after those already there). */
static void add_set(const char *set) {
    int n = 0;
    while (khalad_extra_sets[n])
        n++;
    cr_assert_lt(n, KHALAD_EXTRA_SETS_MAX - 1, "too many --set options");
    khalad_extra_sets[n] = set;
    khalad_extra_sets[n + 1] = NULL;
}

/* Configure the next khalad for L2 on Redis at url, namespace g_ns. */
static void use_redis(const char *url, int coherence) {
    snprintf(g_ns, sizeof(g_ns), "it%d", (int)getpid());
    khalad_use_redis(url, g_ns); /* khalad_extra_sets[0..2] */
    int n = 3;
    khalad_extra_sets[n++] = "l2.persistent=true"; /* survives the restarts of a test */
    if (coherence)
        khalad_extra_sets[n++] = "policies.coherence=pubsub";
    khalad_extra_sets[n] = NULL;
}

/* Start the suite's private redis-server (g_redis, stopped by teardown) and configure the
 * next khalad for L2 on it. */
static void use_private_redis(void) {
    static char url[64];
    tu_redis_start(&g_redis, NULL);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%u", g_redis.port);
    use_redis(url, 0);
}

/* Every data type, through L2 ----------------------------------------------------------------- */

static void round_trip_types(void) {
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    char key[32], val[64];
    for (int t = 0; t < KHALA_TYPE_COUNT; t++) {
        snprintf(key, sizeof(key), "type:%d", t);
        snprintf(val, sizeof(val), "value of type %s", khala__proto_type_name((khala_type_t)t));
        char msg[256];
        cr_assert_eq(raw_put(ch, key, val, strlen(val), (khala_type_t)t, 0, msg, sizeof(msg)), 0,
                     "%s", msg);
    }
    ch = restart_empty_l1(ch, SIGTERM);
    for (int t = 0; t < KHALA_TYPE_COUNT; t++) {
        got_t g;
        snprintf(key, sizeof(key), "type:%d", t);
        snprintf(val, sizeof(val), "value of type %s", khala__proto_type_name((khala_type_t)t));
        cr_assert_eq(in_l1(ch, key), 0, "L1 was emptied");
        cr_assert_eq(raw_get(ch, key, &g), 0, "get %s", key);
        cr_assert_eq(g.lvl, KHALA_LEVEL_L2, "%s answered by level %d", key, (int)g.lvl);
        cr_assert_eq(g.type, (khala_type_t)t);
        cr_assert_eq(g.len, strlen(val));
        cr_assert_eq(memcmp(g.val, val, g.len), 0);
        /* Promoted: the next read is L1's; except consolidation, which lives on L2/L3 only. */
        got_t g2;
        cr_assert_eq(raw_get(ch, key, &g2), 0);
        cr_assert_eq(g2.ver, g.ver, "promotion keeps the version");
        if (t == KHALA_TYPE_CONSOLIDATION) {
            cr_assert_eq(in_l1(ch, key), 0, "consolidation is kept off L1 by default");
            cr_assert_eq(g2.lvl, KHALA_LEVEL_L2);
        } else {
            cr_assert(in_l1(ch, key), "%s was not promoted into L1", key);
            cr_assert_eq(g2.lvl, KHALA_LEVEL_L1);
        }
    }
    khala__chan_close(ch);
}

Test(l2, disk_every_type_round_trips_and_promotes) {
    round_trip_types();
}

Test(l2, redis_tcp_every_type_round_trips_and_promotes) {
    use_redis(tu_redis_env("KHALA_TEST_REDIS_URL"), 0);
    round_trip_types();
}

Test(l2, redis_unix_every_type_round_trips_and_promotes) {
    use_redis(tu_redis_env("KHALA_TEST_REDIS_UNIX_URL"), 0);
    round_trip_types();
}

Test(l2, redis_cluster_every_type_round_trips_and_promotes) {
    use_redis(tu_redis_env("KHALA_TEST_REDIS_CLUSTER_URL"), 0);
    round_trip_types();
}

/* TTL ---------------------------------------------------------------------------------------- */

Test(l2, ttl_expires_at_every_level) {
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    char msg[256];
    cr_assert_eq(raw_put(ch, "short", "v", 1, KHALA_TYPE_SEARCH_RESULT, 300, msg, sizeof(msg)), 0,
                 "%s", msg);
    cr_assert_eq(raw_put(ch, "long", "v", 1, KHALA_TYPE_SEARCH_RESULT, 600000, msg, sizeof(msg)), 0,
                 "%s", msg);
    ch = restart_empty_l1(ch, SIGTERM);
    got_t g;
    /* Bounded wait for the short one to expire everywhere; the long one stays. */
    int gone = 0;
    for (int i = 0; i < 500 && !gone; i++) {
        gone = raw_get(ch, "short", &g) == KHALA_ENOTFOUND;
        if (!gone)
            sleep_ms(20);
    }
    cr_assert(gone, "an item with a 300 ms TTL was still served after 10 s");
    cr_assert_eq(raw_get(ch, "long", &g), 0);
    cr_assert(g.lvl == KHALA_LEVEL_L2 || g.lvl == KHALA_LEVEL_L1);
    khala__chan_close(ch);
}

/* Durability --------------------------------------------------------------------------------- */

Test(l2, disk_sigkill_loses_nothing_acknowledged) {
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    char key[32], val[64];
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof(key), "dur:%d", i);
        snprintf(val, sizeof(val), "acknowledged %d", i);
        put_str(ch, key, val);
    }
    ch = restart_empty_l1(ch, SIGKILL);
    for (int i = 0; i < 200; i++) {
        got_t g;
        snprintf(key, sizeof(key), "dur:%d", i);
        snprintf(val, sizeof(val), "acknowledged %d", i);
        cr_assert_eq(raw_get(ch, key, &g), 0, "acknowledged %s lost by a SIGKILL", key);
        cr_assert_eq(g.len, strlen(val));
        cr_assert_eq(memcmp(g.val, val, g.len), 0);
    }
    khala__chan_close(ch);
}

/* Deletes and invalidations reach L2 ------------------------------------------------------------ */

Test(l2, deletes_and_invalidations_reach_l2) {
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    put_str(ch, "user:1", "a");
    put_str(ch, "user:2", "b");
    put_str(ch, "doc:1", "c");
    put_str(ch, "doc:2", "d");
    char msg[256];
    cr_assert_eq(raw_put(ch, "emb:1", "e", 1, KHALA_TYPE_EMBEDDING, 0, msg, sizeof(msg)), 0);
    khala_msg_t m = khalad_req(KHALA_OP_DEL, "doc:1"), r;
    cr_assert_eq(call(ch, &m, &r), 0);
    khala__proto_msg_free(&r);
    m = khalad_req(KHALA_OP_INVALIDATE, NULL);
    m.by = KHALA_BY_PREFIX;
    m.has |= KHALA_F_BY;
    m.prefix.ptr = (const uint8_t *)"user:";
    m.prefix.len = 5;
    m.has |= KHALA_F_PREFIX;
    cr_assert_eq(call(ch, &m, &r), 0);
    khala__proto_msg_free(&r);
    m = khalad_req(KHALA_OP_INVALIDATE, NULL);
    m.by = KHALA_BY_TYPE;
    m.has |= KHALA_F_BY;
    m.type = KHALA_TYPE_EMBEDDING;
    m.has |= KHALA_F_TYPE;
    cr_assert_eq(call(ch, &m, &r), 0);
    khala__proto_msg_free(&r);
    ch = restart_empty_l1(ch, SIGTERM);
    got_t g;
    cr_assert_eq(raw_get(ch, "doc:1", &g), KHALA_ENOTFOUND, "a delete did not reach L2");
    cr_assert_eq(raw_get(ch, "user:1", &g), KHALA_ENOTFOUND, "a prefix did not reach L2");
    cr_assert_eq(raw_get(ch, "user:2", &g), KHALA_ENOTFOUND);
    cr_assert_eq(raw_get(ch, "emb:1", &g), KHALA_ENOTFOUND, "a type did not reach L2");
    cr_assert_eq(raw_get(ch, "doc:2", &g), 0);
    cr_assert_eq(g.lvl, KHALA_LEVEL_L2);
    m = khalad_req(KHALA_OP_DEL, "doc:1");
    cr_assert_eq(call(ch, &m, &r), KHALA_ENOTFOUND, "no level holds doc:1 any more");
    khala__proto_msg_free(&r);
    khala__chan_close(ch);
}

/* Warming and preloading ----------------------------------------------------------------------- */

static uint64_t warm_all(khala_chan_t *ch, const char *prefix, int type) {
    uint64_t warmed = 0, cursor = 0;
    int pages = 0;
    do {
        khala_msg_t m = khalad_req(KHALA_OP_WARM, NULL), r;
        if (prefix) {
            m.prefix.ptr = (const uint8_t *)prefix;
            m.prefix.len = strlen(prefix);
            m.has |= KHALA_F_PREFIX;
        } else {
            m.type = (khala_type_t)type;
            m.has |= KHALA_F_TYPE;
        }
        m.cursor = cursor;
        m.has |= KHALA_F_CURSOR;
        cr_assert_eq(call(ch, &m, &r), 0, "warm: %.*s", (int)r.err.len,
                     r.err.ptr ? (const char *)r.err.ptr : "");
        warmed += r.count;
        cursor = r.cursor;
        khala__proto_msg_free(&r);
        cr_assert_lt(++pages, 100000, "the warm scan does not end");
    } while (cursor != 0);
    return warmed;
}

static void warm_by_prefix_and_type(void) {
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    char key[32], msg[256];
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof(key), "w:%d", i);
        put_str(ch, key, "warm me");
    }
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof(key), "other:%d", i);
        cr_assert_eq(raw_put(ch, key, "x", 1, KHALA_TYPE_AGENT_RESPONSE, 0, msg, sizeof(msg)), 0);
    }
    ch = restart_empty_l1(ch, SIGTERM);
    cr_assert_eq(in_l1(ch, "w:7"), 0);
    cr_assert_eq(warm_all(ch, "w:", -1), 300);
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof(key), "w:%d", i);
        cr_assert(in_l1(ch, key), "%s was not warmed", key);
    }
    cr_assert_eq(in_l1(ch, "other:3"), 0, "warm by prefix took another prefix");
    cr_assert_eq(warm_all(ch, NULL, KHALA_TYPE_AGENT_RESPONSE), 50);
    cr_assert(in_l1(ch, "other:3"));
    /* By keys. */
    ch = restart_empty_l1(ch, SIGTERM);
    khala_bytes_t keys[3] = {
        {(const uint8_t *)"w:1", 3}, {(const uint8_t *)"w:2", 3}, {(const uint8_t *)"absent", 6}};
    khala_msg_t m = khalad_req(KHALA_OP_WARM, NULL), r;
    m.keys = keys;
    m.nkeys = 3;
    m.has |= KHALA_F_KEYS;
    cr_assert_eq(call(ch, &m, &r), 0);
    cr_assert_eq(r.count, 2);
    khala__proto_msg_free(&r);
    cr_assert(in_l1(ch, "w:1") && in_l1(ch, "w:2"));
    khala__chan_close(ch);
}

Test(l2, disk_warm_by_prefix_type_and_keys) {
    warm_by_prefix_and_type();
}

Test(l2, redis_warm_by_prefix_type_and_keys) {
    use_redis(tu_redis_env("KHALA_TEST_REDIS_URL"), 0);
    warm_by_prefix_and_type();
}

/* preload_common warms at most half of L1 (here 8 of 16 items), ranked by the access counts L2
 * keeps. Cold keys are read three times each from L2; hot keys once from L2 and then hundreds of
 * times from L1 by a worker, which only khalad's report of L1 hits at a graceful stop can tell
 * L2. Without that report the cold keys would rank first and fill the preload. */
static void preload_ranks_by_all_reads(void) {
    add_set("l1.max_items=16");
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    char key[32];
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof(key), "h:%d", i);
        put_str(ch, key, "hot value");
    }
    for (int i = 0; i < 8; i++) {
        snprintf(key, sizeof(key), "c:%d", i);
        put_str(ch, key, "cold value");
    }
    got_t g;
    for (int round = 0; round < 3; round++) {
        ch = restart_empty_l1(ch, SIGTERM);
        for (int i = 0; i < 8; i++) {
            snprintf(key, sizeof(key), "c:%d", i);
            cr_assert_eq(raw_get(ch, key, &g), 0);
            cr_assert_eq(g.lvl, KHALA_LEVEL_L2);
        }
    }
    ch = restart_empty_l1(ch, SIGTERM);
    khala_cache_t *w = NULL;
    khala_cache_options_t o;
    khala_cache_options_init(&o);
    o.socket_path = khalad_sock;
    cr_assert_eq(khala_cache_open(khalad_name, &o, &w), 0, "%s", khala_cache_errmsg(NULL));
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof(key), "h:%d", i);
        cr_assert_eq(raw_get(ch, key, &g), 0); /* one read from L2, promoted */
        cr_assert_eq(g.lvl, KHALA_LEVEL_L2);
    }
    char buf[32];
    size_t len;
    for (int r = 0; r < 300; r++)
        for (int i = 0; i < 4; i++) {
            snprintf(key, sizeof(key), "h:%d", i);
            cr_assert_eq(khala_cache_get(w, key, strlen(key), buf, sizeof(buf), &len), 0);
        }
    khala_cache_stats_t st;
    cr_assert_eq(khala_cache_stats(w, &st), 0);
    cr_assert_geq(st.hits, 1200, "the hot reads were L1 hits");
    khala_cache_close(w);
    /* The graceful stop reports the L1 hits; the next start preloads. */
    add_set("policies.preload_common=true");
    ch = restart_empty_l1(ch, SIGTERM);
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof(key), "h:%d", i);
        cr_assert(in_l1(ch, key), "the key read most (from L1) %s was not preloaded", key);
    }
    int cold = 0;
    for (int i = 0; i < 8; i++) {
        snprintf(key, sizeof(key), "c:%d", i);
        cold += in_l1(ch, key);
    }
    cr_assert_leq(cold, 4, "preload warms at most half of L1: 4 hot + at most 4 cold");
    khala__chan_close(ch);
}

Test(l2, disk_preload_ranks_keys_by_l1_and_l2_reads) {
    preload_ranks_by_all_reads();
}

Test(l2, redis_preload_ranks_keys_by_l1_and_l2_reads) {
    use_redis(tu_redis_env("KHALA_TEST_REDIS_URL"), 0);
    preload_ranks_by_all_reads();
}

/* Start a second "host": another khalad (cache name g_name2, its own socket, segment and L2
 * directory) with the --set options of the suite's khalad, but reaching Redis at redis_url when
 * that is not NULL. Stopped by teardown. Returns its socket path (static storage). */
static const char *start_second_host(const char *redis_url) {
    static char sock2[200], dir2[160], url_set[600];
    snprintf(g_name2, sizeof(g_name2), "%sb", khalad_name);
    snprintf(dir2, sizeof(dir2), "%s/b", khalad_dir());
    mkdir(dir2, 0700);
    snprintf(sock2, sizeof(sock2), "%s/b.sock", dir2);
    if (redis_url)
        snprintf(url_set, sizeof(url_set), "l2.redis_url=%s", redis_url);
    const char *sets[KHALAD_EXTRA_SETS_MAX + 1];
    int n = 0;
    for (; khalad_extra_sets[n]; n++)
        sets[n] = redis_url && strncmp(khalad_extra_sets[n], "l2.redis_url=", 13) == 0
                      ? url_set
                      : khalad_extra_sets[n];
    sets[n] = NULL;
    g_pid2 = khalad_spawn(g_name2, sock2, dir2, sets);
    return sock2;
}

/* Stop the second host (gracefully; teardown kills it if a test ends early). */
static void stop_second_host(void) {
    kill(g_pid2, SIGTERM);
    waitpid(g_pid2, NULL, 0);
    g_pid2 = 0;
}

/* Two hosts, one Redis -------------------------------------------------------------------------- */

Test(l2, invalidation_reaches_another_khalad) {
    const char *url = tu_redis_env("KHALA_TEST_REDIS_URL");
    use_redis(url, 1);
    khalad_start();
    /* The second "host": another cache name, socket and segment, same namespace. */
    const char *name2 = g_name2, *sock2 = start_second_host(NULL);
    khala_chan_t *a = chan_to(khalad_sock, khalad_name);
    khala_chan_t *b = chan_to(sock2, name2);
    wait_stat(a, "l2", "subscribed", 1);
    wait_stat(b, "l2", "subscribed", 1);

    /* b caches v1 in its L1 (through L2), once a's invalidation of the key has reached b:
     * arriving after b's read, it would drop what b just cached. */
    uint64_t seen = stat_u(b, "l2", "invalidations_received");
    put_str(a, "shared", "v1");
    wait_stat(b, "l2", "invalidations_received", seen + 1);
    got_t g;
    cr_assert_eq(raw_get(b, "shared", &g), 0);
    cr_assert_eq(g.len, 2);
    cr_assert_eq(memcmp(g.val, "v1", 2), 0);
    cr_assert(in_l1(b, "shared"));

    /* Workers of b read its L1 directly. */
    khala_cache_options_t o;
    khala_cache_options_init(&o);
    o.socket_path = sock2;
    khala_cache_t *wb = NULL;
    cr_assert_eq(khala_cache_open(name2, &o, &wb), 0, "%s", khala_cache_errmsg(NULL));
    char buf[16];
    size_t len = 0;
    cr_assert_eq(khala_cache_get(wb, "shared", 6, buf, sizeof(buf), &len), 0);

    for (int round = 2; round < 12; round++) {
        uint64_t before = stat_u(b, "l2", "invalidations_received");
        char v[16];
        snprintf(v, sizeof(v), "v%d", round);
        put_str(a, "shared", v);
        wait_stat(b, "l2", "invalidations_received", before + 1);
        /* Delivered: b's worker never reads the old value again. */
        int rc = khala_cache_get(wb, "shared", 6, buf, sizeof(buf), &len);
        cr_assert_eq(rc, 0);
        cr_assert_eq(len, strlen(v), "round %d: stale read of length %zu", round, len);
        cr_assert_eq(memcmp(buf, v, len), 0, "round %d: b read a stale value", round);
    }
    /* Deletes and prefix invalidations travel too. */
    put_str(a, "pre:1", "x");
    cr_assert_eq(raw_get(b, "pre:1", &g), 0);
    uint64_t before = stat_u(b, "l2", "invalidations_received");
    khala_msg_t m = khalad_req(KHALA_OP_INVALIDATE, NULL), r;
    m.by = KHALA_BY_PREFIX;
    m.has |= KHALA_F_BY;
    m.prefix.ptr = (const uint8_t *)"pre:";
    m.prefix.len = 4;
    m.has |= KHALA_F_PREFIX;
    cr_assert_eq(call(a, &m, &r), 0);
    khala__proto_msg_free(&r);
    wait_stat(b, "l2", "invalidations_received", before + 1);
    cr_assert_eq(in_l1(b, "pre:1"), 0, "a prefix invalidation did not reach b's L1");
    cr_assert_eq(khala_cache_get(wb, "pre:1", 5, buf, sizeof(buf), &len), KHALA_ENOTFOUND);

    khala_cache_close(wb);
    khala__chan_close(a);
    khala__chan_close(b);
    stop_second_host();
}

/* Redis killed and restarted -------------------------------------------------------------------- */

Test(l2, redis_down_queues_writes_and_drains_on_return) {
    use_private_redis();
    add_set("l2.queue_max=50");
    add_set("l2.timeout_ms=300");
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    put_str(ch, "before", "up");
    cr_assert(redis_has("127.0.0.1", g_redis.port, g_ns, "before"));

    tu_redis_kill(&g_redis);
    /* Writes are acknowledged and queued; the first one finds Redis gone. */
    char key[32], val[32], msg[256];
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof(key), "down:%d", i);
        snprintf(val, sizeof(val), "queued %d", i);
        cr_assert_eq(
            raw_put(ch, key, val, strlen(val), KHALA_TYPE_MEMORY_ENTITY, 0, msg, sizeof(msg)), 0,
            "put while Redis is down: %s", msg);
    }
    cr_assert_eq(stat_u(ch, "l2", "healthy"), 0);
    cr_assert_eq(stat_u(ch, "l2", "queued_now"), 50);
    /* The queue is full: back-pressure, with a message that says so. */
    int rc = raw_put(ch, "one-too-many", "x", 1, KHALA_TYPE_MEMORY_ENTITY, 0, msg, sizeof(msg));
    cr_assert_eq(rc, KHALA_EQUEUE, "a full queue answered %s", khala_strerror(rc));
    cr_assert(strstr(msg, "queue") != NULL, "message: %s", msg);
    got_t g;
    cr_assert_eq(raw_get(ch, "one-too-many", &g), KHALA_ENOTFOUND, "a refused write was kept");
    /* A rewrite of a queued key coalesces: it still fits. */
    cr_assert_eq(
        raw_put(ch, "down:0", "queued 0 again", 14, KHALA_TYPE_MEMORY_ENTITY, 0, msg, sizeof(msg)),
        0, "%s", msg);
    /* khalad itself is SIGKILLed while Redis is down: the journal keeps the queue. */
    ch = restart_empty_l1(ch, SIGKILL);
    cr_assert_eq(stat_u(ch, "l2", "queued_now"), 50, "the journal did not bring the queue back");
    cr_assert_eq(raw_get(ch, "down:7", &g), 0, "a queued write is read back");
    cr_assert_eq(g.len, strlen("queued 7"));
    tu_redis_start(&g_redis, NULL);
    /* Drained: every acknowledged write is in Redis, the coalesced one with its last value. */
    for (int i = 0; i < 1000 && stat_u(ch, "l2", "queued_now") != 0; i++)
        sleep_ms(10);
    cr_assert_eq(stat_u(ch, "l2", "queued_now"), 0, "the queue did not drain");
    cr_assert_eq(stat_u(ch, "l2", "healthy"), 1);
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof(key), "down:%d", i);
        cr_assert(redis_has("127.0.0.1", g_redis.port, g_ns, key), "acknowledged %s was lost", key);
    }
    ch = restart_empty_l1(ch, SIGTERM);
    cr_assert_eq(raw_get(ch, "down:0", &g), 0);
    cr_assert_eq(g.lvl, KHALA_LEVEL_L2);
    cr_assert_eq(g.len, 14);
    cr_assert_eq(memcmp(g.val, "queued 0 again", 14), 0);
    put_str(ch, "after", "up again");
    cr_assert(redis_has("127.0.0.1", g_redis.port, g_ns, "after"));
    khala__chan_close(ch);
}

/* Write-behind ---------------------------------------------------------------------------------- */

Test(l2, redis_write_behind_survives_a_sigkill_of_khalad) {
    const char *url = tu_redis_env("KHALA_TEST_REDIS_URL");
    use_redis(url, 0);
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    /* embedding is write-behind by default: the reply comes after L1 and the journal. */
    char key[32], val[64], msg[256];
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof(key), "wb:%d", i);
        snprintf(val, sizeof(val), "embedding %d", i);
        cr_assert_eq(raw_put(ch, key, val, strlen(val), KHALA_TYPE_EMBEDDING, 0, msg, sizeof(msg)),
                     0, "%s", msg);
    }
    /* Killed at once: whatever the flusher had not sent yet is in the journal. */
    ch = restart_empty_l1(ch, SIGKILL);
    for (int i = 0; i < 1000 && stat_u(ch, "l2", "queued_now") != 0; i++)
        sleep_ms(10);
    cr_assert_eq(stat_u(ch, "l2", "queued_now"), 0);
    int port = 0;
    cr_assert_eq(sscanf(url, "redis://127.0.0.1:%d", &port), 1);
    for (int i = 0; i < 300; i++) {
        got_t g;
        snprintf(key, sizeof(key), "wb:%d", i);
        snprintf(val, sizeof(val), "embedding %d", i);
        cr_assert(redis_has("127.0.0.1", port, g_ns, key), "acknowledged %s never reached Redis",
                  key);
        cr_assert_eq(raw_get(ch, key, &g), 0);
        cr_assert_eq(g.len, strlen(val));
        cr_assert_eq(memcmp(g.val, val, g.len), 0);
    }
    khala__chan_close(ch);
}

/* A hung Redis (SIGSTOP: connections stay open, nothing answers) ------------------------------ */

Test(l2, a_hung_redis_costs_one_timeout_then_writes_queue_and_reads_go_on) {
    use_private_redis();
    add_set("l2.timeout_ms=200");
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    put_str(ch, "l1-resident", "served from L1");
    cr_assert_eq(kill(g_redis.pid, SIGSTOP), 0);
    /* The first write meets the timeout and marks L2 down; it and the next ones are queued. */
    char key[32], val[32];
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof(key), "hung:%d", i);
        snprintf(val, sizeof(val), "queued %d", i);
        put_str(ch, key, val);
    }
    cr_assert_eq(stat_u(ch, "l2", "healthy"), 0);
    cr_assert_eq(stat_u(ch, "l2", "queued_now"), 20);
    /* khalad keeps answering: L1, and the queue. */
    got_t g;
    cr_assert_eq(raw_get(ch, "l1-resident", &g), 0);
    cr_assert_eq(g.lvl, KHALA_LEVEL_L1);
    cr_assert_eq(raw_get(ch, "hung:3", &g), 0);
    cr_assert_eq(g.len, strlen("queued 3"));
    cr_assert_eq(raw_get(ch, "never-written", &g), KHALA_ENOTFOUND);
    /* Redis answers again: the queue drains into it. */
    cr_assert_eq(kill(g_redis.pid, SIGCONT), 0);
    for (int i = 0; i < 2000 && stat_u(ch, "l2", "queued_now") != 0; i++)
        sleep_ms(10);
    cr_assert_eq(stat_u(ch, "l2", "queued_now"), 0, "the queue did not drain after SIGCONT");
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof(key), "hung:%d", i);
        cr_assert(redis_has("127.0.0.1", (int)g_redis.port, g_ns, key), "%s was lost", key);
    }
    khala__chan_close(ch);
}

/* One host cut off from Redis ------------------------------------------------------------------ */

/* A TCP relay 127.0.0.1:listen_port -> 127.0.0.1:to_port in a process group of its own (one
 * process per connection), so that killing the group cuts every connection at once: a network
 * partition of one host, which a real server alone cannot show. Returns the group's id. */
static pid_t relay_start(unsigned listen_port, unsigned to_port) {
    int ready[2];
    cr_assert_eq(pipe(ready), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid > 0) {
        char c;
        close(ready[1]);
        cr_assert_eq(read(ready[0], &c, 1), 1, "the relay did not start");
        close(ready[0]);
        return pid;
    }
    setpgid(0, 0);
    close(ready[0]);
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)listen_port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 16) != 0)
        _exit(1);
    (void)!write(ready[1], "r", 1);
    signal(SIGCHLD, SIG_IGN);
    for (;;) {
        int c = accept(lfd, NULL, NULL);
        if (c < 0)
            continue;
        if (fork() == 0) {
            int u = socket(AF_INET, SOCK_STREAM, 0);
            struct sockaddr_in ua = {.sin_family = AF_INET,
                                     .sin_port = htons((uint16_t)to_port),
                                     .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
            if (connect(u, (struct sockaddr *)&ua, sizeof(ua)) != 0)
                _exit(1);
            struct pollfd fds[2] = {{c, POLLIN, 0}, {u, POLLIN, 0}};
            char buf[65536];
            for (;;) {
                if (poll(fds, 2, -1) < 0)
                    _exit(1);
                for (int i = 0; i < 2; i++) {
                    if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                        continue;
                    ssize_t n = read(fds[i].fd, buf, sizeof(buf));
                    if (n <= 0)
                        _exit(0);
                    for (ssize_t off = 0; off < n;) {
                        ssize_t w = write(fds[1 - i].fd, buf + off, (size_t)(n - off));
                        if (w <= 0)
                            _exit(0);
                        off += w;
                    }
                }
            }
        }
        close(c);
    }
}

static void relay_kill(pid_t pgid) {
    kill(-pgid, SIGKILL);
    waitpid(pgid, NULL, 0);
}

/* Host a reaches Redis through the relay; host b directly. While a is cut off, its writes queue
 * and its invalidations cannot be published. Once the relay is back, a drains its queue and,
 * having missed publishing, tells every host to empty its L1: b drops even a key a never
 * touched (a key b cached before the partition could have been changed by a unseen). */
Test(l2, a_host_cut_off_from_redis_makes_the_others_flush_once_it_is_back) {
    const char *url = tu_redis_env("KHALA_TEST_REDIS_URL");
    unsigned redis_port = 0, relay_port = tu_redis_free_port();
    cr_assert_eq(sscanf(url, "redis://127.0.0.1:%u", &redis_port), 1, "%s", url);
    pid_t relay = g_relay = relay_start(relay_port, redis_port);
    char relay_url[64];
    snprintf(relay_url, sizeof(relay_url), "redis://127.0.0.1:%u", relay_port);
    use_redis(relay_url, 1);
    add_set("l2.timeout_ms=300");
    khalad_start();                                               /* host a, through the relay */
    const char *name2 = g_name2, *sock2 = start_second_host(url); /* host b, direct */
    khala_chan_t *a = chan_to(khalad_sock, khalad_name);
    khala_chan_t *b = chan_to(sock2, name2);
    wait_stat(a, "l2", "subscribed", 1);
    wait_stat(b, "l2", "subscribed", 1);
    put_str(b, "untouched-by-a", "b's");
    /* b reads k once a's invalidation of it has arrived (arriving later, it would drop k). */
    uint64_t seen = stat_u(b, "l2", "invalidations_received");
    put_str(a, "k", "v1");
    wait_stat(b, "l2", "invalidations_received", seen + 1);
    got_t g;
    cr_assert_eq(raw_get(b, "k", &g), 0);
    cr_assert(in_l1(b, "k") && in_l1(b, "untouched-by-a"));

    relay_kill(relay); /* a is cut off */
    g_relay = 0;
    put_str(a, "k", "v2"); /* acknowledged: queued, not published */
    cr_assert_eq(stat_u(a, "l2", "healthy"), 0);
    cr_assert_geq(stat_u(a, "l2", "publish_errors"), 1);

    relay = g_relay = relay_start(relay_port, redis_port); /* the partition heals */
    /* a drains its queue into Redis (and publishes k again); b's L1 loses everything: k and
     * the untouched key (the flush message). Until a's write is drained, a read on b could
     * only find the old value in L2: the test reads after the drain. */
    for (int i = 0; i < 1500 && stat_u(a, "l2", "queued_now") != 0; i++)
        sleep_ms(10);
    cr_assert_eq(stat_u(a, "l2", "queued_now"), 0, "a did not drain after the partition");
    int flushed = 0;
    for (int i = 0; i < 1500 && !flushed; i++) {
        flushed = !in_l1(b, "untouched-by-a") && !in_l1(b, "k");
        if (!flushed)
            sleep_ms(10);
    }
    cr_assert(flushed, "b kept L1 entries that a may have changed while cut off");
    cr_assert_eq(raw_get(b, "k", &g), 0);
    cr_assert_eq(g.len, 2);
    cr_assert_eq(memcmp(g.val, "v2", 2), 0, "b reads a's write after the partition");
    khala__chan_close(a);
    khala__chan_close(b);
    stop_second_host();
    khalad_kill(SIGTERM);
    relay_kill(relay);
    g_relay = 0;
}

/* An oversized value is refused before any level is written. */
Test(l2, an_oversized_value_reaches_no_level) {
    use_private_redis();
    add_set("l1.max_value_bytes=64");
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    char big[65], msg[256];
    memset(big, 'x', sizeof(big));
    tu_redis_kill(&g_redis); /* even a level that would only queue it */
    int rc = raw_put(ch, "big", big, sizeof(big), KHALA_TYPE_MEMORY_ENTITY, 0, msg, sizeof(msg));
    cr_assert_eq(rc, KHALA_ETOOBIG, "%s", khala_strerror(rc));
    cr_assert(strstr(msg, "65 bytes") && strstr(msg, "max 64"), "message: %s", msg);
    cr_assert_eq(stat_u(ch, "l2", "queued_now"), 0, "the refused value was queued");
    got_t g;
    cr_assert_eq(raw_get(ch, "big", &g), KHALA_ENOTFOUND);
    khala__chan_close(ch);
}

/* Run khalad in the foreground over Redis at url (L2 in l2path, or <dir>/l2 when NULL), with up
 * to two more --set overrides (NULL for none), expecting it to stop at start: its exit status,
 * and what it printed in out. */
static int run_on_redis(const char *url, const char *l2path, const char *set1, const char *set2,
                        char *out, size_t cap) {
    char u[160], sock[200], l2[200];
    snprintf(u, sizeof(u), "l2.redis_url=%s", url);
    snprintf(sock, sizeof(sock), "cache.socket=%s", khalad_sock);
    if (l2path)
        snprintf(l2, sizeof(l2), "l2.path=%s", l2path);
    else
        snprintf(l2, sizeof(l2), "l2.path=%s/l2", khalad_dir());
    const char *args[20] = {"--foreground",
                            "--name",
                            khalad_name,
                            "--set",
                            sock,
                            "--set",
                            "l1.max_memory_mb=16",
                            "--set",
                            u,
                            "--set",
                            "l2.backend=redis",
                            "--set",
                            l2};
    int n = 13;
    if (set1) {
        args[n++] = "--set";
        args[n++] = set1;
    }
    if (set2) {
        args[n++] = "--set";
        args[n++] = set2;
    }
    args[n] = NULL;
    return khalad_run(args, out, cap);
}

/* L2 on Redis keeps its write queue in a journal on the local disk; when that journal cannot
 * be made (a file stands where its directory should be), khalad does not start with a queue
 * that would lose acknowledged writes: exit status 1, one error naming the level and the
 * reason, and no socket left. The Redis server being down (a closed port) is no reason to
 * refuse: it is only warned about. */
Test(l2, redis_l2_whose_write_journal_cannot_be_made_refuses_to_start) {
    char file[160], l2[200];
    snprintf(file, sizeof(file), "%s/a-file", khalad_dir());
    snprintf(l2, sizeof(l2), "%s/l2", file);
    FILE *f = fopen(file, "w");
    cr_assert_not_null(f);
    fclose(f);
    char out[8192];
    int st = run_on_redis("redis://127.0.0.1:1/0", l2, NULL, NULL, out, sizeof(out));
    cr_assert_eq(st, 1, "exit status %d: %s", st, out);
    cr_assert_not_null(strstr(out, "L2 is not reachable at start"), "log: %s", out);
    cr_assert_not_null(strstr(out, "cannot open the levels below L1"), "log: %s", out);
    cr_assert_not_null(strstr(out, "L2 (redis): "), "log: %s", out);
    cr_assert_not_null(strstr(out, "a-file"), "the path is named: %s", out);
    cr_assert_not_null(strstr(out, "ot a directory"), "the reason is named: %s", out);
    cr_assert_neq(access(khalad_sock, F_OK), 0, "no socket is left");
}

/* A Redis that refuses khalad's password is a configuration mistake, not an outage (an outage
 * only queues writes): khalad does not start; it exits 1 with one error naming the level, the
 * server and Redis's own words, and leaves no socket. */
Test(l2, a_redis_refusing_the_password_stops_the_start_naming_server_and_reason) {
    static const char *const auth[] = {"--requirepass", "secret", NULL};
    tu_redis_start(&g_redis, auth);
    char url[128];
    snprintf(url, sizeof(url), "redis://:wrong@127.0.0.1:%u/0", g_redis.port);
    char out[8192];
    int st = run_on_redis(url, NULL, NULL, NULL, out, sizeof(out));
    cr_assert_eq(st, 1, "exit status %d: %s", st, out);
    char want[160];
    snprintf(want, sizeof(want), "L2 (redis): redis 127.0.0.1:%u: AUTH refused: WRONGPASS",
             g_redis.port);
    cr_assert_not_null(strstr(out, "cannot open the levels below L1"), "log: %s", out);
    cr_assert_not_null(strstr(out, want), "log: %s", out);
    cr_assert_neq(access(khalad_sock, F_OK), 0, "no socket is left");
}

/* Cross-host invalidation at start ------------------------------------------------------------- */

/* A khalad that was down heard none of the other hosts' invalidations: restarted with
 * coherence = pubsub, it empties the L1 it adopts (the values stay on L2 and are read from
 * there); without coherence an adopted L1 is kept, as a restart after a crash keeps it. */
Test(l2, a_restart_with_pubsub_empties_the_adopted_l1) {
    for (int coherence = 0; coherence < 2; coherence++) {
        use_redis(tu_redis_env("KHALA_TEST_REDIS_URL"), coherence);
        khalad_start();
        khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
        put_str(ch, "adopted", "v");
        cr_assert(in_l1(ch, "adopted"));
        khala__chan_close(ch);
        khalad_kill(SIGKILL);
        khalad_start(); /* adopts the segment */
        ch = chan_to(khalad_sock, khalad_name);
        if (coherence)
            wait_stat(ch, "l2", "subscribed", 1);
        cr_assert_eq(in_l1(ch, "adopted"), !coherence, "coherence %d", coherence);
        got_t g;
        cr_assert_eq(raw_get(ch, "adopted", &g), 0);
        cr_assert_eq(g.lvl, coherence ? KHALA_LEVEL_L2 : KHALA_LEVEL_L1);
        cr_assert_eq(g.len, 1);
        khala__chan_close(ch);
        khalad_kill(SIGTERM);
        khala__seg_unlink(khalad_name);
    }
}

/* A Redis user who may use L2 but not SUBSCRIBE to the invalidation channel stops the start
 * with coherence = pubsub, naming the channel and the server's answer. */
Test(l2, a_redis_user_who_may_not_subscribe_stops_a_start_with_pubsub) {
    tu_redis_start(&g_redis, NULL);
    redisContext *c = redisConnect("127.0.0.1", (int)g_redis.port);
    cr_assert(c && !c->err);
    redisReply *rep = redisCommand(c, "ACL SETUSER nosub on >pw ~* &* +@all -subscribe");
    cr_assert(rep && rep->type == REDIS_REPLY_STATUS, "%s", rep ? rep->str : c->errstr);
    freeReplyObject(rep);
    redisFree(c);
    char url[128];
    snprintf(url, sizeof(url), "redis://nosub:pw@127.0.0.1:%u/0", g_redis.port);
    char out[8192];
    int st = run_on_redis(url, NULL, "l2.namespace=nosub", "policies.coherence=pubsub", out,
                          sizeof(out));
    cr_assert_eq(st, 1, "exit status %d: %s", st, out);
    cr_assert_not_null(strstr(out, "cross-host invalidation"), "log: %s", out);
    cr_assert_not_null(strstr(out, "SUBSCRIBE khala:nosub:inv refused: NOPERM"), "log: %s", out);
    cr_assert_neq(access(khalad_sock, F_OK), 0, "no socket is left");
}

/* A disk L2 that cannot grow ----------------------------------------------------------------- */

/* khalad under a file-size limit (ulimit -f, systemd's LimitFSIZE=) that its disk store reaches:
 * the kernel refuses the write with EFBIG and sends SIGXFSZ, whose default action ends the
 * process. khalad must treat it as the disk failing, not die: the disk store has no journal,
 * so a write it cannot take is refused (KHALA_ETIER naming the error, nothing acknowledged that
 * a SIGKILL could lose, issue 10), L2 is marked down, and once the store can grow again the
 * level comes back and takes writes; what was acknowledged before survives a restart. */
Test(l2, a_disk_store_reaching_the_file_size_limit_is_a_level_down_not_a_dead_khalad) {
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    put_str(ch, "first", "before the limit");
    char data[300];
    snprintf(data, sizeof(data), "%s/l2/data.mdb", khalad_dir());
    struct stat sb;
    cr_assert_eq(stat(data, &sb), 0, "%s", data);
    struct rlimit lim = {(rlim_t)sb.st_size, RLIM_INFINITY}, old;
    cr_assert_eq(prlimit(khalad_pid, RLIMIT_FSIZE, &lim, &old), 0, "%s", strerror(errno));

    static char val[16 * 1024];
    memset(val, 'x', sizeof(val));
    char key[32], msg[256];
    int refused = 0;
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof(key), "big:%d", i);
        int rc = raw_put(ch, key, val, sizeof(val), KHALA_TYPE_MEMORY_ENTITY, 0, msg, sizeof(msg));
        cr_assert(rc == 0 || rc == KHALA_ETIER, "put %s: %s (%s); khalad %s", key,
                  khala_strerror(rc), msg, kill(khalad_pid, 0) == 0 ? "runs" : "is gone");
        if (rc == KHALA_ETIER) {
            cr_assert(strstr(msg, "L2 (disk)"), "the refusal names the level: %s", msg);
            refused++;
        }
    }
    cr_assert_gt(refused, 0, "the disk store outgrew the limit and refused writes");
    cr_assert_eq(kill(khalad_pid, 0), 0, "khalad is alive");
    cr_assert_geq(stat_u(ch, "l2", "outages"), 1, "the refused writes marked L2 down");
    cr_assert_eq(stat_u(ch, "l2", "queued_now"), 0, "nothing is held in memory unjournaled");

    cr_assert_eq(prlimit(khalad_pid, RLIMIT_FSIZE, &old, NULL), 0);
    for (int i = 0; i < 1000 && stat_u(ch, "l2", "healthy") != 1; i++)
        sleep_ms(10);
    cr_assert_eq(stat_u(ch, "l2", "healthy"), 1, "the level came back once the store could grow");
    put_str(ch, "after", "taken");
    ch = restart_empty_l1(ch, SIGTERM);
    got_t g;
    cr_assert_eq(raw_get(ch, "after", &g), 0, "the write after recovery reached L2");
    cr_assert_eq(g.lvl, KHALA_LEVEL_L2);
    cr_assert(g.len == 5 && memcmp(g.val, "taken", 5) == 0);
    cr_assert_eq(raw_get(ch, "first", &g), 0, "the write before the limit survived");
    cr_assert(g.len == 16 && memcmp(g.val, "before the limit", 16) == 0);
    khala__chan_close(ch);
}
