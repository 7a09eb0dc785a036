/*
 * Cross-host invalidation over Redis pub/sub (DESIGN.md "Coherence"). Every khalad whose L2
 * namespace is <ns> subscribes to the channel "khala:<ns>:inv" and publishes there every put,
 * delete, invalidation and flush it performs; every other khalad on that channel hears it and
 * drops the key(s) from its own L1. A khalad that lost its subscription may have missed
 * messages: this module reports the loss and the regain (KHALA_COH_LOST, KHALA_COH_REGAINED)
 * and khalad decides what to flush.
 *
 * Start at khala__coherence_open(); khalad's epoll loop then adds khala__coherence_fd() once
 * (EPOLLIN, level-triggered), calls khala__coherence_readable() when it is readable and
 * khala__coherence_tick() about every 10 ms, and calls khala__coherence_publish() after each
 * local change. daemon/coherence.c explains the machinery.
 *
 * Not thread-safe: khalad's loop thread owns a handle. Callbacks run inside readable() and
 * tick(), on that thread; they may call publish(), subscribed(), stats() and errmsg(), never
 * readable(), tick() or close().
 */
#ifndef KHALA_DAEMON_COHERENCE_H
#define KHALA_DAEMON_COHERENCE_H

#include <stddef.h>
#include <stdint.h>

/** Largest message on the channel, in bytes. An encoded message is at most about 300 bytes (a
 * KHALA_KEY_MAX key and four small fields); the rest leaves room for fields a later version may
 * add. Larger payloads are counted malformed without being decoded. */
#define KHALA_COH_MSG_MAX 1024u

/** A subscribed connection sends PING this often, in ms; no answer within twice the command
 * timeout is a loss. */
#define KHALA_COH_PING_INTERVAL_MS 1000

/** Reconnect backoff, in ms: the first attempt after a loss waits KHALA_COH_BACKOFF_MIN_MS,
 * each failure doubles the wait up to KHALA_COH_BACKOFF_MAX_MS. */
#define KHALA_COH_BACKOFF_MIN_MS 50u
#define KHALA_COH_BACKOFF_MAX_MS 2000u

typedef struct khala_coherence khala_coherence_t;

/** khala_inv_t.type of a KHALA_INV_ALL that flushes every type. */
#define KHALA_INV_ALL_TYPES (-1)

/** What an invalidation names. */
typedef enum khala_inv_by {
    KHALA_INV_KEY = 0,    /**< one key: a put (version != 0), a delete or an invalidation */
    KHALA_INV_PREFIX = 1, /**< every key that starts with the prefix */
    KHALA_INV_TYPE = 2,   /**< every key of one type */
    KHALA_INV_ALL = 3,    /**< a flush: every key, or every key of one type */
} khala_inv_by_t;

/** One invalidation, published or received. */
typedef struct khala_inv {
    khala_inv_by_t by;
    const void *key;  /**< KEY and PREFIX: the key or prefix, binary-safe; else NULL. A received
                          message's key is valid only during the on_inval call. */
    size_t klen;      /**< KEY and PREFIX: 1..KHALA_KEY_MAX bytes; else 0 */
    int type;         /**< TYPE: 0..KHALA_TYPE_COUNT-1; ALL: KHALA_INV_ALL_TYPES (every type)
                          or a type id (a flush of that type only: beware that a zeroed
                          struct says type 0); KEY and PREFIX: ignored when publishing, -1
                          when received */
    uint64_t version; /**< KEY: the version a put wrote, 0 for a delete or an invalidation;
                           else 0 */
} khala_inv_t;

/** A change of the subscription (see khala__coherence_open() for when each is reported). */
typedef enum khala_coh_event {
    KHALA_COH_LOST = 0,     /**< messages from now on may be missed */
    KHALA_COH_REGAINED = 1, /**< subscribed again: messages from now on arrive; whatever was
                                 cached before this event cannot be proven current */
} khala_coh_event_t;

/** Where to subscribe. */
typedef struct khala_coherence_opts {
    const char *url;     /**< a redis_url (khala__config_redis_url_parse): TCP or unix://; a
                              Redis Cluster is reached through the node the URL names */
    const char *ns;      /**< the L2 namespace (khala__config_l2_namespace), 1..KHALA_NAME_MAX
                              bytes; the channel is "khala:<ns>:inv" */
    unsigned timeout_ms; /**< connect and command timeout; 0 = KHALA_REDIS_TIMEOUT_MS_DEFAULT */
} khala_coherence_opts_t;

