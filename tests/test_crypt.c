/*
 * Encryption at rest (daemon/crypt.c, daemon/tier_crypt.c): the key file's checks (owner, mode,
 * contents), the envelope (a round trip; every altered byte, another key, another type and an
 * unknown key id are refused and counted), rotation (old ids open, new values use the current
 * id), the tier wrapper over a fake level (values of encrypted types are ciphertext there, other
 * types plaintext, a refused value is a miss), and the write journal's codec (ciphertext in the
 * journal file, read back in the clear, a tampered record dropped).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "crypt.h"
#include "fake_tier.h"
#include "khala/error.h"
#include "tier_crypt.h"
#include "tier_disk.h"
#include "writeq.h"

#define KEY1 "1111111111111111111111111111111111111111111111111111111111111111"
#define KEY2 "2222222222222222222222222222222222222222222222222222222222222222"
#define SECRET "the patient's diagnosis is confidential"
#define AGENT ((int)KHALA_TYPE_AGENT_RESPONSE)
#define AGENT_BIT (1u << KHALA_TYPE_AGENT_RESPONSE)

static char g_dir[64];

static void setup(void) {
    snprintf(g_dir, sizeof(g_dir), "/tmp/khala-crypt-%d", (int)getpid());
    mkdir(g_dir, 0700);
}

static void teardown(void) {
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(crypt, .init = setup, .fini = teardown, .timeout = 30);

/* Write a key file with text and mode; its path. */
static const char *key_file(const char *text, mode_t mode) {
    static char path[128];
    snprintf(path, sizeof(path), "%s/keys", g_dir);
    unlink(path);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs(text, f);
    fclose(f);
    cr_assert_eq(chmod(path, mode), 0);
    return path;
}

static khala_crypt_t *ring(const char *text, uint32_t types) {
    khala_crypt_t *c = NULL;
    char err[256] = "";
    int rc = khala__crypt_load(key_file(text, 0600), types, &c, err, sizeof(err));
    cr_assert_eq(rc, 0, "load: %s (%s)", khala_strerror(rc), err);
    return c;
}

static int memfind(const void *hay, size_t n, const char *needle) {
    return memmem(hay, n, needle, strlen(needle)) != NULL;
}

/* The key file ---------------------------------------------------------------------------- */

Test(crypt, a_key_file_readable_by_group_or_others_is_refused_naming_file_and_mode) {
    khala_crypt_t *c = NULL;
    char err[256] = "";
    const char *path = key_file("1 " KEY1 "\n", 0644);
    cr_assert_eq(khala__crypt_load(path, AGENT_BIT, &c, err, sizeof(err)), KHALA_EDENIED);
    cr_assert_null(c);
    cr_assert(strstr(err, path), "%s", err);
    cr_assert(strstr(err, "mode 0644"), "%s", err);
    cr_assert(strstr(err, "chmod 600"), "%s", err);
    path = key_file("1 " KEY1 "\n", 0640);
    cr_assert_eq(khala__crypt_load(path, AGENT_BIT, &c, err, sizeof(err)), KHALA_EDENIED);
    cr_assert(strstr(err, "mode 0640"), "%s", err);
    path = key_file("1 " KEY1 "\n", 0400); /* read-only for the owner is fine */
    cr_assert_eq(khala__crypt_load(path, AGENT_BIT, &c, err, sizeof(err)), 0, "%s", err);
    khala__crypt_close(c);
}

Test(crypt, a_key_file_owned_by_another_user_is_refused) {
    if (geteuid() != 0)
        cr_skip_test("needs root to give the file to another user");
    khala_crypt_t *c = NULL;
    char err[256] = "";
    const char *path = key_file("1 " KEY1 "\n", 0600);
    cr_assert_eq(chown(path, 65534, 65534), 0);
    cr_assert_eq(khala__crypt_load(path, AGENT_BIT, &c, err, sizeof(err)), KHALA_EDENIED);
    cr_assert(strstr(err, path) && strstr(err, "owned by uid 65534"), "%s", err);
}

Test(crypt, a_missing_key_file_or_a_directory_is_refused) {
    khala_crypt_t *c = NULL;
    char err[256] = "", path[128];
    snprintf(path, sizeof(path), "%s/none", g_dir);
    cr_assert_eq(khala__crypt_load(path, AGENT_BIT, &c, err, sizeof(err)), -ENOENT);
    cr_assert(strstr(err, path), "%s", err);
    cr_assert_eq(chmod(g_dir, 0700), 0);
    cr_assert_eq(khala__crypt_load(g_dir, AGENT_BIT, &c, err, sizeof(err)), KHALA_EDENIED);
    cr_assert(strstr(err, "not a regular file"), "%s", err);
}

