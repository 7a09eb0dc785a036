/*
 * khalad's configuration: the INI file format, its parser, the defaults, the validation and the
 * command-line overrides (`--set section.key=value`). docs/operating.md describes every key for
 * operators; this header is the reference for code.
 *
 * Start at khala__config_defaults(), then khala__config_load() (a file and the overrides, then
 * one check of the whole), khala__config_load_file() and khala__config_set(). Each load or set
 * either succeeds as a whole or leaves the configuration exactly as it was, with a message
 * naming the file, the line, the section and the key:
 *
 *     khalad.conf:12: [l1] max_memory_mb: 'lots' is not a number
 *
 * Configuration means what it says: a key that is read but has no effect yet (stale serving,
 * negative caching, quotas...) is refused at any value but its default, whose value
 * says what khalad does, and the message says so. The seed's own names ([l1_cache], coherence =
 * immediate) are accepted as aliases of ours.
 *
 * A khala_config_t is a plain value: no pointers, no allocations, copy it with `=`. Values that
 * follow from others (the socket and store paths follow [cache] name, [l1] max_items follows
 * max_memory_mb, a type's TTL may follow its level's) are stored as "unset" and resolved by the
 * accessors below, so an override of the name or the memory moves them too.
 *
 * Not thread-safe: load and set while no other thread uses inih (khalad does it at start-up).
 */
#ifndef KHALA_DAEMON_CONFIG_H
#define KHALA_DAEMON_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "khala/cache.h"
#include "proto.h"
#include "segment.h"

/** The data types (KHALA_TYPE_LIST in khala/cache.h): their ids index khala_config_t.types, and
 * their names make the [type.<name>] sections. */
#define KHALA_CONFIG_NTYPES KHALA_TYPE_COUNT

/** Longest line of a config file, in bytes, line end excluded. Every value written by
 * khala__config_dump() fits in it. */
#define KHALA_CONFIG_LINE_MAX 1024

/** Largest config file in bytes; a config is a few kilobytes, a larger file is a mistake. */
#define KHALA_CONFIG_FILE_MAX (1024 * 1024)

/** Buffer sizes (NUL included) of the string settings. Paths and URLs stay well under
 * KHALA_CONFIG_LINE_MAX so that a dumped line always reloads. */
#define KHALA_CONFIG_PATH_MAX 512
#define KHALA_CONFIG_URL_MAX 512
#define KHALA_CONFIG_IDENT_MAX 65 /* SurrealDB table, namespace, database: 64 bytes */
#define KHALA_CONFIG_GROUP_MAX 33 /* a group name (32 bytes, as useradd allows) or a gid */

/** Longest Unix socket path: sizeof(sockaddr_un.sun_path) minus the NUL. */
#define KHALA_CONFIG_SOCKET_PATH_MAX 107

/** [access]: room for the rule lines, kept '\n'-separated (daemon/acl.h says what a rule is). */
#define KHALA_CONFIG_ACCESS_RULES_BYTES 8192
/** [audit] read_sample_rate: a decimal from 0 to 1, at most this many bytes. */
#define KHALA_CONFIG_RATE_MAX 16

/** Longest TTL anywhere, in seconds (10 years): larger values are typos, and it fits 32 bits. */
#define KHALA_CONFIG_TTL_MAX (10u * 365u * 86400u)

/** [l1] max_memory_mb limit: 32 GiB keeps the largest segment (with KHALA_CONFIG_L1_ITEMS_MAX
 * items) under the segment's 64 GiB addressing limit (layout.h, KHALA_SEG_MAX_SIZE). */
#define KHALA_CONFIG_L1_MEMORY_MB_MAX 32768u
/** [l1] max_items limits; see above for the upper one. */
#define KHALA_CONFIG_L1_ITEMS_MIN 16u
#define KHALA_CONFIG_L1_ITEMS_MAX (1u << 26)
/** Bytes of memory per item when max_items is derived ("auto"): a 512-byte average item,
 * below the typical memory entity, so that items run out after bytes only for small values. */
#define KHALA_CONFIG_L1_BYTES_PER_ITEM 512u
/** [l1] max_value_bytes limit: the segment's (256 MiB). */
#define KHALA_CONFIG_L1_VALUE_MAX (256u * 1024u * 1024u)
/** [l1] max_readers limit: the segment's. */
#define KHALA_CONFIG_L1_READERS_MAX 65536u

