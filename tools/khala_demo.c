/*
 * khala-demo: the L1 working across processes.
 *
 * HOW IT WORKS
 *
 *   writer (this process)                           workers (forked, --workers of them)
 *   fork the workers (they wait for the go)         wait for the go
 *   khala__l1_open("demo-<pid>")                    khala_cache_open("demo-<pid>")
 *   load --items values of the 8 KHALA types, go    --ops reads, keys drawn Zipf(0.99):
 *   loop until every worker has finished:             3 of 4 by copy-out (khala_cache_get)
 *     misses pipe --> put the value, ack  <-------+   1 of 4 by view (read_begin/view/read_end)
 *     every 1 ms: overwrite / delete a few keys   |   verify every value read
 *                 khala__l1_maintain              +-- on a miss: send the key, wait for the ack,
 *     every 10 ms: khala__l1_sweep                    read it again
 *   print the report, khala__l1_close(t, 1)         write counters and latencies to the report
 *
 * The misses pipe emulates the miss path of the coming daemon (khalad): a worker that misses in
 * L1 asks the single writer, which "loads" the value from the source of truth (here: generates
 * it) and promotes it into L1, then answers.
 *
 * Every value carries a header with its key, the round (how many times the writer rewrote the
 * key) and a checksum over the header and the payload; the payload is a pure function of (key,
 * round). A worker checks each value it reads: the key is the one it asked for, the type tag and
 * length are those of the key's type, and the checksum holds. So a torn value, a value of
 * another key or a value read from freed memory is reported. The demo exits non-zero if any
 * check fails, a call returns an unexpected code, a worker dies, or the table's invariant check
 * (khala__l1_check) fails at the end.
 *
 * The workers are forked before the writer opens the cache so that they never inherit the
 * writer's handle: like real workers, they only ever hold the read-only client API.
 *
 * The defaults size the arena (64 MiB) below the data set (about 85 MB), so the report also
 * shows evictions; search results get a short TTL, so it shows expirations too.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "khala/khala.h"
#include "l1_table.h"
#include "segment.h"

#define DEMO_MAGIC 0x4b48414cu /* "KHAL" */
#define DEMO_TYPES 8
#define DEMO_MAX_WORKERS 64
#define DEMO_KEY_MAX 40
#define DEMO_VALUE_MAX 6144 /* an embedding: 1,536 float32 */
#define DEMO_ZIPF_S 0.99

/* The eight KHALA data types; the tag is what khala__l1_put's `type` stores. */
typedef struct demo_type {
    const char *name;
    uint32_t min_size, max_size; /* value bytes, header included */
    int64_t ttl_ms;              /* 0: no expiry */
} demo_type_t;

static const demo_type_t types[DEMO_TYPES] = {
    {"memory_entity", 200, 2048, 300000},
    {"search_result", 100, 1024, 1000}, /* short-lived: shows expiry within the run */
    {"embedding", DEMO_VALUE_MAX, DEMO_VALUE_MAX, 600000},
    {"entity_relationship", 100, 512, 300000},
    {"agent_response", 300, 2048, 120000},
    {"verification", 100, 256, 300000},
    {"search_index", 500, 2048, 600000},
    {"consolidation", 400, 2048, 0},
};

/* The header at the start of every value. */
typedef struct demo_value_hdr {
    uint32_t magic;
    uint32_t key;   /* key index */
    uint64_t round; /* 0 for the first load, +1 per overwrite */
    uint32_t type;  /* index into types[] */
    uint32_t len;   /* whole value in bytes */
    uint64_t sum;   /* XXH3 of the payload, seeded with the fields above */
} demo_value_hdr_t;

_Static_assert(sizeof(demo_value_hdr_t) == 32, "demo_value_hdr_t is 32 bytes");

