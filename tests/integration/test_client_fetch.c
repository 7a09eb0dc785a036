/*
 * The split get and the worker's admin calls against a real khalad (lib/client_fetch.c,
 * lib/client_admin.c): khala_cache_get_l1, khala_cache_fetch, khala_cache_fetch_or_load,
 * khala_cache_warm*, khala_cache_daemon_stats. Each test starts its own khalad (khalad_util.h);
 * single-flight uses real forked workers. No test asserts on timing.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "khala/cache.h"
#include "khalad_util.h"

static void setup(void) {
    khalad_env_init("kf");
    khalad_start();
}

TestSuite(client_fetch, .init = setup, .fini = khalad_env_fini, .timeout = 60);

/* Helpers ----------------------------------------------------------------------------------- */

static khala_cache_t *open_cache(void) {
    khala_cache_options_t o;
    khala_cache_options_init(&o);
    o.socket_path = khalad_sock;
    khala_cache_t *c = NULL;
    cr_assert_eq(khala_cache_open(khalad_name, &o, &c), 0, "%s", khala_cache_errmsg(NULL));
    return c;
}

static uint64_t put_str(khala_cache_t *c, const char *key, const char *val, khala_mode_t mode) {
    khala_put_options_t po;
    khala_put_options_init(&po);
    po.mode = mode;
    po.ttl_ms = 60000;
    uint64_t ver = 0;
    int rc = khala_cache_put(c, key, strlen(key), val, strlen(val), &po, &ver);
    cr_assert_eq(rc, 0, "put %s: %s", key, khala_cache_errmsg(c));
    return ver;
}

/* What a sink received. */
typedef struct got {
    int calls;
    char value[64];
    size_t len;
    khala_meta_t meta;
    int rc; /* what the sink returns */
} got_t;

static int sink(void *arg, const void *val, size_t len, const khala_meta_t *meta) {
    got_t *g = arg;
    g->calls++;
    g->len = len;
    g->meta = *meta;
    memcpy(g->value, val, len < sizeof(g->value) - 1 ? len : sizeof(g->value) - 1);
    g->value[len < sizeof(g->value) - 1 ? len : sizeof(g->value) - 1] = '\0';
    return g->rc;
}

/* Loader state, shared with forked workers. */
typedef struct loads {
    atomic_int calls;
    int rc;
    char *value; /* owned by the loader's process; big values allowed */
    size_t len;
} loads_t;

static loads_t *loads_new(size_t len, char fill) {
    loads_t *l = mmap(NULL, sizeof(*l), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(l, MAP_FAILED);
    atomic_init(&l->calls, 0);
    l->rc = 0;
    l->value = malloc(len ? len : 1);
    cr_assert_not_null(l->value);
    memset(l->value, fill, len);
    l->len = len;
    return l;
}

/* Free what loads_new made (after every worker using it has been reaped). */
static void loads_free(loads_t *l) {
    free(l->value);
    munmap(l, sizeof(*l));
}

static int load_ref(void *arg, const void *key, size_t klen, const void **val, size_t *len) {
    loads_t *l = arg;
    (void)key;
    (void)klen;
    atomic_fetch_add(&l->calls, 1);
    sleep_ms(50); /* long enough for the other workers to queue behind this load */
    if (l->rc)
        return l->rc;
    *val = l->value;
    *len = l->len;
    return 0;
}

static int reap(pid_t pid) {
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st);
}

/* get_l1 ------------------------------------------------------------------------------------ */

