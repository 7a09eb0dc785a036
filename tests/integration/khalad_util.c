/*
 * Helpers that start and stop a real khalad for the integration tests (khalad_util.h): a
 * Criterion adapter over the shared harness (tests/harness/harness.h), which does the work
 * (fork + exec, readiness, stop, cleanup) for the tests and the benchmarks alike. Here every
 * harness failure fails the test, with the harness's message.
 *
 * khalad runs in the foreground as a child of the test process, with a small L1 and a short
 * single-flight timeout, on a socket in a private directory. Readiness is "the socket accepts a
 * connection", polled with a bound; a khalad that exits during start fails the test at once.
 * Its stderr goes to /dev/null unless KHALA_TEST_VERBOSE is set.
 */
#include "khalad_util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#ifndef KHALAD_PATH
#error "KHALAD_PATH must name the khalad binary"
#endif

char khalad_name[64];
char khalad_sock[108];
pid_t khalad_pid;
static char g_dir[64];

void sleep_ms(long ms) {
    harness_sleep_ms(ms);
}

void khalad_env_init(const char *prefix) {
    snprintf(khalad_name, sizeof(khalad_name), "%s%d", prefix, (int)getpid());
    snprintf(g_dir, sizeof(g_dir), "/tmp/khala-it-%d", (int)getpid());
    mkdir(g_dir, 0700);
    snprintf(khalad_sock, sizeof(khalad_sock), "%s/khalad.sock", g_dir);
}

const char *khalad_extra_set;
const char *khalad_extra_sets[KHALAD_EXTRA_SETS_MAX];

pid_t khalad_spawn(const char *name, const char *sock, const char *dir, const char *const *sets) {
    static harness_khalad_t k; /* large: not on the stack */
    int rc = harness_khalad_init(&k, KHALAD_PATH, name, sock);
    if (!rc)
        rc = harness_khalad_set(&k, "l1.max_memory_mb=16");
    if (!rc)
        rc = harness_khalad_set(&k, "policies.single_flight_timeout_ms=3000");
    if (!rc)
        rc = harness_khalad_set(&k, "l2.path=%s/l2", dir);
    for (int i = 0; !rc && sets && sets[i]; i++)
        rc = harness_khalad_set(&k, "%s", sets[i]);
    k.verbose = getenv("KHALA_TEST_VERBOSE") != NULL;
    if (!rc)
        rc = harness_khalad_start(&k);
    cr_assert_eq(rc, 0, "%s", k.err);
    return k.pid;
}

void khalad_start(void) {
    const char *sets[KHALAD_EXTRA_SETS_MAX + 2];
    int n = 0;
    sets[n++] = khalad_extra_set ? khalad_extra_set : "cache.socket_mode=0660";
    for (int i = 0; i < KHALAD_EXTRA_SETS_MAX && khalad_extra_sets[i]; i++)
        sets[n++] = khalad_extra_sets[i];
    sets[n] = NULL;
    khalad_pid = khalad_spawn(khalad_name, khalad_sock, g_dir, sets);
}

void khalad_kill(int sig) {
    harness_khalad_t k = {.pid = khalad_pid};
    harness_khalad_kill(&k, sig);
    khalad_pid = 0;
}

void khalad_env_fini(void) {
    harness_khalad_t k = {.pid = khalad_pid};
    snprintf(k.name, sizeof(k.name), "%s", khalad_name);
    snprintf(k.sock, sizeof(k.sock), "%s", khalad_sock);
    harness_khalad_stop(&k, 0);
    khalad_pid = 0;
    harness_khalad_clean(&k);
    harness_rmtree(g_dir);
}

const char *khalad_dir(void) {
    return g_dir;
}

khala_msg_t khalad_req(khala_op_t op, const char *key) {
    khala_msg_t m;
    khala__proto_msg_init(&m);
    m.op = op;
    if (key) {
        m.key.ptr = (const uint8_t *)key;
        m.key.len = strlen(key);
        m.has |= KHALA_F_K;
    }
    return m;
}

khala_chan_t *khalad_chan(void) {
    khala_chan_t *ch = NULL;
    char err[256];
    int rc = khala__chan_open(khalad_sock, khalad_name, 5000, &ch, err, sizeof(err));
    cr_assert_eq(rc, 0, "connect to %s: %s", khalad_sock, err);
    return ch;
}

int khalad_call(khala_chan_t *ch, khala_msg_t *m, khala_msg_t *r, int timeout_ms) {
    char err[256];
    khala__proto_msg_init(r); /* the channel frees what *r held before */
    int rc = khala__chan_call(ch, m, r, timeout_ms, err, sizeof(err));
    cr_assert_eq(rc, 0, "call %s: %s", khala__proto_op_name(m->op), err);
    return r->rc;
}

