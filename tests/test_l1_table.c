/*
 * Tests of the L1 table (lib/l1_table.c): the writer's put/delete/sweep/maintain and the reader
 * lookup, read back through the real client (include/khala/cache.h) where a reader is meant.
 * khala__l1_check runs after every mutation.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "khala/cache.h"
#include "khala/error.h"
#include "l1_table.h"
#include "testutil.h"

static char g_name[KHALA_NAME_MAX + 1];
static khala_l1_t *g_t;
static khala_cache_t *g_c;

static void setup(void) {
    snprintf(g_name, sizeof(g_name), "%s", tu_name("l1"));
    g_t = NULL;
    g_c = NULL;
}

static void teardown(void) {
    khala_cache_close(g_c);
    khala__l1_close(g_t, 1);
    (void)khala__seg_unlink(g_name);
}

TestSuite(l1_table, .init = setup, .fini = teardown, .timeout = 30);

static void check(void) {
    int rc = khala__l1_check(g_t);
    cr_assert_eq(rc, 0, "khala__l1_check: %s", khala__l1_errmsg(g_t));
}

/* A writer with max_items and max_bytes, and a client attached to it. */
static void open_both(uint32_t items, uint64_t bytes) {
    g_t = tu_writer(g_name, items, bytes);
    int rc = khala_cache_open(g_name, NULL, &g_c);
    cr_assert_eq(rc, 0, "khala_cache_open: %d %s", rc, khala_cache_errmsg(NULL));
}

static void open_cfg(const khala_seg_config_t *cfg) {
    char err[256] = "";
    int rc = khala__l1_open(g_name, cfg, &g_t, err, sizeof(err));
    cr_assert_eq(rc, 0, "khala__l1_open: %d %s", rc, err);
    rc = khala_cache_open(g_name, NULL, &g_c);
    cr_assert_eq(rc, 0, "khala_cache_open: %d %s", rc, khala_cache_errmsg(NULL));
}

static int put(const char *key, const char *val, int64_t ttl_ms) {
    int rc = khala__l1_put(g_t, key, strlen(key), val, strlen(val), ttl_ms, 0, NULL);
    check();
    return rc;
}

/* Get through the client; 0 and the value NUL-terminated in out, or the error. */
static int get(const char *key, char *out, size_t cap) {
    size_t len = 0;
    int rc = khala_cache_get(g_c, key, strlen(key), out, cap - 1, &len);
    if (rc == 0)
        out[len] = '\0';
    return rc;
}

static int present(const char *key) {
    char buf[256];
    int rc = get(key, buf, sizeof(buf));
    cr_assert(rc == 0 || rc == KHALA_ENOTFOUND, "get(%s) = %d", key, rc);
    return rc == 0;
}

