/*
 * khalad's connection limits end to end ([server] in docs/operating.md, "Limits"): a real khalad
 * and real connections that misbehave the way a hostile or broken peer would: pipelining gets
 * of a large value without reading, holding partial frames, opening more connections than
 * allowed or than khalad has descriptors for, and values above the default frame limit.
 * Nothing is timed: memory, CPU time and counts are compared with generous bounds.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "channel.h"
#include "khala/cache.h"
#include "khala/error.h"
#include "khalad_util.h"
#include "proto.h"

#define MIB (1024u * 1024u)

static void setup(void) {
    khalad_env_init("kl");
}

TestSuite(limits, .init = setup, .fini = khalad_env_fini, .timeout = 120);

/* A raw protocol client ----------------------------------------------------------------------- */

typedef khalad_client_t client_t;

static int reply(client_t *c, khala_op_t op, khala_msg_t *r) {
    return khalad_reply(c, op, r, 30000);
}

/* ping on c: the reply's rc, or -1 when none came. */
static int ping(client_t *c) {
    khala_msg_t m = khalad_req(KHALA_OP_PING, NULL), r;
    khalad_request(c, &m);
    if (reply(c, KHALA_OP_PING, &r) != 0)
        return -1;
    int rc = r.rc;
    khala__proto_msg_free(&r);
    return rc;
}

/* ping on a connection of its own: the reply's rc, or -1. */
static int ping_new(void) {
    client_t c = khalad_dial();
    int rc = ping(&c);
    khalad_hang_up(&c);
    return rc;
}

/* The refusal a closed connection got: an id-0 error reply, its message into msg. */
static int refusal(client_t *c, char *msg, size_t len) {
    khala_msg_t r;
    if (reply(c, KHALA_OP_NONE, &r) != 0)
        return 1; /* nothing at all: not a refusal */
    cr_assert_eq(r.id, 0);
    snprintf(msg, len, "%.*s", (int)r.err.len, (const char *)r.err.ptr);
    int rc = r.rc;
    khala__proto_msg_free(&r);
    return rc;
}

/* One counter of the stats reply's "khalad" map, asked on c; UINT64_MAX when khalad has no
 * such counter (with must, the test fails then). */
static uint64_t stat_find(client_t *c, const char *name, int must) {
    khala_msg_t m = khalad_req(KHALA_OP_STATS, NULL), r;
    khalad_request(c, &m);
    cr_assert_eq(reply(c, KHALA_OP_STATS, &r), 0);
    cr_assert_eq(r.rc, 0);
    const khala_kv_t *d = khala__proto_kv_find(r.data, r.ndata, "khalad");
    cr_assert_not_null(d);
    const khala_kv_t *v = khala__proto_kv_find(d->as.map.items, d->as.map.n, name);
    cr_assert(v || !must, "khalad.%s", name);
    uint64_t u = v ? v->as.u : UINT64_MAX;
    khala__proto_msg_free(&r);
    return u;
}

static uint64_t stat_on(client_t *c, const char *name) {
    return stat_find(c, name, 1);
}

/* The same on a connection of its own. */
static uint64_t stat_of(const char *name) {
    client_t c = khalad_dial();
    uint64_t u = stat_on(&c, name);
    khalad_hang_up(&c);
    return u;
}

/* A line of /proc/PID/status ("RssAnon:"), in kB. */
static uint64_t proc_status_kb(pid_t pid, const char *field) {
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    uint64_t kb = 0;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, field, strlen(field)) == 0)
            kb = strtoull(line + strlen(field), NULL, 10);
    fclose(f);
    return kb;
}

/* User plus system CPU time of pid, in clock ticks (/proc/PID/stat fields 14 and 15). */
static uint64_t cpu_ticks(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the name may hold spaces */
    cr_assert_not_null(p);
    unsigned long long ut = 0, st = 0;
    /* After ")": state (3) and fields 4..13, then utime (14) and stime (15). */
    cr_assert_eq(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st),
                 2);
    return ut + st;
}

static void put_value(client_t *c, const char *key, const void *val, size_t len) {
    khala_msg_t m = khalad_req(KHALA_OP_PUT, key), r;
    m.value.ptr = val;
    m.value.len = len;
    m.has |= KHALA_F_V;
    khalad_request(c, &m);
    cr_assert_eq(reply(c, KHALA_OP_PUT, &r), 0);
    cr_assert_eq(r.rc, 0, "put: %.*s", (int)r.err.len, (const char *)r.err.ptr);
    khala__proto_msg_free(&r);
}

/* Bug 1 ------------------------------------------------------------------------------------ */

