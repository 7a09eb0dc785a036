/*
 * khalad: the coordinator daemon, one per host and cache. The only writer of the cache's L1
 * segment; serves workers and khalactl over a Unix socket.
 *
 *   khalad [--config FILE] [--name NAME] [--set SECTION.KEY=VALUE]... [--foreground]
 *          [--check] [--help] [--version]
 *
 * This file is option parsing, then start and stop (serve()); what khalad does with each request
 * is daemon/handlers.c, every write at every level daemon/store.c, the levels below L1
 * daemon/tiers.c.
 *
 * Start-up, in order: configuration (defaults, then the file, then --set overrides; anything
 * wrong stops the start with a message naming file, line and key), the L1 segment (adopted
 * when a previous khalad left a consistent one of the same sizes, so workers keep reading
 * through the restart; made anew otherwise), the socket, then readiness to systemd
 * (READY=1). SIGTERM and SIGINT stop the loop; the segment outlives khalad. SIGHUP reads the
 * [crypto] key file again (daemon/crypt.h), at the next tick.
 *
 * Logs are one JSON object per line on stderr (journald keeps them).
 */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "errbuf.h"
#include "khala/error.h"
#include "khala/version.h"
#include "dirs.h"
#include "fdlimit.h"
#include "fsmodes.h"
#include "khalad.h"
#include "log.h"
#include "sys.h"

static khala_server_t *g_srv;                /* for the signal handler */
static volatile sig_atomic_t g_reload_keys;  /* SIGHUP: the tick reads the key file again */
static volatile sig_atomic_t g_reopen_audit; /* SIGHUP: reopen the audit file at the next tick */

static void on_signal(int sig) {
    (void)sig;
    if (g_srv)
        khala__server_stop(g_srv);
}

static void on_hup(int sig) {
    (void)sig;
    g_reopen_audit = 1;
    g_reload_keys = 1;
}

/* SIGHUP: read [crypto] key_file again (rotation without a restart); a file that fails its
 * checks changes nothing and is logged. */
static void reload_keys(khalad_t *d) {
    g_reload_keys = 0;
    if (!d->crypt) {
        khala__log("info", "SIGHUP: no [crypto] key_file, nothing to reload", NULL);
        return;
    }
    char err[512] = "", cur[32], nkeys[32];
    int rc = khala__crypt_reload(d->crypt, d->cfg.crypto.key_file, err, sizeof(err));
    if (rc != 0) {
        khala__log("error", "SIGHUP: the key file was not reloaded; the old keys stay", "key_file",
                   d->cfg.crypto.key_file, "error", err, NULL);
        return;
    }
    snprintf(nkeys, sizeof(nkeys), "%zu", khala__crypt_nkeys(d->crypt));
    snprintf(cur, sizeof(cur), "%u", (unsigned)khala__crypt_current_id(d->crypt));
    khala__log("info", "SIGHUP: reloaded the key file", "key_file", d->cfg.crypto.key_file, "keys",
               nkeys, "current_key_id", cur, NULL);
}

static void usage(FILE *f) {
    fprintf(f, "usage: khalad [--config FILE] [--name NAME] [--set SECTION.KEY=VALUE]...\n"
               "              [--foreground] [--check] [--help] [--version]\n"
               "  --config FILE  read the configuration from FILE (INI; see docs/operating.md)\n"
               "  --name NAME    the cache to serve (overrides [cache] name)\n"
               "  --set S.K=V    override one setting, e.g. --set l1.max_memory_mb=200\n"
               "  --foreground   stay attached to the terminal (always so under systemd)\n"
               "  --check        validate the configuration, print it, and exit\n");
}