static khala_l1_stats_t stats(void) {
    khala_l1_stats_t st;
    khala__l1_stats(g_t, &st);
    return st;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Basics ---------------------------------------------------------------------------------- */

Test(l1_table, get_after_put_returns_the_value) {
    open_both(64, 64 * 1024);
    char buf[64];
    cr_assert_eq(put("alpha", "one", 0), 0);
    cr_assert_eq(put("beta", "two", 0), 0);
    cr_assert_eq(get("alpha", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "one");
    cr_assert_eq(get("beta", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "two");
    cr_assert_eq(get("gamma", buf, sizeof(buf)), KHALA_ENOTFOUND);
    khala_l1_stats_t st = stats();
    cr_assert_eq(st.items, 2);
    cr_assert_eq(st.sets, 2);
    cr_assert_eq(st.payload_bytes, 5 + 3 + 4 + 3);
}

Test(l1_table, writer_lookup_finds_what_was_put) {
    open_both(64, 64 * 1024);
    uint64_t version = 0;
    cr_assert_eq(khala__l1_put(g_t, "k", 1, "value", 5, 0, 7, &version), 0);
    check();
    const khala_seg_t *s = khala__l1_seg(g_t);
    const khala_item_t *it = NULL;
    khala_l1_index_t ix = khala__l1_index(s);
    cr_assert_eq(khala__l1_lookup(s, &ix, "k", 1, khala__l1_hash(s, "k", 1), &it), 0);
    cr_assert_eq(it->value_len, 5);
    cr_assert_eq(memcmp(khala__item_value(it), "value", 5), 0);
    cr_assert_eq(memcmp(khala__item_key(it), "k", 1), 0);
    cr_assert_eq(it->type, 7);
    cr_assert_eq(it->version, version);
    cr_assert_eq(it->expire_ms, 0);
}

Test(l1_table, overwrite_replaces_the_value_and_increases_the_version) {
    open_both(64, 64 * 1024);
    uint64_t v1 = 0, v2 = 0;
    char buf[64];
    cr_assert_eq(khala__l1_put(g_t, "key", 3, "first", 5, 0, 0, &v1), 0);
    check();
    cr_assert_eq(khala__l1_put(g_t, "key", 3, "second value", 12, 0, 0, &v2), 0);
    check();
    cr_assert_gt(v2, v1);
    cr_assert_geq(v1, 1);
    cr_assert_eq(get("key", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "second value");
    khala_l1_stats_t st = stats();
    cr_assert_eq(st.items, 1);
    cr_assert_eq(st.overwrites, 1);
    cr_assert_eq(st.sets, 2);
    cr_assert_eq(st.payload_bytes, 3 + 12);
    /* The view reports the new version. */
    khala_view_t view;
    cr_assert_eq(khala_read_begin(g_c), 0);
    cr_assert_eq(khala_cache_view(g_c, "key", 3, &view), 0);
    cr_assert_eq(view.version, v2);
    khala_read_end(g_c);
}

Test(l1_table, get_after_delete_returns_enotfound) {
    open_both(64, 64 * 1024);
    char buf[64];
    cr_assert_eq(put("gone", "soon", 0), 0);
    cr_assert_eq(put("stays", "here", 0), 0);
    cr_assert_eq(khala__l1_delete(g_t, "gone", 4), 0);
    check();
    cr_assert_eq(get("gone", buf, sizeof(buf)), KHALA_ENOTFOUND);
    cr_assert_eq(get("stays", buf, sizeof(buf)), 0);
    khala_l1_stats_t st = stats();
    cr_assert_eq(st.items, 1);
    cr_assert_eq(st.deletes, 1);
}

Test(l1_table, delete_of_missing_key_is_enotfound) {
    open_both(64, 64 * 1024);
    cr_assert_eq(khala__l1_delete(g_t, "nope", 4), KHALA_ENOTFOUND);
    cr_assert_eq(put("a", "1", 0), 0);
    cr_assert_eq(khala__l1_delete(g_t, "a", 1), 0);
    cr_assert_eq(khala__l1_delete(g_t, "a", 1), KHALA_ENOTFOUND);
    check();
    cr_assert_eq(stats().deletes, 1);
}

Test(l1_table, key_deleted_then_put_again_is_found) {
    open_both(64, 64 * 1024);
    char buf[64];
    cr_assert_eq(put("k", "old", 0), 0);
    cr_assert_eq(khala__l1_delete(g_t, "k", 1), 0);
    check();
    cr_assert_eq(put("k", "new", 0), 0);
    cr_assert_eq(get("k", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "new");
}

Test(l1_table, zero_byte_value_works) {
    open_both(64, 64 * 1024);
    cr_assert_eq(khala__l1_put(g_t, "empty", 5, NULL, 0, 0, 0, NULL), 0);
    check();
    size_t len = 99;
    cr_assert_eq(khala_cache_get(g_c, "empty", 5, NULL, 0, &len), 0);
    cr_assert_eq(len, 0);
    khala_view_t view;
    cr_assert_eq(khala_read_begin(g_c), 0);
    cr_assert_eq(khala_cache_view(g_c, "empty", 5, &view), 0);
    cr_assert_eq(view.len, 0);
    khala_read_end(g_c);
    cr_assert_eq(stats().payload_bytes, 5);
}

Test(l1_table, one_mib_value_works_with_the_default_max_value) {
    open_both(16, 4 * 1024 * 1024);
    size_t n = KHALA_VALUE_MAX_DEFAULT;
    uint8_t *val = malloc(n + 1), *out = malloc(n);
    cr_assert(val && out);
    tu_value_make(val, n, 42, 1);
    cr_assert_eq(khala__l1_put(g_t, "big", 3, val, n, 0, 0, NULL), 0, "%s", khala__l1_errmsg(g_t));
    check();
    size_t len = 0;
    cr_assert_eq(khala_cache_get(g_c, "big", 3, out, n, &len), 0);
    cr_assert_eq(len, n);
    cr_assert_eq(memcmp(out, val, n), 0);
    cr_assert(tu_value_ok(out, len, 42));
    /* One byte more is over the limit. */
    cr_assert_eq(khala__l1_put(g_t, "big2", 4, val, n + 1, 0, 0, NULL), KHALA_ETOOBIG);
    check();
    free(val);
    free(out);
}

Test(l1_table, binary_keys_with_nul_bytes_are_distinct) {
    open_both(64, 64 * 1024);
    const char k1[] = {'a', '\0', 'b'}, k2[] = {'a', '\0', 'c'}, k3[] = {'a'};
    const char k4[] = {'\0'}, k5[] = {'\0', '\0'};
    cr_assert_eq(khala__l1_put(g_t, k1, 3, "1", 1, 0, 0, NULL), 0);
    cr_assert_eq(khala__l1_put(g_t, k2, 3, "2", 1, 0, 0, NULL), 0);
    cr_assert_eq(khala__l1_put(g_t, k3, 1, "3", 1, 0, 0, NULL), 0);
    cr_assert_eq(khala__l1_put(g_t, k4, 1, "4", 1, 0, 0, NULL), 0);
    cr_assert_eq(khala__l1_put(g_t, k5, 2, "5", 1, 0, 0, NULL), 0);
    check();
    cr_assert_eq(stats().items, 5);
    const struct {
        const char *k;
        size_t n;
        char want;
    } cases[] = {{k1, 3, '1'}, {k2, 3, '2'}, {k3, 1, '3'}, {k4, 1, '4'}, {k5, 2, '5'}};
    for (size_t i = 0; i < 5; i++) {
        char c = 0;
        size_t len = 0;
        cr_assert_eq(khala_cache_get(g_c, cases[i].k, cases[i].n, &c, 1, &len), 0, "case %zu", i);
        cr_assert_eq(c, cases[i].want, "case %zu", i);
    }
    cr_assert_eq(khala__l1_delete(g_t, k1, 3), 0);
    char c;
    size_t len;
    cr_assert_eq(khala_cache_get(g_c, k1, 3, &c, 1, &len), KHALA_ENOTFOUND);
    cr_assert_eq(khala_cache_get(g_c, k2, 3, &c, 1, &len), 0);
    check();
}

Test(l1_table, longest_key_works) {
    open_both(64, 64 * 1024);
    char key[KHALA_KEY_MAX];
    memset(key, 'k', sizeof(key));
    cr_assert_eq(khala__l1_put(g_t, key, KHALA_KEY_MAX, "v", 1, 0, 0, NULL), 0);
    check();
    char c;
    size_t len;
    cr_assert_eq(khala_cache_get(g_c, key, KHALA_KEY_MAX, &c, 1, &len), 0);
    cr_assert_eq(c, 'v');
    cr_assert_eq(khala__l1_delete(g_t, key, KHALA_KEY_MAX), 0);
    check();
}

/* Bad input ------------------------------------------------------------------------------- */

Test(l1_table, empty_key_is_ekey) {
    open_both(64, 64 * 1024);
    char buf[8];
    size_t len = 77;
    cr_assert_eq(khala__l1_put(g_t, "x", 0, "v", 1, 0, 0, NULL), KHALA_EKEY);
    cr_assert_str_eq(khala__l1_errmsg(g_t), "key is empty");
    cr_assert_eq(khala__l1_delete(g_t, "x", 0), KHALA_EKEY);
    cr_assert_eq(khala_cache_get(g_c, "x", 0, buf, sizeof(buf), &len), KHALA_EKEY);
    cr_assert_eq(len, 77, "out-param changed on failure");
    khala_view_t view;
    cr_assert_eq(khala_read_begin(g_c), 0);
    cr_assert_eq(khala_cache_view(g_c, "x", 0, &view), KHALA_EKEY);
    khala_read_end(g_c);
    check();
    cr_assert_eq(stats().items, 0);
    cr_assert_eq(stats().sets, 0);
}

Test(l1_table, key_of_251_bytes_is_ekey) {
    open_both(64, 64 * 1024);
    char key[KHALA_KEY_MAX + 1], buf[8];
    size_t len = 77;
    memset(key, 'k', sizeof(key));
    cr_assert_eq(khala__l1_put(g_t, key, sizeof(key), "v", 1, 0, 0, NULL), KHALA_EKEY);
    cr_assert_str_eq(khala__l1_errmsg(g_t), "key is 251 bytes, max 250");
    cr_assert_eq(khala__l1_delete(g_t, key, sizeof(key)), KHALA_EKEY);
    cr_assert_eq(khala_cache_get(g_c, key, sizeof(key), buf, sizeof(buf), &len), KHALA_EKEY);
    cr_assert_eq(len, 77);
    cr_assert_eq(khala_cache_get(g_c, key, SIZE_MAX, buf, sizeof(buf), &len), KHALA_EKEY);
    khala_view_t view;
    cr_assert_eq(khala_read_begin(g_c), 0);
    cr_assert_eq(khala_cache_view(g_c, key, sizeof(key), &view), KHALA_EKEY);
    khala_read_end(g_c);
    check();
    cr_assert_eq(stats().items, 0);
}

Test(l1_table, value_above_max_value_is_etoobig) {
    khala_seg_config_t cfg = tu_config(64, 64 * 1024);
    cfg.max_value = 1000;
    open_cfg(&cfg);
    uint8_t val[1001] = {0};
    cr_assert_eq(khala__l1_put(g_t, "k", 1, val, 1000, 0, 0, NULL), 0);
    cr_assert_eq(khala__l1_put(g_t, "k", 1, val, 1001, 0, 0, NULL), KHALA_ETOOBIG);
    cr_assert_neq(strstr(khala__l1_errmsg(g_t), "1001"), NULL, "%s", khala__l1_errmsg(g_t));
    check();
    /* The failed overwrite left the old value. */
    size_t len = 0;
    cr_assert_eq(khala_cache_get(g_c, "k", 1, val, sizeof(val), &len), 0);
    cr_assert_eq(len, 1000);
}

Test(l1_table, item_larger_than_the_arena_is_etoobig) {
    open_both(64, 64 * 1024);
    size_t n = 100 * 1024; /* under max_value, over the arena */
    uint8_t *val = calloc(1, n);
    cr_assert_eq(put("small", "x", 0), 0);
    cr_assert_eq(khala__l1_put(g_t, "k", 1, val, n, 0, 0, NULL), KHALA_ETOOBIG);
    check();
    cr_assert_eq(stats().items, 1);
    cr_assert_eq(stats().evictions, 0);
    free(val);
}

Test(l1_table, value_that_fits_the_arena_is_stored) {
    /* khala__l1_put refuses with ETOOBIG only an item larger than khala__alloc_max_payload,
     * "the largest payload that could ever be allocated"; anything smaller must be stored
     * (evicting others if needed). A failure must leave the table unchanged. */
    open_both(64, 64 * 1024);
    cr_assert_eq(put("a", "1", 0), 0);
    cr_assert_eq(put("b", "2", 0), 0);
    cr_assert_eq(put("c", "3", 0), 0);
    size_t n = 64000; /* item of 64,056 bytes in a 65,536-byte arena */
    uint8_t *val = calloc(1, n);
    int rc = khala__l1_put(g_t, "big", 3, val, n, 0, 0, NULL);
    check();
    cr_expect_eq(rc, 0, "put of a %zu-byte value into a 64 KiB arena: %d (%s): %s", n, rc,
                 khala_err_name(rc), khala__l1_errmsg(g_t));
    if (rc != 0)
        cr_expect_eq(stats().items, 3, "the failed put evicted %llu items",
                     (unsigned long long)(3 - stats().items));
    free(val);
}

Test(l1_table, negative_ttl_is_einval) {
    open_both(64, 64 * 1024);
    cr_assert_eq(khala__l1_put(g_t, "k", 1, "v", 1, -1, 0, NULL), -EINVAL);
    cr_assert_eq(khala__l1_put(g_t, "k", 1, "v", 1, INT64_MIN, 0, NULL), -EINVAL);
    check();
    cr_assert_eq(stats().items, 0);
}

Test(l1_table, null_value_with_a_length_is_einval) {
    open_both(64, 64 * 1024);
    cr_assert_eq(khala__l1_put(g_t, "k", 1, NULL, 5, 0, 0, NULL), -EINVAL);
    check();
    cr_assert_eq(stats().items, 0);
}

Test(l1_table, small_buffer_is_erange_with_the_needed_length) {
    open_both(64, 64 * 1024);
    cr_assert_eq(put("k", "0123456789", 0), 0);
    char buf[16];
    memset(buf, '#', sizeof(buf));
    size_t len = 0;
    cr_assert_eq(khala_cache_get(g_c, "k", 1, buf, 9, &len), -ERANGE);
    cr_assert_eq(len, 10);
    for (size_t i = 0; i < sizeof(buf); i++)
        cr_assert_eq(buf[i], '#', "buffer written at %zu on -ERANGE", i);
    cr_assert_eq(khala_cache_get(g_c, "k", 1, NULL, 0, &len), -ERANGE);
    cr_assert_eq(len, 10);
    cr_assert_eq(khala_cache_get(g_c, "k", 1, buf, 10, &len), 0);
    cr_assert_eq(memcmp(buf, "0123456789", 10), 0);
}

/* TTL ------------------------------------------------------------------------------------- */

Test(l1_table, item_before_its_deadline_is_returned) {
    open_both(64, 64 * 1024);
    char buf[16];
    cr_assert_eq(put("k", "v", 600000), 0);
    cr_assert_eq(get("k", buf, sizeof(buf)), 0);
    khala_view_t view;
    cr_assert_eq(khala_read_begin(g_c), 0);
    cr_assert_eq(khala_cache_view(g_c, "k", 1, &view), 0);
    cr_assert_gt(view.ttl_left_ms, 0);
    cr_assert_leq(view.ttl_left_ms, 600000);
    khala_read_end(g_c);
    /* The sweep leaves it alone. */
    cr_assert_eq(khala__l1_sweep(g_t, 64), 0);
    cr_assert_eq(stats().items, 1);
}

Test(l1_table, expired_item_is_never_returned_even_before_the_sweep) {
    open_both(64, 64 * 1024);
    char buf[16];
    cr_assert_eq(put("short", "v", 30), 0);
    cr_assert_eq(put("forever", "v", 0), 0);
    sleep_ms(80);
    cr_assert_eq(get("short", buf, sizeof(buf)), KHALA_ENOTFOUND);
    const khala_seg_t *s = khala__l1_seg(g_t);
    const khala_item_t *it;
    khala_l1_index_t ix = khala__l1_index(s);
    cr_assert_eq(khala__l1_lookup(s, &ix, "short", 5, khala__l1_hash(s, "short", 5), &it),
                 KHALA_ENOTFOUND);
    khala_view_t view;
    cr_assert_eq(khala_read_begin(g_c), 0);
    cr_assert_eq(khala_cache_view(g_c, "short", 5, &view), KHALA_ENOTFOUND);
    khala_read_end(g_c);
    /* Still in the table until the sweep runs. */
    cr_assert_eq(stats().items, 2);
    cr_assert_eq(get("forever", buf, sizeof(buf)), 0);
}

Test(l1_table, huge_ttl_does_not_expire_the_item_at_once) {
    /* Any ttl_ms >= 0 is valid input (l1_table.h); a deadline far in the future must not wrap
     * into the past. */
    open_both(64, 64 * 1024);
    char buf[16];
    cr_assert_eq(put("max", "v", INT64_MAX), 0);
    cr_assert_eq(put("year", "v", 365LL * 24 * 3600 * 1000), 0);
    cr_expect_eq(get("year", buf, sizeof(buf)), 0);
    cr_expect_eq(get("max", buf, sizeof(buf)), 0, "an item put with ttl_ms INT64_MAX is expired");
    cr_expect_eq(khala__l1_sweep(g_t, 64), 0, "the sweep removed an item with a huge TTL");
}

Test(l1_table, sweep_removes_expired_items_and_counts_expirations) {
    open_both(64, 64 * 1024);
    char key[16];
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        cr_assert_eq(put(key, "value", i % 2 ? 30 : 0), 0);
    }
    sleep_ms(80);
    cr_assert_eq(khala__l1_sweep(g_t, 64), 10);
    check();
    khala_l1_stats_t st = stats();
    cr_assert_eq(st.items, 10);
    cr_assert_eq(st.expirations, 10);
    cr_assert_eq(st.evictions, 0);
    cr_assert_eq(st.deletes, 0);
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        cr_assert_eq(present(key), i % 2 == 0, "%s", key);
    }
    /* A second sweep finds nothing more. */
    cr_assert_eq(khala__l1_sweep(g_t, 64), 0);
    cr_assert_eq(stats().expirations, 10);
}

Test(l1_table, sweep_with_a_budget_above_max_items_removes_each_key_once) {
    /* khalad sweeps with a budget of 4096, above a small cache's max_items: the cursor wraps
     * and must not meet an expired key twice in one call (the second removal crashed). */
    open_both(16, 64 * 1024);
    cr_assert_eq(put("short", "v", 30), 0);
    cr_assert_eq(put("long", "v", 0), 0);
    sleep_ms(80);
    cr_assert_eq(khala__l1_sweep(g_t, 4096), 1);
    check();
    cr_assert_eq(stats().expirations, 1);
    cr_assert(present("long"));
}

Test(l1_table, sweep_is_incremental) {
    open_both(64, 64 * 1024);
    char key[16];
    for (int i = 0; i < 40; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        cr_assert_eq(put(key, "v", 30), 0);
    }
    sleep_ms(80);
    /* Each call looks at `budget` descs: 8 calls of 8 cover the 64 descs once. */
    size_t total = 0;
    for (int call = 0; call < 8; call++) {
        size_t n = khala__l1_sweep(g_t, 8);
        cr_assert_leq(n, 8);
        total += n;
        check();
    }
    cr_assert_eq(total, 40);
    cr_assert_eq(stats().items, 0);
    cr_assert_eq(stats().expirations, 40);
}

Test(l1_table, overwrite_without_ttl_clears_the_deadline) {
    open_both(64, 64 * 1024);
    char buf[16];
    cr_assert_eq(put("k", "old", 30), 0);
    cr_assert_eq(put("k", "new", 0), 0);
    sleep_ms(80);
    cr_assert_eq(khala__l1_sweep(g_t, 64), 0);
    cr_assert_eq(get("k", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "new");
}

Test(l1_table, expired_key_can_be_put_again) {
    open_both(64, 64 * 1024);
    char buf[16];
    cr_assert_eq(put("k", "old", 30), 0);
    sleep_ms(80);
    cr_assert_eq(put("k", "new", 0), 0);
    cr_assert_eq(get("k", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "new");
    cr_assert_eq(stats().items, 1);
}

/* Capacity and eviction ------------------------------------------------------------------- */

Test(l1_table, capacity_by_items_evicts_beyond_max_items) {
    open_both(64, 256 * 1024);
    char key[16];
    for (int i = 0; i < 64 + 40; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        cr_assert_eq(put(key, "value", 0), 0, "put %d: %s", i, khala__l1_errmsg(g_t));
        khala_l1_stats_t st = stats();
        cr_assert_leq(st.items, 64);
        cr_assert_eq(st.items, (uint64_t)(i + 1 < 64 ? i + 1 : 64));
    }
    khala_l1_stats_t st = stats();
    cr_assert_eq(st.items, 64);
    cr_assert_eq(st.evictions, 40);
    cr_assert_eq(st.sets, 104);
    /* The newest key is always there. */
    cr_assert(present("k103"));
}

Test(l1_table, overwrite_at_capacity_evicts_nothing) {
    open_both(16, 64 * 1024);
    char key[16];
    for (int i = 0; i < 16; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        cr_assert_eq(put(key, "v", 0), 0);
    }
    for (int i = 0; i < 16; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        cr_assert_eq(put(key, "w", 0), 0);
    }
    cr_assert_eq(stats().evictions, 0);
    cr_assert_eq(stats().items, 16);
}

Test(l1_table, capacity_by_bytes_never_exceeds_the_arena) {
    open_both(1024, 64 * 1024);
    uint8_t val[2000];
    char key[16];
    khala_l1_stats_t st = stats();
    uint64_t usable = st.arena_bytes; /* every byte is free or in a block */
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        tu_value_make(val, sizeof(val), (uint64_t)i, 0);
        cr_assert_eq(khala__l1_put(g_t, key, strlen(key), val, sizeof(val), 0, 0, NULL), 0,
                     "put %d: %s", i, khala__l1_errmsg(g_t));
        check();
        st = stats();
        cr_assert_leq(st.item_bytes, st.arena_bytes);
        cr_assert_eq(st.item_bytes + st.retired_bytes + st.free_bytes, usable,
                     "bytes do not add up after put %d", i);
    }
    st = stats();
    cr_assert_gt(st.evictions, 0);
    cr_assert_leq(st.items, 64 * 1024 / 2000); /* 2048-byte blocks tile the arena exactly */
    cr_assert_eq(st.items + st.evictions, 300);
    /* The newest value reads back intact. */
    size_t len = 0;
    cr_assert_eq(khala_cache_get(g_c, "k299", 4, val, sizeof(val), &len), 0);
    cr_assert(tu_value_ok(val, len, 299));
}

Test(l1_table, mixed_sizes_fill_the_arena_well) {
    /* Memory freed by evicting small items serves large ones and back (no size classes). */
    open_both(4096, 256 * 1024);
    static uint8_t val[20000];
    char key[16];
    for (int i = 0; i < 600; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        size_t n = i % 10 == 0 ? 20000 : (size_t)(50 + (i * 37) % 400);
        cr_assert_eq(khala__l1_put(g_t, key, strlen(key), val, n, 0, 0, NULL), 0, "put %d: %s", i,
                     khala__l1_errmsg(g_t));
        if (i % 25 == 0)
            check();
    }
    check();
    khala_l1_stats_t st = stats();
    cr_assert_gt(st.evictions, 0);
    /* After eviction, live items hold most of the arena: at least half of it. */
    cr_assert_gt(st.item_bytes, st.arena_bytes / 2);
}

Test(l1_table, without_hits_the_oldest_keys_are_evicted_first) {
    open_both(64, 256 * 1024);
    char key[16];
    for (int i = 0; i < 74; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        cr_assert_eq(put(key, "v", 0), 0);
    }
    for (int i = 0; i < 74; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        cr_assert_eq(present(key), i >= 10, "%s", key);
    }
}

Test(l1_table, keys_hit_by_readers_survive_a_scan_of_one_time_keys) {
    open_both(100, 256 * 1024);
    char key[32], buf[64];
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof(key), "hot%d", i);
        cr_assert_eq(put(key, "hot value", 0), 0);
    }
    /* Readers hit the hot keys; the writer drains their hit rings. */
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < 20; i++) {
            snprintf(key, sizeof(key), "hot%d", i);
            cr_assert_eq(get(key, buf, sizeof(buf)), 0);
        }
    cr_assert_geq(khala__l1_maintain(g_t), 0);
    /* A scan five times the capacity, each key seen once. */
    for (int i = 0; i < 500; i++) {
        snprintf(key, sizeof(key), "scan%d", i);
        cr_assert_eq(put(key, "cold value", 0), 0);
    }
    khala_l1_stats_t st = stats();
    cr_assert_eq(st.items, 100);
    cr_assert_eq(st.evictions, 420);
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof(key), "hot%d", i);
        cr_assert(present(key), "hot key %s was evicted by the scan", key);
    }
    /* The never-hit scan keys went instead, oldest first. */
    cr_assert(!present("scan0"));
    cr_assert(!present("scan419"));
    cr_assert(present("scan499"));
}

