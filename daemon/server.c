/*
 * khalad's socket server.
 *
 * HOW IT WORKS
 *
 * One thread, one epoll set: the listening socket, an eventfd that khala__server_stop writes
 * (the only thing a signal handler may touch), and every client connection. Level-triggered.
 *
 *   client --bytes--> in[] --complete frames--> ops->on_frame --replies--> out[] --> client
 *
 * Step 1. A readable connection is read into its input buffer, which grows up to one whole
 *         frame (4 + max_frame bytes) and never beyond.
 * Step 2. Every complete frame in the buffer goes to on_frame, in order, so a client may
 *         pipeline as many requests as it likes; replies are queued in the same order. Before
 *         each frame the unsent replies are measured: past max_out, the rest of the frames wait
 *         in the buffer (the connection is "paused": it is not read either) until the client
 *         has read enough of its replies; then they are handled (step 3 resumes them).
 * Step 3. The output buffer is written at once; what the socket does not take waits for
 *         EPOLLOUT. When a paused connection's replies drain below max_out, its waiting frames
 *         are handled and it is read again.
 * Step 4. A frame longer than max_frame (or of length 0) is a protocol error: on_bad_frame
 *         queues the error reply, and the connection closes once it is written. Nobody else
 *         is affected.
 *
 * Bounds (docs/operating.md, "Limits"): what one client makes khalad hold is at most one frame
 * of input (4 + max_frame) and max_out plus one reply of output, because replies are measured
 * as they are appended, not only before a read: a client that pipelines gets of a large value
 * and never reads pins max_out, not a reply per request. Input buffers together are bounded by
 * max_in_total: a client whose partial frame would pass it gets an ELIMIT reply and is closed.
 * A partial frame must complete within frame_timeout_ms (a sweep every few hundred ms), or its
 * connection gets an ELIMIT reply and is closed, so slow or stalled senders cannot pin memory
 * indefinitely. Connections beyond max_conns get an ELIMIT reply naming max_connections before
 * the close. Buffers shrink back when they empty, so memory follows what is pending, not the
 * largest burst a connection ever saw.
 *
 * Out of file descriptors (EMFILE, ENFILE): accept would fail at every wake of a level-triggered
 * epoll and spin. The server keeps one spare descriptor (/dev/null): it closes it, accepts the
 * waiting connection, answers ELIMIT and closes it, and takes the spare back, so the backlog
 * drains and the loop sleeps. Should the spare be lost (another process took the last system
 * descriptor), the listening socket is left out of epoll until a connection closes or the next
 * sweep. Each episode is logged once, at its start and at its end.
 *
 * Fairness: a slow or dead client only ever stalls itself. A read takes at most READ_CHUNK bytes
 * per event, so one busy client cannot starve the others.
 *
 * Logging of refusals and closes for a limit is rate-limited (one line a second per kind, with
 * how many were not logged); the counters (khala__server_stats) count every one.
 */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "errbuf.h"
#include "khala/error.h"
#include "log.h"
#include "sys.h"

#define READ_CHUNK (64u * 1024u) /* bytes read per readable event, at most */
#define LISTEN_BACKLOG 512
#define MAX_EVENTS 64
#define TAG_LISTEN ((void *)1)
#define TAG_WAKE ((void *)2)
#define SHRINK_BYTES (64u * 1024u) /* an empty buffer larger than this is freed */
#define SWEEP_MS_MAX 250u          /* the frame-timeout sweep runs at least this often */

/* Kinds of limit events, for the rate-limited log. */
enum { LOG_REFUSED, LOG_FD, LOG_TIMEOUT, LOG_BUFFER, LOG_KINDS };

