/*
 * khalad: the coordinator daemon, one per host and cache. The only writer of the cache's L1
 * segment; serves workers and khalactl over a Unix socket.
 *
 *   khalad [--config FILE] [--name NAME] [--set SECTION.KEY=VALUE]... [--foreground]
 *          [--check] [--help] [--version]
 *
 * Start-up, in order: configuration (defaults, then the file, then --set overrides; anything
 * wrong stops the start with a message naming file, line and key), the L1 segment (adopted
 * when a previous khalad left a consistent one of the same sizes, so workers keep reading
 * through the restart; made anew otherwise), the socket, then readiness to systemd
 * (READY=1). SIGTERM and SIGINT stop the loop; the segment outlives khalad.
 *
 * Logs are one JSON object per line on stderr (journald keeps them).
 */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "khala/error.h"
#include "khala/version.h"
#include "khalad.h"
#include "sys.h"

static khala_server_t *g_srv; /* for the signal handler */

/* Write s as a JSON string body (without quotes). */
static void json_str(FILE *f, const char *s) {
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
}

void khala__log(const char *level, const char *msg, ...) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    fprintf(stderr, "{\"ts\":%lld.%03ld,\"level\":\"%s\",\"msg\":\"", (long long)ts.tv_sec,
            ts.tv_nsec / 1000000, level);
    json_str(stderr, msg);
    fputc('"', stderr);
    va_list ap;
    va_start(ap, msg);
    for (const char *k; (k = va_arg(ap, const char *)) != NULL;) {
        const char *v = va_arg(ap, const char *);
        fputs(",\"", stderr);
        json_str(stderr, k);
        fputs("\":\"", stderr);
        json_str(stderr, v ? v : "");
        fputc('"', stderr);
    }
    va_end(ap);
    fputs("}\n", stderr);
    fflush(stderr);
}

static void on_signal(int sig) {
    (void)sig;
    if (g_srv)
        khala__server_stop(g_srv);
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

/* mkdir -p for the socket's directory (mode 0755 for new components). */
static int make_parent_dirs(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof(buf), "%s", path);
    char *slash = strrchr(buf, '/');
    if (!slash || slash == buf)
        return 0;
    *slash = '\0';
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return -errno;
    return 0;
}

