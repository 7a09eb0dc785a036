/*
 * Helpers that start and stop a real khalad for the integration tests (khalad_util.h).
 *
 * khalad runs in the foreground as a child of the test process, with a small L1 and a short
 * single-flight timeout, on a socket in a private directory. Readiness is "the socket accepts a
 * connection", polled with a bound; a khalad that exits during start fails the test at once.
 * Its stderr goes to /dev/null unless KHALA_TEST_VERBOSE is set.
 */
#include "khalad_util.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "segment.h"
#include "segment_create.h"

#ifndef KHALAD_PATH
#error "KHALAD_PATH must name the khalad binary"
#endif

char khalad_name[64];
char khalad_sock[108];
pid_t khalad_pid;
static char g_dir[64];

void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
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
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        char sock_set[300], l2_set[300];
        snprintf(sock_set, sizeof(sock_set), "cache.socket=%s", sock);
        snprintf(l2_set, sizeof(l2_set), "l2.path=%s/l2", dir);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0 && !getenv("KHALA_TEST_VERBOSE"))
            dup2(devnull, 2);
        const char *argv[80] = {"khalad", "--foreground",
                                "--name", name,
                                "--set",  sock_set,
                                "--set",  "l1.max_memory_mb=16",
                                "--set",  "policies.single_flight_timeout_ms=3000",
                                "--set",  l2_set};
        int argc = 12;
        for (int i = 0; sets && sets[i] && argc < 76; i++) {
            argv[argc++] = "--set";
            argv[argc++] = sets[i];
        }
        argv[argc] = NULL;
        execv(KHALAD_PATH, (char *const *)argv);
        _exit(127);
    }
    for (int i = 0; i < 1000; i++) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            close(fd);
            return pid;
        }
        close(fd);
        int st;
        cr_assert_eq(waitpid(pid, &st, WNOHANG), 0, "khalad %s exited at start", name);
        sleep_ms(10);
    }
    cr_assert_fail("khalad did not listen on %s within 10 s", sock);
    return -1;
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
    if (khalad_pid > 0) {
        kill(khalad_pid, sig);
        waitpid(khalad_pid, NULL, 0);
        khalad_pid = 0;
    }
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void khalad_env_fini(void) {
    khalad_kill(SIGTERM);
    khala__seg_unlink(khalad_name);
    unlink(khalad_sock);
    nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
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