/* 200 pipelined gets of a 1 MiB value on a connection that reads nothing: before replies were
 * measured as they were appended, khalad queued all 200 MiB; now it stops at the output cap
 * (8 MiB by default) plus one reply, keeps answering others, and resumes when the client reads. */
Test(limits, pipelined_gets_of_a_large_value_stop_at_the_output_cap) {
    enum { GETS = 200 };
    khalad_start();
    client_t w = khalad_dial();
    size_t vlen = MIB - 1024;
    char *val = malloc(vlen);
    cr_assert_not_null(val);
    memset(val, 'v', vlen);
    put_value(&w, "big", val, vlen);
    uint64_t rss0 = proc_status_kb(khalad_pid, "RssAnon:");

    client_t hog = khalad_dial();
    khala_buf_t out;
    khala__proto_buf_init(&out);
    for (int i = 0; i < GETS; i++) {
        khala_msg_t m = khalad_req(KHALA_OP_GET, "big");
        m.id = (uint64_t)i + 1;
        cr_assert_eq(khala__proto_encode_request(&out, &m, NULL, 0), 0);
    }
    cr_assert_eq(khalad_send(&hog, out.data, out.len), 0);
    khala__proto_buf_free(&out);
    /* khalad has handled what it will before it pauses the hog: wait for the pause (a khalad
     * without the counter, from before the fix, handled all 200 gets at once). */
    for (int i = 0; i < 1000 && stat_find(&w, "connections_paused", 0) == 0; i++)
        sleep_ms(10);
    cr_assert_eq(ping(&w), 0, "another client is answered meanwhile");
    uint64_t rss = proc_status_kb(khalad_pid, "RssAnon:");
    cr_assert_lt(rss, rss0 + 48 * 1024, "khalad grew from %llu to %llu kB",
                 (unsigned long long)rss0, (unsigned long long)rss);
    cr_assert_eq(stat_on(&w, "connections_paused"), 1);
    cr_assert_leq(stat_on(&w, "output_buffer_bytes"), 20u * MIB);

    /* The hog reads: every reply comes, in order, whole. */
    for (int i = 0; i < GETS; i++) {
        khala_msg_t r;
        cr_assert_eq(reply(&hog, KHALA_OP_GET, &r), 0, "reply %d", i);
        cr_assert_eq(r.rc, 0, "reply %d: %s %.*s", i, khala_strerror(r.rc), (int)r.err.len,
                     (const char *)r.err.ptr);
        cr_assert_eq(r.id, (uint64_t)i + 1);
        cr_assert_eq(r.value.len, vlen);
        khala__proto_msg_free(&r);
    }
    cr_assert_eq(stat_of("connections_paused"), 0);
    khalad_hang_up(&hog);
    khalad_hang_up(&w);
    free(val);
}

/* Bug 2 ------------------------------------------------------------------------------------ */

/* Connections holding 1 MiB partial frames: beyond [server] max_buffer_bytes (4 MiB here) a
 * connection is refused with ELIMIT naming the key; those within it are closed with ELIMIT
 * naming frame_timeout_ms once their frame is overdue, and the buffers are given back. */
Test(limits, partial_frames_are_bounded_in_total_and_closed_when_overdue) {
    enum { CONNS = 5 };
    khalad_extra_sets[0] = "server.max_buffer_bytes=4194304";
    khalad_extra_sets[1] = "server.frame_timeout_ms=1000";
    khalad_start();
    size_t part = MIB;
    uint8_t *buf = calloc(1, 4 + part);
    cr_assert_not_null(buf);
    buf[1] = 0x18; /* a frame of 0x180000 bytes (1.5 MiB): never completed */
    client_t c[CONNS];
    for (int i = 0; i < CONNS; i++) {
        c[i] = khalad_dial();
        (void)khalad_send(&c[i], buf, 4 + part); /* a refused one may stop taking bytes */
    }
    int over_budget = 0, overdue = 0;
    for (int i = 0; i < CONNS; i++) {
        char msg[256] = "";
        int rc = refusal(&c[i], msg, sizeof(msg));
        cr_assert_eq(rc, KHALA_ELIMIT, "connection %d: %d %s", i, rc, msg);
        over_budget += strstr(msg, "max_buffer_bytes") != NULL;
        overdue += strstr(msg, "frame_timeout_ms") != NULL;
        khala_msg_t r;
        cr_assert_neq(khalad_reply(&c[i], KHALA_OP_NONE, &r, 10000), 0, "then it is closed");
        khalad_hang_up(&c[i]);
    }
    cr_assert_geq(over_budget, 1);
    cr_assert_geq(overdue, 1);
    cr_assert_eq(over_budget + overdue, CONNS);
    cr_assert_eq(stat_of("buffer_refusals"), (uint64_t)over_budget);
    cr_assert_eq(stat_of("frame_timeouts"), (uint64_t)overdue);
    cr_assert_leq(stat_of("input_buffer_bytes"), 64u * 1024u, "stat_of's own request only");
    free(buf);
}

