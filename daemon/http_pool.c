/*
 * The HTTP client of khalad's servers. See daemon/http_pool.h for the API.
 *
 * HOW IT WORKS
 *
 * One libcurl multi handle owns everything that goes on the wire: its connection cache keeps
 * the keep-alive connections (at most pool_size to the one host: CURLMOPT_MAX_HOST_CONNECTIONS
 * and CURLMOPT_MAXCONNECTS), and every transfer is an easy handle added to it. Easy handles are
 * reused from a free list (at most pool_size of them), so a request allocates only its req_t.
 * A request that finds no free handle waits in `waiting` (FIFO) and starts when one is
 * returned: at most pool_size transfers run at once, and a burst never opens more connections
 * than the server was promised.
 *
 * A request's life:
 *   1. submit: a req_t, the body copied, put on `all`; start() gives it an easy handle, or it
 *      waits.
 *   2. libcurl runs it, driven either by the blocking loop (poll() over the pool's descriptors
 *      until this request is done) or by the event loop (curl_multi_socket_action from
 *      khala__http_on_fd / khala__http_on_timeout). Both read completions the same way
 *      (collect()): curl_multi_info_read.
 *   3. collect: a transport error on an idempotent request with retries left puts it on the
 *      retry list with its due time (10 ms doubling); its easy handle goes back to the free
 *      list meanwhile. Otherwise the request is done: the callback runs once with the response,
 *      and the req_t is freed. Inside khala__http_submit the callback is deferred (the
 *      `completed` list, run by the next driving call), so a caller never sees its callback
 *      before submit returned.
 * The blocking half is the same path with an internal callback that flags the request done, so
 * the two halves can share one multi handle: a blocking call also completes async requests, and
 * their callbacks may run inside it.
 *
 * One way to drive: everything goes through curl_multi_socket_action (never curl_multi_perform,
 * which does not report socket changes to CURLMOPT_SOCKETFUNCTION: a loop watching the
 * descriptors would miss a transfer that perform started). The pool records every descriptor
 * libcurl asked for (p->socks), so the blocking call poll()s exactly those, and a watch set
 * later learns them. Why the multi interface for a blocking call: the connection cache and the
 * async half come with it. Alternatives
 * rejected: a pool of easy handles driven by curl_easy_perform (no async half, one connection
 * cache per handle) and a curl share handle (for threads, which khalad's loop does not have).
 *
 * Invariants: a req_t is on exactly one of: running (has easy, added to multi), `waiting`, the
 * retry list, `completed`; and always on `all` until its callback ran. p->inflight counts
 * `all`.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "debug.h"
#include "errbuf.h"
#include "http_pool.h"
#include "sys.h"

/* First retry backoff; doubles per retry. */
#define RETRY_BACKOFF_MS 10
/* Longest single wait of the blocking loop (it re-checks retries and timeouts after). */
#define POLL_MAX_MS 1000

typedef struct req req_t;
struct req {
    khala_http_pool_t *p;
    CURL *easy;       /* NULL while waiting or between retries */
    char *url;        /* base + path */
    bool post;        /* else GET */
    char *body;       /* owned copy, NULL when blen == 0 */
    size_t blen;      /* bytes */
    bool idempotent;  /* may be retried */
    int64_t retry_at; /* monotonic ms the retry is due; on the retry list only */
    bool overflow;    /* the reply passed KHALA_HTTP_BODY_MAX */
    size_t cap;       /* bytes allocated for resp.body */
    khala_http_resp_t resp;
    khala_http_done_fn done;
    void *arg;
    char curl_err[CURL_ERROR_SIZE];
    req_t *next;                /* on `waiting` or the retry list */
    req_t *all_prev, *all_next; /* on `all` */
};

struct khala_http_pool {
    /* Immutable after open. */
    char *base;
    char *user, *pass;
    struct curl_slist *hdrs;
    unsigned timeout_ms, connect_ms, pool_size, retries;

