/*
 * Stress: one writer inserting, overwriting and deleting at full speed over a small key space,
 * in a segment so small that both the arena and the item count are exceeded all the time (so
 * evictions and reclamation never stop), while forked readers check every value they read.
 *
 * Every value is made by tu_value_make (key, round, checksum), so a reader proves it read
 * exactly a value written for that key: never torn, never from freed or reused memory. Readers
 * run a fixed number of operations; the writer runs until they are all done, bounded by its
 * own operation count so that a stuck reader fails the test instead of hanging it.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "khala/cache.h"
#include "l1_table.h"
#include "testutil.h"

#define NREADERS 3
#define NKEYS 1024u         /* key space */
#define HOT 64u             /* half the operations go to keys below this */
#define MAX_ITEMS 256u      /* item capacity: far below the key space */
#define MAX_BYTES 131072u   /* arena: about 230 values of the average size */
#define VMAX 2048u          /* largest value */
#define BATCH 256u          /* writer operations between maintain/waitpid */
#define WRITER_MAX 40000000 /* writer's upper bound on operations */

static char g_name[KHALA_NAME_MAX + 1];

static void suite_init(void) {
    snprintf(g_name, sizeof(g_name), "%s", tu_name("stress"));
}

static void suite_fini(void) {
    (void)khala__seg_unlink(g_name);
}

TestSuite(stress, .init = suite_init, .fini = suite_fini, .timeout = 120);

/* What a reader reports, in MAP_SHARED memory. Written by its reader only; read by the parent
 * after waitpid (which orders the reads after the child's writes). */
typedef struct report {
    uint64_t ops, ok, bad, hits, misses, errors, sections;
    int last_rc;
    uint32_t bad_key;
} report_t;

typedef struct shared {
    _Atomic int go; /* the writer is running: readers start */
    report_t r[NREADERS];
} shared_t;

enum { MODE_MIXED, MODE_HOLD };

static uint32_t pick_key(uint64_t *s) {
    return tu_pick_key(s, HOT, NKEYS);
}

static int key_of(char *buf, size_t cap, uint32_t k) {
    return snprintf(buf, cap, "stress-%u", k);
}

static uint64_t round_of(const uint8_t *v) {
    uint64_t r;
    memcpy(&r, v + 8, 8);
    return r;
}

static void check(report_t *rep, int rc, const uint8_t *data, size_t len, uint32_t k) {
    rep->ops++;
    if (rc == 0) {
        rep->hits++;
        if (tu_value_ok(data, len, k)) {
            rep->ok++;
        } else {
            rep->bad++;
            rep->bad_key = k;
        }
    } else if (rc == KHALA_ENOTFOUND) {
        rep->misses++;
    } else {
        rep->errors++;
        rep->last_rc = rc;
    }
}

/* Mixed reader: three gets (copy out) for every read section with one view, checked inside
 * the section. */
static void reader_mixed(khala_cache_t *c, report_t *rep, uint64_t seed, uint64_t nops) {
    static uint8_t buf[VMAX];
    for (uint64_t i = 0; i < nops; i++) {
        uint32_t k = pick_key(&seed);
        char key[32];
        int klen = key_of(key, sizeof(key), k);
        if (i % 4 != 3) {
            size_t len = 0;
            int rc = khala_cache_get(c, key, (size_t)klen, buf, sizeof(buf), &len);
            check(rep, rc, buf, len, k);
            continue;
        }
        int rc = khala_read_begin(c);
        if (rc != 0) {
            check(rep, rc, NULL, 0, k);
            continue;
        }
        khala_view_t v = {0};
        rc = khala_cache_view(c, key, (size_t)klen, &v);
        check(rep, rc, v.data, v.len, k);
        khala_read_end(c);
        rep->sections++;
    }
}

/* Holding reader: each section views HOLD keys and keeps every view until the end, checking
 * each one again after the later lookups and once more just before khala_read_end, including
 * that it still holds the same round: memory seen in a section is never reused inside it. */
