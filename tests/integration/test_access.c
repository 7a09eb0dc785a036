/*
 * Access control, audit and the directories khalad trusts, end to end (issue 10: bugs 5 and 6,
 * "Access control", "Audit"). A real khalad, and peers that are really another user: children
 * that become uid 65534 with the socket's group (54321) as their one supplementary group, so
 * that they can connect and khalad, not the file system, decides what they may do. That needs
 * root; those tests skip cleanly otherwise.
 *
 * The audit trail goes to a file in the test's directory; the tests parse its lines.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "channel.h"
#include "khala/error.h"
#include "khalad_util.h"
#include "proto.h"

#define PEER_UID 65534
#define SOCKET_GROUP 54321

static char g_audit[200];
static char g_audit_set[232];

static void setup(void) {
    khalad_env_init("ac");
    snprintf(g_audit, sizeof(g_audit), "%s/audit.log", khalad_dir());
    snprintf(g_audit_set, sizeof(g_audit_set), "audit.path=%s", g_audit);
}

TestSuite(access, .init = setup, .fini = khalad_env_fini, .timeout = 60);

#define SKIP_UNLESS_ROOT()                                                                         \
    do {                                                                                           \
        if (geteuid() != 0)                                                                        \
            cr_skip_test("needs root to become uid 65534");                                        \
    } while (0)

/* Start khalad with its socket in SOCKET_GROUP, the audit file, and the given --set overrides
 * (NULL-terminated), and let others reach the socket's directory. */
static void start(const char *const *sets) {
    int n = 0;
    khalad_extra_set = "cache.socket_mode=0660";
    khalad_extra_sets[n++] = "cache.socket_group=54321";
    khalad_extra_sets[n++] = g_audit_set;
    for (int i = 0; sets && sets[i]; i++)
        khalad_extra_sets[n++] = sets[i];
    khalad_extra_sets[n] = NULL;
    khalad_start();
    char dir[sizeof(khalad_sock)];
    snprintf(dir, sizeof(dir), "%s", khalad_sock);
    *strrchr(dir, '/') = '\0';
    cr_assert_eq(chmod(dir, 0711), 0);
}

/* In a child: become the other user, in the socket's group. */
static int become_peer(void) {
    const gid_t group = SOCKET_GROUP;
    return setgroups(1, &group) == 0 && setgid(PEER_UID) == 0 && setuid(PEER_UID) == 0 ? 0 : -1;
}

static khala_chan_t *open_chan(void) {
    char err[256];
    khala_chan_t *ch = NULL;
    int rc = khala__chan_open(khalad_sock, khalad_name, 5000, &ch, err, sizeof(err));
    return rc == 0 ? ch : NULL;
}

/* One request on ch: its reply's rc, the error message into msg (may be NULL), and the reply
 * itself into *out when out is not NULL (the caller frees it). */
static int call(khala_chan_t *ch, khala_msg_t *m, char *msg, size_t len, khala_msg_t *out) {
    khala_msg_t r;
    char err[256];
    khala__proto_msg_init(&r); /* the channel frees what *reply held */
    if (khala__chan_call(ch, m, &r, 5000, err, sizeof(err)) != 0)
        return 1; /* not an rc khalad sends */
    if (msg)
        snprintf(msg, len, "%.*s", (int)r.err.len, (const char *)r.err.ptr);
    int rc = r.rc;
    if (out)
        *out = r;
    else
        khala__proto_msg_free(&r);
    return rc;
}

static int put(khala_chan_t *ch, const char *key, const char *val, char *msg, size_t len) {
    khala_msg_t m = khalad_req(KHALA_OP_PUT, key);
    m.value.ptr = (const uint8_t *)val;
    m.value.len = strlen(val);
    m.has |= KHALA_F_V;
    return call(ch, &m, msg, len, NULL);
}

static int get(khala_chan_t *ch, const char *key, char *msg, size_t len) {
    khala_msg_t m = khalad_req(KHALA_OP_GET, key);
    return call(ch, &m, msg, len, NULL);
}

