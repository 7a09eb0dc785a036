/*
 * Cross-host invalidation over Redis pub/sub. See daemon/coherence.h for the contract.
 *
 * HOW IT WORKS
 *
 * A handle holds two connections to the server the redis_url names, both opened by
 * khala__redis_connect() (timeouts, AUTH, SELECT):
 *
 *     khalad loop --publish()--> [pub]  PUBLISH khala:<ns>:inv <msg>     (blocking, timeout)
 *     khalad loop <-readable()-- [sub]  SUBSCRIBE khala:<ns>:inv, then only reads, and PINGs
 *                     ^
 *                     fd(): an epoll set holding sub's socket, stable from open to close
 *
 * The subscriber is blocking only while it connects and subscribes (the SUBSCRIBE's
 * confirmation is read with the command timeout). After that this file never lets hiredis
 * touch its socket: readable() recv()s with MSG_DONTWAIT and feeds the bytes to the
 * connection's reply parser (redisReaderFeed / redisReaderGetReply), and tick() send()s the
 * liveness PING with MSG_DONTWAIT. So readable() and tick() never block on an established
 * subscription, without changing hiredis's notion of a blocking context.
 *
 * Every message is a msgpack map:
 *
 *     {"o": origin (uint), "by": "key"|"prefix"|"type"|"all",
 *      "k": key or prefix (bin; KEY and PREFIX only), "t": type (uint; TYPE, and ALL of one
 *      type), "v": version (uint; KEY only, absent when 0)}
 *
 * The origin is 64 random bits drawn at open (getrandom, khala__sys_random_u64), so a handle
 * recognizes its own messages, which Redis sends back to it, and ignores them. Decoding is a
 * hand-written walk over at most KHALA_COH_MSG_MAX bytes that checks every length against the
 * bytes present before reading (no msgpack-c unpacking: it allocates a container's elements
 * from its declared count, before knowing they exist; see lib/proto.c). Unknown fields with
 * scalar values are skipped (a later version may add some); anything else unexpected (a
 * missing or duplicate field, a field that does not belong to the kind, a key of 0 or more
 * than KHALA_KEY_MAX bytes, a type >= KHALA_TYPE_COUNT, a nested container, trailing bytes)
 * makes the whole message malformed: counted, ignored, and the subscription goes on.
 *
 * The subscription's states:
 *
 *     open --server answers--> SUBSCRIBED --EOF, read error, PING unanswered--> DOWN
 *       |                          ^                                  | (LOST, once)
 *       +--server unreachable------|-----> DOWN (LOST owed: reported  |
 *                                  |        by the first tick)        v
 *                                  +--- SUBSCRIBE confirmed <--- tick(): retry with backoff
 *                                       (REGAINED)                    50, 100, ... 2000 ms
 *
 * Invariants:
 *   - c->sub != NULL exactly in SUBSCRIBED, and then its socket is in c->epfd.
 *   - One LOST per transition out of SUBSCRIBED (or per open that could not subscribe), one
 *     REGAINED per transition into SUBSCRIBED after it; failed attempts report nothing.
 *   - No reply stays buffered-but-undispatched in sub's reader when readable() or tick()
 *     returns (open() may leave some behind the SUBSCRIBE's confirmation; the first tick()
 *     dispatches them), so epoll's readiness is the only signal the caller needs.
 *   - A publisher failure never changes the subscription's state.
 *
 * Liveness: while subscribed, a PING goes out every KHALA_COH_PING_INTERVAL_MS once the
 * previous one was answered (in RESP2's subscribed mode the answer is ["pong", ""]); one left
 * unanswered for twice the command timeout means the server or the path is gone even though
 * TCP has not said so, and is a loss.
 *
 * Why a separate publisher connection: a subscribed RESP2 connection accepts only
 * (P)SUBSCRIBE, UNSUBSCRIBE, PING and QUIT. Why blocking PUBLISH: it is one short round trip
 * to a server khalad already waits on for L2, and its success is what publish() reports.
 * Why classic (not sharded) pub/sub: in a Redis Cluster, PUBLISH is broadcast to every node,
 * so a subscriber on any node (the URL's) hears publishers on every other node; SSUBSCRIBE
 * would require following the channel's slot.
 *
 * Known limit: connecting is blocking (khala__redis_connect), so a reconnect attempt to a
 * server that drops packets, or a host name whose DNS hangs, stalls tick() for up to the
 * timeout per step; the backoff bounds it to one attempt per 2 s at worst. A refused
 * connection (the usual dead server) returns at once.
 *
 * Rejected: hiredis's async API (it needs an event-library adapter, and khalad's loop is its
 * own); one connection for both directions (not allowed by RESP2, see above); counting a loss
 * when PUBLISH fails (the subscription may be fine; only the subscription decides what this
 * host may have missed).
 */