/* Bug 4 ------------------------------------------------------------------------------------ */

/* max_connections = 4: a fifth connection is answered ELIMIT naming max_connections before the
 * close, through the raw socket and through the library's channel; it is counted. */
Test(limits, connections_beyond_max_connections_are_refused_with_a_reply) {
    khalad_extra_sets[0] = "server.max_connections=4";
    khalad_start();
    client_t c[4];
    for (int i = 0; i < 4; i++) {
        c[i] = khalad_dial();
        cr_assert_eq(ping(&c[i]), 0); /* accepted and served */
    }
    client_t extra = khalad_dial();
    char msg[256] = "";
    cr_assert_eq(refusal(&extra, msg, sizeof(msg)), KHALA_ELIMIT, "%s", msg);
    cr_assert_neq(strstr(msg, "max_connections"), NULL, "%s", msg);
    khalad_hang_up(&extra);
    khala_chan_t *ch = NULL;
    char err[256] = "";
    cr_assert_eq(khala__chan_open(khalad_sock, khalad_name, 10000, &ch, err, sizeof(err)),
                 KHALA_ELIMIT, "%s", err);
    cr_assert_neq(strstr(err, "max_connections"), NULL, "%s", err);
    cr_assert_eq(stat_on(&c[0], "connections_refused"), 2);
    for (int i = 0; i < 4; i++)
        khalad_hang_up(&c[i]);
}

/* Bug 3 ------------------------------------------------------------------------------------ */

/* khalad raises its soft descriptor limit to the hard one at start. */
Test(limits, the_soft_descriptor_limit_is_raised_to_the_hard_one) {
    struct rlimit rl, low;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_max <= 128)
        cr_skip_test("the hard limit is too low to lower the soft one");
    low = rl;
    low.rlim_cur = 128;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &low), 0); /* khalad inherits it */
    khalad_start();
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/limits", (int)khalad_pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    unsigned long long soft = 0, hard = 0;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, "Max open files", 14) == 0)
            cr_assert_eq(sscanf(line + 14, "%llu %llu", &soft, &hard), 2);
    fclose(f);
    cr_assert_eq(soft, hard);
    cr_assert_eq(hard, (unsigned long long)rl.rlim_max);
}

/* khalad at its descriptor limit (48, set with prlimit after the start: the start itself raises
 * the soft limit) with 80 connections: it neither spins (CPU time over 2 s stays well under the
 * window) nor stops serving; the connections it cannot hold get ELIMIT, and a client that comes
 * after others closed is served. */
Test(limits, at_the_descriptor_limit_khalad_neither_spins_nor_stops_serving) {
    enum { CONNS = 80, LIMIT = 48 };
    khalad_start();
    struct rlimit rl = {LIMIT, LIMIT};
    cr_assert_eq(prlimit(khalad_pid, RLIMIT_NOFILE, &rl, NULL), 0, "prlimit: %s", strerror(errno));
    client_t c[CONNS];
    for (int i = 0; i < CONNS; i++)
        c[i] = khalad_dial(); /* the backlog takes them; khalad accepts what it can */
    sleep_ms(300);
    long hz = sysconf(_SC_CLK_TCK);
    uint64_t t0 = cpu_ticks(khalad_pid);
    sleep_ms(2000);
    uint64_t used = cpu_ticks(khalad_pid) - t0;
    cr_assert_lt(used, (uint64_t)hz / 2, "khalad used %llu of %ld ticks in 2 s",
                 (unsigned long long)used, 2 * hz);
    /* Served, or refused with a reply: nobody is left hanging. */
    int served = 0, refused = 0;
    for (int i = 0; i < CONNS; i++) {
        struct pollfd p = {.fd = c[i].fd, .events = POLLIN};
        if (poll(&p, 1, 0) == 1) {
            char msg[256] = "";
            int rc = refusal(&c[i], msg, sizeof(msg));
            cr_assert_eq(rc, KHALA_ELIMIT, "%d %s", rc, msg);
            cr_assert_neq(strstr(msg, "file descriptors"), NULL, "%s", msg);
            refused++;
            khalad_hang_up(&c[i]);
        } else {
            served++;
        }
    }
    cr_assert_gt(refused, 0);
    cr_assert_gt(served, 0);
    cr_assert_lt(served, LIMIT);
    for (int i = 0; i < CONNS; i++)
        khalad_hang_up(&c[i]);
    /* Descriptors are free again: a newcomer is served (khalad notices the closes first). */
    int ok = -1;
    for (int i = 0; i < 100 && ok != 0; i++) {
        client_t n = khalad_dial();
        ok = ping(&n);
        khalad_hang_up(&n);
        if (ok != 0)
            sleep_ms(20);
    }
    cr_assert_eq(ok, 0);
    cr_assert_geq(stat_of("fd_exhausted"), 1);
    cr_assert_geq(stat_of("connections_refused_no_fd"), (uint64_t)refused);
}

