/*
 * L3 on SurrealDB through a real khalad: the real engine behind the test front
 * (tests/support/surreal/front.mjs, a private front per test: tests/surreal_util.h).
 *
 * What a worker sees: a value lives on L1, L2 and L3; with L1 and L2 gone, the get is answered
 * by L3 (asynchronously: khalad's loop keeps serving everyone else while SurrealDB answers, even
 * when it hangs) and fills L2 and L1; keys full of SurrealQL syntax round-trip; deletes and
 * invalidations reach SurrealDB; a front that is down at start or dies mid-run is reported,
 * its writes queue in L3's journal and reach it when it is back; semantic look-ups are answered
 * by SurrealDB. Levels are read over the real protocol; every wait is a bounded poll.
 */
#include <criterion/criterion.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "channel.h"
#include "harness.h"
#include "khala/cache.h"
#include "khala/error.h"
#include "khalad_util.h"
#include "proto.h"
#include "segment.h"
#include "segment_create.h"
#include "surreal_util.h"

static tu_surreal_t g_s;
static char g_url_set[160];

static void setup(void) {
    khalad_env_init("l3s");
    memset(khalad_extra_sets, 0, sizeof(khalad_extra_sets));
    memset(&g_s, 0, sizeof(g_s));
}

static void teardown(void) {
    if (g_s.pid > 0)
        kill(g_s.pid, SIGCONT);
    khalad_env_fini();
    tu_surreal_stop(&g_s);
}

TestSuite(l3_surreal, .init = setup, .fini = teardown, .timeout = 180);

/* Helpers ------------------------------------------------------------------------------------ */

/* khalad's next start uses L3 on the front g_s (started now unless started already), with extra
 * --set overrides (NULL-terminated, may be NULL). */
static void use_front(const char *const *more) {
    if (!g_s.port)
        tu_surreal_start(&g_s);
    snprintf(g_url_set, sizeof(g_url_set), "l3.surrealdb_url=%s", tu_surreal_url(&g_s));
    size_t n = 0;
    khalad_extra_sets[n++] = g_url_set;
    khalad_extra_sets[n++] = "l3.backend=surrealdb";
    khalad_extra_sets[n++] = "l3.timeout_ms=1500";
    for (size_t i = 0; more && more[i]; i++)
        khalad_extra_sets[n++] = more[i];
    khalad_extra_sets[n] = NULL;
}

static int put_typed(khala_chan_t *ch, const char *key, size_t klen, const void *val, size_t vlen,
                     khala_type_t type) {
    khala_msg_t m = khalad_req(KHALA_OP_PUT, NULL), r;
    m.key = (khala_bytes_t){(const uint8_t *)key, klen};
    m.value = (khala_bytes_t){val, vlen};
    m.type = type;
    m.has |= KHALA_F_K | KHALA_F_V | KHALA_F_TYPE;
    int rc = khalad_call(ch, &m, &r, 15000);
    cr_assert_eq(rc, 0, "put: %s (%.*s)", khala_strerror(rc), (int)r.err.len,
                 r.err.ptr ? (const char *)r.err.ptr : "");
    khala__proto_msg_free(&r);
    return rc;
}

static int put_str(khala_chan_t *ch, const char *key, const char *val) {
    return put_typed(ch, key, strlen(key), val, strlen(val), KHALA_TYPE_MEMORY_ENTITY);
}

