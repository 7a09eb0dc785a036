/*
 * Reader slots and reclamation across real processes: readers killed inside a read section,
 * readers stuck in one, running out of slots, and slots of dead readers being reused.
 *
 * The test process is the writer (khala__l1_open); readers are fork()ed children that attach
 * with khala_cache_open() after the fork, talk to the parent through pipes, and report their
 * counts through MAP_SHARED anonymous memory. Children never use Criterion's asserts: they
 * leave with _exit(code), and the parent checks the code.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "khala/cache.h"
#include "l1_table.h"
#include "readers.h"
#include "reclaim.h"
#include "testutil.h"

static char g_name[KHALA_NAME_MAX + 1];

static void suite_init(void) {
    snprintf(g_name, sizeof(g_name), "%s", tu_name("readers"));
}

static void suite_fini(void) {
    (void)khala__seg_unlink(g_name);
}

TestSuite(readers, .init = suite_init, .fini = suite_fini, .timeout = 120);

/* Exit codes of children. */
enum {
    CHILD_OK = 0,
    CHILD_EOPEN = 10,
    CHILD_EBEGIN,
    CHILD_EVIEW,
    CHILD_EBAD,
    CHILD_EPIPE,
    CHILD_EGET,
};

static int key_of(char *buf, size_t cap, uint32_t k) {
    return snprintf(buf, cap, "key-%u", k);
}

/* Value length of key k: varies per key, the same in every round. */
static size_t vlen_of(uint32_t k) {
    return 24 + (k * 37u) % 400u;
}

static void put_key(khala_l1_t *t, uint32_t k, uint64_t round, size_t vlen) {
    uint8_t val[2048];
    char key[32];
    int klen = key_of(key, sizeof(key), k);
    cr_assert_leq(vlen, sizeof(val));
    tu_value_make(val, vlen, k, round);
    int rc = khala__l1_put(t, key, (size_t)klen, val, vlen, 0, 0, NULL);
    cr_assert_eq(rc, 0, "put %s round %llu: %d %s", key, (unsigned long long)round, rc,
                 khala__l1_errmsg(t));
}

static void fill(khala_l1_t *t, uint32_t nkeys, uint64_t round) {
    for (uint32_t k = 0; k < nkeys; k++)
        put_key(t, k, round, vlen_of(k));
}

/* Run maintain until nothing is retired, a bounded number of times: a live reader that happens
 * to be inside a short section may pin the newest items for a moment. */
static void settle(khala_l1_t *t, khala_l1_stats_t *st) {
    for (int i = 0; i < 10000; i++) {
        cr_assert_geq(khala__l1_maintain(t), 0);
        khala__l1_stats(t, st);
        if (st->retired == 0)
            return;
        sched_yield();
    }
}

static void write_byte(int fd) {
    char b = 'x';
    cr_assert_eq(write(fd, &b, 1), 1, "write: %s", strerror(errno));
}

static void read_byte(int fd) {
    char b;
    ssize_t n;
    do
        n = read(fd, &b, 1);
    while (n < 0 && errno == EINTR);
    cr_assert_eq(n, 1, "the child did not signal: %zd %s", n, n < 0 ? strerror(errno) : "EOF");
}

static int child_read_byte(int fd) {
    char b;
    ssize_t n;
    do
        n = read(fd, &b, 1);
    while (n < 0 && errno == EINTR);
    return (int)n;
}

static int wait_exit(pid_t pid) {
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "child %d did not exit normally (status %#x)", (int)pid, status);
    return WEXITSTATUS(status);
}

/* A reader that opens the cache, enters a read section, views and checks keys 0..nkeys-1,
 * signals `ready`, then blocks on `hold` (inside the section when in_section) until the
 * parent writes a byte: then it leaves the section, signals `ready` again and waits for EOF on
 * `hold` before it exits. */