/* What a worker reports back, in memory shared with the writer. */
typedef struct demo_result {
    uint64_t reads; /* lookups, refill re-reads included */
    uint64_t hits, misses;
    uint64_t views;                      /* hits served by a view */
    uint64_t eranges;                    /* copy-outs that needed a larger buffer */
    uint64_t refill_hits, refill_misses; /* the re-read after a miss was loaded */
    uint64_t bad_values;                 /* failed verification */
    uint64_t errors;                     /* unexpected return codes */
    uint64_t lib_hits, lib_misses;       /* khala_cache_stats at the end */
    uint64_t get_p50_ns, get_p99_ns, view_p50_ns, view_p99_ns;
    int done;
    char first_error[160];
} demo_result_t;

typedef struct demo_miss {
    uint32_t worker;
    uint32_t key;
} demo_miss_t;

typedef struct demo_opts {
    uint32_t workers;
    uint32_t items;
    uint64_t ops;
    uint64_t mem_mb;
    uint64_t seed;
} demo_opts_t;

/* Immutable after setup, inherited by the workers. */
static demo_opts_t opts = {4, 50000, 250000, 64, 42};
static char (*keys)[DEMO_KEY_MAX]; /* keys[i]: "<type>:<i>" */
static uint8_t *key_lens;
static double *zipf_cdf;   /* zipf_cdf[r]: P(rank <= r) */
static uint32_t zipf_mult; /* rank -> key scramble, coprime with items */

/* Small helpers ------------------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint32_t key_type(uint32_t key) {
    return key % DEMO_TYPES;
}

static uint32_t key_value_len(uint32_t key) {
    const demo_type_t *ty = &types[key_type(key)];
    uint64_t x = key;
    return ty->min_size + (uint32_t)(splitmix64(&x) % (ty->max_size - ty->min_size + 1));
}

static uint64_t value_sum(const demo_value_hdr_t *h, const uint8_t *payload) {
    uint64_t seed = h->magic ^ ((uint64_t)h->key << 32) ^ h->round * 0x9e3779b97f4a7c15u ^
                    ((uint64_t)h->type << 56) ^ h->len;
    return XXH3_64bits_withSeed(payload, h->len - sizeof(*h), seed);
}

/* Build the value of (key, round) into buf; returns its length. */
static uint32_t value_make(uint8_t *buf, uint32_t key, uint64_t round) {
    demo_value_hdr_t h = {DEMO_MAGIC, key, round, key_type(key), key_value_len(key), 0};
    uint8_t *p = buf + sizeof(h);
    uint64_t x = ((uint64_t)key << 32) ^ round;
    for (uint32_t off = 0; off < h.len - sizeof(h); off += 8) {
        uint64_t r = splitmix64(&x);
        uint32_t n = h.len - (uint32_t)sizeof(h) - off;
        memcpy(p + off, &r, n < 8 ? n : 8);
    }
    h.sum = value_sum(&h, p);
    memcpy(buf, &h, sizeof(h));
    return h.len;
}

/* 0 if (data, len) is a value the writer made for key; else a description of the problem. */
static const char *value_check(const void *data, size_t len, uint32_t key) {
    demo_value_hdr_t h;
    if (len < sizeof(h))
        return "value shorter than its header";
    memcpy(&h, data, sizeof(h));
    if (h.magic != DEMO_MAGIC)
        return "bad magic";
    if (h.key != key)
        return "value of another key";
    if (h.type != key_type(key) || h.len != len || len != key_value_len(key))
        return "type or length does not match the key";
    if (h.sum != value_sum(&h, (const uint8_t *)data + sizeof(h)))
        return "checksum mismatch (torn or freed value)";
    return NULL;
}

