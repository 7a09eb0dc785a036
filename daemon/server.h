/*
 * khalad's socket server: a Unix stream socket, an epoll loop, and per-connection buffers.
 * It knows frames only as "4-byte big-endian length, then that many bytes"; what is inside a
 * frame is the protocol module's business (lib/proto.h), and what a request does is the
 * handlers'. Start at khala__server_open() and khala_server_ops_t.
 *
 * Single-threaded: every function here runs on the loop's thread, except khala__server_stop,
 * which is async-signal-safe.
 */
#ifndef KHALA_DAEMON_SERVER_H
#define KHALA_DAEMON_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct khala_server khala_server_t;
typedef struct khala_conn khala_conn_t;

/* What the server calls. `arg` is the pointer given to khala__server_open. */
typedef struct khala_server_ops {
    /* A complete frame arrived on c; body is its payload (without the length prefix), valid
     * until the callback returns. Return 0 to go on, or a negative code to close c once what
     * was queued to it has been written (a protocol error: reply first, then return it). */
    int (*on_frame)(void *arg, khala_conn_t *c, const uint8_t *body, size_t len);
    /* A frame announced `len` bytes, 0 or over max_frame: queue an error reply to c (the
     * connection closes once it is written). May be NULL. */
    void (*on_bad_frame)(void *arg, khala_conn_t *c, size_t len);
    /* c is about to be freed (peer closed, error, or server shutdown). May be NULL. */
    void (*on_close)(void *arg, khala_conn_t *c);
    /* Called about every tick_ms while the loop runs (housekeeping). May be NULL. */
    void (*on_tick)(void *arg);
    /* The server is about to close c for a limit: queue one error reply (id 0) with code rc
     * (KHALA_ELIMIT) and the message msg, which names the limit. c may be a connection that was
     * never served (refused at accept): the callback must not keep it. May be NULL. */
    void (*on_refuse)(void *arg, khala_conn_t *c, int rc, const char *msg);
} khala_server_ops_t;

typedef struct khala_server_config {
    const char *path;          /* socket path; its directory must exist */
    unsigned mode;             /* socket file mode, e.g. 0660 */
    long gid;                  /* group of the socket file, -1 to keep the process's */
    size_t max_frame;          /* largest frame payload accepted */
    size_t max_out;            /* unsent reply bytes of one client beyond which its requests
                                  wait (and it is not read) until they drain */
    size_t max_in_total;       /* bytes of input buffers (partial frames) across all clients;
                                  a client that needs more is refused and closed */
    unsigned frame_timeout_ms; /* a frame begun this long ago and not complete closes its
                                  connection; 0 = never */
    unsigned tick_ms;          /* period of on_tick */
    unsigned max_conns;        /* connections beyond this are refused */
} khala_server_config_t;

/* What the server holds and what its limits did, for stats. */
typedef struct khala_server_stats {
    unsigned conns;           /* connections open now */
    unsigned paused;          /* of those, not read now: unsent replies over max_out */
    uint64_t in_bytes;        /* bytes allocated now for input buffers, all clients */
    uint64_t out_bytes;       /* bytes allocated now for reply buffers, all clients */
    uint64_t refused;         /* connections refused at max_conns */
    uint64_t fd_refused;      /* connections refused for want of a file descriptor */
    uint64_t fd_exhausted;    /* episodes of accept failing with EMFILE or ENFILE */
    uint64_t frame_timeouts;  /* connections closed: a frame did not complete in time */
    uint64_t buffer_refusals; /* connections closed: max_in_total reached */
} khala_server_stats_t;

/* Defaults: mode 0660, gid -1, max_frame 2 MiB, max_out 8 MiB, max_in_total 256 MiB,
 * frame_timeout_ms 10 s, tick 10 ms, 4096 conns. */
void khala__server_config_init(khala_server_config_t *cfg);

/* Bind and listen. A stale socket file (no one listening) is replaced; a live one is
 * KHALA_EEXIST ("another khalad serves <path>"). 0 or a negative code, detail in err. */
int khala__server_open(const khala_server_config_t *cfg, const khala_server_ops_t *ops, void *arg,
                       khala_server_t **out, char *err, size_t errlen);

/* Run the loop until khala__server_stop. 0, or -errno if epoll itself fails. */
int khala__server_run(khala_server_t *s);

/* Ask the loop to return. Async-signal-safe. */
void khala__server_stop(khala_server_t *s);

/* Close every connection, the listening socket, and unlink the socket file. */
void khala__server_close(khala_server_t *s);

/* Queue bytes (one or more complete frames) to c. 0, or -ENOMEM. Bytes beyond max_out are
 * still queued; the server then handles no more of c's requests, and does not read from it,
 * until its queue drains below max_out, so a client that does not read its replies holds at
 * most max_out plus one reply. */
int khala__conn_send(khala_conn_t *c, const void *bytes, size_t len);

/* The peer's process name (/proc/PID/comm, at most 15 bytes), read at accept; "" when it
 * could not be read. Valid while c is. */
const char *khala__conn_comm(const khala_conn_t *c);

/* The peer's credentials (SO_PEERCRED), read at accept. */
void khala__conn_peer(const khala_conn_t *c, pid_t *pid, uid_t *uid, gid_t *gid);

/**
 * @brief Whether the peer is a member of group @p gid: its primary group (SO_PEERCRED) or one of
 *        its supplementary groups (SO_PEERGROUPS), as the kernel recorded them when it
 *        connected.
 * @param[in] c the connection. @param[in] gid the group.
 * @return 1 or 0 (0 also when the kernel cannot tell: then the primary group alone counts).
 * @note The answer is cached on the connection; khalad's loop thread only.
 */
int khala__conn_peer_in_group(khala_conn_t *c, gid_t gid);

/* A per-connection pointer for the handlers (NULL at first). */
void *khala__conn_data(const khala_conn_t *c);
void khala__conn_set_data(khala_conn_t *c, void *data);

/* Other descriptors the loop can wait on (Redis pub/sub, say). */
#define KHALA_SERVER_WATCH_MAX 4

/* Call fn(arg) from the loop whenever fd is readable. old_fd (>= 0) is unwatched first, so a
 * caller whose descriptor changed (a reconnect) passes the old one and the new one; fd -1 only
 * unwatches. 0, -ENOSPC when KHALA_SERVER_WATCH_MAX are watched, or -errno from epoll. The
 * server never closes a watched descriptor. */
int khala__server_watch(khala_server_t *s, int old_fd, int fd, void (*fn)(void *arg), void *arg);

/* Connections open now. */
unsigned khala__server_conns(const khala_server_t *s);

/**
 * @brief What the server holds now and what its limits have done since it opened.
 * @param[in] s the server. @param[out] st the figures.
 * @note khalad's loop thread only.
 */
void khala__server_stats(const khala_server_t *s, khala_server_stats_t *st);

/** @brief The largest frame body the server accepts (its config's max_frame). */
size_t khala__server_max_frame(const khala_server_t *s);

#endif /* KHALA_DAEMON_SERVER_H */