    /* The loop thread's. */
    CURLM *multi;
    CURL *free_easy[KHALA_HTTP_POOL_MAX];
    unsigned nfree;   /* handles on free_easy */
    unsigned neasy;   /* handles created, <= pool_size */
    req_t *waiting;   /* FIFO head: requests waiting for a handle */
    req_t *wait_tail; /* its tail */
    req_t *retry;     /* requests waiting for their retry_at (unordered) */
    req_t *all;       /* every request not done */
    req_t *completed; /* done during a submit, their callbacks not yet run (LIFO) */
    bool in_submit;   /* inside khala__http_submit: callbacks are deferred to `completed` */
    unsigned inflight;
    int64_t curl_at; /* monotonic ms libcurl's timer is due; -1 = none */
    khala_http_watch_fn watch;
    void *watch_arg;
    /* Every descriptor libcurl asked to watch and for what, kept also without a watch: libcurl
     * announces a socket only when its state changes, so a watch set later learns them here. */
    struct {
        int fd;
        unsigned ev;
    } socks[2 * KHALA_HTTP_POOL_MAX];
    unsigned nsocks;
    int epfd; /* an epoll instance holding socks: one descriptor for a loop to watch */
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_OK;

static void curl_init(void) {
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- libcurl callbacks ----------------------------------------------------------------- */

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *ud) {
    req_t *r = ud;
    size_t n = size * nmemb;
    if (r->resp.len + n > KHALA_HTTP_BODY_MAX) {
        r->overflow = true;
        return 0; /* CURLE_WRITE_ERROR */
    }
    if (r->resp.len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->resp.len + n + 1)
            cap *= 2;
        char *b = realloc(r->resp.body, cap);
        if (!b)
            return 0;
        r->resp.body = b;
        r->cap = cap;
    }
    memcpy(r->resp.body + r->resp.len, ptr, n);
    r->resp.len += n;
    r->resp.body[r->resp.len] = '\0';
    return n;
}

static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
    (void)easy;
    (void)socketp;
    khala_http_pool_t *p = userp;
    unsigned ev = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        ev |= KHALA_HTTP_IN;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        ev |= KHALA_HTTP_OUT;
    unsigned i = 0;
    while (i < p->nsocks && p->socks[i].fd != (int)s)
        i++;
    if (ev == 0 && i < p->nsocks) {
        p->socks[i] = p->socks[--p->nsocks];
    } else if (ev != 0 && i < p->nsocks) {
        p->socks[i].ev = ev;
    } else if (ev != 0 && p->nsocks < sizeof(p->socks) / sizeof(p->socks[0])) {
        p->socks[p->nsocks].fd = (int)s;
        p->socks[p->nsocks++].ev = ev;
    }
    if (p->epfd >= 0) {
        /* The kernel drops a closed descriptor by itself, so a DEL may find nothing, and a
         * number reused by a new socket may still be there: try the other verb. */
        struct epoll_event e = {.events = (ev & KHALA_HTTP_IN ? EPOLLIN : 0u) |
                                          (ev & KHALA_HTTP_OUT ? EPOLLOUT : 0u),
                                .data.fd = (int)s};
        if (ev == 0)
            (void)epoll_ctl(p->epfd, EPOLL_CTL_DEL, (int)s, NULL);
        else if (epoll_ctl(p->epfd, EPOLL_CTL_MOD, (int)s, &e) != 0)
            (void)epoll_ctl(p->epfd, EPOLL_CTL_ADD, (int)s, &e);
    }
    if (p->watch)
        p->watch(p->watch_arg, (int)s, ev); /* CURL_POLL_REMOVE: ev 0 */
    return 0;
}

static int on_timer(CURLM *multi, long timeout_ms, void *userp) {
    (void)multi;
    khala_http_pool_t *p = userp;
    p->curl_at = timeout_ms < 0 ? -1 : khala__sys_now_ms() + timeout_ms;
    return 0;
}

/* ---- requests -------------------------------------------------------------------------- */

