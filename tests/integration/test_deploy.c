/*
 * What a first deployment hits: workers that run as another user than khalad. khalad runs as
 * root (the test's user) with [cache] socket_group set to a group of the test's own; workers
 * are real forked processes that drop to uid 65534 (nobody), one in that group and one not.
 * The one in the group must attach to L1, write through khalad and read its write back from L1;
 * the other must be refused with EACCES and a message that says why. A segment adopted from a
 * khalad configured with another group must be given the new one.
 *
 * Needs root (to start as root and drop to another uid); skipped otherwise. The group is
 * `khala-test`, created with groupadd when absent, or a bare gid when groupadd cannot run.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "khala/cache.h"
#include "khala/stats.h"
#include "khalad_util.h"
#include "segment_create.h"

#define NOBODY_UID 65534
#define NOGROUP_GID 65534
/* The fallback group when khala-test cannot be created: a gid no name needs. */
#define FALLBACK_GID 54321

static gid_t g_gid;          /* the group khalad is configured with */
static char g_group[64];     /* its name or number, for socket_group */
static char g_group_set[96]; /* "cache.socket_group=<g_group>" */

/* Find or make the test's group: khala-test, else a bare gid. */
static void pick_group(void) {
    struct group *g = getgrnam("khala-test");
    if (!g && system("groupadd -f -r khala-test >/dev/null 2>&1") == 0)
        g = getgrnam("khala-test");
    if (g) {
        g_gid = g->gr_gid;
        snprintf(g_group, sizeof(g_group), "khala-test");
    } else {
        g_gid = FALLBACK_GID;
        snprintf(g_group, sizeof(g_group), "%d", FALLBACK_GID);
    }
    snprintf(g_group_set, sizeof(g_group_set), "cache.socket_group=%s", g_group);
}

static void setup(void) {
    if (geteuid() != 0)
        return;
    pick_group();
    khalad_env_init("kdep");
    /* The private directory is 0700; the workers must reach the socket inside it. */
    cr_assert_eq(chmod(khalad_dir(), 0755), 0);
}

static void teardown(void) {
    if (geteuid() == 0)
        khalad_env_fini();
}

TestSuite(deploy, .init = setup, .fini = teardown, .timeout = 60);

/* Start khalad with socket_mode 0660 and, when group != NULL, socket_group. */
static void start_khalad(const char *group_set) {
    khalad_extra_set = "cache.socket_mode=0660";
    khalad_extra_sets[0] = group_set;
    khalad_extra_sets[1] = NULL;
    khalad_start();
}

/* Become uid 65534 with primary group gid and no other group. 0, or the errno that failed. */
static int drop_to_nobody(gid_t gid) {
    if (setgroups(1, &gid) != 0 || setgid(gid) != 0 || setuid(NOBODY_UID) != 0)
        return errno;
    return 0;
}

/* The exit codes of a worker, so that the parent can say which step failed. */
enum {
    WORKER_OK = 0,
    WORKER_DROP = 10,      /* could not drop privileges */
    WORKER_OPEN = 11,      /* khala_cache_open failed */
    WORKER_PUT = 12,       /* the put through khalad failed */
    WORKER_GET = 13,       /* the read-back failed or read something else */
    WORKER_NOT_L1 = 14,    /* the read-back was not an L1 hit */
    WORKER_OPENED = 15,    /* an outsider could open the cache */
    WORKER_WRONG_ERR = 16, /* an outsider was refused, but not with EACCES and a clear message */
};

static int reap(pid_t pid) {
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st);
}

/* A worker in the group: attach, put through khalad, read the value back from L1. */
static int member_worker(void) {
    if (drop_to_nobody(g_gid) != 0)
        return WORKER_DROP;
    khala_cache_options_t o;
    khala_cache_options_init(&o);
    o.socket_path = khalad_sock;
    khala_cache_t *c = NULL;
    if (khala_cache_open(khalad_name, &o, &c) != 0) {
        fprintf(stderr, "member: open: %s\n", khala_cache_errmsg(NULL));
        return WORKER_OPEN;
    }
    khala_put_options_t po;
    khala_put_options_init(&po);
    uint64_t ver = 0;
    if (khala_cache_put(c, "user:nobody", 11, "ada", 3, &po, &ver) != 0) {
        fprintf(stderr, "member: put: %s\n", khala_cache_errmsg(c));
        return WORKER_PUT;
    }
    khala_cache_stats_t before, after;
    (void)khala_cache_stats(c, &before);
    char buf[16];
    size_t len = 0;
    if (khala_cache_get(c, "user:nobody", 11, buf, sizeof(buf), &len) != 0 || len != 3 ||
        memcmp(buf, "ada", 3) != 0) {
        fprintf(stderr, "member: get: %s\n", khala_cache_errmsg(c));
        return WORKER_GET;
    }
    (void)khala_cache_stats(c, &after);
    if (after.hits != before.hits + 1)
        return WORKER_NOT_L1;
    khala_cache_close(c);
    return WORKER_OK;
}