Test(l1_table, hits_recorded_by_get_reach_the_policy_only_after_a_drain) {
    /* Control for the test above: the same hits, reaching the policy through a drain, are what
     * protects the keys. Without any hits the first keys go first. */
    open_both(100, 256 * 1024);
    char key[32];
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof(key), "hot%d", i);
        cr_assert_eq(put(key, "v", 0), 0);
    }
    for (int i = 0; i < 500; i++) {
        snprintf(key, sizeof(key), "scan%d", i);
        cr_assert_eq(put(key, "v", 0), 0);
    }
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof(key), "hot%d", i);
        cr_assert(!present(key), "never-hit key %s survived", key);
    }
}

/* Reclamation ----------------------------------------------------------------------------- */

/* The offset of the live item of `key`, and its block's bytes in *block (0 if absent). */
static uint64_t item_of(const char *key, uint64_t *block) {
    khala_seg_t *s = khala__l1_seg(g_t);
    const khala_desc_t *d = (const khala_desc_t *)(s->base + s->hdr->desc_off);
    for (uint32_t i = 0; i < s->hdr->max_items; i++) {
        if (!d[i].item_off)
            continue;
        const khala_item_t *it = (const khala_item_t *)(s->base + d[i].item_off);
        if (it->key_len == strlen(key) && memcmp(it + 1, key, it->key_len) == 0) {
            *block = d[i].block_size;
            return d[i].item_off;
        }
    }
    *block = 0;
    return 0;
}

/* The issue behind alloc.c's layout: the writer's frees, splits and merges of other blocks must
 * not store to the cache lines of a live item, or every reader holding those lines misses. Every
 * fourth key is held; the others are deleted, reclaimed, put anew at other sizes and overwritten,
 * many times. Then every byte of every line that holds a byte of a held item is as it was,
 * except bytes of blocks built after the snapshot (building an item before linking it is the
 * one store allowed on a line it shares) and a held item's own next words (the only field of a
 * linked item that changes: the table relinks chains past deleted keys). */
Test(l1_table, churn_around_live_items_leaves_their_lines_alone) {
    enum { N = 1200 };
    open_both(4096, 1u << 20);
    khala_seg_t *s = khala__l1_seg(g_t);
    char key[32], val[400];
    memset(val, 'v', sizeof(val));
    uint64_t rng = 42;
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        cr_assert_eq(khala__l1_put(g_t, key, strlen(key), val, 10 + (rng >> 33) % 300, 0, 0, NULL),
                     0);
    }
    uint8_t *snap = malloc(s->size), *built = calloc(1, s->size);
    cr_assert(snap && built);
    memcpy(snap, s->base, s->size);
    uint64_t held_off[N / 4], held_block[N / 4];
    for (int i = 0; i < N; i += 4) {
        snprintf(key, sizeof(key), "k%d", i);
        held_off[i / 4] = item_of(key, &held_block[i / 4]);
        cr_assert_neq(held_off[i / 4], 0);
    }
    for (int round = 0; round < 6; round++) {
        for (int i = 0; i < N; i++) {
            if (i % 4 == 0)
                continue;
            snprintf(key, sizeof(key), round % 2 ? "n%d" : "k%d", i);
            (void)khala__l1_delete(g_t, key, strlen(key));
        }
        cr_assert_geq(khala__l1_maintain(g_t), 0);
        for (int i = 0; i < N; i++) {
            if (i % 4 == 0)
                continue;
            snprintf(key, sizeof(key), round % 2 ? "k%d" : "n%d", i);
            for (int w = 0; w < 1 + (i % 3 == 0); w++) { /* some are overwritten at once */
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                size_t vlen = 1 + (rng >> 33) % 390;
                cr_assert_eq(khala__l1_put(g_t, key, strlen(key), val, vlen, 0, 0, NULL), 0);
                uint64_t block, off = item_of(key, &block);
                memset(built + off, 1, block);
            }
            if (i % 50 == 0)
                cr_assert_geq(khala__l1_maintain(g_t), 0);
        }
        check();
    }
    cr_assert_eq(stats().evictions, 0, "a held key could have been evicted");
    for (int h = 0; h < N / 4; h++) {
        snprintf(key, sizeof(key), "k%d", h * 4);
        uint64_t block;
        cr_assert_eq(item_of(key, &block), held_off[h], "held key %s moved", key);
        uint64_t size = KHALA_ITEM_SIZE(((khala_item_t *)(s->base + held_off[h]))->key_len,
                                        ((khala_item_t *)(s->base + held_off[h]))->value_len);
        uint64_t first = held_off[h] & ~(uint64_t)(KHALA_CACHE_LINE - 1);
        uint64_t end =
            (held_off[h] + size + KHALA_CACHE_LINE - 1) & ~(uint64_t)(KHALA_CACHE_LINE - 1);
        for (uint64_t x = first; x < end; x++) {
            int own_next = x >= held_off[h] && x < held_off[h] + sizeof(((khala_item_t *)0)->next);
            if (built[x] || own_next)
                continue;
            cr_assert_eq(s->base[x], snap[x],
                         "byte %llu, on a line of the live item at %llu (key %s), changed",
                         (unsigned long long)x, (unsigned long long)held_off[h], key);
        }
    }
    free(snap);
    free(built);
}

