/*
 * The harness (tests/harness/harness.c) that starts private khalad and redis-server processes
 * for the tests and the bench: a start returns once the server answers, a server that exits at
 * start or an override that does not fit gives its code and a message, a stop reaps, a clean
 * removes the segment and the socket, and a killed redis-server comes back on its port. Real
 * processes: KHALAD_PATH, and $KHALA_TEST_REDIS_SERVER (or redis-server on PATH).
 */
#include <criterion/criterion.h>
#include <errno.h>
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

static char g_dir[64];
static char g_sock[108];
static char g_name[64];
static harness_khalad_t g_k;
static harness_redis_t g_r;

static void setup(void) {
    strcpy(g_dir, "/tmp/khala-harness-XXXXXX");
    cr_assert_not_null(mkdtemp(g_dir));
    snprintf(g_sock, sizeof(g_sock), "%s/khalad.sock", g_dir);
    snprintf(g_name, sizeof(g_name), "hn%d", (int)getpid());
    memset(&g_r, 0, sizeof(g_r));
    g_r.bin = getenv("KHALA_TEST_REDIS_SERVER");
    cr_assert_eq(harness_khalad_init(&g_k, KHALAD_PATH, g_name, g_sock), 0, "%s", g_k.err);
    cr_assert_eq(harness_khalad_set(&g_k, "l2.path=%s/l2", g_dir), 0);
    cr_assert_eq(harness_khalad_set(&g_k, "l1.max_memory_mb=16"), 0);
    g_k.verbose = getenv("KHALA_TEST_VERBOSE") != NULL;
}

static void teardown(void) {
    harness_khalad_kill(&g_k, SIGKILL);
    harness_khalad_clean(&g_k);
    harness_redis_stop(&g_r);
    harness_rmtree(g_dir);
}

TestSuite(harness, .init = setup, .fini = teardown, .timeout = 60);

static int accepts(const char *path) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    int ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

static int shm_exists(const char *name) {
    char path[128];
    snprintf(path, sizeof(path), "/dev/shm/khala.%s.data", name);
    return access(path, F_OK) == 0;
}

Test(harness, khalad_start_returns_once_it_answers_and_stop_reaps_it) {
    cr_assert_eq(harness_khalad_start(&g_k), 0, "%s", g_k.err);
    pid_t pid = g_k.pid;
    cr_assert_gt(pid, 0);
    cr_assert(accepts(g_sock), "khalad does not answer on %s", g_sock);
    cr_assert(shm_exists(g_name));
    cr_assert_eq(harness_khalad_start(&g_k), -EBUSY);
    cr_assert_eq(harness_khalad_stop(&g_k, 0), 0, "%s", g_k.err);
    cr_assert_eq(g_k.pid, 0);
    cr_assert_eq(kill(pid, 0), -1, "khalad %d was not reaped", (int)pid);
    cr_assert_eq(errno, ESRCH);
    harness_khalad_clean(&g_k);
    cr_assert_not(shm_exists(g_name), "the segment is left after clean");
    cr_assert_neq(access(g_sock, F_OK), 0, "the socket is left after clean");
}

Test(harness, khalad_killed_restarts_with_the_same_configuration_and_clean_removes_its_files) {
    cr_assert_eq(harness_khalad_start(&g_k), 0, "%s", g_k.err);
    int st = harness_khalad_kill(&g_k, SIGKILL);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    cr_assert_eq(g_k.pid, 0);
    cr_assert_eq(access(g_sock, F_OK), 0, "a killed khalad leaves its socket");
    cr_assert_eq(harness_khalad_start(&g_k), 0, "%s", g_k.err);
    cr_assert(accepts(g_sock));
    harness_khalad_kill(&g_k, SIGKILL);
    harness_khalad_clean(&g_k);
    cr_assert_neq(access(g_sock, F_OK), 0, "the socket is left after clean");
    cr_assert_not(shm_exists(g_name), "the segment is left after clean");
}

Test(harness, khalad_that_exits_at_start_gives_echild_at_once) {
    cr_assert_eq(harness_khalad_set(&g_k, "no_such_section.key=1"), 0);
    g_k.start_ms = 30000;
    cr_assert_eq(harness_khalad_start(&g_k), -ECHILD);
    cr_assert_eq(g_k.pid, 0);
    cr_assert(strstr(g_k.err, g_name) && strstr(g_k.err, "exited at start"), "%s", g_k.err);
}

Test(harness, khalad_override_that_does_not_fit_gives_e2big) {
    char big[HARNESS_SET_LEN + 1];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    unsigned n = g_k.nsets;
    cr_assert_eq(harness_khalad_set(&g_k, "l2.path=%s", big), -E2BIG);
    cr_assert_eq(g_k.nsets, n, "nothing added");
    harness_khalad_sets_reset(&g_k);
    cr_assert_eq(g_k.nsets, 1, "cache.socket stays");
    for (unsigned i = 1; i < HARNESS_KHALAD_SETS_MAX; i++)
        cr_assert_eq(harness_khalad_set(&g_k, "cache.socket_mode=0660"), 0);
    cr_assert_eq(harness_khalad_set(&g_k, "cache.socket_mode=0660"), -E2BIG);
}

/* "+PONG" from the server on fd. */
static int pong(int fd) {
    char buf[16] = "";
    if (write(fd, "PING\r\n", 6) != 6 || read(fd, buf, sizeof(buf) - 1) <= 0)
        return 0;
    return strncmp(buf, "+PONG", 5) == 0;
}

Test(harness, redis_on_tcp_and_unix_answers_and_a_kill_then_start_comes_back_on_its_port) {
    g_r.tcp = 1;
    g_r.unix_socket = 1;
    cr_assert_eq(harness_redis_start(&g_r), 0, "%s", g_r.err);
    cr_assert_gt(g_r.port, 0);
    cr_assert_gt(g_r.pid, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", g_r.sock);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "%s", g_r.sock);
    cr_assert(pong(fd));
    close(fd);
    unsigned port = g_r.port;
    char dir[sizeof(g_r.dir)];
    snprintf(dir, sizeof(dir), "%s", g_r.dir);
    harness_redis_kill(&g_r);
    cr_assert_eq(g_r.pid, 0);
    cr_assert_eq(g_r.port, port, "the port is kept");
    cr_assert_eq(harness_redis_start(&g_r), 0, "%s", g_r.err);
    cr_assert_eq(g_r.port, port, "restarted on another port");
    harness_redis_stop(&g_r);
    cr_assert_eq(g_r.pid, 0);
    struct stat st;
    cr_assert_neq(stat(dir, &st), 0, "%s is left after stop", dir);
}

Test(harness, redis_with_a_bad_option_gives_echild_and_none_asked_gives_einval) {
    cr_assert_eq(harness_redis_start(&g_r), -EINVAL);
    g_r.tcp = 1;
    g_r.args[0] = "--no-such-option";
    g_r.args[1] = "1";
    cr_assert_eq(harness_redis_start(&g_r), -ECHILD);
    cr_assert_eq(g_r.pid, 0);
    cr_assert(strstr(g_r.err, "exited at start"), "%s", g_r.err);
}
