/*
 * The socket protocol between workers (the client library, khalactl) and khalad: framing, the
 * message struct, and its msgpack encoder and decoder. Pure functions over byte buffers, with no
 * I/O, so that the same code serves both ends and the decoder can be fuzzed
 * (tests/fuzz/fuzz_frame.c). docs/protocol.md describes the wire format field by field; this
 * header is the reference for the C API.
 *
 * Start reading at khala_msg_t, then khala__proto_frame_check() (is a whole frame buffered?),
 * khala__proto_decode_request() / khala__proto_decode_reply() (body to message) and
 * khala__proto_encode_request() / khala__proto_encode_reply() (message to frame).
 *
 * A reader loop looks like this:
 *
 *     uint32_t n;
 *     int rc = khala__proto_frame_check(in.data, in.len, max_frame, &n, err, sizeof(err));
 *     if (rc == KHALA_PROTO_NEED_MORE)  -> read more bytes into `in`
 *     if (rc < 0)                       -> send an error reply, drop the peer
 *     rc = khala__proto_decode_request(in.data + KHALA_FRAME_HEADER, n, &msg, err, sizeof(err));
 *     ... use msg (its byte fields point into `in`) ...
 *     khala__proto_msg_free(&msg);
 *     khala__proto_buf_consume(&in, KHALA_FRAME_HEADER + n);
 *
 * Thread safety: every function is reentrant; a khala_buf_t or khala_msg_t belongs to one
 * thread at a time.
 */
#ifndef KHALA_LIB_PROTO_H
#define KHALA_LIB_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "khala/cache.h"
#include "khala/error.h"

/* ------------------------------------------------------------------------------------------ */
/* Limits. Every one is checked by the decoder at the boundary and by the encoder before it     */
/* sends, so that a peer never receives what it would refuse.                                    */
/* ------------------------------------------------------------------------------------------ */

/** The protocol version this code speaks; exchanged in hello. Bump it when a field changes
 * meaning; adding an optional field needs no bump (unknown fields are ignored). */
#define KHALA_PROTO_VERSION 1u

/** Bytes of the frame header: an unsigned 32-bit big-endian body length. */
#define KHALA_FRAME_HEADER 4u

/** Default largest frame body (2 MiB): a put of a value of KHALA_VALUE_MAX_DEFAULT (1 MiB) plus
 * its fields, with room to spare, and a keys page of KHALA_PROTO_ARRAY_MAX keys of
 * KHALA_KEY_MAX bytes (~260 KB). khalad announces its own limit in the hello reply. */
#define KHALA_FRAME_MAX_DEFAULT (2u * 1024u * 1024u)

/** Absolute ceiling of any frame body, whatever a peer announces (256 MiB + 64 KiB): the largest
 * value a segment may be configured for (256 MiB) plus headroom for the other fields. It bounds
 * the memory one connection can make khalad buffer. */
#define KHALA_FRAME_MAX_CEILING (256u * 1024u * 1024u + 64u * 1024u)

/** Deepest nesting of containers in a body: the body map (1), "data" (2) and two more levels
 * of maps inside it (3, 4); a "keys" array is at depth 2. Bounds the decoder's stack. */
#define KHALA_PROTO_DEPTH_MAX 4

/** Deepest nesting of the "data" map of stats / config / inspect replies, counting itself. */
#define KHALA_PROTO_DATA_DEPTH_MAX (KHALA_PROTO_DEPTH_MAX - 1)

/** Most entries in any one map. A request has ~10 fields; the largest "data" map (per-type
 * stats) has a few dozen. Bounds the decoder's work per map. */
#define KHALA_PROTO_MAP_MAX 1024u

/** Most elements in any one array: a keys page, or the keys of one warm request. */
#define KHALA_PROTO_ARRAY_MAX 1024u

/** Most msgpack objects (scalars and containers, at any depth) in one body. A keys page is
 * ~1,030, a stats reply a few hundred. Bounds a decoded message's memory to about 64 bytes per
 * object (~1 MiB), whatever the body's length. */
