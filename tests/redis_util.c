/*
 * Redis for the tests; see tests/redis_util.h. A Criterion adapter over the harness
 * (tests/harness/harness.h), which starts, waits for and stops the server for the tests and
 * the benchmarks alike: here a harness failure fails the test with the harness's message.
 *
 * A private server runs with --save "" and --appendonly no, so that a kill loses everything and
 * a restart starts empty, as the tests that use it expect. Readiness is a PING answered (a
 * connect alone can succeed before the server serves); a server that exits during the wait (a
 * bad option) fails the test at once rather than after the deadline.
 */
#include "redis_util.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

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
    int port = harness_free_port();
    cr_assert_gt(port, 0, "no free loopback port: %s", strerror(-port));
    return (unsigned)port;
}

void tu_redis_start(tu_redis_t *r, const char *const *args) {
    size_t n = 0;
    r->bin = tu_redis_env("KHALA_TEST_REDIS_SERVER");
    r->tcp = 1;
    r->unix_socket = 0;
    r->verbose = 1; /* its stderr is the test's */
    for (; args && args[n]; n++) {
        cr_assert_lt(n, HARNESS_REDIS_ARGS_MAX, "too many redis-server options");
        r->args[n] = args[n];
    }
    r->args[n] = NULL;
    int rc = harness_redis_start(r);
    if (rc != 0)
        FATAL("%s", r->err);
}

void tu_redis_kill(tu_redis_t *r) {
    harness_redis_kill(r);
}

void tu_redis_stop(tu_redis_t *r) {
    harness_redis_stop(r);
    memset(r, 0, sizeof(*r));
}