/* get over the protocol: rc; the value into val (NUL-terminated) and the level into *lvl. */
static int get_lvl(khala_chan_t *ch, const char *key, size_t klen, char *val, size_t cap,
                   khala_level_t *lvl) {
    khala_msg_t m = khalad_req(KHALA_OP_GET, NULL), r;
    m.key = (khala_bytes_t){(const uint8_t *)key, klen};
    m.has |= KHALA_F_K;
    int rc = khalad_call(ch, &m, &r, 15000);
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
static const char *levels_of(khala_chan_t *ch, const char *key, char *out, size_t cap) {
    khala_msg_t m = khalad_req(KHALA_OP_INSPECT, key), r;
    int rc = khalad_call(ch, &m, &r, 15000);
    out[0] = '\0';
    if (rc == 0)
        for (uint32_t i = 0; i < r.ndata; i++)
            if (r.data[i].key.len == 6 && memcmp(r.data[i].key.ptr, "levels", 6) == 0)
                snprintf(out, cap, "%.*s", (int)r.data[i].as.s.len,
                         (const char *)r.data[i].as.s.ptr);
    khala__proto_msg_free(&r);
    return out;
}

/* Stop khalad, remove its L2 store and L1 segment, start it again: only L3 (SurrealDB) is left. */
static void keep_only_l3(void) {
    char l2[512];
    khalad_kill(SIGTERM);
    snprintf(l2, sizeof(l2), "%s/l2", khalad_dir());
    harness_rmtree(l2);
    khala__seg_unlink(khalad_name);
    khalad_start();
}

/* Wait (bounded) until section.name of khalad's stats equals want. */
static void wait_stat(khala_chan_t *ch, const char *section, const char *name, uint64_t want) {
    uint64_t v = UINT64_MAX;
    for (int i = 0; i < 400; i++) {
        if ((v = khalad_stat(ch, section, name, 15000)) == want)
            return;
        sleep_ms(50);
    }
    cr_assert_fail("%s.%s stayed %llu, not %llu", section, name, (unsigned long long)v,
                   (unsigned long long)want);
}

/* Tests -------------------------------------------------------------------------------------- */

Test(l3_surreal, a_value_on_l3_alone_is_answered_there_and_fills_l2_and_l1) {
    use_front(NULL);
    khalad_start();
    khala_chan_t *ch = khalad_chan();
    char got[256], lv[64];
    (void)put_str(ch, "user:1", "a memory entity");
    cr_assert_str_eq(levels_of(ch, "user:1", lv, sizeof(lv)), "l1,l2,l3");
    cr_assert_eq(khalad_stat(ch, "l3", "healthy", 15000), 1);
    khala__chan_close(ch);

    keep_only_l3();
    ch = khalad_chan();
    khala_level_t lvl = KHALA_LEVEL_NONE;
    cr_assert_eq(get_lvl(ch, "user:1", 6, got, sizeof(got), &lvl), 0);
    cr_assert_str_eq(got, "a memory entity");
    cr_assert_eq(lvl, KHALA_LEVEL_L3, "answered by level %d", (int)lvl);
    cr_assert_geq(khalad_stat(ch, "l3", "async_reads", 15000), 1, "read asynchronously");
    cr_assert_str_eq(levels_of(ch, "user:1", lv, sizeof(lv)), "l1,l2,l3");
    cr_assert_eq(get_lvl(ch, "user:1", 6, got, sizeof(got), &lvl), 0);
    cr_assert_eq(lvl, KHALA_LEVEL_L1);
    /* A miss everywhere goes on to the loader, as without L3. */
    khala_msg_t m = khalad_req(KHALA_OP_GET, "never"), r;
    m.loader = true;
    m.has |= KHALA_F_LOADER;
    cr_assert_eq(khalad_call(ch, &m, &r, 15000), KHALA_ENOTFOUND);
    cr_assert(r.load, "told to load after L3 missed");
    khala__proto_msg_free(&r);
    khala_msg_t f = khalad_req(KHALA_OP_FILL_FAIL, "never");
    cr_assert_eq(khalad_call(ch, &f, &r, 15000), 0);
    khala__proto_msg_free(&r);
    khala__chan_close(ch);
}

Test(l3_surreal, keys_full_of_surrealql_round_trip_through_khalad) {
    use_front(NULL);
    khalad_start();
    khala_chan_t *ch = khalad_chan();
    static const char *const keys[] = {
        "x'; REMOVE TABLE cache_table; --",    "\"quoted\" `backtick` <angle> \u27e8id\u27e9",
        "$k; DELETE cache_table RETURN NONE;", "a:b:c -- comment /* c */",
        "type::record('cache_table', 'x')",
    };
    char got[256], val[64];
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        snprintf(val, sizeof(val), "value %zu", i);
        (void)put_typed(ch, keys[i], strlen(keys[i]), val, strlen(val), KHALA_TYPE_MEMORY_ENTITY);
    }
    khala__chan_close(ch);
    keep_only_l3();
    ch = khalad_chan();
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        khala_level_t lvl;
        snprintf(val, sizeof(val), "value %zu", i);
        cr_assert_eq(get_lvl(ch, keys[i], strlen(keys[i]), got, sizeof(got), &lvl), 0, "%s",
                     keys[i]);
        cr_assert_str_eq(got, val, "%s", keys[i]);
        cr_assert_eq(lvl, KHALA_LEVEL_L3, "%s", keys[i]);
    }
    khala__chan_close(ch);
}

