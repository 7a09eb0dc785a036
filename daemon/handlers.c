/*
 * What khalad does with each request.
 *
 * HOW IT WORKS
 *
 * The server hands over one frame body at a time (daemon/server.c). A handler decodes it
 * (lib/proto.c), acts on the L1 through the writer API (lib/l1_table.h), and queues exactly one
 * reply with the request's id, except for a get that joins a single-flight as a waiter: that
 * one is answered later, when the leader fills (daemon/flight.c). Replies to one connection
 * therefore come in request order, except for such waiters; clients match replies by id.
 *
 * The miss path is L1, then the levels below it (daemon/tiers.c: writes queued for them, then
 * L2, later L3), then the caller's loader; a get reports which level answered. Every write
 * (put, fill, touch, delete, invalidation, flush) is one call into daemon/store.c, which owns
 * every level; a handler decodes, calls, and replies.
 *
 * A frame that does not decode gets an error reply (id 0 when the id could not be read) and the
 * connection is closed: the stream cannot be trusted after it. Nobody else notices.
 *
 * Errors that belong to one request (a bad key, a version conflict, a full cache) get an error
 * reply with the code and a message naming the problem, and the connection stays open.
 */
#include <errno.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errbuf.h"
#include "khala/error.h"
#include "khalad.h"
#include "redact.h"
#include "similar.h"

/* Replies -------------------------------------------------------------------------------- */

static void send_reply(khalad_t *d, khala_conn_t *c, const khala_msg_t *r) {
    char err[256];
    khala__proto_buf_reset(&d->out);
    int rc = khala__proto_encode_reply(&d->out, r, err, sizeof(err));
    if (rc != 0) {
        /* The reply itself could not be encoded (too big, say): tell the client why. */
        khala_msg_t e;
        khala__proto_msg_init(&e);
        e.id = r->id;
        e.op = r->op;
        e.rc = rc;
        e.err.ptr = (const uint8_t *)err;
        e.err.len = strlen(err);
        e.has = KHALA_F_ERR;
        khala__proto_buf_reset(&d->out);
        if (khala__proto_encode_reply(&d->out, &e, NULL, 0) != 0)
            return;
    }
    if (r->rc != 0)
        d->replies_err++;
    d->last_reply_rc = r->rc;
    (void)khala__conn_send(c, d->out.data, d->out.len);
}