Test(l1_table, maintain_frees_retired_items_when_no_reader_is_inside) {
    open_both(64, 64 * 1024);
    for (int i = 0; i < 10; i++)
        cr_assert_eq(put("k", i % 2 ? "odd" : "even", 0), 0);
    cr_assert_eq(khala__l1_delete(g_t, "k", 1), 0);
    check();
    cr_assert_gt(stats().retired, 0);
    cr_assert_geq(khala__l1_maintain(g_t), 1);
    check();
    khala_l1_stats_t st = stats();
    cr_assert_eq(st.retired, 0);
    cr_assert_eq(st.retired_bytes, 0);
    cr_assert_eq(st.free_bytes, st.arena_bytes, "memory did not return to the arena");
}

Test(l1_table, item_read_in_an_open_section_is_not_freed) {
    open_both(64, 64 * 1024);
    cr_assert_eq(put("k", "first", 0), 0);
    khala_view_t view;
    cr_assert_eq(khala_read_begin(g_c), 0);
    cr_assert_eq(khala_cache_view(g_c, "k", 1, &view), 0);
    cr_assert_eq(put("k", "second", 0), 0);
    (void)khala__l1_maintain(g_t);
    check();
    cr_assert_eq(stats().retired, 1, "the item under the view was freed");
    cr_assert_eq(memcmp(view.data, "first", 5), 0);
    khala_read_end(g_c);
    cr_assert_geq(khala__l1_maintain(g_t), 1);
    cr_assert_eq(stats().retired, 0);
    check();
}

Test(l1_table, random_operations_match_a_shadow_model) {
    /* No eviction (capacity above the key space): the table must equal the model exactly. */
    open_both(256, 256 * 1024);
    enum { KEYS = 150 };
    uint64_t model[KEYS] = {0}; /* 0 absent, else round + 1 */
    uint64_t x = 88172645463325252ull;
    uint8_t val[200], out[200];
    char key[16];
    for (int op = 0; op < 3000; op++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint64_t k = x % KEYS;
        size_t vlen = 24 + (x >> 20) % 170;
        snprintf(key, sizeof(key), "key-%llu", (unsigned long long)k);
        if ((x >> 40) % 4 == 0) {
            int rc = khala__l1_delete(g_t, key, strlen(key));
            cr_assert_eq(rc, model[k] ? 0 : KHALA_ENOTFOUND);
            model[k] = 0;
        } else {
            tu_value_make(val, vlen, k, (uint64_t)op);
            cr_assert_eq(khala__l1_put(g_t, key, strlen(key), val, vlen, 0, 0, NULL), 0);
            model[k] = (uint64_t)op + 1;
        }
        if (op % 50 == 0)
            (void)khala__l1_maintain(g_t);
        check();
    }
    uint64_t live = 0;
    for (uint64_t k = 0; k < KEYS; k++) {
        size_t len = 0;
        snprintf(key, sizeof(key), "key-%llu", (unsigned long long)k);
        int rc = khala_cache_get(g_c, key, strlen(key), out, sizeof(out), &len);
        cr_assert_eq(rc, model[k] ? 0 : KHALA_ENOTFOUND, "%s", key);
        if (rc == 0) {
            uint64_t round;
            memcpy(&round, out + 8, 8);
            cr_assert_eq(round + 1, model[k], "%s holds an old value", key);
            cr_assert(tu_value_ok(out, len, k));
            live++;
        }
    }
    cr_assert_eq(stats().items, live);
    cr_assert_eq(stats().evictions, 0);
}

/* Corruption ------------------------------------------------------------------------------ */

/* The bucket line of key in the live index, in the writer's mapping. */
static khala_bucket_t *bucket_of(const char *key) {
    khala_seg_t *s = khala__l1_seg(g_t);
    khala_l1_index_t ix = khala__l1_index(s);
    return (khala_bucket_t *)khala__l1_bucket(s, &ix,
                                              khala__l1_hash_with(ix.seed, key, strlen(key)));
}

/* The word that links key's live item: its slot's link, or a word of the overflow chain. */
static khala_atomic_u32 *link_word_of(const char *key) {
    khala_seg_t *s = khala__l1_seg(g_t);
    khala_bucket_t *b = bucket_of(key);
    uint64_t block;
    uint32_t link = khala_link_of(item_of(key, &block));
    cr_assert_neq(link, 0, "%s is absent", key);
    for (int i = 0; i < KHALA_BUCKET_SLOTS; i++)
        if (khala_load_relaxed(&b->link[i]) == link)
            return &b->link[i];
    khala_atomic_u32 *l = &b->chain;
    while (khala_load_relaxed(l) != link)
        l = &((khala_item_t *)(s->base + khala_link_off(khala_load_relaxed(l))))
                 ->next[khala__l1_index(s).which];
    return l;
}

/* The slot of key's bucket line that holds its item, or -1 when it is on the chain. */
static int slot_of_key(const char *key) {
    khala_bucket_t *b = bucket_of(key);
    khala_atomic_u32 *l = link_word_of(key);
    return l >= &b->link[0] && l < &b->link[KHALA_BUCKET_SLOTS] ? (int)(l - &b->link[0]) : -1;
}

/* Fill keys[0..n) with distinct keys "<prefix><number>" whose bucket is that of `key` (and
 * whose tag is `tag`, unless it is -1), none equal to key. */
static void same_bucket(const char *key, const char *prefix, int tag, char (*keys)[32], int n) {
    khala_seg_t *s = khala__l1_seg(g_t);
    uint64_t seed = khala__l1_index(s).seed;
    khala_bucket_t *b = bucket_of(key);
    uint64_t x = 0;
    for (int i = 0; i < n; x++) {
        int len = snprintf(keys[i], sizeof(keys[i]), "%s%llu", prefix, (unsigned long long)x);
        if (strcmp(keys[i], key) == 0 || bucket_of(keys[i]) != b)
            continue;
        if (tag >= 0 && khala__l1_tag(khala__l1_hash_with(seed, keys[i], (size_t)len)) != tag)
            continue;
        i++;
    }
}

/* Bucket lines ---------------------------------------------------------------------------- */

