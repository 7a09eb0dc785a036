/*
 * The audit trail (daemon/audit.h).
 *
 * HOW IT WORKS
 *
 * A line is formatted whole into a fixed buffer, then written with one write(2) on a
 * descriptor opened O_APPEND: the kernel appends it atomically with respect to other appends
 * to that file, so a rotated file never holds half a line of ours, and nothing is buffered in
 * khalad that a crash could lose. A line that would not fit KHALA_AUDIT_LINE_MAX is closed
 * early (a warm of many keys lists the first ones and "keys_omitted"), so a line is always
 * valid JSON.
 *
 * Rotation: logrotate renames the file (or removes it) and may or may not signal khalad. Both
 * work: SIGHUP makes khalad call khala__audit_reopen(), and the tick compares the path's
 * (st_dev, st_ino) with the open descriptor's once a second and reopens when they differ. With
 * copytruncate nothing needs reopening (O_APPEND writes at the new end).
 *
 * Rejected: syslog(3) (a second path to journald with its own formatting and rate limits,
 * where stderr already reaches journald under systemd); stdio streams (buffering across lines,
 * and a partial line on a crash).
 */
#include "audit.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "errbuf.h"
#include "debug.h"
#include "log.h"
#include "sys.h"

static int open_file(const char *path) {
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    return fd < 0 ? -errno : fd;
}

int khala__audit_open(khala_audit_t *a, const char *path, const char *rate_text, char *err,
                      size_t errlen) {
    memset(a, 0, sizeof(*a));
    a->fd = -1;
    char *end;
    double rate = rate_text && rate_text[0] ? strtod(rate_text, &end) : 0.0;
    if (rate_text && rate_text[0] && (*end || !(rate >= 0.0 && rate <= 1.0)))
        return khala__errbuf(err, errlen, -EINVAL, "audit: read_sample_rate '%s' is not 0..1",
                             rate_text);
    a->sample_rate = rate;
    snprintf(a->rate_text, sizeof(a->rate_text), "%s", rate_text && rate_text[0] ? rate_text : "0");
    a->rng = (uint64_t)khala__sys_now_ms() * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
    if (!a->rng)
        a->rng = 1;
    snprintf(a->path, sizeof(a->path), "%s", path ? path : "");
    if (!a->path[0])
        return 0;
    if (strcmp(a->path, "-") == 0) {
        a->fd = STDERR_FILENO;
        return 0;
    }
    int fd = open_file(a->path);
    if (fd < 0)
        return khala__errbuf(err, errlen, fd, "cannot open the audit file %s: %s", a->path,
                             strerror(-fd));
    a->fd = fd;
    a->own_fd = 1;
    return 0;
}

void khala__audit_close(khala_audit_t *a) {
    if (a->own_fd && a->fd >= 0)
        close(a->fd);
    a->fd = -1;
    a->own_fd = 0;
}

int khala__audit_reopen(khala_audit_t *a) {
    if (!a->own_fd)
        return 0;
    int fd = open_file(a->path);
    if (fd < 0) {
        khala__log("error", "cannot reopen the audit file; still writing to the old one", "path",
                   a->path, "error", strerror(-fd), NULL);
        return fd;
    }
    close(a->fd);
    a->fd = fd;
    return 0;
}

void khala__audit_tick(khala_audit_t *a, int64_t now_ms) {
    if (!a->own_fd || now_ms < a->next_check_ms)
        return;
    a->next_check_ms = now_ms + KHALA_AUDIT_CHECK_MS;
    struct stat by_path, open_st;
    if (stat(a->path, &by_path) != 0 || fstat(a->fd, &open_st) != 0 ||
        by_path.st_dev != open_st.st_dev || by_path.st_ino != open_st.st_ino)
        (void)khala__audit_reopen(a);
}

int khala__audit_sample(khala_audit_t *a) {
    if (a->fd < 0 || a->sample_rate <= 0.0)
        return 0;
    if (a->sample_rate >= 1.0)
        return 1;
    /* xorshift64: cheap, and sampling needs no more than an even spread. */
    a->rng ^= a->rng << 13;
    a->rng ^= a->rng >> 7;
    a->rng ^= a->rng << 17;
    return (double)(a->rng >> 11) * (1.0 / 9007199254740992.0) < a->sample_rate;
}

/* A growing line in a fixed buffer; `full` once something did not fit (nothing more is added,
 * and the caller closes the object in the room kept for it). */
typedef struct line {
    char *buf;
    size_t len, cap; /* cap excludes the room kept for the closing "}\n" */
    int full;
} line_t;