static void tick(void *arg) {
    khalad_t *d = arg;
    if (g_reload_keys)
        reload_keys(d);
    khala__handlers_tick(d);
    uint64_t now = (uint64_t)khala__sys_now_ms();
    if (g_reopen_audit) {
        g_reopen_audit = 0;
        (void)khala__audit_reopen(&d->audit);
    }
    khala__audit_tick(&d->audit, (int64_t)now);
    if (d->watchdog_usec && now - d->last_watchdog_ms >= d->watchdog_usec / 2000) {
        char status[128];
        khala_l1_stats_t st;
        khala__l1_stats(d->l1, &st);
        snprintf(status, sizeof(status), "WATCHDOG=1\nSTATUS=serving %llu items, %u connections",
                 (unsigned long long)st.items, khala__server_conns(d->srv));
        (void)sd_notify(0, status);
        d->last_watchdog_ms = now;
    }
}

/* The socket's group, by name or number: 0 with *gid set (-1 when none is configured). */
static int socket_group(const khalad_t *d, long *gid) {
    *gid = -1;
    if (!d->cfg.cache.socket_group[0])
        return 0;
    struct group *g = getgrnam(d->cfg.cache.socket_group);
    char *end;
    long n = g ? (long)g->gr_gid : strtol(d->cfg.cache.socket_group, &end, 10);
    if (!g && (*end || n < 0))
        return KHALA_ECONFIG;
    *gid = n;
    return 0;
}

/* The L1 segment's files must not be world-writable (lib/segment_create.c makes them 0640 and
 * 0660; an adopted segment may have been changed since): docs/security.md. */
