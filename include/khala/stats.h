/*
 * khala-cache statistics a worker can read about its own handle. The writer's counters (items,
 * bytes, evictions, ...) come from khalad (khalactl stats) in a later version. Start at
 * khala_cache_stats().
 */
#ifndef KHALA_STATS_H
#define KHALA_STATS_H

#include <stdint.h>

#include "khala/version.h"

#ifdef __cplusplus
extern "C" {
#endif

/** An open cache. Opaque; one handle may be shared by the threads of one process. */
typedef struct khala_cache khala_cache_t;

/** Statistics of one handle, summed over its threads. */
typedef struct khala_cache_stats {
    uint64_t hits;   /**< lookups answered from L1 */
    uint64_t misses; /**< lookups that found no live item in L1 */
} khala_cache_stats_t;

/**
 * @brief Read this handle's counters, summed over the threads that used it.
 * @param[in] c handle.
 * @param[out] st filled on success.
 * @return 0.
 * @note Safe from any thread; the counts are a relaxed snapshot.
 */
KHALA_API int khala_cache_stats(const khala_cache_t *c, khala_cache_stats_t *st);

#ifdef __cplusplus
}
#endif

#endif /* KHALA_STATS_H */
