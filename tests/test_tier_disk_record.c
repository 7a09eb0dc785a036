/*
 * The disk tier's record formats (daemon/tier_disk_record.c): an item record and the store's
 * format record round-trip at any alignment, and a truncated or corrupt record is refused with
 * KHALA_ECORRUPT and a message saying what is wrong, both by the decoder and by a store that
 * holds one (its open and its get name the key and the cause).
 */
#include <criterion/criterion.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"
#include "khala/error.h"
#include "tier_disk.h"
#include "tier_disk_record.h"

static char g_dir[64];   /* the test's temporary directory */
static char g_store[96]; /* a store inside it */
static char g_err[256];

static void setup(void) {
    strcpy(g_dir, "/tmp/khala-rec-XXXXXX");
    cr_assert_not_null(mkdtemp(g_dir));
    snprintf(g_store, sizeof(g_store), "%s/store", g_dir);
    g_err[0] = '\0';
}

static void teardown(void) {
    harness_rmtree(g_dir);
}

TestSuite(tier_disk_record, .init = setup, .fini = teardown, .timeout = 60);

/* A record for value "hello" in a buffer at offset off (records are 2-byte aligned in LMDB). */
static uint8_t *make(uint8_t *buf, size_t off, const char *value, int64_t expire_ms) {
    uint8_t *r = buf + off;
    khala__disk_rec_encode(r, KHALA_TYPE_MEMORY_ENTITY, 0x0102030405060708ull, expire_ms, value,
                           strlen(value));
    return r;
}

Test(tier_disk_record, round_trip_keeps_every_field_at_any_alignment) {
    for (size_t off = 0; off < 8; off++) {
        uint8_t buf[64];
        uint8_t *r = make(buf, off, "hello", -5);
        khala_disk_rec_t d;
        cr_assert_eq(khala__disk_rec_size(5), KHALA_DISK_REC_HDR + 5);
        cr_assert_eq(khala__disk_rec_decode(r, khala__disk_rec_size(5), &d, g_err, sizeof(g_err)),
                     0, "%s", g_err);
        cr_assert_eq(d.type, KHALA_TYPE_MEMORY_ENTITY);
        cr_assert_eq(d.version, 0x0102030405060708ull);
        cr_assert_eq(d.expire_ms, -5);
        cr_assert_eq(d.len, 5);
        cr_assert_eq(memcmp(d.value, "hello", 5), 0);
        cr_assert_eq((const uint8_t *)d.value, r + KHALA_DISK_REC_HDR, "a view into the record");
    }
}

Test(tier_disk_record, empty_value_and_every_type_round_trip) {
    for (int t = 0; t < KHALA_TYPE_COUNT; t++) {
        uint8_t r[KHALA_DISK_REC_HDR];
        khala_disk_rec_t d;
        khala__disk_rec_encode(r, (khala_type_t)t, 7, 0, NULL, 0);
        cr_assert_eq(khala__disk_rec_decode(r, sizeof(r), &d, NULL, 0), 0);
        cr_assert_eq((int)d.type, t);
        cr_assert_eq(d.len, 0);
        cr_assert_eq(d.expire_ms, 0);
        cr_assert_eq(d.version, 7);
    }
}

Test(tier_disk_record, truncated_record_is_ecorrupt_and_says_so) {
    uint8_t buf[64];
    uint8_t *r = make(buf, 0, "", 0);
    for (size_t size = 0; size < KHALA_DISK_REC_HDR; size++) {
        khala_disk_rec_t d = {.version = 99};
        g_err[0] = '\0';
        cr_assert_eq(khala__disk_rec_decode(r, size, &d, g_err, sizeof(g_err)), KHALA_ECORRUPT,
                     "size %zu", size);
        cr_assert(strstr(g_err, "truncated"), "%s", g_err);
        cr_assert_eq(d.version, 99, "out is left as it was");
    }
}