static int run_child(int (*fn)(void)) {
    pid_t p = fork();
    cr_assert_geq(p, 0);
    if (p == 0) {
        if (become_peer() != 0)
            _exit(2);
        _exit(fn());
    }
    int st;
    cr_assert_eq(waitpid(p, &st, 0), p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st);
}

/* The audit file's lines, read whole. */
static char g_lines[65536];
static const char *audit_lines(void) {
    int fd = open(g_audit, O_RDONLY);
    cr_assert_geq(fd, 0, "%s: %s", g_audit, strerror(errno));
    ssize_t n = read(fd, g_lines, sizeof(g_lines) - 1);
    close(fd);
    cr_assert_geq(n, 0);
    g_lines[n] = '\0';
    return g_lines;
}

/* The value of "field" in one JSON line (a string without its quotes, or a number), or NULL. */
static const char *field(const char *line, const char *name, char *out, size_t len) {
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", name);
    const char *eol = strchr(line, '\n'), *p = strstr(line, pat);
    if (!p || (eol && p > eol))
        return NULL;
    p += strlen(pat);
    size_t n = 0;
    if (*p == '"') {
        for (p++; *p && *p != '"' && n + 1 < len; p++) {
            if (*p == '\\')
                p++;
            out[n++] = *p;
        }
    } else {
        while (*p && *p != ',' && *p != '}' && n + 1 < len)
            out[n++] = *p++;
    }
    out[n] = '\0';
    return out;
}

/* Count the lines whose fields match every name=value of a NULL-terminated list; each line
 * must be one JSON object (starts with '{', ends with "}\n") with a time in RFC 3339 UTC. */
static int count_lines(const char *const *match) {
    int count = 0;
    for (const char *line = audit_lines(); *line;) {
        const char *eol = strchr(line, '\n');
        cr_assert_not_null(eol, "a line without its end: %s", line);
        cr_assert(line[0] == '{' && eol[-1] == '}', "not one JSON object: %.*s", (int)(eol - line),
                  line);
        char v[512];
        cr_assert_not_null(field(line, "time", v, sizeof(v)));
        cr_assert(strlen(v) == 24 && v[4] == '-' && v[10] == 'T' && v[23] == 'Z', "time %s", v);
        int ok = 1;
        for (size_t i = 0; match[i]; i += 2)
            ok &= field(line, match[i], v, sizeof(v)) && strcmp(v, match[i + 1]) == 0;
        count += ok;
        line = eol + 1;
    }
    return count;
}

static uint64_t stat_u(const char *section, const char *name) {
    khala_chan_t *ch = open_chan();
    cr_assert_not_null(ch);
    khala_msg_t m = khalad_req(KHALA_OP_STATS, NULL), r;
    cr_assert_eq(call(ch, &m, NULL, 0, &r), 0);
    const khala_kv_t *sec = khala__proto_kv_find(r.data, r.ndata, section);
    cr_assert_not_null(sec);
    const khala_kv_t *kv = khala__proto_kv_find(sec->as.map.items, sec->as.map.n, name);
    cr_assert_not_null(kv, "%s.%s", section, name);
    uint64_t v = kv->as.u;
    khala__proto_msg_free(&r);
    khala__chan_close(ch);
    return v;
}

/* Peers ------------------------------------------------------------------------------------ */

enum { OK = 0, NO_CHAN = 3, STEP = 10 };

static int prefix_peer(void) {
    khala_chan_t *ch = open_chan();
    char msg[512];
    if (!ch)
        return NO_CHAN;
    if (put(ch, "reports/q3", "by the peer", msg, sizeof(msg)) != 0)
        return STEP + 1;
    if (put(ch, "secrets/x", "intruder", msg, sizeof(msg)) != KHALA_EDENIED ||
        !strstr(msg, "uid 65534 lacks the 'write' right on key 'secrets/x'"))
        return STEP + 2;
    if (get(ch, "secrets/x", msg, sizeof(msg)) != KHALA_EDENIED ||
        !strstr(msg, "lacks the 'read' right on key 'secrets/x'"))
        return STEP + 3;
    if (get(ch, "reports/q3", msg, sizeof(msg)) != 0)
        return STEP + 4;
    khala_msg_t m = khalad_req(KHALA_OP_INSPECT, "secrets/x");
    if (call(ch, &m, msg, sizeof(msg), NULL) != KHALA_EDENIED ||
        !strstr(msg, "'read' right on key 'secrets/x' for inspect"))
        return STEP + 5;
    khala__chan_close(ch);
    return OK;
}

