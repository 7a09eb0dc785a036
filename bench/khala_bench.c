/*
 * khala-bench: benchmarks of the L1 and its references. See docs/benchmarks.md for what each
 * subcommand measures and the figures measured with it.
 *
 *   khala-bench l1-get    --procs N --keys K --value-size B --dist zipf|uniform --seconds S
 *   khala-bench l1-mixed  (the same) --write-rate W
 *   khala-bench plain-get (the same)
 *   khala-bench lmdb-get  (the same)
 *   khala-bench compare   (the same): l1-get, plain-get (inlined and fair) and lmdb-get in one
 *                         run, with ratios
 *   khala-bench replay    --trace FILE --format csv|oracle --capacity-items N [--policy lru]
 *   khala-bench predict   --trace FILE --format csv|oracle [--capacity-items N]
 *   khala-bench sweep     --items N
 *   khala-bench overhead  --items N --value-size B[-B2]
 *   khala-bench put       --procs N --keys K --value-size B --seconds S [--pipeline P]
 *   khala-bench miss      --procs N --seconds S [--backend none|disk|redis|l3disk|l3surreal,
 *                         ...|all]: gets that miss L1, answered by L2 or L3 (or by nobody),
 *                         against a Redis GET (l3surreal: a direct query of the front)
 *   khala-bench warm      --keys N [--backend disk|redis|all]: warming an empty L1 from L2
 *   khala-bench drain     --keys N [--backend redis,l3surreal]: write-behind drain rates to
 *                         L2 Redis and L3 SurrealDB (bench/l3_bench.c)
 *   khala-bench similar   --keys N --dim D [--count K] [--rounds R]: one semantic look-up on
 *                         the disk store (bench/similar_bench.c)
 *
 * Every subcommand prints one final line of key=value pairs; lines before it are for humans.
 * Speed is to be judged only by ratios measured in the same run: the machines are shared.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "daemon_bench.h"
#include "similar_bench.h"
#include "l3_bench.h"

/* predict: predictive warming on a trace (predict_replay.c). 0 or -1. */
int bench_predict(const bench_opts_t *o);

/* Most rounds a run may ask for. */
#define MAX_ROUNDS 64u

/* put: requests in flight per client (--pipeline). */
static unsigned g_pipeline = 1;
/* miss, warm: which L2 backends (--backend); NULL = the subcommand's default. */
static const char *g_backend;
/* miss: redis-server also on loopback TCP, reached over it by khalad's L2 and the reference. */
static int g_redis_tcp;
/* cleanup: rows per cleanup step ([l3] cleanup_batch). */
static uint32_t g_batch = 1000;
/* similar: the embeddings' dimension (--dim) and the matches asked per look-up (--count). */
static uint32_t g_dim = 384, g_count = 10;

static void usage(FILE *f) {
    fprintf(f, "usage: khala-bench l1-get|l1-mixed|plain-get|lmdb-get|compare [--procs N] "
               "[--keys K]\n"
               "                   [--value-size B] [--dist zipf|uniform] [--seconds S] "
               "[--write-rate W]\n"
               "                   [--rounds R]        (also: scale, 1 vs 2 readers)\n"
               "       khala-bench replay --trace FILE --format csv|oracle --capacity-items N "
               "[--policy s3fifo|lru]\n"
               "                   [--maintain-every R]\n"
               "       khala-bench predict --trace FILE --format csv|oracle "
               "[--capacity-items N] [--maintain-every R]\n"
               "       khala-bench sweep [--items N] [--value-size B] [--expired-pct P]\n"
               "       khala-bench overhead [--items N] [--value-size B | --value-size MIN-MAX]\n"
               "       khala-bench hitloop [--keys K] [--value-size B] [--rounds R]  (R passes "
               "of gets over K keys\n"
               "                   in one process, untimed: for callgrind, docs/benchmarks.md)\n"
               "       khala-bench put|miss [--procs N] [--keys K] [--value-size B] [--seconds S]\n"
               "                   [--rounds R] [--pipeline P]  (through a khalad it starts, "
               "against redis-server)\n"
               "                   miss: [--backend none|disk|redis|l3disk|l3surreal[,...]|all] "
               "(default disk,redis;\n"
               "                         keys 10000; l3surreal runs a SurrealDB front, its "
               "reference a direct query)\n"
               "                         [--redis-tcp]  (Redis also on loopback TCP: khalad's "
               "L2 and the GETs use it)\n"
               "       khala-bench cleanup [--items N] [--value-size B] [--batch N]  (L3's disk "
               "store: one full\n"
               "                   cleanup of N expired rows, then of N rows over a lowered "
               "max_entries; 100000, 100, 1000)\n"
               "       khala-bench drain [--keys N] [--value-size B] [--rounds R] "
               "[--backend redis|l3surreal[,...]]\n"
               "                   (write-behind embeddings queued while the level is down, "
               "then drained;\n"
               "                   default both, 10000 of 1536 bytes, 3 rounds)\n"
               "       khala-bench warm [--keys N] [--value-size MIN-MAX] [--rounds R]\n"
               "                   [--backend disk|redis[,...]|all]  (default both; 10000 items "
               "of 200-1000 bytes)\n"
               "       khala-bench similar [--keys N] [--dim D] [--count K] [--rounds R]  "
               "(default 10000 embeddings\n"
               "                   of dim 384, 10 matches a look-up, 3 rounds of 200 look-ups)\n");
}

