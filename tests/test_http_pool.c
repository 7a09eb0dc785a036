/*
 * daemon/http_pool.c, both halves, against a real HTTP server: the SurrealDB test front
 * (KHALA_TEST_SURREAL_URL, else a private one, tests/surreal_util.h) and a port where nothing
 * listens. The non-blocking half is driven the way khalad's loop would: poll() over the
 * descriptors the watch callback announced, and the pool's timeout.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>

#include "http_pool.h"
#include "surreal_util.h"

#define FATAL(...)                                                                                 \
    do {                                                                                           \
        cr_assert_fail(__VA_ARGS__);                                                               \
        abort();                                                                                   \
    } while (0)

static tu_surreal_t g_front; /* a private front when no shared one is set */
static char g_base[64];      /* http://127.0.0.1:port */
static khala_http_pool_t *g_p;

static unsigned free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        FATAL("no free port: %s", strerror(errno));
    close(fd);
    return ntohs(a.sin_port);
}

static void setup(void) {
    const char *url = getenv("KHALA_TEST_SURREAL_URL");
    if (!url || !*url) {
        tu_surreal_start(&g_front);
        url = tu_surreal_url(&g_front);
    }
    const char *at = strchr(url, '@');
    snprintf(g_base, sizeof(g_base), "http://%s", at ? at + 1 : url + 7);
}

static void teardown(void) {
    khala__http_pool_close(g_p);
    g_p = NULL;
    tu_surreal_stop(&g_front);
}

TestSuite(http_pool, .init = setup, .fini = teardown, .timeout = 120);

static khala_http_pool_t *open_pool(const char *base, unsigned pool, unsigned retries) {
    khala_http_opts_t o = {
        .base_url = base, .timeout_ms = 5000, .pool_size = pool, .retries = retries};
    char err[128];
    cr_assert_eq(khala__http_pool_open(&o, &g_p, err, sizeof(err)), 0, "%s", err);
    return g_p;
}

Test(http_pool, a_blocking_request_gets_the_status_and_body) {
    khala_http_pool_t *p = open_pool(g_base, 2, 0);
    khala_http_resp_t r;
    cr_assert_eq(khala__http_request(p, "GET", "/version", NULL, 0, true, &r), 0, "%s", r.err);
    cr_assert_eq(r.status, 200);
    cr_assert(r.body && strncmp(r.body, "surrealdb-", 10) == 0, "%s", r.body);
    cr_assert_eq(r.tries, 1);
    khala__http_resp_free(&r);
    cr_assert_eq(khala__http_request(p, "GET", "/nowhere", NULL, 0, true, &r), 0);
    cr_assert_eq(r.status, 404, "an HTTP status is the caller's to judge, never retried");
    khala__http_resp_free(&r);
    cr_assert_eq(khala__http_inflight(p), 0);
}

Test(http_pool, nothing_listening_is_econnrefused_after_the_retries) {
    char base[64];
    snprintf(base, sizeof(base), "http://127.0.0.1:%u", free_port());
    khala_http_pool_t *p = open_pool(base, 1, 2);
    khala_http_resp_t r;
    cr_assert_eq(khala__http_request(p, "GET", "/health", NULL, 0, true, &r), -ECONNREFUSED);
    cr_assert_eq(r.tries, 3, "1 + 2 retries: %u", r.tries);
    cr_assert(r.err[0], "libcurl's words for it");
    khala__http_resp_free(&r);
    cr_assert_eq(khala__http_request(p, "GET", "/health", NULL, 0, false, &r), -ECONNREFUSED);
    cr_assert_eq(r.tries, 1, "a request not marked idempotent is never retried");
    khala__http_resp_free(&r);
}

Test(http_pool, bad_options_are_refused) {
    khala_http_opts_t o = {.base_url = "", .timeout_ms = 100};
    char err[128] = "";
    cr_assert_eq(khala__http_pool_open(&o, &g_p, err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "base URL"), "%s", err);
    o.base_url = g_base;
    o.timeout_ms = 0;
    cr_assert_eq(khala__http_pool_open(&o, &g_p, err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "timeout"), "%s", err);
}

/* The loop of the non-blocking half: the descriptors the watch announced. */
typedef struct loop {
    int fd[64];
    unsigned ev[64];
    int n;
    int watched_max; /* most descriptors watched at once */
} loop_t;

