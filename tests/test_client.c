/*
 * Tests of the client API (lib/client.c, include/khala/cache.h) in one process, with the writer
 * (khala__l1_*) in the same process: open and close, copy-out and zero-copy reads, read section
 * misuse, statistics, error messages, the read-only mapping, a segment replaced under an open
 * handle, and a handle used across fork().
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "khala/cache.h"
#include "khala/error.h"
#include "l1_table.h"
#include "readers.h"
#include "reclaim.h"
#include "segment.h"
#include "sys.h"
#include "testutil.h"

/* The SIGSEGV test needs the signal to reach Criterion, not AddressSanitizer's report. */
#if defined(__SANITIZE_ADDRESS__)
#define KHALA_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KHALA_TEST_ASAN 1
#endif
#endif
#ifdef KHALA_TEST_ASAN
/* Default visibility: the sanitizer runtime looks the hook up dynamically. */
__attribute__((visibility("default"))) const char *__asan_default_options(void);
__attribute__((visibility("default"))) const char *__asan_default_options(void) {
    return "handle_segv=0";
}
#endif

static char g_name[KHALA_NAME_MAX + 1];
static khala_l1_t *g_t;
static khala_cache_t *g_c;

static void setup(void) {
    snprintf(g_name, sizeof(g_name), "%s", tu_name("cl"));
    g_t = NULL;
    g_c = NULL;
}

static void teardown(void) {
    khala_cache_close(g_c);
    khala__l1_close(g_t, 1);
    (void)khala__seg_unlink(g_name);
}

TestSuite(client, .init = setup, .fini = teardown, .timeout = 30);

static void put(const char *key, const char *val) {
    int rc = khala__l1_put(g_t, key, strlen(key), val, strlen(val), 0, 0, NULL);
    cr_assert_eq(rc, 0, "put %s: %s", key, khala__l1_errmsg(g_t));
    cr_assert_eq(khala__l1_check(g_t), 0, "%s", khala__l1_errmsg(g_t));
}

static void open_both(void) {
    g_t = tu_writer(g_name, 64, 64 * 1024);
    int rc = khala_cache_open(g_name, NULL, &g_c);
    cr_assert_eq(rc, 0, "khala_cache_open: %d %s", rc, khala_cache_errmsg(NULL));
}

/* Get key through the client into out (NUL-terminated); the return code. */
static int get(khala_cache_t *c, const char *key, char *out, size_t cap) {
    size_t len = 0;
    int rc = khala_cache_get(c, key, strlen(key), out, cap - 1, &len);
    if (rc == 0)
        out[len] = '\0';
    return rc;
}

/* Open and close -------------------------------------------------------------------------- */

Test(client, open_then_close_succeeds) {
    g_t = tu_writer(g_name, 64, 64 * 1024);
    khala_cache_options_t opts;
    memset(&opts, 0xff, sizeof(opts));
    khala_cache_options_init(&opts);
    cr_assert_eq(opts.flags, 0);
    khala_cache_t *c = NULL;
    cr_assert_eq(khala_cache_open(g_name, &opts, &c), 0, "%s", khala_cache_errmsg(NULL));
    cr_assert_not_null(c);
    cr_assert_str_eq(khala_cache_errmsg(c), "");
    khala_cache_close(c);
    khala_cache_close(NULL); /* nothing happens */
    /* Two handles on one cache, each with its own reader slot. */
    khala_cache_t *a = NULL, *b = NULL;
    char buf[8];
    put("k", "v");
    cr_assert_eq(khala_cache_open(g_name, NULL, &a), 0);
    cr_assert_eq(khala_cache_open(g_name, NULL, &b), 0);
    cr_assert_eq(get(a, "k", buf, sizeof(buf)), 0);
    cr_assert_eq(get(b, "k", buf, sizeof(buf)), 0);
    khala_l1_stats_t st;
    khala__l1_stats(g_t, &st);
    cr_assert_eq(st.readers, 2);
    khala_cache_close(a);
    khala_cache_close(b);
    khala__l1_stats(g_t, &st);
    cr_assert_eq(st.readers, 0, "close did not release the reader slots");
}

