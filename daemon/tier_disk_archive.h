/*
 * The disk tier's archive: where a store with archive_retention_ms (L3's [l3]
 * archive_retention_seconds) keeps the items it evicted for space, for that long, so that an
 * operator can still read them back explicitly (archive_get, `khalactl get --archive`). Items
 * that expired, were deleted or invalidated are never archived. Private to the disk tier: the
 * store (daemon/tier_disk_store.c) calls it from its eviction and open, the tier
 * (daemon/tier_disk.c) from del, invalidate and archive_get, the cleanup
 * (daemon/tier_disk_cleanup.c) for the retention.
 *
 * Start at khala__disk_archive_move_txn(); daemon/tier_disk_archive.c opens with the layout, the
 * bound and the rules. Every function here is a no-op returning 0 (or KHALA_ENOTFOUND for a
 * read) when the store keeps no archive (archive_retention_ms 0).
 *
 * Thread safety: like the store, khalad's loop thread only.
 */
#ifndef KHALA_DAEMON_TIER_DISK_ARCHIVE_H
#define KHALA_DAEMON_TIER_DISK_ARCHIVE_H

#include <lmdb.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tier.h"
#include "tier_disk_store.h"

/** Named databases the archive adds to the store's environment. */
#define KHALA_DISK_ARCHIVE_DBS 2

/**
 * @brief Open (creating them) the archive's databases in @p txn when the store keeps an archive,
 *        emptying them when @p persistent is false; when it keeps none, delete the databases a
 *        previous open with an archive left (the operator turned the archive off).
 * @return 0 or an LMDB code.
 */
int khala__disk_archive_open_dbs(khala_disk_store_t *d, MDB_txn *txn, bool persistent);

/**
 * @brief Count the archive's items and bytes (one pass over it) into d->arch_n / d->arch_bytes.
 * @param[out] err message naming the path and the cause; may be NULL.
 * @return 0, or the khala code of an LMDB failure (KHALA_ECORRUPT, KHALA_ETIER, -ENOMEM).
 */
int khala__disk_archive_load(khala_disk_store_t *d, char *err, size_t errlen);

/**
 * @brief Copy the live item @p key of "items" into the archive in @p txn, with an expiry of now
 *        + the retention, replacing an older archived copy, then drop the oldest archived
 *        copies while the archive is over max_items / max_bytes. The caller deletes the item
 *        from "items" next, in the same transaction.
 * @param[in] item the item's record as read in @p txn (by a cursor standing on it), or NULL to
 *            look it up.
 * @param[in] now_rt CLOCK_REALTIME ms now.
 * @return 0 (also when the key is absent or its record is malformed: nothing is archived), or
 *         an LMDB code. The size changes go to d->arch_dn / d->arch_dbytes (the write set).
 */
int khala__disk_archive_move_txn(khala_disk_store_t *d, MDB_txn *txn, const void *key, size_t klen,
                                 const MDB_val *item, int64_t now_rt);

/**
 * @brief Remove the archived copy of @p key, if any, in @p txn (del).
 * @return 0 or an LMDB code. The size changes go to d->arch_dn / d->arch_dbytes.
 */
int khala__disk_archive_del_txn(khala_disk_store_t *d, MDB_txn *txn, const void *key, size_t klen);

/**
 * @brief Remove every archived copy whose key starts with @p prefix (@p plen 0: every key) and,
 *        when @p type >= 0, whose type is @p type, in transactions of at most
 *        KHALA_DISK_BATCH_MAX removals.
 * @param[out] removed how many were removed (also on failure); may be NULL.
 * @return 0, or a failure reported in d->tier.err (khala__disk_store_mdb_fail).
 */
int khala__disk_archive_invalidate(khala_disk_store_t *d, const void *prefix, size_t plen, int type,
                                   uint64_t *removed);

/**
 * @brief Empty the archive in @p txn (a flush of the whole store); the caller zeroes
 *        d->arch_n / d->arch_bytes once @p txn has committed.
 * @return 0 or an LMDB code.
 */
int khala__disk_archive_clear_txn(khala_disk_store_t *d, MDB_txn *txn);

/**
 * @brief One bounded step of the retention: remove, oldest first, up to @p max archived copies
 *        whose retention has passed, in one transaction without fsync.
 * @param[in] now_rt CLOCK_REALTIME ms now.
 * @param[out] removed how many were removed.
 * @return 0; or an LMDB code (MDB_MAP_FULL: grow the map and call again).
 */
int khala__disk_archive_expire_step(khala_disk_store_t *d, int64_t now_rt, size_t max,
                                    size_t *removed);

/**
 * @brief Read the archived copy of @p key (archive_get of tier.h).
 * @param[out] out the value (its data allocated), ttl_ms the time its retention has left;
 *             written only on success.
 * @return 0; KHALA_ENOTFOUND when the store keeps no archive, holds no copy of the key, or the
 *         copy is past its retention; KHALA_EKEY for an empty key or one over KHALA_KEY_MAX;
 *         KHALA_ECORRUPT for a malformed record; -ENOMEM; KHALA_ETIER when LMDB fails. Every
 *         failure leaves a message in d->tier.err.
 */
int khala__disk_archive_get(khala_disk_store_t *d, const void *key, size_t klen,
                            khala_tier_value_t *out);

#endif /* KHALA_DAEMON_TIER_DISK_ARCHIVE_H */
