/*
 * Relationship caching through a real khalad (daemon/relationships.c): a relationship item R
 * put with links to its end entities E and N is deleted at every level when an end is put,
 * deleted or invalidated (by key, prefix or type), here or on another khalad sharing a real
 * redis-server; a re-put with other links drops the old ones; the link index survives a
 * restart; cycles end; and with [policies] preload_relationships, reading E into L1 from below
 * brings R into L1 too (and without it, it does not). Refusals: a damaged link index stops
 * the start; a put with more links than the index holds, or whose eviction a level refuses, is
 * refused unwritten; a cascade whose delete a level refuses refuses the caller's delete, and
 * its retry finishes it.
 *
 * "Gone at every level": inspect (which asks L1 and every level below) answers KHALA_ENOTFOUND,
 * and a get with a loader is told to load. No test asserts on timing: every wait is a bounded
 * poll of a condition.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "channel.h"
#include "khala/cache.h"
#include "khala/error.h"
#include "khalad_util.h"
#include "proto.h"
#include "redis_util.h"
#include "segment.h"
#include "segment_create.h"

static pid_t g_pid2;
static char g_name2[80];
static tu_redis_t g_redis; /* a private redis-server a test kills and restarts ("" dir: none) */

static void setup(void) {
    khalad_env_init("rel");
    memset(khalad_extra_sets, 0, sizeof(khalad_extra_sets));
    khalad_extra_sets[0] = "l2.persistent=true";
    g_pid2 = 0;
    g_name2[0] = '\0';
}

static void teardown(void) {
    if (g_pid2 > 0) {
        kill(g_pid2, SIGKILL);
        waitpid(g_pid2, NULL, 0);
        g_pid2 = 0;
    }
    if (g_name2[0])
        khala__seg_unlink(g_name2);
    unsetenv("KHALAD_TEST_LINKS_MAX");
    khalad_env_fini();
    if (g_redis.dir[0])
        tu_redis_stop(&g_redis);
}

TestSuite(relationships, .init = setup, .fini = teardown, .timeout = 120);

/* Helpers ------------------------------------------------------------------------------------ */

static void add_set(const char *set) {
    int n = 0;
    while (khalad_extra_sets[n])
        n++;
    cr_assert_lt(n, KHALAD_EXTRA_SETS_MAX - 1, "too many --set options");
    khalad_extra_sets[n] = set;
    khalad_extra_sets[n + 1] = NULL;
}

static khala_chan_t *chan_to(const char *sock, const char *name) {
    khala_chan_t *ch = NULL;
    char err[256];
    int rc = khala__chan_open(sock, name, 5000, &ch, err, sizeof(err));
    cr_assert_eq(rc, 0, "connect to %s: %s", sock, err);
    return ch;
}

/* A put of key = val (type t), linked to the NULL-terminated ends (none: no "links"). Returns
 * the reply's rc, its message in msg (may be NULL). */
static int put_linked(khala_chan_t *ch, const char *key, const char *val, khala_type_t t,
                      const char *const *ends, char *msg, size_t msglen) {
    khala_msg_t m = khalad_req(KHALA_OP_PUT, key), r;
    khala_bytes_t links[8];
    uint32_t n = 0;
    for (; ends && ends[n]; n++)
        links[n] = (khala_bytes_t){(const uint8_t *)ends[n], strlen(ends[n])};
    m.value = (khala_bytes_t){(const uint8_t *)val, strlen(val)};
    m.type = t;
    m.has |= KHALA_F_V | KHALA_F_TYPE;
    if (n) {
        m.links = links;
        m.nlinks = n;
        m.has |= KHALA_F_LINKS;
    }
    int rc = khalad_call(ch, &m, &r, 10000);
    if (msg)
        snprintf(msg, msglen, "%.*s", (int)r.err.len, r.err.ptr ? (const char *)r.err.ptr : "");
    khala__proto_msg_free(&r);
    return rc;
}

