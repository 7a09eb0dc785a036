/*
 * The writer's side of the reader slots: grace periods, reaping, draining.
 *
 * HOW IT WORKS
 *
 * A grace period. The writer advances the global epoch (l1_table.c does that), then calls
 * khala__readers_min_epoch: a seq_cst fence, then a scan of every slot up to the high-water
 * mark; every retired item whose epoch is below the smallest nonzero slot epoch may be freed.
 * docs/segment.md, "Reclamation: why a reader never reads freed memory", gives the argument.
 *
 * Asymmetric fences: where the kernel has membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED), reader
 * processes register at attach and keep only a compiler barrier at section entry; the writer
 * issues membarrier() before its scans, one per value of the global epoch (the first scan after
 * an increment). docs/segment.md, "Asymmetric fences", argues both. ThreadSanitizer cannot see
 * membarrier, so TSan builds keep the fence.
 *
 * Reaping (khala__readers_reap). A slot that shows an old epoch may belong to a dead reader.
 * The writer tries the slot's OFD lock through its own open file description of the readers
 * file: if it gets it, the owner is dead (the kernel dropped its lock), and the writer clears
 * the slot while holding the lock, so that no claimer races it. A slot whose token is this
 * process's is alive (we are), and must be skipped: a lock taken through our own description
 * would not conflict with it. Never a pid test (readers.c says why).
 *
 * Draining (khala__readers_drain). The writer keeps one cursor per slot in private memory and
 * reads each ring from its cursor to the head the owner published (acquire); entries the owner
 * overwrote before the drain are lost, which the policy tolerates (readers.c, "Hit rings").
 */
#include "reclaim.h"

#include <errno.h>

#include "khala/error.h"
#include "sys.h"

uint64_t khala__readers_min_epoch(khala_seg_t *s) {
    /* seq_cst fence: orders the caller's unlinks (and epoch increment) before the loads below;
     * pairs with the fence in khala__reader_enter. */
    khala_fence_seq_cst();
    /* Readers with light_fence skipped theirs: membarrier runs it on their CPUs, once per
     * epoch value (docs/segment.md, "Asymmetric fences"). If it fails (it worked when the
     * segment was made, so this is not expected), assume every reader pins everything:
     * nothing is freed this round. */
    uint64_t now = khala_load_relaxed(&s->hdr->epoch);
    if (khala_load_relaxed(&s->hdr->asym_fence) && s->fenced_epoch != now) {
        if (khala__sys_membarrier() != 0)
            return 0;
        s->fenced_epoch = now;
        s->membarriers++;
    }
    uint32_t hwm = khala_load_acquire(&s->rhdr->hwm);
    uint64_t min = UINT64_MAX;
    for (uint32_t i = 0; i < hwm && i < s->nslots; i++) {
        /* acquire: pairs with the release in khala__reader_leave. */
        uint64_t e = khala_load_acquire(&khala__seg_slot(s, i)->epoch);
        if (e && e < min)
            min = e;
    }
    return min;
}

uint64_t khala__readers_oldest(const khala_seg_t *s, int *pid, uint32_t *slot) {
    uint32_t hwm = khala_load_acquire(&s->rhdr->hwm);
    uint64_t min = 0;
    *pid = 0;
    if (slot)
        *slot = UINT32_MAX;
    for (uint32_t i = 0; i < hwm && i < s->nslots; i++) {
        khala_slot_t *sl = khala__seg_slot(s, i);
        uint64_t e = khala_load_acquire(&sl->epoch);
        if (e && (min == 0 || e < min)) {
            min = e;
            *pid = (int)khala_load_relaxed(&sl->pid);
            if (slot)
                *slot = i;
        }
    }
    return min;
}

int khala__readers_reap(khala_seg_t *s, uint64_t below) {
    uint32_t hwm = khala_load_acquire(&s->rhdr->hwm);
    int reaped = 0;
    for (uint32_t i = 0; i < hwm && i < s->nslots; i++) {
        khala_slot_t *slot = khala__seg_slot(s, i);
        uint64_t e = khala_load_acquire(&slot->epoch);
        /* A slot claimed through this very descriptor (this process, same open file
         * description) is alive, and the lock test cannot see it: its own lock would not
         * conflict. The token says so; nothing else (a pid, in another pid namespace, may be
         * ours too). */
        if (e == 0 || e >= below || khala_load_relaxed(&slot->token) == khala__readers_token())
            continue;
        int rc = khala__sys_lock_try(s->readers_fd, i);
        if (rc == -EAGAIN)
            continue; /* owner alive: it is just slow */
        if (rc != 0)
            return rc;
        /* The owner is dead and we hold its lock: no claimer can race us. */
        khala_store_relaxed(&slot->tid, 0);
        khala_store_relaxed(&slot->start, 0);
        khala_store_relaxed(&slot->pid, 0);
        khala_store_release(&slot->epoch, 0);
        khala_store_release(&slot->token, 0);
        (void)khala__sys_lock_release(s->readers_fd, i);
        reaped++;
    }
    return reaped;
}

void khala__readers_drain(const khala_seg_t *s, uint64_t *tails,
                          void (*fn)(void *arg, uint32_t idx, uint32_t hash_lo), void *arg) {
    uint32_t hwm = khala_load_acquire(&s->rhdr->hwm);
    uint64_t ring = (uint64_t)s->ring_mask + 1;
    for (uint32_t i = 0; i < hwm && i < s->nslots; i++) {
        khala_slot_t *slot = khala__seg_slot(s, i);
        /* acquire: pairs with the release in khala__reader_record; entries below head are
         * published. */
        uint64_t head = khala_load_acquire(&slot->ring_head);
        uint64_t t = tails[i];
        if (head == t)
            continue;
        if (head - t > ring || head < t)
            t = head - ring; /* lapped (or a fresh cursor): keep the newest ring entries */
        for (; t != head; t++) {
            uint64_t e = khala_load_relaxed(&slot->ring[t & s->ring_mask]);
            fn(arg, (uint32_t)(e >> 32), (uint32_t)e);
        }
        tails[i] = head;
    }
}

void khala__readers_totals(const khala_seg_t *s, uint64_t *hits, uint64_t *misses) {
    uint32_t hwm = khala_load_acquire(&s->rhdr->hwm);
    uint64_t h = 0, m = 0;
    for (uint32_t i = 0; i < hwm && i < s->nslots; i++) {
        khala_slot_t *slot = khala__seg_slot(s, i);
        h += khala_load_relaxed(&slot->hits);
        m += khala_load_relaxed(&slot->misses);
    }
    *hits = h;
    *misses = m;
}

uint32_t khala__readers_in_use(const khala_seg_t *s) {
    uint32_t hwm = khala_load_acquire(&s->rhdr->hwm), n = 0;
    for (uint32_t i = 0; i < hwm && i < s->nslots; i++)
        n += khala_load_relaxed(&khala__seg_slot(s, i)->token) != 0;
    return n;
}
