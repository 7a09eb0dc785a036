/*
 * A channel: one client connection to khalad over its Unix socket, speaking the protocol of
 * lib/proto.h. Blocking, one request at a time (send, then wait for the reply with the same
 * id). The worker library gives each thread its own channel; khalactl uses one. Start at
 * khala__chan_open().
 *
 * Not thread-safe: one thread uses a channel at a time.
 */
#ifndef KHALA_LIB_CHANNEL_H
#define KHALA_LIB_CHANNEL_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"

typedef struct khala_chan khala_chan_t;

/* What khalad said in its hello reply. */
typedef struct khala_chan_info {
    uint32_t proto;     /* protocol version */
    uint64_t gen;       /* L1 segment generation */
    uint32_t max_frame; /* largest frame body khalad accepts */
    uint32_t max_value; /* largest value */
} khala_chan_info_t;

/* The socket path khalad uses for cache `name` by default (the rule of docs/operating.md:
 * /run/khala/NAME.sock as root, $XDG_RUNTIME_DIR/khala/NAME.sock otherwise, else
 * /tmp/khala-UID/NAME.sock). 0, or -ENAMETOOLONG. */
int khala__chan_default_path(const char *name, char *buf, size_t len);

/* Connect to the socket at path (NULL: the default path for name), say hello (protocol version
 * and cache name), and wait at most timeout_ms for the reply.
 * Returns 0; KHALA_EDAEMON when nobody listens there (the message names the path);
 * KHALA_ENAME when khalad serves another cache; KHALA_EPROTO on a protocol mismatch;
 * -ETIMEDOUT; -ENOMEM; -EPERM when the socket's directory is unsafe (a symbolic link, not a
 * directory, writable by others, or, for this user's default path, owned by another user or
 * writable by its group: lib/rundir.h), before anything is connected; -errno. */
int khala__chan_open(const char *path, const char *name, int timeout_ms, khala_chan_t **out,
                     char *err, size_t errlen);

/* Send req (its id is assigned here) and wait at most timeout_ms for its reply, decoded for
 * req->op into *reply (whose views stay valid until the next call on ch or its close; free it
 * with khala__proto_msg_free). Returns 0 when a reply arrived (its rc may be an error: that
 * is the server's answer); KHALA_EDAEMON when the connection broke (the channel is then dead:
 * close it and open another); -ETIMEDOUT (dead too: a late reply would be mistaken for the
 * next one); KHALA_EPROTO; -ENOMEM. Before anything is sent, req may be refused with KHALA_EPROTO
 * (it would not decode) or KHALA_ETOOBIG (its frame exceeds khalad's max_frame); the channel
 * then stays usable. A negative timeout_ms waits without limit (khala__chan_open too). */
int khala__chan_call(khala_chan_t *ch, khala_msg_t *req, khala_msg_t *reply, int timeout_ms,
                     char *err, size_t errlen);

/* What the hello reply said. */
const khala_chan_info_t *khala__chan_info(const khala_chan_t *ch);

/* Is the channel still worth a request? 0 when an earlier call failed, or when khalad has
 * closed the connection or sent something unasked since the last call (the channel is then
 * dead); 1 otherwise. One poll(2) with a zero timeout. */
int khala__chan_usable(khala_chan_t *ch);

/* The socket path the channel connected to, for messages. */
const char *khala__chan_path(const khala_chan_t *ch);

/* Close the connection and free the channel; NULL is fine. Never shuts the connection down, so
 * a child after fork may close its inherited copy without disturbing the parent's. */
void khala__chan_close(khala_chan_t *ch);

#endif /* KHALA_LIB_CHANNEL_H */
