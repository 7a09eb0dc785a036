/*
 * Fuzz target: the socket frame decoder (lib/proto.c), the parser khalad runs on whatever a
 * peer sends.
 *
 * The input is read two ways: as a stream of frames (khala__proto_frame_check, then each
 * complete body decoded as a request and as a reply) and as one bare body, so that the fuzzer
 * need not guess a matching length prefix to reach the msgpack decoder. Whatever the bytes,
 * every call must end in 0 or an error code, never in a crash, a leak, a read outside the input
 * or unbounded work. Beyond not crashing, every message that decodes must re-encode, and its
 * re-encoding must decode to the same message: the encoder accepts everything the decoder
 * does, and the two agree on every field. A violation aborts, which libFuzzer reports.
 *
 * Built two ways: with KHALA_FUZZ (clang, -fsanitize=fuzzer,address) as a libFuzzer binary,
 * and always as a plain program (fuzz_frame_replay.c) that runs the seed frames and tens of
 * thousands of deterministic mutations of them, so that the target cannot rot.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_frame.h"

/* Frames read from one input; bounds the work on an input of many tiny frames. */
#define FUZZ_FRAMES_MAX 64

static int bytes_eq(khala_bytes_t a, khala_bytes_t b) {
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static int data_eq(const khala_kv_t *a, const khala_kv_t *b, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        if (!bytes_eq(a[i].key, b[i].key) || a[i].kind != b[i].kind)
            return 0;
        switch (a[i].kind) {
            case KHALA_KV_NIL:
                break;
            case KHALA_KV_BOOL:
                if (a[i].as.b != b[i].as.b)
                    return 0;
                break;
            case KHALA_KV_UINT:
                if (a[i].as.u != b[i].as.u)
                    return 0;
                break;
            case KHALA_KV_INT:
                if (a[i].as.i != b[i].as.i)
                    return 0;
                break;
            case KHALA_KV_DOUBLE: /* bitwise, so that NaN equals itself */
                if (memcmp(&a[i].as.d, &b[i].as.d, sizeof(double)) != 0)
                    return 0;
                break;
            case KHALA_KV_STR:
            case KHALA_KV_BIN:
                if (!bytes_eq(a[i].as.s, b[i].as.s))
                    return 0;
                break;
            case KHALA_KV_MAP:
                if (a[i].as.map.n != b[i].as.map.n ||
                    !data_eq(a[i].as.map.items, b[i].as.map.items, a[i].as.map.n))
                    return 0;
                break;
        }
    }
    return 1;
}

/* Equal as far as the wire can tell: the same fields present, with the same values. */
static int msg_eq(const khala_msg_t *a, const khala_msg_t *b) {
    uint32_t h = a->has;
    if (a->id != b->id || a->op != b->op || a->rc != b->rc || a->has != b->has)
        return 0;
#define EQ(bit, cond)                                                                              \
    if ((h & (bit)) && !(cond))                                                                    \
        return 0;
    EQ(KHALA_F_K, bytes_eq(a->key, b->key))
    EQ(KHALA_F_V, bytes_eq(a->value, b->value))
    EQ(KHALA_F_TTL, a->ttl_ms == b->ttl_ms)
    EQ(KHALA_F_TYPE, a->type == b->type)
    EQ(KHALA_F_VER, a->ver == b->ver)
    EQ(KHALA_F_MODE, a->mode == b->mode)
    EQ(KHALA_F_PREFIX, bytes_eq(a->prefix, b->prefix))
    EQ(KHALA_F_BY, a->by == b->by)
    EQ(KHALA_F_PATTERN, bytes_eq(a->pattern, b->pattern))
    EQ(KHALA_F_CURSOR, a->cursor == b->cursor)
    EQ(KHALA_F_COUNT, a->count == b->count)
    EQ(KHALA_F_LOADER, a->loader == b->loader)
    EQ(KHALA_F_PROTO, a->proto == b->proto)
    EQ(KHALA_F_NAME, bytes_eq(a->name, b->name))
    EQ(KHALA_F_ERR, bytes_eq(a->err, b->err))
    EQ(KHALA_F_LVL, a->lvl == b->lvl)
    EQ(KHALA_F_LOAD, a->load == b->load)
    EQ(KHALA_F_GEN, a->gen == b->gen)
    EQ(KHALA_F_MAX_FRAME, a->max_frame == b->max_frame)
    EQ(KHALA_F_MAX_VALUE, a->max_value == b->max_value)
    EQ(KHALA_F_KEYS, a->nkeys == b->nkeys)
    EQ(KHALA_F_DATA, a->ndata == b->ndata && data_eq(a->data, b->data, a->ndata))
#undef EQ
    if (h & KHALA_F_KEYS)
        for (uint32_t i = 0; i < a->nkeys; i++)
            if (!bytes_eq(a->keys[i], b->keys[i]))
                return 0;
    return 1;
}