struct khala_conn {
    khala_server_t *srv;
    int fd;
    pid_t pid; /* peer credentials at accept */
    uid_t uid;
    gid_t gid;
    char comm[16];             /* /proc/<pid>/comm at accept, for the audit; "" unknown */
    gid_t member_gid;          /* the group last asked about by khala__conn_peer_in_group */
    int member;                /* its answer: 1, 0, or -1 when not asked yet */
    uint8_t *in;               /* received bytes not yet consumed */
    size_t in_len;             /* bytes in `in` */
    size_t in_cap;             /* capacity of `in` */
    uint8_t *out;              /* queued reply bytes */
    size_t out_off;            /* first unwritten byte of `out` */
    size_t out_len;            /* end of queued bytes */
    size_t out_cap;            /* capacity of `out` */
    uint32_t events;           /* the epoll mask now registered */
    int closing;               /* 1: close once `out` is written; read nothing more */
    int paused;                /* 1: unsent replies over max_out; frames wait in `in` */
    int64_t frame_start_ms;    /* when the partial frame at the front of `in` began, 0 = none */
    void *data;                /* the handlers' pointer */
    khala_conn_t *prev, *next; /* in srv->conns */
};

struct khala_server {
    khala_server_config_t cfg;
    khala_server_ops_t ops;
    void *arg;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int lfd; /* listening socket */
    int efd; /* epoll */
    int wfd; /* eventfd written by khala__server_stop */
    khala_conn_t *conns;
    unsigned nconns;
    khala_conn_t *current;     /* the connection whose frames are being handled, or NULL */
    int stopping;              /* set by the loop when the eventfd fires */
    int spare_fd;              /* /dev/null, closed to accept-and-refuse at EMFILE; -1 = lost */
    int fd_starved;            /* 1: inside an episode of EMFILE/ENFILE (logged once) */
    int accept_off;            /* 1: the listening socket is out of epoll (no spare descriptor) */
    int64_t next_sweep_ms;     /* when the frame-timeout sweep runs next */
    khala_server_stats_t st;   /* counters and byte totals (conns: nconns) */
    int64_t log_ms[LOG_KINDS]; /* when each kind was last logged */
    uint64_t log_skipped[LOG_KINDS]; /* events of each kind not logged since */
    struct khala_watch {
        int fd; /* -1 = free */
        void (*fn)(void *arg);
        void *arg;
    } watch[KHALA_SERVER_WATCH_MAX]; /* other fds the loop waits on (khala__server_watch) */
};

void khala__server_config_init(khala_server_config_t *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    cfg->mode = 0660;
    cfg->gid = -1;
    cfg->max_frame = 2u * 1024 * 1024;
    cfg->max_out = 8u * 1024 * 1024;
    cfg->max_in_total = 256u * 1024 * 1024;
    cfg->frame_timeout_ms = 10000;
    cfg->tick_ms = 10;
    cfg->max_conns = 4096;
}

static int set_events(khala_conn_t *c, uint32_t ev) {
    if (c->events == ev)
        return 0;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    if (epoll_ctl(c->srv->efd, EPOLL_CTL_MOD, c->fd, &e) != 0)
        return -errno;
    c->events = ev;
    return 0;
}

/* Log a limit event of `kind`, at most once a second per kind; the line says how many were
 * not logged since the last one. Key/value pairs as khala__log, NULL-terminated (at most 4). */
static void limit_log(khala_server_t *s, int kind, const char *msg, ...) {
    int64_t now = khala__sys_now_ms();
    if (s->log_ms[kind] && now - s->log_ms[kind] < 1000) {
        s->log_skipped[kind]++;
        return;
    }
    const char *kv[8] = {NULL};
    va_list ap;
    va_start(ap, msg);
    for (int i = 0; i < 8; i += 2) {
        kv[i] = va_arg(ap, const char *);
        if (!kv[i])
            break;
        kv[i + 1] = va_arg(ap, const char *);
    }
    va_end(ap);
    char skipped[24];
    snprintf(skipped, sizeof(skipped), "%llu", (unsigned long long)s->log_skipped[kind]);
    khala__log("warn", msg, "not_logged_since_last", skipped, kv[0], kv[1], kv[2], kv[3], kv[4],
               kv[5], kv[6], kv[7], NULL);
    s->log_ms[kind] = now;
    s->log_skipped[kind] = 0;
}

