/*
 * The disk tier's vector index (daemon/tier_disk_vectors.c) through the tier's `similar`
 * operation on a real store: near duplicates hit, far ones miss, the threshold and k hold, the
 * order is by similarity, and deleted, invalidated, expired and evicted items never come back,
 * including after a reopen; wrong-dimension items and non-vector values are ignored; bad queries
 * get KHALA_EINVAL with a message. Each test gets a fresh directory under /tmp.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "khala/error.h"
#include "sys.h"
#include "testutil.h"
#include "tier_disk.h"
#include "tier_disk_store.h"
#include "tier_disk_vectors.h"

#define DIM 16

static char g_dir[64];
static char g_store[96];
static char g_err[256];

static void setup(void) {
    strcpy(g_dir, "/tmp/khala-vec-XXXXXX");
    cr_assert_not_null(mkdtemp(g_dir));
    snprintf(g_store, sizeof(g_store), "%s/store", g_dir);
}

static void teardown(void) {
    harness_rmtree(g_dir);
}

TestSuite(tier_disk_vectors, .init = setup, .fini = teardown, .timeout = 120);

static khala_tier_t *open_store(uint64_t max_items) {
    khala_tier_disk_opts_t o = {.path = g_store,
                                .level = KHALA_LEVEL_L3,
                                .max_items = max_items,
                                .max_bytes = 1u << 30,
                                .persistent = true};
    khala_tier_t *t = NULL;
    int rc = khala__tier_disk_open(&o, &t, g_err, sizeof(g_err));
    cr_assert_eq(rc, 0, "open: %d %s", rc, g_err);
    return t;
}

/* A unit-ish vector along axis a, tilted towards axis b by eps. */
static void vec(float *v, uint32_t dim, int a, int b, float eps) {
    for (uint32_t i = 0; i < dim; i++)
        v[i] = 0;
    v[a] = 1;
    if (b >= 0)
        v[b] += eps;
}

static int put_vec(khala_tier_t *t, const char *key, const float *v, uint32_t dim,
                   khala_type_t type, uint64_t version, int64_t ttl_ms) {
    /* Little-endian float32 is the host's layout on every platform we build for (x86-64,
     * aarch64); the index decodes it with le32toh either way. */
    khala_tier_value_t val = {(void *)v, dim * sizeof(float), version, ttl_ms, type};
    return t->ops->put(t, key, strlen(key), &val);
}

/* Run similar; the keys found, space-separated, into buf; returns the count. */
static uint32_t similar(khala_tier_t *t, const float *q, uint32_t dim, float min_sim, uint32_t k,
                        char *buf, size_t cap, float *sims) {
    khala_tier_match_t m[KHALA_DISK_VEC_K_MAX];
    uint32_t n = 99;
    int rc = t->ops->similar(t, q, dim, min_sim, k, m, &n);
    cr_assert_eq(rc, 0, "similar: %d %s", rc, t->err);
    cr_assert_leq(n, k);
    buf[0] = '\0';
    for (uint32_t i = 0; i < n; i++) {
        size_t l = strlen(buf);
        snprintf(buf + l, cap - l, "%s%.*s", i ? " " : "", (int)m[i].klen, (char *)m[i].key);
        cr_assert_eq(m[i].val.type, KHALA_TYPE_EMBEDDING);
        cr_assert_eq(m[i].val.len, dim * sizeof(float));
        if (sims)
            sims[i] = m[i].similarity;
        if (i)
            cr_assert_geq(m[i - 1].similarity, m[i].similarity, "ordered by similarity");
        khala__tier_match_free(&m[i]);
    }
    return n;
}