static void section_child(int ready, int hold, uint32_t nkeys, int in_section) {
    khala_cache_t *c = NULL;
    if (khala_cache_open(g_name, NULL, &c) != 0)
        _exit(CHILD_EOPEN);
    if (in_section) {
        if (khala_read_begin(c) != 0)
            _exit(CHILD_EBEGIN);
        for (uint32_t k = 0; k < nkeys; k++) {
            char key[32];
            khala_view_t v;
            int klen = key_of(key, sizeof(key), k);
            int rc = khala_cache_view(c, key, (size_t)klen, &v);
            if (rc == KHALA_ENOTFOUND)
                continue;
            if (rc != 0)
                _exit(CHILD_EVIEW);
            if (!tu_value_ok(v.data, v.len, k))
                _exit(CHILD_EBAD);
        }
    } else {
        char key[32], buf[2048];
        size_t len;
        int klen = key_of(key, sizeof(key), 0);
        int rc = khala_cache_get(c, key, (size_t)klen, buf, sizeof(buf), &len);
        if (rc != 0 && rc != KHALA_ENOTFOUND)
            _exit(CHILD_EGET);
    }
    char b = 'r';
    if (write(ready, &b, 1) != 1)
        _exit(CHILD_EPIPE);
    if (child_read_byte(hold) != 1)
        _exit(CHILD_EPIPE);
    if (in_section)
        khala_read_end(c);
    if (write(ready, &b, 1) != 1)
        _exit(CHILD_EPIPE);
    while (child_read_byte(hold) > 0)
        ;
    khala_cache_close(c);
    _exit(CHILD_OK);
}

typedef struct child {
    pid_t pid;
    int ready; /* parent's read end */
    int hold;  /* parent's write end */
} child_t;

static child_t spawn_section_child(uint32_t nkeys, int in_section) {
    int ready[2], hold[2];
    cr_assert_eq(pipe(ready), 0);
    cr_assert_eq(pipe(hold), 0);
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
    if (pid == 0) {
        close(ready[0]);
        close(hold[1]);
        section_child(ready[1], hold[0], nkeys, in_section);
    }
    close(ready[1]);
    close(hold[0]);
    child_t ch = {pid, ready[0], hold[1]};
    read_byte(ch.ready);
    return ch;
}

static void close_child_fds(child_t *ch) {
    close(ch->ready);
    close(ch->hold);
}

/* The kill test deletes and re-puts keys below this one; the others are always present. */
#define LIVE_DELETED 8u

/* A reader running through a whole test: gets keys 0..nkeys-1 round-robin and checks every
 * value, until `stop`. Its counters live in shared memory. */
typedef struct live {
    _Atomic uint64_t ops, ok, bad, hits, misses, errors;
    _Atomic uint64_t lost; /* misses of keys >= LIVE_DELETED, which are never deleted */
    _Atomic int stop;
    _Atomic int last_rc;
} live_t;

static void live_child(live_t *L, uint32_t nkeys) {
    khala_cache_t *c = NULL;
    if (khala_cache_open(g_name, NULL, &c) != 0)
        _exit(CHILD_EOPEN);
    uint8_t buf[2048];
    for (uint32_t i = 0; !atomic_load(&L->stop); i++) {
        char key[32];
        size_t len = 0;
        uint32_t k = i % nkeys;
        int klen = key_of(key, sizeof(key), k);
        int rc = khala_cache_get(c, key, (size_t)klen, buf, sizeof(buf), &len);
        if (rc == 0) {
            atomic_fetch_add(&L->hits, 1);
            if (tu_value_ok(buf, len, k))
                atomic_fetch_add(&L->ok, 1);
            else
                atomic_fetch_add(&L->bad, 1);
        } else if (rc == KHALA_ENOTFOUND) {
            atomic_fetch_add(&L->misses, 1);
            if (k >= LIVE_DELETED)
                atomic_fetch_add(&L->lost, 1);
        } else {
            atomic_store(&L->last_rc, rc);
            atomic_fetch_add(&L->errors, 1);
        }
        atomic_fetch_add(&L->ops, 1);
    }
    khala_cache_close(c);
    _exit(CHILD_OK);
}

/* Wait until the live reader has done `more` operations beyond `from`; fail if it died. */
static void live_progress(live_t *L, pid_t pid, uint64_t from, uint64_t more) {
    while (atomic_load(&L->ops) < from + more) {
        int status;
        cr_assert_eq(waitpid(pid, &status, WNOHANG), 0, "the live reader died (status %#x)",
                     status);
        sched_yield();
    }
}

