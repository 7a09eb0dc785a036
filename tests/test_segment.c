/*
 * Tests of the segment module (lib/segment.c): creating and attaching, and every way an attach
 * must refuse a segment (missing, bad name, other layout, bad magic, truncated, inconsistent,
 * mismatched readers file, replaced) with the exact code and without crashing; the writer lock
 * (exactly one of two racing writers wins, the loser names the winner, a killed writer frees the
 * name); and the file modes that keep readers from resizing the data file.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "khala/error.h"
#include "l1_table.h"
#include "segment.h"
#include "segment_create.h"
#include "testutil.h"

static char g_name[KHALA_NAME_MAX + 1];
static char g_err[256];

static void setup(void) {
    snprintf(g_name, sizeof(g_name), "%s", tu_name("seg"));
    g_err[0] = '\0';
}

static void teardown(void) {
    (void)khala__seg_unlink(g_name);
}

TestSuite(segment, .init = setup, .fini = teardown, .timeout = 30);

/* A writer segment made with khala__seg_create and a small configuration. */
static void create(khala_seg_t *w) {
    khala_seg_config_t cfg = tu_config(64, 64 * 1024);
    int rc = khala__seg_create(w, g_name, &cfg, g_err, sizeof(g_err));
    cr_assert_eq(rc, 0, "create: %d %s", rc, g_err);
}

static int attach(khala_seg_t *r) {
    g_err[0] = '\0';
    return khala__seg_attach(r, g_name, 0, g_err, sizeof(g_err));
}

/* Shrink the data file of g_name to `size` bytes through its /dev/shm name. */
static void truncate_data(uint64_t size) {
    char dname[128];
    khala__seg_shm_names(g_name, dname, NULL, sizeof(dname));
    int fd = shm_open(dname, O_RDWR, 0);
    cr_assert_geq(fd, 0, "shm_open %s", dname);
    cr_assert_eq(ftruncate(fd, (off_t)size), 0);
    close(fd);
}

/* A published segment carries the seed of its live index: a reader that attaches before the
 * writer formats the table (or with no table writer at all) hashes with the real seed. */
Test(segment, a_new_segment_publishes_the_seed_of_its_first_index) {
    khala_seg_t w, r;
    create(&w);
    cr_assert_eq(attach(&r), 0, "attach: %s", g_err);
    khala_l1_index_t ix = khala__l1_index(&r);
    cr_assert_eq(ix.count, 0);
    cr_assert_neq(ix.seed, 0);
    cr_assert_eq(ix.seed, r.hash_seed);
    khala__seg_detach(&r);
    khala__seg_detach(&w);
}

Test(segment, create_then_attach_read_only_succeeds) {
    khala_seg_t w, r;
    create(&w);
    cr_assert_eq(w.writable, 1);
    int rc = attach(&r);
    cr_assert_eq(rc, 0, "attach: %d %s", rc, g_err);
    cr_assert_eq(r.writable, 0);
    cr_assert_eq(r.generation, w.generation);
    cr_assert_eq(r.hash_seed, w.hash_seed);
    cr_assert_eq(r.bucket_count, w.bucket_count);
    cr_assert_eq(r.bucket_count, 64 / KHALA_BUCKET_LOAD);
    cr_assert_eq(r.arena_lo, w.arena_lo);
    cr_assert_eq(r.arena_hi, w.arena_hi);
    cr_assert_eq(r.nslots, 32);
    cr_assert_eq(r.hdr->max_items, 64);
    cr_assert_geq(r.arena_hi - r.arena_lo, 64 * 1024);
    cr_assert_eq(r.hdr->generation, 1);
    cr_assert_eq(khala_load_relaxed(&r.hdr->state), KHALA_SEG_LIVE);
    khala__seg_detach(&r);
    khala__seg_detach(&w);
}

Test(segment, detach_is_idempotent) {
    khala_seg_t w, r;
    create(&w);
    cr_assert_eq(attach(&r), 0);
    khala__seg_detach(&r);
    khala__seg_detach(&r);
    cr_assert_eq(r.data_fd, -1);
    cr_assert_null(r.base);
    khala__seg_detach(&w);
}

Test(segment, attach_to_missing_name_is_enoent) {
    khala_seg_t r;
    cr_assert_eq(attach(&r), -ENOENT);
    cr_assert_neq(strstr(g_err, g_name), NULL, "message: %s", g_err);
}

Test(segment, unlink_of_missing_segment_is_ok) {
    cr_assert_eq(khala__seg_unlink(g_name), 0);
}

