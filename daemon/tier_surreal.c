/*
 * The SurrealDB L3 driver. See daemon/tier_surreal.h for the entry point, daemon/tier.h for the
 * rules every driver keeps, and docs/tiers.md "SurrealDB" for why it is built this way. This
 * file holds the operations, rows and values, and the open; daemon/tier_surreal_rpc.c the /rpc
 * exchange, reachability and the schema; daemon/tier_surreal_clean.c the access counts, the
 * cleanup pass and the tick; daemon/tier_surreal_impl.h what they share.
 *
 * HOW IT WORKS
 *
 * Transport. Every statement goes to POST /rpc as a JSON-RPC request {"id", "method": "query",
 * "params": [sql, vars]} with the headers surreal-ns, surreal-db, Accept and Content-Type
 * application/json, and Basic auth from the URL; daemon/http_pool.c keeps pool_size keep-alive
 * connections and retries transport errors. /rpc, not /sql: /sql takes variables only from the
 * URL's query string (strings only, bounded by the server's URI limit), /rpc takes them typed in
 * the body. A reply is {"result": [one {"status", "result"} per statement]} or {"error":
 * {"code", "message"}}; every statement's status is checked (a 200 can carry an ERR).
 *
 * Binding. Keys and values reach the server only as variables: the SQL text holds fixed
 * statements, parameter names ($k0, $r0, ...), integers we format (a batch index, KNN's k) and
 * the record-id function's name. Table names are variables in record ids (REC($tb, $k),
 * REC($atb, $k): a direct key lookup) and text elsewhere (DEFINE, and FROM <table> in scans):
 * the configured name, checked against [A-Za-z_][A-Za-z0-9_]* at open. Not FROM
 * type::table($tb): SurrealDB 3.0.2 plans it as a dynamic scan, which uses no index (the
 * expiry sweep and the eviction order became full scans, 1.8 s instead of 0.08 s for a count at
 * 100 k rows) and applies LIMIT before ORDER BY (the eviction would pick arbitrary rows).
 * REC is type::thing on 1.x/2.x servers and type::record on 3.x (3.0 renamed it; neither name
 * works on both): GET /version at open picks it.
 *
 * Rows. One record per key, id REC(table, hex(key)):
 *     key      string          hex of the key's bytes (binary-safe; byte order = string order,
 *                              so a key prefix is a string prefix: string::starts_with)
 *     type     int             khala_type_t
 *     version  int             the item's version (SurrealDB ints are i64: versions above
 *                              INT64_MAX are refused); sent and read back as decimal strings
 *                              (<int> $v, <string> version) so that no JSON parser on the way
 *                              rounds it through a double
 *     data     string          base64 of the value (JSON has no bytes; see docs/tiers.md)
 *     created  int             wall-clock ms of the write
 *     expires  option<int>     wall-clock ms the item expires; absent = never (never JSON null)
 *     hits     int             access count: gets and note_hits, flushed once a second
 *     vec      option<array<float>>  the vector of an embedding item (value = little-endian
 *                              float32s), absent otherwise; HNSW-indexed when embedding_dim > 0
 * Hex keys, base64 data and decimal versions also never look like a record id, a datetime or a
 * uuid, which the server's JSON parser would otherwise turn strings into ("legacy strands").
 * Wall-clock time (not monotonic): several hosts may share the server, and rows outlive khalad.
 *
 * The version rule, one statement per put (atomic: a statement is its own transaction):
 *     IF (SELECT VALUE version FROM REC($tb, $k) WHERE live)[0] > <int> $r.v
 *         { THROW "khala:eversion" } ELSE { UPSERT REC($tb, $k) SET ... RETURN NONE }
 * An expired row is not live, so it is overwritten; an equal version is accepted. The THROW
 * makes the statement's status ERR with our marker: KHALA_EVERSION for that key. mput sends its
 * n statements in one request; each statement's status is that key's outcome.
 *
 * Reachability. Like the Redis driver: if the server does not answer, the operation fails with
 * KHALA_ETIER, the tier is down, and it is retried no sooner than the backoff allows (50 ms
 * doubling to 5 s); operations before then fail at once without network. The open (version,
 * schema) finishes on the first call after the server answers.
 *
 * Cleanup. Every cleanup_interval_ms a pass starts; tick() submits one bounded step of it (one
 * request of at most cleanup_batch rows) through the pool's non-blocking half and returns, and a
 * later tick (khala__http_progress, a zero-timeout poll) applies the answer and submits the
 * next step, so a tick never waits on the server (a step takes 0.1 to 0.3 s at 100 k rows on
 * the test engine):
 *   1. expired live rows deleted (expires in (0, now]), until a step finds fewer than a batch;
 *   2. the row count (SELECT count() ... GROUP ALL) is taken; while it exceeds max_entries, the
 *      least valuable rows (fewest hits, then oldest) are moved to <table>_archive with expires
 *      = now + archive_retention_ms, or deleted when that is 0 (one FOR statement per step: the
 *      copy and the delete commit together);
 *   3. archive rows past their retention deleted.
 * Access counts: gets and note_hits add to a small table (HITS_MAX keys between flushes); tick
 * submits it once a second, in the background too, as one FOR statement of UPDATE ... SET hits
 * += n (not retried: it is not idempotent, and a lost flush loses only a sample); hot() and
 * close flush what is left synchronously first.
 *
 * Semantic look-up (similar). With embedding_dim > 0 and a query of that dimension: the HNSW
 * index (`vec <|k,EF|> $q`), then vector::similarity::cosine for the score; otherwise an exact
 * scan: WHERE array::len(vec) = $dim AND cosine >= $min ORDER BY sim DESC LIMIT k. Both filter
 * expired rows and the threshold again in C.
 *
 * Invariants: s->tier is the first member; every json_t a function builds or receives it
 * releases; every operation that talks to the server first passes reach() (ready and up, or it
 * fails with KHALA_ETIER), except tick(), which only progresses what is in flight until then;
 * background callbacks touch only the cleanup and access-count state, the error counter, and
 * on a transport failure the down state and t->err (they may run inside any blocking call of
 * the tier).
 */