static void put(line_t *l, const char *s, size_t n) {
    if (l->full || l->len + n > l->cap) {
        l->full = 1;
        return;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void puts_(line_t *l, const char *s) {
    put(l, s, strlen(s));
}

/* A JSON string of n bytes: '"' and '\\' escaped, every byte outside printable ASCII as \u00XX;
 * at most KHALA_AUDIT_LINE_MAX / 2 bytes of it. Written whole or not at all, so the line stays
 * valid JSON when it is cut. */
static void put_json(line_t *l, const void *p, size_t n) {
    char tmp[KHALA_AUDIT_LINE_MAX / 2]; /* a longer selector (a 1 KiB pattern) is cut here */
    size_t o = 0;
    const unsigned char *s = p;
    tmp[o++] = '"';
    for (size_t i = 0; i < n && o + 8 < sizeof(tmp); i++) {
        if (s[i] == '"' || s[i] == '\\') {
            tmp[o++] = '\\';
            tmp[o++] = (char)s[i];
        } else if (s[i] < 0x20 || s[i] >= 0x7f) {
            o += (size_t)snprintf(tmp + o, sizeof(tmp) - o, "\\u%04x", s[i]);
        } else {
            tmp[o++] = (char)s[i];
        }
    }
    tmp[o++] = '"';
    put(l, tmp, o);
}

static void put_field_str(line_t *l, const char *name, const void *p, size_t n) {
    puts_(l, ",\"");
    puts_(l, name);
    puts_(l, "\":");
    put_json(l, p, n);
}

static void put_field_num(line_t *l, const char *name, long long v) {
    char tmp[64];
    int n = snprintf(tmp, sizeof(tmp), ",\"%s\":%lld", name, v);
    put(l, tmp, (size_t)n);
}

size_t khala__audit_format(const khala_audit_t *a, const khala_audit_event_t *e,
                           int64_t now_realtime_ms, char *buf, size_t len) {
    KHALA_ASSERT(a && e && e->event && buf && len >= 512);
    KHALA_ASSERT(!e->nkeys || (e->keys && e->klens));
    line_t l = {buf, 0, len > 3 ? len - 3 : 0, 0};
    char ts[64];
    time_t secs = (time_t)(now_realtime_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%03dZ", (int)(now_realtime_ms % 1000));
    puts_(&l, "{\"time\":");
    put_json(&l, ts, strlen(ts));
    put_field_str(&l, "event", e->event, strlen(e->event));
    put_field_num(&l, "uid", (long long)e->uid);
    put_field_num(&l, "gid", (long long)e->gid);
    put_field_num(&l, "pid", (long long)e->pid);
    put_field_str(&l, "comm", e->comm ? e->comm : "", e->comm ? strlen(e->comm) : 0);
    put_field_str(&l, "op", e->op ? e->op : "?", e->op ? strlen(e->op) : 1);
    if (e->key)
        put_field_str(&l, "key", e->key, e->klen);
    else if (e->prefix)
        put_field_str(&l, "prefix", e->prefix, e->plen);
    else if (e->type)
        put_field_str(&l, "type", e->type, strlen(e->type));
    else if (e->pattern)
        put_field_str(&l, "pattern", e->pattern, e->patlen);
    if (e->nkeys) {
        /* The keys may fill the line up to the room the closing fields need. */
        size_t shown = 0, saved_cap = l.cap;
        l.cap = len > 160 ? len - 160 : 0;
        puts_(&l, ",\"keys\":[");
        for (; shown < e->nkeys && !l.full; shown++) {
            size_t before = l.len;
            if (shown)
                puts_(&l, ",");
            put_json(&l, e->keys[shown], e->klens[shown]);
            if (l.full) { /* undo the partial element, leave room to close */
                l.len = before;
                break;
            }
        }
        l.full = 0;
        l.cap = saved_cap;
        puts_(&l, "]");
        if (shown < e->nkeys)
            put_field_num(&l, "keys_omitted", (long long)(e->nkeys - shown));
    }
    if (e->right)
        put_field_str(&l, "right", e->right, strlen(e->right));
    if (strcmp(e->event, "read") == 0) {
        puts_(&l, ",\"sample_rate\":");
        puts_(&l, a->rate_text);
    }
    put_field_num(&l, "rc", e->rc);
    l.cap = len - 1;
    l.full = 0;
    puts_(&l, "}\n");
    buf[l.len] = '\0';
    return l.len;
}

int khala__audit_write(khala_audit_t *a, const khala_audit_event_t *e) {
    if (a->fd < 0)
        return 1;
    char line[KHALA_AUDIT_LINE_MAX];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    size_t n = khala__audit_format(a, e, (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, line,
                                   sizeof(line));
    ssize_t w;
    do
        w = write(a->fd, line, n);
    while (w < 0 && errno == EINTR);
    if (w != (ssize_t)n) {
        a->errors++;
        return w < 0 ? -errno : -EIO;
    }
    a->lines++;
    return 0;
}
