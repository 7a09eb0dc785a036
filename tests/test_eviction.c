/*
 * Eviction quality: the L1 policy, driven through the real code path (a reader handle's
 * khala_cache_get records hits in its ring; the writer drains the rings when a put must evict),
 * must reach at least the hit ratio of exact LRU of the same capacity on the same trace.
 *
 * The trace is Zipf(0.99) over 20,000 keys, 300,000 requests, from a fixed seed, so every run
 * replays the same requests. Cold start: every request counts, misses while filling included.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "khala/cache.h"
#include "l1_table.h"
#include "testutil.h"

#define NKEYS 20000u
#define NREQ 300000u
#define ZIPF_ALPHA 0.99
#define VALUE_LEN 32u

static char g_name[KHALA_NAME_MAX + 1];

static void suite_init(void) {
    snprintf(g_name, sizeof(g_name), "%s", tu_name("evict"));
}

static void suite_fini(void) {
    (void)khala__seg_unlink(g_name);
}

TestSuite(eviction, .init = suite_init, .fini = suite_fini, .timeout = 60);

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ln and exp without libm (the tests do not link it); precise to ~1e-12, ample for weights. */
static double ln_(double x) {
    int k = 0;
    while (x >= 2) {
        x /= 2;
        k++;
    }
    double y = (x - 1) / (x + 1), y2 = y * y, term = y, sum = 0;
    for (int n = 1; n < 60; n += 2) {
        sum += term / n;
        term *= y2;
    }
    return k * 0.69314718055994530942 + 2 * sum;
}

static double exp_(double x) {
    int k = 0;
    while (x < -0.5) {
        x /= 2;
        k++;
    }
    double sum = 1, term = 1;
    for (int n = 1; n < 30; n++) {
        term *= x / n;
        sum += term;
    }
    while (k-- > 0)
        sum *= sum;
    return sum;
}

/* NREQ key ids in [0, NKEYS), Zipf(ZIPF_ALPHA) by rank, from a fixed seed. */
static uint32_t *zipf_trace(uint64_t seed) {
    double *cdf = malloc(NKEYS * sizeof(*cdf));
    uint32_t *trace = malloc(NREQ * sizeof(*trace));
    cr_assert(cdf && trace);
    double sum = 0;
    for (uint32_t i = 0; i < NKEYS; i++) {
        sum += exp_(-ZIPF_ALPHA * ln_((double)(i + 1)));
        cdf[i] = sum;
    }
    for (uint32_t r = 0; r < NREQ; r++) {
        double u = (double)(splitmix(&seed) >> 11) / 9007199254740992.0 * sum;
        uint32_t lo = 0, hi = NKEYS - 1;
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (cdf[mid] < u)
                lo = mid + 1;
            else
                hi = mid;
        }
        trace[r] = lo;
    }
    free(cdf);
    return trace;
}

/* Exact LRU of `cap` items: a doubly linked list over key ids, most recent at the head. */
static double lru_ratio(const uint32_t *trace, uint32_t cap) {
    uint32_t *prev = malloc(NKEYS * sizeof(*prev)), *next = malloc(NKEYS * sizeof(*next));
    uint8_t *in = calloc(NKEYS, 1);
    cr_assert(prev && next && in);
    const uint32_t nil = UINT32_MAX;
    uint32_t head = nil, tail = nil, count = 0;
    uint64_t hits = 0;
    for (uint32_t r = 0; r < NREQ; r++) {
        uint32_t k = trace[r];
        if (in[k]) {
            hits++;
            if (head == k)
                continue;
            /* unlink */
            next[prev[k]] = next[k];
            if (next[k] != nil)
                prev[next[k]] = prev[k];
            else
                tail = prev[k];
        } else {
            if (count == cap) {
                uint32_t v = tail;
                tail = prev[v];
                if (tail != nil)
                    next[tail] = nil;
                else
                    head = nil;
                in[v] = 0;
                count--;
            }
            in[k] = 1;
            count++;
        }
        prev[k] = nil;
        next[k] = head;
        if (head != nil)
            prev[head] = k;
        head = k;
        if (tail == nil)
            tail = k;
    }
    free(prev);
    free(next);
    free(in);
    return (double)hits / NREQ;
}

/* Replay through the real L1: get through a reader handle; on a miss, put through the writer. */
static double l1_ratio(const uint32_t *trace, uint32_t cap) {
    khala_l1_t *t = tu_writer(g_name, cap, 64ull * 1024 * 1024);
    khala_cache_t *c = NULL;
    int rc = khala_cache_open(g_name, NULL, &c);
    cr_assert_eq(rc, 0, "khala_cache_open: %d %s", rc, khala_cache_errmsg(NULL));
    uint8_t val[VALUE_LEN], buf[VALUE_LEN];
    char key[16];
    uint64_t hits = 0;
    for (uint32_t r = 0; r < NREQ; r++) {
        int klen = snprintf(key, sizeof(key), "k%u", trace[r]);
        size_t len = 0;
        rc = khala_cache_get(c, key, (size_t)klen, buf, sizeof(buf), &len);
        if (rc == 0) {
            cr_assert(len == VALUE_LEN && tu_value_ok(buf, len, trace[r]),
                      "request %u: key %s returned a wrong value", r, key);
            hits++;
            continue;
        }
        cr_assert_eq(rc, KHALA_ENOTFOUND, "request %u: get %s: %d %s", r, key, rc,
                     khala_cache_errmsg(c));
        tu_value_make(val, sizeof(val), trace[r], r);
        rc = khala__l1_put(t, key, (size_t)klen, val, sizeof(val), 0, 0, NULL);
        cr_assert_eq(rc, 0, "request %u: put %s: %d %s", r, key, rc, khala__l1_errmsg(t));
    }
    khala_l1_stats_t st;
    khala__l1_stats(t, &st);
    cr_assert_eq(st.items, cap, "a full cache holds max_items (%u), has %llu", cap,
                 (unsigned long long)st.items);
    cr_assert_gt(st.evictions, 0, "the trace must make the policy evict");
    cr_assert_eq(st.reader_hits, hits, "the reader slot counts every hit");
    cr_assert_eq(khala__l1_check(t), 0, "%s", khala__l1_errmsg(t));
    khala_cache_close(c);
    khala__l1_close(t, 1);
    return (double)hits / NREQ;
}

static void compare(uint32_t cap) {
    uint32_t *trace = zipf_trace(0x5eed0000ull + 99);
    double lru = lru_ratio(trace, cap);
    double l1 = l1_ratio(trace, cap);
    cr_log_info("zipf(%.2f) keys=%u requests=%u capacity=%u: l1 hit ratio %.4f, lru %.4f",
                ZIPF_ALPHA, NKEYS, NREQ, cap, l1, lru);
    cr_assert(lru > 0.2 && lru < 0.95, "the LRU simulation is implausible: %.4f", lru);
    cr_assert_geq(l1, lru, "L1 hit ratio %.4f is below exact LRU's %.4f at %u items", l1, lru, cap);
    free(trace);
}

Test(eviction, zipf_hit_ratio_at_least_lru_at_1000_items) {
    compare(1000);
}

Test(eviction, zipf_hit_ratio_at_least_lru_at_5000_items) {
    compare(5000);
}