static int parse(int argc, char **argv, bench_opts_t *o) {
    static const struct option opts[] = {{"procs", required_argument, NULL, 'p'},
                                         {"keys", required_argument, NULL, 'k'},
                                         {"value-size", required_argument, NULL, 'v'},
                                         {"dist", required_argument, NULL, 'd'},
                                         {"seconds", required_argument, NULL, 's'},
                                         {"write-rate", required_argument, NULL, 'w'},
                                         {"items", required_argument, NULL, 'i'},
                                         {"trace", required_argument, NULL, 't'},
                                         {"format", required_argument, NULL, 'f'},
                                         {"capacity-items", required_argument, NULL, 'c'},
                                         {"policy", required_argument, NULL, 'P'},
                                         {"maintain-every", required_argument, NULL, 'm'},
                                         {"expired-pct", required_argument, NULL, 'e'},
                                         {"rounds", required_argument, NULL, 'r'},
                                         {"pipeline", required_argument, NULL, 'L'},
                                         {"backend", required_argument, NULL, 'B'},
                                         {"redis-tcp", no_argument, NULL, 'T'},
                                         {"batch", required_argument, NULL, 'b'},
                                         {"dim", required_argument, NULL, 'D'},
                                         {"count", required_argument, NULL, 'K'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int ch;
    char *end;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
            case 'p':
                o->procs = (unsigned)strtoul(optarg, NULL, 10);
                break;
            case 'b':
                g_batch = (uint32_t)strtoul(optarg, NULL, 10);
                break;
            case 'k':
                o->keys = (uint32_t)strtoul(optarg, NULL, 10);
                break;
            case 'v':
                o->value_size = (uint32_t)strtoul(optarg, &end, 10);
                o->value_size_max =
                    *end == '-' ? (uint32_t)strtoul(end + 1, NULL, 10) : o->value_size;
                break;
            case 'd':
                if (strcmp(optarg, "zipf") == 0)
                    o->dist = BU_DIST_ZIPF;
                else if (strcmp(optarg, "uniform") == 0)
                    o->dist = BU_DIST_UNIFORM;
                else
                    return -1;
                break;
            case 's':
                o->seconds = strtod(optarg, NULL);
                break;
            case 'w':
                o->write_rate = strtoull(optarg, NULL, 10);
                break;
            case 'i':
                o->items = (uint32_t)strtoul(optarg, NULL, 10);
                break;
            case 't':
                o->trace = optarg;
                break;
            case 'f':
                if (strcmp(optarg, "oracle") == 0)
                    o->oracle = 1;
                else if (strcmp(optarg, "csv") == 0)
                    o->oracle = 0;
                else
                    return -1;
                break;
            case 'c':
                o->capacity = (uint32_t)strtoul(optarg, NULL, 10);
                break;
            case 'P':
                if (strcmp(optarg, "lru") == 0)
                    o->lru = 1;
                else if (strcmp(optarg, "s3fifo") == 0)
                    o->lru = 0;
                else
                    return -1;
                break;
            case 'r':
                o->rounds = (unsigned)strtoul(optarg, NULL, 10);
                break;
            case 'e':
                o->expired_pct = (uint32_t)strtoul(optarg, NULL, 10);
                break;
            case 'L':
                g_pipeline = (unsigned)strtoul(optarg, NULL, 10);
                break;
            case 'B':
                g_backend = optarg;
                break;
            case 'T':
                g_redis_tcp = 1;
                break;
            case 'D':
                g_dim = (uint32_t)strtoul(optarg, NULL, 10);
                break;
            case 'K':
                g_count = (uint32_t)strtoul(optarg, NULL, 10);
                break;
            case 'm':
                o->maintain_every = (uint32_t)strtoul(optarg, NULL, 10);
                break;
            default:
                return -1;
        }
    }
    if (o->procs == 0 || o->keys == 0 || o->seconds <= 0 || o->items == 0 || o->keys > 99999999u ||
        o->items > 99999999u || o->rounds == 0 || o->rounds > MAX_ROUNDS)
        return -1;
    return 0;
}