static void put_ok(khala_chan_t *ch, const char *key, const char *val, const char *const *ends) {
    char msg[512];
    int rc =
        put_linked(ch, key, val, ends ? KHALA_TYPE_ENTITY_RELATIONSHIP : KHALA_TYPE_MEMORY_ENTITY,
                   ends, msg, sizeof(msg));
    cr_assert_eq(rc, 0, "put %s: %s (%s)", key, khala_strerror(rc), msg);
}

/* A simple request's rc (del, invalidate). */
static int call_rc(khala_chan_t *ch, khala_msg_t *m) {
    khala_msg_t r;
    int rc = khalad_call(ch, m, &r, 10000);
    khala__proto_msg_free(&r);
    return rc;
}

/* The levels inspect names for key ("l1,l2"), "" when no level holds it. */
static const char *levels_of(khala_chan_t *ch, const char *key, char *buf, size_t cap) {
    khala_msg_t m = khalad_req(KHALA_OP_INSPECT, key), r;
    int rc = khalad_call(ch, &m, &r, 10000);
    buf[0] = '\0';
    if (rc == 0) {
        const khala_kv_t *lv = khala__proto_kv_find(r.data, r.ndata, "levels");
        cr_assert(lv && lv->kind == KHALA_KV_STR);
        snprintf(buf, cap, "%.*s", (int)lv->as.s.len, (const char *)lv->as.s.ptr);
    } else {
        cr_assert_eq(rc, KHALA_ENOTFOUND, "inspect %s: %s", key, khala_strerror(rc));
    }
    khala__proto_msg_free(&r);
    return buf;
}

static int in_l1(khala_chan_t *ch, const char *key) {
    char lv[64];
    return strncmp(levels_of(ch, key, lv, sizeof(lv)), "l1", 2) == 0;
}

/* R is gone at every level: inspect finds it nowhere, and a get with a loader is told to load
 * (then the load is given up, so that single-flight forgets it). */
static void assert_gone(khala_chan_t *ch, const char *key) {
    char lv[64];
    cr_assert_str_eq(levels_of(ch, key, lv, sizeof(lv)), "", "%s is still held at %s", key, lv);
    khala_msg_t m = khalad_req(KHALA_OP_GET, key), r;
    m.loader = true;
    m.has |= KHALA_F_LOADER;
    int rc = khalad_call(ch, &m, &r, 10000);
    cr_assert_eq(rc, KHALA_ENOTFOUND);
    cr_assert(r.load, "a get of %s was not told to load: some level answered", key);
    khala__proto_msg_free(&r);
    khala_msg_t f = khalad_req(KHALA_OP_FILL_FAIL, key);
    cr_assert_eq(call_rc(ch, &f), 0);
}

static void assert_held_everywhere(khala_chan_t *ch, const char *key) {
    char lv[64];
    cr_assert_str_eq(levels_of(ch, key, lv, sizeof(lv)), "l1,l2,l3", "%s", key);
}

static uint64_t stat_u(khala_chan_t *ch, const char *name) {
    return khalad_stat(ch, "khalad", name, 10000);
}

/* E, N, and R linked to both, each held at L1 and L2. */
static void put_graph(khala_chan_t *ch) {
    static const char *const ends[] = {"user:E", "user:N", NULL};
    put_ok(ch, "user:E", "entity E", NULL);
    put_ok(ch, "user:N", "entity N", NULL);
    put_ok(ch, "rel:E:follows", "[user:N]", ends);
    assert_held_everywhere(ch, "rel:E:follows");
    khala_msg_t m = khalad_req(KHALA_OP_GET, "rel:E:follows"), r;
    cr_assert_eq(khalad_call(ch, &m, &r, 10000), 0, "get R hits");
    cr_assert_eq(r.lvl, KHALA_LEVEL_L1);
    khala__proto_msg_free(&r);
}

/* Invalidation of an end, every way ------------------------------------------------------------ */