/* The peer of fd as "pid P uid U" for a log line, into buf. */
static const char *peer_str(int fd, char *buf, size_t len) {
    struct ucred cred;
    socklen_t cl = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0)
        snprintf(buf, len, "pid %d uid %u", (int)cred.pid, (unsigned)cred.uid);
    else
        snprintf(buf, len, "unknown");
    return buf;
}

/* Buffer capacities change only here, so that the totals in s->st stay exact. */
static void in_resize_done(khala_conn_t *c, uint8_t *p, size_t cap) {
    c->srv->st.in_bytes = c->srv->st.in_bytes - c->in_cap + cap;
    c->in = p;
    c->in_cap = cap;
}

static void out_resize_done(khala_conn_t *c, uint8_t *p, size_t cap) {
    c->srv->st.out_bytes = c->srv->st.out_bytes - c->out_cap + cap;
    c->out = p;
    c->out_cap = cap;
}

static void set_paused(khala_conn_t *c, int paused) {
    if (c->paused == paused)
        return;
    c->paused = paused;
    if (paused)
        c->srv->st.paused++;
    else
        c->srv->st.paused--;
}

/* Take the listening socket back into epoll if it was left out for want of a descriptor (the
 * spare descriptor first, if it was lost): the close of a connection or the periodic sweep may
 * have freed one. */
static void resume_accept(khala_server_t *s) {
    if (!s->accept_off)
        return;
    if (s->spare_fd < 0)
        s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    struct epoll_event e = {.events = EPOLLIN, .data.ptr = TAG_LISTEN};
    if (epoll_ctl(s->efd, EPOLL_CTL_MOD, s->lfd, &e) == 0)
        s->accept_off = 0;
}