Test(tier_disk_record, other_format_byte_is_ecorrupt) {
    uint8_t buf[64];
    uint8_t *r = make(buf, 0, "v", 0);
    khala_disk_rec_t d;
    r[0] = KHALA_DISK_REC_FORMAT + 1;
    cr_assert_eq(khala__disk_rec_decode(r, khala__disk_rec_size(1), &d, g_err, sizeof(g_err)),
                 KHALA_ECORRUPT);
    cr_assert(strstr(g_err, "record format 2"), "%s", g_err);
    r[0] = 0;
    cr_assert_eq(khala__disk_rec_decode(r, khala__disk_rec_size(1), &d, NULL, 0), KHALA_ECORRUPT);
}

Test(tier_disk_record, unknown_type_is_ecorrupt) {
    uint8_t buf[64];
    uint8_t *r = make(buf, 0, "v", 0);
    khala_disk_rec_t d;
    r[1] = KHALA_TYPE_COUNT;
    cr_assert_eq(khala__disk_rec_decode(r, khala__disk_rec_size(1), &d, g_err, sizeof(g_err)),
                 KHALA_ECORRUPT);
    cr_assert(strstr(g_err, "type"), "%s", g_err);
    r[1] = 0xff;
    cr_assert_eq(khala__disk_rec_decode(r, khala__disk_rec_size(1), &d, NULL, 0), KHALA_ECORRUPT);
}

Test(tier_disk_record, reserved_bytes_are_ignored_on_read) {
    uint8_t buf[64];
    uint8_t *r = make(buf, 0, "v", 0);
    khala_disk_rec_t d;
    r[2] |= 0xfe; /* the flags a later format may add */
    r[3] = 0xab;
    cr_assert_eq(khala__disk_rec_decode(r, khala__disk_rec_size(1), &d, NULL, 0), 0);
    cr_assert_eq(d.version, 0x0102030405060708ull);
}

/* LMDB has no checksums: a flipped byte in a value was served as the value (chaos_check found
 * it with bytes flipped in the disk store's pages). Every record now carries XXH32 of its
 * version, expiry and value; one that does not match is refused. */
Test(tier_disk_record, a_damaged_record_fails_its_checksum) {
    uint8_t buf[64];
    khala_disk_rec_t d;
    size_t size = khala__disk_rec_size(5);
    for (size_t at = 8; at < size; at++) {
        uint8_t *r = make(buf, 1, "hello", 7);
        r[at] ^= 0x10;
        cr_assert_eq(khala__disk_rec_decode(r, size, &d, g_err, sizeof(g_err)), KHALA_ECORRUPT,
                     "a flip at byte %zu was not seen", at);
        cr_assert(strstr(g_err, "checksum"), "%s", g_err);
    }
    uint8_t *r = make(buf, 1, "hello", 7);
    r[1] = KHALA_TYPE_EMBEDDING; /* the type seeds the sum */
    cr_assert_eq(khala__disk_rec_decode(r, size, &d, NULL, 0), KHALA_ECORRUPT);
}

/* A record written before the checksum (bytes 2..7 zero) is still read. */
Test(tier_disk_record, a_record_without_a_checksum_is_read_unchecked) {
    uint8_t buf[64];
    khala_disk_rec_t d;
    uint8_t *r = make(buf, 0, "hello", 7);
    memset(r + 2, 0, 6);
    r[KHALA_DISK_REC_HDR] = 'j';
    cr_assert_eq(khala__disk_rec_decode(r, khala__disk_rec_size(5), &d, g_err, sizeof(g_err)), 0,
                 "%s", g_err);
    cr_assert_eq(memcmp(d.value, "jello", 5), 0);
}

