/*
 * An HTTP/1.1 client for khalad's servers (the SurrealDB L3 driver, daemon/tier_surreal.c), on
 * libcurl's multi interface: one multi handle per pool, a free list of at most pool_size easy
 * handles, and libcurl's connection cache kept to pool_size keep-alive connections to the one
 * host (CURLMOPT_MAX_HOST_CONNECTIONS). daemon/http_pool.c opens with the design; start at
 * khala__http_pool_open() and khala__http_request().
 *
 * Two halves over the same multi handle:
 * - Blocking: khala__http_request() submits one request and drives the multi handle (poll()
 *   over its descriptors, curl_multi_socket_action) until that request is done: what the tier
 *   seam needs today (khalad's tier calls are synchronous). It blocks for at most about
 *   (retries + 1) * timeout_ms + the retry backoff.
 * - Non-blocking: khala__http_submit() queues a request and returns; its callback runs from
 *   khala__http_on_fd() / khala__http_on_timeout() (or from a blocking call driving the same
 *   handle) once the request is done. The event loop learns which descriptors to watch through
 *   the watch callback (khala__http_pool_set_watch, fed by CURLMOPT_SOCKETFUNCTION) and when to
 *   call khala__http_on_timeout() through khala__http_timeout_ms() (CURLMOPT_TIMERFUNCTION and
 *   the retry backoff).
 *
 * Retries: a request marked idempotent is retried on a transport error (the connection could
 * not be made, broke, or answered nothing: a keep-alive connection the server closed) up to
 * `retries` times, after a backoff of 10 ms doubling; never on a timeout (the budget is spent)
 * nor on any HTTP status (the caller decides what a status means).
 *
 * Thread safety: a pool is used from one thread (khalad's loop thread); callbacks run on it.
 */
#ifndef KHALA_DAEMON_HTTP_POOL_H
#define KHALA_DAEMON_HTTP_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct khala_http_pool khala_http_pool_t;

/** Most easy handles (and keep-alive connections) of a pool. */
#define KHALA_HTTP_POOL_MAX 64u

/** Largest reply body kept (a 1 MiB value is 1.4 MiB of base64; a batch holds many). */
#define KHALA_HTTP_BODY_MAX (256u * 1024u * 1024u)

/** Options of khala__http_pool_open(). */
typedef struct khala_http_opts {
    const char *base_url; /* "http(s)://host:port" without credentials or a trailing slash */
    const char *user;     /* Basic auth user, NULL = none */
    const char *pass;     /* Basic auth password (with user) */
    const char **headers; /* extra request headers ("Name: value"), NULL-terminated; may be
                              NULL */
    unsigned timeout_ms;  /* whole-request timeout, > 0 */
    unsigned connect_ms;  /* connect timeout, 0 = timeout_ms */
    unsigned pool_size;   /* easy handles and connections, 1..KHALA_HTTP_POOL_MAX (0 = 1) */
    unsigned retries;     /* retries of an idempotent request on a transport error */
} khala_http_opts_t;

/** What a request got. body is the pool's allocation, released with khala__http_resp_free. */
typedef struct khala_http_resp {
    int rc;         /* 0: an HTTP reply came (see status); -ETIMEDOUT; -ECONNREFUSED (nothing
                       listens); -EIO (any other transport error: err says which); -ENOMEM;
                       -EMSGSIZE (body above KHALA_HTTP_BODY_MAX) */
    long status;    /* HTTP status when rc == 0 */
    char *body;     /* the reply body, NUL-terminated; NULL when empty */
    size_t len;     /* bytes of body */
    unsigned tries; /* attempts made (1 + retries used) */
    char err[160];  /* when rc != 0: libcurl's words for the failure */
} khala_http_resp_t;

/** Called once when a submitted request is done; resp is the callback's to keep or free (with
 * khala__http_resp_free). */
typedef void (*khala_http_done_fn)(void *arg, khala_http_resp_t *resp);

/** Events of a watched descriptor (bit set) and what khala__http_on_fd() is told. */
enum { KHALA_HTTP_IN = 1u << 0, KHALA_HTTP_OUT = 1u << 1 };

