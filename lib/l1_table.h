/*
 * The L1 table's writer: the handle khalad uses (khala_l1_t) to put, delete, expire, evict and
 * check. Only the writer library (khala_writer) holds it. The lookup that readers run is in
 * l1_lookup.h, which workers link; the writer uses the same lookup for its own finds.
 *
 * Start at khala__l1_open() and khala__l1_put(); the design is at the top of l1_table.c.
 */
#ifndef KHALA_LIB_L1_TABLE_H
#define KHALA_LIB_L1_TABLE_H

#include <stddef.h>
#include <stdint.h>

#include <string.h>

#include "khala/error.h"
#include "l1_lookup.h"
#include "layout.h"
#include "segment.h"
#include "segment_create.h"
#include "sys.h"

/* The writer's handle. Not thread-safe: one thread of one process drives it. */
typedef struct khala_l1 khala_l1_t;

/* Counters of the table, as the writer sees them. */
typedef struct khala_l1_stats {
    uint64_t items, item_bytes, payload_bytes; /* live items; arena bytes; key+value bytes */
    uint64_t arena_bytes, free_bytes;          /* arena size; bytes in free blocks */
    uint64_t retired, retired_bytes;           /* unlinked items waiting for readers */
    uint64_t sets, overwrites, deletes, evictions, expirations;
    uint64_t reader_hits, reader_misses; /* summed over reader slots */
    uint32_t readers;                    /* reader slots in use */
    uint32_t max_items;
    uint64_t epoch;        /* global epoch */
    uint64_t small, main;  /* items in the policy's queues */
    int oldest_reader_pid; /* pid of the reader pinning the oldest epoch, 0 if none */
    uint64_t oldest_reader_epoch;
    int stuck_reader_pid;   /* a reader that made a wait for readers fail and is still inside
                                that section (stopped, in a debugger, frozen), 0 if none */
    int64_t stuck_since_ms; /* when it was found stuck (monotonic ms), 0 if none */
    uint64_t blocked_ops;   /* writer operations refused (KHALA_EBLOCKED) or, for deletes and
                                invalidations, done by marking the item expired, because of a
                                reader stuck in a section; since open */
    uint64_t stuck_waits;   /* waits for readers that ran out their whole budget (GRACE_WAIT_NS
                               per operation); one per stuck reader while it stays stuck */
    uint64_t membarriers;   /* membarrier() calls of the writer's reader scans, since open */
    uint64_t rehashes;      /* rehashes with a new seed (hash flooding defence) */
} khala_l1_stats_t;

/* khala__l1_open_ex flags. */
enum {
    KHALA_L1_DEFAULT = 0,
    /* Adopt the segment that exists under the name when it has the same sizes, no live writer
     * and passes khala__l1_check (khalad restarting): readers keep their mapping, the items
     * stay; its files are given the group cfg asks for (khala__seg_own). Otherwise make it
     * anew, as without the flag, and say why in khala__l1_errmsg. */
    KHALA_L1_REATTACH = 1u << 0,
};

/* Create cache `name` anew with the given sizes (NULL for defaults) and become its writer. An
 * existing segment without a live writer is replaced (its readers reattach). Returns 0,
 * KHALA_EEXIST, KHALA_ECONFIG, KHALA_ENAME, -ENOMEM or -errno; on failure *err (if not NULL)
 * gets a message naming the problem. */
int khala__l1_open(const char *name, const khala_seg_config_t *cfg, khala_l1_t **out, char *err,
                   size_t errlen);

/* khala__l1_open with flags (KHALA_L1_REATTACH). Same returns; KHALA_EEXIST also when the
 * existing segment still has a live writer. */
int khala__l1_open_ex(const char *name, const khala_seg_config_t *cfg, unsigned flags,
                      khala_l1_t **out, char *err, size_t errlen);

/* 1 if khala__l1_open_ex adopted an existing segment, 0 if it made one. */
int khala__l1_reattached(const khala_l1_t *t);

