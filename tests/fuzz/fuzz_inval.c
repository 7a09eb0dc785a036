/*
 * Fuzz target: the decoder of invalidation messages heard over Redis pub/sub
 * (khala__coherence_decode, daemon/coherence.c). Whoever can PUBLISH on "khala:<ns>:inv" can
 * send khalad any bytes, so whatever the bytes, decoding must end in 0 or -1, never in a crash,
 * a read outside the payload or unbounded work.
 *
 * Beyond not crashing, the target checks what the rest of khalad relies on:
 *   1. A refused payload leaves the message untouched.
 *   2. A decoded message is one khala__coherence_publish() would accept: its kind is one of
 *      the four; a KEY or PREFIX has 1..KHALA_KEY_MAX key bytes, inside the payload, and type
 *      -1; a TYPE has a type below KHALA_TYPE_COUNT; an ALL has KHALA_INV_ALL_TYPES or such a
 *      type; only a KEY carries a version; TYPE and ALL carry no key.
 *   3. The payload is exactly one message: cutting its last byte, or half of it, or adding a
 *      byte after it, makes it malformed.
 *   4. Round trip: the module's encoder accepts the decoded message, its encoding decodes to the
 *      same message and origin, and encoding that again gives the same bytes.
 * A violation aborts, which libFuzzer reports like a crash.
 *
 * Built two ways: with KHALA_FUZZ (clang, -fsanitize=fuzzer,address) as a libFuzzer binary,
 * and always as a plain program (fuzz_inval_replay.c) that runs the seeds and tens of
 * thousands of deterministic mutations of them, so that the target cannot rot.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "coherence.h"
#include "fuzz_inval.h"
#include "khala/cache.h"

static void fail(const char *what, size_t size) __attribute__((noreturn));

static void fail(const char *what, size_t size) {
    fprintf(stderr, "fuzz_inval: %s (input of %zu bytes)\n", what, size);
    abort();
}

static int inv_eq(const khala_inv_t *a, const khala_inv_t *b) {
    return a->by == b->by && a->klen == b->klen && a->type == b->type && a->version == b->version &&
           (a->key == NULL) == (b->key == NULL) &&
           (a->klen == 0 || memcmp(a->key, b->key, a->klen) == 0);
}

/* Step 2 of the file header. */
static void check_fields(const khala_inv_t *m, const uint8_t *data, size_t size) {
    switch (m->by) {
        case KHALA_INV_KEY:
        case KHALA_INV_PREFIX:
            if (!m->key || m->klen == 0 || m->klen > KHALA_KEY_MAX)
                fail("a decoded key or prefix is out of 1..KHALA_KEY_MAX bytes", size);
            if ((const uint8_t *)m->key < data || m->klen > size ||
                (const uint8_t *)m->key > data + (size - m->klen))
                fail("a decoded key points outside the payload", size);
            if (m->type != -1)
                fail("a decoded key or prefix has a type", size);
            if (m->by == KHALA_INV_PREFIX && m->version != 0)
                fail("a decoded prefix has a version", size);
            break;
        case KHALA_INV_TYPE:
        case KHALA_INV_ALL:
            if (m->key || m->klen)
                fail("a decoded type or flush has a key", size);
            if (m->type >= KHALA_TYPE_COUNT ||
                m->type < (m->by == KHALA_INV_ALL ? KHALA_INV_ALL_TYPES : 0))
                fail("a decoded type is out of range", size);
            if (m->version != 0)
                fail("a decoded type or flush has a version", size);
            break;
        default:
            fail("a decoded message has an unknown kind", size);
    }
}

/* Step 3: data[0..size) decoded; no shorter or longer payload over the same bytes may. */
static void check_exact(const uint8_t *data, size_t size) {
    khala_inv_t m;
    uint64_t origin;
    if (khala__coherence_decode(data, size - 1, &m, &origin) == 0 ||
        khala__coherence_decode(data, size / 2, &m, &origin) == 0)
        fail("a cut message still decodes", size);
    uint8_t *longer = malloc(size + 1);
    if (!longer)
        return;
    memcpy(longer, data, size);
    longer[size] = 0xc0; /* nil: a whole msgpack object, so only the trailing check refuses */
    if (khala__coherence_decode(longer, size + 1, &m, &origin) == 0)
        fail("a message with a trailing byte decodes", size);
    free(longer);
}

