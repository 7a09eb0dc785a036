/*
 * khala-bench utilities: clocks, workloads, percentiles and the multi-process read runner.
 *
 * HOW A GET RUN WORKS
 *
 *   parent: fill (backend-specific, before bu_run_readers)
 *           mmap(MAP_SHARED|MAP_ANONYMOUS): bu_ctl_t | out[0..procs) | samples[procs][...]
 *           fork procs readers ---------> child i: b->open(); ready++
 *           wait until ready == procs               spin until go
 *           go = 1; writer_tick() for S seconds     loop gets until stop (BU_READ_LOOP_BODY)
 *           stop = 1; waitpid all                   write out[i]; b->close(); _exit(0)
 *           sum ops/ns over readers; merge samples into p50/p99
 *
 * Each reader times its own interval (from seeing go to seeing stop), and ops_s is the sum of
 * each reader's ops over its own interval, so a slow fork or a late start does not dilute the
 * figure. Readers start at different offsets of the shared key sequence, so they do not walk
 * the same keys in lock step.
 *
 * Why the TSC for samples: two clock_gettime calls cost ~40 ns on this kind of VM, as much as a
 * get; rdtscp costs ~10 ns and its cost is measured once and subtracted.
 */
#include "bench_util.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double g_ns_per_tick = 1.0;
static uint64_t g_tick_overhead;

