/*
 * Semantic look-ups end to end (issue 12): a real khalad (the disk store below L1, as a fresh
 * install has), the worker library's khala_cache_similar, the raw protocol for what the library
 * never sends, and the real khalactl binary. Near duplicates hit, far ones miss, the configured
 * threshold and an explicit one hold, k orders the answers, deleted, invalidated and retyped
 * items never come back, write-behind puts are found once drained, and bad queries get clear
 * errors at each boundary.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "khala/cache.h"
#include "khala/error.h"
#include "khalad_util.h"

#ifndef KHALACTL_PATH
#error "KHALACTL_PATH must name the khalactl binary"
#endif

#define DIM 32

static khala_cache_t *g_c;
static khala_level_t g_level; /* the level that answered the last find() with matches */

static void open_cache(void) {
    khala_cache_options_t o;
    khala_cache_options_init(&o);
    o.socket_path = khalad_sock;
    cr_assert_eq(khala_cache_open(khalad_name, &o, &g_c), 0, "%s", khala_cache_errmsg(NULL));
}

static void setup(void) {
    khalad_env_init("ks");
    memset(khalad_extra_sets, 0, sizeof(khalad_extra_sets));
    khalad_start();
    open_cache();
}

/* Restart khalad with the overrides in khalad_extra_sets. */
static void restart(void) {
    khala_cache_close(g_c);
    g_c = NULL;
    khalad_kill(SIGTERM);
    khalad_start();
    open_cache();
}

static void teardown(void) {
    if (g_c)
        khala_cache_close(g_c);
    khalad_env_fini();
}

TestSuite(similar, .init = setup, .fini = teardown, .timeout = 120);

/* Axis a, tilted towards axis b by eps (b < 0: none). */
static void vec(float *v, int a, int b, float eps) {
    for (int i = 0; i < DIM; i++)
        v[i] = 0;
    v[a] = 1;
    if (b >= 0)
        v[b] += eps;
}

/* Put an embedding written through (so that the level holds it when the put returns). */
static void put_vec(const char *key, const float *v, khala_mode_t mode) {
    khala_put_options_t po;
    khala_put_options_init(&po);
    po.type = KHALA_TYPE_EMBEDDING;
    po.mode = mode;
    cr_assert_eq(khala_cache_put(g_c, key, strlen(key), v, DIM * sizeof(float), &po, NULL), 0,
                 "put %s: %s", key, khala_cache_errmsg(g_c));
}

/* similar through the library: the keys, space-separated, in buf; returns the count. */
static size_t find(const float *q, uint32_t k, float min, char *buf, size_t cap, float *sims) {
    khala_similar_options_t o;
    khala_similar_options_init(&o);
    o.k = k;
    o.min_similarity = min;
    khala_match_t *m = NULL;
    size_t n = 99;
    int rc = khala_cache_similar(g_c, q, DIM, &o, &m, &n);
    cr_assert_eq(rc, 0, "similar: %s: %s", khala_strerror(rc), khala_cache_errmsg(g_c));
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(buf);
        snprintf(buf + l, cap - l, "%s%.*s", i ? " " : "", (int)m[i].klen, (const char *)m[i].key);
        cr_assert_eq(m[i].len, DIM * sizeof(float));
        cr_assert_eq(m[i].meta.type, KHALA_TYPE_EMBEDDING);
        cr_assert(m[i].meta.level == KHALA_LEVEL_L2 || m[i].meta.level == KHALA_LEVEL_L3);
        cr_assert_gt(m[i].meta.version, 0);
        g_level = m[i].meta.level;
        if (sims)
            sims[i] = m[i].similarity;
        if (i)
            cr_assert_geq(m[i - 1].similarity, m[i].similarity);
    }
    khala_matches_free(m);
    return n;
}