Test(client_fetch, get_l1_reads_l1_and_never_asks_khalad) {
    khala_cache_t *c = open_cache();
    put_str(c, "a", "alpha", KHALA_MODE_THROUGH);
    char buf[16];
    size_t len = 0;
    cr_assert_eq(khala_cache_get_l1(c, "a", 1, buf, sizeof(buf), &len, NULL), 0);
    cr_assert_eq(len, 5);
    cr_assert_eq(memcmp(buf, "alpha", 5), 0);
    khala_meta_t meta = {0};
    cr_assert_eq(khala_cache_get_l1(c, "a", 1, buf, 2, &len, &meta), -ERANGE);
    cr_assert_eq(len, 5);
    cr_assert_eq(meta.level, KHALA_LEVEL_L1);
    uint64_t ver = meta.version;
    cr_assert_gt(ver, 0);
    memset(&meta, 0, sizeof(meta));
    cr_assert_eq(khala_cache_get_l1(c, "a", 1, buf, sizeof(buf), &len, &meta), 0);
    cr_assert_eq(meta.level, KHALA_LEVEL_L1);
    cr_assert_eq(meta.version, ver);
    cr_assert_eq(meta.type, KHALA_TYPE_MEMORY_ENTITY);
    cr_assert(meta.ttl_left_ms > 0 && meta.ttl_left_ms <= 60000, "%lld",
              (long long)meta.ttl_left_ms);
    cr_assert_eq(khala_cache_get_l1(c, "zz", 2, buf, sizeof(buf), &len, NULL), KHALA_ENOTFOUND);
    cr_assert_eq(khala_cache_get_l1(c, "", 0, buf, sizeof(buf), &len, NULL), KHALA_EKEY);
    cr_assert_eq(khala_read_begin(c), 0);
    cr_assert_eq(khala_cache_get_l1(c, "a", 1, buf, sizeof(buf), &len, NULL), KHALA_ESECTION);
    khala_read_end(c);
    /* With khalad gone, an L1 hit still answers and a miss is only a miss. */
    khalad_kill(SIGKILL);
    cr_assert_eq(khala_cache_get_l1(c, "a", 1, buf, sizeof(buf), &len, NULL), 0);
    cr_assert_eq(khala_cache_get_l1(c, "b", 1, buf, sizeof(buf), &len, NULL), KHALA_ENOTFOUND);
    khala_cache_close(c);
}

/* fetch ------------------------------------------------------------------------------------- */

Test(client_fetch, fetch_answers_with_the_level_version_and_ttl) {
    khala_cache_t *c = open_cache();
    uint64_t ver = put_str(c, "k", "value", KHALA_MODE_THROUGH);
    got_t g = {0};
    cr_assert_eq(khala_cache_fetch(c, "k", 1, sink, &g), 0, "%s", khala_cache_errmsg(c));
    cr_assert_eq(g.calls, 1);
    cr_assert_str_eq(g.value, "value");
    cr_assert_eq(g.meta.level, KHALA_LEVEL_L1);
    cr_assert_eq(g.meta.version, ver);
    cr_assert(g.meta.ttl_left_ms > 0 && g.meta.ttl_left_ms <= 60000, "%lld",
              (long long)g.meta.ttl_left_ms);
    cr_assert_eq(g.meta.type, KHALA_TYPE_MEMORY_ENTITY);
    khala_cache_close(c);
}

Test(client_fetch, fetch_of_a_value_larger_than_any_buffer_is_one_call) {
    khala_cache_t *c = open_cache();
    size_t n = 900 * 1024;
    char *big = malloc(n);
    cr_assert_not_null(big);
    memset(big, 'b', n);
    cr_assert_eq(khala_cache_put(c, "big", 3, big, n, NULL, NULL), 0, "%s", khala_cache_errmsg(c));
    got_t g = {0};
    cr_assert_eq(khala_cache_fetch(c, "big", 3, sink, &g), 0);
    cr_assert_eq(g.len, n);
    cr_assert_eq(g.calls, 1);
    free(big);
    khala_cache_close(c);
}

Test(client_fetch, fetch_miss_bad_arguments_sink_error_and_khalad_down) {
    khala_cache_t *c = open_cache();
    got_t g = {0};
    cr_assert_eq(khala_cache_fetch(c, "none", 4, sink, &g), KHALA_ENOTFOUND);
    cr_assert_eq(g.calls, 0);
    cr_assert_eq(khala_cache_fetch(c, "", 0, sink, &g), KHALA_EKEY);
    cr_assert_eq(khala_cache_fetch(c, "k", 1, NULL, &g), -EINVAL);
    put_str(c, "k", "v", KHALA_MODE_DEFAULT);
    g.rc = -ENOMEM;
    cr_assert_eq(khala_cache_fetch(c, "k", 1, sink, &g), -ENOMEM);
    khalad_kill(SIGKILL);
    cr_assert_eq(khala_cache_fetch(c, "k", 1, sink, &g), KHALA_EDAEMON);
    cr_assert(strstr(khala_cache_errmsg(c), khalad_sock) != NULL, "%s", khala_cache_errmsg(c));
    khala_cache_close(c);
}