uint64_t bu_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t bu_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void bu_sleep_ns(uint64_t ns) {
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
                          .tv_nsec = (long)(ns % 1000000000u)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

void bu_tsc_calibrate(void) {
    uint64_t n0 = bu_now_ns(), t0 = bu_ticks();
    bu_sleep_ns(50 * 1000000u);
    uint64_t n1 = bu_now_ns(), t1 = bu_ticks();
    g_ns_per_tick = (double)(n1 - n0) / (double)(t1 - t0);
    /* The median cost of an empty bracket, so that a sample measures the get alone. */
    enum { N = 1001 };
    uint32_t d[N];
    for (int i = 0; i < N; i++) {
        uint64_t a = bu_ticks();
        d[i] = (uint32_t)(bu_ticks() - a);
    }
    qsort(d, N, sizeof(d[0]), cmp_u32);
    g_tick_overhead = d[N / 2];
}

double bu_ns_per_tick(void) {
    return g_ns_per_tick;
}

uint64_t bu_tick_overhead(void) {
    return g_tick_overhead;
}

double bu_percentile(uint32_t *v, size_t n, double p) {
    if (n == 0)
        return 0;
    qsort(v, n, sizeof(v[0]), cmp_u32);
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

int bu_workload_make(bu_workload_t *w, uint32_t keys, int dist, double alpha, uint64_t seed) {
    memset(w, 0, sizeof(*w));
    w->keys = keys;
    w->dist = dist;
    w->alpha = alpha;
    w->key_bytes = calloc(keys, BU_KEY_STRIDE);
    w->seq = malloc(sizeof(uint32_t) * BU_SEQ_LEN);
    uint32_t *perm = malloc(sizeof(uint32_t) * keys);
    double *cdf = dist == BU_DIST_ZIPF ? malloc(sizeof(double) * keys) : NULL;
    if (!w->key_bytes || !w->seq || !perm || (dist == BU_DIST_ZIPF && !cdf)) {
        free(perm);
        free(cdf);
        bu_workload_free(w);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < keys; i++) {
        char tmp[32];
        snprintf(tmp, sizeof(tmp), "key:%08u", i);
        memcpy(w->key_bytes + (size_t)i * BU_KEY_STRIDE, tmp, BU_KEY_LEN);
    }
    /* Zipf ranks go through a random permutation, so that the hottest keys are not the first
     * ones inserted (which an arena would place side by side). */
    uint64_t rs = seed;
    for (uint32_t i = 0; i < keys; i++)
        perm[i] = i;
    for (uint32_t i = keys - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(bu_rand(&rs) % (i + 1));
        uint32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    if (dist == BU_DIST_ZIPF) {
        double sum = 0;
        for (uint32_t i = 0; i < keys; i++)
            cdf[i] = (sum += 1.0 / pow((double)(i + 1), alpha));
        for (uint32_t i = 0; i < keys; i++)
            cdf[i] /= sum;
        for (uint32_t n = 0; n < BU_SEQ_LEN; n++) {
            double u = (double)(bu_rand(&rs) >> 11) * 0x1.0p-53;
            uint32_t lo = 0, hi = keys - 1;
            while (lo < hi) {
                uint32_t mid = lo + (hi - lo) / 2;
                if (cdf[mid] < u)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            w->seq[n] = perm[lo];
        }
    } else {
        for (uint32_t n = 0; n < BU_SEQ_LEN; n++)
            w->seq[n] = (uint32_t)(bu_rand(&rs) % keys);
    }
    free(perm);
    free(cdf);
    return 0;
}

void bu_workload_free(bu_workload_t *w) {
    free(w->key_bytes);
    free(w->seq);
    w->key_bytes = NULL;
    w->seq = NULL;
}

static void child_main(const bu_backend_t *b, const bu_workload_t *w, bu_ctl_t *ctl, unsigned i,
                       unsigned procs, uint32_t value_cap, bu_reader_out_t *out) {
    void *ctx = NULL;
    int rc = b->open(b->arg, i, &ctx, out);
    if (rc != 0) {
        out->rc = rc;
        atomic_fetch_add(&ctl->ready, 1);
        _exit(1);
    }
    atomic_fetch_add(&ctl->ready, 1);
    b->loop(ctx, w, ctl, (size_t)i * (BU_SEQ_LEN / procs), value_cap, out);
    b->close(ctx);
    _exit(0);
}

int bu_run_readers(const bu_backend_t *b, const bu_workload_t *w, unsigned procs, double seconds,
                   uint32_t value_cap, bu_get_result_t *res) {
    size_t ctl_size = (sizeof(bu_ctl_t) + 63) & ~(size_t)63;
    size_t out_size = ((sizeof(bu_reader_out_t) + 63) & ~(size_t)63) * procs;
    size_t samp_size = sizeof(uint32_t) * BU_SAMPLES_MAX * procs;
    size_t map_size = ctl_size + out_size + samp_size;
    uint8_t *m = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        fprintf(stderr, "%s: mmap of %zu bytes: %s\n", b->name, map_size, strerror(errno));
        return -1;
    }
    bu_ctl_t *ctl = (bu_ctl_t *)m;
    size_t out_stride = (sizeof(bu_reader_out_t) + 63) & ~(size_t)63;
    uint32_t *samples = (uint32_t *)(m + ctl_size + out_size);
    pid_t *pids = calloc(procs, sizeof(pid_t));
    int ret = -1;
    unsigned started = 0;
    if (!pids)
        goto out;
    fflush(NULL);
    for (unsigned i = 0; i < procs; i++) {
        bu_reader_out_t *o = (bu_reader_out_t *)(m + ctl_size + out_stride * i);
        o->samples = samples + (size_t)BU_SAMPLES_MAX * i;
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "%s: fork: %s\n", b->name, strerror(errno));
            goto stop;
        }
        if (pid == 0)
            child_main(b, w, ctl, i, procs, value_cap, o);
        pids[started++] = pid;
    }
    while (atomic_load(&ctl->ready) < procs)
        bu_sleep_ns(100000);
    for (unsigned i = 0; i < procs; i++) {
        bu_reader_out_t *o = (bu_reader_out_t *)(m + ctl_size + out_stride * i);
        if (o->rc != 0) {
            fprintf(stderr, "%s: reader %u failed to open: %d %s\n", b->name, i, o->rc, o->err);
            goto stop;
        }
    }
    uint64_t t0 = bu_now_ns(), limit = (uint64_t)(seconds * 1e9);
    atomic_store(&ctl->go, 1);
    for (uint64_t el = 0; el < limit; el = bu_now_ns() - t0) {
        if (b->writer_tick)
            b->writer_tick(b->arg, el);
        else
            bu_sleep_ns(limit - el < 10000000u ? limit - el : 10000000u);
    }
    ret = 0;
stop:
    atomic_store(&ctl->go, 1);
    atomic_store(&ctl->stop, 1);
    for (unsigned i = 0; i < started; i++) {
        int st;
        while (waitpid(pids[i], &st, 0) < 0 && errno == EINTR)
            ;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "%s: reader %u exited abnormally (status %d)\n", b->name, i, st);
            ret = -1;
        }
    }
    if (ret == 0) {
        memset(res, 0, sizeof(*res));
        uint64_t hits = 0, total_samples = 0;
        for (unsigned i = 0; i < procs; i++) {
            bu_reader_out_t *o = (bu_reader_out_t *)(m + ctl_size + out_stride * i);
            res->ops += o->ops;
            res->errors += o->errors;
            hits += o->hits;
            res->ops_s += o->ns ? (double)o->ops * 1e9 / (double)o->ns : 0;
            res->cpu_ops_s += o->cpu_ns ? (double)o->ops * 1e9 / (double)o->cpu_ns : 0;
            uint64_t n = o->nsamples < BU_SAMPLES_MAX ? o->nsamples : BU_SAMPLES_MAX;
            /* Compact every reader's samples to the front of the samples area. */
            memmove(samples + total_samples, o->samples, n * sizeof(uint32_t));
            total_samples += n;
        }
        res->hit_ratio = res->ops ? (double)hits / (double)res->ops : 0;
        double nspt = bu_ns_per_tick();
        double ovh = (double)bu_tick_overhead();
        double p50 = bu_percentile(samples, total_samples, 0.50);
        double p99 = bu_percentile(samples, total_samples, 0.99);
        res->p50_ns = (p50 > ovh ? p50 - ovh : 0) * nspt;
        res->p99_ns = (p99 > ovh ? p99 - ovh : 0) * nspt;
    }
out:
    free(pids);
    munmap(m, map_size);
    return ret;
}