#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>
#include <sodium.h>

#include "debug.h"
#include "errbuf.h"
#include "http_pool.h"
#include "khala/error.h"
#include "sys.h"
#include "tier_surreal_impl.h"

static const khala_tier_ops_t surreal_ops;

/* ------------------------------------------------------------------------------------------ */
/* Keys, values and rows                                                                        */
/* ------------------------------------------------------------------------------------------ */

static int key_check(stier_t *s, const void *key, size_t klen) {
    if (!key || klen == 0 || klen > KHALA_KEY_MAX) {
        terr(s, "%s: key is %zu bytes, must be 1 to %d", s->where, klen, KHALA_KEY_MAX);
        return KHALA_EKEY;
    }
    return 0;
}

static void key_hex(const void *key, size_t klen, char *out) {
    sodium_bin2hex(out, HEXKEY_MAX, key, klen);
}

static int val_check(stier_t *s, const void *key, size_t klen, const khala_tier_value_t *v) {
    char kq[KHALA_ERRBUF_QUOTE_CAP];
    if ((unsigned)v->type >= KHALA_TYPE_COUNT) {
        terr(s, "%s: key '%s': type %d is not a type", s->where,
             khala__errbuf_quote(key, klen, kq, sizeof(kq)), (int)v->type);
        return KHALA_EINVAL;
    }
    if (v->len > KHALA_TIER_SURREAL_VALUE_MAX) {
        terr(s, "%s: key '%s': value is %zu bytes, max %u", s->where,
             khala__errbuf_quote(key, klen, kq, sizeof(kq)), v->len, KHALA_TIER_SURREAL_VALUE_MAX);
        return KHALA_ETOOBIG;
    }
    if (v->len && !v->data) {
        terr(s, "%s: key '%s': no value bytes", s->where,
             khala__errbuf_quote(key, klen, kq, sizeof(kq)));
        return KHALA_EINVAL;
    }
    if (v->version > (uint64_t)INT64_MAX) {
        terr(s, "%s: key '%s': version %llu is above SurrealDB's integers (max %lld)", s->where,
             khala__errbuf_quote(key, klen, kq, sizeof(kq)), (unsigned long long)v->version,
             (long long)INT64_MAX);
        return KHALA_EINVAL;
    }
    if (v->ttl_ms < 0) {
        terr(s, "%s: key '%s': negative TTL %lld ms", s->where,
             khala__errbuf_quote(key, klen, kq, sizeof(kq)), (long long)v->ttl_ms);
        return KHALA_EINVAL;
    }
    return 0;
}

/* A float32 vector of the value, or 0 when the item is not a vector (see the contract: dim =
 * len / 4; len 0 or not a multiple of 4 is not a vector). */
static uint32_t vec_dim(const khala_tier_value_t *v) {
    if (v->type != KHALA_TYPE_EMBEDDING || v->len == 0 || v->len % 4 != 0 ||
        v->len / 4 > KHALA_TIER_SURREAL_VEC_MAX)
        return 0;
    return (uint32_t)(v->len / 4);
}

