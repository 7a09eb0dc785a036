/*
 * The worker library against a real khalad: the miss path, get_or_load's single-flight across
 * processes and threads, writes and invalidations, and what a worker sees while khalad is killed
 * and restarted. Each test starts its own khalad (khalad_util.h); workers are real forked
 * processes and real threads. No test asserts on timing: waits are bounded loops on conditions.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
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
    khalad_env_init("kc");
    khalad_start();
}

TestSuite(client_daemon, .init = setup, .fini = khalad_env_fini, .timeout = 60);

/* Helpers ----------------------------------------------------------------------------------- */

static khala_cache_t *open_cache(void) {
    khala_cache_options_t o;
    khala_cache_options_init(&o);
    o.socket_path = khalad_sock;
    khala_cache_t *c = NULL;
    cr_assert_eq(khala_cache_open(khalad_name, &o, &c), 0, "%s", khala_cache_errmsg(NULL));
    return c;
}

static int put_str(khala_cache_t *c, const char *key, const char *val, khala_type_t type,
                   uint64_t *ver) {
    khala_put_options_t po;
    khala_put_options_init(&po);
    po.type = type;
    return khala_cache_put(c, key, strlen(key), val, strlen(val), &po, ver);
}

/* get into a NUL-terminated string. */
static int get_str(khala_cache_t *c, const char *key, char *out, size_t cap) {
    size_t len = 0;
    int rc = khala_cache_get(c, key, strlen(key), out, cap - 1, &len);
    if (rc == 0)
        out[len] = '\0';
    return rc;
}

/* Loader state, in a shared anonymous mapping so that forked workers count into one place. */
typedef struct loads {
    atomic_int calls; /* loader invocations, across processes */
    int delay_ms;     /* how long a load takes */
    int rc;           /* what the loader returns */
    char value[32];   /* what it loads */
} loads_t;

static loads_t *loads_new(const char *value, int delay_ms) {
    loads_t *l = mmap(NULL, sizeof(*l), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(l, MAP_FAILED);
    atomic_init(&l->calls, 0);
    l->delay_ms = delay_ms;
    l->rc = 0;
    snprintf(l->value, sizeof(l->value), "%s", value);
    return l;
}

static int loader(void *arg, const void *key, size_t klen, void *buf, size_t cap, size_t *len) {
    loads_t *l = arg;
    (void)key;
    (void)klen;
    atomic_fetch_add(&l->calls, 1);
    if (l->delay_ms)
        sleep_ms(l->delay_ms);
    if (l->rc)
        return l->rc;
    size_t n = strlen(l->value);
    *len = n;
    if (n > cap)
        return -ERANGE;
    memcpy(buf, l->value, n);
    return 0;
}

static int get_or_load_str(khala_cache_t *c, const char *key, loads_t *l, char *out, size_t cap) {
    size_t len = 0;
    int rc = khala_cache_get_or_load(c, key, strlen(key), loader, l, out, cap - 1, &len,
                                     KHALA_TYPE_SEARCH_RESULT, 0);
    if (rc == 0)
        out[len] = '\0';
    return rc;
}

/* Wait for a child and return its exit status (or 100 + signal). */
static int reap(pid_t pid) {
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st);
}

/* Tests ------------------------------------------------------------------------------------- */

Test(client_daemon, put_is_read_from_l1_by_a_forked_process_that_then_writes_on_its_own) {
    khala_cache_t *c = open_cache();
    uint64_t ver = 0;
    cr_assert_eq(put_str(c, "user:1", "ada", KHALA_TYPE_MEMORY_ENTITY, &ver), 0, "%s",
                 khala_cache_errmsg(c));
    cr_assert_geq(ver, 1);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        /* The inherited handle: the read is a zero-copy view, so it comes from L1 itself. */
        khala_view_t v;
        if (khala_read_begin(c) != 0)
            _exit(1);
        int rc = khala_cache_view(c, "user:1", 6, &v);
        int same = rc == 0 && v.len == 3 && memcmp(v.data, "ada", 3) == 0 && v.version == ver;
        khala_read_end(c);
        if (!same)
            _exit(2);
        /* Its first write opens a connection of its own, never the parent's. */
        if (put_str(c, "child:1", "from the child", KHALA_TYPE_MEMORY_ENTITY, NULL) != 0)
            _exit(3);
        khala_cache_close(c);
        _exit(0);
    }
    cr_assert_eq(reap(pid), 0);
    char buf[64];
    cr_assert_eq(get_str(c, "child:1", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "from the child");
    /* The parent's own connection was not disturbed by the child. */
    cr_assert_eq(put_str(c, "user:2", "grace", KHALA_TYPE_MEMORY_ENTITY, NULL), 0, "%s",
                 khala_cache_errmsg(c));
    khala_cache_close(c);
}

