/*
 * The socket server (daemon/server.c) with an echo handler: frames in, the same frames out.
 * Clients are real sockets (and real forked processes where it matters).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "khala/error.h"
#include "server.h"

static char g_path[108];
static khala_server_t *g_srv;
static pthread_t g_thread;
static int g_running;
static int g_closed;   /* connections closed, seen by on_close (loop thread) */
static int g_bad_lens; /* on_bad_frame calls */

/* Echo: queue the frame back, with its length. A body "close" asks to be dropped. */
static int echo_frame(void *arg, khala_conn_t *c, const uint8_t *body, size_t len) {
    (void)arg;
    uint8_t hdr[4] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
                      (uint8_t)len};
    if (khala__conn_send(c, hdr, 4) != 0 || khala__conn_send(c, body, len) != 0)
        return -ENOMEM;
    return len == 5 && memcmp(body, "close", 5) == 0 ? -1 : 0;
}

static void bad_frame(void *arg, khala_conn_t *c, size_t len) {
    (void)arg;
    (void)len;
    __atomic_add_fetch(&g_bad_lens, 1, __ATOMIC_RELAXED);
    static const uint8_t reply[] = {0, 0, 0, 3, 'b', 'a', 'd'};
    (void)khala__conn_send(c, reply, sizeof(reply));
}

static void on_close(void *arg, khala_conn_t *c) {
    (void)arg;
    (void)c;
    __atomic_add_fetch(&g_closed, 1, __ATOMIC_RELAXED);
}

static void *loop_main(void *arg) {
    (void)arg;
    cr_assert_eq(khala__server_run(g_srv), 0);
    return NULL;
}

static void start(size_t max_frame, size_t max_out) {
    char err[256] = "";
    khala_server_config_t cfg;
    khala__server_config_init(&cfg);
    snprintf(g_path, sizeof(g_path), "/tmp/khala-test-%d.sock", (int)getpid());
    cfg.path = g_path;
    cfg.max_frame = max_frame;
    cfg.max_out = max_out;
    khala_server_ops_t ops = {
        .on_frame = echo_frame, .on_bad_frame = bad_frame, .on_close = on_close};
    int rc = khala__server_open(&cfg, &ops, NULL, &g_srv, err, sizeof(err));
    cr_assert_eq(rc, 0, "server_open: %d %s", rc, err);
    cr_assert_eq(pthread_create(&g_thread, NULL, loop_main, NULL), 0);
    g_running = 1;
}

static void stop(void) {
    if (g_running) {
        khala__server_stop(g_srv);
        pthread_join(g_thread, NULL);
        khala__server_close(g_srv);
        g_running = 0;
    }
    unlink(g_path);
}

TestSuite(server, .fini = stop, .timeout = 60);

static int dial(void) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", g_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "connect: %s",
                 strerror(errno));
    return fd;
}

static void send_all(int fd, const void *p, size_t n) {
    const uint8_t *b = p;
    while (n) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        cr_assert_gt(w, 0, "send: %s", strerror(errno));
        b += w;
        n -= (size_t)w;
    }
}

static void recv_all(int fd, void *p, size_t n) {
    uint8_t *b = p;
    while (n) {
        ssize_t r = recv(fd, b, n, 0);
        cr_assert_gt(r, 0, "recv: %zd %s", r, strerror(errno));
        b += r;
        n -= (size_t)r;
    }
}

static void send_frame(int fd, const void *body, uint32_t len) {
    uint8_t hdr[4] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
                      (uint8_t)len};
    send_all(fd, hdr, 4);
    send_all(fd, body, len);
}

/* Read one frame into buf (cap bytes); returns its length. */
static uint32_t recv_frame(int fd, void *buf, size_t cap) {
    uint8_t hdr[4];
    recv_all(fd, hdr, 4);
    uint32_t len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
    cr_assert_leq(len, cap);
    recv_all(fd, buf, len);
    return len;
}

