/*
 * khalad's link index: which cached items (relationship items, usually of type
 * entity_relationship) are linked to which end entities, so that writing or invalidating an end
 * entity can remove every item linked to it (daemon/relationships.c runs that cascade, and the
 * background preload of relationships). This module is only the index: a persistent LMDB
 * environment in its own directory, with no knowledge of the levels.
 *
 *   rel  -> its ends         (a relationship re-put with other ends drops its old links)
 *   end  -> the rels linked to it
 *   age  -> rel, oldest first (what is evicted when the index is full)
 *
 * Start at khala__links_open() and khala__links_set().
 *
 * Bounded: at most max_links (end, rel) links. khala__links_set() that would go beyond refuses
 * with KHALA_EFULL and changes nothing; the caller removes the oldest relationship
 * (khala__links_oldest) from every level, drops it, and tries again.
 *
 * Every function is called from khalad's loop thread only (the handle is not thread-safe).
 * Every function that fails leaves a message naming the index's directory and the cause in
 * khala__links_errmsg().
 */
#ifndef KHALA_DAEMON_LINKS_H
#define KHALA_DAEMON_LINKS_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"

typedef struct khala_links khala_links_t;

/** Default bound of the index, in (end, rel) links: about 0.5 GB of disk at the largest keys. */
#define KHALA_LINKS_MAX_DEFAULT 1000000u

/** A list of keys the index copied out (so that the caller may change the index while it walks
 * them). Zero it before first use; free with khala__links_keys_free(). */
typedef struct khala_links_keys {
    uint8_t *buf;  /* n records of (1 length byte, that many key bytes) */
    size_t len;    /* bytes used in buf */
    size_t cap;    /* bytes allocated */
    size_t n;      /* keys held */
    size_t cursor; /* khala__links_keys_next()'s position in buf */
} khala_links_keys_t;

/**
 * @brief Append a copy of @p key (1..KHALA_KEY_MAX bytes) to @p k.
 * @return 0; -ENOMEM (k unchanged).
 */
int khala__links_keys_push(khala_links_keys_t *k, const void *key, size_t klen);

/** @brief Release what @p k holds; it becomes empty. Safe on an empty list. */
void khala__links_keys_free(khala_links_keys_t *k);

/**
 * @brief The next key of @p k, from the start after khala__links_keys_rewind().
 * @param[out] key the key (points into @p k). @param[out] klen its bytes.
 * @return 1 while there is one, 0 at the end.
 */
int khala__links_keys_next(khala_links_keys_t *k, const uint8_t **key, size_t *klen);

/** @brief Walk @p k from its first key again. */
void khala__links_keys_rewind(khala_links_keys_t *k);

/**
 * @brief Open (or create) the index in directory @p dir.
 * @param[in] dir the directory (made 0700 when absent); its data.mdb is checked first
 *            (daemon/lmdb_check.h).
 * @param[in] max_links the bound in (end, rel) links, 0 = KHALA_LINKS_MAX_DEFAULT.
 * @param[in] sync_every_ms 0: each change is fsync'd before it returns; N: changes reach the
 *            file (which survives a crash of khalad) at once and are fsync'd at most every N ms
 *            by khala__links_tick().
 * @param[out] out the handle.
 * @param[out] err the reason on failure, naming @p dir. @param[in] errlen bytes at @p err.
 * @return 0; KHALA_ECONFIG when @p dir holds something else than a link index (or a newer
 *         one); KHALA_ECORRUPT when its file is damaged; -ENOMEM; -errno.
 */
int khala__links_open(const char *dir, uint64_t max_links, uint32_t sync_every_ms,
                      khala_links_t **out, char *err, size_t errlen);

/** @brief Sync and close @p lx; NULL is ignored. */
void khala__links_close(khala_links_t *lx);

/** @brief The last failure's message (naming the directory and the cause). */
const char *khala__links_errmsg(const khala_links_t *lx);

/**
 * @brief Link @p rel to @p ends, replacing whatever it was linked to (n == 0 only drops).
 *        Duplicate ends count once. @p rel becomes the newest relationship (eviction order).
 * @param[in] rel the relationship's key, 1..KHALA_KEY_MAX bytes.
 * @param[in] ends the end entities' keys, each 1..KHALA_KEY_MAX bytes, none equal to @p rel.
 * @param[in] n how many, 0..KHALA_PROTO_ARRAY_MAX.
 * @return 0; KHALA_EFULL when the index would hold more than its bound (nothing changed);
 *         KHALA_EINVAL for a bad key or count; KHALA_ETIER when the disk refused the change
 *         (nothing changed); -ENOMEM.
 */
int khala__links_set(khala_links_t *lx, const void *rel, size_t rlen, const khala_bytes_t *ends,
                     size_t n);

/**
 * @brief Drop every link of @p rel (it is no longer cached). Nothing when it has none.
 * @return 0; KHALA_ETIER; -ENOMEM.
 */
int khala__links_drop(khala_links_t *lx, const void *rel, size_t rlen);

/**
 * @brief Append to @p out the relationships linked to the end @p end.
 * @return 0; KHALA_ETIER; -ENOMEM (out may then hold some of them).
 */
int khala__links_rels_of(khala_links_t *lx, const void *end, size_t elen, khala_links_keys_t *out);

/**
 * @brief Append to @p out the ends of @p rel (none when it has no links).
 * @return 0; KHALA_ETIER; -ENOMEM.
 */
int khala__links_ends_of(khala_links_t *lx, const void *rel, size_t rlen, khala_links_keys_t *out);

/**
 * @brief Append to @p out every end key starting with @p prefix (plen 0 = every end), each once.
 * @return 0; KHALA_ETIER; -ENOMEM.
 */
int khala__links_ends_with_prefix(khala_links_t *lx, const void *prefix, size_t plen,
                                  khala_links_keys_t *out);

/**
 * @brief Append to @p out every relationship key starting with @p prefix (plen 0 = all).
 * @return 0; KHALA_ETIER; -ENOMEM.
 */
int khala__links_rels_with_prefix(khala_links_t *lx, const void *prefix, size_t plen,
                                  khala_links_keys_t *out);

/**
 * @brief The oldest relationship (the least recently set).
 * @param[out] rel room for KHALA_KEY_MAX bytes. @param[out] rlen its bytes.
 * @return 0; KHALA_ENOTFOUND when the index is empty; KHALA_ETIER.
 */
int khala__links_oldest(khala_links_t *lx, uint8_t *rel, size_t *rlen);

/**
 * @brief Drop everything (every level was emptied).
 * @return 0; KHALA_ETIER.
 */
int khala__links_clear(khala_links_t *lx);

/** @brief How many relationships and (end, rel) links the index holds. */
void khala__links_count(khala_links_t *lx, uint64_t *rels, uint64_t *links);

/** @brief Periodic work: the fsync owed under sync_every_ms. @param[in] now_ms monotonic ms. */
void khala__links_tick(khala_links_t *lx, int64_t now_ms);

#endif /* KHALA_DAEMON_LINKS_H */