#define HOLD 8
static void reader_hold(khala_cache_t *c, report_t *rep, uint64_t seed, uint64_t nops) {
    for (uint64_t i = 0; i < nops; i += HOLD) {
        khala_view_t v[HOLD];
        uint32_t keys[HOLD];
        uint64_t rounds[HOLD];
        int have[HOLD];
        int rc = khala_read_begin(c);
        if (rc != 0) {
            rep->errors++;
            rep->last_rc = rc;
            continue;
        }
        for (int j = 0; j < HOLD; j++) {
            char key[32];
            keys[j] = pick_key(&seed);
            int klen = key_of(key, sizeof(key), keys[j]);
            rc = khala_cache_view(c, key, (size_t)klen, &v[j]);
            rep->ops++;
            have[j] = rc == 0;
            if (rc == 0) {
                rep->hits++;
                rounds[j] = v[j].len >= 16 ? round_of(v[j].data) : 0;
            } else if (rc == KHALA_ENOTFOUND) {
                rep->misses++;
            } else {
                rep->errors++;
                rep->last_rc = rc;
            }
            /* Every view so far must still be intact after this lookup. */
            for (int m = 0; m <= j; m++)
                if (have[m] && !tu_value_ok(v[m].data, v[m].len, keys[m])) {
                    rep->bad++;
                    rep->bad_key = keys[m];
                    have[m] = 0;
                }
        }
        for (int j = 0; j < HOLD; j++) {
            if (!have[j])
                continue;
            if (tu_value_ok(v[j].data, v[j].len, keys[j]) && round_of(v[j].data) == rounds[j]) {
                rep->ok++;
            } else {
                rep->bad++;
                rep->bad_key = keys[j];
            }
        }
        khala_read_end(c);
        rep->sections++;
        /* Some work outside the section (a fixed amount), as a real reader does between
         * sections, so that the writer sees grace periods end. */
        static uint8_t scratch[1024];
        tu_value_make(scratch, sizeof(scratch), i, seed);
        if (!tu_value_ok(scratch, sizeof(scratch), i))
            rep->errors++;
    }
}

static void reader_main(shared_t *sh, int id, int mode, uint64_t nops) {
    report_t *rep = &sh->r[id];
    khala_cache_t *c = NULL;
    int rc = khala_cache_open(g_name, NULL, &c);
    if (rc != 0) {
        rep->last_rc = rc;
        _exit(10);
    }
    while (!atomic_load(&sh->go))
        ;
    uint64_t seed = 0x9e3779b97f4a7c15ull * (uint64_t)(id + 1);
    if (mode == MODE_HOLD && id > 0)
        reader_hold(c, rep, seed, nops);
    else
        reader_mixed(c, rep, seed, nops);
    khala_cache_close(c);
    _exit(0);
}

typedef struct wcount {
    uint64_t ops, puts, deletes, blocked;
} wcount_t;

/* One writer operation: 70 % put of a value of random size (its round is the op number), 20 %
 * delete, 10 % overwrite of a hot key with a tiny value. */
static void writer_op(khala_l1_t *t, uint64_t *seed, wcount_t *wc) {
    static uint8_t val[VMAX];
    uint64_t r = tu_rand(seed);
    uint32_t k = pick_key(seed);
    char key[32];
    int klen = key_of(key, sizeof(key), k);
    unsigned what = (unsigned)(r % 10);
    int rc;
    if (what < 2) {
        rc = khala__l1_delete(t, key, (size_t)klen);
        if (rc == KHALA_ENOTFOUND)
            rc = 0;
        wc->deletes += rc == 0;
    } else {
        size_t len = what == 2 ? 24 : 24 + (size_t)((r >> 8) % (VMAX - 24 + 1));
        if (what == 2) {
            k %= HOT;
            klen = key_of(key, sizeof(key), k);
        }
        tu_value_make(val, len, k, wc->ops);
        rc = khala__l1_put(t, key, (size_t)klen, val, len, 0, 0, NULL);
        wc->puts += rc == 0;
    }
    if (rc == KHALA_EBLOCKED)
        wc->blocked++; /* a reader was descheduled inside a section: legitimate */
    else
        cr_assert_eq(rc, 0, "writer op %llu on %s: %d %s", (unsigned long long)wc->ops, key, rc,
                     khala__l1_errmsg(t));
    wc->ops++;
}

