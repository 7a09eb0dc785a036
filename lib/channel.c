/*
 * A channel: one blocking client connection to khalad (lib/channel.h).
 *
 * HOW IT WORKS
 *
 * The socket is non-blocking and every wait goes through poll(2) against one deadline per
 * operation, so that neither a khalad that stopped reading nor one that never answers can hold
 * a worker longer than its timeout. The bytes on the wire are lib/proto.c's: requests are
 * encoded into `out` with khala__proto_encode_request(), replies are read into `in` until
 * khala__proto_frame_check() says a whole frame is there, then decoded in place with
 * khala__proto_decode_reply(). No framing logic lives here.
 *
 *     in:  [ reply handed out last call | bytes of later frames ... | spare ]
 *          ^ data                       ^ data + consumed            ^ data + len
 *
 * A decoded reply's byte fields are views into `in`, so the bytes of the reply handed to the
 * caller stay where they are until the next call, which drops them first (`consumed`).
 *
 * Step 1 (khala__chan_call). Encode the request with the next id; nothing is sent when that
 *         fails, and the channel stays usable.
 * Step 2. Write the whole frame, polling for POLLOUT while the socket buffer is full.
 * Step 3. Read until one whole frame is buffered; decode it for the request's op.
 * Step 4. Its id must be the request's. A reply with id 0 and an error is khalad's verdict on
 *         the connection (a frame it could not decode), after which it closes it.
 *
 * Invariants:
 *   - At most one request is outstanding, so replies arrive in order and an id mismatch can
 *     only mean a broken stream.
 *   - Once a call fails after its request may have been sent (a broken connection, a timeout,
 *     a reply that does not decode), the channel is dead: every later call returns
 *     KHALA_EDAEMON without touching the socket. A late reply to a timed-out request would
 *     otherwise be taken for the answer to the next one.
 *   - Closing never calls shutdown(2): a child process after fork closes its copy of the
 *     descriptor without disturbing the parent's connection.
 *
 * Why not blocking sockets with SO_RCVTIMEO/SO_SNDTIMEO: connect(2) on a Unix socket ignores
 * them when the listener's backlog is full, and they time each system call rather than the
 * whole operation. Why not MSG_WAITALL reads: the reply's length is known only after its
 * header, and a read of "whatever is there" into a growing buffer keeps reads few.
 */
#include "channel.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "errbuf.h"
#include "rundir.h"
#include "sys.h"

/* Bytes a read asks for at least: a typical reply fits in one read. */
#define CHAN_READ_CHUNK 65536u

struct khala_chan {
    int fd;                 /* the socket, non-blocking and close-on-exec; -1 once closed */
    int dead;               /* 1 after a failure that leaves the stream unusable */
    uint64_t next_id;       /* id of the next request; starts at 1 (0 is khalad's "no id") */
    khala_buf_t in;         /* received bytes; see the picture above */
    size_t consumed;        /* bytes at the front of `in` used by the last reply */
    khala_buf_t out;        /* the request being sent */
    khala_chan_info_t info; /* from the hello reply */
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* the socket, for messages */
};

/* A non-empty environment variable that is an absolute path, or NULL (the XDG rule). */
static const char *env_dir(const char *var) {
    const char *v = getenv(var);
    return v && v[0] == '/' ? v : NULL;
}

