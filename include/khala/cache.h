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
 * Everything else goes through khalad, the cache's coordinator, over its Unix socket: a get
 * that misses L1 asks it (khala_cache_get), khala_cache_get_or_load() adds single-flight
 * loading on a miss, and khala_cache_put(), khala_cache_delete(), khala_cache_touch() and the
 * invalidations write. Each thread of a worker has its own connection, opened on the first call
 * that needs it and reopened on its own after khalad restarts. While khalad is down, L1 reads
 * keep working; writes fail fast with KHALA_EDAEMON. docs/worker-example.md shows a worker.
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

/** Longest time to live in ms that a put, a touch or a load may ask for: 10 years, the same as
 * khalad's longest configured TTL (ttl_seconds). Above it the call fails with KHALA_EINVAL, in
 * the library before anything is sent and in khalad at the protocol boundary. Bounded so that a
 * deadline (now + TTL) always fits in 64 bits and every level (Redis included) accepts it. */
#define KHALA_TTL_MAX_MS (10ull * 365ull * 86400ull * 1000ull)

/** Default largest value in bytes (1 MiB); a segment may be configured with another limit. */
#define KHALA_VALUE_MAX_DEFAULT (1024u * 1024u)

/** Longest cache name in bytes. Names use [A-Za-z0-9_.-] and become part of /dev/shm paths. */
#define KHALA_NAME_MAX 64

/** Most answers of one semantic look-up (khala_cache_similar): each comes with its value. */
#define KHALA_SIMILAR_K_MAX 100u

/** Largest dimension of a semantic look-up's vector (64 Ki floats, a 256 KiB request): far past
 * every embedding model in use. */
#define KHALA_SIMILAR_DIM_MAX 65536u

/** An open cache. Opaque; one handle may be shared by the threads of one process. (Also
 * declared in stats.h; C11 allows the repetition.) */
typedef struct khala_cache khala_cache_t;

/** Default of khala_cache_options_t.timeout_ms: the longest wait for khalad, per request. */
#define KHALA_TIMEOUT_DEFAULT_MS 5000

/** After a failed attempt to reach khalad, a thread's calls fail fast with the same error for
 * this long before the next call tries again: a worker whose khalad is down does not spend a
 * connect(2) on every request. */
#define KHALA_RECONNECT_INTERVAL_MS 100

/** Options for khala_cache_open(). Always start from khala_cache_options_init(), then set the
 * fields that matter: fields may be added at the end in later versions, and the reserved space
 * keeps the struct's size until then. */
typedef struct khala_cache_options {
    /** Reserved for flags; 0 today. */
    uint32_t flags;
    /** Longest wait for khalad in milliseconds, per request (connect and hello included);
     * KHALA_TIMEOUT_DEFAULT_MS by default, and when 0; negative waits without limit. A
     * get_or_load waiting for another worker's load waits twice as long. */
    int timeout_ms;
    /** khalad's socket; NULL (the default) derives it from the name: /run/khala/NAME.sock as
     * root, else $XDG_RUNTIME_DIR/khala/NAME.sock, else /tmp/khala-UID/NAME.sock, the rule khalad
     * follows (docs/operating.md). Copied by khala_cache_open(). */
    const char *socket_path;
    /** Reserved; zeroed by khala_cache_options_init(). */
    void *reserved[6];
} khala_cache_options_t;

/**
 * The data types, X(NAME, id, "name"): the one list that makes khala_type_t, the names (the
 * protocol's, khalactl's, and khalad's [type.<name>] config sections) and KHALA_TYPE_COUNT.
 * The id is the wire id (protocol field "type"): never renumber one; append a new type with the
 * next id. An item carries one type; a type selects khalad's defaults (TTLs, levels, write mode;
 * docs/operating.md) and can be invalidated as a whole.
 */
#define KHALA_TYPE_LIST(X)                                                                         \
    X(MEMORY_ENTITY, 0, "memory_entity")                                                           \
    X(SEARCH_RESULT, 1, "search_result")                                                           \
    X(EMBEDDING, 2, "embedding")                                                                   \
    X(ENTITY_RELATIONSHIP, 3, "entity_relationship")                                               \
    X(AGENT_RESPONSE, 4, "agent_response")                                                         \
    X(VERIFICATION, 5, "verification")                                                             \
    X(SEARCH_INDEX, 6, "search_index")                                                             \
    X(CONSOLIDATION, 7, "consolidation")

/** The eight data types (KHALA_TYPE_LIST). The value is what khala_view_t.type holds. */
typedef enum khala_type {
#define KHALA_TYPE_ENUM_(NAME, id, name) KHALA_TYPE_##NAME = id,
    KHALA_TYPE_LIST(KHALA_TYPE_ENUM_)
#undef KHALA_TYPE_ENUM_
#define KHALA_TYPE_ONE_(NAME, id, name) +1
        KHALA_TYPE_COUNT = 0 KHALA_TYPE_LIST(KHALA_TYPE_ONE_) /**< number of types; not a type */
#undef KHALA_TYPE_ONE_
} khala_type_t;

