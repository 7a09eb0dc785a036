/*
 * The write queue of a slower level (daemon/writeq.c): order, coalescing per key, the bounds
 * (refused pushes change nothing), and the journal: what a queue held survives the process,
 * in order, removals synced are gone, a damaged record is refused.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "khala/error.h"
#include "sys.h"
#include "writeq.h"

static char g_dir[64];

static void setup(void) {
    snprintf(g_dir, sizeof(g_dir), "/tmp/khala-wq-%d", (int)getpid());
    mkdir(g_dir, 0700);
}

static void teardown(void) {
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(writeq, .init = setup, .fini = teardown, .timeout = 30);

static void put(khala_wq_t *q, const char *k, const char *v, uint64_t ver) {
    cr_assert_eq(khala__wq_put(q, k, strlen(k), v, strlen(v), ver, 0, 0), 0);
}

/* The queue as "kind:key=value" items, in order. */
static void expect(khala_wq_t *q, const char *const *want, size_t n) {
    size_t i = 0;
    for (khala_wq_op_t *op = khala__wq_head(q); op; op = op->next, i++) {
        char got[600];
        snprintf(got, sizeof(got), "%c:%.*s=%.*s",
                 op->kind == KHALA_WQ_PUT   ? 'P'
                 : op->kind == KHALA_WQ_DEL ? 'D'
                                            : 'I',
                 (int)op->klen, (const char *)op->key, (int)op->vlen,
                 op->val ? (const char *)op->val : "");
        cr_assert_lt(i, n, "extra op %s", got);
        cr_assert_str_eq(got, want[i], "op %zu", i);
    }
    cr_assert_eq(i, n, "%zu ops, want %zu", i, n);
}

Test(writeq, keeps_order_and_coalesces_writes_to_one_key_at_the_tail) {
    khala_wq_t *q;
    cr_assert_eq(khala__wq_new(100, 1 << 20, &q), 0);
    put(q, "a", "1", 1);
    put(q, "b", "1", 2);
    cr_assert_eq(khala__wq_invalidate(q, "x", 1, -1), 0);
    put(q, "a", "2", 3); /* replaces a=1, after the invalidation */
    cr_assert_eq(khala__wq_del(q, "b", 1), 0);
    const char *want[] = {"I:x=", "P:a=2", "D:b="};
    expect(q, want, 3);
    khala_wq_stats_t st;
    khala__wq_stats(q, &st);
    cr_assert_eq(st.len, 3);
    cr_assert_eq(st.coalesced, 2);
    cr_assert_eq(st.bytes, 4);
    cr_assert_eq(khala__wq_find(q, "a", 1)->version, 3);
    cr_assert_null(khala__wq_find(q, "x", 1), "invalidations are not found by key");
    khala__wq_remove(q, khala__wq_head(q));
    const char *want2[] = {"P:a=2", "D:b="};
    expect(q, want2, 2);
    khala__wq_free(q);
}

Test(writeq, a_full_queue_refuses_and_changes_nothing) {
    khala_wq_t *q;
    cr_assert_eq(khala__wq_new(2, 10, &q), 0);
    put(q, "a", "1234", 1);
    put(q, "b", "12", 2);
    cr_assert_eq(khala__wq_put(q, "c", 1, "1", 1, 3, 0, 0), KHALA_EQUEUE, "ops bound");
    cr_assert_eq(khala__wq_room(q, "c", 1, 0), 0);
    cr_assert_eq(khala__wq_room(q, "a", 1, 6), 1, "a rewrite of a queued key replaces it");
    cr_assert_eq(khala__wq_put(q, "a", 1, "12345678", 8, 4, 0, 0), KHALA_EQUEUE, "bytes bound");
    const char *want[] = {"P:a=1234", "P:b=12"};
    expect(q, want, 2);
    khala_wq_stats_t st;
    khala__wq_stats(q, &st);
    cr_assert_eq(st.refused, 2);
    khala__wq_free(q);
}