Test(access, a_prefix_rule_allows_one_prefix_and_refuses_another) {
    SKIP_UNLESS_ROOT();
    const char *sets[] = {"access.rule=user:65534 read,write prefix:reports/", NULL};
    start(sets);
    khala_chan_t *owner = open_chan();
    cr_assert_not_null(owner);
    cr_assert_eq(put(owner, "secrets/x", "the owner's", NULL, 0), 0);
    int rc = run_child(prefix_peer);
    cr_assert_eq(rc, OK,
                 "the peer failed at step %d (11 put allowed, 12 put refused, 13 get "
                 "refused, 14 get allowed, 15 inspect refused)",
                 rc);
    char msg[64];
    cr_assert_eq(get(owner, "secrets/x", msg, sizeof(msg)), 0);
    khala__chan_close(owner);
    cr_assert_eq(stat_u("khalad", "denied"), 3);
    /* Both refusals are audited, with who, what, which key, the missing right and the rc. */
    char rc_s[16];
    snprintf(rc_s, sizeof(rc_s), "%d", KHALA_EDENIED);
    const char *put_denied[] = {"event", "denied", "uid",  "65534",       "gid",   "65534",
                                "op",    "put",    "key",  "secrets/x",   "right", "write",
                                "rc",    rc_s,     "comm", "test_access", NULL};
    cr_assert_eq(count_lines(put_denied), 1, "%s", audit_lines());
    const char *get_denied[] = {"event", "denied", "op", "get", "right", "read", NULL};
    cr_assert_eq(count_lines(get_denied), 1, "%s", audit_lines());
}

static int reader_peer(void) {
    khala_chan_t *ch = open_chan();
    char msg[512];
    if (!ch)
        return NO_CHAN;
    khala_msg_t m = khalad_req(KHALA_OP_FLUSH, NULL);
    if (call(ch, &m, msg, sizeof(msg), NULL) != KHALA_EDENIED ||
        !strstr(msg, "lacks the 'admin' right for flush"))
        return STEP + 1;
    m = khalad_req(KHALA_OP_CONFIG, NULL);
    if (call(ch, &m, msg, sizeof(msg), NULL) != KHALA_EDENIED || !strstr(msg, "'admin' right"))
        return STEP + 2;
    m = khalad_req(KHALA_OP_INVALIDATE, NULL);
    m.by = KHALA_BY_PREFIX;
    m.prefix.ptr = (const uint8_t *)"k";
    m.prefix.len = 1;
    m.has |= KHALA_F_BY | KHALA_F_PREFIX;
    if (call(ch, &m, msg, sizeof(msg), NULL) != KHALA_EDENIED)
        return STEP + 3;
    if (get(ch, "kept", msg, sizeof(msg)) != 0)
        return STEP + 4;
    khala__chan_close(ch);
    /* khalactl says so too, and exits 7. */
    int errp[2];
    if (pipe(errp) != 0)
        return STEP + 5;
    pid_t p = fork();
    if (p == 0) {
        dup2(errp[1], 2);
        execl(KHALACTL_PATH, "khalactl", "--socket", khalad_sock, "config", (char *)NULL);
        _exit(127);
    }
    close(errp[1]);
    char out[1024];
    size_t n = 0; /* all of it: khalactl's line may come in more than one write */
    for (ssize_t r; n < sizeof(out) - 1 && (r = read(errp[0], out + n, sizeof(out) - 1 - n)) > 0;)
        n += (size_t)r;
    out[n] = '\0';
    close(errp[0]);
    int st;
    waitpid(p, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 7)
        return STEP + 6;
    if (!strstr(out, "khalactl: config: refused by khalad: uid 65534 lacks the 'admin' right"))
        return STEP + 7;
    return OK;
}