/**
 * The write modes, X(NAME, value, "wire name", "config name"): the one list that makes
 * khala_mode_t, the protocol's names (field "mode"; DEFAULT is never sent, so it has none) and
 * the names khalad's configuration uses for write_mode. Never renumber a value.
 *   DEFAULT: the type's configured mode.
 *   THROUGH: the put returns after the lower levels accepted the write.
 *   BEHIND:  the put returns after L1 and the journal; the lower levels follow.
 */
#define KHALA_MODE_LIST(X)                                                                         \
    X(DEFAULT, 0, NULL, "default")                                                                 \
    X(THROUGH, 1, "through", "write_through")                                                      \
    X(BEHIND, 2, "behind", "write_behind")

/** Write mode of a put (KHALA_MODE_LIST); DEFAULT is the type's configured mode. */
typedef enum khala_mode {
#define KHALA_MODE_ENUM_(NAME, v, wire, conf) KHALA_MODE_##NAME = v,
    KHALA_MODE_LIST(KHALA_MODE_ENUM_)
#undef KHALA_MODE_ENUM_
} khala_mode_t;

/**
 * Levels, X(NAME, "wire name", stores): which level answered a get (khala_meta_t.level, protocol
 * field "lvl"), and, for the levels that store items (`stores` = 1: L1, L2, L3), the names
 * khalad's configuration uses in a type's `levels` list. The values are positions in the list,
 * starting at 1; the storage levels come first, in order, so that L<n> is n. Never renumber.
 *   LOADER: a loader answered, through single-flight (another worker's, or the caller's own).
 *   STALE:  a recently expired value, served because the source failed.
 */
#define KHALA_LEVEL_LIST(X)                                                                        \
    X(L1, "l1", 1)                                                                                 \
    X(L2, "l2", 1)                                                                                 \
    X(L3, "l3", 1)                                                                                 \
    X(LOADER, "loader", 0)                                                                         \
    X(STALE, "stale", 0)

/** Levels (KHALA_LEVEL_LIST); 0 is "none". */
typedef enum khala_level {
    KHALA_LEVEL_NONE = 0,
#define KHALA_LEVEL_ENUM_(NAME, name, stores) KHALA_LEVEL_##NAME,
    KHALA_LEVEL_LIST(KHALA_LEVEL_ENUM_)
#undef KHALA_LEVEL_ENUM_
        KHALA_LEVEL_COUNT /**< number of values, NONE included */
} khala_level_t;

/** Flags of khala_put_options_t.flags. */
enum {
    /** Compare-and-set: write only if the key is at expected_version now. */
    KHALA_PUT_CAS = 1u << 0
};

/** A key an item is linked to (khala_put_options_t.links). */
typedef struct khala_link {
    const void *key; /**< the end entity's key; not NUL-terminated */
    size_t klen;     /**< its length, 1 to KHALA_KEY_MAX bytes */
} khala_link_t;

/** Most links one put may carry (the protocol's array limit). */
#define KHALA_LINKS_MAX 1024u

/** Options of khala_cache_put(). Start from khala_put_options_init(). */
typedef struct khala_put_options {
    uint32_t flags;            /**< KHALA_PUT_* bits; 0 by default */
    khala_type_t type;         /**< the item's data type; KHALA_TYPE_MEMORY_ENTITY by default */
    uint64_t ttl_ms;           /**< time to live in ms; 0 (the default) = the type's default */
    uint64_t expected_version; /**< with KHALA_PUT_CAS: the version the key must have now, as
                                    returned by a put or seen in khala_view_t.version; 0 = the
                                    key must not exist. Ignored without the flag. */
    khala_mode_t mode;         /**< write mode; KHALA_MODE_DEFAULT by default */
    /** Relationship caching: the end entities this item (say, the cached answer of a
     * relationship query, type KHALA_TYPE_ENTITY_RELATIONSHIP) is linked to. A later put,
     * delete or invalidation of any of them deletes this item at every level, and with
     * [policies] preload_relationships, reading one of them into L1 from below preloads it.
     * A put with links replaces the item's earlier links; a put without keeps them. NULL (the
     * default) = no links; the keys are copied before the call returns. */
    const khala_link_t *links;
    size_t nlinks;     /**< entries of links, 0..KHALA_LINKS_MAX; 0 by default */
    void *reserved[2]; /**< reserved; zeroed by khala_put_options_init() (links and nlinks took
                            two of the four reserved words: the size is unchanged) */
} khala_put_options_t;