Test(similar, near_duplicates_hit_far_ones_miss_and_both_thresholds_hold) {
    float v[DIM], q[DIM], sims[8];
    char buf[512];
    vec(v, 0, 1, 0.05f); /* 0.9988 to axis 0 */
    put_vec("emb:near", v, KHALA_MODE_THROUGH);
    vec(v, 0, 1, 0.75f); /* 0.8 */
    put_vec("emb:mid", v, KHALA_MODE_THROUGH);
    vec(v, 7, -1, 0); /* orthogonal */
    put_vec("emb:far", v, KHALA_MODE_THROUGH);
    vec(q, 0, -1, 0);
    /* khalad's threshold (similarity_threshold = 0.9 by default): near only. */
    cr_assert_eq(find(q, 10, NAN, buf, sizeof(buf), sims), 1);
    cr_assert_str_eq(buf, "emb:near");
    cr_assert_float_eq(sims[0], 1.0f / sqrtf(1.0f + 0.05f * 0.05f), 1e-5);
    /* An explicit threshold, both sides of 0.8. */
    cr_assert_eq(find(q, 10, 0.79f, buf, sizeof(buf), NULL), 2);
    cr_assert_str_eq(buf, "emb:near emb:mid");
    cr_assert_eq(find(q, 10, 0.81f, buf, sizeof(buf), NULL), 1);
    /* k bounds the answers, most similar first. */
    cr_assert_eq(find(q, 1, -1.0f, buf, sizeof(buf), NULL), 1);
    cr_assert_str_eq(buf, "emb:near");
    cr_assert_eq(find(q, 3, -1.0f, buf, sizeof(buf), NULL), 3);
    cr_assert_str_eq(buf, "emb:near emb:mid emb:far");
    /* A far query: no match, not an error. */
    vec(q, 20, -1, 0);
    cr_assert_eq(find(q, 10, 0.5f, buf, sizeof(buf), NULL), 0);
    /* Another dimension: never a match. */
    float q16[16] = {1};
    khala_match_t *m = NULL;
    size_t n = 9;
    cr_assert_eq(khala_cache_similar(g_c, q16, 16, NULL, &m, &n), 0);
    cr_assert_eq(n, 0);
    cr_assert_null(m);
}

/* The slowest level the embedding type lives on answers (L3 by default), and only it: an empty
 * answer there is the answer. With embeddings placed on L1 and L2 only, L2 answers. */
Test(similar, the_slowest_level_holding_embeddings_answers) {
    float v[DIM], q[DIM];
    char buf[256];
    vec(v, 2, -1, 0);
    put_vec("on:l3", v, KHALA_MODE_THROUGH);
    vec(q, 2, -1, 0);
    cr_assert_eq(find(q, 5, 0.9f, buf, sizeof(buf), NULL), 1);
    cr_assert_eq(g_level, KHALA_LEVEL_L3, "level %d", (int)g_level);
    /* Embeddings on L1 and L2 only from now on: L3 is not asked. */
    khalad_extra_sets[0] = "type.embedding.levels=l1,l2";
    restart();
    vec(v, 6, -1, 0);
    put_vec("on:l2", v, KHALA_MODE_THROUGH);
    vec(q, 6, -1, 0);
    cr_assert_eq(find(q, 5, 0.9f, buf, sizeof(buf), NULL), 1);
    cr_assert_str_eq(buf, "on:l2");
    cr_assert_eq(g_level, KHALA_LEVEL_L2, "level %d", (int)g_level);
    /* L2 also holds "on:l3" (written when embeddings lived on every level). */
    vec(q, 2, -1, 0);
    cr_assert_eq(find(q, 5, 0.9f, buf, sizeof(buf), NULL), 1);
    cr_assert_eq(g_level, KHALA_LEVEL_L2);
}

/* With Redis as L2 (no look-ups by vector there), the disk L3 answers; with embeddings kept off
 * L3, no level can: -ENOTSUP, naming the levels. Needs the shared test Redis
 * (scripts/test-servers.sh). */
