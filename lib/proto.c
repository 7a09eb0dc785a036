/*
 * Protocol: frames of msgpack between workers and khalad, encoded and decoded.
 *
 * HOW IT WORKS
 *
 * A frame is a 4-byte big-endian body length N, then N bytes that are exactly one msgpack map:
 *
 *     +----------------+--------------------------------------------+
 *     | N (u32, BE)    | body: one msgpack map, N bytes, nothing more |
 *     +----------------+--------------------------------------------+
 *
 * khala__proto_frame_check() looks only at the header: it says "need more", "complete" or
 * "refused" (N == 0 or N > max_frame), so a connection can buffer bytes until a whole frame is
 * in, and refuse an oversized one before buffering any of it.
 *
 * Decoding a body takes three passes, each linear in N:
 *
 *   1. scan_body() walks the msgpack encoding itself, without allocating: every header in
 *      bounds, no 0xc1, the top object a map, nesting at most KHALA_PROTO_DEPTH_MAX, at most
 *      KHALA_PROTO_MAP_MAX entries per map and KHALA_PROTO_ARRAY_MAX per array, at most
 *      KHALA_PROTO_OBJECTS_MAX objects in all, and no byte after the map.
 *   2. msgpack_unpack() (msgpack-c) builds the object tree in a zone. Strings, bins and exts in
 *      the tree point into the body, so keys and values are never copied.
 *   3. decode_fields() maps known keys to khala_msg_t fields, checking each one's type and
 *      range, ignores unknown keys, and check_msg() then checks what the op requires. The
 *      "keys" array and the "data" tree are converted into khala_bytes_t / khala_kv_t arrays
 *      in the same zone, so the message owns exactly one allocation.
 *
 * Encoding packs with msgpack-c's packer, whose write callback appends straight into the
 * caller's khala_buf_t after a reserved header, which is patched with the body length at the
 * end. The encoder runs check_msg() first, the same check the decoder ends with, so this code
 * never sends a message that this code would refuse.
 *
 * Invariants:
 *   - The decoder never reads outside [body, body + len), and the memory it allocates is
 *     bounded by KHALA_PROTO_OBJECTS_MAX objects, whatever the declared counts in the body.
 *   - On failure, the caller's message and buffer keep their previous contents.
 *   - Every decode error is KHALA_EPROTO (or -ENOMEM) with a message naming the problem.
 *
 * Why not msgpack-c alone: msgpack_unpack() allocates a container's elements when it reads the
 * container's header, before it knows whether they are there, so the five bytes
 * "dd ff ff ff ff" (an array of 2^32 - 1 elements) ask the zone for 96 GiB. Step 1 exists so
 * that msgpack-c only ever sees bodies whose counts are backed by bytes, and never deeper than
 * our limit. Why not msgpack_unpacker: it copies the input into its own buffer, so values could
 * not be views of the frame. Why not a hand-written decoder end to end: step 1 already is one
 * for the structure; the object model, number forms and packer are msgpack-c's, well used and
 * shared with any future client in another language.
 */
#include "proto.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "errbuf.h"

/** First chunk of a decoded message's zone: enough for a typical request's map (a dozen
 * entries of 48 bytes) in one malloc. Larger bodies chain more chunks. */
#define KHALA_PROTO_ZONE_CHUNK 1024u

/* A peer's string in an error message: the one way keys are shown (lib/errbuf.h). */
#define quote(p, len, out) khala__errbuf_quote((p), (len), (out), QUOTE_BUF)
#define QUOTE_BUF KHALA_ERRBUF_QUOTE_CAP

/* ------------------------------------------------------------------------------------------ */
/* Names                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* Each table comes from its list (KHALA_*_LIST), indexed by value; index 0 of the tables whose
 * enum starts at NONE is NULL. A value missing from a list leaves a NULL hole, which the name
 * functions report as "no name" and tests/test_proto.c catches. */
#define TYPE_NAME_(NAME, id, name) [KHALA_TYPE_##NAME] = name,
static const char *const type_names[KHALA_TYPE_COUNT] = {KHALA_TYPE_LIST(TYPE_NAME_)};
#undef TYPE_NAME_

#define OP_NAME_(NAME, name, writes) [KHALA_OP_##NAME] = name,
static const char *const op_names[KHALA_OP_COUNT] = {KHALA_OP_LIST(OP_NAME_)};
#undef OP_NAME_

#define OP_WRITES_(NAME, name, writes) [KHALA_OP_##NAME] = writes,
static const unsigned char op_writes[KHALA_OP_COUNT] = {KHALA_OP_LIST(OP_WRITES_)};
#undef OP_WRITES_

#define MODE_NAME_(NAME, v, wire, conf) [KHALA_MODE_##NAME] = wire,
static const char *const mode_names[] = {KHALA_MODE_LIST(MODE_NAME_)};
#undef MODE_NAME_

#define BY_NAME_(NAME, name) [KHALA_BY_##NAME] = name,
static const char *const by_names[KHALA_BY_COUNT] = {KHALA_BY_LIST(BY_NAME_)};
#undef BY_NAME_

#define LEVEL_NAME_(NAME, name, stores) [KHALA_LEVEL_##NAME] = name,
static const char *const level_names[KHALA_LEVEL_COUNT] = {KHALA_LEVEL_LIST(LEVEL_NAME_)};
#undef LEVEL_NAME_

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

_Static_assert(KHALA_MODE_DEFAULT == 0, "the wire never carries DEFAULT: index 0 has no name");
_Static_assert(KHALA_LEVEL_L1 == 1 && KHALA_LEVEL_L2 == 2 && KHALA_LEVEL_L3 == 3,
               "storage levels come first in KHALA_LEVEL_LIST: L<n> is n");

/* Index of the name equal to (s, len) in names[1..n), or 0 when none is. Holes (NULL) are
 * skipped. */
static int name_index(const char *const *names, size_t n, const void *s, size_t len) {
    for (size_t i = 1; i < n; i++)
        if (names[i] && strlen(names[i]) == len && memcmp(names[i], s, len) == 0)
            return (int)i;
    return 0;
}

const char *khala__proto_type_name(khala_type_t type) {
    return (unsigned)type < KHALA_TYPE_COUNT ? type_names[type] : NULL;
}