Test(segment, bad_names_are_ename) {
    char longname[KHALA_NAME_MAX + 2];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    const char *bad[] = {"", longname, "a/b", "/abs", "..\x01", "sp ace", "n\xc3\xa9"};
    khala_seg_config_t cfg = tu_config(64, 64 * 1024);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        khala_seg_t s;
        cr_assert_eq(khala__seg_name_check(bad[i], g_err, sizeof(g_err)), KHALA_ENAME, "'%s'",
                     bad[i]);
        cr_assert_gt(strlen(g_err), 0);
        cr_assert_eq(khala__seg_attach(&s, bad[i], 0, g_err, sizeof(g_err)), KHALA_ENAME);
        cr_assert_eq(khala__seg_create(&s, bad[i], &cfg, g_err, sizeof(g_err)), KHALA_ENAME);
    }
    cr_assert_eq(khala__seg_name_check(NULL, g_err, sizeof(g_err)), KHALA_ENAME);
}

Test(segment, longest_name_and_every_allowed_character_are_accepted) {
    char name[KHALA_NAME_MAX + 1];
    memset(name, 'z', KHALA_NAME_MAX);
    name[KHALA_NAME_MAX] = '\0';
    cr_assert_eq(khala__seg_name_check(name, g_err, sizeof(g_err)), 0);
    cr_assert_eq(khala__seg_name_check("Az09_.-", g_err, sizeof(g_err)), 0);
}

Test(segment, bad_configs_are_econfig) {
    khala_seg_config_t base = tu_config(64, 64 * 1024);
    khala_seg_config_t bad[8];
    for (int i = 0; i < 8; i++)
        bad[i] = base;
    bad[0].max_items = 0;
    bad[1].max_items = 15;
    bad[2].max_bytes = 64 * 1024 - 1;
    bad[3].max_value = 256u * 1024 * 1024 + 1;
    bad[4].max_readers = 0;
    bad[5].ring_size = 100; /* not a power of two */
    bad[6].ring_size = 8;   /* too small */
    bad[7].ring_size = 0;
    for (int i = 0; i < 8; i++) {
        khala_seg_t s;
        g_err[0] = '\0';
        cr_assert_eq(khala__seg_create(&s, g_name, &bad[i], g_err, sizeof(g_err)), KHALA_ECONFIG,
                     "config %d", i);
        cr_assert_gt(strlen(g_err), 0, "config %d has no message", i);
        /* Nothing was created. */
        khala_seg_t r;
        cr_assert_eq(attach(&r), -ENOENT, "config %d left a segment behind", i);
    }
    khala_l1_t *t = NULL;
    cr_assert_eq(khala__l1_open(g_name, &bad[5], &t, g_err, sizeof(g_err)), KHALA_ECONFIG);
    cr_assert_null(t);
    cr_assert_neq(strstr(g_err, "ring_size is 100"), NULL, "message: %s", g_err);
}

Test(segment, smallest_config_is_accepted) {
    khala_seg_config_t cfg = tu_config(16, 64 * 1024);
    cfg.max_readers = 1;
    cfg.ring_size = 16;
    cfg.max_value = 0;
    khala_seg_t w;
    cr_assert_eq(khala__seg_create(&w, g_name, &cfg, g_err, sizeof(g_err)), 0, "%s", g_err);
    khala__seg_detach(&w);
}

Test(segment, other_layout_version_is_elayout) {
    khala_seg_t w, r;
    create(&w);
    w.hdr->layout_version = KHALA_LAYOUT_VERSION + 1;
    cr_assert_eq(attach(&r), KHALA_ELAYOUT);
    cr_assert_neq(strstr(g_err, "layout version"), NULL, "message: %s", g_err);
    khala__seg_detach(&w);
}

Test(segment, readers_file_of_other_layout_version_is_elayout) {
    khala_seg_t w, r;
    create(&w);
    w.rhdr->layout_version = KHALA_LAYOUT_VERSION + 1;
    cr_assert_eq(attach(&r), KHALA_ELAYOUT);
    khala__seg_detach(&w);
}

Test(segment, bad_magic_is_ecorrupt) {
    khala_seg_t w, r;
    create(&w);
    w.hdr->magic ^= 1;
    cr_assert_eq(attach(&r), KHALA_ECORRUPT);
    cr_assert_neq(strstr(g_err, "magic"), NULL, "message: %s", g_err);
    khala__seg_detach(&w);
}

Test(segment, zeroed_header_is_ecorrupt) {
    /* What a reader sees while the writer has created the file but not yet published it. */
    khala_seg_t w, r;
    create(&w);
    memset(w.base, 0, KHALA_SEG_HEADER_SIZE);
    cr_assert_eq(attach(&r), KHALA_ECORRUPT);
    khala__seg_detach(&w);
}

Test(segment, bad_readers_magic_is_ecorrupt) {
    khala_seg_t w, r;
    create(&w);
    w.rhdr->magic = 0;
    cr_assert_eq(attach(&r), KHALA_ECORRUPT);
    khala__seg_detach(&w);
}

