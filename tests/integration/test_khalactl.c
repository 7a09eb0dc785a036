/*
 * khalactl end to end: a real khalad started by the test on a private socket and cache name,
 * and khalactl run as a real process (fork + exec), its stdout, stderr and exit code captured.
 * The exit codes are the contract for scripts, so every test checks the exact one; --json
 * output is checked to be one valid JSON object by a small validator below.
 *
 * khalad is started and stopped by the shared helpers of tests/integration/khalad_util.h.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "khalad_util.h"
#include "segment.h"
#include "segment_create.h"

#ifndef KHALACTL_PATH
#error "KHALACTL_PATH must name the khalactl binary"
#endif
#ifndef KHALA_WORKERS_PATH
#error "KHALA_WORKERS_PATH must name the khala-workers binary"
#endif

/* The directory of khalad's socket (private to this test process); scratch files go there. */
static char g_dir[108];

static void setup(void) {
    khalad_env_init("kc");
    snprintf(g_dir, sizeof(g_dir), "%s", khalad_sock);
    char *slash = strrchr(g_dir, '/');
    cr_assert_not_null(slash);
    *slash = '\0';
    khalad_start();
}

static void teardown(void) {
    char keys[160];
    snprintf(keys, sizeof(keys), "%s/keys", g_dir);
    unlink(keys);
    khalad_env_fini();
}

TestSuite(khalactl, .init = setup, .fini = teardown, .timeout = 60);

/* Running khalactl -------------------------------------------------------------------------- */

/* The last run's output, NUL-terminated. */
static char g_out[1 << 20];
static char g_err[1 << 16];

