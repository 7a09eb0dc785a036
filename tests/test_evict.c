/*
 * Tests of the S3-FIFO policy (lib/evict.c) over a desc array in private memory: where a new key
 * goes, what leaves the small queue for main and what for the ghost, and how main gives hit
 * keys another round. khala__policy_check runs after every step.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "evict.h"
#include "khala/error.h"

#define N 64u
#define GHOST_CAP 128u

static khala_desc_t g_desc[N];
static khala_wstate_t g_w;
static khala_ghost_t g_ghost[GHOST_CAP];
static khala_policy_t g_pol;

static void setup(void) {
    memset(g_desc, 0, sizeof(g_desc));
    memset(&g_w, 0, sizeof(g_w));
    memset(g_ghost, 0, sizeof(g_ghost));
    for (int q = 0; q < 3; q++)
        g_w.q_head[q] = g_w.q_tail[q] = KHALA_NIL;
    for (uint32_t i = 0; i < N; i++)
        g_desc[i].prev = g_desc[i].next = KHALA_NIL;
    g_pol.desc = g_desc;
    g_pol.w = &g_w;
    g_pol.ghost = g_ghost;
    g_pol.ghost_mask = GHOST_CAP - 1;
    g_pol.ghost_window = N;
    g_pol.max_items = N;
}

static void teardown(void) {
}

TestSuite(evict, .init = setup, .fini = teardown, .timeout = 10);

static uint64_t hash_of(uint32_t idx) {
    return 0x9e3779b97f4a7c15ull * (idx + 1) ^ 0x1234;
}

/* Give desc idx a key (as khala__l1_put does) and insert it. */
static void insert(uint32_t idx, uint64_t hash) {
    g_desc[idx].item_off = 4096 + 64ull * idx;
    g_desc[idx].hash = hash;
    khala__policy_insert(&g_pol, idx);
    cr_assert_eq(khala__policy_check(&g_pol, NULL, 0), 0);
}

/* Take the victim and free its desc, as the table does. */
static uint32_t evict(void) {
    uint32_t v = khala__policy_victim(&g_pol);
    cr_assert_eq(khala__policy_check(&g_pol, NULL, 0), 0);
    if (v != KHALA_NIL) {
        cr_assert_eq(g_desc[v].queue, KHALA_Q_NONE);
        g_desc[v].item_off = 0;
    }
    return v;
}

Test(evict, empty_policy_has_no_victim) {
    cr_assert_eq(khala__policy_victim(&g_pol), KHALA_NIL);
    cr_assert_eq(khala__policy_check(&g_pol, NULL, 0), 0);
}

Test(evict, new_key_goes_to_small) {
    insert(3, hash_of(3));
    cr_assert_eq(g_desc[3].queue, KHALA_Q_SMALL);
    cr_assert_eq(g_desc[3].freq, 0);
    cr_assert_eq(g_w.q_count[KHALA_Q_SMALL], 1);
    cr_assert_eq(g_w.q_count[KHALA_Q_MAIN], 0);
    cr_assert_eq(g_w.q_head[KHALA_Q_SMALL], 3);
    cr_assert_eq(g_w.q_tail[KHALA_Q_SMALL], 3);
}

Test(evict, small_is_fifo_for_never_hit_keys) {
    for (uint32_t i = 0; i < 10; i++)
        insert(i, hash_of(i));
    for (uint32_t i = 0; i < 10; i++)
        cr_assert_eq(evict(), i);
    cr_assert_eq(evict(), KHALA_NIL);
}

Test(evict, hit_saturates_at_freq_max) {
    insert(0, hash_of(0));
    for (int i = 0; i < 10; i++)
        khala__policy_hit(&g_pol, 0);
    cr_assert_eq(g_desc[0].freq, KHALA_S3_FREQ_MAX);
}

Test(evict, key_hit_once_moves_to_main_when_it_leaves_small) {
    insert(0, hash_of(0));
    insert(1, hash_of(1));
    khala__policy_hit(&g_pol, 0);
    /* 0 is the oldest, but was hit: it moves to main and 1 goes instead. */
    cr_assert_eq(evict(), 1);
    cr_assert_eq(g_desc[0].queue, KHALA_Q_MAIN);
    cr_assert_eq(g_desc[0].freq, 0, "a key entering main starts over");
    cr_assert_eq(g_w.q_count[KHALA_Q_MAIN], 1);
    cr_assert_eq(g_w.q_count[KHALA_Q_SMALL], 0);
}