#include "coherence.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <msgpack.h>

#include "config.h"
#include "errbuf.h"
#include "khala/cache.h"
#include "khala/error.h"
#include "redis_conn.h"
#include "sys.h"

/* Bytes recv()'d per call of readable() at most: bounded work per wake-up. */
#define READ_CHUNK (16u * 1024u)
#define READ_BUDGET (64u * READ_CHUNK)

/* Longest channel name: "khala:" + namespace + ":inv" + NUL. */
#define CHANNEL_MAX (KHALA_NAME_MAX + 16)

/* retry_at_ms when no attempt is scheduled: the next tick() schedules one from its clock. */
#define UNSCHEDULED INT64_MIN

/* The liveness PING, as RESP, sent by hand on the subscribed socket (see the file header). */
static const char PING_CMD[] = "*1\r\n$4\r\nPING\r\n";

struct khala_coherence {
    /* Immutable after open. */
    khala_config_redis_url_t url;
    char server[KHALA_CONFIG_URL_MAX + 16]; /* "127.0.0.1:6379" or "unix:/path", for messages */
    char channel[CHANNEL_MAX];              /* "khala:<ns>:inv" */
    size_t channel_len;
    unsigned timeout_ms; /* connect and command timeout; never 0 */
    uint64_t origin;     /* this handle's random id, "o" of its messages */
    khala_coherence_cb_t cb;
    int epfd; /* epoll set holding sub's socket while subscribed; khala__coherence_fd() */

    /* The subscription. */
    redisContext *sub;    /* NULL while down; else subscribed, socket in epfd */
    bool lost_owed;       /* open could not subscribe: the first tick reports LOST */
    bool regain_owed;     /* the next subscription is reported as REGAINED */
    int64_t retry_at_ms;  /* next attempt while down; UNSCHEDULED: the next tick sets it */
    unsigned backoff_ms;  /* wait before the next attempt after this one fails */
    int64_t ping_next_ms; /* send a PING at this time (subscribed, none outstanding);
                                  UNSCHEDULED: the next tick sets it */
    int64_t ping_sent_ms; /* when the outstanding PING was sent; -1 = none outstanding */
    size_t ping_off;      /* bytes of PING_CMD already sent (a partial send) */
    char why[600];        /* the cause of the LOST owed since open */

    /* The publisher. */
    redisContext *pub;       /* NULL when not connected */
    bool pub_proven;         /* pub has completed a command: a failure may be a restart */
    int64_t pub_retry_at_ms; /* after a failed connect, publish() fails at once until then
                                (khala__sys_now_ms); INT64_MIN = no backoff */
    unsigned pub_backoff_ms; /* wait after the next failed connect */
    char pub_err[1024];      /* why the last connect failed, repeated during the backoff */

    khala_coherence_stats_t stats;
    char errmsg[1280];
};

/* Set the message khala__coherence_errmsg returns. */
#define set_errmsg(c, ...) khala__errbuf_set((c)->errmsg, sizeof((c)->errmsg), __VA_ARGS__)

static unsigned backoff_next(unsigned ms) {
    return ms >= KHALA_COH_BACKOFF_MAX_MS / 2 ? KHALA_COH_BACKOFF_MAX_MS : ms * 2;
}

/* ---- The message format ------------------------------------------------------------------ */

static const char *const BY_NAME[] = {"key", "prefix", "type", "all"};

/* The packer's sink: a fixed buffer (khala_coh_buf_t, coherence.h); fails (and the encoding
 * with it) when it would overflow. */
typedef khala_coh_buf_t enc_buf_t;

static int enc_write(void *data, const char *p, size_t n) {
    enc_buf_t *b = data;
    if (n > sizeof(b->buf) - b->len)
        return -1;
    memcpy(b->buf + b->len, p, n);
    b->len += n;
    return 0;
}

