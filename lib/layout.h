/*
 * The on-segment structures, shared by the library (readers) and khalad (the writer).
 *
 * Two POSIX shared-memory objects make one cache called <name> (a third, khala.<name>.lock,
 * holds only the writer lock and its holder's pid; segment.c explains it):
 *
 *   /dev/shm/khala.<name>.data     written by the writer only; readers map it PROT_READ
 *                                  (mode 0640: readers cannot even open it for writing)
 *   +-------------------------+ 0
 *   | khala_seg_header_t      |   immutable part, epoch line, writer-only state   (4 KiB)
 *   +-------------------------+ bucket_off
 *   | buckets[2][bucket_count]|   two indexes of khala_bucket_t lines (below); the header's
 *   |                         |   index_count names the live one
 *   +-------------------------+ desc_off
 *   | khala_desc_t[max_items] |   writer-only: per-key policy metadata (S3-FIFO queues, TTL)
 *   +-------------------------+ ghost_off
 *   | khala_ghost_t[ghost_cap]|   writer-only: fingerprints of keys recently evicted
 *   +-------------------------+ retire_off
 *   | khala_retired_t[...]    |   writer-only: items unlinked but maybe still being read
 *   +-------------------------+ alloc_off
 *   | khala_alloc_state_t     |   writer-only: the TLSF free lists of the arena
 *   +-------------------------+ bitmap_off
 *   | block bitmap            |   writer-only: a bit per KHALA_ALIGN bytes of arena: where
 *   |                         |   blocks start and which are free (alloc.c)
 *   +-------------------------+ arena_off
 *   | arena                   |   blocks, no headers; a used block is one khala_item_t + key +
 *   |                         |   value, a free block keeps its size and links in itself
 *   +-------------------------+ segment_size
 *
 *   /dev/shm/khala.<name>.readers   mapped read-write by every reader (mode 0660)
 *   +-------------------------+ 0
 *   | khala_readers_header_t  |   (128 bytes)
 *   +-------------------------+ 128
 *   | slot 0 | slot 1 | ...   |   khala_slot_t + ring, slot_size bytes each; a slot is written
 *   +-------------------------+   by its owner only (and by the writer when its owner is dead)
 *
 * Buckets. An index is an array of bucket_count buckets of one cache line each (v5; before, a
 * bucket was one link heading a chain). A key's bucket is fastrange of the high half of its
 * hash, its tag the low byte:
 *
 *   byte 0       12      16                                                      64
 *   +------------+-------+--------------------------------------------------------+
 *   | tag[12]    | chain | link[12]                                               |
 *   +------------+-------+--------------------------------------------------------+
 *     u8 each,     u32:    u32 each: a slot holds a link to an item of the bucket, 0 = free,
 *     0 if free    first   and its key's tag; one 16-byte load compares all twelve tags
 *                  item of the overflow chain (through the items' next words), 0 = none
 *
 * Links. The buckets and the items' next fields hold *links*: an item's offset divided by
 * KHALA_ALIGN, in 32 bits (0 = none; no item lives at offset 0). Half the size of a plain
 * offset, so a line holds twelve of them; it bounds the data file at 64 GiB, far above what an
 * L1 needs.
 *
 * Rules: offsets, never pointers; fixed-width types only; explicit padding; every struct's size
 * and key offsets are asserted below, so a change to the layout cannot go unnoticed. Any change
 * to these structs bumps KHALA_LAYOUT_VERSION. See docs/segment.md for the reader protocol and
 * the memory-ordering argument.
 */
#ifndef KHALA_LIB_LAYOUT_H
#define KHALA_LIB_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "atomic.h"

/* "KHALASEG" and "KHALARDR" as little-endian integers. */
#define KHALA_SEG_MAGIC 0x4745534c4148414bull
#define KHALA_READERS_MAGIC 0x5244524c4148414bull
#define KHALA_LAYOUT_VERSION 5u

