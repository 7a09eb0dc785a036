/*
 * The Redis L2 driver. See daemon/tier_redis.h for the entry point and daemon/tier.h for the
 * rules every driver keeps.
 *
 * HOW IT WORKS
 *
 * Keys. A key K of namespace NS is the Redis string "khala:NS:K". The namespace's one other key,
 * "khala:NS:~hot", is the access-count sorted set; K = "~hot" is refused with KHALA_EKEY so the
 * two can never meet, and scan() and invalidate() skip it by name.
 *
 * Values. A stored value is one msgpack array of three, always laid out as:
 *
 *     +------+------+-----------------------+------+------------------------+----------+
 *     | 0x93 | 0xcf | version, u64 BE (8 B)  | type | bin header (c4/c5/c6)  | bytes    |
 *     +------+------+-----------------------+------+------------------------+----------+
 *       0      1      2..9                    10     11..                     ...
 *
 * The version is ALWAYS the full-width uint64 (msgpack_pack_fix_uint64), so that it sits at
 * bytes 2..9 of every value we write and the put script can compare it without decoding
 * msgpack; the type is a positive fixint (0..7). The decoder is a strict hand-written check of
 * exactly this shape (any other byte string, including valid msgpack of another shape, is "not
 * ours"): such a value reads as a miss, counts an error and leaves a message in t->err. The TTL
 * lives in Redis (SET ... PX); get pipelines GET and PTTL on one connection, one round trip.
 *
 * The put script (EVALSHA; SCRIPT LOAD on every new connection, and again on NOSCRIPT):
 *   1. GET the stored value (with pcall: a key of another Redis type reads as absent); if it
 *      is one of ours (ours(): the same shape check as the C decoder, so that what get reads
 *      as a miss a put overwrites), compare its version bytes 3..10 (Lua is 1-based) with the new value's, byte by byte as unsigned numbers: the
 *      first differing byte decides. Never tonumber(): Lua numbers are doubles, and versions
 *      are near 2^61, where doubles lose the low bits. Never `<` on strings either: Lua's
 *      string comparison is strcoll(), which follows the server's locale.
 *   2. If the stored version is greater, return 0 (KHALA_EVERSION); an equal one is a retry and
 *      is accepted. Anything that is not ours is overwritten.
 *   3. SET the new value, with PX when the TTL is not 0, and return 1.
 * The script runs atomically in Redis, so two hosts racing on one key cannot lose the newer
 * write. Alternatives rejected: WATCH/MULTI (two round trips and retries under contention) and
 * a version in a second key (two keys per item, and two slots in a cluster).
 *
 * Connections and routing live in daemon/redis_cluster.c (the router): a pool of pool_size
 * connections per node, used round-robin, with a per-node reconnect backoff (50 ms doubling to
 * 5 s) so that a dead server fails an operation at once with KHALA_ETIER and t->err naming the
 * server, the cause and when the next attempt is due; and, in a cluster, the slot map and the
 * MOVED / ASK loop (khala__redis_run_slot). health() PINGs every open connection (a restarted
 * server leaves stale sockets behind) and reconnects one when the backoff allows.
 *
 * If the server is unreachable at open, the tier is still returned, "not ready": every call
 * first tries (within the backoff) to reach it and finish the open (cluster detection, policy,
 * the persistent=false purge), and fails with KHALA_ETIER until then.
 *
 * Cluster. INFO cluster's cluster_enabled:1 at open switches the router to cluster mode and
 * CLUSTER SLOTS fills its map (nodes are only ever appended, so an index is stable and the
 * scan cursor carries it in its top 8 bits). A MOVED marks the map stale; tick() reloads it, at
 * most once a second. Multi-key commands (MGET, UNLINK) must name keys of one slot in a
 * cluster, so batches are sorted by node and slot, one command per slot, and a node's commands
 * go out in one pipeline: one round trip per node. A command answered with a redirection (or
 * NOSCRIPT) is redone key by key through khala__redis_run_slot(), which follows it.
 *
 * Access counts. Every hit counts its key in a small in-memory table (at most HOT_TABLE_MAX
 * distinct keys between flushes; more are not counted: this is a sample for warming, not an
 * audit). tick() flushes it at most once a second as one pipeline of ZINCRBY into the ~hot
 * sorted set, and every HOT_DECAY_MS halves all scores (ZUNIONSTORE with WEIGHTS 0.5) and
 * trims the set to its KHALA_TIER_REDIS_HOT_MAX best members. Counts are hits, not misses:
 * warming a key that is not there is wasted work. Redis's own eviction is its LFU
 * (maxmemory-policy allkeys-lfu, set when the instance is owned, else checked).
 *
 * Invariants: rt->tier is the first member (the khala_tier_t * the caller holds is the rtier_t
 * allocation); rt->r.err is rt->tier.err; every redisReply a function receives it frees; no
 * operation but open, health() and tick() runs before ready, and those finish the open first.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <msgpack.h>

#include "errbuf.h"
#include "khala/error.h"
#include "redis_cluster.h"
#include "redis_conn.h"
#include "redis_reply_error.h"
#include "sys.h"
#include "tier_redis.h"

/* A cluster scan cursor: the node index (< KHALA_REDIS_NODES_MAX) in the top 8 bits, the
 * node's own SCAN cursor below. */
#define CURSOR_NODE_SHIFT 56
#define CURSOR_REDIS_MASK ((UINT64_C(1) << CURSOR_NODE_SHIFT) - 1)
_Static_assert(KHALA_REDIS_NODES_MAX <= 256, "the node index must fit the cursor's top 8 bits");

/* Access counts: flush period, decay period, distinct keys counted between flushes (bounds
 * the table's memory and the flush pipeline, which must stay within a tick's few ms). */
#define HOT_FLUSH_MS 1000
#define HOT_DECAY_MS (5 * 60 * 1000)
#define HOT_TABLE_MAX 4096u
#define HOT_TABLE_SLOTS 8192u /* power of two, twice HOT_TABLE_MAX: probes stay short */

/* Reload of a stale slot map, at most this often. */
#define SLOTS_REFRESH_MS 1000

/* SCAN COUNT hints: scan()'s default, and invalidate()'s batch. */
#define SCAN_COUNT_DEFAULT 256u
#define INVALIDATE_BATCH 1000u

/* Bytes of a SCAN cursor as text (a u64 in decimal, and its NUL). */
#define SCAN_CURSOR_MAX 24

/* Bytes of "khala:" + namespace + ":" and of a full key. */
#define PREFIX_MAX (sizeof("khala:") + KHALA_NAME_MAX + 1)
#define FULLKEY_MAX (PREFIX_MAX + KHALA_KEY_MAX)

/* The put script; see "The put script" above. KEYS[1] = full key, ARGV[1] = encoded value,
 * ARGV[2] = TTL in ms ("0" = none). Returns 1 (stored) or 0 (the stored version is newer). */
static const char put_script[] =
    "local function ours(v)\n"
    "  if not v or #v < 13 or string.byte(v, 1) ~= 147 or string.byte(v, 2) ~= 207\n"
    "     or string.byte(v, 11) > 7 then return false end\n"
    "  local h, n = string.byte(v, 12), #v\n"
    "  if h == 196 then return n == 13 + string.byte(v, 13) end\n"
    "  if h == 197 and n >= 14 then\n"
    "    local a, b = string.byte(v, 13, 14)\n"
    "    return n == 14 + a * 256 + b\n"
    "  end\n"
    "  if h == 198 and n >= 16 then\n"
    "    local a, b, c, d = string.byte(v, 13, 16)\n"
    "    return n == 16 + ((a * 256 + b) * 256 + c) * 256 + d\n"
    "  end\n"
    "  return false\n"
    "end\n"
    "local old = redis.pcall('GET', KEYS[1])\n"
    "if type(old) ~= 'string' then old = nil end\n"
    "if ours(old) then\n"
    "  local new = ARGV[1]\n"
    "  for i = 3, 10 do\n"
    "    local a, b = string.byte(old, i), string.byte(new, i)\n"
    "    if a ~= b then\n"
    "      if a > b then return 0 end\n"
    "      break\n"
    "    end\n"
    "  end\n"
    "end\n"
    "if ARGV[2] == '0' then\n"
    "  redis.call('SET', KEYS[1], ARGV[1])\n"
    "else\n"
    "  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
    "end\n"
    "return 1\n";

/* A counted key of the access-count table; key == NULL is a free slot. */
typedef struct hot_ent {
    char *key;
    uint32_t klen;
    uint32_t count; /* hits since the last flush */
} hot_ent_t;

