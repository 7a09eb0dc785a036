/*
 * The successor table of predictive warming (daemon/predict.c): what it learns and what it must
 * not (one observation, a random mix, interleaved streams), its bounds (capacity, streams,
 * memory under millions of random keys), decay, cold-key replacement, forgetting a stream, and
 * keys as arbitrary bytes (NUL bytes, KHALA_KEY_MAX bytes). khala__predict_check runs after
 * every scenario.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "khala/cache.h"
#include "khala/error.h"
#include "predict.h"
#include "testutil.h"

static khala_predict_t *g_p;

static void setup(void) {
    cr_assert_eq(khala__predict_new(1024, 4, &g_p), 0);
}

static void teardown(void) {
    if (g_p)
        cr_assert_eq(khala__predict_check(g_p), 0, "invariants hold at the end");
    khala__predict_free(g_p);
}

TestSuite(predict, .init = setup, .fini = teardown, .timeout = 60);

/* Observe NUL-terminated key on stream; the hints go to h (room for 8). */
static size_t obs(uint64_t stream, const char *key, khala_predict_hint_t *h) {
    return khala__predict_observe(g_p, stream, key, strlen(key), h, h ? 8 : 0);
}

/* 1 if hint h names NUL-terminated key. */
static int names(const khala_predict_hint_t *h, const char *key) {
    return h->klen == strlen(key) && memcmp(h->key, key, h->klen) == 0;
}

Test(predict, new_rejects_out_of_range_sizes_and_leaves_out_alone) {
    khala_predict_t *p = (khala_predict_t *)&g_p; /* any sentinel */
    cr_assert_eq(khala__predict_new(0, 4, &p), -EINVAL);
    cr_assert_eq(khala__predict_new(KHALA_PREDICT_CAPACITY_MIN - 1, 4, &p), -EINVAL);
    cr_assert_eq(khala__predict_new(KHALA_PREDICT_CAPACITY_MAX + 1, 4, &p), -EINVAL);
    cr_assert_eq(khala__predict_new(64, 0, &p), -EINVAL);
    cr_assert_eq(khala__predict_new(64, KHALA_PREDICT_PER_KEY_MAX + 1, &p), -EINVAL);
    cr_assert_eq(p, (khala_predict_t *)&g_p, "out is written only on success");
    cr_assert_eq(khala__predict_new(KHALA_PREDICT_CAPACITY_MIN, KHALA_PREDICT_PER_KEY_MAX, &p), 0);
    khala__predict_free(p);
    khala__predict_free(NULL);
}

Test(predict, learns_a_successor_after_repeated_sequences) {
    khala_predict_hint_t h[8];
    for (int round = 0; round < 2; round++) {
        cr_assert_eq(obs(1, "A", h), 0, "round %d: not yet usual", round);
        obs(1, "B", h);
        obs(1, "C", h);
    }
    cr_assert_eq(obs(1, "A", h), 1, "A -> B twice out of twice: predicted");
    cr_assert(names(&h[0], "B"));
    cr_assert_eq(h[0].count, 2);
    cr_assert_eq(h[0].confidence_pct, 100);
    cr_assert_eq(obs(1, "B", h), 1);
    cr_assert(names(&h[0], "C"));
    khala_predict_stats_t st;
    khala__predict_stats(g_p, &st);
    cr_assert_eq(st.observations, 8);
    cr_assert_eq(st.successions, 7);
    cr_assert_eq(st.predictions, 2);
    cr_assert_eq(st.tracked, 3);
    cr_assert_eq(st.streams, 1);
}

Test(predict, does_not_predict_after_one_observation) {
    khala_predict_hint_t h[8];
    obs(1, "A", h);
    obs(1, "B", h);
    cr_assert_eq(obs(1, "A", h), 0, "A -> B seen once is not usual");
    cr_assert_eq(obs(1, "B", h), 0, "B -> A seen once is not usual");
}

Test(predict, a_successor_below_half_is_not_predicted) {
    khala_predict_hint_t h[8];
    /* A is followed by B, C, D, B, C, D...: B holds a third of A's successions. */
    const char *next[] = {"B", "C", "D"};
    for (int i = 0; i < 12; i++) {
        obs(1, "A", h);
        obs(1, next[i % 3], h);
    }
    cr_assert_eq(obs(1, "A", h), 0);
}

