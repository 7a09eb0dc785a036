/*
 * Tests of the socket protocol (lib/proto.c): framing, the round trip of every op's request and
 * reply, pipelined and partial frames, binary keys, value sizes, forward compatibility, and
 * every decode error with its exact code and message. Malformed bodies are built with
 * msgpack-c's own packer, so each test states the bytes a peer could send.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "proto.h"

static khala_buf_t g_out;
static msgpack_sbuffer g_sb;
static msgpack_packer g_pk;
static char g_err[512];

static void setup(void) {
    khala__proto_buf_init(&g_out);
    msgpack_sbuffer_init(&g_sb);
    msgpack_packer_init(&g_pk, &g_sb, msgpack_sbuffer_write);
    g_err[0] = '\0';
}

static void teardown(void) {
    khala__proto_buf_free(&g_out);
    msgpack_sbuffer_destroy(&g_sb);
}

TestSuite(proto, .init = setup, .fini = teardown, .timeout = 30);

/* ------------------------------------------------------------------------------------------ */
/* Helpers                                                                                     */
/* ------------------------------------------------------------------------------------------ */

#define B(s) ((khala_bytes_t){(const uint8_t *)(s), sizeof(s) - 1})

/* Raw msgpack into g_sb. */
static void ps(const char *s) {
    msgpack_pack_str_with_body(&g_pk, s, strlen(s));
}

static void pbin(const void *p, size_t n) {
    msgpack_pack_bin_with_body(&g_pk, p, n);
}

static void pkv_u(const char *k, uint64_t v) {
    ps(k);
    msgpack_pack_uint64(&g_pk, v);
}

static void pkv_s(const char *k, const char *v) {
    ps(k);
    ps(v);
}

static void sb_reset(void) {
    msgpack_sbuffer_clear(&g_sb);
}

static int decode_req_raw(khala_msg_t *m) {
    return khala__proto_decode_request(g_sb.data, g_sb.size, m, g_err, sizeof(g_err));
}

static int decode_rep_raw(khala_op_t op, khala_msg_t *m) {
    return khala__proto_decode_reply(op, g_sb.data, g_sb.size, m, g_err, sizeof(g_err));
}

/* Assert that the raw body decodes as a request to KHALA_EPROTO with exactly msg. */
static void expect_req_error(const char *msg) {
    khala_msg_t m;
    khala__proto_msg_init(&m);
    int rc = decode_req_raw(&m);
    cr_assert_eq(rc, KHALA_EPROTO, "rc %d (%s), expected KHALA_EPROTO for '%s'", rc, g_err, msg);
    cr_assert_str_eq(g_err, msg);
    cr_assert_null(m.zone, "a failed decode leaves the message alone");
}

static void expect_rep_error(khala_op_t op, const char *msg) {
    khala_msg_t m;
    khala__proto_msg_init(&m);
    int rc = decode_rep_raw(op, &m);
    cr_assert_eq(rc, KHALA_EPROTO, "rc %d (%s), expected KHALA_EPROTO for '%s'", rc, g_err, msg);
    cr_assert_str_eq(g_err, msg);
}

static int bytes_eq(khala_bytes_t a, khala_bytes_t b) {
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static int data_eq(const khala_kv_t *a, const khala_kv_t *b, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        if (!bytes_eq(a[i].key, b[i].key) || a[i].kind != b[i].kind)
            return 0;
        switch (a[i].kind) {
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
            case KHALA_KV_DOUBLE:
                if (a[i].as.d != b[i].as.d)
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
            default:
                break;
        }
    }
    return 1;
}

/* Field-by-field equality of two messages, as the wire sees them. */
static void assert_msg_eq(const khala_msg_t *a, const khala_msg_t *b) {
    uint32_t h = a->has;
    cr_assert_eq(a->id, b->id);
    cr_assert_eq(a->op, b->op);
    cr_assert_eq(a->rc, b->rc);
    cr_assert_eq(a->has, b->has, "has 0x%x vs 0x%x", a->has, b->has);
    if (h & KHALA_F_K)
        cr_assert(bytes_eq(a->key, b->key));
    if (h & KHALA_F_V)
        cr_assert(bytes_eq(a->value, b->value));
    if (h & KHALA_F_TTL)
        cr_assert_eq(a->ttl_ms, b->ttl_ms);
    if (h & KHALA_F_TYPE)
        cr_assert_eq(a->type, b->type);
    if (h & KHALA_F_VER)
        cr_assert_eq(a->ver, b->ver);
    if (h & KHALA_F_MODE)
        cr_assert_eq(a->mode, b->mode);
    if (h & KHALA_F_PREFIX)
        cr_assert(bytes_eq(a->prefix, b->prefix));
    if (h & KHALA_F_BY)
        cr_assert_eq(a->by, b->by);
    if (h & KHALA_F_PATTERN)
        cr_assert(bytes_eq(a->pattern, b->pattern));
    if (h & KHALA_F_CURSOR)
        cr_assert_eq(a->cursor, b->cursor);
    if (h & KHALA_F_COUNT)
        cr_assert_eq(a->count, b->count);
    if (h & KHALA_F_LOADER)
        cr_assert_eq(a->loader, b->loader);
    if (h & KHALA_F_PROTO)
        cr_assert_eq(a->proto, b->proto);
    if (h & KHALA_F_NAME)
        cr_assert(bytes_eq(a->name, b->name));
    if (h & KHALA_F_ERR)
        cr_assert(bytes_eq(a->err, b->err));
    if (h & KHALA_F_LVL)
        cr_assert_eq(a->lvl, b->lvl);
    if (h & KHALA_F_LOAD)
        cr_assert_eq(a->load, b->load);
    if (h & KHALA_F_GEN)
        cr_assert_eq(a->gen, b->gen);
    if (h & KHALA_F_MAX_FRAME)
        cr_assert_eq(a->max_frame, b->max_frame);
    if (h & KHALA_F_MAX_VALUE)
        cr_assert_eq(a->max_value, b->max_value);
    if (h & KHALA_F_KEYS) {
        cr_assert_eq(a->nkeys, b->nkeys);
        for (uint32_t i = 0; i < a->nkeys; i++)
            cr_assert(bytes_eq(a->keys[i], b->keys[i]), "keys[%u]", i);
    }
    if (h & KHALA_F_LINKS) {
        cr_assert_eq(a->nlinks, b->nlinks);
        for (uint32_t i = 0; i < a->nlinks; i++)
            cr_assert(bytes_eq(a->links[i], b->links[i]), "links[%u]", i);
    }
    if (h & KHALA_F_DATA) {
        cr_assert_eq(a->ndata, b->ndata);
        cr_assert(data_eq(a->data, b->data, a->ndata));
    }
    if (h & KHALA_F_ARCHIVE)
        cr_assert_eq(a->archive, b->archive);
    if (h & KHALA_F_SIM)
        cr_assert_eq(a->sim, b->sim);
    if (h & KHALA_F_MATCHES) {
        cr_assert_eq(a->nmatches, b->nmatches);
        for (uint32_t i = 0; i < a->nmatches; i++) {
            const khala_proto_match_t *x = &a->matches[i], *y = &b->matches[i];
            cr_assert(bytes_eq(x->key, y->key) && bytes_eq(x->value, y->value), "matches[%u]", i);
            cr_assert(x->sim == y->sim && x->ver == y->ver && x->ttl_ms == y->ttl_ms);
        }
    }
}

/* Encode, check the frame, decode, compare; returns the frame's body length. */
static uint32_t round_trip(const khala_msg_t *in, int reply) {
    khala_msg_t out;
    uint32_t n = 0;
    khala__proto_msg_init(&out);
    khala__proto_buf_reset(&g_out);
    int rc = reply ? khala__proto_encode_reply(&g_out, in, g_err, sizeof(g_err))
                   : khala__proto_encode_request(&g_out, in, g_err, sizeof(g_err));
    cr_assert_eq(rc, 0, "encode %s of %s: %d %s", reply ? "reply" : "request",
                 khala__proto_op_name(in->op), rc, g_err);
    cr_assert_eq(khala__proto_frame_check(g_out.data, g_out.len, KHALA_FRAME_MAX_CEILING, &n, g_err,
                                          sizeof(g_err)),
                 0);
    cr_assert_eq(n + KHALA_FRAME_HEADER, g_out.len);
    rc = reply ? khala__proto_decode_reply(in->op, g_out.data + 4, n, &out, g_err, sizeof(g_err))
               : khala__proto_decode_request(g_out.data + 4, n, &out, g_err, sizeof(g_err));
    cr_assert_eq(rc, 0, "decode %s of %s: %d %s", reply ? "reply" : "request",
                 khala__proto_op_name(in->op), rc, g_err);
    assert_msg_eq(in, &out);
    khala__proto_msg_free(&out);
    return n;
}

