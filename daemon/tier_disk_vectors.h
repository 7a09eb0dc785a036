/*
 * The disk tier's vector index: the normalised vectors of the store's live embedding items
 * (type KHALA_TYPE_EMBEDDING, value = little-endian float32, dim = len / 4), grouped by
 * dimension, and the exact search behind the tier's `similar` operation (tier.h).
 *
 * Start at khala_disk_vectors_t and khala__disk_vectors_set(); daemon/tier_disk_vectors.c opens
 * with the layout, the scan and why it is an exact scan. The index is built at the store's first
 * look-up (khala__disk_similar), from the records, so that a level nobody searches (L2 while L3
 * answers) spends no memory on vectors; from then on the store keeps it equal to its records
 * (daemon/tier_disk_store.c): every committed write (put, mput, del, invalidate, expiry,
 * eviction, flush) reaches it through the store's write set. Before it is built, set and remove
 * do nothing. An item whose value is not a vector (length 0 or not a multiple of 4, a NaN or
 * infinite component, a zero vector) is simply not in the index: it is never a match.
 *
 * Thread safety: the index belongs to its disk tier, used from khalad's loop thread only.
 */
#ifndef KHALA_DAEMON_TIER_DISK_VECTORS_H
#define KHALA_DAEMON_TIER_DISK_VECTORS_H

#include <stddef.h>
#include <stdint.h>

#include "khala/cache.h"
#include "proto.h"
#include "tier.h"

/** Largest dimension indexed and searched: a query's vector travels in one request, and a
 * 64 Ki-float vector (256 KiB) is far past every embedding model in use. */
#define KHALA_DISK_VEC_DIM_MAX KHALA_SIMILAR_DIM_MAX

/** Largest k of one search: results are copied out with their values. */
#define KHALA_DISK_VEC_K_MAX KHALA_SIMILAR_K_MAX

typedef struct khala_disk_vkey khala_disk_vkey_t; /* a key in the index (tier_disk_vectors.c) */

/** The vectors of one dimension: row r is vecs[r * pdim .. r * pdim + dim), normalised, then
 * zeros up to pdim. */
typedef struct khala_disk_vgroup {
    uint32_t dim;              /* the vectors' dimension, 1..KHALA_DISK_VEC_DIM_MAX */
    uint32_t pdim;             /* dim rounded up to 16 floats (a 64-byte multiple) */
    float *vecs;               /* n rows of pdim floats (malloc'd: 16-byte aligned) */
    int64_t *expire_ms;        /* per row: CLOCK_REALTIME expiry in ms, 0 = never */
    khala_disk_vkey_t **owner; /* per row: the key it belongs to */
    size_t n, cap;             /* rows used, rows allocated */
} khala_disk_vgroup_t;

/** The index. A plain struct embedded in the disk store; zero it, then khala__disk_vectors_init.
 * All fields belong to khalad's loop thread; outside tier_disk_vectors.c read-only. */
typedef struct khala_disk_vectors {
    uint64_t seed;               /* hash seed of the key table (immutable after init) */
    khala_disk_vkey_t **tab;     /* key -> row: open addressing, linear probing; NULL = empty */
    size_t tab_cap;              /* power of two, or 0 */
    size_t n;                    /* keys (rows over every group) */
    khala_disk_vgroup_t *groups; /* one per dimension present (a group may be empty) */
    size_t ngroups;
    uint64_t dropped; /* vectors left out for want of memory (their key is a miss) */
    int built;        /* 0 until the first look-up builds it; set and remove need it */
} khala_disk_vectors_t;

/** One answer of khala__disk_vectors_search. A view into the index: valid until it changes. */
typedef struct khala_disk_vhit {
    const uint8_t *key; /* the item's key */
    size_t klen;
    float similarity; /* cosine similarity to the query, -1..1 */
} khala_disk_vhit_t;

/**
 * @brief Start an empty index.
 * @param[out] vx the index, zeroed by the caller (or freed with khala__disk_vectors_free).
 * @param[in] seed hash seed (random: keys an outsider picks must not collide on purpose).
 */
void khala__disk_vectors_init(khala_disk_vectors_t *vx, uint64_t seed);