Test(predict, two_even_successors_are_both_predicted_most_counted_first) {
    khala_predict_hint_t h[8];
    /* A -> B three times, A -> C twice: 60 % and 40 %, only B qualifies... */
    const char *next[] = {"B", "C", "B", "C", "B"};
    for (int i = 0; i < 5; i++) {
        obs(1, "A", h);
        obs(1, next[i], h);
    }
    cr_assert_eq(obs(1, "A", h), 1);
    cr_assert(names(&h[0], "B"));
    cr_assert_eq(h[0].confidence_pct, 60);
    /* ... one more A -> C makes it 50 / 50: both, B first (3 against 3, B was counted first). */
    obs(1, "C", h);
    cr_assert_eq(obs(1, "A", h), 2);
    cr_assert(names(&h[0], "B") && names(&h[1], "C"));
    cr_assert_eq(h[0].confidence_pct, 50);
    /* max bounds what is written. */
    obs(1, "B", h);
    khala_predict_hint_t one[1];
    cr_assert_eq(khala__predict_observe(g_p, 1, "A", 1, one, 1), 1);
    cr_assert(names(&one[0], "B"), "the most counted one first");
    cr_assert_eq(khala__predict_observe(g_p, 1, "Q", 1, NULL, 0), 0, "learning without asking");
}

Test(predict, a_random_mix_predicts_almost_nothing) {
    uint64_t rng = 88172645463325252ull;
    char key[16];
    size_t predicted = 0;
    const int n = 200000, keys = 500;
    for (int i = 0; i < n; i++) {
        khala_predict_hint_t h[8];
        snprintf(key, sizeof(key), "k%u", (unsigned)(tu_rand(&rng) % keys));
        predicted += obs(1, key, h);
    }
    /* A key's habits are judged over its last 16 to 31 successions: a successor taking half of
     * them by chance among 500 keys is vanishingly rare. Only a key's first successions can
     * fool it (its first two the same: 1 in 500 per key). */
    cr_assert_lt(predicted, n / 1000, "predicted %zu times in %d random reads", predicted, n);
    cr_assert_eq(khala__predict_check(g_p), 0);
}

Test(predict, interleaved_streams_do_not_create_false_successors) {
    khala_predict_hint_t h[8];
    /* Stream 1 reads A, B; stream 2 reads P, Q; interleaved A P B Q A P B Q ... */
    for (int i = 0; i < 10; i++) {
        obs(1, "A", h);
        obs(2, "P", h);
        obs(1, "B", h);
        obs(2, "Q", h);
    }
    cr_assert_eq(obs(1, "A", h), 1);
    cr_assert(names(&h[0], "B"), "A's successor is its own stream's B, not stream 2's P");
    cr_assert_eq(obs(2, "P", h), 1);
    cr_assert(names(&h[0], "Q"));
    /* Q's successor on stream 2 is P, its own stream's next read. */
    cr_assert_eq(obs(2, "Q", h), 1);
    cr_assert(names(&h[0], "P"));
    /* A third stream reading P then A three times adds P -> A three times: a minority. */
    for (int i = 0; i < 3; i++) {
        obs(3, "P", h);
        obs(3, "A", h);
    }
    cr_assert_eq(obs(2, "P", h), 1);
    cr_assert(names(&h[0], "Q"));
}

Test(predict, memory_stays_bounded_under_millions_of_random_keys) {
    khala_predict_stats_t before, st;
    khala__predict_stats(g_p, &before);
    cr_assert_gt(before.memory_bytes, 0);
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    const uint64_t n = 2000000;
    for (uint64_t i = 0; i < n; i++) {
        khala_predict_hint_t h[8];
        uint64_t key[2] = {tu_rand(&rng), i}; /* 8 to 16 bytes, distinct in the first 8 */
        /* 100,000 streams compete for KHALA_PREDICT_STREAMS ways. */
        khala__predict_observe(g_p, tu_rand(&rng) % 100000, key, 8 + i % 9, h, 8);
    }
    khala__predict_stats(g_p, &st);
    cr_assert_eq(st.capacity, 1024);
    cr_assert_eq(st.per_key, 4);
    cr_assert_eq(st.tracked, 1024, "the table is full, never over");
    cr_assert_leq(st.streams, KHALA_PREDICT_STREAMS);
    cr_assert_gt(st.streams, KHALA_PREDICT_STREAMS / 2);
    cr_assert_eq(st.observations, n);
    cr_assert_eq(st.replaced, n - 1024, "every new key past the capacity replaced one");
    cr_assert_eq(st.memory_bytes, before.memory_bytes, "memory is fixed at new");
    /* Bounded by the documented estimate: capacity * (296 + 12 * per_key) + 96 KiB + a bit. */
    cr_assert_leq(st.memory_bytes, 1024u * (296 + 12 * 4) + 96u * 1024 + 4096);
    cr_assert_eq(khala__predict_check(g_p), 0);
}

