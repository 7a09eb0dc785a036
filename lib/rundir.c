/*
 * Socket directory checks (lib/rundir.h).
 *
 * The checks use lstat(), so a symbolic link put where the directory should be is refused
 * rather than followed: following it would hand the choice of the directory to whoever made the
 * link. Only the last component is checked; its parents are the system's (/tmp, /run,
 * $XDG_RUNTIME_DIR) or the operator's.
 *
 * Rejected: checking the socket file's owner instead of the directory. The owner of a socket
 * says who bound it, but a client cannot know which uid khalad runs as, and a directory that
 * others can write lets them swap the socket between the check and the connect.
 */
#include "rundir.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errbuf.h"
#include "debug.h"

int khala__rundir_of(const char *path, char *out, size_t outlen) {
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path)
        return -EINVAL;
    size_t n = (size_t)(slash - path);
    if (n >= outlen)
        return -ENAMETOOLONG;
    memcpy(out, path, n);
    out[n] = '\0';
    return 0;
}

khala_rundir_kind_t khala__rundir_kind(const char *sock_path, int is_default) {
    /* root's default is /run/khala (made by root, shared with the socket's group); every other
     * user's default directory is theirs alone. */
    return is_default && geteuid() != 0 && sock_path[0] == '/' ? KHALA_RUNDIR_PRIVATE
                                                               : KHALA_RUNDIR_SHARED;
}

int khala__rundir_check(const char *dir, khala_rundir_kind_t kind, uid_t uid, char *err,
                        size_t errlen) {
    struct stat st;
    KHALA_ASSERT(dir && (kind == KHALA_RUNDIR_PRIVATE || kind == KHALA_RUNDIR_SHARED));
    KHALA_ASSERT(kind == KHALA_RUNDIR_SHARED || uid != KHALA_RUNDIR_ANY_OWNER);
    if (lstat(dir, &st) != 0)
        return khala__errbuf(err, errlen, -errno, "socket directory %s: %s", dir, strerror(errno));
    if (S_ISLNK(st.st_mode))
        return khala__errbuf(err, errlen, -ENOTDIR,
                             "socket directory %s is a symbolic link; refusing to follow it "
                             "(another user may have made it to intercept connections)",
                             dir);
    if (!S_ISDIR(st.st_mode))
        return khala__errbuf(err, errlen, -ENOTDIR, "socket directory %s is not a directory", dir);
    unsigned mode = (unsigned)(st.st_mode & 07777);
    if (kind == KHALA_RUNDIR_PRIVATE) {
        if (st.st_uid != uid)
            return khala__errbuf(err, errlen, -EPERM,
                                 "socket directory %s is owned by uid %u, not by uid %u; "
                                 "refusing it (another user may have made it to intercept "
                                 "connections): remove it, or set [cache] socket",
                                 dir, (unsigned)st.st_uid, (unsigned)uid);
        if (mode & 022)
            return khala__errbuf(err, errlen, -EPERM,
                                 "socket directory %s has mode %04o: writable by %s, who could "
                                 "replace the socket; refusing it (chmod 0700 %s)",
                                 dir, mode, (mode & 002) ? "other users" : "its group", dir);
        return 0;
    }
    if (uid != KHALA_RUNDIR_ANY_OWNER && st.st_uid != 0 && st.st_uid != uid)
        return khala__errbuf(err, errlen, -EPERM,
                             "socket directory %s is owned by uid %u, neither root nor uid %u; "
                             "refusing it (its owner could replace the socket)",
                             dir, (unsigned)st.st_uid, (unsigned)uid);
    if ((mode & 002) && !((mode & 01000) && st.st_uid == 0))
        return khala__errbuf(err, errlen, -EPERM,
                             "socket directory %s has mode %04o: world-writable, so any user "
                             "could replace the socket; refusing it (chmod o-w %s)",
                             dir, mode, dir);
    return 0;
}
