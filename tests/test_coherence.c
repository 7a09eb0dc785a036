/*
 * Cross-host invalidation (daemon/coherence.c) against real Redis servers: two handles on one
 * namespace hear each other and not themselves; namespaces are isolated; garbage on the channel
 * is counted and ignored; a killed, hung or absent server is reported LOST once and REGAINED
 * when it comes back; a cluster broadcasts; real processes talk through it.
 *
 * The servers come from scripts/test-servers.sh (KHALA_TEST_REDIS_*). Tests that kill a server
 * start a private redis-server of their own (tests/redis_util.h). Waits are polls on the
 * handles' descriptors with generous deadlines; nothing asserts a duration.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <msgpack.h>

#include "coherence.h"
#include "config.h"
#include "khala/error.h"
#include "redis_util.h"
#include "sys.h"
#include "testutil.h"

#define DEADLINE_MS 10000
#define MAX_SEEN 64

/* What one handle's callbacks saw. */
typedef struct seen {
    int n;
    khala_inv_t m[MAX_SEEN]; /* key points into keys[i] */
    uint8_t keys[MAX_SEEN][KHALA_KEY_MAX];
    int lost, regained;
    char why[512];
} seen_t;

static void on_inval(void *arg, const khala_inv_t *m) {
    seen_t *s = arg;
    cr_assert_lt(s->n, MAX_SEEN);
    s->m[s->n] = *m;
    if (m->klen) {
        memcpy(s->keys[s->n], m->key, m->klen);
        s->m[s->n].key = s->keys[s->n];
    }
    s->n++;
}

static void on_event(void *arg, khala_coh_event_t ev, const char *why) {
    seen_t *s = arg;
    if (ev == KHALA_COH_LOST)
        s->lost++;
    else
        s->regained++;
    snprintf(s->why, sizeof(s->why), "%s", why);
}

/* A namespace unique to this process and tag. */
static const char *ns(const char *tag) {
    static char buf[4][KHALA_NAME_MAX + 1];
    static int i;
    char *b = buf[i++ % 4];
    snprintf(b, KHALA_NAME_MAX + 1, "%s", tu_name(tag));
    return b;
}

static khala_coherence_t *open_coh(const char *url, const char *nsp, seen_t *s,
                                   unsigned timeout_ms) {
    khala_coherence_opts_t o = {url, nsp, timeout_ms};
    khala_coherence_cb_t cb = {on_inval, on_event, s};
    khala_coherence_t *c = NULL;
    char err[512] = "";
    int rc = khala__coherence_open(&o, &cb, &c, err, sizeof(err));
    cr_assert_eq(rc, 0, "open %s: %d %s", url, rc, err);
    return c;
}

/* Run the handles' loop (poll on their descriptors, readable, tick) until done() says so or
 * the deadline passes; returns done()'s last answer. */
typedef int (*done_fn)(void *arg);

static int pump(khala_coherence_t **cs, int n, done_fn done, void *arg, int64_t ms) {
    int64_t end = khala__sys_now_ms() + ms;
    for (;;) {
        if (done && done(arg))
            return 1;
        int64_t now = khala__sys_now_ms();
        if (now >= end)
            return done ? done(arg) : 1;
        struct pollfd p[8];
        for (int i = 0; i < n; i++)
            p[i] = (struct pollfd){.fd = khala__coherence_fd(cs[i]), .events = POLLIN};
        (void)poll(p, (nfds_t)n, 10);
        for (int i = 0; i < n; i++) {
            if (p[i].revents & POLLIN)
                khala__coherence_readable(cs[i]);
            khala__coherence_tick(cs[i], khala__sys_now_ms());
        }
    }
}

static int seen_at_least(void *arg) {
    const int *want = ((const void **)arg)[1];
    const seen_t *s = ((const void **)arg)[0];
    return s->n >= *want;
}

/* Pump until s has at least want messages. */
static void wait_msgs(khala_coherence_t **cs, int n, seen_t *s, int want) {
    const void *arg[2] = {s, &want};
    cr_assert(pump(cs, n, seen_at_least, arg, DEADLINE_MS), "got %d of %d messages", s->n, want);
}

static int own_at_least(void *arg) {
    khala_coherence_t *c = ((void **)arg)[0];
    const uint64_t *want = ((void **)arg)[1];
    khala_coherence_stats_t st;
    khala__coherence_stats(c, &st);
    return st.ignored_own >= *want;
}

/* Pump until c heard want of its own messages back: a barrier, as Redis delivers in order. */
static void wait_own(khala_coherence_t **cs, int n, khala_coherence_t *c, uint64_t want) {
    void *arg[2] = {c, &want};
    cr_assert(pump(cs, n, own_at_least, arg, DEADLINE_MS), "own messages did not come back");
}

