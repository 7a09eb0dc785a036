/*
 * The disk tier's store: its LMDB environment and databases, its transactions, and the write
 * set that keeps the in-memory index (daemon/tier_disk_index.h) in step with what each commit
 * changed. Private to the disk tier: daemon/tier_disk.c builds the khala_tier_t operations on
 * it, daemon/tier_disk_record.h gives the bytes of each record.
 *
 * Start at khala__disk_store_open(); daemon/tier_disk_store.c opens with the files, the map
 * size and the write protocol (build the write set, commit, apply it to the index).
 *
 * Thread safety: a store belongs to khalad's loop thread, like the tier built on it (tier.h).
 */
#ifndef KHALA_DAEMON_TIER_DISK_STORE_H
#define KHALA_DAEMON_TIER_DISK_STORE_H

#include <lmdb.h>
#include <stddef.h>
#include <stdint.h>

#include "errbuf.h"
#include "khala/cache.h"
#include "tier.h"
#include "tier_disk.h"
#include "tier_disk_index.h"
#include "tier_disk_vectors.h"

/** Deletions per transaction in invalidate and in the trim at open: bounds a transaction's
 * dirty pages well under LMDB's limit (MDB_TXN_FULL). */
#define KHALA_DISK_BATCH_MAX 8192u
/** How many times one write may double the map (khala__disk_store_grow) before it fails. */
#define KHALA_DISK_MAP_GROW_TRIES 16
/** Scans: cursor slots kept at once (the least recently used is reused). */
#define KHALA_DISK_SCAN_SLOTS 16

/** What a write transaction changes in the index once it has committed. */
typedef enum khala_disk_act_kind {
    KHALA_DISK_ACT_PUT,    /* key written: update old, or insert fresh */
    KHALA_DISK_ACT_EVICT,  /* victim removed for the capacities */
    KHALA_DISK_ACT_EXPIRE, /* expired item removed */
    KHALA_DISK_ACT_DEL,    /* removed by del or invalidate */
} khala_disk_act_kind_t;

/** One change of the write set. */
typedef struct khala_disk_act {
    khala_disk_act_kind_t kind;
    khala_disk_entry_t *old;   /* PUT: the index entry at build time, or NULL; else the removed
                                  entry (pinned until the write ends) */
    khala_disk_entry_t *fresh; /* PUT with old == NULL: a new entry, allocated before the
                                  commit; owned by the write set until it is applied */
    uint32_t bytes;            /* PUT: klen + vlen */
    int64_t expire_ms;         /* PUT: absolute CLOCK_REALTIME expiry in ms, 0 = never */
    /* PUT: the item written (its type and value, for the vector index), valid until the write
     * ends; NULL = not a vector. */
    const khala_tier_value_t *val;
} khala_disk_act_t;

/** A scan cursor's slot: where that scan resumes. */
typedef struct khala_disk_scan_slot {
    uint64_t id;   /* the cursor handed out; 0 = free */
    uint64_t used; /* ix.seq when last used: the least recently used slot is reused */
    uint8_t klen;  /* last key visited */
    uint8_t key[KHALA_KEY_MAX];
} khala_disk_scan_slot_t;