Test(tier_disk_vectors, near_duplicates_hit_far_ones_miss_and_the_threshold_holds) {
    khala_tier_t *t = open_store(1000);
    float v[DIM], q[DIM];
    vec(v, DIM, 0, 1, 0.05f); /* cos to axis 0: 0.9988 */
    cr_assert_eq(put_vec(t, "near", v, DIM, KHALA_TYPE_EMBEDDING, 1, 0), 0, "%s", t->err);
    vec(v, DIM, 0, 1, 1.0f); /* cos 0.7071 */
    cr_assert_eq(put_vec(t, "mid", v, DIM, KHALA_TYPE_EMBEDDING, 1, 0), 0);
    vec(v, DIM, 5, -1, 0); /* orthogonal */
    cr_assert_eq(put_vec(t, "far", v, DIM, KHALA_TYPE_EMBEDDING, 1, 0), 0);
    for (int i = 0; i < DIM; i++)
        v[i] = i == 0 ? -2.0f : 0; /* opposite */
    cr_assert_eq(put_vec(t, "opposite", v, DIM, KHALA_TYPE_EMBEDDING, 1, 0), 0);

    char buf[256];
    float sims[8];
    vec(q, DIM, 0, -1, 0);
    cr_assert_eq(similar(t, q, DIM, 0.9f, 1, buf, sizeof(buf), sims), 1);
    cr_assert_str_eq(buf, "near");
    cr_assert_float_eq(sims[0], 1.0f / sqrtf(1.0f + 0.05f * 0.05f), 1e-5);
    /* The threshold holds on both sides of 0.7071. */
    cr_assert_eq(similar(t, q, DIM, 0.70f, 10, buf, sizeof(buf), sims), 2);
    cr_assert_str_eq(buf, "near mid");
    cr_assert_eq(similar(t, q, DIM, 0.71f, 10, buf, sizeof(buf), NULL), 1);
    /* A query scaled by any positive factor is the same direction. */
    for (int i = 0; i < DIM; i++)
        q[i] *= 1000.0f;
    cr_assert_eq(similar(t, q, DIM, 0.70f, 10, buf, sizeof(buf), NULL), 2);
    /* -1 admits everything, the opposite last at -1. */
    cr_assert_eq(similar(t, q, DIM, -1.0f, 10, buf, sizeof(buf), sims), 4);
    cr_assert_str_eq(buf, "near mid far opposite");
    cr_assert_float_eq(sims[3], -1.0f, 1e-6);
    /* A far query finds nothing at 0.9. */
    vec(q, DIM, 9, -1, 0);
    cr_assert_eq(similar(t, q, DIM, 0.9f, 10, buf, sizeof(buf), NULL), 0);
    t->ops->close(t);
}

Test(tier_disk_vectors, k_bounds_the_answers_most_similar_first) {
    khala_tier_t *t = open_store(1000);
    float v[DIM], q[DIM];
    char key[16], buf[512];
    /* e<i> leans away from axis 0 by i / 10: similarity falls with i. Written shuffled. */
    int order[] = {7, 2, 9, 0, 5, 3, 8, 1, 6, 4};
    for (int j = 0; j < 10; j++) {
        vec(v, DIM, 0, 1, (float)order[j] / 10.0f);
        snprintf(key, sizeof(key), "e%d", order[j]);
        cr_assert_eq(put_vec(t, key, v, DIM, KHALA_TYPE_EMBEDDING, 1, 0), 0);
    }
    vec(q, DIM, 0, -1, 0);
    cr_assert_eq(similar(t, q, DIM, 0.0f, 3, buf, sizeof(buf), NULL), 3);
    cr_assert_str_eq(buf, "e0 e1 e2");
    cr_assert_eq(similar(t, q, DIM, 0.0f, 100, buf, sizeof(buf), NULL), 10);
    cr_assert_str_eq(buf, "e0 e1 e2 e3 e4 e5 e6 e7 e8 e9");
    t->ops->close(t);
}