/**
 * A loader: fetches the value of a key from the source of truth (a database) on a miss.
 *
 * @param[in] arg the loader_arg given to khala_cache_get_or_load().
 * @param[in] key, klen the key that missed.
 * @param[out] buf where to write the value: the caller's buffer of khala_cache_get_or_load().
 * @param[in] cap its capacity in bytes.
 * @param[out] len the value's length; when it exceeds @p cap, return -ERANGE with the needed
 *             length here.
 * @return 0 when the value is in @p buf; -ERANGE (with @p len) when it does not fit;
 *         KHALA_ENOTFOUND when the source has no such key; any other negative code on failure.
 *         Every nonzero return is a failure, and khala_cache_get_or_load() returns it as is
 *         (a positive one as -EINVAL).
 * @note Called on the thread that called khala_cache_get_or_load(), without any lock of the
 *       library held; it may call the library itself (a different key). It owns nothing it is
 *       given past its return.
 */
typedef int (*khala_loader_fn)(void *arg, const void *key, size_t klen, void *buf, size_t cap,
                               size_t *len);

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
 * @brief Fill @p opts with the defaults: no flags, type KHALA_TYPE_MEMORY_ENTITY, the type's
 *        TTL, no compare-and-set, the type's write mode.
 * @param[out] opts options to initialize; must not be NULL.
 * @note Safe from any thread.
 */
KHALA_API void khala_put_options_init(khala_put_options_t *opts);

/**
 * @brief Attach to the cache called @p name.
 *
 * Maps the cache's data segment read-only and its readers segment read-write. Each thread that
 * reads takes a reader slot on its first read and gives it back when it exits or on close.
 * Does not connect to khalad, so it succeeds while khalad is down (as long as the segment
 * exists): each thread connects on its first call that needs khalad.
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
 *         -ENAMETOOLONG if the socket path (given or derived) does not fit a socket address;
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
 *       Reader slots the handle holds are released, and its connections to khalad closed.
 */
KHALA_API void khala_cache_close(khala_cache_t *c);

/**
 * @brief Look up @p key and copy its value into @p buf.
 *
 * L1 first; on an L1 miss, khalad is asked (its lower levels; it promotes what it finds into
 * L1). When khalad cannot be reached the miss is just a miss: KHALA_ENOTFOUND, with the reason
 * in khala_cache_errmsg(), so that reads keep working from L1 while khalad is down. While the
 * writer is replacing the segment (khalad restarting with new sizes) and the new one cannot be
 * attached yet, L1 counts as a miss too and khalad is asked.
 *
 * @param[in] c handle.
 * @param[in] key key bytes (binary-safe).
 * @param[in] klen key length, 1 to KHALA_KEY_MAX.
 * @param[out] buf destination, @p cap bytes; may be NULL when @p cap is 0.
 * @param[in] cap capacity of @p buf in bytes.
 * @param[out] len value length; set on success and on -ERANGE; may be NULL.
 * @return 0 on a hit;
 *         KHALA_ENOTFOUND if the key is absent or expired, in L1 and for khalad, or absent
 *         from L1 while khalad cannot be reached;
 *         -ERANGE if the value is longer than @p cap (its length is in @p len, @p buf untouched);
 *         KHALA_EKEY if @p klen is 0 or above KHALA_KEY_MAX;
 *         KHALA_ESECTION if the calling thread has a read section open on @p c;
 *         KHALA_ECORRUPT if the lookup met an offset outside the segment;
 *         KHALA_ENOREADER if every reader slot is taken;
 *         -ENOMEM or another -errno if claiming the thread's reader slot failed;
 *         another code khalad answered the miss with (-ENOMEM, KHALA_EPROTO...).
 * @note Safe from any thread. No system call and no lock on an L1 hit (the first call of a
 *       thread claims its reader slot, which makes a few); an L1 miss costs a round trip to
 *       khalad, at most timeout_ms. Never returns an expired item.
 */
KHALA_API KHALA_NODISCARD int khala_cache_get(khala_cache_t *c, const void *key, size_t klen,
                                              void *buf, size_t cap, size_t *len);