Test(evict, never_hit_key_leaves_small_into_the_ghost) {
    insert(0, hash_of(0));
    insert(1, hash_of(1));
    cr_assert_eq(evict(), 0);
    /* Its hash is remembered: some ghost entry holds it. */
    int found = 0;
    for (uint32_t i = 0; i < GHOST_CAP; i++)
        found |= g_ghost[i].fp == khala__policy_ghost_fp(hash_of(0));
    cr_assert(found, "the victim's hash is not in the ghost");
    cr_assert_eq(g_w.ghost_seq, 1);
}

Test(evict, ghost_key_reinserted_goes_straight_to_main) {
    insert(0, hash_of(0));
    insert(1, hash_of(1));
    cr_assert_eq(evict(), 0);
    /* The same key comes back (any desc index may carry it). */
    insert(5, hash_of(0));
    cr_assert_eq(g_desc[5].queue, KHALA_Q_MAIN);
    cr_assert_eq(g_desc[5].freq, 0);
    /* The ghost entry was consumed: a second arrival of that hash is new again. */
    khala__policy_remove(&g_pol, 5);
    g_desc[5].item_off = 0;
    insert(6, hash_of(0));
    cr_assert_eq(g_desc[6].queue, KHALA_Q_SMALL);
}

Test(evict, key_unknown_to_the_ghost_goes_to_small) {
    insert(0, hash_of(0));
    insert(1, hash_of(1));
    cr_assert_eq(evict(), 0);
    insert(7, hash_of(42));
    cr_assert_eq(g_desc[7].queue, KHALA_Q_SMALL);
}

Test(evict, ghost_entry_expires_after_its_window) {
    insert(0, hash_of(0));
    insert(1, hash_of(1));
    cr_assert_eq(evict(), 0);
    /* ghost_window more evictions from small have happened since. */
    g_w.ghost_seq += g_pol.ghost_window;
    insert(5, hash_of(0));
    cr_assert_eq(g_desc[5].queue, KHALA_Q_SMALL);
}

Test(evict, zero_hash_is_remembered_too) {
    /* 0 marks an empty ghost entry; a key whose hash is 0 must still be found. */
    insert(0, 0);
    insert(1, hash_of(1));
    cr_assert_eq(evict(), 0);
    insert(2, 0);
    cr_assert_eq(g_desc[2].queue, KHALA_Q_MAIN);
}

Test(evict, main_reinsertion_decrements_freq) {
    insert(0, hash_of(0));
    insert(1, hash_of(1));
    insert(2, hash_of(2));
    khala__policy_hit(&g_pol, 0);
    khala__policy_hit(&g_pol, 2);
    cr_assert_eq(evict(), 1); /* 0 moved to main; 1 was never hit */
    khala__policy_hit(&g_pol, 0);
    khala__policy_hit(&g_pol, 0);
    cr_assert_eq(g_desc[0].freq, 2);
    /* 2 moves from small to main (head); main's tail is 0 with freq 2: it goes round once,
     * losing one, and 2 (freq 0) is the victim. */
    cr_assert_eq(evict(), 2);
    cr_assert_eq(g_desc[0].queue, KHALA_Q_MAIN);
    cr_assert_eq(g_desc[0].freq, 1);
    /* Once more: 0 goes round again (freq 1 -> 0) and, alone, is the victim. */
    cr_assert_eq(evict(), 0);
    cr_assert_eq(evict(), KHALA_NIL);
}

Test(evict, small_below_its_share_evicts_from_main) {
    for (uint32_t i = 0; i < 10; i++) {
        insert(i, hash_of(i));
        khala__policy_hit(&g_pol, i);
    }
    insert(10, hash_of(10));
    /* 0..9 move to main one by one; then small holds 1 of 11 items, under
     * KHALA_S3_SMALL_PERCENT, so main's tail (0, not hit since it moved) goes, not 10. */
    cr_assert_lt(1 * 100, 11 * KHALA_S3_SMALL_PERCENT);
    cr_assert_eq(evict(), 0);
    cr_assert_eq(g_desc[10].queue, KHALA_Q_SMALL);
    cr_assert_eq(g_w.q_count[KHALA_Q_MAIN], 9);
    /* Main's victims leave no ghost entry: only small's do. */
    cr_assert_eq(g_w.ghost_seq, 0);
}

