/*
 * put / miss: what a call through khalad costs, against Redis on the same machine in the same
 * run; and the pieces every khalad bench shares (daemon_bench.h).
 *
 * The bench makes a private directory /tmp/khala-bench-PID, starts its own redis-server there
 * (no port, a Unix socket, no persistence) and its own khalads (KHALAD_PATH, each with a unique
 * cache name, its socket and its [l2] path in that directory, so that nothing is left under
 * /var/lib or $HOME). A khalad with the redis backend uses the bench's redis-server as its L2,
 * in database 1 with its own namespace, so that it never meets the keys the plain Redis rounds
 * read (database 0). Every server is stopped and the directory removed at the end, on error
 * paths too (and, through PR_SET_PDEATHSIG, the servers die if the bench itself dies). The
 * servers are started, waited for and stopped by the harness the tests use too
 * (tests/harness/harness.h).
 *
 * miss --redis-tcp: redis-server listens also on a free loopback TCP port (127.0.0.1), and both
 * khalad's redis L2 (redis://127.0.0.1:PORT/1) and the Redis reference rounds reach it over TCP,
 * as when Redis is reached over a network; workers still reach khalad over its Unix socket.
 *
 * Timed rounds come in pairs: a khalad load, then at once its Redis reference, with the same
 * number of forked clients; the ratios are per pair, then the median over rounds.
 *
 *   load               khalad                                     | Redis reference
 *   put, pipeline 1    khala_cache_put of a random key of K,      | SET
 *                      value B bytes                              |
 *   put, pipeline P    P put frames (lib/proto.h) on a raw        | P SET appended, then P
 *                      socket, then the P replies                 | replies
 *   miss, none         khala_cache_get of a key never put: L1     | GET of a missing key
 *                      misses, L2 (an empty disk store) misses,   |
 *                      khalad answers "not found"                 |
 *   miss, disk/redis   khala_cache_get of a random key of K that  | GET of an existing key of
 *                      lives in that L2 only (its type's levels   | the same size (K of them
 *                      are "l2"): every get misses L1 and khalad  | SET in database 0)
 *                      answers from L2, without promoting it      |
 *   miss, l3disk       the same, the key on L3 alone (levels l3), | GET of an existing key
 *                      L3 on the disk; the reply's level must be  | (as for disk/redis)
 *                      L3 (bench/l3_bench.c)                      |
 *   miss, l3surreal    the same, L3 on SurrealDB through the      | direct: the same row read
 *                      bench's own front                          | from the front, one POST
 *                                                                 | /rpc (bench/l3_bench.c)
 *
 * Every round trip (every batch with P > 1) is timed with the monotonic clock. An L2 round also
 * checks, from khalad's stats, that L2 answered as many hits as the clients made gets (an L3
 * round: L3, and every reply's level is L3; the others are counted as lvl_mismatches).
 *
 * The miss loads preload L2 through khalad with write-behind puts (an L2 put is an fsync'd LMDB
 * commit for the disk backend; write-behind batches 256 per commit), then wait until the write
 * queue is empty, so that no get is answered from the queue.
 */
#include "daemon_bench.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "channel.h"
#include "harness.h"
#include "khala/error.h"
#include "l3_bench.h"
#include "proto.h"
#include "segment.h"

#ifndef KHALAD_PATH
#error "KHALAD_PATH must name the khalad binary"
#endif

/* Latency samples kept per client (a ring). */
#define DB_SAMPLES (1u << 18)
/* Most rounds and clients. */
#define DB_ROUNDS_MAX 64u
#define DB_PROCS_MAX 64u
/* Bound on every wait for a server or a client to come up. */
#define DB_START_MS 5000
/* Bound on a stats call: khalad answers between ticks, and a tick draining a level's queue
 * into SurrealDB holds its loop for seconds (docs/benchmarks.md, "Issue 12: L3"). */
#define DB_STAT_MS 60000
/* Bound on the wait for khalad's L2 write queue to drain after a preload. */
#define DB_DRAIN_MS 60000
/* Put frames in flight during a preload, and SETs per pipeline when filling Redis. */
#define DB_PRELOAD_BATCH 256u
/* Largest value a miss load reads. */
#define DB_VALUE_MAX 65536u

/* K_GET_L3 and R_DIRECT: the L3 cases and their direct reference (bench/l3_bench.c). */
enum {
    K_PUT,
    K_PUT_PIPE,
    K_MISS,
    K_GET_L2,
    K_GET_L3,
    R_SET,
    R_SET_PIPE,
    R_GET_MISS,
    R_GET,
    R_DIRECT
};

typedef struct db_out {
    uint64_t ops, errors, ns, nsamples, mismatches;
    int rc;
    char err[124];
    uint32_t samples[DB_SAMPLES];
} db_out_t;

typedef struct db_ctl {
    atomic_uint ready, go, stop;
} db_ctl_t;

typedef struct db_res {
    double ops_s, p50_ns, p99_ns;
    uint64_t ops, errors, mismatches; /* mismatches: L3 gets another level answered */
} db_res_t;

/* ---- servers (through the harness, tests/harness/harness.h) ------------------------------ */

static int sock_connect(const char *path) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int verbose(void) {
    return getenv("KHALA_BENCH_VERBOSE") != NULL;
}

void bench_env_stop(bench_env_t *e) {
    harness_redis_stop(&e->redis);
    harness_rmtree(e->dir);
    e->dir[0] = '\0';
}

