/*
 * The L1 benchmarks: reads through the public client API (khala_cache_get) in forked reader
 * processes while this process is the writer (khala__l1_*), plus the TTL sweep and the
 * allocator overhead measurements.
 *
 * The writer sizes the segment so that every key fits (max_items = keys, max_bytes with a
 * quarter of slack for items retired by overwrites), fills it, then, while readers run, calls
 * khala__l1_maintain every 10 ms as khalad would (l1-get) or also overwrites uniformly chosen
 * keys at a paced rate (l1-mixed). Pacing: every slice does the puts that bring the count up
 * to rate * elapsed, then maintains and sleeps 1 ms, so puts come in bursts of rate/1000.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bench.h"
#include "khala/cache.h"
#include "l1_table.h"

typedef struct l1_bench {
    bench_target_t base; /* first: the target interface */
    char name[KHALA_NAME_MAX + 1];
    khala_l1_t *t;
    const bu_workload_t *w;
    uint8_t *value;      /* value bytes the writer puts */
    uint32_t value_size; /* bytes */
    uint64_t write_rate; /* puts per second, 0 for none */
    uint64_t puts;       /* puts done during the reads */
    uint64_t put_fails;  /* of which failed */
    uint64_t last_maint; /* elapsed ns of the last maintain */
    uint64_t rng;        /* writer's key choice */
} l1_bench_t;

static uint64_t arena_for(uint64_t items, uint32_t klen, uint32_t vmax) {
    /* An item block: the item, its key and value, the TLSF header, rounded to 16 bytes. */
    uint64_t per = (KHALA_ITEM_SIZE(klen, vmax) + 16 + 15) & ~(uint64_t)15;
    return items * per + items * per / 4 + (4u << 20);
}

static int l1_create(l1_bench_t *b, uint32_t items, uint64_t max_bytes, uint32_t max_value) {
    khala_seg_config_t cfg;
    char err[256];
    khala__seg_config_init(&cfg);
    cfg.max_items = items < 16 ? 16 : items;
    cfg.max_bytes = max_bytes < (64u << 10) ? (64u << 10) : max_bytes;
    if (max_value > cfg.max_value)
        cfg.max_value = max_value;
    snprintf(b->name, sizeof(b->name), "khala-bench-%d", (int)getpid());
    int rc = khala__l1_open(b->name, &cfg, &b->t, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "khala__l1_open(%s): %d %s: %s\n", b->name, rc, khala_strerror(rc), err);
    return rc;
}

static int l1_fill(l1_bench_t *b, const bu_workload_t *w, int64_t ttl_ms) {
    for (uint32_t i = 0; i < w->keys; i++) {
        int rc =
            khala__l1_put(b->t, bu_key(w, i), BU_KEY_LEN, b->value, b->value_size, ttl_ms, 0, NULL);
        if (rc != 0) {
            fprintf(stderr, "put %u: %d %s: %s\n", i, rc, khala_strerror(rc),
                    khala__l1_errmsg(b->t));
            return rc;
        }
    }
    (void)khala__l1_maintain(b->t);
    khala_l1_stats_t st;
    khala__l1_stats(b->t, &st);
    if (st.evictions)
        fprintf(stderr, "warning: the fill evicted %llu items\n", (unsigned long long)st.evictions);
    return 0;
}

/* Readers ------------------------------------------------------------------------------------*/

static int l1_open(void *arg, unsigned reader, void **ctx, bu_reader_out_t *out) {
    l1_bench_t *b = arg;
    khala_cache_t *c;
    (void)reader;
    int rc = khala_cache_open(b->name, NULL, &c);
    if (rc != 0) {
        snprintf(out->err, sizeof(out->err), "khala_cache_open: %s", khala_cache_errmsg(NULL));
        return rc;
    }
    *ctx = c;
    return 0;
}

static inline int l1_get(khala_cache_t *c, const char *key, size_t klen, uint8_t *buf,
                         uint32_t cap) {
    size_t len;
    int rc = khala_cache_get(c, key, klen, buf, cap, &len);
    return rc == 0 ? 1 : rc == KHALA_ENOTFOUND ? 0 : -1;
}

static void l1_loop(void *ctx, const bu_workload_t *w, bu_ctl_t *ctl, size_t start,
                    uint32_t value_cap, bu_reader_out_t *out) {
    khala_cache_t *c = ctx;
    BU_READ_LOOP_BODY(l1_get, c, w, ctl, start, value_cap, out);
}

static void l1_close(void *ctx) {
    khala_cache_close(ctx);
}

/* Writer -------------------------------------------------------------------------------------*/