/** What khalad is told. Both functions are required. */
typedef struct khala_coherence_cb {
    /** A message from another khalad on the channel (never one of this handle's own). */
    void (*on_inval)(void *arg, const khala_inv_t *m);
    /** The subscription was lost or regained; @p why names the server and the cause. */
    void (*on_event)(void *arg, khala_coh_event_t ev, const char *why);
    void *arg; /**< passed to both */
} khala_coherence_cb_t;

/** Counters since open. */
typedef struct khala_coherence_stats {
    uint64_t published;      /**< messages PUBLISH accepted */
    uint64_t publish_errors; /**< publish() calls that returned KHALA_ETIER */
    uint64_t received;       /**< messages from others handed to on_inval */
    uint64_t ignored_own;    /**< this handle's own messages, heard back and ignored */
    uint64_t malformed;      /**< payloads on the channel that did not decode; ignored */
    uint64_t losses;         /**< KHALA_COH_LOST events */
    uint64_t reconnects;     /**< KHALA_COH_REGAINED events */
} khala_coherence_stats_t;

/**
 * @brief Subscribe to "khala:<ns>:inv" on the server @p o->url names, and prepare to publish
 *        there.
 *
 * If the server answers, the subscription is live when this returns (subscribed() is 1) and
 * nothing is reported: the caller may flush now whatever it holds from before (an adopted L1
 * segment was filled while no one listened), and every later message will arrive.
 *
 * If the server cannot be reached, this still succeeds: the handle starts disconnected and the
 * first tick() reports KHALA_COH_LOST ("not subscribed at start: ..."); tick() then retries
 * with backoff, and the first subscription is reported as KHALA_COH_REGAINED. A khalad that
 * started while Redis was down serves from an L1 it may have adopted from its previous run,
 * and fills L1 (and takes puts) while other hosts' messages go unheard; when the subscription
 * finally comes up, none of that can be proven current, exactly as after a loss. So every
 * REGAINED follows exactly one LOST, and the rule for the caller is one: flush on REGAINED.
 *
 * After a loss (end of stream or a read error on the subscription, or no answer to a liveness
 * PING within twice the timeout), LOST is reported exactly once; reconnect attempts that fail
 * report nothing more; the subscription's confirmation is reported as REGAINED. A publisher
 * failure is not a loss (see khala__coherence_publish()).
 *
 * @param[in] o where to subscribe; the strings are copied.
 * @param[in] cb the callbacks; copied.
 * @param[out] out the handle; written only on success.
 * @param[out] err message buffer (naming the server and the cause); may be NULL.
 * @param[in] errlen size of @p err.
 * @return 0; KHALA_ECONFIG for a bad URL (or a rediss:// one: TLS is not built in), a bad
 *         namespace, missing callbacks, or a server that refuses the credentials, the database
 *         or the SUBSCRIBE (an ACL without the channel); -ENOMEM; -errno when epoll cannot be
 *         created.
 * @note Blocks for at most about the timeout per command when the server is slow (connect,
 *       AUTH, SELECT, SUBSCRIBE), as every reconnect attempt in tick() does.
 */
int khala__coherence_open(const khala_coherence_opts_t *o, const khala_coherence_cb_t *cb,
                          khala_coherence_t **out, char *err, size_t errlen);

/**
 * @brief The descriptor khalad's epoll loop watches: readable when readable() has work.
 * @param[in] c the handle.
 * @return a descriptor (an epoll set holding the subscription's socket) that stays the same
 *         from open to close, also across reconnects and while disconnected; add it once,
 *         EPOLLIN, level-triggered.
 * @note Why not the socket itself: it changes with every reconnect, and a new socket often
 *       gets the number of the old one, which closing has silently removed from the caller's
 *       epoll set; "re-read the fd after every call" cannot see that.
 */
int khala__coherence_fd(const khala_coherence_t *c);

/**
 * @brief Read what arrived on the subscription and dispatch it: on_inval for each message from
 *        another khalad; on_event(LOST) if the stream ended or failed.
 * @param[in] c the handle.
 * @note Never blocks; harmless when nothing arrived or while disconnected. Reads at most about
 *       1 MiB per call, so a flood cannot starve the loop; level-triggered epoll calls again.
 */
void khala__coherence_readable(khala_coherence_t *c);

/**
 * @brief Timers: reconnect with backoff while disconnected (reporting REGAINED on success, or
 *        the LOST owed since open), send liveness PINGs while subscribed and report LOST when
 *        one goes unanswered for twice the timeout.
 * @param[in] c the handle.
 * @param[in] now_ms the monotonic clock in ms (khala__sys_now_ms); call about every 10 ms.
 * @note A reconnect attempt blocks like open() does: at once when the server refuses the
 *       connection, up to the timeout per step when it does not answer.
 */
