/*
 * The start-up check of an LMDB file (daemon/lmdb_check.c), and the two opens that use it: the
 * disk store (daemon/tier_disk_store.c) and the write journal (daemon/writeq.c). A damaged file
 * (cut short, pages overwritten) is refused with KHALA_ECORRUPT and a message naming it; before
 * the check, opening such a file killed the process with SIGBUS or SIGSEGV (found by
 * tests/chaos/chaos_check.c), which Criterion reports as a crash of these tests.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "khala/error.h"
#include "lmdb_check.h"
#include "tier_disk.h"
#include "writeq.h"

static char g_dir[64];   /* the test's temporary directory */
static char g_store[96]; /* a disk store or journal inside it */
static char g_data[128]; /* its data.mdb */
static char g_err[512];

static void setup(void) {
    strcpy(g_dir, "/tmp/khala-lmdbck-XXXXXX");
    cr_assert_not_null(mkdtemp(g_dir));
    snprintf(g_store, sizeof(g_store), "%s/store", g_dir);
    snprintf(g_data, sizeof(g_data), "%s/data.mdb", g_store);
    g_err[0] = '\0';
}

static void teardown(void) {
    harness_rmtree(g_dir);
}

TestSuite(lmdb_check, .init = setup, .fini = teardown, .timeout = 60);

static khala_tier_disk_opts_t opts(void) {
    return (khala_tier_disk_opts_t){.path = g_store,
                                    .level = KHALA_LEVEL_L2,
                                    .max_items = 100000,
                                    .max_bytes = 1u << 30,
                                    .persistent = true,
                                    .max_value = 0};
}

/* A disk store of n items of about 500 bytes, closed. */
static void make_store(int n) {
    khala_tier_disk_opts_t o = opts();
    khala_tier_t *t = NULL;
    cr_assert_eq(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), 0, "%s", g_err);
    char key[32], val[500];
    memset(val, 'v', sizeof(val));
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "key:%d", i);
        khala_tier_value_t v = {val, sizeof(val), (uint64_t)i + 1, 0, KHALA_TYPE_MEMORY_ENTITY};
        cr_assert_eq(t->ops->put(t, key, strlen(key), &v), 0);
    }
    t->ops->close(t);
}

/* A write journal of n queued puts of about 500 bytes, closed. */
static void make_journal(int n) {
    khala_wq_t *q;
    cr_assert_eq(khala__wq_new(100000, 1u << 30, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, g_store, 0, NULL, g_err, sizeof(g_err)), 0, "%s", g_err);
    char key[32], val[500];
    memset(val, 'j', sizeof(val));
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "key:%d", i);
        cr_assert_eq(khala__wq_put(q, key, strlen(key), val, sizeof(val), (uint64_t)i + 1, 0, 0),
                     0);
    }
    khala__wq_free(q);
}

static off_t file_size(void) {
    struct stat st;
    cr_assert_eq(stat(g_data, &st), 0);
    return st.st_size;
}

static void truncate_half(void) {
    cr_assert_eq(truncate(g_data, file_size() / 2), 0);
}

/* Every page after the two meta pages overwritten with 0xff: wild page flags and offsets. */
static void scribble_pages(void) {
    int fd = open(g_data, O_RDWR);
    cr_assert_geq(fd, 0);
    off_t size = file_size();
    char page[4096];
    memset(page, 0xff, sizeof(page));
    for (off_t off = 2 * 4096; off + (off_t)sizeof(page) <= size; off += sizeof(page))
        cr_assert_eq(pwrite(fd, page, sizeof(page), off), (ssize_t)sizeof(page));
    close(fd);
}

static void assert_refused(int rc, const char *what) {
    cr_assert_eq(rc, KHALA_ECORRUPT, "%s: %s (%s)", what, khala_strerror(rc), g_err);
    cr_assert_neq(strstr(g_err, g_data), NULL, "the message names the file: %s", g_err);
    cr_assert_neq(strstr(g_err, "damaged"), NULL, "%s", g_err);
}

Test(lmdb_check, a_sound_file_and_no_file_pass) {
    cr_assert_eq(khala__lmdb_check(g_store, "the test store", g_err, sizeof(g_err)), 0);
    make_store(300);
    cr_assert_eq(khala__lmdb_check(g_store, "the test store", g_err, sizeof(g_err)), 0, "%s",
                 g_err);
}

/* An emptied file passes (LMDB makes a new one) but is never taken silently: what it held is
 * gone, so khalad says so, naming the file (chaos_check's "emptied" damage). */
Test(lmdb_check, an_emptied_file_passes_with_a_warning_naming_it) {
    make_store(30);
    cr_assert_eq(truncate(g_data, 0), 0);
    char log[2048];
    FILE *tmp = tmpfile();
    cr_assert_not_null(tmp);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    cr_assert(saved >= 0 && dup2(fileno(tmp), STDERR_FILENO) >= 0);
    int rc = khala__lmdb_check(g_store, "the test store", g_err, sizeof(g_err));
    fflush(stderr);
    cr_assert(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    rewind(tmp);
    size_t n = fread(log, 1, sizeof(log) - 1, tmp);
    log[n] = '\0';
    fclose(tmp);
    cr_assert_eq(rc, 0, "an empty file is a new store: %s", g_err);
    cr_assert(strstr(log, "\"level\":\"warn\"") && strstr(log, "is empty (0 bytes)") &&
                  strstr(log, g_data) && strstr(log, "the test store"),
              "%s", log);
}

Test(lmdb_check, a_truncated_file_is_found_without_reading_it) {
    make_store(300);
    truncate_half();
    assert_refused(khala__lmdb_check(g_store, "the test store", g_err, sizeof(g_err)), "check");
    cr_assert_neq(strstr(g_err, "truncated"), NULL, "%s", g_err);
}

Test(lmdb_check, a_disk_store_cut_short_is_refused_not_a_crash) {
    make_store(300);
    truncate_half();
    khala_tier_disk_opts_t o = opts();
    khala_tier_t *t = NULL;
    assert_refused(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), "disk store");
    cr_assert_null(t);
}

Test(lmdb_check, a_disk_store_with_overwritten_pages_is_refused_not_a_crash) {
    make_store(300);
    scribble_pages();
    khala_tier_disk_opts_t o = opts();
    khala_tier_t *t = NULL;
    assert_refused(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), "disk store");
    cr_assert_null(t);
}

Test(lmdb_check, a_write_journal_cut_short_is_refused_not_a_crash) {
    make_journal(300);
    truncate_half();
    khala_wq_t *q;
    cr_assert_eq(khala__wq_new(100000, 1u << 30, &q), 0);
    assert_refused(khala__wq_journal_open(q, g_store, 0, NULL, g_err, sizeof(g_err)), "journal");
    khala__wq_free(q);
}

Test(lmdb_check, a_write_journal_with_overwritten_pages_is_refused_not_a_crash) {
    make_journal(300);
    scribble_pages();
    khala_wq_t *q;
    cr_assert_eq(khala__wq_new(100000, 1u << 30, &q), 0);
    int rc = khala__wq_journal_open(q, g_store, 0, NULL, g_err, sizeof(g_err));
    cr_assert_eq(rc, KHALA_ECORRUPT, "%s (%s)", khala_strerror(rc), g_err);
    khala__wq_free(q);
}
