/*
 * The khalad half of a get, for callers that read L1 themselves (include/khala/cache.h:
 * khala_cache_fetch, khala_cache_fetch_or_load).
 *
 * HOW IT WORKS
 *
 * khala_cache_get() and khala_cache_get_or_load() run L1 and khalad in one call, into one
 * buffer of the caller's. A language binding needs them apart: it reads L1 holding its
 * interpreter lock (a hit costs less than releasing it) and releases the lock only around
 * khalad. It also cannot size a buffer in advance without a second round trip. So these calls
 * start after L1 and hand the value to a sink, straight from the reply's frame (one copy, into
 * whatever the sink keeps), with the level, version and TTL khalad answered with.
 *
 * fetch_or_load follows get_or_load's steps 2 to 5 (lib/client.c); the differences are the
 * loader, which hands out a value it keeps alive rather than writing into a buffer (so a value
 * of any size is loaded once, never again for want of room), and the sink.
 *   2. get with "loader": true. A value: to the sink.
 *   3. "load": true: this caller leads. Run the loader, send fill (the value) or fill_fail,
 *      and hand the loaded value to the sink (level LOADER, the fill's version).
 *   4. -EAGAIN: the leader's loader failed; ask again, at most FETCH_ROUNDS times.
 *   5. khalad unreachable, or the wait timed out: run the loader, cache nothing.
 *
 * Connections, errors and fork handling are client.c's (client_internal.h): a request goes on
 * the calling thread's own connection.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "client_internal.h"
#include "debug.h"

/* Rounds of fetch_or_load when leaders' loaders keep failing (step 4); as GET_OR_LOAD_ROUNDS. */
#define FETCH_ROUNDS 3

static int check_key(const khala_cache_t *c, size_t klen) {
    if (klen == 0)
        return khala__client_fail(c, KHALA_EKEY, "key is empty");
    if (klen > KHALA_KEY_MAX)
        return khala__client_fail(c, KHALA_EKEY, "key is %zu bytes, max %d", klen, KHALA_KEY_MAX);
    return 0;
}

/* Hand a get reply's value to the sink. */
static int deliver_reply(const khala_msg_t *rep, khala_sink_fn sink, void *arg) {
    khala_meta_t meta = {
        .level = rep->has & KHALA_F_LVL ? rep->lvl : KHALA_LEVEL_NONE,
        .version = rep->has & KHALA_F_VER ? rep->ver : 0,
        /* The wire's 0 is "never expires". */
        .ttl_left_ms = rep->has & KHALA_F_TTL && rep->ttl_ms ? (int64_t)rep->ttl_ms : -1,
        .type = rep->has & KHALA_F_TYPE ? (uint32_t)rep->type : 0,
    };
    return sink(arg, rep->value.ptr, rep->value.len, &meta);
}

int khala_cache_fetch(khala_cache_t *c, const void *key, size_t klen, khala_sink_fn sink,
                      void *sink_arg) {
    KHALA_ASSERT(c != NULL);
    int rc = check_key(c, klen);
    if (rc != 0)
        return rc;
    if (!sink)
        return khala__client_fail(c, -EINVAL, "no sink");
    khala_msg_t req = khala__client_key_request(KHALA_OP_GET, key, klen), rep;
    khala__proto_msg_init(&rep);
    if ((rc = khala__client_call(c, &req, &rep, 0)) != 0)
        return rc;
    rc = rep.rc ? khala__client_reply_fail(c, &rep) : deliver_reply(&rep, sink, sink_arg);
    khala__proto_msg_free(&rep);
    return rc;
}

/* Run the loader and normalize its answer: 0 with (*val, *vlen), or a negative code with the
 * calling thread's message set. */
static int run_loader(khala_cache_t *c, khala_load_ref_fn loader, void *arg, const void *key,
                      size_t klen, const void **val, size_t *vlen) {
    *val = NULL;
    *vlen = 0;
    int rc = loader(arg, key, klen, val, vlen);
    if (rc > 0)
        return khala__client_fail(
            c, -EINVAL, "the loader returned %d; loaders return 0 or a negative code", rc);
    if (rc == 0 && !*val && *vlen)
        return khala__client_fail(c, -EINVAL, "the loader returned %zu bytes at NULL", *vlen);
    if (rc != 0)
        return khala__client_fail(c, rc, "the loader failed: %s", khala_strerror(rc));
    return 0;
}

/* Step 3: this caller leads the load of key. khalad hears the outcome either way, so that the
 * callers waiting on the key get the value or ask again. */
