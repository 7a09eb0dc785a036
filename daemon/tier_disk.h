/*
 * The embedded disk tier: a persistent local store on LMDB that serves L2 (and L3) when no
 * server is configured, behind the tier seam of daemon/tier.h. It needs nothing started: the
 * store is a directory holding LMDB's data.mdb and lock.mdb plus khala.lock, which keeps a second
 * khalad off the same store.
 *
 * Start at khala__tier_disk_open(); everything after it goes through the khala_tier_ops_t it
 * returns (daemon/tier.h states the rules every operation keeps). daemon/tier_disk.c opens with
 * how the operations work and where the rest of the driver lives: the LMDB store and map sizing
 * in daemon/tier_disk_store.c, the record format in daemon/tier_disk_record.c, the in-memory
 * index and LFU eviction in daemon/tier_disk_index.c.
 *
 * What the operations do here, beyond tier.h's rules (every failure also leaves a message naming
 * the store's path, and LMDB's mdb_strerror where LMDB failed, in t->err):
 *   get, mget   KHALA_ENOTFOUND for a missing or expired key (an expired item is removed then);
 *               KHALA_EKEY for an empty key or one over KHALA_KEY_MAX; KHALA_ECORRUPT for a
 *               malformed record; -ENOMEM. mget reads every key in one read transaction, puts
 *               each key's code in rcs[i], and returns 0 unless the transaction cannot begin.
 *   put         durable on return (fsync'd commit). KHALA_EVERSION when a live item has a higher
 *               version; KHALA_EKEY; KHALA_ETOOBIG for a value over max_value or an item (key +
 *               value) over max_bytes; -EINVAL for a type outside khala_type_t, a negative TTL
 *               or a NULL value of non-zero length; KHALA_ETIER when the disk fails (full, I/O
 *               error); KHALA_ECORRUPT; -ENOMEM. Evicts (approximate LFU) to make room.
 *   mput        all items in one transaction, all or nothing: one bad item fails the call with
 *               its code before anything is written. An item older than the live one held is
 *               skipped, not refused (the level holds newer data; a write-behind flush must not
 *               stall on it). KHALA_EFULL when the items alone exceed the capacities.
 *   del         KHALA_ENOTFOUND when the key is absent or expired (it is removed either way).
 *   scan        visits keys in byte order, at most `count` examined per call (default 100);
 *               each key present for the whole scan is visited exactly once. A cursor is valid
 *               for this open of the store only, and the 16 most recent scans keep theirs;
 *               another cursor gets -EINVAL. A key holding a NUL byte matches only a NULL
 *               pattern.
 *   hot         by the decayed LFU counters; counters are kept across restarts (as hints).
 *   invalidate  removes in transactions of a few thousand keys: a failure part-way keeps what
 *               was removed (and *removed says how many). -EINVAL for a type above the last.
 *   health      0: an embedded store has no connection to lose.
 *   tick        sweeps a bounded window of expired items and, once a second, writes changed
 *               counters; both without fsync (they lose nothing that matters if lost). With
 *               cleanup_interval_ms, also one step of the periodic cleanup (tier_disk_cleanup.h).
 *   archive_get with archive_retention_ms, the copy of a key that the store evicted for space
 *               (tier_disk_archive.h); KHALA_ENOTFOUND when there is none, it is past its
 *               retention, or the store keeps no archive. del and invalidate remove archived
 *               copies too.
 *
 * Thread safety: like every driver, a disk tier is used from khalad's loop thread only.
 */
#ifndef KHALA_DAEMON_TIER_DISK_H
#define KHALA_DAEMON_TIER_DISK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto.h"
#include "tier.h"

/** Largest value a disk tier accepts, whatever its options ask (256 MiB, the segment's limit:
 * a value that no level above can hold is not worth keeping). */
#define KHALA_TIER_DISK_VALUE_MAX (256u * 1024u * 1024u)

/** Options of khala__tier_disk_open(). A plain value; the open copies what it keeps. */
typedef struct khala_tier_disk_opts {
    const char *path;       /* directory of the store, created (mkdir -p, mode 0700) if missing */
    khala_level_t level;    /* KHALA_LEVEL_L2 or KHALA_LEVEL_L3 */
    uint64_t max_items;     /* LFU capacity in items (>= 1) */
    uint64_t max_bytes;     /* LFU capacity in bytes of keys + values (>= 1) */
    bool persistent;        /* false: the store is emptied at open */
    uint32_t max_value;     /* largest value accepted, bytes; 0 = KHALA_TIER_DISK_VALUE_MAX */
    uint32_t sync_every_ms; /* 0: every write is fsync'd before it returns (survives a crash of
                               the host); N: writes survive a crash of khalad at once and reach
                               the disk within N ms (tick() fsyncs) */
    /* L3's housekeeping (daemon/tier_disk_cleanup.c, daemon/tier_disk_archive.c); L2 passes 0
     * for all three and keeps the behaviour above. */
    int64_t archive_retention_ms; /* 0: an item evicted for space is deleted; N: it moves to the
                                     archive, readable (archive_get) for N ms */
    int64_t cleanup_interval_ms;  /* 0: tick()'s expiry sweep only, and the open evicts down to
                                     the capacities; N: also a full cleanup every N ms, in steps
                                     of cleanup_batch rows from tick(), the first right after
                                     open (which then does not evict) */
    uint32_t cleanup_batch;       /* rows one cleanup step removes or moves at most; 0 = 1000 */
} khala_tier_disk_opts_t;

/**
 * @brief Open (creating it if needed) the disk store in directory @p o->path as a tier.
 *
 * The directory and its missing parents are created with mode 0700. An existing store is
 * checked (LMDB's own format, then khala's format record) and its in-memory index is rebuilt
 * from the records: one pass over every key, so the open of a large store takes a while. Items
 * over the capacities (when they were lowered since the store was written) are evicted before
 * the open returns, or, with @p o->cleanup_interval_ms, by the first cleanup, in steps from the
 * first tick (to the archive with @p o->archive_retention_ms). With @p o->persistent false the
 * store (and its archive) is emptied; with @p o->archive_retention_ms 0 an archive left by an
 * earlier open is deleted.
 *
 * @param[in] o the options; @p o->path is copied.
 * @param[out] out the tier, with ops->name "disk"; written only on success. Release it with
 *             (*out)->ops->close(*out), which frees it.
 * @param[out] err message buffer naming the path and the cause; may be NULL.
 * @param[in] errlen size of @p err; the message is truncated to fit.
 * @return 0;
 *         KHALA_ECONFIG for bad options (no path, another level, a capacity of 0, max_value
 *         over KHALA_TIER_DISK_VALUE_MAX, a negative retention or cleanup interval), for an LMDB store that is not a khala disk store, or
 *         for a store written in a newer format than this build reads;
 *         KHALA_ECORRUPT when the files are not an LMDB store, or LMDB or a record is damaged;
 *         -EBUSY when another process (or another open in this one) holds the store;
 *         -ENOTDIR when the path or one of its parents is not a directory;
 *         -ENOMEM;
 *         another -errno when the directory or its files cannot be created or opened
 *         (-EACCES, -EROFS, -ENOSPC...).
 * @note Call from one thread; the tier then belongs to khalad's loop thread.
 */
int khala__tier_disk_open(const khala_tier_disk_opts_t *o, khala_tier_t **out, char *err,
                          size_t errlen);

#endif /* KHALA_DAEMON_TIER_DISK_H */
