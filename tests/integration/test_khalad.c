/*
 * khalad end to end: a real khalad process, started by the test on a private socket and cache
 * name, and clients speaking the real protocol (lib/proto.h) over the real socket, plus real
 * readers of its L1 segment. Slow-ish (processes start and stop), so labelled integration.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "khala/cache.h"
#include "khalad_util.h"
#include "proto.h"
#include "segment.h"
#include "segment_create.h"

static void setup(void) {
    khalad_env_init("kd");
    khalad_start();
}

TestSuite(khalad, .init = setup, .fini = khalad_env_fini, .timeout = 60);

/* A protocol client ----------------------------------------------------------------------- */

typedef khalad_client_t client_t;

static void send_bytes(client_t *c, const void *p, size_t n) {
    cr_assert_eq(khalad_send(c, p, n), 0, "send: %s", strerror(errno));
}

/* Read one reply frame (no time limit) and decode it for op; see khalad_reply. */
static int reply(client_t *c, khala_op_t op, khala_msg_t *r) {
    return khalad_reply(c, op, r, -1);
}

static int put(client_t *c, const char *key, const char *val, khala_type_t type, uint64_t *ver) {
    khala_msg_t m = khalad_req(KHALA_OP_PUT, key), r;
    m.value.ptr = (const uint8_t *)val;
    m.value.len = strlen(val);
    m.type = type;
    m.has |= KHALA_F_V | KHALA_F_TYPE;
    khalad_request(c, &m);
    cr_assert_eq(reply(c, KHALA_OP_PUT, &r), 0);
    if (ver && r.rc == 0)
        *ver = r.ver;
    int rc = r.rc;
    khala__proto_msg_free(&r);
    return rc;
}

/* get; on a hit copies the value (NUL-terminated) into out. */
static int get(client_t *c, const char *key, char *out, size_t cap) {
    khala_msg_t m = khalad_req(KHALA_OP_GET, key), r;
    khalad_request(c, &m);
    cr_assert_eq(reply(c, KHALA_OP_GET, &r), 0);
    int rc = r.rc;
    if (rc == 0 && out) {
        cr_assert_lt(r.value.len, cap);
        memcpy(out, r.value.ptr, r.value.len);
        out[r.value.len] = '\0';
    }
    khala__proto_msg_free(&r);
    return rc;
}

/* Tests ------------------------------------------------------------------------------------ */

Test(khalad, hello_tells_the_protocol_name_and_limits) {
    client_t c = khalad_dial();
    khala_msg_t m = khalad_req(KHALA_OP_HELLO, NULL), r;
    m.proto = KHALA_PROTO_VERSION;
    m.name.ptr = (const uint8_t *)khalad_name;
    m.name.len = strlen(khalad_name);
    m.has |= KHALA_F_PROTO | KHALA_F_NAME;
    uint64_t id = khalad_request(&c, &m);
    cr_assert_eq(reply(&c, KHALA_OP_HELLO, &r), 0);
    cr_assert_eq(r.rc, 0);
    cr_assert_eq(r.id, id);
    cr_assert_eq(r.proto, KHALA_PROTO_VERSION);
    cr_assert_eq(r.name.len, strlen(khalad_name));
    cr_assert_geq(r.gen, 1);
    cr_assert_geq(r.max_value, 1024 * 1024);
    khala__proto_msg_free(&r);
    khalad_hang_up(&c);
}

Test(khalad, put_then_get_through_khalad_and_through_the_shared_segment) {
    client_t c = khalad_dial();
    uint64_t ver = 0;
    cr_assert_eq(put(&c, "entity:1", "hello", KHALA_TYPE_MEMORY_ENTITY, &ver), 0);
    cr_assert_geq(ver, 1);
    char buf[64];
    cr_assert_eq(get(&c, "entity:1", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "hello");
    cr_assert_eq(get(&c, "entity:2", NULL, 0), KHALA_ENOTFOUND);
    /* A worker reads the same item straight out of L1, without khalad. */
    khala_cache_t *w;
    cr_assert_eq(khala_cache_open(khalad_name, NULL, &w), 0, "%s", khala_cache_errmsg(NULL));
    size_t len = 0;
    cr_assert_eq(khala_cache_get(w, "entity:1", 8, buf, sizeof(buf), &len), 0);
    cr_assert_eq(len, 5);
    khala_cache_close(w);
    khalad_hang_up(&c);
}

Test(khalad, many_pipelined_requests_are_answered_in_order) {
    client_t c = khalad_dial();
    enum { N = 2000 };
    char key[32], val[32];
    khala_buf_t out;
    khala__proto_buf_init(&out);
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "pipe:%d", i);
        snprintf(val, sizeof(val), "v%d", i);
        khala_msg_t m = khalad_req(KHALA_OP_PUT, key);
        m.id = (uint64_t)i + 1;
        m.value.ptr = (const uint8_t *)val;
        m.value.len = strlen(val);
        m.has |= KHALA_F_V;
        cr_assert_eq(khala__proto_encode_request(&out, &m, NULL, 0), 0);
    }
    send_bytes(&c, out.data, out.len);
    khala__proto_buf_free(&out);
    for (int i = 0; i < N; i++) {
        khala_msg_t r;
        cr_assert_eq(reply(&c, KHALA_OP_PUT, &r), 0);
        cr_assert_eq(r.id, (uint64_t)i + 1, "reply %d out of order", i);
        cr_assert_eq(r.rc, 0);
        khala__proto_msg_free(&r);
    }
    char buf[32];
    cr_assert_eq(get(&c, "pipe:1999", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "v1999");
    khalad_hang_up(&c);
}

