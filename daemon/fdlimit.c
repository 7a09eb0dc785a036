/*
 * khalad's file-descriptor limit (daemon/fdlimit.h).
 *
 * Each connection costs one descriptor. systemd and most shells start services with a soft
 * RLIMIT_NOFILE of 1024 and a much higher hard limit (524288 on Debian 12), so the default
 * [server] max_connections (4096) would meet EMFILE long before its own limit: khalad raises
 * the soft limit to the hard one at start, which any process may do, and logs both. A
 * max_connections that still does not fit is logged as a warning rather than refused: the
 * server answers EMFILE without spinning (daemon/server.c), so the mismatch costs refused
 * connections, not khalad, and an operator may want a low limit on purpose.
 */
#include "fdlimit.h"

#include <errno.h>
#include <stdio.h>
#include <sys/resource.h>

int khala__fdlimit_raise(uint64_t *soft, uint64_t *hard) {
    struct rlimit rl;
    *soft = *hard = 0;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -errno;
    *soft = (uint64_t)rl.rlim_cur;
    *hard = (uint64_t)rl.rlim_max;
    if (rl.rlim_cur == rl.rlim_max)
        return 0;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -errno;
    *soft = (uint64_t)rl.rlim_cur;
    return 0;
}

int khala__fdlimit_fits(uint32_t max_conns, uint64_t soft, char *msg, size_t msglen) {
    if ((uint64_t)max_conns + KHALA_FDLIMIT_RESERVE <= soft)
        return 1;
    if (msg && msglen)
        snprintf(
            msg, msglen,
            "[server] max_connections %u does not fit in the file-descriptor limit %llu "
            "(khalad keeps %u for itself): about %llu connections will be served, the "
            "rest refused; raise LimitNOFILE= (ulimit -n) or lower max_connections",
            max_conns, (unsigned long long)soft, KHALA_FDLIMIT_RESERVE,
            (unsigned long long)(soft > KHALA_FDLIMIT_RESERVE ? soft - KHALA_FDLIMIT_RESERVE : 0));
    return 0;
}