static int pack_name(msgpack_packer *pk, const char *s) {
    return msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* Encode m (already checked) into b. */
int khala__coherence_encode(const khala_inv_t *m, uint64_t origin, enc_buf_t *b) {
    bool has_k = m->by == KHALA_INV_KEY || m->by == KHALA_INV_PREFIX;
    bool has_t = m->by == KHALA_INV_TYPE || (m->by == KHALA_INV_ALL && m->type >= 0);
    bool has_v = m->by == KHALA_INV_KEY && m->version != 0;
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, enc_write);
    b->len = 0;
    int rc = msgpack_pack_map(&pk, 2u + has_k + has_t + has_v);
    rc |= pack_name(&pk, "o") | msgpack_pack_uint64(&pk, origin);
    rc |= pack_name(&pk, "by") | pack_name(&pk, BY_NAME[m->by]);
    if (has_k)
        rc |= pack_name(&pk, "k") | msgpack_pack_bin_with_body(&pk, m->key, m->klen);
    if (has_t)
        rc |= pack_name(&pk, "t") | msgpack_pack_uint64(&pk, (uint64_t)m->type);
    if (has_v)
        rc |= pack_name(&pk, "v") | msgpack_pack_uint64(&pk, m->version);
    return rc == 0 ? 0 : -1;
}

/* A cursor over a payload; every read checks its length against end first. */
typedef struct rd {
    const uint8_t *p, *end;
} rd_t;

static int rd_be(rd_t *r, unsigned n, uint64_t *v) {
    if ((size_t)(r->end - r->p) < n)
        return -1;
    uint64_t x = 0;
    for (unsigned i = 0; i < n; i++)
        x = (x << 8) | r->p[i];
    r->p += n;
    *v = x;
    return 0;
}

/* A byte run of length n at the cursor (a str or bin body). */
static int rd_body(rd_t *r, uint64_t n, const uint8_t **s, size_t *len) {
    if ((uint64_t)(r->end - r->p) < n)
        return -1;
    *s = r->p;
    *len = (size_t)n;
    r->p += n;
    return 0;
}

/* One scalar at the cursor. kind: 'u' non-negative integer (in *u), 's' str, 'b' bin (in s,
 * len), 'o' any other scalar (nil, bool, negative integer, float), skipped. Containers and
 * exts are refused: nothing in this format nests. */
static int rd_scalar(rd_t *r, char *kind, uint64_t *u, const uint8_t **s, size_t *len) {
    if (r->p >= r->end)
        return -1;
    uint8_t b = *r->p++;
    uint64_t n;
    if (b <= 0x7f) {
        *kind = 'u';
        *u = b;
        return 0;
    }
    if (b >= 0xa0 && b <= 0xbf) {
        *kind = 's';
        return rd_body(r, b & 0x1fu, s, len);
    }
    if (b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
        *kind = 'o';
        return 0;
    }
    switch (b) {
        case 0xcc:
        case 0xcd:
        case 0xce:
        case 0xcf: /* uint 8/16/32/64 */
            *kind = 'u';
            return rd_be(r, 1u << (b - 0xcc), u);
        case 0xd0:
        case 0xd1:
        case 0xd2:
        case 0xd3: { /* int 8/16/32/64: some packers write small positives so */
            unsigned w = 1u << (b - 0xd0);
            if (rd_be(r, w, &n) != 0)
                return -1;
            bool negative = (n >> (8 * w - 1)) & 1u;
            *kind = negative ? 'o' : 'u';
            *u = n;
            return 0;
        }
        case 0xca:
            *kind = 'o';
            return rd_be(r, 4, &n);
        case 0xcb:
            *kind = 'o';
            return rd_be(r, 8, &n);
        case 0xd9:
        case 0xda:
        case 0xdb: /* str 8/16/32 */
            *kind = 's';
            if (rd_be(r, 1u << (b - 0xd9), &n) != 0)
                return -1;
            return rd_body(r, n, s, len);
        case 0xc4:
        case 0xc5:
        case 0xc6: /* bin 8/16/32 */
            *kind = 'b';
            if (rd_be(r, 1u << (b - 0xc4), &n) != 0)
                return -1;
            return rd_body(r, n, s, len);
        default: /* 0xc1 (never used), containers, exts */
            return -1;
    }
}

static bool name_is(const uint8_t *s, size_t len, const char *name) {
    return len == strlen(name) && memcmp(s, name, len) == 0;
}

