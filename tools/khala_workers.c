/*
 * khala-workers: KHALA worker processes against a running khalad, the way the Python workers
 * will use the library (docs/worker-example.md): each worker reads keys with a skewed
 * distribution through khala_cache_get_or_load, whose loader stands in for the database, and
 * now and then writes a key through khala_cache_put. Hits come straight out of the shared L1;
 * misses go to khalad, which lets exactly one worker load each key (single-flight) and promotes
 * the result into L1 for everyone. Every value read is checked against the checksum its loader
 * or writer put in it. Run by scripts/demo.sh after it starts khalad.
 *
 *   khala-workers --name NAME [--socket PATH] [--workers N] [--keys K] [--ops N]
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "khala/khala.h"

#define VALUE_MAX 2048
#define LAT_SAMPLES 4096

typedef struct report {
    uint64_t reads, l1_hits, loads, puts, bad, errors;
    uint64_t lat_ns[LAT_SAMPLES]; /* sampled get_or_load latencies */
    uint32_t nlat;
} report_t;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

/* A value for key k, version v: 8 bytes of k, 8 of v, then bytes derived from both; its length
 * varies with k like the KHALA types do (100 B to 2 KB). */
static size_t make_value(uint8_t *buf, uint64_t k, uint64_t v) {
    size_t len = 100 + (size_t)(mix(k) % (VALUE_MAX - 100));
    memcpy(buf, &k, 8);
    memcpy(buf + 8, &v, 8);
    for (size_t i = 16; i < len; i++)
        buf[i] = (uint8_t)mix(k * 131 + v * 7 + i);
    return len;
}

static int value_ok(const uint8_t *buf, size_t len, uint64_t k) {
    uint64_t kk, v;
    if (len < 16)
        return 0;
    memcpy(&kk, buf, 8);
    memcpy(&v, buf + 8, 8);
    if (kk != k || len != 100 + (size_t)(mix(k) % (VALUE_MAX - 100)))
        return 0;
    for (size_t i = 16; i < len; i++)
        if (buf[i] != (uint8_t)mix(k * 131 + v * 7 + i))
            return 0;
    return 1;
}

/* The loader: what the database would return for this key (version 0). */
static int load_from_db(void *arg, const void *key, size_t klen, void *buf, size_t cap,
                        size_t *len) {
    report_t *r = arg;
    char text[32];
    if (klen <= 7 || klen >= sizeof(text))
        return -EINVAL;
    memcpy(text, key, klen);
    text[klen] = '\0';
    uint64_t k = strtoull(text + 7, NULL, 10); /* "entity:N" */
    if (cap < VALUE_MAX)
        return -ERANGE;
    *len = make_value(buf, k, 0);
    r->loads++;
    return 0;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void worker(int id, const char *name, const char *socket, uint32_t keys, uint64_t ops,
                   report_t *r) {
    khala_cache_options_t o;
    khala_cache_options_init(&o);
    o.socket_path = socket;
    khala_cache_t *c;
    if (khala_cache_open(name, &o, &c) != 0) {
        fprintf(stderr, "worker %d: %s\n", id, khala_cache_errmsg(NULL));
        r->errors++;
        return;
    }
    /* Zipf(0.99) over the keys, by inverse CDF on a precomputed table. */
    double *cdf = malloc(sizeof(double) * keys), sum = 0;
    for (uint32_t i = 0; i < keys; i++)
        cdf[i] = (sum += 1.0 / pow(i + 1, 0.99));
    uint64_t rng = 0x9e3779b97f4a7c15ull * (uint64_t)(id + 1);
    static uint8_t buf[VALUE_MAX], val[VALUE_MAX];
    char key[32];
    for (uint64_t op = 0; op < ops; op++) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        double u = (double)(rng >> 11) / 9007199254740992.0 * sum;
        uint32_t lo = 0, hi = keys - 1;
        while (lo < hi) {
            uint32_t mid = (lo + hi) / 2;
            if (cdf[mid] < u)
                lo = mid + 1;
            else
                hi = mid;
        }
        uint64_t k = (mix(lo) % keys);
        int klen = snprintf(key, sizeof(key), "entity:%" PRIu64, k);
        if (op % 50 == 49) {
            /* A write: a new version of the key, through khalad. */
            khala_put_options_t po;
            khala_put_options_init(&po);
            po.type = KHALA_TYPE_MEMORY_ENTITY;
            size_t n = make_value(val, k, op);
            if (khala_cache_put(c, key, (size_t)klen, val, n, &po, NULL) == 0)
                r->puts++;
            else
                r->errors++;
            continue;
        }
        size_t len = 0;
        uint64_t t0 = now_ns();
        int rc = khala_cache_get(c, key, (size_t)klen, buf, sizeof(buf), &len);
        if (rc == 0) {
            r->l1_hits++;
        } else {
            rc = khala_cache_get_or_load(c, key, (size_t)klen, load_from_db, r, buf, sizeof(buf),
                                         &len, KHALA_TYPE_MEMORY_ENTITY, 0);
        }
        uint64_t dt = now_ns() - t0;
        if (r->nlat < LAT_SAMPLES && op % 16 == 0)
            r->lat_ns[r->nlat++] = dt;
        r->reads++;
        if (rc != 0)
            r->errors++;
        else if (!value_ok(buf, len, k))
            r->bad++;
    }
    free(cdf);
    khala_cache_close(c);
}