static void reply_rc(khalad_t *d, khala_conn_t *c, uint64_t id, khala_op_t op, int rc,
                     const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void reply_rc(khalad_t *d, khala_conn_t *c, uint64_t id, khala_op_t op, int rc,
                     const char *fmt, ...) {
    char raw[512], msg[512];
    khala_msg_t r;
    khala__proto_msg_init(&r);
    r.id = id;
    r.op = op;
    r.rc = rc;
    if (fmt && rc != 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(raw, sizeof(raw), fmt, ap);
        va_end(ap);
        /* A driver's error may quote a redis_url: no secret goes to a peer (lib/redact.h). */
        khala__redact(raw, msg, sizeof(msg));
        r.err.ptr = (const uint8_t *)msg;
        r.err.len = strlen(msg);
        r.has |= KHALA_F_ERR;
    }
    send_reply(d, c, &r);
}

/* A reply to m, with its id and op, nothing else yet. */
static khala_msg_t reply_to(const khala_msg_t *m) {
    khala_msg_t r;
    khala__proto_msg_init(&r);
    r.id = m->id;
    r.op = m->op;
    return r;
}

/* Fill the value fields of a get reply from an L1 item. */
static void item_reply(khala_msg_t *r, const khala_item_t *it) {
    int64_t now = khala__sys_now_ms();
    r->value.ptr = khala__item_value(it);
    r->value.len = it->value_len;
    r->ver = it->version;
    r->type = (khala_type_t)it->type;
    r->ttl_ms = it->expire_ms ? (uint64_t)(it->expire_ms > now ? it->expire_ms - now : 1) : 0;
    r->lvl = KHALA_LEVEL_L1;
    r->has |= KHALA_F_V | KHALA_F_VER | KHALA_F_TYPE | KHALA_F_TTL | KHALA_F_LVL;
}

/* The reply to a write: the version it stored. */
static void reply_version(khalad_t *d, khala_conn_t *c, const khala_msg_t *m, uint64_t ver) {
    khala_msg_t r = reply_to(m);
    r.ver = ver;
    r.has = KHALA_F_VER;
    send_reply(d, c, &r);
}

/* Access (daemon/acl.h) and audit (daemon/audit.h) ----------------------------------------- */

static int peer_in_group(void *arg, gid_t gid) {
    return khala__conn_peer_in_group(arg, gid);
}

static khala_acl_peer_t peer_of(khala_conn_t *c) {
    khala_acl_peer_t p = {.in_group = peer_in_group, .arg = c};
    khala__conn_peer(c, NULL, &p.uid, &p.gid);
    return p;
}

/* The right op m needs (0 = none: hello, ping, stats, keys), and whether over its key. keys needs
 * none: it lists only what the peer may read (op_keys). */
static unsigned needed_right(const khala_msg_t *m, int *over_key) {
    *over_key = 1;
    switch (m->op) {
        case KHALA_OP_GET:
        case KHALA_OP_INSPECT:
            return KHALA_RIGHT_READ;
        case KHALA_OP_PUT:
        case KHALA_OP_FILL:
        case KHALA_OP_FILL_FAIL:
        case KHALA_OP_DEL:
        case KHALA_OP_TOUCH:
            return KHALA_RIGHT_WRITE;
        case KHALA_OP_INVALIDATE:
            if (m->by == KHALA_BY_KEY)
                return KHALA_RIGHT_INVALIDATE;
            *over_key = 0;
            return KHALA_RIGHT_ADMIN;
        case KHALA_OP_FLUSH:
        case KHALA_OP_WARM:
        case KHALA_OP_CONFIG:
            *over_key = 0;
            return KHALA_RIGHT_ADMIN;
        case KHALA_OP_SIMILAR: /* a read; its matches are filtered per key, as keys does */
        default:
            *over_key = 0;
            return 0;
    }
}

/* Admin operations, audited whatever their outcome; keys is one (it shows what is cached). */
static int is_admin_op(const khala_msg_t *m) {
    return m->op == KHALA_OP_FLUSH || m->op == KHALA_OP_WARM || m->op == KHALA_OP_CONFIG ||
           m->op == KHALA_OP_KEYS || (m->op == KHALA_OP_INVALIDATE && m->by != KHALA_BY_KEY);
}

/* The data type of the key m names, for type-scoped rules: the request's own for a write that
 * carries one, else the L1 item's, else -1 (unknown: type-scoped rules do not apply). */
static int key_type(khalad_t *d, const khala_msg_t *m) {
    if (m->op == KHALA_OP_PUT || m->op == KHALA_OP_FILL)
        return (m->has & KHALA_F_TYPE) ? (int)m->type : (int)KHALA_TYPE_MEMORY_ENTITY;
    const khala_item_t *it;
    if ((m->has & KHALA_F_K) && khala__l1_find(d->l1, m->key.ptr, m->key.len, &it) == 0)
        return (int)it->type;
    return -1;
}

/* One audit line about m (daemon/audit.h): its key or selector, who sent it, and rc. */
static void audit(khalad_t *d, khala_conn_t *c, const khala_msg_t *m, const char *event,
                  const char *right, int rc) {
    khala_audit_event_t e = {.event = event, .comm = khala__conn_comm(c), .right = right, .rc = rc};
    const void *keys[64];
    size_t klens[64];
    khala__conn_peer(c, &e.pid, &e.uid, &e.gid);
    e.op = khala__proto_op_name(m->op);
    if (m->has & KHALA_F_K) {
        e.key = m->key.ptr;
        e.klen = m->key.len;
    } else if (m->has & KHALA_F_PREFIX) {
        e.prefix = m->prefix.ptr;
        e.plen = m->prefix.len;
    } else if ((m->op == KHALA_OP_INVALIDATE && m->by == KHALA_BY_TYPE) ||
               ((m->op == KHALA_OP_FLUSH || m->op == KHALA_OP_WARM) && (m->has & KHALA_F_TYPE))) {
        e.type = khala__proto_type_name(m->type);
    } else if (m->has & KHALA_F_PATTERN) {
        e.pattern = m->pattern.ptr;
        e.patlen = m->pattern.len;
    } else if (m->has & KHALA_F_KEYS) {
        e.nkeys = m->nkeys < 64 ? m->nkeys : 64;
        for (size_t i = 0; i < e.nkeys; i++) {
            keys[i] = m->keys[i].ptr;
            klens[i] = m->keys[i].len;
        }
        e.keys = keys;
        e.klens = klens;
    }
    (void)khala__audit_write(&d->audit, &e);
}

/* Refuse m for lack of `right`: an EDENIED reply naming the right, a log line (rate-limited:
 * daemon/acl.h), a count in stats, an audit line. */
static void deny(khalad_t *d, khala_conn_t *c, const khala_msg_t *m, unsigned right, int over_key) {
    char q[KHALA_ERRBUF_QUOTE_CAP], uid_s[16], skipped_s[24];
    uid_t uid;
    uint64_t skipped = 0;
    khala__conn_peer(c, NULL, &uid, NULL);
    d->denied++;
    const char *rname = khala__acl_right_name(right), *op = khala__proto_op_name(m->op);
    if (over_key)
        khala__errbuf_quote(m->key.ptr, m->key.len, q, sizeof(q));
    reply_rc(d, c, m->id, m->op, KHALA_EDENIED,
             "uid %u lacks the '%s' right%s%s%s for %s on cache '%s' (docs/security.md)",
             (unsigned)uid, rname, over_key ? " on key '" : "", over_key ? q : "",
             over_key ? "'" : "", op, d->cfg.cache.name);
    if (khala__acl_log_allow(&d->acl, khala__sys_now_ms(), &skipped)) {
        snprintf(uid_s, sizeof(uid_s), "%u", (unsigned)uid);
        snprintf(skipped_s, sizeof(skipped_s), "%llu", (unsigned long long)skipped);
        khala__log("warn", "refused a request: the peer lacks a right", "uid", uid_s, "op", op,
                   "right", rname, "comm", khala__conn_comm(c), "not_logged_before", skipped_s,
                   NULL);
    }
    audit(d, c, m, "denied", rname, KHALA_EDENIED);
}

/* Single-flight answers ---------------------------------------------------------------------- */

typedef struct flight_ctx {
    khalad_t *d;
    khala_type_t type;
    uint64_t ver;
    khala_level_t lvl; /* who produced the value: KHALA_LEVEL_LOADER, or the level read */
    int64_t ttl_ms;    /* its time left, when a level produced it (0 = none or unknown) */
} flight_ctx_t;

/* Answer a waiter: with the leader's value, an error, or its promotion to leader. */
static void flight_answer(void *arg, const khala_waiter_t *w, int rc, const void *val,
                          size_t vlen) {
    flight_ctx_t *fc = arg;
    khala_conn_t *c = w->owner;
    khala_msg_t r;
    khala__proto_msg_init(&r);
    r.id = w->req_id;
    r.op = KHALA_OP_GET;
    if (rc == KHALA_FLIGHT_LEADER) {
        /* The leader went away: this waiter loads now. */
        r.rc = KHALA_ENOTFOUND;
        r.load = true;
        r.has |= KHALA_F_LOAD;
        send_reply(fc->d, c, &r);
        return;
    }
    if (rc == 0) {
        r.value.ptr = val;
        r.value.len = vlen;
        r.ver = fc->ver;
        r.type = fc->type;
        r.lvl = fc->lvl;
        r.has |= KHALA_F_V | KHALA_F_VER | KHALA_F_TYPE | KHALA_F_LVL;
        if (fc->ttl_ms > 0) {
            r.ttl_ms = (uint64_t)fc->ttl_ms;
            r.has |= KHALA_F_TTL;
        }
        send_reply(fc->d, c, &r);
        return;
    }
    if (rc == -ETIMEDOUT)
        fc->d->loads_timed_out++;
    reply_rc(fc->d, c, w->req_id, KHALA_OP_GET, rc,
             rc == -ETIMEDOUT ? "the loader of this key did not answer in %u ms"
                              : "the loader of this key failed",
             fc->d->cfg.policies.single_flight_timeout_ms);
}

/* Requests --------------------------------------------------------------------------------- */

static void op_hello(khalad_t *d, khala_conn_t *c, const khala_msg_t *m) {
    if ((m->has & KHALA_F_PROTO) && m->proto != KHALA_PROTO_VERSION) {
        reply_rc(d, c, m->id, m->op, KHALA_EPROTO,
                 "protocol version %u is not spoken here; khalad speaks %u", m->proto,
                 KHALA_PROTO_VERSION);
        return;
    }
    const char *name = d->cfg.cache.name;
    if ((m->has & KHALA_F_NAME) &&
        (m->name.len != strlen(name) || memcmp(m->name.ptr, name, m->name.len) != 0)) {
        reply_rc(d, c, m->id, m->op, KHALA_ENAME, "this khalad serves cache '%s', not '%.*s'", name,
                 (int)m->name.len, (const char *)m->name.ptr);
        return;
    }
    khala_msg_t r = reply_to(m);
    r.proto = KHALA_PROTO_VERSION;
    r.name.ptr = (const uint8_t *)name;
    r.name.len = strlen(name);
    r.gen = khala__l1_seg(d->l1)->generation;
    r.max_frame = (uint32_t)khala__server_max_frame(d->srv);
    r.max_value = khala__l1_seg(d->l1)->max_value;
    r.has = KHALA_F_PROTO | KHALA_F_NAME | KHALA_F_GEN | KHALA_F_MAX_FRAME | KHALA_F_MAX_VALUE;
    send_reply(d, c, &r);
}

/* A get no level holds: the caller's loader, through single-flight, or a miss. */
static void get_from_loader(khalad_t *d, khala_conn_t *c, uint64_t id, const void *key, size_t klen,
                            int loader) {
    if (!loader) {
        reply_rc(d, c, id, KHALA_OP_GET, KHALA_ENOTFOUND, NULL);
        return;
    }
    khala_waiter_t w = {c, id, KHALA_WAITER_LOADER};
    int rc = khala__flight_join(d->flight, key, klen, &w, (uint64_t)khala__sys_now_ms());
    if (rc == KHALA_FLIGHT_WAITER) {
        d->loads_waited++;
        return; /* answered when the leader fills */
    }
    /* Leader, or the table is full (-EBUSY): either way this caller loads. */
    d->loads_led++;
    khala_msg_t r;
    khala__proto_msg_init(&r);
    r.id = id;
    r.op = KHALA_OP_GET;
    r.rc = KHALA_ENOTFOUND;
    r.load = true;
    r.has = KHALA_F_LOAD;
    send_reply(d, c, &r);
}

/* Asynchronous reads (a level with get_start: SurrealDB) ---------------------------------------
 *
 * khalad itself leads the flight of the key (its owner is d, never a connection) while the
 * level answers, and the callers wait in it as waiters, so a miss waiting on the network holds
 * up no other client, and callers of the same key share one request. On a hit the value is
 * promoted (unless a write or invalidation of the key came meanwhile: the placeholder rule) and
 * every waiter gets it with the level's name; on a miss each waiter goes on to its loader (the
 * first with one leads the load, the others wait for its fill) or hears "not found". */
typedef struct async_get {
    khalad_t *d;
    khalad_tier_t *lt;
    size_t klen;
    uint8_t key[];
} async_get_t;

typedef struct async_miss {
    khalad_t *d;
    const void *key;
    size_t klen;
} async_miss_t;

static void async_miss_answer(void *arg, const khala_waiter_t *w, int rc, const void *val,
                              size_t vlen) {
    async_miss_t *am = arg;
    (void)rc, (void)val, (void)vlen;
    if (w->owner != (void *)am->d)
        get_from_loader(am->d, w->owner, w->req_id, am->key, am->klen,
                        (w->flags & KHALA_WAITER_LOADER) != 0);
}

static void async_get_done(void *arg, int rc, khala_tier_value_t *v) {
    async_get_t *ag = arg;
    khalad_t *d = ag->d;
    d->async_reads_pending--;
    /* The flight may have timed out and another begun: only khalad's own is answered here. */
    int ours = khala__flight_leader(d->flight, ag->key, ag->klen) == (void *)d;
    if (rc == 0 && khala__store_superseded(d, ag->key, ag->klen, (int)v->type, v->version))
        rc = KHALA_ENOTFOUND; /* an invalidation in progress covers it */
    if (rc != 0 && rc != KHALA_ENOTFOUND)
        khala__store_level_failed(d, ag->lt, rc);
    if (rc == 0) {
        d->async_hits++;
        if (ours && !khala__flight_invalidated(d->flight, ag->key, ag->klen)) {
            (void)khala__store_promote_below(d, ag->key, ag->klen, v, ag->lt->t->level);
            if (khala__store_promote(d, ag->key, ag->klen, v) == 0)
                khala__rel_loaded(d, ag->key, ag->klen); /* preload_relationships */
        }
        if (ours) {
            flight_ctx_t fc = {d, v->type, v->version, ag->lt->t->level, v->ttl_ms};
            khala__flight_finish(d->flight, ag->key, ag->klen, 0, v->data, v->len, flight_answer,
                                 &fc);
        }
    } else if (ours) {
        async_miss_t am = {d, ag->key, ag->klen};
        khala__flight_finish(d->flight, ag->key, ag->klen, KHALA_ENOTFOUND, NULL, 0,
                             async_miss_answer, &am);
    }
    free(ag);
}

/* Ask lt (a level with get_start) for m's key without waiting; the caller is answered later. */
static void get_async(khalad_t *d, khala_conn_t *c, const khala_msg_t *m, khalad_tier_t *lt) {
    khala_waiter_t w = {c, m->id, m->loader ? KHALA_WAITER_LOADER : 0};
    void *leader = khala__flight_leader(d->flight, m->key.ptr, m->key.len);
    if (leader && leader != (void *)d) {
        /* A caller is loading the key already: this one waits for its fill, or misses. */
        get_from_loader(d, c, m->id, m->key.ptr, m->key.len, m->loader);
        return;
    }
    if (!leader) {
        khala_waiter_t self = {d, 0, 0};
        async_get_t *ag = malloc(sizeof(*ag) + m->key.len);
        int rc = ag ? khala__flight_join(d->flight, m->key.ptr, m->key.len, &self,
                                         (uint64_t)khala__sys_now_ms())
                    : -ENOMEM;
        if (rc == KHALA_FLIGHT_LEADER) {
            ag->d = d;
            ag->lt = lt;
            ag->klen = m->key.len;
            memcpy(ag->key, m->key.ptr, m->key.len);
            rc = lt->t->ops->get_start(lt->t, m->key.ptr, m->key.len, async_get_done, ag);
            if (rc == 0) {
                d->async_reads++;
                d->async_reads_pending++;
            } else {
                /* Not sent: nobody waits yet; forget the flight and go on without the level. */
                flight_ctx_t fc = {d, KHALA_TYPE_MEMORY_ENTITY, 0, KHALA_LEVEL_LOADER, 0};
                khala__flight_finish(d->flight, m->key.ptr, m->key.len, KHALA_ENOTFOUND, NULL, 0,
                                     flight_answer, &fc);
                if (rc != KHALA_ENOTFOUND)
                    khala__store_level_failed(d, lt, rc);
            }
        }
        if (rc != 0 && rc != KHALA_FLIGHT_LEADER) {
            free(ag);
            get_from_loader(d, c, m->id, m->key.ptr, m->key.len, m->loader);
            return;
        }
    }
    if (khala__flight_join(d->flight, m->key.ptr, m->key.len, &w, (uint64_t)khala__sys_now_ms()) !=
        KHALA_FLIGHT_WAITER)
        get_from_loader(d, c, m->id, m->key.ptr, m->key.len, m->loader); /* -ENOMEM */
}

/* Answer m with a value a level below L1 gave (lvl), and release it. */
static void reply_value(khalad_t *d, khala_conn_t *c, const khala_msg_t *m, khala_tier_value_t *v,
                        khala_level_t lvl) {
    khala_msg_t r = reply_to(m);
    r.value.ptr = v->data;
    r.value.len = v->len;
    r.ver = v->version;
    r.type = v->type;
    r.ttl_ms = (uint64_t)v->ttl_ms;
    r.lvl = lvl;
    r.has = KHALA_F_V | KHALA_F_VER | KHALA_F_TYPE | KHALA_F_TTL | KHALA_F_LVL;
    send_reply(d, c, &r);
    khala__tier_value_free(v);
}

/* A get with "archive": the archived copy of a level below L1, with that level; L1 is not
 * read (it has no archive) nor written (khala__store_archive_get never promotes). */
static void op_get_archive(khalad_t *d, khala_conn_t *c, const khala_msg_t *m) {
    khala_tier_value_t v;
    khala_level_t lvl;
    int rc = khala__store_archive_get(d, m->key.ptr, m->key.len, &v, &lvl);
    if (rc != 0) {
        reply_rc(d, c, m->id, m->op, rc, "%s", d->errmsg);
        return;
    }
    reply_value(d, c, m, &v, lvl);
}

static void op_get(khalad_t *d, khala_conn_t *c, const khala_msg_t *m) {
    if (m->archive) {
        op_get_archive(d, c, m);
        return;
    }
    const khala_item_t *it;
    int rc = khala__l1_find(d->l1, m->key.ptr, m->key.len, &it);
    if (rc == 0) {
        khala_msg_t r = reply_to(m);
        item_reply(&r, it);
        send_reply(d, c, &r);
        return;
    }
    if (rc != KHALA_ENOTFOUND) {
        reply_rc(d, c, m->id, m->op, rc, "%s", khala__l1_errmsg(d->l1));
        return;
    }
    /* The slower levels, in order. A hit is promoted into L1 (and into L2 when L3 answered)
     * with its version and the time it has left, and reported with the level that answered. */
    khala_tier_value_t v;
    khala_level_t lvl;
    khalad_tier_t *async_at = NULL;
    if (khala__store_get(d, m->key.ptr, m->key.len, &v, &lvl, &async_at) == 0) {
        (void)khala__store_promote_below(d, m->key.ptr, m->key.len, &v, lvl);
        if (khala__store_promote(d, m->key.ptr, m->key.len, &v) == 0)
            khala__rel_loaded(d, m->key.ptr, m->key.len); /* preload_relationships */
        reply_value(d, c, m, &v, lvl);
        return;
    }
    if (async_at) {
        get_async(d, c, m, async_at);
        return;
    }
    /* Then the caller's loader, through single-flight. */
    get_from_loader(d, c, m->id, m->key.ptr, m->key.len, m->loader);
}

/* The TTL a put, fill or touch asks for, checked at the protocol boundary: above
 * KHALA_TTL_MAX_MS (a u64 of 2^63 and more among them, which used to wrap to a negative TTL and
 * become the default) it is refused with KHALA_EINVAL, so every deadline later fits in 64 bits
 * and every level accepts it (issue 10, bug 7). Returns 0 or KHALA_EINVAL with the reply sent. */
static int check_ttl(khalad_t *d, khala_conn_t *c, const khala_msg_t *m) {
    if (!(m->has & KHALA_F_TTL) || m->ttl_ms <= KHALA_TTL_MAX_MS)
        return 0;
    reply_rc(d, c, m->id, m->op, KHALA_EINVAL, "ttl is %" PRIu64 " ms, max %llu ms (10 years)",
             m->ttl_ms, KHALA_TTL_MAX_MS);
    return KHALA_EINVAL;
}

static void op_put(khalad_t *d, khala_conn_t *c, const khala_msg_t *m) {
    khala_type_t type = (m->has & KHALA_F_TYPE) ? m->type : KHALA_TYPE_MEMORY_ENTITY;
    if (m->op == KHALA_OP_PUT && check_ttl(d, c, m) != 0)
        return;
    /* ver, when given, is the version the caller last saw (0 = "must not exist"). */
    unsigned flags = (m->op == KHALA_OP_FILL ? KHALA_STORE_FILL : 0) |
                     ((m->has & KHALA_F_VER) ? KHALA_STORE_CAS : 0);
    uint64_t ver = 0;
    int rc = 0;
    /* A fill with a bad TTL is not cached, but its waiters still get the value (below). */
    bool bad_ttl = (m->has & KHALA_F_TTL) && m->ttl_ms > KHALA_TTL_MAX_MS;
    /* Links are recorded before anything is written (daemon/relationships.h). */
    if (!bad_ttl && (m->has & KHALA_F_LINKS))
        rc = khala__rel_link(d, m->key.ptr, m->key.len, m->links, m->nlinks);
    if (!bad_ttl && rc == 0)
        rc = khala__store_put(d, m->key.ptr, m->key.len, m->value.ptr, m->value.len,
                              (m->has & KHALA_F_TTL) ? (int64_t)m->ttl_ms : 0, type, flags, m->ver,
                              &ver);
    if (m->op == KHALA_OP_FILL && rc == 0 && ver != 0)
        khala__rel_loaded(d, m->key.ptr, m->key.len); /* preload_relationships */
    if (m->op == KHALA_OP_FILL) {
        /* The waiters get the value even when the store did not cache it. */
        flight_ctx_t fc = {d, type, ver, KHALA_LEVEL_LOADER, 0};
        khala__flight_finish(d->flight, m->key.ptr, m->key.len, 0, m->value.ptr, m->value.len,
                             flight_answer, &fc);
    }
    if (bad_ttl) {
        (void)check_ttl(d, c, m);
        return;
    }
    if (rc != 0) {
        reply_rc(d, c, m->id, m->op, rc, "%s", d->errmsg);
        return;
    }
    reply_version(d, c, m, ver);
}

static void op_fill_fail(khalad_t *d, khala_conn_t *c, const khala_msg_t *m) {
    /* The waiters hear that the load failed and may retry (one of them will lead). */
    flight_ctx_t fc = {d, KHALA_TYPE_MEMORY_ENTITY, 0, KHALA_LEVEL_LOADER, 0};
    khala__flight_finish(d->flight, m->key.ptr, m->key.len, -EAGAIN, NULL, 0, flight_answer, &fc);
    reply_rc(d, c, m->id, m->op, 0, NULL);
}

static void op_del(khalad_t *d, khala_conn_t *c, const khala_msg_t *m) {
    int rc = khala__store_del(d, m->key.ptr, m->key.len, NULL);
    reply_rc(d, c, m->id, m->op, rc, "%s", rc ? d->errmsg : "");
}

static void reply_count(khalad_t *d, khala_conn_t *c, const khala_msg_t *m, uint64_t n) {
    khala_msg_t r = reply_to(m);
    r.count = (uint32_t)(n > UINT32_MAX ? UINT32_MAX : n);
    r.has = KHALA_F_COUNT;
    send_reply(d, c, &r);
}

/* The answer to a caller that waited for its invalidation to finish below L1 (inv_wait.h). */
static void invalidation_answer(void *arg, khala_conn_t *c, uint64_t req_id, int op, uint64_t n,
                                int rc) {
    khalad_t *d = arg;
    if (rc != 0) {
        reply_rc(d, c, req_id, (khala_op_t)op, rc, "the invalidation failed below L1: %s",
                 khala_strerror(rc));
        return;
    }
    khala_msg_t r;
    khala__proto_msg_init(&r);
    r.id = req_id;
    r.op = (khala_op_t)op;
    r.count = (uint32_t)(n > UINT32_MAX ? UINT32_MAX : n);
    r.has = KHALA_F_COUNT;
    send_reply(d, c, &r);
}

/* An invalidation by prefix or type, or a flush: L1 at once; a level that runs it in steps from
 * the tick (Redis) is waited for, so that the caller's reply comes when no level holds what it
 * removed any more (issue 10, bug 9). Returns 1 when the reply waits, 0 when the caller
 * answers now (rc in *rc). */
static int invalidate_and_wait(khalad_t *d, khala_conn_t *c, const khala_msg_t *m,
                               const void *prefix, size_t plen, int type, uint64_t *n, int *rc) {
    uint64_t version = 0;
    unsigned levels = 0;
    *rc = khala__store_invalidate_steps(d, prefix, plen, type, n, &version, &levels);
    if (*rc != 0 || levels == 0)
        return 0;
    if (!d->invwait && khala__invwait_new(invalidation_answer, d, &d->invwait) != 0)
        return 0; /* no memory to wait: answered now, the steps go on */
    return khala__invwait_add(d->invwait, c, m->id, (int)m->op, *n, version, levels) == 0;
}

static void op_invalidate(khalad_t *d, khala_conn_t *c, const khala_msg_t *m) {
    uint64_t n = 0;
    int rc;
    switch (m->by) {
        case KHALA_BY_KEY: {
            int in_l1 = 0;
            rc = khala__store_del(d, m->key.ptr, m->key.len, &in_l1);
            if (rc == KHALA_ENOTFOUND)
                rc = 0; /* invalidating what is not cached is no error */
            n = (uint64_t)in_l1;
            break;
        }
        case KHALA_BY_PREFIX:
            if (invalidate_and_wait(d, c, m, m->prefix.ptr, m->prefix.len, -1, &n, &rc))
                return;
            break;
        case KHALA_BY_TYPE:
            if (invalidate_and_wait(d, c, m, NULL, 0, (int)m->type, &n, &rc))
                return;
            break;
        default:
            reply_rc(d, c, m->id, m->op, KHALA_EPROTO, "invalidate: unknown 'by'");
            return;
    }
    if (rc != 0) {
        reply_rc(d, c, m->id, m->op, rc, "%s", d->errmsg);
        return;
    }
    reply_count(d, c, m, n);
}

static void op_touch(khalad_t *d, khala_conn_t *c, const khala_msg_t *m) {
    uint64_t ver = 0;
    if (check_ttl(d, c, m) != 0)
        return;
    int rc = khala__store_touch(d, m->key.ptr, m->key.len,
                                (m->has & KHALA_F_TTL) ? (int64_t)m->ttl_ms : 0, &ver);
    if (rc != 0) {
        if (rc == KHALA_ENOTFOUND)
            reply_rc(d, c, m->id, m->op, rc, NULL);
        else
            reply_rc(d, c, m->id, m->op, rc, "%s", d->errmsg);
        return;
    }
    reply_version(d, c, m, ver);
}

#define KV_U(k, v)                                                                                 \
    (khala_kv_t) {                                                                                 \
        .key = {(const uint8_t *)(k), sizeof(k) - 1}, .kind = KHALA_KV_UINT, .as.u = (v)           \
    }

static void op_stats(khalad_t *d, khala_conn_t *c, const khala_msg_t *m) {
    khala_l1_stats_t st;
    khala__l1_stats(d->l1, &st);
    khala_kv_t l1[] = {
        KV_U("items", st.items),
        KV_U("max_items", st.max_items),
        KV_U("item_bytes", st.item_bytes),
        KV_U("payload_bytes", st.payload_bytes),
        KV_U("arena_bytes", st.arena_bytes),
        KV_U("free_bytes", st.free_bytes),
        KV_U("retired", st.retired),
        KV_U("sets", st.sets),
        KV_U("overwrites", st.overwrites),
        KV_U("deletes", st.deletes),
        KV_U("evictions", st.evictions),
        KV_U("expirations", st.expirations),
        KV_U("hits", st.reader_hits),
        KV_U("misses", st.reader_misses),
        KV_U("readers", st.readers),
        KV_U("oldest_reader_pid", (uint64_t)st.oldest_reader_pid),
        KV_U("stuck_reader_pid", (uint64_t)st.stuck_reader_pid),
        KV_U("stuck_reader_ms",
             st.stuck_reader_pid ? (uint64_t)(khala__sys_now_ms() - st.stuck_since_ms) : 0),
        KV_U("blocked_ops", st.blocked_ops),
        KV_U("membarriers", st.membarriers),
        KV_U("rehashes", st.rehashes),
        KV_U("huge_page_bytes", khala__sys_huge_bytes(khala__l1_seg(d->l1)->base)),
    };
    khala_server_stats_t ss;
    khala__server_stats(d->srv, &ss);
    khala_rel_stats_t rs;
    khala__rel_stats(d, &rs);
    khala_kv_t daemon[] = {
        KV_U("connections", ss.conns),
        KV_U("connections_paused", ss.paused),
        KV_U("connections_refused", ss.refused),
        KV_U("connections_refused_no_fd", ss.fd_refused),
        KV_U("fd_exhausted", ss.fd_exhausted),
        KV_U("frame_timeouts", ss.frame_timeouts),
        KV_U("buffer_refusals", ss.buffer_refusals),
        KV_U("input_buffer_bytes", ss.in_bytes),
        KV_U("output_buffer_bytes", ss.out_bytes),
        KV_U("requests", d->requests),
        KV_U("error_replies", d->replies_err),
        KV_U("protocol_errors", d->proto_errors),
        KV_U("denied", d->denied),
        KV_U("audit_lines", d->audit.lines),
        KV_U("audit_errors", d->audit.errors),
        KV_U("loads_led", d->loads_led),
        KV_U("loads_waited", d->loads_waited),
        KV_U("loads_timed_out", d->loads_timed_out),
        KV_U("fills_dropped", d->fills_dropped),
        KV_U("loads_in_flight", khala__flight_count(d->flight)),
        KV_U("uptime_ms", (uint64_t)khala__sys_now_ms() - d->started_ms),
        KV_U("relationships_linked", rs.rels),
        KV_U("relationship_links", rs.links),
        KV_U("relationships_cascaded", rs.cascaded),
        KV_U("relationships_evicted", rs.evicted),
        KV_U("relationships_preloaded", rs.preloaded),
        KV_U("relationship_preloads_dropped", rs.preload_dropped),
    };
    khala_kv_t below[KHALAD_TIERS_MAX][KHALAD_TIERS_STATS_MAX];
    khala_kv_t top[3 + KHALAD_TIERS_MAX] = {
        {.key = {(const uint8_t *)"l1", 2}, .kind = KHALA_KV_MAP},
        {.key = {(const uint8_t *)"khalad", 6}, .kind = KHALA_KV_MAP},
    };
    top[0].as.map.items = l1;
    top[0].as.map.n = sizeof(l1) / sizeof(l1[0]);
    top[1].as.map.items = daemon;
    top[1].as.map.n = sizeof(daemon) / sizeof(daemon[0]);
    uint32_t ntop = 2;
    for (int i = 0; i < d->ntiers; i++) {
        size_t nb = khala__tiers_stats(d, i, below[i], KHALAD_TIERS_STATS_MAX);
        const char *name = khala__proto_level_name(d->tiers[i].t->level);
        if (!nb || !name)
            continue;
        top[ntop] = (khala_kv_t){.key = {(const uint8_t *)name, strlen(name)},
                                 .kind = KHALA_KV_MAP,
                                 .as.map = {below[i], (uint32_t)nb}};
        ntop++;
    }
    /* Encryption at rest (daemon/crypt.h), when a key file is configured. */
    khala_crypt_stats_t cs = {0};
    if (d->crypt)
        khala__crypt_stats(d->crypt, &cs);
    khala_kv_t crypto[] = {
        KV_U("sealed", cs.sealed),
        KV_U("opened", cs.opened),
        KV_U("auth_failures", cs.auth_failures),
        KV_U("unknown_key", cs.unknown_key),
        KV_U("keys", d->crypt ? khala__crypt_nkeys(d->crypt) : 0),
        KV_U("current_key_id", d->crypt ? khala__crypt_current_id(d->crypt) : 0),
    };
    if (d->crypt) {
        top[ntop] = (khala_kv_t){.key = {(const uint8_t *)"crypto", 6}, .kind = KHALA_KV_MAP};
        top[ntop].as.map.items = crypto;
        top[ntop++].as.map.n = sizeof(crypto) / sizeof(crypto[0]);
    }
    khala_msg_t r = reply_to(m);
    r.data = top;
    r.ndata = ntop;
    r.has = KHALA_F_DATA;
    send_reply(d, c, &r);
}

/* keys: collect the keys of one page that match the pattern. */
typedef struct keys_ctx {
    const khala_msg_t *m;
    const khala_acl_t *acl;
    const khala_acl_peer_t *peer; /* NULL: the peer reads every key (no check per key) */
    khala_bytes_t *keys;
    uint32_t n, max;
    char pat[KHALA_PROTO_PATTERN_MAX + 1];
} keys_ctx_t;

static int collect_key(void *arg, const khala_item_t *it) {
    keys_ctx_t *k = arg;
    if (k->n == k->max)
        return KHALA_L1_STOP; /* the page is full: the next page starts at this item */
    char name[KHALA_KEY_MAX + 1];
    memcpy(name, khala__item_key(it), it->key_len);
    name[it->key_len] = '\0';
    if (k->peer &&
        !(khala__acl_rights(k->acl, k->peer, khala__item_key(it), it->key_len, (int)it->type) &
          KHALA_RIGHT_READ))
        return 0; /* keys shows only the keys the peer may read */
    if (k->pat[0] == '\0' || fnmatch(k->pat, name, 0) == 0) {
        /* The view stays valid: nothing changes the table during this scan. */
        k->keys[k->n].ptr = khala__item_key(it);
        k->keys[k->n].len = it->key_len;
        k->n++;
    }
    return 0;
}

static void op_keys(khalad_t *d, khala_conn_t *c, const khala_msg_t *m) {
    khala_acl_peer_t peer = peer_of(c);
    keys_ctx_t k = {.m = m, .acl = &d->acl};
    if (!(khala__acl_rights(&d->acl, &peer, NULL, 0, -1) & KHALA_RIGHT_READ))
        k.peer = &peer;
    uint32_t count =
        (m->has & KHALA_F_COUNT) && m->count ? m->count : KHALA_PROTO_KEYS_COUNT_DEFAULT;
    k.max = count;
    k.keys = calloc(count, sizeof(*k.keys));
    if (!k.keys) {
        reply_rc(d, c, m->id, m->op, -ENOMEM, "out of memory");
        return;
    }
    if (m->has & KHALA_F_PATTERN) {
        memcpy(k.pat, m->pattern.ptr, m->pattern.len);
        k.pat[m->pattern.len] = '\0';
    }
    uint64_t cursor = (m->has & KHALA_F_CURSOR) ? m->cursor : 0;
    /* Walk until the page is full or the table ends; each step looks at a slice of descs. */
    do
        (void)khala__l1_scan(d->l1, &cursor, 4096, collect_key, &k);
    while (cursor != 0 && k.n < k.max);
    khala_msg_t r = reply_to(m);
    r.keys = k.keys;
    r.nkeys = k.n;
    r.cursor = cursor;
    r.has = KHALA_F_KEYS | KHALA_F_CURSOR;
    send_reply(d, c, &r);
    free(k.keys);
}

/* inspect: the key's metadata at every level (docs/protocol.md, "inspect"). L1 from its table;
 * each level below from its driver's get, whose value is dropped, so that a key only L2 holds is
 * described rather than "no such key". The top-level fields describe the fastest level holding
 * the key (the one a get answers from; "hits" only when that is L1), "levels" lists every level
 * holding it, and each level has a map whose "state" is "held", "absent", "down" (marked
 * unhealthy: not asked), "error" (the get failed; "error" names why) or "refused" (it holds a
 * value that failed authentication, daemon/tier_crypt.h: "error" is KHALA_EAUTH's name, "detail"
 * says why; the value is a miss there; when no level holds the key otherwise, the reply is
 * KHALA_EAUTH naming the level and why). A level below that is
 * asked counts one get in its stats. Writes still queued for a level are not looked at. */
#define KV_STR(k, v)                                                                               \
    (khala_kv_t) {                                                                                 \
        .key = {(const uint8_t *)(k), sizeof(k) - 1}, .kind = KHALA_KV_STR, .as.s = {              \
            (const uint8_t *)(v),                                                                  \
            strlen(v)                                                                              \
        }                                                                                          \
    }
static void op_inspect(khalad_t *d, khala_conn_t *c, const khala_msg_t *m) {
    enum { NLEVELS = 1 + KHALAD_TIERS_MAX, NFIELDS = 8 };
    khala_kv_t per[NLEVELS][NFIELDS], top[6 + NLEVELS];
    uint32_t nper[NLEVELS] = {0}, ntop = 0;
    char levels[32] = "", downs[256] = "", refused[320] = "";
    int first = -1, nlevels = 1 + d->ntiers;
    uint64_t hits = 0;
    int64_t now = khala__sys_now_ms();
    const khala_item_t *it;
    int rc = khala__l1_find(d->l1, m->key.ptr, m->key.len, &it);
    if (rc != 0 && rc != KHALA_ENOTFOUND) {
        reply_rc(d, c, m->id, m->op, rc, NULL);
        return;
    }
    per[0][nper[0]++] = KV_STR("state", rc == 0 ? "held" : "absent");
    if (rc == 0) {
        const char *type = khala__proto_type_name((khala_type_t)it->type);
        hits = khala__l1_item_hits(d->l1, it);
        per[0][nper[0]++] = KV_U("version", it->version);
        per[0][nper[0]++] = KV_U("size", it->value_len);
        per[0][nper[0]++] = KV_U("hits", hits);
        per[0][nper[0]++] =
            KV_U("ttl_ms",
                 it->expire_ms ? (uint64_t)(it->expire_ms > now ? it->expire_ms - now : 0) : 0);
        per[0][nper[0]++] = KV_STR("type", type ? type : "?");
        strcat(levels, "l1");
        first = 0;
    }
    for (int l = 1; l < nlevels; l++) {
        khala_tier_t *t = d->tiers[l - 1].t;
        const char *lname = khala__proto_level_name(t->level);
        khala_tier_value_t v = {0};
        per[l][nper[l]++] = KV_STR("backend", t->ops->name);
        rc = t->healthy ? t->ops->get(t, m->key.ptr, m->key.len, &v) : KHALA_ETIER;
        if (rc == 0) {
            const char *type = khala__proto_type_name(v.type);
            per[l][nper[l]++] = KV_STR("state", "held");
            per[l][nper[l]++] = KV_U("version", v.version);
            per[l][nper[l]++] = KV_U("size", v.len);
            per[l][nper[l]++] = KV_U("ttl_ms", (uint64_t)(v.ttl_ms > 0 ? v.ttl_ms : 0));
            per[l][nper[l]++] = KV_STR("type", type ? type : "?");
            khala__tier_value_free(&v);
            snprintf(levels + strlen(levels), sizeof(levels) - strlen(levels), "%s%s",
                     levels[0] ? "," : "", lname);
            if (first < 0)
                first = l;
        } else if (rc == KHALA_ENOTFOUND) {
            per[l][nper[l]++] = KV_STR("state", "absent");
        } else if (rc == KHALA_EAUTH) {
            /* Held, but refused (daemon/tier_crypt.h): a miss at this level, never shown. */
            per[l][nper[l]++] = KV_STR("state", "refused");
            per[l][nper[l]++] = KV_STR("error", khala_err_name(rc));
            per[l][nper[l]++] = KV_STR("detail", t->err);
            if (!refused[0])
                snprintf(refused, sizeof(refused), "%s (%s) %s", lname, t->ops->name, t->err);
        } else {
            per[l][nper[l]++] = KV_STR("state", t->healthy ? "error" : "down");
            per[l][nper[l]++] = KV_STR("error", t->err[0] ? t->err : khala_strerror(rc));
            snprintf(downs + strlen(downs), sizeof(downs) - strlen(downs), "%s%s (%s) is %s",
                     downs[0] ? ", " : "", lname, t->ops->name, t->healthy ? "failing" : "down");
        }
    }
    if (first < 0) {
        if (refused[0]) /* held, but not trusted: say so rather than "no such key" */
            reply_rc(d, c, m->id, m->op, KHALA_EAUTH, "%s", refused);
        else if (downs[0])
            reply_rc(d, c, m->id, m->op, KHALA_ENOTFOUND,
                     "in no level that answered; %s, so it was not asked", downs);
        else
            reply_rc(d, c, m->id, m->op, KHALA_ENOTFOUND, NULL);
        return;
    }
    /* The old fields first (levels, version, size, hits, ttl_ms, type), from the first level
     * holding the key; its map holds them as "state", then the fields in that order. */
    top[ntop++] = KV_STR("levels", levels);
    for (uint32_t i = 0; i < nper[first]; i++) {
        const khala_kv_t *f = &per[first][i];
        if (f->key.len == 5 &&
            (memcmp(f->key.ptr, "state", 5) == 0 || memcmp(f->key.ptr, "error", 5) == 0))
            continue;
        if (f->key.len == 7 && memcmp(f->key.ptr, "backend", 7) == 0)
            continue;
        top[ntop++] = *f;
    }
    for (int l = 0; l < nlevels; l++) {
        const char *lname = l == 0 ? "l1" : khala__proto_level_name(d->tiers[l - 1].t->level);
        top[ntop] =
            (khala_kv_t){.key = {(const uint8_t *)lname, strlen(lname)}, .kind = KHALA_KV_MAP};
        top[ntop].as.map.items = per[l];
        top[ntop].as.map.n = nper[l];
        ntop++;
    }
    khala_msg_t r = reply_to(m);
    r.data = top;
    r.ndata = ntop;
    r.has = KHALA_F_DATA;
    send_reply(d, c, &r);
}
#undef KV_STR

static void op_flush(khalad_t *d, khala_conn_t *c, const khala_msg_t *m) {
    uint64_t n = 0;
    int rc;
    if (invalidate_and_wait(d, c, m, NULL, 0, (m->has & KHALA_F_TYPE) ? (int)m->type : -1, &n, &rc))
        return;
    if (rc != 0) {
        reply_rc(d, c, m->id, m->op, rc, "%s", d->errmsg);
        return;
    }
    reply_count(d, c, m, n);
}

static void op_config(khalad_t *d, khala_conn_t *c, const khala_msg_t *m) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f || khala__config_dump(&d->cfg, f) != 0 || fclose(f) != 0) {
        free(text);
        reply_rc(d, c, m->id, m->op, -ENOMEM, "cannot render the configuration");
        return;
    }
    khala_kv_t kv = {.key = {(const uint8_t *)"ini", 3},
                     .kind = KHALA_KV_STR,
                     .as.s = {(const uint8_t *)text, len}};
    khala_msg_t r = reply_to(m);
    r.data = &kv;
    r.ndata = 1;
    r.has = KHALA_F_DATA;
    send_reply(d, c, &r);
    free(text);
}