Test(predict, recurring_keys_survive_a_stream_of_cold_keys) {
    khala_predict_t *p;
    cr_assert_eq(khala__predict_new(16, 2, &p), 0);
    khala_predict_hint_t h[4];
    char cold[16];
    size_t got = 0;
    /* A B x0 A B x1 A B x2 ...: 1,000 keys seen once pass through a table of 16. */
    for (int i = 0; i < 1000; i++) {
        got = khala__predict_observe(p, 1, "A", 1, h, 4);
        khala__predict_observe(p, 1, "B", 1, h, 4);
        snprintf(cold, sizeof(cold), "x%d", i);
        khala__predict_observe(p, 1, cold, strlen(cold), h, 4);
        cr_assert_eq(khala__predict_check(p), 0);
    }
    cr_assert_eq(got, 1, "A is still tracked and still predicts B");
    cr_assert(h[0].klen == 1 && memcmp(h[0].key, "B", 1) == 0);
    khala_predict_stats_t st;
    khala__predict_stats(p, &st);
    cr_assert_eq(st.tracked, 16);
    cr_assert_eq(st.replaced, 1000 + 2 - 16);
    khala__predict_free(p);
}

Test(predict, counts_decay_so_a_changed_habit_wins) {
    khala_predict_hint_t h[8];
    for (int i = 0; i < 100; i++) {
        obs(1, "A", h);
        obs(1, "B", h);
    }
    cr_assert_eq(obs(1, "A", h), 1);
    cr_assert(names(&h[0], "B"));
    /* Now A is always followed by C; within one decay window C takes over. */
    int switched_at = -1;
    for (int i = 0; i < (int)KHALA_PREDICT_DECAY_AT * 2 && switched_at < 0; i++) {
        obs(1, "C", h);
        if (obs(1, "A", h) == 1 && names(&h[0], "C"))
            switched_at = i;
    }
    cr_assert_geq(switched_at, 0, "C never became A's usual successor");
    cr_assert_lt(switched_at, (int)KHALA_PREDICT_DECAY_AT);
    for (int i = 0; i < (int)KHALA_PREDICT_DECAY_AT; i++) {
        obs(1, "C", h);
        obs(1, "A", h);
    }
    obs(1, "C", h);
    cr_assert_eq(obs(1, "A", h), 1, "B has faded out");
    cr_assert(names(&h[0], "C"));
}

Test(predict, a_key_read_twice_in_a_row_is_not_its_own_successor) {
    khala_predict_hint_t h[8];
    for (int i = 0; i < 10; i++)
        cr_assert_eq(obs(1, "A", h), 0);
    khala_predict_stats_t st;
    khala__predict_stats(g_p, &st);
    cr_assert_eq(st.successions, 0);
}

Test(predict, forget_stream_drops_its_last_key) {
    khala_predict_hint_t h[8];
    khala_predict_stats_t st;
    /* A new stream that reuses the id of a closed one does not continue its sequence. */
    for (int i = 0; i < 5; i++) {
        obs(7, "A", h);
        khala__predict_forget_stream(g_p, 7);
        obs(7, "B", h);
        khala__predict_forget_stream(g_p, 7);
    }
    khala__predict_stats(g_p, &st);
    cr_assert_eq(st.successions, 0);
    cr_assert_eq(st.streams, 0);
    cr_assert_eq(obs(7, "A", h), 0);
    khala__predict_forget_stream(g_p, 12345); /* unknown: a no-op */
    khala__predict_stats(g_p, &st);
    cr_assert_eq(st.streams, 1);
    cr_assert_eq(khala__predict_check(g_p), 0);
}