Test(client, open_of_a_missing_cache_is_enoent_and_names_it) {
    khala_cache_t *c = (khala_cache_t *)&c; /* must stay untouched */
    khala_cache_t *const before = c;
    cr_assert_eq(khala_cache_open(g_name, NULL, &c), -ENOENT);
    cr_assert_eq(c, before, "out-param set on failure");
    const char *msg = khala_cache_errmsg(NULL);
    cr_assert_neq(strstr(msg, g_name), NULL, "message does not name the cache: %s", msg);
}

Test(client, open_with_a_bad_name_is_ename) {
    char longname[KHALA_NAME_MAX + 2];
    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    const char *bad[] = {"", longname, "a/b", "../x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        khala_cache_t *c = NULL;
        cr_assert_eq(khala_cache_open(bad[i], NULL, &c), KHALA_ENAME, "'%s'", bad[i]);
        cr_assert_null(c);
        cr_assert_gt(strlen(khala_cache_errmsg(NULL)), 0);
    }
}

Test(client, open_of_another_layout_version_is_elayout) {
    g_t = tu_writer(g_name, 64, 64 * 1024);
    khala__l1_seg(g_t)->hdr->layout_version = KHALA_LAYOUT_VERSION + 7;
    khala_cache_t *c = NULL;
    cr_assert_eq(khala_cache_open(g_name, NULL, &c), KHALA_ELAYOUT);
    cr_assert_null(c);
    cr_assert_neq(strstr(khala_cache_errmsg(NULL), "layout version"), NULL, "%s",
                  khala_cache_errmsg(NULL));
    khala__l1_seg(g_t)->hdr->layout_version = KHALA_LAYOUT_VERSION;
}

Test(client, open_of_a_corrupted_segment_is_ecorrupt) {
    g_t = tu_writer(g_name, 64, 64 * 1024);
    khala__l1_seg(g_t)->hdr->arena_off += 4096;
    khala_cache_t *c = NULL;
    cr_assert_eq(khala_cache_open(g_name, NULL, &c), KHALA_ECORRUPT);
    cr_assert_null(c);
    khala__l1_seg(g_t)->hdr->arena_off -= 4096;
}

/* Reads ----------------------------------------------------------------------------------- */