int bench_target_run(bench_target_t *t, const bu_workload_t *w, unsigned procs, double seconds,
                     uint64_t write_rate, bench_get_t *out) {
    return t->run(t, w, procs, seconds, write_rate, out);
}

void bench_target_free(bench_target_t *t) {
    if (t)
        t->free(t);
}

static const char *dist_name(int d) {
    return d == BU_DIST_ZIPF ? "zipf" : "uniform";
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, unsigned n) {
    qsort(v, n, sizeof(v[0]), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The per-field median of n rounds (fields taken independently). */
static bench_get_t median_get(const bench_get_t *g, unsigned n) {
    double a[MAX_ROUNDS], b[MAX_ROUNDS], c[MAX_ROUNDS], d[MAX_ROUNDS], e[MAX_ROUNDS];
    double f[MAX_ROUNDS];
    bench_get_t m = g[0];
    for (unsigned i = 0; i < n; i++) {
        a[i] = g[i].r.ops_s;
        b[i] = g[i].r.p50_ns;
        c[i] = g[i].r.p99_ns;
        d[i] = g[i].r.hit_ratio;
        e[i] = g[i].puts_s;
        f[i] = g[i].r.cpu_ops_s;
    }
    m.r.cpu_ops_s = median(f, n);
    m.r.ops_s = median(a, n);
    m.r.p50_ns = median(b, n);
    m.r.p99_ns = median(c, n);
    m.r.hit_ratio = median(d, n);
    m.puts_s = median(e, n);
    for (unsigned i = 1; i < n; i++) {
        m.r.errors += g[i].r.errors;
        m.put_fails += g[i].put_fails;
    }
    return m;
}

/* The median over rounds of x[i] / y[i] (of ops per CPU second with cpu != 0). */
static double median_ratio(const bench_get_t *x, const bench_get_t *y, unsigned n, int cpu) {
    double v[MAX_ROUNDS];
    for (unsigned i = 0; i < n; i++) {
        double a = cpu ? x[i].r.cpu_ops_s : x[i].r.ops_s, b = cpu ? y[i].r.cpu_ops_s : y[i].r.ops_s;
        v[i] = b > 0 ? a / b : 0;
    }
    return median(v, n);
}

static void print_get(const char *bench, const bench_opts_t *o, unsigned procs,
                      const bench_get_t *g) {
    printf("bench=%s procs=%u keys=%u value=%u dist=%s ops_s=%.0f p50_ns=%.0f p99_ns=%.0f "
           "hit_ratio=%.4f cpu_ops_s=%.0f",
           bench, procs, o->keys, o->value_size, dist_name(o->dist), g->r.ops_s, g->r.p50_ns,
           g->r.p99_ns, g->r.hit_ratio, g->r.cpu_ops_s);
    if (g->r.errors)
        printf(" errors=%llu", (unsigned long long)g->r.errors);
}

static void print_round(const char *bench, const bench_opts_t *o, unsigned procs, unsigned round,
                        const bench_get_t *g) {
    printf("round=%u ", round);
    print_get(bench, o, procs, g);
    printf("\n");
    fflush(stdout);
}

static int run_get(const char *cmd, const bench_opts_t *o) {
    bu_workload_t w;
    bench_target_t *l1 = NULL, *pl = NULL, *lm = NULL;
    static bench_get_t g[5][MAX_ROUNDS];
    unsigned n = o->rounds;
    int rc = -1;
    if (bu_workload_make(&w, o->keys, o->dist, 0.99, 12345) != 0) {
        fprintf(stderr, "out of memory building the workload\n");
        return -1;
    }
    int is_l1 = !strcmp(cmd, "l1-get") || !strcmp(cmd, "l1-mixed") || !strcmp(cmd, "scale") ||
                !strcmp(cmd, "compare");
    int is_plain = !strcmp(cmd, "plain-get") || !strcmp(cmd, "scale") || !strcmp(cmd, "compare");
    int is_lmdb = !strcmp(cmd, "lmdb-get") || !strcmp(cmd, "compare");
    if ((is_l1 && !(l1 = bench_l1_setup(o, &w))) ||
        (is_plain && !(pl = bench_plain_setup(o, &w))) ||
        (is_lmdb && !(lm = bench_lmdb_setup(o, &w))))
        goto out;
    double s = o->seconds;
    if (!strcmp(cmd, "l1-get") || !strcmp(cmd, "plain-get") || !strcmp(cmd, "lmdb-get")) {
        bench_target_t *t = l1 ? l1 : pl ? pl : lm;
        for (unsigned i = 0; i < n; i++) {
            if (bench_target_run(t, &w, o->procs, s, 0, &g[0][i]) != 0)
                goto out;
            if (n > 1)
                print_round(cmd, o, o->procs, i, &g[0][i]);
        }
        bench_get_t m = median_get(g[0], n);
        print_get(cmd, o, o->procs, &m);
        printf(" rounds=%u\n", n);
    } else if (!strcmp(cmd, "l1-mixed")) {
        /* Rounds alternate: reads alone, then reads with the writer at the rate. */
        for (unsigned i = 0; i < n; i++) {
            if (bench_target_run(l1, &w, o->procs, s, 0, &g[0][i]) != 0 ||
                bench_target_run(l1, &w, o->procs, s, o->write_rate, &g[1][i]) != 0)
                goto out;
            print_round("l1-get", o, o->procs, i, &g[0][i]);
            print_round("l1-mixed", o, o->procs, i, &g[1][i]);
        }
        bench_get_t b = median_get(g[0], n), m = median_get(g[1], n);
        print_get("l1-mixed", o, o->procs, &m);
        printf(" write_rate=%llu puts_s=%.0f put_fails=%llu base_ops_s=%.0f slowdown_pct=%.1f "
               "cpu_slowdown_pct=%.1f rounds=%u\n",
               (unsigned long long)o->write_rate, m.puts_s, (unsigned long long)m.put_fails,
               b.r.ops_s, (1 - median_ratio(g[1], g[0], n, 0)) * 100,
               (1 - median_ratio(g[1], g[0], n, 1)) * 100, n);
    } else if (!strcmp(cmd, "scale")) {
        /* Rounds alternate 1 and 2 readers over the L1 and over the plain table. */
        for (unsigned i = 0; i < n; i++) {
            if (bench_target_run(l1, &w, 1, s, 0, &g[0][i]) != 0 ||
                bench_target_run(l1, &w, 2, s, 0, &g[1][i]) != 0 ||
                bench_target_run(pl, &w, 1, s, 0, &g[2][i]) != 0 ||
                bench_target_run(pl, &w, 2, s, 0, &g[3][i]) != 0)
                goto out;
            print_round("l1-get", o, 1, i, &g[0][i]);
            print_round("l1-get", o, 2, i, &g[1][i]);
            print_round("plain-get", o, 1, i, &g[2][i]);
            print_round("plain-get", o, 2, i, &g[3][i]);
        }
        bench_get_t a = median_get(g[0], n), b = median_get(g[1], n), c = median_get(g[2], n),
                    d = median_get(g[3], n);
        printf("bench=scale keys=%u value=%u dist=%s l1_1p_ops_s=%.0f l1_2p_ops_s=%.0f "
               "plain_1p_ops_s=%.0f plain_2p_ops_s=%.0f l1_scale=%.3f plain_scale=%.3f "
               "l1_cpu_scale=%.3f plain_cpu_scale=%.3f rounds=%u\n",
               o->keys, o->value_size, dist_name(o->dist), a.r.ops_s, b.r.ops_s, c.r.ops_s,
               d.r.ops_s, median_ratio(g[1], g[0], n, 0), median_ratio(g[3], g[2], n, 0),
               median_ratio(g[1], g[0], n, 1), median_ratio(g[3], g[2], n, 1), n);
    } else {
        /* compare: the four on the same workload, alternating round by round. The plain table
         * is read twice: inlined into the loop (the limit) and through plain_get_fair (out of
         * line, runtime key length: how a worker calls khala_cache_get). */
        for (unsigned i = 0; i < n; i++) {
            int bad = bench_target_run(l1, &w, o->procs, s, 0, &g[0][i]) != 0 ||
                      bench_target_run(pl, &w, o->procs, s, 0, &g[1][i]) != 0;
            bench_plain_set_fair(pl, 1);
            bad = bad || bench_target_run(pl, &w, o->procs, s, 0, &g[3][i]) != 0;
            bench_plain_set_fair(pl, 0);
            if (bad || bench_target_run(lm, &w, o->procs, s, 0, &g[2][i]) != 0)
                goto out;
            print_round("l1-get", o, o->procs, i, &g[0][i]);
            print_round("plain-get", o, o->procs, i, &g[1][i]);
            print_round("plain-fair", o, o->procs, i, &g[3][i]);
            print_round("lmdb-get", o, o->procs, i, &g[2][i]);
        }
        bench_get_t a = median_get(g[0], n), b = median_get(g[1], n), c = median_get(g[2], n),
                    f = median_get(g[3], n);
        printf("bench=compare procs=%u keys=%u value=%u dist=%s l1_ops_s=%.0f plain_ops_s=%.0f "
               "lmdb_ops_s=%.0f l1_vs_plain=%.3f l1_vs_lmdb=%.3f l1_p50_ns=%.0f "
               "plain_p50_ns=%.0f lmdb_p50_ns=%.0f cpu_l1_vs_plain=%.3f cpu_l1_vs_lmdb=%.3f "
               "plain_fair_ops_s=%.0f plain_fair_p50_ns=%.0f l1_vs_plain_fair=%.3f "
               "cpu_l1_vs_plain_fair=%.3f rounds=%u\n",
               o->procs, o->keys, o->value_size, dist_name(o->dist), a.r.ops_s, b.r.ops_s,
               c.r.ops_s, median_ratio(g[0], g[1], n, 0), median_ratio(g[0], g[2], n, 0),
               a.r.p50_ns, b.r.p50_ns, c.r.p50_ns, median_ratio(g[0], g[1], n, 1),
               median_ratio(g[0], g[2], n, 1), f.r.ops_s, f.r.p50_ns,
               median_ratio(g[0], g[3], n, 0), median_ratio(g[0], g[3], n, 1), n);
    }
    rc = 0;
out:
    bench_target_free(l1);
    bench_target_free(pl);
    bench_target_free(lm);
    bu_workload_free(&w);
    return rc;
}

int main(int argc, char **argv) {
    bench_opts_t o = {.procs = 1,
                      .keys = 100000,
                      .value_size = 100,
                      .value_size_max = 100,
                      .dist = BU_DIST_ZIPF,
                      .seconds = 2,
                      .write_rate = 100000,
                      .items = 1000000,
                      .maintain_every = 1000,
                      .expired_pct = 100,
                      .rounds = 0};
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    /* compare, scale and l1-mixed alternate their runs over rounds; the others run once. */
    o.rounds = !strcmp(cmd, "compare") || !strcmp(cmd, "scale") || !strcmp(cmd, "l1-mixed") ||
                       !strcmp(cmd, "put") || !strcmp(cmd, "miss") || !strcmp(cmd, "warm") ||
                       !strcmp(cmd, "similar") || !strcmp(cmd, "drain")
                   ? 3
                   : 1;
    /* miss preloads its keys into L2 through khalad, warm its items: 10,000 by default; warm's
     * items are memory_entity-sized. */
    if (!strcmp(cmd, "miss") || !strcmp(cmd, "warm") || !strcmp(cmd, "similar") ||
        !strcmp(cmd, "drain"))
        o.keys = 10000;
    if (!strcmp(cmd, "drain"))
        o.value_size = 1536; /* a float32 vector of 384 */
    if (!strcmp(cmd, "cleanup"))
        o.items = 100000;
    if (!strcmp(cmd, "warm")) {
        o.value_size = 200;
        o.value_size_max = 1000;
    }
    if (parse(argc - 1, argv + 1, &o) != 0 || (g_redis_tcp && strcmp(cmd, "miss") != 0)) {
        usage(stderr);
        return 2;
    }
    if (strcmp(cmd, "hitloop") == 0) {
        uint64_t gets = 0, hits = 0;
        if (bench_hitloop(&o, &gets, &hits) != 0)
            return 1;
        printf("bench=hitloop keys=%u value=%u rounds=%u gets=%llu hits=%llu\n", o.keys,
               o.value_size, o.rounds, (unsigned long long)gets, (unsigned long long)hits);
        return 0;
    }
    bu_tsc_calibrate();
    if (strcmp(cmd, "l1-get") == 0 || strcmp(cmd, "l1-mixed") == 0 ||
        strcmp(cmd, "plain-get") == 0 || strcmp(cmd, "lmdb-get") == 0 ||
        strcmp(cmd, "compare") == 0 || strcmp(cmd, "scale") == 0)
        return run_get(cmd, &o) == 0 ? 0 : 1;
    if (strcmp(cmd, "put") == 0 || strcmp(cmd, "miss") == 0)
        return bench_daemon(cmd, &o, g_pipeline, g_backend, g_redis_tcp) == 0 ? 0 : 1;
    if (strcmp(cmd, "warm") == 0)
        return bench_warm(&o, g_backend) == 0 ? 0 : 1;
    if (strcmp(cmd, "drain") == 0)
        return bench_drain(&o, g_backend) == 0 ? 0 : 1;
    if (strcmp(cmd, "similar") == 0) {
        bench_similar_opts_t so = {
            .items = o.keys, .dim = g_dim, .queries = 200, .k = g_count, .rounds = o.rounds};
        if (so.k == 0 || so.k > KHALA_SIMILAR_K_MAX || so.dim == 0 ||
            so.dim > KHALA_SIMILAR_DIM_MAX) {
            usage(stderr);
            return 2;
        }
        return bench_similar(&so) == 0 ? 0 : 1;
    }
    if (strcmp(cmd, "replay") == 0) {
        bench_replay_t r;
        if (!o.trace || o.capacity == 0) {
            usage(stderr);
            return 2;
        }
        if (bench_replay(&o, &r) != 0)
            return 1;
        printf("bench=replay trace=%s format=%s policy=%s capacity=%u requests=%llu "
               "objects=%llu hits=%llu hit_ratio=%.4f\n",
               o.trace, o.oracle ? "oracle" : "csv", o.lru ? "lru" : "s3fifo", o.capacity,
               (unsigned long long)r.requests, (unsigned long long)r.objects,
               (unsigned long long)r.hits, r.requests ? (double)r.hits / r.requests : 0);
        return 0;
    }
    if (strcmp(cmd, "predict") == 0) {
        if (!o.trace) {
            usage(stderr);
            return 2;
        }
        return bench_predict(&o) == 0 ? 0 : 1;
    }
    if (strcmp(cmd, "sweep") == 0) {
        bench_sweep_t s;
        if (bench_sweep(&o, &s) != 0)
            return 1;
        printf("filled %u items (%u%% with ttl 1 ms) in %.2f s\n", o.items, o.expired_pct,
               s.fill_s);
        printf("bench=sweep items=%u expired_pct=%u removed=%llu ms=%.2f\n", o.items, o.expired_pct,
               (unsigned long long)s.removed, s.ms);
        return 0;
    }
    if (strcmp(cmd, "cleanup") == 0) {
        if (g_batch == 0 || o.items == 0) {
            usage(stderr);
            return 2;
        }
        for (int c = BENCH_CLEANUP_EXPIRED; c <= BENCH_CLEANUP_OVER; c++) {
            bench_cleanup_t r;
            if (bench_cleanup(&o, (bench_cleanup_case_t)c, g_batch, &r) != 0)
                return 1;
            printf("bench=cleanup case=%s rows=%llu value=%u batch=%u steps=%u ms=%.2f "
                   "cpu_ms=%.2f max_step_ms=%.2f fill_s=%.2f\n",
                   c == BENCH_CLEANUP_EXPIRED ? "expired" : "over", (unsigned long long)r.rows,
                   o.value_size, g_batch, r.steps, r.ms, r.cpu_ms, r.max_step_ms, r.fill_s);
        }
        return 0;
    }
    if (strcmp(cmd, "overhead") == 0) {
        bench_overhead_t v;
        if (bench_overhead(&o, &v) != 0)
            return 1;
        double bpi = (double)v.item_bytes / v.items, ppi = (double)v.payload_bytes / v.items;
        printf("bench=overhead items=%llu value=%u-%u key=%u bytes_per_item=%.1f "
               "payload_per_item=%.1f overhead_pct=%.1f meta_per_item=%.1f "
               "meta_resident_per_item=%.1f\n",
               (unsigned long long)v.items, o.value_size, o.value_size_max, BU_KEY_LEN, bpi, ppi,
               (bpi - ppi) * 100.0 / ppi, v.meta_per_item, v.meta_resident_per_item);
        return 0;
    }
    fprintf(stderr, "unknown subcommand '%s'\n", cmd);
    usage(stderr);
    return 2;
}