Test(l3_surreal, deletes_and_invalidations_reach_surrealdb) {
    use_front(NULL);
    khalad_start();
    khala_chan_t *ch = khalad_chan();
    (void)put_str(ch, "gone", "a");
    (void)put_str(ch, "p:1", "b");
    (void)put_str(ch, "kept", "c");
    khala_msg_t m = khalad_req(KHALA_OP_DEL, "gone"), r;
    cr_assert_eq(khalad_call(ch, &m, &r, 15000), 0);
    khala__proto_msg_free(&r);
    m = khalad_req(KHALA_OP_INVALIDATE, NULL);
    m.by = KHALA_BY_PREFIX;
    m.prefix = (khala_bytes_t){(const uint8_t *)"p:", 2};
    m.has |= KHALA_F_BY | KHALA_F_PREFIX;
    cr_assert_eq(khalad_call(ch, &m, &r, 15000), 0);
    khala__proto_msg_free(&r);
    wait_stat(ch, "l3", "queued_now", 0); /* an invalidation on SurrealDB runs in steps */
    khala__chan_close(ch);
    keep_only_l3();
    ch = khalad_chan();
    char got[64];
    khala_level_t lvl;
    cr_assert_eq(get_lvl(ch, "gone", 4, got, sizeof(got), &lvl), KHALA_ENOTFOUND);
    cr_assert_eq(get_lvl(ch, "p:1", 3, got, sizeof(got), &lvl), KHALA_ENOTFOUND);
    cr_assert_eq(get_lvl(ch, "kept", 4, got, sizeof(got), &lvl), 0);
    cr_assert_eq(lvl, KHALA_LEVEL_L3);
    khala__chan_close(ch);
}

/* The front hangs (SIGSTOP) while a get waits on it: another client's reads are answered
 * meanwhile (the get waiting on L3 holds up nobody), and the waiting get is answered once the
 * front runs again (or fails over to "not found" when its request times out). */
