/*
 * A fake level below L1 for unit tests of khalad's store (tests/test_store.c): an in-memory
 * driver behind the real tier seam (daemon/tier.h) that keeps tier.h's rules (versions order
 * writes, TTLs, KHALA_ENOTFOUND for a miss), records every write it accepts in order, and takes
 * injected trouble: an outage (every operation and health() fail with KHALA_ETIER until it
 * ends), the next N operations failing with a chosen code, latency on every operation, and a
 * hook called before each put is applied (to look at the other levels at that moment).
 */
#ifndef KHALA_TESTS_FAKE_TIER_H
#define KHALA_TESTS_FAKE_TIER_H

#include <stddef.h>
#include <stdint.h>

#include "tier.h"

/* Items and log entries the fake holds at most. */
#define FAKE_TIER_ITEMS 1024
#define FAKE_TIER_LOG 4096
#define FAKE_TIER_KEY_MAX 64
/* Slots one invalidate_step looks at (fake_tier_stepped). */
#define FAKE_TIER_STEP_SLOTS 256

/* One write the fake applied, in the order it applied them. */
typedef struct fake_write {
    char kind; /* 'p' put, 'd' delete, 'i' invalidation */
    char key[FAKE_TIER_KEY_MAX + 1];
    uint64_t version; /* puts only */
} fake_write_t;

typedef struct fake_tier {
    khala_tier_t tier; /* the driver as khalad sees it; tier.impl points back here */
    struct {
        char key[FAKE_TIER_KEY_MAX + 1];
        size_t klen;
        uint8_t *val;
        size_t vlen;
        uint64_t version;
        int64_t expire_ms; /* 0 = none */
        int type;
        int used;
    } items[FAKE_TIER_ITEMS];
    fake_write_t log[FAKE_TIER_LOG];
    size_t nlog;
    /* Injected trouble. */
    int down;       /* 1: every operation and health() fail with KHALA_ETIER */
    int fail_n;     /* the next fail_n operations fail with fail_rc */
    int fail_rc;    /* e.g. KHALA_ETIER, -EIO */
    int latency_ms; /* slept at the start of every operation */
    uint64_t stale; /* puts refused because the fake held a newer version */
    uint64_t calls; /* operations called, health() included */
    int step_pause; /* fake_tier_stepped: 1 = steps make no progress (a long scan) */
    uint64_t steps; /* invalidate_step calls */
    void (*before_put)(void *arg, const void *key, size_t klen, uint64_t version);
    void *hook_arg;
} fake_tier_t;

/* Make a fake level (KHALA_LEVEL_L2 or L3), healthy and empty; free with tier.ops->close. */
fake_tier_t *fake_tier_new(khala_level_t level);

/* Give f an invalidate_step (a Redis-like level: khalad queues invalidations and runs them in
 * steps from the tick). */
void fake_tier_stepped(fake_tier_t *f);

/* 1 (with its version and value, NUL-terminated, when asked) if the fake holds the C-string key,
 * else 0 (expired items count as absent). */
int fake_tier_find(const fake_tier_t *f, const char *key, uint64_t *version, char *val, size_t cap);

/* Store an item directly, as if another host wrote it (no log entry). */
void fake_tier_seed(fake_tier_t *f, const char *key, const char *val, uint64_t version);

#endif /* KHALA_TESTS_FAKE_TIER_H */