static float f32_le(const uint8_t *p) {
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* The row object of a put: {"v": version text, "t": type, "d": base64, "e": expires?,
 * "w": vector?}. NULL on -ENOMEM. */
static json_t *row_new(stier_t *s, const khala_tier_value_t *v, int64_t now_wall) {
    char ver[24];
    snprintf(ver, sizeof(ver), "%llu", (unsigned long long)v->version);
    size_t b64cap = sodium_base64_encoded_len(v->len, sodium_base64_VARIANT_ORIGINAL);
    char *b64 = malloc(b64cap);
    if (!b64)
        return NULL;
    sodium_bin2base64(b64, b64cap, v->len ? v->data : (const void *)"", v->len,
                      sodium_base64_VARIANT_ORIGINAL);
    json_t *r = json_object();
    if (!r || json_object_set_new(r, "v", json_string(ver)) ||
        json_object_set_new(r, "t", json_integer(v->type)) ||
        json_object_set_new(r, "d", json_stringn_nocheck(b64, strlen(b64))))
        goto fail;
    free(b64);
    b64 = NULL;
    if (v->ttl_ms > 0 && json_object_set_new(r, "e", json_integer(now_wall + v->ttl_ms)))
        goto fail;
    uint32_t dim = vec_dim(v);
    if (dim && (s->dim == 0 || dim == s->dim)) {
        json_t *w = json_array();
        if (!w || json_object_set_new(r, "w", w))
            goto fail;
        const uint8_t *p = v->data;
        for (uint32_t i = 0; i < dim; i++) {
            float f = f32_le(p + 4 * i);
            if (!isfinite(f))
                f = 0; /* JSON has no NaN or infinity; such a vector never matches well */
            if (json_array_append_new(w, json_real(f)))
                goto fail;
        }
    }
    return r;
fail:
    free(b64);
    json_decref(r);
    return NULL;
}

/* Decode a row {key, type, version, data, expires?} into out. 0, -EBADMSG, -ENOMEM. */
static int row_decode(const json_t *row, int64_t now_wall, khala_tier_value_t *out) {
    json_t *jt = json_object_get(row, "type"), *jv = json_object_get(row, "version"),
           *jd = json_object_get(row, "data"), *je = json_object_get(row, "expires");
    if (!json_is_integer(jt) || !json_is_string(jv) || !json_is_string(jd))
        return -EBADMSG;
    json_int_t type = json_integer_value(jt);
    if (type < 0 || type >= KHALA_TYPE_COUNT)
        return -EBADMSG;
    char *end;
    errno = 0;
    unsigned long long ver = strtoull(json_string_value(jv), &end, 10);
    if (errno || *end)
        return -EBADMSG;
    int64_t ttl = 0;
    if (json_is_integer(je)) {
        ttl = json_integer_value(je) - now_wall;
        if (ttl <= 0)
            return -ENOENT; /* expired since the server looked */
    }
    const char *b64 = json_string_value(jd);
    size_t b64len = json_string_length(jd), cap = b64len / 4 * 3 + 3, len = 0;
    uint8_t *data = NULL;
    if (b64len) {
        data = malloc(cap);
        if (!data)
            return -ENOMEM;
        if (sodium_base642bin(data, cap, b64, b64len, NULL, &len, NULL,
                              sodium_base64_VARIANT_ORIGINAL) != 0) {
            free(data);
            return -EBADMSG;
        }
        if (len == 0) {
            free(data);
            data = NULL;
        }
    }
    out->data = data;
    out->len = len;
    out->version = ver;
    out->ttl_ms = ttl;
    out->type = (khala_type_t)type;
    return 0;
}

/* Decode a row's hex key into a malloc'ed buffer; 0, -EBADMSG, -ENOMEM. */
static int row_key(const json_t *row, uint8_t *buf, size_t cap, size_t *len) {
    json_t *jk = json_object_get(row, "key");
    if (!json_is_string(jk))
        return -EBADMSG;
    if (sodium_hex2bin(buf, cap, json_string_value(jk), json_string_length(jk), NULL, len, NULL) !=
            0 ||
        *len == 0)
        return -EBADMSG;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Reads                                                                                        */
/* ------------------------------------------------------------------------------------------ */

#define ROW_FIELDS "key, `type`, <string> version AS version, data, expires"
#define LIVE "(expires = NONE OR expires > $now)"

/* One row of statement i: 0 (out filled), KHALA_ENOTFOUND, KHALA_ETIER, -ENOMEM. */
static int read_row(stier_t *s, const json_t *res, size_t i, int64_t now_wall, const void *key,
                    size_t klen, khala_tier_value_t *out) {
    json_t *val = NULL;
    if (khala__surreal_stmt(s, res, i, &val, NULL) != 0)
        return KHALA_ETIER;
    if (json_is_null(val) || (json_is_array(val) && json_array_size(val) == 0))
        return KHALA_ENOTFOUND;
    json_t *row = json_is_array(val) ? json_array_get(val, 0) : val;
    khala_tier_value_t v = {0};
    int rc = row_decode(row, now_wall, &v);
    if (rc == -ENOENT)
        return KHALA_ENOTFOUND;
    if (rc == -ENOMEM) {
        terr(s, "%s: out of memory", s->where);
        return -ENOMEM;
    }
    if (rc) {
        char kq[KHALA_ERRBUF_QUOTE_CAP];
        terr(s, "%s: key '%s': the stored row is not a khala row (read as a miss)", s->where,
             khala__errbuf_quote(key, klen, kq, sizeof(kq)));
        s->st.errors++;
        return KHALA_ENOTFOUND;
    }
    *out = v;
    return 0;
}

static int get_from(stier_t *s, const char *tbvar, const void *key, size_t klen,
                    khala_tier_value_t *out, bool count) {
    int rc = key_check(s, key, klen);
    if (rc)
        return rc;
    if ((rc = khala__surreal_reach(s)) != 0)
        return khala__surreal_done(s, rc);
    char hex[HEXKEY_MAX];
    key_hex(key, klen, hex);
    int64_t now = wall_ms();
    json_t *vars = khala__surreal_vars_new(s, now);
    if (!vars || json_object_set_new(vars, "k", json_string(hex)))
        return json_decref(vars), khala__surreal_done(s, -ENOMEM);
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT " ROW_FIELDS " FROM %s(%s, $k) WHERE " LIVE ";", s->rec,
             tbvar);
    json_t *res = NULL;
    if ((rc = khala__surreal_query(s, sql, vars, true, &res)) != 0)
        return khala__surreal_done(s, rc);
    rc = read_row(s, res, 0, now, key, klen, out);
    json_decref(res);
    if (count) {
        s->st.gets++;
        if (rc == 0) {
            s->st.hits++;
            khala__surreal_hit_add(s, hex, 1);
        } else if (rc == KHALA_ENOTFOUND) {
            s->st.misses++;
        }
    }
    return khala__surreal_done(s, rc);
}

static int s_get(khala_tier_t *t, const void *key, size_t klen, khala_tier_value_t *out) {
    return get_from(ST(t), "$tb", key, klen, out, true);
}

static int s_archive_get(khala_tier_t *t, const void *key, size_t klen, khala_tier_value_t *out) {
    return get_from(ST(t), "$atb", key, klen, out, false);
}

/* An asynchronous get in flight (khala__tier_surreal_get_start). */
typedef struct aget {
    stier_t *s;
    int64_t now; /* wall-clock ms the request was made */
    size_t blen; /* request body bytes, for a 413 message */
    khala_tier_surreal_get_fn done;
    void *arg;
    size_t klen;
    uint8_t key[KHALA_KEY_MAX];
} aget_t;

static void aget_done(void *arg, khala_http_resp_t *resp) {
    aget_t *a = arg;
    stier_t *s = a->s;
    khala_tier_value_t v = {0};
    json_t *res = NULL;
    int rc;
    if (resp->rc == -ECANCELED) { /* the tier is closing */
        khala__http_resp_free(resp);
        terr(s, "%s: the level was closed with the request in flight", s->where);
        rc = KHALA_ETIER;
    } else if ((rc = khala__surreal_query_reply(s, resp, a->blen, &res)) == 0) {
        rc = read_row(s, res, 0, a->now, a->key, a->klen, &v);
        json_decref(res);
        s->st.gets++;
        if (rc == 0) {
            char hex[HEXKEY_MAX];
            key_hex(a->key, a->klen, hex);
            khala__surreal_hit_add(s, hex, 1);
            s->st.hits++;
        } else if (rc == KHALA_ENOTFOUND) {
            s->st.misses++;
        }
    }
    rc = khala__surreal_done(s, rc);
    a->done(a->arg, rc, rc == 0 ? &v : NULL);
    khala__tier_value_free(&v); /* what the callee did not take */
    free(a);
}

int khala__tier_surreal_get_start(khala_tier_t *t, const void *key, size_t klen,
                                  khala_tier_surreal_get_fn fn, void *arg) {
    KHALA_ASSERT(t && t->ops == &surreal_ops && fn);
    stier_t *s = ST(t);
    int rc = key_check(s, key, klen);
    if (rc)
        return rc;
    if ((rc = khala__surreal_reach(s)) != 0)
        return khala__surreal_done(s, rc);
    aget_t *a = calloc(1, sizeof(*a));
    if (!a)
        return khala__surreal_done(s, -ENOMEM);
    a->s = s;
    a->now = wall_ms();
    a->done = fn;
    a->arg = arg;
    a->klen = klen;
    memcpy(a->key, key, klen);
    char hex[HEXKEY_MAX], sql[256];
    key_hex(key, klen, hex);
    json_t *vars = khala__surreal_vars_new(s, a->now);
    if (!vars || json_object_set_new(vars, "k", json_string(hex))) {
        json_decref(vars);
        free(a);
        return khala__surreal_done(s, -ENOMEM);
    }
    snprintf(sql, sizeof(sql), "SELECT " ROW_FIELDS " FROM %s($tb, $k) WHERE " LIVE ";", s->rec);
    char *body = khala__surreal_query_body(s, sql, vars);
    if (!body) {
        free(a);
        return khala__surreal_done(s, -ENOMEM);
    }
    a->blen = strlen(body);
    rc = khala__http_submit(s->http, "POST", "/rpc", body, a->blen, true, aget_done, a);
    free(body);
    if (rc) {
        free(a);
        terr(s, "%s: out of memory", s->where);
        return khala__surreal_done(s, rc);
    }
    return 0;
}

khala_http_pool_t *khala__tier_surreal_pool(khala_tier_t *t) {
    KHALA_ASSERT(t && t->ops == &surreal_ops);
    return ST(t)->http;
}

int khala__tier_surreal_poll_fd(khala_tier_t *t) {
    KHALA_ASSERT(t && t->ops == &surreal_ops);
    return khala__http_pool_fd(ST(t)->http);
}

void khala__tier_surreal_poll(khala_tier_t *t) {
    KHALA_ASSERT(t && t->ops == &surreal_ops);
    khala__http_progress(ST(t)->http);
}

static int s_mget(khala_tier_t *t, size_t n, const khala_bytes_t *keys, khala_tier_value_t *out,
                  int *rcs) {
    stier_t *s = ST(t);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        out[i] = (khala_tier_value_t){0};
        rcs[i] = key_check(s, keys[i].ptr, keys[i].len);
    }
    if ((rc = khala__surreal_reach(s)) != 0) {
        for (size_t i = 0; i < n; i++)
            if (rcs[i] == 0)
                rcs[i] = KHALA_ETIER;
        return khala__surreal_done(s, rc);
    }
    for (size_t base = 0; base < n; base += BATCH_MAX) {
        size_t m = n - base < BATCH_MAX ? n - base : BATCH_MAX;
        int64_t now = wall_ms();
        json_t *vars = khala__surreal_vars_new(s, now);
        sbuf_t b = {0};
        size_t idx[BATCH_MAX], k = 0;
        for (size_t j = 0; j < m && vars; j++) {
            size_t i = base + j;
            if (rcs[i] != 0)
                continue;
            char hex[HEXKEY_MAX], name[16];
            key_hex(keys[i].ptr, keys[i].len, hex);
            snprintf(name, sizeof(name), "k%zu", k);
            if (json_object_set_new(vars, name, json_string(hex))) {
                json_decref(vars);
                vars = NULL;
                break;
            }
            khala__surreal_sb_add(&b, "SELECT " ROW_FIELDS " FROM %s($tb, $k%zu) WHERE " LIVE ";",
                                  s->rec, k);
            idx[k++] = i;
        }
        if (!vars || b.oom) {
            json_decref(vars);
            free(b.s);
            rc = -ENOMEM;
            for (size_t j = 0; j < m; j++)
                if (rcs[base + j] == 0)
                    rcs[base + j] = -ENOMEM;
            continue;
        }
        if (k == 0) {
            json_decref(vars);
            free(b.s);
            continue;
        }
        json_t *res = NULL;
        int q = khala__surreal_query(s, b.s, vars, true, &res);
        free(b.s);
        for (size_t j = 0; j < k; j++) {
            size_t i = idx[j];
            rcs[i] = q ? q : read_row(s, res, j, now, keys[i].ptr, keys[i].len, &out[i]);
            s->st.gets++;
            if (rcs[i] == 0) {
                char hex[HEXKEY_MAX];
                key_hex(keys[i].ptr, keys[i].len, hex);
                khala__surreal_hit_add(s, hex, 1);
                s->st.hits++;
            } else if (rcs[i] == KHALA_ENOTFOUND) {
                s->st.misses++;
            } else if (!rc) {
                rc = rcs[i];
            }
        }
        json_decref(res);
    }
    return khala__surreal_done(s, rc);
}