static void watch(void *arg, int fd, unsigned events) {
    loop_t *l = arg;
    for (int i = 0; i < l->n; i++) {
        if (l->fd[i] == fd) {
            if (events) {
                l->ev[i] = events;
            } else {
                l->fd[i] = l->fd[--l->n];
                l->ev[i] = l->ev[l->n];
            }
            return;
        }
    }
    if (events && l->n < 64) {
        l->fd[l->n] = fd;
        l->ev[l->n++] = events;
        if (l->n > l->watched_max)
            l->watched_max = l->n;
    }
}

typedef struct result {
    int calls;
    int rc;
    long status;
    char body[64];
} result_t;

static void on_done(void *arg, khala_http_resp_t *resp) {
    result_t *r = arg;
    r->calls++;
    r->rc = resp->rc;
    r->status = resp->status;
    snprintf(r->body, sizeof(r->body), "%s", resp->body ? resp->body : "");
    khala__http_resp_free(resp);
}

/* Run the loop until nothing is in flight (or 20 s). */
static void run(khala_http_pool_t *p, loop_t *l) {
    for (int spins = 0; khala__http_inflight(p) > 0 && spins < 20000; spins++) {
        struct pollfd pf[64];
        for (int i = 0; i < l->n; i++)
            pf[i] = (struct pollfd){.fd = l->fd[i],
                                    .events = (short)((l->ev[i] & KHALA_HTTP_IN ? POLLIN : 0) |
                                                      (l->ev[i] & KHALA_HTTP_OUT ? POLLOUT : 0))};
        int64_t t = khala__http_timeout_ms(p);
        int n = l->n;
        int rc = poll(pf, (nfds_t)n, t < 0 || t > 100 ? 100 : (int)t);
        if (rc <= 0) {
            khala__http_on_timeout(p);
            continue;
        }
        for (int i = 0; i < n; i++) {
            unsigned ev = (pf[i].revents & (POLLIN | POLLHUP | POLLERR) ? KHALA_HTTP_IN : 0) |
                          (pf[i].revents & POLLOUT ? KHALA_HTTP_OUT : 0);
            if (ev)
                khala__http_on_fd(p, pf[i].fd, ev);
        }
    }
}

Test(http_pool, submitted_requests_complete_through_the_loop_hooks_once_each) {
    khala_http_pool_t *p = open_pool(g_base, 2, 0);
    loop_t l = {0};
    khala__http_pool_set_watch(p, watch, &l);
    result_t res[6] = {0};
    for (int i = 0; i < 6; i++)
        cr_assert_eq(khala__http_submit(p, "GET", i % 2 ? "/version" : "/health", NULL, 0, true,
                                        on_done, &res[i]),
                     0);
    cr_assert(khala__http_inflight(p) > 0, "submit does not wait");
    run(p, &l);
    cr_assert_eq(khala__http_inflight(p), 0);
    for (int i = 0; i < 6; i++) {
        cr_assert_eq(res[i].calls, 1, "request %d: callback ran %d times", i, res[i].calls);
        cr_assert_eq(res[i].rc, 0);
        cr_assert_eq(res[i].status, 200);
        if (i % 2)
            cr_assert(strncmp(res[i].body, "surrealdb-", 10) == 0, "%s", res[i].body);
    }
    cr_assert(l.watched_max >= 1 && l.watched_max <= 2, "at most pool_size connections: %d watched",
              l.watched_max);
    /* A blocking call on the same pool while an async one is in flight: both complete. */
    result_t a = {0};
    cr_assert_eq(khala__http_submit(p, "GET", "/version", NULL, 0, true, on_done, &a), 0);
    khala_http_resp_t r;
    cr_assert_eq(khala__http_request(p, "GET", "/health", NULL, 0, true, &r), 0);
    khala__http_resp_free(&r);
    run(p, &l);
    cr_assert_eq(a.calls, 1);
    cr_assert_eq(a.status, 200);
}

Test(http_pool, closing_the_pool_cancels_what_is_in_flight) {
    khala_http_pool_t *p = open_pool(g_base, 1, 0);
    result_t res[3] = {0};
    for (int i = 0; i < 3; i++)
        cr_assert_eq(khala__http_submit(p, "GET", "/version", NULL, 0, true, on_done, &res[i]), 0);
    int pending = 0;
    for (int i = 0; i < 3; i++)
        pending += res[i].calls == 0;
    cr_assert(pending > 0);
    khala__http_pool_close(p);
    g_p = NULL;
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(res[i].calls, 1, "every callback runs exactly once");
        if (res[i].rc != 0)
            cr_assert_eq(res[i].rc, -ECANCELED);
    }
}

