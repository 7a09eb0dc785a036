/*
 * Concurrency inside one process, for ThreadSanitizer (scripts/test.sh runs this suite in the
 * TSan build): a writer thread and reader threads, with fixed operation counts.
 *
 * TSan only sees races between accesses to the same virtual addresses, and khala_cache_open()
 * maps the segment at another address than the writer's mapping. So the first tests run the
 * reader protocol (readers.h) by hand on the writer's own mapping, khala__l1_seg(): every read
 * of an item then races, in TSan's eyes, with the writer's reuse of its memory unless the epoch
 * protocol orders them. The last test drives the public client API from several threads of
 * one handle. No fork() here: forking a multi-threaded process under TSan is unreliable.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "khala/cache.h"
#include "l1_table.h"
#include "readers.h"
#include "reclaim.h"
#include "testutil.h"

#define NKEYS 512u
#define HOT 32u
#define MAX_ITEMS 128u
#define MAX_BYTES 65536u
#define VMAX 1024u
#define NREADERS 3
#define READER_OPS 40000u
#define WRITER_MAX 20000000u

static char g_name[KHALA_NAME_MAX + 1];

static void suite_init(void) {
    snprintf(g_name, sizeof(g_name), "%s", tu_name("threads"));
}

static void suite_fini(void) {
    (void)khala__seg_unlink(g_name);
}

TestSuite(threads, .init = suite_init, .fini = suite_fini, .timeout = 120);

static uint32_t pick_key(uint64_t *s) {
    return tu_pick_key(s, HOT, NKEYS);
}

/* The key of k, and its length (bounded, so the compiler knows the hash stays in bounds). */
static int key_of(char *buf, size_t cap, uint32_t k) {
    int n = snprintf(buf, cap, "thr-%u", k);
    return n > 0 && (size_t)n < cap ? n : 1;
}

/* Shared between the test's threads. */
typedef struct run {
    khala_l1_t *t;
    khala_seg_t *s; /* the segment reader threads use */
    _Atomic int readers_left;
    /* writer results */
    uint64_t w_ops, w_puts, w_blocked;
    int w_rc; /* first unexpected writer error, 0 if none */
    char w_err[256];
} run_t;

typedef struct rres {
    run_t *run;
    uint64_t seed;
    int claim_rc;
    uint64_t ops, hits, misses, ok, bad, errors;
    uint64_t lost; /* sections after which the slot no longer named this process */
} rres_t;

/* The writer thread: puts of random sizes, deletes and maintain, until every reader is done
 * (bounded by WRITER_MAX operations). */
static void *writer_main(void *arg) {
    run_t *r = arg;
    uint64_t seed = 0xabcdef12345ull;
    static uint8_t val[VMAX];
    while (atomic_load(&r->readers_left) > 0 && r->w_ops < WRITER_MAX) {
        uint64_t x = tu_rand(&seed);
        uint32_t k = pick_key(&seed);
        char key[32];
        int klen = key_of(key, sizeof(key), k);
        int rc;
        if (x % 5 == 0) {
            rc = khala__l1_delete(r->t, key, (size_t)klen);
            if (rc == KHALA_ENOTFOUND)
                rc = 0;
        } else {
            size_t len = 24 + (size_t)((x >> 8) % (VMAX - 24 + 1));
            tu_value_make(val, len, k, r->w_ops);
            rc = khala__l1_put(r->t, key, (size_t)klen, val, len, 0, 0, NULL);
            r->w_puts += rc == 0;
        }
        if (rc == KHALA_EBLOCKED) {
            r->w_blocked++;
        } else if (rc != 0 && r->w_rc == 0) {
            r->w_rc = rc;
            snprintf(r->w_err, sizeof(r->w_err), "%s", khala__l1_errmsg(r->t));
        }
        if (++r->w_ops % 128 == 0 && khala__l1_maintain(r->t) < 0 && r->w_rc == 0)
            r->w_rc = -1;
    }
    return NULL;
}

/* A reader thread running the reader protocol by hand on run->s: claim a slot, then for each
 * lookup enter a section, look up, copy the value out, record the hit, leave; check the copy. */