Test(access, a_read_only_peer_cannot_flush_or_see_config) {
    SKIP_UNLESS_ROOT();
    const char *sets[] = {"access.rule=user:65534 read",
                          "l2.redis_url=redis://app:s3cret@127.0.0.1:1/0", NULL};
    start(sets);
    khala_chan_t *owner = open_chan();
    cr_assert_not_null(owner);
    cr_assert_eq(put(owner, "kept", "v", NULL, 0), 0);
    int rc = run_child(reader_peer);
    cr_assert_eq(rc, OK,
                 "the reader failed at step %d (11 flush, 12 config, 13 invalidate by "
                 "prefix, 14 get, 16-17 khalactl)",
                 rc);
    /* Nothing was flushed; the owner (admin) sees the config, without the password (bug 5). */
    cr_assert_eq(get(owner, "kept", NULL, 0), 0);
    khala_msg_t m = khalad_req(KHALA_OP_CONFIG, NULL), r;
    cr_assert_eq(call(owner, &m, NULL, 0, &r), 0);
    const khala_kv_t *ini = khala__proto_kv_find(r.data, r.ndata, "ini");
    cr_assert_not_null(ini);
    cr_assert_null(memmem(ini->as.s.ptr, ini->as.s.len, "s3cret", 6), "the password is shown");
    cr_assert_not_null(memmem(ini->as.s.ptr, ini->as.s.len, "redis://app:***@127.0.0.1:1/0", 29));
    khala__proto_msg_free(&r);
    khala__chan_close(owner);
    const char *denied[] = {"event", "denied", "right", "admin", NULL};
    cr_assert_eq(count_lines(denied), 4, "flush, config, invalidate, khalactl's config: %s",
                 audit_lines());
    const char *admin_ok[] = {"event", "admin", "op", "config", "uid", "0", "rc", "0", NULL};
    cr_assert_eq(count_lines(admin_ok), 1, "%s", audit_lines());
    const char *by_prefix[] = {"op", "invalidate", "prefix", "k", NULL};
    cr_assert_eq(count_lines(by_prefix), 1, "%s", audit_lines());
}

/* keys as the peer: the keys of one page, sorted into a comma-separated list. */
static int keys_of(khala_chan_t *ch, char *out, size_t len) {
    khala_msg_t m = khalad_req(KHALA_OP_KEYS, NULL), r;
    m.count = 100;
    m.has |= KHALA_F_COUNT;
    if (call(ch, &m, NULL, 0, &r) != 0)
        return -1;
    char names[16][64];
    uint32_t n = r.nkeys < 16 ? r.nkeys : 16;
    for (uint32_t i = 0; i < n; i++)
        snprintf(names[i], sizeof(names[i]), "%.*s", (int)r.keys[i].len,
                 (const char *)r.keys[i].ptr);
    khala__proto_msg_free(&r);
    qsort(names, n, sizeof(names[0]), (int (*)(const void *, const void *))strcmp);
    out[0] = '\0';
    for (uint32_t i = 0; i < n; i++)
        snprintf(out + strlen(out), len - strlen(out), "%s%s", i ? "," : "", names[i]);
    return (int)n;
}

static int keys_peer(void) {
    khala_chan_t *ch = open_chan();
    char list[512];
    if (!ch)
        return NO_CHAN;
    if (keys_of(ch, list, sizeof(list)) != 2 || strcmp(list, "pub/a,pub/b") != 0) {
        fprintf(stderr, "keys as the peer: %s\n", list);
        return STEP + 1;
    }
    return OK;
}

