#include "testutil.h"

#include "fuzz/fuzz_rand.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

const char *tu_name(const char *tag) {
    static char buf[KHALA_NAME_MAX + 1];
    snprintf(buf, sizeof(buf), "t%d-%s", (int)getpid(), tag);
    return buf;
}

khala_seg_config_t tu_config(uint32_t max_items, uint64_t max_bytes) {
    khala_seg_config_t cfg;
    khala__seg_config_init(&cfg);
    cfg.max_items = max_items;
    cfg.max_bytes = max_bytes;
    cfg.max_readers = 32;
    return cfg;
}

khala_l1_t *tu_writer(const char *name, uint32_t max_items, uint64_t max_bytes) {
    char err[256] = "";
    khala_seg_config_t cfg = tu_config(max_items, max_bytes);
    khala_l1_t *t = NULL;
    int rc = khala__l1_open(name, &cfg, &t, err, sizeof(err));
    cr_assert_eq(rc, 0, "khala__l1_open(%s): %d %s", name, rc, err);
    return t;
}

uint64_t tu_rand(uint64_t *state) {
    return fuzz_rand(state);
}

uint32_t tu_pick_key(uint64_t *state, uint32_t hot, uint32_t n) {
    uint64_t r = tu_rand(state);
    return (r & 1) ? (uint32_t)((r >> 1) % hot) : (uint32_t)((r >> 1) % n);
}

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

void tu_value_make(uint8_t *buf, size_t len, uint64_t key, uint64_t round) {
    uint64_t sum = 0;
    memcpy(buf, &key, 8);
    memcpy(buf + 8, &round, 8);
    for (size_t i = 24; i < len; i++) {
        buf[i] = (uint8_t)mix(key * 31 + round + i);
        sum = sum * 131 + buf[i];
    }
    sum ^= mix(key ^ round ^ len);
    memcpy(buf + 16, &sum, 8);
}

int tu_value_ok(const uint8_t *buf, size_t len, uint64_t key) {
    uint64_t k, round, sum = 0, want;
    if (len < 24)
        return 0;
    memcpy(&k, buf, 8);
    memcpy(&round, buf + 8, 8);
    memcpy(&want, buf + 16, 8);
    if (k != key)
        return 0;
    for (size_t i = 24; i < len; i++)
        sum = sum * 131 + buf[i];
    sum ^= mix(key ^ round ^ len);
    return sum == want;
}