static int events_at_least(void *arg) {
    const seen_t *s = ((const void **)arg)[0];
    const int *lost = ((const void **)arg)[1], *regained = ((const void **)arg)[2];
    return s->lost >= *lost && s->regained >= *regained;
}

static void wait_events(khala_coherence_t **cs, int n, seen_t *s, int lost, int regained) {
    const void *arg[3] = {s, &lost, &regained};
    cr_assert(pump(cs, n, events_at_least, arg, DEADLINE_MS),
              "expected %d LOST / %d REGAINED, saw %d / %d (%s)", lost, regained, s->lost,
              s->regained, s->why);
}

static void publish_key(khala_coherence_t *c, const char *key, uint64_t version) {
    khala_inv_t m = {.by = KHALA_INV_KEY, .key = key, .klen = strlen(key), .version = version};
    int rc = khala__coherence_publish(c, &m);
    cr_assert_eq(rc, 0, "publish: %d %s", rc, khala__coherence_errmsg(c));
}

/* ---- A private redis-server ------------------------------------------------------------- */

static tu_redis_t g_server; /* stopped by teardown */

static void teardown(void) {
    tu_redis_stop(&g_server);
}

TestSuite(coherence, .fini = teardown, .timeout = 60);

/* ---- Tests ------------------------------------------------------------------------------- */

Test(coherence, two_instances_hear_each_other_and_not_themselves) {
    const char *url = tu_redis_env("KHALA_TEST_REDIS_URL");
    const char *n = ns("pair");
    static seen_t sa, sb;
    khala_coherence_t *cs[2] = {open_coh(url, n, &sa, 0), open_coh(url, n, &sb, 0)};
    cr_assert(khala__coherence_subscribed(cs[0]) && khala__coherence_subscribed(cs[1]));

    static const char bin_key[] = {'a', '\0', 'b', '\0', '\xff'};
    khala_inv_t msgs[] = {
        {.by = KHALA_INV_KEY, .key = bin_key, .klen = sizeof(bin_key), .version = 7},
        {.by = KHALA_INV_KEY, .key = "gone", .klen = 4, .version = 0},
        {.by = KHALA_INV_PREFIX, .key = "user:\0", .klen = 6},
        {.by = KHALA_INV_TYPE, .type = KHALA_TYPE_EMBEDDING},
        {.by = KHALA_INV_ALL, .type = KHALA_INV_ALL_TYPES},
        {.by = KHALA_INV_ALL, .type = KHALA_TYPE_CONSOLIDATION},
    };
    int nm = (int)(sizeof(msgs) / sizeof(msgs[0]));
    for (int i = 0; i < nm; i++)
        cr_assert_eq(khala__coherence_publish(cs[0], &msgs[i]), 0, "%s",
                     khala__coherence_errmsg(cs[0]));
    publish_key(cs[1], "from-b", 3);

    wait_msgs(cs, 2, &sb, nm);
    wait_msgs(cs, 2, &sa, 1);
    wait_own(cs, 2, cs[0], (uint64_t)nm);
    wait_own(cs, 2, cs[1], 1);

    cr_assert_eq(sb.n, nm);
    for (int i = 0; i < nm; i++) {
        cr_assert_eq(sb.m[i].by, msgs[i].by, "message %d", i);
        cr_assert_eq(sb.m[i].klen, msgs[i].klen, "message %d", i);
        if (msgs[i].klen)
            cr_assert_eq(memcmp(sb.m[i].key, msgs[i].key, msgs[i].klen), 0, "message %d", i);
        int type =
            msgs[i].by == KHALA_INV_KEY || msgs[i].by == KHALA_INV_PREFIX ? -1 : msgs[i].type;
        cr_assert_eq(sb.m[i].type, type, "message %d", i);
        cr_assert_eq(sb.m[i].version, msgs[i].version, "message %d", i);
    }
    cr_assert_eq(sa.n, 1, "A hears B's message and none of its own");
    cr_assert_eq(sa.m[0].klen, 6);
    cr_assert_eq(memcmp(sa.m[0].key, "from-b", 6), 0);
    cr_assert_eq(sa.m[0].version, 3);

    khala_coherence_stats_t st;
    khala__coherence_stats(cs[0], &st);
    cr_assert_eq(st.published, (uint64_t)nm);
    cr_assert_eq(st.received, 1);
    cr_assert_eq(st.ignored_own, (uint64_t)nm);
    cr_assert_eq(st.malformed, 0);
    cr_assert_eq(st.losses, 0);
    cr_assert_eq(sa.lost + sa.regained + sb.lost + sb.regained, 0, "a clean start reports nothing");
    khala__coherence_close(cs[0]);
    khala__coherence_close(cs[1]);
}