/*
 * Calls that go through khalad. Besides the codes listed on each, every one of them may return:
 *   KHALA_EDAEMON  khalad is unreachable: nothing listens on the socket, or the connection broke
 *                  during the call (then the request may or may not have been applied). For
 *                  KHALA_RECONNECT_INTERVAL_MS after a failed attempt to connect, the thread's
 *                  calls return the same error at once. khala_cache_errmsg() names the socket.
 *   -ETIMEDOUT     khalad did not answer within timeout_ms (the request may have been applied).
 *   KHALA_ENAME    the khalad at the socket serves another cache.
 *   KHALA_EPROTO   khalad speaks another protocol version, or sent a reply that does not decode.
 *   -ENOMEM        out of memory, here or in khalad.
 *   KHALA_EDENIED  khalad refused: this process lacks the right the call needs (read, write,
 *                  invalidate or admin, by its uid and groups; docs/security.md). The message
 *                  names the right and the key.
 *   -EPERM         the socket's directory is not safe to connect through (a symbolic link,
 *                  writable by others, or, for this user's default path, owned by another user
 *                  or writable by its group): nothing was sent; the message names it.
 *   -EACCES, other -errno  connecting to the socket failed otherwise.
 * On any failure the cache and the out-params are as they were (as far as this process can
 * tell: see KHALA_EDAEMON and -ETIMEDOUT). Each is safe from any thread: every thread has its own
 * connection, and a child process after fork() opens its own rather than use its parent's.
 */

/**
 * @brief Look up @p key like khala_cache_get(), and on a miss load it through @p loader,
 *        at most once across every worker missing the same key (single-flight).
 *
 * Steps: L1; then khalad, which tries its lower levels. On a miss there, khalad elects one
 * caller, the leader: its loader runs, the value is sent to khalad (which caches it with
 * @p type and @p ttl_ms and hands it to every other caller waiting on the key) and returned.
 * The others wait for the leader and get its value; their loaders never run. When the leader's
 * loader fails, khalad tells the waiters, and they ask again (one of them leads, at most three
 * rounds). When khalad cannot be reached, or lets a waiter wait too long, the loader runs
 * directly and its value is returned but not cached.
 *
 * @param[in] c handle.
 * @param[in] key, klen the key, 1 to KHALA_KEY_MAX bytes.
 * @param[in] loader the loader; must not be NULL.
 * @param[in] loader_arg passed to @p loader as is.
 * @param[out] buf destination, @p cap bytes; also the loader's buffer.
 * @param[in] cap capacity of @p buf.
 * @param[out] len value length; set on success and on -ERANGE; may be NULL.
 * @param[in] type the data type a loaded value is cached with.
 * @param[in] ttl_ms its time to live in ms, up to KHALA_TTL_MAX_MS; 0 = the type's default.
 * @return 0 with the value in @p buf, from the cache or the loader (a loaded value that khalad
 *         could not cache, too big say, is still returned);
 *         -ERANGE if the value is longer than @p cap (its length in @p len);
 *         KHALA_EKEY for a bad key length; KHALA_ESECTION, KHALA_ECORRUPT, KHALA_ENOREADER,
 *         -errno as for khala_cache_get();
 *         -EINVAL if @p loader is NULL or @p type is not a type;
 *         KHALA_EINVAL if @p ttl_ms is above KHALA_TTL_MAX_MS (before anything else happens);
 *         -EAGAIN if the leaders' loaders failed three times in a row;
 *         the loader's own nonzero code (KHALA_ENOTFOUND when the source has no such key) when
 *         it ran and failed.
 * @note The loader runs at most once per call, on the calling thread, and never when the call
 *       fails before it would. When it fails, @p buf may hold whatever it wrote. Unlike the
 *       calls below, a khalad that cannot be reached is not an error here.
 */
KHALA_API KHALA_NODISCARD int khala_cache_get_or_load(khala_cache_t *c, const void *key,
                                                      size_t klen, khala_loader_fn loader,
                                                      void *loader_arg, void *buf, size_t cap,
                                                      size_t *len, khala_type_t type,
                                                      uint64_t ttl_ms);

/**
 * @brief Write @p key = @p val through khalad, which stores it in L1 (and the lower levels per
 *        the write mode); every process then reads it from L1.
 * @param[in] c handle.
 * @param[in] key, klen the key, 1 to KHALA_KEY_MAX bytes.
 * @param[in] val, vlen the value; @p val may be NULL when @p vlen is 0.
 * @param[in] opts type, TTL, compare-and-set and write mode, or NULL for the defaults of
 *            khala_put_options_init().
 * @param[out] version the item's new version, for a later compare-and-set; may be NULL.
 * @return 0 when the write was accepted (a following khala_cache_get() on any thread of any
 *         process sees it or something newer);
 *         KHALA_EVERSION if KHALA_PUT_CAS is set and the key is not at expected_version;
 *         KHALA_EKEY for a bad key length;
 *         KHALA_ETOOBIG if @p vlen exceeds khalad's largest value;
 *         KHALA_EFULL if L1 is full of items nothing may evict;
 *         -EINVAL if the type or mode is out of range, or opts->nlinks is above
 *         KHALA_LINKS_MAX, or links is NULL while nlinks is not 0;
 *         KHALA_EKEY for a link of a bad length, or equal to @p key (nothing is sent);
 *         KHALA_ETIER when khalad cannot record the links (nothing is written);
 *         KHALA_EINVAL if opts->ttl_ms is above KHALA_TTL_MAX_MS (nothing is sent);
 *         KHALA_EREFUSED when a slower level written through refused this one write (its
 *         reason in khala_cache_errmsg(), e.g. Redis's out-of-memory reply; the level stays up
 *         for every other request, nothing is queued, and L1 holds no copy of the key);
 *         and the codes common to calls through khalad (above).
 */