Test(l3_surreal, a_hung_surrealdb_holds_up_no_other_client) {
    use_front(NULL);
    khalad_start();
    khala_chan_t *ch = khalad_chan();
    (void)put_str(ch, "deep", "from L3");
    khala__chan_close(ch);
    keep_only_l3();
    ch = khalad_chan();
    (void)put_str(ch, "hot", "from L1"); /* written while the front runs */
    kill(g_s.pid, SIGSTOP);

    /* Client A (a child process) asks for the key only L3 holds and reports on a pipe. */
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0) {
        close(fds[0]);
        khala_chan_t *a = NULL;
        char err[256], buf[64] = "";
        if (khala__chan_open(khalad_sock, khalad_name, 15000, &a, err, sizeof(err)) != 0)
            _exit(2);
        khala_msg_t m = khalad_req(KHALA_OP_GET, "deep"), r;
        khala__proto_msg_init(&r);
        int rc = khala__chan_call(a, &m, &r, 30000, err, sizeof(err));
        if (rc == 0)
            rc = r.rc;
        int n = snprintf(buf, sizeof(buf), "%d %d %.*s", rc, rc == 0 ? (int)r.lvl : 0,
                         rc == 0 ? (int)r.value.len : 0, rc == 0 ? (const char *)r.value.ptr : "");
        if (write(fds[1], buf, (size_t)n) != n)
            _exit(3);
        _exit(0);
    }
    close(fds[1]);
    /* Wait until khalad has sent A's read on to SurrealDB. */
    for (int i = 0; i < 200 && khalad_stat(ch, "l3", "async_pending", 15000) != 1; i++)
        sleep_ms(25);
    cr_assert_eq(khalad_stat(ch, "l3", "async_pending", 15000), 1, "A's read is pending");

    /* Client B is served meanwhile, through khalad. */
    char got[64];
    khala_level_t lvl;
    for (int i = 0; i < 20; i++) {
        cr_assert_eq(get_lvl(ch, "hot", 3, got, sizeof(got), &lvl), 0);
        cr_assert_str_eq(got, "from L1");
    }
    struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
    cr_assert_eq(poll(&pfd, 1, 0), 0, "A was answered while SurrealDB was stopped");

    kill(g_s.pid, SIGCONT);
    char buf[128] = "";
    cr_assert_eq(poll(&pfd, 1, 30000), 1, "A is answered once SurrealDB runs again");
    ssize_t n = read(fds[0], buf, sizeof(buf) - 1);
    close(fds[0]);
    int status = 0;
    waitpid(child, &status, 0);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: exit %d, signal %d",
              WIFEXITED(status) ? WEXITSTATUS(status) : -1,
              WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    cr_assert_gt(n, 0);
    buf[n] = '\0';
    /* The front answers before the request times out, or A hears "not found" (then it loads). */
    char want[64];
    snprintf(want, sizeof(want), "0 %d from L3", (int)KHALA_LEVEL_L3);
    cr_assert(strcmp(buf, want) == 0 || atoi(buf) == KHALA_ENOTFOUND, "A got: %s", buf);
    khala__chan_close(ch);
}

/* SurrealDB down at start: khalad says so and serves; writes are acknowledged from L3's journal
 * and reach SurrealDB once it is up. Then it dies mid-run: the same. Nothing acknowledged is
 * lost at L3. */
Test(l3_surreal, writes_while_surrealdb_is_down_reach_it_when_it_is_back) {
    tu_surreal_start(&g_s);
    tu_surreal_kill(&g_s); /* its port and data directory are kept */
    use_front(NULL);
    khalad_start();
    khala_chan_t *ch = khalad_chan();
    cr_assert_eq(khalad_stat(ch, "l3", "healthy", 15000), 0);
    char key[32];
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof(key), "down:%d", i);
        (void)put_str(ch, key, "written while L3 was down");
    }
    cr_assert_geq(khalad_stat(ch, "l3", "queued_now", 15000), 50);
    tu_surreal_start(&g_s);
    wait_stat(ch, "l3", "queued_now", 0);
    cr_assert_eq(khalad_stat(ch, "l3", "healthy", 15000), 1);
    /* It dies again, mid-run. */
    tu_surreal_kill(&g_s);
    for (int i = 50; i < 100; i++) {
        snprintf(key, sizeof(key), "down:%d", i);
        (void)put_str(ch, key, "written while L3 was down");
    }
    tu_surreal_start(&g_s);
    wait_stat(ch, "l3", "queued_now", 0);
    khala__chan_close(ch);

    keep_only_l3();
    ch = khalad_chan();
    char got[64];
    khala_level_t lvl;
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), "down:%d", i);
        cr_assert_eq(get_lvl(ch, key, strlen(key), got, sizeof(got), &lvl), 0, "%s lost", key);
        cr_assert_eq(lvl, KHALA_LEVEL_L3);
    }
    khala__chan_close(ch);
}