/* A forked server on a loopback port that reads a request and answers `reply` (raw bytes, not
 * necessarily HTTP), then closes; its port, and its pid in *pid. */
static unsigned raw_server(const char *reply, pid_t *pid) {
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(ls, 16) != 0 ||
        getsockname(ls, (struct sockaddr *)&a, &len) != 0)
        FATAL("raw server: %s", strerror(errno));
    *pid = fork();
    if (*pid < 0)
        FATAL("fork: %s", strerror(errno));
    if (*pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlives the test */
        for (;;) {
            int c = accept(ls, NULL, NULL);
            if (c < 0)
                continue;
            char buf[4096];
            if (read(c, buf, sizeof(buf)) > 0 && write(c, reply, strlen(reply)) < 0)
                _exit(1);
            close(c);
        }
    }
    close(ls);
    return ntohs(a.sin_port);
}

static void raw_server_stop(pid_t pid) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

Test(http_pool, a_reply_that_is_not_http_is_eio_with_libcurls_words) {
    pid_t pid;
    char base[64];
    snprintf(base, sizeof(base), "http://127.0.0.1:%u",
             raw_server("SSH-2.0-OpenSSH_9.2\r\nnot http at all\r\n\r\n", &pid));
    khala_http_pool_t *p = open_pool(base, 1, 0);
    khala_http_resp_t r;
    int rc = khala__http_request(p, "GET", "/health", NULL, 0, true, &r);
    raw_server_stop(pid);
    cr_assert_eq(rc, -EIO, "rc %d: %s", rc, r.err);
    cr_assert_eq(r.rc, -EIO);
    cr_assert(r.err[0], "libcurl's words for it");
    cr_assert_eq(r.status, 0);
    khala__http_resp_free(&r);
    khala__http_resp_free(NULL); /* nothing to free: no effect */
}

Test(http_pool, an_idle_pool_has_no_timeout_and_an_oversized_pool_is_capped) {
    khala_http_pool_t *p = open_pool(g_base, 100000, 0);
    cr_assert_eq(khala__http_timeout_ms(p), -1, "nothing in flight: the loop may sleep");
    cr_assert_eq(khala__http_inflight(p), 0);
    khala_http_resp_t r;
    cr_assert_eq(khala__http_request(p, "GET", "/health", NULL, 0, true, &r), 0, "%s", r.err);
    cr_assert_eq(r.status, 200);
    khala__http_resp_free(&r);
}

Test(http_pool, a_watch_set_after_a_submit_is_told_of_the_open_connections) {
    khala_http_pool_t *p = open_pool(g_base, 1, 0);
    result_t res = {0};
    cr_assert_eq(khala__http_submit(p, "GET", "/version", NULL, 0, true, on_done, &res), 0);
    loop_t l = {0};
    khala__http_pool_set_watch(p, watch, &l);
    if (res.calls == 0 && khala__http_inflight(p) > 0 && khala__http_timeout_ms(p) != 0)
        cr_assert(l.n >= 1, "the connection the submit opened is announced to the new watch");
    run(p, &l);
    cr_assert_eq(res.calls, 1);
    cr_assert_eq(res.rc, 0);
    cr_assert_eq(res.status, 200);
    cr_assert(strncmp(res.body, "surrealdb-", 10) == 0, "%s", res.body);
}

Test(http_pool, a_request_that_fails_inside_its_submit_runs_its_callback_later_once) {
    char base[64];
    snprintf(base, sizeof(base), "http://127.0.0.1:%u", free_port());
    khala_http_pool_t *p = open_pool(base, 1, 0);
    loop_t l = {0};
    khala__http_pool_set_watch(p, watch, &l);
    result_t res[4] = {0};
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(khala__http_submit(p, "GET", "/health", NULL, 0, false, on_done, &res[i]), 0);
        cr_assert_eq(res[i].calls, 0, "a submit never runs a callback");
    }
    run(p, &l);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(res[i].calls, 1, "request %d: callback ran %d times", i, res[i].calls);
        cr_assert_eq(res[i].rc, -ECONNREFUSED);
    }
    cr_assert_eq(khala__http_inflight(p), 0);
    cr_assert_eq(khala__http_timeout_ms(p), -1);
}