/* fetch_or_load ----------------------------------------------------------------------------- */

Test(client_fetch, fetch_or_load_loads_once_across_forked_workers) {
    loads_t *l = loads_new(300 * 1024, 'L'); /* any size: no buffer to outgrow */
    enum { WORKERS = 6 };
    pid_t pids[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        pids[i] = fork();
        cr_assert_geq(pids[i], 0);
        if (pids[i] == 0) {
            khala_cache_t *c = open_cache();
            got_t g = {0};
            int rc = khala_cache_fetch_or_load(c, "sf", 2, load_ref, l, sink, &g,
                                               KHALA_TYPE_EMBEDDING, 0);
            int ok = rc == 0 && g.calls == 1 && g.len == l->len && g.value[0] == 'L' &&
                     (g.meta.level == KHALA_LEVEL_LOADER || g.meta.level == KHALA_LEVEL_L1);
            khala_cache_close(c);
            _exit(ok ? 0 : 1);
        }
    }
    for (int i = 0; i < WORKERS; i++)
        cr_assert_eq(reap(pids[i]), 0, "worker %d", i);
    cr_assert_eq(atomic_load(&l->calls), 1);
    khala_cache_t *c = open_cache();
    got_t g = {0};
    cr_assert_eq(khala_cache_fetch(c, "sf", 2, sink, &g), 0);
    cr_assert_eq(g.meta.type, KHALA_TYPE_EMBEDDING);
    cr_assert_eq(g.len, l->len);
    loads_free(l);
    khala_cache_close(c);
}

Test(client_fetch, fetch_or_load_leader_sees_loader_level_and_the_fill_version) {
    khala_cache_t *c = open_cache();
    loads_t *l = loads_new(5, 'v');
    got_t g = {0};
    cr_assert_eq(khala_cache_fetch_or_load(c, "lv", 2, load_ref, l, sink, &g,
                                           KHALA_TYPE_SEARCH_RESULT, 30000),
                 0, "%s", khala_cache_errmsg(c));
    cr_assert_eq(g.meta.level, KHALA_LEVEL_LOADER);
    cr_assert_str_eq(g.value, "vvvvv");
    got_t again = {0};
    cr_assert_eq(khala_cache_fetch(c, "lv", 2, sink, &again), 0);
    cr_assert_eq(again.meta.version, g.meta.version);
    cr_assert_eq(again.meta.type, KHALA_TYPE_SEARCH_RESULT);
    loads_free(l);
    khala_cache_close(c);
}

Test(client_fetch, fetch_or_load_failure_is_returned_and_the_next_call_loads) {
    khala_cache_t *c = open_cache();
    loads_t *l = loads_new(3, 'x');
    l->rc = KHALA_ENOTFOUND;
    got_t g = {0};
    cr_assert_eq(
        khala_cache_fetch_or_load(c, "f", 1, load_ref, l, sink, &g, KHALA_TYPE_MEMORY_ENTITY, 0),
        KHALA_ENOTFOUND);
    cr_assert_eq(g.calls, 0);
    l->rc = -ECANCELED;
    cr_assert_eq(
        khala_cache_fetch_or_load(c, "f", 1, load_ref, l, sink, &g, KHALA_TYPE_MEMORY_ENTITY, 0),
        -ECANCELED);
    l->rc = 0;
    cr_assert_eq(
        khala_cache_fetch_or_load(c, "f", 1, load_ref, l, sink, &g, KHALA_TYPE_MEMORY_ENTITY, 0),
        0);
    cr_assert_eq(atomic_load(&l->calls), 3);
    loads_free(l);
    khala_cache_close(c);
}

Test(client_fetch, fetch_or_load_value_too_big_to_cache_is_still_handed_over) {
    khala_cache_t *c = open_cache();
    loads_t *l = loads_new(1536 * 1024, 'h'); /* above khalad's 1 MiB largest value */
    got_t g = {0};
    cr_assert_eq(
        khala_cache_fetch_or_load(c, "huge", 4, load_ref, l, sink, &g, KHALA_TYPE_MEMORY_ENTITY, 0),
        0, "%s", khala_cache_errmsg(c));
    cr_assert_eq(g.len, l->len);
    cr_assert_eq(g.meta.version, 0);
    got_t none = {0};
    cr_assert_eq(khala_cache_fetch(c, "huge", 4, sink, &none), KHALA_ENOTFOUND);
    loads_free(l);
    khala_cache_close(c);
}