Test(l3_surreal, an_unreachable_surrealdb_at_start_is_said) {
    /* khalad on a URL nobody listens on, its stderr (the log) in a file. */
    int port = harness_free_port();
    cr_assert_gt(port, 0);
    char url[96], sock_set[200], log[512];
    snprintf(url, sizeof(url), "l3.surrealdb_url=http://root:root@127.0.0.1:%d", port);
    snprintf(sock_set, sizeof(sock_set), "cache.socket=%s", khalad_sock);
    snprintf(log, sizeof(log), "%s/khalad.log", khalad_dir());
    char l2[600];
    snprintf(l2, sizeof(l2), "l2.path=%s/l2", khalad_dir());
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        FILE *f = freopen(log, "w", stderr);
        (void)f;
        execl(KHALAD_PATH, KHALAD_PATH, "--foreground", "--name", khalad_name, "--set", sock_set,
              "--set", l2, "--set", "l1.max_memory_mb=16", "--set", url, "--set",
              "l3.backend=surrealdb", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200 && access(khalad_sock, F_OK) != 0; i++)
        sleep_ms(25);
    khala_chan_t *ch = khalad_chan();
    cr_assert_eq(khalad_stat(ch, "l3", "healthy", 15000), 0);
    (void)put_str(ch, "k", "acknowledged from L3's journal");
    cr_assert_eq(khalad_stat(ch, "l3", "queued_now", 15000), 1);
    khala__chan_close(ch);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    khala__seg_unlink(khalad_name);
    FILE *f = fopen(log, "r");
    cr_assert_not_null(f);
    static char text[65536];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    text[n] = '\0';
    fclose(f);
    cr_assert(strstr(text, "L3 is not reachable at start"), "%s", text);
    cr_assert(strstr(text, "surrealdb"), "the backend is named: %s", text);
    cr_assert_null(strstr(text, "root:root"), "the password is not logged: %s", text);
}

Test(l3_surreal, semantic_look_ups_are_answered_by_surrealdb) {
    use_front(NULL);
    khalad_start();
    khala_chan_t *ch = khalad_chan();
    float a[8] = {1, 0, 0, 0, 0, 0, 0, 0}, b[8] = {0.99f, 0.1f, 0, 0, 0, 0, 0, 0},
          far[8] = {0, 0, 0, 0, 0, 0, 0, 1};
    (void)put_typed(ch, "emb:a", 5, a, sizeof(a), KHALA_TYPE_EMBEDDING);
    (void)put_typed(ch, "emb:far", 7, far, sizeof(far), KHALA_TYPE_EMBEDDING);
    wait_stat(ch, "l3", "queued_now", 0); /* embeddings are write-behind by default */
    khala_msg_t m = khalad_req(KHALA_OP_SIMILAR, NULL), r;
    m.value = (khala_bytes_t){(const uint8_t *)b, sizeof(b)};
    m.count = 5;
    m.has |= KHALA_F_V | KHALA_F_COUNT;
    cr_assert_eq(khalad_call(ch, &m, &r, 15000), 0, "%.*s", (int)r.err.len,
                 r.err.ptr ? (const char *)r.err.ptr : "");
    cr_assert_eq(r.nmatches, 1, "only the near duplicate is above 0.9");
    cr_assert_eq(r.matches[0].key.len, 5);
    cr_assert_eq(memcmp(r.matches[0].key.ptr, "emb:a", 5), 0);
    cr_assert_gt(r.matches[0].sim, 0.99);
    khala__proto_msg_free(&r);
    /* Deleted, it never comes back. */
    khala_msg_t d = khalad_req(KHALA_OP_DEL, "emb:a");
    cr_assert_eq(khalad_call(ch, &d, &r, 15000), 0);
    khala__proto_msg_free(&r);
    m.count = 5;
    cr_assert_eq(khalad_call(ch, &m, &r, 15000), 0);
    cr_assert_eq(r.nmatches, 0);
    khala__proto_msg_free(&r);
    khala__chan_close(ch);
}