Test(coherence, unix_socket_and_tcp_handles_share_the_channel) {
    const char *n = ns("unix");
    static seen_t su, st;
    khala_coherence_t *cs[2] = {open_coh(tu_redis_env("KHALA_TEST_REDIS_UNIX_URL"), n, &su, 0),
                                open_coh(tu_redis_env("KHALA_TEST_REDIS_URL"), n, &st, 0)};
    publish_key(cs[0], "over-unix", 1);
    publish_key(cs[1], "over-tcp", 2);
    wait_msgs(cs, 2, &su, 1);
    wait_msgs(cs, 2, &st, 1);
    cr_assert_eq(memcmp(st.m[0].key, "over-unix", 9), 0);
    cr_assert_eq(memcmp(su.m[0].key, "over-tcp", 8), 0);
    khala__coherence_close(cs[0]);
    khala__coherence_close(cs[1]);
}

Test(coherence, namespaces_are_isolated) {
    const char *url = tu_redis_env("KHALA_TEST_REDIS_URL");
    const char *n1 = ns("iso1"), *n2 = ns("iso2");
    static seen_t sa, sb, sc;
    khala_coherence_t *cs[3] = {open_coh(url, n1, &sa, 0), open_coh(url, n2, &sb, 0),
                                open_coh(url, n1, &sc, 0)};
    publish_key(cs[0], "ns1-key", 1);
    wait_msgs(cs, 3, &sc, 1);
    /* B's own message comes back after anything published before it on any channel it hears. */
    publish_key(cs[1], "ns2-key", 1);
    wait_own(cs, 3, cs[1], 1);
    cr_assert_eq(sb.n, 0, "B (another namespace) heard A");
    cr_assert_eq(sa.n, 0, "A heard B (another namespace)");
    cr_assert_eq(sc.n, 1);
    for (int i = 0; i < 3; i++)
        khala__coherence_close(cs[i]);
}

/* A raw PUBLISH of len bytes on the channel of namespace n. */
static void raw_publish(redisContext *r, const char *n, const void *p, size_t len) {
    char ch[128];
    snprintf(ch, sizeof(ch), "khala:%s:inv", n);
    redisReply *rep = redisCommand(r, "PUBLISH %s %b", ch, p, len);
    cr_assert(rep && rep->type == REDIS_REPLY_INTEGER, "raw PUBLISH failed");
    freeReplyObject(rep);
}

