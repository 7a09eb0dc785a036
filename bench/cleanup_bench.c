/*
 * khala-bench cleanup: the disk store as L3 (daemon/tier_disk_cleanup.c) running one full
 * periodic cleanup over a store of o->items rows, through the tier's own tick, as khalad runs
 * it. Two cases, each in a fresh store under /tmp:
 *   expired  o->items rows written with a 1 ms TTL, then the cleanup: every row deleted;
 *   over     2 * o->items rows written with max_entries 2N, the store reopened with max_entries
 *            N (as after lowering [l3] max_entries and restarting) and an archive: the cleanup
 *            evicts N rows, least valuable first, into the archive (whose bound, N, it fills).
 * Each tick is timed alone: the sum is the full cleanup's work (the seed's "<100 ms for full
 * cleanup"), the longest tick what one client could wait behind it. The ticks run back to back
 * (khalad spaces them about 10 ms apart), so the sum is the cleanup's cost, not its duration.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "harness.h"
#include "khala/error.h"
#include "tier_disk.h"

#define FILL_CHUNK 10000u

static int fill(khala_tier_t *t, uint32_t from, uint32_t n, uint32_t value_size, int64_t ttl_ms) {
    khala_bytes_t *keys = calloc(FILL_CHUNK, sizeof(*keys));
    khala_tier_value_t *vals = calloc(FILL_CHUNK, sizeof(*vals));
    char(*kb)[24] = calloc(FILL_CHUNK, 24);
    char *val = calloc(1, value_size ? value_size : 1);
    int rc = keys && vals && kb && val ? 0 : -1;
    memset(val, 'v', value_size);
    for (uint32_t done = 0; !rc && done < n;) {
        uint32_t m = n - done < FILL_CHUNK ? n - done : FILL_CHUNK;
        for (uint32_t i = 0; i < m; i++) {
            int len = snprintf(kb[i], 24, "row:%010u", from + done + i);
            keys[i] = (khala_bytes_t){(const uint8_t *)kb[i], (size_t)len};
            vals[i] = (khala_tier_value_t){val, value_size, 1, ttl_ms, KHALA_TYPE_MEMORY_ENTITY};
        }
        if ((rc = t->ops->mput(t, m, keys, vals)) != 0)
            fprintf(stderr, "cleanup: filling: %s\n", t->err);
        done += m;
    }
    free(keys);
    free(vals);
    free(kb);
    free(val);
    return rc;
}

static int open_store(const char *path, uint64_t max_items, int archive, uint32_t batch,
                      khala_tier_t **t) {
    char err[512];
    khala_tier_disk_opts_t o = {.path = path,
                                .level = KHALA_LEVEL_L3,
                                .max_items = max_items,
                                .max_bytes = (uint64_t)1 << 34,
                                .persistent = true,
                                .sync_every_ms = 1000,
                                .archive_retention_ms = archive ? 86400000 : 0,
                                .cleanup_interval_ms = batch ? 3600000 : 0,
                                .cleanup_batch = batch};
    int rc = khala__tier_disk_open(&o, t, err, sizeof(err));
    if (rc)
        fprintf(stderr, "cleanup: opening %s: %s\n", path, err);
    return rc;
}

static uint64_t done_rows(khala_tier_t *t, bench_cleanup_case_t c) {
    khala_tier_stats_t s;
    memset(&s, 0, sizeof(s));
    t->ops->stats(t, &s);
    return c == BENCH_CLEANUP_EXPIRED ? s.expirations : s.evictions;
}

int bench_cleanup(const bench_opts_t *o, bench_cleanup_case_t c, uint32_t batch,
                  bench_cleanup_t *out) {
    char dir[] = "/tmp/khala-bench-cleanup-XXXXXX", path[64];
    if (!mkdtemp(dir)) {
        perror("cleanup: mkdtemp");
        return -1;
    }
    snprintf(path, sizeof(path), "%s/l3", dir);
    memset(out, 0, sizeof(*out));
    khala_tier_t *t = NULL;
    int rc = -1;
    uint64_t n = o->items, t0 = bu_now_ns();
    if (c == BENCH_CLEANUP_EXPIRED) {
        if (open_store(path, n, 0, batch, &t) || fill(t, 0, o->items, o->value_size, 1))
            goto out;
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL); /* every row has expired */
    } else {
        if (open_store(path, 2 * n, 0, 0, &t) || fill(t, 0, 2 * o->items, o->value_size, 0))
            goto out;
        t->ops->close(t);
        if (open_store(path, n, 1, batch, &t)) {
            t = NULL;
            goto out;
        }
    }
    out->fill_s = (double)(bu_now_ns() - t0) / 1e9;
    int64_t now_ms = 1;
    while (done_rows(t, c) < n) {
        uint64_t s0 = bu_now_ns(), c0 = bu_cpu_ns();
        t->ops->tick(t, now_ms++);
        double ms = (double)(bu_now_ns() - s0) / 1e6;
        out->cpu_ms += (double)(bu_cpu_ns() - c0) / 1e6;
        out->ms += ms;
        if (ms > out->max_step_ms)
            out->max_step_ms = ms;
        if (++out->steps > 10u * (unsigned)(n / batch + 10)) {
            fprintf(stderr, "cleanup: not done after %u steps (%llu of %llu rows): %s\n",
                    out->steps, (unsigned long long)done_rows(t, c), (unsigned long long)n, t->err);
            goto out;
        }
    }
    out->rows = done_rows(t, c);
    rc = 0;
out:
    if (t)
        t->ops->close(t);
    harness_rmtree(dir);
    return rc;
}
