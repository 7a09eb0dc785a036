/*
 * Tests of lib/rundir.c and of the client's check before it connects (lib/channel.c): a socket
 * directory made by another user, or writable by others, is refused (issue 10, bug 6, "socket
 * squatting"). The other user is uid 65534, which needs root to make; those tests skip cleanly
 * otherwise.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "channel.h"
#include "khala/error.h"
#include "rundir.h"

#define OTHER_UID 65534

static char g_dir[64], g_err[512];

static void setup(void) {
    snprintf(g_dir, sizeof(g_dir), "/tmp/khala-rundir-XXXXXX");
    cr_assert_not_null(mkdtemp(g_dir));
    g_err[0] = '\0';
}

static void teardown(void) {
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    (void)system(cmd);
}

TestSuite(rundir, .init = setup, .fini = teardown, .timeout = 30);

static const char *sub(const char *name) {
    static char path[128];
    snprintf(path, sizeof(path), "%s/%s", g_dir, name);
    return path;
}

Test(rundir, a_private_directory_of_the_user_with_mode_0700_passes) {
    cr_assert_eq(khala__rundir_check(g_dir, KHALA_RUNDIR_PRIVATE, geteuid(), g_err, sizeof(g_err)),
                 0, "%s", g_err);
    cr_assert_eq(khala__rundir_check(g_dir, KHALA_RUNDIR_SHARED, geteuid(), g_err, sizeof(g_err)),
                 0, "%s", g_err);
}

Test(rundir, a_directory_with_mode_0777_is_refused_naming_it) {
    cr_assert_eq(chmod(g_dir, 0777), 0);
    cr_assert_eq(khala__rundir_check(g_dir, KHALA_RUNDIR_PRIVATE, geteuid(), g_err, sizeof(g_err)),
                 -EPERM);
    cr_assert(strstr(g_err, g_dir) && strstr(g_err, "0777"), "%s", g_err);
    cr_assert_eq(khala__rundir_check(g_dir, KHALA_RUNDIR_SHARED, geteuid(), g_err, sizeof(g_err)),
                 -EPERM);
    cr_assert(strstr(g_err, "world-writable"), "%s", g_err);
    /* Group-writable: refused for the private directory only. */
    cr_assert_eq(chmod(g_dir, 0770), 0);
    cr_assert_eq(khala__rundir_check(g_dir, KHALA_RUNDIR_PRIVATE, geteuid(), g_err, sizeof(g_err)),
                 -EPERM);
    cr_assert(strstr(g_err, "its group"), "%s", g_err);
    cr_assert_eq(khala__rundir_check(g_dir, KHALA_RUNDIR_SHARED, geteuid(), g_err, sizeof(g_err)),
                 0, "%s", g_err);
}

Test(rundir, a_sticky_world_writable_directory_of_root_is_shared_but_not_private) {
    cr_assert_eq(khala__rundir_check("/tmp", KHALA_RUNDIR_SHARED, KHALA_RUNDIR_ANY_OWNER, g_err,
                                     sizeof(g_err)),
                 0, "%s", g_err);
    cr_assert_eq(khala__rundir_check("/tmp", KHALA_RUNDIR_PRIVATE, geteuid(), g_err, sizeof(g_err)),
                 -EPERM);
}

Test(rundir, a_symbolic_link_is_refused_not_followed) {
    char real[128];
    snprintf(real, sizeof(real), "%s", sub("real"));
    cr_assert_eq(mkdir(real, 0700), 0);
    cr_assert_eq(symlink(real, sub("link")), 0);
    cr_assert_eq(
        khala__rundir_check(sub("link"), KHALA_RUNDIR_PRIVATE, geteuid(), g_err, sizeof(g_err)),
        -ENOTDIR);
    cr_assert(strstr(g_err, "symbolic link"), "%s", g_err);
}

