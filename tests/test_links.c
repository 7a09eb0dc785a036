/*
 * The link index (daemon/links.c): links recorded, replaced, dropped, listed by end and by
 * prefix, kept across a reopen, bounded (KHALA_EFULL with nothing changed), eviction order, and
 * a directory that is not a link index refused. The error paths: a path too long or naming a
 * file, a data file that is not LMDB, another format or none, more links than a frame carries,
 * and records damaged behind the index's back (refused with nothing changed, never read past).
 * Real LMDB in a private directory per test.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "khala/error.h"
#include <lmdb.h>

#include "links.h"

static char g_dir[128];
static khala_links_t *g_lx;

static void setup(void) {
    snprintf(g_dir, sizeof(g_dir), "/tmp/khala-test-links-%d", (int)getpid());
    g_lx = NULL;
}

static void teardown(void) {
    khala__links_close(g_lx);
    g_lx = NULL;
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
    (void)system(cmd);
}

TestSuite(links, .init = setup, .fini = teardown, .timeout = 60);

static khala_links_t *open_index(uint64_t max) {
    char err[512] = "";
    khala_links_t *lx = NULL;
    int rc = khala__links_open(g_dir, max, 0, &lx, err, sizeof(err));
    cr_assert_eq(rc, 0, "open: %s", err);
    return lx;
}

static khala_bytes_t B(const char *s) {
    return (khala_bytes_t){(const uint8_t *)s, strlen(s)};
}

static int set(khala_links_t *lx, const char *rel, const char *e1, const char *e2) {
    khala_bytes_t e[2] = {B(e1), e2 ? B(e2) : B("")};
    return khala__links_set(lx, rel, strlen(rel), e, e2 ? 2 : 1);
}

/* The keys of l joined by ',' in order. */
static const char *joined(khala_links_keys_t *l, char *buf, size_t cap) {
    const uint8_t *k;
    size_t klen, off = 0;
    buf[0] = '\0';
    khala__links_keys_rewind(l);
    while (khala__links_keys_next(l, &k, &klen))
        off += (size_t)snprintf(buf + off, cap - off, "%s%.*s", off ? "," : "", (int)klen, k);
    return buf;
}

static const char *rels_of(khala_links_t *lx, const char *end, char *buf, size_t cap) {
    khala_links_keys_t l = {0};
    cr_assert_eq(khala__links_rels_of(lx, end, strlen(end), &l), 0);
    joined(&l, buf, cap);
    khala__links_keys_free(&l);
    return buf;
}

Test(links, set_links_a_relationship_to_each_end) {
    g_lx = open_index(0);
    char b[256];
    cr_assert_eq(set(g_lx, "R1", "E", "N"), 0);
    cr_assert_eq(set(g_lx, "R2", "E", NULL), 0);
    cr_assert_str_eq(rels_of(g_lx, "E", b, sizeof(b)), "R1,R2");
    cr_assert_str_eq(rels_of(g_lx, "N", b, sizeof(b)), "R1");
    cr_assert_str_eq(rels_of(g_lx, "X", b, sizeof(b)), "");
    khala_links_keys_t l = {0};
    cr_assert_eq(khala__links_ends_of(g_lx, "R1", 2, &l), 0);
    cr_assert_str_eq(joined(&l, b, sizeof(b)), "E,N");
    khala__links_keys_free(&l);
    uint64_t rels, links;
    khala__links_count(g_lx, &rels, &links);
    cr_assert_eq(rels, 2);
    cr_assert_eq(links, 3);
}

Test(links, reset_with_other_ends_drops_the_old_links) {
    g_lx = open_index(0);
    char b[256];
    cr_assert_eq(set(g_lx, "R", "E", "N"), 0);
    cr_assert_eq(set(g_lx, "R", "M", NULL), 0);
    cr_assert_str_eq(rels_of(g_lx, "E", b, sizeof(b)), "");
    cr_assert_str_eq(rels_of(g_lx, "N", b, sizeof(b)), "");
    cr_assert_str_eq(rels_of(g_lx, "M", b, sizeof(b)), "R");
}