Test(relationships, put_of_an_end_deletes_the_relationship_at_every_level) {
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    put_graph(ch);
    put_ok(ch, "user:E", "entity E, changed", NULL);
    assert_gone(ch, "rel:E:follows");
    assert_held_everywhere(ch, "user:N"); /* the other end is untouched */
    cr_assert_geq(stat_u(ch, "relationships_cascaded"), 1);
    cr_assert_eq(stat_u(ch, "relationships_linked"), 0, "its links went with it");
    khala__chan_close(ch);
}

Test(relationships, delete_of_the_other_end_deletes_it) {
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    put_graph(ch);
    khala_msg_t m = khalad_req(KHALA_OP_DEL, "user:N");
    cr_assert_eq(call_rc(ch, &m), 0);
    assert_gone(ch, "rel:E:follows");
    khala__chan_close(ch);
}

Test(relationships, invalidation_by_key_even_of_an_uncached_end_deletes_it) {
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    static const char *const ends[] = {"user:never-cached", NULL};
    put_ok(ch, "rel:x", "r", ends);
    khala_msg_t m = khalad_req(KHALA_OP_INVALIDATE, "user:never-cached");
    m.by = KHALA_BY_KEY;
    m.has |= KHALA_F_BY;
    cr_assert_eq(call_rc(ch, &m), 0);
    assert_gone(ch, "rel:x");
    khala__chan_close(ch);
}

Test(relationships, invalidation_by_prefix_deletes_what_is_linked_under_it) {
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    put_graph(ch);
    static const char *const other[] = {"post:1", NULL};
    put_ok(ch, "post:1", "a post", NULL);
    put_ok(ch, "rel:post:1", "r", other);
    khala_msg_t m = khalad_req(KHALA_OP_INVALIDATE, NULL);
    m.by = KHALA_BY_PREFIX;
    m.prefix = (khala_bytes_t){(const uint8_t *)"user:", 5};
    m.has |= KHALA_F_BY | KHALA_F_PREFIX;
    cr_assert_eq(call_rc(ch, &m), 0);
    assert_gone(ch, "rel:E:follows");
    assert_held_everywhere(ch, "rel:post:1"); /* linked to nothing under the prefix */
    khala__chan_close(ch);
}

Test(relationships, invalidation_by_type_deletes_every_linked_item) {
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    put_graph(ch);
    khala_msg_t m = khalad_req(KHALA_OP_INVALIDATE, NULL);
    m.by = KHALA_BY_TYPE;
    m.type = KHALA_TYPE_MEMORY_ENTITY;
    m.has |= KHALA_F_BY | KHALA_F_TYPE;
    cr_assert_eq(call_rc(ch, &m), 0);
    assert_gone(ch, "user:E");
    assert_gone(ch, "rel:E:follows");
    khala__chan_close(ch);
}

/* Links: replaced, persistent, cycles, refusals ------------------------------------------------- */

Test(relationships, reput_with_other_links_drops_the_old_ones) {
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    put_graph(ch);
    static const char *const now[] = {"user:M", NULL};
    put_ok(ch, "rel:E:follows", "[user:M]", now);
    put_ok(ch, "user:E", "changed", NULL);
    put_ok(ch, "user:N", "changed", NULL);
    assert_held_everywhere(ch, "rel:E:follows"); /* no longer linked to E or N */
    put_ok(ch, "user:M", "changed", NULL);
    assert_gone(ch, "rel:E:follows");
    khala__chan_close(ch);
}

Test(relationships, the_link_index_survives_a_restart) {
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    put_graph(ch);
    khala__chan_close(ch);
    khalad_kill(SIGKILL); /* no graceful close: the index is on disk at each put */
    khalad_start();
    ch = chan_to(khalad_sock, khalad_name);
    cr_assert_eq(stat_u(ch, "relationships_linked"), 1);
    cr_assert_eq(stat_u(ch, "relationship_links"), 2);
    put_ok(ch, "user:N", "changed after the restart", NULL);
    assert_gone(ch, "rel:E:follows");
    khala__chan_close(ch);
}

