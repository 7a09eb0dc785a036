/*
 * Connections to Redis: connect with timeouts, authenticate, select the database. See
 * daemon/redis_conn.h.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include "errbuf.h"
#include "khala/error.h"
#include "redis_conn.h"

const char *khala__redis_name(const khala_config_redis_url_t *u, char *buf, size_t len) {
    if (u->path[0])
        snprintf(buf, len, "unix:%s", u->path);
    else
        snprintf(buf, len, "%s:%u", u->host, (unsigned)u->port);
    return buf;
}

/* Decode %XX escapes of a URL's user or password into out (same size or larger). */
static void unescape(const char *in, char *out, size_t outlen) {
    size_t o = 0;
    for (size_t i = 0; in[i] && o + 1 < outlen; i++) {
        unsigned v;
        if (in[i] == '%' && in[i + 1] && in[i + 2] && sscanf(in + i + 1, "%2x", &v) == 1) {
            out[o++] = (char)v;
            i += 2;
        } else {
            out[o++] = in[i];
        }
    }
    out[o] = '\0';
}

/* Run one command whose reply must be +OK; KHALA_ECONFIG with the server's words otherwise. */
static int expect_ok(redisContext *c, const char *server, const char *what, char *err,
                     size_t errlen, int argc, const char **argv) {
    redisReply *r = redisCommandArgv(c, argc, argv, NULL);
    if (!r) {
        return khala__errbuf(err, errlen, KHALA_ETIER, "redis %s: %s: %s", server, what,
                             c->errstr[0] ? c->errstr : "no reply");
    }
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        rc = khala__errbuf(err, errlen, KHALA_ECONFIG, "redis %s: %s refused: %s", server, what,
                           r->str);
    }
    freeReplyObject(r);
    return rc;
}

static int open_ctx(const khala_config_redis_url_t *u, const char *host, unsigned port, int select,
                    unsigned timeout_ms, redisContext **out, char *err, size_t errlen) {
    char server[600];
    if (host)
        snprintf(server, sizeof(server), "%s:%u", host, port);
    else
        khala__redis_name(u, server, sizeof(server));
    if (!timeout_ms)
        timeout_ms = KHALA_REDIS_TIMEOUT_MS_DEFAULT;
    struct timeval tv = {(time_t)(timeout_ms / 1000), (suseconds_t)(timeout_ms % 1000) * 1000};
    if (u->tls) {
        return khala__errbuf(err, errlen, KHALA_ECONFIG,
                             "redis %s: rediss:// (TLS) is not supported by this build", server);
    }
    redisContext *c = host         ? redisConnectWithTimeout(host, (int)port, tv)
                      : u->path[0] ? redisConnectUnixWithTimeout(u->path, tv)
                                   : redisConnectWithTimeout(u->host, (int)u->port, tv);
    if (!c) {
        return khala__errbuf(err, errlen, -ENOMEM, "redis %s: out of memory", server);
    }
    if (c->err) {
        int rc = khala__errbuf(err, errlen, KHALA_ETIER, "redis %s: cannot connect: %s", server,
                               c->errstr);
        redisFree(c);
        return rc;
    }
    if (redisSetTimeout(c, tv) != REDIS_OK) {
        redisFree(c);
        return khala__errbuf(err, errlen, KHALA_ETIER, "redis %s: cannot set the command timeout",
                             server);
    }
    int rc = 0;
    if (u->password[0]) {
        char user[KHALA_CONFIG_URL_MAX], pass[KHALA_CONFIG_URL_MAX];
        unescape(u->user, user, sizeof(user));
        unescape(u->password, pass, sizeof(pass));
        const char *argv[3] = {"AUTH", user, pass};
        if (user[0])
            rc = expect_ok(c, server, "AUTH", err, errlen, 3, argv);
        else
            rc = expect_ok(c, server, "AUTH", err, errlen, 2, (const char *[]){"AUTH", pass});
    }
    if (rc == 0 && select && u->db != 0) {
        char db[16];
        snprintf(db, sizeof(db), "%u", (unsigned)u->db);
        rc = expect_ok(c, server, "SELECT", err, errlen, 2, (const char *[]){"SELECT", db});
    }
    if (rc != 0) {
        redisFree(c);
        return rc;
    }
    *out = c;
    return 0;
}

int khala__redis_connect(const khala_config_redis_url_t *u, unsigned timeout_ms, redisContext **out,
                         char *err, size_t errlen) {
    return open_ctx(u, NULL, 0, 1, timeout_ms, out, err, errlen);
}

int khala__redis_connect_node(const khala_config_redis_url_t *u, const char *host, unsigned port,
                              unsigned timeout_ms, redisContext **out, char *err, size_t errlen) {
    return open_ctx(u, host, port, 0, timeout_ms, out, err, errlen);
}
