/*
 * The SurrealDB driver's insides, shared by its three files (not an API: daemon/tier_surreal.h
 * is): daemon/tier_surreal.c (the operations, rows and values, the open),
 * daemon/tier_surreal_rpc.c (the /rpc exchange, reachability, the schema) and
 * daemon/tier_surreal_clean.c (access counts, the cleanup pass, the tick). The design is in
 * daemon/tier_surreal.c's opening comment.
 */
#ifndef KHALA_DAEMON_TIER_SURREAL_IMPL_H
#define KHALA_DAEMON_TIER_SURREAL_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <jansson.h>

#include "errbuf.h"
#include "http_pool.h"
#include "khala/cache.h"
#include "tier_surreal.h"

/* Reconnect backoff: first delay, doubling to the cap. */
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 5000

/* Retries of an idempotent request on a transport error (daemon/http_pool.h). */
#define HTTP_RETRIES 2u

/* Access counts: flush period and distinct keys counted between flushes. */
#define HITS_FLUSH_MS 1000
#define HITS_MAX 4096u

/* scan()'s default batch; invalidate()'s step size. */
#define SCAN_COUNT_DEFAULT 256u
#define INVALIDATE_BATCH 1000u

/* HNSW search's candidate list (EF of `<|k,EF|>`), at least k. */
#define KNN_EF 64u

/* Most keys of one mget / mput request (a bigger batch is split). */
#define BATCH_MAX 512u

/* Most bytes of one mput request body: under the server's default limit of /rpc bodies (4 MiB,
 * SURREAL_HTTP_MAX_RPC_BODY_SIZE), with room for the JSON around the values. */
#define BODY_BUDGET (3584u * 1024u)

/* The THROW marker of a put that lost on version. */
#define EVERSION_MARK "khala:eversion"

/* Hex of the longest key and its NUL. */
#define HEXKEY_MAX (2u * KHALA_KEY_MAX + 1u)

/* Cleanup phases (daemon/tier_surreal.c, "Cleanup"). */
enum { CLEAN_IDLE, CLEAN_EXPIRED, CLEAN_COUNT, CLEAN_EVICT, CLEAN_ARCHIVE };

typedef struct hit {
    char key[HEXKEY_MAX];
    uint64_t n;
} hit_t;

/* The driver. Everything is the loop thread's (tier.h: drivers are called from it only). */
typedef struct stier {
    khala_tier_t tier; /* first: the caller's khala_tier_t * is this allocation */

    /* Immutable after open. */
    char table[KHALA_TIER_SURREAL_TABLE_MAX + 1];
    char archive[KHALA_TIER_SURREAL_TABLE_MAX + sizeof("_archive")];
    char where[160]; /* "L3 (surrealdb) host:port" for messages */
    uint64_t max_entries;
    int64_t cleanup_interval_ms, retention_ms;
    uint32_t batch, dim;
    khala_http_pool_t *http;

    /* Reachability. */
    bool ready;         /* version known and schema defined */
    bool down;          /* the last request failed for transport */
    const char *rec;    /* "type::thing" or "type::record", once ready */
    int64_t retry_at;   /* monotonic ms: no attempt before, while down or not ready */
    int64_t backoff_ms; /* the next delay */

    /* Background requests (submitted by tick, answered through the pool's callbacks). */
    bool clean_inflight; /* a cleanup step is in flight */
    size_t clean_nstmt;  /* its statements */
    bool hits_inflight;  /* an access-count flush is in flight */
    char hits_sql[128];  /* the flush statement (REC is known once ready) */

    /* Cleanup. */
    int phase;
    int64_t clean_at;  /* monotonic ms the next pass starts */
    uint64_t count;    /* rows at the last count; UINT64_MAX before the first */
    uint64_t to_evict; /* rows phase CLEAN_EVICT still moves */

    /* Access counts. */
    hit_t *hits;     /* HITS_MAX entries, allocated on first use */
    size_t nhits;    /* used */
    int64_t hits_at; /* monotonic ms of the next flush */

    khala_tier_stats_t st;
} stier_t;

static inline stier_t *ST(khala_tier_t *t) {
    return (stier_t *)t;
}

/* Describe a failure in the tier's message buffer. */
#define terr(s, ...) khala__errbuf_set((s)->tier.err, sizeof((s)->tier.err), __VA_ARGS__)

/* The wall clock in ms (CLOCK_REALTIME): expiry is shared with other hosts and outlives khalad. */
static inline int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A growable string for SQL text; oom set (and the text dropped) when memory ran out. */
/* A growable string for SQL text                                                              */
/* ------------------------------------------------------------------------------------------ */

typedef struct sbuf {
    char *s;
    size_t len, cap;
    bool oom;
} sbuf_t;

/* ---- daemon/tier_surreal_rpc.c ----------------------------------------------------------- */

/* Append printf-formatted text to b. */
void khala__surreal_sb_add(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The server did not answer: down, next attempt after the backoff (which doubles). */
void khala__surreal_mark_down(stier_t *s);
/* Describe a failed HTTP exchange in t->err; KHALA_ETIER. */
int khala__surreal_http_fail(stier_t *s, const char *what, const khala_http_resp_t *r);
/* The /rpc body of a query (vars stolen); malloc'ed, or NULL (-ENOMEM, t->err set). */
char *khala__surreal_query_body(stier_t *s, const char *sql, json_t *vars);
/* Judge the answer to a query of blen bytes (r released); on 0, *out is its statement list. */
int khala__surreal_query_reply(stier_t *s, khala_http_resp_t *r, size_t blen, json_t **out);
/* Run one /rpc query and wait: 0 (*out: the statement results), KHALA_ETIER, KHALA_EREFUSED,
 * -ENOMEM. */
int khala__surreal_query(stier_t *s, const char *sql, json_t *vars, bool idempotent, json_t **out);
/* Statement i's status: 0 (*val), KHALA_EREFUSED (*msg), KHALA_ETIER. */
int khala__surreal_stmt(stier_t *s, const json_t *results, size_t i, json_t **val,
                        const char **msg);
/* Run a query whose nstmt statements must all be OK (an ERR is KHALA_ETIER). */
int khala__surreal_query_ok(stier_t *s, const char *sql, json_t *vars, bool idempotent,
                            size_t nstmt, json_t **out);
/* The variables every statement uses: $tb, $atb, $now. */
json_t *khala__surreal_vars_new(stier_t *s, int64_t now_wall);
/* Make the level usable (version, schema, or a reconnect) within the backoff: 0 or ETIER. */
int khala__surreal_reach(stier_t *s);
/* The code an operation returns, counted in the error counter when it is one. */
int khala__surreal_done(stier_t *s, int rc);

/* ---- daemon/tier_surreal_clean.c --------------------------------------------------------- */

/* Count n reads of the key whose hex is hex (flushed by tick). */
void khala__surreal_hit_add(stier_t *s, const char *hex, uint64_t n);
/* Flush the access counts now and wait. */
void khala__surreal_hits_flush(stier_t *s);
/* The tier's tick: progress background requests, submit the flush and the next cleanup step. */
void khala__surreal_tick(khala_tier_t *t, int64_t now_ms);

#endif /* KHALA_DAEMON_TIER_SURREAL_IMPL_H */
