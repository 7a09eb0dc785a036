/*
 * Encryption at rest: the key ring read from [crypto] key_file and the authenticated envelope a
 * value of an encrypted type ([type.<name>] encrypt = true) wears below L1 (L2, L3 and the
 * write journal). L1 stays in the clear: it is memory shared with the workers, protected by the
 * segment's file modes and group (docs/security.md, "Encryption at rest").
 *
 * The envelope (libsodium's XChaCha20-Poly1305 IETF AEAD, a random 24-byte nonce per value):
 *
 *     | 0xC1 'K' 'C' 'E' | u32 key id (big-endian) | nonce[24] | ciphertext (vlen) | tag[16] |
 *
 * The associated data are the 8-byte header (magic and key id), the item's type (u32,
 * big-endian) and the cache key, so that a value cannot be moved to another key or type, nor
 * claim another key id. 0xC1 is a byte msgpack never uses, so no msgpack value looks sealed.
 *
 * The key file holds one key a line, `<id> <64 hex digits> [current]` (id 1..4294967295),
 * blank lines and `#` comments. New values use the key marked `current`, else the last one;
 * values sealed with any key in the file still open, so keys rotate without a flush (add a
 * key, then restart khalad or send it SIGHUP). The file must be a regular file owned by khalad's effective user with
 * no group or other permission bits (0600 or 0400); anything else is refused with a message
 * naming the file and the problem.
 *
 * Start at khala__crypt_load(), khala__crypt_seal() and khala__crypt_unseal(). The tier
 * wrapper that applies them at the store/tier boundary is daemon/tier_crypt.h. Called from
 * khalad's loop thread only (the counters are plain).
 */
#ifndef KHALA_DAEMON_CRYPT_H
#define KHALA_DAEMON_CRYPT_H

#include <stddef.h>
#include <stdint.h>

/** Bytes a sealed value has beyond its plaintext: header 8, nonce 24, tag 16. */
#define KHALA_CRYPT_OVERHEAD 48u
/** Most keys a key file may hold (a rotation adds one; old ones are removed by hand). */
#define KHALA_CRYPT_KEYS_MAX 256
/** Largest key file, bytes: 256 lines of about 80 bytes, and room for comments. */
#define KHALA_CRYPT_FILE_MAX (64u * 1024u)

typedef struct khala_crypt khala_crypt_t;

/** Counters since the key ring was loaded. */
typedef struct khala_crypt_stats {
    uint64_t sealed;        /**< values encrypted */
    uint64_t opened;        /**< values decrypted and authenticated */
    uint64_t auth_failures; /**< values refused: tag failed, unknown key id, bad envelope, or
                                 a value of an encrypted type stored in the clear */
    uint64_t unknown_key;   /**< of auth_failures: the key id is not in the key file */
} khala_crypt_stats_t;

/**
 * @brief Read and check the key file, and make the key ring.
 * @param[in] path the key file ([crypto] key_file).
 * @param[in] types bit (1u << type id) for each type whose values are sealed.
 * @param[out] out the key ring; close with khala__crypt_close().
 * @param[out] err message naming the file and the problem ("mode 0644 lets group or others
 *             read it: chmod 600 it"); may be NULL.
 * @param[in] errlen size of @p err.
 * @return 0; -errno when the file cannot be opened or read; KHALA_EDENIED when it is not a
 *         regular file, is owned by another user or has group or other permission bits;
 *         KHALA_ECONFIG for its contents (syntax, a bad or duplicate id, no key, several
 *         `current` markers, too many keys, too large); -ENOMEM; KHALA_ETIER when libsodium
 *         cannot start.
 * @note Key bytes are kept in locked memory when the system allows it and zeroed on close.
 */
int khala__crypt_load(const char *path, uint32_t types, khala_crypt_t **out, char *err,
                      size_t errlen);

/**
 * @brief Read the key file again (khalad's SIGHUP), with the same checks as
 *        khala__crypt_load(), and take its keys when it passes: the current key for new values
 *        changes, values sealed with any key still in the file keep opening. The counters and
 *        the encrypted types stay.
 * @param[in,out] c the key ring.
 * @param[in] path the key file.
 * @param[out] err the message naming the file and the problem; may be NULL.
 * @param[in] errlen size of @p err.
 * @return 0; any code of khala__crypt_load(): then @p c is unchanged.
 */
int khala__crypt_reload(khala_crypt_t *c, const char *path, char *err, size_t errlen);

/** @brief Zero and free the key ring. @param[in] c the key ring; NULL is a no-op. */
void khala__crypt_close(khala_crypt_t *c);

/** @brief Whether values of @p type are sealed. @param[in] c the key ring or NULL (none). */
int khala__crypt_wants(const khala_crypt_t *c, int type);

/** @brief The id new values are sealed with. @param[in] c the key ring. */
uint32_t khala__crypt_current_id(const khala_crypt_t *c);

/** @brief How many keys the ring holds. @param[in] c the key ring. */
size_t khala__crypt_nkeys(const khala_crypt_t *c);

/**
 * @brief Whether @p data has the envelope's magic and room for its header, nonce and tag.
 * @param[in] data the bytes. @param[in] len their length.
 * @return 1 or 0.
 */
int khala__crypt_is_sealed(const void *data, size_t len);

/**
 * @brief Seal a value with the current key.
 * @param[in,out] c the key ring (counts).
 * @param[in] key the cache key. @param[in] klen its bytes.
 * @param[in] type the item's type.
 * @param[in] val the plaintext. @param[in] vlen its bytes.
 * @param[out] out the envelope (malloc'd, vlen + KHALA_CRYPT_OVERHEAD bytes; free()).
 * @param[out] outlen its length.
 * @return 0; -ENOMEM (nothing allocated); -EOVERFLOW when vlen + the overhead overflows.
 */
int khala__crypt_seal(khala_crypt_t *c, const void *key, size_t klen, int type, const void *val,
                      size_t vlen, void **out, size_t *outlen);

/**
 * @brief Authenticate and open an envelope made by khala__crypt_seal() for this key and type.
 * @param[in,out] c the key ring (counts).
 * @param[in] key the cache key. @param[in] klen its bytes.
 * @param[in] type the item's type.
 * @param[in] in the envelope. @param[in] inlen its bytes.
 * @param[out] out the plaintext (malloc'd, at least one byte even when empty; free()).
 * @param[out] outlen its length.
 * @param[out] why on KHALA_EAUTH, what failed ("key id 7 is not in the key file", "tag does
 *             not verify"); may be NULL.
 * @param[in] whylen size of @p why.
 * @return 0; KHALA_EAUTH (counted in auth_failures; nothing allocated); -ENOMEM.
 */
int khala__crypt_unseal(khala_crypt_t *c, const void *key, size_t klen, int type, const void *in,
                        size_t inlen, void **out, size_t *outlen, char *why, size_t whylen);

/**
 * @brief Count a value refused by a caller for a reason of its own (a value of an encrypted
 *        type found in the clear) in auth_failures.
 * @param[in,out] c the key ring.
 */
void khala__crypt_count_failure(khala_crypt_t *c);

/** @brief The counters. @param[in] c the key ring. @param[out] out the counters. */
void khala__crypt_stats(const khala_crypt_t *c, khala_crypt_stats_t *out);

#endif /* KHALA_DAEMON_CRYPT_H */
