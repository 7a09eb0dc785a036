/*
 * The write queue of one slower level: the writes khalad owes L2 (or L3), in order, while the
 * level is down (every write mode) or until the flusher drains them (write-behind). Bounded in
 * operations and in bytes: a push beyond either bound is refused with KHALA_EQUEUE, which the
 * caller passes on as a clear error (back-pressure, never a silent drop).
 *
 * Writes to one key coalesce: a put or delete of a key that is already queued replaces the
 * queued one and moves to the tail, so the queue holds at most one put/delete per key and
 * their order relative to queued invalidations is kept.
 *
 * With a journal (khala__wq_journal_open) the queue is durable: every push is committed to an
 * LMDB file before it returns (fsync'd at once, or at most sync_every_ms later: the commit is
 * in the kernel's page cache at once, which a crash of khalad does not lose), so a write
 * acknowledged while its level was down, or under write-behind, survives a SIGKILL of khalad;
 * at the next start the journal is read back
 * into the queue, in order, and drains as usual. Removals (what the flusher sent) are committed
 * in batches by khala__wq_sync(), all of them in one transaction; a crash before it means the
 * operations drained since the last sync are sent again, in their order, which is harmless (puts
 * carry their version, deletes and invalidations repeat before what followed them). A removal is
 * never skipped on its own: the room to record it is reserved by the push (a push that cannot
 * get it is refused with -ENOMEM), so khala__wq_remove() allocates nothing and an allocation
 * failure never changes what is replayed.
 *
 * Only khalad's loop thread uses a queue. Start at khala__wq_new() and khala__wq_head().
 */
#ifndef KHALA_DAEMON_WRITEQ_H
#define KHALA_DAEMON_WRITEQ_H

#include <stddef.h>
#include <stdint.h>

/** What a queued operation does. */
typedef enum khala_wq_kind {
    KHALA_WQ_PUT,        /**< store key = value */
    KHALA_WQ_DEL,        /**< remove key */
    KHALA_WQ_INVALIDATE, /**< remove every key with this prefix (and type, if >= 0) */
} khala_wq_kind_t;

/** One queued operation. Fields are read-only for the caller. */
typedef struct khala_wq_op {
    khala_wq_kind_t kind;
    uint8_t *key;      /**< key (PUT, DEL) or prefix (INVALIDATE; may be empty) */
    size_t klen;       /**< bytes of key */
    uint8_t *val;      /**< PUT: the value, NULL when vlen == 0 */
    size_t vlen;       /**< PUT: bytes of val */
    uint64_t version;  /**< PUT: the item's version; INVALIDATE: the version khalad had reached
                            when it was made (items of a lower version are invalidated; 0 =
                            none is known) */
    int64_t expire_ms; /**< PUT: absolute deadline on khala__sys_now_ms()'s clock, 0 = none */
    int type;          /**< PUT: the item's type; INVALIDATE: type filter or -1 */
    uint64_t cursor;   /**< INVALIDATE: where its step-by-step removal at the level has got to
                            (the driver's scan cursor; 0 = not started). Written by the flusher;
                            not journaled: a restarted khalad starts the removal again. */
    struct khala_wq_op *prev, *next; /* queue order */

} khala_wq_op_t;

typedef struct khala_wq khala_wq_t;

/** Counters of a queue. */
typedef struct khala_wq_stats {
    uint64_t len;        /**< operations queued now */
    uint64_t bytes;      /**< bytes they hold (keys + values) */
    uint64_t pushed;     /**< operations accepted since creation */
    uint64_t coalesced;  /**< pushes that replaced a queued operation on the same key */
    uint64_t refused;    /**< pushes refused with KHALA_EQUEUE */
    uint64_t unreadable; /**< journal records dropped when read back: the codec refused their
                              value (KHALA_EAUTH) */
} khala_wq_stats_t;

/** How the journal holds the values of puts (encryption at rest: daemon/tier_crypt.h). The
 * queue in memory always holds them as pushed. */
typedef struct khala_wq_codec {
    /** Encode a put's value for its record: 0 with *out (malloc'd, freed by the queue) and
     * *outlen; 1 to write it as is; a negative code fails the push (nothing changed). */
    int (*seal)(void *arg, const void *key, size_t klen, int type, const void *val, size_t vlen,
                void **out, size_t *outlen);
    /** Decode a record's value when it is read back: 0 with *out (malloc'd) and *outlen; 1 to
     * take it as is; KHALA_EAUTH to drop the record (counted in unreadable); another negative
     * code fails khala__wq_journal_open(). */
    int (*unseal)(void *arg, const void *key, size_t klen, int type, const void *in, size_t inlen,
                  void **out, size_t *outlen);
    void *arg;
} khala_wq_codec_t;

/**
 * @brief Make an empty queue.
 * @param[in] max_ops most operations queued at once (>= 1).
 * @param[in] max_bytes most bytes of keys and values queued at once (>= 1).
 * @param[out] out the queue.
 * @return 0 or -ENOMEM.
 */
int khala__wq_new(size_t max_ops, size_t max_bytes, khala_wq_t **out);

/**
 * @brief Give the journal a codec for put values. Call before khala__wq_journal_open().
 * @param[in] q the queue.
 * @param[in] codec the codec (copied); NULL for none (values written as pushed).
 */