static void pack_str(msgpack_packer *pk, const char *s) {
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* A message with a klen-byte key from origin 42, plus a field of a later version. */
static void pack_valid(msgpack_sbuffer *sbuf, const uint8_t *key, size_t klen) {
    msgpack_sbuffer_init(sbuf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, sbuf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    pack_str(&pk, "o");
    msgpack_pack_uint64(&pk, 42);
    pack_str(&pk, "by");
    pack_str(&pk, "key");
    pack_str(&pk, "k");
    msgpack_pack_bin_with_body(&pk, key, klen);
    pack_str(&pk, "zz-future-field"); /* unknown scalar fields are skipped */
    msgpack_pack_int64(&pk, -5);
}

#define J(lit)                                                                                     \
    { lit, sizeof(lit) - 1 }

Test(coherence, garbage_on_the_channel_is_counted_malformed_and_ignored) {
    const char *url = tu_redis_env("KHALA_TEST_REDIS_URL");
    const char *n = ns("garbage");
    static seen_t sa, sb;
    khala_coherence_t *cs[2] = {open_coh(url, n, &sa, 0), open_coh(url, n, &sb, 0)};
    khala_config_redis_url_t u;
    cr_assert_eq(khala__config_redis_url_parse(url, &u, NULL, 0), 0);
    redisContext *raw = redisConnect(u.host, (int)u.port);
    cr_assert(raw && !raw->err);

    /* Hand-made garbage, each one malformed for a different reason. */
    static const struct {
        const char *p;
        size_t len;
    } junk[] = {
        /* ("\x62" is 'b' and "\x61" 'a', written so when a hex digit would follow an escape) */
        J(""),
        J("hello"),
        J("\xdd\xff\xff\xff\xff"),                              /* array of 2^32-1, no bytes */
        J("\xdf\xff\xff\xff\xff"),                              /* map of 2^32-1, no bytes */
        J("\x81\xa1o"),                                         /* truncated */
        J("\x82\xa1o\x01\xa2\x62y\xa4nope"),                    /* unknown kind */
        J("\x82\xa1o\x01\xa2\x62y\xa3key"),                     /* key without "k" */
        J("\x82\xa1o\x01\xa2\x62y\xa4type"),                    /* type without "t" */
        J("\x83\xa1o\x01\xa2\x62y\xa4type\xa1t\x08"),           /* type 8 */
        J("\x83\xa1o\x01\xa2\x62y\xa3\x61ll\xa1k\xc4\x01x"),    /* "k" on a flush */
        J("\x83\xa1o\x01\xa2\x62y\xa3key\xa1k\xc4\x00"),        /* empty key */
        J("\x83\xa1o\x01\xa2\x62y\xa3key\xa1k\xc4\x05x"),       /* bin longer than its bytes */
        J("\x83\xa1o\x01\xa2\x62y\xa3\x61ll\xa1x\x80"),         /* nested map */
        J("\x83\xa1o\x01\xa1o\x02\xa2\x62y\xa3\x61ll"),         /* duplicate field */
        J("\x82\xa1o\xa1x\xa2\x62y\xa3\x61ll"),                 /* origin not a number */
        J("\x82\xa1o\x01\xa2\x62y\xa3\x61ll\x00"),              /* trailing byte */
        J("\x84\xa1o\x01\xa2\x62y\xa3key\xa1k\xa1x\xa1v\xa1x"), /* version not a number */
        J("\x92\x01\x02"),                                      /* an array */
    };
    uint64_t nj = sizeof(junk) / sizeof(junk[0]);
    for (uint64_t i = 0; i < nj; i++)
        raw_publish(raw, n, junk[i].p, junk[i].len);

    /* A key one byte too long (malformed), one at the limit (valid), and every strict prefix
     * of the valid one (malformed). */
    uint8_t key[KHALA_KEY_MAX + 1];
    memset(key, 'k', sizeof(key));
    msgpack_sbuffer too_long, valid;
    pack_valid(&too_long, key, KHALA_KEY_MAX + 1);
    pack_valid(&valid, key, KHALA_KEY_MAX);
    raw_publish(raw, n, too_long.data, too_long.size);
    raw_publish(raw, n, valid.data, valid.size);
    for (size_t cut = 0; cut < valid.size; cut++)
        raw_publish(raw, n, valid.data, cut);
    uint64_t want_malformed = nj + 1 + valid.size;
    uint64_t total = want_malformed + 1;
    msgpack_sbuffer_destroy(&too_long);
    msgpack_sbuffer_destroy(&valid);

    /* Random bytes, half of them starting as a map: whatever they decode to, nothing crashes
     * and every payload is counted once. */
    uint64_t rng = 0x9e3779b97f4a7c15u;
    for (int i = 0; i < 200; i++, total++) {
        uint8_t buf[64];
        size_t len = 1 + tu_rand(&rng) % sizeof(buf);
        for (size_t j = 0; j < len; j++)
            buf[j] = (uint8_t)tu_rand(&rng);
        if (i % 2)
            buf[0] = (uint8_t)(0x80 | (buf[0] & 0x0f));
        raw_publish(raw, n, buf, len);
    }

    /* Later messages still flow. */
    publish_key(cs[0], "after-garbage", 9);
    total++;
    int64_t end = khala__sys_now_ms() + DEADLINE_MS;
    while (khala__sys_now_ms() < end &&
           (sb.n == 0 || memcmp(sb.m[sb.n - 1].key, "after-garbage", 13) != 0))
        pump(cs, 2, NULL, NULL, 20);
    cr_assert(sb.n > 0 && sb.m[sb.n - 1].klen == 13 &&
                  memcmp(sb.m[sb.n - 1].key, "after-garbage", 13) == 0,
              "the message after the garbage did not arrive");
    cr_assert(khala__coherence_subscribed(cs[1]), "garbage must not disconnect");

    khala_coherence_stats_t st;
    khala__coherence_stats(cs[1], &st);
    cr_assert_eq(st.received + st.malformed, total, "received %llu + malformed %llu != %llu",
                 (unsigned long long)st.received, (unsigned long long)st.malformed,
                 (unsigned long long)total);
    cr_assert_geq(st.malformed, want_malformed, "malformed %llu, want at least %llu",
                  (unsigned long long)st.malformed, (unsigned long long)want_malformed);
    cr_assert_eq(sb.m[0].klen, KHALA_KEY_MAX, "the key at the limit was accepted");
    cr_assert_eq(sb.m[0].type, -1);
    cr_assert_eq(sa.lost + sb.lost, 0);

    redisFree(raw);
    khala__coherence_close(cs[0]);
    khala__coherence_close(cs[1]);
}

Test(coherence, publish_refuses_bad_messages) {
    static seen_t sa;
    khala_coherence_t *c = open_coh(tu_redis_env("KHALA_TEST_REDIS_URL"), ns("bad"), &sa, 0);
    uint8_t big[KHALA_KEY_MAX + 1] = {0};
    khala_inv_t m = {.by = KHALA_INV_KEY, .key = big, .klen = sizeof(big)};
    cr_assert_eq(khala__coherence_publish(c, &m), KHALA_EKEY);
    m.klen = 0;
    cr_assert_eq(khala__coherence_publish(c, &m), KHALA_EKEY);
    m = (khala_inv_t){.by = KHALA_INV_PREFIX, .key = NULL, .klen = 3};
    cr_assert_eq(khala__coherence_publish(c, &m), KHALA_EKEY);
    m = (khala_inv_t){.by = KHALA_INV_TYPE, .type = KHALA_TYPE_COUNT};
    cr_assert_eq(khala__coherence_publish(c, &m), -EINVAL);
    m = (khala_inv_t){.by = KHALA_INV_TYPE, .type = -1};
    cr_assert_eq(khala__coherence_publish(c, &m), -EINVAL);
    m = (khala_inv_t){.by = (khala_inv_by_t)9};
    cr_assert_eq(khala__coherence_publish(c, &m), -EINVAL);
    khala_coherence_stats_t st;
    khala__coherence_stats(c, &st);
    cr_assert_eq(st.published + st.publish_errors, 0, "nothing reached the server");
    khala__coherence_close(c);
}

Test(coherence, open_refuses_bad_url_credentials_and_namespace) {
    static seen_t s;
    khala_coherence_cb_t cb = {on_inval, on_event, &s};
    khala_coherence_t *c = (khala_coherence_t *)&s; /* must stay untouched */
    char err[512];
    khala_coherence_opts_t o = {"http://127.0.0.1:1", "x", 200};
    cr_assert_eq(khala__coherence_open(&o, &cb, &c, err, sizeof(err)), KHALA_ECONFIG);
    cr_assert(strstr(err, "redis_url"), "%s", err);
    cr_assert_eq(c, (khala_coherence_t *)&s);

    khala_config_redis_url_t u;
    cr_assert_eq(khala__config_redis_url_parse(tu_redis_env("KHALA_TEST_REDIS_URL"), &u, NULL, 0),
                 0);
    char url[600];
    snprintf(url, sizeof(url), "redis://:wrong-password@%s:%u", u.host, (unsigned)u.port);
    o = (khala_coherence_opts_t){url, "x", 1000};
    cr_assert_eq(khala__coherence_open(&o, &cb, &c, err, sizeof(err)), KHALA_ECONFIG);
    cr_assert(strstr(err, "AUTH"), "the message names the refusal: %s", err);

    o = (khala_coherence_opts_t){tu_redis_env("KHALA_TEST_REDIS_URL"), "", 1000};
    cr_assert_eq(khala__coherence_open(&o, &cb, &c, err, sizeof(err)), KHALA_ECONFIG);
    o.ns = "x";
    khala_coherence_cb_t nocb = {on_inval, NULL, &s};
    cr_assert_eq(khala__coherence_open(&o, &nocb, &c, err, sizeof(err)), KHALA_ECONFIG);
    cr_assert_eq(s.lost + s.regained, 0, "no callback from a failing open");
}

Test(coherence, killed_server_is_lost_once_and_regained_after_restart) {
    tu_redis_start(&g_server, NULL);
    unsigned port = g_server.port;
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%u", port);
    const char *n = ns("kill");
    static seen_t sa, sb;
    khala_coherence_t *cs[2] = {open_coh(url, n, &sa, 300), open_coh(url, n, &sb, 300)};
    publish_key(cs[0], "before", 1);
    wait_msgs(cs, 2, &sb, 1);

    tu_redis_kill(&g_server);
    wait_events(cs, 2, &sa, 1, 0);
    wait_events(cs, 2, &sb, 1, 0);
    cr_assert(!khala__coherence_subscribed(cs[0]));
    char port_s[16];
    snprintf(port_s, sizeof(port_s), ":%u", port);
    cr_assert(strstr(sa.why, port_s), "LOST names the server: %s", sa.why);

    khala_inv_t m = {.by = KHALA_INV_KEY, .key = "during", .klen = 6};
    cr_assert_eq(khala__coherence_publish(cs[0], &m), KHALA_ETIER);
    const char *msg = khala__coherence_errmsg(cs[0]);
    cr_assert(strstr(msg, port_s) && strstr(msg, "connect"), "names server and cause: %s", msg);
    cr_assert_eq(khala__coherence_publish(cs[0], &m), KHALA_ETIER, "fails fast in backoff");

    /* Several reconnect attempts fail: still one LOST each. */
    pump(cs, 2, NULL, NULL, 500);
    cr_assert_eq(sa.lost, 1);
    cr_assert_eq(sb.lost, 1);
    cr_assert_eq(sa.regained + sb.regained, 0);

    tu_redis_start(&g_server, NULL);
    wait_events(cs, 2, &sa, 1, 1);
    wait_events(cs, 2, &sb, 1, 1);
    cr_assert(khala__coherence_subscribed(cs[0]) && khala__coherence_subscribed(cs[1]));
    /* The publisher may still be in its backoff from the failed attempts: retry until it is
     * through, as khalad's next put would. */
    int rc = KHALA_ETIER;
    int64_t end = khala__sys_now_ms() + DEADLINE_MS;
    while (rc != 0 && khala__sys_now_ms() < end) {
        m = (khala_inv_t){.by = KHALA_INV_KEY, .key = "after", .klen = 5, .version = 2};
        rc = khala__coherence_publish(cs[0], &m);
        if (rc != 0)
            pump(cs, 2, NULL, NULL, 50);
    }
    cr_assert_eq(rc, 0, "%s", khala__coherence_errmsg(cs[0]));
    wait_msgs(cs, 2, &sb, 2);
    cr_assert_eq(memcmp(sb.m[1].key, "after", 5), 0);
    cr_assert_eq(sa.lost, 1);
    khala_coherence_stats_t st;
    khala__coherence_stats(cs[1], &st);
    cr_assert_eq(st.losses, 1);
    cr_assert_eq(st.reconnects, 1);
    khala__coherence_close(cs[0]);
    khala__coherence_close(cs[1]);
}

Test(coherence, hung_server_is_lost_by_the_liveness_ping) {
    tu_redis_start(&g_server, NULL);
    unsigned port = g_server.port;
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%u", port);
    static seen_t sa;
    khala_coherence_t *cs[1] = {open_coh(url, ns("hung"), &sa, 200)};
    kill(g_server.pid, SIGSTOP);
    wait_events(cs, 1, &sa, 1, 0);
    cr_assert(strstr(sa.why, "PING"), "the cause is the unanswered PING: %s", sa.why);
    khala_inv_t m = {.by = KHALA_INV_KEY, .key = "k", .klen = 1};
    cr_assert_eq(khala__coherence_publish(cs[0], &m), KHALA_ETIER);
    kill(g_server.pid, SIGCONT);
    wait_events(cs, 1, &sa, 1, 1);
    cr_assert_eq(sa.lost, 1);
    khala__coherence_close(cs[0]);
}

Test(coherence, open_against_a_dead_server_starts_down_and_regains) {
    unsigned port = g_server.port = tu_redis_free_port();
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%u", port);
    const char *n = ns("dead");
    static seen_t sa, sb;
    khala_coherence_t *cs[2] = {open_coh(url, n, &sa, 300), NULL};
    cr_assert_eq(khala__coherence_subscribed(cs[0]), 0);
    cr_assert_geq(khala__coherence_fd(cs[0]), 0, "the descriptor exists from open on");
    cr_assert_eq(sa.lost + sa.regained, 0, "open itself calls nothing back");
    khala_inv_t m = {.by = KHALA_INV_KEY, .key = "k", .klen = 1};
    cr_assert_eq(khala__coherence_publish(cs[0], &m), KHALA_ETIER);
    /* The LOST owed since open comes with the first tick, once. */
    pump(cs, 1, NULL, NULL, 300);
    cr_assert_eq(sa.lost, 1);
    cr_assert_eq(sa.regained, 0);
    cr_assert(strstr(sa.why, "not subscribed at start"), "%s", sa.why);

    tu_redis_start(&g_server, NULL);
    wait_events(cs, 1, &sa, 1, 1);
    cs[1] = open_coh(url, n, &sb, 300);
    cr_assert_eq(sb.lost + sb.regained, 0);
    int rc = KHALA_ETIER;
    int64_t end = khala__sys_now_ms() + DEADLINE_MS;
    while (rc != 0 && khala__sys_now_ms() < end) {
        rc = khala__coherence_publish(cs[0], &m);
        if (rc != 0)
            pump(cs, 2, NULL, NULL, 50);
    }
    cr_assert_eq(rc, 0, "%s", khala__coherence_errmsg(cs[0]));
    publish_key(cs[1], "from-b", 1);
    wait_msgs(cs, 2, &sb, 1);
    wait_msgs(cs, 2, &sa, 1);
    khala__coherence_close(cs[0]);
    khala__coherence_close(cs[1]);
}

Test(coherence, cluster_broadcasts_between_nodes) {
    khala_config_redis_url_t u;
    cr_assert_eq(
        khala__config_redis_url_parse(tu_redis_env("KHALA_TEST_REDIS_CLUSTER_URL"), &u, NULL, 0),
        0);
    char url1[600], url2[600];
    snprintf(url1, sizeof(url1), "redis://%s:%u", u.host, (unsigned)u.port);
    snprintf(url2, sizeof(url2), "redis://%s:%u", u.host, (unsigned)u.port + 1);
    const char *n = ns("cluster");
    static seen_t sa, sb;
    khala_coherence_t *cs[2] = {open_coh(url1, n, &sa, 0), open_coh(url2, n, &sb, 0)};
    publish_key(cs[0], "via-node-1", 1);
    publish_key(cs[1], "via-node-2", 2);
    wait_msgs(cs, 2, &sb, 1);
    wait_msgs(cs, 2, &sa, 1);
    cr_assert_eq(memcmp(sb.m[0].key, "via-node-1", 10), 0);
    cr_assert_eq(memcmp(sa.m[0].key, "via-node-2", 10), 0);
    khala__coherence_close(cs[0]);
    khala__coherence_close(cs[1]);
}

Test(coherence, separate_processes_exchange_invalidations) {
    const char *url = tu_redis_env("KHALA_TEST_REDIS_URL");
    const char *n = ns("procs");
    int ready[2];
    cr_assert_eq(pipe(ready), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        /* The child: subscribe, say so, wait for the parent's key, answer with its own. */
        close(ready[0]);
        static seen_t sc;
        khala_coherence_opts_t o = {url, n, 0};
        khala_coherence_cb_t cb = {on_inval, on_event, &sc};
        khala_coherence_t *c = NULL;
        if (khala__coherence_open(&o, &cb, &c, NULL, 0) != 0)
            _exit(2);
        if (write(ready[1], "r", 1) != 1)
            _exit(3);
        khala_coherence_t *cs[1] = {c};
        int64_t end = khala__sys_now_ms() + DEADLINE_MS;
        while (sc.n == 0 && khala__sys_now_ms() < end)
            pump(cs, 1, NULL, NULL, 20);
        if (sc.n != 1 || sc.m[0].klen != 10 || memcmp(sc.m[0].key, "from-paren", 10) != 0)
            _exit(4);
        khala_inv_t m = {.by = KHALA_INV_PREFIX, .key = "from-child", .klen = 10};
        if (khala__coherence_publish(c, &m) != 0)
            _exit(5);
        khala__coherence_close(c);
        _exit(0);
    }
    close(ready[1]);
    static seen_t sp;
    khala_coherence_t *cs[1] = {open_coh(url, n, &sp, 0)};
    char b;
    cr_assert_eq(read(ready[0], &b, 1), 1, "the child did not subscribe");
    publish_key(cs[0], "from-paren", 5);
    wait_msgs(cs, 1, &sp, 1);
    cr_assert_eq(sp.m[0].by, KHALA_INV_PREFIX);
    cr_assert_eq(memcmp(sp.m[0].key, "from-child", 10), 0);
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    khala__coherence_close(cs[0]);
}

/* A private server's URL, for a user (NULL: none). */
static void private_url(char *url, size_t cap, const char *user) {
    if (user)
        snprintf(url, cap, "redis://%s:pw@127.0.0.1:%u", user, g_server.port);
    else
        snprintf(url, cap, "redis://127.0.0.1:%u", g_server.port);
}

/* A command on the private server, which must succeed. */
static void admin(const char *cmd) {
    redisContext *r = redisConnect("127.0.0.1", (int)g_server.port);
    cr_assert(r && !r->err);
    redisReply *rep = redisCommand(r, cmd);
    cr_assert(rep && rep->type != REDIS_REPLY_ERROR, "%s: %s", cmd, rep ? rep->str : r->errstr);
    freeReplyObject(rep);
    redisFree(r);
}

/* A publisher whose server restarted unseen (no read of the subscription in between noticed
 * it) still publishes at the first try: the dead connection is replaced at once. */
Test(coherence, a_publisher_outlives_a_server_restart_it_did_not_see) {
    signal(SIGPIPE, SIG_IGN); /* as khalad; a write to the dead connection may raise it */
    tu_redis_start(&g_server, NULL);
    char url[64];
    private_url(url, sizeof(url), NULL);
    static seen_t sa;
    khala_coherence_t *cs[1] = {open_coh(url, ns("restart"), &sa, 1000)};
    publish_key(cs[0], "before", 1);
    tu_redis_kill(&g_server);
    tu_redis_start(&g_server, NULL);
    publish_key(cs[0], "after", 2);
    khala_coherence_stats_t st;
    khala__coherence_stats(cs[0], &st);
    cr_assert_eq(st.published, 2);
    cr_assert_eq(st.publish_errors, 0);
    /* The subscription did die with the server: lost, then regained. */
    wait_events(cs, 1, &sa, 1, 1);
    khala__coherence_close(cs[0]);
}

/* Redis ACLs: a user who may not SUBSCRIBE is refused at open (a configuration error, naming
 * the channel and the server's answer); one who may not PUBLISH opens, and each publish fails
 * with the server's answer while the subscription goes on. */
Test(coherence, a_user_without_rights_on_the_channel_is_refused_clearly) {
    tu_redis_start(&g_server, NULL);
    admin("ACL SETUSER nosub on >pw ~* &* +@all -subscribe");
    admin("ACL SETUSER nopub on >pw ~* &* +@all -publish");
    char url[128], err[512] = "";
    static seen_t sa, sb;
    const char *n = ns("acl");
    private_url(url, sizeof(url), "nosub");
    khala_coherence_opts_t o = {url, n, 1000};
    khala_coherence_cb_t cb = {on_inval, on_event, &sa};
    khala_coherence_t *c = NULL;
    cr_assert_eq(khala__coherence_open(&o, &cb, &c, err, sizeof(err)), KHALA_ECONFIG, "%s", err);
    cr_assert(strstr(err, "SUBSCRIBE") && strstr(err, "refused") && strstr(err, n) &&
                  strstr(err, "NOPERM"),
              "%s", err);
    cr_assert_null(c);

    private_url(url, sizeof(url), "nopub");
    khala_coherence_t *cs[2] = {open_coh(url, n, &sa, 1000), NULL};
    khala_inv_t m = {.by = KHALA_INV_KEY, .key = "k", .klen = 1};
    cr_assert_eq(khala__coherence_publish(cs[0], &m), KHALA_ETIER);
    const char *msg = khala__coherence_errmsg(cs[0]);
    cr_assert(strstr(msg, "PUBLISH") && strstr(msg, "refused") && strstr(msg, "NOPERM"), "%s", msg);
    khala_coherence_stats_t st;
    khala__coherence_stats(cs[0], &st);
    cr_assert_eq(st.publish_errors, 1);
    cr_assert(khala__coherence_subscribed(cs[0]), "a publisher failure leaves the subscription");
    /* It still hears the others. */
    private_url(url, sizeof(url), NULL);
    cs[1] = open_coh(url, n, &sb, 1000);
    publish_key(cs[1], "k", 1);
    wait_msgs(cs, 2, &sa, 1);
    cr_assert_eq(sa.lost, 0);
    khala__coherence_close(cs[0]);
    khala__coherence_close(cs[1]);
}

/* The liveness PING: an answered one keeps the subscription past the deadline an unanswered
 * one would miss, cycle after cycle. The clock passed to tick() is moved on by hand. */
Test(coherence, an_answered_ping_keeps_the_subscription) {
    static seen_t sa;
    unsigned timeout_ms = 300;
    khala_coherence_t *c =
        open_coh(tu_redis_env("KHALA_TEST_REDIS_URL"), ns("ping"), &sa, timeout_ms);
    int64_t t = khala__sys_now_ms();
    khala__coherence_tick(c, t); /* schedules the first PING */
    for (int cycle = 0; cycle < 3; cycle++) {
        t += KHALA_COH_PING_INTERVAL_MS + 1;
        khala__coherence_tick(c, t); /* due: the PING goes out */
        struct pollfd p = {.fd = khala__coherence_fd(c), .events = POLLIN};
        cr_assert_eq(poll(&p, 1, DEADLINE_MS), 1, "the answer comes");
        khala__coherence_readable(c);
        t += 2 * timeout_ms + 1; /* past the deadline of an unanswered PING */
        khala__coherence_tick(c, t);
        cr_assert_eq(sa.lost, 0, "cycle %d: %s", cycle, sa.why);
        cr_assert(khala__coherence_subscribed(c));
    }
    khala__coherence_close(c);
}

Test(coherence, tls_urls_are_refused_at_open) {
    static seen_t s;
    khala_coherence_cb_t cb = {on_inval, on_event, &s};
    khala_coherence_t *c = NULL;
    char err[512];
    khala_coherence_opts_t o = {"rediss://127.0.0.1:6380", "x", 200};
    cr_assert_eq(khala__coherence_open(&o, &cb, &c, err, sizeof(err)), KHALA_ECONFIG);
    cr_assert(strstr(err, "rediss://") && strstr(err, "TLS"), "%s", err);
    cr_assert_null(c);
}

/* Integers cut short or negative where the format wants a non-negative one are malformed. */
Test(coherence, truncated_and_negative_integers_are_malformed) {
    static const uint8_t cut_int16[] = {0x82, 0xa1, 'o', 0xd1, 0x01};
    static const uint8_t cut_uint32[] = {0x82, 0xa1, 'o', 0xce, 0x00, 0x01};
    static const uint8_t negative[] = {0x82, 0xa1, 'o',  0xd0, 0xff, 0xa2,
                                       'b',  'y',  0xa3, 'a',  'l',  'l'};
    static const uint8_t cut_float[] = {0x82, 0xa1, 'o', 0xcb, 0x00};
    static const uint8_t ok[] = {0x82, 0xa1, 'o', 0xd0, 0x05, 0xa2, 'b', 'y', 0xa3, 'a', 'l', 'l'};
    khala_inv_t m;
    uint64_t origin = 0;
    cr_assert_eq(khala__coherence_decode(cut_int16, sizeof(cut_int16), &m, &origin), -1);
    cr_assert_eq(khala__coherence_decode(cut_uint32, sizeof(cut_uint32), &m, &origin), -1);
    cr_assert_eq(khala__coherence_decode(negative, sizeof(negative), &m, &origin), -1);
    cr_assert_eq(khala__coherence_decode(cut_float, sizeof(cut_float), &m, &origin), -1);
    cr_assert_eq(khala__coherence_decode(ok, sizeof(ok), &m, &origin), 0,
                 "a small positive int8 is an origin");
    cr_assert_eq(origin, 5);
    cr_assert_eq(m.by, KHALA_INV_ALL);
}