static void *raw_reader_main(void *arg) {
    rres_t *rr = arg;
    khala_seg_t *s = rr->run->s;
    uint32_t idx;
    rr->claim_rc = khala__readers_claim(s, &idx);
    if (rr->claim_rc != 0) {
        atomic_fetch_sub(&rr->run->readers_left, 1);
        return NULL;
    }
    khala_slot_t *slot = khala__seg_slot(s, idx);
    static _Thread_local uint8_t buf[VMAX];
    for (uint32_t i = 0; i < READER_OPS; i++) {
        uint32_t k = pick_key(&rr->seed);
        char key[32];
        int klen = key_of(key, sizeof(key), k);
        const khala_item_t *it;
        size_t len = 0;
        khala__reader_enter(s, slot);
        khala_l1_index_t ix = khala__l1_index(s);
        uint64_t hash = khala__l1_hash_with(ix.seed, key, (size_t)klen);
        int rc = khala__l1_lookup(s, &ix, key, (size_t)klen, hash, &it);
        if (rc == 0) {
            len = it->value_len;
            if (len <= sizeof(buf))
                memcpy(buf, khala__item_value(it), len);
            else
                rc = -1;
            khala__reader_record(s, slot, it->desc, hash);
        }
        khala__reader_leave(slot);
        /* Only the owner or, once the owner is dead, the writer may change the slot's owner. */
        if (khala_load_relaxed(&slot->pid) != (uint64_t)getpid())
            rr->lost++;
        rr->ops++;
        if (rc == 0) {
            rr->hits++;
            if (tu_value_ok(buf, len, k))
                rr->ok++;
            else
                rr->bad++;
        } else if (rc == KHALA_ENOTFOUND) {
            rr->misses++;
        } else {
            rr->errors++;
        }
    }
    khala__readers_release(s, idx);
    atomic_fetch_sub(&rr->run->readers_left, 1);
    return NULL;
}

static void prefill(khala_l1_t *t) {
    static uint8_t val[VMAX];
    for (uint32_t k = 0; k < NKEYS; k++) {
        char key[32];
        int klen = key_of(key, sizeof(key), k);
        size_t len = 24 + (k * 53u) % (VMAX - 24);
        tu_value_make(val, len, k, 0);
        int rc = khala__l1_put(t, key, (size_t)klen, val, len, 0, 0, NULL);
        cr_assert_eq(rc, 0, "prefill %s: %d %s", key, rc, khala__l1_errmsg(t));
    }
}