Test(relationships, linked_relationships_never_delete_the_item_being_written) {
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    static const char *const r1[] = {"user:E", "rel:2", NULL}, *const r2[] = {"rel:1", NULL};
    put_ok(ch, "user:E", "e", NULL);
    put_ok(ch, "rel:1", "one", r1);
    /* rel:1 is linked to rel:2: writing rel:2 deletes rel:1, and the links back from rel:1 to
     * rel:2 (a cycle) never take rel:2 with it. */
    put_ok(ch, "rel:2", "two", r2);
    assert_gone(ch, "rel:1");
    assert_held_everywhere(ch, "rel:2");
    /* And the other way round. */
    put_ok(ch, "rel:1", "one again", r1);
    assert_gone(ch, "rel:2");
    assert_held_everywhere(ch, "rel:1");
    put_ok(ch, "user:E", "changed", NULL);
    assert_gone(ch, "rel:1");
    cr_assert_eq(stat_u(ch, "relationships_linked"), 0);
    khala__chan_close(ch);
}

Test(relationships, put_with_links_through_the_library) {
    khalad_start();
    khala_cache_options_t o;
    khala_cache_options_init(&o);
    o.socket_path = khalad_sock;
    khala_cache_t *c = NULL;
    cr_assert_eq(khala_cache_open(khalad_name, &o, &c), 0, "%s", khala_cache_errmsg(NULL));
    khala_put_options_t po;
    khala_put_options_init(&po);
    khala_link_t links[] = {{"user:E", 6}, {"user:N", 6}};
    po.type = KHALA_TYPE_ENTITY_RELATIONSHIP;
    po.links = links;
    po.nlinks = 2;
    cr_assert_eq(khala_cache_put(c, "rel:lib", 7, "r", 1, &po, NULL), 0, "%s",
                 khala_cache_errmsg(c));
    /* Refused before anything is sent: the item's own key, a bad length, too many. */
    khala_link_t self[] = {{"rel:lib", 7}}, empty[] = {{"x", 0}};
    po.links = self;
    po.nlinks = 1;
    cr_assert_eq(khala_cache_put(c, "rel:lib", 7, "r", 1, &po, NULL), KHALA_EKEY);
    cr_assert(strstr(khala_cache_errmsg(c), "own key"), "%s", khala_cache_errmsg(c));
    po.links = empty;
    cr_assert_eq(khala_cache_put(c, "rel:lib", 7, "r", 1, &po, NULL), KHALA_EKEY);
    po.nlinks = KHALA_LINKS_MAX + 1;
    cr_assert_eq(khala_cache_put(c, "rel:lib", 7, "r", 1, &po, NULL), -EINVAL);
    po.nlinks = 0;
    cr_assert_eq(khala_cache_put(c, "user:E", 6, "e", 1, &po, NULL), 0);
    char buf[8];
    size_t len;
    cr_assert_eq(khala_cache_get(c, "rel:lib", 7, buf, sizeof(buf), &len), KHALA_ENOTFOUND);
    khala_cache_close(c);
}

/* Two hosts, one Redis -------------------------------------------------------------------------- */