/* A worker outside the group: khala_cache_open must fail with -EACCES, naming the file. */
static int outsider_worker(void) {
    if (drop_to_nobody(NOGROUP_GID) != 0)
        return WORKER_DROP;
    khala_cache_options_t o;
    khala_cache_options_init(&o);
    o.socket_path = khalad_sock;
    khala_cache_t *c = NULL;
    int rc = khala_cache_open(khalad_name, &o, &c);
    if (rc == 0)
        return WORKER_OPENED;
    const char *msg = khala_cache_errmsg(NULL);
    if (rc != -EACCES || !strstr(msg, "/dev/shm/khala.") || !strstr(msg, "group")) {
        fprintf(stderr, "outsider: %d %s\n", rc, msg);
        return WORKER_WRONG_ERR;
    }
    return WORKER_OK;
}

static int run_as_child(int (*fn)(void)) {
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        _exit(fn());
    return reap(pid);
}

/* The owner, group and mode of /dev/shm/khala.<name>.<what>. */
static struct stat shm_stat(const char *what) {
    char path[160];
    struct stat st;
    snprintf(path, sizeof(path), "/dev/shm/khala.%s.%s", khalad_name, what);
    cr_assert_eq(stat(path, &st), 0, "stat %s: %s", path, strerror(errno));
    return st;
}

static void assert_files_in_group(gid_t gid) {
    struct stat d = shm_stat("data"), r = shm_stat("readers"), l = shm_stat("lock");
    cr_assert_eq(d.st_uid, 0);
    cr_assert_eq(d.st_gid, gid, "data file group %d, want %d", (int)d.st_gid, (int)gid);
    cr_assert_eq(d.st_mode & 07777, 0640, "data file mode %o", d.st_mode & 07777);
    cr_assert_eq(r.st_uid, 0);
    cr_assert_eq(r.st_gid, gid, "readers file group %d, want %d", (int)r.st_gid, (int)gid);
    cr_assert_eq(r.st_mode & 07777, 0660, "readers file mode %o", r.st_mode & 07777);
    /* The lock file is the writer's alone. */
    cr_assert_eq(l.st_uid, 0);
    cr_assert_eq(l.st_mode & 07777, 0600, "lock file mode %o", l.st_mode & 07777);
}

#define SKIP_UNLESS_ROOT()                                                                         \
    do {                                                                                           \
        if (geteuid() != 0)                                                                        \
            cr_skip_test("needs root: starts khalad as root and drops workers to uid 65534");      \
    } while (0)

Test(deploy, a_worker_in_socket_group_as_another_user_reads_l1_and_writes_through_khalad) {
    SKIP_UNLESS_ROOT();
    start_khalad(g_group_set);
    cr_assert_eq(run_as_child(member_worker), WORKER_OK,
                 "the worker in group %s failed (exit codes: "
                 "11 open, 12 put, 13 get, 14 not an L1 hit)",
                 g_group);
    assert_files_in_group(g_gid);
}

Test(deploy, a_worker_outside_socket_group_gets_eacces_naming_the_group) {
    SKIP_UNLESS_ROOT();
    start_khalad(g_group_set);
    cr_assert_eq(run_as_child(outsider_worker), WORKER_OK,
                 "the worker outside the group was not refused as it should be (15: it opened the "
                 "cache, 16: another error or message)");
}

Test(deploy, an_adopted_segment_is_given_the_new_socket_group) {
    SKIP_UNLESS_ROOT();
    /* A khalad without socket_group leaves the files in root's group. */
    start_khalad(NULL);
    assert_files_in_group(0);
    ino_t data_ino = shm_stat("data").st_ino;
    khalad_kill(SIGKILL);
    /* Restarted with the group: the same segment (adopted, not remade), in the new group. */
    start_khalad(g_group_set);
    cr_assert_eq(shm_stat("data").st_ino, data_ino, "the segment was made anew, not adopted");
    assert_files_in_group(g_gid);
    cr_assert_eq(run_as_child(member_worker), WORKER_OK);
}

/* A writer that is not root may give its files only to a group it is in: made as nobody with
 * another group, the segment is refused with EPERM and a message that says what to do, and
 * nothing of it is left under the name. */
static int outsider_writer(void) {
    if (drop_to_nobody(NOGROUP_GID) != 0)
        return WORKER_DROP;
    khala_seg_config_t cfg;
    khala__seg_config_init(&cfg);
    cfg.max_items = 64;
    cfg.max_bytes = 64 * 1024;
    cfg.gid = g_gid;
    khala_seg_t s;
    char err[256] = "";
    int rc = khala__seg_create(&s, khalad_name, &cfg, err, sizeof(err));
    if (rc != -EPERM || !strstr(err, "member of that group")) {
        fprintf(stderr, "writer: %d %s\n", rc, err);
        return WORKER_WRONG_ERR;
    }
    char path[160];
    snprintf(path, sizeof(path), "/dev/shm/khala.%s.readers", khalad_name);
    return access(path, F_OK) == 0 ? WORKER_OPENED : WORKER_OK;
}

Test(deploy, a_writer_not_in_the_group_is_refused_and_leaves_nothing) {
    SKIP_UNLESS_ROOT();
    cr_assert_eq(run_as_child(outsider_writer), WORKER_OK,
                 "16: not EPERM with the message, 15: the readers file was left");
}
