/*
 * Redis for the tests: the servers scripts/test-servers.sh started (named by the KHALA_TEST_*
 * environment variables), and private redis-server processes that a test starts, kills, stops
 * (SIGSTOP) or restarts itself, on a free loopback port.
 *
 * Use: tu_redis_env("KHALA_TEST_REDIS_URL") for a shared server. For a private one, a zeroed
 * tu_redis_t, tu_redis_start() (waits until it answers PING), tu_redis_kill() to make it vanish
 * (a later tu_redis_start() brings it back on the same port), and tu_redis_stop() in the suite's
 * .fini. The binary is $KHALA_TEST_REDIS_SERVER. Every failure fails the calling test (Criterion);
 * tests/test_coherence.c, tests/test_tier_redis.c and tests/integration/test_l2.c use this. The
 * server itself is started, waited for and stopped by the harness shared with the benchmarks
 * (tests/harness/harness.h): a tu_redis_t is a harness_redis_t.
 */
#ifndef KHALA_TESTS_REDIS_UTIL_H
#define KHALA_TESTS_REDIS_UTIL_H

#include <stdbool.h>
#include <sys/types.h>

#include "harness.h"

/** A private redis-server. Zero it before the first tu_redis_start(). Of its fields a test
 * reads pid (the running server, or 0; a test may SIGSTOP it), port (its loopback port; 0 =
 * pick a free one at the next tu_redis_start()) and dir (its working directory, "" until the
 * first start). */
typedef harness_redis_t tu_redis_t;

/**
 * @brief The value of environment variable name, which must be set and not empty.
 * @return the value; when it is missing the test fails with a message naming the variable and
 *         how to start the test servers (scripts/test-servers.sh).
 */
const char *tu_redis_env(const char *name);

/** @brief A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice). */
unsigned tu_redis_free_port(void);

/**
 * @brief Start redis-server on 127.0.0.1:r->port (picked now when 0), persistence off, in
 *        r->dir (created now when empty: /tmp/khala-redis-<pid>-<n>), and wait (up to
 *        10 s) until it answers PING. A port picked now that turns out taken is replaced by
 *        another (up to 5 tries).
 * @param[in,out] r the server; not running.
 * @param[in] args more command-line options, NULL-terminated (for example "--requirepass",
 *            "secret", NULL), or NULL.
 * @note A server that requires a password counts as up when it answers PING with NOAUTH. Its
 *       standard output is discarded; its standard error is the test's.
 */
void tu_redis_start(tu_redis_t *r, const char *const *args);

/** @brief SIGKILL the server (stopped or not) and reap it; nothing when none runs. Keeps port
 *         and dir, so that tu_redis_start() restarts it where it was. */
void tu_redis_kill(tu_redis_t *r);

/** @brief tu_redis_kill(), then remove the directory tu_redis_start() made and zero r. */
void tu_redis_stop(tu_redis_t *r);

#endif /* KHALA_TESTS_REDIS_UTIL_H */
