/*
 * Fuzz target: the decoder of values read back from Redis (khala__tier_redis_value_decode,
 * daemon/tier_redis.c). The Redis server is shared: another program, an older khalad or an
 * operator can leave any bytes under a khala key, and those must read as a miss, never as a
 * crash, a read outside the reply or a wrong value.
 *
 * Beyond not crashing, the target checks:
 *   1. The decoder returns 0, -EBADMSG or -ENOMEM, and a refused value leaves the output
 *      untouched.
 *   2. It accepts exactly the documented shape, checked here by an independent reading of it:
 *      0x93 0xcf <version, 8 bytes BE> <type below KHALA_TYPE_COUNT> <c4 n8 | c5 n16 | c6 n32>
 *      <exactly n bytes>, nothing more. Anything else is "not ours".
 *   3. A decoded value holds those fields: the version of bytes 2..9, the type of byte 10, the
 *      n trailing bytes as a copy (NULL when n is 0), and a ttl of 0.
 *   4. Round trip: the module's encoder accepts the decoded value; its encoding has the
 *      version at bytes 2..9 (the put script compares them there without decoding msgpack), is
 *      no longer than the input (the encoder writes the narrowest bin header), is the input
 *      itself when the input's bin header was the narrowest, and decodes to the same value.
 * A violation aborts, which libFuzzer reports like a crash.
 *
 * Built two ways: with KHALA_FUZZ (clang, -fsanitize=fuzzer,address) as a libFuzzer binary,
 * and always as a plain program (fuzz_rvalue_replay.c) that runs the seeds and tens of
 * thousands of deterministic mutations of them, so that the target cannot rot.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "fuzz_rvalue.h"
#include "khala/cache.h"
#include "tier_redis.h"

static void fail(const char *what, size_t size) __attribute__((noreturn));

static void fail(const char *what, size_t size) {
    fprintf(stderr, "fuzz_rvalue: %s (input of %zu bytes)\n", what, size);
    abort();
}

static uint64_t be(const uint8_t *p, unsigned n) {
    uint64_t x = 0;
    for (unsigned i = 0; i < n; i++)
        x = x << 8 | p[i];
    return x;
}

/* Step 2: the shape, read independently of the decoder. 1 if ours; then *hdr is the width of
 * the bin length (1, 2 or 4) and *n the value's length. */
static int shape_ok(const uint8_t *p, size_t size, unsigned *hdr, size_t *n) {
    if (size < 12 || p[0] != 0x93 || p[1] != 0xcf || p[10] >= KHALA_TYPE_COUNT)
        return 0;
    if (p[11] < 0xc4 || p[11] > 0xc6)
        return 0;
    *hdr = 1u << (p[11] - 0xc4);
    if (size < 12 + *hdr)
        return 0;
    uint64_t len = be(p + 12, *hdr);
    if (size - 12 - *hdr != len)
        return 0;
    *n = (size_t)len;
    return 1;
}

/* The narrowest bin header for n bytes, as msgpack writes it. */
static unsigned narrowest(size_t n) {
    return n < 0x100 ? 1 : n < 0x10000 ? 2 : 4;
}