Test(khalad, put_with_a_stale_version_is_refused) {
    client_t c = khalad_dial();
    uint64_t v1 = 0, v2 = 0;
    cr_assert_eq(put(&c, "cas", "one", KHALA_TYPE_VERIFICATION, &v1), 0);
    cr_assert_eq(put(&c, "cas", "two", KHALA_TYPE_VERIFICATION, &v2), 0);
    khala_msg_t m = khalad_req(KHALA_OP_PUT, "cas"), r;
    m.value.ptr = (const uint8_t *)"stale";
    m.value.len = 5;
    m.ver = v1; /* the writer saw version 1; the key is at version 2 */
    m.has |= KHALA_F_V | KHALA_F_VER;
    khalad_request(&c, &m);
    cr_assert_eq(reply(&c, KHALA_OP_PUT, &r), 0);
    cr_assert_eq(r.rc, KHALA_EVERSION);
    cr_assert(r.err.len > 0);
    khala__proto_msg_free(&r);
    m.ver = v2;
    khalad_request(&c, &m);
    cr_assert_eq(reply(&c, KHALA_OP_PUT, &r), 0);
    cr_assert_eq(r.rc, 0, "the current version wins");
    khala__proto_msg_free(&r);
    char buf[16];
    cr_assert_eq(get(&c, "cas", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "stale");
    khalad_hang_up(&c);
}

Test(khalad, ttl_expires_items) {
    client_t c = khalad_dial();
    khala_msg_t m = khalad_req(KHALA_OP_PUT, "short"), r;
    m.value.ptr = (const uint8_t *)"x";
    m.value.len = 1;
    m.ttl_ms = 50;
    m.has |= KHALA_F_V | KHALA_F_TTL;
    khalad_request(&c, &m);
    cr_assert_eq(reply(&c, KHALA_OP_PUT, &r), 0);
    cr_assert_eq(r.rc, 0);
    khala__proto_msg_free(&r);
    cr_assert_eq(get(&c, "short", NULL, 0), 0);
    sleep_ms(120);
    cr_assert_eq(get(&c, "short", NULL, 0), KHALA_ENOTFOUND);
    khalad_hang_up(&c);
}

static uint32_t invalidate(client_t *c, khala_by_t by, const char *arg, khala_type_t type) {
    khala_msg_t m = khalad_req(KHALA_OP_INVALIDATE, by == KHALA_BY_KEY ? arg : NULL), r;
    m.by = by;
    m.has |= KHALA_F_BY;
    if (by == KHALA_BY_PREFIX) {
        m.prefix.ptr = (const uint8_t *)arg;
        m.prefix.len = strlen(arg);
        m.has |= KHALA_F_PREFIX;
    }
    if (by == KHALA_BY_TYPE) {
        m.type = type;
        m.has |= KHALA_F_TYPE;
    }
    khalad_request(c, &m);
    cr_assert_eq(reply(c, KHALA_OP_INVALIDATE, &r), 0);
    cr_assert_eq(r.rc, 0);
    uint32_t n = r.count;
    khala__proto_msg_free(&r);
    return n;
}

Test(khalad, invalidation_by_prefix_and_by_type) {
    client_t c = khalad_dial();
    put(&c, "user:1", "a", KHALA_TYPE_MEMORY_ENTITY, NULL);
    put(&c, "user:2", "b", KHALA_TYPE_MEMORY_ENTITY, NULL);
    put(&c, "search:1", "c", KHALA_TYPE_SEARCH_RESULT, NULL);
    put(&c, "search:2", "d", KHALA_TYPE_SEARCH_RESULT, NULL);
    put(&c, "emb:1", "e", KHALA_TYPE_EMBEDDING, NULL);
    cr_assert_eq(invalidate(&c, KHALA_BY_PREFIX, "user:", 0), 2);
    cr_assert_eq(get(&c, "user:1", NULL, 0), KHALA_ENOTFOUND);
    cr_assert_eq(get(&c, "search:1", NULL, 0), 0);
    cr_assert_eq(invalidate(&c, KHALA_BY_TYPE, NULL, KHALA_TYPE_SEARCH_RESULT), 2);
    cr_assert_eq(get(&c, "search:2", NULL, 0), KHALA_ENOTFOUND);
    cr_assert_eq(get(&c, "emb:1", NULL, 0), 0, "other types stay");
    cr_assert_eq(invalidate(&c, KHALA_BY_KEY, "emb:1", 0), 1);
    cr_assert_eq(get(&c, "emb:1", NULL, 0), KHALA_ENOTFOUND);
    khalad_hang_up(&c);
}

Test(khalad, malformed_frame_drops_only_its_client) {
    client_t good = khalad_dial(), bad = khalad_dial();
    put(&good, "k", "v", KHALA_TYPE_MEMORY_ENTITY, NULL);
    /* A frame whose body is not a msgpack map. */
    static const uint8_t garbage[] = {0, 0, 0, 5, 0xc1, 0xff, 0x00, 0x12, 0x34};
    send_bytes(&bad, garbage, sizeof(garbage));
    khala_msg_t r;
    cr_assert_eq(reply(&bad, KHALA_OP_NONE, &r), 0);
    cr_assert_eq(r.rc, KHALA_EPROTO);
    cr_assert(r.err.len > 0, "the error names the problem");
    khala__proto_msg_free(&r);
    cr_assert_eq(reply(&bad, KHALA_OP_NONE, &r), -1, "then the connection is closed");
    char buf[8];
    cr_assert_eq(get(&good, "k", buf, sizeof(buf)), 0, "the other client is still served");
    khalad_hang_up(&good);
    khalad_hang_up(&bad);
}

Test(khalad, oversized_frame_gets_an_error_naming_the_limit) {
    client_t c = khalad_dial();
    uint8_t hdr[4] = {0x7f, 0, 0, 0}; /* 2 GiB */
    send_bytes(&c, hdr, 4);
    khala_msg_t r;
    cr_assert_eq(reply(&c, KHALA_OP_NONE, &r), 0);
    cr_assert_eq(r.rc, KHALA_EPROTO);
    char msg[256];
    snprintf(msg, sizeof(msg), "%.*s", (int)r.err.len, (const char *)r.err.ptr);
    cr_assert_neq(strstr(msg, "max_frame"), NULL, "%s", msg);
    khala__proto_msg_free(&r);
    khalad_hang_up(&c);
}

Test(khalad, concurrent_misses_run_the_loader_once) {
    enum { WORKERS = 4 };
    int pipes[WORKERS][2];
    pid_t pids[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        cr_assert_eq(pipe(pipes[i]), 0);
        pids[i] = fork();
        cr_assert_geq(pids[i], 0);
        if (pids[i] == 0) {
            client_t c = khalad_dial();
            khala_msg_t m = khalad_req(KHALA_OP_GET, "hot"), r;
            m.loader = true;
            m.has |= KHALA_F_LOADER;
            khalad_request(&c, &m);
            if (reply(&c, KHALA_OP_GET, &r) != 0)
                _exit(10);
            char outcome = '?';
            if (r.rc == KHALA_ENOTFOUND && r.load) {
                /* The leader "loads" slowly, then fills. */
                sleep_ms(200);
                khala_msg_t f = khalad_req(KHALA_OP_FILL, "hot"), fr;
                f.value.ptr = (const uint8_t *)"loaded";
                f.value.len = 6;
                f.has |= KHALA_F_V;
                khalad_request(&c, &f);
                outcome = reply(&c, KHALA_OP_FILL, &fr) == 0 && fr.rc == 0 ? 'L' : 'x';
            } else if (r.rc == 0 && r.value.len == 6 && memcmp(r.value.ptr, "loaded", 6) == 0) {
                outcome = 'W';
            }
            (void)!write(pipes[i][1], &outcome, 1);
            _exit(0);
        }
        close(pipes[i][1]);
    }
    int leaders = 0, waiters = 0;
    for (int i = 0; i < WORKERS; i++) {
        char o = 0;
        cr_assert_eq(read(pipes[i][0], &o, 1), 1);
        leaders += o == 'L';
        waiters += o == 'W';
        waitpid(pids[i], NULL, 0);
    }
    cr_assert_eq(leaders, 1, "exactly one loader ran");
    cr_assert_eq(waiters, WORKERS - 1, "every other worker got the loaded value");
    client_t c = khalad_dial();
    char buf[16];
    cr_assert_eq(get(&c, "hot", buf, sizeof(buf)), 0, "the loaded value is cached");
    cr_assert_str_eq(buf, "loaded");
    khalad_hang_up(&c);
}

Test(khalad, killed_khalad_leaves_l1_readable_and_a_restart_adopts_it) {
    client_t c = khalad_dial();
    cr_assert_eq(put(&c, "durable", "still here", KHALA_TYPE_VERIFICATION, NULL), 0);
    khalad_hang_up(&c);
    khala_cache_t *w;
    cr_assert_eq(khala_cache_open(khalad_name, NULL, &w), 0);
    khalad_kill(SIGKILL);
    /* khalad is gone: the worker keeps reading L1. */
    char buf[32];
    size_t len;
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(khala_cache_get(w, "durable", 7, buf, sizeof(buf), &len), 0);
    /* A new khalad adopts the segment: same generation, same items. */
    khalad_start();
    c = khalad_dial();
    cr_assert_eq(get(&c, "durable", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "still here");
    cr_assert_eq(put(&c, "after", "restart", KHALA_TYPE_VERIFICATION, NULL), 0);
    cr_assert_eq(khala_cache_get(w, "after", 5, buf, sizeof(buf), &len), 0,
                 "the worker sees the new khalad's writes without reattaching");
    khalad_hang_up(&c);
    khala_cache_close(w);
}

Test(khalad, socket_is_not_world_accessible) {
    struct stat st;
    cr_assert_eq(stat(khalad_sock, &st), 0);
    cr_assert(S_ISSOCK(st.st_mode));
    cr_assert_eq(st.st_mode & 0007, 0, "mode %o", st.st_mode & 0777);
}

Test(khalad, stats_report_the_l1_and_the_daemon) {
    client_t c = khalad_dial();
    put(&c, "s", "v", KHALA_TYPE_MEMORY_ENTITY, NULL);
    khala_msg_t m = khalad_req(KHALA_OP_STATS, NULL), r;
    khalad_request(&c, &m);
    cr_assert_eq(reply(&c, KHALA_OP_STATS, &r), 0);
    cr_assert_eq(r.rc, 0);
    const khala_kv_t *l1 = khala__proto_kv_find(r.data, r.ndata, "l1");
    cr_assert_not_null(l1);
    const khala_kv_t *items = khala__proto_kv_find(l1->as.map.items, l1->as.map.n, "items");
    cr_assert_not_null(items);
    cr_assert_eq(items->as.u, 1);
    /* The L1 writer's health: stuck readers, refusals, barriers and rehashes, all 0 here. */
    const char *zero[] = {"stuck_reader_pid", "stuck_reader_ms", "blocked_ops", "rehashes"};
    for (size_t i = 0; i < sizeof(zero) / sizeof(zero[0]); i++) {
        const khala_kv_t *v = khala__proto_kv_find(l1->as.map.items, l1->as.map.n, zero[i]);
        cr_assert_not_null(v, "l1.%s", zero[i]);
        cr_assert_eq(v->as.u, 0, "l1.%s", zero[i]);
    }
    cr_assert_not_null(khala__proto_kv_find(l1->as.map.items, l1->as.map.n, "membarriers"));
    /* Huge pages: what the kernel maps with 2 MiB pages, a whole number of them and never
     * more than the data file. */
    const khala_kv_t *huge =
        khala__proto_kv_find(l1->as.map.items, l1->as.map.n, "huge_page_bytes");
    cr_assert_not_null(huge, "l1.huge_page_bytes");
    char data[128];
    struct stat dst;
    snprintf(data, sizeof(data), "/dev/shm/khala.%s.data", khalad_name);
    cr_assert_eq(stat(data, &dst), 0, "%s", data);
    cr_assert_eq(huge->as.u % (2u << 20), 0, "%llu", (unsigned long long)huge->as.u);
    cr_assert_leq(huge->as.u, (uint64_t)dst.st_size);
    khala__proto_msg_free(&r);
    khalad_hang_up(&c);
}

/* The group the reader tests put the socket in, and the reader in (no user has it as primary). */
#define READER_GROUP 54321

/* Restart khalad with its socket in READER_GROUP (0660) and its directory reachable by others,
 * and an [access] rule that makes uid 65534 a reader only: a child that becomes that user (with
 * become_reader) can connect, and is refused by khalad, not by the file system. A socket open to
 * every user (0666) was the way until issue 10; khalad refuses it now (docs/security.md). */
static void restart_open_to_everyone(void) {
    khalad_kill(SIGTERM);
    khalad_extra_set = "cache.socket_mode=0660";
    khalad_extra_sets[0] = "cache.socket_group=54321";
    khalad_extra_sets[1] = "access.rule=user:65534 read";
    khalad_start();
    khalad_extra_sets[0] = NULL;
    char dir[sizeof(khalad_sock)];
    snprintf(dir, sizeof(dir), "%s", khalad_sock);
    *strrchr(dir, '/') = '\0';
    cr_assert_eq(chmod(dir, 0711), 0);
}

/* In a child: become uid/gid 65534 with READER_GROUP as its one supplementary group. */
static int become_reader(void) {
    const gid_t group = READER_GROUP;
    return setgroups(1, &group) == 0 && setgid(65534) == 0 && setuid(65534) == 0 ? 0 : -1;
}

/* Permissions: a peer whose [access] rules grant read alone may read but not write, and is
 * refused with KHALA_EDENIED naming the missing right (it was -EACCES until issue 10). The peer
 * is a child that drops to uid/gid 65534 (nobody), which needs root. */
Test(khalad, peer_outside_the_writers_may_read_but_not_write) {
    if (geteuid() != 0)
        cr_skip_test("needs root to become another user");
    restart_open_to_everyone();
    client_t owner = khalad_dial();
    cr_assert_eq(put(&owner, "shared", "by the owner", KHALA_TYPE_MEMORY_ENTITY, NULL), 0);
    khalad_hang_up(&owner);
    pid_t p = fork();
    cr_assert_geq(p, 0);
    if (p == 0) {
        if (become_reader() != 0)
            _exit(10);
        client_t c = khalad_dial();
        char buf[32];
        if (get(&c, "shared", buf, sizeof(buf)) != 0 || strcmp(buf, "by the owner") != 0)
            _exit(11); /* reading is allowed */
        khala_msg_t m = khalad_req(KHALA_OP_PUT, "shared"), r;
        m.value.ptr = (const uint8_t *)"intruder";
        m.value.len = 8;
        m.has |= KHALA_F_V;
        khalad_request(&c, &m);
        if (reply(&c, KHALA_OP_PUT, &r) != 0 || r.rc != KHALA_EDENIED || r.err.len == 0 ||
            !memmem(r.err.ptr, r.err.len, "'write' right", 13))
            _exit(12); /* writing is refused, with a reason */
        khala__proto_msg_free(&r);
        m = khalad_req(KHALA_OP_INVALIDATE, NULL);
        m.by = KHALA_BY_PREFIX;
        m.prefix.ptr = (const uint8_t *)"sh";
        m.prefix.len = 2;
        m.has |= KHALA_F_BY | KHALA_F_PREFIX;
        khalad_request(&c, &m);
        if (reply(&c, KHALA_OP_INVALIDATE, &r) != 0 || r.rc != KHALA_EDENIED)
            _exit(13);
        _exit(0);
    }
    int st;
    cr_assert_eq(waitpid(p, &st, 0), p);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the other user's client failed at step %d",
              WEXITSTATUS(st));
    client_t c = khalad_dial();
    char buf[32];
    cr_assert_eq(get(&c, "shared", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "by the owner", "nothing the other user sent changed the cache");
    khalad_hang_up(&c);
}

/* Readiness for systemd: under Type=notify, khalad sends READY=1 (with a STATUS= line) on the
 * socket NOTIFY_SOCKET names, once it listens. The test stands in for systemd. */
Test(khalad, readiness_is_reported_to_systemd) {
    khalad_kill(SIGTERM);
    char path[108];
    snprintf(path, sizeof(path), "/tmp/khala-notify-%d.sock", (int)getpid());
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    setenv("NOTIFY_SOCKET", path, 1);
    khalad_start(); /* returns once the socket accepts connections */
    unsetenv("NOTIFY_SOCKET");
    char msg[512] = "";
    struct timeval tv = {.tv_sec = 5, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ssize_t n = recv(fd, msg, sizeof(msg) - 1, 0);
    cr_assert_gt(n, 0, "no notification from khalad: %s", strerror(errno));
    msg[n] = '\0';
    cr_assert_neq(strstr(msg, "READY=1"), NULL, "got: %s", msg);
    cr_assert_neq(strstr(msg, "STATUS="), NULL, "got: %s", msg);
    close(fd);
    unlink(path);
}

/* Stats value l1.<field> from khalad. */
static uint64_t l1_stat(client_t *c, const char *field) {
    khala_msg_t m = khalad_req(KHALA_OP_STATS, NULL), r;
    khalad_request(c, &m);
    cr_assert_eq(reply(c, KHALA_OP_STATS, &r), 0);
    cr_assert_eq(r.rc, 0);
    const khala_kv_t *l1 = khala__proto_kv_find(r.data, r.ndata, "l1");
    cr_assert_not_null(l1);
    const khala_kv_t *v = khala__proto_kv_find(l1->as.map.items, l1->as.map.n, field);
    cr_assert_not_null(v, "l1.%s in stats", field);
    uint64_t u = v->as.u;
    khala__proto_msg_free(&r);
    return u;
}

/* A worker stopped (SIGSTOP) inside a read section: khalad keeps answering every put (L1 takes
 * what fits, refuses with KHALA_EBLOCKED what needs memory the worker pins, the disk L2 takes
 * everything), names the worker in its stats, serves the refused keys from L2, and once the
 * worker dies takes puts into L1 again. A wait per refused put would take this test past its
 * timeout: only the first one waits. */
Test(khalad, a_worker_stopped_inside_a_read_section_costs_one_wait_and_khalad_keeps_serving) {
    khalad_kill(SIGTERM);
    khalad_extra_set = "l1.max_memory_mb=1";
    khalad_start();
    int ready[2];
    cr_assert_eq(pipe(ready), 0);
    pid_t worker = fork();
    cr_assert_neq(worker, -1);
    if (worker == 0) {
        khala_cache_options_t o;
        khala_cache_options_init(&o);
        o.socket_path = khalad_sock;
        khala_cache_t *w = NULL;
        if (khala_cache_open(khalad_name, &o, &w) != 0 || khala_read_begin(w) != 0)
            _exit(10);
        if (write(ready[1], "r", 1) != 1)
            _exit(11);
        raise(SIGSTOP); /* inside the section, until killed */
        _exit(12);
    }
    char b;
    cr_assert_eq(read(ready[0], &b, 1), 1, "the worker opened its section");
    int status;
    cr_assert_eq(waitpid(worker, &status, WUNTRACED), worker);
    cr_assert(WIFSTOPPED(status), "the worker is stopped inside its section");

    client_t c = khalad_dial();
    static char val[4001];
    memset(val, 'x', sizeof(val) - 1);
    int refused = 0, last_refused = -1;
    for (int i = 0; i < 1000; i++) {
        char key[32];
        snprintf(key, sizeof(key), "stuck-%d", i);
        int rc = put(&c, key, val, KHALA_TYPE_MEMORY_ENTITY, NULL);
        cr_assert(rc == 0 || rc == KHALA_EBLOCKED, "put %d: %d", i, rc);
        if (rc == KHALA_EBLOCKED) {
            refused++;
            last_refused = i;
        }
    }
    cr_assert_gt(refused, 0, "1000 puts of 4 KB overflow a 1 MiB L1 pinned by the worker");
    cr_assert_eq(l1_stat(&c, "stuck_reader_pid"), (uint64_t)worker);
    cr_assert_geq(l1_stat(&c, "blocked_ops"), (uint64_t)refused);
    /* A key L1 refused is served from the level below. */
    char key[32], got[4100];
    snprintf(key, sizeof(key), "stuck-%d", last_refused);
    cr_assert_eq(get(&c, key, got, sizeof(got)), 0);
    cr_assert_eq(strlen(got), sizeof(val) - 1);

    /* The worker dies: khalad reaps its slot on a tick and L1 takes puts again. */
    cr_assert_eq(kill(worker, SIGKILL), 0);
    cr_assert_eq(waitpid(worker, &status, 0), worker);
    int rc = KHALA_EBLOCKED;
    for (int tries = 0; tries < 100 && rc != 0; tries++) {
        sleep_ms(20);
        rc = put(&c, "after", val, KHALA_TYPE_MEMORY_ENTITY, NULL);
    }
    cr_assert_eq(rc, 0, "puts need memory again once the worker is gone: %d", rc);
    cr_assert_eq(l1_stat(&c, "stuck_reader_pid"), 0);
    khalad_hang_up(&c);
    close(ready[0]);
    close(ready[1]);
}

/* khalad --check ---------------------------------------------------------------------------- */

/* `khalad --check` reads the configuration as a start would, prints it and exits, opening
 * nothing; these tests run the real binary on a file and overrides. */
TestSuite(khalad_check, .timeout = 60);

/* Run KHALAD_PATH --check [--config FILE] ARGS...; its exit status; stdout and stderr in out. */
static int run_check(const char *conf_text, const char *const *args, char *out, size_t cap) {
    char dir[] = "/tmp/khala_check_XXXXXX", conf[64], log[64];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(conf, sizeof(conf), "%s/khalad.conf", dir);
    snprintf(log, sizeof(log), "%s/out", dir);
    FILE *f = fopen(conf, "w");
    cr_assert_not_null(f);
    fputs(conf_text, f);
    fclose(f);
    const char *argv[32] = {KHALAD_PATH, "--check", "--config", conf};
    int argc = 4;
    for (; args && *args && argc < 30; args++)
        argv[argc++] = *args;
    argv[argc] = NULL;
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
            _exit(126);
        execv(KHALAD_PATH, (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    f = fopen(log, "r");
    cr_assert_not_null(f);
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = '\0';
    fclose(f);
    unlink(log);
    unlink(conf);
    rmdir(dir);
    cr_assert(WIFEXITED(status), "khalad --check did not exit: %d", status);
    return WEXITSTATUS(status);
}

Test(khalad_check, refuses_rediss_and_keys_without_effect) {
    static char out[16384];
    cr_assert_eq(run_check("[l2]\nbackend = redis\nredis_url = rediss://127.0.0.1:1/0\n", NULL, out,
                           sizeof(out)),
                 1, "%s", out);
    cr_assert(strstr(out, "[l2] redis_url: rediss:// (TLS) is not supported by this build"), "%s",
              out);
    cr_assert_eq(run_check("[policies]\nstale_serve_seconds = 60\n", NULL, out, sizeof(out)), 1,
                 "%s", out);
    cr_assert(strstr(out, "khalad.conf:2: [policies] stale_serve_seconds: '60' has no effect yet"),
              "%s", out);
    /* Since issue 12 [l3] has its effect; a SurrealDB L3 needs its URL. */
    const char *const l3[] = {"--set", "l3.ttl_seconds=60", NULL};
    cr_assert_eq(run_check("", l3, out, sizeof(out)), 0, "%s", out);
    const char *const l3s[] = {"--set", "l3.backend=surrealdb", NULL};
    cr_assert_eq(run_check("", l3s, out, sizeof(out)), 1, "%s", out);
    cr_assert(strstr(out, "[l3] backend: 'surrealdb' needs [l3] surrealdb_url"), "%s", out);
}

Test(khalad_check, overrides_apply_in_any_order) {
    static char out[16384];
    /* The backend before its URL: each --set is checked alone, the whole once at the end. */
    const char *const sets[] = {
        "--set", "policies.coherence=pubsub",          "--set", "l2.backend=redis",
        "--set", "l2.redis_url=redis://127.0.0.1:1/0", NULL};
    cr_assert_eq(run_check("", sets, out, sizeof(out)), 0, "%s", out);
    cr_assert(strstr(out, "backend = redis\n"), "%s", out);
    const char *const half[] = {"--set", "l2.backend=redis", NULL};
    cr_assert_eq(run_check("", half, out, sizeof(out)), 1, "%s", out);
    cr_assert(strstr(out, "[l2] backend: 'redis' needs [l2] redis_url"), "%s", out);
    /* An override completes the file: the file alone is not checked. */
    const char *const url[] = {"--set", "l2.redis_url=redis://127.0.0.1:1/0", "--name", "ovr",
                               NULL};
    cr_assert_eq(run_check("[l2]\nbackend = redis\n", url, out, sizeof(out)), 0, "%s", out);
    cr_assert(strstr(out, "redis_url = redis://127.0.0.1:1/0\n"), "%s", out);
    cr_assert(strstr(out, "name = ovr\n"), "%s", out);
}

Test(khalad_check, accepts_the_seeds_names) {
    static char out[16384];
    cr_assert_eq(run_check("[l1_cache]\nmax_memory_mb = 100\nttl_seconds = 300\n"
                           "eviction_policy = lru\n[l2_cache]\nbackend = redis\n"
                           "redis_url = redis://localhost:6379/2\nttl_seconds = 3600\n"
                           "max_items = 10000\npersistent = True\n[l3_cache]\n"
                           "ttl_seconds = 86400\nmax_entries = 100000\ncleanup_interval = 3600\n"
                           "[policies]\nwrite_mode = write_through\ncoherence = immediate\n"
                           "preload_common = True\npredictive_cache = False\n",
                           NULL, out, sizeof(out)),
                 0, "%s", out);
    cr_assert(strstr(out, "[l1]\n"), "%s", out);
    cr_assert(strstr(out, "eviction_policy = lru\n"), "%s", out);
    cr_assert(strstr(out, "coherence = pubsub\n"), "%s", out);
}

/* Start-up unwinds what it acquired: a socket whose directory cannot be made (a file stands
 * where a directory should) stops khalad with exit status 1 and a message naming the path,
 * after the L1 segment and the levels below were opened; the segment it made is removed (no
 * worker has seen it), and neither its lock nor a socket is left. */
Test(khalad, a_start_that_fails_late_leaves_no_segment_lock_or_socket) {
    char name[80], file[128], sock[160], l2[160], sock_set[200];
    snprintf(name, sizeof(name), "%su", khalad_name);
    snprintf(file, sizeof(file), "%s/a-file", khalad_dir());
    snprintf(sock, sizeof(sock), "%s/sub/khalad.sock", file);
    snprintf(l2, sizeof(l2), "l2.path=%s/l2u", khalad_dir());
    snprintf(sock_set, sizeof(sock_set), "cache.socket=%s", sock);
    int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(fd, 0);
    close(fd);
    const char *const args[] = {"--foreground",        "--name", name, "--set", sock_set, "--set",
                                "l1.max_memory_mb=16", "--set",  l2,   NULL};
    char out[8192];
    int st = khalad_run(args, out, sizeof(out));
    cr_assert_eq(st, 1, "exit status %d", st);
    cr_assert_not_null(strstr(out, "cannot create the socket's directory"), "log: %s", out);
    cr_assert_not_null(strstr(out, "is not a directory"), "log: %s", out);
    cr_assert_not_null(strstr(out, "made a new L1 segment"), "it got as far as L1: %s", out);
    char data[128], readers[128], lock[128], path[160];
    khala__seg_shm_names(name, data, readers, sizeof(data));
    khala__seg_lock_name(name, lock, sizeof(lock));
    const char *left[] = {data, readers, lock};
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "/dev/shm/%s", left[i][0] == '/' ? left[i] + 1 : left[i]);
        cr_assert_neq(access(path, F_OK), 0, "%s is left behind", path);
    }
    cr_assert_neq(access(sock, F_OK), 0);
    khala__seg_unlink(name); /* in case the test failed above */
}

/* Crash ordering (daemon/store.c): khalad killed between the steps of a put, then restarted on
 * the segment it left (adopted, as after any crash). Whatever step it died at, L1 never serves
 * a value older than L2's: read through the shared segment and through khalad, the key holds
 * the newest value any level holds (the new one once L2 took it, else the last acknowledged
 * one). KHALAD_TEST_CRASH_AT makes khalad raise SIGKILL at the named step. */
Test(khalad, a_crash_between_the_steps_of_a_put_never_leaves_l1_older_than_l2) {
    static const struct {
        const char *step;
        const char *want; /* what every read must see after the restart */
    } cases[] = {
        {"after_l1_drop", "old"}, /* L1 dropped, L2 not yet written */
        {"after_l2", "new"},      /* L2 written, L1 not yet */
        {"after_l1", "new"},      /* both written, not yet acknowledged */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char key[32];
        snprintf(key, sizeof(key), "crash-%zu", i);
        client_t c = khalad_dial();
        cr_assert_eq(put(&c, key, "old", KHALA_TYPE_MEMORY_ENTITY, NULL), 0);
        khalad_hang_up(&c);
        khalad_kill(SIGTERM);
        setenv("KHALAD_TEST_CRASH_AT", cases[i].step, 1);
        khalad_start();
        unsetenv("KHALAD_TEST_CRASH_AT");
        c = khalad_dial();
        khala_msg_t m = khalad_req(KHALA_OP_PUT, key), r;
        m.value.ptr = (const uint8_t *)"new";
        m.value.len = 3;
        m.has |= KHALA_F_V;
        khalad_request(&c, &m);
        cr_assert_eq(reply(&c, KHALA_OP_PUT, &r), -1, "%s: khalad died before replying",
                     cases[i].step);
        khalad_hang_up(&c);
        int st;
        cr_assert_eq(waitpid(khalad_pid, &st, 0), khalad_pid);
        cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "%s: killed", cases[i].step);
        khalad_pid = 0;
        khalad_start(); /* adopts the segment the killed khalad left */
        char buf[32];
        size_t len = 0;
        khala_cache_t *w;
        cr_assert_eq(khala_cache_open(khalad_name, NULL, &w), 0);
        int rc = khala_cache_get(w, key, strlen(key), buf, sizeof(buf) - 1, &len);
        if (rc == 0) {
            buf[len] = '\0';
            cr_assert_str_eq(buf, cases[i].want, "%s: L1 serves '%s'", cases[i].step, buf);
        }
        khala_cache_close(w);
        c = khalad_dial();
        cr_assert_eq(get(&c, key, buf, sizeof(buf)), 0);
        cr_assert_str_eq(buf, cases[i].want, "%s: khalad serves '%s'", cases[i].step, buf);
        khalad_hang_up(&c);
    }
}

/* A peer whose supplementary group (not its primary one) is the socket's group may write: the
 * usual deployment, a worker user added to the cache's group. The peer is a child that becomes
 * uid/gid 65534 (nobody) with one supplementary group, the socket's, which needs root. */
Test(khalad, a_peer_in_the_socket_group_by_a_supplementary_group_may_write) {
    if (geteuid() != 0)
        cr_skip_test("needs root to become another user");
    const gid_t group = 54321; /* no user has it as primary group */
    khalad_kill(SIGTERM);
    khalad_extra_set = "cache.socket_mode=0660";
    khalad_extra_sets[0] = "cache.socket_group=54321";
    khalad_start();
    khalad_extra_sets[0] = NULL;
    char dir[sizeof(khalad_sock)];
    snprintf(dir, sizeof(dir), "%s", khalad_sock);
    *strrchr(dir, '/') = '\0';
    cr_assert_eq(chmod(dir, 0711), 0);
    pid_t p = fork();
    cr_assert_geq(p, 0);
    if (p == 0) {
        if (setgroups(1, &group) != 0 || setgid(65534) != 0 || setuid(65534) != 0)
            _exit(10);
        client_t c = khalad_dial();
        if (put(&c, "member", "by a group member", KHALA_TYPE_MEMORY_ENTITY, NULL) != 0)
            _exit(11);
        _exit(0);
    }
    int st;
    cr_assert_eq(waitpid(p, &st, 0), p);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the group member's client failed at step %d",
              WEXITSTATUS(st));
    client_t c = khalad_dial();
    char buf[32];
    cr_assert_eq(get(&c, "member", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "by a group member");
    khalad_hang_up(&c);
}

/* A client speaking another protocol version is refused at hello, with a message naming both
 * versions, and may still say hello in the right one on the same connection. */
Test(khalad, hello_in_another_protocol_version_is_refused_naming_both) {
    client_t c = khalad_dial();
    khala_msg_t m = khalad_req(KHALA_OP_HELLO, NULL), r;
    m.proto = KHALA_PROTO_VERSION + 7;
    m.has |= KHALA_F_PROTO;
    khalad_request(&c, &m);
    cr_assert_eq(reply(&c, KHALA_OP_HELLO, &r), 0);
    cr_assert_eq(r.rc, KHALA_EPROTO);
    char msg[256], want[128];
    snprintf(msg, sizeof(msg), "%.*s", (int)r.err.len, (const char *)r.err.ptr);
    snprintf(want, sizeof(want), "protocol version %u is not spoken here; khalad speaks %u",
             (unsigned)(KHALA_PROTO_VERSION + 7), (unsigned)KHALA_PROTO_VERSION);
    cr_assert_str_eq(msg, want);
    khala__proto_msg_free(&r);
    m = khalad_req(KHALA_OP_HELLO, NULL);
    m.proto = KHALA_PROTO_VERSION;
    m.has |= KHALA_F_PROTO;
    khalad_request(&c, &m);
    cr_assert_eq(reply(&c, KHALA_OP_HELLO, &r), 0);
    cr_assert_eq(r.rc, 0, "the connection stays usable");
    khala__proto_msg_free(&r);
    khalad_hang_up(&c);
}

/* Invalidating a key that no level holds is no error: it answers 0 items dropped, and the
 * other keys stay. */
Test(khalad, invalidating_a_key_that_is_not_cached_is_no_error) {
    client_t c = khalad_dial();
    cr_assert_eq(put(&c, "kept", "v", KHALA_TYPE_MEMORY_ENTITY, NULL), 0);
    cr_assert_eq(invalidate(&c, KHALA_BY_KEY, "never-put", 0), 0);
    char buf[8];
    cr_assert_eq(get(&c, "kept", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "v");
    khalad_hang_up(&c);
}

/* The command line: --help and --version answer and exit 0; an unknown option or a stray
 * argument is a usage error (exit 2, naming it, with the usage); a --name too long for a cache
 * name is refused (exit 1) before anything is made. */
Test(khalad_check, command_line_mistakes_are_named_and_exit_non_zero) {
    static char out[8192];
    const char *const help[] = {"--help", NULL};
    cr_assert_eq(khalad_run(help, out, sizeof(out)), 0, "%s", out);
    cr_assert_not_null(strstr(out, "usage: khalad [--config FILE]"), "%s", out);
    cr_assert_not_null(strstr(out, "--check        validate the configuration"), "%s", out);
    const char *const version[] = {"--version", NULL};
    cr_assert_eq(khalad_run(version, out, sizeof(out)), 0, "%s", out);
    cr_assert_eq(strncmp(out, "khalad ", 7), 0, "%s", out);
    const char *const bogus[] = {"--bogus", NULL};
    cr_assert_eq(khalad_run(bogus, out, sizeof(out)), 2, "%s", out);
    cr_assert_not_null(strstr(out, "bogus"), "the option is named: %s", out);
    cr_assert_not_null(strstr(out, "usage: khalad"), "%s", out);
    const char *const stray[] = {"--check", "stray", NULL};
    cr_assert_eq(khalad_run(stray, out, sizeof(out)), 2, "%s", out);
    cr_assert_not_null(strstr(out, "khalad: unexpected argument 'stray'"), "%s", out);
    cr_assert_not_null(strstr(out, "usage: khalad"), "%s", out);
    char name[KHALA_NAME_MAX + 2];
    memset(name, 'n', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    const char *const longname[] = {"--check", "--name", name, NULL};
    cr_assert_eq(khalad_run(longname, out, sizeof(out)), 1, "%s", out);
    char want[128];
    snprintf(want, sizeof(want), "khalad: --name: 'nnnnnnnnnnnnnnnn...' is longer than %d bytes",
             KHALA_NAME_MAX);
    cr_assert_not_null(strstr(out, want), "%s", out);
}

/* More --set options than khalad keeps is a usage error naming it, not a silent truncation. */
Test(khalad_check, too_many_set_options_are_refused) {
    static char out[8192];
    const char *args[150];
    int n = 0;
    args[n++] = "--check";
    for (int i = 0; i < 64; i++) {
        args[n++] = "--set";
        args[n++] = "l1.ttl_seconds=60";
    }
    args[n] = NULL;
    cr_assert_eq(khalad_run(args, out, sizeof(out)), 2, "%s", out);
    cr_assert_not_null(strstr(out, "khalad: too many --set options"), "%s", out);
    args[1 + 2 * 62] = NULL; /* 62 fit, and one more place stays free for --name */
    cr_assert_eq(khalad_run(args, out, sizeof(out)), 0, "%s", out);
    cr_assert_not_null(strstr(out, "ttl_seconds = 60"), "%s", out);
}

/* A peer that may read but not write may ask for a miss with "loader" set, but is not made
 * the single-flight leader (it could not fill the key): it gets a plain miss, and the key's
 * load is still free for a writer to lead. Needs root to become another user. */
Test(khalad, a_reader_asking_to_load_gets_a_plain_miss_and_leads_no_load) {
    if (geteuid() != 0)
        cr_skip_test("needs root to become another user");
    restart_open_to_everyone();
    pid_t p = fork();
    cr_assert_geq(p, 0);
    if (p == 0) {
        if (become_reader() != 0)
            _exit(10);
        client_t c = khalad_dial();
        khala_msg_t m = khalad_req(KHALA_OP_GET, "cold"), r;
        m.loader = true;
        m.has |= KHALA_F_LOADER;
        khalad_request(&c, &m);
        if (reply(&c, KHALA_OP_GET, &r) != 0)
            _exit(11);
        if (r.rc != KHALA_ENOTFOUND)
            _exit(12);
        if (r.load)
            _exit(13); /* made the leader of a load it may not fill */
        khala__proto_msg_free(&r);
        khalad_hang_up(&c);
        _exit(0);
    }
    int st;
    cr_assert_eq(waitpid(p, &st, 0), p);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the reader's client failed at step %d",
              WEXITSTATUS(st));
    /* The owner asking the same key leads its load at once (no leader was left waiting). */
    client_t c = khalad_dial();
    khala_msg_t m = khalad_req(KHALA_OP_GET, "cold"), r;
    m.loader = true;
    m.has |= KHALA_F_LOADER;
    khalad_request(&c, &m);
    cr_assert_eq(reply(&c, KHALA_OP_GET, &r), 0);
    cr_assert_eq(r.rc, KHALA_ENOTFOUND);
    cr_assert(r.load, "the writer leads the load");
    khala__proto_msg_free(&r);
    khalad_hang_up(&c);
}

/* The systemd watchdog: with WATCHDOG_USEC set, khalad pings at half the interval while its
 * loop runs, each ping with a STATUS= line telling what it serves (items in L1, connections).
 * The test stands in for systemd and waits for a ping that shows its item and connection. */
Test(khalad, watchdog_pings_tell_the_items_and_connections_served) {
    khalad_kill(SIGTERM);
    char path[108];
    snprintf(path, sizeof(path), "/tmp/khala-wd-%d.sock", (int)getpid());
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    setenv("NOTIFY_SOCKET", path, 1);
    setenv("WATCHDOG_USEC", "100000", 1); /* 100 ms: a ping every 50 ms */
    khalad_start();
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    client_t c = khalad_dial();
    cr_assert_eq(put(&c, "wd", "v", KHALA_TYPE_MEMORY_ENTITY, NULL), 0);
    struct timeval tv = {.tv_sec = 5, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char msg[512] = "";
    int pings = 0, seen = 0;
    for (int i = 0; i < 200 && !seen; i++) {
        ssize_t n = recv(fd, msg, sizeof(msg) - 1, 0);
        cr_assert_gt(n, 0, "no watchdog ping from khalad (%d so far): %s", pings, strerror(errno));
        msg[n] = '\0';
        if (!strstr(msg, "WATCHDOG=1"))
            continue;
        pings++;
        seen = strstr(msg, "STATUS=serving 1 items, 1 connections") != NULL;
    }
    cr_assert(seen, "no ping showed the item and the connection; last: %s", msg);
    khalad_hang_up(&c);
    close(fd);
    unlink(path);
}
