/*
 * Private khalad, redis-server and SurrealDB front processes for the tests and the benchmarks;
 * see harness.h.
 *
 * A start is fork + exec, then a bounded poll for readiness every POLL_MS:
 *
 *   khalad        its socket accepts a connection (it listens only once L1 and its tiers
 *                 are open, so a connection is as good as a reply);
 *   redis-server  it answers PING ("+PONG", or "-NOAUTH" when it wants a password): a
 *                 connection alone can succeed before it serves;
 *   surreal front GET /health answers 200 (the port can accept before the engine has opened
 *                 its store). Its output goes to dir/front.log, quoted in a failure.
 *
 * Between two polls the child is reaped with WNOHANG, so that a server that exits at start (a
 * bad option, a taken port) fails the start at once rather than after the deadline, with its
 * exit status in the message. A start that runs out of time kills and reaps the child, so that
 * a failed start leaves nothing running.
 *
 * Children get PR_SET_PDEATHSIG(SIGTERM) (and exit at once when the parent is already gone),
 * so that a server does not outlive the process that started it, for example a Criterion test
 * that ends on a failed assertion before its .fini runs.
 *
 * Rejected: readiness by sleeping a fixed time (slow when the machine is idle, flaky when it is
 * busy); sd_notify readiness for khalad (the systemd test uses NOTIFY_SOCKET itself); hiredis
 * for the PING (the harness would need it in every test that starts a khalad only).
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "segment_create.h"

/* Readiness is polled this often, in ms. */
#define POLL_MS 10
/* Free ports tried when a redis-server whose port was picked here exits at start. */
#define PORT_TRIES 5

/* Format into err (a handle's buffer of cap bytes) and return rc. */
__attribute__((format(printf, 4, 5))) static int fail(char *err, size_t cap, int rc,
                                                      const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    return rc;
}

void harness_sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* In the child: die with the parent, and send stdout (and stderr unless verbose) to
 * /dev/null. */
static void child_setup(pid_t parent, int verbose) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        _exit(127);
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
        dup2(devnull, 1);
        if (!verbose)
            dup2(devnull, 2);
        if (devnull > 2)
            close(devnull);
    }
}