/** [l2] pool_size and queue_max limits. */
#define KHALA_CONFIG_L2_POOL_MAX 64u
#define KHALA_CONFIG_L2_QUEUE_MAX 10000000u

/** [server] max_connections limit: beyond it the descriptors alone would not fit a sane
 * RLIMIT_NOFILE. */
#define KHALA_CONFIG_SERVER_CONNS_MAX 1000000u
/** [server] max_output_bytes lower limit: one ordinary reply must fit without pausing. */
#define KHALA_CONFIG_SERVER_OUTPUT_MIN (64u * 1024u)
/** [server] max_buffer_bytes lower limit; it must also hold one frame (checked with [l1]). */
#define KHALA_CONFIG_SERVER_BUFFER_MIN (1024u * 1024u)
/** Bytes of a frame beyond its value: the key (KHALA_KEY_MAX) and the other fields, with room to
 * spare; the same room KHALA_FRAME_MAX_CEILING keeps above the largest value. */
#define KHALA_CONFIG_FRAME_ROOM (64u * 1024u)

/** Redis database numbers accepted in redis_url. */
#define KHALA_CONFIG_REDIS_DB_MAX 65535u

/** Levels a type lives on (khala_config_type_t.levels): the storage levels of
 * KHALA_LEVEL_LIST (lib/proto.h), as KHALA_LEVEL_BIT bits; their names are the level names. */
enum {
    KHALA_CONFIG_LEVEL_L1 = KHALA_LEVEL_BIT(KHALA_LEVEL_L1),
    KHALA_CONFIG_LEVEL_L2 = KHALA_LEVEL_BIT(KHALA_LEVEL_L2),
    KHALA_CONFIG_LEVEL_L3 = KHALA_LEVEL_BIT(KHALA_LEVEL_L3),
};

/** [l1] eviction_policy. Both names run S3-FIFO: exact LRU writes on every hit, which L1 rules
 * out (DESIGN.md "Eviction and expiry"). "lru" is kept, and dumped back, so that the seed's
 * configs load (the seed asks for LRU: docs/operating.md, "The seed's configuration"). */
typedef enum khala_config_eviction {
    KHALA_CONFIG_EVICT_S3FIFO = 0,
    KHALA_CONFIG_EVICT_LRU = 1, /* an alias of S3FIFO */
} khala_config_eviction_t;

/** [l2] backend. */
typedef enum khala_config_l2_backend {
    KHALA_CONFIG_L2_DISK = 0,
    KHALA_CONFIG_L2_REDIS = 1,
} khala_config_l2_backend_t;

/** [l3] backend. */
typedef enum khala_config_l3_backend {
    KHALA_CONFIG_L3_DISK = 0,
    KHALA_CONFIG_L3_SURREALDB = 1,
} khala_config_l3_backend_t;

/** Write modes: KHALA_MODE_LIST (khala/cache.h) with its config names ("write_through"), value
 * for value. DEFAULT is for [type.*] only: the type follows [policies] write_mode. */
typedef enum khala_config_write_mode {
#define KHALA_CONFIG_WRITE_ENUM_(NAME, v, wire, conf) KHALA_CONFIG_WRITE_##NAME = KHALA_MODE_##NAME,
    KHALA_MODE_LIST(KHALA_CONFIG_WRITE_ENUM_)
#undef KHALA_CONFIG_WRITE_ENUM_
} khala_config_write_mode_t;

/** [policies] coherence. PUBSUB needs [l2] backend = redis (it is Redis pub/sub). */
typedef enum khala_config_coherence {
    KHALA_CONFIG_COHERENCE_NONE = 0,
    KHALA_CONFIG_COHERENCE_PUBSUB = 1,
} khala_config_coherence_t;

/** One [type.<name>] section. */
typedef struct khala_config_type {
    uint32_t levels;                      /* KHALA_CONFIG_LEVEL_* bits; never 0 */
    uint32_t l1_ttl_seconds;              /* 0 = [l1] ttl_seconds; else 1..KHALA_CONFIG_TTL_MAX */
    uint32_t l2_ttl_seconds;              /* 0 = [l2] ttl_seconds */
    uint32_t l3_ttl_seconds;              /* 0 = [l3] ttl_seconds */
    khala_config_write_mode_t write_mode; /* DEFAULT = [policies] write_mode */
    uint32_t quota_pct;                   /* share of L1 bytes, 0..100; 0 = no quota */
    bool encrypt; /* values sealed below L1 (L2, L3, journal): needs [crypto] key_file */
} khala_config_type_t;

