/*
 * Tests of khalad's one `mkdir -p` (daemon/dirs.c): every missing component is made with the
 * mode asked, existing ones are kept, and a path that cannot be made is refused with the
 * component and the system's reason named.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dirs.h"
#include "testutil.h"

static char g_root[64];
static char g_err[512];

static void setup(void) {
    snprintf(g_root, sizeof(g_root), "/tmp/khala-dirs-%d", (int)getpid());
    cr_assert_eq(mkdir(g_root, 0700), 0, "%s: %s", g_root, strerror(errno));
    g_err[0] = '\0';
}

static void teardown(void) {
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", g_root);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(dirs, .init = setup, .fini = teardown);

static mode_t mode_of(const char *path) {
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s: %s", path, strerror(errno));
    cr_assert(S_ISDIR(st.st_mode), "%s is a directory", path);
    return st.st_mode & 07777;
}

Test(dirs, every_missing_component_is_made_with_the_mode_and_existing_ones_kept) {
    char path[256], mid[256];
    snprintf(path, sizeof(path), "%s/a//b/c/", g_root);
    mode_t old = umask(0);
    int rc = khala__dirs_make(path, 0750, g_err, sizeof(g_err));
    cr_assert_eq(rc, 0, "%s", g_err);
    snprintf(mid, sizeof(mid), "%s/a/b", g_root);
    cr_assert_eq(mode_of(mid), 0750);
    snprintf(mid, sizeof(mid), "%s/a/b/c", g_root);
    cr_assert_eq(mode_of(mid), 0750);
    /* Again: nothing to do, and an existing directory keeps its own mode. */
    cr_assert_eq(chmod(mid, 0700), 0);
    cr_assert_eq(khala__dirs_make(path, 0755, g_err, sizeof(g_err)), 0, "%s", g_err);
    cr_assert_eq(mode_of(mid), 0700);
    umask(old);
}

Test(dirs, the_parent_of_a_file_is_made_and_a_bare_name_needs_none) {
    char path[256], parent[256];
    snprintf(path, sizeof(path), "%s/x/y/data.mdb", g_root);
    cr_assert_eq(khala__dirs_make_parent(path, 0700, g_err, sizeof(g_err)), 0, "%s", g_err);
    snprintf(parent, sizeof(parent), "%s/x/y", g_root);
    mode_of(parent);
    cr_assert_neq(access(path, F_OK), 0, "the file itself is not made");
    cr_assert_eq(khala__dirs_make_parent("data.mdb", 0700, g_err, sizeof(g_err)), 0);
    cr_assert_eq(khala__dirs_make_parent("/data.mdb", 0700, g_err, sizeof(g_err)), 0);
}

Test(dirs, a_file_in_the_way_is_named) {
    char file[256], path[256];
    snprintf(file, sizeof(file), "%s/plain", g_root);
    int fd = open(file, O_CREAT | O_WRONLY, 0600);
    cr_assert(fd >= 0);
    close(fd);
    snprintf(path, sizeof(path), "%s/plain/below", g_root);
    cr_assert_eq(khala__dirs_make(path, 0700, g_err, sizeof(g_err)), -ENOTDIR);
    cr_assert(strstr(g_err, path) && strstr(g_err, file), "%s", g_err);
    /* The file as the last component too. */
    cr_assert_eq(khala__dirs_make(file, 0700, g_err, sizeof(g_err)), -ENOTDIR);
    cr_assert(strstr(g_err, "is not a directory"), "%s", g_err);
    /* And as a parent of a file. */
    snprintf(path, sizeof(path), "%s/plain/below/data.mdb", g_root);
    cr_assert_eq(khala__dirs_make_parent(path, 0700, g_err, sizeof(g_err)), -ENOTDIR, "%s", g_err);
}

Test(dirs, a_path_too_long_is_refused_before_anything_is_made) {
    static char path[5000];
    memset(path, 'd', sizeof(path) - 1);
    path[0] = '/';
    path[sizeof(path) - 1] = '\0';
    cr_assert_eq(khala__dirs_make(path, 0700, g_err, sizeof(g_err)), -ENAMETOOLONG);
    cr_assert(strstr(g_err, "path is too long"), "%s", g_err);
    cr_assert_eq(khala__dirs_make_parent(path, 0700, g_err, sizeof(g_err)), -ENAMETOOLONG);
}

/* A component khalad may not create in (not as root: root may create anywhere). */
Test(dirs, a_directory_that_cannot_be_created_is_named_with_the_reason) {
    if (geteuid() == 0) {
        /* As root, a read-only place: /proc refuses mkdir whoever asks. */
        cr_assert_neq(khala__dirs_make("/proc/khala-test/x", 0700, g_err, sizeof(g_err)), 0);
    } else {
        char ro[256], path[256];
        snprintf(ro, sizeof(ro), "%s/ro", g_root);
        cr_assert_eq(mkdir(ro, 0500), 0);
        snprintf(path, sizeof(path), "%s/ro/x", g_root);
        cr_assert_eq(khala__dirs_make(path, 0700, g_err, sizeof(g_err)), -EACCES);
    }
    cr_assert(strstr(g_err, "cannot create directory"), "%s", g_err);
}