Test(rundir, a_directory_made_by_another_user_is_refused) {
    if (geteuid() != 0)
        cr_skip_test("needs root to make a directory owned by uid 65534");
    cr_assert_eq(chown(g_dir, OTHER_UID, OTHER_UID), 0);
    cr_assert_eq(khala__rundir_check(g_dir, KHALA_RUNDIR_PRIVATE, 0, g_err, sizeof(g_err)), -EPERM);
    cr_assert(strstr(g_err, "owned by uid 65534, not by uid 0"), "%s", g_err);
    /* Shared: khalad (uid 1000, say) refuses a directory of a third user. */
    cr_assert_eq(khala__rundir_check(g_dir, KHALA_RUNDIR_SHARED, 1000, g_err, sizeof(g_err)),
                 -EPERM);
    cr_assert(strstr(g_err, "neither root nor uid 1000"), "%s", g_err);
    cr_assert_eq(khala__rundir_check(g_dir, KHALA_RUNDIR_SHARED, OTHER_UID, g_err, sizeof(g_err)),
                 0);
}

/* The client side: a user whose default socket directory ($XDG_RUNTIME_DIR/khala) was made by
 * another user is refused before anything connects, with -EPERM and a message naming the
 * directory; the same with a directory of its own that is 0777. In a child that becomes uid
 * 65534 (needs root). Before issue 10 the client connected to whatever listened there. */
static int client_refuses(const char *xdg, char *msg, size_t len) {
    setenv("XDG_RUNTIME_DIR", xdg, 1);
    khala_chan_t *ch = NULL;
    int rc = khala__chan_open(NULL, "main", 1000, &ch, msg, len);
    khala__chan_close(ch);
    return rc;
}

Test(rundir, the_client_refuses_a_squatted_or_open_default_directory) {
    if (geteuid() != 0)
        cr_skip_test("needs root to become uid 65534 and make another user's directory");
    /* The user's own runtime directory, and in it khala/ made by someone else (root here). */
    cr_assert_eq(chown(g_dir, OTHER_UID, OTHER_UID), 0);
    cr_assert_eq(mkdir(sub("khala"), 0755), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        char msg[512] = "";
        if (setresgid(OTHER_UID, OTHER_UID, OTHER_UID) != 0 ||
            setresuid(OTHER_UID, OTHER_UID, OTHER_UID) != 0)
            _exit(10);
        int rc = client_refuses(g_dir, msg, sizeof(msg));
        if (rc != -EPERM)
            _exit(11);
        if (!strstr(msg, "refusing to connect") || !strstr(msg, "owned by uid 0, not by uid 65534"))
            _exit(12);
        _exit(0);
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "squatted directory: step %d",
              WEXITSTATUS(st));
    /* Now the user's own khala/, but open to everyone. */
    cr_assert_eq(chown(sub("khala"), OTHER_UID, OTHER_UID), 0);
    cr_assert_eq(chmod(sub("khala"), 0777), 0);
    pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        char msg[512] = "";
        if (setresgid(OTHER_UID, OTHER_UID, OTHER_UID) != 0 ||
            setresuid(OTHER_UID, OTHER_UID, OTHER_UID) != 0)
            _exit(10);
        if (client_refuses(g_dir, msg, sizeof(msg)) != -EPERM || !strstr(msg, "0777"))
            _exit(11);
        /* Its own and 0700: no refusal; nobody listens, so "not running". */
        if (chmod(sub("khala"), 0700) != 0)
            _exit(12);
        if (client_refuses(g_dir, msg, sizeof(msg)) != KHALA_EDAEMON)
            _exit(13);
        _exit(0);
    }
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "open directory: step %d", WEXITSTATUS(st));
}

/* The directory of a socket path, and what cannot have one; a directory that is not there is
 * named with the system's reason. */
Test(rundir, the_directory_of_a_socket_path_and_a_missing_one) {
    char out[64];
    cr_assert_eq(khala__rundir_of("/run/khala/default.sock", out, sizeof(out)), 0);
    cr_assert_str_eq(out, "/run/khala");
    cr_assert_eq(khala__rundir_of("default.sock", out, sizeof(out)), -EINVAL, "no directory");
    cr_assert_eq(khala__rundir_of("/default.sock", out, sizeof(out)), -EINVAL, "/ is not one");
    cr_assert_eq(khala__rundir_of("/run/khala/default.sock", out, 8), -ENAMETOOLONG);
    char missing[160], err[256];
    snprintf(missing, sizeof(missing), "%s/not-there", g_dir);
    cr_assert_eq(
        khala__rundir_check(missing, KHALA_RUNDIR_SHARED, KHALA_RUNDIR_ANY_OWNER, err, sizeof(err)),
        -ENOENT);
    cr_assert(strstr(err, missing) && strstr(err, strerror(ENOENT)), "%s", err);
}
