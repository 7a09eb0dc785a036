/*
 * Redis for the tests; see tests/redis_util.h.
 *
 * A private server is a fork + exec of $KHALA_TEST_REDIS_SERVER with --save "" and --appendonly
 * no, so that a kill loses everything and a restart starts empty, as the tests that use it
 * expect. Readiness is a PING answered (a connect alone can succeed before the server serves),
 * polled every 10 ms; a server that exits during the wait (a bad option, a port taken since
 * tu_redis_free_port) fails the test at once rather than after the deadline.
 */
#include "redis_util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "sys.h"

#define START_DEADLINE_MS 10000
#define START_POLL_MS 10
#define ARGS_MAX 32

/* Fail the test now (cr_assert_fail does not return; abort() tells the compiler so). */
#define FATAL(...)                                                                                 \
    do {                                                                                           \
        cr_assert_fail(__VA_ARGS__);                                                               \
        abort();                                                                                   \
    } while (0)

const char *tu_redis_env(const char *name) {
    const char *v = getenv(name);
    if (!v || !*v)
        FATAL("%s is not set: start the test servers with "
              "eval \"$(scripts/test-servers.sh start)\" (scripts/test.sh does it)",
              name);
    return v;
}

unsigned tu_redis_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    cr_assert_geq(fd, 0, "socket");
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0, "bind a free loopback port");
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* 1 if a redis-server answers PING on 127.0.0.1:port (NOAUTH counts: it serves). */
static int answers_ping(unsigned port) {
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", (int)port, tv);
    int ok = 0;
    if (c && !c->err) {
        redisReply *rep = redisCommand(c, "PING");
        ok = rep && (rep->type == REDIS_REPLY_STATUS ||
                     (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOAUTH", 6) == 0));
        freeReplyObject(rep);
    }
    redisFree(c);
    return ok;
}

void tu_redis_start(tu_redis_t *r, const char *const *args) {
    const char *bin = tu_redis_env("KHALA_TEST_REDIS_SERVER");
    cr_assert_eq(r->pid, 0, "redis-server on port %u is already running", r->port);
    if (!r->port)
        r->port = tu_redis_free_port();
    if (!r->dir[0]) {
        snprintf(r->dir, sizeof(r->dir), "/tmp/khala-test-redis-%d-%u", (int)getpid(), r->port);
        cr_assert(mkdir(r->dir, 0700) == 0 || errno == EEXIST, "mkdir %s: %s", r->dir,
                  strerror(errno));
    }
    char port[16];
    snprintf(port, sizeof(port), "%u", r->port);
    const char *argv[ARGS_MAX] = {bin, "--port",       port, "--bind", "127.0.0.1", "--save",
                                  "",  "--appendonly", "no", "--dir",  r->dir};
    size_t n = 11;
    for (size_t i = 0; args && args[i]; i++) {
        cr_assert_lt(n + 1, ARGS_MAX, "too many redis-server options");
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stdout))
            _exit(127);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    r->pid = pid;
    int64_t end = khala__sys_now_ms() + START_DEADLINE_MS;
    while (khala__sys_now_ms() < end) {
        if (answers_ping(r->port))
            return;
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            r->pid = 0;
            FATAL("redis-server (%s) on port %u exited at start", bin, r->port);
        }
        khala__sys_pause_us(START_POLL_MS * 1000);
    }
    FATAL("redis-server on port %u did not answer within %d ms", r->port, START_DEADLINE_MS);
}

void tu_redis_kill(tu_redis_t *r) {
    if (r->pid > 0) {
        kill(r->pid, SIGKILL);
        waitpid(r->pid, NULL, 0);
    }
    r->pid = 0;
}

void tu_redis_stop(tu_redis_t *r) {
    tu_redis_kill(r);
    if (r->dir[0]) {
        char path[160];
        snprintf(path, sizeof(path), "%s/dump.rdb", r->dir);
        unlink(path);
        rmdir(r->dir);
    }
    memset(r, 0, sizeof(*r));
}