Test(relationships, an_end_written_on_another_host_deletes_it_here_and_in_redis) {
    const char *url = tu_redis_env("KHALA_TEST_REDIS_URL");
    static char ns[64];
    snprintf(ns, sizeof(ns), "rel%d", (int)getpid());
    khalad_use_redis(url, ns);
    add_set("l2.persistent=true");
    add_set("policies.coherence=pubsub");
    khalad_start();
    /* Host B: another cache name, socket, segment and state directory; same Redis namespace. */
    static char sock2[200], dir2[160];
    snprintf(g_name2, sizeof(g_name2), "%sb", khalad_name);
    snprintf(dir2, sizeof(dir2), "%s/b", khalad_dir());
    mkdir(dir2, 0700);
    snprintf(sock2, sizeof(sock2), "%s/b.sock", dir2);
    g_pid2 = khalad_spawn(g_name2, sock2, dir2, khalad_extra_sets);
    khala_chan_t *a = chan_to(khalad_sock, khalad_name), *b = chan_to(sock2, g_name2);
    for (int i = 0; i < 500 && (khalad_stat(a, "l2", "subscribed", 10000) != 1 ||
                                khalad_stat(b, "l2", "subscribed", 10000) != 1);
         i++)
        sleep_ms(10);

    put_graph(a); /* R linked on A only */
    uint64_t heard = khalad_stat(a, "l2", "invalidations_received", 10000);
    put_ok(b, "user:E", "changed on B", NULL);
    /* A hears of it (bounded poll), and deletes R from its L1 and from Redis. */
    char lv[64] = "l1,l2";
    for (int i = 0; i < 500 && levels_of(a, "rel:E:follows", lv, sizeof(lv))[0]; i++)
        sleep_ms(10);
    cr_assert_geq(khalad_stat(a, "l2", "invalidations_received", 10000), heard + 1);
    assert_gone(a, "rel:E:follows");
    assert_gone(b, "rel:E:follows");
    khala__chan_close(a);
    khala__chan_close(b);
}

/* Preload -------------------------------------------------------------------------------------- */

/* E and R (linked to E) at L2 only: put, then khalad restarted with an empty L1. */
static khala_chan_t *graph_below_l1_only(void) {
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    put_graph(ch);
    khala__chan_close(ch);
    khalad_kill(SIGTERM);
    khala__seg_unlink(khalad_name);
    khalad_start();
    ch = chan_to(khalad_sock, khalad_name);
    char lv[64];
    cr_assert_str_eq(levels_of(ch, "rel:E:follows", lv, sizeof(lv)), "l2,l3");
    cr_assert_str_eq(levels_of(ch, "user:E", lv, sizeof(lv)), "l2,l3");
    return ch;
}

static void get_from_l2(khala_chan_t *ch, const char *key) {
    khala_msg_t m = khalad_req(KHALA_OP_GET, key), r;
    cr_assert_eq(khalad_call(ch, &m, &r, 10000), 0);
    cr_assert_eq(r.lvl, KHALA_LEVEL_L2, "%s was answered by %d", key, (int)r.lvl);
    khala__proto_msg_free(&r);
}

Test(relationships, preload_brings_the_relationships_of_a_loaded_entity_into_l1) {
    add_set("policies.preload_relationships=true");
    khala_chan_t *ch = graph_below_l1_only();
    get_from_l2(ch, "user:E");
    int held = 0;
    for (int i = 0; i < 500 && !(held = in_l1(ch, "rel:E:follows")); i++)
        sleep_ms(10);
    cr_assert(held, "R did not reach L1 within 5 s of E's load");
    cr_assert_geq(stat_u(ch, "relationships_preloaded"), 1);
    khala__chan_close(ch);
}

Test(relationships, without_preload_a_loaded_entity_brings_nothing_else) {
    khala_chan_t *ch = graph_below_l1_only();
    get_from_l2(ch, "user:E");
    /* Some ticks go by (the ping round trips), the preload would have run in them. */
    for (int i = 0; i < 20; i++) {
        khala_msg_t p = khalad_req(KHALA_OP_PING, NULL);
        cr_assert_eq(call_rc(ch, &p), 0);
        sleep_ms(10);
    }
    cr_assert_eq(in_l1(ch, "rel:E:follows"), 0);
    cr_assert_eq(stat_u(ch, "relationships_preloaded"), 0);
    khala__chan_close(ch);
}

