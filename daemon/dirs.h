/*
 * Directories khalad makes: the socket's (under /run), the disk store's and the write journal's
 * (under /var/lib). One `mkdir -p` for all of them, so that they fail alike and say alike which
 * component could not be made.
 */
#ifndef KHALA_DAEMON_DIRS_H
#define KHALA_DAEMON_DIRS_H

#include <stddef.h>
#include <sys/types.h>

/**
 * @brief mkdir -p: make @p path and every missing parent, with @p mode for what it creates
 *        (existing components keep theirs).
 * @param[in] path the directory.
 * @param[in] mode the mode of new components (before the umask).
 * @param[out] err a message naming the component that failed (may be NULL).
 * @param[in] errlen room in @p err.
 * @return 0; -ENAMETOOLONG; -ENOTDIR (a component is a file); -errno of mkdir() or stat()
 *         (-EACCES, -EROFS, -ENOSPC...).
 */
int khala__dirs_make(const char *path, mode_t mode, char *err, size_t errlen);

/**
 * @brief The same for the directory that holds @p path (a socket, a file): everything before
 *        its last '/'. Nothing to do for a name without one.
 * @return as khala__dirs_make().
 */
int khala__dirs_make_parent(const char *path, mode_t mode, char *err, size_t errlen);

#endif /* KHALA_DAEMON_DIRS_H */