Test(links, duplicate_ends_count_once) {
    g_lx = open_index(0);
    uint64_t rels, links;
    cr_assert_eq(set(g_lx, "R", "E", "E"), 0);
    khala__links_count(g_lx, &rels, &links);
    cr_assert_eq(links, 1);
    khala_links_keys_t l = {0};
    char b[64];
    cr_assert_eq(khala__links_ends_of(g_lx, "R", 1, &l), 0);
    cr_assert_str_eq(joined(&l, b, sizeof(b)), "E");
    khala__links_keys_free(&l);
}

Test(links, drop_removes_every_link_of_the_relationship) {
    g_lx = open_index(0);
    char b[256];
    cr_assert_eq(set(g_lx, "R1", "E", "N"), 0);
    cr_assert_eq(set(g_lx, "R2", "E", NULL), 0);
    cr_assert_eq(khala__links_drop(g_lx, "R1", 2), 0);
    cr_assert_eq(khala__links_drop(g_lx, "R9", 2), 0, "dropping what has no links is no error");
    cr_assert_str_eq(rels_of(g_lx, "E", b, sizeof(b)), "R2");
    cr_assert_str_eq(rels_of(g_lx, "N", b, sizeof(b)), "");
    uint64_t rels, links;
    khala__links_count(g_lx, &rels, &links);
    cr_assert_eq(rels, 1);
    cr_assert_eq(links, 1);
}

Test(links, prefix_listings_name_each_key_once) {
    g_lx = open_index(0);
    char b[256];
    cr_assert_eq(set(g_lx, "rel:1", "user:1", "user:2"), 0);
    cr_assert_eq(set(g_lx, "rel:2", "user:1", "post:9"), 0);
    khala_links_keys_t l = {0};
    cr_assert_eq(khala__links_ends_with_prefix(g_lx, "user:", 5, &l), 0);
    cr_assert_str_eq(joined(&l, b, sizeof(b)), "user:1,user:2");
    khala__links_keys_free(&l);
    cr_assert_eq(khala__links_ends_with_prefix(g_lx, "", 0, &l), 0);
    cr_assert_str_eq(joined(&l, b, sizeof(b)), "post:9,user:1,user:2");
    khala__links_keys_free(&l);
    cr_assert_eq(khala__links_rels_with_prefix(g_lx, "rel:", 4, &l), 0);
    cr_assert_str_eq(joined(&l, b, sizeof(b)), "rel:1,rel:2");
    khala__links_keys_free(&l);
    cr_assert_eq(khala__links_rels_with_prefix(g_lx, "zzz", 3, &l), 0);
    cr_assert_eq(l.n, 0);
    khala__links_keys_free(&l);
}

Test(links, index_survives_a_reopen) {
    g_lx = open_index(0);
    char b[256];
    cr_assert_eq(set(g_lx, "R", "E", "N"), 0);
    khala__links_close(g_lx);
    g_lx = open_index(0);
    cr_assert_str_eq(rels_of(g_lx, "E", b, sizeof(b)), "R");
    cr_assert_str_eq(rels_of(g_lx, "N", b, sizeof(b)), "R");
}

Test(links, full_index_refuses_with_efull_and_changes_nothing) {
    g_lx = open_index(3);
    char b[256];
    cr_assert_eq(set(g_lx, "R1", "E", "N"), 0);
    cr_assert_eq(set(g_lx, "R2", "E", "N"), KHALA_EFULL);
    cr_assert(strstr(khala__links_errmsg(g_lx), "full"), "message: %s", khala__links_errmsg(g_lx));
    cr_assert_str_eq(rels_of(g_lx, "E", b, sizeof(b)), "R1", "the refused set left nothing");
    cr_assert_eq(set(g_lx, "R2", "E", NULL), 0, "within the bound it is taken");
}

