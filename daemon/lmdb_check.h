/*
 * A check of an LMDB file before khalad opens it: every page a reader can reach, read once in a
 * forked child, so that a damaged file (truncated, bytes flipped) is refused with a message at
 * start instead of killing khalad with SIGBUS or SIGSEGV when it first reads the damage. Used by
 * the disk store (daemon/tier_disk_store.c) and the write journal (daemon/writeq.c). See
 * daemon/lmdb_check.c for why a child.
 */
#ifndef KHALA_DAEMON_LMDB_CHECK_H
#define KHALA_DAEMON_LMDB_CHECK_H

#include <stddef.h>

/**
 * @brief Read every record of every database of the LMDB environment in @p dir (its data.mdb),
 *        in a forked child, and say whether that ends normally.
 * @param[in] dir the environment's directory; a data.mdb that is absent or empty passes (LMDB
 *            makes a new one); an empty one is logged as a warning naming it, since what it held
 *            is gone.
 * @param[in] what what the file is, for the message ("the disk store", "the write journal").
 * @param[out] err the reason on failure, naming the file and what went wrong.
 * @param[in] errlen bytes at @p err.
 * @return 0 when every record was read; KHALA_ECORRUPT when the file is truncated, LMDB reports
 *         it damaged, or reading it killed the child (SIGBUS, SIGSEGV); -errno when the check
 *         could not run (fork, pipe, stat).
 * @note Call before the caller opens the environment itself, with no transaction of it open in
 *       this process. The child opens it read-only without the lock file (MDB_NOLOCK): nothing
 *       else may write the file meanwhile, which holds at khalad's start (the store's own lock
 *       and the cache's writer lock). The child allocates (LMDB does): call it while the process
 *       has one thread, as khalad's start does. Costs one read of the whole file.
 */
int khala__lmdb_check(const char *dir, const char *what, char *err, size_t errlen);

#endif /* KHALA_DAEMON_LMDB_CHECK_H */