Test(relationships, a_host_that_was_not_listening_deletes_what_it_linked) {
    /* While khalad is down, other hosts' changes to E are missed: at its start, with
     * coherence = pubsub, its linked items go (in Redis too), since any end may have changed. */
    const char *url = tu_redis_env("KHALA_TEST_REDIS_URL");
    static char ns[64];
    snprintf(ns, sizeof(ns), "relq%d", (int)getpid());
    khalad_use_redis(url, ns);
    add_set("l2.persistent=true");
    add_set("policies.coherence=pubsub");
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    put_graph(ch);
    khala__chan_close(ch);
    khalad_kill(SIGKILL);
    khalad_start();
    ch = chan_to(khalad_sock, khalad_name);
    assert_gone(ch, "rel:E:follows");
    char lv[64]; /* only what was linked goes (L1 was emptied: it missed changes too) */
    cr_assert_str_eq(levels_of(ch, "user:E", lv, sizeof(lv)), "l2,l3");
    cr_assert_eq(stat_u(ch, "relationships_linked"), 0);
    khala__chan_close(ch);
}

Test(relationships, a_full_index_evicts_the_oldest_relationship_from_every_level) {
    setenv("KHALAD_TEST_LINKS_MAX", "3", 1); /* room for 3 links */
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    static const char *const two[] = {"user:E", "user:N", NULL}, *const one[] = {"user:M", NULL};
    put_ok(ch, "rel:old", "r", two);
    put_ok(ch, "rel:mid", "r", one);
    put_ok(ch, "rel:new", "r", two); /* 5 links: the oldest (2 links) goes */
    assert_gone(ch, "rel:old");
    assert_held_everywhere(ch, "rel:mid");
    assert_held_everywhere(ch, "rel:new");
    cr_assert_eq(stat_u(ch, "relationships_evicted"), 1);
    cr_assert_eq(stat_u(ch, "relationship_links"), 3);
    put_ok(ch, "user:N", "changed", NULL); /* rel:new is linked, and goes */
    assert_gone(ch, "rel:new");
    khala__chan_close(ch);
}

/* A link index khalad cannot read stops the start with a message naming it: serving without
 * it would leave every relationship linked before the restart stale. */
Test(relationships, a_damaged_link_index_stops_the_start_naming_it) {
    char name[80], l2[160], set_l2[200], links[200], data[240], sock_set[200];
    snprintf(name, sizeof(name), "%sd", khalad_name);
    snprintf(l2, sizeof(l2), "%s/l2d", khalad_dir());
    snprintf(set_l2, sizeof(set_l2), "l2.path=%s", l2);
    snprintf(sock_set, sizeof(sock_set), "cache.socket=%s/d.sock", khalad_dir());
    snprintf(links, sizeof(links), "%s/links", l2);
    snprintf(data, sizeof(data), "%s/data.mdb", links);
    cr_assert_eq(mkdir(l2, 0700), 0);
    cr_assert_eq(mkdir(links, 0700), 0);
    FILE *f = fopen(data, "w");
    cr_assert_not_null(f);
    char junk[8192];
    memset(junk, 'x', sizeof(junk));
    cr_assert_eq(fwrite(junk, 1, sizeof(junk), f), sizeof(junk));
    fclose(f);
    snprintf(g_name2, sizeof(g_name2), "%s", name); /* teardown unlinks its segment */
    const char *const args[] = {"--foreground",
                                "--name",
                                name,
                                "--set",
                                sock_set,
                                "--set",
                                "l1.max_memory_mb=16",
                                "--set",
                                set_l2,
                                "--set",
                                "l2.persistent=true",
                                NULL};
    char out[8192];
    int st = khalad_run(args, out, sizeof(out));
    cr_assert_eq(st, 1, "exit status %d: %s", st, out);
    cr_assert_not_null(strstr(out, "cannot open the link index"), "log: %s", out);
    cr_assert_not_null(strstr(out, links), "the log names the index's directory: %s", out);
    struct stat sb;
    cr_assert_eq(stat(data, &sb), 0);
    cr_assert_eq(sb.st_size, (off_t)sizeof(junk), "the damaged file is left for the operator");
}

/* More links than the whole index holds: nothing to evict makes room, so the put is refused
 * with KHALA_EFULL and a message saying so, and nothing is written. */