KHALA_API KHALA_NODISCARD int khala_cache_put(khala_cache_t *c, const void *key, size_t klen,
                                              const void *val, size_t vlen,
                                              const khala_put_options_t *opts, uint64_t *version);

/**
 * @brief Delete @p key from every level.
 * @param[in] c handle.
 * @param[in] key, klen the key, 1 to KHALA_KEY_MAX bytes.
 * @return 0; KHALA_ENOTFOUND if no level held the key; KHALA_EKEY for a bad key length; and the
 *         codes common to calls through khalad (above).
 * @note A load of the key in flight when the delete arrives is not cached (its waiters still
 *       get its value).
 */
KHALA_API KHALA_NODISCARD int khala_cache_delete(khala_cache_t *c, const void *key, size_t klen);

/**
 * @brief Drop every key that starts with @p prefix, from every level.
 * @param[in] c handle.
 * @param[in] prefix, plen the prefix, 1 to KHALA_KEY_MAX bytes.
 * @param[out] count how many keys were dropped; may be NULL.
 * @return 0 (also when nothing matched); KHALA_EKEY for a bad prefix length; and the codes
 *         common to calls through khalad (above).
 * @note Returns once no level holds a matching key: with Redis as L2, after khalad's
 *       step-by-step removal there, which takes time in proportion to the whole Redis namespace
 *       (khalad serves other requests meanwhile; docs/tiers.md). @p count is L1's.
 */
KHALA_API KHALA_NODISCARD int khala_cache_invalidate_prefix(khala_cache_t *c, const void *prefix,
                                                            size_t plen, uint64_t *count);

/**
 * @brief Drop every key of data type @p type, from every level.
 * @param[in] c handle.
 * @param[in] type the type.
 * @param[out] count how many keys were dropped; may be NULL.
 * @return 0 (also when nothing matched); -EINVAL if @p type is not a type; and the codes common
 *         to calls through khalad (above).
 * @note Returns once no level holds a key of the type, as khala_cache_invalidate_prefix().
 */
KHALA_API KHALA_NODISCARD int khala_cache_invalidate_type(khala_cache_t *c, khala_type_t type,
                                                          uint64_t *count);

/**
 * @brief Restart @p key's time to live.
 * @param[in] c handle.
 * @param[in] key, klen the key, 1 to KHALA_KEY_MAX bytes.
 * @param[in] ttl_ms the new time to live in ms, up to KHALA_TTL_MAX_MS; 0 = its type's default.
 * @return 0; KHALA_ENOTFOUND if the key is absent or expired; KHALA_EKEY for a bad key length;
 *         KHALA_EINVAL if @p ttl_ms is above KHALA_TTL_MAX_MS (nothing is sent);
 *         KHALA_EFULL as for khala_cache_put(); and the codes common to calls through khalad
 *         (above).
 * @note The item keeps its version: the value did not change, so a compare-and-set against
 *       the version seen before the touch still succeeds.
 */
KHALA_API KHALA_NODISCARD int khala_cache_touch(khala_cache_t *c, const void *key, size_t klen,
                                                uint64_t ttl_ms);

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
 * @note In a child of fork() called inside a section, the section belongs to the parent: this
 *       call forgets it in the child and leaves the parent's section open.
 */
KHALA_API void khala_read_end(khala_cache_t *c);

/**
 * @brief Look up @p key and return a zero-copy view of its value.
 * @param[in] c handle with a read section open on this thread.
 * @param[in] key key bytes.
 * @param[in] klen key length, 1 to KHALA_KEY_MAX.
 * @param[out] view set on success only.
 * @return 0 on a hit; KHALA_ENOTFOUND if absent or expired; KHALA_EKEY for a bad key length;
 *         KHALA_ESECTION if no section is open on this thread, or if the section was opened by
 *         the parent process before fork(); KHALA_ECORRUPT as for get.
 * @note Call inside a read section. The view follows the view rule on khala_view_t: valid until
 *       khala_read_end(), read-only, never freed.
 */
KHALA_API KHALA_NODISCARD int khala_cache_view(khala_cache_t *c, const void *key, size_t klen,
                                               khala_view_t *view);