static uint32_t zipf_key(uint64_t *rng) {
    double u = (double)(splitmix64(rng) >> 11) * 0x1.0p-53;
    uint32_t lo = 0, hi = opts.items - 1;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (zipf_cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (uint32_t)(((uint64_t)lo * zipf_mult) % opts.items);
}

static uint64_t gcd64(uint64_t a, uint64_t b) {
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static int setup_keys(void) {
    keys = calloc(opts.items, sizeof(*keys));
    key_lens = calloc(opts.items, 1);
    zipf_cdf = calloc(opts.items, sizeof(*zipf_cdf));
    if (!keys || !key_lens || !zipf_cdf)
        return -ENOMEM;
    double total = 0;
    for (uint32_t i = 0; i < opts.items; i++) {
        int n = snprintf(keys[i], DEMO_KEY_MAX, "%s:%08" PRIu32, types[key_type(i)].name, i);
        key_lens[i] = (uint8_t)n;
        total += 1.0 / pow((double)(i + 1), DEMO_ZIPF_S);
        zipf_cdf[i] = total;
    }
    for (uint32_t i = 0; i < opts.items; i++)
        zipf_cdf[i] /= total;
    zipf_mult = 7919;
    while (gcd64(zipf_mult, opts.items) != 1)
        zipf_mult++;
    return 0;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static uint64_t percentile(uint32_t *v, size_t n, double p) {
    if (n == 0)
        return 0;
    size_t i = (size_t)(p * (double)(n - 1));
    return v[i];
}

/* The worker ----------------------------------------------------------------------------------- */

static void worker_error(demo_result_t *r, const char *call, const char *what, int rc) {
    r->errors++;
    if (!r->first_error[0])
        snprintf(r->first_error, sizeof(r->first_error), "%s(%s): %d %s", call, what, rc,
                 khala_strerror(rc));
}

static void worker_bad(demo_result_t *r, uint32_t key, const char *why) {
    r->bad_values++;
    if (!r->first_error[0])
        snprintf(r->first_error, sizeof(r->first_error), "key %s: %s", keys[key], why);
}

/* One lookup of key, by view or by copy-out. Returns 0 on a hit, KHALA_ENOTFOUND on a miss, or
 * another code (already counted as an error). */
static int worker_read(khala_cache_t *c, demo_result_t *r, uint32_t key, int by_view, uint8_t **buf,
                       size_t *cap, uint32_t *lat, size_t *nlat) {
    int rc;
    r->reads++;
    if (by_view) {
        khala_view_t v;
        uint64_t t0 = now_ns();
        if ((rc = khala_read_begin(c)) != 0) {
            worker_error(r, "khala_read_begin", keys[key], rc);
            return rc;
        }
        rc = khala_cache_view(c, keys[key], key_lens[key], &v);
        uint64_t t1 = now_ns();
        if (rc == 0) {
            /* The view is valid only inside the section: verify before read_end. */
            const char *why = value_check(v.data, v.len, key);
            if (!why && v.type != key_type(key) + 1)
                why = "view's type tag does not match the key";
            if (why)
                worker_bad(r, key, why);
            r->views++;
        }
        khala_read_end(c);
        lat[(*nlat)++] = (uint32_t)(t1 - t0 > UINT32_MAX ? UINT32_MAX : t1 - t0);
    } else {
        size_t len = 0;
        uint64_t t0 = now_ns();
        rc = khala_cache_get(c, keys[key], key_lens[key], *buf, *cap, &len);
        uint64_t t1 = now_ns();
        lat[(*nlat)++] = (uint32_t)(t1 - t0 > UINT32_MAX ? UINT32_MAX : t1 - t0);
        if (rc == -ERANGE) {
            /* The contract: the needed length is in len; grow and ask again. */
            r->eranges++;
            uint8_t *nb = realloc(*buf, len);
            if (!nb) {
                worker_error(r, "realloc", keys[key], -ENOMEM);
                return -ENOMEM;
            }
            *buf = nb;
            *cap = len;
            rc = khala_cache_get(c, keys[key], key_lens[key], *buf, *cap, &len);
        }
        if (rc == 0) {
            const char *why = value_check(*buf, len, key);
            if (why)
                worker_bad(r, key, why);
        }
    }
    if (rc == 0) {
        r->hits++;
    } else if (rc == KHALA_ENOTFOUND) {
        r->misses++;
    } else {
        worker_error(r, by_view ? "khala_cache_view" : "khala_cache_get", keys[key], rc);
    }
    return rc;
}

static int worker_main(uint32_t id, const char *name, int miss_fd, int reply_fd, demo_result_t *r) {
    khala_cache_t *c = NULL;
    uint32_t *get_lat = malloc(opts.ops * 2 * sizeof(uint32_t));
    uint32_t *view_lat = malloc(opts.ops * 2 * sizeof(uint32_t));
    size_t nget = 0, nview = 0, cap = 1024; /* small on purpose: embeddings need a regrow */
    uint8_t *buf = malloc(cap);
    int rc;
    if (!get_lat || !view_lat || !buf) {
        worker_error(r, "malloc", "buffers", -ENOMEM);
        goto out;
    }
    if ((rc = khala_cache_open(name, NULL, &c)) != 0) {
        worker_error(r, "khala_cache_open", name, rc);
        goto out;
    }
    uint64_t rng = opts.seed * 1000003u + id;
    for (uint64_t op = 0; op < opts.ops; op++) {
        uint32_t key = zipf_key(&rng);
        int by_view = (op & 3) == 3;
        rc = by_view ? worker_read(c, r, key, 1, &buf, &cap, view_lat, &nview)
                     : worker_read(c, r, key, 0, &buf, &cap, get_lat, &nget);
        if (rc != KHALA_ENOTFOUND)
            continue;
        /* Miss: ask the writer to load the key, wait for it, and read it again. */
        demo_miss_t m = {id, key};
        char ack;
        if (write(miss_fd, &m, sizeof(m)) != (ssize_t)sizeof(m) || read(reply_fd, &ack, 1) != 1) {
            worker_error(r, "miss pipe", "write/read", errno ? -errno : -EPIPE);
            break;
        }
        rc = worker_read(c, r, key, 0, &buf, &cap, get_lat, &nget);
        if (rc == 0)
            r->refill_hits++;
        else if (rc == KHALA_ENOTFOUND)
            r->refill_misses++; /* evicted or deleted again before the re-read: rare, fine */
    }
    khala_cache_stats_t st;
    if (khala_cache_stats(c, &st) == 0) {
        r->lib_hits = st.hits;
        r->lib_misses = st.misses;
    }
    qsort(get_lat, nget, sizeof(uint32_t), cmp_u32);
    qsort(view_lat, nview, sizeof(uint32_t), cmp_u32);
    r->get_p50_ns = percentile(get_lat, nget, 0.50);
    r->get_p99_ns = percentile(get_lat, nget, 0.99);
    r->view_p50_ns = percentile(view_lat, nview, 0.50);
    r->view_p99_ns = percentile(view_lat, nview, 0.99);
    r->done = 1;
out:
    khala_cache_close(c);
    free(buf);
    free(get_lat);
    free(view_lat);
    return r->errors || r->bad_values ? 1 : 0;
}

/* The writer ----------------------------------------------------------------------------------- */

typedef struct demo_writer {
    khala_l1_t *t;
    uint64_t *rounds; /* rounds[key]: the round of the key's latest value */
    uint8_t buf[DEMO_VALUE_MAX];
    uint64_t loads, overwrites, deletes, maintains, sweeps, swept, blocked_retries;
    uint64_t put_failures;
    char first_error[256];
} demo_writer_t;

static int writer_put(demo_writer_t *w, uint32_t key, uint64_t round) {
    uint32_t len = value_make(w->buf, key, round);
    int64_t ttl = types[key_type(key)].ttl_ms;
    int rc;
    /* EBLOCKED: a reader's open section holds back the memory this put needs; sections are
     * short, so run the housekeeping that reclaims and try again. */
    for (int attempt = 0;; attempt++) {
        rc = khala__l1_put(w->t, keys[key], key_lens[key], w->buf, len, ttl,
                           (uint8_t)(key_type(key) + 1), NULL);
        if (rc != KHALA_EBLOCKED || attempt == 100)
            break;
        w->blocked_retries++;
        (void)khala__l1_maintain(w->t);
        if (attempt > 10)
            usleep(100);
    }
    if (rc != 0) {
        w->put_failures++;
        if (!w->first_error[0])
            snprintf(w->first_error, sizeof(w->first_error), "put %s: %d %s (%s)", keys[key], rc,
                     khala_strerror(rc), khala__l1_errmsg(w->t));
    }
    return rc;
}

/* Every millisecond: rewrite or invalidate a few hot keys, as updates from the source would. */
static void writer_churn(demo_writer_t *w, uint64_t *rng) {
    for (int i = 0; i < 16; i++) {
        uint32_t key = zipf_key(rng);
        if (splitmix64(rng) % 10 == 0) {
            int rc = khala__l1_delete(w->t, keys[key], key_lens[key]);
            if (rc == 0)
                w->deletes++;
        } else if (writer_put(w, key, ++w->rounds[key]) == 0) {
            w->overwrites++;
        }
    }
}

static void print_report(const demo_writer_t *w, const demo_result_t *res, double secs) {
    /* A worker's reads are its --ops first lookups; the re-read after a miss was loaded is
     * counted apart (refilled), so hit% is the L1 hit ratio of the workload. */
    printf("\n%-7s %9s %9s %8s %6s %8s %8s %8s %8s %8s %5s\n", "worker", "reads", "hits", "misses",
           "hit%", "refilled", "get p50", "get p99", "view p50", "view p99", "bad");
    uint64_t reads = 0, hits = 0, misses = 0, verified = 0, bad = 0;
    for (uint32_t i = 0; i < opts.workers; i++) {
        const demo_result_t *r = &res[i];
        uint64_t first_hits = r->hits - r->refill_hits, first_misses = r->misses - r->refill_misses;
        double ratio = opts.ops ? 100.0 * (double)first_hits / (double)opts.ops : 0.0;
        printf("%-7" PRIu32 " %9" PRIu64 " %9" PRIu64 " %8" PRIu64 " %5.1f%% %8" PRIu64 " %6" PRIu64
               "ns %6" PRIu64 "ns %6" PRIu64 "ns %6" PRIu64 "ns %5" PRIu64 "\n",
               i, opts.ops, first_hits, first_misses, ratio, r->refill_hits, r->get_p50_ns,
               r->get_p99_ns, r->view_p50_ns, r->view_p99_ns, r->bad_values);
        reads += opts.ops;
        hits += first_hits;
        misses += first_misses;
        verified += r->hits;
        bad += r->bad_values;
    }
    printf("%-7s %9" PRIu64 " %9" PRIu64 " %8" PRIu64 " %5.1f%%\n", "all", reads, hits, misses,
           reads ? 100.0 * (double)hits / (double)reads : 0.0);
    printf("(latency: one L1 lookup as the worker sees it, hit or miss; a get copies the value "
           "out,\n a view spans read_begin..view; a miss is sent to the writer, loaded, and read "
           "again: refilled)\n");

    khala_l1_stats_t st;
    khala__l1_stats(w->t, &st);
    printf("\nwriter: %" PRIu64 " items, %.1f MiB of %.1f MiB arena in use (%.1f MiB key+value, "
           "%.1f MiB free), %" PRIu64 " retired\n",
           st.items, (double)st.item_bytes / 1048576.0, (double)st.arena_bytes / 1048576.0,
           (double)st.payload_bytes / 1048576.0, (double)st.free_bytes / 1048576.0, st.retired);
    printf("        sets %" PRIu64 ", overwrites %" PRIu64 ", deletes %" PRIu64
           ", evictions %" PRIu64 ", expirations %" PRIu64 "\n",
           st.sets, st.overwrites, st.deletes, st.evictions, st.expirations);
    printf("        miss loads %" PRIu64 ", churn overwrites %" PRIu64 ", churn deletes %" PRIu64
           ", maintain %" PRIu64 "x, sweep %" PRIu64 "x (%" PRIu64 " removed)\n",
           w->loads, w->overwrites, w->deletes, w->maintains, w->sweeps, w->swept);
    printf("        reader slots in use %" PRIu32 ", readers' hits %" PRIu64 ", misses %" PRIu64
           " (summed over slots)\n",
           st.readers, st.reader_hits, st.reader_misses);
    printf("\n%" PRIu64 " values read and verified in %.2f s: %" PRIu64 " mismatches\n", verified,
           secs, bad);
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: khala-demo [--workers N] [--items N] [--ops N] [--mem-mb N] [--seed N]\n"
            "  --workers N  reader processes (default 4, at most %d)\n"
            "  --items N    keys, spread over the 8 KHALA data types (default 50000)\n"
            "  --ops N      reads per worker (default 250000)\n"
            "  --mem-mb N   L1 arena size in MiB (default 64; the defaults hold ~85 MB)\n"
            "  --seed N     random seed (default 42)\n",
            DEMO_MAX_WORKERS);
}

static int parse_args(int argc, char **argv) {
    for (int i = 1; i < argc; i += 2) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            exit(0);
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "khala-demo: %s needs a value\n", argv[i]);
            return -1;
        }
        char *end;
        errno = 0;
        unsigned long long v = strtoull(argv[i + 1], &end, 10);
        if (errno || *end || end == argv[i + 1]) {
            fprintf(stderr, "khala-demo: %s: '%s' is not a number\n", argv[i], argv[i + 1]);
            return -1;
        }
        if (!strcmp(argv[i], "--workers") && v >= 1 && v <= DEMO_MAX_WORKERS)
            opts.workers = (uint32_t)v;
        else if (!strcmp(argv[i], "--items") && v >= 16 && v <= 10000000)
            opts.items = (uint32_t)v;
        else if (!strcmp(argv[i], "--ops") && v >= 1 && v <= 100000000)
            opts.ops = v;
        else if (!strcmp(argv[i], "--mem-mb") && v >= 1 && v <= 65536)
            opts.mem_mb = v;
        else if (!strcmp(argv[i], "--seed"))
            opts.seed = v;
        else {
            fprintf(stderr, "khala-demo: bad option or value out of range: %s %s\n", argv[i],
                    argv[i + 1]);
            usage(stderr);
            return -1;
        }
    }
    return 0;
}

