/*
 * khala-bench's L3 pieces (bench/l3_bench.h; docs/benchmarks.md "Issue 12: L3").
 *
 * The front. The bench runs its own SurrealDB front (tests/support/surreal/front.mjs under node:
 * the real engine behind SurrealDB's HTTP API; started by tests/harness) on a free loopback port, with its store in the
 * bench's private directory, so that it can kill and restart it (drain) and read rows straight
 * from it (the direct reference) without meeting any other user's rows.
 *
 * miss, l3disk / l3surreal. A khalad whose type consolidation lives on L3 alone (levels = l3,
 * quota 0): a get misses L1, L2 is not a level of the type, and L3 answers (the disk store, or
 * SurrealDB through the driver's asynchronous reads); nothing is promoted (the type lives on no
 * level above). Every get checks the level in the reply (khala_cache_fetch()'s meta.level) and
 * counts a mismatch when it is not L3. The reference of l3surreal is `direct`: the same key's
 * row read from the same front with one POST /rpc carrying the driver's own SELECT by record id
 * (bound variables, the same headers, a keep-alive connection per client), the reply parsed;
 * l3disk keeps the Redis GET reference of the disk L2 case.
 *
 * drain. Write-behind writes queue only for levels with a journal (Redis as L2, SurrealDB as
 * L3); disk levels are written through even for write-behind types (daemon/store.c). So drain
 * measures the two journaled levels: with the level killed, o->keys embedding puts (embedding
 * is write-behind by default; levels l1,l2,l3) are acknowledged from L1 and the journals; then
 * the level is restarted and khalad's stats (section.queued_now and .drained, polled every 2 ms)
 * time the drain: from the sending of the first poll that sees writes drained (the poll before
 * saw none, so the drain began after it was sent) to an empty queue (the rate, without khalad's
 * reconnection backoff), and from the restart to an empty queue (with it). khalad answers stats
 * between ticks only, so the longest wait for an answer (stall_ms) is how long a tick's drain
 * held khalad's loop: no request of any client is answered meanwhile.
 */
#include "l3_bench.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "debug.h"
#include "khala/error.h"

/* Bound on a queue's drain. */
#define L3_DRAIN_MS 600000
/* Longest key, as hex. */
#define L3_HEX_MAX (2 * KHALA_KEY_MAX + 1)

/* ---- HTTP ------------------------------------------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf_t;

static size_t sbuf_write(char *ptr, size_t size, size_t n, void *arg) {
    sbuf_t *b = arg;
    size_t m = size * n;
    if (b->len + m + 1 > b->cap) {
        size_t cap = (b->len + m + 1) * 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return 0;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, ptr, m);
    b->len += m;
    b->p[b->len] = '\0';
    return m;
}

/* GET url; the status in *code, the body in b (reset first). 0, or -1 on a transport error. */
static int http_get(const char *url, long *code, sbuf_t *b) {
    CURL *c = curl_easy_init();
    if (!c)
        return -1;
    b->len = 0;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 1000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sbuf_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, code);
    curl_easy_cleanup(c);
    return rc == CURLE_OK ? 0 : -1;
}

/* ---- the front -------------------------------------------------------------------------- */

int bench_front_start(bench_front_t *f) {
    KHALA_ASSERT(f && f->h.dir[0] && f->h.pid == 0);
    f->h.verbose = getenv("KHALA_BENCH_VERBOSE") != NULL;
    if (harness_surreal_start(&f->h) != 0) {
        fprintf(stderr, "front: %s\n", f->h.err);
        return -1;
    }
    snprintf(f->base, sizeof(f->base), "http://127.0.0.1:%u", f->h.port);
    /* 3.x renamed type::thing to type::record; the driver picks it the same way. */
    char url[96];
    sbuf_t b = {0};
    long code = 0;
    snprintf(url, sizeof(url), "%s/version", f->base);
    f->rec = "type::record";
    if (http_get(url, &code, &b) == 0 && code == 200 && b.p &&
        (!strncmp(b.p, "surrealdb-1.", 12) || !strncmp(b.p, "surrealdb-2.", 12)))
        f->rec = "type::thing";
    free(b.p);
    return 0;
}

void bench_front_kill(bench_front_t *f) {
    harness_surreal_kill(&f->h);
}

/* ---- miss: the L3 cases -------------------------------------------------------------------- */