/* Step 4. */
static void check_round_trip(const khala_inv_t *m, uint64_t origin, size_t size) {
    khala_coh_buf_t b, again;
    khala_inv_t m2;
    uint64_t o2 = ~origin;
    if (khala__coherence_encode(m, origin, &b) != 0 || b.len == 0 || b.len > KHALA_COH_MSG_MAX)
        fail("a decoded message does not encode", size);
    if (khala__coherence_decode(b.buf, b.len, &m2, &o2) != 0)
        fail("a re-encoded message does not decode", size);
    if (!inv_eq(m, &m2) || o2 != origin)
        fail("a re-encoded message decodes differently", size);
    if (khala__coherence_encode(&m2, o2, &again) != 0 || again.len != b.len ||
        memcmp(again.buf, b.buf, b.len) != 0)
        fail("encoding is not stable: a second round gives other bytes", size);
}

int fuzz_inval_one(const uint8_t *data, size_t size) {
    khala_inv_t m, untouched;
    uint64_t origin = 0;
    memset(&m, 0xa5, sizeof(m));
    memcpy(&untouched, &m, sizeof(m));
    int rc = khala__coherence_decode(data, size, &m, &origin);
    if (rc != 0) {
        if (rc != -1)
            fail("the decoder returned something else than 0 or -1", size);
        if (memcmp(&m, &untouched, sizeof(m)) != 0)
            fail("a refused message was written", size);
        return 0;
    }
    if (size == 0 || size > KHALA_COH_MSG_MAX)
        fail("a payload of a refused length decodes", size);
    check_fields(&m, data, size);
    check_exact(data, size);
    check_round_trip(&m, origin, size);
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Seeds                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* The packer's sink: out, FUZZ_INVAL_SEED_MAX bytes. */
typedef struct sink {
    uint8_t *p;
    size_t len;
} sink_t;

static int sink_write(void *data, const char *buf, size_t n) {
    sink_t *s = data;
    if (n > FUZZ_INVAL_SEED_MAX - s->len)
        return -1;
    memcpy(s->p + s->len, buf, n);
    s->len += n;
    return 0;
}

/* Bytes as they are, for headers the packer would write otherwise. */
static int raw(msgpack_packer *pk, const void *p, size_t n) {
    return sink_write(pk->data, p, n);
}

static int name(msgpack_packer *pk, const char *s) {
    return msgpack_pack_str_with_body(pk, s, strlen(s));
}

static const uint8_t seed_key[] = {'u', 's', 'e', 'r', 0, ':', 0xff, '4', '2'};
#define ORIGIN 0x0123456789abcdefull

/* An encoder-made seed: seeds 0..8. */
static int seed_encoded(int i, sink_t *s) {
    static uint8_t big[KHALA_KEY_MAX];
    khala_inv_t m = {.by = KHALA_INV_KEY, .type = -1};
    switch (i) {
        case 0: /* a put */
            m.key = "user:42";
            m.klen = 7;
            m.version = 0x1c0ffee00000002aull;
            break;
        case 1: /* a delete, binary key */
            m.key = seed_key;
            m.klen = sizeof(seed_key);
            break;
        case 2: /* the longest key */
            memset(big, 'k', sizeof(big));
            m.key = big;
            m.klen = sizeof(big);
            m.version = 1;
            break;
        case 3:
            m.by = KHALA_INV_PREFIX;
            m.key = "user:";
            m.klen = 5;
            break;
        case 4:
            m.by = KHALA_INV_PREFIX;
            m.key = "u";
            m.klen = 1;
            break;
        case 5:
            m.by = KHALA_INV_TYPE;
            m.type = KHALA_TYPE_MEMORY_ENTITY;
            break;
        case 6:
            m.by = KHALA_INV_TYPE;
            m.type = KHALA_TYPE_COUNT - 1;
            break;
        case 7: /* flush everything */
            m.by = KHALA_INV_ALL;
            m.type = KHALA_INV_ALL_TYPES;
            break;
        default: /* flush one type */
            m.by = KHALA_INV_ALL;
            m.type = KHALA_TYPE_ENTITY_RELATIONSHIP;
            break;
    }
    khala_coh_buf_t b;
    if (khala__coherence_encode(&m, ORIGIN + (uint64_t)i, &b) != 0 || b.len > FUZZ_INVAL_SEED_MAX)
        return -1;
    memcpy(s->p, b.buf, b.len);
    s->len = b.len;
    return 0;
}

#define NSEEDS_ENCODED 9
#define NSEEDS_VALID 12 /* seeds below this one decode; the others are malformed */
#define NSEEDS 28

/* A hand-made seed: seeds NSEEDS_ENCODED..NSEEDS-1. */
static int seed_made(int i, msgpack_packer *pk) {
    static const uint8_t map16_4[] = {0xde, 0x00, 0x04}, map32_3[] = {0xdf, 0, 0, 0, 3};
    static const uint8_t bin32_huge[] = {0xc6, 0xff, 0xff, 0xff, 0xff, 'a', 'b'};
    static uint8_t pad[KHALA_COH_MSG_MAX];
    int rc = 0;
    switch (i) {
        case 9: /* map16, another order, a str key, a uint8 version, an int64 origin */
            rc |= raw(pk, map16_4, sizeof(map16_4));
            rc |= name(pk, "by") | name(pk, "key");
            rc |= name(pk, "k") | name(pk, "user:7");
            rc |= name(pk, "v") | msgpack_pack_fix_uint8(pk, 9);
            rc |= name(pk, "o") | msgpack_pack_fix_int64(pk, 77);
            break;
        case 10: /* fields of a later version, with every kind of scalar value */
            rc |= msgpack_pack_map(pk, 9);
            rc |= name(pk, "x") | msgpack_pack_nil(pk);
            rc |= name(pk, "o") | msgpack_pack_uint64(pk, ORIGIN);
            rc |= name(pk, "y") | msgpack_pack_true(pk);
            rc |= name(pk, "z") | msgpack_pack_int64(pk, -5);
            rc |= name(pk, "by") | name(pk, "all");
            rc |= name(pk, "w") | msgpack_pack_double(pk, 1.5);
            rc |= name(pk, "u") | name(pk, "later");
            rc |= name(pk, "b") | msgpack_pack_bin_with_body(pk, seed_key, sizeof(seed_key));
            rc |= name(pk, "t") | msgpack_pack_fix_uint16(pk, KHALA_TYPE_VERIFICATION);
            break;
        case 11: /* map32, a uint32 origin, an int8 type */
            rc |= raw(pk, map32_3, sizeof(map32_3));
            rc |= name(pk, "o") | msgpack_pack_fix_uint32(pk, 5);
            rc |= name(pk, "t") | msgpack_pack_fix_int8(pk, KHALA_TYPE_SEARCH_INDEX);
            rc |= name(pk, "by") | name(pk, "type");
            break;
        /* Malformed from here on. */
        case 12: /* a trailing nil */
            rc |= msgpack_pack_map(pk, 2);
            rc |= name(pk, "o") | msgpack_pack_uint64(pk, 1);
            rc |= name(pk, "by") | name(pk, "all");
            rc |= msgpack_pack_nil(pk);
            break;
        case 13: /* "o" twice */
            rc |= msgpack_pack_map(pk, 3);
            rc |= name(pk, "o") | msgpack_pack_uint64(pk, 1);
            rc |= name(pk, "by") | name(pk, "all");
            rc |= name(pk, "o") | msgpack_pack_uint64(pk, 2);
            break;
        case 14: /* a key of 0 bytes */
            rc |= msgpack_pack_map(pk, 3);
            rc |= name(pk, "o") | msgpack_pack_uint64(pk, 1);
            rc |= name(pk, "by") | name(pk, "key");
            rc |= name(pk, "k") | msgpack_pack_bin_with_body(pk, "", 0);
            break;
        case 15: /* the first type past the last */
            rc |= msgpack_pack_map(pk, 3);
            rc |= name(pk, "o") | msgpack_pack_uint64(pk, 1);
            rc |= name(pk, "by") | name(pk, "type");
            rc |= name(pk, "t") | msgpack_pack_uint64(pk, KHALA_TYPE_COUNT);
            break;
        case 16: /* an unknown field holding a container */
            rc |= msgpack_pack_map(pk, 3);
            rc |= name(pk, "o") | msgpack_pack_uint64(pk, 1);
            rc |= name(pk, "x") | msgpack_pack_array(pk, 1) | msgpack_pack_nil(pk);
            rc |= name(pk, "by") | name(pk, "all");
            break;
        case 17: /* a version on a prefix */
            rc |= msgpack_pack_map(pk, 4);
            rc |= name(pk, "o") | msgpack_pack_uint64(pk, 1);
            rc |= name(pk, "by") | name(pk, "prefix");
            rc |= name(pk, "k") | msgpack_pack_bin_with_body(pk, "p", 1);
            rc |= name(pk, "v") | msgpack_pack_uint64(pk, 3);
            break;
        case 18: /* no "by" */
            rc |= msgpack_pack_map(pk, 2);
            rc |= name(pk, "o") | msgpack_pack_uint64(pk, 1);
            rc |= name(pk, "k") | msgpack_pack_bin_with_body(pk, "p", 1);
            break;
        case 19: /* a key one byte too long */
            memset(pad, 'k', sizeof(pad));
            rc |= msgpack_pack_map(pk, 3);
            rc |= name(pk, "o") | msgpack_pack_uint64(pk, 1);
            rc |= name(pk, "by") | name(pk, "key");
            rc |= name(pk, "k") | msgpack_pack_bin_with_body(pk, pad, KHALA_KEY_MAX + 1);
            break;
        case 20: /* an unknown kind */
            rc |= msgpack_pack_map(pk, 2);
            rc |= name(pk, "o") | msgpack_pack_uint64(pk, 1);
            rc |= name(pk, "by") | name(pk, "nope");
            break;
        case 21: /* a map of 3 holding 2 */
            rc |= msgpack_pack_map(pk, 3);
            rc |= name(pk, "o") | msgpack_pack_uint64(pk, 1);
            rc |= name(pk, "by") | name(pk, "all");
            break;
        case 22: /* a bin32 whose length runs far past the end */
            rc |= msgpack_pack_map(pk, 3);
            rc |= name(pk, "o") | msgpack_pack_uint64(pk, 1);
            rc |= name(pk, "by") | name(pk, "key");
            rc |= name(pk, "k") | raw(pk, bin32_huge, sizeof(bin32_huge));
            break;
        case 23: /* a negative origin */
            rc |= msgpack_pack_map(pk, 2);
            rc |= name(pk, "o") | msgpack_pack_fix_int8(pk, -1);
            rc |= name(pk, "by") | name(pk, "all");
            break;
        case 24: /* one byte past KHALA_COH_MSG_MAX, otherwise valid */
            memset(pad, 'x', sizeof(pad));
            rc |= msgpack_pack_map(pk, 3);
            rc |= name(pk, "o") | msgpack_pack_uint64(pk, 1);
            rc |= name(pk, "by") | name(pk, "all");
            /* 18 bytes so far with this field's name and bin16 header */
            rc |= name(pk, "pad") | msgpack_pack_bin_with_body(pk, pad, KHALA_COH_MSG_MAX + 1 - 18);
            break;
        case 25: /* an array, not a map */
            rc |= msgpack_pack_array(pk, 2);
            rc |= msgpack_pack_uint64(pk, 1) | name(pk, "all");
            break;
        case 26: /* a key on a type */
            rc |= msgpack_pack_map(pk, 4);
            rc |= name(pk, "o") | msgpack_pack_uint64(pk, 1);
            rc |= name(pk, "by") | name(pk, "type");
            rc |= name(pk, "t") | msgpack_pack_uint64(pk, 1);
            rc |= name(pk, "k") | msgpack_pack_bin_with_body(pk, "p", 1);
            break;
        default: /* 27: "every type" written as -1 (only an absent "t" says that) */
            rc |= msgpack_pack_map(pk, 3);
            rc |= name(pk, "o") | msgpack_pack_uint64(pk, 1);
            rc |= name(pk, "by") | name(pk, "all");
            rc |= name(pk, "t") | msgpack_pack_int64(pk, -1);
            break;
    }
    return rc == 0 ? 0 : -1;
}

int fuzz_inval_seed(int i, uint8_t *out, size_t *len, int *valid) {
    if (i < 0 || i >= NSEEDS)
        return 0;
    sink_t s = {out, 0};
    int rc;
    if (i < NSEEDS_ENCODED) {
        rc = seed_encoded(i, &s);
    } else {
        msgpack_packer pk;
        msgpack_packer_init(&pk, &s, sink_write);
        rc = seed_made(i, &pk);
    }
    *len = s.len;
    *valid = i < NSEEDS_VALID;
    return rc == 0 ? 1 : -1;
}

#ifdef KHALA_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    (void)fuzz_inval_one(data, size);
    return 0;
}
#endif
