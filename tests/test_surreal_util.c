/*
 * The tests' SurrealDB helper (tests/surreal_util.c) against real fronts: a private front starts
 * and answers, a row written through it survives a SIGKILL and a restart on the same port (the
 * engine's store is on disk), and stop removes what start made. The front's own replies are
 * checked by tests/check_surreal_front.sh (ctest surreal_front).
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "surreal_util.h"

static tu_surreal_t front;

static void fini(void) {
    tu_surreal_stop(&front);
}

TestSuite(surreal_util, .fini = fini, .timeout = 120);

/* POST path with body to the front on port as root:root, namespace khala, database test.
 * Returns the HTTP status (0: no answer) with the reply's body in out. */
static int post(unsigned port, const char *path, const char *body, char *out, size_t cap) {
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    out[0] = '\0';
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return 0;
    }
    char req[4096];
    int n = snprintf(req, sizeof(req),
                     "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic cm9vdDpyb290\r\n"
                     "Accept: application/json\r\nsurreal-ns: khala\r\nsurreal-db: test\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     path, strlen(body), body);
    cr_assert(n > 0 && (size_t)n < sizeof(req));
    cr_assert_eq(write(fd, req, (size_t)n), n);
    size_t got = 0;
    ssize_t r;
    while (got + 1 < cap && (r = read(fd, out + got, cap - 1 - got)) > 0)
        got += (size_t)r;
    out[got] = '\0';
    close(fd);
    int status = 0;
    if (sscanf(out, "HTTP/1.1 %d", &status) != 1)
        return 0;
    return status;
}

Test(surreal_util, start_answers_and_url_names_the_port) {
    tu_surreal_start(&front);
    cr_assert_gt(front.pid, 0);
    cr_assert_gt(front.port, 0);
    char want[64];
    snprintf(want, sizeof(want), "http://root:root@127.0.0.1:%u", front.port);
    cr_assert_str_eq(tu_surreal_url(&front), want);
    char out[4096];
    cr_assert_eq(post(front.port, "/sql", "RETURN 40 + 2", out, sizeof(out)), 200, "%s", out);
    cr_assert_not_null(strstr(out, "\"result\":42"), "%s", out);
}

Test(surreal_util, a_row_survives_kill_and_restart) {
    tu_surreal_start(&front);
    unsigned port = front.port;
    char out[4096];
    cr_assert_eq(post(port, "/sql",
                      "DEFINE TABLE kept SCHEMALESS; UPSERT kept:one SET v = 'before the kill'",
                      out, sizeof(out)),
                 200, "%s", out);
    cr_assert_null(strstr(out, "\"ERR\""), "%s", out);

    tu_surreal_kill(&front);
    cr_assert_eq(front.pid, 0);
    cr_assert_eq(post(port, "/sql", "RETURN 1", out, sizeof(out)), 0,
                 "the killed front still answers: %s", out);

    tu_surreal_start(&front);
    cr_assert_eq(front.port, port, "a restart keeps the port");
    cr_assert_eq(post(port, "/sql", "SELECT v FROM kept:one", out, sizeof(out)), 200, "%s", out);
    cr_assert_not_null(strstr(out, "before the kill"), "the row is gone after the restart: %s",
                       out);
}

Test(surreal_util, stop_removes_the_directory_and_zeroes) {
    tu_surreal_start(&front);
    char dir[sizeof(front.dir)];
    snprintf(dir, sizeof(dir), "%s", front.dir);
    struct stat st;
    cr_assert_eq(stat(dir, &st), 0, "%s was not made", dir);
    tu_surreal_stop(&front);
    cr_assert_neq(stat(dir, &st), 0, "%s is still there after stop", dir);
    cr_assert_eq(front.pid, 0);
    cr_assert_eq(front.port, 0);
    cr_assert_eq(front.dir[0], '\0');
}

Test(surreal_util, a_port_set_by_the_test_is_used) {
    /* Another private front's port, freed by its stop: a port known to be free a moment ago. */
    tu_surreal_t probe = {0};
    tu_surreal_start(&probe);
    unsigned port = probe.port;
    tu_surreal_stop(&probe);
    front.port = port;
    tu_surreal_start(&front);
    cr_assert_eq(front.port, port);
    char out[4096];
    cr_assert_eq(post(port, "/sql", "RETURN 'here'", out, sizeof(out)), 200, "%s", out);
}

Test(surreal_util, the_harness_answers_sql_and_sees_a_hung_front) {
    tu_surreal_start(&front);
    char out[4096];
    int st = harness_surreal_sql(front.port, "khala", "test", "RETURN 40 + 2", out, sizeof(out));
    cr_assert_eq(st, 200, "%d: %s", st, out);
    cr_assert_not_null(strstr(out, "\"result\":42"), "%s", out);
    cr_assert_eq(harness_surreal_healthy(front.port), 1);
    /* Hung (SIGSTOP): /health does not answer; SIGCONT brings it back. */
    kill(front.pid, SIGSTOP);
    cr_assert_eq(harness_surreal_healthy(front.port), 0, "a stopped front answered /health");
    kill(front.pid, SIGCONT);
    cr_assert_eq(harness_surreal_healthy(front.port), 1);
    tu_surreal_kill(&front);
    cr_assert_lt(harness_surreal_sql(front.port, "khala", "test", "RETURN 1", out, sizeof(out)), 0,
                 "a killed front answered");
}