static int lead(khala_cache_t *c, const void *key, size_t klen, khala_load_ref_fn loader,
                void *larg, khala_sink_fn sink, void *sarg, khala_type_t type, uint64_t ttl_ms) {
    const void *val;
    size_t vlen;
    int lrc = run_loader(c, loader, larg, key, klen, &val, &vlen);
    char saved[256];
    snprintf(saved, sizeof(saved), "%s", khala_cache_errmsg(c));
    khala_msg_t req = khala__client_fill_request(key, klen, lrc, val, vlen, type, ttl_ms, saved),
                rep;
    khala__proto_msg_init(&rep);
    uint64_t version = 0;
    int rc = khala__client_call(c, &req, &rep, 0);
    if (rc == 0 && rep.rc == 0 && (rep.has & KHALA_F_VER))
        version = rep.ver;
    khala__proto_msg_free(&rep);
    /* A fill refused before it was sent (a frame too big) leaves the waiters waiting: tell them
     * to ask again. A broken connection needs nothing: khalad hands the lead to a waiter. A fill
     * khalad refused (too big for L1) answered them already. */
    if (lrc == 0 && rc != 0 && rc != KHALA_EDAEMON && rc != -ETIMEDOUT) {
        khala_msg_t ff = khala__client_key_request(KHALA_OP_FILL_FAIL, key, klen);
        (void)khala__client_call(c, &ff, &rep, 0);
        khala__proto_msg_free(&rep);
    }
    if (lrc != 0)
        return khala__client_fail(c, lrc, "%s", saved);
    khala_meta_t meta = {
        .level = KHALA_LEVEL_LOADER, .version = version, .ttl_left_ms = -1, .type = (uint32_t)type};
    return sink(sarg, val, vlen, &meta);
}

/* Step 5: load without khalad; nothing is cached. */
static int load_directly(khala_cache_t *c, const void *key, size_t klen, khala_load_ref_fn loader,
                         void *larg, khala_sink_fn sink, void *sarg, khala_type_t type) {
    const void *val;
    size_t vlen;
    int rc = run_loader(c, loader, larg, key, klen, &val, &vlen);
    if (rc != 0)
        return rc;
    khala_meta_t meta = {
        .level = KHALA_LEVEL_LOADER, .version = 0, .ttl_left_ms = -1, .type = (uint32_t)type};
    return sink(sarg, val, vlen, &meta);
}

int khala_cache_fetch_or_load(khala_cache_t *c, const void *key, size_t klen,
                              khala_load_ref_fn loader, void *loader_arg, khala_sink_fn sink,
                              void *sink_arg, khala_type_t type, uint64_t ttl_ms) {
    KHALA_ASSERT(c != NULL);
    int rc = check_key(c, klen);
    if (rc != 0)
        return rc;
    if (ttl_ms > KHALA_TTL_MAX_MS)
        return khala__client_fail(c, KHALA_EINVAL, "ttl is %llu ms, max %llu ms (10 years)",
                                  (unsigned long long)ttl_ms, KHALA_TTL_MAX_MS);
    if (!loader || !sink)
        return khala__client_fail(c, -EINVAL, loader ? "no sink" : "no loader");
    if ((unsigned)type >= KHALA_TYPE_COUNT)
        return khala__client_fail(c, -EINVAL, "type %d is not a data type (0..%d)", (int)type,
                                  KHALA_TYPE_COUNT - 1);
    for (int round = 0; round < FETCH_ROUNDS; round++) {
        /* Step 2. */
        khala_msg_t req = khala__client_key_request(KHALA_OP_GET, key, klen), rep;
        khala__proto_msg_init(&rep);
        req.loader = true;
        req.type = type;
        req.has |= KHALA_F_LOADER | KHALA_F_TYPE;
        if (khala__client_call(c, &req, &rep, 1) != 0) /* step 5 */
            return load_directly(c, key, klen, loader, loader_arg, sink, sink_arg, type);
        int answer = rep.rc;
        bool leads = rep.load;
        if (answer == 0)
            rc = deliver_reply(&rep, sink, sink_arg);
        else if (answer != KHALA_ENOTFOUND && answer != -EAGAIN && answer != -ETIMEDOUT)
            rc = khala__client_reply_fail(c, &rep);
        khala__proto_msg_free(&rep);
        if (answer == 0)
            return rc;
        if (answer == KHALA_ENOTFOUND && leads) /* step 3 */
            return lead(c, key, klen, loader, loader_arg, sink, sink_arg, type, ttl_ms);
        if (answer == KHALA_ENOTFOUND || answer == -ETIMEDOUT) /* step 5 */
            return load_directly(c, key, klen, loader, loader_arg, sink, sink_arg, type);
        if (answer != -EAGAIN)
            return rc;
        /* Step 4: the leader's loader failed; ask again. */
    }
    return khala__client_fail(c, -EAGAIN,
                              "the loader of this key failed %d times in a row, in other workers",
                              FETCH_ROUNDS);
}