/* Run NREADERS raw reader threads on `s` against a writer thread, and check the outcome. */
static void raw_run(khala_l1_t *t, khala_seg_t *s) {
    run_t run = {.t = t, .s = s};
    atomic_store(&run.readers_left, NREADERS);
    rres_t rr[NREADERS];
    pthread_t rt[NREADERS], wt;
    prefill(t);
    cr_assert_eq(pthread_create(&wt, NULL, writer_main, &run), 0);
    for (int i = 0; i < NREADERS; i++) {
        rr[i] = (rres_t){.run = &run, .seed = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1)};
        cr_assert_eq(pthread_create(&rt[i], NULL, raw_reader_main, &rr[i]), 0);
    }
    for (int i = 0; i < NREADERS; i++)
        cr_assert_eq(pthread_join(rt[i], NULL), 0);
    cr_assert_eq(pthread_join(wt, NULL), 0);

    khala_l1_stats_t st;
    khala__l1_stats(t, &st);
    cr_log_info("writer: %llu ops, %llu puts, %llu blocked, %llu evictions",
                (unsigned long long)run.w_ops, (unsigned long long)run.w_puts,
                (unsigned long long)run.w_blocked, (unsigned long long)st.evictions);
    cr_assert_eq(run.w_rc, 0, "writer error %d: %s", run.w_rc, run.w_err);
    cr_assert_lt(run.w_ops, WRITER_MAX, "readers did not finish within %u writer ops", WRITER_MAX);
    uint64_t hits = 0;
    for (int i = 0; i < NREADERS; i++) {
        cr_log_info("reader %d: %llu ops, %llu hits, %llu ok, %llu bad, %llu errors, %llu lost", i,
                    (unsigned long long)rr[i].ops, (unsigned long long)rr[i].hits,
                    (unsigned long long)rr[i].ok, (unsigned long long)rr[i].bad,
                    (unsigned long long)rr[i].errors, (unsigned long long)rr[i].lost);
        cr_assert_eq(rr[i].claim_rc, 0, "reader %d could not claim a slot: %d", i, rr[i].claim_rc);
        cr_assert_eq(rr[i].bad, 0, "reader %d read %llu torn or reused values", i,
                     (unsigned long long)rr[i].bad);
        cr_assert_eq(rr[i].lost, 0,
                     "reader %d: a live reader's slot was taken from it (reaped as if dead) "
                     "after %llu of its sections",
                     i, (unsigned long long)rr[i].lost);
        cr_assert_eq(rr[i].errors, 0, "reader %d: %llu lookup errors", i,
                     (unsigned long long)rr[i].errors);
        cr_assert_eq(rr[i].ops, READER_OPS);
        cr_assert_eq(rr[i].hits + rr[i].misses, rr[i].ops);
        hits += rr[i].hits;
    }
    cr_assert_gt(hits, 0, "the readers got no hits");
    cr_assert_gt(st.evictions, 0, "the writer must evict while readers read");
    cr_assert_eq(st.readers, 0, "every reader thread released its slot: %u in use", st.readers);
    cr_assert_geq(khala__l1_maintain(t), 0);
    khala__l1_stats(t, &st);
    cr_assert_eq(st.retired, 0);
    cr_assert_eq(khala__l1_check(t), 0, "%s", khala__l1_errmsg(t));
}

Test(threads, reader_threads_on_the_writer_mapping_never_see_torn_or_reused_values) {
    khala_l1_t *t = tu_writer(g_name, MAX_ITEMS, MAX_BYTES);
    raw_run(t, khala__l1_seg(t));
    khala__l1_close(t, 1);
}

/* The same on the writer's mapping, but the reader threads hold their slot locks through an
 * open file description of their own, as a reader process would. */
Test(threads, reader_threads_with_their_own_slot_locks_never_see_torn_or_reused_values) {
    khala_l1_t *t = tu_writer(g_name, MAX_ITEMS, MAX_BYTES);
    khala_seg_t rs = *khala__l1_seg(t);
    rs.readers_fd = -1;
    cr_assert_eq(khala__seg_reopen_readers(&rs), 0);
    raw_run(t, &rs);
    close(rs.readers_fd);
    khala__l1_close(t, 1);
}

/* A reader thread of the writer's own process, inside a section on the writer's mapping. */
typedef struct pinner {
    khala_seg_t *s;
    pthread_barrier_t *inside, *done;
    int claim_rc;
    uint32_t idx;
} pinner_t;

static void *pinner_main(void *arg) {
    pinner_t *p = arg;
    p->claim_rc = khala__readers_claim(p->s, &p->idx);
    khala_slot_t *slot = p->claim_rc == 0 ? khala__seg_slot(p->s, p->idx) : NULL;
    if (slot)
        khala__reader_enter(p->s, slot);
    pthread_barrier_wait(p->inside);
    pthread_barrier_wait(p->done);
    if (slot)
        khala__readers_release(p->s, p->idx);
    return NULL;
}

/* Reaping must never free a live reader's slot. The slot lock cannot tell a thread of the
 * writer's own process from a dead owner (the writer shares its open file description), so
 * this is the case that shows whether the reaper checks anything else. */