static void all_unlink(khala_http_pool_t *p, req_t *r) {
    if (r->all_prev)
        r->all_prev->all_next = r->all_next;
    else
        p->all = r->all_next;
    if (r->all_next)
        r->all_next->all_prev = r->all_prev;
    p->inflight--;
}

static void req_free(req_t *r) {
    free(r->url);
    free(r->body);
    free(r);
}

static void easy_put(khala_http_pool_t *p, CURL *e) {
    KHALA_ASSERT(p->nfree < KHALA_HTTP_POOL_MAX);
    p->free_easy[p->nfree++] = e;
}

/* Give r an easy handle and add it to the multi handle; queue it when none is free. */
static void start(khala_http_pool_t *p, req_t *r) {
    CURL *e = NULL;
    if (p->nfree > 0) {
        e = p->free_easy[--p->nfree];
    } else if (p->neasy < p->pool_size) {
        e = curl_easy_init();
        if (e)
            p->neasy++;
    }
    if (!e) {
        r->next = NULL;
        if (p->wait_tail)
            p->wait_tail->next = r;
        else
            p->waiting = r;
        p->wait_tail = r;
        return;
    }
    curl_easy_reset(e);
    r->easy = e;
    r->curl_err[0] = '\0';
    curl_easy_setopt(e, CURLOPT_URL, r->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->curl_err);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)p->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)p->connect_ms);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    if (p->hdrs)
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, p->hdrs);
    if (p->user) {
        curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        curl_easy_setopt(e, CURLOPT_USERNAME, p->user);
        curl_easy_setopt(e, CURLOPT_PASSWORD, p->pass ? p->pass : "");
    }
    if (r->post) {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body ? r->body : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->blen);
    } else {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    }
    if (curl_multi_add_handle(p->multi, e) != CURLM_OK) {
        /* Cannot happen with a valid handle; fail the request rather than lose it. */
        r->easy = NULL;
        easy_put(p, e);
        r->resp.rc = -EIO;
        snprintf(r->resp.err, sizeof(r->resp.err), "curl_multi_add_handle failed");
        r->retry_at = -1; /* done at the next collect */
        r->next = p->retry;
        p->retry = r;
    }
}

/* Start waiting requests while handles are free. */
static void start_waiting(khala_http_pool_t *p) {
    while (p->waiting && (p->nfree > 0 || p->neasy < p->pool_size)) {
        req_t *r = p->waiting;
        p->waiting = r->next;
        if (!p->waiting)
            p->wait_tail = NULL;
        start(p, r);
    }
}

static void finish(khala_http_pool_t *p, req_t *r) {
    if (p->in_submit) {
        /* A submit never runs a callback (the caller may still be setting up what the callback
         * uses): the next khala__http_on_fd / on_timeout / blocking call runs it. */
        r->next = p->completed;
        p->completed = r;
        return;
    }
    all_unlink(p, r);
    khala_http_resp_t resp = r->resp;
    khala_http_done_fn done = r->done;
    void *arg = r->arg;
    memset(&r->resp, 0, sizeof(r->resp));
    req_free(r);
    done(arg, &resp);
}

/* Run the callbacks deferred by submits. */
static void run_completed(khala_http_pool_t *p) {
    while (p->completed) {
        req_t *r = p->completed;
        p->completed = r->next;
        finish(p, r);
    }
}

/* Start the retries that are due; a retry_at of -1 is a failed start, finished here. */
static void run_retries(khala_http_pool_t *p) {
    int64_t now = khala__sys_now_ms();
    req_t **pp = &p->retry;
    while (*pp) {
        req_t *r = *pp;
        if (r->retry_at < 0) {
            *pp = r->next;
            finish(p, r);
        } else if (r->retry_at <= now) {
            *pp = r->next;
            start(p, r);
        } else {
            pp = &r->next;
        }
    }
}

static bool retryable(CURLcode c) {
    return c == CURLE_COULDNT_CONNECT || c == CURLE_SEND_ERROR || c == CURLE_RECV_ERROR ||
           c == CURLE_GOT_NOTHING || c == CURLE_PARTIAL_FILE;
}

