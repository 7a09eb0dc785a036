/*
 * Reader slots: how a reader announces a read section (the epoch protocol), records hits for
 * the eviction policy, and how the writer learns which memory it may free and which readers
 * died. The theory, with the memory-ordering argument, is at the top of readers.c and in
 * docs/segment.md.
 *
 * Synchronization table (slot fields; "owner" is the thread that claimed the slot):
 *
 *   field      | written by                  | read by            | order
 *   -----------+-----------------------------+--------------------+---------------------------
 *   epoch      | owner (enter, leave)        | writer (reclaim)   | enter: release store then
 *              | writer, if owner is dead    |                    | seq_cst fence; leave:
 *              |                             |                    | release; writer: fence (and
 *              |                             |                    | membarrier once per epoch),
 *              |                             |                    | then acquire loads
 *   misses     | owner                       | writer, owner      | relaxed (counter)
 *   ring[]     | owner                       | writer (drain)     | relaxed entries, published
 *   ring_head  | owner                       | writer (drain)     | by a release store of head
 *   (== hits)  |                             | owner (stats)      |
 *   token      | owner on claim (CAS);       | writer, claimers   | under the slot's OFD lock;
 *              | writer on reap of a dead    |                    | claim: acq_rel CAS; release
 *              | owner; owner on release     |                    | on free
 *   pid,start, | owner on claim; writer on   | stats, logs        | relaxed; informational
 *   tid        | reap of a dead owner        |                    |
 *
 * This header is the reader's side, which workers link (libkhalacache). The writer's side of
 * the same slots (scanning them for a grace period, reaping dead readers, draining hit rings)
 * is lib/reclaim.h, in the writer library only. Start at khala__reader_enter().
 */
#ifndef KHALA_LIB_READERS_H
#define KHALA_LIB_READERS_H

#include <stdint.h>

#include "atomic.h"
#include "layout.h"
#include "segment.h"

/* Reader side -------------------------------------------------------------------------------*/

/* This process's random identity in the slots it claims (never 0; renewed in a fork child). */
uint64_t khala__readers_token(void);

/* Claim a free slot for the calling thread (token, pid, start time and tid recorded, OFD lock
 * on byte `index` of the readers file taken). 0 and *idx, or KHALA_ENOREADER / -errno. */
int khala__readers_claim(khala_seg_t *s, uint32_t *idx);

/* Give a slot back: leave any section, clear the owner, drop the lock. */
void khala__readers_release(khala_seg_t *s, uint32_t idx);

/* Enter a read section: publish the global epoch in the slot, then a full fence, so that either
 * the writer's scan sees this slot's epoch or this reader sees every unlink that preceded the
 * scan (docs/segment.md, "Reclamation: why a reader never reads freed memory", gives the whole
 * argument; its "Slots and tags" covers the bucket lines' unordered tag loads). */
static inline void khala__reader_enter(const khala_seg_t *s, khala_slot_t *slot) {
    /* acquire: pairs with the writer's epoch increment, which follows its unlinks. */
    uint64_t e = khala_load_acquire(&s->hdr->epoch);
    /* release: a writer that load-acquires this epoch also sees everything this thread did
     * before, the previous section's reads included. The previous khala__reader_leave's release
     * store of 0 used to cover that through the C11 release sequence (later stores by the same
     * thread), which C++20's model, and the newer C model with it, dropped. Free on x86. */
    khala_store_release(&slot->epoch, e);
    /* seq_cst fence: orders the epoch store before every load of the table that follows;
     * pairs with the fence in khala__readers_min_epoch (the store-buffer case). With
     * light_fence, the writer's membarrier() runs that fence on this CPU for us, when it
     * matters, and a compiler barrier keeps the compiler from reordering the same way. */
    if (s->light_fence)
        atomic_signal_fence(memory_order_seq_cst);
    else
        khala_fence_seq_cst();
}

/* Leave a read section. release: every read of the section happens before the writer, having
 * load-acquired this 0, frees or reuses memory. */
static inline void khala__reader_leave(khala_slot_t *slot) {
    khala_store_release(&slot->epoch, 0);
}

/* Record a hit on desc `idx` of a key whose hash is `hash` (owner only; lossy). The ring's
 * head is also the slot's hit count (layout.h), so a hit costs the entry and the head. */
static inline void khala__reader_record(const khala_seg_t *s, khala_slot_t *slot, uint32_t idx,
                                        uint64_t hash) {
    uint64_t head = khala_load_relaxed(&slot->ring_head);
    khala_store_relaxed(&slot->ring[head & s->ring_mask], ((uint64_t)idx << 32) | (uint32_t)hash);
    /* release: publishes the entry before the new head; pairs with the acquire in drain. */
    khala_store_release(&slot->ring_head, head + 1);
}

/* Add to the owner's own counter: a plain increment, no read-modify-write, since only the
 * owner writes it. */
static inline void khala__reader_count(khala_atomic_u64 *ctr) {
    khala_store_relaxed(ctr, khala_load_relaxed(ctr) + 1);
}

#endif /* KHALA_LIB_READERS_H */