Test(server, pipelined_frames_come_back_in_order) {
    start(1024, 1 << 20);
    int fd = dial();
    /* 500 frames in one burst, then read the 500 replies. */
    char body[32];
    for (int i = 0; i < 500; i++) {
        int n = snprintf(body, sizeof(body), "frame-%d", i);
        send_frame(fd, body, (uint32_t)n);
    }
    for (int i = 0; i < 500; i++) {
        char want[32], got[64];
        int n = snprintf(want, sizeof(want), "frame-%d", i);
        uint32_t len = recv_frame(fd, got, sizeof(got));
        cr_assert_eq(len, (uint32_t)n);
        cr_assert_eq(memcmp(got, want, len), 0, "reply %d out of order", i);
    }
    close(fd);
}

Test(server, frame_split_across_writes_is_reassembled) {
    start(1 << 20, 4 << 20);
    int fd = dial();
    static uint8_t body[300000];
    for (size_t i = 0; i < sizeof(body); i++)
        body[i] = (uint8_t)(i * 7);
    uint8_t hdr[4] = {0, (uint8_t)(sizeof(body) >> 16), (uint8_t)(sizeof(body) >> 8),
                      (uint8_t)sizeof(body)};
    send_all(fd, hdr, 2); /* even the length prefix arrives in pieces */
    usleep(1000);
    send_all(fd, hdr + 2, 2);
    send_all(fd, body, 1000);
    usleep(1000);
    send_all(fd, body + 1000, sizeof(body) - 1000);
    static uint8_t got[sizeof(body)];
    cr_assert_eq(recv_frame(fd, got, sizeof(got)), sizeof(body));
    cr_assert_eq(memcmp(got, body, sizeof(body)), 0);
    close(fd);
}

Test(server, oversized_frame_gets_an_error_and_only_that_client_is_dropped) {
    start(1024, 1 << 20);
    int good = dial(), bad = dial();
    uint8_t hdr[4] = {0, 0, 0x10, 0}; /* 4096 > max_frame 1024 */
    send_all(bad, hdr, 4);
    char reply[16];
    cr_assert_eq(recv_frame(bad, reply, sizeof(reply)), 3);
    cr_assert_eq(memcmp(reply, "bad", 3), 0);
    char c;
    cr_assert_eq(recv(bad, &c, 1, 0), 0, "the bad client is disconnected");
    cr_assert_eq(__atomic_load_n(&g_bad_lens, __ATOMIC_RELAXED), 1);
    /* The other client is served as if nothing happened. */
    send_frame(good, "still here", 10);
    cr_assert_eq(recv_frame(good, reply, sizeof(reply)), 10);
    close(good);
    close(bad);
}

Test(server, zero_length_frame_is_a_protocol_error) {
    start(1024, 1 << 20);
    int fd = dial();
    uint8_t hdr[4] = {0, 0, 0, 0};
    send_all(fd, hdr, 4);
    char reply[16];
    cr_assert_eq(recv_frame(fd, reply, sizeof(reply)), 3);
    char c;
    cr_assert_eq(recv(fd, &c, 1, 0), 0);
    close(fd);
}

Test(server, handler_can_close_a_connection_after_its_reply) {
    start(1024, 1 << 20);
    int fd = dial();
    send_frame(fd, "close", 5);
    char reply[16];
    cr_assert_eq(recv_frame(fd, reply, sizeof(reply)), 5, "the reply is written first");
    char c;
    cr_assert_eq(recv(fd, &c, 1, 0), 0);
    close(fd);
}

Test(server, client_that_never_reads_does_not_stall_the_others) {
    start(64 * 1024, 256 * 1024);
    int hog = dial(), other = dial();
    /* The hog pipelines far more than max_out without reading a single reply. */
    static uint8_t body[60000];
    memset(body, 'h', sizeof(body));
    int sent = 0;
    struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};
    setsockopt(hog, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    for (int i = 0; i < 400; i++) {
        uint8_t hdr[4] = {0, 0, (uint8_t)(sizeof(body) >> 8), (uint8_t)sizeof(body)};
        if (send(hog, hdr, 4, MSG_NOSIGNAL) != 4)
            break;
        ssize_t w = send(hog, body, sizeof(body), MSG_NOSIGNAL);
        if (w != (ssize_t)sizeof(body))
            break; /* the server stopped reading the hog: back-pressure */
        sent++;
    }
    cr_assert_lt(sent, 400, "back-pressure must stop the hog (sent %d frames)", sent);
    /* Meanwhile another client gets answers at once. */
    for (int i = 0; i < 100; i++) {
        char reply[16];
        send_frame(other, "ping", 4);
        cr_assert_eq(recv_frame(other, reply, sizeof(reply)), 4);
    }
    close(hog);
    close(other);
}