#define KHALA_CACHE_LINE 64
#define KHALA_SEG_HEADER_SIZE 4096u
#define KHALA_READERS_HEADER_SIZE 128u
/* Sentinel for "no desc" in queue links and free lists. */
#define KHALA_NIL UINT32_MAX
/* Arena blocks are aligned to this; offsets inside the arena are multiples of it. */
#define KHALA_ALIGN 16u
/* A reader walks at most this many items of one overflow chain; a longer chain (a flooded
 * bucket, or a corrupt loop) is a miss for it. A bucket holds KHALA_BUCKET_SLOTS items and
 * at most KHALA_BUCKET_LOAD on average, so real chains are rare and short; the writer rehashes
 * with a new seed when a put meets an overflow chain of KHALA_CHAIN_REHASH items (see
 * l1_table.c, "Hash flooding"). */
#define KHALA_CHAIN_MAX 4096u
#define KHALA_CHAIN_REHASH 64u
/* Slots of a bucket line, and the items per bucket at max_items (bucket_count =
 * ceil(max_items / KHALA_BUCKET_LOAD)): 64 bytes per 8 items and index, as the 2 links per item
 * of layout 4 at best. l1_table.c gives the reasons for the numbers. */
#define KHALA_BUCKET_SLOTS 12
#define KHALA_BUCKET_LOAD 8u

/* Segment states, in khala_seg_header_t.state. */
enum {
    KHALA_SEG_LIVE = 1,     /* served by its writer or waiting for one to reattach */
    KHALA_SEG_REPLACED = 2, /* a writer made a new segment under the name; reattach */
};

/* TLSF geometry: first level = floor(log2(size)), second level splits each power of two into
 * KHALA_ALLOC_SL ranges. 2^KHALA_ALLOC_FL bytes bounds the arena. */
#define KHALA_ALLOC_FL 48
#define KHALA_ALLOC_SL_LOG 4
#define KHALA_ALLOC_SL (1 << KHALA_ALLOC_SL_LOG)

/* The writer-only part of the header: counters and the eviction policy's queue heads.
 * Guard: written and read by the writer only (one writer, enforced by the writer lock on
 * /dev/shm/khala.<name>.lock, segment.c). Readers never read it, so it needs no atomics and
 * lives on its own lines. */
typedef struct khala_wstate {
    uint64_t version_seq;   /* last item version handed out; versions start at 1 */
    uint64_t items;         /* live items (linked in the table) */
    uint64_t item_bytes;    /* arena bytes held by live items, whole blocks */
    uint64_t payload_bytes; /* sum of key and value lengths of live items */
    uint64_t sets;          /* successful puts, overwrites included */
    uint64_t overwrites;    /* puts that replaced an existing item */
    uint64_t deletes;       /* items removed by delete */
    uint64_t evictions;     /* items removed by the eviction policy */
    uint64_t expirations;   /* expired items removed (by the sweep or on access) */
    uint64_t retire_head;   /* next retire ring index to free (monotonic) */
    uint64_t retire_tail;   /* next retire ring index to fill (monotonic) */
    uint64_t retired_bytes; /* arena bytes held by retired, not yet freed items */
    uint64_t ghost_seq;     /* ghost insertions so far; ages ghost entries */
    uint64_t sweep_cursor;  /* next desc index the TTL sweep looks at */
    uint64_t q_count[3];    /* descs in each queue: [0] unused, [1] small, [2] main */
    uint32_t q_head[3];     /* newest desc of each queue, KHALA_NIL when empty */
    uint32_t q_tail[3];     /* oldest desc of each queue, KHALA_NIL when empty */
    uint32_t free_desc;     /* head of the free desc list (linked through next) */
    uint32_t index_dirty;   /* 1: the index not live still holds links readers may walk; it is
                               cleared after a grace period before its next use */
    uint64_t rehashes;      /* rehashes done (hash flooding defence) */
    uint64_t rehash_sets;   /* w.sets at the last rehash: rehashes are at most one per
                               max_items puts */
    uint64_t index_epoch;   /* readers at this epoch or older may walk the index not live */
} khala_wstate_t;