/* Read libcurl's completions: retry or finish each. */
static void collect(khala_http_pool_t *p) {
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(p->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *e = m->easy_handle;
        CURLcode c = m->data.result;
        req_t *r = NULL;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&r);
        KHALA_ASSERT(r && r->easy == e);
        curl_multi_remove_handle(p->multi, e);
        r->easy = NULL;
        r->resp.tries++;
        if (c == CURLE_OK) {
            r->resp.rc = 0;
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->resp.status);
        } else if (r->idempotent && retryable(c) && r->resp.tries <= p->retries) {
            easy_put(p, e);
            free(r->resp.body);
            r->resp.body = NULL;
            r->resp.len = 0;
            r->cap = 0;
            r->retry_at = khala__sys_now_ms() + ((int64_t)RETRY_BACKOFF_MS << (r->resp.tries - 1));
            r->next = p->retry;
            p->retry = r;
            continue;
        } else {
            if (c == CURLE_OPERATION_TIMEDOUT)
                r->resp.rc = -ETIMEDOUT;
            else if (c == CURLE_COULDNT_CONNECT)
                r->resp.rc = -ECONNREFUSED;
            else if (c == CURLE_WRITE_ERROR && r->overflow)
                r->resp.rc = -EMSGSIZE;
            else if (c == CURLE_OUT_OF_MEMORY || c == CURLE_WRITE_ERROR)
                r->resp.rc = -ENOMEM;
            else
                r->resp.rc = -EIO;
            khala__errbuf_set(r->resp.err, sizeof(r->resp.err), "%s",
                              r->curl_err[0] ? r->curl_err : curl_easy_strerror(c));
        }
        easy_put(p, e);
        finish(p, r);
    }
    run_retries(p);
    start_waiting(p);
    if (!p->in_submit)
        run_completed(p);
}

/* Run libcurl's transfers whose timer expired (a new transfer's is "now"): connect, send. */
static void kick(khala_http_pool_t *p) {
    int running;
    p->curl_at = -1;
    curl_multi_socket_action(p->multi, CURL_SOCKET_TIMEOUT, 0, &running);
}

/* Tell libcurl that fd is ready for events. */
static void socket_ready(khala_http_pool_t *p, int fd, unsigned events) {
    int mask = 0, running;
    if (events & KHALA_HTTP_IN)
        mask |= CURL_CSELECT_IN;
    if (events & KHALA_HTTP_OUT)
        mask |= CURL_CSELECT_OUT;
    curl_multi_socket_action(p->multi, fd, mask, &running);
}

static req_t *req_new(khala_http_pool_t *p, const char *method, const char *path, const void *body,
                      size_t blen, bool idempotent, khala_http_done_fn done, void *arg) {
    KHALA_ASSERT(p && method && path && done);
    req_t *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    size_t bl = strlen(p->base), pl = strlen(path);
    r->url = malloc(bl + pl + 1);
    if (!r->url || (blen && !(r->body = malloc(blen)))) {
        req_free(r);
        return NULL;
    }
    memcpy(r->url, p->base, bl);
    memcpy(r->url + bl, path, pl + 1);
    if (blen)
        memcpy(r->body, body, blen);
    r->blen = blen;
    r->post = strcmp(method, "POST") == 0;
    r->idempotent = idempotent;
    r->done = done;
    r->arg = arg;
    r->p = p;
    r->all_next = p->all;
    if (p->all)
        p->all->all_prev = r;
    p->all = r;
    p->inflight++;
    return r;
}

/* ---- API ------------------------------------------------------------------------------- */

int khala__http_submit(khala_http_pool_t *p, const char *method, const char *path, const void *body,
                       size_t blen, bool idempotent, khala_http_done_fn done, void *arg) {
    req_t *r = req_new(p, method, path, body, blen, idempotent, done, arg);
    if (!r)
        return -ENOMEM;
    start(p, r);
    /* Let libcurl begin (connect, send) now rather than at the loop's next event; whatever
     * completes meanwhile waits on `completed` (khala__http_timeout_ms() is then 0). */
    p->in_submit = true;
    kick(p);
    collect(p);
    p->in_submit = false;
    return 0;
}