static void slurp(int fd, char *buf, size_t cap) {
    size_t n = 0;
    lseek(fd, 0, SEEK_SET);
    for (;;) {
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    close(fd);
}

/* Run the program at path with args (NULL-terminated); with_target prepends --name and --socket
 * of the test's khalad. Returns the exit code (128 + signal when killed); output in g_out,
 * g_err. */
static int run_prog(const char *path, bool with_target, const char *const *args) {
    const char *argv[64];
    int n = 0;
    argv[n++] = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    if (with_target) {
        argv[n++] = "--name";
        argv[n++] = khalad_name;
        argv[n++] = "--socket";
        argv[n++] = khalad_sock;
    }
    for (int i = 0; args[i]; i++) {
        cr_assert_lt(n, 63);
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    int out = memfd_create("khalactl-out", MFD_CLOEXEC);
    int err = memfd_create("khalactl-err", MFD_CLOEXEC);
    cr_assert(out >= 0 && err >= 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        dup2(out, 1);
        dup2(err, 2);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    slurp(out, g_out, sizeof(g_out));
    slurp(err, g_err, sizeof(g_err));
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (getenv("KHALA_TEST_VERBOSE"))
        cr_log_info("%s %s ... -> %d\nstdout: %s\nstderr: %s", argv[0], args[0], code, g_out,
                    g_err);
    return code;
}

static int run(bool with_target, const char *const *args) {
    return run_prog(KHALACTL_PATH, with_target, args);
}

#define CTL(...) run(true, (const char *const[]){__VA_ARGS__, NULL})
#define CTL_BARE(...) run(false, (const char *const[]){__VA_ARGS__, NULL})

/* A small JSON validator (RFC 8259 grammar), so that --json output is checked to parse. */
static const char *json_value(const char *p, int depth);

static const char *json_ws(const char *p) {
    while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')
        p++;
    return p;
}

static const char *json_string(const char *p) {
    if (*p++ != '"')
        return NULL;
    while (*p != '"') {
        if ((unsigned char)*p < 0x20)
            return NULL; /* includes the terminating NUL */
        if (*p == '\\') {
            p++;
            if (*p == 'u') {
                for (int i = 1; i <= 4; i++)
                    if (!strchr("0123456789abcdefABCDEF", p[i]) || !p[i])
                        return NULL;
                p += 4;
            } else if (!*p || !strchr("\"\\/bfnrt", *p)) {
                return NULL;
            }
        }
        p++;
    }
    return p + 1;
}

static const char *json_number(const char *p) {
    const char *s = p;
    if (*p == '-')
        p++;
    if (*p < '0' || *p > '9')
        return NULL;
    while (*p >= '0' && *p <= '9')
        p++;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return NULL;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-')
            p++;
        if (*p < '0' || *p > '9')
            return NULL;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    return p > s ? p : NULL;
}

static const char *json_container(const char *p, int depth, char close, bool object) {
    p = json_ws(p + 1);
    if (*p == close)
        return p + 1;
    for (;;) {
        if (object) {
            if (!(p = json_string(p)))
                return NULL;
            p = json_ws(p);
            if (*p++ != ':')
                return NULL;
        }
        if (!(p = json_value(p, depth + 1)))
            return NULL;
        p = json_ws(p);
        if (*p == close)
            return p + 1;
        if (*p++ != ',')
            return NULL;
        p = json_ws(p);
    }
}

static const char *json_value(const char *p, int depth) {
    if (depth > 32)
        return NULL;
    p = json_ws(p);
    switch (*p) {
        case '{':
            return json_container(p, depth, '}', true);
        case '[':
            return json_container(p, depth, ']', false);
        case '"':
            return json_string(p);
        case 't':
            return strncmp(p, "true", 4) == 0 ? p + 4 : NULL;
        case 'f':
            return strncmp(p, "false", 5) == 0 ? p + 5 : NULL;
        case 'n':
            return strncmp(p, "null", 4) == 0 ? p + 4 : NULL;
        default:
            return json_number(p);
    }
}

/* Is s exactly one JSON object (plus whitespace)? */
static bool json_object(const char *s) {
    s = json_ws(s);
    if (*s != '{')
        return false;
    const char *end = json_value(s, 0);
    return end && *json_ws(end) == '\0';
}

/* The unsigned number after "name": in a flat JSON text; fails the test when absent. */
static unsigned long long json_uint(const char *s, const char *name) {
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", name);
    const char *p = strstr(s, pat);
    cr_assert_not_null(p, "no %s in %s", pat, s);
    return strtoull(p + strlen(pat), NULL, 10);
}

/* Tests ------------------------------------------------------------------------------------- */

Test(khalactl, put_then_get_round_trips_the_value) {
    cr_assert_eq(CTL("put", "user:42", "hello world"), 0, "%s", g_err);
    cr_assert(strstr(g_out, "version"), "put said: %s", g_out);
    cr_assert_eq(CTL("get", "user:42"), 0, "%s", g_err);
    /* stdout is not a terminal: the value's bytes, exactly, with no newline added. */
    cr_assert_str_eq(g_out, "hello world");
}

Test(khalactl, json_get_reports_value_and_metadata) {
    cr_assert_eq(CTL("--json", "put", "user:42", "ada", "--type", "agent_response"), 0);
    cr_assert(json_object(g_out), "not JSON: %s", g_out);
    unsigned long long ver = json_uint(g_out, "version");
    cr_assert_eq(CTL("get", "user:42", "--json"), 0);
    cr_assert(json_object(g_out), "not JSON: %s", g_out);
    cr_assert(strstr(g_out, "\"key\":\"user:42\""), "%s", g_out);
    cr_assert(strstr(g_out, "\"value\":\"ada\""), "%s", g_out);
    cr_assert(strstr(g_out, "\"type\":\"agent_response\""), "%s", g_out);
    cr_assert_eq(json_uint(g_out, "version"), ver);
}

Test(khalactl, json_carries_binary_values_as_base64) {
    cr_assert_eq(CTL("put", "bin", "a\001b\377"), 0);
    cr_assert_eq(CTL("--json", "get", "bin"), 0);
    cr_assert(json_object(g_out), "not JSON: %s", g_out);
    cr_assert(strstr(g_out, "\"value\":{\"base64\":\"YQFi/w==\"}"), "%s", g_out);
    /* Without --json, the bytes go out raw to a pipe. */
    cr_assert_eq(CTL("get", "bin"), 0);
    cr_assert_eq(memcmp(g_out, "a\001b\377", 5), 0);
}

Test(khalactl, get_of_a_missing_key_exits_1) {
    cr_assert_eq(CTL("get", "no:such:key"), 1);
    cr_assert(strstr(g_err, "no such key 'no:such:key'"), "stderr: %s", g_err);
    cr_assert_str_eq(g_out, "");
    cr_assert_eq(CTL("inspect", "no:such:key"), 1);
    cr_assert_eq(CTL("del", "no:such:key"), 1);
}

Test(khalactl, del_removes_the_key) {
    cr_assert_eq(CTL("put", "k", "v"), 0);
    cr_assert_eq(CTL("del", "k"), 0, "%s", g_err);
    cr_assert_eq(CTL("get", "k"), 1);
}

Test(khalactl, put_with_a_stale_version_exits_5) {
    cr_assert_eq(CTL("--json", "put", "cas", "one"), 0);
    unsigned long long ver = json_uint(g_out, "version");
    char stale[32], cur[32];
    snprintf(stale, sizeof(stale), "%llu", ver + 100);
    snprintf(cur, sizeof(cur), "%llu", ver);
    cr_assert_eq(CTL("put", "cas", "two", "--version", stale), 5);
    cr_assert(strstr(g_err, "version"), "stderr: %s", g_err);
    cr_assert_eq(CTL("get", "cas"), 0);
    cr_assert_str_eq(g_out, "one");
    /* The current version wins, and the key must not exist for --version 0. */
    cr_assert_eq(CTL("put", "cas", "two", "--version", cur), 0, "%s", g_err);
    cr_assert_eq(CTL("put", "cas", "three", "--version", "0"), 5);
    cr_assert_eq(CTL("get", "cas"), 0);
    cr_assert_str_eq(g_out, "two");
}

Test(khalactl, put_with_links_is_deleted_when_an_end_changes) {
    cr_assert_eq(CTL("put", "user:E", "e"), 0);
    cr_assert_eq(CTL("put", "rel:E", "[user:N]", "--type", "entity_relationship", "--link",
                     "user:E", "--link", "user:N"),
                 0, "%s", g_err);
    cr_assert_eq(CTL("get", "rel:E"), 0);
    cr_assert_eq(CTL("put", "user:N", "n"), 0);
    cr_assert_eq(CTL("get", "rel:E"), 1, "an end was written: the relationship must be gone");
    /* Refused before anything is sent: the item's own key, an empty key. */
    cr_assert_eq(CTL("put", "rel:E", "x", "--link", "rel:E"), 4);
    cr_assert(strstr(g_err, "own key"), "stderr: %s", g_err);
    cr_assert_eq(CTL("put", "rel:E", "x", "--link", ""), 2);
    cr_assert(strstr(g_err, "--link"), "stderr: %s", g_err);
    cr_assert_eq(CTL("get", "rel:E"), 1);
}

Test(khalactl, invalidate_by_prefix_drops_only_those_keys) {
    cr_assert_eq(CTL("put", "a:1", "v"), 0);
    cr_assert_eq(CTL("put", "a:2", "v"), 0);
    cr_assert_eq(CTL("put", "b:1", "v"), 0);
    cr_assert_eq(CTL("invalidate", "--prefix", "a:"), 0, "%s", g_err);
    cr_assert_str_eq(g_out, "invalidated 2 keys\n");
    cr_assert_eq(CTL("get", "a:1"), 1);
    cr_assert_eq(CTL("get", "a:2"), 1);
    cr_assert_eq(CTL("get", "b:1"), 0);
    cr_assert_eq(CTL("invalidate", "b:1", "--json"), 0);
    cr_assert(json_object(g_out), "not JSON: %s", g_out);
    cr_assert_eq(json_uint(g_out, "count"), 1);
}

Test(khalactl, invalidate_by_type_drops_only_that_type) {
    cr_assert_eq(CTL("put", "e:1", "v", "--type", "embedding"), 0);
    cr_assert_eq(CTL("put", "e:2", "v", "--type", "2"), 0);
    cr_assert_eq(CTL("put", "m:1", "v"), 0);
    cr_assert_eq(CTL("--json", "invalidate", "--type", "embedding"), 0, "%s", g_err);
    cr_assert(json_object(g_out), "not JSON: %s", g_out);
    cr_assert_eq(json_uint(g_out, "count"), 2);
    cr_assert_eq(CTL("get", "e:1"), 1);
    cr_assert_eq(CTL("get", "m:1"), 0);
}

Test(khalactl, flush_by_type_and_all) {
    cr_assert_eq(CTL("put", "e:1", "v", "--type", "embedding"), 0);
    cr_assert_eq(CTL("put", "m:1", "v"), 0);
    cr_assert_eq(CTL("put", "m:2", "v"), 0);
    cr_assert_eq(CTL("flush", "--type", "embedding"), 0);
    cr_assert_str_eq(g_out, "flushed 1 key\n");
    cr_assert_eq(CTL("flush"), 0);
    cr_assert_str_eq(g_out, "flushed 2 keys\n");
    cr_assert_eq(CTL("get", "m:1"), 1);
}

Test(khalactl, keys_lists_the_keys_matching_a_pattern) {
    cr_assert_eq(CTL("put", "user:1", "v"), 0);
    cr_assert_eq(CTL("put", "user:2", "v"), 0);
    cr_assert_eq(CTL("put", "item:1", "v"), 0);
    cr_assert_eq(CTL("keys", "user:*"), 0, "%s", g_err);
    /* One key a line, in scan order. */
    bool one_two = strcmp(g_out, "user:1\nuser:2\n") == 0;
    bool two_one = strcmp(g_out, "user:2\nuser:1\n") == 0;
    cr_assert(one_two || two_one, "keys said: %s", g_out);
    cr_assert_eq(CTL("--json", "keys"), 0);
    cr_assert(json_object(g_out), "not JSON: %s", g_out);
    cr_assert_eq(json_uint(g_out, "count"), 3);
    cr_assert_eq(json_uint(g_out, "cursor"), 0);
    cr_assert(strstr(g_out, "\"item:1\""), "%s", g_out);
}

Test(khalactl, keys_limit_stops_and_names_the_next_cursor) {
    cr_assert_eq(CTL("put", "user:1", "v"), 0);
    cr_assert_eq(CTL("put", "user:2", "v"), 0);
    cr_assert_eq(CTL("--json", "keys", "--limit", "1"), 0, "%s", g_err);
    cr_assert(json_object(g_out), "not JSON: %s", g_out);
    cr_assert_eq(json_uint(g_out, "count"), 1);
}

/* Paging with pages smaller than the table loses no key (a full page stops the scan at the
 * next item, which the next page starts with). */
Test(khalactl, keys_follows_the_cursor_across_small_pages) {
    cr_assert_eq(CTL("put", "user:1", "v"), 0);
    cr_assert_eq(CTL("put", "user:2", "v"), 0);
    cr_assert_eq(CTL("put", "user:3", "v"), 0);
    cr_assert_eq(CTL("--json", "keys", "--count", "1"), 0, "%s", g_err);
    cr_assert_eq(json_uint(g_out, "count"), 3, "%s", g_out);
}

Test(khalactl, inspect_shows_version_ttl_and_type) {
    cr_assert_eq(CTL("--json", "put", "k", "value", "--ttl", "100", "--type", "verification"), 0);
    unsigned long long ver = json_uint(g_out, "version");
    cr_assert_eq(CTL("inspect", "k"), 0, "%s", g_err);
    char line[64];
    snprintf(line, sizeof(line), "version  %llu\n", ver);
    cr_assert(strstr(g_out, line), "inspect said: %s", g_out);
    cr_assert(strstr(g_out, "ttl_ms"), "inspect said: %s", g_out);
    cr_assert(strstr(g_out, "verification"), "inspect said: %s", g_out);
    cr_assert_eq(CTL("--json", "inspect", "k"), 0);
    cr_assert(json_object(g_out), "not JSON: %s", g_out);
    cr_assert_eq(json_uint(g_out, "version"), ver);
    unsigned long long ttl = json_uint(g_out, "ttl_ms");
    cr_assert(ttl > 0 && ttl <= 100000, "ttl_ms %llu", ttl);
    cr_assert(strstr(g_out, "\"type\":\"verification\""), "%s", g_out);
}

Test(khalactl, stats_json_parses) {
    cr_assert_eq(CTL("put", "k", "v"), 0);
    cr_assert_eq(CTL("stats", "--json"), 0, "%s", g_err);
    cr_assert(json_object(g_out), "not JSON: %s", g_out);
    cr_assert(strstr(g_out, "\"l1\":{"), "%s", g_out);
    cr_assert_eq(json_uint(g_out, "items"), 1);
    /* The human table names the same counters. */
    cr_assert_eq(CTL("stats"), 0);
    cr_assert(strstr(g_out, "l1\n"), "%s", g_out);
    cr_assert(strstr(g_out, "items"), "%s", g_out);
}

Test(khalactl, health_and_ping_exit_0) {
    cr_assert_eq(CTL("health"), 0, "%s", g_err);
    cr_assert(strstr(g_out, "ok"), "%s", g_out);
    cr_assert_eq(CTL("--json", "health"), 0);
    cr_assert(json_object(g_out), "not JSON: %s", g_out);
    cr_assert(strstr(g_out, "\"healthy\":true"), "%s", g_out);
    cr_assert_eq(CTL("ping"), 0);
    cr_assert_eq(CTL("ping", "--json"), 0);
    cr_assert(json_object(g_out), "not JSON: %s", g_out);
}

Test(khalactl, config_prints_the_effective_ini) {
    cr_assert_eq(CTL("config"), 0, "%s", g_err);
    cr_assert(strstr(g_out, "[l1]\n"), "%s", g_out);
    cr_assert(strstr(g_out, "max_memory_mb = 16\n"), "%s", g_out);
    cr_assert_eq(CTL("config", "--json"), 0);
    cr_assert(json_object(g_out), "not JSON: %s", g_out);
    cr_assert(strstr(g_out, "[l1]\\n"), "%s", g_out);
}

Test(khalactl, warm_sends_keys_from_a_file_in_batches) {
    char path[128];
    snprintf(path, sizeof(path), "%s/keys", g_dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    /* More than two batches of KHALA_PROTO_ARRAY_MAX keys, a blank line and a CRLF line. */
    for (int i = 0; i < 2500; i++)
        fprintf(f, "warm:%d\n", i);
    fputs("\nlast\r\n", f);
    fclose(f);
    cr_assert_eq(CTL("--json", "warm", "--keys-from", path), 0, "%s", g_err);
    cr_assert(json_object(g_out), "not JSON: %s", g_out);
    cr_assert_eq(json_uint(g_out, "sent"), 2501);
    /* None of these keys was ever written: nothing to warm. */
    cr_assert_eq(json_uint(g_out, "count"), 0);
    cr_assert_eq(CTL("warm", "--type", "embedding"), 0);
    cr_assert_eq(CTL("warm", "--prefix", "user:"), 0);
}

Test(khalactl, warm_fills_an_empty_l1_from_l2_by_prefix_type_and_file) {
    char key[32], path[128];
    for (int i = 0; i < 30; i++) {
        snprintf(key, sizeof(key), "w:%d", i);
        cr_assert_eq(CTL("put", key, "warm me"), 0, "%s", g_err);
    }
    cr_assert_eq(CTL("put", "v:1", "a verdict", "--type", "verification"), 0, "%s", g_err);
    /* A new khalad on a new segment: L1 is empty, L2 (the disk store) kept everything. */
    khalad_kill(SIGTERM);
    khala__seg_unlink(khalad_name);
    khalad_start();
    cr_assert_eq(CTL("--json", "inspect", "w:3"), 0, "%s", g_err);
    cr_assert(strstr(g_out, "\"levels\":\"l2,l3\""), "L1 is empty: %s", g_out);
    cr_assert_eq(CTL("--json", "warm", "--prefix", "w:"), 0, "%s", g_err);
    cr_assert_eq(json_uint(g_out, "count"), 30, "%s", g_out);
    cr_assert_eq(CTL("--json", "inspect", "w:3"), 0);
    cr_assert(strstr(g_out, "\"levels\":\"l1,l2,l3\""), "warmed into L1: %s", g_out);
    cr_assert_eq(CTL("--json", "warm", "--type", "verification"), 0, "%s", g_err);
    cr_assert_eq(json_uint(g_out, "count"), 1, "%s", g_out);
    cr_assert_eq(CTL("--json", "inspect", "v:1"), 0);
    cr_assert(strstr(g_out, "\"levels\":\"l1,l2,l3\""), "warmed into L1: %s", g_out);
    khalad_kill(SIGTERM);
    khala__seg_unlink(khalad_name);
    khalad_start();
    snprintf(path, sizeof(path), "%s/keys", g_dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("w:1\nw:2\nnever-written\n", f);
    fclose(f);
    cr_assert_eq(CTL("warm", "--keys-from", path), 0, "%s", g_err);
    cr_assert(strstr(g_out, "warmed 2 keys"), "%s", g_out);
}

Test(khalactl, khalad_not_running_exits_3_naming_the_socket) {
    char path[128];
    snprintf(path, sizeof(path), "%s/nobody.sock", g_dir);
    cr_assert_eq(CTL_BARE("--socket", path, "ping"), 3);
    cr_assert(strstr(g_err, "khalad is not running"), "stderr: %s", g_err);
    cr_assert(strstr(g_err, path), "stderr: %s", g_err);
    cr_assert_eq(CTL_BARE("--socket", path, "--json", "stats"), 3);
    cr_assert_str_eq(g_out, "");
}

Test(khalactl, wrong_cache_name_exits_4) {
    cr_assert_eq(CTL_BARE("--name", "not-this-one", "--socket", khalad_sock, "ping"), 4);
    cr_assert(strstr(g_err, "KHALA_ENAME"), "stderr: %s", g_err);
}

Test(khalactl, usage_errors_exit_2) {
    /* None of these reaches khalad: the arguments are checked first. */
    const char *const no_command[] = {NULL};
    cr_assert_eq(run(true, no_command), 2);
    cr_assert(strstr(g_err, "no command"), "stderr: %s", g_err);
    cr_assert_eq(CTL("frobnicate"), 2);
    cr_assert(strstr(g_err, "unknown command 'frobnicate'"), "stderr: %s", g_err);
    cr_assert_eq(CTL("get"), 2);
    cr_assert_eq(CTL("get", "a", "b"), 2);
    cr_assert_eq(CTL("get", "k", "--ttl", "5"), 2);
    cr_assert(strstr(g_err, "get does not take --ttl"), "stderr: %s", g_err);
    cr_assert_eq(CTL("--bogus", "ping"), 2);
    cr_assert_eq(CTL("put", "k", "v", "--type", "nope"), 2);
    cr_assert_eq(CTL("put", "k", "v", "--ttl", "soon"), 2);
    cr_assert_eq(CTL("put", "k", "v", "--ttl", "315360001"), 2, "above 10 years (issue 10)");
    cr_assert(strstr(g_err, "315360000"), "stderr: %s", g_err);
    cr_assert_eq(CTL("invalidate"), 2);
    cr_assert_eq(CTL("invalidate", "k", "--prefix", "p"), 2);
    cr_assert_eq(CTL("warm"), 2);
    cr_assert_eq(CTL("keys", "--count", "0"), 2);
    cr_assert_eq(CTL("--timeout"), 2);
    /* --help is not an error. */
    cr_assert_eq(CTL("--help"), 0);
    cr_assert(strstr(g_out, "usage: khalactl"), "%s", g_out);
}

/* health and inspect against every level --------------------------------------------------- */

/* A loopback TCP port where nothing listens (bound, then released). */
static unsigned closed_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* Restart khalad with L2 on Redis at a port where nothing listens: it starts with L2 down. */
static void restart_with_l2_down(void) {
    static char url[64];
    snprintf(url, sizeof(url), "l2.redis_url=redis://127.0.0.1:%u", closed_port());
    khalad_kill(SIGTERM);
    khalad_extra_sets[0] = url; /* before the backend that needs it */
    khalad_extra_sets[1] = "l2.backend=redis";
    khalad_extra_sets[2] = NULL;
    khalad_start();
}

Test(khalactl, health_reports_each_level) {
    cr_assert_eq(CTL("health"), 0, "%s", g_err);
    cr_assert(strstr(g_out, "l1             ok\n"), "%s", g_out);
    cr_assert(strstr(g_out, "l2             ok (disk)\n"), "%s", g_out);
    cr_assert(strstr(g_out, "l3             ok (disk)\n"), "%s", g_out);
    cr_assert_eq(CTL("--json", "health"), 0);
    cr_assert(json_object(g_out), "not JSON: %s", g_out);
    cr_assert(strstr(g_out, "\"levels\":{\"l1\":\"ok\",\"l2\":\"ok\",\"l3\":\"ok\"}"), "%s", g_out);
}

/* khalad answers, but L2 is down: health must not say "ok" and exit 0. */
Test(khalactl, health_exits_6_naming_l2_when_l2_is_down) {
    restart_with_l2_down();
    cr_assert_eq(CTL("health"), 6, "stdout: %s\nstderr: %s", g_out, g_err);
    cr_assert(strstr(g_out, "khalad         ok\n"), "%s", g_out);
    cr_assert(strstr(g_out, "l1             ok\n"), "%s", g_out);
    cr_assert(strstr(g_out, "l2             down (redis)\n"), "%s", g_out);
    cr_assert(strstr(g_err, "l2 (redis) is down"), "stderr: %s", g_err);
    cr_assert_eq(CTL("--json", "health"), 6);
    cr_assert(json_object(g_out), "not JSON: %s", g_out);
    cr_assert(strstr(g_out, "\"healthy\":false"), "%s", g_out);
    cr_assert(strstr(g_out, "\"l2\":\"down\""), "%s", g_out);
    /* L1 still serves: a put is taken (queued for L2) and read back. */
    cr_assert_eq(CTL("put", "k", "v"), 0, "%s", g_err);
    cr_assert_eq(CTL("get", "k"), 0, "%s", g_err);
    cr_assert_str_eq(g_out, "v");
}

/* A key only L2 holds (a new khalad on a new segment: L1 is empty, the disk store kept it) is
 * described from L2 rather than "no such key". */
Test(khalactl, inspect_describes_a_key_only_l2_holds) {
    cr_assert_eq(CTL("--json", "put", "deep", "in l2", "--type", "embedding"), 0, "%s", g_err);
    unsigned long long ver = json_uint(g_out, "version");
    cr_assert_eq(CTL("inspect", "deep"), 0, "%s", g_err);
    cr_assert(strstr(g_out, "levels   l1,l2,l3\n"), "%s", g_out);
    khalad_kill(SIGTERM);
    khala__seg_unlink(khalad_name);
    khalad_start();
    cr_assert_eq(CTL("--json", "inspect", "deep"), 0, "%s", g_err);
    cr_assert(json_object(g_out), "not JSON: %s", g_out);
    cr_assert(strstr(g_out, "\"levels\":\"l2,l3\""), "%s", g_out);
    cr_assert_eq(json_uint(g_out, "version"), ver);
    cr_assert_eq(json_uint(g_out, "size"), 5);
    cr_assert(strstr(g_out, "\"type\":\"embedding\""), "%s", g_out);
    cr_assert(strstr(g_out, "\"l1\":{\"state\":\"absent\"}"), "%s", g_out);
    cr_assert(strstr(g_out, "\"l2\":{\"backend\":\"disk\",\"state\":\"held\""), "%s", g_out);
    cr_assert_null(strstr(g_out, "\"hits\""), "hits is L1's count: %s", g_out);
    /* The human table has one block per level. */
    cr_assert_eq(CTL("inspect", "deep"), 0, "%s", g_err);
    cr_assert(strstr(g_out, "l2\n  backend  disk\n  state    held\n"), "%s", g_out);
    /* inspect only looks: the key is still not in L1. */
    cr_assert_eq(CTL("--json", "inspect", "deep"), 0);
    cr_assert(strstr(g_out, "\"levels\":\"l2,l3\""), "%s", g_out);
    cr_assert_eq(CTL("inspect", "never-written"), 1);
}

/* With L2 down, a key L1 does not hold is not found, and the reason names the level. */
Test(khalactl, inspect_says_which_level_could_not_be_asked) {
    restart_with_l2_down();
    cr_assert_eq(CTL("inspect", "k"), 1);
    cr_assert(strstr(g_err, "no such key 'k'"), "stderr: %s", g_err);
    cr_assert(strstr(g_err, "l2 (redis) is down"), "stderr: %s", g_err);
    cr_assert_eq(CTL("put", "k", "v"), 0, "%s", g_err);
    cr_assert_eq(CTL("--json", "inspect", "k"), 0, "%s", g_err);
    cr_assert(strstr(g_out, "\"levels\":\"l1,l3\""), "%s", g_out);
    cr_assert(strstr(g_out, "\"l2\":{\"backend\":\"redis\",\"state\":\"down\""), "%s", g_out);
}

/* khalad down ---------------------------------------------------------------------------------- */

/* khalad stopped, its segment left behind (a crash, or a stop before a restart): get and inspect
 * read L1 from the segment and say that the answer is L1's alone. */
Test(khalactl, get_and_inspect_read_l1_when_khalad_is_down) {
    cr_assert_eq(CTL("--json", "put", "k", "from l1", "--type", "verification"), 0, "%s", g_err);
    unsigned long long ver = json_uint(g_out, "version");
    khalad_kill(SIGKILL);
    cr_assert_eq(CTL("ping"), 3);
    cr_assert_eq(CTL("get", "k"), 0, "stderr: %s", g_err);
    cr_assert_str_eq(g_out, "from l1");
    cr_assert(strstr(g_err, "khalad is not running"), "stderr: %s", g_err);
    cr_assert(strstr(g_err, "L1's alone"), "stderr: %s", g_err);
    cr_assert_eq(CTL("--json", "get", "k"), 0, "stderr: %s", g_err);
    cr_assert(json_object(g_out), "not JSON: %s", g_out);
    cr_assert(strstr(g_out, "\"value\":\"from l1\""), "%s", g_out);
    cr_assert(strstr(g_out, "\"khalad\":\"down\""), "%s", g_out);
    cr_assert_eq(json_uint(g_out, "version"), ver);
    cr_assert_eq(CTL("inspect", "k"), 0, "stderr: %s", g_err);
    cr_assert(strstr(g_out, "levels   l1\n"), "%s", g_out);
    cr_assert(strstr(g_out, "khalad   down\n"), "%s", g_out);
    cr_assert(strstr(g_out, "verification"), "%s", g_out);
    cr_assert(strstr(g_err, "L1's alone"), "stderr: %s", g_err);
    cr_assert_eq(CTL("--json", "inspect", "k"), 0);
    cr_assert(json_object(g_out), "not JSON: %s", g_out);
    cr_assert_eq(json_uint(g_out, "version"), ver);
    /* A key L1 does not hold: the levels below could not be asked, so not "not found" (1). */
    cr_assert_eq(CTL("get", "other"), 3);
    cr_assert(strstr(g_err, "L1 does not hold 'other'"), "stderr: %s", g_err);
    cr_assert_str_eq(g_out, "");
    cr_assert_eq(CTL("inspect", "other"), 3);
    /* A socket alone does not name the cache whose segment to read. */
    cr_assert_eq(CTL_BARE("--socket", khalad_sock, "get", "k"), 3);
    cr_assert(strstr(g_err, "give --name"), "stderr: %s", g_err);
    /* Commands that need khalad still exit 3. */
    cr_assert_eq(CTL("put", "k", "v2"), 3);
    cr_assert(strstr(g_err, "khalad is not running"), "stderr: %s", g_err);
}

Test(khalactl, get_with_neither_khalad_nor_segment_exits_3) {
    khalad_kill(SIGTERM);
    khala__seg_unlink(khalad_name);
    cr_assert_eq(CTL("get", "k"), 3);
    cr_assert(strstr(g_err, "khalad is not running"), "stderr: %s", g_err);
    cr_assert(strstr(g_err, "no segment"), "stderr: %s", g_err);
}

/* The command line -------------------------------------------------------------------------- */

Test(khalactl, version_and_help_of_the_tools) {
    cr_assert_eq(CTL_BARE("--version"), 0, "%s", g_err);
    cr_assert(strncmp(g_out, "khalactl ", 9) == 0, "%s", g_out);
    cr_assert(strchr(g_out, '.'), "%s", g_out);
    cr_assert_eq(CTL_BARE("-V"), 0, "%s", g_err);
    cr_assert(strncmp(g_out, "khalactl ", 9) == 0, "%s", g_out);
    cr_assert_eq(CTL_BARE("-h"), 0, "%s", g_err);
    cr_assert(strstr(g_out, "usage: khalactl"), "%s", g_out);
    /* put's --version is still the compare-and-set version. */
    cr_assert_eq(CTL("put", "k", "v", "--version", "nope"), 2);
    cr_assert_eq(run_prog(KHALA_WORKERS_PATH, false, (const char *const[]){"--help", NULL}), 0,
                 "%s", g_err);
    cr_assert(strstr(g_out, "usage: khala-workers"), "%s", g_out);
    cr_assert_eq(run_prog(KHALA_WORKERS_PATH, false, (const char *const[]){"--version", NULL}), 0,
                 "%s", g_err);
    cr_assert(strncmp(g_out, "khala-workers ", 14) == 0, "%s", g_out);
    cr_assert_eq(run_prog(KHALA_WORKERS_PATH, false, (const char *const[]){"--bogus", NULL}), 2);
}

Test(khalactl, options_parse_like_getopt_long) {
    cr_assert_eq(CTL("put", "k", "v"), 0, "%s", g_err);
    /* --opt=value, options after the command, a unique prefix of a name. */
    cr_assert_eq(CTL_BARE("--socket="
                          "x",
                          "--name", khalad_name, "--socket", khalad_sock, "get", "k", "--js"),
                 0, "%s", g_err);
    cr_assert(json_object(g_out), "not JSON: %s", g_out);
    /* "--" ends the options: a key that looks like one. */
    cr_assert_eq(CTL("put", "--", "--weird", "v"), 0, "%s", g_err);
    cr_assert_eq(CTL("get", "--", "--weird"), 0, "%s", g_err);
    cr_assert_str_eq(g_out, "v");
    cr_assert_eq(CTL("get", "--weird"), 2);
    cr_assert(strstr(g_err, "unknown or ambiguous option '--weird'"), "stderr: %s", g_err);
    cr_assert_eq(CTL("get", "-x"), 2);
    cr_assert(strstr(g_err, "unknown option '-x'"), "stderr: %s", g_err);
    cr_assert_eq(CTL("keys", "--c", "1"), 2, "ambiguous: --count or --cursor");
    cr_assert_eq(CTL("put", "k", "--ttl"), 2);
    cr_assert(strstr(g_err, "needs a value"), "stderr: %s", g_err);
}

/* khala-workers (the demo's workers, through the public API only) against this khalad: every
 * value read checks out, and L1 serves most reads. */
Test(khalactl, khala_workers_run_clean_against_khalad) {
    cr_assert_eq(
        run_prog(KHALA_WORKERS_PATH, true,
                 (const char *const[]){"--workers", "2", "--keys", "200", "--ops", "3000", NULL}),
        0, "stdout: %s\nstderr: %s", g_out, g_err);
    cr_assert(strstr(g_out, "khala-workers: OK"), "%s", g_out);
    cr_assert(strstr(g_out, "0 values failed their checksum, 0 errors"), "%s", g_out);
    /* Usage errors exit 2 before touching the cache. */
    cr_assert_eq(run_prog(KHALA_WORKERS_PATH, false, (const char *const[]){"--workers", "2", NULL}),
                 2);
    cr_assert(strstr(g_err, "--name is required"), "%s", g_err);
    cr_assert_eq(
        run_prog(KHALA_WORKERS_PATH, false, (const char *const[]){"--name", "x", "extra", NULL}),
        2);
    cr_assert(strstr(g_err, "unexpected argument 'extra'"), "%s", g_err);
}

/* put's value from a file or stdin ------------------------------------------------------------ */

/* Run khalactl with stdin from path. */
static int run_stdin(const char *path, const char *const *args) {
    int fd = open(path, O_RDONLY);
    cr_assert_geq(fd, 0);
    const char *argv[16];
    int n = 0;
    argv[n++] = "--name";
    argv[n++] = khalad_name;
    argv[n++] = "--socket";
    argv[n++] = khalad_sock;
    for (int i = 0; args[i]; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    int out = memfd_create("khalactl-out", MFD_CLOEXEC);
    int err = memfd_create("khalactl-err", MFD_CLOEXEC);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(fd, 0);
        dup2(out, 1);
        dup2(err, 2);
        const char *full[18] = {"khalactl"};
        for (int i = 0; i <= n; i++)
            full[i + 1] = argv[i];
        execv(KHALACTL_PATH, (char *const *)full);
        _exit(127);
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    close(fd);
    slurp(out, g_out, sizeof(g_out));
    slurp(err, g_err, sizeof(g_err));
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

Test(khalactl, put_value_from_a_file_or_stdin_is_byte_exact) {
    char path[160];
    snprintf(path, sizeof(path), "%s/keys", g_dir); /* teardown removes it */
    static uint8_t val[100000];
    for (size_t i = 0; i < sizeof(val); i++)
        val[i] = (uint8_t)(i * 31 + 7);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(val, 1, sizeof(val), f), sizeof(val));
    fclose(f);
    cr_assert_eq(CTL("put", "file", "--value-from", path), 0, "%s", g_err);
    cr_assert_eq(CTL("get", "file"), 0, "%s", g_err);
    cr_assert_eq(memcmp(g_out, val, sizeof(val)), 0);
    cr_assert_eq(run_stdin(path, (const char *const[]){"put", "stdin", "--value-from", "-", NULL}),
                 0, "%s", g_err);
    cr_assert_eq(CTL("--json", "inspect", "stdin"), 0, "%s", g_err);
    cr_assert_eq(json_uint(g_out, "size"), sizeof(val));
    /* The value once, not twice and not never. */
    cr_assert_eq(CTL("put", "k", "v", "--value-from", path), 2);
    cr_assert(strstr(g_err, "not both"), "%s", g_err);
    cr_assert_eq(CTL("put", "k"), 2);
    cr_assert(strstr(g_err, "not neither"), "%s", g_err);
    cr_assert_eq(CTL("put", "k", "--value-from", "/nonexistent/value"), 2);
    cr_assert(strstr(g_err, "/nonexistent/value: cannot open"), "%s", g_err);
}

Test(khalactl, a_value_over_khalads_limit_is_refused_before_sending) {
    char path[160];
    snprintf(path, sizeof(path), "%s/keys", g_dir);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    for (int i = 0; i < 2048; i++) /* 2 MiB, over the 1 MiB default max_value_bytes */
        cr_assert_eq(fwrite(g_out, 1, 1024, f), 1024);
    fclose(f);
    cr_assert_eq(CTL("put", "big", "--value-from", path), 4);
    cr_assert(strstr(g_err, "khalad takes at most 1048576"), "%s", g_err);
    cr_assert_eq(CTL("get", "big"), 1);
}

Test(khalactl, bad_keys_and_patterns_exit_2) {
    char key[300];
    memset(key, 'k', sizeof(key) - 1);
    key[sizeof(key) - 1] = '\0';
    cr_assert_eq(CTL("get", key), 2);
    cr_assert(strstr(g_err, "a key is 1 to 250 bytes"), "%s", g_err);
    cr_assert_eq(CTL("get", ""), 2);
    cr_assert_eq(CTL("put", key, "v"), 2);
    cr_assert_eq(CTL("del", key), 2);
    cr_assert_eq(CTL("inspect", key), 2);
    cr_assert_eq(CTL("invalidate", "--prefix", key), 2);
    cr_assert_eq(CTL("warm", "--prefix", key), 2);
    char pattern[1100]; /* over KHALA_PROTO_PATTERN_MAX */
    memset(pattern, '*', sizeof(pattern) - 1);
    pattern[sizeof(pattern) - 1] = '\0';
    cr_assert_eq(CTL("keys", pattern), 2);
    cr_assert(strstr(g_err, "the pattern is"), "%s", g_err);
    cr_assert_eq(CTL("warm", "--keys-from", "/nonexistent/keys"), 2);
    cr_assert(strstr(g_err, "cannot open"), "%s", g_err);
    /* A line over the key limit in --keys-from names the line. */
    char path[160];
    snprintf(path, sizeof(path), "%s/keys", g_dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fprintf(f, "ok:1\n%s\n", key);
    fclose(f);
    cr_assert_eq(CTL("warm", "--keys-from", path), 2);
    cr_assert(strstr(g_err, ":2: the key is 299 bytes"), "%s", g_err);
    cr_assert_eq(CTL("--timeout", "0", "ping"), 2);
    cr_assert_eq(CTL("--name", "", "ping"), 2);
    cr_assert_eq(CTL("--json=yes", "ping"), 2);
}

/* khalad stopped (SIGSTOP): khalactl waits --timeout, then says so and exits 4. */
Test(khalactl, a_khalad_that_does_not_answer_exits_4_after_the_timeout) {
    cr_assert_eq(CTL("put", "k", "v"), 0, "%s", g_err);
    kill(khalad_pid, SIGSTOP);
    int rc = CTL("--timeout", "200", "ping");
    kill(khalad_pid, SIGCONT);
    cr_assert_eq(rc, 4, "stderr: %s", g_err);
    cr_assert(strstr(g_err, "did not answer within 200 ms"), "stderr: %s", g_err);
    cr_assert_eq(CTL("ping"), 0, "%s", g_err);
}