typedef struct khala_seg_header {
    /* Immutable after create (written before the segment is published by its name). */
    uint64_t magic;          /* KHALA_SEG_MAGIC */
    uint32_t layout_version; /* KHALA_LAYOUT_VERSION */
    uint32_t header_size;    /* KHALA_SEG_HEADER_SIZE */
    uint64_t generation;     /* bumped each time a writer creates the segment anew */
    uint64_t segment_size;   /* bytes of the data file */
    uint64_t hash_seed;      /* seed of the key hash, random per generation */
    uint64_t bucket_off;     /* offset of the bucket array */
    uint64_t bucket_count;   /* buckets of each index, ceil(max_items / KHALA_BUCKET_LOAD) */
    uint64_t desc_off;       /* offset of khala_desc_t[max_items] */
    uint64_t ghost_off;      /* offset of khala_ghost_t[ghost_cap] */
    uint64_t ghost_cap;      /* power of two, entries of the ghost table */
    uint64_t ghost_window;   /* a ghost entry counts while ghost_seq - its seq < this */
    uint64_t retire_off;     /* offset of khala_retired_t[retire_cap] */
    uint64_t retire_cap;     /* entries of the retire ring */
    uint64_t alloc_off;      /* offset of khala_alloc_state_t */
    uint64_t arena_off;      /* offset of the first arena byte */
    uint64_t arena_size;     /* bytes of arena (the "bytes" capacity) */
    uint64_t readers_size;   /* bytes of the readers file */
    uint32_t max_items;      /* item capacity */
    uint32_t max_value;      /* largest value in bytes */
    uint32_t max_readers;    /* reader slots */
    uint32_t ring_size;      /* entries of each reader's hit ring, a power of two */
    int64_t created_ms;      /* monotonic ms when created */
    uint64_t bitmap_off;     /* offset of the arena's block bitmap (khala_arena_bitmap_bytes) */
    uint8_t pad0[KHALA_CACHE_LINE * 3 - 168];

    /* Written by the writer, read by every reader: a line of its own. */
    khala_atomic_u64 epoch;      /* global epoch, >= 1; writer store (seq_cst fence after), readers
                               load-acquire on entering a section */
    khala_atomic_u32 state;      /* KHALA_SEG_LIVE or KHALA_SEG_REPLACED; readers load-acquire */
    khala_atomic_u32 writer_pid; /* pid of the attached writer, 0 when none; informational */
    khala_atomic_u32 asym_fence; /* 1 when the writer issues membarrier(GLOBAL_EXPEDITED) before
                                    each reader scan, so registered readers may replace their
                                    fence by a compiler barrier; set at create, immutable */
    uint32_t pad_e;
    khala_atomic_u64 index_count;   /* rehashes so far; index (index_count & 1) is live, hashed
                                     with index_seed[index_count & 1]. Writer: the seed, then
                                     this, with release; readers: acquire, then the seed */
    khala_atomic_u64 index_seed[2]; /* seed of each index; the writer changes one only while
                                       no reader can be using it (l1_table.c) */
    uint8_t pad1[KHALA_CACHE_LINE - 48];

    /* Written and read by the writer only. */
    khala_wstate_t w;
    uint8_t pad2[KHALA_SEG_HEADER_SIZE - KHALA_CACHE_LINE * 4 - 192];
} khala_seg_header_t;

_Static_assert(sizeof(khala_wstate_t) == 192, "khala_wstate_t layout");
_Static_assert(offsetof(khala_seg_header_t, created_ms) == 152, "header immutable part");
_Static_assert(offsetof(khala_seg_header_t, bitmap_off) == 160, "header immutable part");
_Static_assert(offsetof(khala_seg_header_t, epoch) == 192, "epoch on its own line");
_Static_assert(offsetof(khala_seg_header_t, index_count) == 216, "index word on the epoch line");
_Static_assert(offsetof(khala_seg_header_t, w) == 256, "writer state on its own lines");
_Static_assert(sizeof(khala_seg_header_t) == KHALA_SEG_HEADER_SIZE, "header is one page");

/* One bucket of an index: a cache line (drawn above). Guard: written by the writer only;
 * readers load the tags as hints and the links with acquire (l1_lookup.h, docs/segment.md). */
typedef struct khala_bucket {
    khala_atomic_u8 tag[KHALA_BUCKET_SLOTS];   /* the tag of slot i's key; 0 if the slot is free.
                                                  Writer stores relaxed; a hint: the key decides */
    khala_atomic_u32 chain;                    /* link to the first item of the overflow chain
                                                  (through next[index]), 0 = none; writer
                                                  store-release, readers load-acquire */
    khala_atomic_u32 link[KHALA_BUCKET_SLOTS]; /* link to slot i's item, 0 = slot free; writer
                                                  store-release, readers load-acquire */
} __attribute__((aligned(KHALA_CACHE_LINE))) khala_bucket_t;