Test(readers, sigkilled_reader_in_section_pins_memory_until_reaped_and_memory_returns) {
    enum { NKEYS = 64, ROUNDS = 50 };
    khala_l1_t *t = tu_writer(g_name, 1024, 1024 * 1024);
    fill(t, NKEYS, 0);
    live_t *L = mmap(NULL, sizeof(*L), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(L, MAP_FAILED);
    memset(L, 0, sizeof(*L));
    pid_t live = fork();
    cr_assert_neq(live, -1);
    if (live == 0)
        live_child(L, NKEYS);
    live_progress(L, live, 0, 100);

    khala_l1_stats_t base;
    settle(t, &base);
    cr_assert_eq(base.readers, 1, "only the live reader holds a slot, %u in use", base.readers);
    uint64_t round_no = 1;
    for (int r = 0; r < ROUNDS; r++) {
        khala_l1_stats_t before, during, after;
        settle(t, &before);
        cr_assert_eq(before.retired, 0, "round %d: %llu items still retired before the round", r,
                     (unsigned long long)before.retired);
        child_t ch = spawn_section_child(NKEYS, 1);

        /* Retire every item the victim can see: overwrite all keys, delete and re-put some. */
        fill(t, NKEYS, round_no++);
        for (uint32_t k = 0; k < LIVE_DELETED; k++) {
            char key[32];
            int klen = key_of(key, sizeof(key), k);
            cr_assert_eq(khala__l1_delete(t, key, (size_t)klen), 0);
            put_key(t, k, round_no, vlen_of(k));
        }
        round_no++;
        cr_assert_geq(khala__l1_maintain(t), 0);
        khala__l1_stats(t, &during);
        cr_assert_geq(during.retired, NKEYS, "round %d: the victim pins what it could see: %llu", r,
                      (unsigned long long)during.retired);
        cr_assert_gt(during.retired_bytes, 0);
        cr_assert_eq(during.readers, base.readers + 1, "round %d: %u slots in use", r,
                     during.readers);
        uint64_t seen = atomic_load(&L->ops);
        live_progress(L, live, seen, 200);

        cr_assert_eq(kill(ch.pid, SIGKILL), 0);
        int status;
        cr_assert_eq(waitpid(ch.pid, &status, 0), ch.pid);
        cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                  "round %d: the victim left before the kill (status %#x)", r, status);
        close_child_fds(&ch);

        settle(t, &after);
        cr_assert_eq(after.retired, 0, "round %d: %llu items stay retired after the kill", r,
                     (unsigned long long)after.retired);
        cr_assert_eq(after.retired_bytes, 0);
        cr_assert_eq(after.items, before.items);
        cr_assert_eq(after.payload_bytes, before.payload_bytes);
        cr_assert_eq(after.item_bytes, before.item_bytes, "round %d: item bytes %llu, before %llu",
                     r, (unsigned long long)after.item_bytes,
                     (unsigned long long)before.item_bytes);
        cr_assert_eq(after.free_bytes, before.free_bytes, "round %d: free bytes %llu, before %llu",
                     r, (unsigned long long)after.free_bytes,
                     (unsigned long long)before.free_bytes);
        cr_assert_eq(after.readers, base.readers, "round %d: %u slots in use, baseline %u", r,
                     after.readers, base.readers);
        cr_assert_eq(khala__l1_check(t), 0, "round %d: %s", r, khala__l1_errmsg(t));
    }

    uint64_t seen = atomic_load(&L->ops);
    live_progress(L, live, seen, 100);
    atomic_store(&L->stop, 1);
    cr_assert_eq(wait_exit(live), CHILD_OK);
    cr_assert_eq(atomic_load(&L->bad), 0, "the live reader read %llu bad values",
                 (unsigned long long)atomic_load(&L->bad));
    cr_assert_eq(atomic_load(&L->errors), 0, "the live reader got errors, last %d",
                 atomic_load(&L->last_rc));
    cr_assert_eq(atomic_load(&L->lost), 0, "keys never deleted were missed %llu times",
                 (unsigned long long)atomic_load(&L->lost));
    cr_assert_gt(atomic_load(&L->ok), ROUNDS * 200);
    khala_l1_stats_t end;
    settle(t, &end);
    cr_assert_eq(end.readers, 0, "slots in use after every reader left: %u", end.readers);
    munmap(L, sizeof(*L));
    khala__l1_close(t, 1);
}