static void l1_tick(void *arg, uint64_t el) {
    l1_bench_t *b = arg;
    if (b->write_rate) {
        uint64_t target = (uint64_t)((double)b->write_rate * (double)el / 1e9);
        while (b->puts < target) {
            uint32_t i = (uint32_t)(bu_rand(&b->rng) % b->w->keys);
            int rc = khala__l1_put(b->t, bu_key(b->w, i), BU_KEY_LEN, b->value, b->value_size, 0, 0,
                                   NULL);
            b->put_fails += rc != 0;
            b->puts++;
        }
        if (el - b->last_maint >= 1000000u) {
            (void)khala__l1_maintain(b->t);
            b->last_maint = el;
        }
        bu_sleep_ns(1000000u);
        return;
    }
    (void)khala__l1_maintain(b->t);
    bu_sleep_ns(10000000u);
}

static int l1_run(bench_target_t *bt, const bu_workload_t *w, unsigned procs, double seconds,
                  uint64_t write_rate, bench_get_t *out) {
    l1_bench_t *b = (l1_bench_t *)bt;
    b->w = w;
    b->write_rate = write_rate;
    b->puts = b->put_fails = b->last_maint = 0;
    bu_backend_t be = {.name = write_rate ? "l1-mixed" : "l1-get",
                       .arg = b,
                       .open = l1_open,
                       .loop = l1_loop,
                       .close = l1_close,
                       .writer_tick = l1_tick};
    memset(out, 0, sizeof(*out));
    uint64_t t0 = bu_now_ns();
    if (bu_run_readers(&be, w, procs, seconds, b->value_size, &out->r) != 0)
        return -1;
    out->puts_s = (double)b->puts * 1e9 / (double)(bu_now_ns() - t0);
    out->put_fails = b->put_fails;
    return 0;
}

static void l1_free(bench_target_t *bt) {
    l1_bench_t *b = (l1_bench_t *)bt;
    khala__l1_close(b->t, 1);
    free(b->value);
    free(b);
}

bench_target_t *bench_l1_setup(const bench_opts_t *o, const bu_workload_t *w) {
    l1_bench_t *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->base.name = "l1-get";
    b->base.run = l1_run;
    b->base.free = l1_free;
    b->w = w;
    b->value_size = o->value_size;
    b->rng = 42;
    b->value = malloc(o->value_size ? o->value_size : 1);
    if (!b->value)
        goto fail;
    memset(b->value, 'v', o->value_size);
    if (l1_create(b, w->keys, arena_for(w->keys, BU_KEY_LEN, o->value_size), o->value_size))
        goto fail;
    if (l1_fill(b, w, 0) != 0)
        goto fail;
    return &b->base;
fail:
    l1_free(&b->base);
    return NULL;
}

/* Sweep and overhead -------------------------------------------------------------------------*/

int bench_sweep(const bench_opts_t *o, bench_sweep_t *out) {
    l1_bench_t b = {.value_size = o->value_size};
    (void)b.base;
    bu_workload_t w;
    int ret = -1;
    memset(out, 0, sizeof(*out));
    if (bu_workload_make(&w, o->items, BU_DIST_UNIFORM, 0, 1) != 0)
        return -1;
    b.value = calloc(1, o->value_size ? o->value_size : 1);
    if (!b.value)
        goto out;
    if (l1_create(&b, o->items, arena_for(o->items, BU_KEY_LEN, o->value_size), o->value_size))
        goto out;
    uint64_t t0 = bu_now_ns();
    /* expired_pct of the items (spread evenly over the table) get a 1 ms TTL, the rest none. */
    for (uint32_t i = 0; i < o->items; i++) {
        int64_t ttl = i % 100 < o->expired_pct ? 1 : 0;
        int rc = khala__l1_put(b.t, bu_key(&w, i), BU_KEY_LEN, b.value, b.value_size, ttl, 0, NULL);
        if (rc != 0) {
            fprintf(stderr, "put %u: %d %s\n", i, rc, khala__l1_errmsg(b.t));
            goto out;
        }
    }
    out->fill_s = (double)(bu_now_ns() - t0) / 1e9;
    bu_sleep_ns(10 * 1000000u);
    khala_l1_stats_t st;
    khala__l1_stats(b.t, &st);
    /* A full sweep is max_items descs, in the slices khalad would run between other work. */
    const size_t budget = 4096;
    t0 = bu_now_ns();
    for (uint64_t n = 0; n < st.max_items; n += budget)
        out->removed += khala__l1_sweep(b.t, budget);
    out->ms = (double)(bu_now_ns() - t0) / 1e6;
    ret = 0;
out:
    khala__l1_close(b.t, 1);
    free(b.value);
    bu_workload_free(&w);
    return ret;
}