Test(client_daemon, get_miss_is_answered_after_another_workers_put) {
    khala_cache_t *c = open_cache();
    char buf[64];
    cr_assert_eq(get_str(c, "later", buf, sizeof(buf)), KHALA_ENOTFOUND);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        khala_cache_t *w;
        khala_cache_options_t o;
        khala_cache_options_init(&o);
        o.socket_path = khalad_sock;
        if (khala_cache_open(khalad_name, &o, &w) != 0)
            _exit(1);
        int rc = put_str(w, "later", "written elsewhere", KHALA_TYPE_AGENT_RESPONSE, NULL);
        khala_cache_close(w);
        _exit(rc == 0 ? 0 : 2);
    }
    cr_assert_eq(reap(pid), 0);
    cr_assert_eq(get_str(c, "later", buf, sizeof(buf)), 0, "%s", khala_cache_errmsg(c));
    cr_assert_str_eq(buf, "written elsewhere");
    size_t len = 0;
    cr_assert_eq(khala_cache_get(c, "later", 5, buf, 4, &len), -ERANGE);
    cr_assert_eq(len, strlen("written elsewhere"));
    khala_cache_close(c);
}

Test(client_daemon, get_or_load_runs_the_loader_once_across_forked_workers) {
    enum { WORKERS = 5 };
    loads_t *l = loads_new("from the database", 300);
    int go[2];
    cr_assert_eq(pipe(go), 0);
    pid_t pids[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        pids[i] = fork();
        cr_assert_geq(pids[i], 0);
        if (pids[i] == 0) {
            close(go[1]);
            khala_cache_t *w;
            khala_cache_options_t o;
            khala_cache_options_init(&o);
            o.socket_path = khalad_sock;
            if (khala_cache_open(khalad_name, &o, &w) != 0)
                _exit(1);
            char b;
            (void)!read(go[0], &b, 1); /* all start when the parent closes the pipe */
            char buf[64];
            int rc = get_or_load_str(w, "hot", l, buf, sizeof(buf));
            khala_cache_close(w);
            _exit(rc == 0 && strcmp(buf, "from the database") == 0 ? 0 : 2);
        }
    }
    close(go[0]);
    close(go[1]);
    for (int i = 0; i < WORKERS; i++)
        cr_assert_eq(reap(pids[i]), 0, "worker %d", i);
    cr_assert_eq(atomic_load(&l->calls), 1, "the loader ran %d times", atomic_load(&l->calls));
    khala_cache_t *c = open_cache();
    char buf[64];
    cr_assert_eq(get_str(c, "hot", buf, sizeof(buf)), 0, "the loaded value is cached");
    cr_assert_str_eq(buf, "from the database");
    khala_cache_close(c);
}

Test(client_daemon, get_or_load_reports_a_failed_load_and_a_later_call_loads_again) {
    khala_cache_t *c = open_cache();
    loads_t *l = loads_new("v", 0);
    l->rc = KHALA_ENOTFOUND;
    char buf[16];
    cr_assert_eq(get_or_load_str(c, "missing", l, buf, sizeof(buf)), KHALA_ENOTFOUND);
    cr_assert_eq(atomic_load(&l->calls), 1);
    l->rc = 0;
    cr_assert_eq(get_or_load_str(c, "missing", l, buf, sizeof(buf)), 0, "%s",
                 khala_cache_errmsg(c));
    cr_assert_str_eq(buf, "v");
    cr_assert_eq(atomic_load(&l->calls), 2);
    cr_assert_eq(get_or_load_str(c, "missing", l, buf, sizeof(buf)), 0);
    cr_assert_eq(atomic_load(&l->calls), 2, "the third call hits the cache");
    /* A call that fails before the loader would run never invokes it. */
    size_t len;
    cr_assert_eq(khala_cache_get_or_load(c, "", 0, loader, l, buf, sizeof(buf), &len,
                                         KHALA_TYPE_MEMORY_ENTITY, 0),
                 KHALA_EKEY);
    cr_assert_eq(
        khala_cache_get_or_load(c, "x", 1, loader, l, buf, sizeof(buf), &len, (khala_type_t)99, 0),
        -EINVAL);
    cr_assert_eq(atomic_load(&l->calls), 2);
    khala_cache_close(c);
}

