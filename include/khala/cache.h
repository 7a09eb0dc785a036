/*
 * khala-cache client API: what a worker process links against.
 *
 * A worker opens a cache by name with khala_cache_open(). That attaches, read-only, to the
 * shared L1 segment that the cache's single writer (khalad) maintains. Reads never make a
 * system call and never take a lock: khala_cache_get() copies a value out into the caller's
 * buffer; khala_read_begin() / khala_cache_view() / khala_read_end() hand out zero-copy views
 * into the mapping. Everything about the segment's layout is private to the library; see
 * docs/segment.md for how it works.
 *
 * Start reading at khala_cache_open(). Errors follow include/khala/error.h: the return code is
 * the contract, and khala_cache_errmsg() has the detail for a human.
 */
#ifndef KHALA_CACHE_H
#define KHALA_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "khala/error.h"
#include "khala/stats.h"
#include "khala/version.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Longest key in bytes. Keys are binary-safe; the empty key is refused too. Bounded so that a
 * key always fits beside its item header in one allocation and a lookup compares at most this. */
#define KHALA_KEY_MAX 250

/** Default largest value in bytes (1 MiB); a segment may be configured with another limit. */
#define KHALA_VALUE_MAX_DEFAULT (1024u * 1024u)

/** Longest cache name in bytes. Names use [A-Za-z0-9_.-] and become part of /dev/shm paths. */
#define KHALA_NAME_MAX 64

/** An open cache. Opaque; one handle may be shared by the threads of one process. (Also
 * declared in stats.h; C11 allows the repetition.) */
typedef struct khala_cache khala_cache_t;

/** Options for khala_cache_open(). Always start from khala_cache_options_init(). */
typedef struct khala_cache_options {
    /** Reserved for flags; 0 today. */
    uint32_t flags;
} khala_cache_options_t;

/**
 * A zero-copy view of a value inside the shared segment.
 *
 * View rule: @c data is valid only until khala_read_end() ends the read section it was obtained
 * in. Never write to it: the mapping is read-only, so a write raises SIGSEGV. Never free it.
 * Never keep it past the end of the section. Keep sections short: an open section holds back
 * memory reclamation for every process attached to the cache.
 */
typedef struct khala_view {
    const void *data;    /**< first byte of the value; not NUL-terminated; see the view rule */
    size_t len;          /**< value length in bytes; 0 is a valid length */
    uint64_t version;    /**< the item's version; a newer put of the key has a larger one */
    int64_t ttl_left_ms; /**< milliseconds until expiry, or -1 when the item never expires */
    uint32_t type;       /**< the data type the writer tagged the item with */
} khala_view_t;

/**
 * @brief Fill @p opts with the defaults.
 * @param[out] opts options to initialize; must not be NULL.
 * @note Safe from any thread.
 */
KHALA_API void khala_cache_options_init(khala_cache_options_t *opts);

/**
 * @brief Attach to the cache called @p name.
 *
 * Maps the cache's data segment read-only and its readers segment read-write. Each thread that
 * reads takes a reader slot on its first read and gives it back when it exits or on close.
 *
 * @param[in] name cache name, 1 to KHALA_NAME_MAX bytes of [A-Za-z0-9_.-].
 * @param[in] opts options, or NULL for the defaults.
 * @param[out] out the new handle; set only on success.
 * @return 0 on success;
 *         KHALA_ENAME if the name is empty, too long or has other characters;
 *         -ENOENT if no writer has created the cache;
 *         KHALA_ELAYOUT if the segment has another layout version or is being replaced;
 *         KHALA_ECORRUPT if the segment is truncated or its header is inconsistent;
 *         -EACCES if the caller may not open the segment;
 *         -ENOMEM or another -errno if mapping fails.
 * @note Safe from any thread. Pair with khala_cache_close(). On failure the reason, with the
 *       offending value, is in khala_cache_errmsg(NULL) for the calling thread.
 */
KHALA_API KHALA_NODISCARD int khala_cache_open(const char *name, const khala_cache_options_t *opts,
                                               khala_cache_t **out);