/*
 * The split get, for callers that must run the L1 part and the khalad part under different
 * conditions (a language binding holds its interpreter lock on L1 and releases it around
 * khalad): khala_cache_get_l1() never leaves the process, khala_cache_fetch() and
 * khala_cache_fetch_or_load() only ask khalad. Their values have sizes unknown in advance, so
 * they are handed to a sink, once, instead of a buffer: one round trip whatever the size.
 */

/** What the level that answered says about a value. */
typedef struct khala_meta {
    khala_level_t level; /**< the level that answered (KHALA_LEVEL_LOADER for a load) */
    uint64_t version;    /**< the item's version; 0 when unknown (a value loaded but not cached) */
    int64_t ttl_left_ms; /**< milliseconds until expiry; -1 = never expires, or unknown */
    uint32_t type;       /**< the item's data type (khala_type_t) */
} khala_meta_t;

/**
 * A sink: receives the value of khala_cache_fetch() or khala_cache_fetch_or_load().
 * @param[in] arg the sink_arg given to the call.
 * @param[in] val, len the value; valid only during the call (copy what you keep).
 * @param[in] meta where it came from; valid only during the call.
 * @return 0, or a negative code that the call then returns as is (say -ENOMEM).
 * @note Called at most once per call, on the calling thread, with no lock of the library held.
 */
typedef int (*khala_sink_fn)(void *arg, const void *val, size_t len, const khala_meta_t *meta);

/**
 * A loader that hands out its value instead of writing it into a buffer (compare
 * khala_loader_fn), so that a value of any size is loaded once.
 * @param[in] arg the loader_arg given to khala_cache_fetch_or_load().
 * @param[in] key, klen the key that missed.
 * @param[out] val, len the loaded value. The memory stays the loader's; it must stay valid and
 *             unchanged until khala_cache_fetch_or_load() returns.
 * @return 0 with the value; KHALA_ENOTFOUND when the source has no such key; any other negative
 *         code on failure (a positive one counts as -EINVAL).
 * @note Called on the calling thread, without any lock of the library held.
 */
typedef int (*khala_load_ref_fn)(void *arg, const void *key, size_t klen, const void **val,
                                 size_t *len);

/**
 * @brief Look up @p key in L1 only, and copy its value into @p buf: khala_cache_get() without
 *        the fallback to khalad.
 * @param[in] c handle.
 * @param[in] key, klen the key, 1 to KHALA_KEY_MAX bytes.
 * @param[out] buf destination, @p cap bytes; may be NULL when @p cap is 0.
 * @param[in] cap capacity of @p buf in bytes.
 * @param[out] len value length; set on success and on -ERANGE; may be NULL.
 * @param[out] meta on a hit (and on -ERANGE), the item's version, TTL left and type, with level
 *             KHALA_LEVEL_L1; may be NULL (the TTL then costs no clock read).
 * @return 0 on a hit;
 *         KHALA_ENOTFOUND if L1 holds no live item of the key, or cannot be read right now (the
 *         writer is replacing the segment);
 *         -ERANGE if the value is longer than @p cap (its length in @p len, @p buf untouched);
 *         KHALA_EKEY, KHALA_ESECTION, KHALA_ECORRUPT, KHALA_ENOREADER, -errno as for
 *         khala_cache_get().
 * @note Safe from any thread. Never blocks and never makes a system call once the thread has
 *       its reader slot (its first call claims one). Counts a hit or a miss as a get does.
 */
KHALA_API KHALA_NODISCARD int khala_cache_get_l1(khala_cache_t *c, const void *key, size_t klen,
                                                 void *buf, size_t cap, size_t *len,
                                                 khala_meta_t *meta);

/**
 * @brief Ask khalad, and only khalad, for @p key (L1 is not read here): the miss half of
 *        khala_cache_get(), with the answering level's metadata and a value of any size.
 * @param[in] c handle.
 * @param[in] key, klen the key, 1 to KHALA_KEY_MAX bytes.
 * @param[in] sink receives the value and its khala_meta_t once, on a hit; must not be NULL.
 * @param[in] sink_arg passed to @p sink as is.
 * @return 0 after @p sink received the value and returned 0;
 *         KHALA_ENOTFOUND if no level of khalad holds the key;
 *         KHALA_EKEY for a bad key length; -EINVAL if @p sink is NULL;
 *         the sink's own negative code;
 *         and the codes common to calls through khalad (above): unlike khala_cache_get(), a
 *         khalad that cannot be reached is KHALA_EDAEMON here, not a miss.
 * @note khalad promotes what it finds below L1 into L1, as for a get.
 */
KHALA_API KHALA_NODISCARD int khala_cache_fetch(khala_cache_t *c, const void *key, size_t klen,
                                                khala_sink_fn sink, void *sink_arg);