/* ------------------------------------------------------------------------------------------ */
/* Writes                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* Bytes a put of v adds to a request body, about: base64, the vector's text (up to 16 bytes a
 * float), the statement and the key. */
static size_t body_estimate(const khala_tier_value_t *v) {
    return v->len / 3 * 4 + 4 + (size_t)vec_dim(v) * 16 + 1024;
}

/* Append put statement number k (variables $k<k>, $r<k>). */
static void put_stmt(stier_t *s, sbuf_t *b, size_t k) {
    khala__surreal_sb_add(
        b,
        "IF (SELECT VALUE version FROM %s($tb, $k%zu) WHERE " LIVE ")[0] > <int> $r%zu.v "
        "{ THROW \"" EVERSION_MARK "\" } ELSE { UPSERT %s($tb, $k%zu) SET key = $k%zu, "
        "`type` = $r%zu.t, version = <int> $r%zu.v, data = $r%zu.d, created = $now, "
        "expires = $r%zu.e, hits = hits ?? 0, vec = $r%zu.w RETURN NONE };",
        s->rec, k, k, s->rec, k, k, k, k, k, k, k);
}

static int s_mput(khala_tier_t *t, size_t n, const khala_bytes_t *keys,
                  const khala_tier_value_t *vals) {
    stier_t *s = ST(t);
    int rc;
    for (size_t i = 0; i < n; i++)
        if ((rc = key_check(s, keys[i].ptr, keys[i].len)) != 0 ||
            (rc = val_check(s, keys[i].ptr, keys[i].len, &vals[i])) != 0)
            return rc;
    if ((rc = khala__surreal_reach(s)) != 0)
        return khala__surreal_done(s, rc);
    int worst = 0;
    for (size_t base = 0, m; base < n; base += m) {
        /* A request holds at most BATCH_MAX items and BODY_BUDGET bytes (a value's base64 and
         * vector text, and the statement), at least one item. */
        size_t bytes = 0;
        for (m = 0; base + m < n && m < BATCH_MAX; m++) {
            size_t est = body_estimate(&vals[base + m]);
            if (m > 0 && bytes + est > BODY_BUDGET)
                break;
            bytes += est;
        }
        int64_t now = wall_ms();
        json_t *vars = khala__surreal_vars_new(s, now);
        sbuf_t b = {0};
        for (size_t k = 0; k < m && vars; k++) {
            size_t i = base + k;
            char hex[HEXKEY_MAX], kn[16], rn[16];
            key_hex(keys[i].ptr, keys[i].len, hex);
            snprintf(kn, sizeof(kn), "k%zu", k);
            snprintf(rn, sizeof(rn), "r%zu", k);
            json_t *row = row_new(s, &vals[i], now);
            if (!row || json_object_set_new(vars, kn, json_string(hex)) ||
                json_object_set_new(vars, rn, row)) {
                json_decref(vars);
                vars = NULL;
                break;
            }
            put_stmt(s, &b, k);
        }
        if (!vars || b.oom) {
            json_decref(vars);
            free(b.s);
            terr(s, "%s: out of memory", s->where);
            return khala__surreal_done(s, -ENOMEM);
        }
        json_t *res = NULL;
        rc = khala__surreal_query(s, b.s, vars, true, &res);
        free(b.s);
        if (rc)
            return khala__surreal_done(s, rc);
        char refused[sizeof(s->tier.err)] = "";
        for (size_t k = 0; k < m; k++) {
            const char *msg = NULL;
            int r = khala__surreal_stmt(s, res, k, NULL, &msg);
            s->st.puts++;
            if (r == KHALA_EREFUSED && msg && strstr(msg, EVERSION_MARK)) {
                r = KHALA_EVERSION;
            } else if (r == KHALA_EREFUSED) {
                char kq[KHALA_ERRBUF_QUOTE_CAP];
                khala__errbuf_set(
                    refused, sizeof(refused),
                    "%s: key '%s': the server refused the "
                    "write: %.160s",
                    s->where,
                    khala__errbuf_quote(keys[base + k].ptr, keys[base + k].len, kq, sizeof(kq)),
                    msg);
            }
            if (r == KHALA_ETIER) {
                json_decref(res);
                return khala__surreal_done(s, r);
            }
            if (r == KHALA_EREFUSED || (r == KHALA_EVERSION && worst == 0))
                worst = r;
        }
        json_decref(res);
        if (refused[0])
            snprintf(s->tier.err, sizeof(s->tier.err), "%s", refused);
    }
    if (worst == KHALA_EVERSION) {
        terr(s, "%s: a stored version is newer", s->where);
        return worst;
    }
    return khala__surreal_done(s, worst);
}