/** @brief Free everything; vx then holds no memory and no vectors (init it again to reuse). */
void khala__disk_vectors_free(khala_disk_vectors_t *vx);

/** @brief Remove every vector, keeping the seed and whether it is built: vx is empty and
 *         usable. */
void khala__disk_vectors_clear(khala_disk_vectors_t *vx);

/**
 * @brief Record that key now holds an item of @p type with @p len value bytes: when it is an
 *        embedding whose value is a usable vector, its normalised vector replaces the key's row
 *        (or is added); otherwise the key leaves the index.
 * @param[in] key 1..KHALA_KEY_MAX bytes.
 * @param[in] value the value's bytes; may be NULL when @p len is 0. No alignment needed.
 * @param[in] expire_ms the item's CLOCK_REALTIME expiry in ms, 0 = never.
 * @return 0 (also when the index is not built yet: nothing is done); -ENOMEM when the vector
 *         could not be stored: the key is then absent from the index (a look-up misses it; it
 *         never answers with an older vector) and vx->dropped counts it.
 * @note Called after a commit, where failure is not an option: the caller ignores the code.
 */
int khala__disk_vectors_set(khala_disk_vectors_t *vx, const void *key, size_t klen,
                            khala_type_t type, const void *value, size_t len, int64_t expire_ms);

/** @brief The key's item was removed (or is no embedding any more): it leaves the index, if it
 *         was there. */
void khala__disk_vectors_remove(khala_disk_vectors_t *vx, const void *key, size_t klen);

/**
 * @brief Check a query vector and normalise it.
 * @param[in] q @p dim floats (no alignment needed).
 * @param[out] unit @p dim floats: q / |q|; may be NULL (check only).
 * @param[out] why what is wrong, for a message ("component 3 is NaN"); may be NULL.
 * @param[in] whylen size of @p why.
 * @return 0; -EINVAL for dim 0 or over KHALA_DISK_VEC_DIM_MAX, a NaN or infinite component,
 *         or a zero vector (no direction).
 */
int khala__disk_vectors_normalise(const float *q, uint32_t dim, float *unit, char *why,
                                  size_t whylen);

/**
 * @brief The at most @p k live vectors of dimension @p dim whose cosine similarity to @p q is at
 *        least @p min_sim, most similar first (equal similarities: in key byte order).
 * @param[in] q the query, @p dim floats, checked with khala__disk_vectors_normalise.
 * @param[in] min_sim the threshold, -1..1.
 * @param[in] k 1..KHALA_DISK_VEC_K_MAX.
 * @param[in] now_rt CLOCK_REALTIME ms now: an expired row is never an answer.
 * @param[out] out room for @p k hits; views into the index.
 * @param[out] n how many hits were written.
 * @return 0; -EINVAL for a bad query (as khala__disk_vectors_normalise) or k out of range;
 *         -ENOMEM.
 */
int khala__disk_vectors_search(const khala_disk_vectors_t *vx, const float *q, uint32_t dim,
                               float min_sim, uint32_t k, int64_t now_rt, khala_disk_vhit_t *out,
                               uint32_t *n);

/**
 * @brief The disk tier's `similar` operation (tier.h): khala__disk_vectors_search over the
 *        store's index (built first, at the first call: one pass over the records), then each
 *        answer's item read from the store (value, version, TTL left).
 * @return 0; KHALA_EINVAL (message in t->err) for a bad query: dim 0 or over
 *         KHALA_DISK_VEC_DIM_MAX, a NaN or infinite component, a zero vector, k 0 or over
 *         KHALA_DISK_VEC_K_MAX, min_sim outside -1..1 or NaN; -ENOMEM; KHALA_ETIER or
 *         KHALA_ECORRUPT when the store cannot be read.
 * @note t is a disk tier (daemon/tier_disk.h). out[0 .. *n) belong to the caller
 *       (khala__tier_match_free each).
 */
int khala__disk_similar(khala_tier_t *t, const float *q, uint32_t dim, float min_sim, uint32_t k,
                        khala_tier_match_t *out, uint32_t *n);

#endif /* KHALA_DAEMON_TIER_DISK_VECTORS_H */