/** The whole configuration. Field names are the keys' names; units are in them or noted. */
typedef struct khala_config {
    struct {
        char name[KHALA_NAME_MAX + 1];             /* [A-Za-z0-9_.-], 1..KHALA_NAME_MAX bytes */
        char socket[KHALA_CONFIG_PATH_MAX];        /* absolute; "" = derived from name */
        uint32_t socket_mode;                      /* permission bits, 0..0777 */
        char socket_group[KHALA_CONFIG_GROUP_MAX]; /* group name or gid; "" = khalad's group */
    } cache;
    struct {
        uint32_t max_memory_mb;   /* item arena, MiB, 1..KHALA_CONFIG_L1_MEMORY_MB_MAX */
        uint32_t max_items;       /* item capacity; 0 = auto (khala__config_l1_items) */
        uint32_t max_value_bytes; /* largest value, 1..KHALA_CONFIG_L1_VALUE_MAX */
        uint32_t ttl_seconds;     /* default L1 TTL */
        khala_config_eviction_t eviction_policy;
        uint32_t max_readers; /* reader slots, 1..KHALA_CONFIG_L1_READERS_MAX */
    } l1;
    struct {
        khala_config_l2_backend_t backend;
        uint32_t ttl_seconds;                 /* default L2 TTL */
        uint32_t max_items;                   /* LFU capacity */
        char redis_url[KHALA_CONFIG_URL_MAX]; /* "" = none; required for backend redis */
        bool persistent;                      /* survive a restart (disk: fsync'd files; redis:
                                                 do not flush the database at start) */
        char path[KHALA_CONFIG_PATH_MAX];     /* disk store directory; "" = derived */
        uint32_t max_memory_mb;               /* byte limit of the disk store's items (LFU) */
        char namespace_[KHALA_NAME_MAX + 1];  /* Redis key prefix and invalidation channel:
                                                 "khala:<namespace>:"; "" = [cache] name.
                                                 Hosts that share a cache share it. */
        uint32_t timeout_ms;                  /* Redis connect and command timeout */
        uint32_t pool_size;                   /* Redis connections (1..KHALA_CONFIG_L2_POOL_MAX) */
        uint32_t queue_max;                   /* writes queued while L2 is down, then EQUEUE */
        uint32_t sync_every_ms;               /* disk store and write journal: 0 = fsync each
                                                 write; N = fsync at most every N ms (a crash
                                                 of khalad loses nothing either way; a crash of
                                                 the host up to N ms) */
        bool redis_owned;                     /* khalad owns the Redis instance: it sets
                                                 maxmemory-policy allkeys-lfu (else it only
                                                 checks it and warns) */
    } l2;
    struct {
        khala_config_l3_backend_t backend;
        char surrealdb_url[KHALA_CONFIG_URL_MAX]; /* http(s)://; required for surrealdb */
        char surrealdb_table[KHALA_CONFIG_IDENT_MAX];
        char surrealdb_namespace[KHALA_CONFIG_IDENT_MAX];
        char surrealdb_database[KHALA_CONFIG_IDENT_MAX];
        uint32_t ttl_seconds;               /* default L3 TTL */
        uint32_t max_entries;               /* capacity (least valuable evicted, to the archive) */
        uint32_t cleanup_interval;          /* seconds between cleanups: expired entries deleted,
                                             max_entries enforced, archive retention */
        char path[KHALA_CONFIG_PATH_MAX];   /* disk store directory; "" = derived */
        uint32_t max_memory_mb;             /* disk: byte limit of the store's items */
        bool persistent;                    /* disk: survive a restart */
        uint32_t timeout_ms;                /* surrealdb: connect and request timeout */
        uint32_t pool_size;                 /* surrealdb: keep-alive connections */
        uint32_t queue_max;                 /* writes queued while L3 is down, then EQUEUE */
        uint32_t sync_every_ms;             /* disk store and L3's journal, as [l2]'s */
        uint32_t cleanup_batch;             /* rows one cleanup step deletes or moves at most */
        uint32_t archive_retention_seconds; /* how long evicted rows stay in the archive;
                                               0 = no archive (evicted rows are deleted) */
        char similarity_threshold[KHALA_CONFIG_RATE_MAX]; /* "0".."1": the least cosine
                                               similarity a semantic look-up returns */
        uint32_t embedding_dim; /* surrealdb: the dimension of the vector index;
                                             0 = no index (exact scan) */
    } l3;
    struct {
        khala_config_write_mode_t write_mode; /* THROUGH or BEHIND, never DEFAULT */
        khala_config_coherence_t coherence;
        bool preload_common;
        bool predictive_cache;
        uint32_t stale_serve_seconds;      /* serve an expired value this long when the source
                                              fails; 0 = never */
        uint32_t negative_ttl_seconds;     /* TTL of "no such item" answers; 0 = not cached */
        uint32_t ttl_jitter_pct;           /* TTLs vary by up to +-this percent, 0..50 */
        uint32_t single_flight_timeout_ms; /* how long a waiter waits for the loader */
        bool preload_relationships;        /* when an entity is read into L1, promote the
                                              cached relationship items linked to it too */
    } policies;
    struct {
        char key_file[KHALA_CONFIG_PATH_MAX]; /* "" = none; absolute; daemon/crypt.h */
    } crypto;
    khala_config_type_t types[KHALA_CONFIG_NTYPES]; /* by type id (khala__config_type_id) */
    struct {
        uint32_t max_connections;  /* clients served at once; more get ELIMIT, 1..CONNS_MAX */
        uint32_t max_output_bytes; /* unsent reply bytes of one client before its requests
                                      wait until it reads */
        uint32_t max_buffer_bytes; /* input buffers (partial requests), all clients together */
        uint32_t frame_timeout_ms; /* a request frame must complete within this */
    } server;
    struct {
        /* Every `rule = ...` line, in order, '\n'-separated; "" = none (the defaults of
         * daemon/acl.h). A rule line appends; an empty `rule =` clears the rules before it. */
        char rule[KHALA_CONFIG_ACCESS_RULES_BYTES];
    } access;
    struct {
        char path[KHALA_CONFIG_PATH_MAX];             /* "-" = stderr; "" = off; else a file */
        char read_sample_rate[KHALA_CONFIG_RATE_MAX]; /* "0".."1": share of gets audited */
    } audit;
} khala_config_t;