static void usage(FILE *f) {
    fputs("usage: khala-workers --name NAME [--socket PATH] [--workers N] [--keys K] [--ops N]\n"
          "       khala-workers --help | --version\n\n"
          "Runs N worker processes (1 to 64, default 4) against the running khalad of cache NAME\n"
          "through the public API: each does N ops (default 200000) over K keys (default 20000),\n"
          "Zipf-skewed reads through khala_cache_get_or_load and 1 put in 50, checks every value\n"
          "read, and prints per-worker hit ratios and latencies. Exits 0 when no value was bad\n"
          "and no call failed, 1 otherwise, 2 on a usage error.\n",
          f);
}

int main(int argc, char **argv) {
    const char *name = NULL, *socket = NULL;
    int workers = 4;
    uint32_t keys = 20000;
    uint64_t ops = 200000;
    static const struct option opts[] = {
        {"name", required_argument, NULL, 'n'},    {"socket", required_argument, NULL, 's'},
        {"workers", required_argument, NULL, 'w'}, {"keys", required_argument, NULL, 'k'},
        {"ops", required_argument, NULL, 'o'},     {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},       {NULL, 0, NULL, 0}};
    for (int o; (o = getopt_long(argc, argv, "n:s:w:k:o:hV", opts, NULL)) != -1;) {
        switch (o) {
            case 'n':
                name = optarg;
                break;
            case 's':
                socket = optarg;
                break;
            case 'w':
                workers = atoi(optarg);
                break;
            case 'k':
                keys = (uint32_t)strtoul(optarg, NULL, 10);
                break;
            case 'o':
                ops = strtoull(optarg, NULL, 10);
                break;
            case 'h':
                usage(stdout);
                return 0;
            case 'V':
                printf("khala-workers %s\n", KHALA_VERSION_STRING);
                return 0;
            default:
                usage(stderr);
                return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "khala-workers: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (!name || workers < 1 || workers > 64 || keys < 1) {
        fprintf(stderr, "khala-workers: --name is required; 1..64 workers; keys >= 1\n");
        return 2;
    }
    report_t *rep = mmap(NULL, sizeof(report_t) * (size_t)workers, PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (rep == MAP_FAILED)
        return 1;
    memset(rep, 0, sizeof(report_t) * (size_t)workers);
    printf("khala-workers: %d workers x %" PRIu64 " ops on cache '%s' through khalad, "
           "Zipf(0.99) over %u keys, 1 op in 50 a put\n\n",
           workers, ops, name, keys);
    /* The header is out before the workers fork, so that a worker's exit() (which runs the
     * usual exit handlers: stdio, and gcov's counters in a coverage build) cannot print it
     * again from its copy of the buffer. */
    fflush(stdout);
    uint64_t t0 = now_ns();
    for (int i = 0; i < workers; i++) {
        pid_t p = fork();
        if (p == 0) {
            worker(i, name, socket, keys, ops, &rep[i]);
            exit(0);
        }
    }
    for (int i = 0; i < workers; i++)
        wait(NULL);
    double secs = (double)(now_ns() - t0) / 1e9;
    printf("worker    reads   L1 hits   hit%%  loads   puts  p50 ns  p99 ns  bad  errors\n");
    uint64_t reads = 0, hits = 0, loads = 0, bad = 0, errors = 0;
    for (int i = 0; i < workers; i++) {
        report_t *r = &rep[i];
        qsort(r->lat_ns, r->nlat, sizeof(uint64_t), cmp_u64);
        uint64_t p50 = r->nlat ? r->lat_ns[r->nlat / 2] : 0;
        uint64_t p99 = r->nlat ? r->lat_ns[r->nlat * 99 / 100] : 0;
        printf("%-6d %8" PRIu64 " %9" PRIu64 " %5.1f%% %6" PRIu64 " %6" PRIu64 " %7" PRIu64
               " %7" PRIu64 " %4" PRIu64 " %7" PRIu64 "\n",
               i, r->reads, r->l1_hits,
               r->reads ? 100.0 * (double)r->l1_hits / (double)r->reads : 0.0, r->loads, r->puts,
               p50, p99, r->bad, r->errors);
        reads += r->reads;
        hits += r->l1_hits;
        loads += r->loads;
        bad += r->bad;
        errors += r->errors;
    }
    printf("\nall: %" PRIu64 " reads in %.2f s, L1 hit ratio %.1f%%\n"
           "     %" PRIu64
           " loads from the \"database\" (single-flight: one per key and miss wave)\n"
           "     %" PRIu64 " values failed their checksum, %" PRIu64 " errors\n"
           "(latency: one read as the worker sees it: an L1 hit, or a miss through khalad)\n",
           reads, secs, reads ? 100.0 * (double)hits / (double)reads : 0.0, loads, bad, errors);
    int ok = bad == 0 && errors == 0 && reads > 0;
    printf("khala-workers: %s\n", ok ? "OK" : "FAILED");
    return ok ? 0 : 1;
}
