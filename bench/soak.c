/*
 * khala-soak: many connected clients on one khalad for a fixed count of operations, to show that
 * khalad's memory stays flat and its latency steady under sustained load (issue 10; run by
 * scripts/soak.sh, minutes long, not in CI; figures in docs/reliability.md, "Soak").
 *
 *   khala-soak [--clients N] [--procs P] [--ops N] [--keys N] [--window-s S] [--value-max B]
 *
 * HOW IT WORKS
 *
 * It starts a private khalad (tests/harness, as the benchmarks do; L2 on disk in a private
 * directory) and forks P worker processes. Each opens N/P handles through the public client API
 * (include/khala/cache.h) and connects each at once (one put, then one get that claims its
 * reader slot), so khalad holds N connections for the whole run, then drives them round robin
 * with a fixed mix:
 *
 *   55 %  get of a key that was written (mostly an L1 hit, read from the shared segment)
 *   15 %  get of a key never written (a miss: a round trip to khalad, which asks L2)
 *   20 %  put (values of 16 bytes to --value-max, random)
 *    8 %  delete (an invalidation of one key at every level)
 *    2 %  invalidation by prefix (one of 256 prefixes, about 1/256 of the keys)
 *
 * Every operation's latency goes into a histogram per window (--window-s, 60 s: "per minute")
 * in memory shared by the workers (log-scale buckets, 8 per power of two, so a percentile is
 * read within 9 %). Meanwhile the parent samples khalad's memory from /proc/PID/status every
 * second: RssAnon (its heap: connection buffers and the like) and VmRSS (which also counts the
 * pages of the shared L1 segment it has touched, and grows as L1 fills, so it is shown but not
 * judged).
 *
 * Verdict: memory is flat when the largest RssAnon of the last window is at most 1.25 times that
 * of the first window plus 4 MiB; p99 is steady when every full window's p99 is at most twice
 * the first window's. A last window shorter than half of --window-s is shown but not judged.
 * Exit status 0 when both hold, 1 otherwise, 2 on a setup failure.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "khala/cache.h"
#include "khala/error.h"

#ifndef KHALAD_PATH
#error "KHALAD_PATH must name the khalad binary"
#endif

#define SUB 8                  /* histogram buckets per power of two */
#define BUCKETS (40 * SUB)     /* up to 2^40 ns (18 minutes) */
#define WINDOWS_MAX 120        /* windows recorded; later operations count in the last */
#define PREFIXES 256           /* key prefixes, for the invalidations by prefix */
#define SAMPLES_MAX (3600 * 4) /* memory samples, one a second */

/* Shared by the parent and the workers (MAP_SHARED), updated with relaxed atomic adds. */
typedef struct shared {
    uint64_t hist[WINDOWS_MAX][BUCKETS]; /* operations per latency bucket, per window */
    uint64_t ops[WINDOWS_MAX];           /* operations per window */
    uint64_t errors;                     /* operations that failed (not a miss) */
    int64_t t0_ns;                       /* the run's start, CLOCK_MONOTONIC */
    int connected;                       /* workers whose handles are all connected */
} shared_t;

typedef struct opts {
    unsigned clients, procs, keys, window_s, value_max;
    uint64_t ops;
} opts_t;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static unsigned bucket_of(int64_t ns) {
    if (ns < 1)
        ns = 1;
    double b = log2((double)ns) * SUB;
    return b >= BUCKETS - 1 ? BUCKETS - 1 : (unsigned)b;
}