Test(crypt, bad_key_file_contents_are_refused_with_the_line) {
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"", "holds no key"},
        {"# only a comment\n\n", "holds no key"},
        {"1 abcd\n", ":1: key 1 is not 64 hex digits"},
        {"1 " KEY1 "\nx " KEY2 "\n", ":2: the key id is not a number"},
        {"0 " KEY1 "\n", ":1: the key id is not a number"},
        {"4294967296 " KEY1 "\n", ":1: the key id is not a number"},
        {"1 " KEY1 "\n\n1 " KEY2 "\n", ":3: key id 1 is given twice"},
        {"1 " KEY1 " current\n2 " KEY2 " current\n", ":2: a second key is marked current"},
        {"1 " KEY1 " newest\n", ":1: after key 1 only the word 'current' may follow"},
        {"1 " KEY1 "zz\n", ":1: key 1 is not 64 hex digits"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        khala_crypt_t *c = NULL;
        char err[256] = "";
        int rc = khala__crypt_load(key_file(cases[i].text, 0600), AGENT_BIT, &c, err, sizeof(err));
        cr_assert_eq(rc, KHALA_ECONFIG, "case %zu: %s", i, khala_strerror(rc));
        cr_assert(strstr(err, cases[i].want), "case %zu: '%s' lacks '%s'", i, err, cases[i].want);
        cr_assert_null(c);
    }
}

Test(crypt, the_current_key_is_the_marked_one_else_the_last) {
    khala_crypt_t *c = ring("# keys\n1 " KEY1 "\n  7\t" KEY2 "  \n", AGENT_BIT);
    cr_assert_eq(khala__crypt_nkeys(c), 2);
    cr_assert_eq(khala__crypt_current_id(c), 7);
    khala__crypt_close(c);
    c = ring("1 " KEY1 " current\n7 " KEY2 "\n", AGENT_BIT);
    cr_assert_eq(khala__crypt_current_id(c), 1);
    cr_assert(khala__crypt_wants(c, AGENT));
    cr_assert_not(khala__crypt_wants(c, KHALA_TYPE_MEMORY_ENTITY));
    cr_assert_not(khala__crypt_wants(NULL, AGENT));
    khala__crypt_close(c);
}

/* The envelope ----------------------------------------------------------------------------- */

static void seal(khala_crypt_t *c, const char *key, int type, const char *val, void **env,
                 size_t *n) {
    cr_assert_eq(khala__crypt_seal(c, key, strlen(key), type, val, strlen(val), env, n), 0);
    cr_assert_eq(*n, strlen(val) + KHALA_CRYPT_OVERHEAD);
}

Test(crypt, a_sealed_value_is_ciphertext_and_opens_to_the_plaintext) {
    khala_crypt_t *c = ring("1 " KEY1 "\n", AGENT_BIT);
    void *env, *env2, *plain;
    size_t n, n2, plen;
    seal(c, "user:1", AGENT, SECRET, &env, &n);
    seal(c, "user:1", AGENT, SECRET, &env2, &n2);
    cr_assert(khala__crypt_is_sealed(env, n));
    cr_assert_not(memfind(env, n, "diagnosis"), "the plaintext shows in the envelope");
    cr_assert_neq(memcmp(env, env2, n), 0, "two seals of one value must differ (random nonce)");
    cr_assert_eq(khala__crypt_unseal(c, "user:1", 6, AGENT, env, n, &plain, &plen, NULL, 0), 0);
    cr_assert_eq(plen, strlen(SECRET));
    cr_assert_eq(memcmp(plain, SECRET, plen), 0);
    free(plain);
    /* An empty value seals and opens too. */
    free(env2);
    cr_assert_eq(khala__crypt_seal(c, "k", 1, AGENT, NULL, 0, &env2, &n2), 0);
    cr_assert_eq(khala__crypt_unseal(c, "k", 1, AGENT, env2, n2, &plain, &plen, NULL, 0), 0);
    cr_assert_eq(plen, 0);
    free(plain);
    khala_crypt_stats_t st;
    khala__crypt_stats(c, &st);
    cr_assert_eq(st.sealed, 3);
    cr_assert_eq(st.opened, 2);
    cr_assert_eq(st.auth_failures, 0);
    free(env);
    free(env2);
    khala__crypt_close(c);
}

