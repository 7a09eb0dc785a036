/*
 * The writer's side of the reader slots (readers.h is the readers' side): the scan that finds
 * the oldest epoch a reader pins (what a grace period waits for), reaping the slots of dead
 * readers, draining the hit rings into the eviction policy, and the slots' totals. Only the
 * writer calls these, and only the writer library (khala_writer) holds them; workers never
 * link this code. The theory is at the top of reclaim.c; the ordering argument is in
 * docs/segment.md, "Reclamation: why a reader never reads freed memory".
 *
 * Start at khala__readers_min_epoch().
 */
#ifndef KHALA_LIB_RECLAIM_H
#define KHALA_LIB_RECLAIM_H

#include <stdint.h>

#include "readers.h"
#include "segment.h"

/* The smallest epoch any reader inside a read section shows, UINT64_MAX if none is inside one.
 * Begins with a seq_cst fence that orders the caller's earlier unlinks and epoch increment
 * before the scan, and, where readers skip their fence (asym_fence), with one membarrier()
 * per value of the global epoch: the first scan after an increment issues it, later scans at
 * the same epoch reuse it (docs/segment.md, "Asymmetric fences"). */
uint64_t khala__readers_min_epoch(khala_seg_t *s);

/* Find slots whose epoch is nonzero and below `below`, and free those whose owner is dead (the
 * slot's OFD lock is not held). Returns how many slots were freed, or -errno. */
int khala__readers_reap(khala_seg_t *s, uint64_t below);

/* The oldest epoch a reader is pinning, the pid holding it and (if slot is not NULL) its slot
 * index; 0, pid 0 and UINT32_MAX if no reader is inside a section. */
uint64_t khala__readers_oldest(const khala_seg_t *s, int *pid, uint32_t *slot);

/* Drain every slot's hit ring into fn(arg, desc index, low hash bits). `tails` has one cursor
 * per slot (writer-private). Entries overwritten before the drain are lost, by design. */
void khala__readers_drain(const khala_seg_t *s, uint64_t *tails,
                          void (*fn)(void *arg, uint32_t idx, uint32_t hash_lo), void *arg);

/* Sum of hits and misses over every slot. */
void khala__readers_totals(const khala_seg_t *s, uint64_t *hits, uint64_t *misses);

/* Slots currently claimed. */
uint32_t khala__readers_in_use(const khala_seg_t *s);

#endif /* KHALA_LIB_RECLAIM_H */
