/*
 * SurrealDB for the tests; see tests/surreal_util.h. A private front is node running
 * tests/support/surreal/front.mjs with --data, so its store (RocksDB inside the real engine)
 * survives a SIGKILL: a kill + start is a crashed and restarted server that kept its disk.
 *
 * Readiness is GET /health answered 200 (the port can accept before the engine has opened its
 * store); a front that exits during the wait (a bad option, node or the engine missing, the
 * port taken) fails the test at once, quoting the end of its log, rather than after the
 * deadline.
 */
#include "surreal_util.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef KHALA_SURREAL_FRONT_DEFAULT
#error "tests/CMakeLists.txt defines KHALA_SURREAL_FRONT_DEFAULT (the source tree's front.mjs)"
#endif

enum {
    START_MS = 20000, /* a cold node + engine start on a loaded machine: a few seconds */
    POLL_MS = 50,
    PORT_TRIES = 5,
    LOG_TAIL = 1500, /* bytes of front.log quoted in a failure */
};

/* Fail the test now (cr_assert_fail does not return; abort() tells the compiler so). */
#define FATAL(...)                                                                                 \
    do {                                                                                           \
        cr_assert_fail(__VA_ARGS__);                                                               \
        abort();                                                                                   \
    } while (0)

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static const char *env_or(const char *name, const char *def) {
    const char *v = getenv(name);
    return v && *v ? v : def;
}

const char *tu_surreal_shared_url(void) {
    const char *v = getenv("KHALA_TEST_SURREAL_URL");
    if (!v || !*v)
        FATAL("KHALA_TEST_SURREAL_URL is not set: start the test servers with "
              "eval \"$(scripts/test-servers.sh start)\" (scripts/test.sh does it)");
    return v;
}

/* A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice), or 0. */
static unsigned free_port(void) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    unsigned port = 0;
    if (fd < 0)
        return 0;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

/* 1 when GET /health on 127.0.0.1:port answers 200. */
static int health_ok(unsigned port) {
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int ok = 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
        static const char req[] =
            "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        char buf[32];
        ssize_t got = -1;
        if (write(fd, req, sizeof(req) - 1) == (ssize_t)(sizeof(req) - 1))
            got = read(fd, buf, sizeof(buf) - 1);
        if (got > 0) {
            buf[got] = '\0';
            ok = strncmp(buf, "HTTP/1.1 200 ", 13) == 0;
        }
    }
    close(fd);
    return ok;
}

/* The last LOG_TAIL bytes of path, into buf (empty when unreadable). */
static const char *log_tail(const char *path, char *buf, size_t cap) {
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return buf;
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        long from = size > (long)cap - 1 ? size - (long)cap + 1 : 0;
        if (fseek(f, from, SEEK_SET) == 0) {
            size_t n = fread(buf, 1, cap - 1, f);
            buf[n] = '\0';
        }
    }
    fclose(f);
    return buf;
}

static void kill_reap(pid_t pid) {
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
}

/* One attempt: fork + exec node, then wait for /health. 0 when up; -ECHILD when the front
 * exited at start (perhaps the port was taken: the caller may retry on another); otherwise the
 * test fails here. */
static int spawn(tu_surreal_t *s, const char *node, const char *front, const char *log) {
    char port[16], data[300];
    snprintf(port, sizeof(port), "%u", s->port);
    snprintf(data, sizeof(data), "%s/data", s->dir);
    const char *argv[] = {node, front,    "--port", port,     "--host", "127.0.0.1", "--data",
                          data, "--user", "root",   "--pass", "root",   NULL};
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "surreal front: fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        if (strchr(node, '/'))
            execv(node, (char *const *)argv);
        else
            execvp(node, (char *const *)argv);
        fprintf(stderr, "surreal_util: cannot run %s: %s\n", node, strerror(errno));
        _exit(127);
    }
    int64_t end = now_ms() + START_MS;
    for (;;) {
        if (health_ok(s->port)) {
            s->pid = pid;
            return 0;
        }
        int st;
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid)
            return -ECHILD;
        if (now_ms() >= end)
            break;
        sleep_ms(POLL_MS);
    }
    kill_reap(pid);
    char tail[LOG_TAIL];
    FATAL("surreal front (%s %s) on 127.0.0.1:%u did not answer GET /health 200 within %d ms; "
          "its log %s ends:\n%s",
          node, front, s->port, START_MS, log, log_tail(log, tail, sizeof(tail)));
    return -ETIMEDOUT;
}

void tu_surreal_start(tu_surreal_t *s) {
    static unsigned seq;
    cr_assert_eq(s->pid, 0, "tu_surreal_start: the front is running already (pid %d)", (int)s->pid);
    const char *node = env_or("KHALA_TEST_NODE", "node");
    const char *front = env_or("KHALA_TEST_SURREAL_FRONT", KHALA_SURREAL_FRONT_DEFAULT);
    if (access(front, R_OK) != 0)
        FATAL("surreal front: %s: %s (set KHALA_TEST_SURREAL_FRONT to front.mjs)", front,
              strerror(errno));
    if (!s->dir[0]) {
        snprintf(s->dir, sizeof(s->dir), "/tmp/khala-surreal-%d-%u", (int)getpid(), seq++);
        if (mkdir(s->dir, 0700) != 0 && errno != EEXIST) {
            int e = errno;
            s->dir[0] = '\0';
            FATAL("surreal front: mkdir /tmp/khala-surreal-%d-%u: %s", (int)getpid(), seq - 1,
                  strerror(e));
        }
        s->own_dir = 1;
    }
    char log[300];
    snprintf(log, sizeof(log), "%s/front.log", s->dir);
    int picked = s->port == 0, rc = -ECHILD;
    for (int attempt = 0; attempt < (picked ? PORT_TRIES : 1) && rc == -ECHILD; attempt++) {
        if (picked) {
            s->port = free_port();
            cr_assert_neq(s->port, 0, "surreal front: no free loopback port: %s", strerror(errno));
        }
        rc = spawn(s, node, front, log);
    }
    if (rc != 0) {
        unsigned port = s->port;
        if (picked)
            s->port = 0;
        char tail[LOG_TAIL];
        FATAL("surreal front (%s %s) on 127.0.0.1:%u exited at start; its log %s ends:\n%s", node,
              front, port, log, log_tail(log, tail, sizeof(tail)));
    }
    snprintf(s->url, sizeof(s->url), "http://root:root@127.0.0.1:%u", s->port);
}

void tu_surreal_kill(tu_surreal_t *s) {
    if (s->pid > 0)
        kill_reap(s->pid);
    s->pid = 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void tu_surreal_stop(tu_surreal_t *s) {
    tu_surreal_kill(s);
    if (s->own_dir && s->dir[0])
        nftw(s->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    memset(s, 0, sizeof(*s));
}

const char *tu_surreal_url(const tu_surreal_t *s) {
    cr_assert_neq(s->port, 0, "tu_surreal_url: the front was never started");
    if (!s->url[0])
        FATAL("tu_surreal_url: the front on port %u was never started", s->port);
    return s->url;
}