/* Decode payload into m and its origin; -1 if anything is malformed (see the file header). */
int khala__coherence_decode(const void *payload, size_t len, khala_inv_t *m, uint64_t *origin) {
    if (len == 0 || len > KHALA_COH_MSG_MAX)
        return -1;
    rd_t r = {payload, (const uint8_t *)payload + len};
    uint64_t n;
    uint8_t b = *r.p++;
    if (b >= 0x80 && b <= 0x8f)
        n = b & 0x0fu;
    else if (b == 0xde || b == 0xdf) {
        if (rd_be(&r, b == 0xde ? 2 : 4, &n) != 0)
            return -1;
    } else
        return -1;
    if (n > 16) /* five fields today; a map that large is not ours */
        return -1;
    enum { F_O = 1, F_BY = 2, F_K = 4, F_T = 8, F_V = 16 };
    unsigned seen = 0;
    int by = -1;
    uint64_t t = 0, v = 0;
    const uint8_t *k = NULL;
    size_t klen = 0;
    for (uint64_t i = 0; i < n; i++) {
        char kk, vk;
        uint64_t u = 0, vu = 0;
        const uint8_t *name = NULL, *vs = NULL;
        size_t nlen = 0, vlen = 0;
        if (rd_scalar(&r, &kk, &u, &name, &nlen) != 0 || kk != 's')
            return -1;
        if (rd_scalar(&r, &vk, &vu, &vs, &vlen) != 0)
            return -1;
        unsigned f = name_is(name, nlen, "o")    ? F_O
                     : name_is(name, nlen, "by") ? F_BY
                     : name_is(name, nlen, "k")  ? F_K
                     : name_is(name, nlen, "t")  ? F_T
                     : name_is(name, nlen, "v")  ? F_V
                                                 : 0;
        if (f == 0)
            continue; /* a field of a later version */
        if (seen & f)
            return -1;
        seen |= f;
        switch (f) {
            case F_O:
                if (vk != 'u')
                    return -1;
                *origin = vu;
                break;
            case F_BY:
                if (vk != 's')
                    return -1;
                for (int j = 0; j < 4; j++)
                    if (name_is(vs, vlen, BY_NAME[j]))
                        by = j;
                if (by < 0)
                    return -1;
                break;
            case F_K:
                if (vk != 'b' && vk != 's')
                    return -1;
                k = vs;
                klen = vlen;
                break;
            case F_T:
                if (vk != 'u')
                    return -1;
                t = vu;
                break;
            default: /* F_V */
                if (vk != 'u')
                    return -1;
                v = vu;
                break;
        }
    }
    if (r.p != r.end || !(seen & F_O) || !(seen & F_BY))
        return -1;
    unsigned allowed = F_O | F_BY, required = F_O | F_BY;
    switch (by) {
        case KHALA_INV_KEY:
            allowed |= F_K | F_V;
            required |= F_K;
            break;
        case KHALA_INV_PREFIX:
            allowed |= F_K;
            required |= F_K;
            break;
        case KHALA_INV_TYPE:
            allowed |= F_T;
            required |= F_T;
            break;
        default: /* KHALA_INV_ALL */
            allowed |= F_T;
            break;
    }
    if ((seen & ~allowed) || (seen & required) != required)
        return -1;
    if ((seen & F_K) && (klen == 0 || klen > KHALA_KEY_MAX))
        return -1;
    if ((seen & F_T) && t >= KHALA_TYPE_COUNT)
        return -1;
    m->by = (khala_inv_by_t)by;
    m->key = k;
    m->klen = klen;
    m->type = (seen & F_T) ? (int)t : -1;
    m->version = v;
    return 0;
}

/* ---- The subscription -------------------------------------------------------------------- */

/* Connect, SUBSCRIBE and wait for the confirmation; on success c->sub is set and its socket is
 * in c->epfd. Returns 0, KHALA_ETIER (unreachable, no answer), KHALA_ECONFIG (refused), or
 * -ENOMEM; err names the server and the cause. */