Test(access, a_non_admins_keys_shows_only_readable_keys) {
    SKIP_UNLESS_ROOT();
    const char *sets[] = {"access.rule=user:65534 read prefix:pub/", NULL};
    start(sets);
    khala_chan_t *owner = open_chan();
    cr_assert_not_null(owner);
    cr_assert_eq(put(owner, "pub/a", "1", NULL, 0), 0);
    cr_assert_eq(put(owner, "pub/b", "2", NULL, 0), 0);
    cr_assert_eq(put(owner, "priv/c", "3", NULL, 0), 0);
    int rc = run_child(keys_peer);
    cr_assert_eq(rc, OK, "the peer failed at step %d", rc);
    char list[512];
    cr_assert_eq(keys_of(owner, list, sizeof(list)), 3, "%s", list);
    khala__chan_close(owner);
    const char *keys_audited[] = {"event", "admin", "op", "keys", "uid", "65534", NULL};
    cr_assert_eq(count_lines(keys_audited), 1, "%s", audit_lines());
}

/* Reads are audited at the configured rate: every one at 1, none at 0. */
static void gets_audited(const char *rate, int want) {
    char set[64];
    snprintf(set, sizeof(set), "audit.read_sample_rate=%s", rate);
    const char *sets[] = {set, NULL};
    start(sets);
    khala_chan_t *ch = open_chan();
    cr_assert_not_null(ch);
    cr_assert_eq(put(ch, "hot", "v", NULL, 0), 0);
    for (int i = 0; i < 20; i++)
        cr_assert_eq(get(ch, "hot", NULL, 0), 0);
    cr_assert_eq(get(ch, "cold", NULL, 0), KHALA_ENOTFOUND);
    khala__chan_close(ch);
    const char *reads[] = {"event", "read", "op", "get", "sample_rate", rate, NULL};
    cr_assert_eq(count_lines(reads), want, "%s", audit_lines());
    char nf[16];
    snprintf(nf, sizeof(nf), "%d", KHALA_ENOTFOUND);
    const char *miss[] = {"event", "read", "key", "cold", "rc", nf, NULL};
    cr_assert_eq(count_lines(miss), want ? 1 : 0, "%s", audit_lines());
}

Test(access, a_read_sample_rate_of_1_audits_every_get) {
    gets_audited("1", 21);
}

Test(access, a_read_sample_rate_of_0_audits_no_get) {
    gets_audited("0", 0);
    struct stat st;
    cr_assert(stat(g_audit, &st) != 0 || st.st_size == 0, "no line at all");
}

/* Directories and modes ------------------------------------------------------------------------ */

/* Run khalad with the overrides; its exit status and stderr. A khalad that is still running after
 * 20 s (it started: the refusal under test did not happen) is stopped, and the status is 200. */
static int run_khalad(const char *const *sets, char *out, size_t len) {
    int errp[2];
    cr_assert_eq(pipe(errp), 0);
    pid_t p = fork();
    cr_assert_geq(p, 0);
    if (p == 0) {
        const char *argv[32] = {"khalad", "--foreground", "--name", khalad_name};
        int n = 4;
        for (int i = 0; sets[i]; i++) {
            argv[n++] = "--set";
            argv[n++] = sets[i];
        }
        argv[n] = NULL;
        dup2(errp[1], 2);
        close(errp[0]);
        execv(KHALAD_PATH, (char *const *)argv);
        _exit(127);
    }
    close(errp[1]);
    size_t n = 0;
    int started = 0;
    for (;;) {
        struct pollfd pfd = {.fd = errp[0], .events = POLLIN};
        if (poll(&pfd, 1, 20000) <= 0) {
            started = 1;
            break;
        }
        ssize_t r = read(errp[0], out + n, len - 1 - n);
        if (r <= 0 || (n += (size_t)r) == len - 1)
            break;
    }
    out[n] = '\0';
    close(errp[0]);
    if (started)
        kill(p, SIGTERM);
    int st;
    cr_assert_eq(waitpid(p, &st, 0), p);
    return started ? 200 : WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st);
}

/* Bug 6: a socket directory that others may write to, or that another user owns, stops khalad
 * with a message naming it; before, khalad listened in it. */