Test(server, many_clients_in_forked_processes_are_served) {
    start(1024, 1 << 20);
    enum { CLIENTS = 8, FRAMES = 2000 };
    pid_t pids[CLIENTS];
    for (int p = 0; p < CLIENTS; p++) {
        pids[p] = fork();
        cr_assert_geq(pids[p], 0);
        if (pids[p] == 0) {
            int fd = dial();
            char body[32], got[64];
            for (int i = 0; i < FRAMES; i++) {
                int n = snprintf(body, sizeof(body), "%d:%d", p, i);
                send_frame(fd, body, (uint32_t)n);
                if (recv_frame(fd, got, sizeof(got)) != (uint32_t)n || memcmp(got, body, n))
                    _exit(1);
            }
            close(fd);
            _exit(0);
        }
    }
    for (int p = 0; p < CLIENTS; p++) {
        int st;
        cr_assert_eq(waitpid(pids[p], &st, 0), pids[p]);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "client %d failed", p);
    }
}

Test(server, socket_file_has_the_configured_mode) {
    start(1024, 1 << 20);
    struct stat st;
    cr_assert_eq(stat(g_path, &st), 0);
    cr_assert(S_ISSOCK(st.st_mode));
    cr_assert_eq(st.st_mode & 0777, 0660);
}

Test(server, second_server_on_a_live_socket_is_refused) {
    start(1024, 1 << 20);
    char err[256] = "";
    khala_server_config_t cfg;
    khala__server_config_init(&cfg);
    cfg.path = g_path;
    khala_server_ops_t ops = {.on_frame = echo_frame};
    khala_server_t *other = NULL;
    cr_assert_eq(khala__server_open(&cfg, &ops, NULL, &other, err, sizeof(err)), KHALA_EEXIST);
    cr_assert_neq(strstr(err, "another khalad"), NULL, "%s", err);
}

Test(server, stale_socket_file_is_replaced) {
    /* A socket file left by a khalad that died: nobody listens behind it. */
    snprintf(g_path, sizeof(g_path), "/tmp/khala-test-%d.sock", (int)getpid());
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", g_path);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    start(1024, 1 << 20);
    int c = dial();
    char reply[8];
    send_frame(c, "hi", 2);
    cr_assert_eq(recv_frame(c, reply, sizeof(reply)), 2);
    close(c);
}

Test(server, closed_connections_are_released) {
    start(1024, 1 << 20);
    for (int i = 0; i < 50; i++) {
        int fd = dial();
        char reply[8];
        send_frame(fd, "x", 1);
        cr_assert_eq(recv_frame(fd, reply, sizeof(reply)), 1);
        close(fd);
    }
    for (int i = 0; i < 1000 && __atomic_load_n(&g_closed, __ATOMIC_RELAXED) < 50; i++)
        usleep(1000);
    cr_assert_eq(__atomic_load_n(&g_closed, __ATOMIC_RELAXED), 50);
}

/* A socket path that does not fit in sockaddr_un is refused before anything is made, and the
 * message names the path and the limit. */
Test(server, socket_path_longer_than_sun_path_is_refused) {
    char path[300], err[512] = "";
    memset(path, 'p', sizeof(path) - 1);
    memcpy(path, "/tmp/", 5);
    path[sizeof(path) - 1] = '\0';
    khala_server_config_t cfg;
    khala__server_config_init(&cfg);
    cfg.path = path;
    khala_server_ops_t ops = {.on_frame = echo_frame};
    khala_server_t *s = NULL;
    cr_assert_eq(khala__server_open(&cfg, &ops, NULL, &s, err, sizeof(err)), -ENAMETOOLONG);
    cr_assert_null(s);
    cr_assert_neq(strstr(err, "is longer than 107 bytes"), NULL, "%s", err);
    cr_assert_neq(strstr(err, "/tmp/ppp"), NULL, "the message names the path: %s", err);
}