Test(similar, with_redis_as_l2_the_disk_l3_answers_and_without_it_none_can) {
    const char *url = getenv("KHALA_TEST_REDIS_URL");
    cr_assert(url && *url, "KHALA_TEST_REDIS_URL is not set: start the test servers with eval "
                           "\"$(scripts/test-servers.sh start)\" (scripts/test.sh does it)");
    char ns[64];
    snprintf(ns, sizeof(ns), "sim%d", (int)getpid());
    khalad_use_redis(url, ns);
    restart();
    float v[DIM], q[DIM];
    char buf[256];
    vec(v, 11, -1, 0);
    put_vec("r:1", v, KHALA_MODE_THROUGH);
    vec(q, 11, -1, 0);
    cr_assert_eq(find(q, 5, 0.9f, buf, sizeof(buf), NULL), 1);
    cr_assert_eq(g_level, KHALA_LEVEL_L3);
    khalad_extra_sets[3] = "type.embedding.levels=l1,l2";
    khalad_extra_sets[4] = NULL;
    restart();
    khala_match_t *m = NULL;
    size_t n = 0;
    cr_assert_eq(khala_cache_similar(g_c, q, DIM, NULL, &m, &n), -ENOTSUP);
    cr_assert(strstr(khala_cache_errmsg(g_c), "L2 redis"), "%s", khala_cache_errmsg(g_c));
    /* Leave the shared Redis as it was. */
    cr_assert_eq(khala_cache_delete(g_c, "r:1", 3), 0);
}

Test(similar, deleted_invalidated_and_retyped_items_never_come_back) {
    float v[DIM], q[DIM];
    char buf[512];
    vec(v, 3, -1, 0);
    put_vec("gone:del", v, KHALA_MODE_THROUGH);
    put_vec("gone:inv/1", v, KHALA_MODE_THROUGH);
    put_vec("gone:retyped", v, KHALA_MODE_THROUGH);
    put_vec("kept", v, KHALA_MODE_THROUGH);
    vec(q, 3, -1, 0);
    cr_assert_eq(find(q, 10, 0.9f, buf, sizeof(buf), NULL), 4);
    cr_assert_eq(khala_cache_delete(g_c, "gone:del", 8), 0, "%s", khala_cache_errmsg(g_c));
    cr_assert_eq(khala_cache_invalidate_prefix(g_c, "gone:inv/", 9, NULL), 0);
    khala_put_options_t po;
    khala_put_options_init(&po);
    po.type = KHALA_TYPE_MEMORY_ENTITY;
    po.mode = KHALA_MODE_THROUGH;
    cr_assert_eq(khala_cache_put(g_c, "gone:retyped", 12, v, sizeof(v), &po, NULL), 0);
    cr_assert_eq(find(q, 10, 0.9f, buf, sizeof(buf), NULL), 1);
    cr_assert_str_eq(buf, "kept");
    /* After a restart of khalad, the store's index is rebuilt from its records: the same. */
    restart();
    cr_assert_eq(find(q, 10, 0.9f, buf, sizeof(buf), NULL), 1);
    cr_assert_str_eq(buf, "kept");
}

/* Embeddings are written behind by default: a put reaches the level when the flusher drains it,
 * and is found from then on; a delete is honoured at once, even while it is still queued. */
Test(similar, write_behind_puts_are_found_once_drained_and_queued_deletes_hide_at_once) {
    float v[DIM], q[DIM];
    char buf[512];
    vec(v, 9, -1, 0);
    vec(q, 9, -1, 0);
    put_vec("behind", v, KHALA_MODE_DEFAULT);
    size_t n = 0;
    for (int i = 0; i < 1000 && n == 0; i++) { /* bounded: 10 s */
        n = find(q, 10, 0.9f, buf, sizeof(buf), NULL);
        if (n == 0)
            sleep_ms(10);
    }
    cr_assert_eq(n, 1, "the write-behind put was never found");
    cr_assert_str_eq(buf, "behind");
    cr_assert_eq(khala_cache_delete(g_c, "behind", 6), 0);
    cr_assert_eq(find(q, 10, 0.9f, buf, sizeof(buf), NULL), 0);
}

