/*
 * Helpers that start and stop a real khalad for the integration tests (khalad_util.h): a
 * Criterion adapter over the shared harness (tests/harness/harness.h), which does the work
 * (fork + exec, readiness, stop, cleanup) for the tests and the benchmarks alike. Here every
 * harness failure fails the test, with the harness's message.
 *
 * khalad runs in the foreground as a child of the test process, with a small L1 and a short
 * single-flight timeout, on a socket in a private directory. Readiness is "the socket accepts a
 * connection", polled with a bound; a khalad that exits during start fails the test at once.
 * Its stderr goes to /dev/null unless KHALA_TEST_VERBOSE is set.
 */
#include "khalad_util.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

#ifndef KHALAD_PATH
#error "KHALAD_PATH must name the khalad binary"
#endif

char khalad_name[64];
char khalad_sock[108];
pid_t khalad_pid;
static char g_dir[64];

void sleep_ms(long ms) {
    harness_sleep_ms(ms);
}

void khalad_env_init(const char *prefix) {
    snprintf(khalad_name, sizeof(khalad_name), "%s%d", prefix, (int)getpid());
    snprintf(g_dir, sizeof(g_dir), "/tmp/khala-it-%d", (int)getpid());
    mkdir(g_dir, 0700);
    snprintf(khalad_sock, sizeof(khalad_sock), "%s/khalad.sock", g_dir);
}

const char *khalad_extra_set;
const char *khalad_extra_sets[KHALAD_EXTRA_SETS_MAX];

pid_t khalad_spawn(const char *name, const char *sock, const char *dir, const char *const *sets) {
    static harness_khalad_t k; /* large: not on the stack */
    int rc = harness_khalad_init(&k, KHALAD_PATH, name, sock);
    if (!rc)
        rc = harness_khalad_set(&k, "l1.max_memory_mb=16");
    if (!rc)
        rc = harness_khalad_set(&k, "policies.single_flight_timeout_ms=3000");
    if (!rc)
        rc = harness_khalad_set(&k, "l2.path=%s/l2", dir);
    for (int i = 0; !rc && sets && sets[i]; i++)
        rc = harness_khalad_set(&k, "%s", sets[i]);
    k.verbose = getenv("KHALA_TEST_VERBOSE") != NULL;
    if (!rc)
        rc = harness_khalad_start(&k);
    cr_assert_eq(rc, 0, "%s", k.err);
    return k.pid;
}

void khalad_start(void) {
    const char *sets[KHALAD_EXTRA_SETS_MAX + 2];
    int n = 0;
    sets[n++] = khalad_extra_set ? khalad_extra_set : "cache.socket_mode=0660";
    for (int i = 0; i < KHALAD_EXTRA_SETS_MAX && khalad_extra_sets[i]; i++)
        sets[n++] = khalad_extra_sets[i];
    sets[n] = NULL;
    khalad_pid = khalad_spawn(khalad_name, khalad_sock, g_dir, sets);
}

void khalad_kill(int sig) {
    harness_khalad_t k = {.pid = khalad_pid};
    harness_khalad_kill(&k, sig);
    khalad_pid = 0;
}

void khalad_env_fini(void) {
    harness_khalad_t k = {.pid = khalad_pid};
    snprintf(k.name, sizeof(k.name), "%s", khalad_name);
    snprintf(k.sock, sizeof(k.sock), "%s", khalad_sock);
    harness_khalad_stop(&k, 0);
    khalad_pid = 0;
    harness_khalad_clean(&k);
    harness_rmtree(g_dir);
}

const char *khalad_dir(void) {
    return g_dir;
}

khala_msg_t khalad_req(khala_op_t op, const char *key) {
    khala_msg_t m;
    khala__proto_msg_init(&m);
    m.op = op;
    if (key) {
        m.key.ptr = (const uint8_t *)key;
        m.key.len = strlen(key);
        m.has |= KHALA_F_K;
    }
    return m;
}