/* Describe a wait status: "exit status 1", "signal 9". */
static const char *status_str(int st, char *buf, size_t cap) {
    if (WIFEXITED(st))
        snprintf(buf, cap, "exit status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(buf, cap, "signal %d", WTERMSIG(st));
    else
        snprintf(buf, cap, "wait status %d", st);
    return buf;
}

/* 1 when the child exited (reaped; its status in *st). */
static int exited(pid_t pid, int *st) {
    return waitpid(pid, st, WNOHANG) == pid;
}

static void kill_reap(pid_t pid) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* A connected stream socket to the Unix socket path, or -1. */
static int unix_connect(const char *path) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* A connected stream socket to 127.0.0.1:port, or -1. */
static int tcp_connect(unsigned port) {
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

int harness_free_port(void) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int rc = 0;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0)
        rc = -errno;
    close(fd);
    return rc ? rc : ntohs(sa.sin_port);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void harness_rmtree(const char *dir) {
    if (dir && dir[0])
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- khalad ------------------------------------------------------------------------------- */

int harness_khalad_init(harness_khalad_t *k, const char *bin, const char *name, const char *sock) {
    memset(k, 0, sizeof(*k));
    if (strlen(bin) >= sizeof(k->bin) || strlen(name) >= sizeof(k->name) ||
        strlen(sock) >= sizeof(k->sock))
        return fail(k->err, sizeof(k->err), -E2BIG,
                    "khalad: binary, name or socket path too long (%s, %s, %s)", bin, name, sock);
    snprintf(k->bin, sizeof(k->bin), "%s", bin);
    snprintf(k->name, sizeof(k->name), "%s", name);
    snprintf(k->sock, sizeof(k->sock), "%s", sock);
    return harness_khalad_set(k, "cache.socket=%s", sock);
}

int harness_khalad_set(harness_khalad_t *k, const char *fmt, ...) {
    if (k->nsets == HARNESS_KHALAD_SETS_MAX)
        return fail(k->err, sizeof(k->err), -E2BIG, "khalad %s: more than %d --set overrides",
                    k->name, HARNESS_KHALAD_SETS_MAX);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(k->sets[k->nsets], HARNESS_SET_LEN, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= HARNESS_SET_LEN)
        return fail(k->err, sizeof(k->err), -E2BIG,
                    "khalad %s: a --set override of %d bytes is over %d", k->name, n,
                    HARNESS_SET_LEN - 1);
    k->nsets++;
    return 0;
}

void harness_khalad_sets_reset(harness_khalad_t *k) {
    k->nsets = k->nsets ? 1 : 0;
}

int harness_khalad_start(harness_khalad_t *k) {
    char why[64];
    if (k->pid > 0)
        return fail(k->err, sizeof(k->err), -EBUSY, "khalad %s is running already (pid %d)",
                    k->name, (int)k->pid);
    const char *argv[2 * HARNESS_KHALAD_SETS_MAX + 8];
    size_t n = 0;
    argv[n++] = "khalad";
    argv[n++] = "--foreground";
    argv[n++] = "--name";
    argv[n++] = k->name;
    for (unsigned i = 0; i < k->nsets; i++) {
        argv[n++] = "--set";
        argv[n++] = k->sets[i];
    }
    argv[n] = NULL;
    unlink(k->sock);
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return fail(k->err, sizeof(k->err), -errno, "khalad %s: fork: %s", k->name,
                    strerror(errno));
    if (pid == 0) {
        child_setup(parent, k->verbose);
        execv(k->bin, (char *const *)argv);
        _exit(127);
    }
    int64_t end = now_ms() + (k->start_ms > 0 ? k->start_ms : HARNESS_START_MS);
    for (;;) {
        int st, fd = unix_connect(k->sock);
        if (fd >= 0) {
            close(fd);
            k->pid = pid;
            return 0;
        }
        if (exited(pid, &st))
            return fail(k->err, sizeof(k->err), -ECHILD,
                        "khalad %s exited at start (%s; its stderr shows why)", k->name,
                        status_str(st, why, sizeof(why)));
        if (now_ms() >= end)
            break;
        harness_sleep_ms(POLL_MS);
    }
    kill_reap(pid);
    return fail(k->err, sizeof(k->err), -ETIMEDOUT, "khalad %s did not listen on %s within %d ms",
                k->name, k->sock, k->start_ms > 0 ? k->start_ms : HARNESS_START_MS);
}

int harness_khalad_kill(harness_khalad_t *k, int sig) {
    int st = 0;
    if (k->pid <= 0)
        return 0;
    kill(k->pid, sig);
    waitpid(k->pid, &st, 0);
    k->pid = 0;
    return st;
}

int harness_khalad_stop(harness_khalad_t *k, int timeout_ms) {
    if (k->pid <= 0)
        return 0;
    int64_t end = now_ms() + (timeout_ms > 0 ? timeout_ms : HARNESS_STOP_MS);
    kill(k->pid, SIGTERM);
    for (;;) {
        int st;
        if (exited(k->pid, &st)) {
            k->pid = 0;
            return 0;
        }
        if (now_ms() >= end)
            break;
        harness_sleep_ms(POLL_MS);
    }
    kill_reap(k->pid);
    k->pid = 0;
    return fail(k->err, sizeof(k->err), -ETIMEDOUT,
                "khalad %s did not exit within %d ms of SIGTERM and was killed", k->name,
                timeout_ms > 0 ? timeout_ms : HARNESS_STOP_MS);
}

void harness_khalad_clean(const harness_khalad_t *k) {
    if (k->name[0])
        khala__seg_unlink(k->name);
    if (k->sock[0])
        unlink(k->sock);
}

/* ---- redis-server ------------------------------------------------------------------------- */

/* 1 when the server at r answers PING (NOAUTH counts: it serves, with a password). */
static int answers_ping(const harness_redis_t *r) {
    int fd = r->unix_socket ? unix_connect(r->sock) : tcp_connect(r->port);
    if (fd < 0)
        return 0;
    struct timeval tv = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char buf[64];
    ssize_t got = -1;
    if (write(fd, "PING\r\n", 6) == 6)
        got = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (got <= 0)
        return 0;
    buf[got] = '\0';
    return strncmp(buf, "+PONG", 5) == 0 || strncmp(buf, "-NOAUTH", 7) == 0;
}

/* One attempt: fork + exec, then wait until it answers. */
static int redis_spawn(harness_redis_t *r) {
    char why[64], port[16];
    const char *bin = r->bin ? r->bin : "redis-server";
    const char *argv[24 + HARNESS_REDIS_ARGS_MAX];
    size_t n = 0;
    snprintf(port, sizeof(port), "%u", r->tcp ? r->port : 0);
    argv[n++] = bin;
    argv[n++] = "--port";
    argv[n++] = port;
    if (r->tcp) {
        argv[n++] = "--bind";
        argv[n++] = "127.0.0.1";
    }
    if (r->unix_socket) {
        argv[n++] = "--unixsocket";
        argv[n++] = r->sock;
    }
    argv[n++] = "--save";
    argv[n++] = "";
    argv[n++] = "--appendonly";
    argv[n++] = "no";
    argv[n++] = "--dir";
    argv[n++] = r->dir;
    for (size_t i = 0; r->args[i]; i++)
        argv[n++] = r->args[i];
    argv[n] = NULL;
    if (r->unix_socket)
        unlink(r->sock);
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return fail(r->err, sizeof(r->err), -errno, "redis-server: fork: %s", strerror(errno));
    if (pid == 0) {
        child_setup(parent, r->verbose);
        if (strchr(bin, '/'))
            execv(bin, (char *const *)argv);
        else
            execvp(bin, (char *const *)argv);
        _exit(127);
    }
    int64_t end = now_ms() + HARNESS_START_MS;
    for (;;) {
        int st;
        if (answers_ping(r)) {
            r->pid = pid;
            return 0;
        }
        if (exited(pid, &st))
            return fail(r->err, sizeof(r->err), -ECHILD,
                        "redis-server (%s) on port %u%s%s exited at start (%s)", bin, r->port,
                        r->unix_socket ? ", socket " : "", r->sock,
                        status_str(st, why, sizeof(why)));
        if (now_ms() >= end)
            break;
        harness_sleep_ms(POLL_MS);
    }
    kill_reap(pid);
    return fail(r->err, sizeof(r->err), -ETIMEDOUT,
                "redis-server on port %u%s%s did not answer PING within %d ms", r->port,
                r->unix_socket ? ", socket " : "", r->sock, HARNESS_START_MS);
}

int harness_redis_start(harness_redis_t *r) {
    static unsigned seq;
    size_t nargs = 0;
    while (nargs <= HARNESS_REDIS_ARGS_MAX && r->args[nargs])
        nargs++;
    if (r->pid > 0)
        return fail(r->err, sizeof(r->err), -EBUSY, "redis-server is running already (pid %d)",
                    (int)r->pid);
    if ((!r->tcp && !r->unix_socket) || nargs > HARNESS_REDIS_ARGS_MAX)
        return fail(r->err, sizeof(r->err), -EINVAL,
                    "redis-server: no listener asked for, or more than %d options",
                    HARNESS_REDIS_ARGS_MAX);
    if (!r->dir[0]) {
        snprintf(r->dir, sizeof(r->dir), "/tmp/khala-redis-%d-%u", (int)getpid(), seq++);
        if (mkdir(r->dir, 0700) != 0 && errno != EEXIST) {
            int rc = -errno;
            fail(r->err, sizeof(r->err), rc, "mkdir %s: %s", r->dir, strerror(errno));
            r->dir[0] = '\0';
            return rc;
        }
        r->own_dir = 1;
    }
    if (r->unix_socket && !r->sock[0]) {
        int len = snprintf(r->sock, sizeof(r->sock), "%s/redis.sock", r->dir);
        if (len < 0 || (size_t)len >= sizeof(r->sock)) {
            r->sock[0] = '\0';
            return fail(r->err, sizeof(r->err), -E2BIG, "redis-server: %s is too long a dir",
                        r->dir);
        }
    }
    int picked = r->tcp && r->port == 0, rc = 0;
    for (int attempt = 0; attempt < (picked ? PORT_TRIES : 1); attempt++) {
        if (picked) {
            int p = harness_free_port();
            if (p < 0)
                return fail(r->err, sizeof(r->err), p, "no free loopback TCP port: %s",
                            strerror(-p));
            r->port = (unsigned)p;
        }
        if ((rc = redis_spawn(r)) != -ECHILD)
            break;
    }
    if (rc && picked)
        r->port = 0;
    return rc;
}

void harness_redis_kill(harness_redis_t *r) {
    if (r->pid > 0)
        kill_reap(r->pid);
    r->pid = 0;
}

void harness_redis_stop(harness_redis_t *r) {
    harness_redis_kill(r);
    if (r->own_dir)
        harness_rmtree(r->dir);
    else if (r->sock[0])
        unlink(r->sock);
    r->port = 0;
    r->dir[0] = '\0';
    r->sock[0] = '\0';
    r->own_dir = 0;
    r->err[0] = '\0';
}

/* ---- SurrealDB front ---------------------------------------------------------------------- */

#ifndef KHALA_SURREAL_FRONT_DEFAULT
#error "tests/harness/CMakeLists.txt defines KHALA_SURREAL_FRONT_DEFAULT (the tree's front.mjs)"
#endif

/* Bytes of front.log quoted in a failure. */
#define LOG_TAIL 1200

/* One HTTP/1.0 exchange with 127.0.0.1:port (HTTP/1.0, so that node answers without chunks and
 * the body ends where the connection does). Returns the status and the body in body (cap > 0),
 * or a negative errno. */
static int http_exchange(unsigned port, const char *req, size_t req_len, int timeout_s, char *body,
                         size_t cap) {
    int fd = tcp_connect(port);
    if (fd < 0)
        return -ECONNREFUSED;
    struct timeval tv = {timeout_s, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    size_t off = 0;
    while (off < req_len) {
        ssize_t n = write(fd, req + off, req_len - off);
        if (n <= 0) {
            int rc = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? -ETIMEDOUT : -EIO;
            close(fd);
            return rc;
        }
        off += (size_t)n;
    }
    /* The whole reply, headers and body, in a buffer that grows. */
    size_t have = 0, room = 4096;
    char *all = malloc(room);
    int rc = 0;
    while (all) {
        if (have + 1 == room) {
            char *more = realloc(all, room * 2);
            if (!more)
                break;
            all = more;
            room *= 2;
        }
        ssize_t n = read(fd, all + have, room - 1 - have);
        if (n == 0)
            break;
        if (n < 0) {
            rc = errno == EAGAIN || errno == EWOULDBLOCK ? -ETIMEDOUT : -errno;
            break;
        }
        have += (size_t)n;
    }
    close(fd);
    if (!all)
        return -ENOMEM;
    all[have] = '\0';
    int status = 0;
    if (rc == 0 && sscanf(all, "HTTP/1.%*d %d", &status) != 1)
        rc = -EPROTO;
    if (rc == 0) {
        const char *b = strstr(all, "\r\n\r\n");
        snprintf(body, cap, "%s", b ? b + 4 : "");
        rc = status;
    }
    free(all);
    return rc;
}

int harness_surreal_healthy(unsigned port) {
    static const char req[] = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    char body[64];
    return http_exchange(port, req, sizeof(req) - 1, 2, body, sizeof(body)) == 200;
}

int harness_surreal_sql(unsigned port, const char *ns, const char *db, const char *sql, char *body,
                        size_t cap) {
    /* "root:root" in base64. */
    size_t sql_len = strlen(sql), cap_req = sql_len + 512;
    char *req = malloc(cap_req);
    if (!req)
        return -ENOMEM;
    int n =
        snprintf(req, cap_req,
                 "POST /sql HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Basic cm9vdDpyb290\r\n"
                 "Accept: application/json\r\nsurreal-ns: %s\r\nsurreal-db: %s\r\n"
                 "Content-Type: text/plain\r\nContent-Length: %zu\r\n\r\n%s",
                 ns, db, sql_len, sql);
    int rc =
        n < 0 || (size_t)n >= cap_req ? -E2BIG : http_exchange(port, req, (size_t)n, 10, body, cap);
    free(req);
    return rc;
}

/* The last LOG_TAIL bytes of path, into buf (empty when unreadable). */
static const char *log_tail(const char *path, char *buf, size_t cap) {
    buf[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return buf;
    off_t size = lseek(fd, 0, SEEK_END);
    off_t from = size > (off_t)cap - 1 ? size - (off_t)cap + 1 : 0;
    ssize_t got = pread(fd, buf, cap - 1, from);
    buf[got > 0 ? got : 0] = '\0';
    close(fd);
    return buf;
}

/* One attempt: fork + exec node, then wait until /health answers 200. */
static int surreal_spawn(harness_surreal_t *s, const char *node, const char *front,
                         const char *log) {
    char why[64], port[16], data[200], tail[LOG_TAIL];
    snprintf(port, sizeof(port), "%u", s->port);
    snprintf(data, sizeof(data), "%s/data", s->dir);
    const char *argv[] = {node, front,    "--port", port,     "--host", "127.0.0.1", "--data",
                          data, "--user", "root",   "--pass", "root",   NULL};
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return fail(s->err, sizeof(s->err), -errno, "surreal front: fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            if (!s->verbose)
                dup2(fd, 2);
        }
        if (strchr(node, '/'))
            execv(node, (char *const *)argv);
        else
            execvp(node, (char *const *)argv);
        fprintf(stderr, "harness: cannot run %s: %s\n", node, strerror(errno));
        _exit(127);
    }
    int64_t end = now_ms() + HARNESS_SURREAL_START_MS;
    for (;;) {
        int st;
        if (harness_surreal_healthy(s->port)) {
            s->pid = pid;
            return 0;
        }
        if (exited(pid, &st))
            return fail(s->err, sizeof(s->err), -ECHILD,
                        "surreal front (%s %s) on 127.0.0.1:%u exited at start (%s); its log %s "
                        "ends:\n%s",
                        node, front, s->port, status_str(st, why, sizeof(why)), log,
                        log_tail(log, tail, sizeof(tail)));
        if (now_ms() >= end)
            break;
        harness_sleep_ms(50);
    }
    kill_reap(pid);
    return fail(s->err, sizeof(s->err), -ETIMEDOUT,
                "surreal front (%s %s) on 127.0.0.1:%u did not answer GET /health 200 within %d "
                "ms; its log %s ends:\n%s",
                node, front, s->port, HARNESS_SURREAL_START_MS, log,
                log_tail(log, tail, sizeof(tail)));
}

static const char *env_or(const char *name, const char *def) {
    const char *v = getenv(name);
    return v && *v ? v : def;
}

int harness_surreal_start(harness_surreal_t *s) {
    static unsigned seq;
    if (s->pid > 0)
        return fail(s->err, sizeof(s->err), -EBUSY, "surreal front is running already (pid %d)",
                    (int)s->pid);
    const char *node = s->node ? s->node : env_or("KHALA_TEST_NODE", "node");
    const char *front =
        s->front ? s->front : env_or("KHALA_TEST_SURREAL_FRONT", KHALA_SURREAL_FRONT_DEFAULT);
    if (access(front, R_OK) != 0)
        return fail(s->err, sizeof(s->err), -ENOENT,
                    "surreal front: %s: %s (set KHALA_TEST_SURREAL_FRONT to front.mjs)", front,
                    strerror(errno));
    if (!s->dir[0]) {
        snprintf(s->dir, sizeof(s->dir), "/tmp/khala-surreal-%d-%u", (int)getpid(), seq++);
        if (mkdir(s->dir, 0700) != 0 && errno != EEXIST) {
            int rc = -errno;
            fail(s->err, sizeof(s->err), rc, "surreal front: mkdir %s: %s", s->dir,
                 strerror(errno));
            s->dir[0] = '\0';
            return rc;
        }
        s->own_dir = 1;
    }
    if (strlen(s->dir) > 150)
        return fail(s->err, sizeof(s->err), -E2BIG, "surreal front: %s is too long a dir", s->dir);
    char log[200];
    snprintf(log, sizeof(log), "%s/front.log", s->dir);
    int picked = s->port == 0, rc = -ECHILD;
    for (int attempt = 0; attempt < (picked ? PORT_TRIES : 1) && rc == -ECHILD; attempt++) {
        if (picked) {
            int p = harness_free_port();
            if (p < 0)
                return fail(s->err, sizeof(s->err), p, "no free loopback TCP port: %s",
                            strerror(-p));
            s->port = (unsigned)p;
        }
        rc = surreal_spawn(s, node, front, log);
    }
    if (rc != 0) {
        if (picked)
            s->port = 0;
        return rc;
    }
    snprintf(s->url, sizeof(s->url), "http://root:root@127.0.0.1:%u", s->port);
    return 0;
}

void harness_surreal_kill(harness_surreal_t *s) {
    if (s->pid > 0)
        kill_reap(s->pid);
    s->pid = 0;
}

void harness_surreal_stop(harness_surreal_t *s) {
    harness_surreal_kill(s);
    if (s->own_dir)
        harness_rmtree(s->dir);
    s->port = 0;
    s->dir[0] = '\0';
    s->url[0] = '\0';
    s->own_dir = 0;
    s->err[0] = '\0';
}
