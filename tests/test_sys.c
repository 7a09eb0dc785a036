/*
 * Tests of the platform layer (lib/sys.c) where it meets the host: how a new segment's memory is
 * reserved. Each test that needs a particular /dev/shm runs in a forked child with a private
 * mount namespace and its own tmpfs mounted over /dev/shm, so the host's /dev/shm is never
 * touched. That needs root (CAP_SYS_ADMIN); without it, or without transparent huge pages in
 * the kernel, the test says so and is skipped.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include "khala/error.h"
#include "l1_table.h"
#include "sys.h"
#include "testutil.h"

/* Child exit codes. */
enum { CHILD_OK = 0, CHILD_FAIL = 1, CHILD_SKIP = 77 };

/* In a fresh mount namespace, mount a tmpfs with `opts` over /dev/shm. 0, or -errno. */
static int private_shm(const char *opts) {
    if (unshare(CLONE_NEWNS) != 0)
        return -errno;
    if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        return -errno;
    if (mount("khala-test", "/dev/shm", "tmpfs", 0, opts) != 0)
        return -errno;
    return 0;
}

/* Run fn in a forked child; its exit status decides: skip (with why), pass or fail. */
static void in_child(int (*fn)(void), const char *why_skip) {
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        _exit(fn());
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st), "the child died by signal %d", WTERMSIG(st));
    if (WEXITSTATUS(st) == CHILD_SKIP)
        cr_skip_test("%s", why_skip);
    cr_assert_eq(WEXITSTATUS(st), CHILD_OK, "the child failed (its messages are above)");
}

static int has_thp(void) {
    return access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) == 0;
}

/* A writer made on a tmpfs mounted huge=<mode> with a 16 MiB arena; 1 if its mapping is on huge
 * pages, 0 if not, -1 on error or skip. */
static int huge_with(const char *mode) {
    char opts[64];
    snprintf(opts, sizeof(opts), "size=64m,huge=%s", mode);
    if (!has_thp() || private_shm(opts) != 0)
        return -1;
    khala_seg_config_t cfg = tu_config(4096, 16u << 20);
    khala_l1_t *t = NULL;
    char err[256];
    if (khala__l1_open(tu_name("huge"), &cfg, &t, err, sizeof(err)) != 0) {
        fprintf(stderr, "open: %s\n", err);
        return -1;
    }
    uint64_t huge = khala__sys_huge_bytes(khala__l1_seg(t)->base);
    khala__l1_close(t, 1);
    return huge > 0;
}

static int child_advise(void) {
    int r = huge_with("advise");
    if (r < 0)
        return CHILD_SKIP;
    if (r != 1)
        fprintf(stderr, "huge=advise: the segment is on 4 KiB pages\n");
    return r == 1 ? CHILD_OK : CHILD_FAIL;
}

static int child_never(void) {
    int r = huge_with("never");
    if (r < 0)
        return CHILD_SKIP;
    return r == 0 ? CHILD_OK : CHILD_FAIL;
}

/* The regression: the segment's memory used to be reserved with posix_fallocate before it was
 * mapped, which makes 4 KiB pages whatever the advice, so huge=advise gave none. */
Test(sys, segment_on_a_tmpfs_mounted_huge_advise_gets_huge_pages) {
    in_child(child_advise, "needs root (a private mount namespace) and transparent huge pages");
}

Test(sys, segment_on_a_tmpfs_mounted_huge_never_stays_on_small_pages) {
    in_child(child_never, "needs root (a private mount namespace) and transparent huge pages");
}

/* A /dev/shm too small for the segment: a clear ENOSPC at creation, naming /dev/shm, and nothing
 * left behind; never a SIGBUS later. */
static int child_full(void) {
    if (private_shm("size=4m") != 0)
        return CHILD_SKIP;
    khala_seg_config_t cfg = tu_config(4096, 16u << 20);
    khala_l1_t *t = NULL;
    char err[256] = "";
    int rc = khala__l1_open(tu_name("full"), &cfg, &t, err, sizeof(err));
    if (rc != -ENOSPC) {
        fprintf(stderr, "open on a full /dev/shm: rc %d (%s)\n", rc, err);
        return CHILD_FAIL;
    }
    if (!strstr(err, "/dev/shm")) {
        fprintf(stderr, "the message does not name /dev/shm: %s\n", err);
        return CHILD_FAIL;
    }
    char path[256];
    snprintf(path, sizeof(path), "/dev/shm/khala.%s.data", tu_name("full"));
    if (access(path, F_OK) == 0) {
        fprintf(stderr, "%s was left behind\n", path);
        return CHILD_FAIL;
    }
    return CHILD_OK;
}

Test(sys, a_segment_larger_than_dev_shm_fails_at_creation_with_no_space) {
    in_child(child_full, "needs root (a private mount namespace)");
}