/* Re-encode a decoded message and decode the result: it must succeed and give msg again. */
static void round_trip(const khala_msg_t *msg, int reply) {
    char err[256];
    khala_buf_t b;
    khala_msg_t again;
    uint32_t n;
    khala__proto_buf_init(&b);
    khala__proto_msg_init(&again);
    int rc = reply ? khala__proto_encode_reply(&b, msg, err, sizeof(err))
                   : khala__proto_encode_request(&b, msg, err, sizeof(err));
    if (rc == -ENOMEM)
        goto out;
    if (rc != 0) {
        fprintf(stderr, "fuzz_frame: a decoded %s does not encode: %s\n",
                reply ? "reply" : "request", err);
        abort();
    }
    if (khala__proto_frame_check(b.data, b.len, KHALA_FRAME_MAX_CEILING, &n, err, sizeof(err)) !=
        0) {
        fprintf(stderr, "fuzz_frame: an encoded frame fails frame_check\n");
        abort();
    }
    rc = reply ? khala__proto_decode_reply(msg->op, b.data + KHALA_FRAME_HEADER, n, &again, err,
                                           sizeof(err))
               : khala__proto_decode_request(b.data + KHALA_FRAME_HEADER, n, &again, err,
                                             sizeof(err));
    if (rc == -ENOMEM)
        goto out;
    if (rc != 0 || !msg_eq(msg, &again)) {
        fprintf(stderr, "fuzz_frame: a re-encoded %s decodes differently (rc %d: %s)\n",
                reply ? "reply" : "request", rc, rc ? err : "fields differ");
        abort();
    }
out:
    khala__proto_msg_free(&again);
    khala__proto_buf_free(&b);
}

/* Decode one body as a request and as replies to two ops; 0..3 messages decoded. */
static int decode_body(const uint8_t *body, size_t len) {
    char err[256];
    khala_msg_t m;
    int ok = 0;
    khala__proto_msg_init(&m);
    if (khala__proto_decode_request(body, len, &m, err, sizeof(err)) == 0) {
        round_trip(&m, 0);
        ok++;
    }
    khala_op_t ops[2] = {KHALA_OP_NONE, (khala_op_t)(len % KHALA_OP_COUNT)};
    for (int i = 0; i < 2; i++) {
        if (khala__proto_decode_reply(ops[i], body, len, &m, err, sizeof(err)) == 0) {
            round_trip(&m, 1);
            ok++;
        }
    }
    khala__proto_msg_free(&m);
    return ok;
}

int fuzz_frame_one(const uint8_t *data, size_t size) {
    int ok = 0;
    size_t off = 0;
    char err[256];
    /* As a stream of frames, with a small limit so that the refusal path is exercised too. */
    for (int f = 0; f < FUZZ_FRAMES_MAX; f++) {
        uint32_t n = 0;
        int rc = khala__proto_frame_check(data + off, size - off, 1u << 16, &n, err, sizeof(err));
        if (rc != 0)
            break;
        ok += decode_body(data + off + KHALA_FRAME_HEADER, n);
        off += KHALA_FRAME_HEADER + n;
    }
    /* As one bare body. */
    if (size > 0)
        ok += decode_body(data, size);
    return ok;
}

/* ------------------------------------------------------------------------------------------ */
/* Seeds                                                                                       */
/* ------------------------------------------------------------------------------------------ */