Test(l1_table, full_line_spills_to_the_overflow_chain_and_every_key_is_found) {
    enum { N = KHALA_BUCKET_SLOTS + 6 };
    char keys[N][32], buf[32];
    open_both(64, 256 * 1024);
    cr_assert_eq(put("anchor", "a", 0), 0);
    same_bucket("anchor", "s", -1, keys, N);
    for (int i = 0; i < N; i++)
        cr_assert_eq(put(keys[i], keys[i], 0), 0);
    /* The anchor and the first eleven take the slots; the rest overflow, newest first. */
    for (int i = 0; i < N; i++)
        cr_assert_eq(slot_of_key(keys[i]) >= 0, i < KHALA_BUCKET_SLOTS - 1, "key %d", i);
    cr_assert_eq(khala_load_relaxed(&bucket_of("anchor")->chain),
                 khala_load_relaxed(link_word_of(keys[N - 1])));
    for (int i = 0; i < N; i++) {
        cr_assert_eq(get(keys[i], buf, sizeof(buf)), 0, "get %d", i);
        cr_assert_str_eq(buf, keys[i]);
    }
    /* Overwrites stay where the key is: in its slot, or on the chain. */
    int slot = slot_of_key(keys[3]);
    cr_assert_eq(put(keys[3], "over3", 0), 0);
    cr_assert_eq(put(keys[N - 3], "overN", 0), 0);
    cr_assert_eq(slot_of_key(keys[3]), slot);
    cr_assert_eq(slot_of_key(keys[N - 3]), -1);
    cr_assert_eq(get(keys[3], buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "over3");
    cr_assert_eq(get(keys[N - 3], buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "overN");
    /* Deletes from the middle of the chain, its head, its tail and the slots: the others are
     * found after each. */
    const int order[] = {N - 3, N - 1, KHALA_BUCKET_SLOTS - 1, 0, 5, N - 2};
    int gone[N] = {0};
    for (size_t d = 0; d < sizeof(order) / sizeof(order[0]); d++) {
        cr_assert_eq(khala__l1_delete(g_t, keys[order[d]], strlen(keys[order[d]])), 0);
        check();
        gone[order[d]] = 1;
        for (int i = 0; i < N; i++)
            cr_assert_eq(present(keys[i]), !gone[i], "after delete %zu, key %d", d, i);
        cr_assert(present("anchor"));
    }
}

Test(l1_table, slot_freed_by_a_delete_takes_the_next_key_of_its_line) {
    enum { N = KHALA_BUCKET_SLOTS + 1 };
    char keys[N][32];
    open_both(64, 256 * 1024);
    cr_assert_eq(put("anchor", "a", 0), 0);
    same_bucket("anchor", "s", -1, keys, N);
    for (int i = 0; i < KHALA_BUCKET_SLOTS - 1; i++) /* the line is full */
        cr_assert_eq(put(keys[i], "v", 0), 0);
    int slot = slot_of_key(keys[4]);
    cr_assert_geq(slot, 0);
    cr_assert_eq(khala__l1_delete(g_t, keys[4], strlen(keys[4])), 0);
    check();
    khala_bucket_t *b = bucket_of("anchor");
    cr_assert_eq(khala_load_relaxed(&b->link[slot]), 0);
    cr_assert_eq(khala_load_relaxed(&b->tag[slot]), 0, "a free slot has no tag");
    /* The next new key of the line takes the freed slot, not the chain. */
    cr_assert_eq(put(keys[N - 1], "new", 0), 0);
    cr_assert_eq(slot_of_key(keys[N - 1]), slot);
    cr_assert_eq(khala_load_relaxed(&b->chain), 0);
    cr_assert_eq(present(keys[4]), 0);
    for (int i = 0; i < KHALA_BUCKET_SLOTS - 1; i++)
        cr_assert_eq(present(keys[i]), i != 4, "key %d", i);
    cr_assert(present(keys[N - 1]));
    /* The line is full again: the next key overflows. */
    cr_assert_eq(put(keys[4], "back", 0), 0);
    cr_assert_eq(slot_of_key(keys[4]), -1);
    cr_assert(present(keys[4]));
}

Test(l1_table, keys_with_the_same_tag_in_one_line_are_both_found) {
    char keys[3][32], buf[32];
    open_both(64, 256 * 1024);
    const khala_seg_t *s = khala__l1_seg(g_t);
    cr_assert_eq(put("anchor", "a", 0), 0);
    uint8_t tag = khala__l1_tag(khala__l1_hash(s, "anchor", 6));
    same_bucket("anchor", "t", tag, keys, 3);
    cr_assert_eq(put(keys[0], keys[0], 0), 0);
    cr_assert_eq(put(keys[1], keys[1], 0), 0);
    khala_bucket_t *b = bucket_of("anchor");
    cr_assert_eq(khala_load_relaxed(&b->tag[slot_of_key(keys[0])]), tag);
    cr_assert_eq(khala_load_relaxed(&b->tag[slot_of_key(keys[1])]), tag);
    cr_assert_eq(get("anchor", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "a");
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(get(keys[i], buf, sizeof(buf)), 0, "key %d", i);
        cr_assert_str_eq(buf, keys[i]);
    }
    /* A third key of the same tag, absent, passes all three and misses. */
    cr_assert_eq(get(keys[2], buf, sizeof(buf)), KHALA_ENOTFOUND);
    cr_assert_eq(khala__l1_delete(g_t, "anchor", 6), 0);
    check();
    cr_assert_eq(get(keys[1], buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, keys[1]);
    cr_assert_eq(get("anchor", buf, sizeof(buf)), KHALA_ENOTFOUND);
    /* Tag 0 is also the tag of the free slots: a key with it is found among them, and one
     * that is absent checks them and misses. */
    char zero[2][32];
    same_bucket(keys[1], "z", 0, zero, 2);
    cr_assert_eq(put(zero[0], zero[0], 0), 0);
    cr_assert_eq(khala_load_relaxed(&b->tag[slot_of_key(zero[0])]), 0);
    cr_assert_eq(get(zero[0], buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, zero[0]);
    cr_assert_eq(get(zero[1], buf, sizeof(buf)), KHALA_ENOTFOUND);
    cr_assert_eq(get(keys[1], buf, sizeof(buf)), 0);
}

/* The counters a reader process shares with the writer in the test below. */
typedef struct line_reader {
    _Atomic uint64_t ops, lost, bad, errors;
    _Atomic int stop;
} line_reader_t;

enum { LINE_STEADY = 6, LINE_CHURN = 12 };

/* Keys of one bucket line: LINE_STEADY keys that stay present, some in slots and some on the
 * overflow chain, and LINE_CHURN keys that come and go around them. */
static char g_line[LINE_STEADY + LINE_CHURN][32];

static void line_value(uint8_t *val, size_t len, int k, uint64_t round) {
    tu_value_make(val, len, (uint64_t)k, round);
}

/* The reader: gets the steady keys round-robin until told to stop. */
static void line_reader(line_reader_t *L) {
    khala_cache_t *c = NULL;
    if (khala_cache_open(g_name, NULL, &c) != 0)
        _exit(10);
    uint8_t buf[256];
    for (uint32_t i = 0; !atomic_load(&L->stop); i++) {
        int k = (int)(i % LINE_STEADY);
        size_t len = 0;
        int rc = khala_cache_get(c, g_line[k], strlen(g_line[k]), buf, sizeof(buf), &len);
        if (rc == KHALA_ENOTFOUND)
            atomic_fetch_add(&L->lost, 1);
        else if (rc != 0)
            atomic_fetch_add(&L->errors, 1);
        else if (!tu_value_ok(buf, len, (uint64_t)k))
            atomic_fetch_add(&L->bad, 1);
        atomic_fetch_add(&L->ops, 1);
    }
    khala_cache_close(c);
    _exit(0);
}

/* A key present throughout is found by every lookup from another process, in a slot or on the
 * chain, while the writer overwrites it and frees and refills the slots around it. */
Test(l1_table, keys_of_a_churning_line_are_never_missed_by_another_process) {
    open_both(64, 1 << 20);
    cr_assert_eq(put("anchor", "a", 0), 0);
    same_bucket("anchor", "c", -1, g_line, LINE_STEADY + LINE_CHURN);
    uint8_t val[100];
    /* Steady keys 0-2 take slots, the churn keys fill the line, steady keys 3-5 overflow. */
    int order[LINE_STEADY + LINE_CHURN], n = 0;
    for (int k = 0; k < 3; k++)
        order[n++] = k;
    for (int k = LINE_STEADY; k < LINE_STEADY + LINE_CHURN; k++)
        order[n++] = k;
    for (int k = 3; k < LINE_STEADY; k++)
        order[n++] = k;
    for (int i = 0; i < n; i++) {
        line_value(val, sizeof(val), order[i], 0);
        cr_assert_eq(khala__l1_put(g_t, g_line[order[i]], strlen(g_line[order[i]]), val,
                                   sizeof(val), 0, 0, NULL),
                     0);
    }
    for (int k = 0; k < LINE_STEADY; k++)
        cr_assert_eq(slot_of_key(g_line[k]) >= 0, k < 3, "steady key %d", k);
    line_reader_t *L =
        mmap(NULL, sizeof(*L), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(L, MAP_FAILED);
    memset(L, 0, sizeof(*L));
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0)
        line_reader(L);
    uint64_t seq = 1;
    for (uint64_t round = 1; round < 300 || atomic_load(&L->ops) < 200000; round++) {
        int status;
        cr_assert_eq(waitpid(pid, &status, WNOHANG), 0, "the reader died (status %#x)", status);
        cr_assert_lt(round, 1000000, "the reader makes no progress");
        /* Overwrite every steady key. */
        for (int k = 0; k < LINE_STEADY; k++) {
            line_value(val, sizeof(val), k, round);
            cr_assert_eq(
                khala__l1_put(g_t, g_line[k], strlen(g_line[k]), val, sizeof(val), 0, 0, NULL), 0);
        }
        /* Delete some churn keys and put them back: their slots free up and fill again, and
         * the ones that find the line full go on the chain beside the steady ones. */
        for (int j = 0; j < 4; j++) {
            int k = LINE_STEADY + (int)(tu_rand(&seq) % LINE_CHURN);
            (void)khala__l1_delete(g_t, g_line[k], strlen(g_line[k]));
            line_value(val, sizeof(val), k, round);
            if (tu_rand(&seq) & 1)
                cr_assert_eq(
                    khala__l1_put(g_t, g_line[k], strlen(g_line[k]), val, sizeof(val), 0, 0, NULL),
                    0);
        }
        if (round % 64 == 0) {
            (void)khala__l1_maintain(g_t);
            check();
        }
    }
    atomic_store(&L->stop, 1);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "reader status %#x", status);
    cr_assert_eq(atomic_load(&L->lost), 0, "%llu lookups of present keys missed",
                 (unsigned long long)atomic_load(&L->lost));
    cr_assert_eq(atomic_load(&L->bad), 0);
    cr_assert_eq(atomic_load(&L->errors), 0);
    munmap(L, sizeof(*L));
    check();
}

Test(l1_table, corrupted_bucket_offset_is_ecorrupt_for_readers) {
    open_both(64, 64 * 1024);
    cr_assert_eq(put("victim", "value", 0), 0);
    khala_seg_t *s = khala__l1_seg(g_t);
    khala_atomic_u32 *b = link_word_of("victim");
    cr_assert_geq(slot_of_key("victim"), 0, "a lone key takes a slot");
    uint32_t good = khala_load_relaxed(b);
    /* Links are offsets / KHALA_ALIGN (layout.h). */
    const uint32_t garbage[] = {
        1,                                 /* offset 16: inside the header */
        khala_link_of(s->arena_lo - 16),   /* just below the arena */
        khala_link_of(s->arena_hi - 16),   /* an item header would cross the arena's end */
        khala_link_of(s->arena_hi),        /* just past the arena */
        khala_link_of(s->arena_hi + 4096), /* past the arena */
        0xdeadbeefu,                       /* far past the mapping */
        UINT32_MAX,                        /* the largest link */
        1u << 31,                          /* huge */
    };
    char buf[16];
    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
        khala_store_relaxed(b, garbage[i]);
        size_t len = 0;
        int rc = khala_cache_get(g_c, "victim", 6, buf, sizeof(buf), &len);
        cr_assert_eq(rc, KHALA_ECORRUPT, "offset 0x%llx: get gave %d",
                     (unsigned long long)garbage[i], rc);
        cr_assert_neq(strstr(khala_cache_errmsg(g_c), g_name), NULL, "%s", khala_cache_errmsg(g_c));
        khala_view_t view;
        cr_assert_eq(khala_read_begin(g_c), 0);
        cr_assert_eq(khala_cache_view(g_c, "victim", 6, &view), KHALA_ECORRUPT,
                     "offset 0x%llx: view", (unsigned long long)garbage[i]);
        khala_read_end(g_c);
        cr_assert_eq(khala__l1_check(g_t), KHALA_ECORRUPT, "offset 0x%llx: check",
                     (unsigned long long)garbage[i]);
        cr_assert_neq(strstr(khala__l1_errmsg(g_t), "outside the arena"), NULL, "%s",
                      khala__l1_errmsg(g_t));
    }
    khala_store_relaxed(b, good);
    check();
    cr_assert_eq(get("victim", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "value");
}

/* The same for the line's overflow chain word: a lookup that gets past the slots follows it. */
Test(l1_table, corrupted_chain_word_is_ecorrupt_for_readers_and_check) {
    open_both(64, 64 * 1024);
    cr_assert_eq(put("victim", "value", 0), 0);
    khala_seg_t *s = khala__l1_seg(g_t);
    khala_bucket_t *b = bucket_of("victim");
    char other[1][32];
    same_bucket("victim", "absent", -1, other, 1);
    const uint32_t garbage[] = {1, khala_link_of(s->arena_hi), 0xdeadbeefu, UINT32_MAX};
    char buf[16];
    size_t len;
    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
        khala_store_relaxed(&b->chain, garbage[i]);
        cr_assert_eq(khala_cache_get(g_c, other[0], strlen(other[0]), buf, sizeof(buf), &len),
                     KHALA_ECORRUPT, "link 0x%x", garbage[i]);
        cr_assert_eq(khala__l1_check(g_t), KHALA_ECORRUPT, "link 0x%x: check", garbage[i]);
        /* The key in its slot is still found: the slots come first. */
        cr_assert_eq(get("victim", buf, sizeof(buf)), 0);
    }
    khala_store_relaxed(&b->chain, 0);
    check();
}

/* A slot's tag is only a hint, but the check holds the writer to it: a free slot has none, and
 * a used slot's tag is its key's. An item linked twice would be freed while still linked. */
Test(l1_table, check_refuses_wrong_tags_and_an_item_linked_twice) {
    open_both(64, 64 * 1024);
    cr_assert_eq(put("victim", "value", 0), 0);
    khala_bucket_t *b = bucket_of("victim");
    int k = slot_of_key("victim");
    int f = k == 0 ? 1 : 0; /* a free slot */
    cr_assert_eq(khala_load_relaxed(&b->link[f]), 0);
    uint8_t tag = khala_load_relaxed(&b->tag[k]);
    khala_store_relaxed(&b->tag[f], 7);
    cr_assert_eq(khala__l1_check(g_t), KHALA_ECORRUPT);
    khala_store_relaxed(&b->tag[f], 0);
    khala_store_relaxed(&b->tag[k], (uint8_t)(tag ^ 0x40));
    cr_assert_eq(khala__l1_check(g_t), KHALA_ECORRUPT);
    khala_store_relaxed(&b->tag[k], tag);
    check();
    khala_store_relaxed(&b->tag[f], tag);
    khala_store_relaxed(&b->link[f], khala_load_relaxed(&b->link[k]));
    cr_assert_eq(khala__l1_check(g_t), KHALA_ECORRUPT);
    cr_assert_neq(strstr(khala__l1_errmsg(g_t), "link one item"), NULL, "%s",
                  khala__l1_errmsg(g_t));
    khala_store_relaxed(&b->link[f], 0);
    khala_store_relaxed(&b->tag[f], 0);
    check();
}

/* A chain longer than KHALA_CHAIN_MAX (a loop, or a flooded bucket) ends the reader's walk as a
 * miss, never an error or a hang; the writer's check still calls a loop corrupt. */
Test(l1_table, chain_that_loops_is_a_miss_for_readers_and_ecorrupt_for_check) {
    open_both(64, 64 * 1024);
    /* Thirteen keys of one line: twelve take the slots, the last goes on the overflow chain. */
    char keys[KHALA_BUCKET_SLOTS + 2][32];
    cr_assert_eq(put("first", "value", 0), 0);
    same_bucket("first", "k", -1, keys, KHALA_BUCKET_SLOTS + 2);
    for (int i = 0; i < KHALA_BUCKET_SLOTS; i++)
        cr_assert_eq(put(keys[i], "value", 0), 0);
    const char *victim = keys[KHALA_BUCKET_SLOTS - 1];
    cr_assert_eq(slot_of_key(victim), -1, "the thirteenth key overflows");
    khala_seg_t *s = khala__l1_seg(g_t);
    uint32_t link = khala_load_relaxed(&bucket_of(victim)->chain);
    khala_item_t *it = (khala_item_t *)(s->base + khala_link_off(link));
    khala_store_relaxed(&it->next[0], link); /* the item points at itself */
    /* An absent key of the same bucket walks the loop. */
    const char *key = keys[KHALA_BUCKET_SLOTS + 1];
    char buf[16];
    size_t len;
    khala_view_t view;
    cr_assert_eq(khala_read_begin(g_c), 0);
    cr_assert_eq(khala_cache_view(g_c, key, strlen(key), &view), KHALA_ENOTFOUND);
    khala_read_end(g_c);
    cr_assert_eq(khala_cache_get(g_c, key, strlen(key), buf, sizeof(buf), &len), KHALA_ENOTFOUND);
    cr_assert_eq(khala__l1_check(g_t), KHALA_ECORRUPT);
    khala_store_relaxed(&it->next[0], 0);
    check();
}

Test(l1_table, item_length_past_the_arena_is_ecorrupt) {
    open_both(64, 64 * 1024);
    cr_assert_eq(put("victim", "value", 0), 0);
    khala_seg_t *s = khala__l1_seg(g_t);
    khala_item_t *it =
        (khala_item_t *)(s->base + khala_link_off(khala_load_relaxed(link_word_of("victim"))));
    it->value_len = UINT32_MAX;
    char buf[16];
    size_t len;
    cr_assert_eq(khala_cache_get(g_c, "victim", 6, buf, sizeof(buf), &len), KHALA_ECORRUPT);
    it->value_len = 5;
    check();
}

/* Bug: the reader checked every item of a chain against the looked-up key's length, so a long
 * key whose chain passed a small, valid item in the last 40 + klen bytes of the arena was
 * reported KHALA_ECORRUPT, by the client and by the writer's own lookup alike. The long key
 * goes on its line's overflow chain (twelve keys of its line come first), and the small one
 * heads that chain. */
Test(l1_table, long_key_whose_chain_passes_a_small_item_at_the_arena_end_is_found) {
    open_both(256, 64 * 1024);
    khala_seg_t *s = khala__l1_seg(g_t);
    char lkey[201];
    memset(lkey, 'L', 200);
    lkey[200] = '\0';
    char line[KHALA_BUCKET_SLOTS + 1][32];
    same_bucket(lkey, "l", -1, line, KHALA_BUCKET_SLOTS + 1);
    for (int i = 0; i < KHALA_BUCKET_SLOTS; i++)
        cr_assert_eq(put(line[i], "-", 0), 0);
    cr_assert_eq(put(lkey, "long", 0), 0);
    cr_assert_eq(slot_of_key(lkey), -1);
    /* Fill the arena from the front (TLSF splits the one free block from its start) until
     * less than one long item's worth of bytes is left at its end. */
    char filler[2048];
    memset(filler, 'f', sizeof(filler) - 1);
    filler[sizeof(filler) - 1] = '\0';
    for (int i = 0; stats().free_bytes > 160; i++) {
        uint64_t left = stats().free_bytes;
        size_t vlen = left > 1200 ? 1000 : (size_t)(left - 160);
        char key[32];
        snprintf(key, sizeof(key), "fill%d", i);
        filler[vlen] = '\0';
        cr_assert_eq(put(key, filler, 0), 0, "%s", khala__l1_errmsg(g_t));
        filler[vlen] = 'f';
    }
    /* A small key of the long key's bucket, put last: it lands at the arena's end and heads the
     * chain, so a lookup of the long key passes it first. */
    const char *skey = line[KHALA_BUCKET_SLOTS];
    cr_assert_eq(put(skey, "x", 0), 0);
    cr_assert_eq(khala_load_relaxed(&bucket_of(lkey)->chain),
                 khala_load_relaxed(link_word_of(skey)), "the small key heads the chain");
    const khala_item_t *it;
    cr_assert_eq(khala__l1_find(g_t, skey, strlen(skey), &it), 0);
    uint64_t off = (uint64_t)((const uint8_t *)it - s->base);
    cr_assert_gt(off + sizeof(khala_item_t) + 200, s->arena_hi,
                 "the small item (at %llu) must lie in the arena's last 240 bytes (end %llu)",
                 (unsigned long long)off, (unsigned long long)s->arena_hi);
    check();
    char buf[16];
    cr_assert_eq(get(lkey, buf, sizeof(buf)), 0, "%s", khala_cache_errmsg(g_c));
    cr_assert_str_eq(buf, "long");
    cr_assert_eq(khala__l1_find(g_t, lkey, 200, &it), 0, "the writer's own lookup");
    cr_assert_eq(get(skey, buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "x");
}

/* A restarted writer (khalad) --------------------------------------------------------------- */

/* Close the writer as a crash or a restart would leave it: the segment stays. */
static void writer_restart(const khala_seg_config_t *cfg, int want_reattached) {
    char err[256] = "";
    khala__l1_close(g_t, 0);
    g_t = NULL;
    int rc = khala__l1_open_ex(g_name, cfg, KHALA_L1_REATTACH, &g_t, err, sizeof(err));
    cr_assert_eq(rc, 0, "khala__l1_open_ex: %d %s", rc, err);
    cr_assert_eq(khala__l1_reattached(g_t), want_reattached, "reattached: %s",
                 khala__l1_errmsg(g_t));
    check();
}

Test(l1_table, restarted_writer_keeps_the_items_and_the_readers) {
    khala_seg_config_t cfg = tu_config(64, 64 * 1024);
    open_cfg(&cfg);
    cr_assert_eq(put("kept", "value", 0), 0);
    uint64_t gen = khala__l1_seg(g_t)->generation;
    writer_restart(&cfg, 1);
    cr_assert_eq(khala__l1_seg(g_t)->generation, gen, "same segment, same generation");
    char buf[64];
    cr_assert_eq(get("kept", buf, sizeof(buf)), 0, "the reader never noticed the restart");
    cr_assert_str_eq(buf, "value");
    cr_assert_eq(put("after", "restart", 0), 0);
    cr_assert_eq(get("after", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "restart");
    cr_assert_eq(stats().items, 2);
}

Test(l1_table, restarted_writer_with_other_sizes_makes_a_new_segment) {
    khala_seg_config_t cfg = tu_config(64, 64 * 1024);
    open_cfg(&cfg);
    cr_assert_eq(put("old", "value", 0), 0);
    uint64_t gen = khala__l1_seg(g_t)->generation;
    khala_seg_config_t bigger = tu_config(128, 128 * 1024);
    writer_restart(&bigger, 0);
    cr_assert_neq(strstr(khala__l1_errmsg(g_t), "other sizes"), NULL, "%s", khala__l1_errmsg(g_t));
    cr_assert_eq(khala__l1_seg(g_t)->generation, gen + 1);
    cr_assert_eq(put("new", "value", 0), 0);
    /* The reader moves to the new segment on its own. */
    cr_assert_not(present("old"));
    cr_assert(present("new"));
}

Test(l1_table, restarted_writer_rebuilds_an_inconsistent_segment) {
    khala_seg_config_t cfg = tu_config(64, 64 * 1024);
    open_cfg(&cfg);
    cr_assert_eq(put("a", "1", 0), 0);
    /* What a writer killed halfway through a put leaves: a counter that disagrees. */
    khala__l1_seg(g_t)->hdr->w.items++;
    writer_restart(&cfg, 0);
    cr_assert_neq(strstr(khala__l1_errmsg(g_t), "inconsistent"), NULL, "%s", khala__l1_errmsg(g_t));
    cr_assert_eq(stats().items, 0);
}

Test(l1_table, second_writer_cannot_reattach_while_the_first_lives) {
    khala_seg_config_t cfg = tu_config(64, 64 * 1024);
    open_cfg(&cfg);
    char err[256] = "";
    khala_l1_t *other = NULL;
    int rc = khala__l1_open_ex(g_name, &cfg, KHALA_L1_REATTACH, &other, err, sizeof(err));
    cr_assert_eq(rc, KHALA_EEXIST, "got %d (%s)", rc, err);
    cr_assert_null(other);
    cr_assert_neq(strstr(err, "live writer"), NULL, "%s", err);
    check();
}

/* A corrupted segment at restart (khalad's REATTACH) ---------------------------------------- *
 * Each test corrupts one field that the writer-side check follows, then demands that the check
 * report it (KHALA_ECORRUPT, with a message naming the structure) and that a restarting writer
 * make the segment anew instead of crashing on it or trusting it. */

static khala_seg_header_t *seg_hdr(void) {
    return khala__l1_seg(g_t)->hdr;
}

static khala_alloc_state_t *alloc_state(void) {
    khala_seg_t *s = khala__l1_seg(g_t);
    return (khala_alloc_state_t *)(s->base + s->hdr->alloc_off);
}

static khala_desc_t *descs(void) {
    khala_seg_t *s = khala__l1_seg(g_t);
    return (khala_desc_t *)(s->base + s->hdr->desc_off);
}

/* The record (size, next, prev) of the listed free block at b: at its first whole line. */
static uint64_t *free_rec(uint64_t b) {
    uint64_t line = (b + KHALA_CACHE_LINE - 1) & ~(uint64_t)(KHALA_CACHE_LINE - 1);
    return (uint64_t *)(khala__l1_seg(g_t)->base + line);
}

/* The arena's block bitmap (alloc.c). */
static uint64_t *block_bits(void) {
    khala_seg_t *s = khala__l1_seg(g_t);
    return (uint64_t *)(s->base + s->hdr->bitmap_off);
}

/* The offset of the first retired item (the fixture retires a few). */
static uint64_t *first_retired(void) {
    khala_seg_t *s = khala__l1_seg(g_t);
    khala_retired_t *r = (khala_retired_t *)(s->base + s->hdr->retire_off);
    cr_assert_neq(s->hdr->w.retire_tail, s->hdr->w.retire_head, "the fixture retires items");
    return &r[s->hdr->w.retire_head % s->hdr->retire_cap].off;
}

/* The offset of the last retired item. */
static uint64_t *last_retired(void) {
    khala_seg_t *s = khala__l1_seg(g_t);
    khala_retired_t *r = (khala_retired_t *)(s->base + s->hdr->retire_off);
    cr_assert_neq(s->hdr->w.retire_tail, s->hdr->w.retire_head, "the fixture retires items");
    return &r[(s->hdr->w.retire_tail - 1) % s->hdr->retire_cap].off;
}

/* The head of the first non-empty free list, which the fixture makes the only one. */
static uint64_t *first_free_head(void) {
    khala_alloc_state_t *st = alloc_state();
    for (int f = 0; f < KHALA_ALLOC_FL; f++)
        for (int s = 0; s < KHALA_ALLOC_SL; s++)
            if (st->free_head[f][s])
                return &st->free_head[f][s];
    cr_assert_fail("no free block");
    return NULL;
}

/* A writer with ten keys, three of them overwritten (so three items wait in the retire ring),
 * and one free block after them. */
static khala_seg_config_t corrupt_fixture(void) {
    khala_seg_config_t cfg = tu_config(64, 64 * 1024);
    open_cfg(&cfg);
    char key[16];
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof(key), "key%d", i);
        cr_assert_eq(put(key, "value", 0), 0);
    }
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof(key), "key%d", i);
        cr_assert_eq(put(key, "other", 0), 0);
    }
    return cfg;
}

