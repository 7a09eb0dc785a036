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

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "channel.h"
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

/* A channel to the process's khalad (khalad_sock, khalad_name); a failure to connect fails the
 * test. */
khala_chan_t *khalad_chan(void);

/* Send m on ch and wait (up to timeout_ms) for its reply in r, which is initialised first (the
 * caller frees it with khala__proto_msg_free). A transport failure fails the test; the reply's
 * rc is returned. */
int khalad_call(khala_chan_t *ch, khala_msg_t *m, khala_msg_t *r, int timeout_ms);

/* A counter of khalad's stats reply (khalad_call with timeout_ms): section ("l1", "l2", "khalad")
 * and name; UINT64_MAX if absent. */
uint64_t khalad_stat(khala_chan_t *ch, const char *section, const char *name, int timeout_ms);

/* Configure the next khalad_start for L2 on the Redis at url (redis://...) under namespace ns:
 * khalad_extra_sets becomes the URL, "l2.backend=redis" and the namespace (the URL before the
 * backend: each --set is checked at once), then NULL. More may be appended after them. */
void khalad_use_redis(const char *url, const char *ns);

/* Run KHALAD_PATH with args (NULL-terminated, without argv[0]) to its exit, with its stdout and
 * stderr in out (NUL-terminated, truncated to cap - 1 bytes). Returns its exit status; a khalad
 * that does not exit (killed by a signal) fails the test. */
int khalad_run(const char *const *args, char *out, size_t cap);

/* A raw protocol client of khalad (frames by hand, no library in between), for tests that send
 * what the library never would or misbehave as a peer. */
typedef struct khalad_client {
    int fd;           /* the connection; -1 after khalad_hang_up */
    khala_buf_t in;   /* bytes received and not yet consumed */
    size_t consumed;  /* bytes of `in` the last reply used, dropped at the next read */
    uint64_t next_id; /* the id of the next request */
} khalad_client_t;

/* Connect to khalad_sock; a failure to connect fails the test. */
khalad_client_t khalad_dial(void);

/* Close the connection (when open) and free the buffer. */
void khalad_hang_up(khalad_client_t *c);

/* Send all of the n bytes at p; 0, or -1 when the peer closed (a refused connection). */
int khalad_send(khalad_client_t *c, const void *p, size_t n);

/* Encode and send m with the next id; returns that id. A failure fails the test. */
uint64_t khalad_request(khalad_client_t *c, khala_msg_t *m);

/* Read one reply frame, waiting at most timeout_ms for each read (negative: no limit), and
 * decode it for op into r; 0, or -1 when the peer closed or nothing came in time. The
 * message's views point into c->in until the next call. */
int khalad_reply(khalad_client_t *c, khala_op_t op, khala_msg_t *r, int timeout_ms);

#endif /* KHALA_TESTS_INTEGRATION_KHALAD_UTIL_H */