/** An open store, and the disk tier built on it. All fields belong to khalad's loop thread. */
typedef struct khala_disk_store {
    khala_tier_t tier; /* what khala__tier_disk_open returns; tier.impl points back here;
                          tier.err holds the last failure's message */

    /* Immutable after open. */
    char *path;                    /* the store's directory */
    MDB_env *env;                  /* MDB_NOTLS; MDB_NOSYNC when sync_every_ms */
    MDB_dbi items, lfu, meta;      /* the three named databases */
    int lock_fd;                   /* khala.lock, flock'd; -1 before it is opened */
    uint64_t max_items, max_bytes; /* capacities, >= 1 */
    uint32_t max_value;            /* largest value accepted, bytes */
    uint32_t sync_every_ms;        /* 0: fsync each durable commit; else at most this often */

    /* Durability (sync_every_ms only). */
    int dirty;            /* commits since the last fsync */
    int64_t last_sync_ms; /* when tick last synced, monotonic ms */

    MDB_txn *rtxn; /* a reset read transaction, renewed by each read; NULL until the first */

    khala_disk_index_t ix; /* the items in memory; its seed and clock are set at open */

    /* The write being built (reused buffers): changes applied to ix after the commit. */
    khala_disk_act_t *acts;
    size_t nact, act_cap;

    /* Background work (tick): where the next sweep and counter flush start. */
    size_t sweep_pos, flush_pos;
    int64_t last_flush_ms; /* monotonic ms of the last counter flush */

    /* Scans (tier_disk.c). */
    khala_disk_scan_slot_t scans[KHALA_DISK_SCAN_SLOTS];
    uint64_t scan_next; /* ids handed out; mixed with the seed so ids differ between opens */

    khala_tier_stats_t st; /* counters reported by the tier's stats() */

    /* L3 housekeeping options, immutable after open (tier_disk.h). */
    int64_t archive_retention_ms; /* 0 = no archive */
    int64_t cleanup_interval_ms;  /* 0 = no periodic cleanup */
    uint32_t cleanup_batch;       /* rows per cleanup step, >= 1 */

    /* The archive (daemon/tier_disk_archive.c); its databases are open only when
     * archive_retention_ms > 0. arch_n / arch_bytes are what the last commit left; arch_dn /
     * arch_dbytes what the write being built changes, added by acts_apply, zeroed by
     * acts_discard (the write set's rule). */
    MDB_dbi archive, archive_age;
    uint64_t arch_n, arch_bytes;
    int64_t arch_dn, arch_dbytes;
    uint64_t arch_expirations; /* archived copies removed past their retention */
    uint64_t arch_drops;       /* archived copies dropped, oldest first, to keep its bound */
    uint64_t arch_seq;         /* the next copy's archival number (above every kept one) */
    uint8_t *arch_buf;         /* a value being moved to the archive (reused; freed at close) */
    size_t arch_buf_cap;       /* its bytes */

    /* The periodic cleanup in progress (daemon/tier_disk_cleanup.c). */
    int cleanup_phase;          /* khala_disk_cleanup_phase_t; 0 = idle */
    size_t cleanup_pos;         /* the expiry phase walks ix.dense down from here */
    int64_t cleanup_next_ms;    /* monotonic ms when the next cleanup starts */
    int cleanup_walking;        /* phase 2: a pass over "items" is under way */
    uint64_t cleanup_rank_max;  /* the pass evicts entries of this rank or lower */
    uint64_t cleanup_pass_rows; /* rows the pass evicted so far */
    int cleanup_sampled;        /* a pass evicted nothing: the rest goes by sampling */
    uint8_t cleanup_key_len;    /* where the pass resumes; 0 = at the first key */
    uint8_t cleanup_key[KHALA_KEY_MAX];
    uint64_t cleanups; /* cleanups completed */
    /* The embedding items' vectors (similar, tier_disk_vectors.c), kept with ix. */
    khala_disk_vectors_t vec;
} khala_disk_store_t;

/**
 * @brief Open the store in directory @p o->path, which exists: take khala.lock, open the LMDB
 *        environment and databases (checking or writing the format record; emptying them when
 *        @p o->persistent is false), rebuild the index from the records, and evict down to the
 *        capacities.
 * @param[in] o the tier's options, already checked by khala__tier_disk_open.
 * @param[in] max_value the largest value accepted (o->max_value resolved).
 * @param[out] out the store; written only on success. Its tier is zeroed but for impl,
 *             for the caller to fill. Release it with khala__disk_store_close().
 * @param[out] err message naming the path and the cause; may be NULL.
 * @param[in] errlen size of @p err.
 * @return 0; or the codes of khala__tier_disk_open() (tier_disk.h) but the option checks.
 */
int khala__disk_store_open(const khala_tier_disk_opts_t *o, uint32_t max_value,
                           khala_disk_store_t **out, char *err, size_t errlen);

/**
 * @brief Write every changed LFU counter (one transaction), make everything durable, and
 *        free the store. A failure loses only hints.
 * @param[in] d the store, or NULL for nothing.
 */
void khala__disk_store_close(khala_disk_store_t *d);

/* ---- messages -------------------------------------------------------------------------- */

/**
 * @brief Format "<path>: <message>" into d->tier.err.
 * @return @p rc, so that a failure is one statement.
 */