/* A writer with room for 1024 items in a 64 KiB arena, filled with nkeys values of vlen bytes
 * (more than the arena holds, so puts need memory from then on). */
static khala_l1_t *small_arena_writer(uint32_t nkeys, size_t vlen) {
    khala_l1_t *t = tu_writer(g_name, 1024, 64 * 1024);
    for (uint32_t k = 0; k < nkeys; k++)
        put_key(t, k, 0, vlen);
    return t;
}

Test(readers, live_reader_stuck_in_section_makes_puts_fail_with_eblocked_naming_its_pid) {
    enum { NKEYS = 200, VLEN = 1000 };
    khala_l1_t *t = small_arena_writer(NKEYS, VLEN);
    khala_l1_stats_t st;
    khala__l1_stats(t, &st);
    cr_assert_gt(st.evictions, 0, "the fill must exceed the arena");
    settle(t, &st);

    child_t ch = spawn_section_child(NKEYS, 1);
    int rc = 0;
    uint64_t ok_puts = 0;
    uint8_t val[VLEN];
    for (uint32_t i = 0; i < 10000; i++) {
        char key[32];
        uint32_t k = i % NKEYS;
        int klen = key_of(key, sizeof(key), k);
        tu_value_make(val, sizeof(val), k, 1 + i);
        rc = khala__l1_put(t, key, (size_t)klen, val, sizeof(val), 0, 0, NULL);
        if (rc != 0)
            break;
        ok_puts++;
    }
    cr_assert_eq(rc, KHALA_EBLOCKED, "puts into a pinned arena must fail with EBLOCKED, got %d",
                 rc);
    char want[32];
    snprintf(want, sizeof(want), "pid %d", (int)ch.pid);
    cr_assert(strstr(khala__l1_errmsg(t), want), "the message names the reader (%s): %s", want,
              khala__l1_errmsg(t));
    cr_assert_eq(khala__l1_check(t), 0, "a failed put leaves the table consistent: %s",
                 khala__l1_errmsg(t));

    /* A live owner is never reaped, however long it stays inside its section. */
    for (int i = 0; i < 10; i++)
        cr_assert_geq(khala__l1_maintain(t), 0);
    khala__l1_stats(t, &st);
    cr_assert_eq(st.readers, 1);
    cr_assert_eq(st.oldest_reader_pid, ch.pid);
    char key[32];
    int klen = key_of(key, sizeof(key), NKEYS + 1);
    tu_value_make(val, sizeof(val), NKEYS + 1, 0);
    cr_assert_eq(khala__l1_put(t, key, (size_t)klen, val, sizeof(val), 0, 0, NULL), KHALA_EBLOCKED,
                 "still blocked while the reader lives in its section");

    /* The reader ends its section: memory comes back and puts succeed again. */
    write_byte(ch.hold);
    read_byte(ch.ready);
    settle(t, &st);
    cr_assert_eq(st.retired, 0);
    cr_assert_eq(st.oldest_reader_pid, 0);
    for (uint32_t i = 0; i < 2 * NKEYS; i++) {
        uint32_t k = i % NKEYS;
        klen = key_of(key, sizeof(key), k);
        tu_value_make(val, sizeof(val), k, 100000 + i);
        rc = khala__l1_put(t, key, (size_t)klen, val, sizeof(val), 0, 0, NULL);
        cr_assert_eq(rc, 0, "put %u after the section ended: %d %s", i, rc, khala__l1_errmsg(t));
    }
    close(ch.hold);
    cr_assert_eq(wait_exit(ch.pid), CHILD_OK);
    close(ch.ready);
    cr_assert_eq(khala__l1_check(t), 0, "%s", khala__l1_errmsg(t));
    khala__l1_close(t, 1);
}

