/*
 * L3 through a real khalad, on the embedded default (a second local-disk store, next to L2's):
 * every type that lives on L3 round-trips through it; a hit at L3 is reported as such, fills L2
 * and L1; a type kept on L3 alone is answered there and never copied up; each level keeps its
 * own TTL; deletes and invalidations reach L3; stats report it.
 *
 * "Only L3 holds it" is made for real: khalad is stopped, L2's store directory removed and the
 * L1 segment unlinked, and a new khalad started on the same L3 store. Levels are read over the
 * real protocol (a get reports the level that answered; inspect reports every level).
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "channel.h"
#include "harness.h"
#include "khala/cache.h"
#include "khala/error.h"
#include "khalad_util.h"
#include "proto.h"
#include "segment.h"
#include "segment_create.h"

static void setup(void) {
    khalad_env_init("l3");
    memset(khalad_extra_sets, 0, sizeof(khalad_extra_sets));
}

TestSuite(l3, .init = setup, .fini = khalad_env_fini, .timeout = 120);

/* Helpers ------------------------------------------------------------------------------------ */

static int put_typed(khala_chan_t *ch, const char *key, const void *val, size_t vlen,
                     khala_type_t type) {
    khala_msg_t m = khalad_req(KHALA_OP_PUT, key), r;
    m.value.ptr = val;
    m.value.len = vlen;
    m.type = type;
    m.has |= KHALA_F_V | KHALA_F_TYPE;
    int rc = khalad_call(ch, &m, &r, 10000);
    cr_assert_eq(rc, 0, "put %s: %s (%.*s)", key, khala_strerror(rc), (int)r.err.len,
                 r.err.ptr ? (const char *)r.err.ptr : "");
    khala__proto_msg_free(&r);
    return rc;
}

/* get over the protocol: rc; the value into val (NUL-terminated) and the level into *lvl. */
static int get_lvl(khala_chan_t *ch, const char *key, char *val, size_t cap, khala_level_t *lvl) {
    khala_msg_t m = khalad_req(KHALA_OP_GET, key), r;
    int rc = khalad_call(ch, &m, &r, 10000);
    if (rc == 0) {
        cr_assert_lt(r.value.len, cap);
        memcpy(val, r.value.ptr, r.value.len);
        val[r.value.len] = '\0';
        *lvl = r.lvl;
    }
    khala__proto_msg_free(&r);
    return rc;
}

/* The "levels" inspect reports for key ("" when no level holds it), into out. */
static void levels_of(khala_chan_t *ch, const char *key, char *out, size_t cap) {
    khala_msg_t m = khalad_req(KHALA_OP_INSPECT, key), r;
    int rc = khalad_call(ch, &m, &r, 10000);
    out[0] = '\0';
    if (rc == 0)
        for (uint32_t i = 0; i < r.ndata; i++)
            if (r.data[i].key.len == 6 && memcmp(r.data[i].key.ptr, "levels", 6) == 0)
                snprintf(out, cap, "%.*s", (int)r.data[i].as.s.len,
                         (const char *)r.data[i].as.s.ptr);
    cr_assert(rc == 0 || rc == KHALA_ENOTFOUND, "inspect %s: %s", key, khala_strerror(rc));
    khala__proto_msg_free(&r);
}

/* One level's ttl_ms as inspect reports it, or -1. */
static int64_t ttl_at(khala_chan_t *ch, const char *key, const char *level) {
    khala_msg_t m = khalad_req(KHALA_OP_INSPECT, key), r;
    int64_t ttl = -1;
    cr_assert_eq(khalad_call(ch, &m, &r, 10000), 0);
    for (uint32_t i = 0; i < r.ndata; i++) {
        const khala_kv_t *kv = &r.data[i];
        if (kv->kind != KHALA_KV_MAP || kv->key.len != strlen(level) ||
            memcmp(kv->key.ptr, level, kv->key.len) != 0)
            continue;
        for (uint32_t j = 0; j < kv->as.map.n; j++)
            if (kv->as.map.items[j].key.len == 6 &&
                memcmp(kv->as.map.items[j].key.ptr, "ttl_ms", 6) == 0)
                ttl = (int64_t)kv->as.map.items[j].as.u;
    }
    khala__proto_msg_free(&r);
    return ttl;
}