Test(access, khalad_refuses_a_socket_directory_others_can_write_or_own) {
    char dir[160], sock[200], sock_set[220], l2[200], out[8192];
    snprintf(dir, sizeof(dir), "%s/open", khalad_dir());
    snprintf(sock, sizeof(sock), "%s/k.sock", dir);
    snprintf(sock_set, sizeof(sock_set), "cache.socket=%s", sock);
    snprintf(l2, sizeof(l2), "l2.path=%s/l2", khalad_dir());
    cr_assert_eq(mkdir(dir, 0777), 0);
    cr_assert_eq(chmod(dir, 0777), 0);
    const char *sets[] = {sock_set, l2, "l1.max_memory_mb=16", NULL};
    cr_assert_eq(run_khalad(sets, out, sizeof(out)), 1, "%s", out);
    cr_assert_not_null(strstr(out, "world-writable"), "%s", out);
    cr_assert_not_null(strstr(out, dir), "%s", out);
    cr_assert_neq(access(sock, F_OK), 0, "no socket was made");
    if (geteuid() == 0) {
        cr_assert_eq(chmod(dir, 0755), 0);
        cr_assert_eq(chown(dir, PEER_UID, PEER_UID), 0);
        cr_assert_eq(run_khalad(sets, out, sizeof(out)), 1, "%s", out);
        cr_assert_not_null(strstr(out, "owned by uid 65534, neither root nor uid 0"), "%s", out);
    }
}

Test(access, khalad_refuses_a_world_writable_state_directory) {
    char l2dir[160], l2[200], sock_set[200], out[8192];
    snprintf(l2dir, sizeof(l2dir), "%s/l2", khalad_dir());
    snprintf(l2, sizeof(l2), "l2.path=%s", l2dir);
    snprintf(sock_set, sizeof(sock_set), "cache.socket=%s", khalad_sock);
    cr_assert_eq(mkdir(l2dir, 0700), 0);
    cr_assert_eq(chmod(l2dir, 0777), 0);
    const char *sets[] = {sock_set, l2, "l1.max_memory_mb=16", NULL};
    cr_assert_eq(run_khalad(sets, out, sizeof(out)), 1, "%s", out);
    cr_assert_not_null(strstr(out, "the L2 state directory"), "%s", out);
    cr_assert_not_null(strstr(out, "world-writable"), "%s", out);
}

/* logrotate: after the file is moved away, SIGHUP makes khalad write to a new file at the path
 * (the once-a-second check would too; the signal does it at the next tick). */
Test(access, sighup_reopens_the_audit_file) {
    start(NULL);
    khala_chan_t *ch = open_chan();
    cr_assert_not_null(ch);
    khala_msg_t m = khalad_req(KHALA_OP_FLUSH, NULL);
    cr_assert_eq(call(ch, &m, NULL, 0, NULL), 0);
    char rotated[sizeof(g_audit) + 8];
    snprintf(rotated, sizeof(rotated), "%s.1", g_audit);
    cr_assert_eq(rename(g_audit, rotated), 0);
    cr_assert_eq(kill(khalad_pid, SIGHUP), 0);
    /* Bounded wait for the reopen: the new file appears (khalad ticks every 10 ms). */
    struct stat st;
    for (int i = 0; i < 500 && stat(g_audit, &st) != 0; i++)
        sleep_ms(10);
    cr_assert_eq(stat(g_audit, &st), 0, "no new audit file after SIGHUP");
    m = khalad_req(KHALA_OP_CONFIG, NULL);
    cr_assert_eq(call(ch, &m, NULL, 0, NULL), 0);
    khala__chan_close(ch);
    const char *config[] = {"event", "admin", "op", "config", NULL};
    const char *flush[] = {"event", "admin", "op", "flush", NULL};
    cr_assert_eq(count_lines(config), 1, "%s", audit_lines());
    cr_assert_eq(count_lines(flush), 0, "%s", audit_lines());
    cr_assert_lt(strlen(rotated), sizeof(g_audit));
    memcpy(g_audit, rotated, strlen(rotated) + 1);
    cr_assert_eq(count_lines(flush), 1, "%s", audit_lines());
}

