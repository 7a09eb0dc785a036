/*
 * Issue 10, bug 7, through a real khalad and a real redis-server: a TTL near 2^63 ms made L2
 * look down for everyone (Redis refused the expiry, every Redis error reply meant "level down",
 * the queued write overflowed its deadline and drained as already expired, and the put had been
 * acknowledged). Now a TTL above KHALA_TTL_MAX_MS is refused at the protocol boundary with
 * KHALA_EINVAL (and by the library before it sends anything), and an error reply Redis gives to
 * one write (out of memory under noeviction) fails that write with KHALA_EREFUSED and Redis's
 * text while L2 stays up and nothing is queued.
 *
 * No timing assertion: every wait is a bounded loop on a condition.
 */
#include <criterion/criterion.h>
#include <hiredis/hiredis.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "channel.h"
#include "khala/cache.h"
#include "khala/error.h"
#include "khalad_util.h"
#include "proto.h"
#include "redis_util.h"
#include "segment.h"

static tu_redis_t g_redis;
static char g_ns[64];

static void setup(void) {
    khalad_env_init("l2r");
    memset(khalad_extra_sets, 0, sizeof(khalad_extra_sets));
}

static void teardown(void) {
    tu_redis_stop(&g_redis);
    khalad_env_fini();
}

TestSuite(l2_refusals, .init = setup, .fini = teardown, .timeout = 120);

/* A private redis-server and a khalad with L2 on it (write-through, the default mode). */
static khala_chan_t *start(void) {
    char url[64];
    tu_redis_start(&g_redis, NULL);
    snprintf(g_ns, sizeof(g_ns), "rf%d", (int)getpid());
    snprintf(url, sizeof(url), "redis://127.0.0.1:%u", g_redis.port);
    khalad_use_redis(url, g_ns);
    khalad_start();
    return khalad_chan();
}

static int call(khala_chan_t *ch, khala_msg_t *m, khala_msg_t *r) {
    return khalad_call(ch, m, r, 10000);
}

/* A put or touch over the protocol (bypassing the library's own check); the reply's rc and
 * message. */
static int raw(khala_chan_t *ch, khala_op_t op, const char *key, const char *val, uint64_t ttl_ms,
               char *msg, size_t msglen) {
    khala_msg_t m = khalad_req(op, key), r;
    if (val) {
        m.value.ptr = (const uint8_t *)val;
        m.value.len = strlen(val);
        m.has |= KHALA_F_V;
    }
    if (ttl_ms) {
        m.ttl_ms = ttl_ms;
        m.has |= KHALA_F_TTL;
    }
    int rc = call(ch, &m, &r);
    snprintf(msg, msglen, "%.*s", (int)r.err.len, r.err.ptr ? (const char *)r.err.ptr : "");
    khala__proto_msg_free(&r);
    return rc;
}

static int raw_get(khala_chan_t *ch, const char *key) {
    khala_msg_t m = khalad_req(KHALA_OP_GET, key), r;
    int rc = call(ch, &m, &r);
    khala__proto_msg_free(&r);
    return rc;
}

/* A counter of the stats reply ("l2" section); UINT64_MAX if absent. */
static uint64_t l2_stat(khala_chan_t *ch, const char *name) {
    return khalad_stat(ch, "l2", name, 10000);
}

static redisContext *redis(void) {
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", (int)g_redis.port, tv);
    cr_assert(c && !c->err, "connect to redis");
    return c;
}

static void redis_ok(redisContext *c, const char *cmd) {
    redisReply *r = redisCommand(c, cmd);
    cr_assert(r && r->type != REDIS_REPLY_ERROR, "%s: %s", cmd, r ? r->str : "no reply");
    freeReplyObject(r);
}

/* The PTTL of khala:<ns>:<key> in Redis (-2: absent). */
static long long redis_pttl(const char *key) {
    redisContext *c = redis();
    redisReply *r = redisCommand(c, "PTTL khala:%s:%s", g_ns, key);
    cr_assert(r && r->type == REDIS_REPLY_INTEGER);
    long long v = r->integer;
    freeReplyObject(r);
    redisFree(c);
    return v;
}

/* The original scenario: a put with TTL 2^63-1 ms was acknowledged, L2 went down for everyone,
 * the write never reached Redis. Now it, 2^63 and 2^64-1 (which became the default TTL) are
 * refused with KHALA_EINVAL naming the maximum; nothing is stored at any level and L2 stays up
 * for everyone. The maximum itself is accepted and reaches Redis with its TTL. */
