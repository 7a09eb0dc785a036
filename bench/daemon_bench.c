/*
 * put / miss: what a call through khalad costs, against Redis on the same machine in the same
 * run (daemon_bench.h).
 *
 * The bench starts its own khalad (KHALAD_PATH, a unique cache name, a socket in a private
 * directory under /tmp) and its own redis-server (no port, a Unix socket, no persistence), then
 * alternates timed rounds: khalad, then Redis, with the same number of forked clients and the
 * same load. Both servers are stopped at the end, on error paths too (and, through
 * PR_SET_PDEATHSIG, if the bench itself dies).
 *
 * Loads, per client:
 *   put, pipeline 1   khala_cache_put of a random key of K, value B bytes   | SET
 *   put, pipeline P   P put frames (lib/proto.h) on a raw socket, then the  | P SET appended,
 *                     P replies                                             | then P replies
 *   miss              khala_cache_get of a key never put: L1 misses, khalad | GET of a missing
 *                     answers "not found"                                   | key
 * Every round trip (every batch with P > 1) is timed with the monotonic clock.
 */
#include "daemon_bench.h"

#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "khala/cache.h"
#include "khala/error.h"
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

enum { K_PUT, K_PUT_PIPE, K_MISS, R_SET, R_SET_PIPE, R_GET_MISS };

typedef struct db_out {
    uint64_t ops, errors, ns, nsamples;
    int rc;
    char err[124];
    uint32_t samples[DB_SAMPLES];
} db_out_t;

typedef struct db_ctl {
    atomic_uint ready, go, stop;
} db_ctl_t;

typedef struct db_env {
    char dir[64], name[64], ksock[108], rsock[108];
    pid_t khalad, redis;
} db_env_t;

typedef struct db_res {
    double ops_s, p50_ns, p99_ns;
    uint64_t errors;
} db_res_t;

/* ---- servers ---------------------------------------------------------------------------- */

static void quiet_child(void) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
        dup2(devnull, 1);
        if (!getenv("KHALA_BENCH_VERBOSE"))
            dup2(devnull, 2);
    }
}

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

/* Wait (bounded) until path accepts a connection; 0, or -1 if pid exited or time ran out. */
static int wait_listen(const char *what, pid_t pid, const char *path) {
    for (int i = 0; i < DB_START_MS / 10; i++) {
        int fd = sock_connect(path);
        if (fd >= 0) {
            close(fd);
            return 0;
        }
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            fprintf(stderr, "%s exited at start (KHALA_BENCH_VERBOSE=1 shows its stderr)\n", what);
            return -2;
        }
        bu_sleep_ns(10 * 1000000ull);
    }
    fprintf(stderr, "%s did not listen on %s within %d ms\n", what, path, DB_START_MS);
    return -1;
}

static void stop_server(pid_t *pid) {
    if (*pid > 0) {
        kill(*pid, SIGTERM);
        waitpid(*pid, NULL, 0);
        *pid = 0;
    }
}

static void env_stop(db_env_t *e) {
    stop_server(&e->khalad);
    stop_server(&e->redis);
    if (e->name[0])
        khala__seg_unlink(e->name);
    unlink(e->ksock);
    unlink(e->rsock);
    if (e->dir[0])
        rmdir(e->dir);
}