/* The fork of worker i. It waits for the writer's go (the first byte on its reply pipe), so it
 * opens a cache that is loaded, and it never holds the writer's handle: the writer opens the
 * cache only after every worker is forked. */
static void worker_process(uint32_t i, const char *name, int miss_w, int reply_r,
                           demo_result_t *r) {
    char go;
    int wrc = 0;
    if (read(reply_r, &go, 1) == 1)
        wrc = worker_main(i, name, miss_w, reply_r, r);
    close(miss_w);
    close(reply_r);
    free(keys);
    free(key_lens);
    free(zipf_cdf);
    exit(wrc);
}

/* Serve misses and keep house until every worker has closed its end of the misses pipe.
 * Returns 0, or -1 if the protocol broke. */
static int writer_serve(demo_writer_t *w, int miss_r, const int *reply_w, uint32_t started) {
    uint64_t rng = opts.seed ^ 0x5bd1e995u, last_churn = now_ns(), last_sweep = last_churn;
    int failed = 0;
    for (;;) {
        struct pollfd pfd = {miss_r, POLLIN, 0};
        int n = poll(&pfd, 1, 1);
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "khala-demo: poll: %s\n", strerror(errno));
            return -1;
        }
        if (n > 0) {
            demo_miss_t msgs[64];
            ssize_t got = read(miss_r, msgs, sizeof(msgs));
            if (got == 0)
                break; /* every worker is gone */
            if (got < 0 || got % (ssize_t)sizeof(demo_miss_t)) {
                fprintf(stderr, "khala-demo: misses pipe: short read\n");
                return -1;
            }
            for (size_t i = 0; i < (size_t)got / sizeof(demo_miss_t); i++) {
                demo_miss_t m = msgs[i];
                if (m.worker >= started || m.key >= opts.items) {
                    failed = -1;
                    continue;
                }
                /* "Load from the source of truth": the key's latest round. */
                if (writer_put(w, m.key, w->rounds[m.key]) == 0)
                    w->loads++;
                char ack = 1;
                if (write(reply_w[m.worker], &ack, 1) != 1)
                    failed = -1; /* that worker died; waitpid reports it */
            }
        }
        uint64_t now = now_ns();
        if (now - last_churn >= 1000000) {
            writer_churn(w, &rng);
            if (khala__l1_maintain(w->t) < 0)
                failed = -1;
            w->maintains++;
            last_churn = now;
        }
        if (now - last_sweep >= 10000000) {
            w->swept += khala__l1_sweep(w->t, 4096);
            w->sweeps++;
            last_sweep = now;
        }
    }
    return failed;
}

