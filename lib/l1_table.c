/*
 * The L1 table: a bucketized hash table in shared memory with one writer and lock-free readers.
 *
 * HOW IT WORKS
 *
 *   buckets[i][fastrange(hash)]: one 64-byte line (layout.h draws it)
 *   +-------------+-------+------------------------------------+
 *   | tag[12]     | chain | link[12]                           |
 *   +-------------+-------+------------------------------------+
 *        slot k: tag[k], link[k] --> item                      (link 0 = free, tag 0)
 *        chain --> item --> item --> 0                         (overflow, through next[i])
 *   item: | next[2] | desc | vlen | version | expire | klen | key | value |
 *
 * A key lives in one bucket line of the live index: in one of its twelve slots (a link to the
 * item and an 8-bit tag of the key's hash) or, when all twelve were taken as it came in, on the
 * line's overflow chain. A lookup loads the line, compares the twelve tags at once, checks the
 * items of the matching slots, then walks the chain: a hit costs the bucket line and the item's
 * lines, nothing else, and a miss usually the line alone.
 *
 * An item is one arena block holding its header, its key and its value side by side. Items are
 * immutable once linked (only `next` changes, when the item after is unlinked). The writer
 * never edits a value in place: an overwrite builds a new item and swings the one link that
 * pointed to the old item (a slot's link, keeping the tag, or a word of the chain) to the new
 * one; a delete clears the slot's link, or swings the chain's link past the item. Either way a
 * reader sees the old state or the new one, never a mix, and since the old item is not freed
 * until no reader can hold it (readers.c), a reader never reads freed memory. A torn value is
 * impossible by construction: there is no seqlock to retry.
 *
 * A key never moves while it stays in the index: not between slots, not from the chain into a
 * slot that frees up later (a reader that read the slots before the move and the chain after
 * it would miss a key present throughout). So a key present throughout a lookup is found by it.
 * A slot freed by a delete takes the next new key of its line.
 *
 * Publishing. The writer fills every field of a new item with plain stores, then links it with
 * a release store (into a slot's link, the chain word or the predecessor's next); a slot's tag
 * is stored first, relaxed. Readers load links with acquire, so the item's fields are visible
 * before its link is. Tags are hints: a reader that sees a slot's tag and link from different
 * moments loads a link of 0 or an item of another key, and the key compare rejects it.
 *
 * The put path (khala__l1_put), in steps that the code refers to:
 * Step 1. Validate the key, the value size and the TTL at the boundary.
 * Step 2. Hash the key; find the existing item of the key, if any.
 * Step 3. Make room (make_room): while the item count is at max_items (and this is not an
 *         overwrite) evict the policy's victim; while the arena has no block large enough,
 *         free retired items whose grace period has passed, else wait (bounded) for readers
 *         to leave their sections, else evict. A reader that stays inside its section past
 *         the wait makes the put fail with KHALA_EBLOCKED before anything is evicted.
 * Step 4. Fill the new item.
 * Step 5. Link it where the old item was linked, or else in a free slot of the key's line, or
 *         else at the head of the line's chain; then retire the old item, and give the key's
 *         desc to the policy (insert or hit).
 *
 * Reclamation batches: retired items wait in the retire ring until khala__l1_maintain or a
 * put that needs memory advances the epoch and scans the readers. Advancing the epoch writes a
 * line every reader reads, so it happens only when the newest retired item belongs to the
 * current epoch, not once per put.
 *
 * Sizes. bucket_count = ceil(max_items / 8) lines of 12 slots: at full load a line holds 8
 * items on average, and about 1.6 % of the items overflow into chains (Poisson: 6.4 % of the
 * lines overflow, by 2 items on average), so nearly every hit is one line and one item and a
 * miss walks 0.13 chain items on average. The index costs 64 bytes per 8 items and index, 16
 * bytes per item for both, as the two power-of-two link arrays of layout 4 did at best (up to
 * 32 after rounding). Why 12 slots with 8-bit tags, not 10 with 16-bit ones: 10 slots at 8
 * items per line overflow 5.3 % of the items and make a miss walk 0.43 chain items (dependent
 * cache misses); the 8-bit tag costs a false match, an extra item line, in about 3 % of the
 * lookups (8 other keys / 256 tags), and on a hit that line is fetched beside the right one.
 * The reader bounds a chain walk by KHALA_CHAIN_MAX (past it: a miss) and checks every link
 * and each item's own lengths against the arena, so a corrupted segment yields KHALA_ECORRUPT
 * or a miss, not a crash. Links are 32-bit (offset / 16, layout.h), which puts 12 in a line.
 *
 * Why buckets of slots and not open addressing: with one writer and RCU reclamation, replacing
 * or unlinking an item is a single store of a link, keys never move, and deletions leave no
 * tombstones to clean; the overflow chain keeps a full line from spilling into its neighbours.
 *
 * Hash flooding. Every reader can read the seed, so a client allowed to put can craft keys
 * that share one bucket. Readers stop a chain walk at KHALA_CHAIN_MAX items and call it a miss,
 * and the writer, when a put meets an overflow chain of KHALA_CHAIN_REHASH items, rehashes
 * (rehash()): there are two indexes, items have one next word for each, and index_count in the
 * header names the live one (count & 1) and so its seed. The writer builds the other index
 * with a new seed (slots, and chains through the other next word), which no reader walks, then
 * publishes it with a release store of index_count. Items do not move and are not rewritten
 * (they hold no hash), so a rehash needs no memory and readers inside a section may finish on
 * the old index. The old index is cleared only after a grace period, before the next rehash
 * uses it. Rehashes are at most one per max_items puts, so a flooder cannot make the writer
 * spend more than O(1) per put on them; between two, the readers' bound keeps every lookup
 * short.
 *
 * Historical note. Layouts 1 to 4 had one link per bucket heading a chain through the items
 * (2^k >= 2 * max_items buckets): a hit read the bucket, the item and, one time in five at full
 * load, another item first, about 2.2 dependent cache misses per get. Issue 8 replaced it.
 */
#include "l1_table.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "alloc.h"
#include "debug.h"
#include "evict.h"
#include "khala/error.h"
#include "readers.h"
#include "reclaim.h"
#include "sys.h"

/* Retired items waiting before a put triggers reclamation on its own. */
#define RECLAIM_BATCH 64u
/* How long a writer that needs memory waits for readers to leave their read sections before it
 * reports KHALA_EBLOCKED. Sections last nanoseconds to microseconds; one that lasts this long
 * is a worker holding a view while it works, or stuck, and the caller should hear of it. */
#define GRACE_WAIT_NS (100ull * 1000 * 1000)
/* How far ahead in the retire ring reclamation prefetches the blocks it is about to free. */
#define RECLAIM_AHEAD 8u
/* Expired keys the sweep prefetches before it removes them together. */
#define SWEEP_BATCH 32u
/* The check refuses an epoch at or above this: no segment lives for 2^62 grace periods. */
#define EPOCH_MAX (1ull << 62)
/* Scans of the reader slots before the writer starts reaping and sleeping between scans. */
#define SPIN_BEFORE_WAIT 64u