int khala__chan_default_path(const char *name, char *buf, size_t len) {
    const char *run;
    int n;
    if (geteuid() == 0)
        n = snprintf(buf, len, "/run/khala/%s.sock", name);
    else if ((run = env_dir("XDG_RUNTIME_DIR")))
        n = snprintf(buf, len, "%s/khala/%s.sock", run, name);
    else
        n = snprintf(buf, len, "/tmp/khala-%u/%s.sock", (unsigned)geteuid(), name);
    if (n < 0 || (size_t)n >= len || (size_t)n >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return -ENAMETOOLONG;
    return 0;
}

/* The socket's directory, checked before connecting (lib/rundir.h): a directory another user
 * could write to, or that another user made where this user's default directory should be, may
 * hold their socket instead of khalad's. The default path of this user and cache is held to the
 * private rule whoever computed it (lib/client.c passes it explicitly). A directory that does not
 * exist is left to connect(), which says that khalad is not running. */
static int check_dir(const char *path, const char *name, char *err, size_t errlen) {
    char dir[sizeof(((struct sockaddr_un *)0)->sun_path)], def[sizeof(dir)], why[512];
    if (khala__rundir_of(path, dir, sizeof(dir)) != 0)
        return 0;
    int is_default =
        name && khala__chan_default_path(name, def, sizeof(def)) == 0 && strcmp(def, path) == 0;
    khala_rundir_kind_t kind = khala__rundir_kind(path, is_default);
    int rc = khala__rundir_check(dir, kind,
                                 kind == KHALA_RUNDIR_PRIVATE ? geteuid() : KHALA_RUNDIR_ANY_OWNER,
                                 why, sizeof(why));
    if (rc == 0 || (rc != -EPERM && rc != -ENOTDIR))
        return 0;
    return khala__errbuf(err, errlen, -EPERM, "refusing to connect to khalad at %s: %s", path, why);
}

/* Milliseconds left before deadline (a khala__sys_now_ms() value); -1 waits forever. */
static int ms_left(int64_t deadline) {
    if (deadline < 0)
        return -1;
    int64_t left = deadline - khala__sys_now_ms();
    if (left <= 0)
        return 0;
    return left > 0x7fffffff ? 0x7fffffff : (int)left;
}

static int64_t deadline_of(int timeout_ms) {
    return timeout_ms < 0 ? -1 : khala__sys_now_ms() + timeout_ms;
}

/* Wait until fd is ready for events or the deadline passes. 0, -ETIMEDOUT, or -errno. */
static int wait_fd(int fd, short events, int64_t deadline) {
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, ms_left(deadline));
        if (n > 0)
            return 0; /* ready, or an error/hangup that the next call will report */
        if (n == 0)
            return -ETIMEDOUT;
        if (errno != EINTR)
            return -errno;
    }
}

/* Connect fd to path before the deadline. 0 or -errno (ENOENT/ECONNREFUSED: nobody there). */
static int connect_by(int fd, const char *path, int64_t deadline) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, path, strlen(path) + 1);
    for (;;) {
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            return 0;
        int e = errno;
        if (e == EINTR)
            continue;
        if (e == EAGAIN) {
            /* The listener's backlog is full: a Unix socket cannot wait for room, so retry. */
            if (ms_left(deadline) == 0)
                return -ETIMEDOUT;
            khala__sys_pause_us(1000);
            continue;
        }
        if (e != EINPROGRESS)
            return -e;
        int rc = wait_fd(fd, POLLOUT, deadline);
        if (rc != 0)
            return rc;
        socklen_t sl = sizeof(e);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &sl) != 0)
            return -errno;
        return -e;
    }
}

/* After a failed send: did khalad refuse the connection before closing it (an id-0 error reply
 * already in the socket, e.g. KHALA_ELIMIT at its max_connections)? Its code, with its message
 * in err, or 0 when nothing of the sort can be read now. */
static int refusal(khala_chan_t *ch, char *err, size_t errlen) {
    uint32_t body = 0;
    while (khala__proto_frame_check(ch->in.data, ch->in.len, KHALA_FRAME_MAX_DEFAULT, &body, NULL,
                                    0) == KHALA_PROTO_NEED_MORE) {
        if (khala__proto_buf_reserve(&ch->in, CHAN_READ_CHUNK) != 0)
            return 0;
        ssize_t n = recv(ch->fd, ch->in.data + ch->in.len, ch->in.cap - ch->in.len, MSG_DONTWAIT);
        if (n <= 0)
            return 0;
        ch->in.len += (size_t)n;
    }
    khala_msg_t m;
    khala__proto_msg_init(&m);
    int rc = khala__proto_decode_reply(KHALA_OP_NONE, ch->in.data + KHALA_FRAME_HEADER, body, &m,
                                       NULL, 0);
    if (rc == 0 && m.id == 0 && m.rc != 0)
        rc = khala__errbuf(err, errlen, m.rc, "khalad at %s dropped the connection: %.*s", ch->path,
                           (int)m.err.len, (const char *)m.err.ptr);
    else
        rc = 0;
    khala__proto_msg_free(&m);
    return rc;
}

/* Step 2: send all of out. 0, -ETIMEDOUT, or KHALA_EDAEMON (err says why); or the code of a
 * refusal khalad sent before it closed the connection. */
static int send_all(khala_chan_t *ch, int64_t deadline, char *err, size_t errlen) {
    size_t off = 0;
    while (off < ch->out.len) {
        ssize_t n = send(ch->fd, ch->out.data + off, ch->out.len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            int rc = wait_fd(ch->fd, POLLOUT, deadline);
            if (rc == -ETIMEDOUT)
                return khala__errbuf(err, errlen, rc, "khalad at %s did not take a request in time",
                                     ch->path);
            if (rc != 0)
                return khala__errbuf(err, errlen, KHALA_EDAEMON, "poll on %s: %s", ch->path,
                                     strerror(-rc));
            continue;
        }
        int e = n < 0 ? errno : EPIPE, rc = refusal(ch, err, errlen);
        if (rc != 0)
            return rc;
        return khala__errbuf(err, errlen, KHALA_EDAEMON, "connection to khalad at %s broke: %s",
                             ch->path, strerror(e));
    }
    return 0;
}