/* Stop khalad, remove its L2 store and L1 segment, start it again: only L3 is left. */
static void keep_only_l3(void) {
    char l2[512];
    khalad_kill(SIGTERM);
    snprintf(l2, sizeof(l2), "%s/l2", khalad_dir());
    harness_rmtree(l2);
    khala__seg_unlink(khalad_name);
    khalad_start();
}

/* Tests -------------------------------------------------------------------------------------- */

Test(l3, every_l3_type_round_trips_and_a_hit_fills_l2_and_l1) {
    khalad_start();
    khala_chan_t *ch = khalad_chan();
    char key[64], val[128], got[4096], lv[64];
    uint8_t bin[256];
    for (int i = 0; i < 256; i++)
        bin[i] = (uint8_t)i;
    int on_l3[KHALA_TYPE_COUNT] = {0};
    for (int t = 0; t < KHALA_TYPE_COUNT; t++) {
        snprintf(key, sizeof(key), "t%d", t);
        snprintf(val, sizeof(val), "value of type %d", t);
        (void)put_typed(ch, key, val, strlen(val), (khala_type_t)t);
        levels_of(ch, key, lv, sizeof(lv));
        on_l3[t] = strstr(lv, "l3") != NULL;
    }
    (void)put_typed(ch, "bin", bin, sizeof(bin), KHALA_TYPE_MEMORY_ENTITY);
    /* The defaults keep search_result and agent_response off L3, every other type on it. */
    cr_assert(on_l3[KHALA_TYPE_MEMORY_ENTITY] && on_l3[KHALA_TYPE_EMBEDDING] &&
              on_l3[KHALA_TYPE_CONSOLIDATION]);
    cr_assert(!on_l3[KHALA_TYPE_SEARCH_RESULT] && !on_l3[KHALA_TYPE_AGENT_RESPONSE]);
    khala__chan_close(ch);

    keep_only_l3();
    ch = khalad_chan();
    for (int t = 0; t < KHALA_TYPE_COUNT; t++) {
        snprintf(key, sizeof(key), "t%d", t);
        snprintf(val, sizeof(val), "value of type %d", t);
        khala_level_t lvl = KHALA_LEVEL_NONE;
        int rc = get_lvl(ch, key, got, sizeof(got), &lvl);
        if (!on_l3[t]) {
            cr_assert_eq(rc, KHALA_ENOTFOUND, "%s lived on L2 only, which is gone", key);
            continue;
        }
        cr_assert_eq(rc, 0, "%s: %s", key, khala_strerror(rc));
        cr_assert_str_eq(got, val);
        cr_assert_eq(lvl, KHALA_LEVEL_L3, "%s answered by level %d", key, (int)lvl);
        /* The hit filled L2 (every L3 type lives on L2 too) and L1 (unless kept off it). */
        levels_of(ch, key, lv, sizeof(lv));
        if (t == KHALA_TYPE_CONSOLIDATION)
            cr_assert_str_eq(lv, "l2,l3");
        else
            cr_assert_str_eq(lv, "l1,l2,l3", "%s", key);
    }
    /* Binary-safe: all 256 byte values, NUL included. */
    khala_msg_t m = khalad_req(KHALA_OP_GET, "bin"), r;
    cr_assert_eq(khalad_call(ch, &m, &r, 10000), 0);
    cr_assert_eq(r.lvl, KHALA_LEVEL_L3);
    cr_assert_eq(r.value.len, sizeof(bin));
    cr_assert_eq(memcmp(r.value.ptr, bin, sizeof(bin)), 0);
    khala__proto_msg_free(&r);
    /* L2 now answers what L3 filled, even with L1 gone again. */
    cr_assert_geq(khalad_stat(ch, "l3", "filled_above", 10000), 6);
    khala__chan_close(ch);
    khalad_kill(SIGTERM);
    khala__seg_unlink(khalad_name);
    khalad_start();
    ch = khalad_chan();
    khala_level_t lvl;
    cr_assert_eq(get_lvl(ch, "t0", got, sizeof(got), &lvl), 0);
    cr_assert_eq(lvl, KHALA_LEVEL_L2);
    khala__chan_close(ch);
}

Test(l3, a_type_kept_on_l3_alone_is_answered_there_and_never_copied_up) {
    khalad_extra_sets[0] = "type.search_index.levels=l3";
    khalad_start();
    khala_chan_t *ch = khalad_chan();
    char got[256], lv[64];
    (void)put_typed(ch, "idx", "cold", 4, KHALA_TYPE_SEARCH_INDEX);
    levels_of(ch, "idx", lv, sizeof(lv));
    cr_assert_str_eq(lv, "l3");
    khala_level_t lvl;
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(get_lvl(ch, "idx", got, sizeof(got), &lvl), 0);
        cr_assert_str_eq(got, "cold");
        cr_assert_eq(lvl, KHALA_LEVEL_L3);
    }
    levels_of(ch, "idx", lv, sizeof(lv));
    cr_assert_str_eq(lv, "l3");
    khala__chan_close(ch);
}