struct khala_l1 {
    khala_seg_t seg;         /* the writer's read-write mapping; immutable after open */
    khala_arena_t arena;     /* the arena allocator over seg */
    khala_policy_t pol;      /* the eviction policy over the desc table */
    khala_seg_header_t *hdr; /* == seg.hdr */
    khala_wstate_t *w;       /* &hdr->w */
    khala_desc_t *desc;      /* desc table */
    khala_retired_t *retire; /* retire ring */
    uint64_t retire_cap;     /* entries in the retire ring */
    uint64_t *tails;         /* per-slot hit-ring cursors (private memory) */
    int reattached;          /* 1 if open adopted an existing segment */
    /* A reader stuck inside a section (see synchronize). */
    uint64_t wait_start_ns; /* when the current operation first waited for readers, 0 = not yet */
    uint32_t stuck_slot;    /* slot of the reader that made the last wait fail, UINT32_MAX none */
    uint64_t stuck_epoch;   /* the epoch that slot showed then */
    int stuck_pid;          /* its pid */
    int64_t stuck_since_ms; /* when it was found stuck (khala__sys_now_ms) */
    uint64_t blocked_ops;   /* operations that failed (or marked instead of removing) for it */
    uint64_t stuck_waits;   /* waits for readers that ran out their whole budget */
    char err[256];          /* detail of the last failure */
};

static int fail(khala_l1_t *t, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(khala_l1_t *t, int rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->err, sizeof(t->err), fmt, ap);
    va_end(ap);
    return rc;
}

/* The item at off, which the writer's own bookkeeping keeps inside the arena (the check
 * validates every offset it reads before it comes here). */
static inline khala_item_t *item_at(const khala_l1_t *t, uint64_t off) {
    KHALA_ASSERT(off >= t->seg.arena_lo && off + sizeof(khala_item_t) <= t->seg.arena_hi);
    return (khala_item_t *)(t->seg.base + off);
}

/* The live index: 0 or 1. Only the writer changes it, so it reads it relaxed. */
static inline unsigned live(const khala_l1_t *t) {
    return (unsigned)(khala_load_relaxed(&t->hdr->index_count) & 1);
}

/* The bucket lines of index i. */
static inline khala_bucket_t *buckets_of(const khala_l1_t *t, unsigned i) {
    return t->seg.buckets + (i ? t->seg.bucket_count : 0);
}

/* The bucket line of a key whose hash (under index i's seed) is hash. */
static inline khala_bucket_t *bucket_in(const khala_l1_t *t, unsigned i, uint64_t hash) {
    return &buckets_of(t, i)[khala__l1_bucket_index(&t->seg, hash)];
}

/* The live bucket line of a key whose hash (under the live seed) is hash. */
static inline khala_bucket_t *bucket(const khala_l1_t *t, uint64_t hash) {
    return bucket_in(t, live(t), hash);
}

/* The slot of b that holds link, or -1. */
static int slot_of(const khala_bucket_t *b, uint32_t link) {
    for (int i = 0; i < KHALA_BUCKET_SLOTS; i++)
        if (khala_load_relaxed(&b->link[i]) == link) /* relaxed: only this thread writes */
            return i;
    return -1;
}

/* Where an item is linked in the live index. */
typedef struct khala_l1_pos {
    khala_bucket_t *b;      /* the key's bucket line */
    khala_atomic_u32 *link; /* the word holding the item's link: b->link[slot], or in the
                               overflow chain b->chain or the next word of the item before */
    int slot;               /* the slot, or -1 when the item is on the chain */
} khala_l1_pos_t;

/* Writer side ----------------------------------------------------------------------------- */

/* Find the item of key in the live index; *pos says where it is linked. 0 if absent.
 * *walked (if not NULL) is the number of chain items passed on the way. */
static uint64_t find(const khala_l1_t *t, uint64_t hash, const void *key, size_t klen,
                     khala_l1_pos_t *pos, uint64_t *walked) {
    unsigned w = live(t);
    khala_bucket_t *b = bucket(t, hash);
    uint64_t n = 0;
    pos->b = b;
    for (unsigned m = khala__l1_tag_match(b, khala__l1_tag(hash)); m; m &= m - 1) {
        int i = __builtin_ctz(m);
        /* relaxed: only this thread writes the links. */
        uint64_t off = khala_link_off(khala_load_relaxed(&b->link[i]));
        khala_item_t *it = off ? item_at(t, off) : NULL;
        if (it && it->key_len == klen && khala__l1_key_eq(it + 1, key, klen)) {
            pos->link = &b->link[i];
            pos->slot = i;
            if (walked)
                *walked = 0;
            return off;
        }
    }
    khala_atomic_u32 *l = &b->chain;
    for (uint64_t off = khala_link_off(khala_load_relaxed(l)); off;
         off = khala_link_off(khala_load_relaxed(l)), n++) {
        khala_item_t *it = item_at(t, off);
        if (it->key_len == klen && khala__l1_key_eq(it + 1, key, klen)) {
            pos->link = l;
            pos->slot = -1;
            if (walked)
                *walked = n;
            return off;
        }
        l = &it->next[w];
    }
    if (walked)
        *walked = n;
    return 0;
}

/* Where the item at off (linked in the live index; hash is its hash) is linked. */
static khala_l1_pos_t link_to(const khala_l1_t *t, uint64_t off, uint64_t hash) {
    unsigned w = live(t);
    khala_l1_pos_t pos = {bucket(t, hash), NULL, -1};
    pos.slot = slot_of(pos.b, khala_link_of(off));
    if (pos.slot >= 0) {
        pos.link = &pos.b->link[pos.slot];
        return pos;
    }
    khala_atomic_u32 *l = &pos.b->chain;
    for (uint64_t o = khala_link_off(khala_load_relaxed(l)); o != off;
         o = khala_link_off(khala_load_relaxed(l)))
        l = &item_at(t, o)->next[w];
    pos.link = l;
    return pos;
}

/* Link the item at off, of a key absent from index i, into b, its line in that index: into a
 * free slot, else at the head of the chain (through next[i]). publish: 1 for the live index,
 * where the link publishes the item to readers; 0 for an index no reader walks yet (rehash). */
static void link_new(const khala_l1_t *t, khala_bucket_t *b, unsigned i, uint64_t off,
                     uint64_t hash, int publish) {
    khala_item_t *it = item_at(t, off);
    uint32_t link = khala_link_of(off);
    int k = slot_of(b, 0);
    if (k >= 0) {
        /* relaxed: the tag is a hint (l1_lookup.h); a reader that sees it before the link
         * loads the link 0 and skips the slot. */
        khala_store_relaxed(&b->tag[k], khala__l1_tag(hash));
        khala_store_relaxed(&it->next[i], 0);
        if (publish) /* release: publishes the item's fields before its link; pairs with the
                        acquire loads in khala__l1_lookup. */
            khala_store_release(&b->link[k], link);
        else /* relaxed: the release store of index_count publishes the whole index. */
            khala_store_relaxed(&b->link[k], link);
        return;
    }
    khala_store_relaxed(&it->next[i], khala_load_relaxed(&b->chain));
    if (publish) /* release: as above. */
        khala_store_release(&b->chain, link);
    else /* relaxed: as above. */
        khala_store_relaxed(&b->chain, link);
}

static uint32_t desc_alloc(khala_l1_t *t) {
    uint32_t idx = t->w->free_desc;
    t->w->free_desc = t->desc[idx].next;
    return idx;
}

static void desc_free(khala_l1_t *t, uint32_t idx) {
    khala_desc_t *d = &t->desc[idx];
    memset(d, 0, sizeof(*d));
    d->prev = KHALA_NIL;
    d->next = t->w->free_desc;
    t->w->free_desc = idx;
}

static int retire_full(const khala_l1_t *t) {
    return t->w->retire_tail - t->w->retire_head >= t->retire_cap;
}