/** A parsed redis_url (khala__config_redis_url_parse). */
typedef struct khala_config_redis_url {
    bool tls;                            /* rediss:// */
    char host[KHALA_CONFIG_URL_MAX];     /* "" for unix:// */
    uint32_t port;                       /* 6379 when absent; 0 for unix:// */
    char path[KHALA_CONFIG_URL_MAX];     /* unix:// socket path, else "" */
    char user[KHALA_CONFIG_URL_MAX];     /* "" when absent; percent-escapes kept as written */
    char password[KHALA_CONFIG_URL_MAX]; /* "" when absent */
    uint32_t db;                         /* 0 when absent */
} khala_config_redis_url_t;

/**
 * @brief Fill @p cfg with the defaults for cache @p name.
 * @param[out] cfg the configuration; every field is written.
 * @param[in] name cache name; NULL means "default".
 * @return 0; KHALA_ENAME if @p name is not a valid cache name (cfg then holds "default").
 */
int khala__config_defaults(khala_config_t *cfg, const char *name);

/**
 * @brief Read the INI file at @p path over @p cfg (keys absent from the file keep their values).
 * @param[in,out] cfg the configuration, usually fresh from khala__config_defaults().
 * @param[in] path the file; messages name it as given.
 * @param[out] err message buffer ("FILE:LINE: [section] key: what is wrong"); may be NULL.
 * @param[in] errlen size of @p err; the message is truncated to fit.
 * @return 0; KHALA_ECONFIG for anything wrong in the text (syntax, unknown section or key,
 *         duplicate key, bad value, inconsistent values, a key without effect at a value other
 *         than its default, a line over KHALA_CONFIG_LINE_MAX);
 *         -EFBIG for a file over KHALA_CONFIG_FILE_MAX; -errno when the file cannot be read
 *         (-ENOENT, -EACCES, -EISDIR...).
 * @note On failure @p cfg is unchanged.
 */
int khala__config_load_file(khala_config_t *cfg, const char *path, char *err, size_t errlen);

/**
 * @brief Parse INI @p text over @p cfg, as khala__config_load_file() does with a file's bytes.
 * @param[in,out] cfg the configuration.
 * @param[in] text NUL-terminated INI text.
 * @param[in] origin_name the name messages give the text (for example a file name).
 * @param[out] err message buffer; may be NULL.
 * @param[in] errlen size of @p err.
 * @return 0; KHALA_ECONFIG as for khala__config_load_file().
 * @note On failure @p cfg is unchanged.
 */