static int s_put(khala_tier_t *t, const void *key, size_t klen, const khala_tier_value_t *val) {
    khala_bytes_t k = {.ptr = key, .len = klen};
    return s_mput(t, 1, &k, val);
}

static int s_del(khala_tier_t *t, const void *key, size_t klen) {
    stier_t *s = ST(t);
    int rc = key_check(s, key, klen);
    if (rc)
        return rc;
    if ((rc = khala__surreal_reach(s)) != 0)
        return khala__surreal_done(s, rc);
    char hex[HEXKEY_MAX];
    key_hex(key, klen, hex);
    json_t *vars = khala__surreal_vars_new(s, wall_ms());
    if (!vars || json_object_set_new(vars, "k", json_string(hex)))
        return json_decref(vars), khala__surreal_done(s, -ENOMEM);
    char sql[256];
    snprintf(sql, sizeof(sql), "RETURN array::len((DELETE %s($tb, $k) RETURN BEFORE));", s->rec);
    json_t *res = NULL, *val = NULL;
    if ((rc = khala__surreal_query_ok(s, sql, vars, true, 1, &res)) != 0)
        return khala__surreal_done(s, rc);
    khala__surreal_stmt(s, res, 0, &val, NULL);
    rc = json_is_integer(val) && json_integer_value(val) > 0 ? 0 : KHALA_ENOTFOUND;
    json_decref(res);
    s->st.dels++;
    return khala__surreal_done(s, rc);
}

/* ------------------------------------------------------------------------------------------ */
/* Scans, invalidation                                                                          */
/* ------------------------------------------------------------------------------------------ */

/* Visit the keys of rows (an array of objects with "key"); stops when fn returns non-zero.
 * Returns fn's non-zero, or 0. */
static int visit(const json_t *rows, const char *pattern, khala_tier_scan_fn fn, void *arg) {
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) {
        uint8_t key[KHALA_KEY_MAX + 1];
        size_t klen;
        if (row_key(row, key, KHALA_KEY_MAX, &klen) != 0)
            continue;
        if (pattern) {
            key[klen] = '\0';
            if (memchr(key, '\0', klen) || fnmatch(pattern, (char *)key, 0) != 0)
                continue;
        }
        int r = fn(arg, key, klen);
        if (r)
            return r;
    }
    return 0;
}

