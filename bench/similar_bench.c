/*
 * similar: how long one semantic look-up takes on the disk store (bench/similar_bench.h).
 *
 *   1. open a disk store (L3, not persistent, writes fsync'd once a second, as khalad's default)
 *      in a fresh directory under /tmp, with room for every item;
 *   2. put N embeddings (keys "emb:%08u", values of D random float32 components, uniform in
 *      -1..1: directions spread over the sphere, as real embeddings' are to a first order) in
 *      write batches of 1,000; not timed;
 *   3. per round, Q look-ups through the tier's own similar operation (the search over the
 *      in-memory index, then each match's record read from LMDB, as khalad does): each query is
 *      a stored vector with noise of 5% of its scale added, asked with k matches at
 *      threshold 0.9, so that each look-up finds its near duplicate (checked: the bench fails
 *      when it does not) and copies k values or fewer;
 *   3b. the first look-up, which builds the index from the records, is timed apart (build_ms);
 *   4. the figure is the wall time per look-up (median over the round's queries, and the 99th
 *      percentile), and the scan rate it implies (N x D x 4 bytes per look-up).
 *
 * What is not measured: the socket round trip to khalad (a few tens of µs: `khala-bench miss`
 * measures it), and the index build at open (one pass over the records).
 */
#include "similar_bench.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "khala/cache.h"
#include "tier.h"
#include "tier_disk.h"