Test(tier_disk_vectors, removed_items_never_come_back_even_after_reopen) {
    khala_tier_t *t = open_store(1000);
    float v[DIM], q[DIM];
    char buf[256];
    vec(v, DIM, 0, -1, 0);
    cr_assert_eq(put_vec(t, "deleted", v, DIM, KHALA_TYPE_EMBEDDING, 1, 0), 0);
    cr_assert_eq(put_vec(t, "inv/a", v, DIM, KHALA_TYPE_EMBEDDING, 1, 0), 0);
    cr_assert_eq(put_vec(t, "expiring", v, DIM, KHALA_TYPE_EMBEDDING, 1, 1), 0);
    cr_assert_eq(put_vec(t, "kept", v, DIM, KHALA_TYPE_EMBEDDING, 1, 0), 0);
    /* Overwritten with something that is not an embedding: it leaves the index. */
    cr_assert_eq(put_vec(t, "retyped", v, DIM, KHALA_TYPE_EMBEDDING, 1, 0), 0);
    cr_assert_eq(put_vec(t, "retyped", v, DIM, KHALA_TYPE_SEARCH_RESULT, 2, 0), 0);
    /* Overwritten with a far vector: the old one is gone. */
    cr_assert_eq(put_vec(t, "moved", v, DIM, KHALA_TYPE_EMBEDDING, 1, 0), 0);
    float w[DIM];
    vec(w, DIM, 3, -1, 0);
    cr_assert_eq(put_vec(t, "moved", w, DIM, KHALA_TYPE_EMBEDDING, 2, 0), 0);

    cr_assert_eq(t->ops->del(t, "deleted", 7), 0);
    uint64_t removed = 0;
    cr_assert_eq(t->ops->invalidate(t, "inv/", 4, -1, &removed), 0);
    cr_assert_eq(removed, 1);
    usleep(5000); /* "expiring" had 1 ms */
    vec(q, DIM, 0, -1, 0);
    cr_assert_eq(similar(t, q, DIM, 0.9f, 10, buf, sizeof(buf), NULL), 1);
    cr_assert_str_eq(buf, "kept");
    t->ops->tick(t, khala__sys_now_ms());
    t->ops->close(t);

    t = open_store(1000);
    cr_assert_eq(similar(t, q, DIM, 0.9f, 10, buf, sizeof(buf), NULL), 1);
    cr_assert_str_eq(buf, "kept");
    cr_assert_eq(similar(t, w, DIM, 0.9f, 10, buf, sizeof(buf), NULL), 1);
    cr_assert_str_eq(buf, "moved");
    /* A flush of everything empties the index too. */
    cr_assert_eq(t->ops->invalidate(t, NULL, 0, -1, NULL), 0);
    cr_assert_eq(similar(t, q, DIM, -1.0f, 10, buf, sizeof(buf), NULL), 0);
    t->ops->close(t);
}

Test(tier_disk_vectors, evicted_items_never_come_back) {
    khala_tier_t *t = open_store(8); /* room for 8 items */
    float v[DIM], q[DIM];
    char key[16], buf[2048];
    vec(v, DIM, 0, -1, 0);
    for (int i = 0; i < 40; i++) {
        snprintf(key, sizeof(key), "k%02d", i);
        cr_assert_eq(put_vec(t, key, v, DIM, KHALA_TYPE_EMBEDDING, 1, 0), 0, "%s", t->err);
    }
    khala_tier_stats_t st;
    t->ops->stats(t, &st);
    cr_assert_eq(st.items, 8);
    cr_assert_geq(st.evictions, 32);
    vec(q, DIM, 0, -1, 0);
    uint32_t n = similar(t, q, DIM, 0.9f, 100, buf, sizeof(buf), NULL);
    cr_assert_eq(n, 8, "only the 8 items held answer: %s", buf);
    /* Each answer is held. */
    for (char *s = strtok(buf, " "); s; s = strtok(NULL, " ")) {
        khala_tier_value_t val = {0};
        cr_assert_eq(t->ops->get(t, s, strlen(s), &val), 0, "%s answered but is gone", s);
        khala__tier_value_free(&val);
    }
    t->ops->close(t);
}