int khala__config_load_string(khala_config_t *cfg, const char *text, const char *origin_name,
                              char *err, size_t errlen);

/**
 * @brief Set one key, as a command-line override: khala__config_set(cfg, "l1.max_memory_mb",
 *        "200", ...) for `--set l1.max_memory_mb=200`. The section of a type key is
 *        "type.<name>": "type.embedding.l1_ttl_seconds". The seed's section names are aliases
 *        ("l1_cache.ttl_seconds").
 * @param[in,out] cfg the configuration.
 * @param[in] key "section.key".
 * @param[in] value the value, as it would appear in the file.
 * @param[out] err message buffer ("--set: [l1] max_memory_mb: ..."); may be NULL.
 * @param[in] errlen size of @p err.
 * @return 0; KHALA_ECONFIG for an unknown section or key, or a bad value.
 * @note On failure @p cfg is unchanged. Only the value itself is checked, so that overrides
 *       apply in any order (a backend before its URL); check the values together with
 *       khala__config_check() after the last one, or use khala__config_load().
 */
int khala__config_set(khala_config_t *cfg, const char *key, const char *value, char *err,
                      size_t errlen);

/**
 * @brief Build the configuration khalad runs with: the file at @p path (when not NULL) over
 *        @p cfg, then every override of @p sets, then one check of the whole. Neither the order
 *        of the overrides nor whether a key comes from the file or an override matters: only
 *        the result is checked, so an override may complete the file (the redis_url of a
 *        file's backend = redis) or undo what the file alone would make inconsistent.
 * @param[in,out] cfg the configuration, usually fresh from khala__config_defaults().
 * @param[in] path the INI file, or NULL for none.
 * @param[in] sets overrides, "section.key=value" each, as `khalad --set` takes them.
 * @param[in] nsets number of @p sets.
 * @param[out] err message buffer; may be NULL. A consistency message cites the file line of a
 *             key the file set and "--set" for a key an override set.
 * @param[in] errlen size of @p err.
 * @return 0; KHALA_ECONFIG for anything wrong in the file, an override or the whole (an
 *         override without '=' included); -EFBIG or -errno when the file cannot be read, as
 *         khala__config_load_file().
 * @note On failure @p cfg is unchanged.
 */
int khala__config_load(khala_config_t *cfg, const char *path, const char *const *sets, size_t nsets,
                       char *err, size_t errlen);

/**
 * @brief Check the values together: sizes, backends and their URLs, and the keys that have no
 *        effect yet (refused at any value but their default; config.c, "Keys that have no
 *        effect yet").
 * @param[in] cfg the configuration.
 * @param[out] err message buffer ("config: [l2] backend: ..."); may be NULL.
 * @param[in] errlen size of @p err.
 * @return 0 or KHALA_ECONFIG. Loads and khala__config_load() call it; call it after the last
 *         khala__config_set(), and after filling a khala_config_t by hand.
 */
int khala__config_check(const khala_config_t *cfg, char *err, size_t errlen);

/**
 * @brief khalad's largest frame body, derived from [l1] max_value_bytes: the value plus
 *        KHALA_CONFIG_FRAME_ROOM, at least KHALA_FRAME_MAX_DEFAULT and at most
 *        KHALA_FRAME_MAX_CEILING. khalad announces it in the hello reply.
 * @param[in] cfg the configuration.
 * @return the limit in bytes.
 */
uint32_t khala__config_server_max_frame(const khala_config_t *cfg);

/**
 * @brief The L1 segment sizes @p cfg asks for.
 * @param[in] cfg a valid configuration.
 * @param[out] out the segment configuration: items, bytes, largest value, readers; the hit-ring
 *             size keeps its default.
 */
void khala__config_seg(const khala_config_t *cfg, khala_seg_config_t *out);

/**
 * @brief Effective [l1] max_items: the configured value, or when it is 0 (auto)
 *        max_memory_mb MiB / KHALA_CONFIG_L1_BYTES_PER_ITEM, at most KHALA_CONFIG_L1_ITEMS_MAX
 *        (2,048 items per MiB).
 * @param[in] cfg the configuration.
 * @return the item capacity.
 */
