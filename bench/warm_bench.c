/*
 * warm: how long khalad takes to warm an empty L1 from L2, by keys and by prefix
 * (daemon_bench.h, bench_warm()).
 *
 * For each backend (disk, redis) the bench runs one khalad (daemon_bench.c: its own name,
 * socket and [l2] path; the redis backend uses the bench's redis-server, database 1) and puts N
 * items through it: keys "entity:%08u", type memory_entity (levels l1,l2,l3 by default), values
 * of 200 to 1000 bytes spread by a hash of the key's number (bench_value_size()), write-behind,
 * then waits until the L2 write queue is empty. Then, round by round and backend by backend:
 *
 *   1. restart khalad with an empty L1: SIGTERM, unlink its L1 segment, start again (a flush
 *      would empty L2 too), and check that its stats show 0 L1 items;
 *   2. on a fresh connection (lib/channel.h, hello not timed), time warming by keys: warm
 *      requests of KHALA_PROTO_ARRAY_MAX (1024) keys each, one after the other, until all N
 *      were sent; the replies' counts are summed;
 *   3. check: khalad's stats show N L1 items, and a worker handle reads every key with
 *      khala_cache_get, with the right length and bytes, all of them L1 hits (the handle's own
 *      counters: N hits, 0 misses, so khalad was never asked);
 *   4. restart with an empty L1 again, and time warming by prefix "entity:" the same way:
 *      warm requests with the prefix and the cursor of the previous reply, until the reply's
 *      cursor is 0 (one page is one L2 scan of KHALAD_WARM_BATCH keys); check as in 3.
 *
 * The figure is the wall time of the requests, in ms per N items; the final line gives the
 * median over rounds and the spread. The restarts are not timed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channel.h"
#include "daemon_bench.h"
#include "khala/error.h"
#include "khala/stats.h"
#include "proto.h"

/* Key prefix of the items, as a memory_entity's keys might read. */
#define WB_PREFIX "entity:"
/* Most pages a prefix warming may take before the bench calls it a runaway cursor. */
#define WB_PAGES_MAX 100000u
/* How long one warm request may take, in ms. */
#define WB_CALL_MS 30000
/* Most rounds. */
#define WB_ROUNDS_MAX 64u

enum { WB_DISK, WB_REDIS, WB_COUNT };
static const char *const WB_NAMES[WB_COUNT] = {"disk", "redis"};
enum { WB_BY_KEYS, WB_BY_PREFIX, WB_BY_COUNT };
static const char *const WB_BY[WB_BY_COUNT] = {"keys", "prefix"};

/* One timed warming. */
typedef struct wb_run {
    double ms;         /* wall time of the warm requests */
    uint64_t warmed;   /* sum of the replies' counts */
    uint64_t requests; /* warm requests sent (pages, for a prefix) */
} wb_run_t;

/* Stop khalad, unlink its L1 segment, start it again, and check that L1 is empty. 0 or -1. */
static int restart_empty(bench_khalad_t *k, double *ms) {
    uint64_t t0 = bu_now_ns(), items = 1;
    bench_khalad_stop(k, 1);
    if (bench_khalad_start(k) != 0 || bench_khalad_stat(k, "l1", "items", &items) != 0)
        return -1;
    *ms = (double)(bu_now_ns() - t0) / 1e6;
    if (items != 0) {
        fprintf(stderr, "%s restarted with %llu items in L1, expected none\n", k->h.name,
                (unsigned long long)items);
        return -1;
    }
    return 0;
}

/* Send one warm request on ch; its count added to r. 0 or -1. */
static int warm_call(const bench_khalad_t *k, khala_chan_t *ch, khala_msg_t *req, wb_run_t *r,
                     uint64_t *cursor) {
    char err[256];
    khala_msg_t rep;
    khala__proto_msg_init(&rep);
    int rc = khala__chan_call(ch, req, &rep, WB_CALL_MS, err, sizeof(err));
    if (rc == 0 && rep.rc != 0) {
        snprintf(err, sizeof(err), "%s", khala_strerror(rep.rc));
        rc = rep.rc;
    }
    if (rc == 0) {
        r->requests++;
        r->warmed += (rep.has & KHALA_F_COUNT) ? rep.count : 0;
        if (cursor)
            *cursor = (rep.has & KHALA_F_CURSOR) ? rep.cursor : 0;
    } else {
        fprintf(stderr, "warm request to %s failed: %s\n", k->h.name, err);
    }
    khala__proto_msg_free(&rep);
    return rc == 0 ? 0 : -1;
}