/* Put an unlinked item on the retire ring; the caller made sure there is room. */
static void retire(khala_l1_t *t, uint64_t off) {
    khala_retired_t *r = &t->retire[t->w->retire_tail % t->retire_cap];
    r->off = off;
    r->epoch = khala_load_relaxed(&t->hdr->epoch);
    t->w->retire_tail++;
    t->w->retired_bytes += khala__alloc_block_size(&t->arena, off);
}

/* Free every retired item that no reader can still hold. Returns how many were freed. */
static uint64_t reclaim(khala_l1_t *t) {
    khala_wstate_t *w = t->w;
    if (w->retire_head == w->retire_tail)
        return 0;
    uint64_t e = khala_load_relaxed(&t->hdr->epoch);
    if (t->retire[(w->retire_tail - 1) % t->retire_cap].epoch == e) {
        /* release: readers that load the new epoch (acquire) see every unlink before it. */
        khala_store_release(&t->hdr->epoch, e + 1);
    }
    uint64_t min = khala__readers_min_epoch(&t->seg);
    uint64_t freed = 0;
    while (w->retire_head != w->retire_tail) {
        khala_retired_t *r = &t->retire[w->retire_head % t->retire_cap];
        if (r->epoch >= min)
            break; /* a reader inside a section may still see it; so may all after it */
        /* Freeing reads the block's bitmap words, at random places: fetch them a few entries
         * ahead so that a large batch does not pay each miss in turn. */
        uint64_t pending = w->retire_tail - w->retire_head;
        if (pending > RECLAIM_AHEAD) {
            uint64_t ahead = t->retire[(w->retire_head + RECLAIM_AHEAD) % t->retire_cap].off;
            khala__alloc_prefetch(&t->arena, ahead);
        }
        w->retired_bytes -= khala__alloc_block_size(&t->arena, r->off);
        khala__alloc_free(&t->arena, r->off);
        w->retire_head++;
        freed++;
    }
    return freed;
}

/* Reclaim, and if memory stays pinned, reap dead readers and reclaim again. */
static uint64_t reclaim_hard(khala_l1_t *t) {
    uint64_t freed = reclaim(t);
    khala_wstate_t *w = t->w;
    if (w->retire_head != w->retire_tail) {
        uint64_t oldest = t->retire[w->retire_head % t->retire_cap].epoch;
        if (khala__readers_reap(&t->seg, oldest + 1) > 0)
            freed += reclaim(t);
    }
    return freed;
}

/* Unlink the item of desc idx, retire it and free the desc. The caller checked the ring. */
static void remove_key(khala_l1_t *t, uint32_t idx) {
    khala_desc_t *d = &t->desc[idx];
    uint64_t off = d->item_off;
    khala_item_t *it = item_at(t, off);
    khala_l1_pos_t pos = link_to(t, off, d->hash);
    if (pos.slot >= 0) {
        /* release: publishes nothing (a free slot has no item); every link store is a release,
         * which costs nothing on x86-64. The tag goes after the link: a reader that still sees
         * the old tag loads the link 0, or the old item, which stays readable (it is retired,
         * not freed). */
        khala_store_release(pos.link, 0);
        khala_store_relaxed(&pos.b->tag[pos.slot], 0);
    } else {
        /* release: a reader that loads the new link sees a fully built successor. */
        khala_store_release(pos.link, khala_load_relaxed(&it->next[live(t)]));
    }
    khala__policy_remove(&t->pol, idx);
    t->w->items--;
    t->w->item_bytes -= d->block_size;
    t->w->payload_bytes -= (uint64_t)it->key_len + it->value_len;
    retire(t, off);
    desc_free(t, idx);
}

static void on_hit(void *arg, uint32_t idx, uint32_t hash_lo) {
    khala_l1_t *t = arg;
    khala_desc_t *d = idx < t->hdr->max_items ? &t->desc[idx] : NULL;
    if (d && d->item_off && (uint32_t)d->hash == hash_lo) {
        khala__policy_hit(&t->pol, idx);
        if (d->hits != UINT32_MAX)
            d->hits++;
    }
}

static int blocked(khala_l1_t *t) {
    t->blocked_ops++;
    return fail(t, KHALA_EBLOCKED,
                "cannot free memory: %llu bytes are held by retired items while reader pid %d "
                "stays in a read section opened at epoch %llu (now %llu)",
                (unsigned long long)t->w->retired_bytes, t->stuck_pid,
                (unsigned long long)t->stuck_epoch,
                (unsigned long long)khala_load_relaxed(&t->hdr->epoch));
}

/* 1 while the reader that made an earlier wait fail is still inside that same section (and
 * alive: a dead one is reaped here). */
static int still_stuck(khala_l1_t *t) {
    if (t->stuck_slot == UINT32_MAX)
        return 0;
    const khala_slot_t *slot = khala__seg_slot(&t->seg, t->stuck_slot);
    if (khala_load_acquire(&slot->epoch) == t->stuck_epoch) {
        (void)khala__readers_reap(&t->seg, t->stuck_epoch + 1);
        if (khala_load_acquire(&slot->epoch) == t->stuck_epoch)
            return 1;
    }
    t->stuck_slot = UINT32_MAX; /* it left (or died): wait again next time */
    t->stuck_pid = 0;
    return 0;
}

/* Wait, a bounded time, for every reader inside a read section now to leave it, then free
 * what the retire ring holds (an RCU grace period, across processes). Reader sections are
 * short, so this normally takes well under a microsecond to a few; dead readers are reaped on
 * the way. KHALA_EBLOCKED if a live reader stays inside its section.
 *
 * The wait is bounded per operation, not per call: one put may synchronize several times, and
 * together they wait at most GRACE_WAIT_NS (wait_start_ns, reset by op_begin). A reader found
 * stuck is remembered with the epoch its slot showed; while that slot still shows it, later
 * operations do not wait at all (no epoch increment, no scan, no membarrier) but fail at once,
 * so khalad keeps serving at full speed (L1 refusing what needs memory) while one reader is
 * stopped (SIGSTOP, a debugger, a frozen cgroup). Its pid is in khala__l1_stats and in the
 * error message. */
static int synchronize(khala_l1_t *t) {
    /* Nothing that reclaim could not already free will come back while the stuck reader
     * stays: no epoch increment, no scan, no membarrier. */
    if (still_stuck(t))
        return blocked(t);
    uint64_t e = khala_load_relaxed(&t->hdr->epoch);
    /* release: readers that load the new epoch see every unlink before it (readers.c). */
    khala_store_release(&t->hdr->epoch, e + 1);
    for (uint32_t spins = 0;; spins++) {
        if (khala__readers_min_epoch(&t->seg) > e) {
            reclaim(t);
            return 0;
        }
        if (spins >= SPIN_BEFORE_WAIT) {
            (void)khala__readers_reap(&t->seg, e + 1);
            uint64_t now = khala__sys_now_ns();
            if (!t->wait_start_ns)
                t->wait_start_ns = now;
            if (now - t->wait_start_ns > GRACE_WAIT_NS) {
                uint64_t oldest = khala__readers_oldest(&t->seg, &t->stuck_pid, &t->stuck_slot);
                if (oldest == 0 || oldest > e)
                    continue; /* it left just now */
                t->stuck_epoch = oldest;
                t->stuck_since_ms = khala__sys_now_ms();
                t->stuck_waits++;
                return blocked(t);
            }
            khala__sys_pause_us(spins < SPIN_BEFORE_WAIT * 2 ? 0 : 50);
        }
    }
}

