/*
 * The harness: private khalad and redis-server processes for the tests and the benchmarks, so
 * that every test suite and every bench starts, waits for, stops and cleans up a server the same
 * way. A server is a forked child of the caller, on a private socket (khalad) or a free loopback
 * port and/or a Unix socket (redis-server), with its own cache name and directory, so that runs
 * never meet each other or a system khalad.
 *
 * Start at harness_khalad_t (harness_khalad_init, harness_khalad_set, harness_khalad_start,
 * harness_khalad_stop, harness_khalad_clean) and harness_redis_t (harness_redis_start,
 * harness_redis_kill, harness_redis_stop), and harness_surreal_t (harness_surreal_start,
 * harness_surreal_kill, harness_surreal_stop: a SurrealDB front, node running
 * tests/support/surreal/front.mjs). The tests reach them through Criterion adapters that fail
 * the test on an error (tests/integration/khalad_util.h, tests/redis_util.h,
 * tests/surreal_util.h); the benchmarks and tests/chaos call them directly.
 *
 * Error model: a call returns 0 or a negative errno (-ETIMEDOUT: the server did not answer in
 * time; -ECHILD: it exited while starting; -E2BIG: an option does not fit; another -errno from
 * fork, mkdir, socket...), and leaves a message naming the server and the cause in the handle's
 * err. Nothing here prints, asserts or exits the caller.
 *
 * Children: stdout goes to /dev/null; stderr too unless the handle's verbose is set. Each child
 * gets PR_SET_PDEATHSIG(SIGKILL), so that a server never outlives the test or bench that
 * started it (a Criterion test that fails an assertion exits at once).
 *
 * Thread safety: none; a handle belongs to one thread. Start and stop reap with waitpid() on the
 * child's pid only.
 */
#ifndef KHALA_TESTS_HARNESS_HARNESS_H
#define KHALA_TESTS_HARNESS_HARNESS_H

#include <stddef.h>
#include <sys/types.h>

/** Most --set overrides one khalad takes. */
#define HARNESS_KHALAD_SETS_MAX 48
/** Longest --set override, with its NUL. */
#define HARNESS_SET_LEN 320
/** Most extra command-line options one redis-server takes. */
#define HARNESS_REDIS_ARGS_MAX 16
/** Default bound on a start (until the server answers) and on a graceful stop, in ms. */
#define HARNESS_START_MS 10000
#define HARNESS_STOP_MS 10000

/** A khalad the caller runs. Zero it, or fill it with harness_khalad_init(). */
typedef struct harness_khalad {
    /* Set by harness_khalad_init; the caller may change them before a start. */
    char bin[512];  /* the khalad binary */
    char name[64];  /* the cache name, also the name of its L1 segment */
    char sock[108]; /* its socket path (cache.socket) */
    int verbose;    /* 1: khalad's stderr is the caller's; 0: /dev/null */
    int start_ms;   /* bound on a start, ms; 0 = HARNESS_START_MS */

    /* --set overrides, in order: cache.socket first (from init), then each harness_khalad_set.
     * Kept across stop and start, so that a restart runs the same configuration. */
    char sets[HARNESS_KHALAD_SETS_MAX][HARNESS_SET_LEN];
    unsigned nsets;

    pid_t pid;     /* while running, else 0 */
    char err[512]; /* the last failure's message */
} harness_khalad_t;

/**
 * @brief Name a khalad and choose its socket, without starting it. Zeroes @p k first.
 * @param[out] k the khalad.
 * @param[in] bin the khalad binary (the test's or bench's KHALAD_PATH).
 * @param[in] name its cache name.
 * @param[in] sock its socket path; its directory must exist before the start.
 * @return 0; -E2BIG (message in k->err) when a string does not fit.
 */
int harness_khalad_init(harness_khalad_t *k, const char *bin, const char *name, const char *sock);

/**
 * @brief Append one --set override ("section.key=value", printf-style) for the next starts.
 * @param[in,out] k the khalad.
 * @param[in] fmt, ... the override.
 * @return 0; -E2BIG (message in k->err, nothing added) when it is too long or there are
 *         HARNESS_KHALAD_SETS_MAX already.
 * @note khalad checks each --set as it reads it, in order: put redis_url before backend=redis.
 */