static const uint8_t seed_key[] = {'u', 's', 'e', 'r', 0, ':', 0xff, '4', '2'};
static const uint8_t seed_val[] = "{\"name\":\"ada\",\"born\":1815}";
static const khala_bytes_t seed_keys[] = {
    {(const uint8_t *)"a", 1}, {(const uint8_t *)"user:1", 6}, {seed_key, sizeof(seed_key)}};
static const khala_kv_t seed_l1[] = {
    {{(const uint8_t *)"hits", 4}, KHALA_KV_UINT, {.u = 123456}},
    {{(const uint8_t *)"ratio", 5}, KHALA_KV_DOUBLE, {.d = 0.875}},
    {{(const uint8_t *)"delta", 5}, KHALA_KV_INT, {.i = -7}},
};
static const khala_kv_t seed_data[] = {
    {{(const uint8_t *)"name", 4}, KHALA_KV_STR, {.s = {(const uint8_t *)"main", 4}}},
    {{(const uint8_t *)"up", 2}, KHALA_KV_BOOL, {.b = true}},
    {{(const uint8_t *)"none", 4}, KHALA_KV_NIL, {.u = 0}},
    {{(const uint8_t *)"raw", 3}, KHALA_KV_BIN, {.s = {seed_key, sizeof(seed_key)}}},
    {{(const uint8_t *)"l1", 2}, KHALA_KV_MAP, {.map = {seed_l1, 3}}},
};

#define B(s) ((khala_bytes_t){(const uint8_t *)(s), sizeof(s) - 1})

/* A request of op with every field that op reads. */
static void seed_request(khala_op_t op, khala_msg_t *m) {
    m->id = 1000 + (uint64_t)op;
    m->op = op;
    switch (op) {
        case KHALA_OP_HELLO:
            m->has = KHALA_F_PROTO | KHALA_F_NAME;
            m->proto = KHALA_PROTO_VERSION;
            m->name = B("main");
            break;
        case KHALA_OP_GET:
            m->has = KHALA_F_K | KHALA_F_LOADER | KHALA_F_TYPE;
            m->loader = true;
            m->type = KHALA_TYPE_EMBEDDING;
            break;
        case KHALA_OP_PUT:
        case KHALA_OP_FILL:
            m->has =
                KHALA_F_K | KHALA_F_V | KHALA_F_TTL | KHALA_F_TYPE | KHALA_F_VER | KHALA_F_MODE;
            m->value = (khala_bytes_t){seed_val, sizeof(seed_val) - 1};
            m->ttl_ms = 300000;
            m->type = KHALA_TYPE_MEMORY_ENTITY;
            m->ver = 41;
            m->mode = KHALA_MODE_BEHIND;
            break;
        case KHALA_OP_INVALIDATE:
            m->has = KHALA_F_BY | KHALA_F_PREFIX;
            m->by = KHALA_BY_PREFIX;
            m->prefix = B("user:");
            break;
        case KHALA_OP_TOUCH:
            m->has = KHALA_F_K | KHALA_F_TTL;
            m->ttl_ms = 60000;
            break;
        case KHALA_OP_KEYS:
            m->has = KHALA_F_PATTERN | KHALA_F_CURSOR | KHALA_F_COUNT;
            m->pattern = B("user:*");
            m->cursor = 77;
            m->count = 100;
            break;
        case KHALA_OP_FLUSH:
        case KHALA_OP_STATS:
            m->has = KHALA_F_TYPE;
            m->type = KHALA_TYPE_CONSOLIDATION;
            break;
        case KHALA_OP_WARM:
            m->has = KHALA_F_KEYS;
            m->keys = seed_keys;
            m->nkeys = 3;
            break;
        case KHALA_OP_FILL_FAIL:
            m->has = KHALA_F_K | KHALA_F_ERR;
            m->err = B("database timeout");
            break;
        case KHALA_OP_SIMILAR:
            m->has = KHALA_F_V | KHALA_F_COUNT | KHALA_F_SIM;
            m->value = B("\0\0\x80?\0\0\0\0");
            m->count = 3;
            m->sim = 0.875;
            break;
        default: /* del, inspect */
            m->has = KHALA_F_K;
            break;
    }
    if (m->has & KHALA_F_K)
        m->key = (khala_bytes_t){seed_key, sizeof(seed_key)};
}