Test(client_daemon, put_with_a_stale_version_returns_eversion) {
    khala_cache_t *c = open_cache();
    uint64_t v1 = 0, v2 = 0, v3 = 0;
    cr_assert_eq(put_str(c, "cas", "one", KHALA_TYPE_VERIFICATION, &v1), 0);
    cr_assert_eq(put_str(c, "cas", "two", KHALA_TYPE_VERIFICATION, &v2), 0);
    khala_put_options_t po;
    khala_put_options_init(&po);
    po.flags = KHALA_PUT_CAS;
    po.expected_version = v1;
    cr_assert_eq(khala_cache_put(c, "cas", 3, "stale", 5, &po, &v3), KHALA_EVERSION);
    cr_assert_eq(v3, 0, "out-params are untouched on failure");
    cr_assert_neq(strstr(khala_cache_errmsg(c), "version"), NULL, "%s", khala_cache_errmsg(c));
    po.expected_version = v2;
    cr_assert_eq(khala_cache_put(c, "cas", 3, "fresh", 5, &po, &v3), 0);
    cr_assert_gt(v3, v2);
    po.expected_version = 0; /* "must not exist" */
    cr_assert_eq(khala_cache_put(c, "cas", 3, "x", 1, &po, NULL), KHALA_EVERSION);
    cr_assert_eq(khala_cache_put(c, "cas-new", 7, "x", 1, &po, NULL), 0);
    char buf[16];
    cr_assert_eq(get_str(c, "cas", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "fresh");
    khala_cache_close(c);
}

Test(client_daemon, delete_touch_and_invalidation) {
    khala_cache_t *c = open_cache();
    cr_assert_eq(put_str(c, "user:1", "a", KHALA_TYPE_MEMORY_ENTITY, NULL), 0);
    cr_assert_eq(put_str(c, "user:2", "b", KHALA_TYPE_MEMORY_ENTITY, NULL), 0);
    cr_assert_eq(put_str(c, "search:1", "c", KHALA_TYPE_SEARCH_RESULT, NULL), 0);
    cr_assert_eq(put_str(c, "emb:1", "d", KHALA_TYPE_EMBEDDING, NULL), 0);
    uint64_t n = 0;
    cr_assert_eq(khala_cache_invalidate_prefix(c, "user:", 5, &n), 0);
    cr_assert_eq(n, 2);
    char buf[16];
    cr_assert_eq(get_str(c, "user:1", buf, sizeof(buf)), KHALA_ENOTFOUND);
    cr_assert_eq(khala_cache_invalidate_type(c, KHALA_TYPE_SEARCH_RESULT, &n), 0);
    cr_assert_eq(n, 1);
    cr_assert_eq(get_str(c, "search:1", buf, sizeof(buf)), KHALA_ENOTFOUND);
    cr_assert_eq(khala_cache_touch(c, "emb:1", 5, 60000), 0, "%s", khala_cache_errmsg(c));
    cr_assert_eq(khala_cache_touch(c, "nope", 4, 0), KHALA_ENOTFOUND);
    cr_assert_eq(khala_cache_delete(c, "emb:1", 5), 0);
    cr_assert_eq(khala_cache_delete(c, "emb:1", 5), KHALA_ENOTFOUND);
    cr_assert_eq(get_str(c, "emb:1", buf, sizeof(buf)), KHALA_ENOTFOUND);
    khala_cache_close(c);
}

Test(client_daemon, bad_arguments_get_their_codes) {
    khala_cache_t *c = open_cache();
    char key[KHALA_KEY_MAX + 1];
    memset(key, 'k', sizeof(key));
    cr_assert_eq(khala_cache_put(c, "", 0, "v", 1, NULL, NULL), KHALA_EKEY);
    cr_assert_eq(khala_cache_put(c, key, sizeof(key), "v", 1, NULL, NULL), KHALA_EKEY);
    cr_assert_neq(strstr(khala_cache_errmsg(c), "251"), NULL, "%s", khala_cache_errmsg(c));
    cr_assert_eq(khala_cache_delete(c, "", 0), KHALA_EKEY);
    cr_assert_eq(khala_cache_invalidate_prefix(c, "", 0, NULL), KHALA_EKEY);
    cr_assert_eq(khala_cache_invalidate_type(c, KHALA_TYPE_COUNT, NULL), -EINVAL);
    khala_put_options_t po;
    khala_put_options_init(&po);
    po.type = KHALA_TYPE_COUNT;
    cr_assert_eq(khala_cache_put(c, "k", 1, "v", 1, &po, NULL), -EINVAL);
    size_t big = KHALA_VALUE_MAX_DEFAULT + 1;
    char *v = calloc(1, big);
    cr_assert_not_null(v);
    cr_assert_eq(khala_cache_put(c, "big", 3, v, big, NULL, NULL), KHALA_ETOOBIG);
    cr_assert_neq(strstr(khala_cache_errmsg(c), "max"), NULL, "%s", khala_cache_errmsg(c));
    free(v);
    khala_cache_close(c);
}

Test(client_daemon, killed_khalad_leaves_reads_and_loads_working_and_a_restart_reconnects) {
    khala_cache_t *c = open_cache();
    cr_assert_eq(put_str(c, "durable", "still here", KHALA_TYPE_VERIFICATION, NULL), 0);
    khalad_kill(SIGKILL);

    /* Reads keep working from L1; a miss is a plain miss. */
    char buf[64];
    cr_assert_eq(get_str(c, "durable", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "still here");
    cr_assert_eq(get_str(c, "absent", buf, sizeof(buf)), KHALA_ENOTFOUND);

    /* Writes fail fast, naming the socket; repeated ones too (without a connect each). */
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(put_str(c, "k", "v", KHALA_TYPE_MEMORY_ENTITY, NULL), KHALA_EDAEMON);
        cr_assert_neq(strstr(khala_cache_errmsg(c), khalad_sock), NULL, "%s",
                      khala_cache_errmsg(c));
    }
    cr_assert_eq(khala_cache_delete(c, "k", 1), KHALA_EDAEMON);

    /* get_or_load calls the loader itself and caches nothing. */
    loads_t *l = loads_new("direct", 0);
    cr_assert_eq(get_or_load_str(c, "absent", l, buf, sizeof(buf)), 0, "%s", khala_cache_errmsg(c));
    cr_assert_str_eq(buf, "direct");
    cr_assert_eq(get_or_load_str(c, "absent", l, buf, sizeof(buf)), 0);
    cr_assert_eq(atomic_load(&l->calls), 2);

    /* A new khalad: the same handle reconnects on its own (bounded wait for the retry). */
    khalad_start();
    int rc = KHALA_EDAEMON;
    for (int i = 0; i < 500 && rc == KHALA_EDAEMON; i++) {
        rc = put_str(c, "after", "restart", KHALA_TYPE_MEMORY_ENTITY, NULL);
        if (rc == KHALA_EDAEMON)
            sleep_ms(10);
    }
    cr_assert_eq(rc, 0, "%s", khala_cache_errmsg(c));
    cr_assert_eq(get_str(c, "after", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "restart");
    cr_assert_eq(get_or_load_str(c, "absent", l, buf, sizeof(buf)), 0);
    cr_assert_eq(get_or_load_str(c, "absent", l, buf, sizeof(buf)), 0);
    cr_assert_eq(atomic_load(&l->calls), 3, "cached again once khalad is back");
    khala_cache_close(c);
}

/* Threads of one process sharing a handle ---------------------------------------------------- */

typedef struct thread_arg {
    khala_cache_t *c;
    loads_t *l;
    int id;
    int failures;
} thread_arg_t;

static void *thread_main(void *p) {
    thread_arg_t *a = p;
    char key[32], val[32], buf[64];
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), "t%d:%d", a->id, i);
        snprintf(val, sizeof(val), "v%d.%d", a->id, i);
        if (put_str(a->c, key, val, KHALA_TYPE_MEMORY_ENTITY, NULL) != 0)
            a->failures++;
        else if (get_str(a->c, key, buf, sizeof(buf)) != 0 || strcmp(buf, val) != 0)
            a->failures++;
    }
    if (get_or_load_str(a->c, "shared", a->l, buf, sizeof(buf)) != 0 || strcmp(buf, "once") != 0)
        a->failures++;
    return NULL;
}

Test(client_daemon, threads_share_a_handle_each_with_its_own_connection) {
    enum { THREADS = 6 };
    khala_cache_t *c = open_cache();
    loads_t *l = loads_new("once", 200);
    pthread_t t[THREADS];
    thread_arg_t args[THREADS];
    for (int i = 0; i < THREADS; i++) {
        args[i] = (thread_arg_t){c, l, i, 0};
        cr_assert_eq(pthread_create(&t[i], NULL, thread_main, &args[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(args[i].failures, 0, "thread %d", i);
    }
    cr_assert_eq(atomic_load(&l->calls), 1);
    khala_cache_close(c);
}