#define BATCH 1000u

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* xorshift64*: a float uniform in -1..1. */
static float rnd(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return (float)((*s * 2685821657736338717ull) >> 40) / (float)(1u << 23) - 1.0f;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The vector of item i (regenerated from its seed: the bench keeps no copy). */
static void item_vec(uint32_t i, uint32_t dim, float *v) {
    uint64_t s = 0x9e3779b97f4a7c15ull * (i + 1);
    for (uint32_t j = 0; j < dim; j++)
        v[j] = rnd(&s);
}

static int fill(khala_tier_t *t, const bench_similar_opts_t *o) {
    float *vals = malloc((size_t)BATCH * o->dim * sizeof(float));
    char(*names)[16] = malloc(BATCH * sizeof(*names));
    khala_bytes_t keys[BATCH];
    khala_tier_value_t tv[BATCH];
    int rc = vals && names ? 0 : -1;
    for (uint32_t done = 0; !rc && done < o->items; done += BATCH) {
        uint32_t n = o->items - done < BATCH ? o->items - done : BATCH;
        for (uint32_t i = 0; i < n; i++) {
            float *v = vals + (size_t)i * o->dim;
            item_vec(done + i, o->dim, v);
            snprintf(names[i], sizeof(names[i]), "emb:%08u", done + i);
            keys[i] = (khala_bytes_t){(const uint8_t *)names[i], strlen(names[i])};
            tv[i] = (khala_tier_value_t){v, o->dim * sizeof(float), 1, 0, KHALA_TYPE_EMBEDDING};
        }
        if (t->ops->mput(t, n, keys, tv) != 0) {
            fprintf(stderr, "similar: filling: %s\n", t->err);
            rc = -1;
        }
    }
    free(vals);
    free(names);
    return rc;
}

int bench_similar(const bench_similar_opts_t *o) {
    char dir[] = "/tmp/khala-bench-similar-XXXXXX", path[64], err[256] = "";
    if (!mkdtemp(dir)) {
        perror("similar: mkdtemp");
        return -1;
    }
    snprintf(path, sizeof(path), "%s/l3", dir);
    uint64_t bytes = (uint64_t)o->items * (o->dim * 4u + 32u) + (64u << 20);
    khala_tier_disk_opts_t dopts = {.path = path,
                                    .level = KHALA_LEVEL_L3,
                                    .max_items = o->items,
                                    .max_bytes = bytes,
                                    .persistent = false,
                                    .sync_every_ms = 1000};
    khala_tier_t *t = NULL;
    if (khala__tier_disk_open(&dopts, &t, err, sizeof(err)) != 0) {
        fprintf(stderr, "similar: %s\n", err);
        harness_rmtree(dir);
        return -1;
    }
    double t0 = now_s();
    int rc = fill(t, o);
    printf("filled %u embeddings of dim %u in %.1f s\n", o->items, o->dim, now_s() - t0);
    double *ms = malloc(o->queries * sizeof(double)), *med = malloc(o->rounds * sizeof(double)),
           *p99 = malloc(o->rounds * sizeof(double));
    float *q = malloc(o->dim * sizeof(float));
    khala_tier_match_t *m = calloc(o->k, sizeof(*m));
    if (!ms || !med || !p99 || !q || !m)
        rc = -1;
    /* The first look-up builds the index from the records (daemon/tier_disk_vectors.c): timed
     * apart, as build_ms. */
    uint64_t seed = 12345, matches = 0;
    double build_ms = 0;
    if (!rc) {
        uint32_t n = 0;
        item_vec(0, o->dim, q);
        double a = now_s();
        if (t->ops->similar(t, q, o->dim, 0.9f, o->k, m, &n) != 0) {
            fprintf(stderr, "similar: first look-up: %s\n", t->err);
            rc = -1;
        }
        build_ms = (now_s() - a) * 1e3;
        for (uint32_t j = 0; j < n; j++)
            khala__tier_match_free(&m[j]);
        printf("first look-up (builds the index): %.1f ms\n", build_ms);
    }
    for (unsigned r = 0; !rc && r < o->rounds; r++) {
        for (uint32_t i = 0; !rc && i < o->queries; i++) {
            uint32_t target = (uint32_t)((rnd(&seed) + 1.0f) / 2.0f * (float)(o->items - 1));
            item_vec(target, o->dim, q);
            for (uint32_t j = 0; j < o->dim; j++)
                q[j] += 0.05f * rnd(&seed);
            uint32_t n = 0;
            double a = now_s();
            if (t->ops->similar(t, q, o->dim, 0.9f, o->k, m, &n) != 0) {
                fprintf(stderr, "similar: look-up: %s\n", t->err);
                rc = -1;
                break;
            }
            ms[i] = (now_s() - a) * 1e3;
            char want[16];
            snprintf(want, sizeof(want), "emb:%08u", target);
            if (n == 0 || m[0].klen != strlen(want) || memcmp(m[0].key, want, m[0].klen) != 0) {
                fprintf(stderr, "similar: the near duplicate of %s was not the first match\n",
                        want);
                rc = -1;
            }
            matches += n;
            for (uint32_t j = 0; j < n; j++)
                khala__tier_match_free(&m[j]);
        }
        if (rc)
            break;
        qsort(ms, o->queries, sizeof(double), cmp_double);
        med[r] = ms[o->queries / 2];
        p99[r] = ms[(size_t)((o->queries - 1) * 0.99)];
        printf("round %u: %u look-ups, median %.3f ms, p99 %.3f ms\n", r + 1, o->queries, med[r],
               p99[r]);
    }
    if (!rc) {
        double mm = 0, pp = 0;
        qsort(med, o->rounds, sizeof(double), cmp_double);
        qsort(p99, o->rounds, sizeof(double), cmp_double);
        mm = med[o->rounds / 2];
        pp = p99[o->rounds / 2];
        double gbs = (double)o->items * o->dim * 4.0 / (mm / 1e3) / 1e9;
        printf("bench=similar items=%u dim=%u k=%u queries=%u rounds=%u ms_median=%.3f "
               "ms_p99=%.3f scan_gb_s=%.2f spread_ms=%.3f matches_per_query=%.2f build_ms=%.1f\n",
               o->items, o->dim, o->k, o->queries, o->rounds, mm, pp, gbs,
               med[o->rounds - 1] - med[0], (double)matches / ((double)o->queries * o->rounds),
               build_ms);
    }
    free(ms);
    free(med);
    free(p99);
    free(q);
    free(m);
    t->ops->close(t);
    harness_rmtree(dir);
    return rc;
}