Test(tier_disk_record, format_record_round_trips) {
    uint8_t m[KHALA_DISK_META_SIZE];
    uint32_t f = 0;
    khala__disk_meta_encode(m);
    cr_assert_eq(memcmp(m, "KHALADSK", 8), 0);
    cr_assert_eq(khala__disk_meta_check(m, sizeof(m), &f), 0);
    cr_assert_eq(f, KHALA_DISK_STORE_FORMAT);
    cr_assert_eq(khala__disk_meta_check(m, 12, NULL), 0, "the reserved word is not needed");
}

Test(tier_disk_record, short_or_foreign_format_record_is_ecorrupt) {
    uint8_t m[KHALA_DISK_META_SIZE];
    khala__disk_meta_encode(m);
    cr_assert_eq(khala__disk_meta_check(m, 11, NULL), KHALA_ECORRUPT);
    cr_assert_eq(khala__disk_meta_check(m, 0, NULL), KHALA_ECORRUPT);
    m[0] = 'X';
    cr_assert_eq(khala__disk_meta_check(m, sizeof(m), NULL), KHALA_ECORRUPT);
}

Test(tier_disk_record, newer_store_format_is_eversion_and_named) {
    uint8_t m[KHALA_DISK_META_SIZE];
    uint32_t f = KHALA_DISK_STORE_FORMAT + 1, got = 0;
    khala__disk_meta_encode(m);
    memcpy(m + 8, &f, sizeof(f));
    cr_assert_eq(khala__disk_meta_check(m, sizeof(m), &got), KHALA_EVERSION);
    cr_assert_eq(got, f);
}

/* A store holding key "k" with a value, closed again. */
static void store_with_one_key(void) {
    khala_tier_disk_opts_t o = {.path = g_store,
                                .level = KHALA_LEVEL_L2,
                                .max_items = 100,
                                .max_bytes = 1 << 20,
                                .persistent = true};
    khala_tier_t *t = NULL;
    cr_assert_eq(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), 0, "%s", g_err);
    khala_tier_value_t v = {.data = "value", .len = 5, .version = 1};
    cr_assert_eq(t->ops->put(t, "k", 1, &v), 0, "%s", t->err);
    t->ops->close(t);
}

/* Overwrite the record of "k" in the store's "items" database with size bytes of rec. */
static void overwrite_record(const void *rec, size_t size) {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 4), 0);
    cr_assert_eq(mdb_env_open(env, g_store, 0, 0600), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "items", 0, &dbi), 0);
    MDB_val k = {1, "k"}, v = {size, (void *)rec};
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

Test(tier_disk_record, store_with_a_truncated_record_is_refused_at_open_naming_key_and_cause) {
    store_with_one_key();
    overwrite_record("0123456789", 10);
    khala_tier_disk_opts_t o = {.path = g_store,
                                .level = KHALA_LEVEL_L2,
                                .max_items = 100,
                                .max_bytes = 1 << 20,
                                .persistent = true};
    khala_tier_t *t = NULL;
    cr_assert_eq(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), KHALA_ECORRUPT);
    cr_assert_null(t);
    cr_assert(strstr(g_err, g_store) && strstr(g_err, "'k'") && strstr(g_err, "truncated"), "%s",
              g_err);
}

Test(tier_disk_record, store_with_a_foreign_format_record_is_refused_at_open) {
    uint8_t r[KHALA_DISK_REC_HDR + 1];
    store_with_one_key();
    khala__disk_rec_encode(r, KHALA_TYPE_CONSOLIDATION, 1, 0, "v", 1);
    r[0] = 9;
    overwrite_record(r, sizeof(r));
    khala_tier_disk_opts_t o = {.path = g_store,
                                .level = KHALA_LEVEL_L2,
                                .max_items = 100,
                                .max_bytes = 1 << 20,
                                .persistent = true};
    khala_tier_t *t = NULL;
    cr_assert_eq(khala__tier_disk_open(&o, &t, g_err, sizeof(g_err)), KHALA_ECORRUPT);
    cr_assert(strstr(g_err, "record format 9"), "%s", g_err);
}