int khala__proto_type_parse(const char *name, size_t len, khala_type_t *type) {
    /* Type ids start at 0, so name_index (which skips index 0) does not fit. */
    for (unsigned i = 0; i < KHALA_TYPE_COUNT; i++) {
        if (type_names[i] && strlen(type_names[i]) == len &&
            memcmp(type_names[i], name, len) == 0) {
            *type = (khala_type_t)i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *khala__proto_op_name(khala_op_t op) {
    return (unsigned)op < KHALA_OP_COUNT ? op_names[op] : NULL;
}

int khala__proto_op_parse(const char *name, size_t len, khala_op_t *op) {
    int i = name_index(op_names, NELEM(op_names), name, len);
    if (!i)
        return -EINVAL;
    *op = (khala_op_t)i;
    return 0;
}

bool khala__proto_op_writes(khala_op_t op) {
    return (unsigned)op < KHALA_OP_COUNT && op_writes[op];
}

const char *khala__proto_level_name(khala_level_t level) {
    return (unsigned)level < NELEM(level_names) ? level_names[level] : NULL;
}

int khala__proto_level_parse(const char *name, size_t len, khala_level_t *level) {
    int i = name_index(level_names, NELEM(level_names), name, len);
    if (!i)
        return -EINVAL;
    *level = (khala_level_t)i;
    return 0;
}

const char *khala__proto_mode_name(khala_mode_t mode) {
    return (unsigned)mode < NELEM(mode_names) ? mode_names[mode] : NULL;
}

int khala__proto_mode_parse(const char *name, size_t len, khala_mode_t *mode) {
    int i = name_index(mode_names, NELEM(mode_names), name, len);
    if (!i)
        return -EINVAL;
    *mode = (khala_mode_t)i;
    return 0;
}

const char *khala__proto_by_name(khala_by_t by) {
    return (unsigned)by < NELEM(by_names) ? by_names[by] : NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Buffers                                                                                     */
/* ------------------------------------------------------------------------------------------ */

void khala__proto_buf_init(khala_buf_t *b) {
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void khala__proto_buf_free(khala_buf_t *b) {
    free(b->data);
    khala__proto_buf_init(b);
}

void khala__proto_buf_reset(khala_buf_t *b) {
    b->len = 0;
}

int khala__proto_buf_reserve(khala_buf_t *b, size_t n) {
    if (b->cap - b->len >= n)
        return 0;
    if (n > SIZE_MAX / 2 - b->len)
        return -ENOMEM;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < n)
        cap *= 2;
    uint8_t *p = realloc(b->data, cap);
    if (!p)
        return -ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int khala__proto_buf_append(khala_buf_t *b, const void *p, size_t n) {
    if (n == 0)
        return 0;
    int rc = khala__proto_buf_reserve(b, n);
    if (rc != 0)
        return rc;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void khala__proto_buf_consume(khala_buf_t *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

/* ------------------------------------------------------------------------------------------ */
/* Framing                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static uint32_t load_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void store_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

int khala__proto_frame_check(const void *buf, size_t avail, uint32_t max_frame, uint32_t *body_len,
                             char *err, size_t errlen) {
    if (max_frame == 0)
        max_frame = KHALA_FRAME_MAX_DEFAULT;
    if (max_frame > KHALA_FRAME_MAX_CEILING)
        max_frame = KHALA_FRAME_MAX_CEILING;
    if (avail < KHALA_FRAME_HEADER)
        return KHALA_PROTO_NEED_MORE;
    uint32_t n = load_be32(buf);
    if (n == 0)
        return khala__errbuf(err, errlen, KHALA_EPROTO,
                             "frame of 0 bytes (a body holds at least a map)");
    if (n > max_frame)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "frame of %u bytes exceeds max_frame %u", n,
                             max_frame);
    *body_len = n;
    return avail - KHALA_FRAME_HEADER >= n ? 0 : KHALA_PROTO_NEED_MORE;
}

/* ------------------------------------------------------------------------------------------ */
/* Step 1: the structural scan                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* The lengths a msgpack type byte announces: hdr is the header's size in bytes including the
 * type byte, size_bytes how many of its trailing bytes hold a big-endian length or count (0 when
 * fixed), fixed the payload or count when size_bytes == 0, extra the bytes of payload beyond
 * the length (the type byte of an ext). kind: 0 scalar with payload, 1 array, 2 map, -1 the
 * never-used byte 0xc1. */
typedef struct mp_head {
    int kind;
    uint8_t hdr;
    uint8_t size_bytes;
    uint8_t extra;
    uint32_t fixed;
} mp_head_t;

static mp_head_t mp_head(uint8_t c) {
    mp_head_t h = {0, 1, 0, 0, 0};
    if (c <= 0x7f || c >= 0xe0)
        return h; /* fixints */
    if (c <= 0x8f) {
        h.kind = 2;
        h.fixed = c & 0x0f;
        return h;
    }
    if (c <= 0x9f) {
        h.kind = 1;
        h.fixed = c & 0x0f;
        return h;
    }
    if (c <= 0xbf) {
        h.fixed = c & 0x1f;
        return h;
    }
    switch (c) {
        case 0xc0: /* nil, false, true */
        case 0xc2:
        case 0xc3:
            return h;
        case 0xc1:
            h.kind = -1;
            return h;
        case 0xc4: /* bin 8/16/32, str 8/16/32 */
        case 0xd9:
            h.size_bytes = 1;
            break;
        case 0xc5:
        case 0xda:
            h.size_bytes = 2;
            break;
        case 0xc6:
        case 0xdb:
            h.size_bytes = 4;
            break;
        case 0xc7: /* ext 8/16/32: length, then a type byte */
            h.size_bytes = 1;
            h.extra = 1;
            break;
        case 0xc8:
            h.size_bytes = 2;
            h.extra = 1;
            break;
        case 0xc9:
            h.size_bytes = 4;
            h.extra = 1;
            break;
        case 0xca: /* float 32/64 */
            h.fixed = 4;
            break;
        case 0xcb:
            h.fixed = 8;
            break;
        case 0xcc: /* uint and int 8/16/32/64 */
        case 0xd0:
            h.fixed = 1;
            break;
        case 0xcd:
        case 0xd1:
            h.fixed = 2;
            break;
        case 0xce:
        case 0xd2:
            h.fixed = 4;
            break;
        case 0xcf:
        case 0xd3:
            h.fixed = 8;
            break;
        case 0xd4: /* fixext 1/2/4/8/16: a type byte, then the data */
            h.fixed = 2;
            break;
        case 0xd5:
            h.fixed = 3;
            break;
        case 0xd6:
            h.fixed = 5;
            break;
        case 0xd7:
            h.fixed = 9;
            break;
        case 0xd8:
            h.fixed = 17;
            break;
        case 0xdc: /* array 16/32, map 16/32 */
            h.kind = 1;
            h.size_bytes = 2;
            break;
        case 0xdd:
            h.kind = 1;
            h.size_bytes = 4;
            break;
        case 0xde:
            h.kind = 2;
            h.size_bytes = 2;
            break;
        default: /* 0xdf */
            h.kind = 2;
            h.size_bytes = 4;
            break;
    }
    h.hdr = (uint8_t)(1 + h.size_bytes);
    return h;
}

/* Step 1 of the theory block: check that body is one msgpack map within every limit, reading
 * nothing outside it and allocating nothing. */
static int scan_body(const uint8_t *p, size_t len, char *err, size_t errlen) {
    /* left[d]: objects still to read in the open container at depth d; depth 0 is the body
     * itself, which holds one object (the map, at depth 1). */
    uint64_t left[KHALA_PROTO_DEPTH_MAX + 1];
    int depth = 0;
    size_t pos = 0, objects = 0;
    left[0] = 1;
    if (p[0] < 0x80 || (p[0] > 0x8f && p[0] != 0xde && p[0] != 0xdf))
        return khala__errbuf(err, errlen, KHALA_EPROTO,
                             "body is not a msgpack map (first byte 0x%02x)", p[0]);
    for (;;) {
        while (depth > 0 && left[depth] == 0)
            depth--;
        if (left[depth] == 0)
            break; /* depth 0: the body's one object is read */
        left[depth]--;
        if (++objects > KHALA_PROTO_OBJECTS_MAX)
            return khala__errbuf(err, errlen, KHALA_EPROTO,
                                 "body holds more than %u msgpack objects",
                                 KHALA_PROTO_OBJECTS_MAX);
        if (pos >= len)
            return khala__errbuf(err, errlen, KHALA_EPROTO,
                                 "truncated msgpack: body ends at byte %zu", len);
        mp_head_t h = mp_head(p[pos]);
        if (h.kind < 0)
            return khala__errbuf(err, errlen, KHALA_EPROTO, "invalid msgpack byte 0xc1 at byte %zu",
                                 pos);
        if (len - pos < h.hdr)
            return khala__errbuf(err, errlen, KHALA_EPROTO,
                                 "truncated msgpack: header at byte %zu needs %u bytes", pos,
                                 h.hdr);
        uint64_t n = h.fixed;
        if (h.size_bytes == 1)
            n = p[pos + 1];
        else if (h.size_bytes == 2)
            n = (uint64_t)p[pos + 1] << 8 | p[pos + 2];
        else if (h.size_bytes == 4)
            n = load_be32(p + pos + 1);
        size_t at = pos;
        pos += h.hdr;
        if (h.kind == 0) {
            uint64_t payload = n + h.extra;
            if (payload > len - pos)
                return khala__errbuf(
                    err, errlen, KHALA_EPROTO,
                    "truncated msgpack: object at byte %zu needs %llu more bytes, %zu "
                    "left",
                    at, (unsigned long long)payload, len - pos);
            pos += (size_t)payload;
            continue;
        }
        if (depth + 1 > KHALA_PROTO_DEPTH_MAX)
            return khala__errbuf(err, errlen, KHALA_EPROTO, "nesting deeper than %d at byte %zu",
                                 KHALA_PROTO_DEPTH_MAX, at);
        if (h.kind == 2 && n > KHALA_PROTO_MAP_MAX)
            return khala__errbuf(err, errlen, KHALA_EPROTO,
                                 "map of %llu entries at byte %zu, max %u", (unsigned long long)n,
                                 at, KHALA_PROTO_MAP_MAX);
        if (h.kind == 1 && n > KHALA_PROTO_ARRAY_MAX)
            return khala__errbuf(err, errlen, KHALA_EPROTO,
                                 "array of %llu elements at byte %zu, max %u",
                                 (unsigned long long)n, at, KHALA_PROTO_ARRAY_MAX);
        uint64_t items = h.kind == 2 ? 2 * n : n;
        if (items > len - pos) /* each object takes at least one byte */
            return khala__errbuf(
                err, errlen, KHALA_EPROTO,
                "truncated msgpack: container at byte %zu holds %llu objects, %zu bytes "
                "left",
                at, (unsigned long long)items, len - pos);
        left[++depth] = items;
    }
    if (pos != len)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "%zu trailing bytes after the body's map",
                             len - pos);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Fields                                                                                      */
/* ------------------------------------------------------------------------------------------ */

enum { DIR_REQ = 1, DIR_REP = 2 };

/* What a field's value is on the wire. */
typedef enum wire {
    W_UINT,   /* non-negative integer */
    W_RC,     /* 0 or a negative int32 */
    W_BOOL,   /* true / false */
    W_BIN,    /* bin */
    W_STR,    /* str */
    W_WORD,   /* str, one of a fixed list of names */
    W_KEYS,   /* array of bin */
    W_DATA,   /* map of str -> scalar or map */
    W_OP,     /* str, an op name */
    W_FLOAT,  /* float32 / float64 (an integer is accepted too) */
    W_MATCHES /* array of [bin, float, bin, uint, uint] (khala_proto_match_t) */
} wire_t;

/* The known fields, in encoding order. bit is the KHALA_F_* presence bit (0 for the fields
 * every message has), dirs where the field is known: elsewhere it is an unknown key, ignored
 * by the decoder and never sent by the encoder. */
typedef enum field_id {
    FLD_ID,
    FLD_OP,
    FLD_RC,
    FLD_ERR,
    FLD_K,
    FLD_V,
    FLD_TTL,
    FLD_TYPE,
    FLD_VER,
    FLD_MODE,
    FLD_PREFIX,
    FLD_BY,
    FLD_PATTERN,
    FLD_CURSOR,
    FLD_COUNT,
    FLD_LOADER,
    FLD_PROTO,
    FLD_NAME,
    FLD_LVL,
    FLD_LOAD,
    FLD_GEN,
    FLD_MAX_FRAME,
    FLD_MAX_VALUE,
    FLD_KEYS,
    FLD_DATA,
    FLD_ARCHIVE,
    FLD_SIM,
    FLD_MATCHES,
    FLD_LINKS,
    FLD_COUNT_ /* number of fields */
} field_id_t;

typedef struct field {
    const char *name;
    uint32_t bit;
    uint8_t dirs;
    wire_t wire;
} field_t;

static const field_t fields[FLD_COUNT_] = {
    [FLD_ID] = {"id", 0, DIR_REQ | DIR_REP, W_UINT},
    [FLD_OP] = {"op", 0, DIR_REQ, W_OP},
    [FLD_RC] = {"rc", 0, DIR_REP, W_RC},
    [FLD_ERR] = {"err", KHALA_F_ERR, DIR_REQ | DIR_REP, W_STR},
    [FLD_K] = {"k", KHALA_F_K, DIR_REQ, W_BIN},
    [FLD_V] = {"v", KHALA_F_V, DIR_REQ | DIR_REP, W_BIN},
    [FLD_TTL] = {"ttl", KHALA_F_TTL, DIR_REQ | DIR_REP, W_UINT},
    [FLD_TYPE] = {"type", KHALA_F_TYPE, DIR_REQ | DIR_REP, W_UINT},
    [FLD_VER] = {"ver", KHALA_F_VER, DIR_REQ | DIR_REP, W_UINT},
    [FLD_MODE] = {"mode", KHALA_F_MODE, DIR_REQ, W_WORD},
    [FLD_PREFIX] = {"prefix", KHALA_F_PREFIX, DIR_REQ, W_BIN},
    [FLD_BY] = {"by", KHALA_F_BY, DIR_REQ, W_WORD},
    [FLD_PATTERN] = {"pattern", KHALA_F_PATTERN, DIR_REQ, W_BIN},
    [FLD_CURSOR] = {"cursor", KHALA_F_CURSOR, DIR_REQ | DIR_REP, W_UINT},
    [FLD_COUNT] = {"count", KHALA_F_COUNT, DIR_REQ | DIR_REP, W_UINT},
    [FLD_LOADER] = {"loader", KHALA_F_LOADER, DIR_REQ, W_BOOL},
    [FLD_PROTO] = {"proto", KHALA_F_PROTO, DIR_REQ | DIR_REP, W_UINT},
    [FLD_NAME] = {"name", KHALA_F_NAME, DIR_REQ | DIR_REP, W_STR},
    [FLD_LVL] = {"lvl", KHALA_F_LVL, DIR_REP, W_WORD},
    [FLD_LOAD] = {"load", KHALA_F_LOAD, DIR_REP, W_BOOL},
    [FLD_GEN] = {"gen", KHALA_F_GEN, DIR_REP, W_UINT},
    [FLD_MAX_FRAME] = {"max_frame", KHALA_F_MAX_FRAME, DIR_REP, W_UINT},
    [FLD_MAX_VALUE] = {"max_value", KHALA_F_MAX_VALUE, DIR_REP, W_UINT},
    [FLD_KEYS] = {"keys", KHALA_F_KEYS, DIR_REQ | DIR_REP, W_KEYS},
    [FLD_DATA] = {"data", KHALA_F_DATA, DIR_REP, W_DATA},
    [FLD_ARCHIVE] = {"archive", KHALA_F_ARCHIVE, DIR_REQ, W_BOOL},
    [FLD_SIM] = {"sim", KHALA_F_SIM, DIR_REQ, W_FLOAT},
    [FLD_MATCHES] = {"matches", KHALA_F_MATCHES, DIR_REP, W_MATCHES},
    [FLD_LINKS] = {"links", KHALA_F_LINKS, DIR_REQ, W_KEYS},
};

/* The index of the field named (s, len) known in dir, or -1. */
static int field_lookup(const char *s, size_t len, int dir) {
    for (int i = 0; i < FLD_COUNT_; i++)
        if ((fields[i].dirs & dir) && strlen(fields[i].name) == len &&
            memcmp(fields[i].name, s, len) == 0)
            return i;
    return -1;
}

/* The wire type of a decoded object with its article, for messages. */
static const char *obj_kind(const msgpack_object *o) {
    switch (o->type) {
        case MSGPACK_OBJECT_NIL:
            return "nil";
        case MSGPACK_OBJECT_BOOLEAN:
            return "a bool";
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
            return "an unsigned integer";
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
            return "a negative integer";
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
            return "a float";
        case MSGPACK_OBJECT_STR:
            return "a str";
        case MSGPACK_OBJECT_BIN:
            return "a bin";
        case MSGPACK_OBJECT_ARRAY:
            return "an array";
        case MSGPACK_OBJECT_MAP:
            return "a map";
        default:
            return "an ext";
    }
}

static const char *wire_expect(wire_t w) {
    switch (w) {
        case W_UINT:
            return "an unsigned integer";
        case W_RC:
            return "0 or a negative integer";
        case W_BOOL:
            return "a bool";
        case W_BIN:
            return "a bin";
        case W_KEYS:
            return "an array of bin";
        case W_DATA:
            return "a map";
        case W_FLOAT:
            return "a float";
        case W_MATCHES:
            return "an array of [key, similarity, value, version, ttl]";
        default:
            return "a str";
    }
}

/* Is msgpack type t what wire w needs? */
static int wire_ok(wire_t w, msgpack_object_type t) {
    switch (w) {
        case W_UINT:
            return t == MSGPACK_OBJECT_POSITIVE_INTEGER;
        case W_RC:
            return t == MSGPACK_OBJECT_POSITIVE_INTEGER || t == MSGPACK_OBJECT_NEGATIVE_INTEGER;
        case W_BOOL:
            return t == MSGPACK_OBJECT_BOOLEAN;
        case W_BIN:
            return t == MSGPACK_OBJECT_BIN;
        case W_KEYS:
            return t == MSGPACK_OBJECT_ARRAY;
        case W_DATA:
            return t == MSGPACK_OBJECT_MAP;
        case W_FLOAT:
            return t == MSGPACK_OBJECT_FLOAT32 || t == MSGPACK_OBJECT_FLOAT64 ||
                   t == MSGPACK_OBJECT_POSITIVE_INTEGER || t == MSGPACK_OBJECT_NEGATIVE_INTEGER;
        case W_MATCHES:
            return t == MSGPACK_OBJECT_ARRAY;
        default:
            return t == MSGPACK_OBJECT_STR;
    }
}

static khala_bytes_t obj_bytes(const msgpack_object *o) {
    khala_bytes_t b;
    /* str and bin share one layout in msgpack-c; both point into the body. */
    b.ptr = (const uint8_t *)o->via.str.ptr;
    b.len = o->via.str.size;
    return b;
}

/* Step 3: the "data" tree, converted into khala_kv_t arrays in the zone. depth counts the map
 * being converted (the "data" map itself is 1). */
static int decode_data(const msgpack_object *map, int depth, msgpack_zone *zone,
                       const khala_kv_t **out, uint32_t *nout, char *err, size_t errlen) {
    uint32_t n = map->via.map.size;
    if (depth > KHALA_PROTO_DATA_DEPTH_MAX)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'data' nests deeper than %d maps",
                             KHALA_PROTO_DATA_DEPTH_MAX);
    khala_kv_t *items = NULL;
    if (n > 0) {
        items = msgpack_zone_malloc(zone, (size_t)n * sizeof(*items));
        if (!items)
            return -ENOMEM;
    }
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        const msgpack_object *v = &map->via.map.ptr[i].val;
        khala_kv_t *kv = &items[i];
        char q[QUOTE_BUF];
        if (k->type != MSGPACK_OBJECT_STR)
            return khala__errbuf(err, errlen, KHALA_EPROTO,
                                 "field 'data' has %s key, expected a str", obj_kind(k));
        kv->key = obj_bytes(k);
        memset(&kv->as, 0, sizeof(kv->as));
        switch (v->type) {
            case MSGPACK_OBJECT_NIL:
                kv->kind = KHALA_KV_NIL;
                break;
            case MSGPACK_OBJECT_BOOLEAN:
                kv->kind = KHALA_KV_BOOL;
                kv->as.b = v->via.boolean;
                break;
            case MSGPACK_OBJECT_POSITIVE_INTEGER:
                kv->kind = KHALA_KV_UINT;
                kv->as.u = v->via.u64;
                break;
            case MSGPACK_OBJECT_NEGATIVE_INTEGER:
                kv->kind = KHALA_KV_INT;
                kv->as.i = v->via.i64;
                break;
            case MSGPACK_OBJECT_FLOAT32:
            case MSGPACK_OBJECT_FLOAT64:
                kv->kind = KHALA_KV_DOUBLE;
                kv->as.d = v->via.f64;
                break;
            case MSGPACK_OBJECT_STR:
                kv->kind = KHALA_KV_STR;
                kv->as.s = obj_bytes(v);
                break;
            case MSGPACK_OBJECT_BIN:
                kv->kind = KHALA_KV_BIN;
                kv->as.s = obj_bytes(v);
                break;
            case MSGPACK_OBJECT_MAP: {
                kv->kind = KHALA_KV_MAP;
                int rc =
                    decode_data(v, depth + 1, zone, &kv->as.map.items, &kv->as.map.n, err, errlen);
                if (rc != 0)
                    return rc;
                break;
            }
            default:
                return khala__errbuf(err, errlen, KHALA_EPROTO,
                                     "field 'data' entry '%s' holds %s, expected a scalar or a map",
                                     quote(kv->key.ptr, kv->key.len, q), obj_kind(v));
        }
    }
    *out = items;
    *nout = n;
    return 0;
}

/* A number as a double (wire W_FLOAT). */
static double obj_double(const msgpack_object *v) {
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        return (double)v->via.u64;
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return (double)v->via.i64;
    return v->via.f64; /* msgpack-c widens float32 to f64 */
}

/* Step 3: the "matches" array of a similar reply into khala_proto_match_t in the zone (ranges
 * are checked by check_msg, for the encoder too). */
static int decode_matches(const msgpack_object *v, msgpack_zone *zone, khala_msg_t *m, char *err,
                          size_t errlen) {
    uint32_t n = v->via.array.size;
    khala_proto_match_t *ms = NULL;
    if (n > 0 && !(ms = msgpack_zone_malloc(zone, (size_t)n * sizeof(*ms))))
        return -ENOMEM;
    static const msgpack_object_type want[5] = {MSGPACK_OBJECT_BIN, MSGPACK_OBJECT_FLOAT64,
                                                MSGPACK_OBJECT_BIN, MSGPACK_OBJECT_POSITIVE_INTEGER,
                                                MSGPACK_OBJECT_POSITIVE_INTEGER};
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *e = &v->via.array.ptr[i];
        if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 5)
            return khala__errbuf(err, errlen, KHALA_EPROTO,
                                 "field 'matches' element %u is %s, expected an array of 5", i,
                                 obj_kind(e));
        const msgpack_object *x = e->via.array.ptr;
        for (int j = 0; j < 5; j++) {
            int ok = x[j].type == want[j] || (j == 1 && wire_ok(W_FLOAT, x[j].type));
            if (!ok)
                return khala__errbuf(err, errlen, KHALA_EPROTO,
                                     "field 'matches' element %u item %d is %s", i, j,
                                     obj_kind(&x[j]));
        }
        ms[i] = (khala_proto_match_t){.key = obj_bytes(&x[0]),
                                      .sim = obj_double(&x[1]),
                                      .value = obj_bytes(&x[2]),
                                      .ver = x[3].via.u64,
                                      .ttl_ms = x[4].via.u64};
    }
    m->matches = ms;
    m->nmatches = n;
    return 0;
}

/* Step 3: one known field's value into m. */
static int decode_field(int f, const msgpack_object *v, msgpack_zone *zone, khala_msg_t *m,
                        char *err, size_t errlen) {
    const field_t *fd = &fields[f];
    char q[QUOTE_BUF];
    if (!wire_ok(fd->wire, v->type))
        return khala__errbuf(err, errlen, KHALA_EPROTO, "field '%s' is %s, expected %s", fd->name,
                             obj_kind(v), wire_expect(fd->wire));
    uint64_t u = v->via.u64;
    khala_bytes_t b = obj_bytes(v);
    switch ((field_id_t)f) {
        case FLD_ID:
            m->id = u;
            break;
        case FLD_OP: {
            int op = name_index(op_names, KHALA_OP_COUNT, b.ptr, b.len);
            if (op == 0)
                return khala__errbuf(err, errlen, KHALA_EPROTO, "unknown op '%s'",
                                     quote(b.ptr, b.len, q));
            m->op = (khala_op_t)op;
            break;
        }
        case FLD_RC:
            if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && u != 0)
                return khala__errbuf(err, errlen, KHALA_EPROTO,
                                     "field 'rc' is %llu, expected 0 or negative",
                                     (unsigned long long)u);
            if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && v->via.i64 < INT32_MIN)
                return khala__errbuf(err, errlen, KHALA_EPROTO,
                                     "field 'rc' is %lld, below INT32_MIN", (long long)v->via.i64);
            m->rc = (int32_t)v->via.i64;
            break;
        case FLD_ERR:
            m->err = b;
            break;
        case FLD_K:
            m->key = b;
            break;
        case FLD_V:
            m->value = b;
            break;
        case FLD_TTL:
            m->ttl_ms = u;
            break;
        case FLD_TYPE:
            if (u >= KHALA_TYPE_COUNT)
                return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'type' is %llu, max %u",
                                     (unsigned long long)u, (unsigned)KHALA_TYPE_COUNT - 1);
            m->type = (khala_type_t)u;
            break;
        case FLD_VER:
            m->ver = u;
            break;
        case FLD_MODE:
            m->mode = (khala_mode_t)name_index(mode_names, NELEM(mode_names), b.ptr, b.len);
            if (m->mode == KHALA_MODE_DEFAULT)
                return khala__errbuf(err, errlen, KHALA_EPROTO,
                                     "field 'mode' is '%s', expected 'through' or 'behind'",
                                     quote(b.ptr, b.len, q));
            break;
        case FLD_PREFIX:
            m->prefix = b;
            break;
        case FLD_BY:
            m->by = (khala_by_t)name_index(by_names, NELEM(by_names), b.ptr, b.len);
            if (m->by == KHALA_BY_NONE)
                return khala__errbuf(err, errlen, KHALA_EPROTO,
                                     "field 'by' is '%s', expected 'key', 'prefix' or 'type'",
                                     quote(b.ptr, b.len, q));
            break;
        case FLD_PATTERN:
            m->pattern = b;
            break;
        case FLD_CURSOR:
            m->cursor = u;
            break;
        case FLD_COUNT:
            if (u > KHALA_PROTO_ARRAY_MAX)
                return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'count' is %llu, max %u",
                                     (unsigned long long)u, KHALA_PROTO_ARRAY_MAX);
            m->count = (uint32_t)u;
            break;
        case FLD_LOADER:
            m->loader = v->via.boolean;
            break;
        case FLD_ARCHIVE:
            m->archive = v->via.boolean;
            break;
        case FLD_PROTO:
            if (u == 0 || u > UINT32_MAX)
                return khala__errbuf(err, errlen, KHALA_EPROTO,
                                     "field 'proto' is %llu, expected 1..%u", (unsigned long long)u,
                                     UINT32_MAX);
            m->proto = (uint32_t)u;
            break;
        case FLD_NAME:
            m->name = b;
            break;
        case FLD_LVL:
            m->lvl = (khala_level_t)name_index(level_names, NELEM(level_names), b.ptr, b.len);
            if (m->lvl == KHALA_LEVEL_NONE)
                return khala__errbuf(err, errlen, KHALA_EPROTO,
                                     "field 'lvl' is '%s', expected 'l1', 'l2', 'l3', 'loader' or "
                                     "'stale'",
                                     quote(b.ptr, b.len, q));
            break;
        case FLD_LOAD:
            m->load = v->via.boolean;
            break;
        case FLD_GEN:
            m->gen = u;
            break;
        case FLD_MAX_FRAME:
        case FLD_MAX_VALUE:
            if (u > KHALA_FRAME_MAX_CEILING)
                return khala__errbuf(err, errlen, KHALA_EPROTO, "field '%s' is %llu, max %u",
                                     fd->name, (unsigned long long)u, KHALA_FRAME_MAX_CEILING);
            if (f == FLD_MAX_FRAME)
                m->max_frame = (uint32_t)u;
            else
                m->max_value = (uint32_t)u;
            break;
        case FLD_KEYS:
        case FLD_LINKS: {
            uint32_t n = v->via.array.size;
            khala_bytes_t *keys = NULL;
            if (n > 0) {
                keys = msgpack_zone_malloc(zone, (size_t)n * sizeof(*keys));
                if (!keys)
                    return -ENOMEM;
            }
            for (uint32_t i = 0; i < n; i++) {
                const msgpack_object *e = &v->via.array.ptr[i];
                if (e->type != MSGPACK_OBJECT_BIN)
                    return khala__errbuf(err, errlen, KHALA_EPROTO,
                                         "field '%s' element %u is %s, expected a bin", fd->name, i,
                                         obj_kind(e));
                keys[i] = obj_bytes(e);
            }
            if (f == FLD_LINKS) {
                m->links = keys;
                m->nlinks = n;
            } else {
                m->keys = keys;
                m->nkeys = n;
            }
            break;
        }
        case FLD_DATA:
            return decode_data(v, 1, zone, &m->data, &m->ndata, err, errlen);
        case FLD_SIM:
            m->sim = obj_double(v);
            break;
        case FLD_MATCHES:
            return decode_matches(v, zone, m, err, errlen);
        default:
            break;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The shared check: what a message must hold, for both the encoder and the decoder            */
/* ------------------------------------------------------------------------------------------ */

static int check_len(const char *name, khala_bytes_t b, size_t min, size_t max, char *err,
                     size_t errlen) {
    if (b.len < min)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "field '%s' is empty", name);
    if (b.len > max)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "field '%s' is %zu bytes, max %zu", name,
                             b.len, max);
    return 0;
}

