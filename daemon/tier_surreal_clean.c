/*
 * The SurrealDB driver's periodic work: the access counts (gets and note_hits, flushed once a
 * second) and the cleanup pass (expired rows, max_entries into the archive, the archive's
 * retention), both submitted in the background from tick through the pool's non-blocking half.
 * The design ("Cleanup") is in daemon/tier_surreal.c's opening comment.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "debug.h"
#include "khala/error.h"
#include "sys.h"
#include "tier_surreal_impl.h"

/* ------------------------------------------------------------------------------------------ */
/* Access counts                                                                                */
/* ------------------------------------------------------------------------------------------ */

void khala__surreal_hit_add(stier_t *s, const char *hex, uint64_t n) {
    for (size_t i = 0; i < s->nhits; i++) {
        if (strcmp(s->hits[i].key, hex) == 0) {
            s->hits[i].n += n;
            return;
        }
    }
    if (!s->hits && !(s->hits = calloc(HITS_MAX, sizeof(*s->hits))))
        return;
    if (s->nhits >= HITS_MAX)
        return; /* a sample for warming and eviction, not an audit */
    snprintf(s->hits[s->nhits].key, HEXKEY_MAX, "%s", hex);
    s->hits[s->nhits++].n = n;
}

/* The access counts gathered since the last flush as the variables of s->hits_sql ($h: a list
 * of {k, n}); the table is emptied. NULL when there is nothing (or on -ENOMEM). */
static json_t *hits_vars(stier_t *s) {
    if (s->nhits == 0)
        return NULL;
    json_t *vars = khala__surreal_vars_new(s, wall_ms()), *arr = json_array();
    if (!vars || !arr || json_object_set_new(vars, "h", arr)) {
        json_decref(vars);
        return NULL;
    }
    for (size_t i = 0; i < s->nhits; i++)
        json_array_append_new(
            arr, json_pack("{s:s, s:I}", "k", s->hits[i].key, "n", (json_int_t)s->hits[i].n));
    s->nhits = 0;
    return vars;
}