Test(l3, each_level_keeps_its_own_ttl) {
    khalad_extra_sets[0] = "type.memory_entity.l3_ttl_seconds=7";
    khalad_extra_sets[1] = "type.memory_entity.l2_ttl_seconds=3000";
    khalad_extra_sets[2] = "policies.ttl_jitter_pct=0";
    khalad_start();
    khala_chan_t *ch = khalad_chan();
    (void)put_typed(ch, "ttl", "x", 1, KHALA_TYPE_MEMORY_ENTITY);
    int64_t l2 = ttl_at(ch, "ttl", "l2"), l3 = ttl_at(ch, "ttl", "l3");
    cr_assert(l3 > 0 && l3 <= 7000, "l3 ttl %lld", (long long)l3);
    cr_assert(l2 > 7000 && l2 <= 3000000, "l2 ttl %lld", (long long)l2);
    khala__chan_close(ch);
}

Test(l3, deletes_and_invalidations_reach_l3) {
    khalad_start();
    khala_chan_t *ch = khalad_chan();
    (void)put_typed(ch, "gone", "a", 1, KHALA_TYPE_MEMORY_ENTITY);
    (void)put_typed(ch, "p:1", "b", 1, KHALA_TYPE_MEMORY_ENTITY);
    (void)put_typed(ch, "p:2", "c", 1, KHALA_TYPE_VERIFICATION);
    (void)put_typed(ch, "e:1", "d", 1, KHALA_TYPE_EMBEDDING);
    (void)put_typed(ch, "kept", "e", 1, KHALA_TYPE_MEMORY_ENTITY);
    khala_msg_t m = khalad_req(KHALA_OP_DEL, "gone"), r;
    cr_assert_eq(khalad_call(ch, &m, &r, 10000), 0);
    khala__proto_msg_free(&r);
    m = khalad_req(KHALA_OP_INVALIDATE, NULL);
    m.by = KHALA_BY_PREFIX;
    m.prefix = (khala_bytes_t){(const uint8_t *)"p:", 2};
    m.has |= KHALA_F_BY | KHALA_F_PREFIX;
    cr_assert_eq(khalad_call(ch, &m, &r, 10000), 0);
    khala__proto_msg_free(&r);
    m = khalad_req(KHALA_OP_INVALIDATE, NULL);
    m.by = KHALA_BY_TYPE;
    m.type = KHALA_TYPE_EMBEDDING;
    m.has |= KHALA_F_BY | KHALA_F_TYPE;
    cr_assert_eq(khalad_call(ch, &m, &r, 10000), 0);
    khala__proto_msg_free(&r);
    khala__chan_close(ch);

    keep_only_l3();
    ch = khalad_chan();
    char got[64];
    khala_level_t lvl;
    const char *gone[] = {"gone", "p:1", "p:2", "e:1"};
    for (size_t i = 0; i < 4; i++)
        cr_assert_eq(get_lvl(ch, gone[i], got, sizeof(got), &lvl), KHALA_ENOTFOUND, "%s", gone[i]);
    cr_assert_eq(get_lvl(ch, "kept", got, sizeof(got), &lvl), 0);
    cr_assert_eq(lvl, KHALA_LEVEL_L3);
    khala__chan_close(ch);
}

Test(l3, stats_and_health_report_l3) {
    khalad_start();
    khala_chan_t *ch = khalad_chan();
    for (int i = 0; i < 5; i++) {
        char key[16];
        snprintf(key, sizeof(key), "s%d", i);
        (void)put_typed(ch, key, "v", 1, KHALA_TYPE_MEMORY_ENTITY);
    }
    cr_assert_eq(khalad_stat(ch, "l3", "healthy", 10000), 1);
    cr_assert_geq(khalad_stat(ch, "l3", "puts", 10000), 5);
    cr_assert_geq(khalad_stat(ch, "l3", "items", 10000), 5);
    cr_assert_geq(khalad_stat(ch, "l2", "puts", 10000), 5);
    khala__chan_close(ch);
}