static void conn_free(khala_conn_t *c) {
    khala_server_t *s = c->srv;
    if (s->ops.on_close)
        s->ops.on_close(s->arg, c);
    (void)epoll_ctl(s->efd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    set_paused(c, 0);
    free(c->in);
    free(c->out);
    in_resize_done(c, NULL, 0);
    out_resize_done(c, NULL, 0);
    free(c);
    /* A descriptor is free again: accept once more. */
    resume_accept(s);
}

int khala__conn_send(khala_conn_t *c, const void *bytes, size_t len) {
    if (c->out_len + len > c->out_cap) {
        /* Compact first: written bytes at the front are dead. */
        if (c->out_off) {
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        if (c->out_len + len > c->out_cap) {
            size_t cap = c->out_cap ? c->out_cap : 4096;
            while (cap < c->out_len + len)
                cap *= 2;
            uint8_t *p = realloc(c->out, cap);
            if (!p)
                return -ENOMEM;
            out_resize_done(c, p, cap);
        }
    }
    memcpy(c->out + c->out_len, bytes, len);
    c->out_len += len;
    /* The connection being served is flushed when its frames are done; another one (a
     * single-flight waiter answered by someone else's fill) is flushed when epoll says it is
     * writable, which it will say at once. Never flushed here: a failed write frees the
     * connection, and the caller may still hold it. */
    if (c != c->srv->current && !(c->events & EPOLLOUT))
        (void)set_events(c, c->events | EPOLLOUT);
    return 0;
}

const char *khala__conn_comm(const khala_conn_t *c) {
    return c->comm;
}

void khala__conn_peer(const khala_conn_t *c, pid_t *pid, uid_t *uid, gid_t *gid) {
    if (pid)
        *pid = c->pid;
    if (uid)
        *uid = c->uid;
    if (gid)
        *gid = c->gid;
}

/*
 * Supplementary groups come from SO_PEERGROUPS, like SO_PEERCRED the kernel's record of the
 * peer's credentials when it connected: what the process really held (a worker that dropped
 * groups with setgroups() has dropped them here too), with no race against the peer exiting and
 * its pid being reused (which /proc/<pid>/status would have), and no lookup in /etc/group or NSS
 * on khalad's loop (which getgrouplist would do, and which would count groups the process does
 * not hold). The answer is kept per connection: credentials do not change after connect.
 */
int khala__conn_peer_in_group(khala_conn_t *c, gid_t gid) {
    if (c->gid == gid)
        return 1;
    if (c->member >= 0 && c->member_gid == gid)
        return c->member;
    gid_t small[64], *groups = small;
    socklen_t len = sizeof(small);
    int rc = getsockopt(c->fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len);
    if (rc != 0 && errno == ERANGE) {
        groups = malloc(len);
        if (!groups)
            return 0; /* not counted now; asked again at the next write */
        rc = getsockopt(c->fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len);
    }
    int member = 0;
    for (size_t i = 0; rc == 0 && i < len / sizeof(gid_t); i++)
        member |= groups[i] == gid;
    if (groups != small)
        free(groups);
    if (rc != 0)
        return 0; /* an old kernel (before 4.13): the primary group alone counts */
    c->member_gid = gid;
    c->member = member;
    return member;
}

void *khala__conn_data(const khala_conn_t *c) {
    return c->data;
}

void khala__conn_set_data(khala_conn_t *c, void *data) {
    c->data = data;
}

unsigned khala__server_conns(const khala_server_t *s) {
    return s->nconns;
}

void khala__server_stats(const khala_server_t *s, khala_server_stats_t *st) {
    *st = s->st;
    st->conns = s->nconns;
}

size_t khala__server_max_frame(const khala_server_t *s) {
    return s->cfg.max_frame;
}

/* Step 3: write what is queued. 0, or -1 when the connection was freed. */
static int conn_flush(khala_conn_t *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        conn_free(c); /* the peer is gone */
        return -1;
    }
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        if (c->closing) {
            conn_free(c);
            return -1;
        }
        if (c->out_cap > SHRINK_BYTES) {
            free(c->out); /* a burst is over: memory follows what is pending */
            out_resize_done(c, NULL, 0);
        }
    }
    size_t pending = c->out_len - c->out_off;
    int over = pending > c->srv->cfg.max_out;
    set_paused(c, !c->closing && over);
    uint32_t ev = (pending ? EPOLLOUT : 0) | (!c->closing && !over ? EPOLLIN : 0);
    if (set_events(c, ev) != 0) {
        conn_free(c);
        return -1;
    }
    return 0;
}

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Close c for a limit: the handlers queue an ELIMIT reply naming it, input is dropped, and the
 * connection closes once the reply is written. */
static void conn_refuse(khala_conn_t *c, const char *msg) {
    khala_server_t *s = c->srv;
    if (s->ops.on_refuse) {
        khala_conn_t *cur = s->current;
        s->current = c; /* queue only: the caller flushes */
        s->ops.on_refuse(s->arg, c, KHALA_ELIMIT, msg);
        s->current = cur;
    }
    c->closing = 1;
    c->in_len = 0;
    c->frame_start_ms = 0;
    free(c->in);
    in_resize_done(c, NULL, 0);
}

/* Step 2 and 4: hand every complete frame in `in` to the handlers, while the unsent replies
 * stay within max_out. */
static void conn_frames(khala_conn_t *c) {
    khala_server_t *s = c->srv;
    size_t off = 0;
    while (!c->closing && c->in_len - off >= 4) {
        if (c->out_len - c->out_off > s->cfg.max_out)
            break; /* paused: the rest waits until the client reads (step 3) */
        uint32_t len = be32(c->in + off);
        if (len == 0 || len > s->cfg.max_frame) {
            if (s->ops.on_bad_frame)
                s->ops.on_bad_frame(s->arg, c, len);
            c->closing = 1;
            break;
        }
        if (c->in_len - off - 4 < len)
            break;
        s->current = c;
        int rc = s->ops.on_frame(s->arg, c, c->in + off + 4, len);
        s->current = NULL;
        if (rc < 0)
            c->closing = 1;
        off += 4 + (size_t)len;
    }
    if (c->closing)
        c->in_len = 0;
    else if (off) {
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
    }
    /* A partial frame's clock starts when its first bytes are at the front of `in`. */
    if (c->in_len == 0)
        c->frame_start_ms = 0;
    else if (off || !c->frame_start_ms)
        c->frame_start_ms = khala__sys_now_ms();
    if (c->in_len == 0 && c->in_cap > SHRINK_BYTES) {
        free(c->in);
        in_resize_done(c, NULL, 0);
    }
}