static int need(const khala_msg_t *m, uint32_t bits, const char *what, char *err, size_t errlen) {
    uint32_t missing = bits & ~m->has;
    if (!missing)
        return 0;
    for (int i = 0; i < FLD_COUNT_; i++)
        if (fields[i].bit & missing)
            return khala__errbuf(err, errlen, KHALA_EPROTO, "missing field '%s' (required by %s)",
                                 fields[i].name, what);
    return KHALA_EPROTO; /* not reached: missing has a bit of some field */
}

/* The encoder's view of the data tree: the same limits the decoder enforces. */
static int check_data(const khala_kv_t *items, uint32_t n, int depth, char *err, size_t errlen) {
    if (depth > KHALA_PROTO_DATA_DEPTH_MAX)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'data' nests deeper than %d maps",
                             KHALA_PROTO_DATA_DEPTH_MAX);
    if (n > KHALA_PROTO_MAP_MAX)
        return khala__errbuf(err, errlen, KHALA_EPROTO,
                             "field 'data' has a map of %u entries, max %u", n,
                             KHALA_PROTO_MAP_MAX);
    if (n > 0 && !items)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'data' has %u entries and no array",
                             n);
    for (uint32_t i = 0; i < n; i++) {
        if (items[i].kind > KHALA_KV_MAP)
            return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'data' has an entry of kind %d",
                                 (int)items[i].kind);
        if (items[i].key.len == 0 || items[i].key.len > KHALA_KEY_MAX)
            return khala__errbuf(err, errlen, KHALA_EPROTO,
                                 "field 'data' has an entry name of %zu bytes, expected 1..%d",
                                 items[i].key.len, KHALA_KEY_MAX);
        if ((items[i].kind == KHALA_KV_STR || items[i].kind == KHALA_KV_BIN) &&
            items[i].as.s.len > KHALA_FRAME_MAX_CEILING)
            return khala__errbuf(err, errlen, KHALA_ETOOBIG,
                                 "field 'data' entry has a value of %zu bytes, over the ceiling %u",
                                 items[i].as.s.len, KHALA_FRAME_MAX_CEILING);
        if (items[i].kind == KHALA_KV_MAP) {
            int rc = check_data(items[i].as.map.items, items[i].as.map.n, depth + 1, err, errlen);
            if (rc != 0)
                return rc;
        }
    }
    return 0;
}