/* Wait for the workers and check what they report. Returns the number that failed. */
static int reap_workers(const pid_t *pids, uint32_t started, const demo_result_t *res) {
    int bad = 0;
    for (uint32_t i = 0; i < started; i++) {
        const demo_result_t *r = &res[i];
        int status = 0;
        if (waitpid(pids[i], &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "khala-demo: worker %" PRIu32 " failed (%s %d)%s%s\n", i,
                    WIFSIGNALED(status) ? "signal" : "exit",
                    WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status),
                    r->first_error[0] ? ": " : "", r->first_error);
            bad++;
        } else if (!r->done) {
            fprintf(stderr, "khala-demo: worker %" PRIu32 " did not run\n", i);
            bad++;
        } else if (r->lib_hits != r->hits + r->eranges || r->lib_misses != r->misses) {
            /* The library counts an -ERANGE copy-out as a hit: the item was found. */
            fprintf(stderr,
                    "khala-demo: worker %" PRIu32 ": khala_cache_stats says %" PRIu64
                    " hits, %" PRIu64 " misses; the worker counted %" PRIu64 " + %" PRIu64
                    " regrows, %" PRIu64 "\n",
                    i, r->lib_hits, r->lib_misses, r->hits, r->eranges, r->misses);
            bad++;
        }
    }
    return bad;
}

