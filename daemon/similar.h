/*
 * Semantic look-ups in khalad (op "similar", issue 12): check a query vector, then ask the
 * levels below L1 that answer look-ups by vector (a driver whose ops->similar is set: the disk
 * store, SurrealDB) for the embedding items nearest to it.
 *
 * Which level answers: the slowest level that the embedding type lives on ([type.embedding]
 * levels) and whose driver has similar, because L3 is the level the design gives semantic
 * look-ups (it holds the most embeddings, for longest); when it is down, the next one (L2). Its
 * answer, even an empty one, is the answer (daemon/similar.c, step 3, says why). L1 is never
 * searched: it holds a subset of the levels below.
 *
 * A match is never a key that is gone for other reads: an invalidation in progress covers it,
 * or a write still queued for the level (write-behind, or an outage) deletes or replaces it.
 *
 * Start at khala__similar_ask(). Called from khalad's loop thread only.
 */
#ifndef KHALA_DAEMON_SIMILAR_H
#define KHALA_DAEMON_SIMILAR_H

#include <stddef.h>
#include <stdint.h>

#include "tier.h"

typedef struct khalad khalad_t;

/**
 * @brief Decode and check a query vector from the wire (little-endian float32).
 * @param[in] v the bytes. @param[in] len their number.
 * @param[out] q room for len / 4 floats; the decoded components (written only on success).
 * @param[out] dim their number.
 * @param[out] why what is wrong, naming it; may be NULL. @param[in] whylen its size.
 * @return 0; KHALA_EINVAL for an empty vector, a length that is not a multiple of 4, more than
 *         KHALA_SIMILAR_DIM_MAX components, a NaN or infinite component, or a zero vector.
 */
int khala__similar_query(const void *v, size_t len, float *q, uint32_t *dim, char *why,
                         size_t whylen);

/**
 * @brief Parse [l3] similarity_threshold ("0".."1", a decimal).
 * @return the threshold; 0.9 (the default) when the text is not a number in -1..1 (config.c
 *         refuses that at start, so it does not happen in a running khalad).
 */
float khala__similar_threshold(const char *text);

/**
 * @brief Ask the levels below L1 (see the top of this file) for the at most @p k embedding
 *        items whose cosine similarity to @p q is at least @p min_sim, most similar first.
 * @param[in,out] d khalad.
 * @param[in] q, dim the query, checked by khala__similar_query().
 * @param[in] min_sim -1..1. @param[in] k 1..KHALA_SIMILAR_K_MAX.
 * @param[out] out room for @p k matches; out[0 .. *n) belong to the caller
 *             (khala__tier_match_free each).
 * @param[out] n how many. @param[out] lvl the level that answered.
 * @return 0 (possibly with *n == 0: no match above the threshold);
 *         -ENOTSUP when no level below L1 that the embedding type lives on answers look-ups by
 *         vector (Redis does not), message in d->errmsg;
 *         KHALA_ETIER when every level that would answer is down or failed (d->errmsg names it);
 *         KHALA_EINVAL when a level refused the query (d->errmsg: the level's reason);
 *         -ENOTSUP also when the level that would answer holds the embedding type encrypted
 *         (daemon/tier_crypt.c: it holds ciphertext, which it cannot search; d->errmsg says
 *         so); -ENOMEM.
 */
int khala__similar_ask(khalad_t *d, const float *q, uint32_t dim, float min_sim, uint32_t k,
                       khala_tier_match_t *out, uint32_t *n, khala_level_t *lvl);

#endif /* KHALA_DAEMON_SIMILAR_H */
