/*
 * Redis routing: hash slots, redirections, the CLUSTER SLOTS reply, and the router (nodes,
 * connection pools, the slot map, the redirection loop). See daemon/redis_cluster.h.
 *
 * The slot function is the specification's: CRC16 with the XMODEM polynomial (0x1021, initial
 * value 0, no reflection), table-driven, of the whole key or of its hash tag, modulo 16384.
 * The table below is that polynomial's, the same one Redis's crc16.c carries; the test checks
 * known slots ("foo" is 12182, "{user1000}.following" and "{user1000}.followers" share one).
 *
 * THE ROUTER
 *
 * Pools. Each node (the one server, or every master of a cluster) has pool_size hiredis
 * connections, opened lazily (connect, AUTH, SELECT through daemon/redis_conn.c, then SCRIPT
 * LOAD of the owner's script) and used round-robin. A connection that fails (I/O error, EOF,
 * timeout) is freed at once; the next use of that pool slot reconnects. A failed connect puts
 * the NODE in backoff: KHALA_REDIS_BACKOFF_MIN_MS, doubling to KHALA_REDIS_BACKOFF_MAX_MS, reset
 * by a successful connect. Until it expires no connect is attempted, and a call makes at most
 * one attempt, so a dead server costs a request no system call (and a black-holed one at most
 * one connect timeout per backoff period). A connection that breaks does not start a backoff:
 * a server that closed one idle socket is usually alive, and the first reconnect tells.
 * Reconnects are counted per pool slot that had been open before.
 *
 * Routing. A single server is one node, slot 0. In a cluster, slots[] maps a slot to a node
 * index; khala__redis_run_slot() sends a batch for one slot to its node and reads the replies:
 *   1. a MOVED reply rewrites that slot's entry (and marks the map stale, for the owner to
 *      reload it whole) and the batch is sent again to the new node;
 *   2. an ASK reply sends the batch once to the named node, each command after ASKING (the
 *      flag holds for one command), without touching the map;
 *   3. NOSCRIPT loads the script again on that node, once, and resends;
 *   4. CLUSTERDOWN and TRYAGAIN fail with KHALA_ETIER: the owner retries later.
 * At most KHALA_REDIS_REDIRECTS_MAX redirections are followed. A node named by a redirection
 * is appended to nodes[] if new (connected with khala__redis_connect_node: no SELECT).
 *
 * Invariants: a pool slot is NULL or a connected, authenticated context with the script
 * loaded; slots[] entries are KHALA_REDIS_NODE_NONE or < nnodes; nodes are never removed.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errbuf.h"
#include "khala/error.h"
#include "redis_cluster.h"
#include "redis_conn.h"
#include "sys.h"

static const uint16_t crc16_tab[256] = {
    0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50a5, 0x60c6, 0x70e7, 0x8108, 0x9129, 0xa14a, 0xb16b,
    0xc18c, 0xd1ad, 0xe1ce, 0xf1ef, 0x1231, 0x0210, 0x3273, 0x2252, 0x52b5, 0x4294, 0x72f7, 0x62d6,
    0x9339, 0x8318, 0xb37b, 0xa35a, 0xd3bd, 0xc39c, 0xf3ff, 0xe3de, 0x2462, 0x3443, 0x0420, 0x1401,
    0x64e6, 0x74c7, 0x44a4, 0x5485, 0xa56a, 0xb54b, 0x8528, 0x9509, 0xe5ee, 0xf5cf, 0xc5ac, 0xd58d,
    0x3653, 0x2672, 0x1611, 0x0630, 0x76d7, 0x66f6, 0x5695, 0x46b4, 0xb75b, 0xa77a, 0x9719, 0x8738,
    0xf7df, 0xe7fe, 0xd79d, 0xc7bc, 0x48c4, 0x58e5, 0x6886, 0x78a7, 0x0840, 0x1861, 0x2802, 0x3823,
    0xc9cc, 0xd9ed, 0xe98e, 0xf9af, 0x8948, 0x9969, 0xa90a, 0xb92b, 0x5af5, 0x4ad4, 0x7ab7, 0x6a96,
    0x1a71, 0x0a50, 0x3a33, 0x2a12, 0xdbfd, 0xcbdc, 0xfbbf, 0xeb9e, 0x9b79, 0x8b58, 0xbb3b, 0xab1a,
    0x6ca6, 0x7c87, 0x4ce4, 0x5cc5, 0x2c22, 0x3c03, 0x0c60, 0x1c41, 0xedae, 0xfd8f, 0xcdec, 0xddcd,
    0xad2a, 0xbd0b, 0x8d68, 0x9d49, 0x7e97, 0x6eb6, 0x5ed5, 0x4ef4, 0x3e13, 0x2e32, 0x1e51, 0x0e70,
    0xff9f, 0xefbe, 0xdfdd, 0xcffc, 0xbf1b, 0xaf3a, 0x9f59, 0x8f78, 0x9188, 0x81a9, 0xb1ca, 0xa1eb,
    0xd10c, 0xc12d, 0xf14e, 0xe16f, 0x1080, 0x00a1, 0x30c2, 0x20e3, 0x5004, 0x4025, 0x7046, 0x6067,
    0x83b9, 0x9398, 0xa3fb, 0xb3da, 0xc33d, 0xd31c, 0xe37f, 0xf35e, 0x02b1, 0x1290, 0x22f3, 0x32d2,
    0x4235, 0x5214, 0x6277, 0x7256, 0xb5ea, 0xa5cb, 0x95a8, 0x8589, 0xf56e, 0xe54f, 0xd52c, 0xc50d,
    0x34e2, 0x24c3, 0x14a0, 0x0481, 0x7466, 0x6447, 0x5424, 0x4405, 0xa7db, 0xb7fa, 0x8799, 0x97b8,
    0xe75f, 0xf77e, 0xc71d, 0xd73c, 0x26d3, 0x36f2, 0x0691, 0x16b0, 0x6657, 0x7676, 0x4615, 0x5634,
    0xd94c, 0xc96d, 0xf90e, 0xe92f, 0x99c8, 0x89e9, 0xb98a, 0xa9ab, 0x5844, 0x4865, 0x7806, 0x6827,
    0x18c0, 0x08e1, 0x3882, 0x28a3, 0xcb7d, 0xdb5c, 0xeb3f, 0xfb1e, 0x8bf9, 0x9bd8, 0xabbb, 0xbb9a,
    0x4a75, 0x5a54, 0x6a37, 0x7a16, 0x0af1, 0x1ad0, 0x2ab3, 0x3a92, 0xfd2e, 0xed0f, 0xdd6c, 0xcd4d,
    0xbdaa, 0xad8b, 0x9de8, 0x8dc9, 0x7c26, 0x6c07, 0x5c64, 0x4c45, 0x3ca2, 0x2c83, 0x1ce0, 0x0cc1,
    0xef1f, 0xff3e, 0xcf5d, 0xdf7c, 0xaf9b, 0xbfba, 0x8fd9, 0x9ff8, 0x6e17, 0x7e36, 0x4e55, 0x5e74,
    0x2e93, 0x3eb2, 0x0ed1, 0x1ef0};

static uint16_t crc16(const unsigned char *p, size_t len) {
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++)
        crc = (uint16_t)((crc << 8) ^ crc16_tab[((crc >> 8) ^ p[i]) & 0xff]);
    return crc;
}

unsigned khala__redis_cluster_slot(const void *key, size_t klen) {
    const unsigned char *k = key;
    const unsigned char *open = memchr(k, '{', klen);
    if (open) {
        size_t from = (size_t)(open - k) + 1;
        const unsigned char *close = memchr(k + from, '}', klen - from);
        /* "{}" (an empty tag) hashes the whole key, as the specification says. */
        if (close && close > k + from)
            return crc16(k + from, (size_t)(close - (k + from))) & (KHALA_REDIS_SLOTS - 1);
    }
    return crc16(k, klen) & (KHALA_REDIS_SLOTS - 1);
}