void khala__wq_set_codec(khala_wq_t *q, const khala_wq_codec_t *codec);

/**
 * @brief Make the queue durable: open (or create) the journal in directory @p dir, and queue
 *        what an earlier khalad left in it, in its order. Call on an empty queue, once.
 * @param[in] q the queue.
 * @param[in] dir the journal's directory (created if missing, mode 0700).
 * @param[in] sync_every_ms 0: fsync every commit; N: fsync at most every N ms, from
 *            khala__wq_sync() (a crash of the host may lose the last N ms).
 * @param[out] recovered how many operations were read back; may be NULL.
 * @param[out] err message naming the directory and the cause; may be NULL.
 * @param[in] errlen size of @p err.
 * @return 0; -errno when the directory cannot be made; KHALA_ECORRUPT when the journal is not
 *         one (or a record is damaged); -ENOMEM; KHALA_ETIER-free: LMDB errors map to -EIO.
 */
int khala__wq_journal_open(khala_wq_t *q, const char *dir, uint32_t sync_every_ms,
                           uint64_t *recovered, char *err, size_t errlen);

/**
 * @brief Commit the removals made since the last sync to the journal (one transaction), and
 *        fsync the journal when sync_every_ms has passed since the last fsync. Call it often
 *        (khalad: every tick).
 * @param[in] q the queue; a queue without a journal returns 0 at once.
 * @return 0 or -EIO.
 */
int khala__wq_sync(khala_wq_t *q);

/** @brief Free a queue and everything still in it. @param[in] q the queue; NULL is a no-op. */
void khala__wq_free(khala_wq_t *q);

/**
 * @brief Queue a put (replacing a queued put or delete of the same key).
 * @param[in] q the queue.
 * @param[in] key the key. @param[in] klen its bytes (1..KHALA_KEY_MAX).
 * @param[in] val the value. @param[in] vlen its bytes.
 * @param[in] version the item's version.
 * @param[in] expire_ms absolute deadline (khala__sys_now_ms() clock), 0 = none.
 * @param[in] type the item's type.
 * @return 0; KHALA_EQUEUE when the queue is full, or the journal's map is (nothing changed);
 *         -ENOMEM; -ENOSPC (or another -errno from the system) when the journal's disk is
 *         full; -EIO when the journal cannot be written otherwise (nothing changed).
 */
int khala__wq_put(khala_wq_t *q, const void *key, size_t klen, const void *val, size_t vlen,
                  uint64_t version, int64_t expire_ms, int type);

/**
 * @brief Queue a delete (replacing a queued put or delete of the same key).
 * @return as khala__wq_put().
 */
int khala__wq_del(khala_wq_t *q, const void *key, size_t klen);

/**
 * @brief Queue an invalidation by prefix (plen 0 = every key) and type (-1 = any).
 * @return as khala__wq_put().
 */
int khala__wq_invalidate(khala_wq_t *q, const void *prefix, size_t plen, int type);

/**
 * @brief Queue an invalidation like khala__wq_invalidate(), made at @p version: until it has
 *        drained, khala__wq_superseded() reports the items it covers whose version is lower.
 * @return as khala__wq_put().
 */
int khala__wq_invalidate_at(khala_wq_t *q, const void *prefix, size_t plen, int type,
                            uint64_t version);

/**
 * @brief Whether a queued invalidation covers an item: its prefix starts @p key, its type
 *        filter is -1 or @p type, and it was made at a version above @p version. A value with
 *        this key and version read from the level (or queued before the invalidation) is gone
 *        for the caller, even while the level still holds it.
 * @param[in] q the queue. @param[in] key, klen the item's key.
 * @param[in] type the item's type. @param[in] version the item's version.
 * @return 1 if superseded, else 0. Costs one comparison per queued invalidation (the queue keeps
 *         them on a list of their own), nothing when none is queued.
 */
int khala__wq_superseded(const khala_wq_t *q, const void *key, size_t klen, int type,
                         uint64_t version);

/**
 * @brief Whether a push of @p klen + @p vlen bytes for @p key would be accepted now.
 * @param[in] q the queue. @param[in] key the key (NULL for an invalidation).
 * @param[in] klen its bytes. @param[in] vlen bytes of the value.
 * @return 1 if it fits, 0 if khala__wq_put() would return KHALA_EQUEUE.
 */
int khala__wq_room(khala_wq_t *q, const void *key, size_t klen, size_t vlen);

/** @brief The oldest queued operation, or NULL when the queue is empty. */
khala_wq_op_t *khala__wq_head(khala_wq_t *q);

/** @brief Remove and free @p op (from anywhere in the queue); its journal record goes at the
 *         next khala__wq_sync(). Allocates nothing, so it cannot fail. */
void khala__wq_remove(khala_wq_t *q, khala_wq_op_t *op);

/** @brief The queued put or delete of @p key, or NULL. */
khala_wq_op_t *khala__wq_find(khala_wq_t *q, const void *key, size_t klen);

/** @brief The queue's counters. */
void khala__wq_stats(const khala_wq_t *q, khala_wq_stats_t *out);

#endif /* KHALA_DAEMON_WRITEQ_H */
