/*
 * The disk tier's on-disk formats (tier_disk_record.h): the item record and the store's format
 * record. Pure functions over bytes; the store (daemon/tier_disk_store.c) does the I/O.
 *
 * THE ITEM RECORD ("items" database, key -> record), in host byte order: an LMDB file is not
 * portable across architectures anyway.
 *
 *     0        1      2       3      4          8               16               24
 *     +--------+------+-------+------+----------+---------------+----------------+-------- - -
 *     | format | type | flags | zero | sum (u32)| version (u64) | expire_ms (i64)| value
 *     +--------+------+-------+------+----------+---------------+----------------+-------- - -
 *
 *   format is KHALA_DISK_REC_FORMAT; a record of another format is corrupt (there has been one
 *   format so far; a second one would be read here beside the first). expire_ms is an absolute
 *   CLOCK_REALTIME time in ms (0 = never), so that a TTL survives a restart (the monotonic
 *   clock does not). Bytes 2..7 were reserved (zero, not checked on read) so that a later
 *   format could use them for flags an older reader ignores; they now hold:
 *     flags  bit 0 (REC_FLAG_SUM): sum holds XXH32 of bytes 8..end (version, expiry, value)
 *            seeded with the type byte. Set on every record written since; a record without
 *            it (written before) is read unchecked. A sum that does not match is ECORRUPT:
 *            LMDB has no checksums, and a flipped byte in a value was served as the value
 *            (found by tests/chaos/chaos_check.c). The other bits and byte 3 stay reserved.
 *
 * THE FORMAT RECORD ("meta" database, "format" -> record):
 *
 *     0                    8                 12            16
 *     +--------------------+-----------------+-------------+
 *     | magic "KHALADSK"   | store format u32| reserved    |
 *     +--------------------+-----------------+-------------+
 *
 *   A store whose format is above KHALA_DISK_STORE_FORMAT was written by a newer khalad whose
 *   records this one would misread, and is refused. A reader accepts a record of 12 bytes or
 *   more (the reserved word is not needed to read it).
 *
 * Records are only 2-byte aligned in LMDB's pages, so every multi-byte field is read and
 * written with memcpy, never through a cast pointer.
 *
 * Rejected: a self-describing encoding (msgpack) for the record: the header is read on every
 * put (the version rule) and every get, and a fixed layout is read with three loads.
 */
#include "tier_disk_record.h"

#include <string.h>
#include <xxhash.h>

#include "errbuf.h"
#include "khala/error.h"

/* Offsets in the item record; see the layout above. */
#define REC_OFF_FORMAT 0
#define REC_OFF_TYPE 1
#define REC_OFF_FLAGS 2
#define REC_OFF_SUM 4
/* flags: the record carries its checksum. */
#define REC_FLAG_SUM 0x01u
#define REC_OFF_VERSION 8
#define REC_OFF_EXPIRE 16

/* The format record: the magic, and the offset of the store format after it. */
#define META_MAGIC "KHALADSK"
#define META_MAGIC_LEN 8u
#define META_OFF_FORMAT 8u
#define META_READ_MIN 12u

_Static_assert(REC_OFF_EXPIRE + sizeof(int64_t) == KHALA_DISK_REC_HDR, "record header size");
_Static_assert(META_OFF_FORMAT + 2 * sizeof(uint32_t) == KHALA_DISK_META_SIZE, "meta size");

/* The checksum of a record of size bytes (at least the header): see flags above. */
static uint32_t rec_sum(const uint8_t *r, size_t size) {
    return XXH32(r + REC_OFF_VERSION, size - REC_OFF_VERSION, r[REC_OFF_TYPE]);
}

size_t khala__disk_rec_size(size_t len) {
    return KHALA_DISK_REC_HDR + len;
}

void khala__disk_rec_encode(void *rec, khala_type_t type, uint64_t version, int64_t expire_ms,
                            const void *value, size_t len) {
    uint8_t *r = rec;
    memset(r, 0, KHALA_DISK_REC_HDR);
    r[REC_OFF_FORMAT] = KHALA_DISK_REC_FORMAT;
    r[REC_OFF_TYPE] = (uint8_t)type;
    memcpy(r + REC_OFF_VERSION, &version, sizeof(version));
    memcpy(r + REC_OFF_EXPIRE, &expire_ms, sizeof(expire_ms));
    if (len)
        memcpy(r + KHALA_DISK_REC_HDR, value, len);
    r[REC_OFF_FLAGS] = REC_FLAG_SUM;
    uint32_t sum = rec_sum(r, KHALA_DISK_REC_HDR + len);
    memcpy(r + REC_OFF_SUM, &sum, sizeof(sum));
}

int khala__disk_rec_decode(const void *rec, size_t size, khala_disk_rec_t *out, char *err,
                           size_t errlen) {
    const uint8_t *r = rec;
    if (size < KHALA_DISK_REC_HDR)
        return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                             "truncated: %zu bytes, the header alone is %u", size,
                             KHALA_DISK_REC_HDR);
    if (r[REC_OFF_FORMAT] != KHALA_DISK_REC_FORMAT)
        return khala__errbuf(err, errlen, KHALA_ECORRUPT, "record format %u, this build reads %u",
                             r[REC_OFF_FORMAT], KHALA_DISK_REC_FORMAT);
    if (r[REC_OFF_TYPE] >= KHALA_TYPE_COUNT)
        return khala__errbuf(err, errlen, KHALA_ECORRUPT, "type %u is not a data type (max %d)",
                             r[REC_OFF_TYPE], KHALA_TYPE_COUNT - 1);
    if (size - KHALA_DISK_REC_HDR > UINT32_MAX)
        return khala__errbuf(err, errlen, KHALA_ECORRUPT, "value of %zu bytes is over %u",
                             size - KHALA_DISK_REC_HDR, UINT32_MAX);
    if (r[REC_OFF_FLAGS] & REC_FLAG_SUM) {
        uint32_t want;
        memcpy(&want, r + REC_OFF_SUM, sizeof(want));
        if (rec_sum(r, size) != want)
            return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                                 "checksum mismatch: the record is damaged");
    }
    khala_disk_rec_t d;
    d.type = (khala_type_t)r[REC_OFF_TYPE];
    memcpy(&d.version, r + REC_OFF_VERSION, sizeof(d.version));
    memcpy(&d.expire_ms, r + REC_OFF_EXPIRE, sizeof(d.expire_ms));
    d.value = r + KHALA_DISK_REC_HDR;
    d.len = size - KHALA_DISK_REC_HDR;
    *out = d;
    return 0;
}

void khala__disk_meta_encode(uint8_t meta[KHALA_DISK_META_SIZE]) {
    uint32_t f = KHALA_DISK_STORE_FORMAT;
    memset(meta, 0, KHALA_DISK_META_SIZE);
    memcpy(meta, META_MAGIC, META_MAGIC_LEN);
    memcpy(meta + META_OFF_FORMAT, &f, sizeof(f));
}

int khala__disk_meta_check(const void *meta, size_t size, uint32_t *format) {
    uint32_t f = 0;
    if (size < META_READ_MIN || memcmp(meta, META_MAGIC, META_MAGIC_LEN) != 0)
        return KHALA_ECORRUPT;
    memcpy(&f, (const uint8_t *)meta + META_OFF_FORMAT, sizeof(f));
    if (format)
        *format = f;
    return f > KHALA_DISK_STORE_FORMAT ? KHALA_EVERSION : 0;
}