/**
 * @brief Read @p key from the archive of khalad's levels below L1: the copy a level evicted for
 *        space (not for expiry) and keeps for its retention ([l3] archive_retention_seconds).
 *        Not the current value: the cache dropped it, and the source may have changed since.
 * @param[in] c handle.
 * @param[in] key, klen the key, 1 to KHALA_KEY_MAX bytes.
 * @param[in] sink receives the archived value once, with meta.level the level whose archive
 *            held it (KHALA_LEVEL_L2 or KHALA_LEVEL_L3), its version and type, and ttl_left_ms
 *            the time its retention has left; must not be NULL.
 * @param[in] sink_arg passed to @p sink as is.
 * @return 0 after @p sink received the value and returned 0;
 *         KHALA_ENOTFOUND if no level's archive holds the key (deleted and invalidated keys
 *         leave no archived copy; a level without an archive holds none);
 *         KHALA_ETIER if a level that keeps an archive is down and no other held the key;
 *         KHALA_EKEY for a bad key length; -EINVAL if @p sink is NULL;
 *         the sink's own negative code;
 *         and the codes common to calls through khalad (above), KHALA_EDAEMON included.
 * @note Changes nothing: the copy is neither promoted nor counted as a read. Safe from any
 *       thread. A khalad older than this library ignores the request's "archive" field and
 *       answers a plain get; check meta.level is not KHALA_LEVEL_L1 if that matters.
 */
KHALA_API KHALA_NODISCARD int khala_cache_get_archive(khala_cache_t *c, const void *key,
                                                      size_t klen, khala_sink_fn sink,
                                                      void *sink_arg);

/**
 * @brief The khalad half of khala_cache_get_or_load() (steps 2 to 5 there; L1 is not read),
 *        with a loader that hands out values of any size and a sink that receives the result.
 *
 * As khala_cache_get_or_load(): khalad's levels; on a miss there one caller across every worker
 * leads and runs its loader, whose value khalad caches with @p type and @p ttl_ms and hands to
 * the callers waiting on the key; a failed load makes the waiters ask again (at most three
 * rounds); when khalad cannot be reached, or a wait times out, the loader runs directly and its
 * value is not cached.
 *
 * @param[in] c handle.
 * @param[in] key, klen the key, 1 to KHALA_KEY_MAX bytes.
 * @param[in] loader the loader; must not be NULL.
 * @param[in] loader_arg passed to @p loader as is.
 * @param[in] sink receives the value once, on success; must not be NULL. Its meta.level is
 *            KHALA_LEVEL_LOADER for a value this call's loader produced (version 0 when it was
 *            not cached), else the level khalad answered from.
 * @param[in] sink_arg passed to @p sink as is.
 * @param[in] type the data type a loaded value is cached with.
 * @param[in] ttl_ms its time to live in ms, up to KHALA_TTL_MAX_MS; 0 = the type's default.
 * @return 0 after @p sink received the value and returned 0;
 *         KHALA_EKEY for a bad key length;
 *         -EINVAL if @p loader or @p sink is NULL or @p type is not a type;
 *         KHALA_EINVAL if @p ttl_ms is above KHALA_TTL_MAX_MS (before anything else happens);
 *         -EAGAIN if the leaders' loaders failed three times in a row;
 *         the loader's own nonzero code (KHALA_ENOTFOUND when the source has no such key), after
 *         khalad was told that the load failed (its waiters then ask again);
 *         the sink's own negative code;
 *         another code khalad answered with. A khalad that cannot be reached is not an error.
 * @note The loader runs at most once per call, on the calling thread. A value khalad could not
 *       cache (too big, say) is still handed to the sink.
 */
KHALA_API KHALA_NODISCARD int khala_cache_fetch_or_load(khala_cache_t *c, const void *key,
                                                        size_t klen, khala_load_ref_fn loader,
                                                        void *loader_arg, khala_sink_fn sink,
                                                        void *sink_arg, khala_type_t type,
                                                        uint64_t ttl_ms);

/**
 * @brief Promote @p n keys from the levels below L1 into L1, ahead of their first reads.
 * @param[in] c handle.
 * @param[in] keys, klens the keys and their lengths, each 1 to KHALA_KEY_MAX bytes.
 * @param[in] n how many; sent in requests of at most 1024 keys.
 * @param[out] count how many of them are in L1 now; may be NULL.
 * @return 0 (keys no level holds are skipped); KHALA_EKEY if a key's length is bad (nothing is
 *         sent); and the codes common to calls through khalad (above). After a failure part
 *         of the keys may have been warmed.
 */
KHALA_API KHALA_NODISCARD int khala_cache_warm(khala_cache_t *c, const void *const *keys,
                                               const size_t *klens, size_t n, uint64_t *count);