unsigned bench_l3_khalad_sets(const bench_env_t *e, const bench_front_t *f, uint32_t keys,
                              char buf[][160], const char **sets) {
    KHALA_ASSERT(e && buf && sets && (!f || f->h.url[0]));
    unsigned n = 0;
    unsigned long long cap = 2ull * keys < 100000 ? 100000 : 2ull * keys;
    if (f) {
        snprintf(buf[n++], 160, "l3.backend=surrealdb");
        snprintf(buf[n++], 160, "l3.surrealdb_url=%s", f->h.url);
    } else {
        snprintf(buf[n++], 160, "l3.backend=disk");
        snprintf(buf[n++], 160, "l3.path=%s/l3-%u", e->dir, e->seq);
    }
    snprintf(buf[n++], 160, "l3.max_entries=%llu", cap);
    snprintf(buf[n++], 160, "l3.queue_max=%llu", cap);
    /* A type kept off L1 and L2 (quota first: a type with a quota must live on l1). */
    snprintf(buf[n++], 160, "type.consolidation.quota_pct=0");
    snprintf(buf[n++], 160, "type.consolidation.levels=l3");
    for (unsigned i = 0; i < n; i++)
        sets[i] = buf[i];
    return n;
}

typedef struct l3_sink {
    size_t len;
    khala_level_t level;
} l3_sink_t;

static int l3_sink(void *arg, const void *val, size_t len, const khala_meta_t *meta) {
    l3_sink_t *s = arg;
    (void)val;
    s->len = len;
    s->level = meta->level;
    return 0;
}

int bench_l3_get(khala_cache_t *c, const char *key, size_t klen, uint32_t vsize, int *mismatch) {
    KHALA_ASSERT(c && key && mismatch);
    char buf[16];
    size_t len = 0;
    l3_sink_t s = {0, KHALA_LEVEL_NONE};
    *mismatch = 0;
    int rc = khala_cache_get_l1(c, key, klen, buf, sizeof(buf), &len, NULL);
    if (rc != KHALA_ENOTFOUND) {
        *mismatch = rc == 0 || rc == -ERANGE; /* L1 held it */
        return 1;
    }
    if (khala_cache_fetch(c, key, klen, l3_sink, &s) != 0 || s.len != vsize)
        return 1;
    *mismatch = s.level != KHALA_LEVEL_L3;
    return 0;
}

struct bench_direct {
    CURL *c;
    struct curl_slist *hdr;
    char url[96];
    char table[64];
    const char *rec;
    sbuf_t body;
};