uint32_t khala__config_l1_items(const khala_config_t *cfg);

/**
 * @brief Effective socket path: [cache] socket, or when empty /run/khala/<name>.sock for root,
 *        else $XDG_RUNTIME_DIR/khala/<name>.sock, else /tmp/khala-<uid>/<name>.sock.
 * @param[in] cfg the configuration.
 * @param[out] buf the path.
 * @param[in] len size of @p buf.
 * @return 0; -ENAMETOOLONG if the path does not fit @p buf or a socket address.
 */
int khala__config_socket_path(const khala_config_t *cfg, char *buf, size_t len);

/**
 * @brief Effective disk-store directory of level 2 or 3: [lN] path; when [l3] path is empty
 *        and [l2] path is set, next to it (/srv/k/l2 -> /srv/k/l3, /srv/c -> /srv/c-l3);
 *        else /var/lib/khala/<name>/lN for root, else $XDG_STATE_HOME/khala/<name>/lN, else
 *        $HOME/.local/state/khala/<name>/lN, else /tmp/khala-<uid>/state/<name>/lN.
 * @param[in] cfg the configuration.
 * @param[in] level 2 or 3.
 * @param[out] buf the path.
 * @param[in] len size of @p buf.
 * @return 0; -EINVAL for another level; -ENAMETOOLONG if the path does not fit @p buf.
 */
int khala__config_store_path(const khala_config_t *cfg, int level, char *buf, size_t len);

/**
 * @brief Effective L2 namespace: [l2] namespace, or [cache] name when it is empty.
 * @param[in] cfg the configuration.
 * @return a string inside @p cfg.
 */
const char *khala__config_l2_namespace(const khala_config_t *cfg);

/**
 * @brief Effective TTL of a type on a level: its own lN_ttl_seconds, or the level's.
 * @param[in] cfg the configuration.
 * @param[in] type type id, 0..KHALA_CONFIG_NTYPES-1.
 * @param[in] level 1, 2 or 3.
 * @return seconds; 0 for a bad type or level.
 */
uint32_t khala__config_type_ttl(const khala_config_t *cfg, int type, int level);

/**
 * @brief Effective write mode of a type: its own, or [policies] write_mode.
 * @param[in] cfg the configuration.
 * @param[in] type type id, 0..KHALA_CONFIG_NTYPES-1.
 * @return KHALA_CONFIG_WRITE_THROUGH or KHALA_CONFIG_WRITE_BEHIND (THROUGH for a bad id).
 */
khala_config_write_mode_t khala__config_type_write_mode(const khala_config_t *cfg, int type);

/**
 * @brief The types whose values are sealed below L1 ([type.<name>] encrypt = true).
 * @param[in] cfg the configuration.
 * @return bit (1u << type id) per encrypted type; 0 when none is.
 */
uint32_t khala__config_encrypted_types(const khala_config_t *cfg);

/**
 * @brief Name of type @p id ("memory_entity" for 0 ... "consolidation" for 7).
 * @param[in] id type id.
 * @return a static string; NULL for an id out of range.
 */
const char *khala__config_type_name(int id);

/**
 * @brief Id of the type named @p name.
 * @param[in] name a type name, exactly as written in DESIGN.md.
 * @return 0..KHALA_CONFIG_NTYPES-1; KHALA_ECONFIG for an unknown name.
 */
int khala__config_type_id(const char *name);

/**
 * @brief Parse and check a redis_url: redis://[user[:password]@]host[:port][/db],
 *        rediss://... (TLS), or unix:///path[?db=N].
 * @param[in] url the URL.
 * @param[out] out the parts; may be NULL to only check. Written only on success.
 * @param[out] err what is wrong ("has no host"), without the key's name; may be NULL.
 * @param[in] errlen size of @p err.
 * @return 0 or KHALA_ECONFIG.
 */
int khala__config_redis_url_parse(const char *url, khala_config_redis_url_t *out, char *err,
                                  size_t errlen);

/**
 * @brief Write the configuration as INI text that khala__config_load_file() reads back to an
 *        equal configuration (for `khalactl config`). Derived values are written empty or
 *        "auto" with their effective value in a comment.
 * @param[in] cfg the configuration.
 * @param[in] out the stream.
 * @return 0; -EIO if the stream reports an error.
 */
int khala__config_dump(const khala_config_t *cfg, FILE *out);

#endif /* KHALA_DAEMON_CONFIG_H */