Test(segment, truncated_data_file_is_ecorrupt) {
    khala_seg_t w, r;
    create(&w);
    uint64_t size = w.size;
    khala__seg_detach(&w); /* the writer must not touch pages past the new end */
    truncate_data(size - 4096);
    cr_assert_eq(attach(&r), KHALA_ECORRUPT);
    cr_assert_neq(strstr(g_err, "truncated"), NULL, "message: %s", g_err);
}

Test(segment, data_file_shorter_than_a_header_is_ecorrupt) {
    khala_seg_t w, r;
    create(&w);
    khala__seg_detach(&w);
    const uint64_t sizes[] = {KHALA_SEG_HEADER_SIZE - 1, 100, 0};
    for (size_t i = 0; i < 3; i++) {
        truncate_data(sizes[i]);
        cr_assert_eq(attach(&r), KHALA_ECORRUPT, "size %llu", (unsigned long long)sizes[i]);
    }
}

Test(segment, grown_data_file_is_ecorrupt) {
    khala_seg_t w, r;
    create(&w);
    uint64_t size = w.size;
    khala__seg_detach(&w);
    truncate_data(size + 4096);
    cr_assert_eq(attach(&r), KHALA_ECORRUPT);
}

Test(segment, truncated_readers_file_is_ecorrupt) {
    khala_seg_t w, r;
    create(&w);
    uint64_t rsize = w.rsize;
    khala__seg_detach(&w);
    char rname[128];
    khala__seg_shm_names(g_name, NULL, rname, sizeof(rname));
    int fd = shm_open(rname, O_RDWR, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(ftruncate(fd, (off_t)(rsize / 2)), 0);
    cr_assert_eq(attach(&r), KHALA_ECORRUPT);
    cr_assert_eq(ftruncate(fd, 64), 0);
    cr_assert_eq(attach(&r), KHALA_ECORRUPT);
    close(fd);
}

Test(segment, missing_readers_file_is_enoent) {
    khala_seg_t w, r;
    create(&w);
    char rname[128];
    khala__seg_shm_names(g_name, NULL, rname, sizeof(rname));
    cr_assert_eq(shm_unlink(rname), 0);
    cr_assert_eq(attach(&r), -ENOENT);
    khala__seg_detach(&w);
}

Test(segment, inconsistent_header_offsets_are_ecorrupt) {
    /* Each field is changed alone, to a value that would point a reader outside its regions. */
    khala_seg_t w, r;
    create(&w);
    khala_seg_header_t *h = w.hdr;
    uint64_t *fields[] = {&h->bucket_off, &h->bucket_count, &h->desc_off,    &h->ghost_off,
                          &h->ghost_cap,  &h->retire_off,   &h->alloc_off,   &h->bitmap_off,
                          &h->arena_off,  &h->arena_size,   &h->readers_size};
    const char *names[] = {"bucket_off", "bucket_count", "desc_off",    "ghost_off",
                           "ghost_cap",  "retire_off",   "alloc_off",   "bitmap_off",
                           "arena_off",  "arena_size",   "readers_size"};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        uint64_t saved = *fields[i];
        *fields[i] = saved + 4096;
        cr_assert_eq(attach(&r), KHALA_ECORRUPT, "%s + 4096 accepted", names[i]);
        *fields[i] = saved * 1024;
        cr_assert_eq(attach(&r), KHALA_ECORRUPT, "%s * 1024 accepted", names[i]);
        *fields[i] = saved;
    }
    h->max_items = 0;
    cr_assert_eq(attach(&r), KHALA_ECORRUPT, "max_items 0 accepted");
    h->max_items = 64;
    h->ring_size = 100;
    cr_assert_eq(attach(&r), KHALA_ECORRUPT, "ring_size 100 accepted");
    h->ring_size = 256;
    h->header_size = 128;
    cr_assert_eq(attach(&r), KHALA_ECORRUPT, "header_size 128 accepted");
    h->header_size = KHALA_SEG_HEADER_SIZE;
    /* Restored: it attaches again. */
    cr_assert_eq(attach(&r), 0, "%s", g_err);
    khala__seg_detach(&r);
    khala__seg_detach(&w);
}

Test(segment, readers_file_geometry_mismatch_is_ecorrupt) {
    khala_seg_t w, r;
    create(&w);
    w.rhdr->nslots = 33;
    cr_assert_eq(attach(&r), KHALA_ECORRUPT);
    w.rhdr->nslots = 32;
    w.rhdr->ring_size = 512;
    cr_assert_eq(attach(&r), KHALA_ECORRUPT);
    khala__seg_detach(&w);
}