Test(tier_disk_vectors, wrong_dimensions_and_non_vectors_are_ignored) {
    khala_tier_t *t = open_store(1000);
    float v[DIM * 2], q[DIM];
    char buf[256];
    vec(v, DIM * 2, 0, -1, 0);
    cr_assert_eq(put_vec(t, "dim32", v, DIM * 2, KHALA_TYPE_EMBEDDING, 1, 0), 0);
    cr_assert_eq(put_vec(t, "dim16", v, DIM, KHALA_TYPE_EMBEDDING, 1, 0), 0);
    /* Same bytes, another type. */
    cr_assert_eq(put_vec(t, "entity", v, DIM, KHALA_TYPE_MEMORY_ENTITY, 1, 0), 0);
    /* Not a multiple of 4 bytes; empty; zero; NaN. */
    khala_tier_value_t odd = {"abcdefg", 7, 1, 0, KHALA_TYPE_EMBEDDING};
    cr_assert_eq(t->ops->put(t, "odd", 3, &odd), 0);
    khala_tier_value_t empty = {NULL, 0, 1, 0, KHALA_TYPE_EMBEDDING};
    cr_assert_eq(t->ops->put(t, "empty", 5, &empty), 0);
    float z[DIM] = {0};
    cr_assert_eq(put_vec(t, "zero", z, DIM, KHALA_TYPE_EMBEDDING, 1, 0), 0);
    float nan[DIM];
    vec(nan, DIM, 0, 1, NAN);
    cr_assert_eq(put_vec(t, "nan", nan, DIM, KHALA_TYPE_EMBEDDING, 1, 0), 0);
    vec(q, DIM, 0, -1, 0);
    cr_assert_eq(similar(t, q, DIM, -1.0f, 100, buf, sizeof(buf), NULL), 1);
    cr_assert_str_eq(buf, "dim16");
    cr_assert_eq(similar(t, v, DIM * 2, -1.0f, 100, buf, sizeof(buf), NULL), 1);
    cr_assert_str_eq(buf, "dim32");
    cr_assert_eq(similar(t, v, 7, -1.0f, 100, buf, sizeof(buf), NULL), 0);
    t->ops->close(t);
    /* The same after the index is rebuilt from the records. */
    t = open_store(1000);
    cr_assert_eq(similar(t, q, DIM, -1.0f, 100, buf, sizeof(buf), NULL), 1);
    cr_assert_str_eq(buf, "dim16");
    t->ops->close(t);
}

Test(tier_disk_vectors, bad_queries_are_einval_with_a_message) {
    khala_tier_t *t = open_store(1000);
    float q[DIM], z[DIM] = {0};
    khala_tier_match_t m[4];
    uint32_t n = 77;
    vec(q, DIM, 0, -1, 0);
    cr_assert_eq(t->ops->similar(t, q, 0, 0.5f, 1, m, &n), KHALA_EINVAL);
    cr_assert(strstr(t->err, "0 components"), "%s", t->err);
    cr_assert_eq(t->ops->similar(t, z, DIM, 0.5f, 1, m, &n), KHALA_EINVAL);
    cr_assert(strstr(t->err, "zero vector"), "%s", t->err);
    q[3] = NAN;
    cr_assert_eq(t->ops->similar(t, q, DIM, 0.5f, 1, m, &n), KHALA_EINVAL);
    cr_assert(strstr(t->err, "component 3 of the query is NaN"), "%s", t->err);
    q[3] = INFINITY;
    cr_assert_eq(t->ops->similar(t, q, DIM, 0.5f, 1, m, &n), KHALA_EINVAL);
    cr_assert(strstr(t->err, "infinite"), "%s", t->err);
    vec(q, DIM, 0, -1, 0);
    cr_assert_eq(t->ops->similar(t, q, DIM, 0.5f, 0, m, &n), KHALA_EINVAL);
    cr_assert(strstr(t->err, "k is 0"), "%s", t->err);
    cr_assert_eq(t->ops->similar(t, q, DIM, 0.5f, KHALA_DISK_VEC_K_MAX + 1, m, &n), KHALA_EINVAL);
    cr_assert_eq(t->ops->similar(t, q, DIM, 1.5f, 1, m, &n), KHALA_EINVAL);
    cr_assert(strstr(t->err, "outside -1..1"), "%s", t->err);
    cr_assert_eq(t->ops->similar(t, q, DIM, NAN, 1, m, &n), KHALA_EINVAL);
    cr_assert_eq(n, 77, "nothing written on failure");
    t->ops->close(t);
}