/**
 * @brief Detach from the cache and free the handle.
 * @param[in] c handle from khala_cache_open(), or NULL (then nothing happens).
 * @note No thread may use @p c during or after the call, and no read section may be open.
 *       Reader slots the handle holds are released.
 */
KHALA_API void khala_cache_close(khala_cache_t *c);

/**
 * @brief Look up @p key and copy its value into @p buf.
 *
 * @param[in] c handle.
 * @param[in] key key bytes (binary-safe).
 * @param[in] klen key length, 1 to KHALA_KEY_MAX.
 * @param[out] buf destination, @p cap bytes; may be NULL when @p cap is 0.
 * @param[in] cap capacity of @p buf in bytes.
 * @param[out] len value length; set on success and on -ERANGE; may be NULL.
 * @return 0 on a hit;
 *         KHALA_ENOTFOUND if the key is absent or expired;
 *         -ERANGE if the value is longer than @p cap (its length is in @p len, @p buf untouched);
 *         KHALA_EKEY if @p klen is 0 or above KHALA_KEY_MAX;
 *         KHALA_ESECTION if the calling thread has a read section open on @p c;
 *         KHALA_ELAYOUT if the writer replaced the segment and reattaching failed;
 *         KHALA_ECORRUPT if the lookup met an offset outside the segment;
 *         KHALA_ENOREADER if every reader slot is taken;
 *         -ENOMEM or another -errno if claiming the thread's reader slot failed.
 * @note Safe from any thread. No system call and no lock on a hit (the first call of a thread
 *       claims its reader slot, which makes a few). Never returns an expired item.
 */
KHALA_API KHALA_NODISCARD int khala_cache_get(khala_cache_t *c, const void *key, size_t klen,
                                              void *buf, size_t cap, size_t *len);

/**
 * @brief Open a read section on this thread, in which khala_cache_view() hands out views.
 * @param[in] c handle.
 * @return 0 on success;
 *         KHALA_ESECTION if this thread already has a section open on @p c (no nesting);
 *         KHALA_ELAYOUT if the writer replaced the segment and reattaching failed;
 *         KHALA_ENOREADER if every reader slot is taken;
 *         -ENOMEM or another -errno if claiming the thread's reader slot failed.
 * @note Pair with khala_read_end() on the same thread. Memory ordering: every item that the
 *       writer published before the section began is visible inside it, and no item seen
 *       inside it is freed before khala_read_end(). Keep sections short: they hold back
 *       reclamation for every process.
 */
KHALA_API KHALA_NODISCARD int khala_read_begin(khala_cache_t *c);

/**
 * @brief Close the calling thread's read section; every view obtained in it becomes invalid.
 * @param[in] c handle with a section open on this thread; without one, nothing happens.
 * @note Memory ordering: release; the section's reads happen before the writer reuses memory.
 */
KHALA_API void khala_read_end(khala_cache_t *c);

/**
 * @brief Look up @p key and return a zero-copy view of its value.
 * @param[in] c handle with a read section open on this thread.
 * @param[in] key key bytes.
 * @param[in] klen key length, 1 to KHALA_KEY_MAX.
 * @param[out] view set on success only.
 * @return 0 on a hit; KHALA_ENOTFOUND if absent or expired; KHALA_EKEY for a bad key length;
 *         KHALA_ESECTION if no section is open on this thread; KHALA_ECORRUPT as for get.
 * @note Call inside a read section. The view follows the view rule on khala_view_t: valid until
 *       khala_read_end(), read-only, never freed.
 */
KHALA_API KHALA_NODISCARD int khala_cache_view(khala_cache_t *c, const void *key, size_t klen,
                                               khala_view_t *view);

/**
 * @brief Detail of the calling thread's last failure on @p c, naming the offending thing.
 * @param[in] c handle, or NULL for a failure of khala_cache_open() on this thread.
 * @return a NUL-terminated message, "" if there was no failure; valid until this thread's next
 *         call on @p c.
 * @note Safe from any thread; each thread sees only its own message.
 */
KHALA_API const char *khala_cache_errmsg(const khala_cache_t *c);

#ifdef __cplusplus
}
#endif

#endif /* KHALA_CACHE_H */