static int subscribe(khala_coherence_t *c, char *err, size_t errlen) {
    redisContext *r = NULL;
    int rc = khala__redis_connect(&c->url, c->timeout_ms, &r, err, errlen);
    if (rc != 0)
        return rc;
    const char *argv[2] = {"SUBSCRIBE", c->channel};
    size_t argl[2] = {9, c->channel_len};
    redisReply *rep = redisCommandArgv(r, 2, argv, argl);
    if (!rep) {
        rc = khala__errbuf(err, errlen, KHALA_ETIER, "redis %s: SUBSCRIBE %s: %s", c->server,
                           c->channel, r->errstr[0] ? r->errstr : "no reply");
        goto fail;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        rc = khala__errbuf(err, errlen, KHALA_ECONFIG, "redis %s: SUBSCRIBE %s refused: %s",
                           c->server, c->channel, rep->str);
        goto fail;
    }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING ||
        strcasecmp(rep->element[0]->str, "subscribe") != 0) {
        rc = khala__errbuf(err, errlen, KHALA_ETIER,
                           "redis %s: SUBSCRIBE %s: unexpected reply (not a confirmation)",
                           c->server, c->channel);
        goto fail;
    }
    freeReplyObject(rep);
    rep = NULL;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = r->fd};
    if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, r->fd, &ev) != 0) {
        rc = khala__errbuf(err, errlen, KHALA_ETIER, "redis %s: epoll_ctl: %s", c->server,
                           strerror(errno));
        goto fail;
    }
    c->sub = r;
    c->ping_next_ms = UNSCHEDULED;
    c->ping_sent_ms = -1;
    c->ping_off = 0;
    return 0;
fail:
    if (rep)
        freeReplyObject(rep);
    redisFree(r);
    return rc;
}

static void drop_publisher(khala_coherence_t *c) {
    if (c->pub)
        redisFree(c->pub);
    c->pub = NULL;
    c->pub_proven = false;
}

/* The subscription is gone: close it, report LOST once, schedule the reconnection. */
static void lose(khala_coherence_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void lose(khala_coherence_t *c, const char *fmt, ...) {
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    /* Closing the socket removes it from c->epfd (no other descriptor shares it). */
    redisFree(c->sub);
    c->sub = NULL;
    /* The publisher talks to the same server: likely dead too. Drop it without a backoff, so
     * the next publish() tries a fresh connection at once. */
    drop_publisher(c);
    c->pub_retry_at_ms = INT64_MIN;
    c->pub_backoff_ms = KHALA_COH_BACKOFF_MIN_MS;
    c->retry_at_ms = UNSCHEDULED;
    c->backoff_ms = KHALA_COH_BACKOFF_MIN_MS;
    c->regain_owed = true;
    c->stats.losses++;
    set_errmsg(c, "%s", why);
    c->cb.on_event(c->cb.arg, KHALA_COH_LOST, why);
}

static void on_message(khala_coherence_t *c, const redisReply *payload) {
    khala_inv_t m;
    uint64_t origin = 0;
    if (payload->type != REDIS_REPLY_STRING ||
        khala__coherence_decode(payload->str, payload->len, &m, &origin)) {
        c->stats.malformed++;
        return;
    }
    if (origin == c->origin) {
        c->stats.ignored_own++;
        return;
    }
    c->stats.received++;
    c->cb.on_inval(c->cb.arg, &m);
}

/* One reply on the subscription: a message, the answer to a PING, or something to ignore. */
static void on_reply(khala_coherence_t *c, const redisReply *r) {
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 ||
        r->element[0]->type != REDIS_REPLY_STRING)
        return;
    const char *kind = r->element[0]->str;
    if (strcasecmp(kind, "pong") == 0) {
        c->ping_sent_ms = -1;
        return;
    }
    if (strcasecmp(kind, "message") != 0 || r->elements != 3)
        return;
    const redisReply *ch = r->element[1];
    if (ch->type != REDIS_REPLY_STRING || ch->len != c->channel_len ||
        memcmp(ch->str, c->channel, ch->len) != 0)
        return;
    on_message(c, r->element[2]);
}

/* Dispatch every complete reply in sub's reader. Returns -1 if the subscription was lost. */
static int drain(khala_coherence_t *c) {
    while (c->sub) {
        void *reply = NULL;
        if (redisReaderGetReply(c->sub->reader, &reply) != REDIS_OK) {
            lose(c, "redis %s: subscription: protocol error: %s", c->server,
                 c->sub->reader->errstr);
            return -1;
        }
        if (!reply)
            return 0;
        on_reply(c, reply);
        freeReplyObject(reply);
    }
    return -1;
}