/* Risk: a reader stopped inside a section made every put that needed memory wait the whole
 * grace period, and one put could wait several times. Now the first operation that meets it
 * waits once, at most the budget in all; later ones fail at once while that reader stays in
 * the same section; the reader is named in the stats; and the membarriers of all those scans
 * come to one per grace period. */
Test(readers, stuck_reader_costs_one_bounded_wait_then_puts_fail_at_once) {
    enum { NKEYS = 200, VLEN = 1000 };
    khala_l1_t *t = small_arena_writer(NKEYS, VLEN);
    khala_l1_stats_t st0, st;
    settle(t, &st0);
    child_t ch = spawn_section_child(NKEYS, 1);
    uint8_t val[VLEN];
    int blocked = 0;
    for (uint32_t i = 0; i < 10000 && blocked < 20; i++) {
        char key[32];
        uint32_t k = i % NKEYS;
        int klen = key_of(key, sizeof(key), k);
        tu_value_make(val, sizeof(val), k, 1 + i);
        int rc = khala__l1_put(t, key, (size_t)klen, val, sizeof(val), 0, 0, NULL);
        cr_assert(rc == 0 || rc == KHALA_EBLOCKED, "put: %d %s", rc, khala__l1_errmsg(t));
        blocked += rc == KHALA_EBLOCKED;
    }
    cr_assert_eq(blocked, 20);
    khala__l1_stats(t, &st);
    cr_assert_eq(st.stuck_reader_pid, ch.pid, "stats name the stuck reader");
    cr_assert_gt(st.stuck_since_ms, 0);
    cr_assert_eq(st.stuck_waits, 1, "one bounded wait for 20 refused puts, not %llu",
                 (unsigned long long)st.stuck_waits);
    cr_assert_geq(st.blocked_ops, 20);
    cr_assert_leq(st.membarriers - st0.membarriers, 8,
                  "one membarrier per grace period, not one per scan: %llu",
                  (unsigned long long)(st.membarriers - st0.membarriers));
    cr_assert_eq(khala__l1_check(t), 0, "%s", khala__l1_errmsg(t));

    /* The reader leaves: the writer forgets it and memory comes back. */
    write_byte(ch.hold);
    read_byte(ch.ready);
    settle(t, &st);
    cr_assert_eq(st.stuck_reader_pid, 0);
    cr_assert_eq(st.retired, 0);
    char key[32];
    int klen = key_of(key, sizeof(key), 1);
    tu_value_make(val, sizeof(val), 1, 99);
    cr_assert_eq(khala__l1_put(t, key, (size_t)klen, val, sizeof(val), 0, 0, NULL), 0, "%s",
                 khala__l1_errmsg(t));
    close(ch.hold);
    cr_assert_eq(wait_exit(ch.pid), CHILD_OK);
    close(ch.ready);
    khala__l1_close(t, 1);
}

/* Sibling: a delete needs room in the retire ring, which a stuck reader can keep full. It used
 * to fail with KHALA_EBLOCKED and leave the old value readable (khalad deletes from L1 after
 * writing the levels below, so L1 would then serve a stale value). Now the item is marked
 * expired in place: readers miss it at once, and the sweep unlinks it once the ring drains. */