/* The driver. Everything is the loop thread's (tier.h: drivers are called from it only). */
typedef struct rtier {
    khala_tier_t tier; /* first: the caller's khala_tier_t * is this allocation */

    /* Immutable after open. */
    bool persistent, owned;
    char prefix[PREFIX_MAX]; /* "khala:<ns>:" */
    size_t prefix_len;
    char match[2 * PREFIX_MAX]; /* prefix with glob metacharacters escaped, for SCAN MATCH */
    size_t match_len;
    char hot_key[PREFIX_MAX + sizeof(KHALA_TIER_REDIS_HOT_KEY)]; /* "khala:<ns>:~hot" */
    size_t hot_len;

    /* Nodes, pools, slot map (daemon/redis_cluster.h); r.err is tier.err. The topology is
     * known once the server first answered (ready). */
    khala_redis_router_t r;
    bool ready;
    int64_t slots_refresh_at_ms; /* no reload of a stale map before */

    /* Access counts. */
    hot_ent_t *hot; /* HOT_TABLE_SLOTS entries, allocated on the first hit */
    size_t hot_n;   /* used entries, <= HOT_TABLE_MAX */
    int64_t hot_flush_at_ms, hot_decay_at_ms;

    khala_tier_stats_t st; /* items and bytes are reported as UINT64_MAX */
} rtier_t;

/* A key of a batch, sorted by node then slot so that runs share a node and a slot. */
typedef struct item {
    unsigned node, slot;
    size_t idx; /* index into the batch's arrays */
} item_t;

static const khala_tier_ops_t redis_ops;

/* ------------------------------------------------------------------------------------------ */
/* Messages and small helpers                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* Describe a failure in the tier's message buffer. */
#define terr(rt, ...) khala__errbuf_set((rt)->tier.err, sizeof((rt)->tier.err), __VA_ARGS__)

static inline rtier_t *RT(khala_tier_t *t) {
    return (rtier_t *)t;
}

/* A key in a message: the one way keys are shown (lib/errbuf.h). */
#define key_show(key, klen, buf, cap) khala__errbuf_quote((key), (klen), (buf), (cap))

/* Escape Redis glob metacharacters (* ? [ ] \) of s into out (2 * len + 1 bytes); the length. */
static size_t glob_escape(const char *s, size_t len, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '*' || s[i] == '?' || s[i] == '[' || s[i] == ']' || s[i] == '\\')
            out[o++] = '\\';
        out[o++] = s[i];
    }
    out[o] = '\0';
    return o;
}

/* Build the full key into buf (FULLKEY_MAX bytes); its length. */
static size_t fullkey(const rtier_t *rt, const void *key, size_t klen, char *buf) {
    memcpy(buf, rt->prefix, rt->prefix_len);
    memcpy(buf + rt->prefix_len, key, klen);
    return rt->prefix_len + klen;
}

static bool is_hot_key(const rtier_t *rt, const char *k, size_t len) {
    return len == rt->hot_len && memcmp(k, rt->hot_key, len) == 0;
}

static int key_check(rtier_t *rt, const void *key, size_t klen) {
    if (!key || klen == 0 || klen > KHALA_KEY_MAX) {
        terr(rt, "redis: key is %zu bytes, must be 1 to %d", klen, KHALA_KEY_MAX);
        return KHALA_EKEY;
    }
    if (klen == sizeof(KHALA_TIER_REDIS_HOT_KEY) - 1 &&
        memcmp(key, KHALA_TIER_REDIS_HOT_KEY, klen) == 0) {
        terr(rt, "redis: key '" KHALA_TIER_REDIS_HOT_KEY "' is reserved (the access counts)");
        return KHALA_EKEY;
    }
    return 0;
}

/* The code an operation returns, counted: a refused reconnect (credentials changed under a
 * running khalad) is an unreachable tier to the caller, not a config error. */
static int finish(rtier_t *rt, int rc) {
    if (rc == KHALA_ECONFIG)
        rc = KHALA_ETIER;
    if (rc == KHALA_ETIER || rc == KHALA_EREFUSED || rc == -ENOMEM)
        rt->st.errors++;
    return rc;
}

static void replies_free(redisReply **rep, size_t n) {
    for (size_t i = 0; i < n; i++) {
        freeReplyObject(rep[i]);
        rep[i] = NULL;
    }
}