/* A caller that goes away while its read waits on a hung SurrealDB: the read completes later
 * with nobody to answer, khalad keeps serving, and the next get of the key is answered (and
 * the key, found then, is promoted: the flight was not left behind). */
Test(l3_surreal, a_caller_that_leaves_while_its_read_waits_upsets_nothing) {
    use_front(NULL);
    khalad_start();
    khala_chan_t *ch = khalad_chan();
    (void)put_str(ch, "deep", "from L3");
    khala__chan_close(ch);
    keep_only_l3();
    ch = khalad_chan();
    kill(g_s.pid, SIGSTOP);
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0) { /* asks, then is killed before the answer */
        khala_chan_t *a = NULL;
        char err[256];
        if (khala__chan_open(khalad_sock, khalad_name, 15000, &a, err, sizeof(err)) != 0)
            _exit(2);
        khala_msg_t m = khalad_req(KHALA_OP_GET, "deep"), r;
        khala__proto_msg_init(&r);
        (void)khala__chan_call(a, &m, &r, 60000, err, sizeof(err));
        _exit(0);
    }
    for (int i = 0; i < 200 && khalad_stat(ch, "l3", "async_pending", 15000) != 1; i++)
        sleep_ms(25);
    cr_assert_eq(khalad_stat(ch, "l3", "async_pending", 15000), 1, "the child's read is pending");
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    kill(g_s.pid, SIGCONT);
    for (int i = 0; i < 400 && khalad_stat(ch, "l3", "async_pending", 15000) != 0; i++)
        sleep_ms(25);
    cr_assert_eq(khalad_stat(ch, "l3", "async_pending", 15000), 0, "the read completed");
    char got[64];
    khala_level_t lvl;
    int rc = KHALA_ENOTFOUND;
    for (int i = 0; i < 100 && (rc = get_lvl(ch, "deep", 4, got, sizeof(got), &lvl)) != 0; i++)
        sleep_ms(50); /* the level may be marked down by the timed-out read: back soon */
    cr_assert_eq(rc, 0);
    cr_assert_str_eq(got, "from L3");
    cr_assert(lvl == KHALA_LEVEL_L1 || lvl == KHALA_LEVEL_L3, "level %d", (int)lvl);
    khala__chan_close(ch);
}

/* SurrealDB dies while khalad thinks it is up: the read that finds out is a miss (the caller
 * with a loader is told to load), L3 is marked down, and reads skip it until it is back. */
Test(l3_surreal, a_dead_surrealdb_turns_reads_into_misses_and_is_marked_down) {
    use_front(NULL);
    khalad_start();
    khala_chan_t *ch = khalad_chan();
    (void)put_str(ch, "deep", "from L3");
    khala__chan_close(ch);
    keep_only_l3();
    ch = khalad_chan();
    tu_surreal_kill(&g_s);
    khala_msg_t m = khalad_req(KHALA_OP_GET, "deep"), r;
    m.loader = true;
    m.has |= KHALA_F_LOADER;
    cr_assert_eq(khalad_call(ch, &m, &r, 15000), KHALA_ENOTFOUND);
    cr_assert(r.load, "told to load: L3 could not answer");
    khala__proto_msg_free(&r);
    khala_msg_t f = khalad_req(KHALA_OP_FILL_FAIL, "deep");
    cr_assert_eq(khalad_call(ch, &f, &r, 15000), 0);
    khala__proto_msg_free(&r);
    cr_assert_eq(khalad_stat(ch, "l3", "healthy", 15000), 0, "L3 marked down");
    cr_assert_geq(khalad_stat(ch, "l3", "outages", 15000), 1);
    tu_surreal_start(&g_s);
    wait_stat(ch, "l3", "healthy", 1);
    char got[64];
    khala_level_t lvl;
    cr_assert_eq(get_lvl(ch, "deep", 4, got, sizeof(got), &lvl), 0);
    cr_assert_str_eq(got, "from L3");
    cr_assert_eq(lvl, KHALA_LEVEL_L3);
    khala__chan_close(ch);
}