static void op_ping(khalad_t *d, khala_conn_t *c, const khala_msg_t *m) {
    reply_rc(d, c, m->id, m->op, 0, NULL);
}

/* warm: the keys given, or one page of a scan by prefix or type (the reply's cursor says where
 * the next page starts; 0 = done), so that khalactl can show progress. */
static void op_warm(khalad_t *d, khala_conn_t *c, const khala_msg_t *m) {
    uint64_t n = 0, cursor = 0;
    if (d->ntiers == 0) {
        reply_count(d, c, m, 0);
        return;
    }
    if (m->has & KHALA_F_KEYS) {
        n = khala__tiers_warm_keys(d, m->nkeys, m->keys);
    } else {
        cursor = (m->has & KHALA_F_CURSOR) ? m->cursor : 0;
        int rc = khala__tiers_warm_scan(d, (m->has & KHALA_F_PREFIX) ? m->prefix.ptr : NULL,
                                        (m->has & KHALA_F_PREFIX) ? m->prefix.len : 0,
                                        (m->has & KHALA_F_TYPE) ? (int)m->type : -1, &cursor, &n);
        if (rc != 0) {
            reply_rc(d, c, m->id, m->op, rc, "%s", d->errmsg);
            return;
        }
    }
    khala_msg_t r = reply_to(m);
    r.count = (uint32_t)(n > UINT32_MAX ? UINT32_MAX : n);
    r.cursor = cursor;
    r.has = KHALA_F_COUNT | KHALA_F_CURSOR;
    send_reply(d, c, &r);
}

