/*
 * Reading the archive through khalad (include/khala/cache.h: khala_cache_get_archive): a get
 * with "archive": true (docs/protocol.md), whose reply is a get's reply from the level whose
 * archive held the key (L2 or L3). L1 has no archive and is not read; khalad never promotes an
 * archived copy (daemon/store_archive.c says why), so this call changes nothing anywhere.
 *
 * The value goes to a sink, as khala_cache_fetch's does (lib/client_fetch.c): an archived value
 * has a size unknown in advance, and a sink takes it in one round trip.
 */
#include <errno.h>

#include "client_internal.h"
#include "debug.h"

int khala_cache_get_archive(khala_cache_t *c, const void *key, size_t klen, khala_sink_fn sink,
                            void *sink_arg) {
    KHALA_ASSERT(c != NULL);
    if (klen == 0 || !key)
        return khala__client_fail(c, KHALA_EKEY, "key is empty");
    if (klen > KHALA_KEY_MAX)
        return khala__client_fail(c, KHALA_EKEY, "key is %zu bytes, max %d", klen, KHALA_KEY_MAX);
    if (!sink)
        return khala__client_fail(c, -EINVAL, "no sink");
    khala_msg_t req = khala__client_key_request(KHALA_OP_GET, key, klen), rep;
    req.archive = true;
    req.has |= KHALA_F_ARCHIVE;
    khala__proto_msg_init(&rep);
    int rc = khala__client_call(c, &req, &rep, 0);
    if (rc != 0)
        return rc;
    if (rep.rc) {
        rc = khala__client_reply_fail(c, &rep);
    } else {
        khala_meta_t meta = {
            .level = rep.has & KHALA_F_LVL ? rep.lvl : KHALA_LEVEL_NONE,
            .version = rep.has & KHALA_F_VER ? rep.ver : 0,
            .ttl_left_ms = rep.has & KHALA_F_TTL && rep.ttl_ms ? (int64_t)rep.ttl_ms : -1,
            .type = rep.has & KHALA_F_TYPE ? (uint32_t)rep.type : 0,
        };
        rc = sink(sink_arg, rep.value.ptr, rep.value.len, &meta);
    }
    khala__proto_msg_free(&rep);
    return rc;
}