Test(threads, live_reader_thread_in_the_writer_process_is_never_reaped) {
    /* Room to spare, so the overwrites below need no eviction while the reader pins them. */
    khala_l1_t *t = tu_writer(g_name, 16 * MAX_ITEMS, 64 * MAX_BYTES);
    khala_seg_t *s = khala__l1_seg(t);
    prefill(t);
    pthread_barrier_t inside, done;
    pthread_barrier_init(&inside, NULL, 2);
    pthread_barrier_init(&done, NULL, 2);
    pinner_t p = {.s = s, .inside = &inside, .done = &done};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, pinner_main, &p), 0);
    pthread_barrier_wait(&inside);

    static uint8_t val[VMAX];
    for (uint32_t k = 0; k < 8; k++) {
        char key[32];
        int klen = key_of(key, sizeof(key), k);
        tu_value_make(val, 100, k, 1);
        cr_assert_eq(khala__l1_put(t, key, (size_t)klen, val, 100, 0, 0, NULL), 0);
    }
    cr_assert_geq(khala__l1_maintain(t), 0);
    khala_l1_stats_t st;
    khala__l1_stats(t, &st);
    khala_slot_t *slot = p.claim_rc == 0 ? khala__seg_slot(s, p.idx) : NULL;
    uint64_t pid = slot ? khala_load_relaxed(&slot->pid) : 0;
    uint64_t epoch = slot ? khala_load_relaxed(&slot->epoch) : 0;

    pthread_barrier_wait(&done);
    cr_assert_eq(pthread_join(th, NULL), 0);
    pthread_barrier_destroy(&inside);
    pthread_barrier_destroy(&done);
    khala__l1_close(t, 1);
    cr_assert_eq(p.claim_rc, 0);
    cr_assert_eq(pid, (uint64_t)getpid(), "the live reader's slot was reaped (pid now %llu)",
                 (unsigned long long)pid);
    cr_assert_neq(epoch, 0, "the live reader's section was cleared by the writer");
    cr_assert_gt(st.retired, 0, "items the live reader may see were freed under it");
}

/* Public API: one handle shared by several threads. */
#define CLIENT_THREADS 4
#define CLIENT_OPS 20000u

typedef struct cres {
    khala_cache_t *c;
    pthread_barrier_t *claimed, *go;
    uint64_t seed;
    uint64_t ops, hits, ok, bad, errors;
    int last_rc;
} cres_t;

static void *client_main(void *arg) {
    cres_t *cr = arg;
    static _Thread_local uint8_t buf[VMAX];
    for (uint32_t i = 0; i < CLIENT_OPS; i++) {
        if (i == 1) {
            /* Every thread holds its slot now; let the main thread count them. */
            pthread_barrier_wait(cr->claimed);
            pthread_barrier_wait(cr->go);
        }
        uint32_t k = (uint32_t)(tu_rand(&cr->seed) % HOT);
        char key[32];
        int klen = key_of(key, sizeof(key), k);
        size_t len = 0;
        int rc;
        if (i % 2) {
            rc = khala_cache_get(cr->c, key, (size_t)klen, buf, sizeof(buf), &len);
        } else {
            khala_view_t v;
            if ((rc = khala_read_begin(cr->c)) == 0) {
                rc = khala_cache_view(cr->c, key, (size_t)klen, &v);
                if (rc == 0) {
                    len = v.len;
                    memcpy(buf, v.data, len);
                }
                khala_read_end(cr->c);
            }
        }
        cr->ops++;
        if (rc == 0) {
            cr->hits++;
            if (tu_value_ok(buf, len, k))
                cr->ok++;
            else
                cr->bad++;
        } else {
            cr->errors++;
            cr->last_rc = rc;
        }
    }
    return NULL;
}

typedef struct owriter {
    khala_l1_t *t;
    _Atomic int *stop;
    uint64_t ops;
    int rc;
} owriter_t;

/* Overwrites the HOT keys (never deletes; the table is big enough that nothing is evicted). */
static void *overwriter_main(void *arg) {
    owriter_t *w = arg;
    static uint8_t val[VMAX];
    while (!atomic_load(w->stop) && w->ops < WRITER_MAX) {
        uint32_t k = (uint32_t)(w->ops % HOT);
        char key[32];
        int klen = key_of(key, sizeof(key), k);
        size_t len = 24 + (size_t)(w->ops * 7 % 500);
        tu_value_make(val, len, k, w->ops + 1);
        int rc = khala__l1_put(w->t, key, (size_t)klen, val, len, 0, 0, NULL);
        if (rc != 0 && rc != KHALA_EBLOCKED && w->rc == 0)
            w->rc = rc;
        if (++w->ops % 64 == 0)
            (void)khala__l1_maintain(w->t);
    }
    return NULL;
}