Test(crypt, every_altered_byte_another_key_or_type_and_an_unknown_id_are_refused_and_counted) {
    khala_crypt_t *c = ring("1 " KEY1 "\n", AGENT_BIT);
    void *env, *plain = NULL;
    size_t n, plen;
    char why[128];
    seal(c, "user:1", AGENT, SECRET, &env, &n);
    uint8_t *b = env;
    uint64_t refused = 0;
    /* Every byte after the magic: key id, nonce, ciphertext, tag. */
    for (size_t i = 4; i < n; i++) {
        b[i] ^= 0x01;
        int rc =
            khala__crypt_unseal(c, "user:1", 6, AGENT, env, n, &plain, &plen, why, sizeof(why));
        cr_assert_eq(rc, KHALA_EAUTH, "byte %zu altered, yet %s", i, khala_strerror(rc));
        cr_assert_null(plain);
        b[i] ^= 0x01;
        refused++;
    }
    /* Moved to another key, or read as another type. */
    cr_assert_eq(
        khala__crypt_unseal(c, "user:2", 6, AGENT, env, n, &plain, &plen, why, sizeof(why)),
        KHALA_EAUTH);
    cr_assert(strstr(why, "tag does not verify under key id 1"), "%s", why);
    cr_assert_eq(khala__crypt_unseal(c, "user:1", 6, KHALA_TYPE_MEMORY_ENTITY, env, n, &plain,
                                     &plen, NULL, 0),
                 KHALA_EAUTH);
    /* Cut short, or not an envelope at all. */
    cr_assert_eq(khala__crypt_unseal(c, "user:1", 6, AGENT, env, KHALA_CRYPT_OVERHEAD - 1, &plain,
                                     &plen, NULL, 0),
                 KHALA_EAUTH);
    cr_assert_eq(
        khala__crypt_unseal(c, "user:1", 6, AGENT, SECRET, strlen(SECRET), &plain, &plen, NULL, 0),
        KHALA_EAUTH);
    refused += 4;
    /* A key id the file does not hold. */
    b[7] = 9;
    cr_assert_eq(
        khala__crypt_unseal(c, "user:1", 6, AGENT, env, n, &plain, &plen, why, sizeof(why)),
        KHALA_EAUTH);
    cr_assert(strstr(why, "key id 9 is not in the key file"), "%s", why);
    refused++;
    khala_crypt_stats_t st;
    khala__crypt_stats(c, &st);
    cr_assert_eq(st.auth_failures, refused);
    cr_assert_eq(st.unknown_key, 4 + 1, "the 4 altered key id bytes, then id 9");
    cr_assert_eq(st.opened, 0);
    free(env);
    khala__crypt_close(c);
}

Test(crypt, rotation_opens_old_ids_and_seals_new_values_with_the_current_one) {
    khala_crypt_t *c1 = ring("1 " KEY1 "\n", AGENT_BIT);
    void *old, *nw, *plain;
    size_t nold, nnew, plen;
    seal(c1, "a", AGENT, "old value", &old, &nold);
    khala__crypt_close(c1);
    khala_crypt_t *c2 = ring("1 " KEY1 "\n2 " KEY2 "\n", AGENT_BIT);
    cr_assert_eq(khala__crypt_unseal(c2, "a", 1, AGENT, old, nold, &plain, &plen, NULL, 0), 0);
    cr_assert_eq(plen, 9);
    cr_assert_eq(memcmp(plain, "old value", 9), 0);
    free(plain);
    seal(c2, "b", AGENT, "new value", &nw, &nnew);
    const uint8_t *h = nw, *ho = old;
    cr_assert(h[4] == 0 && h[5] == 0 && h[6] == 0 && h[7] == 2, "new values carry key id 2");
    cr_assert(ho[4] == 0 && ho[5] == 0 && ho[6] == 0 && ho[7] == 1, "old values keep key id 1");
    khala__crypt_close(c2);
    /* Key 1 removed from the file: its values are refused, never returned. */
    khala_crypt_t *c3 = ring("2 " KEY2 "\n", AGENT_BIT);
    cr_assert_eq(khala__crypt_unseal(c3, "a", 1, AGENT, old, nold, &plain, &plen, NULL, 0),
                 KHALA_EAUTH);
    cr_assert_eq(khala__crypt_unseal(c3, "b", 1, AGENT, nw, nnew, &plain, &plen, NULL, 0), 0);
    free(plain);
    khala__crypt_close(c3);
    free(old);
    free(nw);
}