/* Parse a decimal number of at most max from [p, end); 0 with *out on success. */
static int parse_uint(const char *p, const char *end, unsigned long max, unsigned *out) {
    if (p >= end)
        return -1;
    unsigned long v = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (unsigned long)(*p - '0');
        if (v > max)
            return -1;
    }
    *out = (unsigned)v;
    return 0;
}

khala_redis_redirect_t khala__redis_cluster_redirect(const char *msg, size_t len, unsigned *slot,
                                                     char *host, unsigned *port) {
    khala_redis_redirect_t kind;
    size_t skip;
    if (len > 6 && memcmp(msg, "MOVED ", 6) == 0) {
        kind = KHALA_REDIS_REDIRECT_MOVED;
        skip = 6;
    } else if (len > 4 && memcmp(msg, "ASK ", 4) == 0) {
        kind = KHALA_REDIS_REDIRECT_ASK;
        skip = 4;
    } else {
        return KHALA_REDIS_REDIRECT_NONE;
    }
    const char *p = msg + skip, *end = msg + len;
    const char *sp = memchr(p, ' ', (size_t)(end - p));
    if (!sp || parse_uint(p, sp, KHALA_REDIS_SLOTS - 1, slot) != 0)
        return KHALA_REDIS_REDIRECT_NONE;
    const char *addr = sp + 1;
    const char *colon = NULL;
    for (const char *q = addr; q < end; q++)
        if (*q == ':')
            colon = q;
    if (!colon || parse_uint(colon + 1, end, 65535, port) != 0 || *port == 0)
        return KHALA_REDIS_REDIRECT_NONE;
    size_t hlen = (size_t)(colon - addr);
    if (hlen >= KHALA_REDIS_HOST_MAX)
        return KHALA_REDIS_REDIRECT_NONE;
    memcpy(host, addr, hlen);
    host[hlen] = '\0';
    return kind;
}