/* Bug 8 ------------------------------------------------------------------------------------ */

/* With [l1] max_value_bytes = 4 MiB the frame limit follows: a 3.5 MiB value is put and read
 * back through the client API; one byte over 4 MiB is KHALA_ETOOBIG naming the limit. */
Test(limits, values_up_to_max_value_bytes_pass_the_frame_limit) {
    khalad_extra_sets[0] = "l1.max_value_bytes=4194304";
    khalad_extra_sets[1] = "l1.max_memory_mb=32";
    khalad_start();
    khala_cache_options_t o;
    khala_cache_options_init(&o);
    o.socket_path = khalad_sock;
    khala_cache_t *cache = NULL;
    cr_assert_eq(khala_cache_open(khalad_name, &o, &cache), 0, "%s", khala_cache_errmsg(NULL));
    size_t vlen = 3 * MIB + MIB / 2;
    uint8_t *val = malloc(4 * MIB + 1), *back = malloc(4 * MIB);
    cr_assert(val && back);
    for (size_t i = 0; i < 4 * MIB + 1; i++)
        val[i] = (uint8_t)(i * 7);
    khala_put_options_t po;
    khala_put_options_init(&po);
    int rc = khala_cache_put(cache, "huge", 4, val, vlen, &po, NULL);
    cr_assert_eq(rc, 0, "%s: %s", khala_strerror(rc), khala_cache_errmsg(cache));
    size_t len = 0;
    rc = khala_cache_get(cache, "huge", 4, back, 4 * MIB, &len);
    cr_assert_eq(rc, 0, "%s: %s", khala_strerror(rc), khala_cache_errmsg(cache));
    cr_assert_eq(len, vlen);
    cr_assert_eq(memcmp(val, back, vlen), 0);
    /* Through khalad too (not the shared segment): the reply frame is above 2 MiB. */
    khala_chan_t *ch = NULL;
    char err[256] = "";
    cr_assert_eq(khala__chan_open(khalad_sock, khalad_name, 10000, &ch, err, sizeof(err)), 0, "%s",
                 err);
    cr_assert_gt(khala__chan_info(ch)->max_frame, 4 * MIB);
    khala_msg_t m = khalad_req(KHALA_OP_GET, "huge"), r;
    khala__proto_msg_init(&r);
    cr_assert_eq(khala__chan_call(ch, &m, &r, 10000, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(r.rc, 0);
    cr_assert_eq(r.value.len, vlen);
    khala__proto_msg_free(&r);
    khala__chan_close(ch);

    rc = khala_cache_put(cache, "over", 4, val, 4 * MIB + 1, &po, NULL);
    cr_assert_eq(rc, KHALA_ETOOBIG, "%s", khala_strerror(rc));
    cr_assert_neq(strstr(khala_cache_errmsg(cache), "4194304"), NULL, "%s",
                  khala_cache_errmsg(cache));
    khala_cache_close(cache);
    free(val);
    free(back);
}

/* A max_connections that does not fit in the descriptor limit (hard = soft = 128, inherited) is
 * named at start, in a warning that says what to do; khalad still starts. */
Test(limits, a_max_connections_beyond_the_descriptor_limit_is_named_at_start) {
    struct rlimit rl = {128, 128};
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0); /* this test's process only (forked) */
    char log[128];
    snprintf(log, sizeof(log), "%s/khalad.log", khalad_dir());
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    cr_assert_geq(fd, 0);
    int saved = dup(2);
    cr_assert_eq(dup2(fd, 2), 2); /* khalad's stderr, with KHALA_TEST_VERBOSE */
    setenv("KHALA_TEST_VERBOSE", "1", 1);
    khalad_start();
    cr_assert_eq(ping_new(), 0);
    dup2(saved, 2);
    close(saved);
    close(fd);
    FILE *f = fopen(log, "r");
    cr_assert_not_null(f);
    char line[1024];
    int warned = 0, logged_limit = 0;
    while (fgets(line, sizeof(line), f)) {
        warned |= strstr(line, "[server] max_connections 4096 does not fit in the "
                               "file-descriptor limit 128") != NULL;
        logged_limit |= strstr(line, "\"nofile\":\"128\"") != NULL;
    }
    fclose(f);
    cr_assert(warned, "no warning naming max_connections in %s", log);
    cr_assert(logged_limit, "the limit is not logged in %s", log);
}