int bench_env_start(bench_env_t *e, int want_redis) {
    return bench_env_start_tcp(e, want_redis, 0);
}

int bench_env_start_tcp(bench_env_t *e, int want_redis, int tcp) {
    memset(e, 0, sizeof(*e));
    snprintf(e->dir, sizeof(e->dir), "/tmp/khala-bench-%d", (int)getpid());
    if (mkdir(e->dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "mkdir %s: %s\n", e->dir, strerror(errno));
        e->dir[0] = 0;
        return -1;
    }
    if (!want_redis)
        return 0;
    /* redis-server in the bench's directory, on a Unix socket there, and with tcp on a free
     * loopback port too (the harness tries another port if the one picked is taken). */
    harness_redis_t *r = &e->redis;
    snprintf(r->dir, sizeof(r->dir), "%s", e->dir);
    r->unix_socket = 1;
    r->tcp = tcp;
    r->verbose = verbose();
    if (harness_redis_start(r) != 0) {
        fprintf(stderr, "%s (KHALA_BENCH_VERBOSE=1 shows its stderr)\n", r->err);
        bench_env_stop(e);
        return -1;
    }
    snprintf(e->rsock, sizeof(e->rsock), "%s", r->sock);
    e->rport = tcp ? r->port : 0;
    return 0;
}

int bench_khalad_init(bench_env_t *e, bench_khalad_t *k, int backend, uint32_t keys,
                      const char *const *sets, unsigned nsets) {
    char name[64], sock[108];
    unsigned id = e->seq++;
    memset(k, 0, sizeof(*k));
    k->backend = backend;
    snprintf(name, sizeof(name), "khbench%d_%u", (int)getpid(), id);
    snprintf(sock, sizeof(sock), "%s/k%u.sock", e->dir, id);
    snprintf(k->l2dir, sizeof(k->l2dir), "%s/k%u.l2", e->dir, id);
    /* Room for every key twice over, in the store and in the write-behind queue. */
    unsigned long long cap = 2ull * keys < 100000 ? 100000 : 2ull * keys;
    harness_khalad_t *h = &k->h;
    if (nsets > BENCH_KHALAD_SETS_MAX)
        return -1;
    int rc = harness_khalad_init(h, KHALAD_PATH, name, sock); /* cache.socket */
    h->verbose = verbose();
    h->start_ms = DB_START_MS;
    if (!rc)
        rc = harness_khalad_set(h, "l2.path=%s", k->l2dir);
    /* l2.max_items bounds the disk store only: khalad refuses it with Redis (Redis bounds
     * itself), so it is set in the disk branch below. */
    if (!rc)
        rc = harness_khalad_set(h, "l2.queue_max=%llu", cap);
    if (!rc && backend == BENCH_L2_REDIS) {
        if (e->rport)
            rc = harness_khalad_set(h, "l2.redis_url=redis://127.0.0.1:%u/1", e->rport);
        else
            rc = harness_khalad_set(h, "l2.redis_url=unix://%s?db=1", e->rsock);
        if (!rc)
            rc = harness_khalad_set(h, "l2.namespace=%s", h->name);
        if (!rc)
            rc = harness_khalad_set(h, "l2.backend=redis");
    } else if (!rc) {
        rc = harness_khalad_set(h, "l2.max_items=%llu", cap);
        if (!rc)
            rc = harness_khalad_set(h, "l2.backend=disk");
    }
    for (unsigned i = 0; !rc && i < nsets; i++)
        rc = harness_khalad_set(h, "%s", sets[i]);
    if (rc) {
        fprintf(stderr, "%s\n", h->err);
        return -1;
    }
    return 0;
}

int bench_khalad_start(bench_khalad_t *k) {
    if (harness_khalad_start(&k->h) != 0) {
        fprintf(stderr, "%s (KHALA_BENCH_VERBOSE=1 shows its stderr)\n", k->h.err);
        return -1;
    }
    return 0;
}

void bench_khalad_stop(bench_khalad_t *k, int unlink_l1) {
    if (harness_khalad_stop(&k->h, 0) != 0)
        fprintf(stderr, "%s\n", k->h.err);
    if (unlink_l1)
        harness_khalad_clean(&k->h);
    else if (k->h.sock[0])
        unlink(k->h.sock);
}

uint32_t bench_value_size(uint32_t i, uint32_t vmin, uint32_t vmax) {
    if (vmax <= vmin)
        return vmin;
    uint32_t h = i * 0x9E3779B1u;
    h ^= h >> 15;
    h *= 0x85EBCA77u;
    h ^= h >> 13;
    return vmin + h % (vmax - vmin + 1);
}

char bench_value_byte(uint32_t i) {
    return (char)('a' + i % 26);
}

int bench_backends_parse(const char *list, const char *const *names, unsigned n, unsigned dflt,
                         unsigned *bits) {
    char buf[128], *save = NULL;
    *bits = 0;
    if (!list) {
        *bits = dflt;
        return 0;
    }
    if (!strcmp(list, "all")) {
        *bits = (1u << n) - 1;
        return 0;
    }
    snprintf(buf, sizeof(buf), "%s", list);
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        unsigned i = 0;
        while (i < n && strcmp(t, names[i]) != 0)
            i++;
        if (i == n) {
            fprintf(stderr, "--backend: unknown backend '%s'\n", t);
            return -1;
        }
        *bits |= 1u << i;
    }
    if (!*bits) {
        fprintf(stderr, "--backend: empty list\n");
        return -1;
    }
    return 0;
}