Test(crypt, a_reload_takes_the_new_keys_and_a_bad_file_changes_nothing) {
    khala_crypt_t *c = ring("1 " KEY1 "\n", AGENT_BIT);
    void *old, *plain;
    size_t nold, plen;
    char err[256] = "";
    seal(c, "a", AGENT, "old value", &old, &nold);
    /* Readable by others: refused, the old key stays current. */
    const char *path = key_file("1 " KEY1 "\n2 " KEY2 "\n", 0644);
    cr_assert_eq(khala__crypt_reload(c, path, err, sizeof(err)), KHALA_EDENIED);
    cr_assert(strstr(err, "mode 0644"), "%s", err);
    cr_assert_eq(khala__crypt_current_id(c), 1);
    cr_assert_eq(khala__crypt_nkeys(c), 1);
    cr_assert_eq(chmod(path, 0600), 0);
    cr_assert_eq(khala__crypt_reload(c, path, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(khala__crypt_current_id(c), 2);
    cr_assert_eq(khala__crypt_nkeys(c), 2);
    cr_assert(khala__crypt_wants(c, AGENT), "the encrypted types stay");
    cr_assert_eq(khala__crypt_unseal(c, "a", 1, AGENT, old, nold, &plain, &plen, NULL, 0), 0);
    free(plain);
    khala_crypt_stats_t st;
    khala__crypt_stats(c, &st);
    cr_assert_eq(st.sealed, 1, "the counters stay");
    free(old);
    khala__crypt_close(c);
}

/* The tier wrapper ------------------------------------------------------------------------- */

typedef struct wrapped {
    fake_tier_t *f;
    khala_tier_t *t;
    khala_crypt_t *c;
} wrapped_t;

static wrapped_t wrap(void) {
    wrapped_t w;
    w.c = ring("1 " KEY1 "\n", AGENT_BIT);
    w.f = fake_tier_new(KHALA_LEVEL_L2);
    cr_assert(w.f);
    cr_assert_eq(khala__tier_crypt_wrap(&w.f->tier, w.c, &w.t), 0);
    cr_assert_str_eq(w.t->ops->name, w.f->tier.ops->name);
    cr_assert_eq(w.t->level, KHALA_LEVEL_L2);
    return w;
}

static void unwrap(wrapped_t *w) {
    w->t->ops->close(w->t); /* closes the fake too */
    khala__crypt_close(w->c);
}

static void wput(wrapped_t *w, const char *key, int type, const char *val) {
    khala_tier_value_t v = {(void *)val, strlen(val), 1, 0, (khala_type_t)type};
    cr_assert_eq(w->t->ops->put(w->t, key, strlen(key), &v), 0, "%s", w->t->err);
}

/* The fake's stored bytes of key. */
static uint8_t *stored(wrapped_t *w, const char *key, size_t *n) {
    for (int i = 0; i < FAKE_TIER_ITEMS; i++)
        if (w->f->items[i].used && strcmp(w->f->items[i].key, key) == 0) {
            *n = w->f->items[i].vlen;
            return w->f->items[i].val;
        }
    cr_assert_fail("the fake does not hold %s", key);
    return NULL;
}

Test(crypt, the_wrapper_stores_encrypted_types_as_ciphertext_and_reads_them_back) {
    wrapped_t w = wrap();
    wput(&w, "s", AGENT, SECRET);
    wput(&w, "p", KHALA_TYPE_MEMORY_ENTITY, "public memory");
    size_t n;
    uint8_t *b = stored(&w, "s", &n);
    cr_assert_eq(n, strlen(SECRET) + KHALA_CRYPT_OVERHEAD);
    cr_assert_not(memfind(b, n, "diagnosis"));
    b = stored(&w, "p", &n);
    cr_assert(n == 13 && memcmp(b, "public memory", 13) == 0, "other types stay plaintext");

    khala_tier_value_t v = {0};
    cr_assert_eq(w.t->ops->get(w.t, "s", 1, &v), 0);
    cr_assert(v.len == strlen(SECRET) && memcmp(v.data, SECRET, v.len) == 0);
    cr_assert_eq(v.type, KHALA_TYPE_AGENT_RESPONSE);
    khala__tier_value_free(&v);

    /* mput and mget: a batch of both kinds. */
    khala_bytes_t keys[3] = {
        {(const uint8_t *)"m1", 2}, {(const uint8_t *)"m2", 2}, {(const uint8_t *)"s", 1}};
    khala_tier_value_t vals[2] = {{(void *)"secret two", 10, 1, 0, KHALA_TYPE_AGENT_RESPONSE},
                                  {(void *)"plain two", 9, 1, 0, KHALA_TYPE_MEMORY_ENTITY}};
    cr_assert_eq(w.t->ops->mput(w.t, 2, keys, vals), 0);
    b = stored(&w, "m1", &n);
    cr_assert_not(memfind(b, n, "secret two"));
    khala_tier_value_t out[3];
    int rcs[3];
    memset(out, 0, sizeof(out));
    cr_assert_eq(w.t->ops->mget(w.t, 3, keys, out, rcs), 0);
    cr_assert(rcs[0] == 0 && out[0].len == 10 && memcmp(out[0].data, "secret two", 10) == 0);
    cr_assert(rcs[1] == 0 && out[1].len == 9 && memcmp(out[1].data, "plain two", 9) == 0);
    cr_assert(rcs[2] == 0 && out[2].len == strlen(SECRET));
    for (int i = 0; i < 3; i++)
        khala__tier_value_free(&out[i]);
    unwrap(&w);
}

Test(crypt, the_wrapper_refuses_a_tampered_moved_or_clear_value_as_a_miss_and_counts_it) {
    wrapped_t w = wrap();
    wput(&w, "s", AGENT, SECRET);
    wput(&w, "t", AGENT, "another secret");
    size_t n;
    uint8_t *b = stored(&w, "s", &n);
    b[n - 20] ^= 0x80; /* a ciphertext byte */
    khala_tier_value_t v = {0};
    cr_assert_eq(w.t->ops->get(w.t, "s", 1, &v), KHALA_EAUTH);
    cr_assert_null(v.data);
    cr_assert(strstr(w.t->err, "failed authentication"), "%s", w.t->err);

    /* t's envelope copied under key u: bound to t, so refused. */
    size_t tn;
    uint8_t *tb = stored(&w, "t", &tn);
    khala_tier_value_t moved = {tb, tn, 1, 0, KHALA_TYPE_AGENT_RESPONSE};
    cr_assert_eq(w.f->tier.ops->put(&w.f->tier, "u", 1, &moved), 0);
    cr_assert_eq(w.t->ops->get(w.t, "u", 1, &v), KHALA_EAUTH);

    /* A value of an encrypted type written in the clear (bypassing khalad): refused. */
    khala_tier_value_t clear = {(void *)"forged", 6, 1, 0, KHALA_TYPE_AGENT_RESPONSE};
    cr_assert_eq(w.f->tier.ops->put(&w.f->tier, "f", 1, &clear), 0);
    cr_assert_eq(w.t->ops->get(w.t, "f", 1, &v), KHALA_EAUTH);

    /* In a batch, only the refused key misses. */
    khala_bytes_t keys[2] = {{(const uint8_t *)"s", 1}, {(const uint8_t *)"t", 1}};
    khala_tier_value_t out[2];
    int rcs[2];
    memset(out, 0, sizeof(out));
    cr_assert_eq(w.t->ops->mget(w.t, 2, keys, out, rcs), 0);
    cr_assert_eq(rcs[0], KHALA_EAUTH);
    cr_assert_null(out[0].data);
    cr_assert_eq(rcs[1], 0);
    khala__tier_value_free(&out[1]);

    khala_crypt_stats_t st;
    khala__crypt_stats(w.c, &st);
    cr_assert_eq(st.auth_failures, 4);
    unwrap(&w);
}

Test(crypt, the_wrapper_keeps_the_inner_drivers_optional_operations_and_errors) {
    wrapped_t w = wrap();
    cr_assert_eq(w.t->ops->tick == NULL, w.f->tier.ops->tick == NULL);
    cr_assert_eq(w.t->ops->note_hits == NULL, w.f->tier.ops->note_hits == NULL);
    cr_assert_null(w.t->ops->invalidate_step, "the plain fake invalidates whole");
    w.f->down = 1;
    khala_tier_value_t v = {0};
    cr_assert_eq(w.t->ops->get(w.t, "x", 1, &v), KHALA_ETIER);
    cr_assert_eq(w.t->ops->health(w.t), KHALA_ETIER);
    cr_assert_str_eq(w.t->err, w.f->tier.err);
    unwrap(&w);
}

/* Counts the keys a scan or hot visits. */
static int count_key(void *arg, const void *key, size_t klen) {
    (void)key;
    (void)klen;
    (*(int *)arg)++;
    return 0;
}

/* A batch write seals each value of an encrypted type and no other; deletes, scans, the hot
 * list and whole invalidations reach the driver as they are (keys are not encrypted), and a
 * failing driver's error is the wrapper's. */
Test(crypt, the_wrapper_seals_batches_and_passes_the_other_operations_through) {
    wrapped_t w = wrap();
    khala_bytes_t keys[3] = {
        {(const uint8_t *)"b1", 2}, {(const uint8_t *)"b2", 2}, {(const uint8_t *)"b3", 2}};
    khala_tier_value_t vals[3] = {{(void *)SECRET, strlen(SECRET), 1, 0, (khala_type_t)AGENT},
                                  {(void *)"plain two", 9, 2, 0, KHALA_TYPE_MEMORY_ENTITY},
                                  {(void *)"secret three", 12, 3, 0, (khala_type_t)AGENT}};
    cr_assert_eq(w.t->ops->mput(w.t, 3, keys, vals), 0, "%s", w.t->err);
    size_t n;
    uint8_t *b1 = stored(&w, "b1", &n);
    cr_assert_eq(n, strlen(SECRET) + KHALA_CRYPT_OVERHEAD);
    cr_assert_null(memmem(b1, n, SECRET, strlen(SECRET)), "b1 is ciphertext below");
    uint8_t *b2 = stored(&w, "b2", &n);
    cr_assert(n == 9 && memcmp(b2, "plain two", 9) == 0, "b2 is plaintext below");
    stored(&w, "b3", &n);
    cr_assert_eq(n, 12 + KHALA_CRYPT_OVERHEAD);
    khala_tier_value_t out = {0};
    cr_assert_eq(w.t->ops->get(w.t, "b3", 2, &out), 0, "%s", w.t->err);
    cr_assert(out.len == 12 && memcmp(out.data, "secret three", 12) == 0);
    khala__tier_value_free(&out);

    int seen = 0;
    uint64_t cursor = 0;
    cr_assert_eq(w.t->ops->scan(w.t, &cursor, "b*", 100, count_key, &seen), 0, "%s", w.t->err);
    cr_assert_eq(seen, 3);
    seen = 0;
    cr_assert_eq(w.t->ops->hot(w.t, 10, count_key, &seen), 0, "%s", w.t->err);
    cr_assert_eq(seen, 3);
    cr_assert_eq(w.t->ops->del(w.t, "b1", 2), 0, "%s", w.t->err);
    cr_assert_eq(w.t->ops->get(w.t, "b1", 2, &out), KHALA_ENOTFOUND);
    uint64_t removed = 0;
    cr_assert_eq(w.t->ops->invalidate(w.t, "b", 1, -1, &removed), 0, "%s", w.t->err);
    cr_assert_eq(removed, 2);
    cr_assert_eq(w.t->ops->get(w.t, "b3", 2, &out), KHALA_ENOTFOUND);

    /* A level that is down: every operation says so, with the driver's words. */
    w.f->down = 1;
    cr_assert_eq(w.t->ops->mput(w.t, 3, keys, vals), KHALA_ETIER);
    cr_assert_str_eq(w.t->err, w.f->tier.err);
    cr_assert_eq(w.t->ops->del(w.t, "b2", 2), KHALA_ETIER);
    cr_assert_eq(w.t->ops->scan(w.t, &cursor, "*", 10, count_key, &seen), KHALA_ETIER);
    cr_assert_eq(w.t->ops->hot(w.t, 10, count_key, &seen), KHALA_ETIER);
    cr_assert_eq(w.t->ops->invalidate(w.t, "", 0, -1, NULL), KHALA_ETIER);
    unwrap(&w);
}

/* A driver that invalidates in steps (Redis) keeps doing so behind the wrapper: without the
 * step, khalad would fall back to one whole-server scan inside its loop (issue 10, bug 9). */
Test(crypt, the_wrapper_keeps_invalidation_in_steps) {
    khala_crypt_t *c = ring("1 " KEY1 "\n", AGENT_BIT);
    fake_tier_t *f = fake_tier_new(KHALA_LEVEL_L2);
    cr_assert(f);
    fake_tier_stepped(f);
    khala_tier_t *t;
    cr_assert_eq(khala__tier_crypt_wrap(&f->tier, c, &t), 0);
    cr_assert_not_null(t->ops->invalidate_step);
    khala_tier_value_t v = {(void *)SECRET, strlen(SECRET), 1, 0, (khala_type_t)AGENT};
    cr_assert_eq(t->ops->put(t, "p:1", 3, &v), 0, "%s", t->err);
    cr_assert_eq(t->ops->put(t, "q:1", 3, &v), 0, "%s", t->err);
    uint64_t cursor = 0, removed = 0, total = 0;
    int steps = 0;
    do {
        cr_assert_eq(t->ops->invalidate_step(t, "p:", 2, -1, &cursor, 16, &removed), 0, "%s",
                     t->err);
        total += removed;
        steps++;
    } while (cursor != 0 && steps < 10000);
    cr_assert_eq(total, 1);
    cr_assert_eq(f->steps, (uint64_t)steps, "every step reached the driver");
    khala_tier_value_t out = {0};
    cr_assert_eq(t->ops->get(t, "p:1", 3, &out), KHALA_ENOTFOUND);
    cr_assert_eq(t->ops->get(t, "q:1", 3, &out), 0, "%s", t->err);
    cr_assert_eq(out.len, strlen(SECRET));
    cr_assert_eq(memcmp(out.data, SECRET, out.len), 0);
    khala__tier_value_free(&out);
    f->down = 1;
    cursor = 0;
    cr_assert_eq(t->ops->invalidate_step(t, "q:", 2, -1, &cursor, 16, NULL), KHALA_ETIER);
    cr_assert_str_eq(t->err, f->tier.err);
    t->ops->close(t);
    khala__crypt_close(c);
}

/* The write journal ----------------------------------------------------------------------- */

/* Whether a file under dir holds needle. */
static int dir_holds(const char *dir, const char *needle) {
    char path[160];
    snprintf(path, sizeof(path), "%s/data.mdb", dir);
    FILE *f = fopen(path, "rb");
    cr_assert(f, "%s", path);
    static uint8_t buf[1 << 20];
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    return memfind(buf, n, needle);
}

static khala_wq_t *journal(const char *dir, khala_crypt_t *c, uint64_t *recovered) {
    khala_wq_t *q;
    char err[256] = "";
    cr_assert_eq(khala__wq_new(100, 1 << 20, &q), 0);
    khala_wq_codec_t codec;
    khala__tier_crypt_journal_codec(c, &codec);
    khala__wq_set_codec(q, &codec);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, recovered, err, sizeof(err)), 0, "%s", err);
    return q;
}