Test(segment, readers_file_generation_mismatch_is_elayout) {
    khala_seg_t w, r;
    create(&w);
    w.rhdr->generation = w.generation + 1;
    cr_assert_eq(attach(&r), KHALA_ELAYOUT);
    cr_assert_neq(strstr(g_err, "generation"), NULL, "message: %s", g_err);
    khala__seg_detach(&w);
}

Test(segment, replaced_segment_is_elayout) {
    khala_seg_t w, r;
    create(&w);
    khala_store_relaxed(&w.hdr->state, KHALA_SEG_REPLACED);
    cr_assert_eq(attach(&r), KHALA_ELAYOUT);
    khala__seg_detach(&w);
}

Test(segment, second_writer_while_first_alive_is_eexist) {
    khala_l1_t *t1 = tu_writer(g_name, 64, 64 * 1024);
    khala_l1_t *t2 = NULL;
    khala_seg_config_t cfg = tu_config(64, 64 * 1024);
    cr_assert_eq(khala__l1_open(g_name, &cfg, &t2, g_err, sizeof(g_err)), KHALA_EEXIST);
    cr_assert_null(t2);
    khala_seg_t s;
    cr_assert_eq(khala__seg_create(&s, g_name, &cfg, g_err, sizeof(g_err)), KHALA_EEXIST);
    /* The first writer's segment is untouched: same generation, still live, still attachable. */
    khala_seg_t r;
    cr_assert_eq(attach(&r), 0, "%s", g_err);
    cr_assert_eq(r.generation, 1);
    cr_assert_eq(khala_load_relaxed(&r.hdr->state), KHALA_SEG_LIVE);
    khala__seg_detach(&r);
    cr_assert_eq(khala__l1_put(t1, "k", 1, "v", 1, 0, 0, NULL), 0);
    cr_assert_eq(khala__l1_check(t1), 0);
    khala__l1_close(t1, 1);
}

Test(segment, new_writer_after_close_replaces_the_segment) {
    khala_l1_t *t1 = tu_writer(g_name, 64, 64 * 1024);
    khala_seg_t old;
    cr_assert_eq(attach(&old), 0, "%s", g_err);
    cr_assert_eq(old.generation, 1);
    khala__l1_close(t1, 0); /* no unlink: the files stay, without a writer */

    khala_seg_t r;
    cr_assert_eq(attach(&r), 0, "a writerless segment still attaches: %s", g_err);
    khala__seg_detach(&r);

    khala_l1_t *t2 = tu_writer(g_name, 128, 128 * 1024);
    /* The old mapping is still valid and says it was replaced. */
    cr_assert_eq(khala_load_acquire(&old.hdr->state), KHALA_SEG_REPLACED);
    cr_assert_eq(attach(&r), 0, "%s", g_err);
    cr_assert_eq(r.generation, 2);
    cr_assert_eq(r.hdr->max_items, 128);
    cr_assert_neq(r.hash_seed, 0);
    khala__seg_detach(&r);
    khala__seg_detach(&old);

    /* And once more: generations keep counting. */
    khala__l1_close(t2, 0);
    khala_l1_t *t3 = tu_writer(g_name, 64, 64 * 1024);
    cr_assert_eq(attach(&r), 0, "%s", g_err);
    cr_assert_eq(r.generation, 3);
    khala__seg_detach(&r);
    khala__l1_close(t3, 1);
}

Test(segment, writer_after_unlink_starts_at_generation_one) {
    khala_l1_t *t1 = tu_writer(g_name, 64, 64 * 1024);
    khala__l1_close(t1, 1);
    khala_l1_t *t2 = tu_writer(g_name, 64, 64 * 1024);
    khala_seg_t r;
    cr_assert_eq(attach(&r), 0, "%s", g_err);
    cr_assert_eq(r.generation, 1);
    khala__seg_detach(&r);
    khala__l1_close(t2, 1);
}

Test(segment, garbage_file_under_the_name_is_replaced_by_a_writer) {
    /* A leftover that is not a khala segment at all must not stop a writer. */
    char dname[128];
    khala__seg_shm_names(g_name, dname, NULL, sizeof(dname));
    int fd = shm_open(dname, O_RDWR | O_CREAT | O_EXCL, 0600);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "not a segment", 13), 13);
    close(fd);
    khala_seg_t r;
    cr_assert_eq(attach(&r), KHALA_ECORRUPT);
    khala_l1_t *t = tu_writer(g_name, 64, 64 * 1024);
    cr_assert_eq(attach(&r), 0, "%s", g_err);
    khala__seg_detach(&r);
    khala__l1_close(t, 1);
}

/* ---- The writer lock: two writers racing for one name ---- */