Test(writeq, the_journal_brings_the_queue_back_in_order) {
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/j", g_dir);
    khala_wq_t *q;
    char err[256];
    uint64_t n = 99;
    cr_assert_eq(khala__wq_new(100, 1 << 20, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, &n, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(n, 0);
    put(q, "a", "1", 1);
    put(q, "b", "1", 2);
    cr_assert_eq(khala__wq_invalidate(q, "p:", 2, 3), 0);
    put(q, "a", "2", 3);
    cr_assert_eq(khala__wq_del(q, "c", 1), 0);
    /* Send the first (b=1), sync: it must not come back. */
    khala__wq_remove(q, khala__wq_head(q));
    cr_assert_eq(khala__wq_sync(q), 0);
    /* A process that sends the next (the invalidation) and dies before syncing: the journal
     * still has it (it will be sent twice: harmless). */
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        khala__wq_remove(q, khala__wq_head(q));
        _exit(0); /* no sync, no free: as a SIGKILL would leave it */
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    khala__wq_free(q); /* this process never removed it */

    cr_assert_eq(khala__wq_new(1, 1, &q), 0); /* bounds do not apply to what comes back */
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, &n, err, sizeof(err)), 0, "%s", err);
    const char *want[] = {"I:p:=", "P:a=2", "D:c="};
    expect(q, want, 3);
    cr_assert_eq(n, 3);
    cr_assert_eq(khala__wq_head(q)->type, 3);
    cr_assert_eq(khala__wq_find(q, "a", 1)->version, 3);
    /* A graceful end syncs what was removed. */
    while (khala__wq_head(q))
        khala__wq_remove(q, khala__wq_head(q));
    khala__wq_free(q);

    cr_assert_eq(khala__wq_new(100, 1 << 20, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, &n, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(n, 0, "a drained and synced queue comes back empty");
    cr_assert_null(khala__wq_head(q));
    khala__wq_free(q);
}

/* A journal in dir holding one put, a=val at version 1, written and closed. */
static void journal_one_put(const char *dir, const char *val) {
    khala_wq_t *q;
    char err[256];
    cr_assert_eq(khala__wq_new(100, 1 << 20, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, NULL, err, sizeof(err)), 0, "%s", err);
    put(q, "a", val, 1);
    khala__wq_free(q);
}

/* Rewrite the journal's first record in dir through edit(bytes, size). */
static void edit_first_record(const char *dir, void (*edit)(uint8_t *rec, size_t size)) {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_cursor *cur;
    MDB_val k, v;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_open(env, dir, 0, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
    cr_assert_eq(mdb_cursor_open(txn, dbi, &cur), 0);
    cr_assert_eq(mdb_cursor_get(cur, &k, &v, MDB_FIRST), 0);
    uint8_t rec[256];
    cr_assert_leq(v.mv_size, sizeof(rec));
    memcpy(rec, v.mv_data, v.mv_size);
    edit(rec, v.mv_size);
    MDB_val nv = {v.mv_size, rec};
    cr_assert_eq(mdb_cursor_put(cur, &k, &nv, MDB_CURRENT), 0);
    mdb_cursor_close(cur);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

static void flip_last_value_byte(uint8_t *rec, size_t size) {
    rec[size - 1] ^= 0x01;
}

/* A record as a build before the checksum wrote it: magic KJQ1, pad2 (bytes 20..23) zero. */
static void make_v1(uint8_t *rec, size_t size) {
    (void)size;
    const uint32_t v1 = 0x4b4a5131u;
    memcpy(rec, &v1, sizeof(v1));
    memset(rec + 20, 0, 4);
}

/* LMDB has no checksums: a flipped byte of a queued value would be replayed to L2 as the value.
 * Every record carries XXH32 of itself; one that does not match is refused. */
Test(writeq, a_flipped_value_byte_in_the_journal_is_ecorrupt) {
    char dir[128], err[256];
    snprintf(dir, sizeof(dir), "%s/j", g_dir);
    journal_one_put(dir, "value");
    khala_wq_t *q;
    edit_first_record(dir, flip_last_value_byte);
    cr_assert_eq(khala__wq_new(100, 1 << 20, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, NULL, err, sizeof(err)), KHALA_ECORRUPT,
                 "a damaged value was read back");
    cr_assert(strstr(err, "damaged"), "message: %s", err);
    cr_assert_null(khala__wq_head(q));
    khala__wq_free(q);
}

/* Journals written before the checksum are read back. */
Test(writeq, a_record_of_the_first_format_is_read_unchecked) {
    char dir[128], err[256];
    uint64_t n = 0;
    snprintf(dir, sizeof(dir), "%s/j", g_dir);
    journal_one_put(dir, "value");
    khala_wq_t *q;
    edit_first_record(dir, make_v1);
    cr_assert_eq(khala__wq_new(100, 1 << 20, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, &n, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(n, 1);
    const char *want[] = {"P:a=value"};
    expect(q, want, 1);
    khala__wq_free(q);
}

static void set_unknown_kind(uint8_t *rec, size_t size) {
    (void)size;
    rec[4] = 7; /* no such kind */
}

Test(writeq, a_damaged_journal_record_is_ecorrupt_and_named) {
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/j", g_dir);
    journal_one_put(dir, "1");
    khala_wq_t *q;
    char err[256];
    /* Overwrite the record with bytes of the right size and the wrong content. */
    edit_first_record(dir, set_unknown_kind);

    cr_assert_eq(khala__wq_new(100, 1 << 20, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, NULL, err, sizeof(err)), KHALA_ECORRUPT);
    cr_assert(strstr(err, dir) && strstr(err, "damaged"), "message: %s", err);
    cr_assert_null(khala__wq_head(q), "nothing half-read is queued");
    khala__wq_free(q);
}

Test(writeq, a_journal_where_a_file_is_is_an_error_naming_it) {
    char path[128];
    snprintf(path, sizeof(path), "%s/file", g_dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fclose(f);
    khala_wq_t *q;
    char err[256] = "";
    cr_assert_eq(khala__wq_new(100, 1 << 20, &q), 0);
    cr_assert_neq(khala__wq_journal_open(q, path, 0, NULL, err, sizeof(err)), 0);
    cr_assert(strstr(err, path), "message: %s", err);
    khala__wq_free(q);
}

/* Out of memory (malloc and calloc are wrapped for this test executable: tests/CMakeLists.txt;
 * calloc too, since the compiler turns uthash's malloc-then-zero into calloc): a push that
 * cannot get memory, for its entry or for the index's own table and buckets, returns -ENOMEM
 * and leaves the queue as it was; khalad never aborts for it. */
void *__real_malloc(size_t size);
void *__wrap_malloc(size_t size);
void *__real_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size);
static int g_fail_in;  /* the g_fail_in-th allocation from now fails; 0 = none */
static int g_fail_all; /* every allocation fails while set */
void *__wrap_malloc(size_t size) {
    if (g_fail_all || (g_fail_in > 0 && --g_fail_in == 0))
        return NULL;
    return __real_malloc(size);
}
void *__wrap_calloc(size_t n, size_t size) {
    if (g_fail_all || (g_fail_in > 0 && --g_fail_in == 0))
        return NULL;
    return __real_calloc(n, size);
}
void *__real_realloc(void *p, size_t size);
void *__wrap_realloc(void *p, size_t size);
void *__wrap_realloc(void *p, size_t size) {
    if (g_fail_all || (g_fail_in > 0 && --g_fail_in == 0))
        return NULL;
    return __real_realloc(p, size);
}

Test(writeq, out_of_memory_in_a_push_changes_nothing) {
    khala_wq_t *q;
    cr_assert_eq(khala__wq_new(100000, 1 << 30, &q), 0);
    int index_failures = 0;
    for (int i = 0; i < 2000; i++) {
        char key[16];
        snprintf(key, sizeof(key), "k%d", i);
        for (int at = 1;; at++) {
            g_fail_in = at;
            int rc = khala__wq_put(q, key, strlen(key), "v", 1, (uint64_t)i + 1, 0, 0);
            int failed = g_fail_in == 0;
            g_fail_in = 0;
            if (!failed) {
                cr_assert_eq(rc, 0);
                break;
            }
            cr_assert_eq(rc, -ENOMEM, "%s, malloc %d failing", key, at);
            index_failures += at > 1; /* the first is the entry's, the rest uthash's */
            khala_wq_stats_t st;
            khala__wq_stats(q, &st);
            cr_assert_eq(st.len, (uint64_t)i, "the failed push left nothing");
            cr_assert_null(khala__wq_find(q, key, strlen(key)));
            if (i)
                cr_assert_not_null(khala__wq_find(q, "k0", 2), "nor lost anything");
        }
    }
    cr_assert_gt(index_failures, 1, "%d: the index's table and a bucket expansion were refused",
                 index_failures);
    for (int i = 0; i < 2000; i++) {
        char key[16];
        snprintf(key, sizeof(key), "k%d", i);
        khala_wq_op_t *op = khala__wq_find(q, key, strlen(key));
        cr_assert_not_null(op, "%s", key);
        cr_assert_eq(op->version, (uint64_t)i + 1);
    }
    khala__wq_free(q);
}

/* Issue 10, bug 7's neighbour bug 10: removals are recorded for the next sync in a list that
 * grows; when it could not grow, a drained delete or invalidation stayed in the journal and came
 * back at the next start, after newer writes had drained (here: the delete of "a" would be
 * replayed after a=2 reached L2). The room for every queued record's removal is taken when it is
 * pushed, so removing (what the flusher does) needs no memory: with every allocation failing,
 * drained operations are still gone from the journal after a sync, and only what is still queued
 * comes back. */
Test(writeq, out_of_memory_while_draining_never_changes_what_is_replayed) {
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/j", g_dir);
    khala_wq_t *q;
    char err[256];
    uint64_t n = 0;
    cr_assert_eq(khala__wq_new(1000, 1 << 20, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, NULL, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(khala__wq_del(q, "a", 1), 0);
    cr_assert_eq(khala__wq_invalidate(q, "p:", 2, -1), 0);
    for (int i = 0; i < 300; i++) { /* more than any first allocation of the removal list */
        char key[16];
        snprintf(key, sizeof(key), "k%d", i);
        put(q, key, "v", (uint64_t)i + 1);
    }
    put(q, "last", "v", 1000);
    /* The flusher drains everything but the last put, with no memory to be had. */
    g_fail_all = 1;
    while (khala__wq_head(q) != khala__wq_find(q, "last", 4))
        khala__wq_remove(q, khala__wq_head(q));
    g_fail_all = 0;
    cr_assert_eq(khala__wq_sync(q), 0);
    khala__wq_free(q);

    cr_assert_eq(khala__wq_new(1000, 1 << 20, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, &n, err, sizeof(err)), 0, "%s", err);
    const char *back[] = {"P:last=v"};
    expect(q, back, 1);
    cr_assert_eq(n, 1, "only what was not drained is replayed");
    khala__wq_free(q);
}

/* With a journal, a push that cannot reserve the room for its later removal is refused with
 * -ENOMEM and changes nothing, in the queue or in the journal. */
Test(writeq, a_push_that_cannot_reserve_its_removal_is_refused_and_changes_nothing) {
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/j", g_dir);
    khala_wq_t *q;
    char err[256];
    uint64_t n = 0;
    cr_assert_eq(khala__wq_new(1000, 1 << 20, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, NULL, err, sizeof(err)), 0, "%s", err);
    put(q, "a", "1", 1);
    g_fail_all = 1;
    int rc = khala__wq_del(q, "b", 1);
    g_fail_all = 0;
    cr_assert_eq(rc, -ENOMEM);
    const char *want[] = {"P:a=1"};
    expect(q, want, 1);
    khala__wq_free(q);
    cr_assert_eq(khala__wq_new(1000, 1 << 20, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, &n, err, sizeof(err)), 0, "%s", err);
    expect(q, want, 1);
    khala__wq_free(q);
}

/* A journal that cannot grow (the disk is full; here the file size limit, RLIMIT_FSIZE, stands
 * in for it): the push that needed the room is refused with -EIO and the queue, its index and
 * the journal are as they were; once there is room again pushes work and what comes back after
 * a restart is exactly what was acknowledged. */
Test(writeq, a_journal_that_cannot_grow_refuses_the_push_and_changes_nothing) {
    char dir[128], data[160];
    snprintf(dir, sizeof(dir), "%s/j", g_dir);
    snprintf(data, sizeof(data), "%s/data.mdb", dir);
    khala_wq_t *q;
    char err[256];
    uint64_t n = 0;
    cr_assert_eq(khala__wq_new(100, 1 << 20, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, NULL, err, sizeof(err)), 0, "%s", err);
    put(q, "a", "1", 1);
    static char big[64 * 1024];
    memset(big, 'x', sizeof(big));
    struct stat sb;
    cr_assert_eq(stat(data, &sb), 0);
    struct rlimit saved, lim;
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &saved), 0);
    lim = saved;
    lim.rlim_cur = (rlim_t)sb.st_size;
    signal(SIGXFSZ, SIG_IGN);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int new_key = khala__wq_put(q, "b", 1, big, sizeof(big), 2, 0, 0);
    int rewrite = khala__wq_put(q, "a", 1, big, sizeof(big), 3, 0, 0);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &saved), 0);
    /* The system's reason passes through (EFBIG here; ENOSPC on a full disk), so that khalad
     * can say why. */
    cr_assert_eq(new_key, -EFBIG, "%s", khala_strerror(new_key));
    cr_assert_eq(rewrite, -EFBIG, "%s", khala_strerror(rewrite));
    const char *want[] = {"P:a=1"};
    expect(q, want, 1);
    cr_assert_null(khala__wq_find(q, "b", 1), "the refused key is not indexed");
    cr_assert_eq(khala__wq_find(q, "a", 1)->version, 1, "the queued write was not replaced");
    khala_wq_stats_t st;
    khala__wq_stats(q, &st);
    cr_assert_eq(st.len, 1);
    cr_assert_eq(st.bytes, 2);
    cr_assert_eq(st.pushed, 1);
    cr_assert_eq(st.coalesced, 0);
    /* Room again: the journal works on. */
    put(q, "c", "3", 4);
    khala__wq_free(q);

    cr_assert_eq(khala__wq_new(100, 1 << 20, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, &n, err, sizeof(err)), 0, "%s", err);
    const char *back[] = {"P:a=1", "P:c=3"};
    expect(q, back, 2);
    cr_assert_eq(n, 2);
    khala__wq_free(q);
}

static int64_t wait_past(int64_t deadline_ms) {
    int64_t now;
    while ((now = khala__sys_now_ms()) <= deadline_ms)
        usleep(1000);
    return now;
}

/* Deadlines survive a restart: a write whose deadline passed while no khalad ran comes back
 * already expired (1: sent, and gone at once), one still ahead keeps what was left of it, one
 * without a deadline keeps none. */
Test(writeq, deadlines_come_back_from_the_journal_and_passed_ones_are_expired) {
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/j", g_dir);
    khala_wq_t *q;
    char err[256];
    uint64_t n = 0;
    cr_assert_eq(khala__wq_new(100, 1 << 20, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, NULL, err, sizeof(err)), 0, "%s", err);
    int64_t now = khala__sys_now_ms();
    cr_assert_eq(khala__wq_put(q, "soon", 4, "s", 1, 1, now + 20, 0), 0);
    cr_assert_eq(khala__wq_put(q, "later", 5, "l", 1, 2, now + 600000, 0), 0);
    cr_assert_eq(khala__wq_put(q, "never", 5, "n", 1, 3, 0, 0), 0);
    khala__wq_free(q);
    wait_past(now + 20);

    cr_assert_eq(khala__wq_new(100, 1 << 20, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, &n, err, sizeof(err)), 0, "%s", err);
    int64_t after = khala__sys_now_ms();
    cr_assert_eq(n, 3);
    cr_assert_eq(khala__wq_find(q, "soon", 4)->expire_ms, 1, "expired while away");
    int64_t later = khala__wq_find(q, "later", 5)->expire_ms;
    cr_assert(later > after + 590000 && later <= now + 600000 + 1000, "later: %lld (now %lld)",
              (long long)later, (long long)after);
    cr_assert_eq(khala__wq_find(q, "never", 5)->expire_ms, 0);
    khala__wq_free(q);
}

/* What is not a journal: a data file of garbage, or an LMDB record whose key is not a
 * sequence number. Both are KHALA_ECORRUPT with the directory named, and nothing is queued. */
Test(writeq, a_journal_that_is_not_one_is_ecorrupt_and_named) {
    char dir[128], data[160];
    snprintf(dir, sizeof(dir), "%s/garbage", g_dir);
    snprintf(data, sizeof(data), "%s/data.mdb", dir);
    cr_assert_eq(mkdir(dir, 0700), 0);
    FILE *f = fopen(data, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < 2000; i++)
        fputs("garbage!", f);
    fclose(f);
    khala_wq_t *q;
    char err[256] = "";
    cr_assert_eq(khala__wq_new(100, 1 << 20, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, NULL, err, sizeof(err)), KHALA_ECORRUPT);
    cr_assert(strstr(err, dir), "message: %s", err);
    cr_assert_null(khala__wq_head(q));
    khala__wq_free(q);

    /* A foreign LMDB store: a key of 3 bytes. */
    snprintf(dir, sizeof(dir), "%s/foreign", g_dir);
    cr_assert_eq(mkdir(dir, 0700), 0);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_open(env, dir, 0, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
    MDB_val k = {3, "abc"}, v = {64, (char[64]){0}};
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    cr_assert_eq(khala__wq_new(100, 1 << 20, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, NULL, err, sizeof(err)), KHALA_ECORRUPT);
    cr_assert(strstr(err, dir) && strstr(err, "damaged"), "message: %s", err);
    cr_assert_null(khala__wq_head(q));
    khala__wq_free(q);
}

/* A deadline near 2^63 ms (the store saturates a huge TTL there) survives the journal: moving it
 * to the wall clock and back saturates instead of wrapping, so it does not come back as already
 * expired (issue 10, bug 7). */
Test(writeq, a_far_deadline_survives_the_journal_without_wrapping) {
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/j", g_dir);
    khala_wq_t *q;
    char err[256];
    cr_assert_eq(khala__wq_new(100, 1 << 20, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, NULL, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(khala__wq_put(q, "far", 3, "f", 1, 1, INT64_MAX - 1, 0), 0);
    khala__wq_free(q);
    cr_assert_eq(khala__wq_new(100, 1 << 20, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, NULL, err, sizeof(err)), 0, "%s", err);
    khala_wq_op_t *op = khala__wq_find(q, "far", 3);
    cr_assert_not_null(op);
    cr_assert_gt(op->expire_ms, khala__sys_now_ms() + (int64_t)1e15,
                 "deadline %lld came back expired or wrapped", (long long)op->expire_ms);
    khala__wq_free(q);
}

/* Queued invalidations are found by khala__wq_superseded() while queued, in any number and
 * whatever is removed first: an item they cover (prefix, type, a lower version) is superseded,
 * one written after them (a higher version), of another type or prefix is not. They come back
 * from the journal with their version (issue 10, bug 9). */
Test(writeq, queued_invalidations_supersede_older_items_they_cover) {
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/j", g_dir);
    khala_wq_t *q;
    char err[256];
    cr_assert_eq(khala__wq_new(100, 1 << 20, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, NULL, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(khala__wq_superseded(q, "user:1", 6, 0, 1), 0, "nothing queued");
    cr_assert_eq(khala__wq_invalidate_at(q, "user:", 5, -1, 100), 0);
    put(q, "a", "1", 150);
    cr_assert_eq(khala__wq_invalidate_at(q, "", 0, 2, 200), 0); /* every key of type 2 */
    cr_assert_eq(khala__wq_superseded(q, "user:1", 6, 0, 99), 1);
    cr_assert_eq(khala__wq_superseded(q, "user:1", 6, 0, 100), 0, "same version: not older");
    cr_assert_eq(khala__wq_superseded(q, "user", 4, 0, 1), 0, "shorter than the prefix");
    cr_assert_eq(khala__wq_superseded(q, "other", 5, 0, 1), 0, "another prefix");
    cr_assert_eq(khala__wq_superseded(q, "other", 5, 2, 199), 1, "the type's invalidation");
    cr_assert_eq(khala__wq_superseded(q, "other", 5, 2, 201), 0, "written after it");
    khala__wq_free(q);
    /* Back from the journal, in order, with their versions. */
    cr_assert_eq(khala__wq_new(100, 1 << 20, &q), 0);
    cr_assert_eq(khala__wq_journal_open(q, dir, 0, NULL, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(khala__wq_superseded(q, "user:1", 6, 0, 99), 1);
    cr_assert_eq(khala__wq_superseded(q, "other", 5, 2, 199), 1);
    /* Remove the first (the head), then the last: each stops superseding, the other goes on. */
    khala__wq_remove(q, khala__wq_head(q));
    cr_assert_eq(khala__wq_superseded(q, "user:1", 6, 0, 99), 0);
    cr_assert_eq(khala__wq_superseded(q, "other", 5, 2, 199), 1);
    cr_assert_eq(khala__wq_invalidate_at(q, "x", 1, -1, 300), 0);
    khala_wq_op_t *last = khala__wq_head(q);
    while (last->next)
        last = last->next;
    khala__wq_remove(q, last);
    cr_assert_eq(khala__wq_superseded(q, "x1", 2, 0, 1), 0);
    cr_assert_eq(khala__wq_superseded(q, "other", 5, 2, 199), 1);
    cr_assert_eq(khala__wq_invalidate_at(q, "y", 1, -1, 400), 0);
    cr_assert_eq(khala__wq_superseded(q, "y1", 2, 0, 1), 1, "appended after a removal");
    khala__wq_free(q);
}