static int s_scan(khala_tier_t *t, uint64_t *cursor, const char *pattern, size_t count,
                  khala_tier_scan_fn fn, void *arg) {
    stier_t *s = ST(t);
    int rc = khala__surreal_reach(s);
    if (rc)
        return khala__surreal_done(s, rc);
    if (count == 0)
        count = SCAN_COUNT_DEFAULT;
    json_t *vars = khala__surreal_vars_new(s, wall_ms());
    if (!vars || json_object_set_new(vars, "n", json_integer((json_int_t)count)) ||
        json_object_set_new(vars, "s", json_integer((json_int_t)*cursor)))
        return json_decref(vars), khala__surreal_done(s, -ENOMEM);
    json_t *res = NULL, *rows = NULL;
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT key FROM %s WHERE " LIVE " LIMIT $n START $s;", s->table);
    if ((rc = khala__surreal_query_ok(s, sql, vars, true, 1, &res)) != 0)
        return khala__surreal_done(s, rc);
    khala__surreal_stmt(s, res, 0, &rows, NULL);
    size_t got = json_array_size(rows);
    uint64_t next = got < count ? 0 : *cursor + got;
    visit(rows, pattern, fn, arg);
    json_decref(res);
    *cursor = next;
    return 0;
}

static int s_hot(khala_tier_t *t, size_t max, khala_tier_scan_fn fn, void *arg) {
    stier_t *s = ST(t);
    int rc = khala__surreal_reach(s);
    if (rc)
        return khala__surreal_done(s, rc);
    khala__surreal_hits_flush(s);
    json_t *vars = khala__surreal_vars_new(s, wall_ms());
    if (!vars || json_object_set_new(vars, "n", json_integer((json_int_t)max)))
        return json_decref(vars), khala__surreal_done(s, -ENOMEM);
    json_t *res = NULL, *rows = NULL;
    char sql[256];
    /* Rows never read (hits 0) are dropped here, not by `hits > 0` in the query: SurrealDB
     * 3.0.2 answers a range on the first field of the compound index <table>_value wrongly
     * (`hits > 5` returns rows of hits 5). */
    snprintf(sql, sizeof(sql),
             "SELECT key, hits FROM %s WHERE " LIVE " ORDER BY hits DESC LIMIT $n;", s->table);
    if ((rc = khala__surreal_query_ok(s, sql, vars, true, 1, &res)) != 0)
        return khala__surreal_done(s, rc);
    khala__surreal_stmt(s, res, 0, &rows, NULL);
    json_t *read = json_array();
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) {
        json_t *h = json_object_get(row, "hits");
        if (read && json_is_integer(h) && json_integer_value(h) > 0)
            json_array_append(read, row);
    }
    visit(read, NULL, fn, arg);
    json_decref(read);
    json_decref(res);
    return 0;
}

/* Delete at most n rows of table tb (s->table or s->archive) matching cond (fixed text over $p,
 * $ty, $now); *removed gets how many. */
static int delete_step(stier_t *s, const char *tb, const char *cond, json_t *vars, size_t n,
                       uint64_t *removed) {
    char sql[512];
    snprintf(sql, sizeof(sql),
             "LET $ids = (SELECT VALUE id FROM %s WHERE %s LIMIT %zu);"
             "DELETE $ids RETURN NONE;"
             "RETURN array::len($ids);",
             tb, cond, n);
    json_t *res = NULL, *val = NULL;
    int rc = khala__surreal_query_ok(s, sql, vars, true, 3, &res);
    if (rc)
        return rc;
    khala__surreal_stmt(s, res, 2, &val, NULL);
    *removed = json_is_integer(val) ? (uint64_t)json_integer_value(val) : 0;
    json_decref(res);
    return 0;
}

static int s_invalidate_step(khala_tier_t *t, const void *prefix, size_t plen, int type,
                             uint64_t *cursor, size_t count, uint64_t *removed) {
    stier_t *s = ST(t);
    if (removed)
        *removed = 0;
    if (plen > KHALA_KEY_MAX) {
        terr(s, "%s: prefix is %zu bytes, max %d", s->where, plen, KHALA_KEY_MAX);
        return KHALA_EKEY;
    }
    int rc = khala__surreal_reach(s);
    if (rc)
        return khala__surreal_done(s, rc);
    if (count == 0)
        count = INVALIDATE_BATCH;
    char hex[HEXKEY_MAX] = "";
    if (plen)
        key_hex(prefix, plen, hex);
    json_t *vars = khala__surreal_vars_new(s, wall_ms());
    if (!vars || json_object_set_new(vars, "p", json_string(hex)) ||
        json_object_set_new(vars, "ty", json_integer(type)))
        return json_decref(vars), khala__surreal_done(s, -ENOMEM);
    const char *cond = plen && type >= 0 ? "string::starts_with(key, $p) AND `type` = $ty"
                       : plen            ? "string::starts_with(key, $p)"
                       : type >= 0       ? "`type` = $ty"
                                         : "true";
    uint64_t n = 0;
    if ((rc = delete_step(s, s->table, cond, vars, count, &n)) != 0)
        return khala__surreal_done(s, rc);
    s->st.dels += n;
    if (removed)
        *removed = n;
    *cursor = n < count ? 0 : 1;
    return 0;
}

