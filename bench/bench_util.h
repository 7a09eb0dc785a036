/*
 * Shared machinery of khala-bench: clocks, a key workload (keys and a pre-generated sequence of
 * key indices, uniform or Zipf), latency samples and percentiles, and the multi-process read
 * runner that every get benchmark (L1, plain table, LMDB) goes through, so that the three are
 * measured by the same loop, the same clock and the same key sequence.
 *
 * Start at bu_run_readers(); a backend supplies its read loop by instantiating
 * BU_READ_LOOP_BODY (below) with its own inline get, so that no indirect call sits on the
 * measured path.
 */
#ifndef KHALA_BENCH_BENCH_UTIL_H
#define KHALA_BENCH_BENCH_UTIL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <x86intrin.h>

/* Keys are "key:%08u": 12 bytes, stored at a 16-byte stride. */
#define BU_KEY_LEN 12u
#define BU_KEY_STRIDE 16u
/* Entries of the pre-generated key sequence (a power of two). */
#define BU_SEQ_LEN (1u << 22)
/* One get in BU_SAMPLE_EVERY is timed. */
#define BU_SAMPLE_EVERY 64u
/* Latency samples kept per reader; later samples overwrite the ring. */
#define BU_SAMPLES_MAX (1u << 20)
/* Gets between two checks of the stop flag. */
#define BU_BATCH 1024u

enum { BU_DIST_UNIFORM = 0, BU_DIST_ZIPF = 1 };

/* Monotonic clock in nanoseconds. */
uint64_t bu_now_ns(void);
/* CPU time of the calling thread in nanoseconds. */
uint64_t bu_cpu_ns(void);
/* Sleep for ns nanoseconds. */
void bu_sleep_ns(uint64_t ns);

/* Time-stamp counter. bu_tsc_calibrate() measures the tick rate against the monotonic clock
 * and the cost of a back-to-back pair of reads, which sampled latencies are corrected by. */
static inline uint64_t bu_ticks(void) {
    unsigned aux;
    return __rdtscp(&aux);
}
void bu_tsc_calibrate(void);
double bu_ns_per_tick(void);
uint64_t bu_tick_overhead(void);