static const uint8_t nul_key[] = {0, 'a', 0, 0xff, 0, 'z', 0};
static const khala_bytes_t keys3[] = {
    {(const uint8_t *)"a", 1}, {(const uint8_t *)"user:1", 6}, {nul_key, sizeof(nul_key)}};
/* The links of a put: end entities (never the put's own key, nul_key). */
static const khala_bytes_t links2[] = {{(const uint8_t *)"user:1", 6}, {(const uint8_t *)"a", 1}};
static const khala_kv_t inner[] = {
    {{(const uint8_t *)"deep", 4}, KHALA_KV_UINT, {.u = 1}},
};
static const khala_kv_t per_type[] = {
    {{(const uint8_t *)"hits", 4}, KHALA_KV_UINT, {.u = UINT64_MAX}},
    {{(const uint8_t *)"delta", 5}, KHALA_KV_INT, {.i = INT64_MIN}},
    {{(const uint8_t *)"ratio", 5}, KHALA_KV_DOUBLE, {.d = 0.5}},
    {{(const uint8_t *)"sub", 3}, KHALA_KV_MAP, {.map = {inner, 1}}},
};
static const khala_kv_t data5[] = {
    {{(const uint8_t *)"name", 4}, KHALA_KV_STR, {.s = {(const uint8_t *)"main", 4}}},
    {{(const uint8_t *)"up", 2}, KHALA_KV_BOOL, {.b = true}},
    {{(const uint8_t *)"none", 4}, KHALA_KV_NIL, {.u = 0}},
    {{(const uint8_t *)"raw", 3}, KHALA_KV_BIN, {.s = {nul_key, sizeof(nul_key)}}},
    {{(const uint8_t *)"embedding", 9}, KHALA_KV_MAP, {.map = {per_type, 4}}},
};

/* A request of op with every field it can carry. */
static const khala_proto_match_t matches2[] = {
    {{nul_key, sizeof(nul_key)}, 1.0, {(const uint8_t *)"\0\0\x80?", 4}, 7, 0},
    {{(const uint8_t *)"b", 1}, -0.5, {NULL, 0}, UINT64_MAX, 86400000}};

static void full_request(khala_op_t op, khala_msg_t *m) {
    khala__proto_msg_init(m);
    m->id = 0x1122334455667788ull + (uint64_t)op;
    m->op = op;
    m->has = KHALA_F_K;
    m->key = (khala_bytes_t){nul_key, sizeof(nul_key)};
    switch (op) {
        case KHALA_OP_HELLO:
            m->has = KHALA_F_PROTO | KHALA_F_NAME;
            m->proto = KHALA_PROTO_VERSION;
            m->name = B("main");
            break;
        case KHALA_OP_PING:
        case KHALA_OP_CONFIG:
            m->has = 0;
            break;
        case KHALA_OP_GET:
            m->has |= KHALA_F_LOADER | KHALA_F_TYPE;
            m->loader = true;
            m->type = KHALA_TYPE_VERIFICATION;
            break;
        case KHALA_OP_PUT:
        case KHALA_OP_FILL:
            m->has |= KHALA_F_V | KHALA_F_TTL | KHALA_F_TYPE | KHALA_F_VER | KHALA_F_MODE;
            m->value = B("{\"v\":1}");
            m->ttl_ms = 300000;
            m->type = KHALA_TYPE_AGENT_RESPONSE;
            m->ver = 0;
            m->mode = KHALA_MODE_THROUGH;
            m->has |= KHALA_F_LINKS;
            m->links = links2;
            m->nlinks = 2;
            break;
        case KHALA_OP_INVALIDATE:
            m->has = KHALA_F_BY | KHALA_F_TYPE;
            m->by = KHALA_BY_TYPE;
            m->type = KHALA_TYPE_SEARCH_INDEX;
            break;
        case KHALA_OP_TOUCH:
            m->has |= KHALA_F_TTL;
            m->ttl_ms = 0;
            break;
        case KHALA_OP_STATS:
        case KHALA_OP_FLUSH:
            m->has = KHALA_F_TYPE;
            m->type = KHALA_TYPE_CONSOLIDATION;
            break;
        case KHALA_OP_KEYS:
            m->has = KHALA_F_PATTERN | KHALA_F_CURSOR | KHALA_F_COUNT;
            m->pattern = B("user:*");
            m->cursor = 99;
            m->count = KHALA_PROTO_ARRAY_MAX;
            break;
        case KHALA_OP_WARM:
            m->has = KHALA_F_KEYS | KHALA_F_PREFIX | KHALA_F_TYPE;
            m->keys = keys3;
            m->nkeys = 3;
            m->prefix = B("user:");
            m->type = KHALA_TYPE_MEMORY_ENTITY;
            break;
        case KHALA_OP_FILL_FAIL:
            m->has |= KHALA_F_ERR;
            m->err = B("db timeout");
            break;
        case KHALA_OP_SIMILAR:
            m->has = KHALA_F_V | KHALA_F_COUNT | KHALA_F_SIM;
            m->value = B("\0\0\x80?\0\0\0\0"); /* {1.0f, 0.0f}, little-endian */
            m->count = 5;
            m->sim = -0.25;
            break;
        default: /* del, inspect */
            break;
    }
}