Test(similar, bad_queries_are_refused_with_clear_messages) {
    float q[DIM], z[DIM] = {0};
    khala_match_t *m = (khala_match_t *)1;
    size_t n = 7;
    khala_similar_options_t o;
    khala_similar_options_init(&o);
    vec(q, 0, -1, 0);
    cr_assert_eq(khala_cache_similar(g_c, q, 0, NULL, &m, &n), KHALA_EINVAL);
    cr_assert(strstr(khala_cache_errmsg(g_c), "0 components"), "%s", khala_cache_errmsg(g_c));
    cr_assert_eq(khala_cache_similar(g_c, z, DIM, NULL, &m, &n), KHALA_EINVAL);
    cr_assert(strstr(khala_cache_errmsg(g_c), "zero vector"));
    q[5] = NAN;
    cr_assert_eq(khala_cache_similar(g_c, q, DIM, NULL, &m, &n), KHALA_EINVAL);
    cr_assert(strstr(khala_cache_errmsg(g_c), "component 5 of the query vector is NaN"), "%s",
              khala_cache_errmsg(g_c));
    q[5] = 0;
    o.k = 0;
    cr_assert_eq(khala_cache_similar(g_c, q, DIM, &o, &m, &n), KHALA_EINVAL);
    o.k = KHALA_SIMILAR_K_MAX + 1;
    cr_assert_eq(khala_cache_similar(g_c, q, DIM, &o, &m, &n), KHALA_EINVAL);
    o.k = 1;
    o.min_similarity = 1.5f;
    cr_assert_eq(khala_cache_similar(g_c, q, DIM, &o, &m, &n), KHALA_EINVAL);
    cr_assert(strstr(khala_cache_errmsg(g_c), "-1..1"), "%s", khala_cache_errmsg(g_c));
    cr_assert_eq(n, 7, "nothing written on failure");
    cr_assert_eq(m, (khala_match_t *)1);

    /* What the library never sends, khalad refuses too (the connection stays open). */
    khala_chan_t *ch = khalad_chan();
    khala_msg_t req = khalad_req(KHALA_OP_SIMILAR, NULL), rep;
    uint8_t odd[7] = {0};
    req.value = (khala_bytes_t){odd, sizeof(odd)};
    req.has |= KHALA_F_V;
    cr_assert_eq(khalad_call(ch, &req, &rep, 5000), KHALA_EINVAL);
    cr_assert(rep.err.len && memmem(rep.err.ptr, rep.err.len, "not a whole number", 18));
    khala__proto_msg_free(&rep);
    float inf[4] = {1, INFINITY, 0, 0};
    req.value = (khala_bytes_t){(const uint8_t *)inf, sizeof(inf)};
    cr_assert_eq(khalad_call(ch, &req, &rep, 5000), KHALA_EINVAL);
    cr_assert(memmem(rep.err.ptr, rep.err.len, "component 1 of the query vector is infinite", 43));
    khala__proto_msg_free(&rep);
    req.value = (khala_bytes_t){NULL, 0};
    cr_assert_eq(khalad_call(ch, &req, &rep, 5000), KHALA_EINVAL);
    cr_assert(memmem(rep.err.ptr, rep.err.len, "empty", 5));
    khala__proto_msg_free(&rep);
    req.value = (khala_bytes_t){(const uint8_t *)q, sizeof(q)};
    req.count = 101;
    req.has |= KHALA_F_COUNT;
    cr_assert_eq(khalad_call(ch, &req, &rep, 5000), KHALA_EINVAL);
    cr_assert(memmem(rep.err.ptr, rep.err.len, "count is 101", 12));
    khala__proto_msg_free(&rep);
    req.count = 2;
    cr_assert_eq(khalad_call(ch, &req, &rep, 5000), 0, "the connection still serves");
    cr_assert(rep.has & KHALA_F_MATCHES);
    khala__proto_msg_free(&rep);
    khala__chan_close(ch);
}