Test(client_fetch, fetch_or_load_bad_arguments_and_khalad_down) {
    khala_cache_t *c = open_cache();
    loads_t *l = loads_new(2, 'd');
    got_t g = {0};
    cr_assert_eq(khala_cache_fetch_or_load(c, "", 0, load_ref, l, sink, &g, 0, 0), KHALA_EKEY);
    cr_assert_eq(khala_cache_fetch_or_load(c, "k", 1, NULL, l, sink, &g, 0, 0), -EINVAL);
    cr_assert_eq(khala_cache_fetch_or_load(c, "k", 1, load_ref, l, NULL, &g, 0, 0), -EINVAL);
    cr_assert_eq(khala_cache_fetch_or_load(c, "k", 1, load_ref, l, sink, &g, KHALA_TYPE_COUNT, 0),
                 -EINVAL);
    cr_assert_eq(
        khala_cache_fetch_or_load(c, "k", 1, load_ref, l, sink, &g, 0, KHALA_TTL_MAX_MS + 1),
        KHALA_EINVAL);
    cr_assert_eq(atomic_load(&l->calls), 0);
    khalad_kill(SIGKILL);
    cr_assert_eq(khala_cache_fetch_or_load(c, "k", 1, load_ref, l, sink, &g, 0, 0), 0);
    cr_assert_eq(g.meta.level, KHALA_LEVEL_LOADER);
    cr_assert_eq(g.meta.version, 0); /* loaded directly, not cached */
    cr_assert_str_eq(g.value, "dd");
    loads_free(l);
    khala_cache_close(c);
}

/* Loaders with bugs: a positive return, and a length at NULL. */
static int load_positive(void *arg, const void *key, size_t klen, const void **val, size_t *len) {
    (void)arg, (void)key, (void)klen, (void)val, (void)len;
    return 1;
}

static int load_null(void *arg, const void *key, size_t klen, const void **val, size_t *len) {
    (void)arg, (void)key, (void)klen;
    *val = NULL;
    *len = 5;
    return 0;
}

Test(client_fetch, a_loader_bug_and_a_long_key_are_named) {
    khala_cache_t *c = open_cache();
    got_t g = {0};
    char key[KHALA_KEY_MAX + 1];
    memset(key, 'k', sizeof(key));
    cr_assert_eq(khala_cache_fetch(c, key, sizeof(key), sink, &g), KHALA_EKEY);
    cr_assert(strstr(khala_cache_errmsg(c), "251 bytes") != NULL, "%s", khala_cache_errmsg(c));
    cr_assert_eq(khala_cache_fetch_or_load(c, "p", 1, load_positive, NULL, sink, &g, 0, 0),
                 -EINVAL);
    cr_assert(strstr(khala_cache_errmsg(c), "returned 1") != NULL, "%s", khala_cache_errmsg(c));
    cr_assert_eq(khala_cache_fetch_or_load(c, "n", 1, load_null, NULL, sink, &g, 0, 0), -EINVAL);
    cr_assert(strstr(khala_cache_errmsg(c), "at NULL") != NULL, "%s", khala_cache_errmsg(c));
    cr_assert_eq(g.calls, 0, "no value reached the sink");
    /* The failed loads were not cached: the key is still a miss, for this worker and others. */
    cr_assert_eq(khala_cache_fetch(c, "p", 1, sink, &g), KHALA_ENOTFOUND);
    khala_cache_close(c);
}

/* warm and stats ---------------------------------------------------------------------------- */

Test(client_fetch, warm_with_khalad_down_is_edaemon_naming_the_socket) {
    khala_cache_t *c = open_cache();
    khalad_kill(SIGKILL);
    const void *keys[] = {"w:1"};
    const size_t klens[] = {3};
    uint64_t n = 7;
    cr_assert_eq(khala_cache_warm(c, keys, klens, 1, &n), KHALA_EDAEMON);
    cr_assert(strstr(khala_cache_errmsg(c), khalad_sock) != NULL, "%s", khala_cache_errmsg(c));
    cr_assert_eq(khala_cache_warm_prefix(c, "w:", 2, &n), KHALA_EDAEMON);
    cr_assert_eq(khala_cache_warm_type(c, KHALA_TYPE_EMBEDDING, &n), KHALA_EDAEMON);
    cr_assert_eq(n, 7, "count untouched on failure");
    khala_cache_close(c);
}