Test(client, get_copies_the_value_out) {
    open_both();
    put("key", "the value");
    char buf[32];
    cr_assert_eq(get(g_c, "key", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "the value");
    cr_assert_eq(get(g_c, "other", buf, sizeof(buf)), KHALA_ENOTFOUND);
    /* len may be NULL. */
    cr_assert_eq(khala_cache_get(g_c, "key", 3, buf, sizeof(buf), NULL), 0);
}

Test(client, get_with_a_small_buffer_is_erange_and_names_both_sizes) {
    open_both();
    put("key", "0123456789");
    char buf[4];
    size_t len = 0;
    cr_assert_eq(khala_cache_get(g_c, "key", 3, buf, sizeof(buf), &len), -ERANGE);
    cr_assert_eq(len, 10);
    cr_assert_str_eq(khala_cache_errmsg(g_c), "value is 10 bytes, buffer 4");
}

Test(client, view_is_zero_copy_and_fills_every_field) {
    open_both();
    uint64_t version = 0;
    cr_assert_eq(khala__l1_put(g_t, "key", 3, "payload", 7, 0, 9, &version), 0);
    cr_assert_eq(khala__l1_put(g_t, "ttl", 3, "t", 1, 600000, 3, NULL), 0);
    khala_view_t v1, v2, v3;
    cr_assert_eq(khala_read_begin(g_c), 0);
    cr_assert_eq(khala_cache_view(g_c, "key", 3, &v1), 0);
    cr_assert_eq(v1.len, 7);
    cr_assert_eq(memcmp(v1.data, "payload", 7), 0);
    cr_assert_eq(v1.version, version);
    cr_assert_eq(v1.type, 9);
    cr_assert_eq(v1.ttl_left_ms, -1);
    /* Zero-copy: the same bytes of the mapping each time, not a copy. */
    cr_assert_eq(khala_cache_view(g_c, "key", 3, &v2), 0);
    cr_assert_eq(v1.data, v2.data);
    cr_assert_eq(khala_cache_view(g_c, "ttl", 3, &v3), 0);
    cr_assert_gt(v3.ttl_left_ms, 0);
    cr_assert_leq(v3.ttl_left_ms, 600000);
    cr_assert_eq(v3.type, 3);
    khala_read_end(g_c);
}

Test(client, view_of_a_missing_key_is_enotfound_and_leaves_the_view) {
    open_both();
    khala_view_t view;
    memset(&view, 0x5a, sizeof(view));
    khala_view_t before = view;
    cr_assert_eq(khala_read_begin(g_c), 0);
    cr_assert_eq(khala_cache_view(g_c, "none", 4, &view), KHALA_ENOTFOUND);
    khala_read_end(g_c);
    cr_assert_eq(memcmp(&view, &before, sizeof(view)), 0, "view changed on failure");
}

Test(client, nested_read_begin_is_esection) {
    open_both();
    cr_assert_eq(khala_read_begin(g_c), 0);
    cr_assert_eq(khala_read_begin(g_c), KHALA_ESECTION);
    cr_assert_gt(strlen(khala_cache_errmsg(g_c)), 0);
    /* The first section is still open and usable. */
    put("k", "v");
    khala_view_t view;
    cr_assert_eq(khala_cache_view(g_c, "k", 1, &view), 0);
    khala_read_end(g_c);
    /* And a new one may begin after it ends. */
    cr_assert_eq(khala_read_begin(g_c), 0);
    khala_read_end(g_c);
}

Test(client, view_outside_a_section_is_esection) {
    open_both();
    put("k", "v");
    khala_view_t view;
    cr_assert_eq(khala_cache_view(g_c, "k", 1, &view), KHALA_ESECTION);
    cr_assert_eq(khala_read_begin(g_c), 0);
    khala_read_end(g_c);
    cr_assert_eq(khala_cache_view(g_c, "k", 1, &view), KHALA_ESECTION);
}

Test(client, get_inside_a_section_is_esection) {
    open_both();
    put("k", "v");
    char buf[8];
    cr_assert_eq(khala_read_begin(g_c), 0);
    cr_assert_eq(get(g_c, "k", buf, sizeof(buf)), KHALA_ESECTION);
    cr_assert_gt(strlen(khala_cache_errmsg(g_c)), 0);
    khala_read_end(g_c);
    cr_assert_eq(get(g_c, "k", buf, sizeof(buf)), 0);
}

Test(client, read_end_without_a_section_does_nothing) {
    open_both();
    khala_read_end(g_c);
    put("k", "v");
    char buf[8];
    cr_assert_eq(get(g_c, "k", buf, sizeof(buf)), 0);
    khala_read_end(g_c);
    cr_assert_eq(khala_read_begin(g_c), 0);
    khala_read_end(g_c);
    khala_read_end(g_c);
}

Test(client, writing_into_a_view_faults, .signal = SIGSEGV) {
    open_both();
    put("k", "value");
    khala_view_t view;
    cr_assert_eq(khala_read_begin(g_c), 0);
    cr_assert_eq(khala_cache_view(g_c, "k", 1, &view), 0);
    /* The process dies below, before .fini: remove the names now (the mappings stay). The
     * writer removes them itself: an outsider's removal leaves a live writer its lock file. */
    cr_assert_eq(khala__seg_unlink_locked(khala__l1_seg(g_t)), 0);
    /* The mapping is PROT_READ: this store must raise SIGSEGV. */
    volatile char *p = (volatile char *)(uintptr_t)view.data;
    p[0] = 'X';
    khala_read_end(g_c);
    cr_assert_fail("a write into the read-only mapping did not fault");
}

/* Stats and messages ---------------------------------------------------------------------- */

Test(client, stats_count_hits_and_misses) {
    open_both();
    put("a", "1");
    put("b", "2");
    khala_cache_stats_t st;
    cr_assert_eq(khala_cache_stats(g_c, &st), 0);
    cr_assert_eq(st.hits, 0);
    cr_assert_eq(st.misses, 0);
    char buf[8];
    cr_assert_eq(get(g_c, "a", buf, sizeof(buf)), 0);
    cr_assert_eq(get(g_c, "b", buf, sizeof(buf)), 0);
    cr_assert_eq(get(g_c, "a", buf, sizeof(buf)), 0);
    cr_assert_eq(get(g_c, "x", buf, sizeof(buf)), KHALA_ENOTFOUND);
    cr_assert_eq(get(g_c, "y", buf, sizeof(buf)), KHALA_ENOTFOUND);
    khala_view_t view;
    cr_assert_eq(khala_read_begin(g_c), 0);
    cr_assert_eq(khala_cache_view(g_c, "b", 1, &view), 0);
    cr_assert_eq(khala_cache_view(g_c, "z", 1, &view), KHALA_ENOTFOUND);
    khala_read_end(g_c);
    /* Bad calls count as neither. */
    cr_assert_eq(khala_cache_get(g_c, "", 0, buf, sizeof(buf), NULL), KHALA_EKEY);
    cr_assert_eq(khala_cache_stats(g_c, &st), 0);
    cr_assert_eq(st.hits, 4);
    cr_assert_eq(st.misses, 3);
    /* The writer sums the same counts from the reader slots. */
    khala_l1_stats_t w;
    khala__l1_stats(g_t, &w);
    cr_assert_eq(w.reader_hits, 4);
    cr_assert_eq(w.reader_misses, 3);
    cr_assert_eq(w.readers, 1);
}

static void *thread_reads(void *arg) {
    khala_cache_t *c = arg;
    char buf[8];
    for (int i = 0; i < 5; i++)
        if (get(c, "a", buf, sizeof(buf)) != 0)
            return (void *)1;
    if (get(c, "missing", buf, sizeof(buf)) != KHALA_ENOTFOUND)
        return (void *)1;
    return NULL;
}

Test(client, stats_sum_over_threads_including_exited_ones) {
    open_both();
    put("a", "1");
    pthread_t th[3];
    for (int i = 0; i < 3; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, thread_reads, g_c), 0);
    for (int i = 0; i < 3; i++) {
        void *ret;
        cr_assert_eq(pthread_join(th[i], &ret), 0);
        cr_assert_null(ret);
    }
    char buf[8];
    cr_assert_eq(get(g_c, "a", buf, sizeof(buf)), 0);
    khala_cache_stats_t st;
    cr_assert_eq(khala_cache_stats(g_c, &st), 0);
    cr_assert_eq(st.hits, 16);
    cr_assert_eq(st.misses, 3);
    /* Exited threads gave their slots back. */
    khala_l1_stats_t w;
    khala__l1_stats(g_t, &w);
    cr_assert_eq(w.readers, 1);
}

