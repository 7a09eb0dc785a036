/*
 * The encrypting tier: a driver (daemon/tier.h) that wraps another one and seals the values of
 * encrypted types on their way down and opens them on their way up (daemon/crypt.h). It sits at
 * the store/tier boundary, so that every level below L1 (L2 and L3) gets it by
 * being wrapped when it is opened (daemon/tiers.c), and nothing above knows.
 *
 * Reads follow one rule, per value: sealed (the envelope's magic) -> opened, whatever the type's
 * setting today (so a type whose encryption was turned off still reads its old values); not
 * sealed -> returned as stored, unless its type is encrypted: then it is refused too (a value
 * stored in the clear, or by someone other than khalad, is not trusted). A refused value is a
 * miss at that level: get() returns KHALA_EAUTH (mget() puts it in the key's rc), the driver's
 * err says why, the key ring counts it (crypto.auth_failures) and the wrapper logs it (the
 * first 16, then one in 1024). It is never returned.
 *
 * Keys, versions, TTLs and types are stored in the clear: only value bytes are sealed.
 */
#ifndef KHALA_DAEMON_TIER_CRYPT_H
#define KHALA_DAEMON_TIER_CRYPT_H

#include "crypt.h"
#include "tier.h"
#include "writeq.h"

/**
 * @brief Wrap @p inner so that values of @p c's encrypted types are sealed below.
 * @param[in] inner the driver, opened; owned by the wrapper from now on (closed with it).
 * @param[in] c the key ring; must outlive the wrapper.
 * @param[out] out the wrapping driver: same name and level as @p inner; its err mirrors
 *             inner's after every call.
 * @return 0; -ENOMEM (then @p inner is left to the caller, unchanged).
 */
int khala__tier_crypt_wrap(khala_tier_t *inner, khala_crypt_t *c, khala_tier_t **out);

/**
 * @brief The write journal's codec (daemon/writeq.h) for key ring @p c: put values of
 *        encrypted types are sealed in the journal's records and opened when read back, by the
 *        same rule as reads (a record refused is dropped, counted and logged).
 * @param[in] c the key ring; must outlive the queue.
 * @param[out] out the codec, for khala__wq_set_codec().
 */
void khala__tier_crypt_journal_codec(khala_crypt_t *c, khala_wq_codec_t *out);

#endif /* KHALA_DAEMON_TIER_CRYPT_H */
