/*
 * The disk tier's in-memory index: every item of the store as a small entry (size, expiry, LFU
 * counter), found by key through an open-addressing hash table and packed in a dense array for
 * O(1) random sampling, plus the approximate LFU that picks eviction victims and ranks hot keys.
 * It never touches LMDB: daemon/tier_disk_store.c keeps it equal to the "items" database and
 * writes the counters to "lfu" (see the top of that file for the rules of when it changes).
 *
 * Start at khala_disk_index_t and khala__disk_index_init(); daemon/tier_disk_index.c opens with
 * how the table and the LFU work. Only what may fail (khala__disk_index_reserve,
 * khala__disk_index_entry_new) allocates: a caller reserves room first, so that the insert after
 * an LMDB commit cannot fail.
 *
 * Thread safety: an index belongs to its disk tier, used from khalad's loop thread only.
 */
#ifndef KHALA_DAEMON_TIER_DISK_INDEX_H
#define KHALA_DAEMON_TIER_DISK_INDEX_H

#include <stddef.h>
#include <stdint.h>

/** One item of the store. Allocated with its key (khala__disk_index_entry_new). */
typedef struct khala_disk_entry {
    int64_t expire_ms;  /* CLOCK_REALTIME ms when the item expires; 0 = never */
    uint64_t seq;       /* ix->seq at the last get or write: the LRU tie-break of equal counters */
    uint64_t hash;      /* XXH3 of the key (with ix->seed), kept for rehashing */
    uint32_t bytes;     /* klen + vlen; change it with khala__disk_index_resize */
    uint32_t slot;      /* position in ix->dense */
    uint32_t decay_min; /* the index's minute (now_min) when counter was last decayed or raised */
    uint8_t counter;    /* logarithmic LFU counter, 0..255 */
    uint8_t dirty;      /* counter differs from the one in "lfu" */
    uint8_t pinned;     /* a key or victim of the write being built; 0 outside writes */
    uint8_t klen;       /* 1..KHALA_KEY_MAX */
    uint8_t key[];
} khala_disk_entry_t;

/** The index. A plain struct embedded in the disk tier. Outside daemon/tier_disk_index.c its
 * fields are read-only but seq (below), and of an entry in the index only counter, dirty,
 * pinned, seq, decay_min and expire_ms are written (bytes through khala__disk_index_resize). */
typedef struct khala_disk_index {
    /* Immutable after khala__disk_index_init. */
    uint64_t seed;     /* hash seed; the tier also mixes it into its scan cursors */
    int64_t clock0_ms; /* khala__sys_now_ms() at init; LFU minutes count from it */

    khala_disk_entry_t **tab;   /* open addressing, linear probing; NULL slots are empty */
    size_t tab_cap;             /* power of two, or 0 */
    khala_disk_entry_t **dense; /* n entries; dense[e->slot] == e */
    size_t n, dense_cap;
    uint64_t bytes; /* sum of entry bytes */
    uint64_t seq;   /* logical clock of accesses; the tier also stamps writes and scan slots */
    uint64_t rng;   /* xorshift64 state, never 0 */
} khala_disk_index_t;

/** 1 if an item expiring at expire_ms (CLOCK_REALTIME ms, 0 = never) is live at now. */
static inline int khala__disk_live(int64_t expire_ms, int64_t now) {
    return expire_ms == 0 || expire_ms > now;
}

/**
 * @brief Start an empty index (ix zeroed by the caller, or cleared with khala__disk_index_free).
 * @param[out] ix the index.
 * @param[in] seed hash seed (random: keys an outsider picks must not collide on purpose).
 * @param[in] now_ms khala__sys_now_ms() now: the origin of the LFU decay minutes.
 */
void khala__disk_index_init(khala_disk_index_t *ix, uint64_t seed, int64_t now_ms);

/** @brief Free every entry and the table; ix then holds no memory (and no entries). */
void khala__disk_index_free(khala_disk_index_t *ix);

/** @brief Free every entry, keeping the table's room: ix is empty and usable. */
void khala__disk_index_clear(khala_disk_index_t *ix);