Test(evict, remove_unlinks_from_any_position) {
    for (uint32_t i = 0; i < 5; i++)
        insert(i, hash_of(i));
    khala__policy_remove(&g_pol, 2); /* middle */
    cr_assert_eq(khala__policy_check(&g_pol, NULL, 0), 0);
    khala__policy_remove(&g_pol, 4); /* head (newest) */
    cr_assert_eq(khala__policy_check(&g_pol, NULL, 0), 0);
    khala__policy_remove(&g_pol, 0); /* tail (oldest) */
    cr_assert_eq(khala__policy_check(&g_pol, NULL, 0), 0);
    cr_assert_eq(g_desc[2].queue, KHALA_Q_NONE);
    cr_assert_eq(g_w.q_count[KHALA_Q_SMALL], 2);
    khala__policy_remove(&g_pol, 0); /* already out: nothing happens */
    cr_assert_eq(g_w.q_count[KHALA_Q_SMALL], 2);
    g_desc[0].item_off = g_desc[2].item_off = g_desc[4].item_off = 0;
    cr_assert_eq(evict(), 1);
    cr_assert_eq(evict(), 3);
    cr_assert_eq(evict(), KHALA_NIL);
}

Test(evict, check_detects_a_broken_link) {
    for (uint32_t i = 0; i < 4; i++)
        insert(i, hash_of(i));
    g_desc[2].prev = 0; /* points at the wrong neighbour */
    cr_assert_eq(khala__policy_check(&g_pol, NULL, 0), KHALA_ECORRUPT);
}

Test(evict, check_detects_a_wrong_count) {
    insert(0, hash_of(0));
    g_w.q_count[KHALA_Q_SMALL] = 2;
    cr_assert_eq(khala__policy_check(&g_pol, NULL, 0), KHALA_ECORRUPT);
}

static void expect_corrupt(const char *why) {
    char err[256] = "";
    cr_assert_eq(khala__policy_check(&g_pol, err, sizeof(err)), KHALA_ECORRUPT);
    cr_assert_neq(strstr(err, why), NULL, "message: %s", err);
}

Test(evict, check_reports_a_link_past_max_items_without_following_it) {
    for (uint32_t i = 0; i < 4; i++)
        insert(i, hash_of(i));
    g_desc[g_w.q_head[KHALA_Q_SMALL]].next = 0x40000000u;
    expect_corrupt("past max_items");
}

Test(evict, check_reports_a_head_past_max_items) {
    insert(0, hash_of(0));
    g_w.q_head[KHALA_Q_SMALL] = N;
    expect_corrupt("past max_items");
}

Test(evict, check_ends_on_a_cycle_whatever_the_count_says) {
    for (uint32_t i = 0; i < 4; i++)
        insert(i, hash_of(i));
    /* A ring whose prev links agree everywhere but at the head, and a count that would let a
     * walk bounded by it go on for ever. */
    uint32_t tail = g_w.q_tail[KHALA_Q_SMALL];
    g_desc[tail].next = g_w.q_head[KHALA_Q_SMALL];
    g_w.q_count[KHALA_Q_SMALL] = UINT64_MAX;
    expect_corrupt("eviction queue small");
    g_w.q_count[KHALA_Q_SMALL] = N;
    expect_corrupt("prev");
}

Test(evict, churn_keeps_queues_consistent_and_protects_hit_keys) {
    /* A working set of 8 keys hit often, among a stream of one-time keys: the working set
     * stays, the stream passes through small. */
    uint32_t live = 0;
    for (uint32_t i = 0; i < 8; i++) {
        insert(i, hash_of(i));
        live++;
    }
    uint64_t next_hash = 1000;
    for (int round = 0; round < 2000; round++) {
        for (uint32_t i = 0; i < 8; i++)
            if (g_desc[i].item_off)
                khala__policy_hit(&g_pol, i);
        if (live == N) {
            uint32_t v = evict();
            cr_assert_neq(v, KHALA_NIL);
            cr_assert_geq(v, 8, "hot key %u evicted in round %d", v, round);
            live--;
        }
        uint32_t slot = 8;
        while (g_desc[slot].item_off)
            slot++;
        insert(slot, hash_of(next_hash++));
        live++;
    }
    cr_assert_eq(g_w.q_count[KHALA_Q_SMALL] + g_w.q_count[KHALA_Q_MAIN], N);
}