int harness_khalad_set(harness_khalad_t *k, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/** @brief Forget the overrides but cache.socket (set by init), before setting new ones. */
void harness_khalad_sets_reset(harness_khalad_t *k);

/**
 * @brief Start khalad --foreground --name NAME --set ... and wait until its socket accepts a
 *        connection (polled every 10 ms, bounded by k->start_ms). A stale socket file is
 *        removed first. An L1 segment left under the name is adopted, as a restarted khalad
 *        would.
 * @param[in,out] k the khalad; not running. k->pid is set on success.
 * @return 0; -ECHILD when khalad exited while starting (its status in k->err; set verbose to
 *         see why); -ETIMEDOUT when it did not listen in time (it is killed and reaped);
 *         -EBUSY when it is running already; another -errno when fork fails.
 */
int harness_khalad_start(harness_khalad_t *k);

/**
 * @brief Send @p sig to khalad and reap it. Nothing when it is not running.
 * @param[in,out] k the khalad; k->pid is 0 afterwards.
 * @param[in] sig the signal (SIGKILL: a crash; SIGTERM: a stop, waited for without bound).
 * @return the status waitpid() gave, or 0 when it was not running.
 * @note Not for SIGSTOP: the call would wait for an exit that does not come.
 */
int harness_khalad_kill(harness_khalad_t *k, int sig);

/**
 * @brief Stop khalad: SIGTERM, wait up to @p timeout_ms for it to exit, then SIGKILL, and reap.
 * @param[in,out] k the khalad; nothing when it is not running.
 * @param[in] timeout_ms the grace period; 0 = HARNESS_STOP_MS.
 * @return 0 when it exited on SIGTERM (or was not running); -ETIMEDOUT when it had to be
 *         killed (message in k->err).
 */
int harness_khalad_stop(harness_khalad_t *k, int timeout_ms);

/**
 * @brief Remove what a stopped khalad leaves: its L1 segment (the next start begins with an
 *        empty L1) and its socket file. Its L2 is left alone.
 * @param[in] k the khalad; stop it first.
 */
void harness_khalad_clean(const harness_khalad_t *k);

/** A redis-server the caller runs. Zero it; set the options; harness_redis_start(). */
typedef struct harness_redis {
    /* Options, read at each start. */
    const char *bin; /* the redis-server binary; NULL = "redis-server" on PATH */
    int tcp;         /* 1: listen on 127.0.0.1:port (port picked at the first start when 0) */
    int unix_socket; /* 1: listen on the Unix socket dir/redis.sock (sock) */
    const char *args[HARNESS_REDIS_ARGS_MAX + 1]; /* more options, NULL-terminated */
    int verbose;                                  /* 1: its stderr is the caller's */

    /* Chosen at the first start and kept by harness_redis_kill, so that a start after a kill
     * brings the server back where it was. */
    unsigned port;  /* its loopback TCP port; 0 = none chosen (or tcp is 0) */
    char dir[128];  /* its working directory; preset it to use the caller's own, else the
                        first start makes /tmp/khala-redis-<pid>-<n> (removed by stop) */
    char sock[108]; /* dir/redis.sock when unix_socket, else "" */
    int own_dir;    /* 1: dir was made by the harness (and is removed by stop) */

    pid_t pid;     /* while running (stopped with SIGSTOP or not), else 0 */
    char err[512]; /* the last failure's message */
} harness_redis_t;

/**
 * @brief Start redis-server (no persistence: --save "" --appendonly no) in r->dir, and wait
 *        (bounded: HARNESS_START_MS) until it answers PING; an answer of NOAUTH counts, for a
 *        server started with --requirepass. When the port was picked here and the server
 *        exits at start (the port was taken since), another free port is tried, up to 5 times.
 * @param[in,out] r the server; not running; at least one of tcp and unix_socket set.
 * @return 0; -EINVAL when neither listener is asked for or too many args are given; -EBUSY
 *         when it is running already; -ECHILD when it exited while starting; -ETIMEDOUT when
 *         it did not answer in time (it is killed and reaped); another -errno (mkdir, fork,
 *         no free port).
 */
int harness_redis_start(harness_redis_t *r);

/**
 * @brief SIGKILL the server (stopped or not) and reap it: everything it held is lost. Keeps
 *        port, dir and sock, so that harness_redis_start() restarts it where it was.
 * @param[in,out] r the server; nothing when it is not running.
 */
void harness_redis_kill(harness_redis_t *r);

/**
 * @brief harness_redis_kill(), then remove the directory when the harness made it, and zero
 *        the server's state (the options are kept).
 * @param[in,out] r the server.
 */
void harness_redis_stop(harness_redis_t *r);

/** Bound on a front's start (node and the engine opening its store on a loaded machine), ms. */
#define HARNESS_SURREAL_START_MS 20000

/**
 * A SurrealDB front the caller runs: `$KHALA_TEST_NODE` (default node) running
 * `$KHALA_TEST_SURREAL_FRONT` (default: the source tree's tests/support/surreal/front.mjs,
 * compiled in) with --port P --host 127.0.0.1 --data DIR/data --user root --pass root. Zero it;
 * set the options; harness_surreal_start().
 */
typedef struct harness_surreal {
    /* Options, read at each start. */
    const char *node;  /* the node binary; NULL = $KHALA_TEST_NODE, else "node" on PATH */
    const char *front; /* front.mjs; NULL = $KHALA_TEST_SURREAL_FRONT, else the built-in path */
    int verbose;       /* 1: the front's output goes to the caller's stderr too (else only to
                          dir/front.log) */

    /* Chosen at the first start and kept by harness_surreal_kill, so that a start after a kill
     * brings the front back where it was, with its data (the engine's store is on disk). */
    unsigned port; /* its loopback TCP port; 0 = pick a free one at the next start */
    char dir[160]; /* its directory: the store in dir/data, its output in dir/front.log; preset
                      it to use the caller's own, else the first start makes
                      /tmp/khala-surreal-<pid>-<n> (removed by stop) */
    char url[64];  /* "http://root:root@127.0.0.1:PORT" once started (the driver's l3 url) */
    int own_dir;   /* 1: dir was made by the harness (and is removed by stop) */

    pid_t pid;      /* while running (stopped with SIGSTOP or not), else 0 */
    char err[2048]; /* the last failure's message (quotes the end of front.log) */
} harness_surreal_t;

/**
 * @brief Start the front and wait (bounded: HARNESS_SURREAL_START_MS) until GET /health answers
 *        200. When the port was picked here and the front exits at start (the port was taken
 *        since), another free port is tried, up to 5 times.
 * @param[in,out] s the front; not running. s->pid and s->url are set on success.
 * @return 0; -EBUSY when it is running already; -ENOENT when front.mjs cannot be read;
 *         -ECHILD when it exited while starting (the end of its log in s->err); -ETIMEDOUT when
 *         it did not answer in time (it is killed and reaped); -E2BIG when a path does not fit;
 *         another -errno (mkdir, fork, no free port).
 */
int harness_surreal_start(harness_surreal_t *s);

/**
 * @brief SIGKILL the front (stopped or not) and reap it. Keeps port, dir and url, so that
 *        harness_surreal_start() restarts it where it was, with the rows it had written.
 * @param[in,out] s the front; nothing when it is not running.
 * @note To hang it instead, kill(s->pid, SIGSTOP) and later SIGCONT, as with redis-server.
 */
void harness_surreal_kill(harness_surreal_t *s);

/**
 * @brief harness_surreal_kill(), then remove the directory when the harness made it, and zero
 *        the front's state (the options are kept).
 * @param[in,out] s the front.
 */
void harness_surreal_stop(harness_surreal_t *s);

/**
 * @brief 1 when GET /health on 127.0.0.1:port answers 200 within about 2 s, else 0.
 * @param[in] port the front's port.
 */
int harness_surreal_healthy(unsigned port);

/**
 * @brief POST one SurrealQL statement to the front's /sql (Basic auth root:root, namespace and
 *        database headers) and return the reply's body.
 * @param[in] port the front's port.
 * @param[in] ns, db the namespace and database (khalad's [l3] surrealdb_namespace/_database).
 * @param[in] sql the statement.
 * @param[out] body the reply's body, NUL-terminated (truncated to cap - 1 bytes).
 * @param[in] cap bytes at body.
 * @return the HTTP status (200 on success); -ETIMEDOUT when no reply came within 10 s; -E2BIG
 *         when the request does not fit; another -errno (socket, connect).
 */
int harness_surreal_sql(unsigned port, const char *ns, const char *db, const char *sql, char *body,
                        size_t cap);

/**
 * @brief A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice).
 * @return the port, or a negative errno.
 */
int harness_free_port(void);

/**
 * @brief Remove a directory and everything in it (nftw, no symlinks followed).
 * @param[in] dir the directory; nothing when it is "" or absent.
 */
void harness_rmtree(const char *dir);

/** @brief Sleep for @p ms milliseconds, resuming after signals. */
void harness_sleep_ms(long ms);

#endif /* KHALA_TESTS_HARNESS_HARNESS_H */
