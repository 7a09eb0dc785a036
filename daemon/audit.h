/*
 * The audit trail: one JSON object per line for every admin operation, every refused request,
 * and a sample of reads (issue 10, "Audit"; docs/security.md, "Audit", shows a line).
 *
 *   {"time":"2026-12-05T07:12:03.482Z","event":"denied","uid":65534,"gid":65534,"pid":4242,
 *    "comm":"worker","op":"put","key":"reports/q3","right":"write","rc":-1017}
 *
 * Fields: time (RFC 3339, UTC, milliseconds), event ("admin", "denied" or "read"), who (uid,
 * gid, pid of the peer from SO_PEERCRED, comm: its /proc/PID/comm read when it connected),
 * what (op), which (key, or prefix / type / pattern / keys for selectors: at most one), rc
 * (the reply's code, 0 = done), and right (denied: the right that was missing) or
 * sample_rate (read: the configured rate, so that counts can be scaled back). Strings are
 * JSON-escaped; a key's bytes outside printable ASCII are written \u00XX, one per byte.
 *
 * The trail goes to [audit] path: "-" is stderr (journald keeps it, apart from the log by its
 * "event" field), a path is a file opened O_APPEND (one write() per line, so lines from one
 * khalad never interleave), "" is off. A file is reopened on SIGHUP and whenever the rotation
 * check (khala__audit_tick, once a second) finds that the path no longer names the open file,
 * so logrotate works with or without postrotate.
 *
 * Start at khala__audit_open(). Loop thread only.
 */
#ifndef KHALA_DAEMON_AUDIT_H
#define KHALA_DAEMON_AUDIT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/** Longest line written; a longer one (a warm of many keys) lists fewer keys. */
#define KHALA_AUDIT_LINE_MAX 4096
/** How often the file's path is compared with the open file (logrotate). */
#define KHALA_AUDIT_CHECK_MS 1000

/** The trail. Fields are the loop thread's. */
typedef struct khala_audit {
    int fd;                 /* -1 = off */
    int own_fd;             /* fd is a file of ours (not stderr) */
    char path[512];         /* "" off, "-" stderr, else the file */
    double sample_rate;     /* share of reads audited, 0..1 */
    char rate_text[16];     /* the rate as configured, for the lines */
    uint64_t rng;           /* xorshift state for sampling */
    int64_t next_check_ms;  /* next rotation check */
    uint64_t lines, errors; /* lines written; lines lost (write failed) */
} khala_audit_t;

/** One event. Only one of key, prefix, type, pattern, keys is set (NULL/0 = absent). */
typedef struct khala_audit_event {
    const char *event; /* "admin", "denied", "read" */
    uid_t uid;
    gid_t gid;
    pid_t pid;
    const char *comm; /* may be NULL or "" */
    const char *op;   /* the op's protocol name */
    const void *key;  /* one key */
    size_t klen;
    const void *prefix; /* a prefix selector */
    size_t plen;
    const char *type;    /* a type selector */
    const void *pattern; /* a keys pattern */
    size_t patlen;
    const void *const *keys; /* several keys (warm): pointers and lengths */
    const size_t *klens;
    size_t nkeys;
    const char *right; /* denied: the missing right's name */
    int rc;
} khala_audit_event_t;

/**
 * @brief Open the trail.
 * @param[out] a the trail; every field is written.
 * @param[in] path "" (off), "-" (stderr) or an absolute file path.
 * @param[in] rate_text the read sample rate, a decimal from 0 to 1 ("" = 0).
 * @param[out] err message naming the file; may be NULL.
 * @param[in] errlen size of @p err.
 * @return 0; -errno when the file cannot be opened (-EACCES, -ENOENT for a missing directory...);
 *         -EINVAL for a rate outside 0..1.
 */
int khala__audit_open(khala_audit_t *a, const char *path, const char *rate_text, char *err,
                      size_t errlen);

/** @brief Close the trail (the file, not stderr). Safe on a closed or zeroed one. */
void khala__audit_close(khala_audit_t *a);

/**
 * @brief Reopen the file (SIGHUP, rotation). The old descriptor stays in use when the new open
 *        fails, so no line is lost to a failed rotation; the failure is logged.
 * @return 0 or -errno of open().
 */
int khala__audit_reopen(khala_audit_t *a);

/**
 * @brief The rotation check: reopen when the path is gone or names another file. Cheap when not
 *        due (once per KHALA_AUDIT_CHECK_MS).
 * @param[in,out] a the trail.
 * @param[in] now_ms a monotonic time.
 */
void khala__audit_tick(khala_audit_t *a, int64_t now_ms);

/**
 * @brief Whether to audit this read: true with probability sample_rate (always at 1, never at
 *        0), and never when the trail is off.
 */
int khala__audit_sample(khala_audit_t *a);

/**
 * @brief Write one event as one line.
 * @return 0; 1 when the trail is off; -errno when the write failed (counted in errors).
 */
int khala__audit_write(khala_audit_t *a, const khala_audit_event_t *e);

/**
 * @brief Format one event as its line (with the final '\n'), as khala__audit_write writes it.
 * @param[in] a the trail (its rate goes into read lines).
 * @param[in] e the event.
 * @param[in] now_realtime_ms the time, milliseconds since the epoch.
 * @param[out] buf the line. @param[in] len its size (KHALA_AUDIT_LINE_MAX).
 * @return the line's length (< len).
 */
size_t khala__audit_format(const khala_audit_t *a, const khala_audit_event_t *e,
                           int64_t now_realtime_ms, char *buf, size_t len);

#endif /* KHALA_DAEMON_AUDIT_H */
