/*
 * Redis routing for the L2 driver (daemon/tier_redis.c): which node a key goes to, and the
 * connections to every node. Two layers:
 *
 * - Pure functions (no I/O): a key's hash slot (CRC16-XMODEM of the key or of its {hash tag},
 *   modulo 16384), the MOVED / ASK redirections a node answers with, and the CLUSTER SLOTS reply
 *   that maps slot ranges to masters. Start at khala__redis_cluster_slot().
 * - The router (khala_redis_router_t): the nodes (one for a single server, every master of a
 *   cluster), a pool of connections per node with a reconnect backoff, the slot map, and
 *   khala__redis_run_slot(), which sends a pipeline to the node of a slot and follows MOVED and
 *   ASK. A single server is a router with one node and cluster = false. Start at
 *   khala__redis_router_init(), then khala__redis_run_slot().
 *
 * The rules are those of the Redis Cluster specification ("Keys distribution model",
 * "Redirection and resharding"). daemon/redis_cluster.c opens with the pool and backoff design.
 *
 * Thread safety: the pure functions are reentrant; a router belongs to one thread (khalad's
 * loop thread).
 */
#ifndef KHALA_DAEMON_REDIS_CLUSTER_H
#define KHALA_DAEMON_REDIS_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "config.h"

/** Hash slots of a Redis Cluster. */
#define KHALA_REDIS_SLOTS 16384u

/** Longest node host name kept from a redirection or CLUSTER SLOTS (a longer one is refused). */
#define KHALA_REDIS_HOST_MAX 256u

/** What an error reply asks for (khala__redis_cluster_redirect). */
typedef enum khala_redis_redirect {
    KHALA_REDIS_REDIRECT_NONE = 0, /* not a redirection */
    KHALA_REDIS_REDIRECT_MOVED,    /* the slot lives on that node now: update the map */
    KHALA_REDIS_REDIRECT_ASK       /* this one query goes there, after ASKING; map unchanged */
} khala_redis_redirect_t;

/**
 * @brief The hash slot of a key: CRC16-XMODEM of the key, or of the bytes between the first '{'
 *        and the first '}' after it when that span is not empty, modulo 16384.
 * @param[in] key the key as stored (with any prefix), @p klen bytes.
 * @param[in] klen its length.
 * @return the slot, 0..KHALA_REDIS_SLOTS-1.
 * @note Reentrant.
 */
unsigned khala__redis_cluster_slot(const void *key, size_t klen);

/**
 * @brief Parse a redirection: "MOVED <slot> <host>:<port>" or "ASK <slot> <host>:<port>" (the
 *        host may be an IPv6 address; the port follows the last ':'; an empty host means "the
 *        node that answered", and is returned empty).
 * @param[in] msg the error reply's text, @p len bytes.
 * @param[in] len its length.
 * @param[out] slot the slot named.
 * @param[out] host the host, NUL-terminated; at least KHALA_REDIS_HOST_MAX bytes.
 * @param[out] port the port.
 * @return KHALA_REDIS_REDIRECT_MOVED or _ASK, with the out-params written;
 *         KHALA_REDIS_REDIRECT_NONE for any other text (the out-params are then unspecified).
 */
khala_redis_redirect_t khala__redis_cluster_redirect(const char *msg, size_t len, unsigned *slot,
                                                     char *host, unsigned *port);

/** Called by khala__redis_cluster_slots_parse() once per slot range: slots first..last (both
 * included) are served by the master host:port. Return non-zero to stop. */
typedef int (*khala_redis_slots_fn)(void *arg, unsigned first, unsigned last, const char *host,
                                    unsigned port);

/**
 * @brief Walk a CLUSTER SLOTS reply: an array of [first, last, [host, port, id, ...], replicas...].
 * @param[in] r the reply.
 * @param[in] seed_host the host of the node that answered, used when a range names its master
 *            with an empty host (a node that does not know its own address).
 * @param[in] fn called per range, in reply order.
 * @param[in] arg passed to @p fn.
 * @return 0 when the whole reply was walked (or @p fn stopped it); -EPROTO when it is not a
 *         well-formed CLUSTER SLOTS reply (ranges seen before the bad one were passed to @p fn).
 */
int khala__redis_cluster_slots_parse(const redisReply *r, const char *seed_host,
                                     khala_redis_slots_fn fn, void *arg);

/* ------------------------------------------------------------------------------------------ */
/* The router                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/** Most nodes a router knows; a scan cursor can keep a node index in 8 bits. */
#define KHALA_REDIS_NODES_MAX 64u

/** khala_redis_router_t.slots entry of a slot no known node serves. */
#define KHALA_REDIS_NODE_NONE UINT16_MAX

/** Redirections followed for one command before giving up (a cluster in the middle of a
 * resharding answers at most one MOVED and one ASK; more means a confused map). */
#define KHALA_REDIS_REDIRECTS_MAX 5