Test(readers, delete_under_a_stuck_reader_with_a_full_retire_ring_hides_the_key) {
    khala_l1_t *t = tu_writer(g_name, 64, 1024 * 1024);
    fill(t, 16, 0);
    child_t ch = spawn_section_child(16, 1);
    int rc = 0;
    for (uint64_t round = 1; round < 5000 && rc == 0; round++)
        rc = khala__l1_put(t, "key-0", 5, "v", 1, 0, 0, NULL);
    cr_assert_eq(rc, KHALA_EBLOCKED, "the retire ring fills up behind the stuck reader: %d", rc);
    khala_cache_t *c = NULL;
    cr_assert_eq(khala_cache_open(g_name, NULL, &c), 0);
    char key[32], buf[2048];
    size_t len = 0;
    int klen = key_of(key, sizeof(key), 5);
    cr_assert_eq(khala_cache_get(c, key, (size_t)klen, buf, sizeof(buf), &len), 0);
    cr_assert_eq(khala__l1_delete(t, key, (size_t)klen), 0, "%s", khala__l1_errmsg(t));
    cr_assert_eq(khala_cache_get(c, key, (size_t)klen, buf, sizeof(buf), &len), KHALA_ENOTFOUND,
                 "a deleted key is never read again");
    const khala_item_t *it;
    cr_assert_eq(khala__l1_find(t, key, (size_t)klen, &it), KHALA_ENOTFOUND);
    cr_assert_eq(khala__l1_check(t), 0, "%s", khala__l1_errmsg(t));
    /* The reader leaves; the sweep unlinks the marked item. */
    write_byte(ch.hold);
    read_byte(ch.ready);
    khala_l1_stats_t st;
    settle(t, &st);
    (void)khala__l1_sweep(t, 64);
    khala__l1_stats(t, &st);
    cr_assert_eq(st.items, 15, "%llu items", (unsigned long long)st.items);
    cr_assert_eq(khala__l1_check(t), 0, "%s", khala__l1_errmsg(t));
    khala_cache_close(c);
    close(ch.hold);
    cr_assert_eq(wait_exit(ch.pid), CHILD_OK);
    close(ch.ready);
    khala__l1_close(t, 1);
}

/* l1_table.h: "Errors: ... KHALA_EBLOCKED ... and on all of them the table is unchanged." */
Test(readers, put_failing_with_eblocked_leaves_the_table_unchanged) {
    enum { NKEYS = 200, VLEN = 1000 };
    khala_l1_t *t = small_arena_writer(NKEYS, VLEN);
    khala_l1_stats_t before, after;
    settle(t, &before);
    cr_assert_gt(before.evictions, 0, "the fill must exceed the arena");
    cr_assert_gt(before.items, 0);

    child_t ch = spawn_section_child(NKEYS, 1);
    uint8_t val[VLEN];
    char key[32];
    int klen = key_of(key, sizeof(key), NKEYS + 7);
    tu_value_make(val, sizeof(val), NKEYS + 7, 1);
    int rc = khala__l1_put(t, key, (size_t)klen, val, sizeof(val), 0, 0, NULL);
    cr_assert_eq(rc, KHALA_EBLOCKED, "a put that needs memory pinned by a stuck reader: %d", rc);
    khala__l1_stats(t, &after);
    int check = khala__l1_check(t);

    write_byte(ch.hold);
    read_byte(ch.ready);
    close(ch.hold);
    cr_assert_eq(wait_exit(ch.pid), CHILD_OK);
    close(ch.ready);
    khala__l1_close(t, 1);
    cr_assert_eq(check, 0, "the table is consistent after the failed put");
    cr_assert_eq(after.items, before.items,
                 "the failed put evicted %llu of %llu items (evictions %llu -> %llu)",
                 (unsigned long long)(before.items - after.items), (unsigned long long)before.items,
                 (unsigned long long)before.evictions, (unsigned long long)after.evictions);
    cr_assert_eq(after.evictions, before.evictions);
    cr_assert_eq(after.item_bytes, before.item_bytes);
}