/* Step 3: read until one whole frame is at the front of in; its body length into *body. */
static int recv_frame(khala_chan_t *ch, int64_t deadline, uint32_t *body, char *err,
                      size_t errlen) {
    for (;;) {
        int rc = khala__proto_frame_check(ch->in.data, ch->in.len, KHALA_FRAME_MAX_CEILING, body,
                                          err, errlen);
        if (rc == 0)
            return 0;
        if (rc != KHALA_PROTO_NEED_MORE)
            return rc;
        size_t want = CHAN_READ_CHUNK;
        if (ch->in.len >= KHALA_FRAME_HEADER &&
            (size_t)*body + KHALA_FRAME_HEADER - ch->in.len > want)
            want = (size_t)*body + KHALA_FRAME_HEADER - ch->in.len;
        if (khala__proto_buf_reserve(&ch->in, want) != 0)
            return khala__errbuf(err, errlen, -ENOMEM, "out of memory for a reply of %u bytes",
                                 (unsigned)*body);
        ssize_t n = recv(ch->fd, ch->in.data + ch->in.len, ch->in.cap - ch->in.len, 0);
        if (n > 0) {
            ch->in.len += (size_t)n;
            continue;
        }
        if (n == 0)
            return khala__errbuf(err, errlen, KHALA_EDAEMON, "khalad at %s closed the connection",
                                 ch->path);
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return khala__errbuf(err, errlen, KHALA_EDAEMON, "connection to khalad at %s broke: %s",
                                 ch->path, strerror(errno));
        rc = wait_fd(ch->fd, POLLIN, deadline);
        if (rc == -ETIMEDOUT)
            return khala__errbuf(err, errlen, rc, "khalad at %s did not answer in time", ch->path);
        if (rc != 0)
            return khala__errbuf(err, errlen, KHALA_EDAEMON, "poll on %s: %s", ch->path,
                                 strerror(-rc));
    }
}

/* The call itself, against a deadline; see the steps in the theory block. */
static int call_by(khala_chan_t *ch, khala_msg_t *req, khala_msg_t *reply, int64_t deadline,
                   char *err, size_t errlen) {
    if (ch->dead)
        return khala__errbuf(err, errlen, KHALA_EDAEMON,
                             "the connection to khalad at %s failed earlier; open a new one",
                             ch->path);
    /* The previous reply's views end here. */
    if (ch->consumed) {
        khala__proto_buf_consume(&ch->in, ch->consumed);
        ch->consumed = 0;
    }
    /* Step 1. */
    req->id = ch->next_id;
    khala__proto_buf_reset(&ch->out);
    int rc = khala__proto_encode_request(&ch->out, req, err, errlen);
    if (rc != 0)
        return rc;
    uint32_t limit = ch->info.max_frame ? ch->info.max_frame : KHALA_FRAME_MAX_DEFAULT;
    if (ch->out.len - KHALA_FRAME_HEADER > limit)
        return khala__errbuf(
            err, errlen, KHALA_ETOOBIG, "%s request of %zu bytes exceeds khalad's max_frame %u",
            khala__proto_op_name(req->op), ch->out.len - KHALA_FRAME_HEADER, (unsigned)limit);
    ch->next_id++;
    /* Steps 2 and 3: from here on, a failure leaves the stream in an unknown state. */
    uint32_t body = 0;
    if ((rc = send_all(ch, deadline, err, errlen)) != 0 ||
        (rc = recv_frame(ch, deadline, &body, err, errlen)) != 0)
        goto dead;
    khala_msg_t m;
    khala__proto_msg_init(&m);
    rc =
        khala__proto_decode_reply(req->op, ch->in.data + KHALA_FRAME_HEADER, body, &m, err, errlen);
    if (rc != 0)
        goto dead;
    /* Step 4. */
    if (m.id != req->id) {
        if (m.id == 0 && m.rc != 0) {
            rc = khala__errbuf(err, errlen, m.rc, "khalad at %s dropped the connection: %.*s",
                               ch->path, (int)m.err.len, (const char *)m.err.ptr);
        } else {
            rc = khala__errbuf(err, errlen, KHALA_EPROTO,
                               "khalad at %s answered request %llu while %llu was outstanding",
                               ch->path, (unsigned long long)m.id, (unsigned long long)req->id);
        }
        khala__proto_msg_free(&m);
        goto dead;
    }
    ch->consumed = KHALA_FRAME_HEADER + (size_t)body;
    khala__proto_msg_free(reply);
    *reply = m;
    return 0;
dead:
    ch->dead = 1;
    return rc;
}