/* The check reports the corruption, naming `why`; a restarting writer makes the segment anew
 * and says why; the new segment works. */
static void expect_rebuilt(const khala_seg_config_t *cfg, const char *why) {
    cr_assert_eq(khala__l1_check(g_t), KHALA_ECORRUPT, "the check missed it");
    cr_assert_neq(strstr(khala__l1_errmsg(g_t), why), NULL, "message: %s", khala__l1_errmsg(g_t));
    uint64_t gen = khala__l1_seg(g_t)->generation;
    writer_restart(cfg, 0);
    const char *msg = khala__l1_errmsg(g_t);
    cr_assert_neq(strstr(msg, "made anew"), NULL, "%s", msg);
    cr_assert_neq(strstr(msg, "inconsistent"), NULL, "%s", msg);
    cr_assert_neq(strstr(msg, why), NULL, "%s", msg);
    cr_assert_eq(khala__l1_seg(g_t)->generation, gen + 1);
    cr_assert_eq(khala__l1_maintain(g_t), 0);
    cr_assert_eq(put("after", "rebuild", 0), 0);
    char buf[16];
    cr_assert_eq(get("after", buf, sizeof(buf)), 0, "the reader moved to the new segment");
}

Test(l1_table, free_desc_index_past_max_items_is_rebuilt_not_followed) {
    khala_seg_config_t cfg = corrupt_fixture();
    seg_hdr()->w.free_desc = 0x40000000u;
    expect_rebuilt(&cfg, "free desc list");
}