Test(client, errmsg_names_the_offending_key_size) {
    open_both();
    char key[KHALA_KEY_MAX + 1], buf[8];
    memset(key, 'k', sizeof(key));
    cr_assert_eq(khala_cache_get(g_c, key, sizeof(key), buf, sizeof(buf), NULL), KHALA_EKEY);
    cr_assert_str_eq(khala_cache_errmsg(g_c), "key is 251 bytes, max 250");
    cr_assert_eq(khala_cache_get(g_c, key, 0, buf, sizeof(buf), NULL), KHALA_EKEY);
    cr_assert_str_eq(khala_cache_errmsg(g_c), "key is empty");
}

Test(client, errmsg_belongs_to_its_handle) {
    open_both();
    khala_cache_t *other = NULL;
    cr_assert_eq(khala_cache_open(g_name, NULL, &other), 0);
    char buf[8];
    cr_assert_eq(khala_cache_get(g_c, "", 0, buf, sizeof(buf), NULL), KHALA_EKEY);
    cr_assert_str_eq(khala_cache_errmsg(other), "");
    cr_assert_str_eq(khala_cache_errmsg(NULL), "");
    cr_assert_str_neq(khala_cache_errmsg(g_c), "");
    khala_cache_close(other);
}

static void *thread_errmsg(void *arg) {
    return (void *)(uintptr_t)(strcmp(khala_cache_errmsg(arg), "") == 0);
}

Test(client, errmsg_is_per_thread) {
    open_both();
    char buf[8];
    cr_assert_eq(khala_cache_get(g_c, "", 0, buf, sizeof(buf), NULL), KHALA_EKEY);
    pthread_t th;
    void *ret;
    cr_assert_eq(pthread_create(&th, NULL, thread_errmsg, g_c), 0);
    cr_assert_eq(pthread_join(th, &ret), 0);
    cr_assert_eq((uintptr_t)ret, 1, "another thread sees this thread's message");
}

/* Replacement and fork -------------------------------------------------------------------- */