/* The "matches" of a similar reply: bounded, keys in range, similarities in -1..1. */
static int check_matches(const khala_msg_t *m, char *err, size_t errlen) {
    if (m->nmatches > KHALA_SIMILAR_K_MAX)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'matches' has %u, max %u",
                             m->nmatches, KHALA_SIMILAR_K_MAX);
    if (m->nmatches > 0 && !m->matches)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'matches' has %u and no array",
                             m->nmatches);
    for (uint32_t i = 0; i < m->nmatches; i++) {
        const khala_proto_match_t *x = &m->matches[i];
        if (x->key.len == 0 || x->key.len > KHALA_KEY_MAX)
            return khala__errbuf(err, errlen, KHALA_EPROTO,
                                 "field 'matches' element %u has a key of %zu bytes, expected "
                                 "1..%d",
                                 i, x->key.len, KHALA_KEY_MAX);
        if (!(x->sim >= -1.0 && x->sim <= 1.0))
            return khala__errbuf(err, errlen, KHALA_EPROTO,
                                 "field 'matches' element %u has similarity %g, expected -1..1", i,
                                 x->sim);
    }
    return 0;
}

/* "links" (relationship caching): only on a put or fill, 1..KHALA_PROTO_ARRAY_MAX keys of
 * 1..KHALA_KEY_MAX bytes, none the item's own key (an item linked to itself would be deleted by
 * its own write). */