static int check_segment_modes(const khalad_t *d, char *err, size_t errlen) {
    static const char *const parts[] = {"data", "readers", "lock"};
    char path[128], what[64];
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        snprintf(path, sizeof(path), "/dev/shm/khala.%s.%s", d->cfg.cache.name, parts[i]);
        snprintf(what, sizeof(what), "the L1 %s segment", parts[i]);
        int rc = khala__fsmodes_not_world_writable(path, what, err, errlen);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* The state directories (disk stores, the write journal) must not be world-writable. */
static int check_state_modes(const khalad_t *d, char *err, size_t errlen) {
    char path[KHALA_CONFIG_PATH_MAX + 64];
    for (int level = 2; level <= 3; level++) {
        if (khala__config_store_path(&d->cfg, level, path, sizeof(path) - 16) != 0)
            continue;
        const char *what = level == 2 ? "the L2 state directory" : "the L3 state directory";
        int rc = khala__fsmodes_not_world_writable(path, what, err, errlen);
        if (rc == 0) {
            strcat(path, "/journal");
            rc = khala__fsmodes_not_world_writable(path, "the write journal", err, errlen);
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

/*
 * Start, serve, stop. Start-up acquires, in order: the L1 segment, single-flight, the levels
 * below L1, the socket's directory and the socket; one unwinding path (the labels at the end)
 * releases what was acquired, in reverse order, whether start-up failed half-way or the loop
 * ended. What is left behind on purpose: the L1 segment (workers keep reading through a
 * restart; closing it never unlinks it) and the write journal (queued writes for the next
 * start). Everything fails with one "error" log line naming what could not be done, and exit
 * status 1.
 */
static int serve(khalad_t *d, int foreground) {
    char err[512] = "";
    int rc, ready = 0;
    if ((rc = khala__config_socket_path(&d->cfg, d->socket_path, sizeof(d->socket_path))) != 0) {
        fprintf(stderr, "khalad: cannot derive the socket path: %s\n", khala_strerror(rc));
        return 1;
    }
    if (!foreground && !getenv("NOTIFY_SOCKET") && daemon(0, 1) != 0) {
        fprintf(stderr, "khalad: cannot detach: %s\n", strerror(errno));
        return 1;
    }
    /* A file-size limit (ulimit -f, systemd's LimitFSIZE=) reached by a write is the disk
     * refusing it: the write fails with EFBIG and the level is marked down, as for a full disk.
     * SIGXFSZ's default action would end khalad instead. */
    signal(SIGXFSZ, SIG_IGN);
    d->uid = getuid();
    d->started_ms = (uint64_t)khala__sys_now_ms();
    d->coh_fd = -1;
    khala__proto_buf_init(&d->out);
    khala__store_init(d);
    {
        /* Descriptors: one per connection (daemon/fdlimit.c says why raise, and why warn). */
        uint64_t soft, hard;
        char lim[24], hlim[24], msg[400];
        rc = khala__fdlimit_raise(&soft, &hard);
        snprintf(lim, sizeof(lim), "%llu", (unsigned long long)soft);
        snprintf(hlim, sizeof(hlim), "%llu", (unsigned long long)hard);
        khala__log(rc == 0 ? "info" : "warn",
                   rc == 0 ? "file-descriptor limit" : "cannot raise the file-descriptor limit",
                   "nofile", lim, "hard", hlim, "error", rc == 0 ? "" : strerror(-rc), NULL);
        if (!khala__fdlimit_fits(d->cfg.server.max_connections, soft, msg, sizeof(msg)))
            khala__log("warn", msg, NULL);
    }
    if ((rc = socket_group(d, &d->socket_gid)) != 0) {
        khala__log("error", "unknown socket_group", "group", d->cfg.cache.socket_group, NULL);
        goto out_buf;
    }
    /* 1b. Who may do what ([access]), and the audit trail ([audit]): docs/security.md. */
    if ((rc = khala__acl_init(&d->acl, d->cfg.access.rule, d->uid, d->socket_gid, err,
                              sizeof(err))) != 0) {
        khala__log("error", "bad [access] rule", "error", err, NULL);
        goto out_buf;
    }
    if ((rc = khala__audit_open(&d->audit, d->cfg.audit.path, d->cfg.audit.read_sample_rate, err,
                                sizeof(err))) != 0) {
        khala__log("error", "cannot open the audit trail", "error", err, NULL);
        goto out_buf;
    }

    /* 2. The L1 segment: adopted if a previous khalad left a good one, else made anew. */
    khala_seg_config_t seg;
    khala__config_seg(&d->cfg, &seg);
    seg.gid = d->socket_gid; /* the socket's group is the readers' group: it owns the files */
    rc = khala__l1_open_ex(d->cfg.cache.name, &seg, KHALA_L1_REATTACH, &d->l1, err, sizeof(err));
    if (rc != 0) {
        khala__log("error", "cannot open the L1 segment", "cache", d->cfg.cache.name, "error", err,
                   NULL);
        goto out_buf;
    }
    if ((rc = check_segment_modes(d, err, sizeof(err))) != 0) {
        khala__log("error", "refusing to serve a world-writable L1 segment", "error", err, NULL);
        goto out_l1;
    }
    khala__log("info",
               khala__l1_reattached(d->l1) ? "adopted the existing L1 segment"
                                           : "made a new L1 segment",
               "cache", d->cfg.cache.name, "detail", khala__l1_errmsg(d->l1), NULL);
    {
        /* Huge pages take most of the TLB misses off the hit path (docs/operating.md, "Huge
         * pages"); say whether the host granted them, since only the host can. */
        char mib[32];
        uint64_t huge = khala__sys_huge_bytes(khala__l1_seg(d->l1)->base);
        snprintf(mib, sizeof(mib), "%llu", (unsigned long long)(huge >> 20));
        khala__log("info",
                   huge ? "the L1 segment is on 2 MiB pages"
                        : "the L1 segment is on 4 KiB pages; mount /dev/shm with huge=advise "
                          "for 2 MiB pages (docs/operating.md, \"Huge pages\")",
                   "huge_mib", mib, NULL);
    }
    if ((rc = khala__flight_open(&d->flight, d->cfg.policies.single_flight_timeout_ms,
                                 KHALAD_FLIGHT_MAX)) != 0) {
        khala__log("error", "cannot make the single-flight table", "error", khala_strerror(rc),
                   NULL);
        goto out_l1;
    }

    /* 3. The levels below L1, and what to warm from them. */
    if ((rc = khala__tiers_open(d)) != 0) {
        khala__log("error", "cannot open the levels below L1", "cache", d->cfg.cache.name, "error",
                   d->errmsg, NULL);
        goto out_tiers; /* closes what tiers_open had opened */
    }
    /* 3b. The link index of relationship caching (daemon/relationships.h). */
    if ((rc = khala__rel_open(d)) != 0) {
        khala__log("error", "cannot open the link index", "error", d->errmsg, NULL);
        goto out_tiers;
    }
    if (d->cfg.policies.coherence == KHALA_CONFIG_COHERENCE_PUBSUB)
        khala__rel_unproven(d, "other hosts' changes were not heard while khalad was down");
    if (d->cfg.policies.preload_common) {
        int64_t t0 = khala__sys_now_ms();
        uint64_t n = khala__tiers_preload(d);
        char items[32], ms[32];
        snprintf(items, sizeof(items), "%llu", (unsigned long long)n);
        snprintf(ms, sizeof(ms), "%lld", (long long)(khala__sys_now_ms() - t0));
        khala__log("info", "preloaded the most used keys of L2 into L1", "items", items, "ms", ms,
                   NULL);
    }

    if ((rc = check_state_modes(d, err, sizeof(err))) != 0) {
        khala__log("error", "refusing a world-writable state directory", "error", err, NULL);
        goto out_tiers;
    }

    /* 4. The socket, in a directory no other user can write to (daemon/fsmodes.h). */
    if ((rc = khala__fsmodes_socket_dir(d->socket_path, !d->cfg.cache.socket[0], d->uid, err,
                                        sizeof(err))) != 0) {
        khala__log("error", "cannot create the socket's directory, or it is not safe", "path",
                   d->socket_path, "error", err, NULL);
        goto out_tiers;
    }
    khala_server_config_t scfg;
    khala__server_config_init(&scfg);
    scfg.path = d->socket_path;
    scfg.mode = d->cfg.cache.socket_mode;
    scfg.max_frame = khala__config_server_max_frame(&d->cfg);
    scfg.max_out = d->cfg.server.max_output_bytes;
    scfg.max_in_total = d->cfg.server.max_buffer_bytes;
    scfg.frame_timeout_ms = d->cfg.server.frame_timeout_ms;
    scfg.max_conns = d->cfg.server.max_connections;
    scfg.gid = d->socket_gid;
    khala_server_ops_t ops = {.on_frame = khala__handlers_frame,
                              .on_bad_frame = khala__handlers_bad_frame,
                              .on_close = khala__handlers_close,
                              .on_tick = tick,
                              .on_refuse = khala__handlers_refuse};
    if ((rc = khala__server_open(&scfg, &ops, d, &d->srv, err, sizeof(err))) != 0) {
        khala__log("error", "cannot listen", "path", d->socket_path, "error", err, NULL);
        goto out_tiers;
    }
    g_srv = d->srv;
    ready = 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_hup;
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* 5. Ready. */
    uint64_t wd = 0;
    if (sd_watchdog_enabled(0, &wd) > 0)
        d->watchdog_usec = wd;
    (void)sd_notify(0, "READY=1\nSTATUS=serving");
    khala__log("info", "ready", "cache", d->cfg.cache.name, "socket", d->socket_path, NULL);
    rc = khala__server_run(d->srv);
    (void)sd_notify(0, "STOPPING=1");
    khala__log("info", "stopping", "cache", d->cfg.cache.name, NULL);
    g_srv = NULL;
    rc = rc == 0 ? 0 : KHALA_ETIER; /* any failure: exit 1 below */

    /* Unwinding, in reverse order. The levels close first, while the server still exists
     * (their descriptors are on its loop), and drain what they can. */
out_tiers:
    khala__tiers_close(d);
    khala__rel_close(d);
    if (d->srv) {
        khala__server_close(d->srv);
        d->srv = NULL;
    }
    khala__flight_close(d->flight);
    d->flight = NULL;
out_l1:
    /* The segment outlives khalad (workers keep reading through a restart), unless this start
     * made it and failed: then no worker has seen it, and nothing is left behind. */
    khala__l1_close(d->l1, !ready && !khala__l1_reattached(d->l1));
    d->l1 = NULL;
out_buf:
    khala__audit_close(&d->audit);
    khala__proto_buf_free(&d->out);
    return rc == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    static khalad_t d;
    const char *config_path = NULL, *name = NULL;
    int foreground = 0, check_only = 0;
    char err[512] = "";
    char *sets[64];
    int nsets = 0;
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"name", required_argument, NULL, 'n'},
        {"set", required_argument, NULL, 's'},    {"foreground", no_argument, NULL, 'f'},
        {"check", no_argument, NULL, 'k'},        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},      {NULL, 0, NULL, 0}};
    for (int o; (o = getopt_long(argc, argv, "c:n:s:fkhV", opts, NULL)) != -1;) {
        switch (o) {
            case 'c':
                config_path = optarg;
                break;
            case 'n':
                name = optarg;
                break;
            case 's':
                if (nsets == (int)(sizeof(sets) / sizeof(sets[0])) - 1) { /* one for --name */
                    fprintf(stderr, "khalad: too many --set options\n");
                    return 2;
                }
                sets[nsets++] = optarg;
                break;
            case 'f':
                foreground = 1;
                break;
            case 'k':
                check_only = 1;
                break;
            case 'h':
                usage(stdout);
                return 0;
            case 'V':
                printf("khalad %s\n", KHALA_VERSION_STRING);
                return 0;
            default:
                usage(stderr);
                return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "khalad: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }

    /* 1. Configuration: defaults, then the file and the overrides (--name is one), checked
     * once as a whole, so neither their order nor where a key comes from matters. */
    char name_set[KHALA_NAME_MAX + 16];
    if (name) {
        if (strlen(name) > KHALA_NAME_MAX) {
            fprintf(stderr, "khalad: --name: '%.*s...' is longer than %d bytes\n", 16, name,
                    KHALA_NAME_MAX);
            return 1;
        }
        snprintf(name_set, sizeof(name_set), "cache.name=%s", name);
        sets[nsets++] = name_set; /* the parse loop keeps one place free for it */
    }
    int rc = khala__config_defaults(&d.cfg, name);
    if (rc == 0)
        rc = khala__config_load(&d.cfg, config_path, (const char *const *)sets, (size_t)nsets, err,
                                sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "khalad: %s\n", err[0] ? err : khala_strerror(rc));
        return 1;
    }
    /* The key ring: its file's owner, mode and contents are checked by --check too. */
    if (d.cfg.crypto.key_file[0] &&
        (rc = khala__crypt_load(d.cfg.crypto.key_file, khala__config_encrypted_types(&d.cfg),
                                &d.crypt, err, sizeof(err))) != 0) {
        fprintf(stderr, "khalad: %s\n", err[0] ? err : khala_strerror(rc));
        return 1;
    }
    if (check_only) {
        khala__config_dump(&d.cfg, stdout);
        khala__crypt_close(d.crypt);
        return 0;
    }
    if ((rc = khala__config_socket_path(&d.cfg, d.socket_path, sizeof(d.socket_path))) != 0) {
        fprintf(stderr, "khalad: cannot derive the socket path: %s\n", khala_strerror(rc));
        khala__crypt_close(d.crypt);
        return 1;
    }
    if (d.crypt) {
        char nkeys[32], cur[32];
        snprintf(nkeys, sizeof(nkeys), "%zu", khala__crypt_nkeys(d.crypt));
        snprintf(cur, sizeof(cur), "%u", (unsigned)khala__crypt_current_id(d.crypt));
        khala__log("info", "encryption at rest: values of encrypted types are sealed below L1",
                   "key_file", d.cfg.crypto.key_file, "keys", nkeys, "current_key_id", cur, NULL);
    }
    rc = serve(&d, foreground);
    khala__crypt_close(d.crypt);
    d.crypt = NULL;
    return rc;
}