int khala__redis_cluster_slots_parse(const redisReply *r, const char *seed_host,
                                     khala_redis_slots_fn fn, void *arg) {
    if (!r || r->type != REDIS_REPLY_ARRAY)
        return -EPROTO;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3)
            return -EPROTO;
        const redisReply *first = e->element[0], *last = e->element[1], *master = e->element[2];
        if (first->type != REDIS_REPLY_INTEGER || last->type != REDIS_REPLY_INTEGER ||
            first->integer < 0 || last->integer < first->integer ||
            last->integer >= (long long)KHALA_REDIS_SLOTS)
            return -EPROTO;
        if (master->type != REDIS_REPLY_ARRAY || master->elements < 2 ||
            master->element[0]->type != REDIS_REPLY_STRING ||
            master->element[1]->type != REDIS_REPLY_INTEGER || master->element[1]->integer <= 0 ||
            master->element[1]->integer > 65535 || master->element[0]->len >= KHALA_REDIS_HOST_MAX)
            return -EPROTO;
        const char *host = master->element[0]->str;
        /* Redis answers "" (and older versions "?") for a node that does not know its own
         * address; clients then use the address they reached it at. */
        if (!host[0] || strcmp(host, "?") == 0)
            host = seed_host;
        if (fn(arg, (unsigned)first->integer, (unsigned)last->integer, host,
               (unsigned)master->element[1]->integer))
            return 0;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Messages                                                                                     */
/* ------------------------------------------------------------------------------------------ */

typedef khala_redis_node_t rnode_t;

/* Describe a failure in the owner's buffer (r->err may be NULL). */
#define rerr(r, ...) khala__errbuf_set((r)->err, (r)->errlen, __VA_ARGS__)

static void replies_free(redisReply **rep, size_t n) {
    for (size_t i = 0; i < n; i++) {
        freeReplyObject(rep[i]);
        rep[i] = NULL;
    }
}

/* Record why node n failed (truncating a long host name is fine). */
#define cause_set(n, ...) khala__errbuf_set((n)->cause, sizeof((n)->cause), __VA_ARGS__)

khala_redis_reply_kind_t khala__redis_reply_kind(const redisReply *r) {
    if (!r || r->type != REDIS_REPLY_ERROR)
        return KHALA_REDIS_REPLY_PLAIN;
    if (strncmp(r->str, "MOVED ", 6) == 0)
        return KHALA_REDIS_REPLY_MOVED;
    if (strncmp(r->str, "ASK ", 4) == 0)
        return KHALA_REDIS_REPLY_ASK;
    if (strncmp(r->str, "NOSCRIPT", 8) == 0)
        return KHALA_REDIS_REPLY_NOSCRIPT;
    if (strncmp(r->str, "CLUSTERDOWN", 11) == 0 || strncmp(r->str, "TRYAGAIN", 8) == 0)
        return KHALA_REDIS_REPLY_DOWN;
    return KHALA_REDIS_REPLY_PLAIN;
}