Test(crypt, the_journal_holds_ciphertext_and_reads_back_the_plaintext) {
    khala_crypt_t *c = ring("1 " KEY1 "\n", AGENT_BIT);
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/j", g_dir);
    uint64_t n = 0;
    khala_wq_t *q = journal(dir, c, &n);
    cr_assert_eq(khala__wq_put(q, "s", 1, SECRET, strlen(SECRET), 5, 0, AGENT), 0);
    cr_assert_eq(khala__wq_put(q, "p", 1, "public memory", 13, 6, 0, 0), 0);
    khala_wq_op_t *mem = khala__wq_find(q, "s", 1);
    cr_assert(mem && mem->vlen == strlen(SECRET) && memcmp(mem->val, SECRET, mem->vlen) == 0,
              "the queue in memory holds the plaintext");
    khala__wq_free(q);
    cr_assert_not(dir_holds(dir, "diagnosis"), "the journal holds the plaintext");
    cr_assert(dir_holds(dir, "public memory"), "other types stay plaintext");

    q = journal(dir, c, &n);
    cr_assert_eq(n, 2);
    khala_wq_op_t *op = khala__wq_find(q, "s", 1);
    cr_assert(op && op->vlen == strlen(SECRET) && memcmp(op->val, SECRET, op->vlen) == 0);
    cr_assert_eq(op->version, 5);
    khala__wq_free(q);
    khala__crypt_close(c);
}

