/*
 * The SurrealDB driver's /rpc exchange, reachability and schema: how a query is sent and its
 * answer judged (every statement's status), the backoff of a level that does not answer, and
 * the open's version and DEFINE statements. The design is in daemon/tier_surreal.c's opening
 * comment; daemon/tier_surreal_impl.h declares what the driver's other files use.
 */
#include <stdarg.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "debug.h"
#include "khala/error.h"
#include "sys.h"
#include "tier_surreal_impl.h"

void khala__surreal_sb_add(sbuf_t *b, const char *fmt, ...) {
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if (b->s && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap : 256;
        while (cap <= b->len + (size_t)n)
            cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->oom = true;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Requests                                                                                     */
/* ------------------------------------------------------------------------------------------ */

void khala__surreal_mark_down(stier_t *s) {
    s->down = true;
    s->retry_at = khala__sys_now_ms() + s->backoff_ms;
    s->backoff_ms = s->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : s->backoff_ms * 2;
}

static void mark_up(stier_t *s) {
    if (s->down)
        s->st.reconnects++;
    s->down = false;
    s->backoff_ms = BACKOFF_MIN_MS;
}

/* Describe a failed HTTP exchange in t->err; KHALA_ETIER. */
int khala__surreal_http_fail(stier_t *s, const char *what, const khala_http_resp_t *r) {
    if (r->rc != 0) {
        terr(s, "%s: %s: %s (%s); next attempt in %lld ms", s->where, what,
             r->rc == -ETIMEDOUT      ? "timed out"
             : r->rc == -ECONNREFUSED ? "connection refused"
                                      : "transport error",
             r->err, (long long)s->backoff_ms);
    } else if (r->status == 401 || r->status == 403) {
        terr(s,
             "%s: authentication failed (HTTP %ld): check the user and password of "
             "surrealdb_url",
             s->where, r->status);
    } else {
        terr(s, "%s: %s: HTTP %ld: %.120s", s->where, what, r->status,
             r->body ? r->body : "(no body)");
    }
    return KHALA_ETIER;
}

/*
 * Run sql with vars (stolen; NULL = none) as one /rpc query. On 0, *out is the reply's array of
 * statement results, one per statement (the caller releases it). KHALA_ETIER (transport, a
 * status other than 200, a reply of another shape, an RPC error: the request as a whole
 * failed) or -ENOMEM, with t->err set. A transport failure marks the tier down.
 */
/* The /rpc body of sql with vars (stolen; NULL = none): malloc'ed text, or NULL (-ENOMEM, with
 * t->err set). */
char *khala__surreal_query_body(stier_t *s, const char *sql, json_t *vars) {
    json_t *req = json_pack("{s:i, s:s, s:[s, o]}", "id", 1, "method", "query", "params", sql,
                            vars ? vars : json_object());
    char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    if (!body)
        terr(s, "%s: out of memory", s->where);
    return body;
}

/* Judge the answer r to a query of blen bytes (r is released here); on 0, *out as
 * khala__surreal_query(). */
int khala__surreal_query_reply(stier_t *s, khala_http_resp_t *r, size_t blen, json_t **out) {
    int rc = r->rc;
    if (rc == -ENOMEM) {
        khala__http_resp_free(r);
        terr(s, "%s: out of memory", s->where);
        return -ENOMEM;
    }
    if (rc == 0 && r->status == 413) {
        /* The server is up and refuses this one request (tier.h: KHALA_EREFUSED). */
        terr(s,
             "%s: a request of %zu bytes is above the server's body limit "
             "(SURREAL_HTTP_MAX_RPC_BODY_SIZE)",
             s->where, blen);
        khala__http_resp_free(r);
        return KHALA_EREFUSED;
    }
    if (rc != 0 || r->status != 200) {
        if (rc != 0)
            khala__surreal_mark_down(s);
        rc = khala__surreal_http_fail(s, "query", r);
        khala__http_resp_free(r);
        return rc;
    }
    json_error_t je;
    json_t *reply = json_loadb(r->body ? r->body : "", r->len, 0, &je);
    khala__http_resp_free(r);
    json_t *res = json_object_get(reply, "result"), *err = json_object_get(reply, "error");
    if (json_is_object(err)) {
        json_t *m = json_object_get(err, "message");
        const char *msg = json_is_string(m) ? json_string_value(m) : "(no message)";
        if (strstr(msg, "uthenticat") || strstr(msg, "ermission") || strstr(msg, "IAM"))
            terr(s, "%s: authentication failed: %.160s", s->where, msg);
        else
            terr(s, "%s: the server refused the query: %.160s", s->where, msg);
        json_decref(reply);
        return KHALA_ETIER;
    }
    if (!json_is_array(res)) {
        terr(s, "%s: a reply that is not a list of statement results: %.80s", s->where,
             reply ? je.text : "not JSON");
        json_decref(reply);
        return KHALA_ETIER;
    }
    json_incref(res);
    json_decref(reply);
    *out = res;
    return 0;
}

/*
 * Run sql with vars (stolen; NULL = none) as one /rpc query. On 0, *out is the reply's array of
 * statement results, one per statement (the caller releases it). KHALA_ETIER (transport, a
 * status other than 200, a reply of another shape, an RPC error: the request as a whole
 * failed), KHALA_EREFUSED (413: the body is above the server's limit) or -ENOMEM, with t->err
 * set. A transport failure marks the tier down.
 */
int khala__surreal_query(stier_t *s, const char *sql, json_t *vars, bool idempotent, json_t **out) {
    KHALA_ASSERT(s->http && sql && out);
    char *body = khala__surreal_query_body(s, sql, vars);
    if (!body)
        return -ENOMEM;
    khala_http_resp_t r;
    size_t blen = strlen(body);
    khala__http_request(s->http, "POST", "/rpc", body, blen, idempotent, &r);
    free(body);
    return khala__surreal_query_reply(s, &r, blen, out);
}

/* Statement i of results: 0 and *val (borrowed) when its status is OK; KHALA_EREFUSED with
 * *msg (borrowed) when ERR; KHALA_ETIER when absent or of another shape. */
int khala__surreal_stmt(stier_t *s, const json_t *results, size_t i, json_t **val,
                        const char **msg) {
    json_t *o = json_array_get(results, i);
    json_t *st = json_object_get(o, "status"), *res = json_object_get(o, "result");
    if (!json_is_string(st)) {
        terr(s, "%s: the reply lacks the result of statement %zu", s->where, i + 1);
        return KHALA_ETIER;
    }
    if (strcmp(json_string_value(st), "OK") == 0) {
        if (val)
            *val = res;
        return 0;
    }
    const char *m = json_is_string(res) ? json_string_value(res) : "(no message)";
    if (msg)
        *msg = m;
    terr(s, "%s: statement %zu failed: %.160s", s->where, i + 1, m);
    return KHALA_EREFUSED;
}

/* Run sql and require every statement OK; *out (may be NULL) gets the results. KHALA_ETIER for
 * an ERR here: these are the driver's own statements, which fail only when the level cannot
 * serve (a missing table, a changed schema, a conflict). */
int khala__surreal_query_ok(stier_t *s, const char *sql, json_t *vars, bool idempotent,
                            size_t nstmt, json_t **out) {
    json_t *res = NULL;
    int rc = khala__surreal_query(s, sql, vars, idempotent, &res);
    if (rc)
        return rc;
    for (size_t i = 0; i < nstmt; i++) {
        if ((rc = khala__surreal_stmt(s, res, i, NULL, NULL)) != 0) {
            json_decref(res);
            return KHALA_ETIER;
        }
    }
    if (out)
        *out = res;
    else
        json_decref(res);
    return 0;
}

/* The variables every statement uses: $tb, $atb, $now. NULL on -ENOMEM. */
json_t *khala__surreal_vars_new(stier_t *s, int64_t now_wall) {
    return json_pack("{s:s, s:s, s:I}", "tb", s->table, "atb", s->archive, "now",
                     (json_int_t)now_wall);
}

/* ------------------------------------------------------------------------------------------ */
/* Open, schema, reachability                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* GET /version: "surrealdb-X.Y.Z" picks the record-id function. */
static int learn_version(stier_t *s) {
    khala_http_resp_t r;
    int rc = khala__http_request(s->http, "GET", "/version", NULL, 0, true, &r);
    if (rc != 0 || r.status != 200) {
        if (rc != 0)
            khala__surreal_mark_down(s);
        rc = khala__surreal_http_fail(s, "GET /version", &r);
        khala__http_resp_free(&r);
        return rc;
    }
    const char *b = r.body ? r.body : "";
    const char *d = strchr(b, '-');
    long major = d ? strtol(d + 1, NULL, 10) : 0;
    if (!d || major <= 0) {
        terr(s, "%s: GET /version answered '%.40s', not surrealdb-X.Y.Z", s->where, b);
        khala__http_resp_free(&r);
        return KHALA_ETIER;
    }
    if (major < 2) {
        terr(s, "%s: the server is %.40s; the driver needs SurrealDB 2.0 or newer (UPSERT)",
             s->where, b);
        khala__http_resp_free(&r);
        return KHALA_ETIER;
    }
    s->rec = major >= 3 ? "type::record" : "type::thing";
    snprintf(s->hits_sql, sizeof(s->hits_sql),
             "FOR $h IN $h { UPDATE %s($tb, $h.k) SET hits += $h.n RETURN NONE; };", s->rec);
    khala__http_resp_free(&r);
    return 0;
}

/* Define the two tables (idempotent). */
static int define_schema(stier_t *s) {
    sbuf_t b = {0};
    const char *tabs[2] = {s->table, s->archive};
    for (int i = 0; i < 2; i++) {
        const char *t = tabs[i];
        khala__surreal_sb_add(&b,
                              "DEFINE TABLE IF NOT EXISTS %s SCHEMAFULL;"
                              "DEFINE FIELD IF NOT EXISTS key ON %s TYPE string;"
                              "DEFINE FIELD IF NOT EXISTS `type` ON %s TYPE int;"
                              "DEFINE FIELD IF NOT EXISTS version ON %s TYPE int;"
                              "DEFINE FIELD IF NOT EXISTS data ON %s TYPE string;"
                              "DEFINE FIELD IF NOT EXISTS created ON %s TYPE int;"
                              "DEFINE FIELD IF NOT EXISTS expires ON %s TYPE option<int>;"
                              "DEFINE FIELD IF NOT EXISTS hits ON %s TYPE int;"
                              "DEFINE FIELD IF NOT EXISTS vec ON %s TYPE option<array<float>>;"
                              "DEFINE INDEX IF NOT EXISTS %s_expires ON %s FIELDS expires;"
                              "DEFINE INDEX IF NOT EXISTS %s_type ON %s FIELDS `type`;"
                              "DEFINE INDEX IF NOT EXISTS %s_value ON %s FIELDS hits, created;",
                              t, t, t, t, t, t, t, t, t, t, t, t, t, t, t);
    }
    size_t n = 24;
    if (s->dim > 0) {
        khala__surreal_sb_add(
            &b,
            "DEFINE INDEX IF NOT EXISTS %s_vec ON %s FIELDS vec HNSW DIMENSION %u DIST "
            "COSINE;",
            s->table, s->table, s->dim);
        n++;
    }
    if (b.oom) {
        free(b.s);
        terr(s, "%s: out of memory", s->where);
        return -ENOMEM;
    }
    int rc = khala__surreal_query_ok(s, b.s, NULL, true, n, NULL);
    free(b.s);
    if (rc == KHALA_ETIER && !s->down && !strstr(s->tier.err, "authentication")) {
        char cause[sizeof(s->tier.err)];
        size_t skip = strlen(s->where) + 2; /* the cause, without "<where>: " */
        snprintf(cause, sizeof(cause), "%s",
                 strlen(s->tier.err) > skip ? s->tier.err + skip : s->tier.err);
        terr(s, "%s: defining the tables %s and %s failed: %s", s->where, s->table, s->archive,
             cause);
    }
    return rc;
}

/* Make the level usable if it is not: within the backoff, learn the version, define the schema.
 * 0 when ready and up; KHALA_ETIER (t->err says why) otherwise. */
int khala__surreal_reach(stier_t *s) {
    if (s->ready && !s->down)
        return 0;
    int64_t now = khala__sys_now_ms();
    if (now < s->retry_at)
        return KHALA_ETIER; /* t->err still says why and when */
    int rc = 0;
    if (!s->ready) {
        if ((rc = learn_version(s)) == 0 && (rc = define_schema(s)) == 0)
            s->ready = true;
    } else {
        json_t *res = NULL;
        if ((rc = khala__surreal_query_ok(s, "RETURN 1", NULL, true, 1, &res)) == 0)
            json_decref(res);
    }
    if (rc) {
        if (!s->down)
            khala__surreal_mark_down(
                s); /* an answer that is not a usable level: try again later too */
        return KHALA_ETIER;
    }
    mark_up(s);
    s->tier.err[0] = '\0';
    return 0;
}

/* The code an operation returns, counted. */
int khala__surreal_done(stier_t *s, int rc) {
    if (rc == KHALA_ETIER || rc == KHALA_EREFUSED || rc == -ENOMEM)
        s->st.errors++;
    return rc;
}