Test(client, handle_reattaches_when_the_writer_replaces_the_segment) {
    open_both();
    put("k", "old");
    put("only-old", "x");
    char buf[16];
    cr_assert_eq(get(g_c, "k", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "old");

    khala__l1_close(g_t, 0); /* the writer goes; the files stay */
    g_t = tu_writer(g_name, 128, 128 * 1024);
    put("k", "new");
    put("only-new", "y");

    cr_assert_eq(get(g_c, "k", buf, sizeof(buf)), 0, "%s", khala_cache_errmsg(g_c));
    cr_assert_str_eq(buf, "new");
    cr_assert_eq(get(g_c, "only-new", buf, sizeof(buf)), 0);
    cr_assert_eq(get(g_c, "only-old", buf, sizeof(buf)), KHALA_ENOTFOUND);
    /* Views follow too, and the reader holds a slot in the new segment. */
    khala_view_t view;
    cr_assert_eq(khala_read_begin(g_c), 0);
    cr_assert_eq(khala_cache_view(g_c, "k", 1, &view), 0);
    cr_assert_eq(memcmp(view.data, "new", 3), 0);
    khala_read_end(g_c);
    khala_l1_stats_t w;
    khala__l1_stats(g_t, &w);
    cr_assert_eq(w.readers, 1);
    cr_assert_eq(w.reader_hits, 3);
    /* The handle's counts carry over the replacement. */
    khala_cache_stats_t st;
    cr_assert_eq(khala_cache_stats(g_c, &st), 0);
    cr_assert_eq(st.hits, 4);
    cr_assert_eq(st.misses, 1);
}

Test(client, read_begin_reattaches_when_the_segment_is_replaced) {
    open_both();
    put("k", "old");
    cr_assert_eq(khala_read_begin(g_c), 0);
    khala_read_end(g_c);
    khala__l1_close(g_t, 0);
    g_t = tu_writer(g_name, 64, 64 * 1024);
    put("k", "new");
    khala_view_t view;
    cr_assert_eq(khala_read_begin(g_c), 0, "%s", khala_cache_errmsg(g_c));
    cr_assert_eq(khala_cache_view(g_c, "k", 1, &view), 0);
    cr_assert_eq(memcmp(view.data, "new", 3), 0);
    khala_read_end(g_c);
}

/* Risk: while a segment was being replaced, gets failed with KHALA_ELAYOUT, KHALA_ECORRUPT or
 * -ENOENT, where a miss (and a question to khalad) is the right answer. Views still need L1. */
Test(client, get_during_a_replacement_is_a_miss_that_asks_khalad) {
    open_both();
    put("k", "v");
    char buf[8];
    cr_assert_eq(get(g_c, "k", buf, sizeof(buf)), 0);
    /* A writer marked the segment replaced and removed it, but made no new one (yet). */
    khala_store_release(&khala__l1_seg(g_t)->hdr->state, KHALA_SEG_REPLACED);
    cr_assert_eq(khala__seg_unlink(g_name), 0);
    cr_assert_eq(get(g_c, "k", buf, sizeof(buf)), KHALA_ENOTFOUND, "%s", khala_cache_errmsg(g_c));
    cr_assert_neq(strstr(khala_cache_errmsg(g_c), "khalad"), NULL, "%s", khala_cache_errmsg(g_c));
    cr_assert_eq(khala_read_begin(g_c), KHALA_ELAYOUT);
    cr_assert_neq(strstr(khala_cache_errmsg(g_c), g_name), NULL, "%s", khala_cache_errmsg(g_c));
    /* The new data file exists but its header is not written yet (magic still 0). */
    char dname[128];
    khala__seg_shm_names(g_name, dname, NULL, sizeof(dname));
    int fd = khala__sys_shm_open(dname, 1, 1, 0600);
    cr_assert_geq(fd, 0, "%s", strerror(-fd));
    cr_assert_eq(khala__sys_fd_resize(fd, 2 * KHALA_SEG_HEADER_SIZE), 0);
    cr_assert_eq(get(g_c, "k", buf, sizeof(buf)), KHALA_ENOTFOUND, "%s", khala_cache_errmsg(g_c));
    khala__sys_close(fd);
    cr_assert_eq(khala__seg_unlink(g_name), 0);
    /* Once a writer is back, the same handle reads L1 again. */
    khala__l1_close(g_t, 0);
    g_t = tu_writer(g_name, 64, 64 * 1024);
    put("k", "back");
    cr_assert_eq(get(g_c, "k", buf, sizeof(buf)), 0, "%s", khala_cache_errmsg(g_c));
    cr_assert_str_eq(buf, "back");
}

/* Mappings of the data files of g_name in this process. */
static int data_mappings(void) {
    char want[160], line[512];
    snprintf(want, sizeof(want), "/khala.%s.data", g_name);
    FILE *f = fopen("/proc/self/maps", "r");
    cr_assert_not_null(f);
    int n = 0;
    while (fgets(line, sizeof(line), f))
        n += strstr(line, want) != NULL;
    fclose(f);
    return n;
}

/* Risk: every replaced segment stayed mapped until close (26 mappings after 25 replacements). */
Test(client, replaced_segments_are_unmapped_once_no_thread_uses_them) {
    open_both();
    put("k", "v0");
    char buf[16];
    cr_assert_eq(get(g_c, "k", buf, sizeof(buf)), 0);
    int base = data_mappings();
    cr_assert_geq(base, 1);
    for (int i = 1; i <= 25; i++) {
        khala__l1_close(g_t, 0);
        g_t = tu_writer(g_name, 64, 64 * 1024);
        char v[16];
        snprintf(v, sizeof(v), "v%d", i);
        put("k", v);
        cr_assert_eq(get(g_c, "k", buf, sizeof(buf)), 0, "%s", khala_cache_errmsg(g_c));
        cr_assert_str_eq(buf, v);
    }
    cr_assert_eq(data_mappings(), base, "%d data mappings after 25 replacements, %d at first",
                 data_mappings(), base);
}

/* A replaced segment another thread still reads in stays mapped until that thread moves on. */
static void *view_holder(void *arg) {
    int *pipefd = arg;
    khala_view_t v;
    if (khala_read_begin(g_c) != 0 || khala_cache_view(g_c, "k", 1, &v) != 0)
        return (void *)1;
    char b = 'r';
    if (write(pipefd[1], &b, 1) != 1 || read(pipefd[0], &b, 1) != 1) /* wait for the go */
        return (void *)2;
    int same = memcmp(v.data, "old", 3) == 0;
    khala_read_end(g_c);
    char buf[16];
    if (!same || get(g_c, "k", buf, sizeof(buf)) != 0 || strcmp(buf, "new") != 0)
        return (void *)3;
    return NULL;
}

Test(client, replaced_segment_stays_mapped_while_another_thread_views_it) {
    open_both();
    put("k", "old");
    int to_main[2], to_thread[2];
    cr_assert_eq(pipe(to_main), 0);
    cr_assert_eq(pipe(to_thread), 0);
    int fds[2] = {to_thread[0], to_main[1]};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, view_holder, fds), 0);
    char b;
    cr_assert_eq(read(to_main[0], &b, 1), 1);
    /* Replace the segment and move this thread to the new one while the other thread views
     * the old one. */
    khala__l1_close(g_t, 0);
    g_t = tu_writer(g_name, 64, 64 * 1024);
    put("k", "new");
    char buf[16];
    cr_assert_eq(get(g_c, "k", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "new");
    /* The writer's mapping of the new segment, and the client's of the new and the old. */
    cr_assert_eq(data_mappings(), 3, "the viewed segment is still mapped: %d", data_mappings());
    cr_assert_eq(write(to_thread[1], "g", 1), 1);
    void *ret;
    cr_assert_eq(pthread_join(th, &ret), 0);
    cr_assert_null(ret, "thread check %p", ret);
    cr_assert_eq(data_mappings(), 2, "unmapped once the last thread moved on");
}