/* similar: the embedding items nearest to a vector (daemon/similar.h, docs/protocol.md). Only
 * the matches the peer may read are returned (keys does the same), and no more than a frame
 * holds: the tail is dropped when the values would not fit max_frame. */
static void op_similar(khalad_t *d, khala_conn_t *c, const khala_msg_t *m) {
    char why[512];
    uint32_t dim = 0, k = (m->has & KHALA_F_COUNT) ? m->count : 1, n = 0, np = 0;
    if (k == 0 || k > KHALA_SIMILAR_K_MAX) {
        reply_rc(d, c, m->id, m->op, KHALA_EINVAL, "count is %" PRIu32 "; similar returns 1..%u", k,
                 KHALA_SIMILAR_K_MAX);
        return;
    }
    float *q = malloc(m->value.len ? m->value.len : 1);
    khala_tier_match_t *ms = calloc(k, sizeof(*ms));
    khala_proto_match_t *pm = calloc(k, sizeof(*pm));
    int rc = q && ms && pm ? 0 : -ENOMEM;
    if (rc)
        snprintf(why, sizeof(why), "out of memory");
    else
        rc = khala__similar_query(m->value.ptr, m->value.len, q, &dim, why, sizeof(why));
    khala_level_t lvl = KHALA_LEVEL_NONE;
    if (!rc) {
        float min_sim = (m->has & KHALA_F_SIM)
                            ? (float)m->sim
                            : khala__similar_threshold(d->cfg.l3.similarity_threshold);
        if ((rc = khala__similar_ask(d, q, dim, min_sim, k, ms, &n, &lvl)) != 0)
            snprintf(why, sizeof(why), "%s", d->errmsg);
    }
    if (rc) {
        reply_rc(d, c, m->id, m->op, rc, "similar: %s", why);
        goto out;
    }
    khala_acl_peer_t peer = peer_of(c);
    int filter = !(khala__acl_rights(&d->acl, &peer, NULL, 0, -1) & KHALA_RIGHT_READ);
    size_t room = khala__server_max_frame(d->srv), used = 64;
    for (uint32_t i = 0; i < n; i++) {
        const khala_tier_match_t *x = &ms[i];
        if (filter && !(khala__acl_rights(&d->acl, &peer, x->key, x->klen, (int)x->val.type) &
                        KHALA_RIGHT_READ))
            continue;
        size_t sz = x->klen + x->val.len + 48; /* msgpack headers of one match, generously */
        if (used + sz > room)
            break;
        used += sz;
        pm[np++] = (khala_proto_match_t){.key = {x->key, x->klen},
                                         .sim = x->similarity,
                                         .value = {x->val.data, x->val.len},
                                         .ver = x->val.version,
                                         .ttl_ms = (uint64_t)x->val.ttl_ms};
    }
    khala_msg_t r = reply_to(m);
    r.matches = pm;
    r.nmatches = np;
    r.has = KHALA_F_MATCHES;
    if (np) {
        r.lvl = lvl;
        r.has |= KHALA_F_LVL;
    }
    send_reply(d, c, &r);
out:
    for (uint32_t i = 0; i < n; i++)
        khala__tier_match_free(&ms[i]);
    free(pm);
    free(ms);
    free(q);
}