static int s_invalidate(khala_tier_t *t, const void *prefix, size_t plen, int type,
                        uint64_t *removed) {
    uint64_t cursor = 0, total = 0, n;
    int rc;
    do {
        if ((rc = s_invalidate_step(t, prefix, plen, type, &cursor, INVALIDATE_BATCH, &n)) != 0)
            return rc;
        total += n;
    } while (cursor != 0);
    if (removed)
        *removed = total;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Semantic look-up                                                                             */
/* ------------------------------------------------------------------------------------------ */

static int match_cmp(const void *a, const void *b) {
    const khala_tier_match_t *x = a, *y = b;
    return x->similarity < y->similarity ? 1 : x->similarity > y->similarity ? -1 : 0;
}

static int s_similar(khala_tier_t *t, const float *q, uint32_t dim, float min_sim, uint32_t k,
                     khala_tier_match_t *out, uint32_t *n) {
    stier_t *s = ST(t);
    *n = 0;
    double norm = 0;
    for (uint32_t i = 0; q && i < dim; i++)
        norm += (double)q[i] * q[i];
    if (!q || dim == 0 || !(norm > 0) || !isfinite(norm)) {
        terr(s, "%s: similar: the query vector is %s", s->where,
             dim == 0 ? "empty" : "zero or not finite");
        return KHALA_EINVAL;
    }
    if (k == 0)
        return 0;
    int rc = khala__surreal_reach(s);
    if (rc)
        return khala__surreal_done(s, rc);
    int64_t now = wall_ms();
    json_t *vars = khala__surreal_vars_new(s, now), *jq = json_array();
    if (!vars || !jq || json_object_set_new(vars, "q", jq) ||
        json_object_set_new(vars, "dim", json_integer(dim)) ||
        json_object_set_new(vars, "min", json_real(min_sim)) ||
        json_object_set_new(vars, "et", json_integer(KHALA_TYPE_EMBEDDING))) {
        json_decref(vars);
        return khala__surreal_done(s, -ENOMEM);
    }
    for (uint32_t i = 0; i < dim; i++)
        json_array_append_new(jq, json_real(q[i]));
    char sql[512];
    if (s->dim > 0 && dim == s->dim)
        snprintf(sql, sizeof(sql),
                 "SELECT " ROW_FIELDS ", vector::similarity::cosine(vec, $q) AS sim FROM "
                 "%s WHERE vec <|%u,%u|> $q;",
                 s->table, k, k > KNN_EF ? k : KNN_EF);
    else
        snprintf(sql, sizeof(sql),
                 "SELECT " ROW_FIELDS ", vector::similarity::cosine(vec, $q) AS sim FROM "
                 "%s WHERE `type` = $et AND vec != NONE AND array::len(vec) = "
                 "$dim AND " LIVE " AND vector::similarity::cosine(vec, $q) >= $min ORDER BY "
                 "sim DESC LIMIT %u;",
                 s->table, k);
    json_t *res = NULL, *rows = NULL;
    if ((rc = khala__surreal_query_ok(s, sql, vars, true, 1, &res)) != 0)
        return khala__surreal_done(s, rc);
    khala__surreal_stmt(s, res, 0, &rows, NULL);
    size_t i;
    json_t *row;
    uint32_t m = 0;
    json_array_foreach(rows, i, row) {
        if (m >= k)
            break;
        json_t *js = json_object_get(row, "sim");
        if (!json_is_number(js))
            continue;
        double sim = json_number_value(js);
        if (sim < min_sim)
            continue;
        khala_tier_match_t mt = {0};
        uint8_t key[KHALA_KEY_MAX];
        size_t klen;
        if (row_key(row, key, sizeof(key), &klen) != 0 || row_decode(row, now, &mt.val) != 0 ||
            mt.val.type != KHALA_TYPE_EMBEDDING)
            continue;
        if (!(mt.key = malloc(klen))) {
            khala__tier_value_free(&mt.val);
            break;
        }
        memcpy(mt.key, key, klen);
        mt.klen = klen;
        mt.similarity = (float)sim;
        out[m++] = mt;
    }
    json_decref(res);
    qsort(out, m, sizeof(*out), match_cmp);
    *n = m;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Health, stats, tick                                                                          */
/* ------------------------------------------------------------------------------------------ */

static int s_health(khala_tier_t *t) {
    stier_t *s = ST(t);
    if (!s->ready || s->down)
        return khala__surreal_reach(s);
    khala_http_resp_t r;
    int rc = khala__http_request(s->http, "GET", "/health", NULL, 0, true, &r);
    if (rc != 0 || r.status != 200) {
        if (rc != 0)
            khala__surreal_mark_down(s);
        khala__surreal_http_fail(s, "GET /health", &r);
        khala__http_resp_free(&r);
        if (!s->down)
            khala__surreal_mark_down(s);
        return KHALA_ETIER;
    }
    khala__http_resp_free(&r);
    json_t *res = NULL;
    if ((rc = khala__surreal_query_ok(s, "RETURN 1;", NULL, true, 1, &res)) != 0) {
        if (!s->down)
            khala__surreal_mark_down(s);
        return KHALA_ETIER;
    }
    json_decref(res);
    return 0;
}

static void s_stats(khala_tier_t *t, khala_tier_stats_t *out) {
    stier_t *s = ST(t);
    *out = s->st;
    out->items = s->count;
    out->bytes = UINT64_MAX;
}

static void s_note_hits(khala_tier_t *t, const void *key, size_t klen, uint64_t hits) {
    stier_t *s = ST(t);
    if (!key || klen == 0 || klen > KHALA_KEY_MAX || hits == 0)
        return;
    char hex[HEXKEY_MAX];
    key_hex(key, klen, hex);
    khala__surreal_hit_add(s, hex, hits);
}

static void s_close(khala_tier_t *t) {
    stier_t *s = ST(t);
    if (!s)
        return;
    if (s->ready && !s->down)
        khala__surreal_hits_flush(s);
    khala__http_pool_close(s->http);
    free(s->hits);
    free(s);
}

static const khala_tier_ops_t surreal_ops = {
    .name = "surrealdb",
    .get = s_get,
    .mget = s_mget,
    .put = s_put,
    .mput = s_mput,
    .del = s_del,
    .scan = s_scan,
    .hot = s_hot,
    .invalidate = s_invalidate,
    .invalidate_step = s_invalidate_step,
    .health = s_health,
    .stats = s_stats,
    .tick = khala__surreal_tick,
    .note_hits = s_note_hits,
    .archive_get = s_archive_get,
    .similar = s_similar,
    .get_start = khala__tier_surreal_get_start,
    .poll_fd = khala__tier_surreal_poll_fd,
    .poll = khala__tier_surreal_poll,
    .close = s_close,
};

/* ------------------------------------------------------------------------------------------ */
/* Open                                                                                         */
/* ------------------------------------------------------------------------------------------ */

static bool ident_ok(const char *s, size_t max) {
    size_t n = strlen(s);
    if (n == 0 || n > max ||
        !((s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return false;
    return true;
}

/* A header value: printable ASCII, non-empty, short. */
static bool header_ok(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 128)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e)
            return false;
    return true;
}

/* Split url into base (scheme://host:port[/path]), user and password. */
static int url_split(const char *url, char *base, size_t cap, char **user, char **pass, char *err,
                     size_t errlen) {
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL, *query = NULL;
    int rc = KHALA_ECONFIG;
    if (!u)
        return khala__errbuf(err, errlen, -ENOMEM, "L3 (surrealdb): out of memory");
    if (curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK) {
        khala__errbuf(err, errlen, rc, "L3 (surrealdb): surrealdb_url '%.80s' is not a URL", url);
        goto out;
    }
    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
    curl_url_get(u, CURLUPART_HOST, &host, 0);
    curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT);
    curl_url_get(u, CURLUPART_PATH, &path, 0);
    curl_url_get(u, CURLUPART_QUERY, &query, 0);
    curl_url_get(u, CURLUPART_USER, user, CURLU_URLDECODE);
    curl_url_get(u, CURLUPART_PASSWORD, pass, CURLU_URLDECODE);
    if (!scheme || (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)) {
        khala__errbuf(err, errlen, rc,
                      "L3 (surrealdb): surrealdb_url '%.80s' must start with http:// or "
                      "https://",
                      url);
        goto out;
    }
    if (!host || !*host || query) {
        khala__errbuf(err, errlen, rc,
                      "L3 (surrealdb): surrealdb_url '%.80s' needs a host and no query", url);
        goto out;
    }
    size_t pl = path ? strlen(path) : 0;
    while (pl > 0 && path[pl - 1] == '/')
        pl--;
    int n = snprintf(base, cap, "%s://%s:%s%.*s", scheme, host, port ? port : "80", (int)pl,
                     path ? path : "");
    if (n < 0 || (size_t)n >= cap) {
        khala__errbuf(err, errlen, rc, "L3 (surrealdb): surrealdb_url is too long");
        goto out;
    }
    rc = 0;
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_free(query);
    if (rc) {
        curl_free(*user);
        curl_free(*pass);
        *user = *pass = NULL;
    }
    curl_url_cleanup(u);
    return rc;
}

int khala__tier_surreal_open(const khala_tier_surreal_opts_t *o, khala_tier_t **out, char *err,
                             size_t errlen) {
    KHALA_ASSERT(o && out);
    if (!o->url || !*o->url)
        return khala__errbuf(err, errlen, KHALA_ECONFIG, "L3 (surrealdb): no surrealdb_url");
    if (!o->table || !ident_ok(o->table, KHALA_TIER_SURREAL_TABLE_MAX))
        return khala__errbuf(err, errlen, KHALA_ECONFIG,
                             "L3 (surrealdb): surrealdb_table '%.80s' must be 1 to %u "
                             "characters of [A-Za-z0-9_], not starting with a digit",
                             o->table ? o->table : "", KHALA_TIER_SURREAL_TABLE_MAX);
    if (!o->ns || !header_ok(o->ns) || !o->db || !header_ok(o->db))
        return khala__errbuf(err, errlen, KHALA_ECONFIG,
                             "L3 (surrealdb): surrealdb_namespace and surrealdb_database must "
                             "be 1 to 128 printable ASCII characters");
    if (sodium_init() < 0)
        return khala__errbuf(err, errlen, -ENOMEM, "L3 (surrealdb): sodium_init failed");
    char base[KHALA_TIER_SURREAL_TABLE_MAX * 8];
    char *user = NULL, *pass = NULL;
    int rc = url_split(o->url, base, sizeof(base), &user, &pass, err, errlen);
    if (rc)
        return rc;
    stier_t *s = calloc(1, sizeof(*s));
    if (!s) {
        curl_free(user);
        curl_free(pass);
        return khala__errbuf(err, errlen, -ENOMEM, "L3 (surrealdb): out of memory");
    }
    s->tier.ops = &surreal_ops;
    s->tier.level = o->level;
    s->tier.healthy = 1;
    s->tier.impl = s;
    snprintf(s->table, sizeof(s->table), "%s", o->table);
    snprintf(s->archive, sizeof(s->archive), "%s_archive", o->table);
    const char *scheme_end = strstr(base, "://");
    snprintf(s->where, sizeof(s->where), "%s (surrealdb) %.120s",
             o->level == KHALA_LEVEL_L2 ? "L2" : "L3", scheme_end ? scheme_end + 3 : base);
    s->max_entries = o->max_entries;
    s->cleanup_interval_ms = o->cleanup_interval_ms;
    s->retention_ms = o->archive_retention_ms;
    s->batch = o->cleanup_batch ? o->cleanup_batch : KHALA_TIER_SURREAL_BATCH_DEFAULT;
    s->dim = o->embedding_dim;
    s->backoff_ms = BACKOFF_MIN_MS;
    s->count = UINT64_MAX;
    s->phase = CLEAN_IDLE;
    int64_t now = khala__sys_now_ms();
    s->clean_at = now + s->cleanup_interval_ms;
    s->hits_at = now + HITS_FLUSH_MS;

    char ns_h[160], db_h[160];
    snprintf(ns_h, sizeof(ns_h), "surreal-ns: %s", o->ns);
    snprintf(db_h, sizeof(db_h), "surreal-db: %s", o->db);
    const char *hdrs[] = {
        "Accept: application/json", "Content-Type: application/json", ns_h, db_h, "Expect:", NULL};
    khala_http_opts_t ho = {
        .base_url = base,
        .user = user,
        .pass = pass,
        .headers = hdrs,
        .timeout_ms = o->timeout_ms ? o->timeout_ms : KHALA_TIER_SURREAL_TIMEOUT_MS_DEFAULT,
        .pool_size = o->pool_size,
        .retries = HTTP_RETRIES,
    };
    char herr[128] = "";
    rc = khala__http_pool_open(&ho, &s->http, herr, sizeof(herr));
    curl_free(user);
    curl_free(pass);
    if (rc) {
        free(s);
        return khala__errbuf(err, errlen, rc == -ENOMEM ? -ENOMEM : KHALA_ECONFIG,
                             "L3 (surrealdb): %s", herr);
    }
    (void)khala__surreal_reach(s); /* unreachable is not an error of the open */
    if (err && errlen)
        snprintf(err, errlen, "%s", s->tier.err);
    *out = &s->tier;
    return 0;
}