int main(int argc, char **argv) {
    char name[KHALA_NAME_MAX + 1], err[256] = "";
    demo_writer_t *w = NULL;
    demo_result_t *res = MAP_FAILED;
    pid_t pids[DEMO_MAX_WORKERS];
    int reply_w[DEMO_MAX_WORKERS];
    int miss_p[2] = {-1, -1};
    uint32_t started = 0;
    int failed = 0, rc;
    double secs = 0; /* > 0 once the workers ran */

    if (parse_args(argc, argv) != 0)
        return 2;
    snprintf(name, sizeof(name), "demo-%ld", (long)getpid());
    w = calloc(1, sizeof(*w));
    if (w)
        w->rounds = calloc(opts.items, sizeof(*w->rounds));
    res = mmap(NULL, sizeof(demo_result_t) * opts.workers, PROT_READ | PROT_WRITE,
               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (!w || !w->rounds || res == MAP_FAILED || setup_keys() != 0 || pipe(miss_p) != 0) {
        fprintf(stderr, "khala-demo: setup: %s\n", strerror(errno ? errno : ENOMEM));
        failed = 1;
        goto out;
    }
    /* A worker that dies must not kill the writer when it acks. */
    signal(SIGPIPE, SIG_IGN);

    /* Step 1: fork the workers; they wait for the go. */
    fflush(stdout);
    for (uint32_t i = 0; i < opts.workers; i++) {
        int rp[2];
        if (pipe(rp) != 0) {
            fprintf(stderr, "khala-demo: pipe: %s\n", strerror(errno));
            failed = 1;
            break;
        }
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "khala-demo: fork: %s\n", strerror(errno));
            close(rp[0]);
            close(rp[1]);
            failed = 1;
            break;
        }
        if (pid == 0) {
            close(miss_p[0]);
            close(rp[1]);
            for (uint32_t j = 0; j < i; j++)
                close(reply_w[j]);
            free(w->rounds);
            free(w);
            worker_process(i, name, miss_p[1], rp[0], &res[i]);
        }
        close(rp[0]);
        reply_w[i] = rp[1];
        pids[i] = pid;
        started++;
    }
    close(miss_p[1]);
    miss_p[1] = -1;
    if (failed)
        goto workers;

    /* Step 2: create the cache and load every key. */
    khala_seg_config_t cfg;
    khala__seg_config_init(&cfg);
    cfg.max_bytes = opts.mem_mb << 20;
    cfg.max_items = opts.items + opts.items / 4;
    cfg.max_readers = 2 * DEMO_MAX_WORKERS;
    if ((rc = khala__l1_open(name, &cfg, &w->t, err, sizeof(err))) != 0) {
        fprintf(stderr, "khala-demo: khala__l1_open(%s): %s: %s\n", name, khala_strerror(rc), err);
        failed = 1;
        goto workers;
    }
    uint64_t t0 = now_ns();
    for (uint32_t k = 0; k < opts.items && !failed; k++) {
        if (writer_put(w, k, 0) != 0)
            failed = 1;
        if (k % 4096 == 4095)
            (void)khala__l1_maintain(w->t);
    }
    if (failed)
        goto workers;
    khala_l1_stats_t st;
    khala__l1_stats(w->t, &st);
    printf("khala-demo: cache \"%s\": loaded %" PRIu32 " values of %d types in %.0f ms "
           "(%" PRIu64 " fit; %" PRIu64 " evicted)\n",
           name, opts.items, DEMO_TYPES, (double)(now_ns() - t0) / 1e6, st.items, st.evictions);
    printf("khala-demo: %" PRIu32 " workers x %" PRIu64 " reads, Zipf(%.2f) over the keys, "
           "1 in 4 by zero-copy view\n",
           opts.workers, opts.ops, DEMO_ZIPF_S);
    fflush(stdout);

    /* Step 3: go, then serve the misses until every worker is done. */
    t0 = now_ns();
    for (uint32_t i = 0; i < started; i++) {
        char go = 1;
        if (write(reply_w[i], &go, 1) != 1)
            failed = 1;
    }
    if (writer_serve(w, miss_p[0], reply_w, started) != 0)
        failed = 1;
    secs = (double)(now_ns() - t0) / 1e9;