/* Does `in` start with a whole frame (or a bad header, which conn_frames answers)? */
static int has_frame(const khala_conn_t *c) {
    if (c->in_len < 4)
        return 0;
    uint32_t len = be32(c->in);
    return len == 0 || len > c->srv->cfg.max_frame || c->in_len - 4 >= len;
}

/* Steps 2 and 3 until no handled frame is left waiting: the flush may drain the replies below
 * max_out at once (a client reading as fast as it is written), and then nothing else would
 * wake the frames that wait. Each round handles frames already buffered: bounded by one read. */
static void conn_serve(khala_conn_t *c) {
    do {
        conn_frames(c);
        if (conn_flush(c) != 0)
            return; /* freed */
    } while (!c->closing && c->out_len - c->out_off <= c->srv->cfg.max_out && has_frame(c));
}

/* Step 1. */
static void conn_readable(khala_conn_t *c) {
    khala_server_t *s = c->srv;
    size_t want = READ_CHUNK;
    /* Room for the frame in progress, but never more than one whole frame, and never more than
     * max_in_total across all clients. */
    size_t limit = 4 + s->cfg.max_frame;
    if (c->in_cap - c->in_len < want && c->in_cap < limit) {
        size_t cap = c->in_cap ? c->in_cap : READ_CHUNK;
        while (cap - c->in_len < want && cap < limit)
            cap *= 2;
        if (cap > limit)
            cap = limit;
        if (s->st.in_bytes - c->in_cap + cap > s->cfg.max_in_total) {
            char msg[200], peer[64];
            snprintf(msg, sizeof(msg),
                     "khalad holds %llu bytes of unfinished requests, its limit "
                     "([server] max_buffer_bytes %zu); closing this connection",
                     (unsigned long long)s->st.in_bytes, s->cfg.max_in_total);
            s->st.buffer_refusals++;
            limit_log(s, LOG_BUFFER,
                      "closed a connection: input buffers at [server] max_buffer_bytes", "peer",
                      peer_str(c->fd, peer, sizeof(peer)), NULL);
            conn_refuse(c, msg);
            (void)conn_flush(c);
            return;
        }
        uint8_t *p = realloc(c->in, cap);
        if (!p) {
            conn_free(c);
            return;
        }
        in_resize_done(c, p, cap);
    }
    if (c->in_cap - c->in_len < want)
        want = c->in_cap - c->in_len;
    ssize_t n = recv(c->fd, c->in + c->in_len, want, 0);
    if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) {
        conn_free(c);
        return;
    }
    if (n > 0) {
        c->in_len += (size_t)n;
        conn_serve(c);
        return;
    }
    (void)conn_flush(c);
}

/* The peer's process name, read once at accept while the pid is fresh (the audit names it; a
 * name read later could belong to a process that reused the pid). "" when it cannot be read. */
static void read_comm(pid_t pid, char *out, size_t len) {
    char path[64];
    out[0] = '\0';
    snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, out, len - 1);
    close(fd);
    if (n <= 0) {
        out[0] = '\0';
        return;
    }
    out[n] = '\0';
    out[strcspn(out, "\n")] = '\0';
}

/* Refuse a connection just accepted, that will not be served: one ELIMIT reply (msg), written
 * without waiting (it is small and the socket's buffer is empty), then the close. */
