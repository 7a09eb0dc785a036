/*
 * Single-flight (daemon/flight.c): one leader per key, waiters answered with its result,
 * timeouts, promotion when a leader goes away, and the invalidation race.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "flight.h"

static khala_flight_t *g_f;

/* What the callback saw. */
static struct {
    int calls;
    uint64_t req[64];
    int rc[64];
    char val[64][16];
} g_seen;

static void record(void *arg, const khala_waiter_t *w, int rc, const void *val, size_t vlen) {
    (void)arg;
    int i = g_seen.calls++;
    cr_assert_lt(i, 64);
    g_seen.req[i] = w->req_id;
    g_seen.rc[i] = rc;
    if (val && vlen < sizeof(g_seen.val[i]))
        memcpy(g_seen.val[i], val, vlen);
}

static void setup(void) {
    memset(&g_seen, 0, sizeof(g_seen));
    cr_assert_eq(khala__flight_open(&g_f, 1000, 4), 0);
}

static void teardown(void) {
    khala__flight_close(g_f);
}

TestSuite(flight, .init = setup, .fini = teardown, .timeout = 10);

static int owners[8]; /* distinct addresses standing for connections */

static int join(const char *key, int owner, uint64_t req, uint64_t now) {
    khala_waiter_t w = {&owners[owner], req, 0};
    return khala__flight_join(g_f, key, strlen(key), &w, now);
}

Test(flight, first_miss_leads_and_later_ones_wait) {
    cr_assert_eq(join("k", 0, 1, 0), KHALA_FLIGHT_LEADER);
    cr_assert_eq(join("k", 1, 2, 0), KHALA_FLIGHT_WAITER);
    cr_assert_eq(join("k", 2, 3, 0), KHALA_FLIGHT_WAITER);
    cr_assert_eq(join("other", 3, 4, 0), KHALA_FLIGHT_LEADER, "keys fly separately");
    cr_assert_eq(khala__flight_count(g_f), 2);
}

Test(flight, leader_result_answers_every_waiter_once) {
    join("k", 0, 1, 0);
    join("k", 1, 2, 0);
    join("k", 2, 3, 0);
    cr_assert_eq(khala__flight_invalidated(g_f, "k", 1), 0);
    cr_assert_eq(khala__flight_finish(g_f, "k", 1, 0, "value", 5, record, NULL), 2);
    cr_assert_eq(g_seen.calls, 2);
    cr_assert_eq(g_seen.req[0], 2);
    cr_assert_eq(g_seen.req[1], 3);
    cr_assert_str_eq(g_seen.val[0], "value");
    cr_assert_eq(g_seen.rc[1], 0);
    cr_assert_eq(khala__flight_count(g_f), 0);
    cr_assert_eq(join("k", 1, 5, 0), KHALA_FLIGHT_LEADER, "the next miss starts a new flight");
}

Test(flight, not_found_is_passed_on) {
    join("k", 0, 1, 0);
    join("k", 1, 2, 0);
    khala__flight_finish(g_f, "k", 1, -2, NULL, 0, record, NULL);
    cr_assert_eq(g_seen.calls, 1);
    cr_assert_eq(g_seen.rc[0], -2);
}

Test(flight, slow_leader_times_out_its_waiters) {
    join("k", 0, 1, 100);
    join("k", 1, 2, 150);
    cr_assert_eq(khala__flight_expire(g_f, 1099, record, NULL), 0, "not yet");
    cr_assert_eq(khala__flight_expire(g_f, 1100, record, NULL), 1);
    cr_assert_eq(g_seen.calls, 1);
    cr_assert_eq(g_seen.rc[0], -ETIMEDOUT);
    cr_assert_eq(khala__flight_count(g_f), 0);
    /* The late leader's fill finds nobody to answer. */
    cr_assert_eq(khala__flight_finish(g_f, "k", 1, 0, "v", 1, record, NULL), 0);
}