uint64_t khalad_stat(khala_chan_t *ch, const char *section, const char *name, int timeout_ms) {
    khala_msg_t m = khalad_req(KHALA_OP_STATS, NULL), r;
    cr_assert_eq(khalad_call(ch, &m, &r, timeout_ms), 0);
    uint64_t v = UINT64_MAX;
    for (uint32_t i = 0; i < r.ndata; i++) {
        const khala_kv_t *s = &r.data[i];
        if (s->kind != KHALA_KV_MAP || s->key.len != strlen(section) ||
            memcmp(s->key.ptr, section, s->key.len) != 0)
            continue;
        for (uint32_t j = 0; j < s->as.map.n; j++) {
            const khala_kv_t *e = &s->as.map.items[j];
            if (e->key.len == strlen(name) && memcmp(e->key.ptr, name, e->key.len) == 0)
                v = e->kind == KHALA_KV_UINT ? e->as.u : (uint64_t)e->as.i;
        }
    }
    khala__proto_msg_free(&r);
    return v;
}

void khalad_use_redis(const char *url, const char *ns) {
    static char url_set[600], ns_set[128];
    snprintf(url_set, sizeof(url_set), "l2.redis_url=%s", url);
    snprintf(ns_set, sizeof(ns_set), "l2.namespace=%s", ns);
    khalad_extra_sets[0] = url_set;
    khalad_extra_sets[1] = "l2.backend=redis";
    khalad_extra_sets[2] = ns_set;
    khalad_extra_sets[3] = NULL;
}

int khalad_run(const char *const *args, char *out, size_t cap) {
    const char *argv[160] = {KHALAD_PATH};
    int argc = 1;
    for (; args && *args && argc < 159; args++)
        argv[argc++] = *args;
    argv[argc] = NULL;
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (dup2(p[1], 1) < 0 || dup2(p[1], 2) < 0)
            _exit(126);
        close(p[0]);
        execv(KHALAD_PATH, (char *const *)argv);
        _exit(127);
    }
    close(p[1]);
    size_t n = 0;
    for (ssize_t r; n < cap - 1 && (r = read(p[0], out + n, cap - 1 - n)) > 0;)
        n += (size_t)r;
    out[n] = '\0';
    close(p[0]);
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "khalad did not exit: %d", status);
    return WEXITSTATUS(status);
}

khalad_client_t khalad_dial(void) {
    khalad_client_t c = {.fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), .next_id = 1};
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", khalad_sock);
    cr_assert_eq(connect(c.fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "connect: %s",
                 strerror(errno));
    khala__proto_buf_init(&c.in);
    return c;
}

void khalad_hang_up(khalad_client_t *c) {
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    khala__proto_buf_free(&c->in);
}

int khalad_send(khalad_client_t *c, const void *p, size_t n) {
    const uint8_t *b = p;
    while (n) {
        ssize_t w = send(c->fd, b, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

uint64_t khalad_request(khalad_client_t *c, khala_msg_t *m) {
    khala_buf_t out;
    char err[256];
    khala__proto_buf_init(&out);
    m->id = c->next_id++;
    cr_assert_eq(khala__proto_encode_request(&out, m, err, sizeof(err)), 0, "encode: %s", err);
    cr_assert_eq(khalad_send(c, out.data, out.len), 0, "send: %s", strerror(errno));
    khala__proto_buf_free(&out);
    return m->id;
}

int khalad_reply(khalad_client_t *c, khala_op_t op, khala_msg_t *r, int timeout_ms) {
    if (c->consumed) {
        khala__proto_buf_consume(&c->in, c->consumed);
        c->consumed = 0;
    }
    uint32_t body = 0;
    char err[256];
    while (khala__proto_frame_check(c->in.data, c->in.len, KHALA_FRAME_MAX_CEILING, &body, err,
                                    sizeof(err)) == KHALA_PROTO_NEED_MORE) {
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        if (poll(&p, 1, timeout_ms) <= 0)
            return -1;
        cr_assert_eq(khala__proto_buf_reserve(&c->in, 1u << 20), 0);
        ssize_t n = recv(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len, 0);
        if (n <= 0)
            return -1;
        c->in.len += (size_t)n;
    }
    khala__proto_msg_init(r);
    int rc = khala__proto_decode_reply(op, c->in.data + 4, body, r, err, sizeof(err));
    cr_assert_eq(rc, 0, "decode reply: %s", err);
    c->consumed = 4 + (size_t)body;
    return 0;
}