Test(relationships, a_put_with_more_links_than_the_index_holds_is_refused_unwritten) {
    setenv("KHALAD_TEST_LINKS_MAX", "1", 1);
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    static const char *const two[] = {"user:E", "user:N", NULL};
    char msg[512];
    int rc = put_linked(ch, "rel:big", "r", KHALA_TYPE_ENTITY_RELATIONSHIP, two, msg, sizeof(msg));
    cr_assert_eq(rc, KHALA_EFULL, "put: %s (%s)", khala_strerror(rc), msg);
    cr_assert_not_null(strstr(msg, "holds no relationship to evict"), "message: %s", msg);
    assert_gone(ch, "rel:big");
    cr_assert_eq(stat_u(ch, "relationship_links"), 0);
    static const char *const one[] = {"user:E", NULL};
    put_ok(ch, "rel:small", "r", one); /* within the bound it is taken */
    assert_held_everywhere(ch, "rel:small");
    khala__chan_close(ch);
}

/* A cascade whose delete a level refuses stops there: the caller's delete is refused with a
 * message naming the relationship item and the end, and the item stays linked, so that the
 * retry once the level is back deletes it. L2 is a private Redis whose write queue holds one
 * write: with Redis down and that write queued, the cascade's delete finds no room. */
Test(relationships, a_cascade_refused_by_a_level_refuses_the_delete_and_a_retry_finishes_it) {
    static char url[64], ns[64];
    tu_redis_start(&g_redis, NULL);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%u", g_redis.port);
    snprintf(ns, sizeof(ns), "relx%d", (int)getpid());
    khalad_use_redis(url, ns);
    add_set("l2.queue_max=1");
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    put_graph(ch);
    put_ok(ch, "user:other", "not linked", NULL);
    tu_redis_kill(&g_redis);
    khala_msg_t o = khalad_req(KHALA_OP_DEL, "user:other"); /* queued: the queue is full */
    int rc = call_rc(ch, &o);
    cr_assert_eq(rc, 0, "a delete queued while L2 is down: %s", khala_strerror(rc));
    khala_msg_t m = khalad_req(KHALA_OP_DEL, "user:E"), r;
    rc = khalad_call(ch, &m, &r, 10000);
    char msg[512];
    snprintf(msg, sizeof(msg), "%.*s", (int)r.err.len, r.err.ptr ? (const char *)r.err.ptr : "");
    khala__proto_msg_free(&r);
    cr_assert_eq(rc, KHALA_EQUEUE, "delete with L2 down: %s (%s)", khala_strerror(rc), msg);
    cr_assert(strstr(msg, "'rel:E:follows'") && strstr(msg, "'user:E'") &&
                  strstr(msg, "could not be deleted") && strstr(msg, "retry later"),
              "message: %s", msg);
    cr_assert_eq(stat_u(ch, "relationships_linked"), 1, "the item is still linked");
    cr_assert_eq(stat_u(ch, "relationships_cascaded"), 0);
    tu_redis_start(&g_redis, NULL); /* back, empty (no persistence) */
    for (int i = 0; i < 500; i++) {
        khala_msg_t d = khalad_req(KHALA_OP_DEL, "user:E");
        if ((rc = call_rc(ch, &d)) == 0)
            break;
        sleep_ms(10);
    }
    cr_assert_eq(rc, 0, "the retry: %s", khala_strerror(rc));
    assert_gone(ch, "rel:E:follows");
    cr_assert_eq(stat_u(ch, "relationships_linked"), 0);
    cr_assert_eq(stat_u(ch, "relationships_cascaded"), 1);
    khala__chan_close(ch);
}

/* An invalidation by prefix of the relationship items themselves unlinks them: put again
 * without links, an item is no longer deleted by its former ends. */