/* Warm every key by keys (requests of KHALA_PROTO_ARRAY_MAX keys) or by prefix (pages until
 * the cursor is 0), timed. 0 or -1. */
static int warm(const bench_khalad_t *k, int by, const khala_bytes_t *keys, uint32_t n,
                wb_run_t *r) {
    char err[256];
    khala_chan_t *ch = NULL;
    memset(r, 0, sizeof(*r));
    if (khala__chan_open(k->h.sock, k->h.name, WB_CALL_MS, &ch, err, sizeof(err)) != 0) {
        fprintf(stderr, "connecting to %s: %s\n", k->h.name, err);
        return -1;
    }
    int rc = 0;
    uint64_t t0 = bu_now_ns();
    if (by == WB_BY_KEYS) {
        for (uint32_t off = 0; off < n && rc == 0; off += KHALA_PROTO_ARRAY_MAX) {
            khala_msg_t req;
            khala__proto_msg_init(&req);
            req.op = KHALA_OP_WARM;
            req.keys = keys + off;
            req.nkeys = n - off < KHALA_PROTO_ARRAY_MAX ? n - off : KHALA_PROTO_ARRAY_MAX;
            req.has = KHALA_F_KEYS;
            rc = warm_call(k, ch, &req, r, NULL);
        }
    } else {
        uint64_t cursor = 0;
        do {
            khala_msg_t req;
            khala__proto_msg_init(&req);
            req.op = KHALA_OP_WARM;
            req.prefix.ptr = (const uint8_t *)WB_PREFIX;
            req.prefix.len = sizeof(WB_PREFIX) - 1;
            req.cursor = cursor;
            req.has = KHALA_F_PREFIX | (cursor ? KHALA_F_CURSOR : 0);
            rc = warm_call(k, ch, &req, r, &cursor);
        } while (rc == 0 && cursor != 0 && r->requests < WB_PAGES_MAX);
        if (rc == 0 && cursor != 0) {
            fprintf(stderr, "%s: prefix warming still had a cursor after %u pages\n", k->h.name,
                    WB_PAGES_MAX);
            rc = -1;
        }
    }
    r->ms = (double)(bu_now_ns() - t0) / 1e6;
    khala__chan_close(ch);
    return rc;
}

/* Check that every item is in L1 and served from it: khalad's L1 item count, then each key
 * read by a worker handle, with its length and bytes, and the handle's counters (all hits, so
 * khalad was never asked). 0, or -1 after printing what was wrong. */