/* Dispatch --------------------------------------------------------------------------------- */

typedef void (*handler_fn)(khalad_t *d, khala_conn_t *c, const khala_msg_t *m);

/* The handler of each op; a fill is a put that also answers the single-flight waiters. */
static const handler_fn handlers[KHALA_OP_COUNT] = {
    [KHALA_OP_HELLO] = op_hello,   [KHALA_OP_PING] = op_ping,
    [KHALA_OP_GET] = op_get,       [KHALA_OP_PUT] = op_put,
    [KHALA_OP_FILL] = op_put,      [KHALA_OP_FILL_FAIL] = op_fill_fail,
    [KHALA_OP_DEL] = op_del,       [KHALA_OP_INVALIDATE] = op_invalidate,
    [KHALA_OP_TOUCH] = op_touch,   [KHALA_OP_STATS] = op_stats,
    [KHALA_OP_KEYS] = op_keys,     [KHALA_OP_INSPECT] = op_inspect,
    [KHALA_OP_FLUSH] = op_flush,   [KHALA_OP_WARM] = op_warm,
    [KHALA_OP_CONFIG] = op_config, [KHALA_OP_SIMILAR] = op_similar,
};

int khala__handlers_frame(void *arg, khala_conn_t *c, const uint8_t *body, size_t len) {
    khalad_t *d = arg;
    char err[256];
    khala_msg_t m;
    khala__proto_msg_init(&m);
    d->requests++;
    int rc = khala__proto_decode_request(body, len, &m, err, sizeof(err));
    if (rc != 0) {
        d->proto_errors++;
        khala__log("warn", "bad request; closing the connection", "error", err, NULL);
        reply_rc(d, c, m.id, KHALA_OP_NONE, rc, "%s", err);
        return -1;
    }
    /* Rights (daemon/acl.h): what the op needs, over its key or the whole cache. A get by a
     * peer that may read but not write is served without a load to lead (it could not fill). */
    int over_key;
    unsigned need = needed_right(&m, &over_key);
    if (need || m.loader) {
        khala_acl_peer_t peer = peer_of(c);
        unsigned have =
            over_key ? khala__acl_rights(&d->acl, &peer, m.key.ptr, m.key.len, key_type(d, &m))
                     : khala__acl_rights(&d->acl, &peer, NULL, 0, -1);
        if (need && !(have & need)) {
            deny(d, c, &m, need, over_key);
            khala__proto_msg_free(&m);
            return 0;
        }
        if (m.op == KHALA_OP_GET && !(have & KHALA_RIGHT_WRITE))
            m.loader = false;
    }
    int sampled = m.op == KHALA_OP_GET && khala__audit_sample(&d->audit);
    handler_fn fn = m.op < KHALA_OP_COUNT ? handlers[m.op] : NULL;
    d->last_reply_rc = 0;
    if (fn)
        fn(d, c, &m);
    else
        reply_rc(d, c, m.id, m.op, KHALA_EPROTO, "op not served");
    if (is_admin_op(&m))
        audit(d, c, &m, "admin", NULL, d->last_reply_rc);
    else if (sampled)
        audit(d, c, &m, "read", NULL, d->last_reply_rc);
    khala__proto_msg_free(&m);
    return 0;
}