typedef struct blocking {
    bool done;
    khala_http_resp_t *out;
} blocking_t;

static void blocking_done(void *arg, khala_http_resp_t *resp) {
    blocking_t *b = arg;
    *b->out = *resp;
    b->done = true;
}

int khala__http_request(khala_http_pool_t *p, const char *method, const char *path,
                        const void *body, size_t blen, bool idempotent, khala_http_resp_t *resp) {
    KHALA_ASSERT(resp);
    memset(resp, 0, sizeof(*resp));
    blocking_t b = {.done = false, .out = resp};
    req_t *r = req_new(p, method, path, body, blen, idempotent, blocking_done, &b);
    if (!r) {
        resp->rc = -ENOMEM;
        snprintf(resp->err, sizeof(resp->err), "out of memory");
        return resp->rc;
    }
    start(p, r);
    kick(p);
    collect(p);
    /* The loop khalad's would be, over the pool's own descriptors (see "one way to drive"). */
    while (!b.done) {
        struct pollfd pf[sizeof(p->socks) / sizeof(p->socks[0])];
        nfds_t n = p->nsocks;
        for (nfds_t i = 0; i < n; i++)
            pf[i] =
                (struct pollfd){.fd = p->socks[i].fd,
                                .events = (short)((p->socks[i].ev & KHALA_HTTP_IN ? POLLIN : 0) |
                                                  (p->socks[i].ev & KHALA_HTTP_OUT ? POLLOUT : 0))};
        int64_t wait = khala__http_timeout_ms(p);
        if (wait < 0 || wait > POLL_MAX_MS)
            wait = POLL_MAX_MS;
        int ready = poll(pf, n, (int)wait);
        for (nfds_t i = 0; ready > 0 && i < n; i++) {
            unsigned ev = (pf[i].revents & (POLLIN | POLLHUP | POLLERR) ? KHALA_HTTP_IN : 0) |
                          (pf[i].revents & POLLOUT ? KHALA_HTTP_OUT : 0);
            if (ev)
                socket_ready(p, pf[i].fd, ev);
        }
        khala__http_on_timeout(p);
    }
    return resp->rc;
}

void khala__http_pool_set_watch(khala_http_pool_t *p, khala_http_watch_fn fn, void *arg) {
    KHALA_ASSERT(p);
    p->watch = fn;
    p->watch_arg = arg;
    for (unsigned i = 0; fn && i < p->nsocks; i++)
        fn(arg, p->socks[i].fd, p->socks[i].ev);
}

int64_t khala__http_timeout_ms(khala_http_pool_t *p) {
    KHALA_ASSERT(p);
    if (p->completed)
        return 0;
    int64_t now = khala__sys_now_ms(), at = p->curl_at;
    for (req_t *q = p->retry; q; q = q->next)
        if (at < 0 || q->retry_at < at)
            at = q->retry_at < 0 ? now : q->retry_at;
    if (at < 0)
        return -1;
    return at <= now ? 0 : at - now;
}

void khala__http_on_fd(khala_http_pool_t *p, int fd, unsigned events) {
    KHALA_ASSERT(p);
    socket_ready(p, fd, events);
    collect(p);
}