/* The latency (ns) at the upper edge of bucket b. */
static double bucket_ns(unsigned b) {
    return exp2((double)(b + 1) / SUB);
}

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* One worker process: `n` handles, `ops` operations. Exits 0, or 1 when it could not start. */
static int worker(shared_t *sh, const opts_t *o, const char *name, const char *sock, unsigned id,
                  unsigned n, uint64_t ops) {
    khala_cache_t **h = calloc(n, sizeof(*h));
    char *val = malloc(o->value_max);
    if (!h || !val)
        return 1;
    memset(val, 'a' + (int)(id % 26), o->value_max);
    khala_cache_options_t co;
    khala_cache_options_init(&co);
    co.socket_path = sock;
    co.timeout_ms = 30000;
    khala_put_options_t po;
    khala_put_options_init(&po);
    uint64_t rng = 0x9e3779b97f4a7c15ull ^ ((uint64_t)id << 32 | (uint64_t)getpid());
    char key[64];
    for (unsigned i = 0; i < n; i++) {
        int rc = khala_cache_open(name, &co, &h[i]);
        if (rc == 0) {
            /* Connect now: the put goes through khalad on this handle's own connection. */
            snprintf(key, sizeof(key), "p%03u:%u", (id * n + i) % PREFIXES, id * n + i);
            rc = khala_cache_put(h[i], key, strlen(key), val, 64, &po, NULL);
        }
        if (rc == 0) {
            /* And claim the handle's reader slot, so the first window measures the steady
             * state rather than a thousand first reads. */
            size_t len;
            rc = khala_cache_get(h[i], key, strlen(key), val, o->value_max, &len);
        }
        if (rc != 0) {
            fprintf(stderr, "khala-soak: worker %u handle %u: %s: %s\n", id, i, khala_strerror(rc),
                    khala_cache_errmsg(h[i]));
            return 1;
        }
    }
    __atomic_fetch_add(&sh->connected, 1, __ATOMIC_RELEASE);
    while (__atomic_load_n(&sh->t0_ns, __ATOMIC_ACQUIRE) == 0)
        usleep(1000); /* every worker starts together, once all are connected */
    int64_t win_ns = (int64_t)o->window_s * 1000000000;
    for (uint64_t i = 0; i < ops; i++) {
        khala_cache_t *c = h[i % n];
        uint64_t r = rng_next(&rng);
        unsigned pct = (unsigned)(r % 100), k = (unsigned)((r >> 8) % o->keys);
        snprintf(key, sizeof(key), "p%03u:%u", k % PREFIXES, k);
        int64_t t = now_ns();
        int rc;
        if (pct < 55) {
            size_t len;
            rc = khala_cache_get(c, key, strlen(key), val, o->value_max, &len);
        } else if (pct < 70) {
            snprintf(key, sizeof(key), "miss:%u:%" PRIu64, id, i);
            size_t len;
            rc = khala_cache_get(c, key, strlen(key), val, o->value_max, &len);
        } else if (pct < 90) {
            size_t vlen = 16 + (size_t)((r >> 32) % (o->value_max - 15));
            rc = khala_cache_put(c, key, strlen(key), val, vlen, &po, NULL);
        } else if (pct < 98) {
            rc = khala_cache_delete(c, key, strlen(key));
        } else {
            char pre[16];
            snprintf(pre, sizeof(pre), "p%03u:", k % PREFIXES);
            rc = khala_cache_invalidate_prefix(c, pre, strlen(pre), NULL);
        }
        int64_t end = now_ns();
        if (rc != 0 && rc != KHALA_ENOTFOUND)
            __atomic_fetch_add(&sh->errors, 1, __ATOMIC_RELAXED);
        int64_t w = (end - sh->t0_ns) / win_ns;
        if (w >= WINDOWS_MAX)
            w = WINDOWS_MAX - 1;
        __atomic_fetch_add(&sh->hist[w][bucket_of(end - t)], 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&sh->ops[w], 1, __ATOMIC_RELAXED);
    }
    for (unsigned i = 0; i < n; i++)
        khala_cache_close(h[i]);
    free(h);
    free(val);
    return 0;
}

/* A field of /proc/PID/status in kB, or 0. */
static uint64_t status_kb(pid_t pid, const char *field) {
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    uint64_t kb = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, field, strlen(field)) == 0)
            kb = strtoull(line + strlen(field), NULL, 10);
    fclose(f);
    return kb;
}

static double percentile_ms(const uint64_t *hist, uint64_t total, double p) {
    uint64_t want = (uint64_t)ceil(p * (double)total), seen = 0;
    for (unsigned b = 0; b < BUCKETS; b++) {
        seen += hist[b];
        if (seen >= want && want)
            return bucket_ns(b) / 1e6;
    }
    return 0;
}