/* How a racing child becomes a writer. */
enum race_how {
    RACE_SEG_CREATE,  /* khala__seg_create */
    RACE_L1_OPEN,     /* khala__l1_open_ex without flags */
    RACE_L1_REATTACH, /* khala__l1_open_ex with KHALA_L1_REATTACH */
};

/* What a racing child reports to the parent. */
typedef struct race_result {
    int rc;
    int pid;
    uint64_t generation; /* of the segment it made or adopted, when rc == 0 */
    uint64_t hash_seed;  /* idem: tells the winner's files from anyone else's */
    char msg[200];
} race_result_t;

/* Child: wait at the barrier, try to become the writer, report, then stay alive (holding
 * whatever it won) until the parent closes `hold`. Never returns. */
static void race_child(enum race_how how, int go, int report, int hold) {
    khala_seg_config_t cfg = tu_config(64, 64 * 1024);
    race_result_t res;
    khala_seg_t s;
    khala_l1_t *t = NULL;
    char c;
    memset(&res, 0, sizeof(res));
    res.pid = (int)getpid();
    if (read(go, &c, 1) != 1)
        _exit(2);
    if (how == RACE_SEG_CREATE) {
        res.rc = khala__seg_create(&s, g_name, &cfg, res.msg, sizeof(res.msg));
        if (res.rc == 0) {
            res.generation = s.generation;
            res.hash_seed = s.hash_seed;
        }
    } else {
        unsigned flags = how == RACE_L1_REATTACH ? KHALA_L1_REATTACH : KHALA_L1_DEFAULT;
        res.rc = khala__l1_open_ex(g_name, &cfg, flags, &t, res.msg, sizeof(res.msg));
        if (res.rc == 0) {
            res.generation = khala__l1_seg(t)->generation;
            res.hash_seed = khala__l1_seg(t)->hash_seed;
        }
    }
    if (write(report, &res, sizeof(res)) != (ssize_t)sizeof(res))
        _exit(3);
    (void)read(hold, &c, 1); /* returns 0 when the parent closes its end */
    _exit(0);
}

/* Run `rounds` races of two children doing `how` on g_name. With `existing`, each round starts
 * from a writerless segment left by a closed writer; otherwise from nothing. Asserts that
 * exactly one child wins, that the loser gets KHALA_EEXIST naming the winner's pid, and that the
 * winner's segment is the one a reader attaches under the name while the winner lives. */
static void race_rounds(enum race_how how, int existing, int rounds) {
    for (int round = 0; round < rounds; round++) {
        (void)khala__seg_unlink(g_name);
        if (existing) {
            khala_l1_t *t = tu_writer(g_name, 64, 64 * 1024);
            khala__l1_close(t, 0);
        }
        int go[2], report[2], hold[2];
        cr_assert_eq(pipe(go), 0);
        cr_assert_eq(pipe(report), 0);
        cr_assert_eq(pipe(hold), 0);
        pid_t kids[2];
        for (int i = 0; i < 2; i++) {
            kids[i] = fork();
            cr_assert_geq(kids[i], 0);
            if (kids[i] == 0) {
                close(go[1]);
                close(report[0]);
                close(hold[1]);
                race_child(how, go[0], report[1], hold[0]);
            }
        }
        close(go[0]);
        close(report[1]);
        close(hold[0]);
        cr_assert_eq(write(go[1], "gg", 2), 2); /* both children start together */
        race_result_t res[2];
        for (int i = 0; i < 2; i++)
            cr_assert_eq(read(report[0], &res[i], sizeof(res[i])), (ssize_t)sizeof(res[i]),
                         "round %d: a child died", round);
        int winners = (res[0].rc == 0) + (res[1].rc == 0);
        cr_assert_eq(winners, 1,
                     "round %d (how %d, existing %d): %d writers won (%d '%s', %d '%s')", round,
                     how, existing, winners, res[0].rc, res[0].msg, res[1].rc, res[1].msg);
        const race_result_t *win = res[0].rc == 0 ? &res[0] : &res[1];
        const race_result_t *lose = res[0].rc == 0 ? &res[1] : &res[0];
        cr_assert_eq(lose->rc, KHALA_EEXIST, "round %d: loser got %d '%s'", round, lose->rc,
                     lose->msg);
        char want[32];
        snprintf(want, sizeof(want), "(pid %d)", win->pid);
        cr_assert_neq(strstr(lose->msg, want), NULL, "round %d: loser's message lacks %s: '%s'",
                      round, want, lose->msg);
        /* The winner, still alive, still has its files under the name. */
        khala_seg_t r;
        int rc = attach(&r);
        cr_assert_eq(rc, 0, "round %d: the winner's segment is gone: %d %s", round, rc, g_err);
        cr_assert_eq(r.hash_seed, win->hash_seed, "round %d: another segment under the name",
                     round);
        cr_assert_eq(r.generation, win->generation);
        khala__seg_detach(&r);
        close(hold[1]);
        close(go[1]);
        close(report[0]);
        for (int i = 0; i < 2; i++) {
            int st = 0;
            cr_assert_eq(waitpid(kids[i], &st, 0), kids[i]);
            cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "round %d: child status %d", round,
                      st);
        }
    }
}