/** The event loop's hook: watch fd for events (KHALA_HTTP_IN / OUT), or stop watching it when
 * events is 0. */
typedef void (*khala_http_watch_fn)(void *arg, int fd, unsigned events);

/**
 * @brief Open a pool (no connection is made until the first request).
 * @param[in] o the options; the strings are copied.
 * @param[out] out the pool, written only on success; release it with khala__http_pool_close.
 * @param[out] err message buffer; may be NULL. @param[in] errlen its size.
 * @return 0; -EINVAL for a missing base URL or a zero timeout; -ENOMEM or -EIO when libcurl
 *         cannot be set up; -errno of epoll_create1.
 */
int khala__http_pool_open(const khala_http_opts_t *o, khala_http_pool_t **out, char *err,
                          size_t errlen);

/**
 * @brief Close the pool: requests still in flight are abandoned (their callbacks run with rc
 *        -ECANCELED), connections closed, the watch told to stop watching every descriptor.
 * @param[in] p the pool, or NULL.
 */
void khala__http_pool_close(khala_http_pool_t *p);

/**
 * @brief Make one request and wait for it (other submitted requests progress meanwhile and
 *        their callbacks may run).
 * @param[in] p the pool.
 * @param[in] method "GET" or "POST".
 * @param[in] path the path after the base URL ("/rpc").
 * @param[in] body the request body (POST), may be NULL; @p blen its bytes.
 * @param[in] idempotent may be retried on a transport error.
 * @param[out] resp the outcome, always written (resp->rc); release it with
 *             khala__http_resp_free.
 * @return resp->rc.
 */
int khala__http_request(khala_http_pool_t *p, const char *method, const char *path,
                        const void *body, size_t blen, bool idempotent, khala_http_resp_t *resp);

/**
 * @brief Submit one request without waiting: done(arg, resp) runs once it finished.
 * @param[in] p, method, path, body, blen, idempotent as khala__http_request (the body is
 *            copied).
 * @param[in] done the completion callback, non-NULL; @p arg passed to it.
 * @return 0 (done will run exactly once, never inside this call: from a later
 *         khala__http_on_fd, khala__http_on_timeout, khala__http_request or
 *         khala__http_pool_close), or -ENOMEM (done never runs).
 */
int khala__http_submit(khala_http_pool_t *p, const char *method, const char *path, const void *body,
                       size_t blen, bool idempotent, khala_http_done_fn done, void *arg);

/** @brief Tell the pool which loop watches its descriptors (for the non-blocking half).
 * Descriptors already open are announced at once. */
void khala__http_pool_set_watch(khala_http_pool_t *p, khala_http_watch_fn fn, void *arg);

/** @brief Milliseconds until khala__http_on_timeout() is due; -1 when nothing waits. */
int64_t khala__http_timeout_ms(khala_http_pool_t *p);

/** @brief The loop saw @p events (KHALA_HTTP_IN / OUT) on a watched fd: progress, and run the
 * callbacks of requests that finished. */
void khala__http_on_fd(khala_http_pool_t *p, int fd, unsigned events);

/** @brief The timeout of khala__http_timeout_ms() passed: progress (timeouts, retries due). */
void khala__http_on_timeout(khala_http_pool_t *p);

/** @brief Progress without waiting and without an event loop: poll the pool's descriptors with
 * a zero timeout, hand libcurl what is ready, run what is due and the callbacks of requests that
 * finished. For a caller that has no loop watching the pool (a driver's tick). */
void khala__http_progress(khala_http_pool_t *p);

/** @brief One descriptor for a loop that watches a single one (khalad's tier seam: poll_fd):
 * an epoll instance over the pool's sockets, readable when any of them is ready; then call
 * khala__http_progress() (and call it from a periodic tick too, for timeouts and retries).
 * Stable for the pool's life; the pool closes it. */
int khala__http_pool_fd(const khala_http_pool_t *p);

/** @brief Requests submitted and not yet done. */
unsigned khala__http_inflight(const khala_http_pool_t *p);

/** @brief Release what resp holds; resp becomes empty. */
void khala__http_resp_free(khala_http_resp_t *resp);

#endif /* KHALA_DAEMON_HTTP_POOL_H */