Test(l2_refusals, a_ttl_above_the_maximum_is_refused_and_l2_stays_up) {
    khala_chan_t *ch = start();
    char msg[256];
    const uint64_t bad[] = {INT64_MAX, (uint64_t)INT64_MAX + 1, UINT64_MAX, KHALA_TTL_MAX_MS + 1};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = raw(ch, KHALA_OP_PUT, "huge", "v", bad[i], msg, sizeof(msg));
        cr_assert_eq(rc, KHALA_EINVAL, "ttl %llu: %s (%s)", (unsigned long long)bad[i],
                     khala_strerror(rc), msg);
        cr_assert(strstr(msg, "ttl") && strstr(msg, "max"), "message: %s", msg);
        cr_assert_eq(raw_get(ch, "huge"), KHALA_ENOTFOUND, "a refused put was stored");
        cr_assert_eq(redis_pttl("huge"), -2, "a refused put reached Redis");
    }
    cr_assert_eq(l2_stat(ch, "healthy"), 1, "L2 is up");
    cr_assert_eq(l2_stat(ch, "outages"), 0, "L2 never went down");
    cr_assert_eq(l2_stat(ch, "queued_now"), 0, "nothing queued");

    /* Another client's write still reaches Redis at once (not queued behind a "down" L2). */
    khala_chan_t *other = NULL;
    char err[256];
    cr_assert_eq(khala__chan_open(khalad_sock, khalad_name, 5000, &other, err, sizeof(err)), 0);
    cr_assert_eq(raw(other, KHALA_OP_PUT, "other", "v", 0, msg, sizeof(msg)), 0, "%s", msg);
    cr_assert_gt(redis_pttl("other"), 0, "the other client's write is in Redis");

    /* The maximum is accepted, with its TTL in Redis. */
    cr_assert_eq(raw(ch, KHALA_OP_PUT, "max", "v", KHALA_TTL_MAX_MS, msg, sizeof(msg)), 0, "%s",
                 msg);
    long long pttl = redis_pttl("max");
    cr_assert(pttl > (long long)(KHALA_TTL_MAX_MS - 3600000) && pttl <= (long long)KHALA_TTL_MAX_MS,
              "PTTL %lld", pttl);

    /* touch: the same boundary. */
    cr_assert_eq(raw(ch, KHALA_OP_TOUCH, "max", NULL, INT64_MAX, msg, sizeof(msg)), KHALA_EINVAL,
                 "%s", msg);
    cr_assert_eq(raw(ch, KHALA_OP_TOUCH, "max", NULL, 60000, msg, sizeof(msg)), 0, "%s", msg);
    cr_assert_eq(l2_stat(ch, "healthy"), 1);
    khala__chan_close(other);
    khala__chan_close(ch);
}

/* The library refuses the same TTLs before sending: KHALA_EINVAL with the limit in
 * khala_cache_errmsg(), for put, touch and get_or_load (whose loader never runs). */
static int never_load(void *arg, const void *key, size_t klen, void *buf, size_t cap, size_t *len) {
    (void)key, (void)klen, (void)buf, (void)cap, (void)len;
    ++*(int *)arg;
    return 0;
}

Test(l2_refusals, the_library_refuses_a_ttl_above_the_maximum_before_sending) {
    khala_chan_t *ch = start();
    khala_cache_options_t o;
    khala_cache_options_init(&o);
    o.socket_path = khalad_sock;
    khala_cache_t *c = NULL;
    cr_assert_eq(khala_cache_open(khalad_name, &o, &c), 0, "%s", khala_cache_errmsg(NULL));
    khala_put_options_t po;
    khala_put_options_init(&po);
    po.ttl_ms = INT64_MAX;
    cr_assert_eq(khala_cache_put(c, "k", 1, "v", 1, &po, NULL), KHALA_EINVAL);
    cr_assert(strstr(khala_cache_errmsg(c), "max"), "%s", khala_cache_errmsg(c));
    cr_assert_eq(khala_cache_touch(c, "k", 1, UINT64_MAX), KHALA_EINVAL);
    int loads = 0;
    char buf[16];
    size_t len = 0;
    cr_assert_eq(khala_cache_get_or_load(c, "k", 1, never_load, &loads, buf, sizeof(buf), &len,
                                         KHALA_TYPE_MEMORY_ENTITY, (uint64_t)INT64_MAX + 1),
                 KHALA_EINVAL);
    cr_assert_eq(loads, 0, "the loader ran");
    po.ttl_ms = KHALA_TTL_MAX_MS;
    cr_assert_eq(khala_cache_put(c, "k", 1, "v", 1, &po, NULL), 0, "%s", khala_cache_errmsg(c));
    cr_assert_eq(l2_stat(ch, "healthy"), 1);
    khala_cache_close(c);
    khala__chan_close(ch);
}

/* Redis out of memory for a write (maxmemory tiny, noeviction): the write-through put fails with
 * KHALA_EREFUSED and Redis's "OOM" text; L2 stays up (reads still go to it), nothing is queued,
 * and once Redis has room the next put goes straight in. Before, the OOM reply marked L2 down
 * for every client and queued the write. */
Test(l2_refusals, redis_out_of_memory_fails_that_write_and_l2_stays_up) {
    khala_chan_t *ch = start();
    char msg[256];
    cr_assert_eq(raw(ch, KHALA_OP_PUT, "before", "v", 0, msg, sizeof(msg)), 0, "%s", msg);
    redisContext *rc = redis();
    redis_ok(rc, "CONFIG SET maxmemory-policy noeviction");
    redis_ok(rc, "CONFIG SET maxmemory 1");
    int r = raw(ch, KHALA_OP_PUT, "oom", "v", 0, msg, sizeof(msg));
    cr_assert_eq(r, KHALA_EREFUSED, "%s (%s)", khala_strerror(r), msg);
    cr_assert(strstr(msg, "OOM"), "Redis's reason is in the message: %s", msg);
    cr_assert_eq(l2_stat(ch, "healthy"), 1, "one refused write does not make L2 down");
    cr_assert_eq(l2_stat(ch, "outages"), 0);
    cr_assert_eq(l2_stat(ch, "queued_now"), 0, "the refused write was not queued");
    cr_assert_eq(raw_get(ch, "oom"), KHALA_ENOTFOUND, "L1 did not keep the refused write");
    cr_assert_eq(redis_pttl("oom"), -2);
    redis_ok(rc, "CONFIG SET maxmemory 0");
    cr_assert_eq(raw(ch, KHALA_OP_PUT, "oom", "v", 0, msg, sizeof(msg)), 0, "%s", msg);
    cr_assert_neq(redis_pttl("oom"), -2, "the write after went straight to Redis");
    redisFree(rc);
    khala__chan_close(ch);
}