Test(flight, leader_that_goes_away_hands_over_to_the_oldest_waiter) {
    join("k", 0, 1, 0);
    join("k", 1, 2, 0);
    join("k", 2, 3, 0);
    khala__flight_forget_owner(g_f, &owners[0], 500, record, NULL);
    cr_assert_eq(g_seen.calls, 1);
    cr_assert_eq(g_seen.rc[0], KHALA_FLIGHT_LEADER);
    cr_assert_eq(g_seen.req[0], 2);
    /* The new leader's result reaches the remaining waiter. */
    khala__flight_finish(g_f, "k", 1, 0, "v", 1, record, NULL);
    cr_assert_eq(g_seen.calls, 2);
    cr_assert_eq(g_seen.req[1], 3);
}

Test(flight, promoted_leader_gets_a_fresh_timeout) {
    join("k", 0, 1, 0);
    join("k", 1, 2, 0);
    khala__flight_forget_owner(g_f, &owners[0], 900, record, NULL);
    cr_assert_eq(khala__flight_expire(g_f, 1500, record, NULL), 0);
    cr_assert_eq(khala__flight_expire(g_f, 1900, record, NULL), 1);
}

Test(flight, waiter_that_goes_away_is_not_answered) {
    join("k", 0, 1, 0);
    join("k", 1, 2, 0);
    khala__flight_forget_owner(g_f, &owners[1], 0, record, NULL);
    cr_assert_eq(g_seen.calls, 0);
    cr_assert_eq(khala__flight_finish(g_f, "k", 1, 0, "v", 1, record, NULL), 0);
}

Test(flight, lone_leader_that_goes_away_clears_the_key) {
    join("k", 0, 1, 0);
    khala__flight_forget_owner(g_f, &owners[0], 0, record, NULL);
    cr_assert_eq(khala__flight_count(g_f), 0);
}

Test(flight, invalidation_during_a_load_forbids_caching_its_result) {
    join("user:1", 0, 1, 0);
    join("user:2", 1, 2, 0);
    join("order:1", 2, 3, 0);
    khala__flight_invalidate(g_f, "user:", 5, 1);
    cr_assert_eq(khala__flight_invalidated(g_f, "user:1", 6), 1);
    cr_assert_eq(khala__flight_invalidated(g_f, "order:1", 7), 0, "another prefix is untouched");
    cr_assert_eq(khala__flight_invalidated(g_f, "user:2", 6), 1);
    khala__flight_finish(g_f, "user:1", 6, 0, "v", 1, record, NULL);
    cr_assert_eq(khala__flight_invalidated(g_f, "user:1", 6), 0, "a finished key is forgotten");
    khala__flight_invalidate(g_f, "order:1", 7, 0);
    cr_assert_eq(khala__flight_invalidated(g_f, "order:1", 7), 1, "by key too");
}

Test(flight, table_is_bounded) {
    cr_assert_eq(join("a", 0, 1, 0), KHALA_FLIGHT_LEADER);
    cr_assert_eq(join("b", 0, 2, 0), KHALA_FLIGHT_LEADER);
    cr_assert_eq(join("c", 0, 3, 0), KHALA_FLIGHT_LEADER);
    cr_assert_eq(join("d", 0, 4, 0), KHALA_FLIGHT_LEADER);
    cr_assert_eq(join("e", 0, 5, 0), -EBUSY);
    cr_assert_eq(join("a", 1, 6, 0), KHALA_FLIGHT_WAITER, "existing keys still take waiters");
}

Test(flight, leader_retrying_stays_leader) {
    cr_assert_eq(join("k", 0, 1, 0), KHALA_FLIGHT_LEADER);
    cr_assert_eq(join("k", 0, 7, 0), KHALA_FLIGHT_LEADER);
    cr_assert_eq(join("k", 1, 2, 0), KHALA_FLIGHT_WAITER);
}

Test(flight, binary_keys_with_nul_bytes_are_distinct) {
    khala_waiter_t w0 = {&owners[0], 1, 0}, w1 = {&owners[1], 2, 0};
    cr_assert_eq(khala__flight_join(g_f, "a\0b", 3, &w0, 0), KHALA_FLIGHT_LEADER);
    cr_assert_eq(khala__flight_join(g_f, "a\0c", 3, &w1, 0), KHALA_FLIGHT_LEADER);
}