#define KHALA_PROTO_OBJECTS_MAX 16384u

/** Default number of keys a keys request asks for when it gives no "count". */
#define KHALA_PROTO_KEYS_COUNT_DEFAULT 100u

/** Longest "err" detail in bytes; a longer one is refused, so a peer cannot make us log MBs. */
#define KHALA_PROTO_ERR_MAX 1024u

/** Longest "pattern" of a keys request in bytes (a glob over keys of at most KHALA_KEY_MAX). */
#define KHALA_PROTO_PATTERN_MAX 1024u

/** Returned by khala__proto_frame_check() while the buffer holds less than one whole frame. */
#define KHALA_PROTO_NEED_MORE 1

/* ------------------------------------------------------------------------------------------ */
/* Enumerations and their names                                                                */
/* ------------------------------------------------------------------------------------------ */

/* khala_type_t (field "type") and khala_mode_t (field "mode") are public: their lists,
 * KHALA_TYPE_LIST and KHALA_MODE_LIST, live in include/khala/cache.h, which a worker passes to
 * khala_cache_put(). Each list below is the one source of its enum, its names and its sets: add
 * a value to the list, never to the enum or to a table of names. */

/**
 * Operations, X(NAME, "wire name", writes): the wire carries the name (field "op"). `writes` is
 * 1 for the ops that change the cache or lead a load (khalad lets only its writers send them:
 * root, its own user, the socket's group), 0 for those a reader may send. The values are
 * positions in the list, starting at 1; they never go on the wire, so a new op may go anywhere.
 */
#define KHALA_OP_LIST(X)                                                                           \
    X(HELLO, "hello", 0) /* version and limits exchange, first on a connection */                  \
    X(PING, "ping", 0)                                                                             \
    X(GET, "get", 0) /* the L1 miss path */                                                        \
    X(PUT, "put", 1) /* write, optionally compare-and-set on "ver" */                              \
    X(DEL, "del", 1)                                                                               \
    X(INVALIDATE, "invalidate", 1) /* by key, prefix or type */                                    \
    X(TOUCH, "touch", 1)           /* reset a key's TTL */                                         \
    X(STATS, "stats", 0)                                                                           \
    X(KEYS, "keys", 0)           /* cursor scan with a glob pattern */                             \
    X(INSPECT, "inspect", 0)     /* one key's metadata */                                          \
    X(FLUSH, "flush", 1)         /* all, or one type */                                            \
    X(WARM, "warm", 1)           /* promote keys from L2/L3 into L1 */                             \
    X(CONFIG, "config", 0)       /* the effective configuration */                                 \
    X(FILL, "fill", 1)           /* a single-flight leader's loaded value */                       \
    X(FILL_FAIL, "fill_fail", 1) /* a single-flight leader's loader failed */                      \
    X(SIMILAR, "similar", 0)     /* semantic look-up of embeddings by vector */

/** Operations (KHALA_OP_LIST). 0 is "none": a reply decoded without knowing which request it
 * answers. */
typedef enum khala_op {
    KHALA_OP_NONE = 0,
#define KHALA_OP_ENUM_(NAME, name, writes) KHALA_OP_##NAME,
    KHALA_OP_LIST(KHALA_OP_ENUM_)
#undef KHALA_OP_ENUM_
        KHALA_OP_COUNT /**< number of values, NONE included; not an op */
} khala_op_t;

/** What an invalidate selects (field "by"), X(NAME, "wire name"); the values start at 1. */
#define KHALA_BY_LIST(X)                                                                           \
    X(KEY, "key")       /* field "k" */                                                            \
    X(PREFIX, "prefix") /* field "prefix" */                                                       \
    X(TYPE, "type")     /* field "type" */

/** What an invalidate selects (KHALA_BY_LIST); 0 is "none". */
typedef enum khala_by {
    KHALA_BY_NONE = 0,
#define KHALA_BY_ENUM_(NAME, name) KHALA_BY_##NAME,
    KHALA_BY_LIST(KHALA_BY_ENUM_)
#undef KHALA_BY_ENUM_
        KHALA_BY_COUNT /**< number of values, NONE included */
} khala_by_t;