/* splitmix64: a small, good generator for workloads. */
static inline uint64_t bu_rand(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The key set and the order in which readers visit it. Built before the fork, so children
 * share it copy-on-write and generation costs nothing during the timed loop. */
typedef struct bu_workload {
    uint32_t keys;   /* key count */
    int dist;        /* BU_DIST_UNIFORM or BU_DIST_ZIPF */
    double alpha;    /* Zipf exponent */
    char *key_bytes; /* keys * BU_KEY_STRIDE bytes; key i at i * BU_KEY_STRIDE */
    uint32_t *seq;   /* BU_SEQ_LEN key indices; Zipf ranks are mapped through a permutation */
} bu_workload_t;

int bu_workload_make(bu_workload_t *w, uint32_t keys, int dist, double alpha, uint64_t seed);
void bu_workload_free(bu_workload_t *w);

static inline const char *bu_key(const bu_workload_t *w, uint32_t i) {
    return w->key_bytes + (size_t)i * BU_KEY_STRIDE;
}

/* What one reader reports back to the parent, in a shared anonymous mapping. */
typedef struct bu_reader_out {
    uint64_t ops;      /* gets done in the timed interval */
    uint64_t hits;     /* of which hits */
    uint64_t errors;   /* gets that failed with anything but "not found" */
    uint64_t ns;       /* length of this reader's timed interval */
    uint64_t cpu_ns;   /* CPU time this reader got in that interval */
    uint64_t nsamples; /* latency samples taken (the ring keeps the last BU_SAMPLES_MAX) */
    int rc;            /* 0, or the error that stopped the reader before the loop */
    char err[124];     /* detail of rc */
    uint32_t *samples; /* BU_SAMPLES_MAX tick counts; set by the runner, in the mapping */
} bu_reader_out_t;

/* The control block the runner shares with its readers. */
typedef struct bu_ctl {
    atomic_uint ready; /* readers that opened their backend */
    atomic_uint go;    /* set by the parent to start the timed loop */
    atomic_uint stop;  /* set by the parent to end it */
} bu_ctl_t;

/* A get backend. The child callbacks run in the forked readers. */
typedef struct bu_backend {
    const char *name;
    void *arg;
    /* In the child: attach; *ctx is handed to loop and close. 0 or an error (with out->err). */
    int (*open)(void *arg, unsigned reader, void **ctx, bu_reader_out_t *out);
    /* In the child: wait for ctl->go, then get keys from the sequence starting at `start` until
     * ctl->stop, filling out. Write it with BU_READ_LOOP_BODY. */
    void (*loop)(void *ctx, const bu_workload_t *w, bu_ctl_t *ctl, size_t start, uint32_t value_cap,
                 bu_reader_out_t *out);
    void (*close)(void *ctx);
    /* In the parent while readers run: do a short slice of writer work (at most ~1 ms, sleeping
     * the rest) given the time since the start. NULL for none. */
    void (*writer_tick)(void *arg, uint64_t elapsed_ns);
} bu_backend_t;

/* The sum over readers of one run. */
typedef struct bu_get_result {
    double ops_s;     /* sum over readers of ops / own interval */
    double cpu_ops_s; /* sum over readers of ops / own CPU time: what a reader does per second
                         on a core of its own, insensitive to other tenants of the machine */
    double p50_ns;    /* median sampled latency, timer cost removed */
    double p99_ns;    /* 99th percentile sampled latency */
    double hit_ratio; /* hits / ops */
    uint64_t ops, errors;
} bu_get_result_t;

/* Fork `procs` readers running b's loop for `seconds`, the parent running b->writer_tick, and
 * collect the results. 0, or -1 with a message printed to stderr. */
int bu_run_readers(const bu_backend_t *b, const bu_workload_t *w, unsigned procs, double seconds,
                   uint32_t value_cap, bu_get_result_t *res);

/* Sort v[0..n) and return the p-quantile (0..1). */
double bu_percentile(uint32_t *v, size_t n, double p);

/* The measured loop, shared by every backend. GET(ctx, key, klen, buf, cap) is an expression
 * that evaluates to 1 on a hit, 0 on a miss and < 0 on an error; it is expanded inline.
 * Every BU_SAMPLE_EVERY-th get is bracketed by the TSC. The compiler barrier on buf keeps the
 * copy-out from being optimized away for backends whose copy is inlined. */
#define BU_READ_LOOP_BODY(GET, ctx, w, ctl, start, value_cap, out)                                 \
    do {                                                                                           \
        uint8_t *buf_ = malloc((value_cap) ? (value_cap) : 1);                                     \
        uint64_t ops_ = 0, hits_ = 0, errs_ = 0, ns_ = 0;                                          \
        size_t pos_ = (start);                                                                     \
        while (!atomic_load_explicit(&(ctl)->go, memory_order_acquire))                            \
            ;                                                                                      \
        uint64_t t0_ = bu_now_ns(), c0_ = bu_cpu_ns();                                             \
        while (!atomic_load_explicit(&(ctl)->stop, memory_order_relaxed)) {                        \
            for (unsigned j_ = 0; j_ < BU_BATCH; j_++, ops_++) {                                   \
                const char *k_ = bu_key((w), (w)->seq[pos_++ & (BU_SEQ_LEN - 1)]);                 \
                int r_;                                                                            \
                if ((ops_ & (BU_SAMPLE_EVERY - 1)) == 0) {                                         \
                    uint64_t a_ = bu_ticks();                                                      \
                    r_ = GET((ctx), k_, BU_KEY_LEN, buf_, (value_cap));                            \
                    uint64_t d_ = bu_ticks() - a_;                                                 \
                    (out)->samples[(out)->nsamples++ & (BU_SAMPLES_MAX - 1)] =                     \
                        d_ > UINT32_MAX ? UINT32_MAX : (uint32_t)d_;                               \
                } else {                                                                           \
                    r_ = GET((ctx), k_, BU_KEY_LEN, buf_, (value_cap));                            \
                }                                                                                  \
                __asm__ volatile("" : : "r"(buf_) : "memory");                                     \
                hits_ += r_ > 0;                                                                   \
                errs_ += r_ < 0;                                                                   \
            }                                                                                      \
        }                                                                                          \
        ns_ = bu_now_ns() - t0_;                                                                   \
        (out)->cpu_ns = bu_cpu_ns() - c0_;                                                         \
        (out)->ops = ops_;                                                                         \
        (out)->hits = hits_;                                                                       \
        (out)->errors = errs_;                                                                     \
        (out)->ns = ns_;                                                                           \
        free(buf_);                                                                                \
    } while (0)

#endif /* KHALA_BENCH_BENCH_UTIL_H */