_Static_assert(sizeof(khala_bucket_t) == KHALA_CACHE_LINE, "a bucket is one line");
_Static_assert(offsetof(khala_bucket_t, chain) == 12, "khala_bucket_t layout");
_Static_assert(offsetof(khala_bucket_t, link) == 16, "khala_bucket_t layout");

/* An item: header, then key_len key bytes, then value_len value bytes at
 * KHALA_ITEM_VALUE_OFF(key_len). Immutable once linked, except next[]. Freed only after every
 * reader that could have seen it has left its read section. It holds no hash: a rehash with a
 * new seed relinks items through the other next word and never moves or rewrites them. */
typedef struct khala_item {
    khala_atomic_u32 next[2]; /* link to the next item in the overflow chain of index 0 and 1,
                                 0 = end (unused while the item sits in a slot);
                                 writer store-release, readers load-acquire */
    uint32_t desc;            /* index of the key's khala_desc_t */
    uint32_t value_len;       /* bytes */
    uint64_t version;         /* item version, >= 1 */
    int64_t expire_ms;        /* monotonic ms deadline, 0 = never expires */
    uint16_t key_len;         /* bytes, 1..KHALA_KEY_MAX */
    uint8_t type;             /* caller's data type tag */
    uint8_t flags;            /* reserved, 0 */
    uint32_t pad;
} khala_item_t;

_Static_assert(sizeof(khala_item_t) == 40, "khala_item_t layout");
_Static_assert(offsetof(khala_item_t, key_len) == 32, "khala_item_t layout");

/* Largest data file that links can address. */
#define KHALA_SEG_MAX_SIZE ((uint64_t)UINT32_MAX * KHALA_ALIGN)

/* Offset <-> link. */
static inline uint32_t khala_link_of(uint64_t off) {
    return (uint32_t)(off / KHALA_ALIGN);
}

static inline uint64_t khala_link_off(uint32_t link) {
    return (uint64_t)link * KHALA_ALIGN;
}

#define KHALA_ITEM_VALUE_OFF(klen) ((sizeof(khala_item_t) + (klen) + 7u) & ~(size_t)7u)
#define KHALA_ITEM_SIZE(klen, vlen) (KHALA_ITEM_VALUE_OFF(klen) + (vlen))

/* Per-key policy metadata, indexed by khala_item_t.desc. Writer-only. A key keeps its desc
 * across overwrites, so its frequency and queue position survive an update. */
typedef struct khala_desc {
    uint64_t item_off;   /* offset of the key's current item; 0 = desc is free */
    uint64_t hash;       /* the key's hash under the live index's seed (ring entries carry its
                            low 32 bits); rewritten by a rehash */
    int64_t expire_ms;   /* copy of the item's deadline, so the sweep reads no item */
    uint32_t prev, next; /* queue links toward newer/older; KHALA_NIL at the ends */
    uint32_t block_size; /* arena bytes the item holds */
    uint8_t queue;       /* KHALA_Q_NONE, KHALA_Q_SMALL or KHALA_Q_MAIN */
    uint8_t freq;        /* hits seen, saturating at 3 */
    uint8_t pad[2];
    uint32_t hits; /* hits drained from the readers' rings since the key was inserted
                            (a lower bound: rings are lossy), saturating; for inspect */
    uint32_t pad2;
} khala_desc_t;

_Static_assert(sizeof(khala_desc_t) == 48, "khala_desc_t layout");

enum { KHALA_Q_NONE = 0, KHALA_Q_SMALL = 1, KHALA_Q_MAIN = 2 };

/* A ghost entry: a fingerprint of a key evicted from the small queue, and when. Writer-only. */
typedef struct khala_ghost {
    uint32_t fp;  /* khala__policy_ghost_fp(hash); 0 = empty */
    uint32_t seq; /* low 32 bits of wstate.ghost_seq at insertion */
} khala_ghost_t;

_Static_assert(sizeof(khala_ghost_t) == 8, "khala_ghost_t layout");

/* A retired item waiting for its grace period. Writer-only. */
typedef struct khala_retired {
    uint64_t off;   /* item offset */
    uint64_t epoch; /* global epoch when it was unlinked */
} khala_retired_t;