/* Levels (khala_level_t, KHALA_LEVEL_LIST) are public: include/khala/cache.h, since a worker
 * reads which level answered a get (khala_meta_t). */

/** The bit of storage level @p lvl (KHALA_LEVEL_L1..L3) in a set of levels: L1 is 1u << 0. */
#define KHALA_LEVEL_BIT(lvl) (1u << ((unsigned)(lvl) - (unsigned)KHALA_LEVEL_L1))

/** The set of every storage level (`stores` = 1 in KHALA_LEVEL_LIST), as KHALA_LEVEL_BIT bits. */
#define KHALA_LEVEL_STORES_(NAME, name, stores)                                                    \
    | ((stores) ? KHALA_LEVEL_BIT(KHALA_LEVEL_##NAME) : 0u)
#define KHALA_LEVEL_STORAGE (0u KHALA_LEVEL_LIST(KHALA_LEVEL_STORES_))

/**
 * @brief The wire name of a data type ("memory_entity").
 * @param[in] type a type id.
 * @return a static string, or NULL when type is not one of the eight types.
 */
const char *khala__proto_type_name(khala_type_t type);

/**
 * @brief The data type of a name, for config files and khalactl.
 * @param[in] name the name, not necessarily NUL-terminated.
 * @param[in] len its length in bytes.
 * @param[out] type the type; unchanged on failure.
 * @return 0, or -EINVAL when name is not one of the eight type names.
 */
int khala__proto_type_parse(const char *name, size_t len, khala_type_t *type);

/**
 * @brief The wire name of an operation ("get").
 * @param[in] op an operation.
 * @return a static string, or NULL for KHALA_OP_NONE and out-of-range values.
 */
const char *khala__proto_op_name(khala_op_t op);

/**
 * @brief The operation of a wire name.
 * @param[in] name the name, not necessarily NUL-terminated.
 * @param[in] len its length in bytes.
 * @param[out] op the operation; unchanged on failure.
 * @return 0, or -EINVAL when name is not an operation's.
 */
int khala__proto_op_parse(const char *name, size_t len, khala_op_t *op);

/**
 * @brief Whether an operation changes the cache or leads a load (`writes` in KHALA_OP_LIST).
 * @param[in] op an operation.
 * @return true for a writing op; false for a reading one, KHALA_OP_NONE and out-of-range values.
 */
bool khala__proto_op_writes(khala_op_t op);

/**
 * @brief The wire name of a level ("l1").
 * @param[in] level a level.
 * @return a static string, or NULL for KHALA_LEVEL_NONE and out-of-range values.
 */
const char *khala__proto_level_name(khala_level_t level);

/**
 * @brief The level of a wire name ("l1", ..., "stale").
 * @param[in] name the name, not necessarily NUL-terminated.
 * @param[in] len its length in bytes.
 * @param[out] level the level; unchanged on failure.
 * @return 0, or -EINVAL when name is not a level's.
 */
int khala__proto_level_parse(const char *name, size_t len, khala_level_t *level);

/**
 * @brief The wire name of a write mode ("through", "behind").
 * @param[in] mode a write mode.
 * @return a static string, or NULL for KHALA_MODE_DEFAULT (never sent) and out-of-range values.
 */
const char *khala__proto_mode_name(khala_mode_t mode);

/**
 * @brief The write mode of a wire name.
 * @param[in] name the name, not necessarily NUL-terminated.
 * @param[in] len its length in bytes.
 * @param[out] mode the mode; unchanged on failure.
 * @return 0, or -EINVAL when name is not "through" or "behind".
 */
int khala__proto_mode_parse(const char *name, size_t len, khala_mode_t *mode);

/**
 * @brief The wire name of an invalidation selector ("key", "prefix", "type").
 * @param[in] by a selector.
 * @return a static string, or NULL for KHALA_BY_NONE and out-of-range values.
 */
const char *khala__proto_by_name(khala_by_t by);

/* ------------------------------------------------------------------------------------------ */
/* Buffers                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/** A growable byte buffer: the encoder appends frames to it; a connection reads into it.
 * Bytes [0, len) are valid; [len, cap) is spare room. Zeroed (or khala__proto_buf_init) is an
 * empty buffer that owns nothing. */
typedef struct khala_buf {
    uint8_t *data; /**< heap block of cap bytes, or NULL when cap == 0 */
    size_t len;    /**< bytes in use */
    size_t cap;    /**< bytes allocated */
} khala_buf_t;

/** @brief Make b an empty buffer owning nothing. Pairs with khala__proto_buf_free(). */
void khala__proto_buf_init(khala_buf_t *b);

/** @brief Release b's memory and make it empty again; safe on an empty buffer. */
void khala__proto_buf_free(khala_buf_t *b);

/** @brief Forget b's contents (len = 0) but keep its memory for reuse. */
void khala__proto_buf_reset(khala_buf_t *b);

/**
 * @brief Make room for at least n more bytes after len (for a read(2) into data + len).
 * @return 0, or -ENOMEM (b unchanged).
 */
int khala__proto_buf_reserve(khala_buf_t *b, size_t n);

/**
 * @brief Append n bytes.
 * @return 0, or -ENOMEM (b unchanged).
 */
int khala__proto_buf_append(khala_buf_t *b, const void *p, size_t n);

/**
 * @brief Drop the first n bytes (n <= len), moving the rest to the front.
 * @note Invalidates views into b, including a decoded khala_msg_t's byte fields.
 */
void khala__proto_buf_consume(khala_buf_t *b, size_t n);

/* ------------------------------------------------------------------------------------------ */
/* Messages                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/** A byte string. After decoding, a view into the caller's frame buffer (see khala_msg_t). */
typedef struct khala_bytes {
    const uint8_t *ptr; /**< first byte; may be NULL when len == 0; not NUL-terminated */
    size_t len;         /**< length in bytes */
} khala_bytes_t;

/** Kinds of a khala_kv_t value, the scalars and maps of a "data" map. */
typedef enum khala_kv_kind {
    KHALA_KV_NIL = 0,
    KHALA_KV_BOOL,   /**< as.b */
    KHALA_KV_UINT,   /**< as.u; a decoded non-negative integer is always UINT */
    KHALA_KV_INT,    /**< as.i; decoded only for negative values */
    KHALA_KV_DOUBLE, /**< as.d; float32 on the wire decodes as DOUBLE too */
    KHALA_KV_STR,    /**< as.s, UTF-8 by convention (not checked) */
    KHALA_KV_BIN,    /**< as.s */
    KHALA_KV_MAP     /**< as.map, nested at most KHALA_PROTO_DATA_DEPTH_MAX maps deep */
} khala_kv_kind_t;

/** One entry of a "data" map (stats, config, inspect replies): a string key and a scalar or a
 * nested map. The encoder reads a caller's tree of these; the decoder builds one in the
 * message's zone, whose byte strings are views into the frame buffer. */
typedef struct khala_kv {
    khala_bytes_t key;    /**< the entry's name, 1..KHALA_KEY_MAX bytes */
    khala_kv_kind_t kind; /**< which member of as is meaningful */
    union {
        bool b;
        uint64_t u;
        int64_t i;
        double d;
        khala_bytes_t s;
        struct {
            const struct khala_kv *items; /**< n entries */
            uint32_t n;                   /**< 0..KHALA_PROTO_MAP_MAX */
        } map;
    } as;
} khala_kv_t;

/** Field presence bits of khala_msg_t.has; one per optional wire field. */
enum {
    KHALA_F_K = 1u << 0,          /**< key: "k" */
    KHALA_F_V = 1u << 1,          /**< value: "v" */
    KHALA_F_TTL = 1u << 2,        /**< ttl_ms: "ttl" */
    KHALA_F_TYPE = 1u << 3,       /**< type: "type" */
    KHALA_F_VER = 1u << 4,        /**< ver: "ver" */
    KHALA_F_MODE = 1u << 5,       /**< mode: "mode" */
    KHALA_F_PREFIX = 1u << 6,     /**< prefix: "prefix" */
    KHALA_F_BY = 1u << 7,         /**< by: "by" */
    KHALA_F_PATTERN = 1u << 8,    /**< pattern: "pattern" */
    KHALA_F_CURSOR = 1u << 9,     /**< cursor: "cursor" */
    KHALA_F_COUNT = 1u << 10,     /**< count: "count" */
    KHALA_F_LOADER = 1u << 11,    /**< loader: "loader" */
    KHALA_F_PROTO = 1u << 12,     /**< proto: "proto" */
    KHALA_F_NAME = 1u << 13,      /**< name: "name" */
    KHALA_F_ERR = 1u << 14,       /**< err: "err" */
    KHALA_F_LVL = 1u << 15,       /**< lvl: "lvl" */
    KHALA_F_LOAD = 1u << 16,      /**< load: "load" */
    KHALA_F_GEN = 1u << 17,       /**< gen: "gen" */
    KHALA_F_MAX_FRAME = 1u << 18, /**< max_frame: "max_frame" */
    KHALA_F_MAX_VALUE = 1u << 19, /**< max_value: "max_value" */
    KHALA_F_KEYS = 1u << 20,      /**< keys/nkeys: "keys" */
    KHALA_F_DATA = 1u << 21,      /**< data/ndata: "data" */
    KHALA_F_ARCHIVE = 1u << 22,   /**< archive: "archive" */
    KHALA_F_SIM = 1u << 23,       /**< sim: "sim" (similar request) */
    KHALA_F_MATCHES = 1u << 24,   /**< matches/nmatches: "matches" (similar reply) */
    KHALA_F_LINKS = 1u << 25      /**< links/nlinks: "links" (put and fill requests) */
};

/** One answer of a similar reply: an element of "matches", on the wire the array
 * [key: bin, sim: float64, value: bin, ver: uint, ttl: uint]. Byte fields are views (see
 * khala_msg_t). */
typedef struct khala_proto_match {
    khala_bytes_t key;   /**< 1..KHALA_KEY_MAX bytes */
    double sim;          /**< cosine similarity to the query, -1..1 */
    khala_bytes_t value; /**< the embedding's value (its float32 vector) */
    uint64_t ver;        /**< the item's version */
    uint64_t ttl_ms;     /**< time left, 0 = never expires */
} khala_proto_match_t;

/**
 * One request or reply. id and op (requests) or id and rc (replies) are always present; every
 * other field is meaningful only when its KHALA_F_* bit is set in has.
 *
 * To encode, zero-initialize (or khala__proto_msg_init), fill the fields, set their bits and
 * call an encoder; the byte fields may point anywhere the caller likes until the call returns.
 *
 * View rule for decoded messages: key, value, prefix, pattern, name, err, the keys and links
 * arrays' elements and every byte string in data point into the body buffer passed to the decoder;
 * they are valid only while that buffer is unchanged (khala__proto_buf_consume and any growth
 * of a khala_buf_t move it). The keys and data arrays themselves live in the message's zone,
 * valid until khala__proto_msg_free(). Never write through a view.
 */
typedef struct khala_msg {
    uint64_t id;          /**< "id": chosen by the client, echoed by the reply; any value */
    khala_op_t op;        /**< request: "op". Reply: not on the wire; the op it answers, if known */
    int32_t rc;           /**< reply "rc": 0 or a negative KHALA_E* / -errno code */
    uint32_t has;         /**< KHALA_F_* bits of the fields below that are present */
    khala_bytes_t key;    /**< "k": 1..KHALA_KEY_MAX bytes, binary-safe */
    khala_bytes_t value;  /**< "v": 0..frame-limited bytes */
    uint64_t ttl_ms;      /**< "ttl": request: ms, 0 = the type's default; reply: ms left,
                                0 = never expires */
    khala_type_t type;    /**< "type": 0..KHALA_TYPE_COUNT-1 */
    uint64_t ver;         /**< "ver": put request: expected current version (compare-and-set,
                                0 = the key must not exist); replies: the item's version */
    khala_mode_t mode;    /**< "mode": put's write mode */
    khala_bytes_t prefix; /**< "prefix": 1..KHALA_KEY_MAX bytes */
    khala_by_t by;        /**< "by": what an invalidate selects */
    khala_bytes_t pattern;     /**< "pattern": glob for keys, 0..KHALA_PROTO_PATTERN_MAX bytes */
    uint64_t cursor;           /**< "cursor": keys scan position; 0 starts, a reply's 0 ends */
    uint32_t count;            /**< "count": keys page size / number of keys warmed, 0..ARRAY_MAX */
    bool loader;               /**< "loader": the caller can load on a miss (single-flight) */
    uint32_t proto;            /**< "proto": protocol version (hello) */
    khala_bytes_t name;        /**< "name": cache name, 1..KHALA_NAME_MAX bytes (hello) */
    khala_bytes_t err;         /**< "err": human detail, 0..KHALA_PROTO_ERR_MAX bytes; replies
                                carry it only when rc != 0; fill_fail requests may carry it */
    khala_level_t lvl;         /**< "lvl": which level answered a get */
    bool load;                 /**< "load": this caller is the single-flight leader: run the
                                loader, then send fill or fill_fail */
    uint64_t gen;              /**< "gen": the segment generation (hello reply) */
    uint32_t max_frame;        /**< "max_frame": the server's largest frame body (hello reply) */
    uint32_t max_value;        /**< "max_value": the server's largest value (hello reply) */
    const khala_bytes_t *keys; /**< "keys": nkeys keys of 1..KHALA_KEY_MAX bytes */
    uint32_t nkeys;            /**< 0..KHALA_PROTO_ARRAY_MAX */
    const khala_kv_t *data;    /**< "data": ndata entries (stats, config, inspect replies) */
    bool archive;              /**< "archive": a get reads the archive of the levels below L1
                                (items they evicted for space) instead of the live levels; never
                                promotes, never loads */
    uint32_t ndata;            /**< 0..KHALA_PROTO_MAP_MAX */
    double sim; /**< "sim": similar request: the least cosine similarity, -1..1 (absent: khalad's
                     [l3] similarity_threshold) */
    const khala_proto_match_t *matches; /**< "matches": similar reply, most similar first */
    uint32_t nmatches;                  /**< 0..KHALA_SIMILAR_K_MAX */
    const khala_bytes_t *links; /**< "links": put/fill: the keys of the end entities the item
                                     is linked to (daemon/relationships.h), nlinks keys of
                                     1..KHALA_KEY_MAX bytes, none the item's own key */
    uint32_t nlinks;            /**< 1..KHALA_PROTO_ARRAY_MAX */
    struct msgpack_zone *zone;  /**< decoded messages only: owns keys, links, matches, data; NULL
                                    otherwise */
} khala_msg_t;

/** @brief Zero a message (no fields, no zone). */
void khala__proto_msg_init(khala_msg_t *msg);

/**
 * @brief Release what a decoder allocated for msg (its zone) and zero it.
 * @note Safe on a message that was only initialized, or never decoded into.
 */
void khala__proto_msg_free(khala_msg_t *msg);

/**
 * @brief Is a whole frame at the start of buf?
 * @param[in] buf received bytes, starting at a frame boundary.
 * @param[in] avail how many bytes buf holds.
 * @param[in] max_frame the largest body accepted; 0 means KHALA_FRAME_MAX_DEFAULT, and values
 *            above KHALA_FRAME_MAX_CEILING count as the ceiling.
 * @param[out] body_len the body's length N, set as soon as the 4-byte header is in buf (so a
 *             caller that gets NEED_MORE can size its buffer: the frame is 4 + N bytes).
 * @param[out] err, errlen a NUL-terminated message on KHALA_EPROTO; err may be NULL.
 * @return 0 when buf holds the header and the whole body: the body is buf[4 .. 4 + N);
 *         KHALA_PROTO_NEED_MORE (1) when buf holds less than the header, or less than the body;
 *         KHALA_EPROTO when N is 0 or above max_frame (the stream cannot be resynchronized:
 *         drop the connection after replying).
 * @note Reads only buf[0 .. 4). Constant time.
 */
int khala__proto_frame_check(const void *buf, size_t avail, uint32_t max_frame, uint32_t *body_len,
                             char *err, size_t errlen);

/**
 * @brief Decode a request body (the N bytes after a frame header).
 * @param[in] body the body; must stay unchanged while msg's views are used.
 * @param[in] len its length; above KHALA_FRAME_MAX_CEILING is refused.
 * @param[in,out] msg initialized (khala__proto_msg_init) or holding an earlier decoded message.
 *                On success, replaced by the request (the earlier content is freed first); on
 *                failure left exactly as it was.
 * @param[out] err, errlen a NUL-terminated message naming the problem on failure ("field 'k'
 *             is 300 bytes, max 250", "unknown op 'frob'"); err may be NULL.
 * @return 0; KHALA_EPROTO when the body is not one well-formed msgpack map within the limits,
 *         misses a field the op requires, or a known field has the wrong type or an
 *         out-of-range value; -ENOMEM.
 * @note Unknown fields are ignored. Time and memory are linear in len (the zone holds at most
 *       a few dozen bytes per msgpack object in the body), whatever the bytes say.
 *       See khala_msg_t for the view rule; pair with khala__proto_msg_free().
 */
int khala__proto_decode_request(const void *body, size_t len, khala_msg_t *msg, char *err,
                                size_t errlen);

/**
 * @brief Decode a reply body.
 * @param[in] op the op of the request this reply answers (the caller matched its id), whose
 *            required reply fields are then checked; KHALA_OP_NONE checks only id and rc.
 * @param[in] body, len, msg, err, errlen as for khala__proto_decode_request(); msg->op is set
 *            to op.
 * @return as for khala__proto_decode_request(). A reply whose rc is not 0 needs no other field
 *         whatever the op; the op's fields are required only when rc == 0.
 */
int khala__proto_decode_reply(khala_op_t op, const void *body, size_t len, khala_msg_t *msg,
                              char *err, size_t errlen);

/**
 * @brief Append msg as one request frame (header and body) to out.
 * @param[out] out the buffer; on failure its contents are unchanged (it may have grown).
 * @param[in] msg the request: id, op, and the fields whose bits are in has.
 * @param[out] err, errlen a message on KHALA_EPROTO; err may be NULL.
 * @return 0; KHALA_EPROTO when msg would not decode (an unknown op, a missing required field,
 *         a field out of range); KHALA_ETOOBIG when the body would exceed
 *         KHALA_FRAME_MAX_CEILING; -ENOMEM.
 * @note The encoder does not know the peer's max_frame: compare the frame's body length
 *       (growth of out->len minus KHALA_FRAME_HEADER) with it, or bound values beforehand.
 */
int khala__proto_encode_request(khala_buf_t *out, const khala_msg_t *msg, char *err, size_t errlen);

/**
 * @brief Append msg as one reply frame to out.
 * @param[in] msg the reply: id, rc, the fields in has. msg->op, when not KHALA_OP_NONE, selects
 *            the fields required when rc == 0. "err" is sent only when rc != 0.
 * @return as for khala__proto_encode_request().
 */
int khala__proto_encode_reply(khala_buf_t *out, const khala_msg_t *msg, char *err, size_t errlen);

/**
 * @brief Find an entry of a data map by name.
 * @return the entry, or NULL when none of the n items is named key.
 */
const khala_kv_t *khala__proto_kv_find(const khala_kv_t *items, uint32_t n, const char *key);

#endif /* KHALA_LIB_PROTO_H */