int khala__disk_store_fail(khala_disk_store_t *d, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/**
 * @brief 1 if @p rc is LMDB's (an MDB_* code or a positive errno) rather than a khala code or a
 *        -errno.
 */
int khala__disk_store_is_mdb(int rc);

/**
 * @brief Report the failure @p rc (LMDB's or ours) of @p what in d->tier.err and count it.
 * @return the khala code for @p rc: itself when it is not LMDB's; else KHALA_ECORRUPT for a
 *         damaged file, -ENOMEM, or KHALA_ETIER (the level cannot serve now: disk full, I/O
 *         error, so khalad marks the tier unhealthy and queues its writes).
 */
int khala__disk_store_mdb_fail(khala_disk_store_t *d, int rc, const char *what);

/** A key in a message: the one way keys are shown (khala__errbuf_quote, lib/errbuf.h). */
#define khala__disk_store_key_show(key, klen, buf, cap)                                            \
    khala__errbuf_quote((key), (klen), (buf), (cap))

/** @brief The wall clock in ms (CLOCK_REALTIME): record expiry survives a restart. */
int64_t khala__disk_store_realtime_ms(void);

/* ---- transactions ---------------------------------------------------------------------- */

/**
 * @brief Begin a write transaction.
 * @param[in] nosync 1 for a transaction that only removes dead items or writes hints: it
 *            commits without fsync (moot when the environment is MDB_NOSYNC already).
 * @return 0 or an LMDB code.
 */
int khala__disk_store_wtxn_begin(khala_disk_store_t *d, int nosync, MDB_txn **txn);

/**
 * @brief Commit @p txn (or abort it, when @p rc is not 0).
 * @param[in] nosync as given to khala__disk_store_wtxn_begin().
 * @return the commit's result (an LMDB code), or @p rc.
 */
int khala__disk_store_wtxn_end(khala_disk_store_t *d, MDB_txn *txn, int nosync, int rc);

/**
 * @brief Renew the store's read transaction.
 * @return 0, or a failure reported (khala__disk_store_mdb_fail).
 * @note End it with khala__disk_store_rtxn_end() before any write in this process.
 */
int khala__disk_store_rtxn_begin(khala_disk_store_t *d, MDB_txn **txn);

/** @brief Reset the read transaction (it is renewed by the next read). */
void khala__disk_store_rtxn_end(khala_disk_store_t *d);

/**
 * @brief Double the map after MDB_MAP_FULL.
 * @return 0, or a failure reported.
 * @note No transaction may be open in this process.
 */
int khala__disk_store_grow(khala_disk_store_t *d);

/**
 * @brief Delete key from "items" and "lfu" in @p txn.
 * @return 0, or an LMDB code (MDB_NOTFOUND when the key is absent from "items").
 */
int khala__disk_store_del_both(khala_disk_store_t *d, MDB_txn *txn, const void *key, size_t klen);

/**
 * @brief Evict until the projection (index plus the write's changes, @p items_delta and
 *        @p bytes_delta) is within the capacities, or @p max victims were chosen. Victims are
 *        deleted in @p txn (a live one moved to the archive, when the store keeps one), pinned
 *        and recorded in the write set.
 * @param[in] relaxed 1 for a write: a store already over a capacity (lowered since it was
 *            written; the cleanup brings it down in steps) is held at its current size rather
 *            than trimmed by this write. 0: down to the capacities.
 * @return 0; KHALA_EFULL (reported) when nothing is left to evict; -ENOMEM; an LMDB code.
 */
int khala__disk_store_evict_txn(khala_disk_store_t *d, MDB_txn *txn, int64_t items_delta,
                                int64_t bytes_delta, int64_t now_rt, size_t max, int relaxed);

/* ---- the write set --------------------------------------------------------------------- */

/** @brief Add a change to the write being built. @return 0 or -ENOMEM (nothing added). */
int khala__disk_store_act_push(khala_disk_store_t *d, khala_disk_act_t a);

/** @brief Forget the write being built (its transaction failed): free the fresh entries and
 *         unpin the others. */
void khala__disk_store_acts_discard(khala_disk_store_t *d);

/** @brief Apply a committed write to the index. Cannot fail: room was reserved before the
 *         commit. */
void khala__disk_store_acts_apply(khala_disk_store_t *d);

/**
 * @brief Write up to @p max changed LFU counters to "lfu", examining up to @p examine entries
 *        from d->flush_pos on, in one transaction without fsync (counters are hints).
 * @return 0 or an LMDB code (nothing is marked clean then).
 */
int khala__disk_store_flush_counters(khala_disk_store_t *d, size_t examine, size_t max);

#endif /* KHALA_DAEMON_TIER_DISK_STORE_H */