/* TLSF state for the arena. Writer-only. */
typedef struct khala_alloc_state {
    uint64_t fl_bitmap;                                 /* bit f: some list in row f is non-empty */
    uint32_t sl_bitmap[KHALA_ALLOC_FL];                 /* bit s: list [f][s] is non-empty */
    uint64_t free_head[KHALA_ALLOC_FL][KHALA_ALLOC_SL]; /* first free block, 0 = none */
    uint64_t free_bytes;                                /* bytes in free blocks */
    uint64_t used_blocks;                               /* blocks handed out */
} khala_alloc_state_t;

/* The arena's block bitmap, writer-only: one bit per KHALA_ALIGN bytes of arena, plus the
 * arena's end and one bit after it, in uint64_t words. Set at the first unit of every block, and
 * also at the second and the last unit of a free block. Arena blocks have no header: lib/alloc.c
 * explains why and what a free block holds. */
static inline uint64_t khala_arena_bitmap_words(uint64_t arena_size) {
    return (arena_size / KHALA_ALIGN + 2 + 63) / 64;
}

static inline uint64_t khala_arena_bitmap_bytes(uint64_t arena_size) {
    return khala_arena_bitmap_words(arena_size) * sizeof(uint64_t);
}

typedef struct khala_readers_header {
    uint64_t magic;          /* KHALA_READERS_MAGIC */
    uint32_t layout_version; /* KHALA_LAYOUT_VERSION */
    uint32_t nslots;         /* slot count */
    uint64_t generation;     /* equals the data segment's generation */
    uint64_t size;           /* bytes of the readers file */
    uint32_t ring_size;      /* hit ring entries per slot, power of two */
    uint32_t slot_size;      /* bytes per slot, multiple of KHALA_CACHE_LINE */
    uint8_t pad0[KHALA_CACHE_LINE - 40];
    khala_atomic_u32 hwm; /* 1 + highest slot index ever claimed; readers raise it with CAS,
                             the writer load-acquires it to bound its scans */
    uint8_t pad1[KHALA_CACHE_LINE - 4];
} khala_readers_header_t;

_Static_assert(sizeof(khala_readers_header_t) == KHALA_READERS_HEADER_SIZE, "readers header");

/* One reader slot, followed by ring_size ring entries. */
typedef struct khala_slot {
    /* Hot line. Guard: written by the owner only; the writer reads. */
    khala_atomic_u64 epoch; /* 0 = outside a read section; else the global epoch at entry */
    /* Every hit is recorded in the ring, so the ring's head is the hit count: one word, one
     * store per hit. */
    union {
        khala_atomic_u64 ring_head; /* hits recorded in the ring so far (never reset) */
        khala_atomic_u64 hits;      /* lookups that hit, over the slot's life: the same word */
    };
    khala_atomic_u64 misses; /* lookups that missed, over the slot's life (never reset) */
    uint8_t pad0[KHALA_CACHE_LINE - 24];
    /* Identity. Guard: written by the owner on claim, while holding the slot's OFD lock, or by
     * the writer while holding that lock after the owner died. */
    khala_atomic_u64 token; /* owner process's random identity (readers.c), 0 = free. Liveness
                               rests on the slot's OFD lock alone; the token only tells the
                               threads of one process apart from other processes, since they
                               share their lock. Never a pid: pids repeat across pid namespaces
                               and are reused. */
    khala_atomic_u64 pid;   /* owner pid as its own namespace sees it; informational */
    khala_atomic_u64 start; /* owner's start time in ticks since boot; informational */
    khala_atomic_u64 tid;   /* owner thread id, informational */
    uint8_t pad1[KHALA_CACHE_LINE - 32];
    /* ring[ring_size] follows: entry = desc index << 32 | low 32 bits of the key hash. Owner
     * stores relaxed, then publishes with a release store of ring_head. Lossy by design. */
    khala_atomic_u64 ring[];
} khala_slot_t;

_Static_assert(sizeof(khala_slot_t) == 2 * KHALA_CACHE_LINE, "khala_slot_t layout");
_Static_assert(offsetof(khala_slot_t, token) == KHALA_CACHE_LINE, "slot identity line");

#endif /* KHALA_LIB_LAYOUT_H */
