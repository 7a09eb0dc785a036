/*
 * The disk tier's on-disk formats: the record that holds one item in the "items" database, and
 * the format record of the "meta" database. Encoding and decoding only, no I/O and no LMDB: the
 * store (daemon/tier_disk_store.c) hands these functions the bytes LMDB gives it, so the format
 * can be tested (tests/test_tier_disk_record.c) and fuzzed apart from a store.
 *
 * Start at khala__disk_rec_decode(); daemon/tier_disk_record.c draws both layouts.
 */
#ifndef KHALA_DAEMON_TIER_DISK_RECORD_H
#define KHALA_DAEMON_TIER_DISK_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"

/** Bytes of a record's header, before the value. */
#define KHALA_DISK_REC_HDR 24u
/** The record format this build writes and reads (the first byte of every record). */
#define KHALA_DISK_REC_FORMAT 1u
/** Size of the "meta" database's format record. */
#define KHALA_DISK_META_SIZE 16u
/** The store format this build writes; a store of a higher format is refused. */
#define KHALA_DISK_STORE_FORMAT 1u

/** One decoded record. A view: value points into the bytes that were decoded. */
typedef struct khala_disk_rec {
    khala_type_t type; /* the item's data type, below KHALA_TYPE_COUNT */
    uint64_t version;  /* the item's version */
    int64_t expire_ms; /* absolute CLOCK_REALTIME time in ms; 0 = never expires */
    const void *value; /* the value's bytes, inside the record; never NULL */
    size_t len;        /* the value's length in bytes, at most UINT32_MAX */
} khala_disk_rec_t;

/**
 * @brief The size of the record that holds a value of @p len bytes.
 * @param[in] len the value's length in bytes.
 * @return KHALA_DISK_REC_HDR + @p len.
 */
size_t khala__disk_rec_size(size_t len);

/**
 * @brief Write a record: header, then the value's bytes.
 * @param[out] rec khala__disk_rec_size(@p len) bytes; no alignment needed (LMDB aligns its
 *             values to 2 bytes only).
 * @param[in] type the data type.
 * @param[in] version the item's version.
 * @param[in] expire_ms absolute CLOCK_REALTIME expiry in ms, 0 for never.
 * @param[in] value the value's bytes; may be NULL when @p len is 0.
 * @param[in] len the value's length.
 * @note Cannot fail. The header's reserved bytes are written as zeros.
 */
void khala__disk_rec_encode(void *rec, khala_type_t type, uint64_t version, int64_t expire_ms,
                            const void *value, size_t len);

/**
 * @brief Check and decode the record in @p size bytes at @p rec.
 * @param[in] rec the record's bytes, as stored; no alignment needed.
 * @param[in] size their number.
 * @param[out] out the decoded record, a view into @p rec; written only on success.
 * @param[out] err a message saying what is wrong ("truncated: 10 bytes, the header alone is
 *             24"); may be NULL.
 * @param[in] errlen size of @p err; the message is truncated to fit.
 * @return 0;
 *         KHALA_ECORRUPT when the record is shorter than its header, has another format byte,
 *         names a type outside khala_type_t, holds a value over UINT32_MAX bytes, or carries a
 *         checksum its bytes do not match (every record written by this build carries one).
 * @note A view: @p out->value is valid as long as the bytes at @p rec are (for a record read
 *       from LMDB, until its transaction ends).
 */
int khala__disk_rec_decode(const void *rec, size_t size, khala_disk_rec_t *out, char *err,
                           size_t errlen);

/**
 * @brief Write the "meta" database's format record: a magic number, then the store format
 *        (KHALA_DISK_STORE_FORMAT).
 * @param[out] meta KHALA_DISK_META_SIZE bytes.
 */
void khala__disk_meta_encode(uint8_t meta[KHALA_DISK_META_SIZE]);

/**
 * @brief Check a store's format record.
 * @param[in] meta the record's bytes, as stored.
 * @param[in] size their number.
 * @param[out] format the store format it names (written whenever @p size covers it, so that a
 *             caller can report a newer format); may be NULL.
 * @return 0 when the record is ours and this build reads its format;
 *         KHALA_ECORRUPT when it is not a khala format record (short, or a wrong magic);
 *         KHALA_EVERSION when it names a store format above KHALA_DISK_STORE_FORMAT.
 */
int khala__disk_meta_check(const void *meta, size_t size, uint32_t *format);

#endif /* KHALA_DAEMON_TIER_DISK_RECORD_H */