Test(relationships, invalidation_by_prefix_of_relationship_items_unlinks_them) {
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    put_graph(ch);
    khala_msg_t m = khalad_req(KHALA_OP_INVALIDATE, NULL);
    m.by = KHALA_BY_PREFIX;
    m.prefix = (khala_bytes_t){(const uint8_t *)"rel:", 4};
    m.has |= KHALA_F_BY | KHALA_F_PREFIX;
    cr_assert_eq(call_rc(ch, &m), 0);
    assert_gone(ch, "rel:E:follows");
    cr_assert_eq(stat_u(ch, "relationships_linked"), 0);
    cr_assert_eq(stat_u(ch, "relationship_links"), 0);
    put_ok(ch, "rel:E:follows", "unlinked now", NULL);
    put_ok(ch, "user:E", "changed", NULL);
    assert_held_everywhere(ch, "rel:E:follows");
    cr_assert_eq(stat_u(ch, "relationships_cascaded"), 0);
    khala__chan_close(ch);
}

/* A full index makes room by deleting its oldest relationship at every level; when a level
 * refuses that delete (L2 down, its queue full), the put is refused and nothing is written:
 * the oldest item stays linked, and the new one is neither linked nor held. */
Test(relationships, an_eviction_a_level_refuses_refuses_the_put_unwritten) {
    static char url[64], ns[64];
    tu_redis_start(&g_redis, NULL);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%u", g_redis.port);
    snprintf(ns, sizeof(ns), "rely%d", (int)getpid());
    khalad_use_redis(url, ns);
    add_set("l2.queue_max=1");
    setenv("KHALAD_TEST_LINKS_MAX", "2", 1);
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    put_graph(ch); /* rel:E:follows: 2 links, the index is full */
    put_ok(ch, "user:other", "not linked", NULL);
    tu_redis_kill(&g_redis);
    khala_msg_t o = khalad_req(KHALA_OP_DEL, "user:other"); /* queued: the queue is full */
    int rc = call_rc(ch, &o);
    cr_assert_eq(rc, 0, "a delete queued while L2 is down: %s", khala_strerror(rc));
    static const char *const one[] = {"user:M", NULL};
    char msg[512];
    rc = put_linked(ch, "rel:M", "r", KHALA_TYPE_ENTITY_RELATIONSHIP, one, msg, sizeof(msg));
    cr_assert_eq(rc, KHALA_EQUEUE, "put: %s (%s)", khala_strerror(rc), msg);
    cr_assert(strstr(msg, "queue is full"), "message: %s", msg);
    cr_assert_eq(stat_u(ch, "relationships_linked"), 1, "the oldest is still linked");
    cr_assert_eq(stat_u(ch, "relationships_evicted"), 0);
    char lv[64];
    cr_assert_str_eq(levels_of(ch, "rel:M", lv, sizeof(lv)), "", "rel:M was written to %s", lv);
    khala__chan_close(ch);
}

/* The preload reads below L1 only what L1 does not hold: of E's two relationships, R read into
 * L1 first and R2 still below, E's load preloads R2 alone. */
Test(relationships, preload_skips_a_relationship_l1_already_holds) {
    add_set("policies.preload_relationships=true");
    khalad_start();
    khala_chan_t *ch = chan_to(khalad_sock, khalad_name);
    put_graph(ch);
    static const char *const e[] = {"user:E", NULL};
    put_ok(ch, "rel:E:likes", "[post:1]", e);
    khala__chan_close(ch);
    khalad_kill(SIGTERM);
    khala__seg_unlink(khalad_name);
    khalad_start();
    ch = chan_to(khalad_sock, khalad_name);
    get_from_l2(ch, "rel:E:follows");
    cr_assert(in_l1(ch, "rel:E:follows"), "a get from L2 brings R into L1");
    get_from_l2(ch, "user:E");
    int held = 0;
    for (int i = 0; i < 500 && !(held = in_l1(ch, "rel:E:likes")); i++)
        sleep_ms(10);
    cr_assert(held, "R2 did not reach L1 within 5 s of E's load");
    cr_assert_eq(stat_u(ch, "relationships_preloaded"), 1, "R, held already, was not read again");
    khala__chan_close(ch);
}