void khala__handlers_bad_frame(void *arg, khala_conn_t *c, size_t len) {
    khalad_t *d = arg;
    d->proto_errors++;
    reply_rc(d, c, 0, KHALA_OP_NONE, KHALA_EPROTO,
             len ? "frame of %zu bytes exceeds max_frame %zu (it follows [l1] max_value_bytes)"
                 : "frame of %zu bytes is empty",
             len, khala__server_max_frame(d->srv));
}

void khala__handlers_refuse(void *arg, khala_conn_t *c, int rc, const char *msg) {
    reply_rc(arg, c, 0, KHALA_OP_NONE, rc, "%s", msg);
}

void khala__handlers_close(void *arg, khala_conn_t *c) {
    khalad_t *d = arg;
    flight_ctx_t fc = {d, KHALA_TYPE_MEMORY_ENTITY, 0, KHALA_LEVEL_LOADER, 0};
    khala__flight_forget_owner(d->flight, c, (uint64_t)khala__sys_now_ms(), flight_answer, &fc);
    khala__invwait_forget_conn(d->invwait, c);
}

/* Log, once per episode, a reader stuck inside a read section: L1 refuses what needs memory
 * until it leaves (docs/operating.md says what to do). */
static void watch_stuck_reader(khalad_t *d) {
    khala_l1_stats_t st;
    khala__l1_stats(d->l1, &st);
    if (st.stuck_reader_pid == d->stuck_reader_pid)
        return;
    char pid[24], blocked[24];
    snprintf(pid, sizeof(pid), "%d",
             st.stuck_reader_pid ? st.stuck_reader_pid : d->stuck_reader_pid);
    snprintf(blocked, sizeof(blocked), "%llu", (unsigned long long)st.blocked_ops);
    if (st.stuck_reader_pid)
        khala__log("warn",
                   "a reader is stuck inside a read section: L1 refuses writes that need memory "
                   "(the levels below still take them) until it leaves or dies",
                   "pid", pid, "blocked_ops", blocked, NULL);
    else
        khala__log("info", "the stuck reader left its read section", "pid", pid, "blocked_ops",
                   blocked, NULL);
    d->stuck_reader_pid = st.stuck_reader_pid;
}

void khala__handlers_tick(void *arg) {
    khalad_t *d = arg;
    flight_ctx_t fc = {d, KHALA_TYPE_MEMORY_ENTITY, 0, KHALA_LEVEL_LOADER, 0};
    (void)khala__l1_maintain(d->l1);
    (void)khala__l1_sweep(d->l1, KHALAD_SWEEP_BUDGET);
    watch_stuck_reader(d);
    (void)khala__flight_expire(d->flight, (uint64_t)khala__sys_now_ms(), flight_answer, &fc);
    khala__tiers_tick(d);
    khala__rel_tick(d);
}