/* A new khalad with another L1 size: L1 starts empty, the disk L2 keeps what it had. */
static void restart_with_empty_l1(void) {
    khalad_kill(SIGTERM);
    khalad_extra_sets[0] = "l1.max_memory_mb=24";
    khalad_start();
}

Test(client_fetch, warm_by_keys_prefix_and_type_fills_l1_from_l2) {
    khala_cache_t *c = open_cache();
    put_str(c, "w:1", "1", KHALA_MODE_THROUGH);
    put_str(c, "w:2", "2", KHALA_MODE_THROUGH);
    put_str(c, "x:1", "3", KHALA_MODE_THROUGH);
    restart_with_empty_l1();
    char buf[8];
    size_t len;
    cr_assert_eq(khala_cache_get_l1(c, "w:1", 3, buf, sizeof(buf), &len, NULL), KHALA_ENOTFOUND);
    const void *keys[] = {"w:1", "nope"};
    const size_t klens[] = {3, 4};
    uint64_t n = 99;
    cr_assert_eq(khala_cache_warm(c, keys, klens, 2, &n), 0, "%s", khala_cache_errmsg(c));
    cr_assert_eq(n, 1);
    cr_assert_eq(khala_cache_get_l1(c, "w:1", 3, buf, sizeof(buf), &len, NULL), 0);
    cr_assert_eq(khala_cache_warm_prefix(c, "w:", 2, &n), 0);
    cr_assert_geq(n, 1);
    cr_assert_eq(khala_cache_get_l1(c, "w:2", 3, buf, sizeof(buf), &len, NULL), 0);
    cr_assert_eq(khala_cache_warm_type(c, KHALA_TYPE_MEMORY_ENTITY, &n), 0);
    cr_assert_eq(khala_cache_get_l1(c, "x:1", 3, buf, sizeof(buf), &len, NULL), 0);
    const size_t bad[] = {3, 0};
    cr_assert_eq(khala_cache_warm(c, keys, bad, 2, &n), KHALA_EKEY);
    cr_assert_eq(khala_cache_warm_prefix(c, "", 0, &n), KHALA_EKEY);
    cr_assert_eq(khala_cache_warm_type(c, KHALA_TYPE_COUNT, &n), -EINVAL);
    khala_cache_close(c);
}

/* The stat called name in the map m, or NULL. */
static const khala_stat_t *stat_find(const khala_stat_t *m, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(m[i].name, name) == 0)
            return &m[i];
    return NULL;
}

Test(client_fetch, daemon_stats_copies_khalads_sections) {
    khala_cache_t *c = open_cache();
    put_str(c, "s", "1", KHALA_MODE_DEFAULT);
    khala_stat_t *st = NULL;
    size_t n = 0;
    cr_assert_eq(khala_cache_daemon_stats(c, &st, &n), 0, "%s", khala_cache_errmsg(c));
    const khala_stat_t *l1 = stat_find(st, n, "l1");
    cr_assert_not_null(l1);
    cr_assert_eq(l1->kind, KHALA_STAT_MAP);
    const khala_stat_t *items = stat_find(l1->v.map.items, l1->v.map.n, "items");
    cr_assert_not_null(items);
    cr_assert_eq(items->kind, KHALA_STAT_UINT);
    cr_assert_eq(items->v.u, 1);
    const khala_stat_t *l2 = stat_find(st, n, "l2");
    cr_assert_not_null(l2);
    const khala_stat_t *backend = stat_find(l2->v.map.items, l2->v.map.n, "backend");
    cr_assert_not_null(backend);
    cr_assert_eq(backend->kind, KHALA_STAT_STR);
    cr_assert_str_eq(backend->v.str.s, "disk");
    khala_stats_free(st);
    khala_stats_free(NULL);
    khalad_kill(SIGKILL);
    st = NULL;
    cr_assert_eq(khala_cache_daemon_stats(c, &st, &n), KHALA_EDAEMON);
    cr_assert_null(st);
    khala_cache_close(c);
}