#define RACE_ROUNDS 150

Test(segment, racing_seg_create_on_a_new_name_has_one_winner, .timeout = 60) {
    race_rounds(RACE_SEG_CREATE, 0, RACE_ROUNDS);
}

Test(segment, racing_seg_create_over_an_old_segment_has_one_winner, .timeout = 60) {
    race_rounds(RACE_SEG_CREATE, 1, RACE_ROUNDS);
}

Test(segment, racing_l1_open_has_one_winner, .timeout = 60) {
    race_rounds(RACE_L1_OPEN, 0, RACE_ROUNDS);
    race_rounds(RACE_L1_OPEN, 1, RACE_ROUNDS);
}

Test(segment, racing_l1_open_reattach_has_one_winner, .timeout = 60) {
    race_rounds(RACE_L1_REATTACH, 0, RACE_ROUNDS);
    race_rounds(RACE_L1_REATTACH, 1, RACE_ROUNDS);
}

Test(segment, second_writer_in_another_process_names_the_first) {
    khala_l1_t *t1 = tu_writer(g_name, 64, 64 * 1024);
    int report[2];
    cr_assert_eq(pipe(report), 0);
    pid_t kid = fork();
    cr_assert_geq(kid, 0);
    if (kid == 0) {
        khala_seg_config_t cfg = tu_config(64, 64 * 1024);
        race_result_t res;
        khala_l1_t *t2 = NULL;
        memset(&res, 0, sizeof(res));
        res.rc = khala__l1_open_ex(g_name, &cfg, KHALA_L1_REATTACH, &t2, res.msg, sizeof(res.msg));
        _exit(write(report[1], &res, sizeof(res)) == (ssize_t)sizeof(res) ? 0 : 1);
    }
    race_result_t res;
    cr_assert_eq(read(report[0], &res, sizeof(res)), (ssize_t)sizeof(res));
    int st = 0;
    cr_assert_eq(waitpid(kid, &st, 0), kid);
    cr_assert_eq(res.rc, KHALA_EEXIST, "%d %s", res.rc, res.msg);
    char want[KHALA_NAME_MAX + 96];
    snprintf(want, sizeof(want), "cache '%s' already has a live writer (pid %d)", g_name,
             (int)getpid());
    cr_assert_neq(strstr(res.msg, want), NULL, "message: '%s'", res.msg);
    khala__l1_close(t1, 1);
}

Test(segment, writer_killed_by_sigkill_frees_the_name_at_once) {
    for (int reattach = 0; reattach < 2; reattach++) {
        int ready[2];
        cr_assert_eq(pipe(ready), 0);
        pid_t kid = fork();
        cr_assert_geq(kid, 0);
        if (kid == 0) {
            khala_seg_config_t cfg = tu_config(64, 64 * 1024);
            khala_l1_t *t = NULL;
            char msg[200];
            if (khala__l1_open_ex(g_name, &cfg, KHALA_L1_DEFAULT, &t, msg, sizeof(msg)) != 0)
                _exit(1);
            if (write(ready[1], "r", 1) != 1)
                _exit(2);
            for (;;)
                pause();
        }
        char c;
        cr_assert_eq(read(ready[0], &c, 1), 1, "the child could not become the writer");
        /* While it lives, nobody else may write. */
        khala_seg_config_t cfg = tu_config(64, 64 * 1024);
        khala_l1_t *t = NULL;
        cr_assert_eq(khala__l1_open(g_name, &cfg, &t, g_err, sizeof(g_err)), KHALA_EEXIST);
        cr_assert_eq(kill(kid, SIGKILL), 0);
        int st = 0;
        cr_assert_eq(waitpid(kid, &st, 0), kid);
        cr_assert(WIFSIGNALED(st));
        /* No wait, no retry: the kernel released the lock with the process. */
        unsigned flags = reattach ? KHALA_L1_REATTACH : KHALA_L1_DEFAULT;
        int rc = khala__l1_open_ex(g_name, &cfg, flags, &t, g_err, sizeof(g_err));
        cr_assert_eq(rc, 0, "after SIGKILL: %d %s", rc, g_err);
        cr_assert_eq(khala__l1_reattached(t), reattach);
        khala__l1_close(t, 1);
        close(ready[0]);
        close(ready[1]);
    }
}

/* ---- File modes: readers cannot resize the data file ---- */