/* The start of every writer operation that may wait for readers: a fresh wait budget. */
static void op_begin(khala_l1_t *t) {
    t->wait_start_ns = 0;
}

/* Make room in the retire ring for one more unlink. 0, or KHALA_EBLOCKED. */
static int retire_room(khala_l1_t *t) {
    if (retire_full(t) && reclaim(t) == 0)
        return synchronize(t);
    return 0;
}

/* Take key idx out of readers' reach even when reclamation is blocked. Normally it is unlinked
 * and retired (remove_key). When a stuck reader keeps the retire ring full, the item is marked
 * expired in place instead: readers then miss it (they never return an expired item), and the
 * sweep unlinks it once the ring has room. A delete or an invalidation therefore never leaves
 * a stale value readable in L1, whatever a reader does. Returns 1 if removed, 0 if marked. */
static int remove_or_expire(khala_l1_t *t, uint32_t idx) {
    if (retire_room(t) == 0) {
        remove_key(t, idx);
        return 1;
    }
    khala_desc_t *d = &t->desc[idx];
    khala_item_t *it = item_at(t, d->item_off);
    t->blocked_ops++;
    /* relaxed: a reader sees the old deadline or this one; either is a valid state of the key
     * until the reply to the delete, and the store is visible long before any later request
     * (the reply's write to the socket orders it). */
    __atomic_store_n(&it->expire_ms, (int64_t)1, __ATOMIC_RELAXED);
    d->expire_ms = 1;
    return 0;
}

/* Step 3 of the put path: get a block of `size` bytes for a new item, evicting as needed.
 *
 * Evicting only retires an item; its memory comes back after a grace period. So when memory
 * (not the item count) is short, the loop first proves that no reader is stuck inside a
 * section (a bounded synchronize) before it evicts anything: a stuck reader then costs the
 * caller KHALA_EBLOCKED and the table loses nothing. After that it evicts until the retired
 * bytes cover the request, waits for one grace period, and tries again. */
static int make_room(khala_l1_t *t, uint64_t size, int replacing, uint64_t *off, uint64_t *block) {
    khala_wstate_t *w = t->w;
    int drained = 0, synced = 0, rc;
    for (;;) {
        if ((rc = retire_room(t)) != 0)
            return rc;
        int count_ok = replacing || w->items < t->hdr->max_items;
        if (count_ok && khala__alloc_alloc(&t->arena, size, off, block) == 0)
            return 0;
        if (count_ok) {
            /* Memory is short. */
            if (w->retire_head != w->retire_tail && reclaim(t) > 0)
                continue;
            int pending = w->retire_head != w->retire_tail;
            if (!synced && (pending || w->retired_bytes >= size ||
                            khala__readers_min_epoch(&t->seg) != UINT64_MAX)) {
                if ((rc = synchronize(t)) != 0)
                    return rc;
                synced = 1;
                continue;
            }
        }
        if (!drained) {
            /* The policy decides better with the hits readers recorded since the last drain. */
            khala__readers_drain(&t->seg, t->tails, on_hit, t);
            drained = 1;
        }
        uint32_t victim = khala__policy_victim(&t->pol);
        if (victim == KHALA_NIL) {
            if (w->retire_head != w->retire_tail) {
                if ((rc = synchronize(t)) != 0)
                    return rc;
                continue;
            }
            return fail(t, KHALA_EFULL,
                        "no block of %llu bytes is free and the table is empty (arena %llu bytes)",
                        (unsigned long long)size, (unsigned long long)(t->arena.hi - t->arena.lo));
        }
        remove_key(t, victim);
        w->evictions++;
        if (w->retired_bytes >= size)
            synced = 0; /* enough is retired: the next pass waits for it once */
    }
}

/* Build the index not live with a new seed and make it the live one (see "Hash flooding").
 * 0, or KHALA_EBLOCKED when the index to build may still be walked by a reader inside a section
 * it entered before the last switch (nothing changed then; a later put tries again, and the
 * writer never waits for it). */
static int rehash(khala_l1_t *t) {
    khala_seg_header_t *h = t->hdr;
    uint64_t count = khala_load_relaxed(&h->index_count);
    unsigned next = (unsigned)((count + 1) & 1);
    khala_bucket_t *nb = buckets_of(t, next);
    if (t->w->index_dirty) {
        /* Readers that took this index while it was live may still be inside their sections
         * (their epoch is index_epoch or older); readers that enter later see the newer
         * index_count and take the other. */
        if (khala__readers_min_epoch(&t->seg) <= t->w->index_epoch)
            return KHALA_EBLOCKED;
        memset((void *)nb, 0, t->seg.bucket_count * sizeof(*nb));
        t->w->index_dirty = 0;
    }
    uint64_t seed = khala__sys_random_u64();
    /* relaxed: readers read it only after an index_count that names this index (below, with
     * release); the fence that begins the reader scan above orders it after the count that
     * retired the index, for readers who read it early and so check the count again. */
    khala_store_relaxed(&h->index_seed[next], seed);
    for (uint32_t i = 0; i < h->max_items; i++) {
        khala_desc_t *d = &t->desc[i];
        if (!d->item_off)
            continue;
        khala_item_t *it = item_at(t, d->item_off);
        uint64_t hash = khala__l1_hash_with(seed, it + 1, it->key_len);
        /* relaxed stores: no reader walks this index until the release below. */
        link_new(t, bucket_in(t, next, hash), next, d->item_off, hash, 0);
        d->hash = hash;
    }
    /* release: the new index and its seed are complete before a reader can take it; pairs with
     * the acquire in khala__l1_index. */
    khala_store_release(&h->index_count, count + 1);
    /* Readers that load the epoch after this increment (acquire) see the new index_count: only
     * readers at the old epoch or before can hold the old index. */
    uint64_t e = khala_load_relaxed(&h->epoch);
    khala_store_release(&h->epoch, e + 1);
    t->w->index_epoch = e;
    t->w->index_dirty = 1;
    t->w->rehashes++;
    t->w->rehash_sets = t->w->sets;
    return 0;
}

static int key_check(khala_l1_t *t, size_t klen) {
    if (klen == 0)
        return fail(t, KHALA_EKEY, "key is empty");
    if (klen > KHALA_KEY_MAX)
        return fail(t, KHALA_EKEY, "key is %zu bytes, max %d", klen, KHALA_KEY_MAX);
    return 0;
}

int khala__l1_put(khala_l1_t *t, const void *key, size_t klen, const void *val, size_t vlen,
                  int64_t ttl_ms, uint8_t type, uint64_t *version) {
    return khala__l1_put_v(t, key, klen, val, vlen, ttl_ms, type, 0, version);
}