static int verify(const bench_khalad_t *k, const khala_bytes_t *keys, uint32_t n, uint32_t vmin,
                  uint32_t vmax, uint64_t *l1_items) {
    if (bench_khalad_stat(k, "l1", "items", l1_items) != 0)
        return -1;
    khala_cache_options_t co;
    khala_cache_options_init(&co);
    co.socket_path = k->h.sock;
    khala_cache_t *c = NULL;
    if (khala_cache_open(k->h.name, &co, &c) != 0) {
        fprintf(stderr, "khala_cache_open %s: %s\n", k->h.name, khala_cache_errmsg(NULL));
        return -1;
    }
    char *buf = malloc(vmax ? vmax : 1);
    uint64_t bad = 0;
    for (uint32_t i = 0; buf && i < n; i++) {
        size_t len = 0;
        uint32_t want = bench_value_size(i, vmin, vmax);
        char b = bench_value_byte(i);
        int rc = khala_cache_get(c, keys[i].ptr, keys[i].len, buf, vmax, &len);
        if (rc != 0 || len != want || (len && (buf[0] != b || buf[len - 1] != b)))
            bad++;
    }
    khala_cache_stats_t st = {0};
    (void)khala_cache_stats(c, &st);
    khala_cache_close(c);
    free(buf);
    if (!buf || bad || st.hits != n || st.misses != 0 || *l1_items != n) {
        fprintf(stderr,
                "%s: after warming, L1 holds %llu items of %u; a worker read %llu wrong values, "
                "%llu L1 hits and %llu L1 misses\n",
                k->h.name, (unsigned long long)*l1_items, n, (unsigned long long)bad,
                (unsigned long long)st.hits, (unsigned long long)st.misses);
        return -1;
    }
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int bench_warm(const bench_opts_t *o, const char *backends) {
    unsigned sel;
    uint32_t n = o->keys, vmin = o->value_size, vmax = o->value_size_max;
    if (bench_backends_parse(backends, WB_NAMES, WB_COUNT, (1u << WB_COUNT) - 1, &sel) != 0)
        return -1;
    if (o->rounds > WB_ROUNDS_MAX || vmax < vmin) {
        fprintf(stderr, "warm: --rounds at most %u, --value-size MIN-MAX with MIN <= MAX\n",
                WB_ROUNDS_MAX);
        return -1;
    }
    /* The keys, built once: key i at text + i * 16, "entity:%08u" (15 bytes). */
    char *text = malloc((size_t)n * 16);
    khala_bytes_t *keys = malloc((size_t)n * sizeof(*keys));
    static bench_khalad_t ks[WB_COUNT];
    static wb_run_t runs[WB_COUNT][WB_BY_COUNT][WB_ROUNDS_MAX];
    bench_env_t env;
    int rc = -1;
    memset(ks, 0, sizeof(ks));
    if (!text || !keys) {
        fprintf(stderr, "out of memory\n");
        free(text);
        free(keys);
        return -1;
    }
    for (uint32_t i = 0; i < n; i++) {
        int len = snprintf(text + (size_t)i * 16, 16, WB_PREFIX "%08u", i);
        keys[i] = (khala_bytes_t){(const uint8_t *)text + (size_t)i * 16, (size_t)len};
    }
    if (bench_env_start(&env, (sel & 1u << WB_REDIS) != 0) != 0)
        goto out;
    for (int b = 0; b < WB_COUNT; b++) {
        double ms;
        if (!(sel & 1u << b))
            continue;
        if (bench_khalad_init(&env, &ks[b], b == WB_REDIS ? BENCH_L2_REDIS : BENCH_L2_DISK, n, NULL,
                              0) != 0 ||
            bench_khalad_start(&ks[b]) != 0 ||
            bench_khalad_preload(&ks[b], WB_PREFIX, n, vmin, vmax, KHALA_TYPE_MEMORY_ENTITY, &ms) !=
                0)
            goto out;
        printf("preloaded %u items of %u-%u bytes into L2 (%s) through khalad in %.0f ms\n", n,
               vmin, vmax, WB_NAMES[b], ms);
    }
    for (unsigned i = 0; i < o->rounds; i++) {
        for (int b = 0; b < WB_COUNT; b++) {
            if (!(sel & 1u << b))
                continue;
            for (int by = 0; by < WB_BY_COUNT; by++) {
                wb_run_t *r = &runs[b][by][i];
                double restart_ms;
                uint64_t items = 0;
                if (restart_empty(&ks[b], &restart_ms) != 0 || warm(&ks[b], by, keys, n, r) != 0 ||
                    verify(&ks[b], keys, n, vmin, vmax, &items) != 0)
                    goto out;
                printf("round=%u bench=warm backend=%s by=%s items=%u ms=%.1f warmed=%llu "
                       "requests=%llu l1_items=%llu restart_ms=%.0f\n",
                       i, WB_NAMES[b], WB_BY[by], n, r->ms, (unsigned long long)r->warmed,
                       (unsigned long long)r->requests, (unsigned long long)items, restart_ms);
                fflush(stdout);
            }
        }
    }
    printf("bench=warm items=%u value=%u-%u", n, vmin, vmax);
    for (int b = 0; b < WB_COUNT; b++) {
        if (!(sel & 1u << b))
            continue;
        for (int by = 0; by < WB_BY_COUNT; by++) {
            double v[WB_ROUNDS_MAX];
            unsigned m = o->rounds;
            for (unsigned i = 0; i < m; i++)
                v[i] = runs[b][by][i].ms;
            qsort(v, m, sizeof(v[0]), cmp_double);
            double mid = m % 2 ? v[m / 2] : (v[m / 2 - 1] + v[m / 2]) / 2;
            printf(" %s_%s_ms=%.1f %s_%s_min_ms=%.1f %s_%s_max_ms=%.1f %s_%s_requests=%llu",
                   WB_NAMES[b], WB_BY[by], mid, WB_NAMES[b], WB_BY[by], v[0], WB_NAMES[b],
                   WB_BY[by], v[m - 1], WB_NAMES[b], WB_BY[by],
                   (unsigned long long)runs[b][by][0].requests);
        }
    }
    printf(" rounds=%u\n", o->rounds);
    rc = 0;
out:
    for (int b = 0; b < WB_COUNT; b++)
        bench_khalad_stop(&ks[b], 1);
    bench_env_stop(&env);
    free(text);
    free(keys);
    return rc;
}
