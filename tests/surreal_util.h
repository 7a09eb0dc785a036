/*
 * SurrealDB for the tests: the shared front scripts/test-servers.sh started (its URL in
 * $KHALA_TEST_SURREAL_URL), and private fronts that a test starts, kills (SIGKILL) and restarts
 * itself on a loopback port. A front is tests/support/surreal/front.mjs under node: the real
 * SurrealDB engine behind an HTTP front (docs/testing.md "SurrealDB").
 *
 * Use: tu_surreal_shared_url() for the shared front. For a private one, a zeroed tu_surreal_t,
 * tu_surreal_start() (waits until GET /health answers 200), tu_surreal_kill() to make it vanish
 * (a later tu_surreal_start() brings it back on the same port with the same data: its store is
 * on disk under dir), tu_surreal_url() for the driver's url, and tu_surreal_stop() in the
 * suite's .fini. The program is $KHALA_TEST_NODE (default `node`) running
 * $KHALA_TEST_SURREAL_FRONT (default: the source tree's front.mjs, compiled in by
 * tests/CMakeLists.txt). Every failure fails the calling test (Criterion).
 *
 * A test adds surreal_util.c to its sources (KHALA_TEST_SRCS_<module> in tests/CMakeLists.txt)
 * and labels itself `surreal` where it needs the front.
 */
#ifndef KHALA_TESTS_SURREAL_UTIL_H
#define KHALA_TESTS_SURREAL_UTIL_H

#include <sys/types.h>

#include "harness.h"

/** A private front. Zero it before the first tu_surreal_start(). Of its fields a test reads pid
 * (the running front, or 0; a test may SIGSTOP it), port (its loopback port; 0 = pick a free one
 * at the next tu_surreal_start(); a test may set it first) and dir (its directory, "" until the
 * first start: the engine's store in dir/data, the front's output in dir/front.log). The front
 * itself is started, waited for and stopped by the harness shared with the benchmarks and
 * tests/chaos (tests/harness/harness.h): a tu_surreal_t is a harness_surreal_t. */
typedef harness_surreal_t tu_surreal_t;

/**
 * @brief The shared front's URL, $KHALA_TEST_SURREAL_URL (http://root:root@127.0.0.1:PORT).
 * @return the value; when it is not set the test fails with a message naming the variable and
 *         how to start the test servers (scripts/test-servers.sh).
 */
const char *tu_surreal_shared_url(void);

/**
 * @brief Start a front on 127.0.0.1:s->port (picked now when 0) with its store in s->dir/data
 *        (s->dir made now when empty: /tmp/khala-surreal-<pid>-<n>; kept by tu_surreal_kill(),
 *        so a restart finds the rows written before the kill), user root, password root, and
 *        wait (up to 20 s) until GET /health answers 200. A port picked now that turns out taken
 *        is replaced by another (up to 5 tries).
 * @param[in,out] s the front; not running.
 * @note Its output (stdout and stderr) goes to s->dir/front.log; a failure names node, the
 *       script and that log, and quotes the log's end.
 */
void tu_surreal_start(tu_surreal_t *s);

/** @brief SIGKILL the front and reap it; nothing when none runs. Keeps port and dir, so that
 *         tu_surreal_start() restarts it where it was, with its data. */
void tu_surreal_kill(tu_surreal_t *s);

/** @brief tu_surreal_kill(), then remove the directory tu_surreal_start() made and zero s. */
void tu_surreal_stop(tu_surreal_t *s);

/**
 * @brief The front's URL for the driver: "http://root:root@127.0.0.1:PORT".
 * @param[in] s a front started at least once (its port is known).
 * @return a string inside s, valid while s is.
 */
const char *tu_surreal_url(const tu_surreal_t *s);

#endif /* KHALA_TESTS_SURREAL_UTIL_H */