/* A socket in a directory that does not exist cannot be bound: the error names the path and
 * the reason, and nothing is left behind. */
Test(server, socket_in_a_missing_directory_cannot_be_bound) {
    char path[108], err[512] = "";
    snprintf(path, sizeof(path), "/tmp/khala-test-nodir-%d/s.sock", (int)getpid());
    khala_server_config_t cfg;
    khala__server_config_init(&cfg);
    cfg.path = path;
    khala_server_ops_t ops = {.on_frame = echo_frame};
    khala_server_t *s = NULL;
    cr_assert_eq(khala__server_open(&cfg, &ops, NULL, &s, err, sizeof(err)), -ENOENT);
    cr_assert_null(s);
    cr_assert_neq(strstr(err, "cannot bind"), NULL, "%s", err);
    cr_assert_neq(strstr(err, path), NULL, "%s", err);
    cr_assert_neq(strstr(err, strerror(ENOENT)), NULL, "%s", err);
}

/* Connections beyond max_conns are closed at accept; the ones admitted are served, and a
 * slot freed by a client leaving is given to the next one. */
static void *run_open(void *arg) {
    cr_assert_eq(khala__server_run(arg), 0);
    return NULL;
}

Test(server, connections_beyond_max_conns_are_closed_at_once) {
    char err[256] = "";
    khala_server_config_t cfg;
    khala__server_config_init(&cfg);
    snprintf(g_path, sizeof(g_path), "/tmp/khala-test-%d.sock", (int)getpid());
    cfg.path = g_path;
    cfg.max_frame = 1024;
    cfg.max_conns = 1;
    khala_server_ops_t ops = {.on_frame = echo_frame, .on_close = on_close};
    cr_assert_eq(khala__server_open(&cfg, &ops, NULL, &g_srv, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(pthread_create(&g_thread, NULL, run_open, g_srv), 0);
    g_running = 1;
    int first = dial();
    char reply[8];
    send_frame(first, "a", 1); /* the first is admitted (its reply proves it was accepted) */
    cr_assert_eq(recv_frame(first, reply, sizeof(reply)), 1);
    int second = dial(); /* connect succeeds (backlog), then khalad closes it */
    char c;
    cr_assert_eq(recv(second, &c, 1, 0), 0, "the connection over the limit is closed");
    cr_assert_eq(__atomic_load_n(&g_closed, __ATOMIC_RELAXED), 0, "it was never a connection");
    send_frame(first, "b", 1); /* the admitted one is unaffected */
    cr_assert_eq(recv_frame(first, reply, sizeof(reply)), 1);
    close(first);
    close(second);
    for (int i = 0; i < 2000 && __atomic_load_n(&g_closed, __ATOMIC_RELAXED) < 1; i++)
        usleep(1000);
    cr_assert_eq(__atomic_load_n(&g_closed, __ATOMIC_RELAXED), 1);
    int third = dial(); /* the freed slot takes a new client */
    send_frame(third, "c", 1);
    cr_assert_eq(recv_frame(third, reply, sizeof(reply)), 1);
    close(third);
}

/* The handlers see the peer's credentials as the kernel recorded them at connect, group
 * membership (primary or supplementary) answered from SO_PEERGROUPS, and their own pointer. */
static int who_frame(void *arg, khala_conn_t *c, const uint8_t *body, size_t len) {
    (void)arg;
    (void)body;
    (void)len;
    pid_t pid;
    uid_t uid;
    gid_t gid;
    khala__conn_peer(c, &pid, &uid, &gid);
    khala__conn_peer(c, NULL, NULL, NULL); /* any of them may be skipped */
    gid_t other = (gid_t)65533;            /* a group this test process does not hold */
    gid_t groups[256];
    int ng = getgroups(256, groups);
    gid_t supp = ng > 0 ? groups[ng - 1] : gid;
    int in_primary = khala__conn_peer_in_group(c, gid);
    int in_other = khala__conn_peer_in_group(c, other);
    int in_other_again = khala__conn_peer_in_group(c, other); /* the remembered answer */
    int in_supp = khala__conn_peer_in_group(c, supp);
    khala__conn_set_data(c, (void *)(uintptr_t)0x5eed);
    int data_ok = khala__conn_data(c) == (void *)(uintptr_t)0x5eed;
    char out[160];
    int n = snprintf(out, sizeof(out), "%d %u %u %d %d %d %d %d", (int)pid, (unsigned)uid,
                     (unsigned)gid, in_primary, in_other, in_other_again, in_supp, data_ok);
    uint8_t hdr[4] = {0, 0, 0, (uint8_t)n};
    if (khala__conn_send(c, hdr, 4) != 0 || khala__conn_send(c, out, (size_t)n) != 0)
        return -ENOMEM;
    return 0;
}

Test(server, handlers_see_the_peers_credentials_and_groups) {
    char err[256] = "";
    khala_server_config_t cfg;
    khala__server_config_init(&cfg);
    snprintf(g_path, sizeof(g_path), "/tmp/khala-test-%d.sock", (int)getpid());
    cfg.path = g_path;
    khala_server_ops_t ops = {.on_frame = who_frame};
    cr_assert_eq(khala__server_open(&cfg, &ops, NULL, &g_srv, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(pthread_create(&g_thread, NULL, run_open, g_srv), 0);
    g_running = 1;
    gid_t groups[256];
    int ng = getgroups(256, groups);
    cr_assert_geq(ng, 0);
    for (int i = 0; i < ng; i++)
        cr_assert_neq(groups[i], (gid_t)65533, "the test needs a group it does not hold");
    cr_assert_neq(getgid(), (gid_t)65533);
    int fd = dial();
    send_frame(fd, "who", 3);
    char reply[160];
    uint32_t len = recv_frame(fd, reply, sizeof(reply) - 1);
    reply[len] = '\0';
    char want[160];
    snprintf(want, sizeof(want), "%d %u %u 1 0 0 1 1", (int)getpid(), (unsigned)getuid(),
             (unsigned)getgid());
    cr_assert_str_eq(reply, want);
    close(fd);
}

static void never_called(void *arg) {
    (void)arg;
    cr_assert_fail("a watched descriptor fired without being written");
}

/* The loop watches at most KHALA_SERVER_WATCH_MAX other descriptors; one more is refused with
 * -ENOSPC, and unwatching one makes room again. */
Test(server, watch_table_is_bounded_and_slots_are_reused) {
    char err[256] = "";
    khala_server_config_t cfg;
    khala__server_config_init(&cfg);
    snprintf(g_path, sizeof(g_path), "/tmp/khala-test-%d.sock", (int)getpid());
    cfg.path = g_path;
    khala_server_ops_t ops = {.on_frame = echo_frame};
    khala_server_t *s = NULL;
    cr_assert_eq(khala__server_open(&cfg, &ops, NULL, &s, err, sizeof(err)), 0, "%s", err);
    int fds[KHALA_SERVER_WATCH_MAX + 1][2];
    for (int i = 0; i <= KHALA_SERVER_WATCH_MAX; i++)
        cr_assert_eq(pipe(fds[i]), 0);
    for (int i = 0; i < KHALA_SERVER_WATCH_MAX; i++)
        cr_assert_eq(khala__server_watch(s, -1, fds[i][0], never_called, NULL), 0);
    cr_assert_eq(khala__server_watch(s, -1, fds[KHALA_SERVER_WATCH_MAX][0], never_called, NULL),
                 -ENOSPC);
    /* Replacing one watched descriptor by the spare one fits. */
    cr_assert_eq(
        khala__server_watch(s, fds[0][0], fds[KHALA_SERVER_WATCH_MAX][0], never_called, NULL), 0);
    /* A descriptor epoll refuses (a regular file) is reported, not stored. */
    cr_assert_eq(khala__server_watch(s, fds[1][0], -1, NULL, NULL), 0);
    FILE *file = tmpfile();
    cr_assert_not_null(file);
    cr_assert_eq(khala__server_watch(s, -1, fileno(file), never_called, NULL), -EPERM);
    fclose(file);
    khala__server_close(s);
    khala__server_close(NULL); /* closing nothing is allowed */
    for (int i = 0; i <= KHALA_SERVER_WATCH_MAX; i++) {
        close(fds[i][0]);
        close(fds[i][1]);
    }
}