/* Flush the access counts now (hot() and close need them in the table). */
void khala__surreal_hits_flush(stier_t *s) {
    json_t *vars = hits_vars(s);
    if (vars)
        (void)khala__surreal_query_ok(s, s->hits_sql, vars, false, 1, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Cleanup                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* The statements of one step of the cleanup pass's phase (see "Cleanup" above) into *sql
 * (malloc'ed) and *vars; *nstmt gets how many. 0, or -ENOMEM. */
static int clean_build(stier_t *s, char **sql, json_t **vars, size_t *nstmt) {
    json_t *v = khala__surreal_vars_new(s, wall_ms());
    sbuf_t b = {0};
    if (!v)
        return -ENOMEM;
    switch (s->phase) {
        case CLEAN_EXPIRED:
        case CLEAN_ARCHIVE:
            khala__surreal_sb_add(
                &b,
                "LET $ids = (SELECT VALUE id FROM %s WHERE expires > 0 AND expires <= $now "
                "LIMIT %u); DELETE $ids RETURN NONE; RETURN array::len($ids);",
                s->phase == CLEAN_EXPIRED ? s->table : s->archive, s->batch);
            *nstmt = 3;
            break;
        case CLEAN_COUNT:
            khala__surreal_sb_add(&b, "SELECT count() AS n FROM %s GROUP ALL;", s->table);
            *nstmt = 1;
            break;
        case CLEAN_EVICT: {
            uint64_t m = s->to_evict < s->batch ? s->to_evict : s->batch;
            if (json_object_set_new(v, "n", json_integer((json_int_t)m)) ||
                json_object_set_new(
                    v, "aexp",
                    json_integer(json_integer_value(json_object_get(v, "now")) + s->retention_ms)))
                b.oom = true;
            khala__surreal_sb_add(
                &b, "LET $rows = (SELECT * FROM %s ORDER BY hits ASC, created ASC LIMIT $n);",
                s->table);
            if (s->retention_ms > 0)
                khala__surreal_sb_add(
                    &b,
                    "FOR $r IN $rows { UPSERT %s($atb, $r.key) SET key = $r.key, `type` = "
                    "$r.`type`, version = $r.version, data = $r.data, created = $r.created, "
                    "hits = $r.hits, vec = $r.vec, expires = $aexp RETURN NONE; DELETE "
                    "$r.id RETURN NONE; };",
                    s->rec);
            else
                khala__surreal_sb_add(&b, "FOR $r IN $rows { DELETE $r.id RETURN NONE; };");
            khala__surreal_sb_add(&b, "RETURN array::len($rows);");
            *nstmt = 3;
            break;
        }
        default:
            b.oom = true;
            break;
    }
    if (b.oom) {
        json_decref(v);
        free(b.s);
        return -ENOMEM;
    }
    *sql = b.s;
    *vars = v;
    return 0;
}

/* Apply the answer of the step of the current phase: counters, and the next phase. */
static void clean_apply(stier_t *s, const json_t *res) {
    json_t *val = NULL;
    uint64_t n;
    switch (s->phase) {
        case CLEAN_EXPIRED:
        case CLEAN_ARCHIVE:
            khala__surreal_stmt(s, res, 2, &val, NULL);
            n = json_is_integer(val) ? (uint64_t)json_integer_value(val) : 0;
            if (s->phase == CLEAN_EXPIRED)
                s->st.expirations += n;
            if (n < s->batch)
                s->phase = s->phase == CLEAN_EXPIRED ? CLEAN_COUNT : CLEAN_IDLE;
            return;
        case CLEAN_COUNT: {
            khala__surreal_stmt(s, res, 0, &val, NULL);
            json_t *jn = json_object_get(json_array_get(val, 0), "n");
            s->count = json_is_integer(jn) ? (uint64_t)json_integer_value(jn) : 0;
            s->to_evict =
                s->max_entries && s->count > s->max_entries ? s->count - s->max_entries : 0;
            s->phase = s->to_evict ? CLEAN_EVICT : CLEAN_ARCHIVE;
            return;
        }
        case CLEAN_EVICT:
            khala__surreal_stmt(s, res, 2, &val, NULL);
            n = json_is_integer(val) ? (uint64_t)json_integer_value(val) : 0;
            s->st.evictions += n;
            s->count -= n < s->count ? n : s->count;
            s->to_evict -= n < s->to_evict ? n : s->to_evict;
            if (n == 0 || s->to_evict == 0)
                s->phase = CLEAN_ARCHIVE;
            return;
        default:
            return;
    }
}

/* The answer of a background request (a cleanup step or an access-count flush). A failed step
 * is counted and tried again at the next tick (the phase does not move). */
static void background_done(stier_t *s, khala_http_resp_t *resp, size_t nstmt, bool cleanup) {
    json_t *res = NULL;
    if (resp->rc == -ECANCELED) { /* the tier is closing */
        khala__http_resp_free(resp);
        return;
    }
    if (khala__surreal_query_reply(s, resp, 0, &res) != 0) {
        s->st.errors++;
        return;
    }
    for (size_t i = 0; i < nstmt; i++) {
        if (khala__surreal_stmt(s, res, i, NULL, NULL) != 0) {
            s->st.errors++;
            json_decref(res);
            return;
        }
    }
    if (cleanup)
        clean_apply(s, res);
    json_decref(res);
}

static void clean_done(void *arg, khala_http_resp_t *resp) {
    stier_t *s = arg;
    s->clean_inflight = false;
    background_done(s, resp, s->clean_nstmt, true);
}

static void hits_done(void *arg, khala_http_resp_t *resp) {
    stier_t *s = arg;
    s->hits_inflight = false;
    background_done(s, resp, 1, false);
}

/* Submit sql with vars (stolen) as a background request; 0 or -ENOMEM. */
static int background_submit(stier_t *s, const char *sql, json_t *vars, bool idempotent,
                             khala_http_done_fn fn) {
    char *body = khala__surreal_query_body(s, sql, vars);
    if (!body)
        return -ENOMEM;
    int rc = khala__http_submit(s->http, "POST", "/rpc", body, strlen(body), idempotent, fn, s);
    free(body);
    return rc;
}

void khala__surreal_tick(khala_tier_t *t, int64_t now_ms) {
    stier_t *s = ST(t);
    /* Background requests progress here without waiting (their answers apply now). */
    khala__http_progress(s->http);
    if (!s->ready || s->down)
        return; /* health() brings it back; the tick never waits on a dead server */
    if (now_ms >= s->hits_at && s->nhits > 0 && !s->hits_inflight) {
        s->hits_at = now_ms + HITS_FLUSH_MS;
        json_t *vars = hits_vars(s);
        if (vars && background_submit(s, s->hits_sql, vars, false, hits_done) == 0)
            s->hits_inflight = true;
    }
    if (s->phase == CLEAN_IDLE && s->cleanup_interval_ms > 0 && now_ms >= s->clean_at) {
        s->clean_at = now_ms + s->cleanup_interval_ms;
        s->phase = CLEAN_EXPIRED;
    }
    if (s->phase != CLEAN_IDLE && !s->clean_inflight) {
        char *sql = NULL;
        json_t *vars = NULL;
        size_t n = 0;
        if (clean_build(s, &sql, &vars, &n) == 0) {
            if (background_submit(s, sql, vars, true, clean_done) == 0) {
                s->clean_inflight = true;
                s->clean_nstmt = n;
            }
            free(sql);
        }
    }
}