/* Index of the slot owned by pid in the writer's view of the readers file, or -1. */
static int slot_of(pid_t pid) {
    khala_seg_t *s = khala__l1_seg(g_t);
    for (uint32_t i = 0; i < s->nslots; i++)
        if (khala_load_acquire(&khala__seg_slot(s, i)->pid) == (uint64_t)pid)
            return (int)i;
    return -1;
}

Test(client, forked_child_uses_the_parent_handle_with_its_own_slot) {
    open_both();
    put("k", "shared");
    char buf[16];
    cr_assert_eq(get(g_c, "k", buf, sizeof(buf)), 0);
    pid_t parent = getpid();
    int parent_slot = slot_of(parent);
    cr_assert_geq(parent_slot, 0);

    pid_t child = fork();
    cr_assert_neq(child, -1);
    if (child == 0) {
        /* Exit codes say which check failed; never return into Criterion. */
        if (get(g_c, "k", buf, sizeof(buf)) != 0 || strcmp(buf, "shared") != 0)
            _exit(10);
        int mine = slot_of(getpid());
        if (mine < 0)
            _exit(11);
        if (mine == parent_slot || slot_of(parent) != parent_slot)
            _exit(12);
        khala_view_t view;
        if (khala_read_begin(g_c) != 0 || khala_cache_view(g_c, "k", 1, &view) != 0 ||
            memcmp(view.data, "shared", 6) != 0)
            _exit(13);
        khala_read_end(g_c);
        khala_cache_close(g_c);
        /* Closing in the child released the child's slot, not the parent's. */
        if (slot_of(getpid()) >= 0 || slot_of(parent) != parent_slot)
            _exit(14);
        _exit(0);
    }
    int status = 0;
    cr_assert_eq(waitpid(child, &status, 0), child);
    cr_assert(WIFEXITED(status), "child died with signal %d", WTERMSIG(status));
    cr_assert_eq(WEXITSTATUS(status), 0, "child failed check %d", WEXITSTATUS(status));
    /* The parent's handle is unaffected. */
    cr_assert_eq(slot_of(parent), parent_slot);
    put("k", "after");
    cr_assert_eq(get(g_c, "k", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "after");
}

static void *thread_gets_k(void *arg) {
    char buf[16];
    return get(arg, "k", buf, sizeof(buf)) == 0 && strcmp(buf, "shared") == 0 ? NULL : (void *)1;
}

/* Bug: in a child whose first call ran on a thread started after the fork (a thread pool), the
 * forking thread kept pointers to its freed thread state and crashed on its next call. */
Test(client, forked_child_whose_first_call_is_on_a_new_thread_reads_on_the_forking_thread) {
    open_both();
    put("k", "shared");
    char buf[16];
    cr_assert_eq(get(g_c, "k", buf, sizeof(buf)), 0); /* this thread has a state to leave */

    pid_t child = fork();
    cr_assert_neq(child, -1);
    if (child == 0) {
        pthread_t th;
        void *ret = (void *)1;
        if (pthread_create(&th, NULL, thread_gets_k, g_c) != 0 || pthread_join(th, &ret) != 0 ||
            ret != NULL)
            _exit(10);
        if (get(g_c, "k", buf, sizeof(buf)) != 0 || strcmp(buf, "shared") != 0)
            _exit(11);
        khala_cache_close(g_c);
        _exit(0);
    }
    int status = 0;
    cr_assert_eq(waitpid(child, &status, 0), child);
    cr_assert(WIFEXITED(status), "child died with signal %d", WTERMSIG(status));
    cr_assert_eq(WEXITSTATUS(status), 0, "child failed check %d", WEXITSTATUS(status));
}

/* Bug: a child forked inside a read section that called khala_read_end ended the parent's
 * section (the slot is shared through the mapping), so the writer freed and reused what the
 * parent's live views pointed at. */
Test(client, read_end_in_a_child_forked_inside_a_section_leaves_the_parents_section) {
    open_both();
    char val[200];
    memset(val, 'p', sizeof(val) - 1);
    val[sizeof(val) - 1] = '\0';
    put("k", val);
    khala_view_t view;
    cr_assert_eq(khala_read_begin(g_c), 0);
    cr_assert_eq(khala_cache_view(g_c, "k", 1, &view), 0);
    pid_t child = fork();
    cr_assert_neq(child, -1);
    if (child == 0) {
        khala_view_t v2;
        /* A view in the parent's section would record hits in the parent's slot. */
        if (khala_cache_view(g_c, "k", 1, &v2) != KHALA_ESECTION)
            _exit(10);
        khala_read_end(g_c);
        /* The child can open a section of its own afterwards. */
        if (khala_read_begin(g_c) != 0 || khala_cache_view(g_c, "k", 1, &v2) != 0)
            _exit(11);
        khala_read_end(g_c);
        _exit(0);
    }
    int status = 0;
    cr_assert_eq(waitpid(child, &status, 0), child);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
    int idx = slot_of(getpid());
    cr_assert_geq(idx, 0);
    cr_assert_neq(khala_load_acquire(&khala__seg_slot(khala__l1_seg(g_t), (uint32_t)idx)->epoch), 0,
                  "the parent's section is still open");
    /* Retire the viewed item and try hard to reuse its memory: the open section forbids it. */
    char other[200];
    memset(other, 'o', sizeof(other) - 1);
    other[sizeof(other) - 1] = '\0';
    put("k", other);
    cr_assert_geq(khala__l1_maintain(g_t), 0);
    khala_l1_stats_t st;
    khala__l1_stats(g_t, &st);
    cr_assert_geq(st.retired, 1, "the item the parent views stays retired, not freed");
    for (int i = 0; i < 40; i++) {
        char key[16];
        snprintf(key, sizeof(key), "fill%d", i);
        (void)khala__l1_put(g_t, key, strlen(key), other, sizeof(other) - 1, 0, 0, NULL);
        (void)khala__l1_maintain(g_t);
    }
    for (size_t i = 0; i < sizeof(val) - 1; i++)
        cr_assert_eq(((const char *)view.data)[i], 'p', "byte %zu of the parent's view changed", i);
    khala_read_end(g_c);
}

/* Bug: a child kept the parent's open file description of the readers file until its next
 * library call, and with it the parent's slot lock: a parent killed inside a read section was
 * never reaped while such a child lived, and every put needing memory failed. */
Test(client, child_does_not_keep_its_parents_slot_lock) {
    g_t = tu_writer(g_name, 64, 64 * 1024);
    put("k", "v");
    int ready[2];
    cr_assert_eq(pipe(ready), 0);
    pid_t reader = fork();
    cr_assert_neq(reader, -1);
    if (reader == 0) {
        khala_cache_t *c = NULL;
        char buf[8];
        if (khala_cache_open(g_name, NULL, &c) != 0 || get(c, "k", buf, sizeof(buf)) != 0)
            _exit(10);
        int started[2];
        if (pipe(started) != 0)
            _exit(13);
        pid_t idle = fork(); /* a child that never calls the library again */
        if (idle == 0) {
            /* fork() has returned here, so the fork handlers have run. */
            if (write(started[1], "s", 1) != 1)
                _exit(1);
            for (;;)
                pause();
        }
        char b;
        if (idle < 0 || read(started[0], &b, 1) != 1)
            _exit(14);
        khala_view_t view;
        if (idle < 0 || khala_read_begin(c) != 0 || khala_cache_view(c, "k", 1, &view) != 0)
            _exit(11);
        if (write(ready[1], &idle, sizeof(idle)) != (ssize_t)sizeof(idle))
            _exit(12);
        for (;;)
            pause(); /* inside the section, until killed */
    }
    close(ready[1]);
    pid_t idle = 0;
    cr_assert_eq(read(ready[0], &idle, sizeof(idle)), (ssize_t)sizeof(idle));
    close(ready[0]);
    put("k", "w"); /* the old item is retired, pinned by the reader's section */
    cr_assert_eq(kill(reader, SIGKILL), 0);
    int status;
    cr_assert_eq(waitpid(reader, &status, 0), reader);
    /* The reader's idle child still lives; the dead reader's slot must be reaped anyway. */
    int reaped = khala__readers_reap(khala__l1_seg(g_t), UINT64_MAX);
    kill(idle, SIGKILL);
    waitpid(idle, &status, 0);
    cr_assert_eq(reaped, 1, "the dead reader's slot is reaped while its child lives: %d", reaped);
    cr_assert_geq(khala__l1_maintain(g_t), 0);
    khala_l1_stats_t st;
    khala__l1_stats(g_t, &st);
    cr_assert_eq(st.retired, 0);
}

Test(client, a_handle_opened_after_another_was_closed_has_its_own_thread_state) {
    open_both();
    put("key", "the value");
    char buf[32];
    cr_assert_eq(get(g_c, "key", buf, sizeof(buf)), 0);
    /* The thread's fast path remembers (handle id, state) of its last handle: a new handle
     * must not inherit the closed one's freed state (ASan saw a use-after-free here). */
    for (int i = 0; i < 3; i++) {
        khala_cache_close(g_c);
        g_c = NULL;
        cr_assert_eq(khala_cache_open(g_name, NULL, &g_c), 0, "%s", khala_cache_errmsg(NULL));
        cr_assert_eq(get(g_c, "key", buf, sizeof(buf)), 0);
        cr_assert_str_eq(buf, "the value");
    }
}