/* The journal record's layout (daemon/writeq.c): a 40-byte header whose u32 at 20 is XXH32 of
 * the record with those 4 bytes zero (the header's first 24 bytes seed the sum of the rest);
 * klen at 12, vlen at 16. */
enum { JREC_SIZE = 40, JREC_SUM_AT = 20, JREC_HEAD = 24 };

static uint32_t jrec_sum_again(const uint8_t *rec) {
    uint32_t klen, vlen;
    memcpy(&klen, rec + 12, sizeof(klen));
    memcpy(&vlen, rec + 16, sizeof(vlen));
    uint8_t head[JREC_HEAD];
    memcpy(head, rec, JREC_HEAD);
    memset(head + JREC_SUM_AT, 0, 4);
    return XXH32(rec + JREC_HEAD, JREC_SIZE + klen + vlen - JREC_HEAD, XXH32(head, JREC_HEAD, 0));
}

Test(crypt, a_tampered_journal_record_is_dropped_and_counted_never_replayed) {
    khala_crypt_t *c = ring("1 " KEY1 "\n", AGENT_BIT);
    char dir[128], path[160];
    snprintf(dir, sizeof(dir), "%s/j", g_dir);
    uint64_t n = 0;
    khala_wq_t *q = journal(dir, c, &n);
    cr_assert_eq(khala__wq_put(q, "s", 1, SECRET, strlen(SECRET), 5, 0, AGENT), 0);
    cr_assert_eq(khala__wq_put(q, "t", 1, "kept secret", 11, 6, 0, AGENT), 0);
    khala__wq_free(q);
    /* Flip one ciphertext byte of s's envelope (the record's key "s" precedes it) in every
     * copy LMDB's copy-on-write left in the file, and make the record's XXH32 agree again, as
     * anyone who can write the file can: that sum catches accidents, the AEAD tag an attacker. */
    snprintf(path, sizeof(path), "%s/data.mdb", dir);
    FILE *f = fopen(path, "r+b");
    cr_assert(f);
    static uint8_t buf[1 << 20];
    size_t len = fread(buf, 1, sizeof(buf), f), flipped = 0;
    static const uint8_t magic[] = {'s', 0xC1, 'K', 'C', 'E', 0, 0, 0, 1};
    for (uint8_t *m = buf; (m = memmem(m, len - (size_t)(m - buf), magic, sizeof(magic))); m++) {
        size_t off = (size_t)(m - buf) + 1 + 8 + 24 + 3;
        buf[off] ^= 0x40;
        cr_assert_eq(fseek(f, (long)off, SEEK_SET), 0);
        cr_assert_eq(fwrite(&buf[off], 1, 1, f), 1);
        size_t rec = (size_t)(m - buf) - JREC_SIZE;
        uint32_t sum = jrec_sum_again(buf + rec);
        cr_assert_eq(fseek(f, (long)(rec + JREC_SUM_AT), SEEK_SET), 0);
        cr_assert_eq(fwrite(&sum, sizeof(sum), 1, f), 1);
        flipped++;
    }
    cr_assert_gt(flipped, 0, "no envelope of s in the journal");
    fclose(f);

    q = journal(dir, c, &n);
    cr_assert_eq(n, 1, "only the untouched record is read back");
    khala_wq_stats_t st;
    khala__wq_stats(q, &st);
    cr_assert_eq(st.unreadable, 1);
    cr_assert_eq(st.len, 1);
    khala_crypt_stats_t cs;
    khala__crypt_stats(c, &cs);
    cr_assert_eq(cs.auth_failures, 1);
    khala__wq_free(q);
    /* The dropped record is gone from the file too. */
    q = journal(dir, c, &n);
    cr_assert_eq(n, 1);
    khala__wq_stats(q, &st);
    cr_assert_eq(st.unreadable, 0);
    khala__wq_free(q);
    khala__crypt_close(c);
}