/* ---- a raw khalad connection, for pipelined puts ------------------------------------------ */

typedef struct raw {
    int fd;
    uint64_t id;
    khala_buf_t in, out;
} raw_t;

static int raw_write_all(int fd, const uint8_t *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read one reply to op; its rc in *rc. 0, or -1 when the connection or the frame is bad. */
static int raw_reply(raw_t *r, khala_op_t op, int *rc) {
    uint32_t n;
    for (;;) {
        int c = khala__proto_frame_check(r->in.data, r->in.len, 0, &n, NULL, 0);
        if (c == 0)
            break;
        if (c < 0 || khala__proto_buf_reserve(&r->in, 65536) != 0)
            return -1;
        ssize_t got = read(r->fd, r->in.data + r->in.len, r->in.cap - r->in.len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return -1;
        r->in.len += (size_t)got;
    }
    khala_msg_t m;
    khala__proto_msg_init(&m);
    int d = khala__proto_decode_reply(op, r->in.data + KHALA_FRAME_HEADER, n, &m, NULL, 0);
    *rc = m.rc;
    khala__proto_msg_free(&m);
    khala__proto_buf_consume(&r->in, KHALA_FRAME_HEADER + n);
    return d == 0 ? 0 : -1;
}

static int raw_open(raw_t *r, const char *path, const char *name) {
    memset(r, 0, sizeof(*r));
    if ((r->fd = sock_connect(path)) < 0)
        return -1;
    khala_msg_t h;
    khala__proto_msg_init(&h);
    h.id = ++r->id;
    h.op = KHALA_OP_HELLO;
    h.proto = KHALA_PROTO_VERSION;
    h.name.ptr = (const uint8_t *)name;
    h.name.len = strlen(name);
    h.has = KHALA_F_PROTO | KHALA_F_NAME;
    int rc = -1;
    if (khala__proto_encode_request(&r->out, &h, NULL, 0) != 0 ||
        raw_write_all(r->fd, r->out.data, r->out.len) != 0 ||
        raw_reply(r, KHALA_OP_HELLO, &rc) != 0 || rc != 0)
        return -1;
    khala__proto_buf_reset(&r->out);
    return 0;
}

static void raw_close(raw_t *r) {
    if (r->fd > 0)
        close(r->fd);
    khala__proto_buf_free(&r->in);
    khala__proto_buf_free(&r->out);
}

/* ---- khalad control: stats and preloads ---------------------------------------------------- */

/* The UINT entry `name` of a data map, or NULL. */
static const khala_kv_t *kv_find(const khala_kv_t *kv, uint32_t n, const char *name) {
    size_t len = strlen(name);
    for (uint32_t i = 0; i < n; i++)
        if (kv[i].key.len == len && memcmp(kv[i].key.ptr, name, len) == 0)
            return &kv[i];
    return NULL;
}

int bench_khalad_stat(const bench_khalad_t *k, const char *section, const char *field,
                      uint64_t *v) {
    char err[256];
    khala_chan_t *ch = NULL;
    int rc = khala__chan_open(k->h.sock, k->h.name, DB_STAT_MS, &ch, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "stats of %s: %s\n", k->h.name, err);
        return -1;
    }
    khala_msg_t req, rep;
    khala__proto_msg_init(&req);
    khala__proto_msg_init(&rep);
    req.op = KHALA_OP_STATS;
    rc = khala__chan_call(ch, &req, &rep, DB_STAT_MS, err, sizeof(err));
    if (rc == 0 && rep.rc == 0) {
        const khala_kv_t *s = kv_find(rep.data, rep.ndata, section);
        const khala_kv_t *f =
            s && s->kind == KHALA_KV_MAP ? kv_find(s->as.map.items, s->as.map.n, field) : NULL;
        if (f && f->kind == KHALA_KV_UINT)
            *v = f->as.u;
        else
            rc = -1;
        if (rc != 0)
            snprintf(err, sizeof(err), "no counter %s.%s", section, field);
    } else if (rc == 0) {
        snprintf(err, sizeof(err), "%s", khala_strerror(rep.rc));
        rc = -1;
    }
    khala__proto_msg_free(&rep);
    khala__chan_close(ch);
    if (rc != 0)
        fprintf(stderr, "stats of %s: %s\n", k->h.name, err);
    return rc == 0 ? 0 : -1;
}

int bench_khalad_preload(const bench_khalad_t *k, const char *prefix, uint32_t n, uint32_t vmin,
                         uint32_t vmax, khala_type_t type, double *ms) {
    raw_t r;
    char *val = malloc(vmax ? vmax : 1);
    char key[KHALA_KEY_MAX + 1];
    uint64_t t0 = bu_now_ns(), fails = 0;
    int first = 0, rc = -1;
    memset(&r, 0, sizeof(r));
    if (!val || raw_open(&r, k->h.sock, k->h.name) != 0) {
        fprintf(stderr, "preload of %s: cannot connect\n", k->h.name);
        raw_close(&r);
        free(val);
        return -1;
    }
    for (uint32_t off = 0; off < n; off += DB_PRELOAD_BATCH) {
        uint32_t m = n - off < DB_PRELOAD_BATCH ? n - off : DB_PRELOAD_BATCH;
        khala__proto_buf_reset(&r.out);
        for (uint32_t i = off; i < off + m; i++) {
            khala_msg_t p;
            khala__proto_msg_init(&p);
            int klen = snprintf(key, sizeof(key), "%s%08u", prefix, i);
            uint32_t vlen = bench_value_size(i, vmin, vmax);
            memset(val, bench_value_byte(i), vlen);
            p.id = ++r.id;
            p.op = KHALA_OP_PUT;
            p.key.ptr = (const uint8_t *)key;
            p.key.len = (size_t)klen;
            p.value.ptr = (const uint8_t *)val;
            p.value.len = vlen;
            p.type = type;
            p.mode = KHALA_MODE_BEHIND;
            p.has = KHALA_F_K | KHALA_F_V | KHALA_F_TYPE | KHALA_F_MODE;
            if (khala__proto_encode_request(&r.out, &p, NULL, 0) != 0)
                goto out;
        }
        if (raw_write_all(r.fd, r.out.data, r.out.len) != 0)
            goto out;
        for (uint32_t i = 0; i < m; i++) {
            int prc;
            if (raw_reply(&r, KHALA_OP_PUT, &prc) != 0)
                goto out;
            if (prc != 0 && !fails++)
                first = prc;
        }
    }
    if (fails) {
        fprintf(stderr, "preload of %s: %llu puts failed, the first with %s\n", k->h.name,
                (unsigned long long)fails, khala_strerror(first));
        goto out;
    }
    /* Every put is queued for L2: wait until the flusher has written them all. */
    for (uint64_t deadline = bu_now_ns() + DB_DRAIN_MS * 1000000ull;;) {
        uint64_t q;
        if (bench_khalad_stat(k, "l2", "queued_now", &q) != 0)
            goto out;
        if (q == 0)
            break;
        if (bu_now_ns() > deadline) {
            fprintf(stderr, "preload of %s: %llu writes still queued for L2 after %d ms\n",
                    k->h.name, (unsigned long long)q, DB_DRAIN_MS);
            goto out;
        }
        bu_sleep_ns(5 * 1000000ull);
    }
    if (ms)
        *ms = (double)(bu_now_ns() - t0) / 1e6;
    rc = 0;
out:
    if (rc != 0 && !fails)
        fprintf(stderr, "preload of %s: the connection to khalad failed\n", k->h.name);
    raw_close(&r);
    free(val);
    return rc;
}

/* SET keys key:%08u, i < n, with vsize-byte values in Redis database 0. 0 or -1. */
static int redis_fill(const char *rsock, uint32_t n, uint32_t vsize) {
    redisContext *c = redisConnectUnix(rsock);
    char *val = malloc(vsize ? vsize : 1);
    char key[BU_KEY_STRIDE];
    int rc = -1;
    if (!c || c->err || !val)
        goto out;
    memset(val, 'v', vsize);
    for (uint32_t off = 0; off < n; off += DB_PRELOAD_BATCH) {
        uint32_t m = n - off < DB_PRELOAD_BATCH ? n - off : DB_PRELOAD_BATCH;
        for (uint32_t i = off; i < off + m; i++) {
            snprintf(key, sizeof(key), "key:%08u", i);
            redisAppendCommand(c, "SET %b %b", key, (size_t)BU_KEY_LEN, val, (size_t)vsize);
        }
        for (uint32_t i = 0; i < m; i++) {
            void *rep = NULL;
            if (redisGetReply(c, &rep) != REDIS_OK || !rep)
                goto out;
            int bad = ((redisReply *)rep)->type == REDIS_REPLY_ERROR;
            freeReplyObject(rep);
            if (bad)
                goto out;
        }
    }
    rc = 0;
out:
    if (rc != 0)
        fprintf(stderr, "filling redis-server failed: %s\n", c && c->err ? c->errstr : "error");
    if (c)
        redisFree(c);
    free(val);
    return rc;
}

/* ---- clients ------------------------------------------------------------------------------- */

typedef struct db_job {
    const char *ksock, *kname, *rsock; /* khalad's socket and cache name; redis-server's socket */
    unsigned rport; /* redis-server's loopback TCP port: the reference connects there; 0 = rsock */
    int kind;       /* K_* or R_* */
    unsigned pipeline;
    uint32_t keys, vsize;
    const bench_front_t *front; /* R_DIRECT: the front khalad's L3 uses */
} db_job_t;

/* What a client holds while it runs a job. */
typedef struct db_client {
    void *conn;        /* khala_cache_t *, raw_t * or redisContext * */
    const char *val;   /* vsize bytes to put */
    char *gbuf;        /* get buffer, DB_VALUE_MAX bytes */
    char (*keys)[32];  /* pipeline keys */
    uint64_t seq, rng; /* miss key counter, key choice */
} db_client_t;

static void key_of(char *k, uint32_t i) {
    snprintf(k, BU_KEY_STRIDE, "key:%08u", i);
}

static void record(db_out_t *out, uint64_t d) {
    out->samples[out->nsamples++ & (DB_SAMPLES - 1)] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
}

/* One timed request (or batch) of the job; ops done, or 0 on a failure counted in out. */
static unsigned one(const db_job_t *j, unsigned idx, db_client_t *cl, db_out_t *out) {
    unsigned p = j->pipeline;
    void *conn = cl->conn;
    char(*keys)[32] = cl->keys;
    for (unsigned i = 0; i < (j->kind == K_PUT_PIPE || j->kind == R_SET_PIPE ? p : 1); i++) {
        if (j->kind == K_MISS || j->kind == R_GET_MISS)
            snprintf(keys[i], 32, "miss:%u:%llu", idx, (unsigned long long)cl->seq++);
        else
            key_of(keys[i], (uint32_t)(bu_rand(&cl->rng) % j->keys));
    }
    uint64_t t0 = bu_now_ns();
    unsigned done = 1;
    int bad = 0;
    switch (j->kind) {
        case K_PUT:
            bad = khala_cache_put(conn, keys[0], BU_KEY_LEN, cl->val, j->vsize, NULL, NULL) != 0;
            break;
        case K_MISS: {
            char buf[16];
            bad = khala_cache_get(conn, keys[0], strlen(keys[0]), buf, sizeof(buf), NULL) !=
                  KHALA_ENOTFOUND;
            break;
        }
        case K_GET_L3: {
            int mm = 0;
            bad = bench_l3_get(conn, keys[0], BU_KEY_LEN, j->vsize, &mm);
            out->mismatches += (uint64_t)mm;
            break;
        }
        case R_DIRECT:
            bad = bench_l3_direct(conn, keys[0], BU_KEY_LEN, j->vsize);
            break;
        case K_GET_L2: {
            size_t len = 0;
            bad = khala_cache_get(conn, keys[0], BU_KEY_LEN, cl->gbuf, DB_VALUE_MAX, &len) != 0 ||
                  len != j->vsize;
            break;
        }
        case K_PUT_PIPE: {
            raw_t *r = conn;
            khala__proto_buf_reset(&r->out);
            for (unsigned i = 0; i < p; i++) {
                khala_msg_t m;
                khala__proto_msg_init(&m);
                m.id = ++r->id;
                m.op = KHALA_OP_PUT;
                m.key.ptr = (const uint8_t *)keys[i];
                m.key.len = BU_KEY_LEN;
                m.value.ptr = (const uint8_t *)cl->val;
                m.value.len = j->vsize;
                m.has = KHALA_F_K | KHALA_F_V;
                if (khala__proto_encode_request(&r->out, &m, NULL, 0) != 0)
                    return out->errors++, 0;
            }
            if (raw_write_all(r->fd, r->out.data, r->out.len) != 0)
                return out->errors++, 0;
            for (unsigned i = 0; i < p; i++) {
                int rc;
                if (raw_reply(r, KHALA_OP_PUT, &rc) != 0)
                    return out->errors++, 0;
                bad += rc != 0;
            }
            done = p;
            break;
        }
        case R_SET:
        case R_GET_MISS:
        case R_GET: {
            redisReply *rep = j->kind == R_SET
                                  ? redisCommand(conn, "SET %b %b", keys[0], (size_t)BU_KEY_LEN,
                                                 cl->val, (size_t)j->vsize)
                                  : redisCommand(conn, "GET %s", keys[0]);
            bad = !rep || rep->type == REDIS_REPLY_ERROR ||
                  (j->kind == R_GET_MISS && rep->type != REDIS_REPLY_NIL) ||
                  (j->kind == R_GET && (rep->type != REDIS_REPLY_STRING || rep->len != j->vsize));
            if (rep)
                freeReplyObject(rep);
            break;
        }
        case R_SET_PIPE: {
            for (unsigned i = 0; i < p; i++)
                redisAppendCommand(conn, "SET %b %b", keys[i], (size_t)BU_KEY_LEN, cl->val,
                                   (size_t)j->vsize);
            for (unsigned i = 0; i < p; i++) {
                void *rep = NULL;
                if (redisGetReply(conn, &rep) != REDIS_OK || !rep)
                    return out->errors++, 0;
                bad += ((redisReply *)rep)->type == REDIS_REPLY_ERROR;
                freeReplyObject(rep);
            }
            done = p;
            break;
        }
    }
    record(out, bu_now_ns() - t0);
    out->errors += (uint64_t)bad;
    return done;
}

static void client(const db_job_t *j, unsigned idx, db_ctl_t *ctl, db_out_t *out) {
    db_client_t cl = {0};
    raw_t raw;
    int isredis = j->kind >= R_SET && j->kind != R_DIRECT;
    if (j->kind == R_DIRECT) {
        if (!(cl.conn = bench_direct_open(j->front, "cache_table"))) {
            out->rc = -1;
            snprintf(out->err, sizeof(out->err), "direct connection to the front failed");
        }
    } else if (isredis) {
        redisContext *rc =
            j->rport ? redisConnect("127.0.0.1", (int)j->rport) : redisConnectUnix(j->rsock);
        if (!rc || rc->err) {
            out->rc = -1;
            snprintf(out->err, sizeof(out->err), "redis connect: %.100s",
                     rc ? rc->errstr : "nomem");
        }
        cl.conn = rc;
    } else if (j->kind == K_PUT_PIPE) {
        if (raw_open(&raw, j->ksock, j->kname) != 0) {
            out->rc = -1;
            snprintf(out->err, sizeof(out->err), "raw connection to khalad failed");
        }
        cl.conn = &raw;
    } else {
        khala_cache_options_t co;
        khala_cache_options_init(&co);
        co.socket_path = j->ksock;
        khala_cache_t *c = NULL;
        if (khala_cache_open(j->kname, &co, &c) != 0) {
            out->rc = -1;
            snprintf(out->err, sizeof(out->err), "khala_cache_open: %s", khala_cache_errmsg(NULL));
        }
        cl.conn = c;
    }
    char *val = malloc(j->vsize ? j->vsize : 1);
    cl.gbuf = malloc(DB_VALUE_MAX);
    cl.keys = calloc(j->pipeline, 32);
    if (!val || !cl.gbuf || !cl.keys)
        out->rc = -1;
    else
        memset(val, 'v', j->vsize);
    cl.val = val;
    atomic_fetch_add(&ctl->ready, 1);
    if (out->rc == 0) {
        cl.rng = 0x1234567ull * (idx + 1) + (uint64_t)j->kind;
        while (!atomic_load(&ctl->go))
            ;
        uint64_t t0 = bu_now_ns();
        while (!atomic_load_explicit(&ctl->stop, memory_order_relaxed))
            out->ops += one(j, idx, &cl, out);
        out->ns = bu_now_ns() - t0;
    }
    if (j->kind == R_DIRECT)
        bench_direct_close(cl.conn);
    else if (isredis)
        redisFree(cl.conn);
    else if (j->kind == K_PUT_PIPE)
        raw_close(&raw);
    else
        khala_cache_close(cl.conn);
    _exit(0);
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* One timed round of `procs` clients running job. 0 or -1. */
static int run_round(const db_job_t *j, unsigned procs, double seconds, db_res_t *res) {
    size_t sz = sizeof(db_ctl_t) + 64 + (size_t)procs * sizeof(db_out_t);
    uint8_t *map = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) {
        perror("mmap");
        return -1;
    }
    db_ctl_t *ctl = (db_ctl_t *)map;
    db_out_t *outs = (db_out_t *)(map + sizeof(db_ctl_t) + 64);
    pid_t pids[DB_PROCS_MAX];
    unsigned n = 0;
    int rc = -1;
    fflush(NULL);
    for (; n < procs; n++) {
        if ((pids[n] = fork()) < 0) {
            perror("fork");
            goto out;
        }
        if (pids[n] == 0)
            client(j, n, ctl, &outs[n]);
    }
    uint64_t deadline = bu_now_ns() + DB_START_MS * 1000000ull;
    while (atomic_load(&ctl->ready) < procs) {
        if (bu_now_ns() > deadline) {
            fprintf(stderr, "clients did not connect within %d ms\n", DB_START_MS);
            goto out;
        }
        bu_sleep_ns(1000000);
    }
    atomic_store(&ctl->go, 1);
    bu_sleep_ns((uint64_t)(seconds * 1e9));
    rc = 0;
out:
    atomic_store(&ctl->stop, 1);
    atomic_store(&ctl->go, 1);
    for (unsigned i = 0; i < n; i++)
        waitpid(pids[i], NULL, 0);
    if (rc == 0) {
        size_t ns = 0;
        memset(res, 0, sizeof(*res));
        for (unsigned i = 0; i < procs; i++) {
            if (outs[i].rc != 0) {
                fprintf(stderr, "client %u: %s\n", i, outs[i].err);
                rc = -1;
            }
            if (outs[i].ns)
                res->ops_s += outs[i].ops * 1e9 / outs[i].ns;
            res->ops += outs[i].ops;
            res->errors += outs[i].errors;
            res->mismatches += outs[i].mismatches;
            ns += outs[i].nsamples < DB_SAMPLES ? outs[i].nsamples : DB_SAMPLES;
        }
        uint32_t *all = malloc((ns ? ns : 1) * sizeof(uint32_t));
        if (!all) {
            rc = -1;
        } else {
            size_t k = 0;
            for (unsigned i = 0; i < procs; i++) {
                size_t m = outs[i].nsamples < DB_SAMPLES ? outs[i].nsamples : DB_SAMPLES;
                memcpy(all + k, outs[i].samples, m * sizeof(uint32_t));
                k += m;
            }
            qsort(all, ns, sizeof(uint32_t), cmp_u32);
            res->p50_ns = ns ? all[(size_t)(ns * 0.50)] : 0;
            res->p99_ns = ns ? all[(size_t)(ns * 0.99)] : 0;
            free(all);
        }
    }
    munmap(map, sz);
    return rc;
}

/* ---- the subcommands -------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double med(double *v, unsigned n) {
    qsort(v, n, sizeof(v[0]), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The miss backends, in --backend order; bit i of the selection is MISS_NAMES[i]. */
enum { MB_NONE, MB_DISK, MB_REDIS, MB_L3DISK, MB_L3SURREAL, MB_COUNT };
static const char *const MISS_NAMES[MB_COUNT] = {"none", "disk", "redis", "l3disk", "l3surreal"};

/* A pair of timed loads: a khalad one and its Redis reference, run one after the other. */
typedef struct db_pair {
    const char *name;  /* "put", or the miss backend */
    const char *rname; /* the reference's label */
    db_job_t kj, rj;   /* khalad's load, the reference's */
    bench_khalad_t *k; /* the khalad; its L2 hits are checked when kj is K_GET_L2 */
    db_res_t kr[DB_ROUNDS_MAX], rr[DB_ROUNDS_MAX];
    uint64_t l2_hits[DB_ROUNDS_MAX]; /* or L3's hits, for K_GET_L3 */
} db_pair_t;

static void print_res(const char *cmd, const char *who, const char *backend, unsigned round,
                      const bench_opts_t *o, unsigned p, const db_res_t *r) {
    printf("round=%u bench=%s target=%s", round, cmd, who);
    if (backend)
        printf(" backend=%s", backend);
    printf(" procs=%u pipeline=%u ops_s=%.0f p50_ns=%.0f p99_ns=%.0f errors=%llu", o->procs, p,
           r->ops_s, r->p50_ns, r->p99_ns, (unsigned long long)r->errors);
}

/* One round of pair p: khalad, then the reference. 0 or -1. */
static int run_pair(const char *cmd, db_pair_t *p, unsigned i, const bench_opts_t *o,
                    unsigned pipeline) {
    int l3 = p->kj.kind == K_GET_L3, l2 = p->kj.kind == K_GET_L2 || l3;
    const char *lv = l3 ? "l3" : "l2";
    uint64_t h0 = 0, h1 = 0;
    if (l2 && bench_khalad_stat(p->k, lv, "hits", &h0) != 0)
        return -1;
    if (run_round(&p->kj, o->procs, o->seconds, &p->kr[i]) != 0)
        return -1;
    if (l2 && bench_khalad_stat(p->k, lv, "hits", &h1) != 0)
        return -1;
    if (run_round(&p->rj, o->procs, o->seconds, &p->rr[i]) != 0)
        return -1;
    int miss = !strcmp(cmd, "miss");
    print_res(cmd, "khalad", miss ? p->name : NULL, i, o, pipeline, &p->kr[i]);
    if (l2) {
        /* Every get of the round must have been an L2 hit: no L1 hit, no miss anywhere. */
        p->l2_hits[i] = h1 - h0;
        printf(" %s_hits=%llu", lv, (unsigned long long)p->l2_hits[i]);
        if (l3)
            printf(" lvl_mismatches=%llu", (unsigned long long)p->kr[i].mismatches);
        if (p->l2_hits[i] < p->kr[i].ops) {
            fprintf(stderr, "%s: %llu gets but only %llu %s hits\n", p->name,
                    (unsigned long long)p->kr[i].ops, (unsigned long long)p->l2_hits[i], lv);
            p->kr[i].errors += p->kr[i].ops - p->l2_hits[i];
        }
    }
    printf("\n");
    print_res(cmd, p->rname, miss ? p->name : NULL, i, o, pipeline, &p->rr[i]);
    printf("\n");
    fflush(stdout);
    return 0;
}

/* Medians over n rounds of pair p: [0] khalad ops/s, [1] ref ops/s, [2] khalad p50,
 * [3] ref p50, [4] khalad p99, [5] ref p99, [6] p50 ratio, [7] ops ratio (per-round ratios). */
static void pair_medians(const db_pair_t *p, unsigned n, double m[8]) {
    double v[8][DB_ROUNDS_MAX];
    for (unsigned i = 0; i < n; i++) {
        const db_res_t *k = &p->kr[i], *r = &p->rr[i];
        v[0][i] = k->ops_s;
        v[1][i] = r->ops_s;
        v[2][i] = k->p50_ns;
        v[3][i] = r->p50_ns;
        v[4][i] = k->p99_ns;
        v[5][i] = r->p99_ns;
        v[6][i] = r->p50_ns > 0 ? k->p50_ns / r->p50_ns : 0;
        v[7][i] = r->ops_s > 0 ? k->ops_s / r->ops_s : 0;
    }
    for (int f = 0; f < 8; f++)
        m[f] = med(v[f], n);
}

int bench_daemon(const char *cmd, const bench_opts_t *o, unsigned pipeline, const char *backends,
                 int redis_tcp) {
    int miss = !strcmp(cmd, "miss");
    unsigned sel = 0;
    if (redis_tcp && !miss) {
        fprintf(stderr, "%s: --redis-tcp is a miss option\n", cmd);
        return -1;
    }
    if (miss)
        pipeline = 1;
    if (o->procs > DB_PROCS_MAX || o->rounds > DB_ROUNDS_MAX || pipeline == 0 || pipeline > 4096) {
        fprintf(stderr, "%s: --procs at most %u, --pipeline 1..4096\n", cmd, DB_PROCS_MAX);
        return -1;
    }
    if (miss && o->value_size > DB_VALUE_MAX) {
        fprintf(stderr, "miss: --value-size at most %u\n", DB_VALUE_MAX);
        return -1;
    }
    if (miss &&
        bench_backends_parse(backends, MISS_NAMES, MB_COUNT, 1u << MB_DISK | 1u << MB_REDIS, &sel))
        return -1;
    if (!miss)
        sel = 1u << MB_NONE; /* put: one khalad, default levels */
    bench_env_t env;
    if (bench_env_start_tcp(&env, 1, redis_tcp) != 0)
        return -1;
    static bench_khalad_t ks[MB_COUNT];
    static db_pair_t pairs[MB_COUNT];
    unsigned np = 0, n = o->rounds;
    uint64_t errors = 0;
    int rc = -1;
    memset(ks, 0, sizeof(ks));
    /* A type kept off L1 (quota first: a type with a quota must live on l1). */
    static const char *const off_l1[] = {"type.consolidation.quota_pct=0",
                                         "type.consolidation.levels=l2"};
    /* l3surreal: L3 is SurrealDB through the bench's own front (bench/l3_bench.c). */
    static bench_front_t front;
    memset(&front, 0, sizeof(front));
    snprintf(front.h.dir, sizeof(front.h.dir), "%s/front", env.dir);
    if ((sel & 1u << MB_L3SURREAL) && bench_front_start(&front) != 0)
        goto out;
    for (int b = 0; b < MB_COUNT; b++) {
        if (!(sel & 1u << b))
            continue;
        int l3 = b == MB_L3DISK || b == MB_L3SURREAL, l2 = b == MB_DISK || b == MB_REDIS;
        bench_khalad_t *k = &ks[b];
        char l3buf[8][160];
        const char *l3sets[8];
        unsigned nl3 = l3 ? bench_l3_khalad_sets(&env, b == MB_L3SURREAL ? &front : NULL, o->keys,
                                                 l3buf, l3sets)
                          : 0;
        if (bench_khalad_init(&env, k, b == MB_REDIS ? BENCH_L2_REDIS : BENCH_L2_DISK, o->keys,
                              l2   ? off_l1
                              : l3 ? l3sets
                                   : NULL,
                              l2 ? 2 : nl3) != 0 ||
            bench_khalad_start(k) != 0)
            goto out;
        if (l2 || l3) {
            double ms;
            uint64_t t0 = bu_now_ns();
            if (bench_khalad_preload(k, "key:", o->keys, o->value_size, o->value_size,
                                     KHALA_TYPE_CONSOLIDATION, &ms) != 0 ||
                (l3 && bench_l3_wait_queue(k, "l3") != 0))
                goto out;
            ms = (double)(bu_now_ns() - t0) / 1e6;
            printf("preloaded %u keys into %s (%s) through khalad in %.0f ms\n", o->keys,
                   l3 ? "L3" : "L2", MISS_NAMES[b], ms);
        }
        db_pair_t *p = &pairs[np++];
        memset(p, 0, sizeof(*p));
        p->name = miss ? MISS_NAMES[b] : "put";
        p->k = k;
        p->kj = (db_job_t){k->h.sock, k->h.name, env.rsock,     env.rport, K_PUT,
                           pipeline,  o->keys,   o->value_size, &front};
        p->rj = p->kj;
        if (!miss) {
            p->kj.kind = pipeline > 1 ? K_PUT_PIPE : K_PUT;
            p->rj.kind = pipeline > 1 ? R_SET_PIPE : R_SET;
            p->rname = "redis";
        } else {
            p->kj.kind = l3 ? K_GET_L3 : l2 ? K_GET_L2 : K_MISS;
            p->rj.kind = b == MB_L3SURREAL ? R_DIRECT : l2 || l3 ? R_GET : R_GET_MISS;
            p->rname = b == MB_L3SURREAL ? "direct" : l2 || l3 ? "redis-get" : "redis-get-missing";
        }
    }
    if (miss && (sel & (1u << MB_DISK | 1u << MB_REDIS | 1u << MB_L3DISK)) &&
        redis_fill(env.rsock, o->keys, o->value_size) != 0)
        goto out;
    for (unsigned i = 0; i < n; i++)
        for (unsigned q = 0; q < np; q++)
            if (run_pair(cmd, &pairs[q], i, o, pipeline) != 0)
                goto out;
    for (unsigned q = 0; q < np; q++)
        for (unsigned i = 0; i < n; i++)
            errors += pairs[q].kr[i].errors + pairs[q].rr[i].errors;
    if (!miss) {
        double m[8];
        pair_medians(&pairs[0], n, m);
        printf("bench=%s procs=%u pipeline=%u keys=%u value=%u khalad_ops_s=%.0f "
               "redis_ops_s=%.0f khalad_p50_ns=%.0f redis_p50_ns=%.0f khalad_p99_ns=%.0f "
               "redis_p99_ns=%.0f p50_ratio=%.3f ops_ratio=%.3f errors=%llu rounds=%u\n",
               cmd, o->procs, pipeline, o->keys, o->value_size, m[0], m[1], m[2], m[3], m[4], m[5],
               m[6], m[7], (unsigned long long)errors, n);
    } else {
        printf("bench=miss procs=%u keys=%u value=%u", o->procs, o->keys, o->value_size);
        for (unsigned q = 0; q < np; q++) {
            double m[8];
            const char *b = pairs[q].name;
            pair_medians(&pairs[q], n, m);
            printf(" %s_ops_s=%.0f %s_ref_ops_s=%.0f %s_p50_ns=%.0f %s_ref_p50_ns=%.0f "
                   "%s_p99_ns=%.0f %s_ref_p99_ns=%.0f %s_p50_ratio=%.3f %s_ops_ratio=%.3f",
                   b, m[0], b, m[1], b, m[2], b, m[3], b, m[4], b, m[5], b, m[6], b, m[7]);
            if (pairs[q].kj.kind == K_GET_L3) {
                uint64_t mm = 0;
                for (unsigned i = 0; i < n; i++)
                    mm += pairs[q].kr[i].mismatches;
                printf(" %s_lvl_mismatches=%llu", b, (unsigned long long)mm);
            }
        }
        printf(" errors=%llu rounds=%u transport=%s\n", (unsigned long long)errors, n,
               env.rport ? "tcp" : "unix");
    }
    rc = 0;
out:
    for (int b = 0; b < MB_COUNT; b++)
        bench_khalad_stop(&ks[b], 1);
    bench_front_kill(&front);
    bench_env_stop(&env);
    return rc;
}
