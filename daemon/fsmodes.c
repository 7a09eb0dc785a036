/*
 * File system modes khalad insists on (daemon/fsmodes.h).
 *
 * The per-user default directory is made with mkdir(0700) and then checked with lstat(): when
 * mkdir finds it already there (EEXIST), someone made it first, and only the check decides
 * whether it is ours. Making it and trusting EEXIST was bug 6: another user made /tmp/khala-<uid>
 * first, and khalad listened inside their directory.
 */
#include "fsmodes.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "dirs.h"
#include "errbuf.h"
#include "rundir.h"

int khala__fsmodes_socket_dir(const char *sock_path, int is_default, uid_t uid, char *err,
                              size_t errlen) {
    char dir[4096];
    int rc = khala__rundir_of(sock_path, dir, sizeof(dir));
    if (rc != 0)
        return khala__errbuf(err, errlen, rc, "%s: the socket path has no directory", sock_path);
    khala_rundir_kind_t kind = khala__rundir_kind(sock_path, is_default);
    if (kind == KHALA_RUNDIR_PRIVATE) {
        /* Its parent is the system's ($XDG_RUNTIME_DIR, /tmp): only the last component is ours
         * to make, and it must be made by us, with 0700 (umask cannot widen it). */
        if (mkdir(dir, 0700) != 0 && errno != EEXIST)
            return khala__errbuf(err, errlen, -errno, "cannot create socket directory %s: %s", dir,
                                 strerror(errno));
    } else if ((rc = khala__dirs_make(dir, 0755, err, errlen)) != 0) {
        return rc;
    }
    return khala__rundir_check(dir, kind, uid, err, errlen);
}

int khala__fsmodes_not_world_writable(const char *path, const char *what, char *err,
                                      size_t errlen) {
    struct stat st;
    if (stat(path, &st) != 0)
        return errno == ENOENT
                   ? 0
                   : khala__errbuf(err, errlen, -errno, "%s %s: %s", what, path, strerror(errno));
    if ((st.st_mode & 002) && !(S_ISDIR(st.st_mode) && (st.st_mode & 01000) && st.st_uid == 0))
        return khala__errbuf(err, errlen, -EPERM,
                             "%s %s has mode %04o: world-writable; refusing to start (chmod o-w "
                             "%s)",
                             what, path, (unsigned)(st.st_mode & 07777), path);
    return 0;
}