/* Many rows, the key table growing and rows moving on removal: the index stays exact. */
Test(tier_disk_vectors, the_index_stays_exact_through_many_changes) {
    khala_disk_vectors_t vx = {0};
    khala__disk_vectors_init(&vx, 12345);
    vx.built = 1; /* as the first look-up leaves it */
    float v[40];
    char key[16];
    for (int i = 0; i < 2000; i++) {
        for (int j = 0; j < 40; j++)
            v[j] = (float)((i * 7919 + j * 104729) % 1000) / 1000.0f - 0.5f;
        snprintf(key, sizeof(key), "r%d", i);
        cr_assert_eq(
            khala__disk_vectors_set(&vx, key, strlen(key), KHALA_TYPE_EMBEDDING, v, sizeof(v), 0),
            0);
    }
    for (int i = 0; i < 2000; i += 2) {
        snprintf(key, sizeof(key), "r%d", i);
        khala__disk_vectors_remove(&vx, key, strlen(key));
    }
    cr_assert_eq(vx.n, 1000);
    /* Every odd row is its own best match at similarity 1; no even row answers. */
    for (int i = 1; i < 2000; i += 2) {
        for (int j = 0; j < 40; j++)
            v[j] = (float)((i * 7919 + j * 104729) % 1000) / 1000.0f - 0.5f;
        khala_disk_vhit_t h[2];
        uint32_t n = 0;
        cr_assert_eq(khala__disk_vectors_search(&vx, v, 40, 0.9999f, 2, 0, h, &n), 0);
        snprintf(key, sizeof(key), "r%d", i);
        cr_assert_geq(n, 1);
        int found = 0;
        for (uint32_t x = 0; x < n; x++) {
            cr_assert(h[x].klen >= 2 && (h[x].key[h[x].klen - 1] - '0') % 2 == 1);
            found |= h[x].klen == strlen(key) && memcmp(h[x].key, key, h[x].klen) == 0;
        }
        cr_assert(found, "%s is found", key);
    }
    khala__disk_vectors_free(&vx);
}

/* The index is built at the first look-up, from the records; before it, writes cost nothing. */
Test(tier_disk_vectors, the_index_is_built_at_the_first_look_up) {
    khala_tier_t *t = open_store(1000);
    khala_disk_store_t *d = t->impl;
    float v[DIM];
    char buf[64];
    vec(v, DIM, 1, -1, 0);
    cr_assert_eq(put_vec(t, "a", v, DIM, KHALA_TYPE_EMBEDDING, 1, 0), 0);
    cr_assert_eq(put_vec(t, "b", v, DIM, KHALA_TYPE_EMBEDDING, 1, 0), 0);
    cr_assert_eq(t->ops->del(t, "b", 1), 0);
    cr_assert_eq(d->vec.built, 0);
    cr_assert_eq(d->vec.n, 0, "no vector is held before a look-up");
    cr_assert_eq(similar(t, v, DIM, 0.9f, 10, buf, sizeof(buf), NULL), 1);
    cr_assert_str_eq(buf, "a");
    cr_assert_eq(d->vec.built, 1);
    cr_assert_eq(d->vec.n, 1);
    /* From then on, writes keep it. */
    cr_assert_eq(put_vec(t, "c", v, DIM, KHALA_TYPE_EMBEDDING, 1, 0), 0);
    cr_assert_eq(d->vec.n, 2);
    cr_assert_eq(similar(t, v, DIM, 0.9f, 10, buf, sizeof(buf), NULL), 2);
    cr_assert_str_eq(buf, "a c");
    t->ops->close(t);
}