static int check_links(const khala_msg_t *m, char *err, size_t errlen) {
    if (m->op != KHALA_OP_PUT && m->op != KHALA_OP_FILL)
        return khala__errbuf(err, errlen, KHALA_EPROTO,
                             "field 'links' is only for put and fill, not %s",
                             khala__proto_op_name(m->op) ? khala__proto_op_name(m->op) : "?");
    if (m->nlinks == 0 || m->nlinks > KHALA_PROTO_ARRAY_MAX)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'links' has %u keys, expected 1..%u",
                             m->nlinks, KHALA_PROTO_ARRAY_MAX);
    if (!m->links)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'links' has %u keys and no array",
                             m->nlinks);
    for (uint32_t i = 0; i < m->nlinks; i++) {
        if (m->links[i].len == 0)
            return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'links' element %u is empty", i);
        if (m->links[i].len > KHALA_KEY_MAX)
            return khala__errbuf(err, errlen, KHALA_EPROTO,
                                 "field 'links' element %u is %zu bytes, max %d", i,
                                 m->links[i].len, KHALA_KEY_MAX);
        if ((m->has & KHALA_F_K) && m->links[i].len == m->key.len &&
            memcmp(m->links[i].ptr, m->key.ptr, m->key.len) == 0)
            return khala__errbuf(err, errlen, KHALA_EPROTO,
                                 "field 'links' element %u is the item's own key", i);
    }
    return 0;
}