static int env_start(db_env_t *e, int want_redis) {
    memset(e, 0, sizeof(*e));
    snprintf(e->dir, sizeof(e->dir), "/tmp/khala-bench-%d", (int)getpid());
    snprintf(e->name, sizeof(e->name), "khbench%d", (int)getpid());
    snprintf(e->ksock, sizeof(e->ksock), "%s/khalad.sock", e->dir);
    snprintf(e->rsock, sizeof(e->rsock), "%s/redis.sock", e->dir);
    if (mkdir(e->dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "mkdir %s: %s\n", e->dir, strerror(errno));
        e->dir[0] = 0;
        return -1;
    }
    fflush(NULL);
    if ((e->khalad = fork()) == 0) {
        char set[160];
        snprintf(set, sizeof(set), "cache.socket=%s", e->ksock);
        quiet_child();
        execl(KHALAD_PATH, "khalad", "--foreground", "--name", e->name, "--set", set, (char *)NULL);
        _exit(127);
    }
    if (e->khalad < 0 || wait_listen("khalad", e->khalad, e->ksock) != 0)
        goto fail;
    if (want_redis) {
        if ((e->redis = fork()) == 0) {
            quiet_child();
            execlp("redis-server", "redis-server", "--port", "0", "--unixsocket", e->rsock,
                   "--save", "", "--appendonly", "no", (char *)NULL);
            _exit(127);
        }
        if (e->redis < 0 || wait_listen("redis-server", e->redis, e->rsock) != 0)
            goto fail;
    }
    return 0;
fail:
    if (e->khalad < 0)
        e->khalad = 0;
    if (e->redis < 0)
        e->redis = 0;
    env_stop(e);
    return -1;
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

/* ---- clients ------------------------------------------------------------------------------- */

typedef struct db_job {
    const db_env_t *env;
    int kind;
    unsigned pipeline;
    uint32_t keys, vsize;
} db_job_t;

static void key_of(char *k, uint32_t i) {
    snprintf(k, BU_KEY_STRIDE, "key:%08u", i);
}

static void record(db_out_t *out, uint64_t d) {
    out->samples[out->nsamples++ & (DB_SAMPLES - 1)] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
}

/* One timed request (or batch) of the job; ops done, or 0 on a failure counted in out. */
static unsigned one(const db_job_t *j, unsigned idx, uint64_t *seq, uint64_t *rng, void *conn,
                    const char *val, char (*keys)[32], db_out_t *out) {
    unsigned p = j->pipeline;
    for (unsigned i = 0; i < (j->kind == K_PUT_PIPE || j->kind == R_SET_PIPE ? p : 1); i++) {
        if (j->kind == K_MISS || j->kind == R_GET_MISS)
            snprintf(keys[i], 32, "miss:%u:%llu", idx, (unsigned long long)(*seq)++);
        else
            key_of(keys[i], (uint32_t)(bu_rand(rng) % j->keys));
    }
    uint64_t t0 = bu_now_ns();
    unsigned done = 1;
    int bad = 0;
    switch (j->kind) {
        case K_PUT:
            bad = khala_cache_put(conn, keys[0], BU_KEY_LEN, val, j->vsize, NULL, NULL) != 0;
            break;
        case K_MISS: {
            char buf[16];
            bad = khala_cache_get(conn, keys[0], strlen(keys[0]), buf, sizeof(buf), NULL) !=
                  KHALA_ENOTFOUND;
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
                m.value.ptr = (const uint8_t *)val;
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
        case R_GET_MISS: {
            redisReply *rep = j->kind == R_SET
                                  ? redisCommand(conn, "SET %b %b", keys[0], (size_t)BU_KEY_LEN,
                                                 val, (size_t)j->vsize)
                                  : redisCommand(conn, "GET %s", keys[0]);
            bad = !rep || rep->type == REDIS_REPLY_ERROR ||
                  (j->kind == R_GET_MISS && rep->type != REDIS_REPLY_NIL);
            if (rep)
                freeReplyObject(rep);
            break;
        }
        case R_SET_PIPE: {
            for (unsigned i = 0; i < p; i++)
                redisAppendCommand(conn, "SET %b %b", keys[i], (size_t)BU_KEY_LEN, val,
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
    void *conn = NULL;
    raw_t raw;
    int isredis = j->kind >= R_SET;
    if (isredis) {
        redisContext *rc = redisConnectUnix(j->env->rsock);
        if (!rc || rc->err) {
            out->rc = -1;
            snprintf(out->err, sizeof(out->err), "redis connect: %.100s",
                     rc ? rc->errstr : "nomem");
        }
        conn = rc;
    } else if (j->kind == K_PUT_PIPE) {
        if (raw_open(&raw, j->env->ksock, j->env->name) != 0) {
            out->rc = -1;
            snprintf(out->err, sizeof(out->err), "raw connection to khalad failed");
        }
        conn = &raw;
    } else {
        khala_cache_options_t co;
        khala_cache_options_init(&co);
        co.socket_path = j->env->ksock;
        khala_cache_t *c = NULL;
        if (khala_cache_open(j->env->name, &co, &c) != 0) {
            out->rc = -1;
            snprintf(out->err, sizeof(out->err), "khala_cache_open: %s", khala_cache_errmsg(NULL));
        }
        conn = c;
    }
    char *val = malloc(j->vsize ? j->vsize : 1);
    char(*keys)[32] = calloc(j->pipeline, 32);
    if (!val || !keys)
        out->rc = -1;
    else
        memset(val, 'v', j->vsize);
    atomic_fetch_add(&ctl->ready, 1);
    if (out->rc == 0) {
        uint64_t seq = 0, rng = 0x1234567ull * (idx + 1) + (uint64_t)j->kind;
        while (!atomic_load(&ctl->go))
            ;
        uint64_t t0 = bu_now_ns();
        while (!atomic_load_explicit(&ctl->stop, memory_order_relaxed))
            out->ops += one(j, idx, &seq, &rng, conn, val, keys, out);
        out->ns = bu_now_ns() - t0;
    }
    if (isredis)
        redisFree(conn);
    else if (j->kind == K_PUT_PIPE)
        raw_close(&raw);
    else
        khala_cache_close(conn);
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
            res->errors += outs[i].errors;
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

static void print_res(const char *cmd, const char *who, unsigned round, const bench_opts_t *o,
                      unsigned p, const db_res_t *r) {
    printf("round=%u bench=%s target=%s procs=%u pipeline=%u ops_s=%.0f p50_ns=%.0f p99_ns=%.0f "
           "errors=%llu\n",
           round, cmd, who, o->procs, p, r->ops_s, r->p50_ns, r->p99_ns,
           (unsigned long long)r->errors);
    fflush(stdout);
}

int bench_daemon(const char *cmd, const bench_opts_t *o, unsigned pipeline) {
    int miss = !strcmp(cmd, "miss");
    if (miss)
        pipeline = 1;
    if (o->procs > DB_PROCS_MAX || o->rounds > DB_ROUNDS_MAX || pipeline == 0 || pipeline > 4096) {
        fprintf(stderr, "%s: --procs at most %u, --pipeline 1..4096\n", cmd, DB_PROCS_MAX);
        return -1;
    }
    db_env_t env;
    if (env_start(&env, 1) != 0)
        return -1;
    db_job_t kj = {&env,
                   miss           ? K_MISS
                   : pipeline > 1 ? K_PUT_PIPE
                                  : K_PUT,
                   pipeline, o->keys, o->value_size};
    db_job_t rj = kj;
    rj.kind = miss ? R_GET_MISS : pipeline > 1 ? R_SET_PIPE : R_SET;
    unsigned n = o->rounds;
    db_res_t k[DB_ROUNDS_MAX], r[DB_ROUNDS_MAX];
    double v[6][DB_ROUNDS_MAX];
    uint64_t errors = 0;
    int rc = -1;
    for (unsigned i = 0; i < n; i++) {
        if (run_round(&kj, o->procs, o->seconds, &k[i]) != 0 ||
            run_round(&rj, o->procs, o->seconds, &r[i]) != 0)
            goto out;
        print_res(cmd, "khalad", i, o, pipeline, &k[i]);
        print_res(cmd, "redis", i, o, pipeline, &r[i]);
        errors += k[i].errors + r[i].errors;
        v[0][i] = k[i].ops_s;
        v[1][i] = r[i].ops_s;
        v[2][i] = k[i].p50_ns;
        v[3][i] = r[i].p50_ns;
        v[4][i] = r[i].p50_ns > 0 ? k[i].p50_ns / r[i].p50_ns : 0;
        v[5][i] = r[i].ops_s > 0 ? k[i].ops_s / r[i].ops_s : 0;
    }
    double p99k[DB_ROUNDS_MAX], p99r[DB_ROUNDS_MAX];
    for (unsigned i = 0; i < n; i++) {
        p99k[i] = k[i].p99_ns;
        p99r[i] = r[i].p99_ns;
    }
    printf("bench=%s procs=%u pipeline=%u keys=%u value=%u khalad_ops_s=%.0f redis_ops_s=%.0f "
           "khalad_p50_ns=%.0f redis_p50_ns=%.0f khalad_p99_ns=%.0f redis_p99_ns=%.0f "
           "p50_ratio=%.3f ops_ratio=%.3f errors=%llu rounds=%u\n",
           cmd, o->procs, pipeline, o->keys, o->value_size, med(v[0], n), med(v[1], n),
           med(v[2], n), med(v[3], n), med(p99k, n), med(p99r, n), med(v[4], n), med(v[5], n),
           (unsigned long long)errors, n);
    rc = 0;
out:
    env_stop(&env);
    return rc;
}