static void refuse_fd(khala_server_t *s, int fd, const char *msg) {
    khala_conn_t tmp;
    memset(&tmp, 0, sizeof(tmp));
    tmp.srv = s;
    tmp.fd = fd;
    tmp.member = -1;
    if (s->ops.on_refuse) {
        khala_conn_t *cur = s->current;
        s->current = &tmp; /* queue only: never registered in epoll */
        s->ops.on_refuse(s->arg, &tmp, KHALA_ELIMIT, msg);
        s->current = cur;
    }
    if (tmp.out_len)
        (void)!send(fd, tmp.out, tmp.out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
    free(tmp.out);
    out_resize_done(&tmp, NULL, 0);
    close(fd);
}

/* accept failed with EMFILE or ENFILE (err): refuse the waiting connections through the spare
 * descriptor, so the backlog drains and epoll stops waking us; without a spare, stop watching
 * the listening socket until a connection closes (conn_free) or the next sweep. */
static void accept_starved(khala_server_t *s, int err) {
    if (!s->fd_starved) {
        s->fd_starved = 1;
        s->st.fd_exhausted++;
        khala__log("warn",
                   "out of file descriptors: new connections are refused until some close "
                   "(raise LimitNOFILE= or lower [server] max_connections)",
                   "error", strerror(err), NULL);
    }
    while (s->spare_fd >= 0) {
        close(s->spare_fd);
        s->spare_fd = -1;
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            s->st.fd_refused++;
            refuse_fd(s, fd, "khalad is out of file descriptors; try again later");
        }
        s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return; /* the backlog is empty (EAGAIN), or something else failed: next event */
    }
    struct epoll_event e = {.events = 0, .data.ptr = TAG_LISTEN};
    if (epoll_ctl(s->efd, EPOLL_CTL_MOD, s->lfd, &e) == 0)
        s->accept_off = 1;
}

static void accept_all(khala_server_t *s) {
    for (;;) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE)
                accept_starved(s, errno);
            return; /* EAGAIN, or a transient error (ENOBUFS...): try at the next event */
        }
        if (s->fd_starved) {
            s->fd_starved = 0;
            khala__log("info", "file descriptors are available again; accepting connections", NULL);
        }
        if (s->nconns >= s->cfg.max_conns) {
            char msg[160], peer[64], max[24];
            snprintf(msg, sizeof(msg),
                     "khalad serves %u connections, its limit ([server] max_connections); "
                     "try again later",
                     s->cfg.max_conns);
            snprintf(max, sizeof(max), "%u", s->cfg.max_conns);
            s->st.refused++;
            limit_log(s, LOG_REFUSED, "refused a connection: [server] max_connections reached",
                      "max_connections", max, "peer", peer_str(fd, peer, sizeof(peer)), NULL);
            refuse_fd(s, fd, msg);
            continue;
        }
        khala_conn_t *c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        struct ucred cred;
        socklen_t cl = sizeof(cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0) {
            c->pid = cred.pid;
            c->uid = cred.uid;
            c->gid = cred.gid;
            read_comm(cred.pid, c->comm, sizeof(c->comm));
        }
        c->member = -1;
        c->srv = s;
        c->fd = fd;
        c->events = EPOLLIN;
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(s->efd, EPOLL_CTL_ADD, fd, &e) != 0) {
            close(fd);
            free(c);
            continue;
        }
        c->next = s->conns;
        if (s->conns)
            s->conns->prev = c;
        s->conns = c;
        s->nconns++;
    }
}

/* Close connections whose partial frame is older than frame_timeout_ms; take the listening
 * socket back into epoll if it was left out for want of a descriptor. */
