/*
 * The directory a khalad socket lives in, checked before it is trusted: by khalad before it
 * listens there, and by every client (workers, khalactl) before it connects (issue 10, bug 6,
 * "socket squatting").
 *
 * Whoever can write to the socket's directory can replace the socket with their own and receive
 * the connections meant for khalad. Two rules follow, one per kind of directory:
 *
 *   - KHALA_RUNDIR_PRIVATE, the per-user directory of the default path for a user other than
 *     root ($XDG_RUNTIME_DIR/khala or /tmp/khala-<uid>): it must be a directory (not a symbolic
 *     link: lstat), owned by that user, and writable by neither its group nor others. khalad
 *     makes it with mode 0700 when it is missing.
 *   - KHALA_RUNDIR_SHARED, any other directory (a configured [cache] socket, root's /run/khala):
 *     it must be a directory (not a symbolic link), owned by root or by @p uid, and not writable
 *     by others unless it is sticky and owned by root (/tmp: nobody can then replace a file
 *     they do not own). The client does not check the owner of a shared directory (khalad runs
 *     as another user), only the rest.
 *
 * Start at khala__rundir_check().
 */
#ifndef KHALA_LIB_RUNDIR_H
#define KHALA_LIB_RUNDIR_H

#include <stddef.h>
#include <sys/types.h>

/** Which rule a directory is held to (see above). */
typedef enum khala_rundir_kind {
    KHALA_RUNDIR_PRIVATE = 0, /* the per-user directory of the default socket path */
    KHALA_RUNDIR_SHARED = 1,  /* any other socket directory */
} khala_rundir_kind_t;

/** The owner check of KHALA_RUNDIR_SHARED is skipped when khala__rundir_check gets this uid. */
#define KHALA_RUNDIR_ANY_OWNER ((uid_t)-1)

/**
 * @brief Check that directory @p dir may hold a khalad socket.
 * @param[in] dir the directory (no trailing '/').
 * @param[in] kind which rule applies.
 * @param[in] uid the user who must own it (PRIVATE), or who may own it besides root (SHARED;
 *            KHALA_RUNDIR_ANY_OWNER: any owner).
 * @param[out] err a message naming the directory and what is wrong with it; may be NULL.
 * @param[in] errlen size of @p err.
 * @return 0; -ENOENT when it does not exist; -ENOTDIR when it is not a directory or is a
 *         symbolic link; -EPERM when its owner or mode would let another user replace the
 *         socket; another -errno of lstat().
 */
int khala__rundir_check(const char *dir, khala_rundir_kind_t kind, uid_t uid, char *err,
                        size_t errlen);

/**
 * @brief The kind of the directory that holds @p sock_path: PRIVATE when @p sock_path is the
 *        default path of a user other than root and lies under that user's runtime directory
 *        or /tmp/khala-<uid>, SHARED otherwise.
 * @param[in] sock_path the socket path.
 * @param[in] is_default whether it is the default path (no socket configured or given).
 * @return the kind.
 */
khala_rundir_kind_t khala__rundir_kind(const char *sock_path, int is_default);

/**
 * @brief Copy the directory part of @p path (everything before its last '/') into @p out.
 * @return 0; -EINVAL when @p path has no '/' or only a leading one; -ENAMETOOLONG.
 */
int khala__rundir_of(const char *path, char *out, size_t outlen);

#endif /* KHALA_LIB_RUNDIR_H */