int khala__l1_put_v(khala_l1_t *t, const void *key, size_t klen, const void *val, size_t vlen,
                    int64_t ttl_ms, uint8_t type, uint64_t want_version, uint64_t *version) {
    khala_wstate_t *w = t->w;
    khala_l1_pos_t pos;
    uint64_t off = 0, block = 0;
    int rc;
    op_begin(t);
    /* Step 1. */
    if ((rc = key_check(t, klen)) != 0)
        return rc;
    if (vlen > t->seg.max_value)
        return fail(t, KHALA_ETOOBIG, "value is %zu bytes, max %u", vlen, t->seg.max_value);
    if (vlen && !val)
        return fail(t, -EINVAL, "value is NULL but its length is %zu", vlen);
    if (ttl_ms < 0)
        return fail(t, -EINVAL, "ttl_ms is %lld; use 0 for no expiry", (long long)ttl_ms);
    uint64_t size = KHALA_ITEM_SIZE(klen, vlen);
    if (size > khala__alloc_max_payload(&t->arena))
        return fail(t, KHALA_ETOOBIG, "item of %llu bytes cannot fit the %llu-byte arena",
                    (unsigned long long)size, (unsigned long long)(t->arena.hi - t->arena.lo));
    /* Step 2. */
    uint64_t hash = khala__l1_hash(&t->seg, key, klen), walked = 0;
    uint64_t old = find(t, hash, key, klen, &pos, NULL);
    /* Step 3. */
    if ((rc = make_room(t, size, old != 0, &off, &block)) != 0)
        return rc;
    /* Eviction may have removed the old item, or moved what points to it. */
    old = find(t, hash, key, klen, &pos, &walked);
    uint32_t idx = old ? item_at(t, old)->desc : desc_alloc(t);
    /* Step 4. */
    khala_item_t *it = item_at(t, off);
    khala_store_relaxed(&it->next[0], 0);
    khala_store_relaxed(&it->next[1], 0);
    if (want_version > w->version_seq)
        w->version_seq = want_version;
    else
        ++w->version_seq;
    it->version = want_version ? want_version : w->version_seq;
    int64_t now = khala__sys_now_ms();
    /* A TTL too large to add is "never expires in practice": clamp, don't overflow. */
    it->expire_ms = !ttl_ms ? 0 : ttl_ms > INT64_MAX - now ? INT64_MAX : now + ttl_ms;
    it->value_len = (uint32_t)vlen;
    it->key_len = (uint16_t)klen;
    it->type = type;
    it->flags = 0;
    it->pad = 0;
    it->desc = idx;
    memcpy(it + 1, key, klen);
    if (vlen)
        memcpy((uint8_t *)it + KHALA_ITEM_VALUE_OFF(klen), val, vlen);
    /* Step 5. */
    khala_desc_t *d = &t->desc[idx];
    if (old) {
        khala_item_t *o = item_at(t, old);
        unsigned lw = live(t);
        /* In a slot, the tag stays (the key is the same) and next is unused (0 in both). */
        khala_store_relaxed(&it->next[lw], khala_load_relaxed(&o->next[lw]));
        /* release: publishes the new item's fields before its offset; pairs with the acquire
         * loads in khala__l1_lookup. */
        khala_store_release(pos.link, khala_link_of(off));
        w->item_bytes -= d->block_size;
        w->payload_bytes -= (uint64_t)o->key_len + o->value_len;
        retire(t, old);
        w->overwrites++;
        khala__policy_hit(&t->pol, idx);
    } else {
        link_new(t, pos.b, live(t), off, hash, 1); /* release inside: as above */
        d->hash = hash;
        w->items++;
    }
    d->item_off = off;
    d->expire_ms = it->expire_ms;
    d->block_size = (uint32_t)block;
    if (!old)
        khala__policy_insert(&t->pol, idx);
    w->item_bytes += block;
    w->payload_bytes += klen + vlen;
    w->sets++;
    if (w->retire_tail - w->retire_head >= RECLAIM_BATCH)
        reclaim(t);
    if (version)
        *version = it->version;
    /* A chain this long is a flood (see "Hash flooding"): rehash, at most once per max_items
     * puts. The put is done either way; a rehash that cannot wait for readers now is tried
     * again by a later put. */
    if (walked + 1 >= KHALA_CHAIN_REHASH &&
        (w->rehashes == 0 || w->sets - w->rehash_sets >= t->hdr->max_items))
        (void)rehash(t);
    return 0;
}

int khala__l1_delete(khala_l1_t *t, const void *key, size_t klen) {
    khala_l1_pos_t pos;
    int rc = key_check(t, klen);
    if (rc != 0)
        return rc;
    uint64_t off = find(t, khala__l1_hash(&t->seg, key, klen), key, klen, &pos, NULL);
    if (!off)
        return fail(t, KHALA_ENOTFOUND, "no such key");
    op_begin(t);
    (void)remove_or_expire(t, item_at(t, off)->desc);
    t->w->deletes++;
    return 0;
}

int khala__l1_maintain(khala_l1_t *t) {
    khala__readers_drain(&t->seg, t->tails, on_hit, t);
    return (int)reclaim_hard(t);
}

/* Remove the expired keys in batch[0..n); their lines were prefetched. 0, or -1 when memory
 * reclamation is blocked and the sweep must stop. */
static int sweep_flush(khala_l1_t *t, const uint32_t *batch, size_t n, size_t *removed) {
    /* The bucket lines are in cache now. A key in a slot unlinks from its line alone; for one
     * on the overflow chain, fetch the chain's head when it is another key, since unlinking
     * walks from it. */
    for (size_t k = 0; k < n; k++) {
        const khala_desc_t *d = &t->desc[batch[k]];
        const khala_bucket_t *b = bucket(t, d->hash);
        uint64_t head = khala_link_off(khala_load_relaxed(&b->chain));
        if (head && head != d->item_off && slot_of(b, khala_link_of(d->item_off)) < 0)
            __builtin_prefetch(t->seg.base + head);
    }
    for (size_t k = 0; k < n; k++) {
        if (retire_room(t) != 0)
            return -1; /* they are expired: readers miss them until a later sweep */
        remove_key(t, batch[k]);
        t->w->expirations++;
        (*removed)++;
    }
    return 0;
}

size_t khala__l1_sweep(khala_l1_t *t, size_t budget) {
    khala_wstate_t *w = t->w;
    uint32_t max = t->hdr->max_items;
    int64_t now = khala__sys_now_ms();
    size_t removed = 0, nb = 0;
    uint32_t batch[SWEEP_BATCH];
    op_begin(t);
    /* The descs are read in order (the hardware prefetcher streams them); each expired key's
     * item, bucket and queue neighbours sit at random places, so they are prefetched a batch at
     * a time and removed together, overlapping their cache misses instead of paying them one
     * after another. */
    /* One call looks at each desc at most once: the batch is removed only when it is full,
     * so a cursor that wrapped within it would batch an expired key twice and remove it twice. */
    if (budget > max)
        budget = max;
    for (size_t n = 0; n < budget; n++) {
        uint32_t i = (uint32_t)(w->sweep_cursor++ % max);
        khala_desc_t *d = &t->desc[i];
        if (!d->item_off || !d->expire_ms || d->expire_ms > now)
            continue;
        khala__alloc_prefetch(&t->arena, d->item_off);
        __builtin_prefetch(t->seg.base + d->item_off, 1);
        __builtin_prefetch(bucket(t, d->hash), 1);
        if (d->prev != KHALA_NIL)
            __builtin_prefetch(&t->desc[d->prev], 1);
        if (d->next != KHALA_NIL)
            __builtin_prefetch(&t->desc[d->next], 1);
        batch[nb++] = i;
        if (nb == SWEEP_BATCH) {
            if (sweep_flush(t, batch, nb, &removed) != 0)
                return removed;
            nb = 0;
        }
    }
    if (sweep_flush(t, batch, nb, &removed) != 0)
        return removed;
    if (w->retire_tail - w->retire_head >= RECLAIM_BATCH)
        reclaim(t);
    return removed;
}