/* archive_get and similar (issue 12) ------------------------------------------------------- */

/* archive_get opens what it reads as get does: the fake's archive is its live items (what is
 * tested is the wrapper), reached through an ops table that has archive_get. */
Test(crypt, the_wrapper_opens_archived_values_and_refuses_tampered_ones) {
    khala_crypt_t *c = ring("1 " KEY1 "\n", AGENT_BIT);
    fake_tier_t *f = fake_tier_new(KHALA_LEVEL_L3);
    static khala_tier_ops_t with_archive;
    with_archive = *f->tier.ops;
    with_archive.archive_get = with_archive.get;
    f->tier.ops = &with_archive;
    khala_tier_t *t = NULL;
    cr_assert_eq(khala__tier_crypt_wrap(&f->tier, c, &t), 0);
    cr_assert_not_null(t->ops->archive_get);
    khala_tier_value_t v = {(void *)SECRET, strlen(SECRET), 1, 0, (khala_type_t)AGENT};
    cr_assert_eq(t->ops->put(t, "a", 1, &v), 0, "%s", t->err);
    khala_tier_value_t got = {0};
    cr_assert_eq(t->ops->archive_get(t, "a", 1, &got), 0, "%s", t->err);
    cr_assert_eq(got.len, strlen(SECRET));
    cr_assert_eq(memcmp(got.data, SECRET, got.len), 0);
    khala__tier_value_free(&got);
    /* A byte changed below: refused, as by get. */
    for (int i = 0; i < FAKE_TIER_ITEMS; i++)
        if (f->items[i].used && strcmp(f->items[i].key, "a") == 0)
            f->items[i].val[f->items[i].vlen - 1] ^= 1;
    cr_assert_eq(t->ops->archive_get(t, "a", 1, &got), KHALA_EAUTH);
    cr_assert(strstr(t->err, "failed authentication"), "%s", t->err);
    cr_assert_eq(t->ops->archive_get(t, "none", 4, &got), KHALA_ENOTFOUND);
    t->ops->close(t);
    khala__crypt_close(c);
    /* Without an archive below, the wrapper has none either. */
    c = ring("1 " KEY1 "\n", AGENT_BIT);
    f = fake_tier_new(KHALA_LEVEL_L2);
    cr_assert_eq(khala__tier_crypt_wrap(&f->tier, c, &t), 0);
    cr_assert_null(t->ops->archive_get);
    cr_assert_null(t->ops->similar);
    t->ops->close(t);
    khala__crypt_close(c);
}