/* Everything a valid message of direction dir holds, beyond the wire types: lengths, ranges,
 * and the fields its op requires. The decoder has already checked what only the wire can get
 * wrong (types, enum names); the encoder gets those checked here too. */
static int check_msg(const khala_msg_t *m, int dir, char *err, size_t errlen) {
    int rc;
    const char *opname = khala__proto_op_name(m->op);
    if (dir == DIR_REQ && !opname)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "unknown op %d", (int)m->op);
    if (dir == DIR_REP && m->rc > 0)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'rc' is %d, expected 0 or negative",
                             (int)m->rc);
#define LEN(bit, fname, b, min, max)                                                               \
    if ((m->has & (bit)) && (rc = check_len(fname, b, min, max, err, errlen)) != 0)                \
        return rc;
    LEN(KHALA_F_K, "k", m->key, 1, KHALA_KEY_MAX)
    LEN(KHALA_F_PREFIX, "prefix", m->prefix, 1, KHALA_KEY_MAX)
    LEN(KHALA_F_PATTERN, "pattern", m->pattern, 0, KHALA_PROTO_PATTERN_MAX)
    LEN(KHALA_F_NAME, "name", m->name, 1, KHALA_NAME_MAX)
    LEN(KHALA_F_ERR, "err", m->err, 0, KHALA_PROTO_ERR_MAX)