Test(l1_table, free_desc_next_past_max_items_is_rebuilt_not_followed) {
    khala_seg_config_t cfg = corrupt_fixture();
    descs()[seg_hdr()->w.free_desc].next = 0x40000000u;
    expect_rebuilt(&cfg, "free desc list");
}

Test(l1_table, free_list_head_outside_the_arena_is_rebuilt_not_followed) {
    khala_seg_config_t cfg = corrupt_fixture();
    *first_free_head() = 1ull << 40;
    expect_rebuilt(&cfg, "free list");
}

Test(l1_table, free_list_next_outside_the_arena_is_rebuilt_not_followed) {
    khala_seg_config_t cfg = corrupt_fixture();
    uint64_t b = *first_free_head();
    uint64_t *links = free_rec(b) + 1; /* next, then prev */
    links[0] = 1ull << 40;
    expect_rebuilt(&cfg, "free list");
}

Test(l1_table, free_list_that_loops_is_rebuilt) {
    khala_seg_config_t cfg = corrupt_fixture();
    uint64_t b = *first_free_head();
    uint64_t *links = free_rec(b) + 1;
    links[0] = b; /* the block is its own successor */
    links[1] = b; /* and predecessor */
    expect_rebuilt(&cfg, "free list");
}

Test(l1_table, free_record_size_of_zero_is_rebuilt) {
    khala_seg_config_t cfg = corrupt_fixture();
    free_rec(*first_free_head())[0] = 0;
    expect_rebuilt(&cfg, "size");
}

Test(l1_table, used_block_marked_free_is_rebuilt) {
    khala_seg_config_t cfg = corrupt_fixture();
    khala_seg_t *s = khala__l1_seg(g_t);
    /* A retired item's block (used, not linked), its second unit marked as a free block's. */
    uint64_t g = (*last_retired() - s->arena_lo) / KHALA_ALIGN + 1;
    cr_assert_gt(*last_retired(), s->arena_lo);
    block_bits()[g / 64] |= 1ull << (g % 64);
    expect_rebuilt(&cfg, "arena allocator");
}

Test(l1_table, footer_pointing_before_the_arena_is_rebuilt) {
    khala_seg_config_t cfg = corrupt_fixture();
    uint64_t b = *first_free_head();
    uint64_t end = (b + free_rec(b)[0]) & ~(uint64_t)(KHALA_CACHE_LINE - 1);
    /* The free block's footer, the last word of its last whole line. */
    *(uint64_t *)(khala__l1_seg(g_t)->base + end - 8) = end + 4096;
    expect_rebuilt(&cfg, "footer");
}

Test(l1_table, queue_link_out_of_range_is_rebuilt_not_followed) {
    khala_seg_config_t cfg = corrupt_fixture();
    descs()[seg_hdr()->w.q_head[KHALA_Q_SMALL]].next = 0x40000000u;
    expect_rebuilt(&cfg, "eviction queue");
}

Test(l1_table, queue_count_beyond_max_items_is_rebuilt) {
    khala_seg_config_t cfg = corrupt_fixture();
    seg_hdr()->w.q_count[KHALA_Q_SMALL] = UINT64_MAX;
    expect_rebuilt(&cfg, "eviction queue");
}

Test(l1_table, retired_offset_outside_the_arena_is_rebuilt_not_freed) {
    khala_seg_config_t cfg = corrupt_fixture();
    *first_retired() = 1ull << 40;
    expect_rebuilt(&cfg, "retire ring");
}

Test(l1_table, retired_offset_of_a_live_item_is_rebuilt_not_freed) {
    khala_seg_config_t cfg = corrupt_fixture();
    const khala_item_t *it;
    cr_assert_eq(khala__l1_find(g_t, "key9", 4, &it), 0);
    /* Freeing it would hand a block readers still read to the next put. */
    *first_retired() = (uint64_t)((const uint8_t *)it - khala__l1_seg(g_t)->base);
    expect_rebuilt(&cfg, "retire ring");
}

Test(l1_table, retired_epoch_in_the_future_is_rebuilt) {
    khala_seg_config_t cfg = corrupt_fixture();
    khala_retired_t *r = (khala_retired_t *)((uint8_t *)first_retired());
    r->epoch = UINT64_MAX; /* would pin the item, and every later one, forever */
    expect_rebuilt(&cfg, "retire ring");
}

Test(l1_table, epoch_about_to_wrap_is_rebuilt) {
    khala_seg_config_t cfg = corrupt_fixture();
    /* Once advanced it would read 0, "outside a section", in every reader slot. */
    khala_store_relaxed(&seg_hdr()->epoch, UINT64_MAX);
    expect_rebuilt(&cfg, "epoch");
}

Test(l1_table, retire_ring_longer_than_its_capacity_is_rebuilt) {
    khala_seg_config_t cfg = corrupt_fixture();
    seg_hdr()->w.retire_head = seg_hdr()->w.retire_tail + 1; /* "minus one" retired items */
    expect_rebuilt(&cfg, "retire ring");
}

Test(l1_table, allocator_bitmap_naming_a_missing_list_is_rebuilt) {
    khala_seg_config_t cfg = corrupt_fixture();
    alloc_state()->fl_bitmap |= 1ull << 60; /* row 60 does not exist */
    expect_rebuilt(&cfg, "bitmap");
}