int khala__chan_open(const char *path, const char *name, int timeout_ms, khala_chan_t **out,
                     char *err, size_t errlen) {
    int64_t deadline = deadline_of(timeout_ms);
    char def[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int rc;
    if (!path) {
        if (!name)
            return khala__errbuf(err, errlen, -EINVAL, "neither a socket path nor a cache name");
        if ((rc = khala__chan_default_path(name, def, sizeof(def))) != 0)
            return khala__errbuf(err, errlen, rc, "the socket path of cache '%s' is too long",
                                 name);
        path = def;
    }
    if (strlen(path) >= sizeof(def))
        return khala__errbuf(err, errlen, -ENAMETOOLONG,
                             "socket path '%s' is longer than %zu bytes", path, sizeof(def) - 1);
    if ((rc = check_dir(path, name, err, errlen)) != 0)
        return rc;
    khala_chan_t *ch = calloc(1, sizeof(*ch));
    if (!ch)
        return khala__errbuf(err, errlen, -ENOMEM, "out of memory");
    ch->next_id = 1;
    memcpy(ch->path, path, strlen(path) + 1);
    khala__proto_buf_init(&ch->in);
    khala__proto_buf_init(&ch->out);
    ch->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (ch->fd < 0) {
        rc = khala__errbuf(err, errlen, -errno, "socket: %s", strerror(errno));
        goto fail;
    }
    rc = connect_by(ch->fd, path, deadline);
    if (rc == -ENOENT || rc == -ECONNREFUSED) {
        rc = khala__errbuf(err, errlen, KHALA_EDAEMON,
                           "khalad is not running: nothing listens on %s", path);
        goto fail;
    }
    if (rc == -ETIMEDOUT) {
        rc = khala__errbuf(err, errlen, rc, "connecting to khalad at %s timed out", path);
        goto fail;
    }
    if (rc != 0) {
        rc = khala__errbuf(err, errlen, rc, "cannot connect to khalad at %s: %s", path,
                           strerror(-rc));
        goto fail;
    }
    khala_msg_t req, rep;
    khala__proto_msg_init(&req);
    khala__proto_msg_init(&rep);
    req.op = KHALA_OP_HELLO;
    req.proto = KHALA_PROTO_VERSION;
    req.has = KHALA_F_PROTO;
    if (name) {
        req.name.ptr = (const uint8_t *)name;
        req.name.len = strlen(name);
        req.has |= KHALA_F_NAME;
    }
    if ((rc = call_by(ch, &req, &rep, deadline, err, errlen)) != 0)
        goto fail;
    if (rep.rc != 0) {
        rc = khala__errbuf(err, errlen, rep.rc, "khalad at %s refused hello: %.*s", path,
                           (int)rep.err.len, (const char *)rep.err.ptr);
        khala__proto_msg_free(&rep);
        goto fail;
    }
    ch->info.proto = rep.proto;
    ch->info.gen = rep.gen;
    ch->info.max_frame = rep.max_frame;
    ch->info.max_value = rep.max_value;
    khala__proto_msg_free(&rep);
    *out = ch;
    return 0;
fail:
    khala__chan_close(ch);
    return rc;
}

int khala__chan_call(khala_chan_t *ch, khala_msg_t *req, khala_msg_t *reply, int timeout_ms,
                     char *err, size_t errlen) {
    return call_by(ch, req, reply, deadline_of(timeout_ms), err, errlen);
}

const khala_chan_info_t *khala__chan_info(const khala_chan_t *ch) {
    return &ch->info;
}

int khala__chan_usable(khala_chan_t *ch) {
    if (ch->dead)
        return 0;
    /* Nothing is outstanding between calls, so anything readable (bytes, EOF, an error) means
     * the stream is over: khalad went away or dropped us. */
    struct pollfd p = {.fd = ch->fd, .events = POLLIN | POLLRDHUP};
    int n;
    while ((n = poll(&p, 1, 0)) < 0 && errno == EINTR)
        ;
    if (n != 0) {
        ch->dead = 1;
        return 0;
    }
    return 1;
}

const char *khala__chan_path(const khala_chan_t *ch) {
    return ch->path;
}

void khala__chan_close(khala_chan_t *ch) {
    if (!ch)
        return;
    if (ch->fd >= 0)
        close(ch->fd);
    khala__proto_buf_free(&ch->in);
    khala__proto_buf_free(&ch->out);
    free(ch);
}