static void usage(FILE *f) {
    fprintf(f, "usage: khala-soak [--clients N] [--procs P] [--ops N] [--keys N] [--window-s S]\n"
               "                  [--value-max BYTES]\n"
               "  defaults: 1000 clients in 8 processes, 4,000,000 operations, 20,000 keys,\n"
               "  60 s windows, values up to 4096 bytes\n");
}

int main(int argc, char **argv) {
    opts_t o = {.clients = 1000,
                .procs = 8,
                .keys = 20000,
                .window_s = 60,
                .value_max = 4096,
                .ops = 4000000};
    static const struct option lo[] = {
        {"clients", required_argument, NULL, 'c'},  {"procs", required_argument, NULL, 'p'},
        {"ops", required_argument, NULL, 'o'},      {"keys", required_argument, NULL, 'k'},
        {"window-s", required_argument, NULL, 'w'}, {"value-max", required_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0}};
    for (int c; (c = getopt_long(argc, argv, "c:p:o:k:w:v:h", lo, NULL)) != -1;) {
        unsigned long long v = optarg ? strtoull(optarg, NULL, 10) : 0;
        switch (c) {
            case 'c':
                o.clients = (unsigned)v;
                break;
            case 'p':
                o.procs = (unsigned)v;
                break;
            case 'o':
                o.ops = v;
                break;
            case 'k':
                o.keys = (unsigned)v;
                break;
            case 'w':
                o.window_s = (unsigned)v;
                break;
            case 'v':
                o.value_max = (unsigned)v;
                break;
            case 'h':
                usage(stdout);
                return 0;
            default:
                usage(stderr);
                return 2;
        }
    }
    if (!o.procs || o.clients < o.procs || !o.ops || !o.keys || !o.window_s || o.value_max < 64) {
        usage(stderr);
        return 2;
    }

    /* khalad, private: its socket and L2 in a directory of ours; room for every client. */
    char dir[64], sock[108], name[32];
    snprintf(dir, sizeof(dir), "/tmp/khala-soak-%d", (int)getpid());
    snprintf(sock, sizeof(sock), "%s/khalad.sock", dir);
    snprintf(name, sizeof(name), "soak%d", (int)getpid());
    if (mkdir(dir, 0700) != 0) {
        fprintf(stderr, "khala-soak: mkdir %s: %s\n", dir, strerror(errno));
        return 2;
    }
    static harness_khalad_t k;
    int rc = harness_khalad_init(&k, KHALAD_PATH, name, sock);
    if (!rc)
        rc = harness_khalad_set(&k, "l2.path=%s/l2", dir);
    if (!rc)
        rc = harness_khalad_set(&k, "l1.max_memory_mb=64");
    if (!rc)
        rc = harness_khalad_set(&k, "l1.max_readers=%u", o.clients * 2);
    if (!rc)
        rc = harness_khalad_set(&k, "server.max_connections=%u", o.clients + 64);
    if (!rc)
        rc = harness_khalad_start(&k);
    if (rc != 0) {
        fprintf(stderr, "khala-soak: %s\n", k.err);
        harness_rmtree(dir);
        return 2;
    }
    /* Each handle holds a connection and a mapping or two: raise our own descriptor limit. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }

    shared_t *sh =
        mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) {
        fprintf(stderr, "khala-soak: mmap: %s\n", strerror(errno));
        harness_khalad_stop(&k, 0);
        return 2;
    }
    pid_t *pids = calloc(o.procs, sizeof(pid_t));
    for (unsigned i = 0; i < o.procs; i++) {
        unsigned n = o.clients / o.procs + (i < o.clients % o.procs);
        uint64_t ops = o.ops / o.procs + (i < o.ops % o.procs);
        pids[i] = fork();
        if (pids[i] == 0)
            _exit(worker(sh, &o, name, sock, i, n, ops));
    }
    /* Start once every worker is connected (or one of them failed). */
    int failed = 0;
    while (__atomic_load_n(&sh->connected, __ATOMIC_ACQUIRE) < (int)o.procs && !failed) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p > 0)
            failed = 1;
        usleep(10000);
    }
    if (failed) {
        fprintf(stderr, "khala-soak: a worker could not connect\n");
        for (unsigned i = 0; i < o.procs; i++)
            kill(pids[i], SIGKILL);
        while (wait(NULL) > 0)
            ;
        harness_khalad_stop(&k, 0);
        harness_rmtree(dir);
        return 2;
    }
    uint64_t conns_rss = status_kb(k.pid, "RssAnon:");
    __atomic_store_n(&sh->t0_ns, now_ns(), __ATOMIC_RELEASE);

    /* Sample khalad's memory every second until the workers are done. */
    static uint64_t anon_max[WINDOWS_MAX], rss_max[WINDOWS_MAX];
    int running = (int)o.procs, worker_failed = 0;
    while (running > 0) {
        int st;
        pid_t p;
        while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
            running--;
            worker_failed |= !WIFEXITED(st) || WEXITSTATUS(st) != 0;
        }
        int64_t w = (now_ns() - sh->t0_ns) / ((int64_t)o.window_s * 1000000000);
        if (w >= WINDOWS_MAX)
            w = WINDOWS_MAX - 1;
        uint64_t anon = status_kb(k.pid, "RssAnon:"), rss = status_kb(k.pid, "VmRSS:");
        if (anon > anon_max[w])
            anon_max[w] = anon;
        if (rss > rss_max[w])
            rss_max[w] = rss;
        if (running > 0)
            sleep(1);
    }
    double elapsed_s = (double)(now_ns() - sh->t0_ns) / 1e9;
    harness_khalad_stop(&k, 0);
    harness_khalad_clean(&k);
    harness_rmtree(dir);

    /* Report. */
    unsigned nwin = (unsigned)(elapsed_s / o.window_s) + 1;
    if (nwin > WINDOWS_MAX)
        nwin = WINDOWS_MAX;
    double last_len = elapsed_s - (double)(nwin - 1) * o.window_s;
    printf("khala-soak: %u clients in %u processes, %" PRIu64 " operations in %.1f s "
           "(%.0f ops/s), %" PRIu64 " errors\n",
           o.clients, o.procs, o.ops, elapsed_s, (double)o.ops / elapsed_s, sh->errors);
    printf("khalad RssAnon with every client connected, before the run: %" PRIu64 " kB\n",
           conns_rss);
    printf("%-8s %10s %10s %10s %10s %14s %12s\n", "window", "ops", "p50_ms", "p99_ms", "p999_ms",
           "RssAnon_kB", "VmRSS_kB");
    double p99_first = 0;
    int steady = 1, flat = 1;
    unsigned judged_last = 0;
    for (unsigned w = 0; w < nwin; w++) {
        double p50 = percentile_ms(sh->hist[w], sh->ops[w], 0.50);
        double p99 = percentile_ms(sh->hist[w], sh->ops[w], 0.99);
        double p999 = percentile_ms(sh->hist[w], sh->ops[w], 0.999);
        int full = w + 1 < nwin || last_len >= o.window_s / 2.0;
        printf("%-8u %10" PRIu64 " %10.3f %10.3f %10.3f %14" PRIu64 " %12" PRIu64 "%s\n", w,
               sh->ops[w], p50, p99, p999, anon_max[w], rss_max[w],
               full ? "" : "  (short: not judged)");
        if (w == 0)
            p99_first = p99;
        else if (full && p99 > 2 * p99_first)
            steady = 0;
        if (full)
            judged_last = w;
    }
    if ((double)anon_max[judged_last] > 1.25 * (double)anon_max[0] + 4096)
        flat = 0;
    printf("memory %s: RssAnon %" PRIu64 " kB in the first window, %" PRIu64
           " kB in the last judged\n",
           flat ? "flat" : "NOT flat", anon_max[0], anon_max[judged_last]);
    printf("p99 %s: every judged window within 2x of the first (%.3f ms)\n",
           steady ? "steady" : "NOT steady", p99_first);
    if (worker_failed)
        printf("a worker failed\n");
    munmap(sh, sizeof(*sh));
    free(pids);
    return flat && steady && !worker_failed ? 0 : 1;
}