static void run(int mode, uint64_t reader_ops) {
    khala_l1_t *t = tu_writer(g_name, MAX_ITEMS, MAX_BYTES);
    shared_t *sh =
        mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(sh, MAP_FAILED);
    memset(sh, 0, sizeof(*sh));
    uint64_t seed = 0x1234567ull;
    wcount_t wc = {0};
    /* Fill first, so readers find values from the start. */
    for (uint32_t i = 0; i < 4 * NKEYS; i++)
        writer_op(t, &seed, &wc);

    pid_t pids[NREADERS];
    for (int i = 0; i < NREADERS; i++) {
        pids[i] = fork();
        cr_assert_neq(pids[i], -1, "fork: %s", strerror(errno));
        if (pids[i] == 0)
            reader_main(sh, i, mode, reader_ops);
    }
    atomic_store(&sh->go, 1);
    int alive = NREADERS, status[NREADERS] = {0};
    uint64_t batches = 0;
    while (alive > 0) {
        cr_assert_lt(wc.ops, WRITER_MAX, "readers did not finish within %d writer ops", WRITER_MAX);
        for (uint32_t i = 0; i < BATCH; i++)
            writer_op(t, &seed, &wc);
        cr_assert_geq(khala__l1_maintain(t), 0);
        if (++batches % 256 == 0)
            cr_assert_eq(khala__l1_check(t), 0, "%s", khala__l1_errmsg(t));
        for (int i = 0; i < NREADERS; i++) {
            if (pids[i] == 0)
                continue;
            pid_t p = waitpid(pids[i], &status[i], WNOHANG);
            cr_assert_neq(p, -1, "waitpid: %s", strerror(errno));
            if (p == pids[i]) {
                pids[i] = 0;
                alive--;
            }
        }
    }
    khala_l1_stats_t st;
    khala__l1_stats(t, &st);
    cr_log_info("writer: %llu ops, %llu puts, %llu deletes, %llu blocked, %llu evictions; "
                "items %llu of %u, free %llu of %llu bytes",
                (unsigned long long)wc.ops, (unsigned long long)wc.puts,
                (unsigned long long)wc.deletes, (unsigned long long)wc.blocked,
                (unsigned long long)st.evictions, (unsigned long long)st.items, MAX_ITEMS,
                (unsigned long long)st.free_bytes, (unsigned long long)st.arena_bytes);
    uint64_t hits = 0;
    for (int i = 0; i < NREADERS; i++) {
        report_t *r = &sh->r[i];
        cr_log_info("reader %d: %llu ops, %llu ok, %llu bad, %llu hits, %llu misses, %llu "
                    "sections, %llu errors",
                    i, (unsigned long long)r->ops, (unsigned long long)r->ok,
                    (unsigned long long)r->bad, (unsigned long long)r->hits,
                    (unsigned long long)r->misses, (unsigned long long)r->sections,
                    (unsigned long long)r->errors);
        cr_assert(WIFEXITED(status[i]) && WEXITSTATUS(status[i]) == 0,
                  "reader %d did not finish cleanly (status %#x, last rc %d)", i, status[i],
                  r->last_rc);
        cr_assert_eq(r->bad, 0, "reader %d read %llu bad values (last on key %u)", i,
                     (unsigned long long)r->bad, r->bad_key);
        cr_assert_eq(r->errors, 0, "reader %d got %llu errors (last %d)", i,
                     (unsigned long long)r->errors, r->last_rc);
        cr_assert_eq(r->ops, reader_ops, "reader %d ran %llu of %llu operations", i,
                     (unsigned long long)r->ops, (unsigned long long)reader_ops);
        cr_assert_eq(r->hits + r->misses, r->ops);
        cr_assert_eq(r->ok, r->hits, "reader %d: every hit was checked", i);
        cr_assert_gt(r->hits, 0, "reader %d got no hits", i);
        hits += r->hits;
        cr_assert_gt(r->misses, 0, "reader %d: the key space exceeds the cache", i);
    }
    cr_assert_geq(hits, reader_ops / 1000, "readers got only %llu hits in all",
                  (unsigned long long)hits);
    /* The writer really exercised every path while readers were reading. */
    cr_assert_gt(st.evictions, 0);
    cr_assert_gt(st.overwrites, 0);
    cr_assert_gt(st.deletes, 0);
    cr_assert_eq(st.readers, 0, "readers closed their handles: %u slots in use", st.readers);
    cr_assert_eq(khala__l1_check(t), 0, "%s", khala__l1_errmsg(t));
    cr_assert_geq(khala__l1_maintain(t), 0);
    khala__l1_stats(t, &st);
    cr_assert_eq(st.retired, 0, "with no reader left, every retired item is freed");
    cr_assert_eq(khala__l1_check(t), 0, "%s", khala__l1_errmsg(t));
    munmap(sh, sizeof(*sh));
    khala__l1_close(t, 1);
}

Test(stress, readers_never_see_torn_or_freed_values_under_a_full_speed_writer) {
    run(MODE_MIXED, 400000);
}

Test(stress, views_held_across_lookups_stay_intact_until_read_end) {
    run(MODE_HOLD, 400000);
}