Test(predict, keys_are_bytes_with_nul_bytes_inside) {
    khala_predict_hint_t h[8];
    static const char a[] = {'k', 0, 'a'}, b[] = {'k', 0, 'b'}, c[] = {'k', 0};
    for (int i = 0; i < 3; i++) {
        khala__predict_observe(g_p, 1, a, sizeof(a), h, 8);
        khala__predict_observe(g_p, 1, b, sizeof(b), h, 8);
        khala__predict_observe(g_p, 1, c, sizeof(c), h, 8);
    }
    khala_predict_stats_t st;
    khala__predict_stats(g_p, &st);
    cr_assert_eq(st.tracked, 3, "keys that differ after a NUL are distinct");
    cr_assert_eq(khala__predict_observe(g_p, 1, a, sizeof(a), h, 8), 1);
    cr_assert_eq(h[0].klen, sizeof(b));
    cr_assert_eq(memcmp(h[0].key, b, sizeof(b)), 0);
    cr_assert_eq(khala__predict_observe(g_p, 1, b, sizeof(b), h, 8), 1);
    cr_assert_eq(h[0].klen, sizeof(c));
    cr_assert_eq(memcmp(h[0].key, c, sizeof(c)), 0);
}

Test(predict, max_length_keys_work_and_longer_or_empty_keys_are_ignored) {
    khala_predict_hint_t h[8];
    uint8_t k1[KHALA_KEY_MAX + 1], k2[KHALA_KEY_MAX];
    memset(k1, 'x', sizeof(k1));
    memset(k2, 'x', sizeof(k2));
    k2[KHALA_KEY_MAX - 1] = 'y'; /* differs from k1 in its last byte only */
    for (int i = 0; i < 3; i++) {
        khala__predict_observe(g_p, 1, k1, KHALA_KEY_MAX, h, 8);
        khala__predict_observe(g_p, 1, k2, KHALA_KEY_MAX, h, 8);
    }
    cr_assert_eq(khala__predict_observe(g_p, 1, k1, KHALA_KEY_MAX, h, 8), 1);
    cr_assert_eq(h[0].klen, KHALA_KEY_MAX);
    cr_assert_eq(memcmp(h[0].key, k2, KHALA_KEY_MAX), 0);
    khala_predict_stats_t before, st;
    khala__predict_stats(g_p, &before);
    cr_assert_eq(khala__predict_observe(g_p, 1, k1, KHALA_KEY_MAX + 1, h, 8), 0);
    cr_assert_eq(khala__predict_observe(g_p, 1, k1, 0, h, 8), 0);
    khala__predict_stats(g_p, &st);
    cr_assert_eq(st.observations, before.observations, "invalid keys are not observed");
    cr_assert_eq(st.tracked, 2);
    /* ... and did not break the stream's sequence. */
    cr_assert_eq(khala__predict_observe(g_p, 1, k2, KHALA_KEY_MAX, h, 8), 1);
    cr_assert_eq(memcmp(h[0].key, k1, KHALA_KEY_MAX), 0);
}

Test(predict, hints_are_views_that_match_the_stored_keys_across_replacement) {
    khala_predict_t *p;
    cr_assert_eq(khala__predict_new(16, 2, &p), 0);
    khala_predict_hint_t h[2];
    char a[16], b[16];
    size_t predicted = 0;
    /* Pairs a_i -> b_i, six at a time, a new six every ten rounds, through a table of 16: every
     * hint ever returned names the b of its own a, even as entries are replaced and reused. */
    for (int round = 0; round < 50; round++) {
        for (int i = 0; i < 6; i++) {
            snprintf(a, sizeof(a), "a%d", (round / 10) * 6 + i);
            snprintf(b, sizeof(b), "b%d", (round / 10) * 6 + i);
            size_t n = khala__predict_observe(p, 1, a, strlen(a), h, 2);
            predicted += n;
            for (size_t j = 0; j < n; j++)
                cr_assert(h[j].klen == strlen(b) && memcmp(h[j].key, b, h[j].klen) == 0,
                          "%s predicted %.*s", a, (int)h[j].klen, (const char *)h[j].key);
            khala__predict_observe(p, 1, b, strlen(b), h, 2);
        }
        cr_assert_eq(khala__predict_check(p), 0);
    }
    cr_assert_gt(predicted, 5 * 6 * 5, "each phase's pairs are learnt");
    khala_predict_stats_t st;
    khala__predict_stats(p, &st);
    cr_assert_gt(st.replaced, 0);
    khala__predict_free(p);
}