void khala__coherence_tick(khala_coherence_t *c, int64_t now_ms);

/**
 * @brief Publish @p m on the channel for every other khalad of the namespace.
 * @param[in] c the handle.
 * @param[in] m the invalidation; the key is copied.
 * @return 0 once the server accepted it (whether anyone listens or not); KHALA_ETIER when it
 *         could not be published (errmsg() names the server and the cause: refused connection,
 *         timeout, an error reply); KHALA_EKEY for a KEY or PREFIX without 1..KHALA_KEY_MAX
 *         bytes; -EINVAL for a bad @p m->by or @p m->type; -ENOMEM.
 * @note Blocking, with the command timeout, on its own connection (not the subscription's). A
 *       connection that fails is dropped; one that had worked before is replaced at once and
 *       the PUBLISH retried once (the server may have restarted). After any other failure to
 *       connect or to publish, calls fail at once for a backoff period (50 ms doubling to 2 s,
 *       reset by a success or a regained subscription), so a dead or hung server costs the
 *       loop one timeout per period, not one per put. A publish failure does not report LOST:
 *       receiving may still work.
 */
int khala__coherence_publish(khala_coherence_t *c, const khala_inv_t *m);

/**
 * @brief Whether the subscription is live.
 * @param[in] c the handle.
 * @return 1 from the SUBSCRIBE's confirmation until a loss is detected, else 0.
 */
int khala__coherence_subscribed(const khala_coherence_t *c);

/**
 * @brief The counters since open.
 * @param[in] c the handle.
 * @param[out] out the counters.
 */
void khala__coherence_stats(const khala_coherence_t *c, khala_coherence_stats_t *out);

/**
 * @brief The last failure in words: of publish(), of a reconnect attempt, or the last loss.
 * @param[in] c the handle.
 * @return a string inside the handle ("" if nothing failed), valid until the next call on it.
 */
const char *khala__coherence_errmsg(const khala_coherence_t *c);

/**
 * @brief Close both connections and free the handle. No callback runs.
 * @param[in] c the handle; NULL is ignored.
 */
void khala__coherence_close(khala_coherence_t *c);

/* ---- The message codec (daemon/coherence.c "Every message is a msgpack map"), exposed for
 * the tests and tests/fuzz/fuzz_inval.c; khalad itself goes through publish() and
 * readable(). ---------------------------------------------------------------------------- */

/** One encoded message. */
typedef struct khala_coh_buf {
    char buf[KHALA_COH_MSG_MAX]; /**< the message's bytes */
    size_t len;                  /**< bytes used, 0..KHALA_COH_MSG_MAX */
} khala_coh_buf_t;

/**
 * @brief Encode @p m, sent by the handle whose origin is @p origin, into @p b.
 * @param[in] m the invalidation, already checked as khala__coherence_publish() checks it (a
 *            KEY or PREFIX of 1..KHALA_KEY_MAX bytes, a type in range); unchecked here.
 * @param[in] origin the sender's id ("o").
 * @param[out] b the message; b->len is reset first.
 * @return 0, or -1 when the message does not fit KHALA_COH_MSG_MAX bytes (never for a checked
 *         @p m).
 */
int khala__coherence_encode(const khala_inv_t *m, uint64_t origin, khala_coh_buf_t *b);

/**
 * @brief Decode a payload heard on the channel: any bytes at all (whoever can PUBLISH there
 *        can send anything).
 * @param[in] payload the bytes; only @p len of them are read.
 * @param[in] len their length; more than KHALA_COH_MSG_MAX is refused unread.
 * @param[out] m the invalidation, written only on success; m->key points into @p payload.
 *             A decoded KEY or PREFIX has 1..KHALA_KEY_MAX key bytes; TYPE a type below
 *             KHALA_TYPE_COUNT; ALL KHALA_INV_ALL_TYPES or such a type; KEY and PREFIX
 *             have type -1. Whatever decodes, khala__coherence_publish() would accept.
 * @param[out] origin the sender's id. Beware: it may be written also when the call fails.
 * @return 0, or -1 for a malformed payload (see daemon/coherence.c for what is refused).
 * @note Reads nothing outside @p payload and allocates nothing.
 */
int khala__coherence_decode(const void *payload, size_t len, khala_inv_t *m, uint64_t *origin);

#endif /* KHALA_DAEMON_COHERENCE_H */