workers:
    /* Closing the reply pipes releases workers that still wait for the go (after a failure). */
    for (uint32_t i = 0; i < started; i++)
        close(reply_w[i]);
    if (reap_workers(pids, started, res) != 0)
        failed = 1;
    if (w->t) {
        if (secs > 0) {
            (void)khala__l1_maintain(w->t);
            print_report(w, res, secs);
        }
        if (w->put_failures) {
            fprintf(stderr, "khala-demo: %" PRIu64 " puts failed; first: %s\n", w->put_failures,
                    w->first_error);
            failed = 1;
        }
        if (khala__l1_check(w->t) != 0) {
            fprintf(stderr, "khala-demo: table check failed: %s\n", khala__l1_errmsg(w->t));
            failed = 1;
        } else {
            printf("table invariants (khala__l1_check): ok\n");
        }
        khala__l1_close(w->t, 1);
    }
out:
    if (miss_p[0] >= 0)
        close(miss_p[0]);
    if (res != MAP_FAILED)
        munmap(res, sizeof(demo_result_t) * opts.workers);
    if (w)
        free(w->rounds);
    free(w);
    free(keys);
    free(key_lens);
    free(zipf_cdf);
    printf("khala-demo: %s\n", failed ? "FAILED" : "OK");
    return failed ? 1 : 0;
}