/* ------------------------------------------------------------------------------------------ */
/* The router: connections                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* Set up nodes[idx] (pool arrays allocated). 0 or -ENOMEM. */
static int node_init(khala_redis_router_t *r, size_t idx, bool is_url, const char *host,
                     unsigned port) {
    rnode_t *n = &r->nodes[idx];
    memset(n, 0, sizeof(*n));
    n->is_url = is_url;
    snprintf(n->host, sizeof(n->host), "%s", host);
    n->port = port;
    if (is_url)
        khala__redis_name(&r->url, n->name, sizeof(n->name));
    else
        snprintf(n->name, sizeof(n->name), "%s:%u", host, port);
    n->pool = calloc(r->pool_size, sizeof(*n->pool));
    n->opened = calloc(r->pool_size, sizeof(*n->opened));
    if (!n->pool || !n->opened) {
        free(n->pool);
        free(n->opened);
        n->pool = NULL;
        n->opened = NULL;
        return -ENOMEM;
    }
    return 0;
}

static void node_free(khala_redis_router_t *r, rnode_t *n) {
    for (unsigned i = 0; n->pool && i < r->pool_size; i++)
        if (n->pool[i])
            redisFree(n->pool[i]);
    free(n->pool);
    free(n->opened);
    n->pool = NULL;
    n->opened = NULL;
}

/* SCRIPT LOAD on c. 0; KHALA_ETIER (I/O: the caller frees c); KHALA_ECONFIG (refused: scripting
 * disabled or not allowed to this user). */