/** Connect backoff of a node, in ms: the first failed connect waits the minimum, each further
 * one doubles it up to the maximum; a successful connect resets it. */
#define KHALA_REDIS_BACKOFF_MIN_MS 50u
#define KHALA_REDIS_BACKOFF_MAX_MS 5000u

/** One node: the URL's server, or a cluster master. */
typedef struct khala_redis_node {
    bool is_url;                     /* connect with the URL (TCP or Unix, SELECT); else host */
    char host[KHALA_REDIS_HOST_MAX]; /* the node's address; the URL's host for the URL node */
    unsigned port;                   /* its port; 0 for a Unix socket */
    char name[KHALA_REDIS_HOST_MAX + 16]; /* "127.0.0.1:6379" or "unix:/path", for messages */
    redisContext **pool;                  /* pool_size slots; NULL = closed */
    bool *opened;                         /* pool[i] was open once: reopening it is a reconnect */
    unsigned next;                        /* round-robin position */
    int64_t retry_at_ms;                  /* no connect attempt before (monotonic); 0 = now */
    unsigned backoff_ms;                  /* wait after the next failed connect; 0 = none yet */
    char cause[256];                      /* the last failure, "redis NAME: what", for messages */
} khala_redis_node_t;

/** One command of a pipeline: argc arguments with their lengths (binary-safe). */
typedef struct khala_redis_cmd {
    int argc;
    const char **argv;
    const size_t *len;
} khala_redis_cmd_t;

/** The nodes, their pools and the slot map. Every field belongs to the owner's thread. */
typedef struct khala_redis_router {
    /* Immutable after khala__redis_router_init(). */
    khala_config_redis_url_t url;
    unsigned timeout_ms; /* connect and command timeout */
    unsigned pool_size;  /* connections per node, >= 1 */
    const char *script;  /* loaded (SCRIPT LOAD) on every new connection; NULL = none */
    size_t script_len;
    char *err; /* the owner's message buffer, errlen bytes: every failure is described there */
    size_t errlen;

    char sha[41];                                    /* the script's SHA1; "" until loaded */
    bool cluster;                                    /* route by slot (set by the owner) */
    khala_redis_node_t nodes[KHALA_REDIS_NODES_MAX]; /* [0] is the URL's server; appended only,
                                                        so an index is stable */
    size_t nnodes;                                   /* 1..KHALA_REDIS_NODES_MAX */
    uint16_t slots[KHALA_REDIS_SLOTS]; /* cluster: node index per slot, or KHALA_REDIS_NODE_NONE */
    bool slots_stale;                  /* a MOVED rewrote an entry: reload the map soon */
    uint64_t reconnects;               /* pool slots opened again after they had been open */
} khala_redis_router_t;

/** What an error reply asks of the router (khala__redis_reply_kind). */
typedef enum khala_redis_reply_kind {
    KHALA_REDIS_REPLY_PLAIN = 0, /* not an error, or an error the caller must handle */
    KHALA_REDIS_REPLY_MOVED,
    KHALA_REDIS_REPLY_ASK,
    KHALA_REDIS_REPLY_NOSCRIPT, /* the script cache was flushed */
    KHALA_REDIS_REPLY_DOWN      /* CLUSTERDOWN or TRYAGAIN */
} khala_redis_reply_kind_t;

/**
 * @brief Classify a reply: a redirection, NOSCRIPT, a cluster that cannot serve, or anything
 *        else (PLAIN). A pipelined batch whose reply is not PLAIN is redone through
 *        khala__redis_run_slot().
 * @param[in] r a reply; may be NULL (PLAIN).
 * @return its kind.
 */
khala_redis_reply_kind_t khala__redis_reply_kind(const redisReply *r);

/**
 * @brief Set up a router with one node, the URL's server; no connection is opened yet.
 * @param[out] r the router (zeroed and filled).
 * @param[in] url a parsed redis_url.
 * @param[in] timeout_ms connect and command timeout; 0 = KHALA_REDIS_TIMEOUT_MS_DEFAULT.
 * @param[in] pool_size connections per node; 0 is taken as 1.
 * @param[in] script a Lua script to SCRIPT LOAD on every new connection (its SHA1 lands in
 *            r->sha), or NULL; kept by pointer: it must outlive the router.
 * @param[in] err the owner's message buffer, @p errlen bytes; kept by pointer.
 * @param[in] errlen its size.
 * @return 0 or -ENOMEM.
 * @note Release with khala__redis_router_free(), also after a failed init.
 */
int khala__redis_router_init(khala_redis_router_t *r, const khala_config_redis_url_t *url,
                             unsigned timeout_ms, unsigned pool_size, const char *script, char *err,
                             size_t errlen);

/**
 * @brief Close every connection and free the pools; @p r may then be initialised again.
 * @param[in] r the router.
 */
void khala__redis_router_free(khala_redis_router_t *r);