/* Close the writer; with unlink != 0 also remove the segment files. */
void khala__l1_close(khala_l1_t *t, int unlink);

/* Insert or overwrite. ttl_ms 0 means no expiry. On success *version (if not NULL) is the new
 * item's version. Errors: KHALA_EKEY, KHALA_ETOOBIG (value above max_value or larger than the
 * arena), KHALA_EBLOCKED (reclamation held back by a live reader), KHALA_EFULL, and on all of
 * them the table is unchanged. */
int khala__l1_put(khala_l1_t *t, const void *key, size_t klen, const void *val, size_t vlen,
                  int64_t ttl_ms, uint8_t type, uint64_t *version);

/* As khala__l1_put, with the item's version chosen by the caller (khalad gives every level the
 * same version, ordered across hosts); want_version 0 means "the next of this table's own". The
 * table's own sequence moves past want_version, so later own versions stay larger. */
int khala__l1_put_v(khala_l1_t *t, const void *key, size_t klen, const void *val, size_t vlen,
                    int64_t ttl_ms, uint8_t type, uint64_t want_version, uint64_t *version);

/* Remove a key. 0, KHALA_ENOTFOUND or KHALA_EKEY. Never refused for a reader stuck in a read
 * section: when the item cannot be retired it is marked expired in place, so no reader returns
 * it again, and the sweep unlinks it later. */
int khala__l1_delete(khala_l1_t *t, const void *key, size_t klen);

/* Housekeeping a writer runs often (khalad: every loop turn; tests: after bursts): drain the
 * hit rings into the policy, free retired items whose grace period has passed, reap slots of
 * dead readers that pin memory. Returns the number of items freed, or -errno. */
int khala__l1_maintain(khala_l1_t *t);

/* Examine up to `budget` descs from the sweep cursor and remove expired items; returns how
 * many were removed. A full sweep is max_items / budget calls. */
size_t khala__l1_sweep(khala_l1_t *t, size_t budget);

void khala__l1_stats(khala_l1_t *t, khala_l1_stats_t *st);

/* A visitor of live items: return 1 to remove the item, 0 to keep it, or KHALA_L1_STOP to end
 * the walk before this item (the cursor then points at it, so the next call visits it first).
 * The item is valid only during the call. */
#define KHALA_L1_STOP (-1)
typedef int (*khala_l1_visit_fn)(void *arg, const khala_item_t *it);

/* Visit the live items of up to `budget` descs from *cursor (a position, 0 to start), removing
 * those fn asks to remove. *cursor is set to where the next call goes on, 0 once the walk has
 * reached the end. Returns how many items were removed. Keys may be put or removed between
 * calls; an item present for the whole walk is visited exactly once. */
size_t khala__l1_scan(khala_l1_t *t, uint64_t *cursor, size_t budget, khala_l1_visit_fn fn,
                      void *arg);

/* Hits readers recorded for the key of item it (a lower bound: the rings are lossy and are
 * drained by khala__l1_maintain). */
uint32_t khala__l1_item_hits(const khala_l1_t *t, const khala_item_t *it);

/* The writer's own lookup (no read section: nothing is freed while the writer runs). The item
 * is valid until the writer's next call that changes the table. */
int khala__l1_find(khala_l1_t *t, const void *key, size_t klen, const khala_item_t **out);

/* Walk the whole table, the queues and the arena, verifying every invariant. 0 or
 * KHALA_ECORRUPT (with the detail in khala__l1_errmsg). */
int khala__l1_check(khala_l1_t *t);

/* Detail of the last failure on t. */
const char *khala__l1_errmsg(const khala_l1_t *t);

/* The writer's segment (tests use it to attach readers to the same mapping under TSan). */
khala_seg_t *khala__l1_seg(khala_l1_t *t);

#endif /* KHALA_LIB_L1_TABLE_H */