static int item_cmp(const void *a, const void *b) {
    const item_t *x = a, *y = b;
    if (x->node != y->node)
        return x->node < y->node ? -1 : 1;
    if (x->slot != y->slot)
        return x->slot < y->slot ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Split m sorted items (one node) into runs of one slot: start[g] .. start[g + 1]. start has
 * m + 1 entries. Returns the number of runs. */
static size_t slot_runs(const item_t *it, size_t m, size_t *start) {
    size_t g = 0;
    for (size_t i = 0; i < m; i++)
        if (i == 0 || it[i].slot != it[i - 1].slot)
            start[g++] = i;
    start[g] = m;
    return g;
}

/* ------------------------------------------------------------------------------------------ */
/* Values                                                                                       */
/* ------------------------------------------------------------------------------------------ */

int khala__tier_redis_value_encode(const khala_tier_value_t *v, msgpack_sbuffer *sb) {
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    if (msgpack_pack_array(&pk, 3) || msgpack_pack_fix_uint64(&pk, v->version) ||
        msgpack_pack_unsigned_int(&pk, (unsigned)v->type) || msgpack_pack_bin(&pk, v->len) ||
        (v->len && msgpack_pack_bin_body(&pk, v->data, v->len))) {
        msgpack_sbuffer_destroy(sb);
        return -ENOMEM;
    }
    return 0;
}

/* Decode a stored value into out (data allocated). 0, -EBADMSG (not ours) or -ENOMEM; out is
 * written only on success. */
int khala__tier_redis_value_decode(const char *s, size_t len, khala_tier_value_t *out) {
    const unsigned char *p = (const unsigned char *)s;
    if (len < 13 || p[0] != 0x93 || p[1] != 0xcf || p[10] >= KHALA_TYPE_COUNT)
        return -EBADMSG;
    uint64_t version = 0;
    for (int i = 0; i < 8; i++)
        version = version << 8 | p[2 + i];
    size_t off = 11, blen;
    switch (p[off]) {
        case 0xc4:
            blen = p[off + 1];
            off += 2;
            break;
        case 0xc5:
            if (len < off + 3)
                return -EBADMSG;
            blen = (size_t)p[off + 1] << 8 | p[off + 2];
            off += 3;
            break;
        case 0xc6:
            if (len < off + 5)
                return -EBADMSG;
            blen = (size_t)p[off + 1] << 24 | (size_t)p[off + 2] << 16 | (size_t)p[off + 3] << 8 |
                   p[off + 4];
            off += 5;
            break;
        default:
            return -EBADMSG;
    }
    if (len < off || len - off != blen)
        return -EBADMSG;
    void *data = NULL;
    if (blen) {
        data = malloc(blen);
        if (!data)
            return -ENOMEM;
        memcpy(data, p + off, blen);
    }
    out->data = data;
    out->len = blen;
    out->version = version;
    out->type = (khala_type_t)p[10];
    out->ttl_ms = 0;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Access counts                                                                                */
/* ------------------------------------------------------------------------------------------ */

static void hot_count_n(rtier_t *rt, const void *key, size_t klen, uint64_t n) {
    if (!rt->hot) {
        rt->hot = calloc(HOT_TABLE_SLOTS, sizeof(*rt->hot));
        if (!rt->hot)
            return;
    }
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < klen; i++)
        h = (h ^ ((const unsigned char *)key)[i]) * 16777619u;
    for (uint32_t i = h & (HOT_TABLE_SLOTS - 1);; i = (i + 1) & (HOT_TABLE_SLOTS - 1)) {
        hot_ent_t *e = &rt->hot[i];
        if (!e->key) {
            if (rt->hot_n >= HOT_TABLE_MAX || !(e->key = malloc(klen)))
                return;
            memcpy(e->key, key, klen);
            e->klen = (uint32_t)klen;
            e->count = n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
            rt->hot_n++;
            return;
        }
        if (e->klen == klen && memcmp(e->key, key, klen) == 0) {
            e->count = n >= UINT32_MAX - e->count ? UINT32_MAX : e->count + (uint32_t)n;
            return;
        }
    }
}

static void hot_count(rtier_t *rt, const void *key, size_t klen) {
    hot_count_n(rt, key, klen, 1);
}

/* L1 hits reported by khalad: counted like hits here (flushed with them by tick). */
static void tr_note_hits(khala_tier_t *t, const void *key, size_t klen, uint64_t hits) {
    rtier_t *rt = RT(t);
    if (!hits || !klen || klen > KHALA_KEY_MAX ||
        (klen == sizeof(KHALA_TIER_REDIS_HOT_KEY) - 1 &&
         memcmp(key, KHALA_TIER_REDIS_HOT_KEY, klen) == 0))
        return;
    hot_count_n(rt, key, klen, hits);
}

static void hot_clear(rtier_t *rt) {
    if (!rt->hot)
        return;
    for (size_t i = 0; i < HOT_TABLE_SLOTS; i++) {
        free(rt->hot[i].key);
        rt->hot[i].key = NULL;
    }
    rt->hot_n = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Open-time work: topology, eviction policy, purge                                            */
/* ------------------------------------------------------------------------------------------ */

/* Run one keyless command on node ni; the reply in *r (caller frees). */
static int node_cmd(rtier_t *rt, size_t ni, redisReply **r, int argc, const char **argv) {
    size_t len[8];
    for (int i = 0; i < argc; i++)
        len[i] = strlen(argv[i]);
    khala_redis_cmd_t cmd = {argc, argv, len};
    return khala__redis_node_run(&rt->r, ni, false, 1, &cmd, r);
}

/* Set or check maxmemory-policy on node ni; a problem becomes a warning in t->err. */
static int policy_setup(rtier_t *rt, size_t ni) {
    redisReply *r = NULL;
    const char *name = rt->r.nodes[ni].name;
    int rc;
    if (rt->owned) {
        rc = node_cmd(rt, ni, &r, 4,
                      (const char *[]){"CONFIG", "SET", "maxmemory-policy", "allkeys-lfu"});
        if (rc != 0)
            return rc;
        if (r->type == REDIS_REPLY_ERROR)
            terr(rt,
                 "redis %s: warning: CONFIG SET maxmemory-policy allkeys-lfu refused (%s); "
                 "Redis evicts by its own policy",
                 name, r->str);
    } else {
        rc = node_cmd(rt, ni, &r, 3, (const char *[]){"CONFIG", "GET", "maxmemory-policy"});
        if (rc != 0)
            return rc;
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            r->element[1]->type == REDIS_REPLY_STRING) {
            if (strcmp(r->element[1]->str, "allkeys-lfu") != 0)
                terr(rt,
                     "redis %s: warning: maxmemory-policy is %s, not allkeys-lfu (set it, "
                     "or set [l2] redis_owned = true so that khalad does)",
                     name, r->element[1]->str);
        } else {
            terr(rt, "redis %s: warning: cannot read maxmemory-policy (%s)", name,
                 r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        }
    }
    freeReplyObject(r);
    return 0;
}

static int remove_keys(rtier_t *rt, size_t ni, size_t m, const char **keys, const size_t *lens,
                       int type, uint64_t *removed);

/* One SCAN of node ni from cursor cur (text, updated: "0" once the node is done) for keys
 * matching pattern (plen bytes), COUNT `batch`; UNLINK those found (only those of type when type
 * >= 0). The ~hot key is skipped unless with_hot. */
static int node_remove_step(rtier_t *rt, size_t ni, const char *pattern, size_t plen, int type,
                            bool with_hot, size_t batch, char cur[SCAN_CURSOR_MAX],
                            uint64_t *removed) {
    char count[24];
    snprintf(count, sizeof(count), "%zu", batch ? batch : (size_t)INVALIDATE_BATCH);
    const char *argv[6] = {"SCAN", cur, "MATCH", pattern, "COUNT", count};
    size_t len[6] = {4, strlen(cur), 5, plen, 5, strlen(count)};
    khala_redis_cmd_t cmd = {6, argv, len};
    redisReply *r = NULL;
    int rc = khala__redis_node_run(&rt->r, ni, false, 1, &cmd, &r);
    if (rc != 0)
        return rc;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY ||
        r->element[0]->len >= SCAN_CURSOR_MAX) {
        terr(rt, "redis %s: SCAN: %s", rt->r.nodes[ni].name,
             r->type == REDIS_REPLY_ERROR ? r->str : "malformed reply");
        freeReplyObject(r);
        return KHALA_ETIER;
    }
    memcpy(cur, r->element[0]->str, r->element[0]->len + 1);
    const redisReply *ks = r->element[1];
    const char **keys = malloc((ks->elements + 1) * sizeof(*keys));
    size_t *lens = malloc((ks->elements + 1) * sizeof(*lens));
    if (!keys || !lens) {
        free(keys);
        free(lens);
        freeReplyObject(r);
        return -ENOMEM;
    }
    size_t m = 0;
    for (size_t i = 0; i < ks->elements; i++) {
        const redisReply *k = ks->element[i];
        if (k->type != REDIS_REPLY_STRING || (!with_hot && is_hot_key(rt, k->str, k->len)))
            continue;
        keys[m] = k->str;
        lens[m++] = k->len;
    }
    rc = m ? remove_keys(rt, ni, m, keys, lens, type, removed) : 0;
    free(keys);
    free(lens);
    freeReplyObject(r);
    return rc;
}

/* Every step of node_remove_step() on node ni, at once (the purge at open). */
static int node_remove_matching(rtier_t *rt, size_t ni, const char *pattern, size_t plen, int type,
                                bool with_hot, uint64_t *removed) {
    char cur[SCAN_CURSOR_MAX] = "0";
    do {
        int rc = node_remove_step(rt, ni, pattern, plen, type, with_hot, 0, cur, removed);
        if (rc != 0)
            return rc;
    } while (strcmp(cur, "0") != 0);
    return 0;
}

/* Finish opening once the server answers: tell a cluster from a single server, load the slot
 * map, set or check the eviction policy, purge the namespace unless persistent. */
static int server_init(rtier_t *rt) {
    redisReply *r = NULL;
    int rc = node_cmd(rt, 0, &r, 2, (const char *[]){"INFO", "cluster"});
    if (rc != 0)
        return rc;
    bool cluster = r->type == REDIS_REPLY_STRING && strstr(r->str, "cluster_enabled:1");
    freeReplyObject(r);
    if (cluster) {
        rt->r.cluster = true;
        rc = khala__redis_slots_load(&rt->r, 0);
        if (rc != 0) {
            rt->r.cluster = false;
            return rc;
        }
    }
    char warning[sizeof(rt->tier.err)] = "";
    for (size_t i = 0; i < rt->r.nnodes; i++) {
        if (!khala__redis_node_owns_slots(&rt->r, i))
            continue;
        rt->tier.err[0] = '\0';
        if ((rc = policy_setup(rt, i)) != 0)
            goto fail;
        if (rt->tier.err[0] && !warning[0])
            memcpy(warning, rt->tier.err, sizeof(warning));
        if (!rt->persistent) {
            char pat[sizeof(rt->match) + 2];
            size_t pl = (size_t)snprintf(pat, sizeof(pat), "%s*", rt->match);
            uint64_t removed = 0;
            if ((rc = node_remove_matching(rt, i, pat, pl, -1, true, &removed)) != 0)
                goto fail;
        }
    }
    memcpy(rt->tier.err, warning, sizeof(warning));
    rt->ready = true;
    return 0;
fail:
    if (cluster)
        rt->r.cluster = false;
    return rc;
}

/* Finish the open if it has not been done: 0 when the topology is known. */
static int ensure_ready(rtier_t *rt) {
    if (rt->ready)
        return 0;
    unsigned i;
    int rc = khala__redis_pool_get(&rt->r, 0, &i);
    if (rc != 0)
        return rc;
    return server_init(rt);
}

/* ------------------------------------------------------------------------------------------ */
/* Reads                                                                                        */
/* ------------------------------------------------------------------------------------------ */

/* Turn a GET reply and a PTTL reply for key into a result in out. 0 (hit), KHALA_ENOTFOUND,
 * KHALA_ETIER (an error reply) or -ENOMEM. */
static int answer(rtier_t *rt, const void *key, size_t klen, const redisReply *v,
                  const redisReply *ttl, khala_tier_value_t *out) {
    char shown[KHALA_ERRBUF_QUOTE_CAP];
    if (v->type == REDIS_REPLY_NIL)
        return KHALA_ENOTFOUND;
    bool wrongtype = v->type == REDIS_REPLY_ERROR && strncmp(v->str, "WRONGTYPE", 9) == 0;
    if (!wrongtype && (v->type == REDIS_REPLY_ERROR || ttl->type == REDIS_REPLY_ERROR)) {
        const redisReply *e = v->type == REDIS_REPLY_ERROR ? v : ttl;
        terr(rt, "redis: GET '%s': %s", key_show(key, klen, shown, sizeof(shown)), e->str);
        /* One read Redis refused is a miss of this level (the store asks the next one); an
         * error about the server makes the level down. */
        return khala__redis_error_code(e->str, e->len);
    }
    if (ttl->type == REDIS_REPLY_INTEGER && ttl->integer == -2)
        return KHALA_ENOTFOUND; /* expired between the GET and the PTTL */
    khala_tier_value_t val;
    int rc = v->type == REDIS_REPLY_STRING ? khala__tier_redis_value_decode(v->str, v->len, &val)
                                           : -EBADMSG;
    if (rc == -ENOMEM)
        return rc;
    if (rc != 0) {
        rt->st.errors++;
        terr(rt, "redis: key '%s' holds %zu bytes that are not a khala value; treated as a miss",
             key_show(key, klen, shown, sizeof(shown)),
             v->type == REDIS_REPLY_STRING ? v->len : (size_t)0);
        return KHALA_ENOTFOUND;
    }
    long long left = ttl->type == REDIS_REPLY_INTEGER ? ttl->integer : -1;
    val.ttl_ms = left < 0 ? 0 : left == 0 ? 1 : left; /* 0 would mean "never expires" */
    *out = val;
    hot_count(rt, key, klen);
    return 0;
}

/* One key: GET + PTTL, pipelined, on the slot's node. */
static int get_one(rtier_t *rt, const void *key, size_t klen, khala_tier_value_t *out) {
    char fk[FULLKEY_MAX];
    size_t fl = fullkey(rt, key, klen, fk);
    const char *a0[2] = {"GET", fk}, *a1[2] = {"PTTL", fk};
    size_t l0[2] = {3, fl}, l1[2] = {4, fl};
    khala_redis_cmd_t cmds[2] = {{2, a0, l0}, {2, a1, l1}};
    redisReply *rep[2];
    int rc = khala__redis_run_slot(&rt->r, khala__redis_key_slot(&rt->r, fk, fl), 2, cmds, rep);
    if (rc != 0)
        return rc;
    rc = answer(rt, key, klen, rep[0], rep[1], out);
    replies_free(rep, 2);
    return rc;
}

static void count_read(rtier_t *rt, int rc) {
    if (rc == 0)
        rt->st.hits++;
    else if (rc == KHALA_ENOTFOUND)
        rt->st.misses++;
}

static int tr_get(khala_tier_t *t, const void *key, size_t klen, khala_tier_value_t *out) {
    rtier_t *rt = RT(t);
    int rc = key_check(rt, key, klen);
    if (rc != 0)
        return rc;
    rt->st.gets++;
    if ((rc = ensure_ready(rt)) == 0)
        rc = get_one(rt, key, klen, out);
    count_read(rt, rc);
    return finish(rt, rc);
}

/* mget on node run it[0..m): MGET per slot, then a PTTL per key, one pipeline. */
static void mget_node(rtier_t *rt, const item_t *it, size_t m, const khala_bytes_t *keys,
                      char *const *fks, const size_t *fls, khala_tier_value_t *out, int *rcs) {
    size_t *start = malloc((m + 1) * sizeof(*start));
    khala_redis_cmd_t *cmds = malloc(2 * m * sizeof(*cmds)); /* groups + PTTLs <= 2m */
    /* Arguments: each group's verb and keys (m + groups), two per PTTL (2m): <= 4m. */
    const char **argv = malloc(4 * m * sizeof(*argv));
    size_t *len = malloc(4 * m * sizeof(*len));
    redisReply **rep = calloc(2 * m, sizeof(*rep));
    if (!start || !cmds || !argv || !len || !rep) {
        for (size_t j = 0; j < m; j++)
            rcs[it[j].idx] = -ENOMEM;
        goto out;
    }
    size_t ng = slot_runs(it, m, start), a = 0, c = 0;
    for (size_t g = 0; g < ng; g++) {
        cmds[c] = (khala_redis_cmd_t){(int)(1 + start[g + 1] - start[g]), argv + a, len + a};
        argv[a] = "MGET";
        len[a++] = 4;
        for (size_t j = start[g]; j < start[g + 1]; j++) {
            argv[a] = fks[it[j].idx];
            len[a++] = fls[it[j].idx];
        }
        c++;
    }
    for (size_t j = 0; j < m; j++) {
        cmds[c++] = (khala_redis_cmd_t){2, argv + a, len + a};
        argv[a] = "PTTL";
        len[a++] = 4;
        argv[a] = fks[it[j].idx];
        len[a++] = fls[it[j].idx];
    }
    int rc = khala__redis_node_run(&rt->r, it[0].node, false, c, cmds, rep);
    if (rc != 0) {
        for (size_t j = 0; j < m; j++)
            rcs[it[j].idx] = rc;
        goto out;
    }
    for (size_t g = 0; g < ng; g++) {
        const redisReply *mg = rep[g];
        size_t gn = start[g + 1] - start[g];
        bool ok = mg->type == REDIS_REPLY_ARRAY && mg->elements == gn;
        for (size_t j = start[g]; ok && j < start[g + 1]; j++)
            ok = khala__redis_reply_kind(rep[ng + j]) == KHALA_REDIS_REPLY_PLAIN;
        for (size_t j = start[g]; j < start[g + 1]; j++) {
            size_t i = it[j].idx;
            if (ok)
                rcs[i] = answer(rt, keys[i].ptr, keys[i].len, mg->element[j - start[g]],
                                rep[ng + j], &out[i]);
            else /* a redirection (or an error): this key alone, following it */
                rcs[i] = get_one(rt, keys[i].ptr, keys[i].len, &out[i]);
        }
    }
    replies_free(rep, c);
out:
    free(start);
    free(cmds);
    free(argv);
    free(len);
    free(rep);
}

/* The arrays of a batch of keys: full keys, their lengths, and items sorted by node and slot.
 * Keys whose rcs[i] is already set are left out. */
typedef struct batch {
    char *arena; /* n * FULLKEY_MAX */
    char **fks;  /* n */
    size_t *fls; /* n */
    item_t *it;  /* m sorted items */
    size_t m;
} batch_t;

static void batch_free(batch_t *b) {
    free(b->arena);
    free(b->fks);
    free(b->fls);
    free(b->it);
}

/* Prepare b for keys whose rcs[i] is 0 (rcs may be NULL: every key). 0, -ENOMEM or
 * KHALA_ETIER (a slot without a node). */
static int batch_make(rtier_t *rt, size_t n, const khala_bytes_t *keys, const int *rcs,
                      batch_t *b) {
    memset(b, 0, sizeof(*b));
    b->arena = malloc(n * FULLKEY_MAX);
    b->fks = malloc(n * sizeof(*b->fks));
    b->fls = malloc(n * sizeof(*b->fls));
    b->it = malloc(n * sizeof(*b->it));
    if (!b->arena || !b->fks || !b->fls || !b->it) {
        batch_free(b);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        b->fks[i] = b->arena + i * FULLKEY_MAX;
        if (rcs && rcs[i] != 0)
            continue;
        b->fls[i] = fullkey(rt, keys[i].ptr, keys[i].len, b->fks[i]);
        unsigned slot = khala__redis_key_slot(&rt->r, b->fks[i], b->fls[i]);
        int ni = khala__redis_slot_node(&rt->r, slot);
        if (ni < 0) {
            batch_free(b);
            return KHALA_ETIER;
        }
        b->it[b->m++] = (item_t){(unsigned)ni, slot, i};
    }
    qsort(b->it, b->m, sizeof(*b->it), item_cmp);
    return 0;
}

static int tr_mget(khala_tier_t *t, size_t n, const khala_bytes_t *keys, khala_tier_value_t *out,
                   int *rcs) {
    rtier_t *rt = RT(t);
    for (size_t i = 0; i < n; i++)
        rcs[i] = key_check(rt, keys[i].ptr, keys[i].len);
    rt->st.gets += n;
    int rc = ensure_ready(rt);
    batch_t b;
    if (rc == 0)
        rc = batch_make(rt, n, keys, rcs, &b);
    if (rc != 0) {
        for (size_t i = 0; i < n; i++)
            if (rcs[i] == 0)
                rcs[i] = rc;
        return finish(rt, rc);
    }
    for (size_t j = 0; j < b.m;) {
        size_t k = j;
        while (k < b.m && b.it[k].node == b.it[j].node)
            k++;
        mget_node(rt, b.it + j, k - j, keys, b.fks, b.fls, out, rcs);
        j = k;
    }
    batch_free(&b);
    rc = 0;
    for (size_t i = 0; i < n; i++) {
        count_read(rt, rcs[i]);
        if (rcs[i] == KHALA_ECONFIG)
            rcs[i] = KHALA_ETIER;
        if (rc == 0 && rcs[i] != 0 && rcs[i] != KHALA_ENOTFOUND && rcs[i] != KHALA_EKEY)
            rc = rcs[i];
    }
    return finish(rt, rc);
}

/* ------------------------------------------------------------------------------------------ */
/* Writes                                                                                       */
/* ------------------------------------------------------------------------------------------ */

static int value_check(rtier_t *rt, const khala_tier_value_t *v) {
    if (!v || (v->len && !v->data) || (unsigned)v->type >= KHALA_TYPE_COUNT || v->ttl_ms < 0) {
        terr(rt, "redis: bad value (type %d, ttl %lld ms)", v ? (int)v->type : -1,
             v ? (long long)v->ttl_ms : 0LL);
        return -EINVAL;
    }
    if (v->len > KHALA_TIER_REDIS_VALUE_MAX) {
        terr(rt, "redis: value is %zu bytes, max %u", v->len, KHALA_TIER_REDIS_VALUE_MAX);
        return KHALA_ETOOBIG;
    }
    return 0;
}

/* The EVALSHA command of one put; px is its TTL as text (24 bytes). */
static void put_cmd(rtier_t *rt, const char *fk, size_t fl, const msgpack_sbuffer *enc,
                    const khala_tier_value_t *v, char *px, const char **argv, size_t *len,
                    khala_redis_cmd_t *cmd) {
    snprintf(px, 24, "%lld", (long long)v->ttl_ms);
    argv[0] = "EVALSHA";
    len[0] = 7;
    argv[1] = rt->r.sha;
    len[1] = 40;
    argv[2] = "1";
    len[2] = 1;
    argv[3] = fk;
    len[3] = fl;
    argv[4] = enc->data;
    len[4] = enc->size;
    argv[5] = px;
    len[5] = strlen(px);
    *cmd = (khala_redis_cmd_t){6, argv, len};
}

/* The reply to a put's EVALSHA: 0, KHALA_EVERSION, or an error with t->err naming the key and
 * Redis's text. An error reply about this write alone (out of memory, an expiry Redis refuses, a
 * script error) is KHALA_EREFUSED and leaves the level up; one about the server
 * (khala__redis_error_code) and an unexpected reply are KHALA_ETIER. */
static int put_result(rtier_t *rt, const char *fk, size_t fl, const redisReply *r) {
    char shown[KHALA_ERRBUF_QUOTE_CAP];
    if (r->type == REDIS_REPLY_INTEGER)
        return r->integer == 1 ? 0 : KHALA_EVERSION;
    bool error = r->type == REDIS_REPLY_ERROR;
    int rc = error ? khala__redis_error_code(r->str, r->len) : KHALA_ETIER;
    terr(rt, "redis: %s '%s': %s", rc == KHALA_EREFUSED ? "refused the put of" : "put",
         key_show(fk, fl, shown, sizeof(shown)), error ? r->str : "unexpected reply");
    return rc;
}

/* The reply to an UNLINK that is not a count: KHALA_ETIER with t->err, whatever it says. A
 * delete or an invalidation must not be lost while the level serves reads, so any error makes
 * the level down (reads skip it) and the operation queues until it is done. */
static int unlink_error(rtier_t *rt, const char *fk, size_t fl, const redisReply *r) {
    char shown[KHALA_ERRBUF_QUOTE_CAP];
    terr(rt, "redis: remove '%s': %s", key_show(fk, fl, shown, sizeof(shown)),
         r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    return KHALA_ETIER;
}

/* Of two results of one batch, the one to report: KHALA_ETIER first (the level is down: the
 * flusher keeps the batch), then any other error, then KHALA_EVERSION, then 0. */
static int worse(int a, int b) {
    if (a == KHALA_ETIER || b == KHALA_ETIER)
        return KHALA_ETIER;
    if (a != 0 && a != KHALA_EVERSION)
        return a;
    if (b != 0 && b != KHALA_EVERSION)
        return b;
    return a ? a : b;
}

static int put_one(rtier_t *rt, const char *fk, size_t fl, const msgpack_sbuffer *enc,
                   const khala_tier_value_t *v) {
    const char *argv[6];
    size_t len[6];
    char px[24];
    khala_redis_cmd_t cmd;
    put_cmd(rt, fk, fl, enc, v, px, argv, len, &cmd);
    redisReply *r = NULL;
    int rc = khala__redis_run_slot(&rt->r, khala__redis_cluster_slot(fk, fl), 1, &cmd, &r);
    if (rc != 0)
        return rc;
    rc = put_result(rt, fk, fl, r);
    freeReplyObject(r);
    return rc;
}

static int tr_put(khala_tier_t *t, const void *key, size_t klen, const khala_tier_value_t *val) {
    rtier_t *rt = RT(t);
    int rc = key_check(rt, key, klen);
    if (rc == 0)
        rc = value_check(rt, val);
    if (rc != 0)
        return rc;
    rt->st.puts++;
    if ((rc = ensure_ready(rt)) != 0)
        return finish(rt, rc);
    msgpack_sbuffer enc;
    if ((rc = khala__tier_redis_value_encode(val, &enc)) != 0)
        return finish(rt, rc);
    char fk[FULLKEY_MAX];
    size_t fl = fullkey(rt, key, klen, fk);
    rc = put_one(rt, fk, fl, &enc, val);
    msgpack_sbuffer_destroy(&enc);
    return finish(rt, rc);
}

/* mput on node run it[0..m): one EVALSHA per item, one pipeline. Returns the worst code. */
static int mput_node(rtier_t *rt, const item_t *it, size_t m, char *const *fks, const size_t *fls,
                     const msgpack_sbuffer *enc, const khala_tier_value_t *vals) {
    khala_redis_cmd_t *cmds = malloc(m * sizeof(*cmds));
    const char **argv = malloc(6 * m * sizeof(*argv));
    size_t *len = malloc(6 * m * sizeof(*len));
    char *px = malloc(24 * m);
    redisReply **rep = calloc(m, sizeof(*rep));
    int rc = -ENOMEM, worst = 0;
    if (!cmds || !argv || !len || !px || !rep)
        goto out;
    for (size_t j = 0; j < m; j++) {
        size_t i = it[j].idx;
        put_cmd(rt, fks[i], fls[i], &enc[i], &vals[i], px + 24 * j, argv + 6 * j, len + 6 * j,
                &cmds[j]);
    }
    rc = khala__redis_node_run(&rt->r, it[0].node, false, m, cmds, rep);
    if (rc != 0)
        goto out;
    for (size_t j = 0; j < m; j++) {
        size_t i = it[j].idx;
        int r = khala__redis_reply_kind(rep[j]) == KHALA_REDIS_REPLY_PLAIN
                    ? put_result(rt, fks[i], fls[i], rep[j])
                    : put_one(rt, fks[i], fls[i], &enc[i], &vals[i]);
        worst = worse(worst, r);
    }
    replies_free(rep, m);
    rc = worst;
out:
    free(cmds);
    free(argv);
    free(len);
    free(px);
    free(rep);
    return rc;
}

static int tr_mput(khala_tier_t *t, size_t n, const khala_bytes_t *keys,
                   const khala_tier_value_t *vals) {
    rtier_t *rt = RT(t);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        if ((rc = key_check(rt, keys[i].ptr, keys[i].len)) == 0)
            rc = value_check(rt, &vals[i]);
    if (rc != 0 || n == 0)
        return rc;
    rt->st.puts += n;
    if ((rc = ensure_ready(rt)) != 0)
        return finish(rt, rc);
    batch_t b;
    if ((rc = batch_make(rt, n, keys, NULL, &b)) != 0)
        return finish(rt, rc);
    msgpack_sbuffer *enc = calloc(n, sizeof(*enc));
    size_t encoded = 0;
    if (!enc)
        rc = -ENOMEM;
    for (; rc == 0 && encoded < n; encoded++)
        rc = khala__tier_redis_value_encode(&vals[encoded], &enc[encoded]);
    if (rc == 0) {
        int worst = 0;
        for (size_t j = 0; j < b.m;) {
            size_t k = j;
            while (k < b.m && b.it[k].node == b.it[j].node)
                k++;
            worst = worse(worst, mput_node(rt, b.it + j, k - j, b.fks, b.fls, enc, vals));
            j = k;
        }
        rc = worst;
    } else if (encoded) {
        encoded--; /* the failed one destroyed its own buffer */
    }
    for (size_t i = 0; enc && i < encoded; i++)
        msgpack_sbuffer_destroy(&enc[i]);
    free(enc);
    batch_free(&b);
    return finish(rt, rc);
}

static int tr_del(khala_tier_t *t, const void *key, size_t klen) {
    rtier_t *rt = RT(t);
    int rc = key_check(rt, key, klen);
    if (rc != 0)
        return rc;
    rt->st.dels++;
    if ((rc = ensure_ready(rt)) != 0)
        return finish(rt, rc);
    char fk[FULLKEY_MAX];
    size_t fl = fullkey(rt, key, klen, fk);
    const char *argv[2] = {"UNLINK", fk};
    size_t len[2] = {6, fl};
    khala_redis_cmd_t cmd = {2, argv, len};
    redisReply *r = NULL;
    if ((rc = khala__redis_run_slot(&rt->r, khala__redis_key_slot(&rt->r, fk, fl), 1, &cmd, &r)) !=
        0)
        return finish(rt, rc);
    if (r->type == REDIS_REPLY_INTEGER)
        rc = r->integer > 0 ? 0 : KHALA_ENOTFOUND;
    else
        rc = unlink_error(rt, fk, fl, r);
    freeReplyObject(r);
    return finish(rt, rc);
}

/* ------------------------------------------------------------------------------------------ */
/* Scan, hot, invalidate                                                                        */
/* ------------------------------------------------------------------------------------------ */

static int tr_scan(khala_tier_t *t, uint64_t *cursor, const char *pattern, size_t count,
                   khala_tier_scan_fn fn, void *arg) {
    rtier_t *rt = RT(t);
    int rc = ensure_ready(rt);
    if (rc != 0)
        return finish(rt, rc);
    size_t ni = rt->r.cluster ? (size_t)(*cursor >> CURSOR_NODE_SHIFT) : 0;
    uint64_t rcur = rt->r.cluster ? *cursor & CURSOR_REDIS_MASK : *cursor;
    while (ni < rt->r.nnodes && !khala__redis_node_owns_slots(&rt->r, ni)) {
        ni++;
        rcur = 0;
    }
    if (ni >= rt->r.nnodes) {
        *cursor = 0;
        return 0;
    }
    if (!pattern)
        pattern = "*";
    size_t plen = strlen(pattern);
    char *match = malloc(rt->match_len + plen + 1);
    if (!match)
        return finish(rt, -ENOMEM);
    memcpy(match, rt->match, rt->match_len);
    memcpy(match + rt->match_len, pattern, plen + 1);
    char cur[24], cnt[24];
    snprintf(cur, sizeof(cur), "%llu", (unsigned long long)rcur);
    snprintf(cnt, sizeof(cnt), "%zu", count ? count : (size_t)SCAN_COUNT_DEFAULT);
    const char *argv[6] = {"SCAN", cur, "MATCH", match, "COUNT", cnt};
    size_t len[6] = {4, strlen(cur), 5, rt->match_len + plen, 5, strlen(cnt)};
    khala_redis_cmd_t cmd = {6, argv, len};
    redisReply *r = NULL;
    rc = khala__redis_node_run(&rt->r, ni, false, 1, &cmd, &r);
    free(match);
    if (rc != 0)
        return finish(rt, rc);
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY) {
        terr(rt, "redis %s: SCAN: %s", rt->r.nodes[ni].name,
             r->type == REDIS_REPLY_ERROR ? r->str : "malformed reply");
        freeReplyObject(r);
        return finish(rt, KHALA_ETIER);
    }
    uint64_t next = strtoull(r->element[0]->str, NULL, 10);
    const redisReply *ks = r->element[1];
    for (size_t i = 0; i < ks->elements; i++) {
        const redisReply *k = ks->element[i];
        if (k->type != REDIS_REPLY_STRING || k->len <= rt->prefix_len ||
            memcmp(k->str, rt->prefix, rt->prefix_len) != 0 || is_hot_key(rt, k->str, k->len))
            continue;
        if (fn(arg, k->str + rt->prefix_len, k->len - rt->prefix_len))
            break;
    }
    freeReplyObject(r);
    if (!rt->r.cluster)
        *cursor = next;
    else if (next != 0)
        *cursor = (uint64_t)ni << CURSOR_NODE_SHIFT | (next & CURSOR_REDIS_MASK);
    else
        *cursor = ni + 1 < rt->r.nnodes ? (uint64_t)(ni + 1) << CURSOR_NODE_SHIFT : 0;
    return 0;
}

static int tr_hot(khala_tier_t *t, size_t max, khala_tier_scan_fn fn, void *arg) {
    rtier_t *rt = RT(t);
    int rc = ensure_ready(rt);
    if (rc != 0 || max == 0)
        return finish(rt, rc);
    char stop[24];
    snprintf(stop, sizeof(stop), "%zu", max - 1);
    const char *argv[4] = {"ZREVRANGE", rt->hot_key, "0", stop};
    size_t len[4] = {9, rt->hot_len, 1, strlen(stop)};
    khala_redis_cmd_t cmd = {4, argv, len};
    redisReply *r = NULL;
    if ((rc = khala__redis_run_slot(&rt->r, khala__redis_key_slot(&rt->r, rt->hot_key, rt->hot_len),
                                    1, &cmd, &r)) != 0)
        return finish(rt, rc);
    if (r->type != REDIS_REPLY_ARRAY) {
        terr(rt, "redis: ZREVRANGE %s: %s", rt->hot_key,
             r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        freeReplyObject(r);
        return finish(rt, KHALA_ETIER);
    }
    for (size_t i = 0; i < r->elements; i++)
        if (r->element[i]->type == REDIS_REPLY_STRING &&
            fn(arg, r->element[i]->str, r->element[i]->len))
            break;
    freeReplyObject(r);
    return 0;
}

/* One multi-key command per slot run of it[0..m) (all on node ni), pipelined: verb k1 k2 ...
 * On 0, (*rep)[g] answers run g (start[g] .. start[g + 1]); *ng runs. */
static int runs_send(rtier_t *rt, size_t ni, const char *verb, const item_t *it, size_t m,
                     const char **keys, const size_t *lens, size_t *start, size_t *ng,
                     redisReply ***rep) {
    *ng = slot_runs(it, m, start);
    khala_redis_cmd_t *cmds = malloc(*ng * sizeof(*cmds));
    const char **argv = malloc((m + *ng) * sizeof(*argv));
    size_t *len = malloc((m + *ng) * sizeof(*len));
    *rep = calloc(*ng, sizeof(**rep));
    int rc = -ENOMEM;
    if (cmds && argv && len && *rep) {
        size_t a = 0;
        for (size_t g = 0; g < *ng; g++) {
            cmds[g] = (khala_redis_cmd_t){(int)(1 + start[g + 1] - start[g]), argv + a, len + a};
            argv[a] = verb;
            len[a++] = strlen(verb);
            for (size_t j = start[g]; j < start[g + 1]; j++) {
                argv[a] = keys[it[j].idx];
                len[a++] = lens[it[j].idx];
            }
        }
        rc = khala__redis_node_run(&rt->r, ni, false, *ng, cmds, *rep);
    }
    free(cmds);
    free(argv);
    free(len);
    if (rc != 0) {
        free(*rep);
        *rep = NULL;
    }
    return rc;
}

/* One key's command through run_slot (a group that was redirected); the reply in *r. */
static int key_cmd(rtier_t *rt, const char *verb, const char *k, size_t kl, redisReply **r) {
    const char *argv[2] = {verb, k};
    size_t len[2] = {strlen(verb), kl};
    khala_redis_cmd_t cmd = {2, argv, len};
    return khala__redis_run_slot(&rt->r, khala__redis_cluster_slot(k, kl), 1, &cmd, r);
}

/* Items of m full keys found on node ni, sorted by slot. NULL on allocation failure. */
static item_t *items_of(rtier_t *rt, size_t ni, size_t m, const char **keys, const size_t *lens) {
    item_t *it = malloc(m * sizeof(*it));
    if (!it)
        return NULL;
    for (size_t i = 0; i < m; i++)
        it[i] = (item_t){(unsigned)ni, khala__redis_key_slot(&rt->r, keys[i], lens[i]), i};
    qsort(it, m, sizeof(*it), item_cmp);
    return it;
}

/* Does this stored value have type type? Undecodable values have none. */
static bool value_is_type(const redisReply *v, int type) {
    return v && v->type == REDIS_REPLY_STRING && v->len >= 13 && (unsigned char)v->str[0] == 0x93 &&
           (unsigned char)v->str[1] == 0xcf && (unsigned char)v->str[10] == (unsigned)type;
}

/* UNLINK m full keys that SCAN found on node ni; with type >= 0 only those holding a value of
 * that type (MGET first). Adds the count to *removed. A key rewritten with another type between
 * the MGET and the UNLINK is removed too: an invalidation may remove more, never less. */
static int remove_keys(rtier_t *rt, size_t ni, size_t m, const char **keys, const size_t *lens,
                       int type, uint64_t *removed) {
    item_t *it = items_of(rt, ni, m, keys, lens);
    size_t *start = malloc((m + 1) * sizeof(*start));
    const char **kept = malloc(m * sizeof(*kept));
    size_t *kept_len = malloc(m * sizeof(*kept_len));
    redisReply **rep = NULL;
    size_t ng = 0;
    int rc = -ENOMEM;
    if (!it || !start || !kept || !kept_len)
        goto out;
    size_t mk = m;
    if (type >= 0) {
        if ((rc = runs_send(rt, ni, "MGET", it, m, keys, lens, start, &ng, &rep)) != 0)
            goto out;
        mk = 0;
        for (size_t g = 0; g < ng; g++) {
            const redisReply *mg = rep[g];
            bool ok = mg->type == REDIS_REPLY_ARRAY && mg->elements == start[g + 1] - start[g];
            for (size_t j = start[g]; j < start[g + 1]; j++) {
                size_t i = it[j].idx;
                bool match;
                if (ok) {
                    match = value_is_type(mg->element[j - start[g]], type);
                } else {
                    redisReply *r = NULL;
                    if ((rc = key_cmd(rt, "GET", keys[i], lens[i], &r)) != 0)
                        goto out;
                    match = value_is_type(r, type);
                    freeReplyObject(r);
                }
                if (match) {
                    kept[mk] = keys[i];
                    kept_len[mk++] = lens[i];
                }
            }
        }
        replies_free(rep, ng);
        free(rep);
        rep = NULL;
        free(it);
        it = mk ? items_of(rt, ni, mk, kept, kept_len) : NULL;
        keys = kept;
        lens = kept_len;
        if (mk && !it) {
            rc = -ENOMEM;
            goto out;
        }
    }
    rc = 0;
    if (mk == 0)
        goto out;
    if ((rc = runs_send(rt, ni, "UNLINK", it, mk, keys, lens, start, &ng, &rep)) != 0)
        goto out;
    for (size_t g = 0; g < ng && rc == 0; g++) {
        if (rep[g]->type == REDIS_REPLY_INTEGER) {
            *removed += (uint64_t)rep[g]->integer;
            continue;
        }
        for (size_t j = start[g]; j < start[g + 1] && rc == 0; j++) {
            size_t i = it[j].idx;
            redisReply *r = NULL;
            if ((rc = key_cmd(rt, "UNLINK", keys[i], lens[i], &r)) != 0)
                break;
            if (r->type == REDIS_REPLY_INTEGER)
                *removed += (uint64_t)r->integer;
            else
                rc = unlink_error(rt, keys[i], lens[i], r);
            freeReplyObject(r);
        }
    }
out:
    if (rep) {
        replies_free(rep, ng);
        free(rep);
    }
    free(it);
    free(start);
    free(kept);
    free(kept_len);
    return rc;
}

/* The SCAN pattern of an invalidation (the namespace's match, the prefix escaped, '*'), in a
 * new allocation; its length in *pl. NULL when out of memory. */
static char *invalidation_pattern(const rtier_t *rt, const void *prefix, size_t plen, size_t *pl) {
    char *pat = malloc(rt->match_len + 2 * plen + 2);
    if (!pat)
        return NULL;
    memcpy(pat, rt->match, rt->match_len);
    *pl = rt->match_len + glob_escape(prefix, plen, pat + rt->match_len);
    pat[(*pl)++] = '*';
    pat[*pl] = '\0';
    return pat;
}

/* What every invalidation (whole or in steps) starts with: its arguments are checked, then the
 * connection is made ready (a failure there goes through finish, as any other call's). */
static int invalidation_begin(rtier_t *rt, const void *prefix, size_t plen, int type) {
    if (plen > KHALA_KEY_MAX || (plen && !prefix) || type >= (int)KHALA_TYPE_COUNT) {
        terr(rt, "redis: bad invalidation (prefix of %zu bytes, type %d)", plen, type);
        return plen > KHALA_KEY_MAX ? KHALA_EKEY : -EINVAL;
    }
    int rc = ensure_ready(rt);
    return rc != 0 ? finish(rt, rc) : 0;
}

/* One step of an invalidation: one SCAN (COUNT count) on the node the cursor names (the node
 * index in its top 8 bits in a cluster, as for tr_scan), and the UNLINKs of what it found. */
static int tr_invalidate_step(khala_tier_t *t, const void *prefix, size_t plen, int type,
                              uint64_t *cursor, size_t count, uint64_t *removed) {
    rtier_t *rt = RT(t);
    int rc = invalidation_begin(rt, prefix, plen, type);
    if (rc != 0)
        return rc;
    size_t ni = rt->r.cluster ? (size_t)(*cursor >> CURSOR_NODE_SHIFT) : 0;
    uint64_t rcur = rt->r.cluster ? *cursor & CURSOR_REDIS_MASK : *cursor;
    while (ni < rt->r.nnodes && !khala__redis_node_owns_slots(&rt->r, ni)) {
        ni++;
        rcur = 0;
    }
    uint64_t n = 0;
    if (ni < rt->r.nnodes) {
        size_t pl;
        char *pat = invalidation_pattern(rt, prefix, plen, &pl);
        if (!pat)
            return finish(rt, -ENOMEM);
        char cur[SCAN_CURSOR_MAX];
        snprintf(cur, sizeof(cur), "%llu", (unsigned long long)rcur);
        rc = node_remove_step(rt, ni, pat, pl, type, false, count, cur, &n);
        free(pat);
        if (rc != 0)
            return finish(rt, rc);
        uint64_t next = strtoull(cur, NULL, 10);
        if (!rt->r.cluster)
            *cursor = next;
        else if (next != 0)
            *cursor = (uint64_t)ni << CURSOR_NODE_SHIFT | (next & CURSOR_REDIS_MASK);
        else
            *cursor = ni + 1 < rt->r.nnodes ? (uint64_t)(ni + 1) << CURSOR_NODE_SHIFT : 0;
    } else {
        *cursor = 0;
    }
    if (removed)
        *removed = n;
    return 0;
}

static int tr_invalidate(khala_tier_t *t, const void *prefix, size_t plen, int type,
                         uint64_t *removed) {
    rtier_t *rt = RT(t);
    int rc = invalidation_begin(rt, prefix, plen, type);
    if (rc != 0)
        return rc;
    size_t pl;
    char *pat = invalidation_pattern(rt, prefix, plen, &pl);
    if (!pat)
        return finish(rt, -ENOMEM);
    uint64_t n = 0;
    for (size_t i = 0; i < rt->r.nnodes && rc == 0; i++)
        if (khala__redis_node_owns_slots(&rt->r, i))
            rc = node_remove_matching(rt, i, pat, pl, type, false, &n);
    free(pat);
    if (removed)
        *removed = n;
    return finish(rt, rc);
}

/* ------------------------------------------------------------------------------------------ */
/* Health, stats, tick, close                                                                   */
/* ------------------------------------------------------------------------------------------ */

static int tr_health(khala_tier_t *t) {
    rtier_t *rt = RT(t);
    int rc = ensure_ready(rt);
    if (rc != 0)
        return finish(rt, rc);
    if (rt->r.cluster && rt->r.slots_stale)
        khala__redis_slots_refresh(&rt->r);
    for (size_t ni = 0; ni < rt->r.nnodes; ni++) {
        if (!khala__redis_node_owns_slots(&rt->r, ni))
            continue;
        const khala_redis_node_t *n = &rt->r.nodes[ni];
        bool ok = false;
        /* Every open connection: a restarted server leaves stale sockets in the pool. */
        for (unsigned i = 0; i < rt->r.pool_size; i++)
            if (n->pool[i] && khala__redis_node_ping(&rt->r, ni, i))
                ok = true;
        unsigned i;
        if (!ok && khala__redis_pool_get(&rt->r, ni, &i) == 0 &&
            khala__redis_node_ping(&rt->r, ni, i))
            ok = true;
        if (!ok)
            return finish(rt, KHALA_ETIER);
    }
    return 0;
}

static void tr_stats(khala_tier_t *t, khala_tier_stats_t *out) {
    rtier_t *rt = RT(t);
    *out = rt->st;
    /* DBSIZE counts other namespaces too, and a SCAN is no stats call: unknown. Redis's own
     * evicted_keys / expired_keys are server-wide, not this namespace's, so none are claimed. */
    out->items = UINT64_MAX;
    out->bytes = UINT64_MAX;
    out->reconnects = rt->r.reconnects;
}

/* Flush the access counts: one pipeline of ZINCRBY to the ~hot key's node. Counts that cannot
 * be sent are dropped (they are a sample). */
static void hot_flush(rtier_t *rt) {
    size_t n = rt->hot_n, c = 0;
    khala_redis_cmd_t *cmds = malloc(n * sizeof(*cmds));
    const char **argv = malloc(4 * n * sizeof(*argv));
    size_t *len = malloc(4 * n * sizeof(*len));
    char *num = malloc(12 * n);
    redisReply **rep = calloc(n, sizeof(*rep));
    if (cmds && argv && len && num && rep) {
        for (size_t i = 0; i < HOT_TABLE_SLOTS; i++) {
            const hot_ent_t *e = &rt->hot[i];
            if (!e->key)
                continue;
            const char **a = argv + 4 * c;
            size_t *l = len + 4 * c;
            snprintf(num + 12 * c, 12, "%u", e->count);
            a[0] = "ZINCRBY";
            l[0] = 7;
            a[1] = rt->hot_key;
            l[1] = rt->hot_len;
            a[2] = num + 12 * c;
            l[2] = strlen(a[2]);
            a[3] = e->key;
            l[3] = e->klen;
            cmds[c] = (khala_redis_cmd_t){4, a, l};
            c++;
        }
        if (khala__redis_run_slot(&rt->r, khala__redis_key_slot(&rt->r, rt->hot_key, rt->hot_len),
                                  c, cmds, rep) == 0)
            replies_free(rep, c);
    }
    free(cmds);
    free(argv);
    free(len);
    free(num);
    free(rep);
    hot_clear(rt);
}

/* Halve every score and keep the KHALA_TIER_REDIS_HOT_MAX best members. */
static void hot_decay(rtier_t *rt) {
    char keep[24];
    snprintf(keep, sizeof(keep), "-%u", KHALA_TIER_REDIS_HOT_MAX + 1);
    const char *a0[6] = {"ZUNIONSTORE", rt->hot_key, "1", rt->hot_key, "WEIGHTS", "0.5"};
    size_t l0[6] = {11, rt->hot_len, 1, rt->hot_len, 7, 3};
    const char *a1[4] = {"ZREMRANGEBYRANK", rt->hot_key, "0", keep};
    size_t l1[4] = {15, rt->hot_len, 1, strlen(keep)};
    khala_redis_cmd_t cmds[2] = {{6, a0, l0}, {4, a1, l1}};
    redisReply *rep[2];
    if (khala__redis_run_slot(&rt->r, khala__redis_key_slot(&rt->r, rt->hot_key, rt->hot_len), 2,
                              cmds, rep) == 0)
        replies_free(rep, 2);
}

static void tr_tick(khala_tier_t *t, int64_t now_ms) {
    rtier_t *rt = RT(t);
    if (!rt->ready)
        return; /* health() reconnects and finishes the open; tick stays within its ms */
    if (rt->r.cluster && rt->r.slots_stale && now_ms >= rt->slots_refresh_at_ms) {
        rt->slots_refresh_at_ms = now_ms + SLOTS_REFRESH_MS;
        khala__redis_slots_refresh(&rt->r);
    }
    if (rt->hot_n && now_ms >= rt->hot_flush_at_ms) {
        rt->hot_flush_at_ms = now_ms + HOT_FLUSH_MS;
        hot_flush(rt);
    }
    if (now_ms >= rt->hot_decay_at_ms) {
        if (rt->hot_decay_at_ms != 0)
            hot_decay(rt);
        rt->hot_decay_at_ms = now_ms + HOT_DECAY_MS;
    }
}

static void tr_close(khala_tier_t *t) {
    if (!t)
        return;
    rtier_t *rt = RT(t);
    if (rt->ready && rt->hot_n)
        hot_flush(rt); /* the counts of the last second: the next preload ranks by them */
    khala__redis_router_free(&rt->r);
    hot_clear(rt);
    free(rt->hot);
    free(rt);
}

static const khala_tier_ops_t redis_ops = {
    .name = "redis",
    .get = tr_get,
    .mget = tr_mget,
    .put = tr_put,
    .mput = tr_mput,
    .del = tr_del,
    .scan = tr_scan,
    .hot = tr_hot,
    .note_hits = tr_note_hits,
    .invalidate = tr_invalidate,
    .invalidate_step = tr_invalidate_step,
    .health = tr_health,
    .stats = tr_stats,
    .tick = tr_tick,
    .close = tr_close,
};

/* ------------------------------------------------------------------------------------------ */
/* Open                                                                                         */
/* ------------------------------------------------------------------------------------------ */

int khala__tier_redis_open(const khala_tier_redis_opts_t *o, khala_tier_t **out, char *err,
                           size_t errlen) {
    char msg[256] = "";
    int rc = KHALA_ECONFIG;
    rtier_t *rt = NULL;
    khala_config_redis_url_t url;
    size_t nslen = o && o->ns ? strlen(o->ns) : 0;
    if (!o || !o->url) {
        khala__errbuf_set(msg, sizeof(msg), "redis: no redis_url");
        goto fail;
    }
    if (nslen == 0 || nslen > KHALA_NAME_MAX) {
        khala__errbuf_set(msg, sizeof(msg), "redis: namespace is %zu bytes, must be 1 to %d", nslen,
                          KHALA_NAME_MAX);
        goto fail;
    }
    char perr[200];
    if (khala__config_redis_url_parse(o->url, &url, perr, sizeof(perr)) != 0) {
        khala__errbuf_set(msg, sizeof(msg), "redis: redis_url %s", perr);
        goto fail;
    }
    if (url.tls) {
        khala__errbuf_set(msg, sizeof(msg),
                          "redis: rediss:// (TLS) is not supported by this build");
        goto fail;
    }
    rt = calloc(1, sizeof(*rt));
    if (!rt) {
        rc = -ENOMEM;
        khala__errbuf_set(msg, sizeof(msg), "redis: out of memory");
        goto fail;
    }
    rt->persistent = o->persistent;
    rt->owned = o->owned;
    rt->prefix_len = (size_t)snprintf(rt->prefix, sizeof(rt->prefix), "khala:%s:", o->ns);
    rt->match_len = glob_escape(rt->prefix, rt->prefix_len, rt->match);
    rt->hot_len = (size_t)snprintf(rt->hot_key, sizeof(rt->hot_key), "%s%s", rt->prefix,
                                   KHALA_TIER_REDIS_HOT_KEY);
    rt->tier.ops = &redis_ops;
    rt->tier.level = o->level;
    rt->tier.impl = rt;
    if (khala__redis_router_init(&rt->r, &url, o->timeout_ms, o->pool_size, put_script,
                                 rt->tier.err, sizeof(rt->tier.err)) != 0) {
        rc = -ENOMEM;
        khala__errbuf_set(msg, sizeof(msg), "redis: out of memory");
        goto fail;
    }
    rc = ensure_ready(rt);
    if (rc == KHALA_ECONFIG || rc == -ENOMEM) {
        khala__errbuf_set(msg, sizeof(msg), "%s", rt->tier.err);
        goto fail;
    }
    rt->tier.healthy = rt->ready;
    if (err && errlen)
        khala__errbuf_set(err, errlen, "%s", rt->tier.err);
    *out = &rt->tier;
    return 0;
fail:
    if (rt)
        tr_close(&rt->tier);
    if (err && errlen)
        khala__errbuf_set(err, errlen, "%s", msg);
    return rc;
}
