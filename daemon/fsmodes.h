/*
 * The file system modes khalad insists on before it serves (issue 10, "Access control" and
 * bug 6): its socket's directory (made with 0700 when it is the per-user default, checked by
 * lib/rundir.h's rules in every case), and no world-writable socket, segment or state
 * directory. A start that would break one of these stops with a message naming the path and
 * what is wrong with it. Start at khala__fsmodes_socket_dir().
 *
 * The socket's own mode is [cache] socket_mode, which the configuration already refuses with
 * o+w (daemon/config.c); the segments' modes are set by lib/segment_create.c (0640 data, 0660
 * readers, 0600 lock) and checked here again because an adopted segment may have been changed
 * since.
 */
#ifndef KHALA_DAEMON_FSMODES_H
#define KHALA_DAEMON_FSMODES_H

#include <stddef.h>
#include <sys/types.h>

/**
 * @brief Make and check the directory of khalad's socket @p sock_path. The per-user default
 *        directory ($XDG_RUNTIME_DIR/khala, /tmp/khala-<uid>) is made with mode 0700 and must
 *        be owned by @p uid and writable by no one else; any other directory is made as
 *        `mkdir -p` with 0755 and must be owned by root or @p uid and not world-writable
 *        (unless sticky and root's, as /tmp).
 * @param[in] sock_path the socket path.
 * @param[in] is_default whether it is the default path ([cache] socket empty).
 * @param[in] uid khalad's user.
 * @param[out] err message naming the directory; may be NULL.
 * @param[in] errlen size of @p err.
 * @return 0; -EPERM or -ENOTDIR for a directory that is not safe (lib/rundir.h); -errno when it
 *         cannot be made.
 */
int khala__fsmodes_socket_dir(const char *sock_path, int is_default, uid_t uid, char *err,
                              size_t errlen);

/**
 * @brief Refuse a world-writable file or directory: @p what names it in the message ("the L1
 *        data segment", "the L2 state directory").
 * @param[in] path the path; one that does not exist passes (nothing to protect yet).
 * @param[in] what a name for the message.
 * @param[out] err message; may be NULL.
 * @param[in] errlen size of @p err.
 * @return 0; -EPERM when it is writable by others; -errno of stat() other than -ENOENT.
 */
int khala__fsmodes_not_world_writable(const char *path, const char *what, char *err, size_t errlen);

#endif /* KHALA_DAEMON_FSMODES_H */