/**
 * @brief Find the entry of a key.
 * @return the entry, or NULL when the key is absent (or longer than KHALA_KEY_MAX).
 */
khala_disk_entry_t *khala__disk_index_find(const khala_disk_index_t *ix, const void *key,
                                           size_t klen);

/**
 * @brief Make room for extra more entries, so that khala__disk_index_insert cannot fail.
 * @return 0, or -ENOMEM (ix is unchanged but for room already made).
 */
int khala__disk_index_reserve(khala_disk_index_t *ix, size_t extra);

/**
 * @brief Allocate an entry for key (1..KHALA_KEY_MAX bytes), not yet in the index.
 * @return the entry (counter LFU_INIT, everything else 0; free() it if it is never inserted),
 *         or NULL when out of memory.
 */
khala_disk_entry_t *khala__disk_index_entry_new(const khala_disk_index_t *ix, const void *key,
                                                size_t klen);

/** @brief Insert e, whose key is absent, with room reserved; adds e->bytes to ix->bytes. */
void khala__disk_index_insert(khala_disk_index_t *ix, khala_disk_entry_t *e);

/** @brief Remove e from the index and free it. */
void khala__disk_index_remove(khala_disk_index_t *ix, khala_disk_entry_t *e);

/** @brief Set e->bytes, keeping ix->bytes their sum. */
void khala__disk_index_resize(khala_disk_index_t *ix, khala_disk_entry_t *e, uint32_t bytes);

/** @brief The index's clock in whole minutes since init: what decay_min counts. */
uint32_t khala__disk_index_now_min(const khala_disk_index_t *ix);

/** @brief A get of e: decay its counter, raise it logarithmically, stamp e->seq. */
void khala__disk_index_touch(khala_disk_index_t *ix, khala_disk_entry_t *e);

/**
 * @brief @p hits gets of e at once (L1's hits, reported at a graceful stop): decay the counter,
 *        then raise it by what that many touches raise it on average, deterministically (a step
 *        from c costs the expected (c - LFU_INIT) * LFU_LOG_FACTOR + 1 hits; only the leftover
 *        fraction of one step is drawn at random), and stamp e->seq.
 * @note 64 touches one by one leave a counter of 6 unchanged about once in 450 draws, so the
 *       key read most could rank below keys read three times; a sum of hits never does.
 */
void khala__disk_index_add_hits(khala_disk_index_t *ix, khala_disk_entry_t *e, uint64_t hits);

/**
 * @brief How valuable e is, as one number for sorting: the lower, the sooner it goes (an expired
 *        entry first, then by decayed counter, then least recently used first): the order of
 *        khala__disk_index_pick_victim's choice, for a caller that ranks every entry at once
 *        (the disk tier's cleanup, daemon/tier_disk_cleanup.c).
 * @param[in] now_min khala__disk_index_now_min() now (read once for many entries).
 * @param[in] now_rt CLOCK_REALTIME ms now, to tell expired entries.
 */
uint64_t khala__disk_index_rank(const khala_disk_entry_t *e, uint32_t now_min, int64_t now_rt);

/**
 * @brief Pick an eviction victim: the coldest of a random sample of unpinned entries (an
 *        expired one first; among equal counters the least recently used).
 * @param[in] now_rt CLOCK_REALTIME ms now, to tell expired entries.
 * @return the victim (still in the index), or NULL when every entry is pinned or there is none.
 */
khala_disk_entry_t *khala__disk_index_pick_victim(khala_disk_index_t *ix, int64_t now_rt);

/**
 * @brief The hottest live entries, by decayed counter.
 * @param[out] out room for max entries; filled hottest first.
 * @param[in] now_rt CLOCK_REALTIME ms now, to skip expired entries.
 * @return how many entries were written to out (at most max).
 * @note The entries belong to the index: valid until it next changes.
 */
size_t khala__disk_index_hottest(const khala_disk_index_t *ix, khala_disk_entry_t **out, size_t max,
                                 int64_t now_rt);

#endif /* KHALA_DAEMON_TIER_DISK_INDEX_H */