void khala__http_on_timeout(khala_http_pool_t *p) {
    KHALA_ASSERT(p);
    int running;
    if (p->curl_at >= 0 && p->curl_at <= khala__sys_now_ms()) {
        p->curl_at = -1;
        curl_multi_socket_action(p->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
    collect(p);
}

void khala__http_progress(khala_http_pool_t *p) {
    KHALA_ASSERT(p);
    struct epoll_event evs[sizeof(p->socks) / sizeof(p->socks[0])];
    int n = p->nsocks ? epoll_wait(p->epfd, evs, (int)(sizeof(evs) / sizeof(evs[0])), 0) : 0;
    for (int i = 0; i < n; i++) {
        unsigned ev = (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR) ? KHALA_HTTP_IN : 0) |
                      (evs[i].events & EPOLLOUT ? KHALA_HTTP_OUT : 0);
        if (ev)
            socket_ready(p, evs[i].data.fd, ev);
    }
    khala__http_on_timeout(p);
}

int khala__http_pool_fd(const khala_http_pool_t *p) {
    KHALA_ASSERT(p);
    return p->epfd;
}

unsigned khala__http_inflight(const khala_http_pool_t *p) {
    return p->inflight;
}

void khala__http_resp_free(khala_http_resp_t *resp) {
    if (!resp)
        return;
    free(resp->body);
    resp->body = NULL;
    resp->len = 0;
}

int khala__http_pool_open(const khala_http_opts_t *o, khala_http_pool_t **out, char *err,
                          size_t errlen) {
    KHALA_ASSERT(o && out);
    if (!o->base_url || !*o->base_url)
        return khala__errbuf(err, errlen, -EINVAL, "http: no base URL");
    if (o->timeout_ms == 0)
        return khala__errbuf(err, errlen, -EINVAL, "http: timeout_ms is 0");
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return khala__errbuf(err, errlen, -EIO, "http: curl_global_init: %s",
                             curl_easy_strerror(curl_init_rc));
    khala_http_pool_t *p = calloc(1, sizeof(*p));
    if (!p)
        return khala__errbuf(err, errlen, -ENOMEM, "http: out of memory");
    p->curl_at = -1;
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (p->epfd < 0) {
        int e = errno;
        free(p);
        return khala__errbuf(err, errlen, -e, "http: epoll_create1: %s", strerror(e));
    }
    p->timeout_ms = o->timeout_ms;
    p->connect_ms = o->connect_ms ? o->connect_ms : o->timeout_ms;
    p->pool_size = o->pool_size == 0 ? 1 : o->pool_size;
    if (p->pool_size > KHALA_HTTP_POOL_MAX)
        p->pool_size = KHALA_HTTP_POOL_MAX;
    p->retries = o->retries;
    p->base = strdup(o->base_url);
    if (!p->base || (o->user && !(p->user = strdup(o->user))) ||
        (o->pass && !(p->pass = strdup(o->pass))))
        goto nomem;
    for (const char **h = o->headers; h && *h; h++) {
        struct curl_slist *l = curl_slist_append(p->hdrs, *h);
        if (!l)
            goto nomem;
        p->hdrs = l;
    }
    p->multi = curl_multi_init();
    if (!p->multi)
        goto nomem;
    curl_multi_setopt(p->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)p->pool_size);
    curl_multi_setopt(p->multi, CURLMOPT_MAXCONNECTS, (long)p->pool_size);
    curl_multi_setopt(p->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(p->multi, CURLMOPT_SOCKETDATA, p);
    curl_multi_setopt(p->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(p->multi, CURLMOPT_TIMERDATA, p);
    *out = p;
    return 0;
nomem:
    khala__http_pool_close(p);
    return khala__errbuf(err, errlen, -ENOMEM, "http: out of memory");
}

void khala__http_pool_close(khala_http_pool_t *p) {
    if (!p)
        return;
    p->in_submit = false;
    run_completed(p);
    while (p->all) {
        req_t *r = p->all;
        if (r->easy) {
            curl_multi_remove_handle(p->multi, r->easy);
            easy_put(p, r->easy);
            r->easy = NULL;
        }
        r->resp.rc = -ECANCELED;
        snprintf(r->resp.err, sizeof(r->resp.err), "the pool was closed");
        finish(p, r);
    }
    p->waiting = p->wait_tail = p->retry = p->completed = NULL;
    for (unsigned i = 0; i < p->nfree; i++)
        curl_easy_cleanup(p->free_easy[i]);
    if (p->multi)
        curl_multi_cleanup(p->multi);
    curl_slist_free_all(p->hdrs);
    if (p->epfd >= 0)
        close(p->epfd);
    free(p->base);
    free(p->user);
    free(p->pass);
    free(p);
}