static int script_load(khala_redis_router_t *r, rnode_t *n, redisContext *c) {
    if (!r->script)
        return 0;
    const char *argv[3] = {"SCRIPT", "LOAD", r->script};
    size_t len[3] = {6, 4, r->script_len};
    redisReply *rep = redisCommandArgv(c, 3, argv, len);
    if (!rep) {
        cause_set(n, "redis %s: SCRIPT LOAD: %s", n->name, c->errstr);
        return KHALA_ETIER;
    }
    int rc = 0;
    if (rep->type == REDIS_REPLY_STRING && rep->len == 40) {
        memcpy(r->sha, rep->str, 40);
        r->sha[40] = '\0';
    } else {
        cause_set(n, "redis %s: SCRIPT LOAD refused: %s", n->name,
                  rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
        rc = KHALA_ECONFIG;
    }
    freeReplyObject(rep);
    return rc;
}

/* Open pool slot i of node n: connect, authenticate, select, load the script. On failure the
 * node's backoff grows and n->cause says why. Returns the connect's code. */
static int conn_open(khala_redis_router_t *r, rnode_t *n, unsigned i) {
    redisContext *c = NULL;
    int rc = n->is_url
                 ? khala__redis_connect(&r->url, r->timeout_ms, &c, n->cause, sizeof(n->cause))
                 : khala__redis_connect_node(&r->url, n->host, n->port, r->timeout_ms, &c, n->cause,
                                             sizeof(n->cause));
    if (rc == 0) {
        rc = script_load(r, n, c);
        if (rc != 0)
            redisFree(c);
    }
    if (rc != 0) {
        n->backoff_ms = n->backoff_ms ? n->backoff_ms * 2 : KHALA_REDIS_BACKOFF_MIN_MS;
        if (n->backoff_ms > KHALA_REDIS_BACKOFF_MAX_MS)
            n->backoff_ms = KHALA_REDIS_BACKOFF_MAX_MS;
        n->retry_at_ms = khala__sys_now_ms() + n->backoff_ms;
        return rc;
    }
    n->backoff_ms = 0;
    n->retry_at_ms = 0;
    if (n->opened[i])
        r->reconnects++;
    n->opened[i] = true;
    n->pool[i] = c;
    return 0;
}

/* Close pool slot i after an I/O error or a timeout, keeping the cause. */
static void conn_break(khala_redis_router_t *r, rnode_t *n, unsigned i) {
    redisContext *c = n->pool[i];
    if (c->err == REDIS_ERR_IO && strstr(c->errstr, "temporarily unavailable"))
        cause_set(n, "redis %s: no reply within %u ms", n->name, r->timeout_ms);
    else
        cause_set(n, "redis %s: %s", n->name, c->errstr[0] ? c->errstr : "connection lost");
    rerr(r, "%s", n->cause);
    redisFree(c);
    n->pool[i] = NULL;
}

/* A usable connection of node n, round-robin; opens a closed slot when the backoff allows (one
 * attempt per call). 0 with *idx; else the connect's code (KHALA_ETIER, KHALA_ECONFIG, -ENOMEM)
 * with t->err naming the server and the cause. */
static int node_pool_get(khala_redis_router_t *r, rnode_t *n, unsigned *idx) {
    int64_t now = khala__sys_now_ms();
    bool tried = false;
    int rc = KHALA_ETIER;
    for (unsigned k = 0; k < r->pool_size; k++) {
        unsigned i = (n->next + k) % r->pool_size;
        if (!n->pool[i] && !tried && now >= n->retry_at_ms) {
            tried = true;
            rc = conn_open(r, n, i);
        }
        if (n->pool[i]) {
            n->next = (i + 1) % r->pool_size;
            *idx = i;
            return 0;
        }
    }
    if (tried)
        rerr(r, "%s", n->cause);
    else
        rerr(r, "%s (next attempt in %lld ms)", n->cause[0] ? n->cause : "redis: not connected",
             (long long)(n->retry_at_ms - now));
    return rc;
}

/* Send ncmd commands to node n on one connection (each after ASKING when asking) and read
 * their replies into rep: one round trip. 0, or the connection's failure (it is then closed). */
int khala__redis_node_run(khala_redis_router_t *r, size_t ni, bool asking, size_t ncmd,
                          const khala_redis_cmd_t *cmds, redisReply **rep) {
    rnode_t *n = &r->nodes[ni];
    unsigned i;
    int rc = node_pool_get(r, n, &i);
    if (rc != 0)
        return rc;
    redisContext *c = n->pool[i];
    size_t got = 0;
    void *x;
    /* ASKING holds for the next command only: it goes before each command of the batch. */
    for (size_t k = 0; k < ncmd; k++) {
        if (asking && redisAppendCommand(c, "ASKING") != REDIS_OK)
            goto broken;
        if (redisAppendCommandArgv(c, cmds[k].argc, cmds[k].argv, cmds[k].len) != REDIS_OK)
            goto broken;
    }
    for (; got < ncmd; got++) {
        if (asking) {
            if (redisGetReply(c, &x) != REDIS_OK)
                goto broken;
            freeReplyObject(x);
        }
        if (redisGetReply(c, &x) != REDIS_OK)
            goto broken;
        rep[got] = x;
    }
    return 0;
broken:
    replies_free(rep, got);
    conn_break(r, n, i);
    return KHALA_ETIER;
}

/* ------------------------------------------------------------------------------------------ */
/* Cluster topology                                                                             */
/* ------------------------------------------------------------------------------------------ */

/* The index of node host:port, appended if new; -1 (r->err set) when KHALA_REDIS_NODES_MAX are known or
 * memory runs out. */
static int node_find_or_add(khala_redis_router_t *r, const char *host, unsigned port) {
    for (size_t i = 0; i < r->nnodes; i++)
        if (r->nodes[i].port == port && strcmp(r->nodes[i].host, host) == 0)
            return (int)i;
    if (r->nnodes >= KHALA_REDIS_NODES_MAX) {
        rerr(r, "redis cluster: more than %u nodes", KHALA_REDIS_NODES_MAX);
        return -1;
    }
    if (node_init(r, r->nnodes, false, host, port) != 0) {
        rerr(r, "redis cluster: out of memory adding node %s:%u", host, port);
        return -1;
    }
    return (int)r->nnodes++;
}

typedef struct slots_ctx {
    khala_redis_router_t *r;
    uint16_t *map;
    int failed;
} slots_ctx_t;

static int slots_range(void *arg, unsigned first, unsigned last, const char *host, unsigned port) {
    slots_ctx_t *x = arg;
    int ni = node_find_or_add(x->r, host, port);
    if (ni < 0) {
        x->failed = 1;
        return 1;
    }
    for (unsigned s = first; s <= last; s++)
        x->map[s] = (uint16_t)ni;
    return 0;
}

/* Load the slot map with CLUSTER SLOTS through node ni. 0 or KHALA_ETIER / -ENOMEM. */
int khala__redis_slots_load(khala_redis_router_t *r, size_t ni) {
    const char *argv[2] = {"CLUSTER", "SLOTS"};
    size_t len[2] = {7, 5};
    khala_redis_cmd_t cmd = {2, argv, len};
    redisReply *rep = NULL;
    int rc = khala__redis_node_run(r, ni, false, 1, &cmd, &rep);
    if (rc != 0)
        return rc;
    uint16_t *map = malloc(sizeof(r->slots));
    if (!map) {
        freeReplyObject(rep);
        return -ENOMEM;
    }
    for (size_t s = 0; s < KHALA_REDIS_SLOTS; s++)
        map[s] = KHALA_REDIS_NODE_NONE;
    slots_ctx_t x = {r, map, 0};
    const char *seed = r->nodes[ni].host[0] ? r->nodes[ni].host : "127.0.0.1";
    int prc = khala__redis_cluster_slots_parse(rep, seed, slots_range, &x);
    if (prc != 0 || x.failed) {
        if (prc != 0)
            rerr(r, "redis %s: CLUSTER SLOTS: %s", r->nodes[ni].name,
                 rep->type == REDIS_REPLY_ERROR ? rep->str : "malformed reply");
        freeReplyObject(rep);
        free(map);
        return KHALA_ETIER;
    }
    freeReplyObject(rep);
    memcpy(r->slots, map, sizeof(r->slots));
    free(map);
    r->slots_stale = false;
    return 0;
}

/* Reload the map through any node that answers. */
int khala__redis_slots_refresh(khala_redis_router_t *r) {
    int rc = KHALA_ETIER;
    for (size_t i = 0; i < r->nnodes; i++)
        if ((rc = khala__redis_slots_load(r, i)) == 0)
            return 0;
    return rc;
}

bool khala__redis_node_owns_slots(const khala_redis_router_t *r, size_t ni) {
    if (!r->cluster)
        return ni == 0;
    for (size_t s = 0; s < KHALA_REDIS_SLOTS; s++)
        if (r->slots[s] == ni)
            return true;
    return false;
}

unsigned khala__redis_key_slot(const khala_redis_router_t *r, const void *key, size_t klen) {
    return r->cluster ? khala__redis_cluster_slot(key, klen) : 0;
}

/* The node serving slot; -1 (r->err set) when the map has no owner for it. */
int khala__redis_slot_node(khala_redis_router_t *r, unsigned slot) {
    if (!r->cluster)
        return 0;
    if (r->slots[slot] == KHALA_REDIS_NODE_NONE) {
        r->slots_stale = true;
        rerr(r, "redis cluster: no node serves slot %u", slot);
        return -1;
    }
    return r->slots[slot];
}

/* Run ncmd commands about keys of one slot on the node serving it, following MOVED and ASK
 * (at most KHALA_REDIS_REDIRECTS_MAX) and reloading the script once on NOSCRIPT. On 0, rep holds every
 * reply (the caller frees them; they may still be plain error replies). */
int khala__redis_run_slot(khala_redis_router_t *r, unsigned slot, size_t ncmd,
                          const khala_redis_cmd_t *cmds, redisReply **rep) {
    int ni = khala__redis_slot_node(r, slot);
    if (ni < 0)
        return KHALA_ETIER;
    bool asking = false, reloaded = false;
    int redirects = 0;
    for (;;) {
        int rc = khala__redis_node_run(r, (size_t)ni, asking, ncmd, cmds, rep);
        if (rc != 0)
            return rc;
        asking = false;
        const redisReply *bad = NULL;
        khala_redis_reply_kind_t kind = KHALA_REDIS_REPLY_PLAIN;
        for (size_t k = 0; k < ncmd && !bad; k++)
            if ((kind = khala__redis_reply_kind(rep[k])) != KHALA_REDIS_REPLY_PLAIN)
                bad = rep[k];
        if (!bad)
            return 0;
        rnode_t *n = &r->nodes[ni];
        rc = 0;
        if (kind == KHALA_REDIS_REPLY_MOVED || kind == KHALA_REDIS_REPLY_ASK) {
            char host[KHALA_REDIS_HOST_MAX];
            unsigned s, port;
            khala_redis_redirect_t redir =
                khala__redis_cluster_redirect(bad->str, bad->len, &s, host, &port);
            if (!r->cluster || redir == KHALA_REDIS_REDIRECT_NONE) {
                rerr(r, "redis %s: unexpected redirection: %s", n->name, bad->str);
                rc = KHALA_ETIER;
            } else if (++redirects > KHALA_REDIS_REDIRECTS_MAX) {
                rerr(r, "redis %s: more than %d redirections for slot %u (last: %s)", n->name,
                     KHALA_REDIS_REDIRECTS_MAX, slot, bad->str);
                rc = KHALA_ETIER;
            } else {
                int to = node_find_or_add(r, host[0] ? host : n->host, port);
                if (to < 0) {
                    rc = KHALA_ETIER;
                } else if (redir == KHALA_REDIS_REDIRECT_MOVED) {
                    r->slots[s] = (uint16_t)to;
                    r->slots_stale = true;
                } else {
                    asking = true;
                }
                ni = to;
            }
        } else if (kind == KHALA_REDIS_REPLY_NOSCRIPT && !reloaded) {
            /* The server's script cache was flushed (SCRIPT FLUSH, a failover to a replica that
             * never saw it): load it on a connection of that node and retry. */
            reloaded = true;
            unsigned i;
            rc = node_pool_get(r, n, &i);
            if (rc == 0 && (rc = script_load(r, n, n->pool[i])) != 0) {
                rerr(r, "%s", n->cause);
                if (rc == KHALA_ETIER)
                    conn_break(r, n, i);
            }
        } else {
            rerr(r, "redis %s: %s", n->name, bad->str);
            rc = KHALA_ETIER;
        }
        replies_free(rep, ncmd);
        if (rc != 0)
            return rc;
    }
}

bool khala__redis_node_ping(khala_redis_router_t *r, size_t ni, unsigned i) {
    rnode_t *n = &r->nodes[ni];
    redisReply *rep = redisCommand(n->pool[i], "PING");
    if (!rep) {
        conn_break(r, n, i);
        return false;
    }
    bool ok = rep->type == REDIS_REPLY_STATUS;
    if (!ok)
        rerr(r, "redis %s: PING: %s", n->name, rep->type == REDIS_REPLY_ERROR ? rep->str : "?");
    freeReplyObject(rep);
    return ok;
}

int khala__redis_pool_get(khala_redis_router_t *r, size_t ni, unsigned *idx) {
    return node_pool_get(r, &r->nodes[ni], idx);
}

int khala__redis_router_init(khala_redis_router_t *r, const khala_config_redis_url_t *url,
                             unsigned timeout_ms, unsigned pool_size, const char *script, char *err,
                             size_t errlen) {
    memset(r, 0, sizeof(*r));
    r->url = *url;
    r->timeout_ms = timeout_ms ? timeout_ms : KHALA_REDIS_TIMEOUT_MS_DEFAULT;
    r->pool_size = pool_size ? pool_size : 1;
    r->script = script;
    r->script_len = script ? strlen(script) : 0;
    r->err = err;
    r->errlen = errlen;
    for (size_t s = 0; s < KHALA_REDIS_SLOTS; s++)
        r->slots[s] = KHALA_REDIS_NODE_NONE;
    if (node_init(r, 0, true, url->host, url->port) != 0)
        return -ENOMEM;
    r->nnodes = 1;
    return 0;
}

void khala__redis_router_free(khala_redis_router_t *r) {
    for (size_t i = 0; i < r->nnodes; i++)
        node_free(r, &r->nodes[i]);
    r->nnodes = 0;
}