Test(threads, client_handle_shared_by_threads_gives_each_a_slot_and_sums_their_stats) {
    khala_l1_t *t = tu_writer(g_name, 1024, 4 * 1024 * 1024);
    static uint8_t val[VMAX];
    for (uint32_t k = 0; k < HOT; k++) {
        char key[32];
        int klen = key_of(key, sizeof(key), k);
        tu_value_make(val, 100, k, 0);
        cr_assert_eq(khala__l1_put(t, key, (size_t)klen, val, 100, 0, 0, NULL), 0);
    }
    khala_cache_t *c = NULL;
    cr_assert_eq(khala_cache_open(g_name, NULL, &c), 0, "%s", khala_cache_errmsg(NULL));

    _Atomic int stop = 0;
    owriter_t w = {.t = t, .stop = &stop};
    pthread_t wt, th[CLIENT_THREADS];
    pthread_barrier_t claimed, go;
    pthread_barrier_init(&claimed, NULL, CLIENT_THREADS + 1);
    pthread_barrier_init(&go, NULL, CLIENT_THREADS + 1);
    cres_t cr[CLIENT_THREADS];
    cr_assert_eq(pthread_create(&wt, NULL, overwriter_main, &w), 0);
    for (int i = 0; i < CLIENT_THREADS; i++) {
        cr[i] = (cres_t){.c = c, .claimed = &claimed, .go = &go, .seed = 77u + (uint64_t)i};
        cr_assert_eq(pthread_create(&th[i], NULL, client_main, &cr[i]), 0);
    }
    pthread_barrier_wait(&claimed);
    /* Readers segment: written by the client threads, read here through the writer's mapping
     * of the same file (another address, so TSan does not relate them). */
    uint32_t in_use = khala__readers_in_use(khala__l1_seg(t));
    pthread_barrier_wait(&go);
    for (int i = 0; i < CLIENT_THREADS; i++)
        cr_assert_eq(pthread_join(th[i], NULL), 0);
    atomic_store(&stop, 1);
    cr_assert_eq(pthread_join(wt, NULL), 0);
    pthread_barrier_destroy(&claimed);
    pthread_barrier_destroy(&go);

    cr_assert_eq(in_use, CLIENT_THREADS, "each thread holds its own slot: %u in use", in_use);
    uint64_t hits = 0;
    for (int i = 0; i < CLIENT_THREADS; i++) {
        cr_assert_eq(cr[i].errors, 0, "thread %d: %llu errors, last %d", i,
                     (unsigned long long)cr[i].errors, cr[i].last_rc);
        cr_assert_eq(cr[i].bad, 0, "thread %d read %llu bad values", i,
                     (unsigned long long)cr[i].bad);
        cr_assert_eq(cr[i].hits, CLIENT_OPS, "the hot keys are never deleted");
        hits += cr[i].hits;
    }
    cr_assert_eq(w.rc, 0, "writer error %d", w.rc);
    khala_cache_stats_t cs;
    cr_assert_eq(khala_cache_stats(c, &cs), 0);
    cr_assert_eq(cs.hits, hits, "handle stats sum the threads: %llu, want %llu",
                 (unsigned long long)cs.hits, (unsigned long long)hits);
    cr_assert_eq(cs.misses, 0);
    khala_l1_stats_t st;
    khala__l1_stats(t, &st);
    cr_assert_eq(st.readers, 0, "exited threads released their slots: %u in use", st.readers);
    cr_assert_eq(st.reader_hits, hits);
    khala_cache_close(c);
    cr_assert_geq(khala__l1_maintain(t), 0);
    khala__l1_stats(t, &st);
    cr_assert_eq(st.retired, 0);
    cr_assert_eq(khala__l1_check(t), 0, "%s", khala__l1_errmsg(t));
    khala__l1_close(t, 1);
}
