/*
 * The L1 eviction policy: S3-FIFO over the desc table, driven by hits that readers record in
 * their hit rings and the writer drains. Writer-only. Start at khala__policy_victim().
 */
#ifndef KHALA_LIB_EVICT_H
#define KHALA_LIB_EVICT_H

#include <stddef.h>
#include <stdint.h>

#include "layout.h"

typedef struct khala_policy {
    khala_desc_t *desc;    /* the desc table */
    khala_wstate_t *w;     /* queue heads and counters */
    khala_ghost_t *ghost;  /* ghost table */
    uint64_t ghost_mask;   /* ghost_cap - 1 */
    uint64_t ghost_window; /* an entry counts while ghost_seq - seq < this */
    uint32_t max_items;
} khala_policy_t;

/* Frequency at which an item leaving the small queue moves to the main queue instead of being
 * evicted: seen at least once after its insertion (see docs/eviction.md for the study). */
#define KHALA_S3_MOVE_THRESHOLD 1u
/* The small queue's share of the items, in percent. */
#define KHALA_S3_SMALL_PERCENT 10u
/* Hits saturate here. */
#define KHALA_S3_FREQ_MAX 3u

/* The fingerprint the ghost keeps of a hash (never 0, which marks an empty entry). */
uint32_t khala__policy_ghost_fp(uint64_t hash);
/* A new key enters: the main queue if its hash is in the ghost, else the small queue. */
void khala__policy_insert(khala_policy_t *p, uint32_t idx);
/* The key left the cache by delete or expiry: take it off its queue. */
void khala__policy_remove(khala_policy_t *p, uint32_t idx);
/* A hit (drained from a ring) or an overwrite of the key. */
void khala__policy_hit(khala_policy_t *p, uint32_t idx);
/* Choose the next key to evict, following S3-FIFO; the desc is taken off its queue (and its
 * hash remembered in the ghost when it leaves from the small queue). KHALA_NIL when empty. */
uint32_t khala__policy_victim(khala_policy_t *p);
/* Check queue links and counts; 0, or KHALA_ECORRUPT with what was wrong in err (errlen bytes,
 * truncated; err may be NULL). Safe on descs and queue heads that hold anything: indexes are
 * bounded by max_items before use and walks by max_items. */
int khala__policy_check(const khala_policy_t *p, char *err, size_t errlen);

#endif /* KHALA_LIB_EVICT_H */