/* Scans (invalidation by prefix or type, flush, keys) --------------------------------------- */

static int remove_prefix_user(void *arg, const khala_item_t *it) {
    int *seen = arg;
    (*seen)++;
    return it->key_len >= 5 && memcmp(khala__item_key(it), "user:", 5) == 0;
}

Test(l1_table, scan_visits_every_item_once_and_removes_what_it_is_told) {
    open_both(256, 256 * 1024);
    char key[32];
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), i % 2 ? "user:%d" : "order:%d", i);
        cr_assert_eq(put(key, "v", 0), 0);
    }
    uint64_t cursor = 0;
    int seen = 0, calls = 0;
    size_t removed = 0;
    do {
        removed += khala__l1_scan(g_t, &cursor, 16, remove_prefix_user, &seen);
        calls++;
    } while (cursor != 0);
    cr_assert_gt(calls, 1, "the walk went in slices");
    cr_assert_eq(seen, 100);
    cr_assert_eq(removed, 50);
    check();
    cr_assert_eq(stats().items, 50);
    cr_assert_not(present("user:1"));
    cr_assert(present("order:0"));
}

Test(l1_table, writer_find_sees_items_and_refuses_bad_keys) {
    open_both(64, 64 * 1024);
    cr_assert_eq(put("k", "value", 0), 0);
    const khala_item_t *it = NULL;
    cr_assert_eq(khala__l1_find(g_t, "k", 1, &it), 0);
    cr_assert_eq(it->value_len, 5);
    cr_assert_eq(khala__l1_find(g_t, "absent", 6, &it), KHALA_ENOTFOUND);
    cr_assert_eq(khala__l1_find(g_t, "", 0, &it), KHALA_EKEY);
}

Test(l1_table, hits_recorded_by_readers_are_counted_per_key) {
    open_both(64, 64 * 1024);
    cr_assert_eq(put("popular", "v", 0), 0);
    cr_assert_eq(put("ignored", "v", 0), 0);
    char buf[8];
    for (int i = 0; i < 5; i++)
        cr_assert_eq(get("popular", buf, sizeof(buf)), 0);
    cr_assert_geq(khala__l1_maintain(g_t), 0); /* drains the rings */
    const khala_item_t *it;
    cr_assert_eq(khala__l1_find(g_t, "popular", 7, &it), 0);
    cr_assert_eq(khala__l1_item_hits(g_t, it), 5);
    cr_assert_eq(khala__l1_find(g_t, "ignored", 7, &it), 0);
    cr_assert_eq(khala__l1_item_hits(g_t, it), 0);
    /* An overwrite keeps the key's count: it is the key's, not the item's. */
    cr_assert_eq(put("popular", "w", 0), 0);
    cr_assert_eq(khala__l1_find(g_t, "popular", 7, &it), 0);
    cr_assert_eq(khala__l1_item_hits(g_t, it), 5);
}

/* The inline hash, key compare and copy of the hit path ------------------------------------- */

Test(l1_table, inline_hash_equals_xxh3_for_every_short_and_long_length) {
    open_both(64, 64 * 1024);
    khala_seg_t *s = khala__l1_seg(g_t);
    uint8_t key[300];
    for (size_t i = 0; i < sizeof(key); i++)
        key[i] = (uint8_t)(i * 131 + 7);
    for (size_t n = 0; n <= sizeof(key); n++)
        cr_assert_eq(khala__l1_hash(s, key, n), XXH3_64bits_withSeed(key, n, s->hash_seed),
                     "length %zu", n);
}

Test(l1_table, inline_key_compare_and_copy_see_every_byte) {
    uint8_t a[300], b[300], d[300];
    for (size_t i = 0; i < sizeof(a); i++)
        a[i] = b[i] = (uint8_t)(i * 7 + 1);
    for (size_t n = 0; n <= sizeof(a); n++) {
        cr_assert(khala__l1_key_eq(a, b, n), "length %zu", n);
        for (size_t i = 0; i < n; i++) {
            b[i] ^= 0x40;
            cr_assert(!khala__l1_key_eq(a, b, n), "length %zu, byte %zu", n, i);
            b[i] ^= 0x40;
        }
        memset(d, 0xee, sizeof(d));
        khala__l1_copy(d, a, n);
        cr_assert(memcmp(d, a, n) == 0, "copy of %zu", n);
        for (size_t i = n; i < sizeof(d); i++)
            cr_assert_eq(d[i], 0xee, "copy of %zu wrote byte %zu", n, i);
    }
}

/* Hash flooding ------------------------------------------------------------------------------ */

/* Fill keys[0..n) with distinct keys "<prefix><number>" whose hash under seed falls in bucket 0
 * of the index: what a client that reads the seed can do. */
static void collide(const khala_seg_t *s, uint64_t seed, const char *prefix, char (*keys)[16],
                    int n) {
    uint64_t x = 0;
    for (int i = 0; i < n; x++) {
        int len = snprintf(keys[i], sizeof(keys[i]), "%s%llu", prefix, (unsigned long long)x);
        if (khala__l1_bucket_index(s, khala__l1_hash_with(seed, keys[i], (size_t)len)) == 0)
            i++;
    }
}

Test(l1_table, flooded_bucket_makes_the_writer_rehash_and_gets_never_fail) {
    enum { N = 3 * KHALA_CHAIN_REHASH };
    static char keys[N][16];
    open_both(1024, 1 << 20);
    khala_seg_t *s = khala__l1_seg(g_t);
    cr_assert_eq(put("before", "x", 0), 0);
    /* A section opened before the rehash keeps reading through it. */
    khala_view_t view;
    cr_assert_eq(khala_read_begin(g_c), 0);
    cr_assert_eq(khala_cache_view(g_c, "before", 6, &view), 0);
    uint64_t seed0 = khala__l1_index(s).seed;
    collide(s, seed0, "f", keys, N);
    for (int i = 0; i < N; i++)
        cr_assert_eq(put(keys[i], keys[i], 0), 0, "put %d", i);
    cr_assert_eq(stats().rehashes, 1, "one rehash, then at most one per max_items puts");
    khala_l1_index_t ix = khala__l1_index(s);
    cr_assert_eq(ix.count, 1);
    cr_assert_neq(ix.seed, seed0);
    cr_assert_eq(khala_cache_view(g_c, "before", 6, &view), 0);
    cr_assert_eq(khala_cache_view(g_c, keys[N - 1], strlen(keys[N - 1]), &view), 0);
    khala_read_end(g_c);
    /* Under the new seed the keys spread out: no chain is near the bound. */
    for (uint64_t b = 0; b < s->bucket_count; b++) {
        uint32_t n = 0;
        for (uint64_t off = khala_link_off(khala_load_relaxed(&ix.buckets[b].chain)); off; n++)
            off = khala_link_off(
                khala_load_relaxed(&((const khala_item_t *)(s->base + off))->next[ix.which]));
        cr_assert_lt(n, 16, "bucket %llu has %u items on its chain", (unsigned long long)b, n);
    }
    char buf[32];
    for (int i = 0; i < N; i++) {
        cr_assert_eq(get(keys[i], buf, sizeof(buf)), 0, "get %d", i);
        cr_assert_str_eq(buf, keys[i]);
    }
    cr_assert_eq(get("before", buf, sizeof(buf)), 0);
    /* A second flood, under the new seed, before max_items puts have passed: no rehash yet,
     * and still no get fails. */
    static char again[N][16];
    collide(s, ix.seed, "f", again, N);
    for (int i = 0; i < N; i++) {
        int rc = khala__l1_put(g_t, again[i], strlen(again[i]), "y", 1, 0, 0, NULL);
        cr_assert_eq(rc, 0, "put again %d", i);
    }
    check();
    cr_assert_eq(stats().rehashes, 1);
    for (int i = 0; i < N; i++)
        cr_assert_eq(get(again[i], buf, sizeof(buf)), 0, "get again %d", i);
    /* Delete and overwrite work on the live index. */
    cr_assert_eq(khala__l1_delete(g_t, keys[0], strlen(keys[0])), 0);
    cr_assert_eq(put(keys[1], "z", 0), 0);
    check();
    cr_assert_eq(get(keys[0], buf, sizeof(buf)), KHALA_ENOTFOUND);
    cr_assert_eq(get(keys[1], buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "z");
}

Test(l1_table, rehash_never_reuses_an_index_a_reader_may_still_walk) {
    enum { N = KHALA_CHAIN_REHASH + KHALA_BUCKET_SLOTS + 8, ITEMS = 256 };
    static char keys[N][16];
    open_both(ITEMS, 1 << 20);
    khala_seg_t *s = khala__l1_seg(g_t);
    cr_assert_eq(put("before", "x", 0), 0);
    /* A reader enters while index 0 is live, and stays. */
    cr_assert_eq(khala_read_begin(g_c), 0);
    khala_view_t view;
    cr_assert_eq(khala_cache_view(g_c, "before", 6, &view), 0);
    /* Flood: the writer rehashes into index 1, which no reader ever used. */
    collide(s, khala__l1_index(s).seed, "f", keys, N);
    for (int i = 0; i < N; i++)
        cr_assert_eq(khala__l1_put(g_t, keys[i], strlen(keys[i]), "v", 1, 0, 0, NULL), 0);
    cr_assert_eq(stats().rehashes, 1);
    for (int i = 0; i < ITEMS; i++) /* let max_items puts pass */
        cr_assert_eq(khala__l1_put(g_t, "filler", 6, "f", 1, 0, 0, NULL), 0);
    /* Flood again: a rehash would rebuild index 0, which the reader may still walk. */
    collide(s, khala__l1_index(s).seed, "f", keys, N);
    for (int i = 0; i < N; i++)
        cr_assert_eq(khala__l1_put(g_t, keys[i], strlen(keys[i]), "w", 1, 0, 0, NULL), 0);
    check();
    cr_assert_eq(stats().rehashes, 1, "index 0 is reused while its reader is inside");
    cr_assert_eq(khala_cache_view(g_c, "before", 6, &view), 0);
    khala_read_end(g_c);
    /* The reader left: the next put that meets the long chain rehashes (a new key of the line
     * walks all of it). */
    static char fresh[1][16];
    collide(s, khala__l1_index(s).seed, "n", fresh, 1);
    cr_assert_eq(khala__l1_put(g_t, fresh[0], strlen(fresh[0]), "x", 1, 0, 0, NULL), 0);
    check();
    cr_assert_eq(stats().rehashes, 2);
    cr_assert_eq(khala__l1_index(s).count, 2);
    char buf[32];
    for (int i = 0; i < N; i++)
        cr_assert_eq(get(keys[i], buf, sizeof(buf)), 0);
    cr_assert_eq(get("before", buf, sizeof(buf)), 0);
}