bench_direct_t *bench_direct_open(const bench_front_t *f, const char *table) {
    KHALA_ASSERT(f && f->rec && table);
    bench_direct_t *d = calloc(1, sizeof(*d));
    if (!d || !(d->c = curl_easy_init())) {
        fprintf(stderr, "direct: cannot make a libcurl handle\n");
        free(d);
        return NULL;
    }
    snprintf(d->url, sizeof(d->url), "%s/rpc", f->base);
    snprintf(d->table, sizeof(d->table), "%s", table);
    d->rec = f->rec;
    static const char *const h[] = {"Accept: application/json", "Content-Type: application/json",
                                    "surreal-ns: khala", "surreal-db: cache", "Expect:"};
    for (size_t i = 0; i < sizeof(h) / sizeof(h[0]); i++)
        d->hdr = curl_slist_append(d->hdr, h[i]);
    curl_easy_setopt(d->c, CURLOPT_URL, d->url);
    curl_easy_setopt(d->c, CURLOPT_HTTPHEADER, d->hdr);
    curl_easy_setopt(d->c, CURLOPT_USERPWD, "root:root");
    curl_easy_setopt(d->c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
    curl_easy_setopt(d->c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(d->c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(d->c, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(d->c, CURLOPT_WRITEFUNCTION, sbuf_write);
    curl_easy_setopt(d->c, CURLOPT_WRITEDATA, &d->body);
    return d;
}

void bench_direct_close(bench_direct_t *d) {
    if (!d)
        return;
    curl_slist_free_all(d->hdr);
    curl_easy_cleanup(d->c);
    free(d->body.p);
    free(d);
}

/* Bytes a base64 text of n characters decodes to. */
static size_t b64_len(const char *s, size_t n) {
    size_t pad = (n > 0 && s[n - 1] == '=') + (n > 1 && s[n - 2] == '=');
    return n / 4 * 3 - pad;
}

int bench_l3_direct(bench_direct_t *d, const char *key, size_t klen, uint32_t vsize) {
    KHALA_ASSERT(d && key);
    static const char hexd[] = "0123456789abcdef";
    char hex[L3_HEX_MAX], req[1024];
    struct timespec ts;
    if (klen > KHALA_KEY_MAX)
        return 1;
    for (size_t i = 0; i < klen; i++) {
        hex[2 * i] = hexd[(unsigned char)key[i] >> 4];
        hex[2 * i + 1] = hexd[(unsigned char)key[i] & 15];
    }
    hex[2 * klen] = '\0';
    clock_gettime(CLOCK_REALTIME, &ts);
    long long now = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    /* The driver's statement (daemon/tier_surreal.c, get_from), with its variables. */
    int n = snprintf(req, sizeof(req),
                     "{\"id\":1,\"method\":\"query\",\"params\":[\"SELECT key, `type`, "
                     "<string> version AS version, data, expires FROM %s($tb, $k) WHERE "
                     "(expires = NONE OR expires > $now);\",{\"tb\":\"%s\",\"k\":\"%s\","
                     "\"now\":%lld}]}",
                     d->rec, d->table, hex, now);
    if (n < 0 || (size_t)n >= sizeof(req))
        return 1;
    d->body.len = 0;
    curl_easy_setopt(d->c, CURLOPT_POSTFIELDS, req);
    curl_easy_setopt(d->c, CURLOPT_POSTFIELDSIZE, (long)n);
    long code = 0;
    if (curl_easy_perform(d->c) != CURLE_OK)
        return 1;
    curl_easy_getinfo(d->c, CURLINFO_RESPONSE_CODE, &code);
    if (code != 200 || !d->body.p)
        return 1;
    json_t *root = json_loadb(d->body.p, d->body.len, 0, NULL);
    json_t *st = json_array_get(json_object_get(root, "result"), 0);
    json_t *row = json_array_get(json_object_get(st, "result"), 0);
    json_t *data = json_object_get(row, "data");
    int bad = !json_is_string(data) ||
              strcmp(json_string_value(json_object_get(st, "status")) ?: "", "OK") != 0 ||
              b64_len(json_string_value(data), json_string_length(data)) != vsize;
    json_decref(root);
    return bad;
}

int bench_l3_wait_queue(const bench_khalad_t *k, const char *section) {
    KHALA_ASSERT(k && section);
    for (uint64_t deadline = bu_now_ns() + L3_DRAIN_MS * 1000000ull;;) {
        uint64_t q;
        if (bench_khalad_stat(k, section, "queued_now", &q) != 0)
            return -1;
        if (q == 0)
            return 0;
        if (bu_now_ns() > deadline) {
            fprintf(stderr, "%s: %llu writes still queued for %s after %d ms\n", k->h.name,
                    (unsigned long long)q, section, L3_DRAIN_MS);
            return -1;
        }
        bu_sleep_ns(5 * 1000000ull);
    }
}

/* ---- drain ----------------------------------------------------------------------------------- */

enum { DR_REDIS, DR_SURREAL, DR_COUNT };
static const char *const DRAIN_NAMES[DR_COUNT] = {"redis", "l3surreal"};
static const char *const DRAIN_SECTION[DR_COUNT] = {"l2", "l3"};

typedef struct drain_res {
    double rate, total_rate, ms, total_ms, stall_ms;
    uint64_t drained;
} drain_res_t;

/* Put n embeddings key PREFIX%08u through khalad with the type's default mode (write-behind).
 * 0 or -1. */
static int put_embeddings(const bench_khalad_t *k, const char *prefix, uint32_t n, uint32_t vsize) {
    khala_cache_options_t co;
    khala_cache_options_init(&co);
    co.socket_path = k->h.sock;
    khala_cache_t *c = NULL;
    if (khala_cache_open(k->h.name, &co, &c) != 0) {
        fprintf(stderr, "drain: khala_cache_open: %s\n", khala_cache_errmsg(NULL));
        return -1;
    }
    float *vec = malloc(vsize);
    int rc = vec ? 0 : -1;
    khala_put_options_t po;
    khala_put_options_init(&po);
    po.type = KHALA_TYPE_EMBEDDING;
    for (uint32_t i = 0; rc == 0 && i < n; i++) {
        char key[64];
        int klen = snprintf(key, sizeof(key), "%s%08u", prefix, i);
        for (uint32_t j = 0; j < vsize / 4; j++)
            vec[j] = (float)((i * 31u + j * 17u) % 1000u) / 1000.0f;
        int prc = khala_cache_put(c, key, (size_t)klen, vec, vsize, &po, NULL);
        if (prc != 0) {
            fprintf(stderr, "drain: put %u refused: %s (%s)\n", i, khala_strerror(prc),
                    khala_cache_errmsg(c));
            rc = -1;
        }
    }
    free(vec);
    khala_cache_close(c);
    return rc;
}

/* Restart level b, then time its queue (n writes) to 0. 0 or -1. */
static int time_drain(bench_env_t *e, bench_front_t *f, const bench_khalad_t *k, int b, uint64_t n,
                      drain_res_t *r) {
    const char *sec = DRAIN_SECTION[b];
    uint64_t d0, q, we0, we1;
    if (bench_khalad_stat(k, sec, "queued_now", &q) != 0 ||
        bench_khalad_stat(k, sec, "drained", &d0) != 0 ||
        bench_khalad_stat(k, sec, "write_errors", &we0) != 0)
        return -1;
    if (q < n) {
        fprintf(stderr, "drain: only %llu of %llu writes queued for %s while it was down\n",
                (unsigned long long)q, (unsigned long long)n, sec);
        return -1;
    }
    uint64_t t0 = bu_now_ns();
    if (b == DR_REDIS ? harness_redis_start(&e->redis) != 0 : bench_front_start(f) != 0) {
        fprintf(stderr, "drain: restarting %s failed: %s\n", DRAIN_NAMES[b],
                b == DR_REDIS ? e->redis.err : "see above");
        return -1;
    }
    uint64_t t_first = 0, d_first = 0, deadline = bu_now_ns() + L3_DRAIN_MS * 1000000ull;
    r->stall_ms = 0;
    for (;;) {
        uint64_t d, now, s0 = bu_now_ns();
        if (bench_khalad_stat(k, sec, "queued_now", &q) != 0 ||
            bench_khalad_stat(k, sec, "drained", &d) != 0)
            return -1;
        now = bu_now_ns();
        /* The longest wait for a stats answer: how long khalad's loop was held by a tick. */
        if ((double)(now - s0) / 1e6 > r->stall_ms)
            r->stall_ms = (double)(now - s0) / 1e6;
        /* The drain began after this poll was sent (the poll before saw nothing drained):
         * khalad answers between ticks, so a poll sent while a tick drains waits for it. */
        if (!t_first && d > d0) {
            t_first = s0;
            d_first = d0;
        }
        if (q == 0) {
            r->drained = d - d0;
            r->total_ms = (double)(now - t0) / 1e6;
            r->ms = (double)(now - t_first) / 1e6;
            r->total_rate = r->total_ms > 0 ? (double)r->drained / r->total_ms * 1e3 : 0;
            r->rate = r->ms > 0 ? (double)(d - d_first) / r->ms * 1e3 : 0;
            break;
        }
        if (now > deadline) {
            fprintf(stderr, "drain: %llu writes still queued for %s after %d ms\n",
                    (unsigned long long)q, sec, L3_DRAIN_MS);
            return -1;
        }
        bu_sleep_ns(2 * 1000000ull);
    }
    if (r->drained < n) {
        fprintf(stderr, "drain: %s drained %llu writes of %llu\n", sec,
                (unsigned long long)r->drained, (unsigned long long)n);
        return -1;
    }
    /* Drained means written: no write failed, and (L3) the rows are in SurrealDB. */
    if (bench_khalad_stat(k, sec, "write_errors", &we1) != 0)
        return -1;
    if (we1 != we0) {
        fprintf(stderr, "drain: %llu writes to %s failed while draining\n",
                (unsigned long long)(we1 - we0), sec);
        return -1;
    }
    return 0;
}

/* The first and last embeddings of a round are rows of the front, with their size. 0 or -1. */
static int check_rows(const bench_front_t *f, const char *prefix, uint32_t n, uint32_t vsize) {
    bench_direct_t *d = bench_direct_open(f, "cache_table");
    int rc = d ? 0 : -1;
    for (uint32_t i = 0; rc == 0 && i<n; i += n - 1> 0 ? n - 1 : 1) {
        char key[64];
        int klen = snprintf(key, sizeof(key), "%s%08u", prefix, i);
        if (bench_l3_direct(d, key, (size_t)klen, vsize) != 0) {
            fprintf(stderr, "drain: %s is not in SurrealDB after the drain\n", key);
            rc = -1;
        }
    }
    bench_direct_close(d);
    return rc;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int bench_drain(const bench_opts_t *o, const char *backends) {
    KHALA_ASSERT(o);
    unsigned sel;
    if (o->value_size == 0 || o->value_size % 4 || o->value_size > 65536 || o->rounds > 64 ||
        o->keys == 0) {
        fprintf(stderr, "drain: --value-size must be a multiple of 4 in 4..65536 (a float32 "
                        "vector), --rounds at most 64, --keys at least 1\n");
        return -1;
    }
    if (bench_backends_parse(backends, DRAIN_NAMES, DR_COUNT, 3u, &sel) != 0)
        return -1;
    bench_env_t env;
    if (bench_env_start(&env, 1) != 0)
        return -1;
    bench_front_t f;
    memset(&f, 0, sizeof(f));
    snprintf(f.h.dir, sizeof(f.h.dir), "%s/front", env.dir);
    static drain_res_t res[DR_COUNT][64];
    bench_khalad_t k;
    memset(&k, 0, sizeof(k));
    int rc = -1;
    if ((sel & 1u << DR_SURREAL) && bench_front_start(&f) != 0)
        goto out;
    for (unsigned i = 0; i < o->rounds; i++) {
        /* L2 on Redis; L3 on SurrealDB when measured, else on the disk (written through). */
        char buf[8][160];
        const char *sets[8];
        unsigned ns = 0;
        if (sel & 1u << DR_SURREAL) {
            ns = bench_l3_khalad_sets(&env, &f, o->keys, buf, sets);
            ns -= 2; /* not the consolidation options: embedding keeps its levels */
        } else {
            ns = bench_l3_khalad_sets(&env, NULL, o->keys, buf, sets) - 2;
        }
        if (bench_khalad_init(&env, &k, BENCH_L2_REDIS, o->keys, sets, ns) != 0 ||
            bench_khalad_start(&k) != 0)
            goto out;
        for (int b = 0; b < DR_COUNT; b++)
            if (sel & 1u << b) {
                if (b == DR_REDIS)
                    harness_redis_kill(&env.redis);
                else
                    bench_front_kill(&f);
            }
        char prefix[32];
        snprintf(prefix, sizeof(prefix), "emb:%u:", i);
        double t0 = (double)bu_now_ns();
        if (put_embeddings(&k, prefix, o->keys, o->value_size) != 0)
            goto out;
        double put_ms = ((double)bu_now_ns() - t0) / 1e6;
        printf("round=%u bench=drain keys=%u value=%u put_ms=%.0f", i, o->keys, o->value_size,
               put_ms);
        for (int b = 0; b < DR_COUNT; b++) {
            if (!(sel & 1u << b))
                continue;
            drain_res_t *r = &res[b][i];
            if (time_drain(&env, &f, &k, b, o->keys, r) != 0 ||
                (b == DR_SURREAL && check_rows(&f, prefix, o->keys, o->value_size) != 0)) {
                printf("\n");
                goto out;
            }
            printf(" %s_drained=%llu %s_ms=%.0f %s_writes_s=%.0f %s_total_ms=%.0f "
                   "%s_total_writes_s=%.0f %s_stall_ms=%.0f",
                   DRAIN_NAMES[b], (unsigned long long)r->drained, DRAIN_NAMES[b], r->ms,
                   DRAIN_NAMES[b], r->rate, DRAIN_NAMES[b], r->total_ms, DRAIN_NAMES[b],
                   r->total_rate, DRAIN_NAMES[b], r->stall_ms);
        }
        printf("\n");
        fflush(stdout);
        bench_khalad_stop(&k, 1);
    }
    printf("bench=drain keys=%u value=%u", o->keys, o->value_size);
    for (int b = 0; b < DR_COUNT; b++) {
        if (!(sel & 1u << b))
            continue;
        double v[3][64];
        for (unsigned i = 0; i < o->rounds; i++) {
            v[0][i] = res[b][i].rate;
            v[1][i] = res[b][i].total_rate;
            v[2][i] = res[b][i].stall_ms;
        }
        for (int x = 0; x < 3; x++)
            qsort(v[x], o->rounds, sizeof(double), cmp_double);
        printf(" %s_writes_s=%.0f %s_writes_s_min=%.0f %s_writes_s_max=%.0f "
               "%s_total_writes_s=%.0f %s_stall_ms_max=%.0f",
               DRAIN_NAMES[b], v[0][o->rounds / 2], DRAIN_NAMES[b], v[0][0], DRAIN_NAMES[b],
               v[0][o->rounds - 1], DRAIN_NAMES[b], v[1][o->rounds / 2], DRAIN_NAMES[b],
               v[2][o->rounds - 1]);
    }
    printf(" rounds=%u\n", o->rounds);
    rc = 0;
out:
    bench_khalad_stop(&k, 1);
    bench_front_kill(&f);
    bench_env_stop(&env);
    return rc;
}