Test(segment, data_file_is_0640_and_readers_file_0660_whatever_the_umask) {
    char dname[128], rname[128], path[160];
    khala__seg_shm_names(g_name, dname, rname, sizeof(dname));
    const mode_t masks[] = {0, 022, 077};
    for (size_t i = 0; i < 3; i++) {
        mode_t old = umask(masks[i]);
        khala_seg_t w;
        create(&w);
        umask(old);
        struct stat st;
        snprintf(path, sizeof(path), "/dev/shm/%s", dname);
        cr_assert_eq(stat(path, &st), 0);
        cr_assert_eq(st.st_mode & 07777, 0640, "umask %03o: data file mode %04o", masks[i],
                     st.st_mode & 07777);
        snprintf(path, sizeof(path), "/dev/shm/%s", rname);
        cr_assert_eq(stat(path, &st), 0);
        cr_assert_eq(st.st_mode & 07777, 0660, "umask %03o: readers file mode %04o", masks[i],
                     st.st_mode & 07777);
        khala__seg_detach(&w);
        cr_assert_eq(khala__seg_unlink(g_name), 0);
    }
}

Test(segment, gid_out_of_range_is_econfig) {
    khala_seg_config_t cfg = tu_config(64, 64 * 1024);
    const int64_t bad[] = {-2, (int64_t)UINT32_MAX, INT64_MAX};
    for (size_t i = 0; i < 3; i++) {
        khala_seg_t s;
        cfg.gid = bad[i];
        cr_assert_eq(khala__seg_create(&s, g_name, &cfg, g_err, sizeof(g_err)), KHALA_ECONFIG);
        cr_assert_neq(strstr(g_err, "gid is"), NULL, "message: %s", g_err);
    }
}

/* The owner and group of /dev/shm/<shm>. */
static struct stat shm_stat(const char *shm) {
    char path[160];
    struct stat st;
    snprintf(path, sizeof(path), "/dev/shm/%s", shm);
    cr_assert_eq(stat(path, &st), 0, "stat %s", path);
    return st;
}

Test(segment, files_get_the_configured_group_and_an_adopted_segment_gets_the_new_one) {
    if (geteuid() != 0)
        cr_skip_test("needs root to give files to another group");
    char dname[128], rname[128], lname[128];
    khala__seg_shm_names(g_name, dname, rname, sizeof(dname));
    khala__seg_lock_name(g_name, lname, sizeof(lname));
    khala_seg_config_t cfg = tu_config(64, 64 * 1024);
    cfg.gid = 65534;
    khala_l1_t *t = NULL;
    cr_assert_eq(khala__l1_open(g_name, &cfg, &t, g_err, sizeof(g_err)), 0, "%s", g_err);
    cr_assert_eq(shm_stat(dname).st_gid, 65534);
    cr_assert_eq(shm_stat(rname).st_gid, 65534);
    cr_assert_eq(shm_stat(lname).st_gid, getegid(), "the lock file is the writer's alone");
    cr_assert_eq(shm_stat(lname).st_mode & 07777, 0600);
    ino_t ino = shm_stat(dname).st_ino;
    khala__l1_close(t, 0);
    /* A restarted writer configured with its own group (-1) adopts the segment and regroups it,
     * modes unchanged. */
    cfg.gid = -1;
    cr_assert_eq(khala__l1_open_ex(g_name, &cfg, KHALA_L1_REATTACH, &t, g_err, sizeof(g_err)), 0,
                 "%s", g_err);
    cr_assert(khala__l1_reattached(t), "made anew: %s", khala__l1_errmsg(t));
    cr_assert_eq(shm_stat(dname).st_ino, ino);
    cr_assert_eq(shm_stat(dname).st_gid, getegid());
    cr_assert_eq(shm_stat(rname).st_gid, getegid());
    cr_assert_eq(shm_stat(dname).st_mode & 07777, 0640);
    cr_assert_eq(shm_stat(rname).st_mode & 07777, 0660);
    khala__l1_close(t, 0);
}

