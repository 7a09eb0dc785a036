/*
 * SurrealDB for the tests; see tests/surreal_util.h. A Criterion adapter over the harness
 * (tests/harness/harness.h, harness_surreal_t), which starts, waits for and stops a private front
 * for the tests, the benchmarks and tests/chaos alike: here a harness failure fails the test with
 * the harness's message (which quotes the end of the front's log).
 *
 * A private front is node running tests/support/surreal/front.mjs with --data, so its store
 * (the real engine's, on disk) survives a SIGKILL: a kill + start is a crashed and restarted
 * server that kept its disk.
 */
#include "surreal_util.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

/* Fail the test now (cr_assert_fail does not return; abort() tells the compiler so). */
#define FATAL(...)                                                                                 \
    do {                                                                                           \
        cr_assert_fail(__VA_ARGS__);                                                               \
        abort();                                                                                   \
    } while (0)

const char *tu_surreal_shared_url(void) {
    const char *v = getenv("KHALA_TEST_SURREAL_URL");
    if (!v || !*v)
        FATAL("KHALA_TEST_SURREAL_URL is not set: start the test servers with "
              "eval \"$(scripts/test-servers.sh start)\" (scripts/test.sh does it)");
    return v;
}

void tu_surreal_start(tu_surreal_t *s) {
    cr_assert_eq(s->pid, 0, "tu_surreal_start: the front is running already (pid %d)", (int)s->pid);
    if (harness_surreal_start(s) != 0)
        FATAL("%s", s->err);
}

void tu_surreal_kill(tu_surreal_t *s) {
    harness_surreal_kill(s);
}

void tu_surreal_stop(tu_surreal_t *s) {
    harness_surreal_stop(s);
    memset(s, 0, sizeof(*s));
}

const char *tu_surreal_url(const tu_surreal_t *s) {
    cr_assert_neq(s->port, 0, "tu_surreal_url: the front was never started");
    if (!s->url[0])
        FATAL("tu_surreal_url: the front on port %u was never started", s->port);
    return s->url;
}