size_t khala__l1_scan(khala_l1_t *t, uint64_t *cursor, size_t budget, khala_l1_visit_fn fn,
                      void *arg) {
    uint32_t max = t->hdr->max_items;
    uint64_t i = *cursor;
    size_t removed = 0;
    op_begin(t);
    for (size_t n = 0; n < budget && i < max; n++, i++) {
        khala_desc_t *d = &t->desc[i];
        if (!d->item_off)
            continue;
        int verdict = fn(arg, item_at(t, d->item_off));
        if (verdict == KHALA_L1_STOP)
            break;
        if (!verdict)
            continue;
        (void)remove_or_expire(t, (uint32_t)i); /* gone for readers either way */
        t->w->deletes++;
        removed++;
    }
    *cursor = i < max ? i : 0;
    if (t->w->retire_tail - t->w->retire_head >= RECLAIM_BATCH)
        reclaim(t);
    return removed;
}

uint32_t khala__l1_item_hits(const khala_l1_t *t, const khala_item_t *it) {
    return it->desc < t->hdr->max_items ? t->desc[it->desc].hits : 0;
}

int khala__l1_find(khala_l1_t *t, const void *key, size_t klen, const khala_item_t **out) {
    int rc = key_check(t, klen);
    if (rc != 0)
        return rc;
    khala_l1_index_t ix = khala__l1_index(&t->seg);
    return khala__l1_lookup(&t->seg, &ix, key, klen, khala__l1_hash_with(ix.seed, key, klen), out);
}

void khala__l1_stats(khala_l1_t *t, khala_l1_stats_t *st) {
    /* still_stuck may forget a reader that left: stats are the writer's view, not const. */
    khala_wstate_t *w = t->w;
    memset(st, 0, sizeof(*st));
    st->items = w->items;
    st->item_bytes = w->item_bytes;
    st->payload_bytes = w->payload_bytes;
    st->arena_bytes = t->arena.hi - t->arena.lo;
    st->free_bytes = t->arena.st->free_bytes;
    st->retired = w->retire_tail - w->retire_head;
    st->retired_bytes = w->retired_bytes;
    st->sets = w->sets;
    st->overwrites = w->overwrites;
    st->deletes = w->deletes;
    st->evictions = w->evictions;
    st->expirations = w->expirations;
    khala__readers_totals(&t->seg, &st->reader_hits, &st->reader_misses);
    st->readers = khala__readers_in_use(&t->seg);
    st->max_items = t->hdr->max_items;
    st->epoch = khala_load_relaxed(&t->hdr->epoch);
    st->small = w->q_count[KHALA_Q_SMALL];
    st->main = w->q_count[KHALA_Q_MAIN];
    st->oldest_reader_epoch = khala__readers_oldest(&t->seg, &st->oldest_reader_pid, NULL);
    if (still_stuck(t)) {
        st->stuck_reader_pid = t->stuck_pid;
        st->stuck_since_ms = t->stuck_since_ms;
    }
    st->blocked_ops = t->blocked_ops;
    st->stuck_waits = t->stuck_waits;
    st->membarriers = t->seg.membarriers;
    st->rehashes = w->rehashes;
}

/* What step 1 of the check counts. */
typedef struct khala_l1_tally {
    uint64_t items, bytes, payload; /* items linked, their blocks' bytes, key + value bytes */
} khala_l1_tally_t;

/* Step 1 of the check for the item at off, linked from bucket b of the live index, in slot
 * `slot` with tag `tag`, or on the overflow chain (slot -1). 0, or KHALA_ECORRUPT. */
static int check_item(khala_l1_t *t, uint64_t seed, uint64_t b, int slot, uint8_t tag, uint64_t off,
                      khala_l1_tally_t *tally) {
    const khala_seg_t *s = &t->seg;
    if (off < s->arena_lo || off >= s->arena_hi || s->arena_hi - off < sizeof(khala_item_t)) {
        if (slot >= 0)
            return fail(t, KHALA_ECORRUPT, "bucket %llu, slot %d: link to %llu, outside the arena",
                        (unsigned long long)b, slot, (unsigned long long)off);
        return fail(t, KHALA_ECORRUPT,
                    "bucket %llu: overflow chain links to %llu, outside the arena",
                    (unsigned long long)b, (unsigned long long)off);
    }
    khala_item_t *it = item_at(t, off);
    if (s->arena_hi - off < KHALA_ITEM_SIZE(it->key_len, (uint64_t)it->value_len))
        return fail(t, KHALA_ECORRUPT, "item at %llu crosses the arena's end",
                    (unsigned long long)off);
    uint64_t hash = khala__l1_hash_with(seed, it + 1, it->key_len);
    if (khala__l1_bucket_index(s, hash) != b || (slot >= 0 && khala__l1_tag(hash) != tag) ||
        it->desc >= t->hdr->max_items || t->desc[it->desc].item_off != off ||
        t->desc[it->desc].hash != hash ||
        t->desc[it->desc].block_size != khala__alloc_block_size(&t->arena, off) ||
        t->desc[it->desc].queue == KHALA_Q_NONE)
        return fail(t, KHALA_ECORRUPT,
                    "item at %llu disagrees with its bucket, its tag or its desc %u",
                    (unsigned long long)off, it->desc);
    tally->items++;
    tally->bytes += t->desc[it->desc].block_size;
    tally->payload += (uint64_t)it->key_len + it->value_len;
    return 0;
}

/* Steps (the code refers to them from step 2):
 * Step 1. Walk every bucket line, its slots and its overflow chain: a free slot has no tag,
 *         each linked item lies in the arena, hashes to its bucket (and, in a slot, to its tag),
 *         and agrees with its desc; a chain ends within KHALA_CHAIN_MAX items (no loop); no
 *         item is linked twice; count items and bytes against the header.
 * Step 2. The desc table on its own: every desc that holds an item points inside the arena at
 *         an item that names it back, is on a queue, and the count matches step 1.
 * Step 3. The free desc list: indexes below max_items, no item, no loop; with step 2 every
 *         desc is either free or an item's.
 * Step 4. The epoch, and the retire ring: at most retire_cap entries, each an aligned arena
 *         offset retired at an epoch the segment has reached.
 * Step 5. The eviction queues (khala__policy_check).
 * Step 6. The allocator (khala__alloc_check), then: the used blocks are exactly the live items
 *         plus the retired ones, each once (fingerprints, alloc.c), so freeing a retired item
 *         frees a block and nothing that a reader may still find.
 * Step 7. Counters that need trusted block bitmaps: retired bytes, items inside their blocks. */