#undef LEN
    if ((m->has & KHALA_F_TYPE) && (unsigned)m->type >= KHALA_TYPE_COUNT)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'type' is %u, max %u",
                             (unsigned)m->type, (unsigned)KHALA_TYPE_COUNT - 1);
    if ((m->has & KHALA_F_MODE) && !khala__proto_mode_name(m->mode))
        return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'mode' is %d", (int)m->mode);
    if ((m->has & KHALA_F_BY) && !khala__proto_by_name(m->by))
        return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'by' is %d", (int)m->by);
    if ((m->has & KHALA_F_LVL) && !khala__proto_level_name(m->lvl))
        return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'lvl' is %d", (int)m->lvl);
    if ((m->has & KHALA_F_COUNT) && m->count > KHALA_PROTO_ARRAY_MAX)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'count' is %u, max %u", m->count,
                             KHALA_PROTO_ARRAY_MAX);
    if ((m->has & KHALA_F_PROTO) && m->proto == 0)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'proto' is 0, expected 1..%u",
                             UINT32_MAX);
    if ((m->has & KHALA_F_MAX_FRAME) && m->max_frame > KHALA_FRAME_MAX_CEILING)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'max_frame' is %u, max %u",
                             m->max_frame, KHALA_FRAME_MAX_CEILING);
    if ((m->has & KHALA_F_MAX_VALUE) && m->max_value > KHALA_FRAME_MAX_CEILING)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'max_value' is %u, max %u",
                             m->max_value, KHALA_FRAME_MAX_CEILING);
    if (m->has & KHALA_F_KEYS) {
        if (m->nkeys > KHALA_PROTO_ARRAY_MAX)
            return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'keys' has %u keys, max %u",
                                 m->nkeys, KHALA_PROTO_ARRAY_MAX);
        if (m->nkeys > 0 && !m->keys)
            return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'keys' has %u keys and no array",
                                 m->nkeys);
        for (uint32_t i = 0; i < m->nkeys; i++) {
            if (m->keys[i].len == 0)
                return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'keys' element %u is empty",
                                     i);
            if (m->keys[i].len > KHALA_KEY_MAX)
                return khala__errbuf(err, errlen, KHALA_EPROTO,
                                     "field 'keys' element %u is %zu bytes, max %d", i,
                                     m->keys[i].len, KHALA_KEY_MAX);
        }
    }
    if ((m->has & KHALA_F_DATA) && (rc = check_data(m->data, m->ndata, 1, err, errlen)) != 0)
        return rc;
    if ((m->has & KHALA_F_SIM) && !(m->sim >= -1.0 && m->sim <= 1.0))
        return khala__errbuf(err, errlen, KHALA_EPROTO, "field 'sim' is %g, expected -1..1",
                             m->sim);
    if ((m->has & KHALA_F_MATCHES) && (rc = check_matches(m, err, errlen)) != 0)
        return rc;
    if ((m->has & KHALA_F_LINKS) && (rc = check_links(m, err, errlen)) != 0)
        return rc;

    if (dir == DIR_REQ) {
        switch (m->op) {
            case KHALA_OP_HELLO:
                return need(m, KHALA_F_PROTO, opname, err, errlen);
            case KHALA_OP_GET:
                if ((m->has & KHALA_F_ARCHIVE) && m->archive && (m->has & KHALA_F_LOADER) &&
                    m->loader)
                    return khala__errbuf(err, errlen, KHALA_EPROTO,
                                         "a get with 'archive' cannot take 'loader': an archive "
                                         "read never leads a load");
                return need(m, KHALA_F_K, opname, err, errlen);
            case KHALA_OP_DEL:
            case KHALA_OP_TOUCH:
            case KHALA_OP_INSPECT:
            case KHALA_OP_FILL_FAIL:
                return need(m, KHALA_F_K, opname, err, errlen);
            case KHALA_OP_PUT:
            case KHALA_OP_FILL:
                return need(m, KHALA_F_K | KHALA_F_V, opname, err, errlen);
            case KHALA_OP_SIMILAR:
                return need(m, KHALA_F_V, opname, err, errlen);
            case KHALA_OP_INVALIDATE:
                if ((rc = need(m, KHALA_F_BY, opname, err, errlen)) != 0)
                    return rc;
                return need(m,
                            m->by == KHALA_BY_KEY      ? KHALA_F_K
                            : m->by == KHALA_BY_PREFIX ? KHALA_F_PREFIX
                                                       : KHALA_F_TYPE,
                            m->by == KHALA_BY_KEY      ? "invalidate by key"
                            : m->by == KHALA_BY_PREFIX ? "invalidate by prefix"
                                                       : "invalidate by type",
                            err, errlen);
            case KHALA_OP_WARM:
                if (!(m->has & (KHALA_F_KEYS | KHALA_F_PREFIX | KHALA_F_TYPE)))
                    return khala__errbuf(err, errlen, KHALA_EPROTO,
                                         "missing field: warm needs 'keys', 'prefix' or 'type'");
                return 0;
            default:
                return 0;
        }
    }
    if (m->rc != 0)
        return 0;
    switch (m->op) {
        case KHALA_OP_HELLO:
            return need(m,
                        KHALA_F_PROTO | KHALA_F_NAME | KHALA_F_GEN | KHALA_F_MAX_FRAME |
                            KHALA_F_MAX_VALUE,
                        "a hello reply", err, errlen);
        case KHALA_OP_GET:
            if ((m->has & KHALA_F_LOAD) && m->load)
                return 0;
            return need(m, KHALA_F_V | KHALA_F_LVL, "a get reply without 'load'", err, errlen);
        case KHALA_OP_PUT:
            return need(m, KHALA_F_VER, "a put reply", err, errlen);
        case KHALA_OP_KEYS:
            return need(m, KHALA_F_KEYS | KHALA_F_CURSOR, "a keys reply", err, errlen);
        case KHALA_OP_STATS:
        case KHALA_OP_CONFIG:
        case KHALA_OP_INSPECT:
            return need(m, KHALA_F_DATA, "a stats, config or inspect reply", err, errlen);
        case KHALA_OP_SIMILAR:
            return need(m, KHALA_F_MATCHES, "a similar reply", err, errlen);
        default:
            return 0;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Decoding                                                                                    */
/* ------------------------------------------------------------------------------------------ */

void khala__proto_msg_init(khala_msg_t *msg) {
    memset(msg, 0, sizeof(*msg));
}

void khala__proto_msg_free(khala_msg_t *msg) {
    if (msg->zone)
        msgpack_zone_free(msg->zone);
    khala__proto_msg_init(msg);
}

static int decode(int dir, khala_op_t op, const void *body, size_t len, khala_msg_t *msg, char *err,
                  size_t errlen) {
    if (len == 0)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "empty body");
    if (len > KHALA_FRAME_MAX_CEILING)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "body of %zu bytes exceeds the ceiling %u",
                             len, KHALA_FRAME_MAX_CEILING);
    int rc = scan_body(body, len, err, errlen); /* step 1 */
    if (rc != 0)
        return rc;

    msgpack_zone *zone = msgpack_zone_new(KHALA_PROTO_ZONE_CHUNK); /* step 2 */
    if (!zone)
        return -ENOMEM;
    msgpack_object root;
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack(body, len, &off, zone, &root);
    if (ur != MSGPACK_UNPACK_SUCCESS || root.type != MSGPACK_OBJECT_MAP) {
        /* Not reached for a body the scan accepted, but msgpack-c has the last word. */
        rc = ur == MSGPACK_UNPACK_NOMEM_ERROR
                 ? -ENOMEM
                 : khala__errbuf(err, errlen, KHALA_EPROTO, "msgpack-c refused the body (%d)",
                                 (int)ur);
        goto out;
    }

    khala_msg_t m; /* step 3 */
    khala__proto_msg_init(&m);
    m.op = op;
    uint32_t seen = 0; /* bit i: field i was in the map */
    for (uint32_t i = 0; i < root.via.map.size; i++) {
        const msgpack_object *k = &root.via.map.ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR) {
            rc = khala__errbuf(err, errlen, KHALA_EPROTO,
                               "a key of the body map is %s, expected a str", obj_kind(k));
            goto out;
        }
        int f = field_lookup(k->via.str.ptr, k->via.str.size, dir);
        if (f < 0)
            continue; /* unknown: ignored, for forward compatibility */
        if (seen & (1u << f)) {
            rc = khala__errbuf(err, errlen, KHALA_EPROTO, "duplicate field '%s'", fields[f].name);
            goto out;
        }
        seen |= 1u << f;
        m.has |= fields[f].bit;
        if ((rc = decode_field(f, &root.via.map.ptr[i].val, zone, &m, err, errlen)) != 0)
            goto out;
    }
    static const int always[2][2] = {{FLD_ID, FLD_OP}, {FLD_ID, FLD_RC}};
    for (int j = 0; j < 2; j++) {
        int f = always[dir == DIR_REP][j];
        if (!(seen & (1u << f))) {
            rc = khala__errbuf(err, errlen, KHALA_EPROTO, "missing field '%s'", fields[f].name);
            goto out;
        }
    }
    if (dir == DIR_REP && m.rc == 0)
        m.has &= ~(uint32_t)KHALA_F_ERR; /* "err" means nothing beside rc == 0 */
    if ((rc = check_msg(&m, dir, err, errlen)) != 0)
        goto out;
    m.zone = zone;
    khala__proto_msg_free(msg);
    *msg = m;
    return 0;
out:
    msgpack_zone_free(zone);
    return rc;
}

int khala__proto_decode_request(const void *body, size_t len, khala_msg_t *msg, char *err,
                                size_t errlen) {
    return decode(DIR_REQ, KHALA_OP_NONE, body, len, msg, err, errlen);
}

int khala__proto_decode_reply(khala_op_t op, const void *body, size_t len, khala_msg_t *msg,
                              char *err, size_t errlen) {
    if ((unsigned)op >= KHALA_OP_COUNT)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "unknown op %d", (int)op);
    return decode(DIR_REP, op, body, len, msg, err, errlen);
}