static khala_tier_t *disk_store(const char *name) {
    char path[128], err[256] = "";
    snprintf(path, sizeof(path), "%s/%s", g_dir, name);
    khala_tier_disk_opts_t o = {.path = path,
                                .level = KHALA_LEVEL_L3,
                                .max_items = 1000,
                                .max_bytes = 1u << 24,
                                .persistent = true};
    khala_tier_t *t = NULL;
    cr_assert_eq(khala__tier_disk_open(&o, &t, err, sizeof(err)), 0, "%s", err);
    return t;
}

/* A level holding encrypted embeddings holds ciphertext: similar is refused with -ENOTSUP and
 * a message saying why; with embeddings in the clear it is the inner driver's, and a value
 * sealed while the type was encrypted is never a match. */
Test(crypt, similar_is_refused_when_embeddings_are_encrypted_and_forwarded_otherwise) {
    float v[8] = {1, 0, 0, 0, 0, 0, 0, 0};
    khala_tier_value_t val = {v, sizeof(v), 1, 0, KHALA_TYPE_EMBEDDING};
    khala_tier_match_t m[4];
    uint32_t n = 0;

    khala_crypt_t *c = ring("1 " KEY1 "\n", 1u << KHALA_TYPE_EMBEDDING);
    khala_tier_t *t = NULL;
    cr_assert_eq(khala__tier_crypt_wrap(disk_store("enc"), c, &t), 0);
    cr_assert_not_null(t->ops->similar);
    cr_assert_eq(t->ops->put(t, "sealed", 6, &val), 0, "%s", t->err);
    cr_assert_eq(t->ops->similar(t, v, 8, 0.5f, 4, m, &n), -ENOTSUP);
    cr_assert(strstr(t->err, "embedding type is encrypted"), "%s", t->err);
    t->ops->close(t);
    khala__crypt_close(c);

    /* The same store, embeddings no longer encrypted: the sealed one is no match, a clear one
     * is. */
    c = ring("1 " KEY1 "\n", AGENT_BIT);
    cr_assert_eq(khala__tier_crypt_wrap(disk_store("enc"), c, &t), 0);
    cr_assert_eq(t->ops->put(t, "clear", 5, &val), 0, "%s", t->err);
    cr_assert_eq(t->ops->similar(t, v, 8, -1.0f, 4, m, &n), 0, "%s", t->err);
    cr_assert_eq(n, 1);
    cr_assert_eq(m[0].klen, 5);
    cr_assert_eq(memcmp(m[0].key, "clear", 5), 0);
    cr_assert_float_eq(m[0].similarity, 1.0f, 1e-6);
    cr_assert_eq(m[0].val.len, sizeof(v));
    khala__tier_match_free(&m[0]);
    /* The inner driver's refusal of a bad query comes through. */
    float z[8] = {0};
    cr_assert_eq(t->ops->similar(t, z, 8, 0.5f, 4, m, &n), KHALA_EINVAL);
    cr_assert(strstr(t->err, "zero vector"), "%s", t->err);
    t->ops->close(t);
    khala__crypt_close(c);
}