Test(segment, group_reader_cannot_open_the_data_file_for_writing) {
    if (geteuid() != 0)
        cr_skip_test("needs root to become another user");
    khala_seg_t w;
    create(&w);
    char dname[128], rname[128];
    khala__seg_shm_names(g_name, dname, rname, sizeof(dname));
    /* The files belong to root and a group the reader is in; the reader is another user. */
    const gid_t gid = 65534;
    char path[160];
    snprintf(path, sizeof(path), "/dev/shm/%s", dname);
    cr_assert_eq(chown(path, 0, gid), 0);
    snprintf(path, sizeof(path), "/dev/shm/%s", rname);
    cr_assert_eq(chown(path, 0, gid), 0);
    pid_t kid = fork();
    cr_assert_geq(kid, 0);
    if (kid == 0) {
        if (setgroups(1, &gid) != 0 || setgid(gid) != 0 || setuid(65534) != 0)
            _exit(10);
        char d[130], r[130];
        snprintf(d, sizeof(d), "/%s", dname);
        snprintf(r, sizeof(r), "/%s", rname);
        int fd = shm_open(d, O_RDWR, 0);
        if (fd >= 0)
            _exit(11); /* a reader could truncate the data file under everyone's mappings */
        if (errno != EACCES)
            _exit(12);
        if ((fd = shm_open(d, O_RDONLY, 0)) < 0)
            _exit(13); /* but must be able to read it */
        close(fd);
        if ((fd = shm_open(r, O_RDWR, 0)) < 0)
            _exit(14); /* and to write its slot */
        close(fd);
        khala_seg_t r2;
        char err[256];
        int rc = khala__seg_attach(&r2, g_name, 0, err, sizeof(err));
        if (rc != 0)
            _exit(15);
        khala__seg_detach(&r2);
        _exit(0);
    }
    int st = 0;
    cr_assert_eq(waitpid(kid, &st, 0), kid);
    cr_assert(WIFEXITED(st), "status %d", st);
    cr_assert_eq(WEXITSTATUS(st), 0,
                 "exit %d (10 setuid failed, 11 data file writable by a reader, 12 other errno, "
                 "13 not readable, 14 readers file not writable, 15 attach failed)",
                 WEXITSTATUS(st));
    khala__seg_detach(&w);
}

Test(segment, data_file_truncated_to_any_size_is_ecorrupt) {
    khala_seg_t w, r;
    create(&w);
    uint64_t size = w.size;
    khala__seg_detach(&w);
    const uint64_t sizes[] = {size - 1, size / 2, KHALA_SEG_HEADER_SIZE + 1, KHALA_SEG_HEADER_SIZE,
                              1};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        truncate_data(sizes[i]);
        cr_assert_eq(attach(&r), KHALA_ECORRUPT, "size %llu: %s", (unsigned long long)sizes[i],
                     g_err);
    }
}

/* ---- Removing a cache, and the lock file ---- */

/* 1 if /dev/shm/khala.<g_name>.<kind> exists. */
static int shm_exists(const char *kind) {
    char path[160];
    snprintf(path, sizeof(path), "/dev/shm/khala.%s.%s", g_name, kind);
    return access(path, F_OK) == 0;
}

Test(segment, unlink_without_a_writer_removes_all_three_files) {
    khala_seg_t w;
    create(&w);
    cr_assert(shm_exists("data") && shm_exists("readers") && shm_exists("lock"));
    khala__seg_detach(&w);
    cr_assert_eq(khala__seg_unlink(g_name), 0);
    cr_assert(!shm_exists("data") && !shm_exists("readers") && !shm_exists("lock"));
}

Test(segment, unlink_under_a_live_writer_keeps_it_the_only_writer) {
    khala_l1_t *t1 = tu_writer(g_name, 64, 64 * 1024);
    cr_assert_eq(khala__seg_unlink(g_name), 0);
    cr_assert(!shm_exists("data") && !shm_exists("readers"));
    cr_assert(shm_exists("lock"), "the live writer's lock file was removed");
    /* The first writer still owns the name: a second one is refused, not let in beside it. */
    khala_seg_config_t cfg = tu_config(64, 64 * 1024);
    khala_seg_t s;
    cr_assert_eq(khala__seg_create(&s, g_name, &cfg, g_err, sizeof(g_err)), KHALA_EEXIST);
    /* Closing it for good removes what is left, and the name is free again. */
    khala__l1_close(t1, 1);
    cr_assert(!shm_exists("lock"));
    khala_l1_t *t2 = tu_writer(g_name, 64, 64 * 1024);
    khala__l1_close(t2, 1);
    cr_assert(!shm_exists("data") && !shm_exists("readers") && !shm_exists("lock"));
}

Test(segment, reattach_with_a_bad_name_closes_no_descriptor_it_did_not_open) {
    /* A failed open detaches its half-made segment: that must not close fd 0 (or any fd the
     * caller owns) because the segment's descriptors were never set. */
    int fd = fcntl(0, F_GETFD) >= 0 ? -1 : open("/dev/null", O_RDONLY);
    cr_assert(fcntl(0, F_GETFD) >= 0);
    khala_seg_config_t cfg = tu_config(64, 64 * 1024);
    khala_l1_t *t = NULL;
    cr_assert_eq(khala__l1_open_ex("bad/name", &cfg, KHALA_L1_REATTACH, &t, g_err, sizeof(g_err)),
                 KHALA_ENAME);
    cr_assert_null(t);
    cr_assert(fcntl(0, F_GETFD) >= 0, "fd 0 was closed");
    if (fd >= 0)
        close(fd);
}