const khala_kv_t *khala__proto_kv_find(const khala_kv_t *items, uint32_t n, const char *key) {
    size_t len = strlen(key);
    for (uint32_t i = 0; i < n; i++)
        if (items[i].key.len == len && memcmp(items[i].key.ptr, key, len) == 0)
            return &items[i];
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Encoding                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* msgpack-c's packer callback: append to the khala_buf_t. 0 or -1, as msgpack-c expects. */
static int buf_write(void *data, const char *p, size_t n) {
    return khala__proto_buf_append(data, p, n) == 0 ? 0 : -1;
}

static int pack_str(msgpack_packer *pk, const char *s) {
    return msgpack_pack_str_with_body(pk, s, strlen(s));
}

static int pack_data(msgpack_packer *pk, const khala_kv_t *items, uint32_t n) {
    int rc = msgpack_pack_map(pk, n);
    for (uint32_t i = 0; i < n && rc == 0; i++) {
        const khala_kv_t *kv = &items[i];
        rc = msgpack_pack_str_with_body(pk, kv->key.ptr, kv->key.len);
        if (rc != 0)
            break;
        switch (kv->kind) {
            case KHALA_KV_NIL:
                rc = msgpack_pack_nil(pk);
                break;
            case KHALA_KV_BOOL:
                rc = kv->as.b ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
                break;
            case KHALA_KV_UINT:
                rc = msgpack_pack_uint64(pk, kv->as.u);
                break;
            case KHALA_KV_INT:
                rc = msgpack_pack_int64(pk, kv->as.i);
                break;
            case KHALA_KV_DOUBLE:
                rc = msgpack_pack_double(pk, kv->as.d);
                break;
            case KHALA_KV_STR:
                rc = msgpack_pack_str_with_body(pk, kv->as.s.ptr, kv->as.s.len);
                break;
            case KHALA_KV_BIN:
                rc = msgpack_pack_bin_with_body(pk, kv->as.s.ptr, kv->as.s.len);
                break;
            default:
                rc = pack_data(pk, kv->as.map.items, kv->as.map.n);
                break;
        }
    }
    return rc;
}

/* Is field f sent for m in direction dir? */
static int field_sent(const khala_msg_t *m, int f, int dir) {
    if (!(fields[f].dirs & dir))
        return 0;
    if (f == FLD_ERR && dir == DIR_REP && m->rc == 0)
        return 0;
    return fields[f].bit == 0 || (m->has & fields[f].bit);
}

static int pack_field(msgpack_packer *pk, const khala_msg_t *m, int f) {
    int rc = pack_str(pk, fields[f].name);
    if (rc != 0)
        return rc;
    switch ((field_id_t)f) {
        case FLD_ID:
            return msgpack_pack_uint64(pk, m->id);
        case FLD_OP:
            return pack_str(pk, op_names[m->op]);
        case FLD_RC:
            return msgpack_pack_int32(pk, m->rc);
        case FLD_ERR:
            return msgpack_pack_str_with_body(pk, m->err.ptr, m->err.len);
        case FLD_K:
            return msgpack_pack_bin_with_body(pk, m->key.ptr, m->key.len);
        case FLD_V:
            return msgpack_pack_bin_with_body(pk, m->value.ptr, m->value.len);
        case FLD_TTL:
            return msgpack_pack_uint64(pk, m->ttl_ms);
        case FLD_TYPE:
            return msgpack_pack_unsigned_int(pk, (unsigned)m->type);
        case FLD_VER:
            return msgpack_pack_uint64(pk, m->ver);
        case FLD_MODE:
            return pack_str(pk, mode_names[m->mode]);
        case FLD_PREFIX:
            return msgpack_pack_bin_with_body(pk, m->prefix.ptr, m->prefix.len);
        case FLD_BY:
            return pack_str(pk, by_names[m->by]);
        case FLD_PATTERN:
            return msgpack_pack_bin_with_body(pk, m->pattern.ptr, m->pattern.len);
        case FLD_CURSOR:
            return msgpack_pack_uint64(pk, m->cursor);
        case FLD_COUNT:
            return msgpack_pack_uint32(pk, m->count);
        case FLD_LOADER:
            return m->loader ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        case FLD_ARCHIVE:
            return m->archive ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        case FLD_PROTO:
            return msgpack_pack_uint32(pk, m->proto);
        case FLD_NAME:
            return msgpack_pack_str_with_body(pk, m->name.ptr, m->name.len);
        case FLD_LVL:
            return pack_str(pk, level_names[m->lvl]);
        case FLD_LOAD:
            return m->load ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        case FLD_GEN:
            return msgpack_pack_uint64(pk, m->gen);
        case FLD_MAX_FRAME:
            return msgpack_pack_uint32(pk, m->max_frame);
        case FLD_MAX_VALUE:
            return msgpack_pack_uint32(pk, m->max_value);
        case FLD_KEYS:
            rc = msgpack_pack_array(pk, m->nkeys);
            for (uint32_t i = 0; i < m->nkeys && rc == 0; i++)
                rc = msgpack_pack_bin_with_body(pk, m->keys[i].ptr, m->keys[i].len);
            return rc;
        case FLD_DATA:
            return pack_data(pk, m->data, m->ndata);
        case FLD_SIM:
            return msgpack_pack_double(pk, m->sim);
        case FLD_MATCHES:
            rc = msgpack_pack_array(pk, m->nmatches);
            for (uint32_t i = 0; i < m->nmatches && rc == 0; i++) {
                const khala_proto_match_t *x = &m->matches[i];
                rc = msgpack_pack_array(pk, 5);
                if (!rc)
                    rc = msgpack_pack_bin_with_body(pk, x->key.ptr, x->key.len);
                if (!rc)
                    rc = msgpack_pack_double(pk, x->sim);
                if (!rc)
                    rc = msgpack_pack_bin_with_body(pk, x->value.ptr, x->value.len);
                if (!rc)
                    rc = msgpack_pack_uint64(pk, x->ver);
                if (!rc)
                    rc = msgpack_pack_uint64(pk, x->ttl_ms);
            }
            return rc;
        case FLD_LINKS:
            rc = msgpack_pack_array(pk, m->nlinks);
            for (uint32_t i = 0; i < m->nlinks && rc == 0; i++)
                rc = msgpack_pack_bin_with_body(pk, m->links[i].ptr, m->links[i].len);
            return rc;
        default:
            return -1;
    }
}

static int encode(int dir, khala_buf_t *out, const khala_msg_t *msg, char *err, size_t errlen) {
    /* A value over the ceiling is refused before it is copied. */
    if ((msg->has & KHALA_F_V) && msg->value.len > KHALA_FRAME_MAX_CEILING)
        return khala__errbuf(err, errlen, KHALA_ETOOBIG,
                             "field 'v' is %zu bytes, over the ceiling %u", msg->value.len,
                             KHALA_FRAME_MAX_CEILING);
    int rc = check_msg(msg, dir, err, errlen);
    if (rc != 0)
        return rc;
    size_t start = out->len;
    uint8_t zero[KHALA_FRAME_HEADER] = {0};
    if (khala__proto_buf_append(out, zero, sizeof(zero)) != 0)
        return -ENOMEM;
    uint32_t n = 0;
    for (int f = 0; f < FLD_COUNT_; f++)
        n += (uint32_t)field_sent(msg, f, dir);
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    rc = msgpack_pack_map(&pk, n);
    for (int f = 0; f < FLD_COUNT_ && rc == 0; f++)
        if (field_sent(msg, f, dir))
            rc = pack_field(&pk, msg, f);
    if (rc != 0) {
        out->len = start;
        return -ENOMEM; /* the only way buf_write fails */
    }
    size_t body = out->len - start - KHALA_FRAME_HEADER;
    if (body > KHALA_FRAME_MAX_CEILING) {
        out->len = start;
        return khala__errbuf(err, errlen, KHALA_ETOOBIG,
                             "frame of %zu bytes exceeds the ceiling %u", body,
                             KHALA_FRAME_MAX_CEILING);
    }
    store_be32(out->data + start, (uint32_t)body);
    return 0;
}

int khala__proto_encode_request(khala_buf_t *out, const khala_msg_t *msg, char *err,
                                size_t errlen) {
    return encode(DIR_REQ, out, msg, err, errlen);
}

int khala__proto_encode_reply(khala_buf_t *out, const khala_msg_t *msg, char *err, size_t errlen) {
    if ((unsigned)msg->op >= KHALA_OP_COUNT)
        return khala__errbuf(err, errlen, KHALA_EPROTO, "unknown op %d", (int)msg->op);
    return encode(DIR_REP, out, msg, err, errlen);
}