/* khalactl ----------------------------------------------------------------------------------- */

static char g_out[1 << 16], g_err[1 << 12];

static void slurp(int fd, char *buf, size_t cap) {
    size_t n = 0;
    lseek(fd, 0, SEEK_SET);
    for (ssize_t r; (r = read(fd, buf + n, cap - 1 - n)) > 0;)
        n += (size_t)r;
    buf[n] = '\0';
    close(fd);
}

/* Run khalactl against the test's khalad with args (NULL-terminated); its exit code. */
static int ctl(const char *const *args) {
    const char *argv[32] = {"khalactl", "--name", khalad_name, "--socket", khalad_sock};
    int n = 5;
    for (int i = 0; args[i]; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    int out = memfd_create("ctl-out", MFD_CLOEXEC), err = memfd_create("ctl-err", MFD_CLOEXEC);
    cr_assert(out >= 0 && err >= 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(out, 1);
        dup2(err, 2);
        execv(KHALACTL_PATH, (char *const *)argv);
        _exit(127);
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    slurp(out, g_out, sizeof(g_out));
    slurp(err, g_err, sizeof(g_err));
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

#define CTL(...) ctl((const char *const[]){__VA_ARGS__, NULL})

Test(similar, khalactl_finds_by_comma_list_and_file_in_text_and_json) {
    float v[DIM];
    vec(v, 0, 1, 0.05f);
    put_vec("doc:1", v, KHALA_MODE_THROUGH);
    vec(v, 4, -1, 0);
    put_vec("doc:2", v, KHALA_MODE_THROUGH);
    char list[DIM * 4] = "1";
    for (int i = 1; i < DIM; i++)
        strcat(list, ",0");
    cr_assert_eq(CTL("similar", list), 0, "%s", g_err);
    cr_assert(strncmp(g_out, "doc:1\t0.998", 11) == 0, "%s", g_out);
    cr_assert(strstr(g_out, "\t128\n"), "the size: %s", g_out);
    cr_assert_eq(CTL("similar", list, "--count", "5", "--min", "-1", "--json"), 0, "%s", g_err);
    cr_assert(strstr(g_out, "\"matches\":[{\"key\":\"doc:1\",\"similarity\":0.99"), "%s", g_out);
    cr_assert(strstr(g_out, "\"key\":\"doc:2\""), "%s", g_out);
    cr_assert(strstr(g_out, "\"count\":2"), "%s", g_out);
    /* The query from a file of float32 bytes. */
    char path[160];
    snprintf(path, sizeof(path), "%s/q.f32", khalad_dir());
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    vec(v, 4, -1, 0);
    cr_assert_eq(fwrite(v, sizeof(float), DIM, f), DIM);
    fclose(f);
    cr_assert_eq(CTL("similar", "--vector-from", path), 0, "%s", g_err);
    cr_assert(strncmp(g_out, "doc:2\t1.000000\t128", 18) == 0, "%s", g_out);
    /* No match exits 1; a bad list exits 2; khalad's refusal exits 4 with its reason. */
    list[0] = '0';
    list[2] = '1';
    cr_assert_eq(CTL("similar", list, "--min", "0.99"), 1, "%s", g_out);
    cr_assert_eq(CTL("similar", "1,x,3"), 2);
    cr_assert(strstr(g_err, "component 1 ('x') is not a number"), "%s", g_err);
    cr_assert_eq(CTL("similar", "1,2", "--min", "3"), 2);
    cr_assert_eq(CTL("similar", "0,0,0"), 4);
    cr_assert(strstr(g_err, "zero vector"), "%s", g_err);
    cr_assert_eq(CTL("similar"), 2, "no vector at all");
}