Test(readers, enoreader_when_every_slot_is_taken_until_one_is_released) {
    khala_seg_config_t cfg = tu_config(64, 64 * 1024);
    cfg.max_readers = 2;
    khala_l1_t *t = NULL;
    char err[256] = "";
    cr_assert_eq(khala__l1_open(g_name, &cfg, &t, err, sizeof(err)), 0, "%s", err);
    fill(t, 4, 0);
    child_t a = spawn_section_child(4, 0);
    child_t b = spawn_section_child(4, 1);
    khala_l1_stats_t st;
    khala__l1_stats(t, &st);
    cr_assert_eq(st.readers, 2);

    khala_cache_t *c = NULL;
    cr_assert_eq(khala_cache_open(g_name, NULL, &c), 0, "%s", khala_cache_errmsg(NULL));
    char key[32], buf[2048];
    size_t len = 0;
    int klen = key_of(key, sizeof(key), 1);
    int rc = khala_cache_get(c, key, (size_t)klen, buf, sizeof(buf), &len);
    cr_assert_eq(rc, KHALA_ENOREADER, "a third reader of 2 slots: %d", rc);
    cr_assert(strstr(khala_cache_errmsg(c), "2 reader slots"), "message: %s",
              khala_cache_errmsg(c));
    cr_assert_eq(khala_read_begin(c), KHALA_ENOREADER);

    /* One reader leaves (without closing: a dead owner's lock is gone); its slot is free. */
    cr_assert_eq(kill(a.pid, SIGKILL), 0);
    int status;
    cr_assert_eq(waitpid(a.pid, &status, 0), a.pid);
    close_child_fds(&a);
    rc = khala_cache_get(c, key, (size_t)klen, buf, sizeof(buf), &len);
    cr_assert_eq(rc, 0, "the freed slot serves a new reader: %d %s", rc, khala_cache_errmsg(c));
    cr_assert(tu_value_ok((uint8_t *)buf, len, 1));
    khala__l1_stats(t, &st);
    cr_assert_eq(st.readers, 2);

    write_byte(b.hold);
    read_byte(b.ready);
    close(b.hold);
    cr_assert_eq(wait_exit(b.pid), CHILD_OK);
    close(b.ready);
    khala_cache_close(c);
    khala__l1_stats(t, &st);
    cr_assert_eq(st.readers, 0);
    khala__l1_close(t, 1);
}

/* A short-lived reader: one get, then it dies outside any section, without closing. */
static void short_child(uint32_t nkeys, uint32_t k, int sigkill) {
    khala_cache_t *c = NULL;
    if (khala_cache_open(g_name, NULL, &c) != 0)
        _exit(CHILD_EOPEN);
    char key[32];
    uint8_t buf[2048];
    size_t len = 0;
    int klen = key_of(key, sizeof(key), k % nkeys);
    int rc = khala_cache_get(c, key, (size_t)klen, buf, sizeof(buf), &len);
    if (rc != 0)
        _exit(CHILD_EGET);
    if (!tu_value_ok(buf, len, k % nkeys))
        _exit(CHILD_EBAD);
    if (sigkill)
        raise(SIGKILL);
    _exit(CHILD_OK);
}

Test(readers, slots_of_dead_readers_outside_a_section_are_reused) {
    enum { NKEYS = 16, CHILDREN = 60 };
    khala_l1_t *t = tu_writer(g_name, 1024, 1024 * 1024);
    khala_seg_t *s = khala__l1_seg(t);
    fill(t, NKEYS, 0);
    /* One reader stays alive in a slot the whole time. */
    child_t keep = spawn_section_child(NKEYS, 0);
    khala_l1_stats_t st;
    for (uint32_t i = 0; i < CHILDREN; i++) {
        pid_t pid = fork();
        cr_assert_neq(pid, -1);
        if (pid == 0)
            short_child(NKEYS, i, i % 2);
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        if (i % 2)
            cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child %u: %#x", i,
                      status);
        else
            cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == CHILD_OK, "child %u: %#x", i,
                      status);
        fill(t, NKEYS, i + 1);
        cr_assert_geq(khala__l1_maintain(t), 0);
        khala__l1_stats(t, &st);
        cr_assert_leq(st.readers, 2, "child %u: slots in use grew to %u", i, st.readers);
        cr_assert_leq(khala_load_acquire(&s->rhdr->hwm), 2, "child %u: slot high-water mark %u", i,
                      khala_load_acquire(&s->rhdr->hwm));
        cr_assert_eq(st.retired, 0, "child %u: a dead reader outside a section pins nothing", i);
    }
    cr_assert_eq(st.reader_hits, CHILDREN + 1, "every child's hit is counted in its slot");
    write_byte(keep.hold);
    read_byte(keep.ready);
    close(keep.hold);
    cr_assert_eq(wait_exit(keep.pid), CHILD_OK);
    close(keep.ready);
    cr_assert_eq(khala__l1_check(t), 0, "%s", khala__l1_errmsg(t));
    khala__l1_close(t, 1);
}

