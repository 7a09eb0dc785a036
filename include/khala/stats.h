/*
 * khala-cache statistics: a worker's own handle (khala_cache_stats(): its L1 hits and misses,
 * no system call) and khalad's counters (khala_cache_daemon_stats(): items, bytes, evictions,
 * levels below L1, loads..., one request to khalad). Start at khala_cache_stats().
 */
#ifndef KHALA_STATS_H
#define KHALA_STATS_H

#include <stddef.h>
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

/** Kinds of a khala_stat_t value. */
typedef enum khala_stat_kind {
    KHALA_STAT_NIL = 0,
    KHALA_STAT_BOOL,   /**< v.b */
    KHALA_STAT_UINT,   /**< v.u */
    KHALA_STAT_INT,    /**< v.i; only negative values */
    KHALA_STAT_DOUBLE, /**< v.d */
    KHALA_STAT_STR,    /**< v.str: s, len bytes, NUL-terminated too */
    KHALA_STAT_MAP     /**< v.map: n entries, a section ("l1", "l2", "khalad") or a sub-map */
} khala_stat_kind_t;

/** One of khalad's statistics: a name and a scalar, or a map of more of them. The names and
 * their meaning are khalad's (docs/operating.md, `khalactl stats`). */
typedef struct khala_stat {
    const char *name; /**< NUL-terminated */
    khala_stat_kind_t kind;
    union {
        int b;
        uint64_t u;
        int64_t i;
        double d;
        struct {
            const char *s;
            size_t len;
        } str;
        struct {
            const struct khala_stat *items;
            size_t n;
        } map;
    } v;
} khala_stat_t;

/**
 * @brief Ask khalad for its statistics (what `khalactl stats` shows).
 * @param[in] c handle.
 * @param[out] out the top-level entries, one per section; set on success only. Free with
 *             khala_stats_free().
 * @param[out] n how many entries @p out holds.
 * @return 0; -ENOMEM; and the codes common to calls through khalad (include/khala/cache.h):
 *         KHALA_EDAEMON when khalad cannot be reached.
 * @note Safe from any thread. The whole tree is one allocation.
 */
KHALA_API KHALA_NODISCARD int khala_cache_daemon_stats(khala_cache_t *c, khala_stat_t **out,
                                                       size_t *n);

/**
 * @brief Free what khala_cache_daemon_stats() returned.
 * @param[in] stats its @p out, or NULL (then nothing happens).
 */
KHALA_API void khala_stats_free(khala_stat_t *stats);

#ifdef __cplusplus
}
#endif

#endif /* KHALA_STATS_H */