/**
 * @brief Promote every key that starts with @p prefix from L2 into L1 (khalad scans L2 a page
 *        per request; this call asks until the scan is complete).
 * @param[in] c handle.
 * @param[in] prefix, plen the prefix, 1 to KHALA_KEY_MAX bytes.
 * @param[out] count how many keys were warmed; may be NULL.
 * @return 0; KHALA_EKEY for a bad prefix length; and the codes common to calls through khalad.
 * @note L1 holds what fits: warming more than L1 can hold evicts by khalad's policy.
 */
KHALA_API KHALA_NODISCARD int khala_cache_warm_prefix(khala_cache_t *c, const void *prefix,
                                                      size_t plen, uint64_t *count);

/**
 * @brief Promote every key of data type @p type from L2 into L1, as khala_cache_warm_prefix().
 * @param[in] c handle.
 * @param[in] type the type.
 * @param[out] count how many keys were warmed; may be NULL.
 * @return 0; -EINVAL if @p type is not a type; and the codes common to calls through khalad.
 */
KHALA_API KHALA_NODISCARD int khala_cache_warm_type(khala_cache_t *c, khala_type_t type,
                                                    uint64_t *count);

/* Semantic look-ups (issue 12) ------------------------------------------------------------ */

/** Options of khala_cache_similar(). Initialize with khala_similar_options_init(). */
typedef struct khala_similar_options {
    uint32_t k;           /**< most matches wanted, 1..KHALA_SIMILAR_K_MAX; default 1 */
    float min_similarity; /**< least cosine similarity of a match, -1..1; NAN (the default) =
                               khalad's [l3] similarity_threshold */
} khala_similar_options_t;

/** One answer of khala_cache_similar(): an embedding item near the query. */
typedef struct khala_match {
    const void *key;   /**< the item's key (klen bytes, not NUL-terminated) */
    size_t klen;       /**< 1..KHALA_KEY_MAX */
    float similarity;  /**< cosine similarity to the query, -1..1 */
    const void *value; /**< the item's value: its little-endian float32 vector */
    size_t len;        /**< bytes of value (4 x the dimension) */
    khala_meta_t meta; /**< level (the one that answered), version, time left, type */
} khala_match_t;

/** @brief Fill @p opts with the defaults: k 1, min_similarity NAN (khalad's threshold). */
KHALA_API void khala_similar_options_init(khala_similar_options_t *opts);

/**
 * @brief Find the cached embedding items nearest to a vector: at most opts->k items of type
 *        KHALA_TYPE_EMBEDDING, of the same dimension, whose cosine similarity to @p vec is at
 *        least the threshold, most similar first (semantic deduplication: "is something like
 *        this cached already?").
 *
 * khalad asks the slowest level below L1 that holds embeddings and answers look-ups by vector
 * (L3, else L2: the disk store or SurrealDB; Redis does not), the next one only when it is down. An embedding item's value
 * is its vector of little-endian float32 components; an item whose value is not one (a length
 * not a multiple of 4, a zero vector) is never a match. L1 is not searched and no match is
 * promoted into it.
 *
 * @param[in] c handle.
 * @param[in] vec the query, @p dim floats (host order; sent little-endian). Any length: only its
 *            direction counts.
 * @param[in] dim 1..KHALA_SIMILAR_DIM_MAX.
 * @param[in] opts the options; NULL for the defaults.
 * @param[out] out the matches, most similar first; one block the caller owns, freed with
 *             khala_matches_free(); NULL when none. Set on success only.
 * @param[out] n how many matches (0 when none reaches the threshold). Set on success only.
 * @return 0;
 *         KHALA_EINVAL for a bad query (dim 0 or over KHALA_SIMILAR_DIM_MAX, a NaN or infinite
 *         component, a zero vector), opts->k 0 or over KHALA_SIMILAR_K_MAX, or
 *         opts->min_similarity outside -1..1 (checked here, before anything is sent);
 *         -ENOTSUP when no level of khalad answers look-ups by vector, or the one that would
 *         holds the embedding type encrypted (it cannot search ciphertext);
 *         KHALA_ETIER when every level that would answer is down;
 *         KHALA_EDENIED is never returned: the matches are those the caller may read;
 *         -ENOMEM; and the codes common to calls through khalad (above).
 * @note Safe from any thread. khalad returns fewer than k matches when their values would not
 *       fit one reply frame.
 */
KHALA_API KHALA_NODISCARD int khala_cache_similar(khala_cache_t *c, const float *vec, uint32_t dim,
                                                  const khala_similar_options_t *opts,
                                                  khala_match_t **out, size_t *n);

/**
 * @brief Free what khala_cache_similar() returned.
 * @param[in] matches its @p out, or NULL (then nothing happens).
 */
KHALA_API void khala_matches_free(khala_match_t *matches);

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