int khala__l1_check(khala_l1_t *t) {
    khala_wstate_t *w = t->w;
    const khala_seg_t *s = &t->seg;
    khala_l1_tally_t tally = {0, 0, 0};
    khala_bucket_t *buckets = buckets_of(t, live(t));
    unsigned lw = live(t);
    uint64_t seed = khala__l1_index(s).seed;
    int rc;
    for (uint64_t b = 0; b < s->bucket_count; b++) {
        const khala_bucket_t *bk = &buckets[b];
        for (int i = 0; i < KHALA_BUCKET_SLOTS; i++) {
            uint32_t link = khala_load_relaxed(&bk->link[i]);
            uint8_t tag = khala_load_relaxed(&bk->tag[i]);
            if (!link && tag)
                return fail(t, KHALA_ECORRUPT, "bucket %llu, slot %d: free but tagged %u",
                            (unsigned long long)b, i, tag);
            /* An item linked twice would be freed while still linked. Every item lies in its
             * own bucket (check_item), so only this line can link it again. */
            if (link && slot_of(bk, link) != i)
                return fail(t, KHALA_ECORRUPT, "bucket %llu: slots %d and %d link one item",
                            (unsigned long long)b, slot_of(bk, link), i);
            if (link && (rc = check_item(t, seed, b, i, tag, khala_link_off(link), &tally)) != 0)
                return rc;
        }
        uint64_t n = 0;
        for (uint64_t off = khala_link_off(khala_load_relaxed(&bk->chain)); off;
             off = khala_link_off(khala_load_relaxed(&item_at(t, off)->next[lw]))) {
            if (++n > KHALA_CHAIN_MAX)
                return fail(t, KHALA_ECORRUPT,
                            "bucket %llu: the overflow chain is longer than %u items (a loop?)",
                            (unsigned long long)b, KHALA_CHAIN_MAX);
            if ((rc = check_item(t, seed, b, -1, 0, off, &tally)) != 0)
                return rc;
            /* Twice on the chain is a loop, caught by the bound above. */
            if (slot_of(bk, khala_link_of(off)) >= 0)
                return fail(t, KHALA_ECORRUPT,
                            "bucket %llu: item at %llu is both in a slot and on the chain",
                            (unsigned long long)b, (unsigned long long)off);
        }
    }
    uint64_t items = tally.items, bytes = tally.bytes, payload = tally.payload;
    if (items != w->items || bytes != w->item_bytes || payload != w->payload_bytes)
        return fail(t, KHALA_ECORRUPT, "counted %llu items / %llu bytes, header says %llu / %llu",
                    (unsigned long long)items, (unsigned long long)bytes,
                    (unsigned long long)w->items, (unsigned long long)w->item_bytes);
    /* From here on the check follows indexes and offsets that only the writer's own state
     * holds (desc links, the retire ring, the allocator's lists and block bitmaps), which the
     * writer trusts blindly once the check passes: each is bounded before it is used, so a
     * corrupted segment is reported, never followed (steps in the comment above). */
    uint32_t max = t->hdr->max_items;
    char sub[200];
    /* Step 2. */
    uint64_t owned = 0, held_fp = 0;
    for (uint32_t i = 0; i < max; i++) {
        const khala_desc_t *d = &t->desc[i];
        uint64_t off = d->item_off;
        if (!off)
            continue;
        if (off % KHALA_ALIGN || off < s->arena_lo || off >= s->arena_hi ||
            s->arena_hi - off < sizeof(khala_item_t))
            return fail(t, KHALA_ECORRUPT, "desc %u: item_off %llu is outside the arena", i,
                        (unsigned long long)off);
        const khala_item_t *it = item_at(t, off);
        if (d->queue != KHALA_Q_SMALL && d->queue != KHALA_Q_MAIN)
            return fail(t, KHALA_ECORRUPT, "desc %u: queue %u", i, d->queue);
        if (it->desc != i || it->version == 0 || it->version > w->version_seq)
            return fail(t, KHALA_ECORRUPT,
                        "desc %u: its item at %llu has desc %u and version %llu (last handed "
                        "out: %llu)",
                        i, (unsigned long long)off, it->desc, (unsigned long long)it->version,
                        (unsigned long long)w->version_seq);
        owned++;
        held_fp += khala__alloc_fp(off);
    }
    if (owned != items)
        return fail(t, KHALA_ECORRUPT, "%llu descs hold an item, the table links %llu",
                    (unsigned long long)owned, (unsigned long long)items);
    /* Step 3. */
    uint64_t free_descs = 0;
    for (uint32_t i = w->free_desc; i != KHALA_NIL; i = t->desc[i].next) {
        if (i >= max)
            return fail(t, KHALA_ECORRUPT,
                        "free desc list: index %u at position %llu is past max_items %u", i,
                        (unsigned long long)free_descs, max);
        if (t->desc[i].item_off || ++free_descs > max)
            return fail(t, KHALA_ECORRUPT,
                        "free desc list: desc %u at position %llu holds an item, or the list "
                        "loops",
                        i, (unsigned long long)free_descs);
    }
    if (free_descs + items != max)
        return fail(t, KHALA_ECORRUPT, "%llu free descs + %llu items != %u",
                    (unsigned long long)free_descs, (unsigned long long)items, max);
    /* Step 4. */
    uint64_t retired = w->retire_tail - w->retire_head;
    if (w->retire_tail < w->retire_head || retired > t->retire_cap)
        return fail(t, KHALA_ECORRUPT, "retire ring: head %llu, tail %llu, capacity %llu",
                    (unsigned long long)w->retire_head, (unsigned long long)w->retire_tail,
                    (unsigned long long)t->retire_cap);
    uint64_t epoch = khala_load_relaxed(&t->hdr->epoch);
    /* The epoch starts at 1 and moves by one per grace period; one near the end of its range
     * would wrap to 0, which in a reader slot means "outside a section", and reclamation would
     * stop seeing readers. */
    if (epoch == 0 || epoch >= EPOCH_MAX)
        return fail(t, KHALA_ECORRUPT, "epoch %llu is out of range", (unsigned long long)epoch);
    for (uint64_t k = w->retire_head; k != w->retire_tail; k++) {
        const khala_retired_t *r = &t->retire[k % t->retire_cap];
        if (r->off % KHALA_ALIGN || r->off < s->arena_lo || r->off >= s->arena_hi)
            return fail(t, KHALA_ECORRUPT,
                        "retire ring: entry %llu holds offset %llu, outside the arena",
                        (unsigned long long)k, (unsigned long long)r->off);
        if (r->epoch > epoch)
            return fail(t, KHALA_ECORRUPT,
                        "retire ring: entry %llu has epoch %llu, ahead of the segment's %llu",
                        (unsigned long long)k, (unsigned long long)r->epoch,
                        (unsigned long long)epoch);
        held_fp += khala__alloc_fp(r->off);
    }
    /* Step 5. */
    if (khala__policy_check(&t->pol, sub, sizeof(sub)) != 0)
        return fail(t, KHALA_ECORRUPT, "%s", sub);
    if (w->q_count[KHALA_Q_SMALL] + w->q_count[KHALA_Q_MAIN] != items)
        return fail(t, KHALA_ECORRUPT, "queues hold %llu items, table %llu",
                    (unsigned long long)(w->q_count[1] + w->q_count[2]), (unsigned long long)items);
    /* Step 6. */
    if (khala__alloc_check(&t->arena, sub, sizeof(sub)) != 0)
        return fail(t, KHALA_ECORRUPT, "arena allocator: %s", sub);
    if (t->arena.st->used_blocks != items + retired)
        return fail(t, KHALA_ECORRUPT, "%llu blocks in use for %llu items and %llu retired",
                    (unsigned long long)t->arena.st->used_blocks, (unsigned long long)items,
                    (unsigned long long)retired);
    if (khala__alloc_used_fp(&t->arena) != held_fp)
        return fail(t, KHALA_ECORRUPT,
                    "retire ring: the retired and the live items are not exactly the arena's "
                    "used blocks (an offset that is no block, a live item's, or twice)");
    /* Step 7. The block bitmaps are trusted now. */
    uint64_t retired_bytes = 0;
    for (uint64_t k = w->retire_head; k != w->retire_tail; k++)
        retired_bytes += khala__alloc_block_size(&t->arena, t->retire[k % t->retire_cap].off);
    if (retired_bytes != w->retired_bytes)
        return fail(t, KHALA_ECORRUPT, "retire ring: %llu bytes retired, header says %llu",
                    (unsigned long long)retired_bytes, (unsigned long long)w->retired_bytes);
    for (uint32_t i = 0; i < max; i++) {
        const khala_desc_t *d = &t->desc[i];
        if (!d->item_off)
            continue;
        const khala_item_t *it = item_at(t, d->item_off);
        uint64_t block = khala__alloc_block_size(&t->arena, d->item_off);
        if (KHALA_ITEM_SIZE(it->key_len, (uint64_t)it->value_len) > block)
            return fail(t, KHALA_ECORRUPT, "item at %llu is larger than its %llu-byte block",
                        (unsigned long long)d->item_off, (unsigned long long)block);
    }
    return 0;
}