static void sweep(khala_server_t *s, int64_t now) {
    resume_accept(s);
    if (!s->cfg.frame_timeout_ms)
        return;
    khala_conn_t *next;
    for (khala_conn_t *c = s->conns; c; c = next) {
        next = c->next;
        if (!c->frame_start_ms || c->paused || c->closing ||
            now - c->frame_start_ms < (int64_t)s->cfg.frame_timeout_ms)
            continue;
        char msg[200], peer[64], have[24];
        snprintf(msg, sizeof(msg),
                 "a request frame was not complete after %u ms ([server] frame_timeout_ms); "
                 "closing this connection",
                 s->cfg.frame_timeout_ms);
        snprintf(have, sizeof(have), "%zu", c->in_len);
        s->st.frame_timeouts++;
        limit_log(s, LOG_TIMEOUT,
                  "closed a connection: a frame did not complete within [server] "
                  "frame_timeout_ms",
                  "peer", peer_str(c->fd, peer, sizeof(peer)), "bytes_received", have, NULL);
        conn_refuse(c, msg);
        (void)conn_flush(c);
    }
}

int khala__server_open(const khala_server_config_t *cfg, const khala_server_ops_t *ops, void *arg,
                       khala_server_t **out, char *err, size_t errlen) {
    struct sockaddr_un sa;
    int rc;
    if (strlen(cfg->path) >= sizeof(sa.sun_path)) {
        khala__errbuf_set(err, errlen, "socket path '%s' is longer than %zu bytes", cfg->path,
                          sizeof(sa.sun_path) - 1);
        return -ENAMETOOLONG;
    }
    khala_server_t *s = calloc(1, sizeof(*s));
    if (!s) {
        khala__errbuf_set(err, errlen, "out of memory");
        return -ENOMEM;
    }
    s->cfg = *cfg;
    s->ops = *ops;
    s->arg = arg;
    s->lfd = s->efd = s->wfd = -1;
    s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC); /* -1 is survivable: see theory */
    for (int i = 0; i < KHALA_SERVER_WATCH_MAX; i++)
        s->watch[i].fd = -1;
    snprintf(s->path, sizeof(s->path), "%s", cfg->path);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, cfg->path, strlen(cfg->path) + 1);

    /* A socket file with a live listener behind it belongs to another khalad. */
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe >= 0) {
        int live = connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0;
        close(probe);
        if (live) {
            khala__errbuf_set(err, errlen, "another khalad serves %s", cfg->path);
            rc = KHALA_EEXIST;
            goto fail;
        }
    }
    (void)unlink(cfg->path); /* stale: its listener died */
    s->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->lfd < 0 || bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        rc = -errno;
        khala__errbuf_set(err, errlen, "cannot bind %s: %s", cfg->path, strerror(errno));
        goto fail;
    }
    if (chmod(cfg->path, cfg->mode) != 0 ||
        (cfg->gid >= 0 && chown(cfg->path, (uid_t)-1, (gid_t)cfg->gid) != 0)) {
        rc = -errno;
        khala__errbuf_set(err, errlen, "cannot set the mode or group of %s: %s", cfg->path,
                          strerror(errno));
        goto fail_unlink;
    }
    if (listen(s->lfd, LISTEN_BACKLOG) != 0 || (s->efd = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
        (s->wfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        rc = -errno;
        khala__errbuf_set(err, errlen, "cannot listen on %s: %s", cfg->path, strerror(errno));
        goto fail_unlink;
    }
    struct epoll_event el = {.events = EPOLLIN, .data.ptr = TAG_LISTEN};
    struct epoll_event ew = {.events = EPOLLIN, .data.ptr = TAG_WAKE};
    if (epoll_ctl(s->efd, EPOLL_CTL_ADD, s->lfd, &el) != 0 ||
        epoll_ctl(s->efd, EPOLL_CTL_ADD, s->wfd, &ew) != 0) {
        rc = -errno;
        khala__errbuf_set(err, errlen, "epoll: %s", strerror(errno));
        goto fail_unlink;
    }
    *out = s;
    return 0;
fail_unlink:
    (void)unlink(cfg->path);
fail:
    if (s->wfd >= 0)
        close(s->wfd);
    if (s->efd >= 0)
        close(s->efd);
    if (s->lfd >= 0)
        close(s->lfd);
    if (s->spare_fd >= 0)
        close(s->spare_fd);
    free(s);
    return rc;
}

int khala__server_watch(khala_server_t *s, int old_fd, int fd, void (*fn)(void *arg), void *arg) {
    if (old_fd >= 0) {
        for (int i = 0; i < KHALA_SERVER_WATCH_MAX; i++) {
            if (s->watch[i].fd == old_fd) {
                (void)epoll_ctl(s->efd, EPOLL_CTL_DEL, old_fd, NULL);
                s->watch[i].fd = -1;
            }
        }
    }
    if (fd < 0)
        return 0;
    for (int i = 0; i < KHALA_SERVER_WATCH_MAX; i++) {
        if (s->watch[i].fd >= 0)
            continue;
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = &s->watch[i]};
        if (epoll_ctl(s->efd, EPOLL_CTL_ADD, fd, &e) != 0)
            return -errno;
        s->watch[i] = (struct khala_watch){fd, fn, arg};
        return 0;
    }
    return -ENOSPC;
}