/**
 * @brief A usable connection of node @p ni, round-robin over its pool. A closed pool slot is
 *        reopened when the node's backoff allows, at most one connect attempt per call; while
 *        the backoff runs, nothing is attempted (a dead server costs no system call).
 * @param[in] r the router.
 * @param[in] ni a node index, < r->nnodes.
 * @param[out] idx the pool slot: r->nodes[ni].pool[*idx] is connected.
 * @return 0; KHALA_ETIER (unreachable, or in backoff); KHALA_ECONFIG (the server refused the
 *         credentials, the database or the script); -ENOMEM. r->err names the server, the
 *         cause and, in backoff, when the next attempt is due.
 */
int khala__redis_pool_get(khala_redis_router_t *r, size_t ni, unsigned *idx);

/**
 * @brief Send @p ncmd commands to node @p ni on one connection (each after ASKING when
 *        @p asking) and read their replies: one round trip. No redirection is followed.
 * @param[in] r the router.
 * @param[in] ni a node index.
 * @param[in] asking send ASKING before each command (the target of an ASK redirection).
 * @param[in] ncmd number of commands, >= 1.
 * @param[in] cmds the commands.
 * @param[out] rep ncmd replies, in order; the caller frees them with freeReplyObject().
 * @return 0; as khala__redis_pool_get(); KHALA_ETIER when the connection fails (I/O error, EOF,
 *         timeout): it is then closed, and r->err says why. On failure @p rep holds nothing.
 */
int khala__redis_node_run(khala_redis_router_t *r, size_t ni, bool asking, size_t ncmd,
                          const khala_redis_cmd_t *cmds, redisReply **rep);

/**
 * @brief Run @p ncmd commands about keys of one slot on the node serving it, following MOVED
 *        (the map entry is rewritten and r->slots_stale set) and ASK (ASKING, map untouched), at
 *        most KHALA_REDIS_REDIRECTS_MAX times, and reloading the script once on NOSCRIPT.
 * @param[in] r the router.
 * @param[in] slot the keys' slot (khala__redis_key_slot(); ignored for a single server).
 * @param[in] ncmd number of commands, >= 1.
 * @param[in] cmds the commands.
 * @param[out] rep ncmd replies (the caller frees them); they may be plain error replies.
 * @return 0; KHALA_ETIER for an unreachable node, too many redirections, CLUSTERDOWN or
 *         TRYAGAIN, or a slot no node serves; KHALA_ECONFIG as khala__redis_pool_get(); -ENOMEM.
 */
int khala__redis_run_slot(khala_redis_router_t *r, unsigned slot, size_t ncmd,
                          const khala_redis_cmd_t *cmds, redisReply **rep);

/**
 * @brief The slot of a key for this router: khala__redis_cluster_slot() in a cluster, 0 for a
 *        single server.
 * @param[in] r the router.
 * @param[in] key the key as stored, @p klen bytes.
 * @param[in] klen its length.
 * @return the slot.
 */
unsigned khala__redis_key_slot(const khala_redis_router_t *r, const void *key, size_t klen);

/**
 * @brief The node serving @p slot (0 for a single server).
 * @param[in] r the router.
 * @param[in] slot a slot.
 * @return a node index; -1 when the map has no owner for it (r->err says so, and the map is
 *         marked stale).
 */
int khala__redis_slot_node(khala_redis_router_t *r, unsigned slot);

/**
 * @brief Whether node @p ni serves at least one slot (always true of node 0 of a single
 *        server). Nodes that served none are skipped by scans and health checks.
 * @param[in] r the router.
 * @param[in] ni a node index.
 * @return true or false.
 */
bool khala__redis_node_owns_slots(const khala_redis_router_t *r, size_t ni);

/**
 * @brief Load the slot map with CLUSTER SLOTS through node @p ni (new masters are appended to
 *        the node list) and clear r->slots_stale.
 * @param[in] r the router.
 * @param[in] ni a node index.
 * @return 0; KHALA_ETIER (unreachable, or a malformed reply, or more than
 *         KHALA_REDIS_NODES_MAX nodes); -ENOMEM. On failure the map is unchanged.
 */
int khala__redis_slots_load(khala_redis_router_t *r, size_t ni);

/**
 * @brief khala__redis_slots_load() through the first node that answers.
 * @param[in] r the router.
 * @return as khala__redis_slots_load().
 */
int khala__redis_slots_refresh(khala_redis_router_t *r);

/**
 * @brief PING on pool slot @p i of node @p ni (which must be open); a failed connection is
 *        closed.
 * @param[in] r the router.
 * @param[in] ni a node index.
 * @param[in] i a pool slot whose connection is open.
 * @return true when the server answered PONG.
 */
bool khala__redis_node_ping(khala_redis_router_t *r, size_t ni, unsigned i);

#endif /* KHALA_DAEMON_REDIS_CLUSTER_H */