static int value_eq(const khala_tier_value_t *a, const khala_tier_value_t *b) {
    return a->version == b->version && a->type == b->type && a->len == b->len &&
           a->ttl_ms == b->ttl_ms && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

/* Step 4. */
static void check_round_trip(const khala_tier_value_t *v, const uint8_t *data, size_t size,
                             unsigned hdr) {
    msgpack_sbuffer sb;
    int rc = khala__tier_redis_value_encode(v, &sb);
    if (rc == -ENOMEM)
        return;
    if (rc != 0)
        fail("a decoded value does not encode", size);
    const uint8_t *e = (const uint8_t *)sb.data;
    if (sb.size < 12 || be(e + 2, 8) != v->version)
        fail("an encoded value does not hold its version at bytes 2..9", size);
    if (sb.size > size)
        fail("an encoded value is longer than the input it came from", size);
    if (hdr == narrowest(v->len) && (sb.size != size || memcmp(e, data, size) != 0))
        fail("an input in the encoder's own form re-encodes to other bytes", size);
    khala_tier_value_t again;
    rc = khala__tier_redis_value_decode(sb.data, sb.size, &again);
    if (rc == 0) {
        if (!value_eq(v, &again))
            fail("a re-encoded value decodes differently", size);
        khala__tier_value_free(&again);
    } else if (rc != -ENOMEM) {
        fail("a re-encoded value does not decode", size);
    }
    msgpack_sbuffer_destroy(&sb);
}

int fuzz_rvalue_one(const uint8_t *data, size_t size) {
    khala_tier_value_t v, untouched;
    memset(&v, 0xa5, sizeof(v));
    memcpy(&untouched, &v, sizeof(v));
    unsigned hdr = 0;
    size_t n = 0;
    int ours = shape_ok(data, size, &hdr, &n);
    int rc = khala__tier_redis_value_decode((const char *)data, size, &v);
    if (rc != 0) {
        if (rc != -EBADMSG && rc != -ENOMEM)
            fail("the decoder returned something else than 0, -EBADMSG or -ENOMEM", size);
        if (memcmp(&v, &untouched, sizeof(v)) != 0)
            fail("a refused value was written", size);
        if (rc == -EBADMSG && ours)
            fail("a value of our shape is refused", size);
        return 0;
    }
    if (!ours)
        fail("bytes that are not of our shape decode", size);
    /* Step 3. */
    if ((unsigned)v.type >= KHALA_TYPE_COUNT || v.type != (khala_type_t)data[10])
        fail("a decoded type is not byte 10", size);
    if (v.version != be(data + 2, 8))
        fail("a decoded version is not bytes 2..9", size);
    if (v.ttl_ms != 0)
        fail("a decoded value has a ttl", size);
    if (v.len != n || (n == 0) != (v.data == NULL) ||
        (n && memcmp(v.data, data + size - n, n) != 0))
        fail("decoded bytes are not the input's last n bytes", size);
    if (n && (const uint8_t *)v.data >= data && (const uint8_t *)v.data < data + size)
        fail("a decoded value points into the input instead of owning a copy", size);
    check_round_trip(&v, data, size, hdr);
    khala__tier_value_free(&v);
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Seeds                                                                                       */
/* ------------------------------------------------------------------------------------------ */

#define NSEEDS_ENCODED 5
#define NSEEDS_VALID 8 /* seeds below this one decode; the others are not ours */
#define NSEEDS 20

static const uint8_t seed_json[] = "{\"name\":\"ada\",\"born\":1815}";

/* An encoder-made seed: seeds 0..NSEEDS_ENCODED-1. */
static int seed_encoded(int i, uint8_t *out, size_t *len) {
    static uint8_t body[300];
    khala_tier_value_t v = {.type = KHALA_TYPE_MEMORY_ENTITY};
    for (size_t j = 0; j < sizeof(body); j++)
        body[j] = (uint8_t)(j * 7);
    switch (i) {
        case 0: /* empty, version 0 */
            break;
        case 1:
            v.data = (void *)seed_json;
            v.len = sizeof(seed_json) - 1;
            v.version = 42;
            v.type = KHALA_TYPE_SEARCH_RESULT;
            break;
        case 2: /* the longest bin8 */
            v.data = body;
            v.len = 255;
            v.version = 0x1c0ffee00000002aull;
            v.type = KHALA_TYPE_EMBEDDING;
            break;
        case 3: /* the shortest bin16 */
            v.data = body;
            v.len = 256;
            v.version = UINT64_MAX;
            v.type = KHALA_TYPE_COUNT - 1;
            break;
        default:
            v.data = body;
            v.len = 1;
            v.version = 1;
            v.type = KHALA_TYPE_AGENT_RESPONSE;
            break;
    }
    msgpack_sbuffer sb;
    if (khala__tier_redis_value_encode(&v, &sb) != 0)
        return -1;
    int rc = sb.size <= FUZZ_RVALUE_SEED_MAX ? 0 : -1;
    if (rc == 0) {
        memcpy(out, sb.data, sb.size);
        *len = sb.size;
    }
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

/* A hand-made seed: seeds NSEEDS_ENCODED..NSEEDS-1, as bytes. */
static int seed_made(int i, uint8_t *out, size_t *len) {
    /* The fixed part of a value: array of 3, uint64 version 0x0102030405060708, type 5. */
    static const uint8_t head[] = {0x93, 0xcf, 1, 2, 3, 4, 5, 6, 7, 8, 5};
    const uint8_t *tail;
    size_t tlen;
    uint8_t h[sizeof(head)];
    memcpy(h, head, sizeof(h));
    switch (i) {
        case 5: /* bin16 header for 5 bytes */
            tail = (const uint8_t *)"\xc5\x00\x05hello";
            tlen = 8;
            break;
        case 6: /* bin32 header for 0 bytes */
            tail = (const uint8_t *)"\xc6\x00\x00\x00\x00";
            tlen = 5;
            break;
        case 7: /* bin32 header for 3 bytes */
            tail = (const uint8_t *)"\xc6\x00\x00\x00\x03xyz";
            tlen = 8;
            break;
        /* Not ours from here on. */
        case 8: /* type 8 */
            h[10] = KHALA_TYPE_COUNT;
            tail = (const uint8_t *)"\xc4\x01x";
            tlen = 3;
            break;
        case 9: /* an array of 2 */
            h[0] = 0x92;
            tail = (const uint8_t *)"\xc4\x01x";
            tlen = 3;
            break;
        case 10: /* a uint32 version: a valid array of 3, but not our layout */
            h[1] = 0xce;
            tail = (const uint8_t *)"\xc4\x01x";
            tlen = 3;
            break;
        case 11: /* one byte short */
            tail = (const uint8_t *)"\xc4\x03xy";
            tlen = 4;
            break;
        case 12: /* one byte too many */
            tail = (const uint8_t *)"\xc4\x01xy";
            tlen = 4;
            break;
        case 13: /* a str, not a bin */
            tail = (const uint8_t *)"\xa1x";
            tlen = 2;
            break;
        case 14: /* the bin header cut short */
            tail = (const uint8_t *)"\xc5\x00";
            tlen = 2;
            break;
        case 15: /* a bin32 length far past the end */
            tail = (const uint8_t *)"\xc6\xff\xff\xff\xffxy";
            tlen = 7;
            break;
        case 16: /* nothing after the type */
            tail = NULL;
            tlen = 0;
            break;
        case 17: /* the bin header and no length */
            tail = (const uint8_t *)"\xc4";
            tlen = 1;
            break;
        case 18: /* another program's JSON */
            memcpy(out, seed_json, sizeof(seed_json) - 1);
            *len = sizeof(seed_json) - 1;
            return 0;
        default: /* 19: nothing at all */
            *len = 0;
            return 0;
    }
    memcpy(out, h, sizeof(h));
    if (tlen)
        memcpy(out + sizeof(h), tail, tlen);
    *len = sizeof(h) + tlen;
    return 0;
}

int fuzz_rvalue_seed(int i, uint8_t *out, size_t *len, int *valid) {
    if (i < 0 || i >= NSEEDS)
        return 0;
    int rc = i < NSEEDS_ENCODED ? seed_encoded(i, out, len) : seed_made(i, out, len);
    *valid = i < NSEEDS_VALID;
    return rc == 0 ? 1 : -1;
}

#ifdef KHALA_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    (void)fuzz_rvalue_one(data, size);
    return 0;
}
#endif