/* Bytes of [p, p + len) in resident pages (mincore); len rounded up to pages. */
static uint64_t resident_bytes(const void *p, uint64_t len) {
    long page = sysconf(_SC_PAGESIZE);
    uint64_t pages = (len + (uint64_t)page - 1) / (uint64_t)page, n = 0;
    unsigned char *vec = malloc(pages ? pages : 1);
    if (!vec || mincore((void *)(uintptr_t)p, len, vec) != 0) {
        free(vec);
        return len; /* unknown: count it all */
    }
    for (uint64_t i = 0; i < pages; i++)
        n += vec[i] & 1;
    free(vec);
    return n * (uint64_t)page;
}

int bench_overhead(const bench_opts_t *o, bench_overhead_t *out) {
    l1_bench_t b = {0};
    bu_workload_t w;
    int ret = -1;
    uint64_t rng = 7;
    uint32_t lo = o->value_size, hi = o->value_size_max > lo ? o->value_size_max : lo;
    memset(out, 0, sizeof(*out));
    if (bu_workload_make(&w, o->items, BU_DIST_UNIFORM, 0, 1) != 0)
        return -1;
    b.value = calloc(1, hi ? hi : 1);
    if (!b.value)
        goto out;
    if (l1_create(&b, o->items, arena_for(o->items, BU_KEY_LEN, hi), hi))
        goto out;
    for (uint32_t i = 0; i < o->items; i++) {
        uint32_t vlen = lo + (uint32_t)(bu_rand(&rng) % (hi - lo + 1));
        int rc = khala__l1_put(b.t, bu_key(&w, i), BU_KEY_LEN, b.value, vlen, 0, 0, NULL);
        if (rc != 0) {
            fprintf(stderr, "put %u: %d %s\n", i, rc, khala__l1_errmsg(b.t));
            goto out;
        }
    }
    khala_l1_stats_t st;
    khala__l1_stats(b.t, &st);
    out->items = st.items;
    out->item_bytes = st.item_bytes;
    out->payload_bytes = st.payload_bytes;
    khala_seg_t *seg = khala__l1_seg(b.t);
    out->meta_per_item = (double)(seg->size - st.arena_bytes) / st.max_items;
    out->meta_resident_per_item = (double)resident_bytes(seg->base, seg->arena_lo) / st.max_items;
    ret = 0;
out:
    khala__l1_close(b.t, 1);
    free(b.value);
    bu_workload_free(&w);
    return ret;
}

int bench_hitloop(const bench_opts_t *o, uint64_t *gets, uint64_t *hits) {
    l1_bench_t b;
    memset(&b, 0, sizeof(b));
    uint8_t *value = malloc(o->value_size ? o->value_size : 1);
    uint8_t *buf = malloc(o->value_size ? o->value_size : 1);
    char *keys = malloc((size_t)o->keys * BU_KEY_STRIDE);
    khala_cache_t *c = NULL;
    int rc = -1;
    if (!value || !buf || !keys)
        goto out;
    memset(value, 'v', o->value_size);
    /* The keys are made before the loop, so the loop counts the gets and little else. */
    for (uint32_t i = 0; i < o->keys; i++)
        snprintf(keys + (size_t)i * BU_KEY_STRIDE, BU_KEY_STRIDE, "key:%08u", i % 100000000u);
    if (l1_create(&b, o->keys, arena_for(o->keys, BU_KEY_LEN, o->value_size), o->value_size) != 0)
        goto out;
    for (uint32_t i = 0; i < o->keys; i++) {
        if (khala__l1_put(b.t, keys + (size_t)i * BU_KEY_STRIDE, BU_KEY_LEN, value, o->value_size,
                          0, 0, NULL) != 0) {
            fprintf(stderr, "put %u: %s\n", i, khala__l1_errmsg(b.t));
            goto out;
        }
    }
    if (khala_cache_open(b.name, NULL, &c) != 0) {
        fprintf(stderr, "khala_cache_open: %s\n", khala_cache_errmsg(NULL));
        goto out;
    }
    uint64_t n = 0, h = 0;
    for (uint32_t r = 0; r < o->rounds; r++) {
        for (uint32_t i = 0; i < o->keys; i++) {
            size_t len;
            h += khala_cache_get(c, keys + (size_t)i * BU_KEY_STRIDE, BU_KEY_LEN, buf,
                                 o->value_size, &len) == 0;
            n++;
        }
    }
    *gets = n;
    *hits = h;
    rc = 0;
out:
    khala_cache_close(c);
    if (b.t)
        khala__l1_close(b.t, 1);
    free(keys);
    free(value);
    free(buf);
    return rc;
}