int khala__server_run(khala_server_t *s) {
    struct epoll_event ev[MAX_EVENTS];
    uint64_t next_tick = (uint64_t)khala__sys_now_ms() + s->cfg.tick_ms;
    while (!s->stopping) {
        uint64_t now = (uint64_t)khala__sys_now_ms();
        int timeout = next_tick > now ? (int)(next_tick - now) : 0;
        int n = epoll_wait(s->efd, ev, MAX_EVENTS, timeout);
        if (n < 0 && errno != EINTR)
            return -errno;
        for (int i = 0; i < n; i++) {
            void *p = ev[i].data.ptr;
            if (p == TAG_LISTEN) {
                accept_all(s);
            } else if (p >= (void *)s->watch && p < (void *)(s->watch + KHALA_SERVER_WATCH_MAX)) {
                struct khala_watch *w = p;
                if (w->fd >= 0)
                    w->fn(w->arg);
            } else if (p == TAG_WAKE) {
                uint64_t v;
                (void)!read(s->wfd, &v, sizeof(v));
                s->stopping = 1;
            } else {
                khala_conn_t *c = p;
                if (ev[i].events & (EPOLLERR | EPOLLHUP) && !(ev[i].events & EPOLLIN)) {
                    conn_free(c);
                    continue;
                }
                if (ev[i].events & EPOLLOUT) {
                    if (conn_flush(c) != 0)
                        continue; /* freed */
                    if (!c->paused && !c->closing && has_frame(c)) {
                        conn_serve(c); /* step 3: the paused frames; may free c */
                        continue;
                    }
                }
                if (ev[i].events & EPOLLIN)
                    conn_readable(c);
            }
        }
        now = (uint64_t)khala__sys_now_ms();
        if ((int64_t)now >= s->next_sweep_ms) {
            sweep(s, (int64_t)now);
            unsigned every = s->cfg.frame_timeout_ms / 4;
            s->next_sweep_ms =
                (int64_t)now + (every && every < SWEEP_MS_MAX ? every : SWEEP_MS_MAX);
        }
        if (now >= next_tick) {
            if (s->ops.on_tick)
                s->ops.on_tick(s->arg);
            next_tick = now + s->cfg.tick_ms;
        }
    }
    return 0;
}

void khala__server_stop(khala_server_t *s) {
    /* write(2) is async-signal-safe; the loop sees the eventfd and stops. */
    uint64_t one = 1;
    (void)!write(s->wfd, &one, sizeof(one));
}

void khala__server_close(khala_server_t *s) {
    if (!s)
        return;
    while (s->conns)
        conn_free(s->conns);
    close(s->wfd);
    close(s->efd);
    close(s->lfd);
    if (s->spare_fd >= 0)
        close(s->spare_fd);
    (void)unlink(s->path);
    free(s);
}
