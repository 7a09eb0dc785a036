/*
 * Reader slots and cross-process epoch-based reclamation: the readers' side (claiming a slot,
 * entering and leaving sections, recording hits). The writer's side is reclaim.c.
 *
 * HOW IT WORKS
 *
 * The writer never frees an item that a reader might still be reading. Readers cannot take
 * locks or tell the writer what they read (that would cost the hit path a shared write), so the
 * writer infers it from epochs:
 *
 *   - The header holds a global epoch E, which only the writer advances.
 *   - A reader entering a read section copies E into its slot; leaving, it stores 0.
 *   - The writer, having unlinked an item while the global epoch was R, records (item, R) in
 *     the retire ring. Later it advances the global epoch, fences, and scans the slots: an item
 *     retired at R may be freed once every slot shows either 0 or an epoch greater than R.
 *
 * Why it is safe: docs/segment.md, "Reclamation: why a reader never reads freed memory", holds
 * the one statement of the argument (the store-buffer rule of seq_cst fences between the
 * reader's epoch store and the writer's unlink, and release/acquire on the epochs).
 *
 * A reader that dies inside a section leaves its epoch behind and would pin memory forever.
 * Each slot is therefore tied to its owner by an OFD lock on byte <slot index> of the readers
 * file (sys.c explains why OFD rather than classic fcntl locks). The kernel drops it when the
 * owner dies; pid reuse cannot fool it, unlike a kill(pid, 0) check. The writer reaps a slot
 * (khala__readers_reap) by taking its lock: if it gets it, the owner is gone, and it clears the
 * slot under the lock so that no claimer races it. Claimers take the same lock, and because
 * threads of one process share their open file description (the lock does not exclude them from
 * each other), a claimer also wins the slot's token with a compare-and-swap. The token is a
 * random 64-bit identity of the claiming process, renewed in every fork child; it is never a
 * pid, because pids repeat across pid namespaces (a writer and a reader that are both pid 1 in
 * their containers) and are reused, and a pid test would then call a dead reader alive for good.
 *
 * Hit rings. Each slot has a ring of ring_size 64-bit entries (desc index << 32 | low 32 bits of
 * the hash). The owner writes an entry and then publishes a new head with release order; the
 * writer keeps its own cursor per slot in private memory, so the ring costs the hit path one
 * store to a line only its owner writes. If the owner laps the writer, the oldest entries are
 * lost; the writer validates each entry against its desc and ignores stale ones. The policy
 * only needs a sample of hits, not all of them.
 *
 * Alternatives rejected: liburcu's flavours track readers per process and cannot see readers in
 * other processes; a reader-writer lock or refcount puts a contended write on the hit path;
 * hazard pointers need a store and fence per item visited rather than per section.
 */
#include "readers.h"

#include <errno.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "khala/error.h"
#include "sys.h"

/* This process's identity in the slots it claims: random, 64 bits, never 0, made anew in the
 * child after every fork (the child is another process with its own lock descriptions). Set by
 * a constructor and by the atfork child handler, both of which run while this process has a
 * single thread, so plain loads suffice afterwards. */
static uint64_t g_token;

static void token_renew(void) {
    uint64_t t;
    do
        t = khala__sys_random_u64();
    while (t == 0);
    g_token = t;
}

__attribute__((constructor)) static void token_init(void) {
    token_renew();
    (void)pthread_atfork(NULL, NULL, token_renew);
}

uint64_t khala__readers_token(void) {
    return g_token;
}

int khala__readers_claim(khala_seg_t *s, uint32_t *idx) {
    uint64_t me = g_token;
    for (uint32_t i = 0; i < s->nslots; i++) {
        khala_slot_t *slot = khala__seg_slot(s, i);
        uint64_t owner = khala_load_acquire(&slot->token);
        if (owner == me)
            continue; /* a thread of this process: our shared lock says nothing about it */
        int rc = khala__sys_lock_try(s->readers_fd, i);
        if (rc == -EAGAIN)
            continue; /* a live owner in another process */
        if (rc != 0)
            return rc;
        /* We hold the lock, so any owner from another process is dead: take the slot over. A
         * thread of this process may race us to it; the compare-and-swap decides, and the loser
         * must not unlock (the lock is the winner's too). */
        if (!khala_cas_acq_rel(&slot->token, &owner, me))
            continue;
        khala_store_relaxed(&slot->epoch, 0);
        khala_store_relaxed(&slot->pid, (uint64_t)getpid());
        khala_store_relaxed(&slot->start, khala__sys_proc_start((int)getpid()));
        khala_store_relaxed(&slot->tid, (uint64_t)syscall(SYS_gettid));
        uint32_t hwm = khala_load_relaxed(&s->rhdr->hwm);
        while (hwm < i + 1 && !khala_cas_acq_rel(&s->rhdr->hwm, &hwm, i + 1))
            ;
        *idx = i;
        return 0;
    }
    return KHALA_ENOREADER;
}

void khala__readers_release(khala_seg_t *s, uint32_t idx) {
    khala_slot_t *slot = khala__seg_slot(s, idx);
    khala__reader_leave(slot);
    khala_store_relaxed(&slot->tid, 0);
    khala_store_relaxed(&slot->start, 0);
    khala_store_relaxed(&slot->pid, 0);
    khala_store_release(&slot->token, 0);
    (void)khala__sys_lock_release(s->readers_fd, idx);
}