static void tick(void *arg) {
    khalad_t *d = arg;
    khala__handlers_tick(d);
    uint64_t now = (uint64_t)khala__sys_now_ms();
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
                if (nsets == (int)(sizeof(sets) / sizeof(sets[0]))) {
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

    /* 1. Configuration: defaults, file, overrides. */
    int rc = khala__config_defaults(&d.cfg, name);
    if (rc == 0 && config_path)
        rc = khala__config_load_file(&d.cfg, config_path, err, sizeof(err));
    if (rc == 0 && name)
        rc = khala__config_set(&d.cfg, "cache.name", name, err, sizeof(err));
    for (int i = 0; rc == 0 && i < nsets; i++) {
        char *eq = strchr(sets[i], '=');
        if (!eq) {
            snprintf(err, sizeof(err), "--set %s: want SECTION.KEY=VALUE", sets[i]);
            rc = KHALA_ECONFIG;
            break;
        }
        *eq = '\0';
        rc = khala__config_set(&d.cfg, sets[i], eq + 1, err, sizeof(err));
    }
    if (rc == 0)
        rc = khala__config_check(&d.cfg, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "khalad: %s\n", err[0] ? err : khala_strerror(rc));
        return 1;
    }
    if (check_only) {
        khala__config_dump(&d.cfg, stdout);
        return 0;
    }
    if ((rc = khala__config_socket_path(&d.cfg, d.socket_path, sizeof(d.socket_path))) != 0) {
        fprintf(stderr, "khalad: cannot derive the socket path: %s\n", khala_strerror(rc));
        return 1;
    }
    if (!foreground && !getenv("NOTIFY_SOCKET") && daemon(0, 1) != 0) {
        fprintf(stderr, "khalad: cannot detach: %s\n", strerror(errno));
        return 1;
    }
    d.uid = getuid();
    d.socket_gid = -1;
    d.started_ms = (uint64_t)khala__sys_now_ms();
    khala__proto_buf_init(&d.out);

    /* The socket's group is the readers' group: it owns the socket and the segment's files. */
    if (d.cfg.cache.socket_group[0]) {
        struct group *g = getgrnam(d.cfg.cache.socket_group);
        char *end;
        long gid = g ? (long)g->gr_gid : strtol(d.cfg.cache.socket_group, &end, 10);
        if (!g && (*end || gid < 0)) {
            khala__log("error", "unknown socket_group", "group", d.cfg.cache.socket_group, NULL);
            return 1;
        }
        d.socket_gid = gid;
    }

    /* 2. The L1 segment: adopted if a previous khalad left a good one, else made anew. */
    khala_seg_config_t seg;
    khala__config_seg(&d.cfg, &seg);
    seg.gid = d.socket_gid;
    rc = khala__l1_open_ex(d.cfg.cache.name, &seg, KHALA_L1_REATTACH, &d.l1, err, sizeof(err));
    if (rc != 0) {
        khala__log("error", "cannot open the L1 segment", "cache", d.cfg.cache.name, "error", err,
                   NULL);
        return 1;
    }
    khala__log("info",
               khala__l1_reattached(d.l1) ? "adopted the existing L1 segment"
                                          : "made a new L1 segment",
               "cache", d.cfg.cache.name, "detail", khala__l1_errmsg(d.l1), NULL);
    {
        /* Huge pages take most of the TLB misses off the hit path (docs/operating.md, "Huge
         * pages"); say whether the host granted them, since only the host can. */
        char mib[32];
        uint64_t huge = khala__sys_huge_bytes(khala__l1_seg(d.l1)->base);
        snprintf(mib, sizeof(mib), "%llu", (unsigned long long)(huge >> 20));
        khala__log("info",
                   huge ? "the L1 segment is on 2 MiB pages"
                        : "the L1 segment is on 4 KiB pages; mount /dev/shm with huge=advise "
                          "for 2 MiB pages (docs/operating.md, \"Huge pages\")",
                   "huge_mib", mib, NULL);
    }
    if ((rc = khala__flight_open(&d.flight, d.cfg.policies.single_flight_timeout_ms,
                                 KHALAD_FLIGHT_MAX)) != 0) {
        khala__log("error", "out of memory", NULL);
        return 1;
    }

    /* 3. The levels below L1, and what to warm from them. */
    if ((rc = khala__tiers_open(&d)) != 0) {
        khala__log("error", "cannot open the levels below L1", "cache", d.cfg.cache.name, "error",
                   d.errmsg, NULL);
        khala__tiers_close(&d);
        khala__l1_close(d.l1, 0);
        return 1;
    }
    if (d.cfg.policies.preload_common) {
        int64_t t0 = khala__sys_now_ms();
        uint64_t n = khala__tiers_preload(&d);
        char items[32], ms[32];
        snprintf(items, sizeof(items), "%llu", (unsigned long long)n);
        snprintf(ms, sizeof(ms), "%lld", (long long)(khala__sys_now_ms() - t0));
        khala__log("info", "preloaded the most used keys of L2 into L1", "items", items, "ms", ms,
                   NULL);
    }

    /* 4. The socket. */
    khala_server_config_t scfg;
    khala__server_config_init(&scfg);
    scfg.path = d.socket_path;
    scfg.mode = d.cfg.cache.socket_mode;
    scfg.max_frame = KHALA_FRAME_MAX_DEFAULT;
    scfg.gid = d.socket_gid;
    if ((rc = make_parent_dirs(d.socket_path)) != 0) {
        khala__log("error", "cannot create the socket's directory", "path", d.socket_path, "error",
                   strerror(-rc), NULL);
        return 1;
    }
    khala_server_ops_t ops = {.on_frame = khala__handlers_frame,
                              .on_bad_frame = khala__handlers_bad_frame,
                              .on_close = khala__handlers_close,
                              .on_tick = tick};
    if ((rc = khala__server_open(&scfg, &ops, &d, &d.srv, err, sizeof(err))) != 0) {
        khala__log("error", "cannot listen", "path", d.socket_path, "error", err, NULL);
        khala__tiers_close(&d);
        khala__l1_close(d.l1, 0);
        return 1;
    }
    g_srv = d.srv;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* 5. Ready. */
    uint64_t wd = 0;
    if (sd_watchdog_enabled(0, &wd) > 0)
        d.watchdog_usec = wd;
    (void)sd_notify(0, "READY=1\nSTATUS=serving");
    khala__log("info", "ready", "cache", d.cfg.cache.name, "socket", d.socket_path, NULL);
    rc = khala__server_run(d.srv);
    (void)sd_notify(0, "STOPPING=1");
    khala__log("info", "stopping", "cache", d.cfg.cache.name, NULL);
    g_srv = NULL;
    khala__tiers_close(&d); /* drains what it can while the server still exists */
    khala__server_close(d.srv);
    khala__flight_close(d.flight);
    khala__l1_close(d.l1, 0); /* the segment outlives khalad: workers keep reading */
    khala__proto_buf_free(&d.out);
    return rc == 0 ? 0 : 1;
}