Test(links, oldest_is_the_least_recently_set) {
    g_lx = open_index(0);
    uint8_t k[KHALA_KEY_MAX];
    size_t klen = 0;
    cr_assert_eq(khala__links_oldest(g_lx, k, &klen), KHALA_ENOTFOUND);
    cr_assert_eq(set(g_lx, "R1", "E", NULL), 0);
    cr_assert_eq(set(g_lx, "R2", "E", NULL), 0);
    cr_assert_eq(khala__links_oldest(g_lx, k, &klen), 0);
    cr_assert_eq(klen, 2);
    cr_assert_eq(memcmp(k, "R1", 2), 0);
    cr_assert_eq(set(g_lx, "R1", "N", NULL), 0, "set again: R1 is now the newest");
    cr_assert_eq(khala__links_oldest(g_lx, k, &klen), 0);
    cr_assert_eq(memcmp(k, "R2", 2), 0);
}

Test(links, bad_links_are_refused_with_einval) {
    g_lx = open_index(0);
    char big[KHALA_KEY_MAX + 2];
    memset(big, 'k', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    cr_assert_eq(set(g_lx, "R", "R", NULL), KHALA_EINVAL, "linked to itself");
    cr_assert(strstr(khala__links_errmsg(g_lx), "own key"));
    cr_assert_eq(set(g_lx, "R", big, NULL), KHALA_EINVAL);
    cr_assert(strstr(khala__links_errmsg(g_lx), "bytes"));
    cr_assert_eq(set(g_lx, big, "E", NULL), KHALA_EINVAL);
    cr_assert_eq(set(g_lx, "R", "", NULL), KHALA_EINVAL);
}

Test(links, clear_drops_everything) {
    g_lx = open_index(0);
    char b[64];
    cr_assert_eq(set(g_lx, "R", "E", "N"), 0);
    cr_assert_eq(khala__links_clear(g_lx), 0);
    cr_assert_str_eq(rels_of(g_lx, "E", b, sizeof(b)), "");
    uint64_t rels, links;
    khala__links_count(g_lx, &rels, &links);
    cr_assert_eq(rels + links, 0);
}

Test(links, directory_of_another_lmdb_store_is_refused) {
    /* A plain LMDB environment with a record in its main database: not ours. */
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "mkdir -p %s", g_dir);
    cr_assert_eq(system(cmd), 0);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_open(env, g_dir, 0, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
    MDB_val k = {3, "foo"}, v = {3, "bar"};
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    char err[512] = "";
    khala_links_t *lx = NULL;
    cr_assert_eq(khala__links_open(g_dir, 0, 0, &lx, err, sizeof(err)), KHALA_ECONFIG);
    cr_assert(strstr(err, "not a khala link index"), "message: %s", err);
    cr_assert_null(lx);
}

/* Error paths: bad directories, foreign or damaged state ------------------------------------ */

/* A raw LMDB environment in g_dir, with the index's named databases, for writing damage. */
static MDB_env *raw_env(MDB_txn **txn) {
    MDB_env *env;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 8), 0);
    cr_assert_eq(mdb_env_open(env, g_dir, 0, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, txn), 0);
    return env;
}

static void raw_put(MDB_txn *txn, const char *db, const char *k, const void *v, size_t vlen) {
    MDB_dbi dbi;
    cr_assert_eq(mdb_dbi_open(txn, db, MDB_CREATE, &dbi), 0);
    MDB_val kv = {strlen(k), (void *)k}, vv = {vlen, (void *)v};
    cr_assert_eq(mdb_put(txn, dbi, &kv, &vv, 0), 0);
}