const char *khala__l1_errmsg(const khala_l1_t *t) {
    return t->err;
}

khala_seg_t *khala__l1_seg(khala_l1_t *t) {
    return &t->seg;
}

/* Point the handle's shortcuts at the regions of its (attached) segment. */
static int bind_regions(khala_l1_t *t) {
    khala_seg_header_t *h = t->seg.hdr;
    t->hdr = h;
    t->w = &h->w;
    t->desc = (khala_desc_t *)(t->seg.base + h->desc_off);
    t->retire = (khala_retired_t *)(t->seg.base + h->retire_off);
    t->retire_cap = h->retire_cap;
    t->tails = calloc(t->seg.nslots, sizeof(uint64_t));
    if (!t->tails)
        return -ENOMEM;
    khala__alloc_bind(&t->arena, t->seg.base, (khala_alloc_state_t *)(t->seg.base + h->alloc_off),
                      t->seg.base + h->bitmap_off, h->arena_off, h->arena_off + h->arena_size);
    t->pol.desc = t->desc;
    t->pol.w = t->w;
    t->pol.ghost = (khala_ghost_t *)(t->seg.base + h->ghost_off);
    t->pol.ghost_mask = h->ghost_cap - 1;
    t->pol.ghost_window = h->ghost_window;
    t->pol.max_items = h->max_items;
    return 0;
}

/* Format the writer-only regions of a new segment (the file starts zeroed, so the buckets and
 * the ghost are already empty). */
static void format_regions(khala_l1_t *t) {
    khala_seg_header_t *h = t->hdr;
    for (uint32_t i = 0; i < h->max_items; i++) {
        t->desc[i].prev = KHALA_NIL;
        t->desc[i].next = i + 1 < h->max_items ? i + 1 : KHALA_NIL;
    }
    t->w->free_desc = 0;
    for (int q = 0; q < 3; q++)
        t->w->q_head[q] = t->w->q_tail[q] = KHALA_NIL;
    khala__alloc_format(&t->arena);
}

/* 1 if the attached segment has exactly the sizes cfg asks for. */
static int same_sizes(const khala_seg_header_t *h, const khala_seg_config_t *cfg) {
    return h->max_items == cfg->max_items && h->arena_size == ((cfg->max_bytes + 15) & ~15ull) &&
           h->max_value == cfg->max_value && h->max_readers == cfg->max_readers &&
           h->ring_size == cfg->ring_size;
}

/* Try to become the writer of the segment that exists under `name`: it must have the sizes cfg
 * asks for, no live writer, and pass khala__l1_check (a writer killed in the middle of a put
 * leaves a block allocated but not linked, which the check sees). 0 on success; a negative
 * code, with the reason in err, when the segment must be made anew instead. */
static int reattach(khala_l1_t *t, const char *name, const khala_seg_config_t *cfg, char *err,
                    size_t errlen) {
    /* Takes the writer lock before it maps anything: KHALA_EEXIST while another writer lives. */
    int rc = khala__seg_attach_writer(&t->seg, name, err, errlen);
    if (rc != 0)
        return rc;
    if (!same_sizes(t->seg.hdr, cfg)) {
        snprintf(err, errlen, "cache '%s' exists with other sizes", name);
        return KHALA_ELAYOUT;
    }
    /* The readers' group may have changed with the configuration (segment_create.c, FILE
     * MODES AND TRUST); a segment that cannot be given it is made anew, which says why. */
    if ((rc = khala__seg_own(&t->seg, cfg->gid, err, errlen)) != 0)
        return rc;
    if ((rc = bind_regions(t)) != 0) {
        snprintf(err, errlen, "out of memory");
        return rc;
    }
    if ((rc = khala__l1_check(t)) != 0) {
        snprintf(err, errlen, "cache '%s' is inconsistent: %.160s", name, t->err);
        return rc;
    }
    /* The hit rings hold what readers saw while no writer ran: start from their heads. */
    uint32_t hwm = khala_load_acquire(&t->seg.rhdr->hwm);
    for (uint32_t i = 0; i < hwm && i < t->seg.nslots; i++)
        t->tails[i] = khala_load_acquire(&khala__seg_slot(&t->seg, i)->ring_head);
    return 0;
}

int khala__l1_open_ex(const char *name, const khala_seg_config_t *cfg, unsigned flags,
                      khala_l1_t **out, char *err, size_t errlen) {
    char why[224] = ""; /* fits t->err after "made anew: " */
    khala_seg_config_t defaults;
    if (!cfg) {
        khala__seg_config_init(&defaults);
        cfg = &defaults;
    }
    khala_l1_t *t = calloc(1, sizeof(*t));
    if (!t) {
        if (err && errlen)
            snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int rc;
    if (flags & KHALA_L1_REATTACH) {
        rc = reattach(t, name, cfg, why, sizeof(why));
        if (rc == 0) {
            t->reattached = 1;
            goto done;
        }
        /* This releases the writer lock, and khala__seg_create takes it again: a writer that
         * starts in between wins and this open fails with KHALA_EEXIST, still one writer. */
        khala__seg_detach(&t->seg);
        free(t->tails);
        t->tails = NULL;
        if (rc == KHALA_EEXIST || rc == KHALA_ENAME) {
            if (err && errlen)
                snprintf(err, errlen, "%s", why);
            free(t);
            return rc;
        }
        /* Anything else (absent, other sizes, other layout, inconsistent): make it anew. */
    }
    if ((rc = khala__seg_create(&t->seg, name, cfg, err, errlen)) != 0) {
        free(t);
        return rc;
    }
    if ((rc = bind_regions(t)) != 0) {
        khala__l1_close(t, 1);
        if (err && errlen)
            snprintf(err, errlen, "out of memory");
        return rc;
    }
    format_regions(t);
    if (flags & KHALA_L1_REATTACH)
        snprintf(t->err, sizeof(t->err), "made anew: %s", why);
done:
    t->stuck_slot = UINT32_MAX;
    khala_store_relaxed(&t->seg.hdr->writer_pid, (uint32_t)getpid());
    *out = t;
    return 0;
}

int khala__l1_open(const char *name, const khala_seg_config_t *cfg, khala_l1_t **out, char *err,
                   size_t errlen) {
    return khala__l1_open_ex(name, cfg, KHALA_L1_DEFAULT, out, err, errlen);
}

int khala__l1_reattached(const khala_l1_t *t) {
    return t->reattached;
}

void khala__l1_close(khala_l1_t *t, int unlink) {
    if (!t)
        return;
    if (t->seg.hdr)
        khala_store_relaxed(&t->seg.hdr->writer_pid, 0);
    /* Unlink before detaching: once the writer lock is released, another writer may already
     * own files under the name. */
    if (unlink)
        (void)khala__seg_unlink_locked(&t->seg);
    khala__seg_detach(&t->seg); /* releases the writer lock */
    free(t->tails);
    free(t);
}