/* The slot of the reader whose pid is `pid`, or NULL. */
static khala_slot_t *slot_of_pid(const khala_seg_t *s, pid_t pid) {
    for (uint32_t i = 0; i < s->nslots; i++) {
        khala_slot_t *slot = khala__seg_slot(s, i);
        if (khala_load_relaxed(&slot->pid) == (uint64_t)pid)
            return slot;
    }
    return NULL;
}

/* Bug: reaping skipped every slot whose pid equalled the writer's own, so a dead reader that
 * had the writer's pid number (both pid 1 in their own pid namespaces, or a reused pid) pinned
 * memory for good and every put that needed memory failed with KHALA_EBLOCKED. Here the dead
 * reader's slot is made to show the writer's pid, as a reader in another namespace would. */
Test(readers, dead_reader_showing_the_writers_pid_is_reaped) {
    enum { NKEYS = 32 };
    khala_l1_t *t = tu_writer(g_name, 1024, 1024 * 1024);
    fill(t, NKEYS, 0);
    child_t ch = spawn_section_child(NKEYS, 1);
    khala_slot_t *slot = slot_of_pid(khala__l1_seg(t), ch.pid);
    cr_assert_not_null(slot, "the reader's slot");
    khala_store_relaxed(&slot->pid, (uint64_t)getpid());
    fill(t, NKEYS, 1); /* retire what the reader can see */
    cr_assert_eq(kill(ch.pid, SIGKILL), 0);
    int status;
    cr_assert_eq(waitpid(ch.pid, &status, 0), ch.pid);
    close_child_fds(&ch);
    khala_l1_stats_t st;
    khala__l1_stats(t, &st);
    cr_assert_gt(st.retired, 0, "the dead reader pins the old items");
    cr_assert_eq(khala__readers_reap(khala__l1_seg(t), UINT64_MAX), 1, "its slot is reaped");
    settle(t, &st);
    cr_assert_eq(st.retired, 0, "%llu items stay retired", (unsigned long long)st.retired);
    cr_assert_eq(st.readers, 0, "%u slots in use", st.readers);
    cr_assert_eq(khala__l1_check(t), 0, "%s", khala__l1_errmsg(t));
    khala__l1_close(t, 1);
}

/* The same mistake on the claim side: a dead reader's slot that shows the claimer's pid was
 * skipped as "a thread of this process" forever. With one slot, nobody could read again. */
Test(readers, slot_of_a_dead_reader_showing_the_claimers_pid_is_reused) {
    char err[256] = "";
    khala_seg_config_t cfg;
    khala__seg_config_init(&cfg);
    cfg.max_items = 64;
    cfg.max_bytes = 256 * 1024;
    cfg.max_readers = 1;
    khala_l1_t *t = NULL;
    cr_assert_eq(khala__l1_open(g_name, &cfg, &t, err, sizeof(err)), 0, "%s", err);
    fill(t, 8, 0);
    child_t ch = spawn_section_child(8, 0);
    khala_slot_t *slot = slot_of_pid(khala__l1_seg(t), ch.pid);
    cr_assert_not_null(slot, "the reader's slot");
    khala_store_relaxed(&slot->pid, (uint64_t)getpid());
    cr_assert_eq(kill(ch.pid, SIGKILL), 0);
    int status;
    cr_assert_eq(waitpid(ch.pid, &status, 0), ch.pid);
    close_child_fds(&ch);
    khala_cache_t *c = NULL;
    cr_assert_eq(khala_cache_open(g_name, NULL, &c), 0);
    char key[32], buf[2048];
    size_t len = 0;
    int klen = key_of(key, sizeof(key), 3);
    int rc = khala_cache_get(c, key, (size_t)klen, buf, sizeof(buf), &len);
    cr_assert_eq(rc, 0, "get: %d %s", rc, khala_cache_errmsg(c));
    cr_assert(tu_value_ok((const uint8_t *)buf, len, 3));
    khala_cache_close(c);
    khala__l1_close(t, 1);
}