/* A segment file made world-writable after khalad made it (0640) is given its mode back when the
 * next khalad adopts the segment: the segments are never left world-writable (khalad also
 * checks them after opening, and refuses to serve if they still were). */
Test(access, an_adopted_world_writable_segment_is_made_private_again) {
    start(NULL);
    khalad_kill(SIGTERM);
    char data[160], readers[160];
    snprintf(data, sizeof(data), "/dev/shm/khala.%s.data", khalad_name);
    snprintf(readers, sizeof(readers), "/dev/shm/khala.%s.readers", khalad_name);
    cr_assert_eq(chmod(data, 0666), 0, "%s: %s", data, strerror(errno));
    cr_assert_eq(chmod(readers, 0666), 0, "%s: %s", readers, strerror(errno));
    start(NULL);
    struct stat st;
    cr_assert_eq(stat(data, &st), 0);
    cr_assert_eq(st.st_mode & 07777, 0640, "data %o", st.st_mode & 07777);
    cr_assert_eq(stat(readers, &st), 0);
    cr_assert_eq(st.st_mode & 07777, 0660, "readers %o", st.st_mode & 07777);
    cr_assert_eq(st.st_gid, SOCKET_GROUP);
}

/* similar (issue 12) returns only the matches the peer may read, as keys does. */
static int similar_of(khala_chan_t *ch, char *out, size_t len) {
    static const float q[4] = {1, 0, 0, 0};
    khala_msg_t m = khalad_req(KHALA_OP_SIMILAR, NULL), r;
    m.value = (khala_bytes_t){(const uint8_t *)q, sizeof(q)};
    m.count = 10;
    m.sim = -1;
    m.has |= KHALA_F_V | KHALA_F_COUNT | KHALA_F_SIM;
    if (call(ch, &m, NULL, 0, &r) != 0)
        return -1;
    char names[16][64];
    uint32_t n = r.nmatches < 16 ? r.nmatches : 16;
    for (uint32_t i = 0; i < n; i++)
        snprintf(names[i], sizeof(names[i]), "%.*s", (int)r.matches[i].key.len,
                 (const char *)r.matches[i].key.ptr);
    khala__proto_msg_free(&r);
    qsort(names, n, sizeof(names[0]), (int (*)(const void *, const void *))strcmp);
    out[0] = '\0';
    for (uint32_t i = 0; i < n; i++)
        snprintf(out + strlen(out), len - strlen(out), "%s%s", i ? "," : "", names[i]);
    return (int)n;
}

static int similar_peer(void) {
    khala_chan_t *ch = open_chan();
    char list[512];
    if (!ch)
        return NO_CHAN;
    if (similar_of(ch, list, sizeof(list)) != 2 || strcmp(list, "pub/e1,pub/e2") != 0) {
        fprintf(stderr, "similar as the peer: %s\n", list);
        return STEP + 1;
    }
    return OK;
}

Test(access, similar_returns_only_the_matches_the_peer_may_read) {
    SKIP_UNLESS_ROOT();
    const char *sets[] = {"access.rule=user:65534 read prefix:pub/", NULL};
    start(sets);
    khala_chan_t *owner = open_chan();
    cr_assert_not_null(owner);
    static const float v[4] = {1, 0.01f, 0, 0};
    const char *keys[] = {"pub/e1", "pub/e2", "priv/e3"};
    for (int i = 0; i < 3; i++) {
        khala_msg_t m = khalad_req(KHALA_OP_PUT, keys[i]);
        m.value = (khala_bytes_t){(const uint8_t *)v, sizeof(v)};
        m.type = KHALA_TYPE_EMBEDDING;
        m.mode = KHALA_MODE_THROUGH;
        m.has |= KHALA_F_V | KHALA_F_TYPE | KHALA_F_MODE;
        cr_assert_eq(call(owner, &m, NULL, 0, NULL), 0);
    }
    int rc = run_child(similar_peer);
    cr_assert_eq(rc, OK, "the peer failed at step %d", rc);
    char list[512];
    cr_assert_eq(similar_of(owner, list, sizeof(list)), 3, "%s", list);
    khala__chan_close(owner);
}
