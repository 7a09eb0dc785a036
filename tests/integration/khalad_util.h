/*
 * Start and stop a real khalad for an integration test: a private cache name and socket per test
 * process, so that tests (and Criterion's forked test processes) never meet each other's khalad.
 *
 * Use: khalad_env_init("kd") in the suite's .init, then khalad_start(); khalad_env_fini() in its
 * .fini. The binary is KHALAD_PATH, a compile definition of the test target. These are Criterion
 * adapters (a failure fails the test) over the harness shared with the benchmarks
 * (tests/harness/harness.h); a test that needs more control can use harness_khalad_t directly.
 */
#ifndef KHALA_TESTS_INTEGRATION_KHALAD_UTIL_H
#define KHALA_TESTS_INTEGRATION_KHALAD_UTIL_H

#include <sys/types.h>

#include "proto.h"

/* The cache name khalad serves ("<prefix><pid>"); set by khalad_env_init(). */
extern char khalad_name[64];
/* The socket it listens on, in a private directory under /tmp; set by khalad_env_init(). */
extern char khalad_sock[108];
/* Its pid while running, else 0. */
extern pid_t khalad_pid;

/* Choose the name, directory and socket path for this process. */
void khalad_env_init(const char *prefix);

/* One more --set SECTION.KEY=VALUE for the next khalad_start, or NULL for none. */
extern const char *khalad_extra_set;

/* More --set overrides, NULL-terminated (at most KHALAD_EXTRA_SETS_MAX), read at khalad_start. */
#define KHALAD_EXTRA_SETS_MAX 16
extern const char *khalad_extra_sets[KHALAD_EXTRA_SETS_MAX];

/* Start another khalad: cache name, socket path, a directory for its L2 store (DIR/l2), and
 * NULL-terminated --set overrides (may be NULL). Waits (bounded: 10 s) until it listens. */
pid_t khalad_spawn(const char *name, const char *sock, const char *dir, const char *const *sets);

/* The test's private directory (khalad's L2 store lives in its l2/). */
const char *khalad_dir(void);

/* Start khalad (khalad_spawn with the process's name, socket and directory, khalad_extra_set and
 * khalad_extra_sets) and wait (bounded: 10 s) until its socket accepts connections. The segment,
 * if one exists under the name, is adopted as a restarted khalad would. */
void khalad_start(void);

/* Send sig to khalad and reap it; nothing when it is not running. */
void khalad_kill(int sig);

/* Stop khalad (SIGTERM), unlink its segment, socket and directory. */
void khalad_env_fini(void);

/* Sleep for ms milliseconds, resuming after signals. */
void sleep_ms(long ms);

/* A request for op, with key (a C string; NULL for none) as its "k" field. */
khala_msg_t khalad_req(khala_op_t op, const char *key);

#endif /* KHALA_TESTS_INTEGRATION_KHALAD_UTIL_H */