/* A successful reply to op, with every field it carries. */
static void seed_reply(khala_op_t op, khala_msg_t *m) {
    m->id = 1000 + (uint64_t)op;
    m->op = op;
    switch (op) {
        case KHALA_OP_HELLO:
            m->has =
                KHALA_F_PROTO | KHALA_F_NAME | KHALA_F_GEN | KHALA_F_MAX_FRAME | KHALA_F_MAX_VALUE;
            m->proto = KHALA_PROTO_VERSION;
            m->name = B("main");
            m->gen = 3;
            m->max_frame = KHALA_FRAME_MAX_DEFAULT;
            m->max_value = KHALA_VALUE_MAX_DEFAULT;
            break;
        case KHALA_OP_GET:
            m->has = KHALA_F_V | KHALA_F_VER | KHALA_F_TTL | KHALA_F_TYPE | KHALA_F_LVL;
            m->value = (khala_bytes_t){seed_val, sizeof(seed_val) - 1};
            m->ver = 42;
            m->ttl_ms = 299000;
            m->type = KHALA_TYPE_SEARCH_RESULT;
            m->lvl = KHALA_LEVEL_L2;
            break;
        case KHALA_OP_PUT:
            m->has = KHALA_F_VER;
            m->ver = 42;
            break;
        case KHALA_OP_KEYS:
            m->has = KHALA_F_KEYS | KHALA_F_CURSOR;
            m->keys = seed_keys;
            m->nkeys = 3;
            m->cursor = 0;
            break;
        case KHALA_OP_STATS:
        case KHALA_OP_CONFIG:
        case KHALA_OP_INSPECT:
            m->has = KHALA_F_DATA;
            m->data = seed_data;
            m->ndata = 5;
            break;
        case KHALA_OP_WARM:
        case KHALA_OP_INVALIDATE:
            m->has = KHALA_F_COUNT;
            m->count = 12;
            break;
        case KHALA_OP_SIMILAR: {
            static const khala_proto_match_t matches[] = {
                {{seed_key, sizeof(seed_key)}, 0.96875, {(const uint8_t *)"\0\0\x80?", 4}, 5, 0},
                {{(const uint8_t *)"e:2", 3}, -1.0, {NULL, 0}, 6, 1000}};
            m->has = KHALA_F_MATCHES | KHALA_F_LVL;
            m->matches = matches;
            m->nmatches = 2;
            m->lvl = KHALA_LEVEL_L3;
            break;
        }
        default:
            break;
    }
}

int fuzz_frame_seed(int i, khala_buf_t *out) {
    khala_msg_t m;
    khala__proto_msg_init(&m);
    int nops = KHALA_OP_COUNT - 1;
    if (i < 0 || i >= 2 * nops + 3)
        return 0;
    int rc;
    if (i < nops) {
        seed_request((khala_op_t)(i + 1), &m);
        rc = khala__proto_encode_request(out, &m, NULL, 0);
    } else if (i < 2 * nops) {
        seed_reply((khala_op_t)(i - nops + 1), &m);
        rc = khala__proto_encode_reply(out, &m, NULL, 0);
    } else if (i == 2 * nops) { /* a miss */
        m.id = 7;
        m.op = KHALA_OP_GET;
        m.rc = KHALA_ENOTFOUND;
        m.has = KHALA_F_ERR;
        m.err = B("no such key");
        rc = khala__proto_encode_reply(out, &m, NULL, 0);
    } else if (i == 2 * nops + 1) { /* a single-flight leader */
        m.id = 8;
        m.op = KHALA_OP_GET;
        m.has = KHALA_F_LOAD;
        m.load = true;
        rc = khala__proto_encode_reply(out, &m, NULL, 0);
    } else { /* three pipelined pings */
        rc = 0;
        for (int j = 0; j < 3 && rc == 0; j++) {
            m.id = (uint64_t)j;
            m.op = KHALA_OP_PING;
            rc = khala__proto_encode_request(out, &m, NULL, 0);
        }
    }
    return rc == 0 ? 1 : -1;
}

#ifdef KHALA_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    (void)fuzz_frame_one(data, size);
    return 0;
}
#endif