void khala__coherence_readable(khala_coherence_t *c) {
    struct epoll_event ev;
    /* Consume the readiness of the inner set; level-triggered, it comes back if bytes stay. */
    (void)epoll_wait(c->epfd, &ev, 1, 0);
    if (!c->sub || drain(c) != 0)
        return;
    char buf[READ_CHUNK];
    for (size_t total = 0; c->sub && total < READ_BUDGET;) {
        ssize_t n = recv(c->sub->fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n < 0) {
            lose(c, "redis %s: subscription: read error: %s", c->server, strerror(errno));
            return;
        }
        if (n == 0) {
            lose(c, "redis %s: subscription: the server closed the connection", c->server);
            return;
        }
        if (redisReaderFeed(c->sub->reader, buf, (size_t)n) != REDIS_OK) {
            lose(c, "redis %s: subscription: out of memory", c->server);
            return;
        }
        total += (size_t)n;
        if (drain(c) != 0)
            return;
    }
}

/* While subscribed: PING every interval, a loss when the answer is overdue. */
static void tick_subscribed(khala_coherence_t *c, int64_t now_ms) {
    /* Replies already parsed-ahead by hiredis when open() subscribed: epoll cannot see them. */
    if (drain(c) != 0)
        return;
    if (c->ping_sent_ms >= 0) {
        if (now_ms - c->ping_sent_ms > 2 * (int64_t)c->timeout_ms)
            lose(c, "redis %s: subscription: no answer to PING within %u ms", c->server,
                 2 * c->timeout_ms);
        return;
    }
    if (c->ping_next_ms == UNSCHEDULED)
        c->ping_next_ms = now_ms + KHALA_COH_PING_INTERVAL_MS;
    if (now_ms < c->ping_next_ms)
        return;
    while (c->ping_off < sizeof(PING_CMD) - 1) {
        ssize_t n = send(c->sub->fd, PING_CMD + c->ping_off, sizeof(PING_CMD) - 1 - c->ping_off,
                         MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return; /* the server is not reading; retried next tick, and the PING's deadline
                       only starts once it is out */
        if (n < 0) {
            lose(c, "redis %s: subscription: write error: %s", c->server, strerror(errno));
            return;
        }
        c->ping_off += (size_t)n;
    }
    c->ping_off = 0;
    c->ping_sent_ms = now_ms;
    c->ping_next_ms = now_ms + KHALA_COH_PING_INTERVAL_MS;
}

void khala__coherence_tick(khala_coherence_t *c, int64_t now_ms) {
    if (c->lost_owed) {
        c->lost_owed = false;
        c->stats.losses++;
        c->cb.on_event(c->cb.arg, KHALA_COH_LOST, c->why);
    }
    if (c->sub) {
        tick_subscribed(c, now_ms);
        return;
    }
    if (c->retry_at_ms == UNSCHEDULED)
        c->retry_at_ms = now_ms + c->backoff_ms;
    if (now_ms < c->retry_at_ms)
        return;
    char err[512];
    if (subscribe(c, err, sizeof(err)) != 0) {
        set_errmsg(c, "%s (retrying in %u ms)", err, backoff_next(c->backoff_ms));
        c->backoff_ms = backoff_next(c->backoff_ms);
        c->retry_at_ms = now_ms + c->backoff_ms;
        return;
    }
    c->backoff_ms = KHALA_COH_BACKOFF_MIN_MS;
    c->retry_at_ms = UNSCHEDULED;
    if (c->regain_owed) {
        c->regain_owed = false;
        c->stats.reconnects++;
        char why[256 + sizeof(c->server) + CHANNEL_MAX];
        snprintf(why, sizeof(why), "redis %s: subscribed to %s again", c->server, c->channel);
        c->cb.on_event(c->cb.arg, KHALA_COH_REGAINED, why);
    }
    /* Messages may have come in the same read as the confirmation: dispatch them now, as epoll
     * will not announce bytes already read. */
    (void)drain(c);
}

/* ---- The publisher ----------------------------------------------------------------------- */

/* The publisher failed to connect or to complete a PUBLISH (c->pub_err says why): drop it and
 * fail publish() at once for the backoff period, so that a dead or hung server costs khalad's
 * loop one timeout per period rather than one per put. */
static void pub_failed(khala_coherence_t *c) {
    drop_publisher(c);
    c->pub_retry_at_ms = khala__sys_now_ms() + c->pub_backoff_ms;
    c->pub_backoff_ms = backoff_next(c->pub_backoff_ms);
    set_errmsg(c, "%s", c->pub_err);
}

/* One PUBLISH on a connected c->pub. 0; 1 if the connection failed (c->pub_err says why; the
 * caller drops it); KHALA_ETIER for an error reply (errmsg set; the connection stays). */
static int publish_once(khala_coherence_t *c, const enc_buf_t *b) {
    const char *argv[3] = {"PUBLISH", c->channel, b->buf};
    size_t argl[3] = {7, c->channel_len, b->len};
    redisReply *rep = redisCommandArgv(c->pub, 3, argv, argl);
    if (!rep) {
        snprintf(c->pub_err, sizeof(c->pub_err), "redis %s: PUBLISH %s: %s", c->server, c->channel,
                 c->pub->errstr[0] ? c->pub->errstr : "no reply");
        return 1;
    }
    int rc = 0;
    if (rep->type == REDIS_REPLY_ERROR) {
        set_errmsg(c, "redis %s: PUBLISH %s refused: %s", c->server, c->channel, rep->str);
        rc = KHALA_ETIER;
    } else if (rep->type != REDIS_REPLY_INTEGER) {
        set_errmsg(c, "redis %s: PUBLISH %s: unexpected reply", c->server, c->channel);
        rc = KHALA_ETIER;
    }
    c->pub_proven = true;
    c->pub_backoff_ms = KHALA_COH_BACKOFF_MIN_MS;
    freeReplyObject(rep);
    return rc;
}

/* Connect c->pub unless connected; with backoff != 0, not before the backoff period ends.
 * 0, 1 on failure (c->pub_err says why), or -ENOMEM. */
static int pub_connect(khala_coherence_t *c, bool backoff) {
    if (c->pub)
        return 0;
    int64_t now = khala__sys_now_ms();
    if (backoff && now < c->pub_retry_at_ms) {
        set_errmsg(c, "%s (PUBLISH not retried for %lld ms)", c->pub_err,
                   (long long)(c->pub_retry_at_ms - now));
        return 1;
    }
    c->pub_proven = false;
    int rc = khala__redis_connect(&c->url, c->timeout_ms, &c->pub, c->pub_err, sizeof(c->pub_err));
    if (rc == 0)
        return 0;
    c->pub = NULL;
    if (rc == -ENOMEM)
        return rc;
    pub_failed(c); /* KHALA_ECONFIG too: the credentials were accepted at open */
    return 1;
}

int khala__coherence_publish(khala_coherence_t *c, const khala_inv_t *m) {
    switch (m->by) {
        case KHALA_INV_KEY:
        case KHALA_INV_PREFIX:
            if (!m->key || m->klen == 0 || m->klen > KHALA_KEY_MAX) {
                set_errmsg(c, "publish: %s is %zu bytes, must be 1..%d",
                           m->by == KHALA_INV_KEY ? "key" : "prefix", m->klen, KHALA_KEY_MAX);
                return KHALA_EKEY;
            }
            break;
        case KHALA_INV_TYPE:
        case KHALA_INV_ALL:
            if (m->type >= KHALA_TYPE_COUNT ||
                m->type < (m->by == KHALA_INV_ALL ? KHALA_INV_ALL_TYPES : 0)) {
                set_errmsg(c, "publish: type %d is out of range", m->type);
                return -EINVAL;
            }
            break;
        default:
            set_errmsg(c, "publish: unknown kind %d", (int)m->by);
            return -EINVAL;
    }
    enc_buf_t b;
    /* Cannot fail: the checks above bound the size. */
    if (khala__coherence_encode(m, c->origin, &b) != 0) {
        set_errmsg(c, "publish: message does not fit %u bytes", KHALA_COH_MSG_MAX);
        return -EINVAL;
    }
    /* A connection that worked before and fails now most likely outlived a server restart:
     * replace it at once and try once more. A fresh connection that fails is not retried. */
    for (int attempt = 0; attempt < 2; attempt++) {
        int rc = pub_connect(c, attempt == 0);
        if (rc != 0) {
            c->stats.publish_errors++;
            return rc < 0 ? rc : KHALA_ETIER;
        }
        bool proven = c->pub_proven;
        rc = publish_once(c, &b);
        if (rc == 0) {
            c->stats.published++;
            return 0;
        }
        if (rc < 0) {
            c->stats.publish_errors++;
            return rc;
        }
        if (!proven) {
            pub_failed(c);
            break;
        }
        drop_publisher(c);
        set_errmsg(c, "%s", c->pub_err);
    }
    c->stats.publish_errors++;
    return KHALA_ETIER;
}

/* ---- Open, close, accessors -------------------------------------------------------------- */

int khala__coherence_open(const khala_coherence_opts_t *o, const khala_coherence_cb_t *cb,
                          khala_coherence_t **out, char *err, size_t errlen) {
    if (!cb || !cb->on_inval || !cb->on_event)
        return khala__errbuf(err, errlen, KHALA_ECONFIG, "coherence: both callbacks are needed");
    size_t nslen = o->ns ? strlen(o->ns) : 0;
    if (nslen == 0 || nslen > KHALA_NAME_MAX)
        return khala__errbuf(err, errlen, KHALA_ECONFIG,
                             "coherence: namespace is %zu bytes, must be 1..%d", nslen,
                             KHALA_NAME_MAX);
    khala_coherence_t *c = calloc(1, sizeof(*c));
    if (!c)
        return khala__errbuf(err, errlen, -ENOMEM, "coherence: out of memory");
    c->epfd = -1;
    int rc;
    char uerr[256];
    if (!o->url || khala__config_redis_url_parse(o->url, &c->url, uerr, sizeof(uerr)) != 0) {
        rc = khala__errbuf(err, errlen, KHALA_ECONFIG, "coherence: redis_url '%s': %s",
                           o->url ? o->url : "(null)", o->url ? uerr : "missing");
        goto fail;
    }
    if (c->url.tls) {
        rc = khala__errbuf(err, errlen, KHALA_ECONFIG,
                           "coherence: redis_url '%s': rediss:// (TLS) is not supported by this "
                           "build",
                           o->url);
        goto fail;
    }
    khala__redis_name(&c->url, c->server, sizeof(c->server));
    c->channel_len = (size_t)snprintf(c->channel, sizeof(c->channel), "khala:%s:inv", o->ns);
    c->timeout_ms = o->timeout_ms ? o->timeout_ms : KHALA_REDIS_TIMEOUT_MS_DEFAULT;
    c->origin = khala__sys_random_u64();
    c->cb = *cb;
    c->retry_at_ms = UNSCHEDULED;
    c->backoff_ms = KHALA_COH_BACKOFF_MIN_MS;
    c->ping_sent_ms = -1;
    c->pub_retry_at_ms = INT64_MIN;
    c->pub_backoff_ms = KHALA_COH_BACKOFF_MIN_MS;
    c->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (c->epfd < 0) {
        rc = khala__errbuf(err, errlen, -errno, "coherence: epoll_create1: %s", strerror(errno));
        goto fail;
    }
    char serr[512];
    rc = subscribe(c, serr, sizeof(serr));
    if (rc == KHALA_ETIER) {
        /* Unreachable: start down, owe a LOST (see coherence.h for why the first subscription
         * is then a REGAINED). */
        c->lost_owed = true;
        c->regain_owed = true;
        snprintf(c->why, sizeof(c->why), "not subscribed at start: %s", serr);
        set_errmsg(c, "%s", c->why);
    } else if (rc != 0) {
        khala__errbuf(err, errlen, rc, "%s", serr);
        goto fail;
    } else {
        /* The publisher is connected lazily by publish() if this fails. */
        if (khala__redis_connect(&c->url, c->timeout_ms, &c->pub, c->pub_err, sizeof(c->pub_err)) !=
            0)
            c->pub = NULL;
    }
    *out = c;
    return 0;
fail:
    if (c->epfd >= 0)
        close(c->epfd);
    free(c);
    return rc;
}

int khala__coherence_fd(const khala_coherence_t *c) {
    return c->epfd;
}

int khala__coherence_subscribed(const khala_coherence_t *c) {
    return c->sub != NULL;
}

void khala__coherence_stats(const khala_coherence_t *c, khala_coherence_stats_t *out) {
    *out = c->stats;
}

const char *khala__coherence_errmsg(const khala_coherence_t *c) {
    return c->errmsg;
}

void khala__coherence_close(khala_coherence_t *c) {
    if (!c)
        return;
    if (c->sub)
        redisFree(c->sub);
    drop_publisher(c);
    close(c->epfd);
    free(c);
}