static void raw_commit(MDB_env *env, MDB_txn *txn) {
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

Test(links, a_directory_name_too_long_is_refused_with_enametoolong) {
    char dir[600], err[1024] = "";
    memset(dir, 'd', sizeof(dir) - 1);
    dir[0] = '/';
    dir[sizeof(dir) - 1] = '\0';
    khala_links_t *lx = NULL;
    cr_assert_eq(khala__links_open(dir, 0, 0, &lx, err, sizeof(err)), -ENAMETOOLONG);
    cr_assert(strstr(err, "too long"), "message: %s", err);
    cr_assert_null(lx);
}

Test(links, a_directory_that_is_a_file_is_refused_naming_it) {
    FILE *f = fopen(g_dir, "w");
    cr_assert_not_null(f);
    fclose(f);
    char err[512] = "";
    khala_links_t *lx = NULL;
    cr_assert_eq(khala__links_open(g_dir, 0, 0, &lx, err, sizeof(err)), -ENOTDIR);
    cr_assert(strstr(err, g_dir) && strstr(err, "not a directory"), "message: %s", err);
    cr_assert_null(lx);
}

Test(links, a_data_file_that_is_not_lmdb_is_refused_as_corrupt) {
    char path[200], junk[8192];
    snprintf(path, sizeof(path), "mkdir -p %s", g_dir);
    cr_assert_eq(system(path), 0);
    snprintf(path, sizeof(path), "%s/data.mdb", g_dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    memset(junk, 'x', sizeof(junk));
    cr_assert_eq(fwrite(junk, 1, sizeof(junk), f), sizeof(junk));
    fclose(f);
    char err[512] = "";
    khala_links_t *lx = NULL;
    cr_assert_eq(khala__links_open(g_dir, 0, 0, &lx, err, sizeof(err)), KHALA_ECORRUPT);
    cr_assert(strstr(err, g_dir), "the message names the index: %s", err);
    cr_assert_null(lx);
}

Test(links, an_index_of_another_format_is_refused_with_econfig) {
    g_lx = open_index(0);
    cr_assert_eq(set(g_lx, "R", "E", NULL), 0);
    khala__links_close(g_lx);
    g_lx = NULL;
    MDB_txn *txn;
    MDB_env *env = raw_env(&txn);
    raw_put(txn, "meta", "format", "khala-links-9", 13);
    raw_commit(env, txn);
    char err[512] = "";
    khala_links_t *lx = NULL;
    cr_assert_eq(khala__links_open(g_dir, 0, 0, &lx, err, sizeof(err)), KHALA_ECONFIG);
    cr_assert(strstr(err, "khala-links-1") && strstr(err, g_dir), "message: %s", err);
    cr_assert_null(lx);
}

Test(links, an_index_without_its_format_record_is_refused_with_econfig) {
    MDB_txn *txn;
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "mkdir -p %s", g_dir);
    cr_assert_eq(system(cmd), 0);
    MDB_env *env = raw_env(&txn);
    raw_put(txn, "meta", "seq", "\1\0\0\0\0\0\0\0", 8);
    raw_commit(env, txn);
    char err[512] = "";
    khala_links_t *lx = NULL;
    cr_assert_eq(khala__links_open(g_dir, 0, 0, &lx, err, sizeof(err)), KHALA_ECONFIG);
    cr_assert(strstr(err, "format record"), "message: %s", err);
    cr_assert_null(lx);
}

Test(links, more_links_than_a_frame_carries_are_refused_and_nothing_recorded) {
    g_lx = open_index(0);
    size_t n = (size_t)KHALA_PROTO_ARRAY_MAX + 1;
    khala_bytes_t *e = calloc(n, sizeof(*e));
    cr_assert_not_null(e);
    for (size_t i = 0; i < n; i++)
        e[i] = B("E");
    cr_assert_eq(khala__links_set(g_lx, "R", 1, e, n), KHALA_EINVAL);
    free(e);
    cr_assert(strstr(khala__links_errmsg(g_lx), "links, max"), "message: %s",
              khala__links_errmsg(g_lx));
    uint64_t rels, links;
    khala__links_count(g_lx, &rels, &links);
    cr_assert_eq(rels + links, 0);
}

/* Damage to R's record in "rels" (written behind the index's back), the index reopened. */
static void damage_record(const void *rec, size_t len) {
    g_lx = open_index(0);
    cr_assert_eq(set(g_lx, "R", "E", "N"), 0);
    khala__links_close(g_lx);
    g_lx = NULL;
    MDB_txn *txn;
    MDB_env *env = raw_env(&txn);
    raw_put(txn, "rels", "R", rec, len);
    raw_commit(env, txn);
    g_lx = open_index(0);
}

Test(links, a_record_too_short_for_its_seq_is_reported_and_left_as_it_was) {
    damage_record("abc", 3);
    char b[64];
    cr_assert_eq(khala__links_drop(g_lx, "R", 1), KHALA_ETIER);
    const char *msg = khala__links_errmsg(g_lx);
    cr_assert(strstr(msg, g_dir) && strstr(msg, "dropping links") && strstr(msg, "MDB_CORRUPTED"),
              "message: %s", msg);
    cr_assert_eq(set(g_lx, "R", "M", NULL), KHALA_ETIER, "a re-set drops the damaged record first");
    cr_assert(strstr(khala__links_errmsg(g_lx), "recording links"));
    cr_assert_str_eq(rels_of(g_lx, "E", b, sizeof(b)), "R", "the refused changes left the links");
    cr_assert_str_eq(rels_of(g_lx, "M", b, sizeof(b)), "");
    cr_assert_eq(set(g_lx, "R2", "E", NULL), 0, "other relationships are still recorded");
}

Test(links, a_record_whose_end_runs_past_its_end_is_reported_not_read_past) {
    /* seq 1, then an end of 200 bytes of which only 2 are there. */
    uint8_t rec[11] = {1, 0, 0, 0, 0, 0, 0, 0, 200, 'E', 'x'};
    damage_record(rec, sizeof(rec));
    khala_links_keys_t l = {0};
    cr_assert_eq(khala__links_ends_of(g_lx, "R", 1, &l), KHALA_ETIER);
    cr_assert(strstr(khala__links_errmsg(g_lx), "reading the ends of a relationship"),
              "message: %s", khala__links_errmsg(g_lx));
    khala__links_keys_free(&l);
    cr_assert_eq(khala__links_drop(g_lx, "R", 1), KHALA_ETIER);
    uint64_t rels, links;
    khala__links_count(g_lx, &rels, &links);
    cr_assert_eq(rels, 1, "the damaged record is still there");
    cr_assert_eq(links, 2);
}

Test(links, counts_of_no_index_are_zero) {
    uint64_t rels = 7, links = 7;
    khala__links_count(NULL, &rels, &links);
    cr_assert_eq(rels, 0);
    cr_assert_eq(links, 0);
}

Test(links, a_store_whose_meta_is_a_record_not_a_database_is_refused) {
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "mkdir -p %s", g_dir);
    cr_assert_eq(system(cmd), 0);
    MDB_txn *txn;
    MDB_env *env = raw_env(&txn);
    MDB_dbi dbi;
    cr_assert_eq(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
    MDB_val k = {4, "meta"}, v = {5, "plain"};
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    raw_commit(env, txn);
    char err[512] = "";
    khala_links_t *lx = NULL;
    int rc = khala__links_open(g_dir, 0, 0, &lx, err, sizeof(err));
    cr_assert_eq(rc, KHALA_ECONFIG, "%s: %s", khala_strerror(rc), err);
    cr_assert(strstr(err, "not a khala link index") && strstr(err, g_dir), "message: %s", err);
    cr_assert_null(lx);
}

Test(links, a_drop_of_a_record_missing_its_age_and_end_entries_still_drops_it) {
    /* R's record names seq 99 and end E, neither of which the index holds (an index an
     * interrupted older khalad left): the drop removes what there is. */
    g_lx = open_index(0);
    cr_assert_eq(set(g_lx, "R2", "N", NULL), 0);
    khala__links_close(g_lx);
    g_lx = NULL;
    uint8_t rec[10] = {99, 0, 0, 0, 0, 0, 0, 0, 1, 'E'};
    MDB_txn *txn;
    MDB_env *env = raw_env(&txn);
    raw_put(txn, "rels", "R", rec, sizeof(rec));
    raw_commit(env, txn);
    g_lx = open_index(0);
    char b[64];
    uint64_t rels, links;
    khala__links_count(g_lx, &rels, &links);
    cr_assert_eq(rels, 2);
    cr_assert_eq(khala__links_drop(g_lx, "R", 1), 0, "%s", khala__links_errmsg(g_lx));
    khala__links_count(g_lx, &rels, &links);
    cr_assert_eq(rels, 1);
    cr_assert_eq(links, 1);
    cr_assert_str_eq(rels_of(g_lx, "N", b, sizeof(b)), "R2", "the other relationship stays");
}