/* A successful reply to op with every field it can carry. */
static void full_reply(khala_op_t op, khala_msg_t *m) {
    khala__proto_msg_init(m);
    m->id = 42 + (uint64_t)op;
    m->op = op;
    switch (op) {
        case KHALA_OP_HELLO:
            m->has =
                KHALA_F_PROTO | KHALA_F_NAME | KHALA_F_GEN | KHALA_F_MAX_FRAME | KHALA_F_MAX_VALUE;
            m->proto = 1;
            m->name = B("main");
            m->gen = 7;
            m->max_frame = KHALA_FRAME_MAX_DEFAULT;
            m->max_value = KHALA_VALUE_MAX_DEFAULT;
            break;
        case KHALA_OP_GET:
            m->has = KHALA_F_V | KHALA_F_VER | KHALA_F_TTL | KHALA_F_TYPE | KHALA_F_LVL;
            m->value = B("value");
            m->ver = 12;
            m->ttl_ms = 1234;
            m->type = KHALA_TYPE_ENTITY_RELATIONSHIP;
            m->lvl = KHALA_LEVEL_STALE;
            break;
        case KHALA_OP_PUT:
        case KHALA_OP_FILL:
            m->has = KHALA_F_VER;
            m->ver = UINT64_MAX;
            break;
        case KHALA_OP_KEYS:
            m->has = KHALA_F_KEYS | KHALA_F_CURSOR;
            m->keys = keys3;
            m->nkeys = 3;
            m->cursor = 5;
            break;
        case KHALA_OP_STATS:
        case KHALA_OP_CONFIG:
        case KHALA_OP_INSPECT:
            m->has = KHALA_F_DATA;
            m->data = data5;
            m->ndata = 5;
            break;
        case KHALA_OP_WARM:
        case KHALA_OP_INVALIDATE:
        case KHALA_OP_FLUSH:
            m->has = KHALA_F_COUNT;
            m->count = 3;
            break;
        case KHALA_OP_SIMILAR:
            m->has = KHALA_F_MATCHES | KHALA_F_LVL;
            m->matches = matches2;
            m->nmatches = 2;
            m->lvl = KHALA_LEVEL_L3;
            break;
        default:
            break;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Names                                                                                       */
/* ------------------------------------------------------------------------------------------ */

Test(proto, type_names_and_ids_map_both_ways) {
    static const char *names[] = {"memory_entity",       "search_result",  "embedding",
                                  "entity_relationship", "agent_response", "verification",
                                  "search_index",        "consolidation"};
    cr_assert_eq(KHALA_TYPE_COUNT, 8);
    for (int i = 0; i < KHALA_TYPE_COUNT; i++) {
        khala_type_t t = KHALA_TYPE_COUNT;
        cr_assert_str_eq(khala__proto_type_name((khala_type_t)i), names[i]);
        cr_assert_eq(khala__proto_type_parse(names[i], strlen(names[i]), &t), 0);
        cr_assert_eq(t, (khala_type_t)i);
    }
    khala_type_t t = KHALA_TYPE_EMBEDDING;
    cr_assert_null(khala__proto_type_name(KHALA_TYPE_COUNT));
    cr_assert_null(khala__proto_type_name((khala_type_t)-1));
    cr_assert_eq(khala__proto_type_parse("embeddings", 10, &t), -EINVAL);
    cr_assert_eq(khala__proto_type_parse("embedding", 8, &t), -EINVAL);
    cr_assert_eq(khala__proto_type_parse("", 0, &t), -EINVAL);
    cr_assert_eq(t, KHALA_TYPE_EMBEDDING, "unchanged on failure");
}

Test(proto, op_and_level_names) {
    cr_assert_null(khala__proto_op_name(KHALA_OP_NONE));
    cr_assert_str_eq(khala__proto_op_name(KHALA_OP_GET), "get");
    cr_assert_str_eq(khala__proto_op_name(KHALA_OP_FILL_FAIL), "fill_fail");
    cr_assert_null(khala__proto_op_name(KHALA_OP_COUNT));
    cr_assert_str_eq(khala__proto_level_name(KHALA_LEVEL_L1), "l1");
    cr_assert_str_eq(khala__proto_level_name(KHALA_LEVEL_LOADER), "loader");
    cr_assert_null(khala__proto_level_name(KHALA_LEVEL_NONE));
    cr_assert_null(khala__proto_level_name((khala_level_t)99));
}

/* Each list (KHALA_*_LIST) walked through its own X-macro: every value it makes has a name,
 * the name parses back to the value, no two values share a name, and the count the enum ends
 * with is the list's length. A value added to an enum by hand, or a name table that drifts from
 * its list, fails here. */
Test(proto, every_listed_value_has_a_name_that_parses_back) {
    int n = 0;
#define CHECK_TYPE(NAME, id, name)                                                                 \
    do {                                                                                           \
        khala_type_t t = KHALA_TYPE_COUNT;                                                         \
        cr_assert_str_eq(khala__proto_type_name(KHALA_TYPE_##NAME), name);                         \
        cr_assert_eq(khala__proto_type_parse(name, strlen(name), &t), 0, "%s", name);              \
        cr_assert_eq(t, KHALA_TYPE_##NAME, "%s", name);                                            \
        n++;                                                                                       \
    } while (0);
    KHALA_TYPE_LIST(CHECK_TYPE)
#undef CHECK_TYPE
    cr_assert_eq(n, KHALA_TYPE_COUNT);

    n = 0;
#define CHECK_OP(NAME, name, writes)                                                               \
    do {                                                                                           \
        khala_op_t op = KHALA_OP_NONE;                                                             \
        cr_assert_str_eq(khala__proto_op_name(KHALA_OP_##NAME), name);                             \
        cr_assert_eq(khala__proto_op_parse(name, strlen(name), &op), 0, "%s", name);               \
        cr_assert_eq(op, KHALA_OP_##NAME, "%s", name);                                             \
        cr_assert_eq(khala__proto_op_writes(KHALA_OP_##NAME), (bool)(writes), "%s", name);         \
        n++;                                                                                       \
    } while (0);
    KHALA_OP_LIST(CHECK_OP)
#undef CHECK_OP
    cr_assert_eq(n + 1, KHALA_OP_COUNT, "NONE and the listed ops");

    n = 0;
#define CHECK_LEVEL(NAME, name, stores)                                                            \
    do {                                                                                           \
        khala_level_t lv = KHALA_LEVEL_NONE;                                                       \
        cr_assert_str_eq(khala__proto_level_name(KHALA_LEVEL_##NAME), name);                       \
        cr_assert_eq(khala__proto_level_parse(name, strlen(name), &lv), 0, "%s", name);            \
        cr_assert_eq(lv, KHALA_LEVEL_##NAME, "%s", name);                                          \
        n++;                                                                                       \
    } while (0);
    KHALA_LEVEL_LIST(CHECK_LEVEL)
#undef CHECK_LEVEL
    cr_assert_eq(n + 1, KHALA_LEVEL_COUNT);

    n = 0;
#define CHECK_MODE(NAME, v, wire, conf)                                                            \
    do {                                                                                           \
        const char *w = wire;                                                                      \
        khala_mode_t m = (khala_mode_t)99;                                                         \
        if (w) {                                                                                   \
            cr_assert_str_eq(khala__proto_mode_name(KHALA_MODE_##NAME), w);                        \
            cr_assert_eq(khala__proto_mode_parse(w, strlen(w), &m), 0, "%s", w);                   \
            cr_assert_eq(m, KHALA_MODE_##NAME, "%s", w);                                           \
        } else {                                                                                   \
            cr_assert_null(khala__proto_mode_name(KHALA_MODE_##NAME));                             \
        }                                                                                          \
        n++;                                                                                       \
    } while (0);
    KHALA_MODE_LIST(CHECK_MODE)
#undef CHECK_MODE
    cr_assert_eq(n, 3);

    n = 0;
#define CHECK_BY(NAME, name)                                                                       \
    do {                                                                                           \
        cr_assert_str_eq(khala__proto_by_name(KHALA_BY_##NAME), name);                             \
        n++;                                                                                       \
    } while (0);
    KHALA_BY_LIST(CHECK_BY)
#undef CHECK_BY
    cr_assert_eq(n + 1, KHALA_BY_COUNT);

    /* Names are unique within each list: a name parses to the first value that has it. */
    for (int op = KHALA_OP_HELLO; op < KHALA_OP_COUNT; op++)
        for (int o2 = op + 1; o2 < KHALA_OP_COUNT; o2++)
            cr_assert_str_neq(khala__proto_op_name((khala_op_t)op),
                              khala__proto_op_name((khala_op_t)o2));
    for (int lv = KHALA_LEVEL_L1; lv < KHALA_LEVEL_COUNT; lv++)
        for (int l2 = lv + 1; l2 < KHALA_LEVEL_COUNT; l2++)
            cr_assert_str_neq(khala__proto_level_name((khala_level_t)lv),
                              khala__proto_level_name((khala_level_t)l2));
}

Test(proto, names_outside_the_lists_are_refused_and_leave_the_output) {
    khala_op_t op = KHALA_OP_PING;
    khala_level_t lv = KHALA_LEVEL_L2;
    khala_mode_t m = KHALA_MODE_BEHIND;
    cr_assert_eq(khala__proto_op_parse("gets", 4, &op), -EINVAL);
    cr_assert_eq(khala__proto_op_parse("get", 2, &op), -EINVAL);
    cr_assert_eq(khala__proto_op_parse("", 0, &op), -EINVAL);
    cr_assert_eq(op, KHALA_OP_PING);
    cr_assert_eq(khala__proto_level_parse("l4", 2, &lv), -EINVAL);
    cr_assert_eq(lv, KHALA_LEVEL_L2);
    cr_assert_eq(khala__proto_mode_parse("default", 7, &m), -EINVAL, "never on the wire");
    cr_assert_eq(khala__proto_mode_parse("write_through", 13, &m), -EINVAL, "a config name");
    cr_assert_eq(m, KHALA_MODE_BEHIND);
    cr_assert_null(khala__proto_mode_name((khala_mode_t)3));
    cr_assert_null(khala__proto_by_name(KHALA_BY_NONE));
    cr_assert_null(khala__proto_by_name(KHALA_BY_COUNT));
    cr_assert_not(khala__proto_op_writes(KHALA_OP_NONE));
    cr_assert_not(khala__proto_op_writes(KHALA_OP_COUNT));
}

/* The public enums keep their values (workers store them; the type id is on the wire), and the
 * sets made from the lists are the documented ones. */
Test(proto, public_values_and_sets_do_not_move) {
    cr_assert_eq(KHALA_TYPE_MEMORY_ENTITY, 0);
    cr_assert_eq(KHALA_TYPE_SEARCH_RESULT, 1);
    cr_assert_eq(KHALA_TYPE_EMBEDDING, 2);
    cr_assert_eq(KHALA_TYPE_ENTITY_RELATIONSHIP, 3);
    cr_assert_eq(KHALA_TYPE_AGENT_RESPONSE, 4);
    cr_assert_eq(KHALA_TYPE_VERIFICATION, 5);
    cr_assert_eq(KHALA_TYPE_SEARCH_INDEX, 6);
    cr_assert_eq(KHALA_TYPE_CONSOLIDATION, 7);
    cr_assert_eq(KHALA_TYPE_COUNT, 8);
    cr_assert_eq(KHALA_MODE_DEFAULT, 0);
    cr_assert_eq(KHALA_MODE_THROUGH, 1);
    cr_assert_eq(KHALA_MODE_BEHIND, 2);
    cr_assert_eq(KHALA_LEVEL_STORAGE, 07u, "l1, l2 and l3 store items");
    cr_assert_eq(KHALA_LEVEL_BIT(KHALA_LEVEL_L3), 04u);
    static const khala_op_t writers[] = {KHALA_OP_PUT,   KHALA_OP_FILL,  KHALA_OP_FILL_FAIL,
                                         KHALA_OP_DEL,   KHALA_OP_TOUCH, KHALA_OP_INVALIDATE,
                                         KHALA_OP_FLUSH, KHALA_OP_WARM};
    int nw = 0;
    for (int op = KHALA_OP_HELLO; op < KHALA_OP_COUNT; op++)
        nw += khala__proto_op_writes((khala_op_t)op);
    cr_assert_eq(nw, (int)(sizeof(writers) / sizeof(writers[0])));
    for (size_t i = 0; i < sizeof(writers) / sizeof(writers[0]); i++)
        cr_assert(khala__proto_op_writes(writers[i]), "%s", khala__proto_op_name(writers[i]));
}

/* ------------------------------------------------------------------------------------------ */
/* Round trips                                                                                 */
/* ------------------------------------------------------------------------------------------ */

Test(proto, every_request_round_trips) {
    for (int op = KHALA_OP_HELLO; op < KHALA_OP_COUNT; op++) {
        khala_msg_t m;
        full_request((khala_op_t)op, &m);
        round_trip(&m, 0);
    }
}

Test(proto, every_reply_round_trips) {
    for (int op = KHALA_OP_HELLO; op < KHALA_OP_COUNT; op++) {
        khala_msg_t m;
        full_reply((khala_op_t)op, &m);
        round_trip(&m, 1);
        m.op = KHALA_OP_NONE; /* decoded without knowing the op: the same fields */
        round_trip(&m, 1);
    }
}

Test(proto, error_reply_needs_no_op_fields_and_carries_err) {
    for (int op = KHALA_OP_HELLO; op < KHALA_OP_COUNT; op++) {
        khala_msg_t m;
        khala__proto_msg_init(&m);
        m.id = 9;
        m.op = (khala_op_t)op;
        m.rc = KHALA_ENOTFOUND;
        m.has = KHALA_F_ERR;
        m.err = B("no such key 'user:1'");
        round_trip(&m, 1);
        m.rc = -ENOMEM;
        m.has = 0;
        round_trip(&m, 1);
    }
}

Test(proto, err_is_dropped_when_rc_is_zero) {
    khala_msg_t m, out;
    khala__proto_msg_init(&m);
    khala__proto_msg_init(&out);
    m.id = 1;
    m.op = KHALA_OP_DEL;
    m.has = KHALA_F_ERR;
    m.err = B("ignored");
    cr_assert_eq(khala__proto_encode_reply(&g_out, &m, g_err, sizeof(g_err)), 0);
    cr_assert_eq(khala__proto_decode_reply(KHALA_OP_DEL, g_out.data + 4, g_out.len - 4, &out, g_err,
                                           sizeof(g_err)),
                 0);
    cr_assert_eq(out.has, 0, "err is not sent beside rc 0");
    /* And a peer that sends it anyway: ignored. */
    msgpack_pack_map(&g_pk, 3);
    pkv_u("id", 1);
    pkv_u("rc", 0);
    pkv_s("err", "stray");
    cr_assert_eq(decode_rep_raw(KHALA_OP_DEL, &out), 0, "%s", g_err);
    cr_assert_eq(out.has, 0);
    khala__proto_msg_free(&out);
}

Test(proto, get_reply_of_a_single_flight_leader_has_load_and_no_value) {
    khala_msg_t m;
    khala__proto_msg_init(&m);
    m.id = 3;
    m.op = KHALA_OP_GET;
    m.has = KHALA_F_LOAD;
    m.load = true;
    round_trip(&m, 1);
    m.load = false; /* load: false and no value is not a valid get reply */
    cr_assert_eq(khala__proto_encode_reply(&g_out, &m, g_err, sizeof(g_err)), KHALA_EPROTO);
    cr_assert_str_eq(g_err, "missing field 'v' (required by a get reply without 'load')");
}

Test(proto, binary_keys_with_nul_bytes_survive) {
    uint8_t key[KHALA_KEY_MAX];
    for (size_t i = 0; i < sizeof(key); i++)
        key[i] = (uint8_t)(i % 3 == 0 ? 0 : i);
    khala_msg_t m;
    full_request(KHALA_OP_GET, &m);
    m.key = (khala_bytes_t){key, sizeof(key)};
    round_trip(&m, 0);
    m.key = (khala_bytes_t){key, 1}; /* a single NUL byte */
    round_trip(&m, 0);
}

Test(proto, empty_and_one_mib_values_round_trip_without_copies) {
    khala_msg_t m, out;
    full_request(KHALA_OP_PUT, &m);
    m.value = (khala_bytes_t){NULL, 0};
    round_trip(&m, 0);

    size_t big = KHALA_VALUE_MAX_DEFAULT;
    uint8_t *v = malloc(big);
    cr_assert_not_null(v);
    for (size_t i = 0; i < big; i++)
        v[i] = (uint8_t)(i * 131);
    m.value = (khala_bytes_t){v, big};
    uint32_t n = round_trip(&m, 0);
    cr_assert_leq(n, KHALA_FRAME_MAX_DEFAULT, "a 1 MiB put fits the default frame");
    /* The decoded value points into the frame: no copy. */
    khala__proto_msg_init(&out);
    cr_assert_eq(khala__proto_decode_request(g_out.data + 4, n, &out, g_err, sizeof(g_err)), 0);
    cr_assert(out.value.ptr > g_out.data && out.value.ptr + big <= g_out.data + g_out.len);
    khala__proto_msg_free(&out);
    free(v);
}

Test(proto, pipelined_frames_in_one_buffer_decode_in_order) {
    enum { N = 200 };
    for (int i = 0; i < N; i++) {
        khala_msg_t m;
        full_request((khala_op_t)(1 + i % (KHALA_OP_COUNT - 1)), &m);
        m.id = (uint64_t)i;
        cr_assert_eq(khala__proto_encode_request(&g_out, &m, g_err, sizeof(g_err)), 0, "%s", g_err);
    }
    size_t off = 0;
    int seen = 0;
    khala_msg_t m;
    khala__proto_msg_init(&m);
    for (;;) {
        uint32_t n;
        int rc = khala__proto_frame_check(g_out.data + off, g_out.len - off, 0, &n, g_err,
                                          sizeof(g_err));
        if (rc == KHALA_PROTO_NEED_MORE)
            break;
        cr_assert_eq(rc, 0);
        cr_assert_eq(khala__proto_decode_request(g_out.data + off + 4, n, &m, g_err, sizeof(g_err)),
                     0, "%s", g_err);
        cr_assert_eq(m.id, (uint64_t)seen);
        cr_assert_eq(m.op, (khala_op_t)(1 + seen % (KHALA_OP_COUNT - 1)));
        off += 4 + n;
        seen++;
    }
    khala__proto_msg_free(&m);
    cr_assert_eq(seen, N);
    cr_assert_eq(off, g_out.len);
}

Test(proto, partial_frame_needs_more_until_complete) {
    khala_msg_t m;
    full_request(KHALA_OP_PUT, &m);
    cr_assert_eq(khala__proto_encode_request(&g_out, &m, NULL, 0), 0);
    uint32_t body = (uint32_t)(g_out.len - 4);
    for (size_t avail = 0; avail < g_out.len; avail++) {
        uint32_t n = 0xdeadbeef;
        cr_assert_eq(khala__proto_frame_check(g_out.data, avail, 0, &n, g_err, sizeof(g_err)),
                     KHALA_PROTO_NEED_MORE, "avail %zu", avail);
        if (avail >= 4)
            cr_assert_eq(n, body, "the body length is known once the header is in");
        else
            cr_assert_eq(n, 0xdeadbeef);
    }
    uint32_t n;
    cr_assert_eq(khala__proto_frame_check(g_out.data, g_out.len, 0, &n, g_err, sizeof(g_err)), 0);
    cr_assert_eq(n, body);
}

Test(proto, unknown_fields_are_ignored) {
    khala_msg_t m;
    khala__proto_msg_init(&m);
    msgpack_pack_map(&g_pk, 8);
    pkv_u("id", 5);
    pkv_s("op", "get");
    ps("k");
    pbin("key", 3);
    ps("future_scalar");
    msgpack_pack_double(&g_pk, 1.5);
    ps("future_map");
    msgpack_pack_map(&g_pk, 1);
    ps("a");
    msgpack_pack_array(&g_pk, 2);
    msgpack_pack_nil(&g_pk);
    msgpack_pack_ext_with_body(&g_pk, "xy", 2, 5);
    ps("lvl"); /* a reply field is unknown in a request */
    msgpack_pack_uint8(&g_pk, 200);
    ps("V"); /* names are case-sensitive */
    msgpack_pack_true(&g_pk);
    ps("");
    msgpack_pack_nil(&g_pk);
    cr_assert_eq(decode_req_raw(&m), 0, "%s", g_err);
    cr_assert_eq(m.id, 5);
    cr_assert_eq(m.op, KHALA_OP_GET);
    cr_assert_eq(m.has, KHALA_F_K);
    cr_assert_eq(m.key.len, 3);
    cr_assert_eq(memcmp(m.key.ptr, "key", 3), 0);
    khala__proto_msg_free(&m);
}

Test(proto, data_map_is_searchable_after_decoding) {
    khala_msg_t m, out;
    full_reply(KHALA_OP_STATS, &m);
    khala__proto_msg_init(&out);
    cr_assert_eq(khala__proto_encode_reply(&g_out, &m, NULL, 0), 0);
    cr_assert_eq(khala__proto_decode_reply(KHALA_OP_STATS, g_out.data + 4, g_out.len - 4, &out,
                                           g_err, sizeof(g_err)),
                 0);
    const khala_kv_t *e = khala__proto_kv_find(out.data, out.ndata, "embedding");
    cr_assert_not_null(e);
    cr_assert_eq(e->kind, KHALA_KV_MAP);
    const khala_kv_t *h = khala__proto_kv_find(e->as.map.items, e->as.map.n, "hits");
    cr_assert_not_null(h);
    cr_assert_eq(h->kind, KHALA_KV_UINT);
    cr_assert_eq(h->as.u, UINT64_MAX);
    cr_assert_null(khala__proto_kv_find(out.data, out.ndata, "absent"));
    khala__proto_msg_free(&out);
}

Test(proto, a_failed_decode_leaves_the_previous_message) {
    khala_msg_t m;
    khala__proto_msg_init(&m);
    msgpack_pack_map(&g_pk, 3);
    pkv_u("id", 77);
    pkv_s("op", "del");
    ps("k");
    pbin("x", 1);
    cr_assert_eq(decode_req_raw(&m), 0);
    void *zone = m.zone;
    sb_reset();
    msgpack_pack_map(&g_pk, 1);
    pkv_s("op", "frob");
    cr_assert_eq(decode_req_raw(&m), KHALA_EPROTO);
    cr_assert_eq(m.id, 77);
    cr_assert_eq(m.op, KHALA_OP_DEL);
    cr_assert_eq(m.zone, zone);
    khala__proto_msg_free(&m);
    cr_assert_null(m.zone);
    khala__proto_msg_free(&m); /* twice is harmless */
}

/* ------------------------------------------------------------------------------------------ */
/* Framing errors                                                                              */
/* ------------------------------------------------------------------------------------------ */

Test(proto, frame_over_max_frame_is_refused_with_its_size) {
    uint8_t h[4] = {0x00, 0x2d, 0xc6, 0xc0}; /* 3,000,000 */
    uint32_t n = 0;
    cr_assert_eq(khala__proto_frame_check(h, 4, 0, &n, g_err, sizeof(g_err)), KHALA_EPROTO);
    cr_assert_str_eq(g_err, "frame of 3000000 bytes exceeds max_frame 2097152");
    cr_assert_eq(n, 0, "body_len is left alone on failure");
    /* A larger announced limit takes it; the ceiling clamps any limit. */
    cr_assert_eq(khala__proto_frame_check(h, 4, 4000000, &n, g_err, sizeof(g_err)),
                 KHALA_PROTO_NEED_MORE);
    uint8_t huge[4] = {0xff, 0xff, 0xff, 0xff};
    cr_assert_eq(khala__proto_frame_check(huge, 4, UINT32_MAX, &n, g_err, sizeof(g_err)),
                 KHALA_EPROTO);
    cr_assert_str_eq(g_err, "frame of 4294967295 bytes exceeds max_frame 268500992");
}

Test(proto, zero_length_frame_is_refused) {
    uint8_t h[4] = {0, 0, 0, 0};
    uint32_t n;
    cr_assert_eq(khala__proto_frame_check(h, 4, 0, &n, g_err, sizeof(g_err)), KHALA_EPROTO);
    cr_assert_str_eq(g_err, "frame of 0 bytes (a body holds at least a map)");
    cr_assert_eq(khala__proto_frame_check(h, 4, 0, &n, NULL, 0), KHALA_EPROTO);
}

/* ------------------------------------------------------------------------------------------ */
/* Body errors                                                                                 */
/* ------------------------------------------------------------------------------------------ */

Test(proto, key_longer_than_250_is_refused) {
    uint8_t key[300] = {0};
    msgpack_pack_map(&g_pk, 3);
    pkv_u("id", 1);
    pkv_s("op", "get");
    ps("k");
    pbin(key, sizeof(key));
    expect_req_error("field 'k' is 300 bytes, max 250");
}

Test(proto, empty_key_is_refused) {
    msgpack_pack_map(&g_pk, 3);
    pkv_u("id", 1);
    pkv_s("op", "del");
    ps("k");
    pbin("", 0);
    expect_req_error("field 'k' is empty");
}

Test(proto, unknown_op_is_named) {
    msgpack_pack_map(&g_pk, 2);
    pkv_u("id", 1);
    pkv_s("op", "frob");
    expect_req_error("unknown op 'frob'");
    sb_reset();
    msgpack_pack_map(&g_pk, 2);
    pkv_u("id", 1);
    ps("op");
    msgpack_pack_str_with_body(&g_pk, "g\0t'\n", 5);
    expect_req_error("unknown op 'g\\x00t\\x27\\x0a'");
}

Test(proto, missing_required_fields_are_named) {
    msgpack_pack_map(&g_pk, 1);
    pkv_s("op", "ping");
    expect_req_error("missing field 'id'");
    sb_reset();
    msgpack_pack_map(&g_pk, 1);
    pkv_u("id", 1);
    expect_req_error("missing field 'op'");
    sb_reset();
    msgpack_pack_map(&g_pk, 2);
    pkv_u("id", 1);
    pkv_s("op", "get");
    expect_req_error("missing field 'k' (required by get)");
    sb_reset();
    msgpack_pack_map(&g_pk, 4);
    pkv_u("id", 1);
    pkv_s("op", "put");
    ps("k");
    pbin("a", 1);
    pkv_u("ttl", 5);
    expect_req_error("missing field 'v' (required by put)");
    sb_reset();
    msgpack_pack_map(&g_pk, 3);
    pkv_u("id", 1);
    pkv_s("op", "invalidate");
    pkv_s("by", "prefix");
    expect_req_error("missing field 'prefix' (required by invalidate by prefix)");
    sb_reset();
    msgpack_pack_map(&g_pk, 2);
    pkv_u("id", 1);
    pkv_s("op", "warm");
    expect_req_error("missing field: warm needs 'keys', 'prefix' or 'type'");
    sb_reset();
    msgpack_pack_map(&g_pk, 1);
    pkv_u("id", 1);
    expect_rep_error(KHALA_OP_NONE, "missing field 'rc'");
    sb_reset();
    msgpack_pack_map(&g_pk, 3);
    pkv_u("id", 1);
    pkv_u("rc", 0);
    pkv_u("proto", 1);
    expect_rep_error(KHALA_OP_HELLO, "missing field 'name' (required by a hello reply)");
}

Test(proto, wrong_field_types_are_named) {
    msgpack_pack_map(&g_pk, 3);
    pkv_u("id", 1);
    pkv_s("op", "get");
    pkv_s("k", "text"); /* a str where a bin goes */
    expect_req_error("field 'k' is a str, expected a bin");
    sb_reset();
    msgpack_pack_map(&g_pk, 2);
    ps("id");
    msgpack_pack_int64(&g_pk, -1);
    pkv_s("op", "ping");
    expect_req_error("field 'id' is a negative integer, expected an unsigned integer");
    sb_reset();
    msgpack_pack_map(&g_pk, 2);
    pkv_u("id", 1);
    pkv_u("op", 3);
    expect_req_error("field 'op' is an unsigned integer, expected a str");
    sb_reset();
    msgpack_pack_map(&g_pk, 3);
    pkv_u("id", 1);
    pkv_s("op", "get");
    ps("loader");
    msgpack_pack_uint8(&g_pk, 1);
    expect_req_error("field 'loader' is an unsigned integer, expected a bool");
}

Test(proto, out_of_range_values_are_named) {
    msgpack_pack_map(&g_pk, 4);
    pkv_u("id", 1);
    pkv_s("op", "flush");
    pkv_u("type", 9);
    pkv_u("count", 1);
    expect_req_error("field 'type' is 9, max 7");
    sb_reset();
    msgpack_pack_map(&g_pk, 5);
    pkv_u("id", 1);
    pkv_s("op", "put");
    ps("k");
    pbin("a", 1);
    ps("v");
    pbin("b", 1);
    pkv_s("mode", "sideways");
    expect_req_error("field 'mode' is 'sideways', expected 'through' or 'behind'");
    sb_reset();
    msgpack_pack_map(&g_pk, 3);
    pkv_u("id", 1);
    pkv_s("op", "invalidate");
    pkv_s("by", "all");
    expect_req_error("field 'by' is 'all', expected 'key', 'prefix' or 'type'");
    sb_reset();
    msgpack_pack_map(&g_pk, 3);
    pkv_u("id", 1);
    pkv_s("op", "keys");
    pkv_u("count", 5000);
    expect_req_error("field 'count' is 5000, max 1024");
    sb_reset();
    msgpack_pack_map(&g_pk, 3);
    pkv_u("id", 1);
    pkv_s("op", "hello");
    pkv_u("proto", 0);
    expect_req_error("field 'proto' is 0, expected 1..4294967295");
    sb_reset();
    msgpack_pack_map(&g_pk, 2);
    pkv_u("id", 1);
    pkv_u("rc", 5);
    expect_rep_error(KHALA_OP_NONE, "field 'rc' is 5, expected 0 or negative");
    sb_reset();
    msgpack_pack_map(&g_pk, 2);
    pkv_u("id", 1);
    ps("rc");
    msgpack_pack_int64(&g_pk, INT64_MIN);
    expect_rep_error(KHALA_OP_NONE, "field 'rc' is -9223372036854775808, below INT32_MIN");
    sb_reset();
    msgpack_pack_map(&g_pk, 5);
    pkv_u("id", 1);
    pkv_u("rc", 0);
    ps("v");
    pbin("x", 1);
    pkv_s("lvl", "l4");
    pkv_u("ver", 1);
    expect_rep_error(KHALA_OP_GET,
                     "field 'lvl' is 'l4', expected 'l1', 'l2', 'l3', 'loader' or 'stale'");
}

Test(proto, duplicate_fields_are_refused) {
    msgpack_pack_map(&g_pk, 3);
    pkv_u("id", 1);
    pkv_s("op", "ping");
    pkv_u("id", 2);
    expect_req_error("duplicate field 'id'");
}

Test(proto, body_that_is_not_a_map_is_refused) {
    msgpack_pack_array(&g_pk, 2);
    pkv_u("id", 1);
    expect_req_error("body is not a msgpack map (first byte 0x92)");
    khala_msg_t m;
    khala__proto_msg_init(&m);
    cr_assert_eq(khala__proto_decode_request("", 0, &m, g_err, sizeof(g_err)), KHALA_EPROTO);
    cr_assert_str_eq(g_err, "empty body");
}

Test(proto, non_string_map_key_is_refused) {
    msgpack_pack_map(&g_pk, 3);
    pkv_u("id", 1);
    pkv_s("op", "ping");
    msgpack_pack_uint8(&g_pk, 7);
    msgpack_pack_nil(&g_pk);
    expect_req_error("a key of the body map is an unsigned integer, expected a str");
}

Test(proto, trailing_bytes_after_the_map_are_refused) {
    msgpack_pack_map(&g_pk, 2);
    pkv_u("id", 1);
    pkv_s("op", "ping");
    msgpack_pack_nil(&g_pk);
    msgpack_pack_nil(&g_pk);
    expect_req_error("2 trailing bytes after the body's map");
}

Test(proto, truncated_bodies_are_refused) {
    msgpack_pack_map(&g_pk, 3);
    pkv_u("id", 1);
    pkv_s("op", "get");
    ps("k");
    pbin("abcdef", 6);
    khala_msg_t m;
    khala__proto_msg_init(&m);
    for (size_t len = 1; len < g_sb.size; len++) {
        cr_assert_eq(khala__proto_decode_request(g_sb.data, len, &m, g_err, sizeof(g_err)),
                     KHALA_EPROTO, "len %zu", len);
        cr_assert(strncmp(g_err, "truncated msgpack", 17) == 0, "len %zu: %s", len, g_err);
    }
    cr_assert_eq(khala__proto_decode_request(g_sb.data, g_sb.size - 3, &m, g_err, sizeof(g_err)),
                 KHALA_EPROTO);
    cr_assert_str_eq(g_err, "truncated msgpack: object at byte 14 needs 6 more bytes, 3 left");
}

Test(proto, declared_counts_must_be_backed_by_bytes) {
    /* An array of 2^32 - 1 elements in five bytes: msgpack-c alone would ask for 96 GiB. */
    static const uint8_t arr[] = {0x81, 0xa1, 'x', 0xdd, 0xff, 0xff, 0xff, 0xff};
    khala_msg_t m;
    khala__proto_msg_init(&m);
    cr_assert_eq(khala__proto_decode_request(arr, sizeof(arr), &m, g_err, sizeof(g_err)),
                 KHALA_EPROTO);
    cr_assert_str_eq(g_err, "array of 4294967295 elements at byte 3, max 1024");
    static const uint8_t map[] = {0x81, 0xa1, 'x', 0xde, 0x01, 0x00};
    cr_assert_eq(khala__proto_decode_request(map, sizeof(map), &m, g_err, sizeof(g_err)),
                 KHALA_EPROTO);
    cr_assert_str_eq(g_err,
                     "truncated msgpack: container at byte 3 holds 512 objects, 0 bytes left");
    static const uint8_t bin[] = {0x81, 0xa1, 'x', 0xc6, 0x7f, 0xff, 0xff, 0xff};
    cr_assert_eq(khala__proto_decode_request(bin, sizeof(bin), &m, g_err, sizeof(g_err)),
                 KHALA_EPROTO);
    cr_assert_str_eq(g_err,
                     "truncated msgpack: object at byte 3 needs 2147483647 more bytes, 0 left");
}

Test(proto, invalid_byte_c1_is_refused) {
    static const uint8_t body[] = {0x81, 0xa1, 'x', 0xc1};
    khala_msg_t m;
    khala__proto_msg_init(&m);
    cr_assert_eq(khala__proto_decode_request(body, sizeof(body), &m, g_err, sizeof(g_err)),
                 KHALA_EPROTO);
    cr_assert_str_eq(g_err, "invalid msgpack byte 0xc1 at byte 3");
}

Test(proto, nesting_deeper_than_the_limit_is_refused) {
    msgpack_pack_map(&g_pk, 3);
    pkv_u("id", 1);
    pkv_s("op", "ping");
    ps("x");
    for (int d = 0; d < KHALA_PROTO_DEPTH_MAX; d++) {
        msgpack_pack_map(&g_pk, 1);
        ps("y");
    }
    msgpack_pack_nil(&g_pk);
    expect_req_error("nesting deeper than 4 at byte 24");
    /* One level less is fine (and ignored: x is unknown). */
    sb_reset();
    msgpack_pack_map(&g_pk, 3);
    pkv_u("id", 1);
    pkv_s("op", "ping");
    ps("x");
    for (int d = 0; d < KHALA_PROTO_DEPTH_MAX - 1; d++) {
        msgpack_pack_map(&g_pk, 1);
        ps("y");
    }
    msgpack_pack_nil(&g_pk);
    khala_msg_t m;
    khala__proto_msg_init(&m);
    cr_assert_eq(decode_req_raw(&m), 0, "%s", g_err);
    khala__proto_msg_free(&m);
}

Test(proto, maps_with_too_many_entries_are_refused) {
    msgpack_pack_map(&g_pk, KHALA_PROTO_MAP_MAX + 1);
    pkv_u("id", 1);
    pkv_s("op", "ping");
    for (unsigned i = 2; i < KHALA_PROTO_MAP_MAX + 1; i++) {
        char k[16];
        snprintf(k, sizeof(k), "x%u", i);
        pkv_u(k, i);
    }
    expect_req_error("map of 1025 entries at byte 0, max 1024");
}

Test(proto, bodies_with_too_many_objects_are_refused) {
    /* 20 arrays of 1000 nils: each container within its limit, the body over the total. */
    msgpack_pack_map(&g_pk, 22);
    pkv_u("id", 1);
    pkv_s("op", "ping");
    for (int a = 0; a < 20; a++) {
        char k[16];
        snprintf(k, sizeof(k), "a%d", a);
        ps(k);
        msgpack_pack_array(&g_pk, 1000);
        for (int i = 0; i < 1000; i++)
            msgpack_pack_nil(&g_pk);
    }
    expect_req_error("body holds more than 16384 msgpack objects");
}

Test(proto, data_with_arrays_or_bad_keys_is_refused) {
    msgpack_pack_map(&g_pk, 3);
    pkv_u("id", 1);
    pkv_u("rc", 0);
    ps("data");
    msgpack_pack_map(&g_pk, 1);
    ps("list");
    msgpack_pack_array(&g_pk, 0);
    expect_rep_error(KHALA_OP_STATS,
                     "field 'data' entry 'list' holds an array, expected a scalar or a map");
    sb_reset();
    msgpack_pack_map(&g_pk, 3);
    pkv_u("id", 1);
    pkv_u("rc", 0);
    ps("data");
    msgpack_pack_map(&g_pk, 1);
    msgpack_pack_uint8(&g_pk, 1);
    msgpack_pack_nil(&g_pk);
    expect_rep_error(KHALA_OP_STATS, "field 'data' has an unsigned integer key, expected a str");
    sb_reset();
    msgpack_pack_map(&g_pk, 3);
    pkv_u("id", 1);
    pkv_u("rc", 0);
    ps("keys");
    msgpack_pack_array(&g_pk, 2);
    pbin("a", 1);
    ps("b");
    expect_rep_error(KHALA_OP_NONE, "field 'keys' element 1 is a str, expected a bin");
}

/* ------------------------------------------------------------------------------------------ */
/* The encoder refuses what the decoder would                                                  */
/* ------------------------------------------------------------------------------------------ */

Test(proto, encoder_refuses_invalid_messages_and_leaves_the_buffer) {
    khala_msg_t m;
    full_request(KHALA_OP_PING, &m);
    cr_assert_eq(khala__proto_encode_request(&g_out, &m, NULL, 0), 0);
    size_t len = g_out.len;

    full_request(KHALA_OP_GET, &m);
    m.has &= ~(uint32_t)KHALA_F_K;
    cr_assert_eq(khala__proto_encode_request(&g_out, &m, g_err, sizeof(g_err)), KHALA_EPROTO);
    cr_assert_str_eq(g_err, "missing field 'k' (required by get)");
    m.has |= KHALA_F_K;
    m.key.len = KHALA_KEY_MAX + 1;
    cr_assert_eq(khala__proto_encode_request(&g_out, &m, g_err, sizeof(g_err)), KHALA_EPROTO);
    cr_assert_str_eq(g_err, "field 'k' is 251 bytes, max 250");
    m.op = KHALA_OP_NONE;
    cr_assert_eq(khala__proto_encode_request(&g_out, &m, g_err, sizeof(g_err)), KHALA_EPROTO);
    cr_assert_str_eq(g_err, "unknown op 0");

    full_request(KHALA_OP_PUT, &m);
    static const uint8_t one = 1;
    m.value = (khala_bytes_t){&one, (size_t)KHALA_FRAME_MAX_CEILING + 1}; /* refused unread */
    cr_assert_eq(khala__proto_encode_request(&g_out, &m, g_err, sizeof(g_err)), KHALA_ETOOBIG);
    cr_assert_str_eq(g_err, "field 'v' is 268500993 bytes, over the ceiling 268500992");
    cr_assert_eq(g_out.len, len, "nothing appended on failure");
}

Test(proto, encoder_refuses_data_nested_too_deep) {
    static const khala_kv_t l3[] = {{{(const uint8_t *)"c", 1}, KHALA_KV_UINT, {.u = 1}}};
    static const khala_kv_t l2[] = {{{(const uint8_t *)"b", 1}, KHALA_KV_MAP, {.map = {l3, 1}}}};
    static const khala_kv_t l1[] = {{{(const uint8_t *)"a", 1}, KHALA_KV_MAP, {.map = {l2, 1}}}};
    static const khala_kv_t l0[] = {{{(const uint8_t *)"z", 1}, KHALA_KV_MAP, {.map = {l1, 1}}}};
    khala_msg_t m;
    full_reply(KHALA_OP_STATS, &m);
    m.data = l1; /* data, a, b: three maps deep, the limit */
    m.ndata = 1;
    round_trip(&m, 1);
    m.data = l0; /* four */
    cr_assert_eq(khala__proto_encode_reply(&g_out, &m, g_err, sizeof(g_err)), KHALA_EPROTO);
    cr_assert_str_eq(g_err, "field 'data' nests deeper than 3 maps");
}

/* ------------------------------------------------------------------------------------------ */
/* Buffers                                                                                     */
/* ------------------------------------------------------------------------------------------ */

Test(proto, buffer_grows_and_consumes_from_the_front) {
    khala_buf_t b;
    khala__proto_buf_init(&b);
    cr_assert_eq(khala__proto_buf_append(&b, "hello", 5), 0);
    cr_assert_eq(khala__proto_buf_reserve(&b, 10000), 0);
    cr_assert_geq(b.cap - b.len, 10000);
    cr_assert_eq(memcmp(b.data, "hello", 5), 0);
    khala__proto_buf_consume(&b, 2);
    cr_assert_eq(b.len, 3);
    cr_assert_eq(memcmp(b.data, "llo", 3), 0);
    cr_assert_eq(khala__proto_buf_reserve(&b, SIZE_MAX), -ENOMEM);
    cr_assert_eq(b.len, 3);
    khala__proto_buf_consume(&b, 3);
    cr_assert_eq(b.len, 0);
    khala__proto_buf_reset(&b);
    khala__proto_buf_free(&b);
    cr_assert_null(b.data);
    khala__proto_buf_free(&b);
}

/* ------------------------------------------------------------------------------------------ */
/* similar (issue 12)                                                                          */
/* ------------------------------------------------------------------------------------------ */

Test(proto, similar_needs_a_vector_and_bounds_sim_and_matches) {
    khala_msg_t m;
    full_request(KHALA_OP_SIMILAR, &m);
    m.has &= ~(uint32_t)KHALA_F_V;
    khala__proto_buf_reset(&g_out);
    cr_assert_eq(khala__proto_encode_request(&g_out, &m, g_err, sizeof(g_err)), KHALA_EPROTO);
    cr_assert_str_eq(g_err, "missing field 'v' (required by similar)");
    full_request(KHALA_OP_SIMILAR, &m);
    m.sim = 1.5;
    cr_assert_eq(khala__proto_encode_request(&g_out, &m, g_err, sizeof(g_err)), KHALA_EPROTO);
    cr_assert_str_eq(g_err, "field 'sim' is 1.5, expected -1..1");
    m.sim = NAN;
    cr_assert_eq(khala__proto_encode_request(&g_out, &m, g_err, sizeof(g_err)), KHALA_EPROTO);
    /* On the wire: "sim" as a float32, a float64 or an integer; anything else is refused. */
    const char *kinds[] = {"f32", "f64", "int", "str"};
    for (int i = 0; i < 4; i++) {
        sb_reset();
        msgpack_pack_map(&g_pk, 4);
        pkv_u("id", 1);
        pkv_s("op", "similar");
        ps("v");
        pbin("\0\0\x80?", 4);
        ps("sim");
        if (i == 0)
            msgpack_pack_float(&g_pk, -0.5f);
        else if (i == 1)
            msgpack_pack_double(&g_pk, -0.5);
        else if (i == 2)
            msgpack_pack_int(&g_pk, -1);
        else
            ps("0.5");
        khala_msg_t d;
        khala__proto_msg_init(&d);
        if (i == 3) {
            expect_req_error("field 'sim' is a str, expected a float");
            continue;
        }
        cr_assert_eq(decode_req_raw(&d), 0, "%s: %s", kinds[i], g_err);
        cr_assert_eq(d.sim, i == 2 ? -1.0 : -0.5, "%s", kinds[i]);
        khala__proto_msg_free(&d);
    }
    /* A reply's matches: the key range and the similarity range hold. */
    khala_msg_t r;
    full_reply(KHALA_OP_SIMILAR, &r);
    khala_proto_match_t bad = matches2[1];
    bad.sim = 2;
    r.matches = &bad;
    r.nmatches = 1;
    cr_assert_eq(khala__proto_encode_reply(&g_out, &r, g_err, sizeof(g_err)), KHALA_EPROTO);
    cr_assert_str_eq(g_err, "field 'matches' element 0 has similarity 2, expected -1..1");
    bad = matches2[1];
    bad.key.len = 0;
    cr_assert_eq(khala__proto_encode_reply(&g_out, &r, g_err, sizeof(g_err)), KHALA_EPROTO);
    r.nmatches = KHALA_SIMILAR_K_MAX + 1;
    cr_assert_eq(khala__proto_encode_reply(&g_out, &r, g_err, sizeof(g_err)), KHALA_EPROTO);
    r.has = 0;
    cr_assert_eq(khala__proto_encode_reply(&g_out, &r, g_err, sizeof(g_err)), KHALA_EPROTO);
    cr_assert_str_eq(g_err, "missing field 'matches' (required by a similar reply)");
    /* A malformed element on the wire. */
    sb_reset();
    msgpack_pack_map(&g_pk, 3);
    pkv_u("id", 1);
    pkv_u("rc", 0);
    ps("matches");
    msgpack_pack_array(&g_pk, 1);
    msgpack_pack_array(&g_pk, 5);
    pbin("k", 1);
    ps("0.5");
    pbin("", 0);
    msgpack_pack_uint64(&g_pk, 1);
    msgpack_pack_uint64(&g_pk, 0);
    expect_rep_error(KHALA_OP_SIMILAR, "field 'matches' element 0 item 1 is a str");
}

/* "links" (relationship caching, issue 12) ------------------------------------------------- */

/* A put request of key "r" whose "links" is the array written by pack_links. */
static void put_with_links(void (*pack_links)(void)) {
    sb_reset();
    msgpack_pack_map(&g_pk, 5);
    pkv_u("id", 1);
    pkv_s("op", "put");
    ps("k");
    pbin("r", 1);
    ps("v");
    pbin("x", 1);
    ps("links");
    pack_links();
}

static void links_empty(void) {
    msgpack_pack_array(&g_pk, 0);
}

static void links_long(void) {
    uint8_t k[251] = {0};
    msgpack_pack_array(&g_pk, 2);
    pbin("e", 1);
    pbin(k, sizeof(k));
}

static void links_self(void) {
    msgpack_pack_array(&g_pk, 2);
    pbin("e", 1);
    pbin("r", 1);
}

static void links_str(void) {
    msgpack_pack_array(&g_pk, 1);
    ps("e");
}

static void links_too_many(void) {
    msgpack_pack_array(&g_pk, KHALA_PROTO_ARRAY_MAX + 1);
    for (uint32_t i = 0; i <= KHALA_PROTO_ARRAY_MAX; i++)
        pbin("e", 1);
}

Test(proto, bad_links_are_refused_and_named) {
    put_with_links(links_empty);
    expect_req_error("field 'links' has 0 keys, expected 1..1024");
    put_with_links(links_long);
    expect_req_error("field 'links' element 1 is 251 bytes, max 250");
    put_with_links(links_self);
    expect_req_error("field 'links' element 1 is the item's own key");
    put_with_links(links_str);
    expect_req_error("field 'links' element 0 is a str, expected a bin");
    put_with_links(links_too_many);
    expect_req_error("array of 1025 elements at byte 28, max 1024"); /* the scan's limit */
}

Test(proto, links_are_only_for_put_and_fill) {
    msgpack_pack_map(&g_pk, 4);
    pkv_u("id", 1);
    pkv_s("op", "get");
    ps("k");
    pbin("r", 1);
    ps("links");
    msgpack_pack_array(&g_pk, 1);
    pbin("e", 1);
    expect_req_error("field 'links' is only for put and fill, not get");
    /* The encoder refuses what the decoder would. */
    khala_msg_t m;
    khala__proto_msg_init(&m);
    m.op = KHALA_OP_DEL;
    m.key = B("r");
    m.links = links2;
    m.nlinks = 2;
    m.has = KHALA_F_K | KHALA_F_LINKS;
    cr_assert_eq(khala__proto_encode_request(&g_out, &m, g_err, sizeof(g_err)), KHALA_EPROTO);
    cr_assert_str_eq(g_err, "field 'links' is only for put and fill, not del");
}

Test(proto, a_get_for_the_archive_round_trips_and_refuses_a_loader) {
    khala_msg_t m;
    khala__proto_msg_init(&m);
    m.id = 7;
    m.op = KHALA_OP_GET;
    m.has = KHALA_F_K | KHALA_F_ARCHIVE;
    m.key = (khala_bytes_t){nul_key, sizeof(nul_key)};
    m.archive = true;
    round_trip(&m, 0);
    /* false is carried too, and means a plain get. */
    m.archive = false;
    round_trip(&m, 0);
    /* An archive read never leads a load. */
    msgpack_pack_map(&g_pk, 5);
    pkv_u("id", 1);
    pkv_s("op", "get");
    ps("k");
    pbin("a", 1);
    ps("archive");
    msgpack_pack_true(&g_pk);
    ps("loader");
    msgpack_pack_true(&g_pk);
    expect_req_error(
        "a get with 'archive' cannot take 'loader': an archive read never leads a load");
    sb_reset();
    msgpack_pack_map(&g_pk, 4);
    pkv_u("id", 1);
    pkv_s("op", "get");
    ps("k");
    pbin("a", 1);
    ps("archive");
    msgpack_pack_uint8(&g_pk, 1);
    expect_req_error("field 'archive' is an unsigned integer, expected a bool");
}
