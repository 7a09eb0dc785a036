/*
 * khala-bench predict: does predictive warming (daemon/predict.c) raise the L1 hit ratio on a
 * real trace, and at what cost in L2 reads?
 *
 * The L1 is the real one, driven as `khala-bench replay` drives it (replay.c): this process is
 * the writer (khala__l1_open, max_items = capacity, an arena large enough that only the item
 * count binds, so each object takes one slot) and a reader (khala_cache_open on the same name).
 * Per request: khala_cache_get of the 8-byte object id; on a miss, khala__l1_put of a 16-byte
 * value, as khalad promotes what L2 returned. khala__l1_maintain runs every --maintain-every
 * requests. The policy is therefore exactly the L1's S3-FIFO, hit rings included.
 *
 * With prediction, each miss is also what khalad would see: the id goes to
 * khala__predict_observe on one stream (the traces carry no client id, so the whole trace is
 * one connection's sequence of misses), after the demand put. Each returned hint whose
 * confidence reaches the threshold and whose key is absent from the L1 (khala__l1_find: the
 * writer's lookup, which does not count as a hit) is put as a prefetch: one extra L2 read,
 * assuming L2 holds every key. Hits on the L1 are never shown to the predictor, as in khalad.
 *
 * Accounting per object (ids interned to dense indices): a flag "in L1 because of a prefetch,
 * not hit since". A hit on a flagged object counts the prefetch as useful and clears the flag; a
 * miss clears it too (the prefetched copy was evicted unused), as does the demand put. So
 * precision = useful prefetches / prefetches, and a hit counted useful is a hit that the
 * prefetch made (the object was absent when prefetched and would have missed without it, up to
 * the policy's second-order changes, which the hit ratio itself measures).
 *
 * Each replay runs in a forked child (fresh L1, fresh predictor, results through a shared
 * mapping). A process that opens and closes a khala_cache_t again and again reads freed memory
 * today: khala_cache_open leaves the handle's id at 0, so the per-thread cache of the last
 * handle's thread state (lib/client.c, ts_get) matches the next handle too. One handle per
 * process, as replay.c uses, is unaffected.
 *
 * For each capacity (1 %, 5 % and 10 % of the distinct objects, or --capacity-items) the trace
 * is replayed without prediction, then with predictors of three sizes: as many keys as the L1
 * holds, ten times that, and one key per distinct object (a table that never forgets: an upper
 * bound of what a bounded table can do); each at the predictor's own rule (>= 2 successions
 * and >= 50 %), and the largest also at a stricter 75 %.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "predict.h"
#include "bench.h"
#include "khala/cache.h"
#include "l1_table.h"

/* Successors kept per key by the predictor under test. */
#define PER_KEY 4u
/* Hints asked per miss (the rule lets at most two through). */
#define MAX_HINTS 4u

/* One replay's outcome. */
typedef struct pr_result {
    uint64_t hits;       /* requests answered by the L1 */
    uint64_t prefetches; /* hints put into the L1: each one extra L2 read */
    uint64_t useful;     /* prefetched objects hit before they were evicted */
} pr_result_t;

/* Ids to dense indices 0..objects-1, in order of first appearance: open addressing. */
typedef struct id_map {
    uint64_t mask; /* slots - 1 */
    uint64_t *keys;
    uint32_t *vals;
    uint8_t *used;
} id_map_t;

static void id_map_free(id_map_t *m) {
    free(m->keys);
    free(m->vals);
    free(m->used);
}

static uint64_t id_slot(const id_map_t *m, uint64_t id) {
    uint64_t h = XXH3_64bits(&id, sizeof(id)) & m->mask;
    while (m->used[h] && m->keys[h] != id)
        h = (h + 1) & m->mask;
    return h;
}

/* Build the map of ids and dense[i] = index of ids[i]; returns the distinct count, or
 * UINT64_MAX when out of memory. */
static uint64_t intern(id_map_t *m, const uint64_t *ids, uint64_t n, uint32_t *dense) {
    uint64_t cap = 16, objects = 0;
    while (cap < n * 2)
        cap <<= 1;
    m->mask = cap - 1;
    m->keys = malloc(cap * sizeof(uint64_t));
    m->vals = malloc(cap * sizeof(uint32_t));
    m->used = calloc(cap, 1);
    if (!m->keys || !m->vals || !m->used)
        return UINT64_MAX;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t h = id_slot(m, ids[i]);
        if (!m->used[h]) {
            m->used[h] = 1;
            m->keys[h] = ids[i];
            m->vals[h] = (uint32_t)objects++;
        }
        dense[i] = m->vals[h];
    }
    return objects;
}

/* One replay ---------------------------------------------------------------------------------*/

/* Replay ids through a fresh L1 of `capacity` items; with pred != NULL, observe every miss and
 * prefetch the hints of at least min_pct confidence. m maps ids to the dense indices of flag,
 * which has one byte per object. */
static int replay(const bench_opts_t *o, const uint64_t *ids, const uint32_t *dense, uint64_t n,
                  const id_map_t *m, uint32_t capacity, khala_predict_t *pred, uint32_t min_pct,
                  uint8_t *flag, uint64_t objects, pr_result_t *out) {
    khala_l1_t *t;
    khala_cache_t *c;
    static const uint8_t value[BENCH_REPLAY_VALUE] = "khala-bench-val";
    uint8_t buf[BENCH_REPLAY_VALUE];
    int ret = -1, rc;
    memset(out, 0, sizeof(*out));
    memset(flag, 0, objects);
    if (bench_replay_l1_open("predict", capacity, &t, &c) != 0)
        return -1;
    for (uint64_t i = 0; i < n; i++) {
        size_t len;
        rc = khala_cache_get(c, &ids[i], sizeof(ids[i]), buf, sizeof(buf), &len);
        if (rc == 0) {
            out->hits++;
            if (flag[dense[i]]) {
                out->useful++;
                flag[dense[i]] = 0;
            }
        } else if (rc == KHALA_ENOTFOUND) {
            flag[dense[i]] = 0;
            rc = khala__l1_put(t, &ids[i], sizeof(ids[i]), value, sizeof(value), 0, 0, NULL);
            if (rc != 0) {
                fprintf(stderr, "put at request %llu: %s\n", (unsigned long long)i,
                        khala__l1_errmsg(t));
                goto out;
            }
            if (pred) {
                khala_predict_hint_t h[MAX_HINTS];
                size_t nh = khala__predict_observe(pred, 0, &ids[i], sizeof(ids[i]), h, MAX_HINTS);
                for (size_t k = 0; k < nh; k++) {
                    const khala_item_t *it;
                    uint64_t id;
                    if (h[k].confidence_pct < min_pct || h[k].klen != sizeof(id))
                        continue;
                    memcpy(&id, h[k].key, sizeof(id));
                    if (khala__l1_find(t, &id, sizeof(id), &it) == 0)
                        continue;
                    rc = khala__l1_put(t, &id, sizeof(id), value, sizeof(value), 0, 0, NULL);
                    if (rc != 0) {
                        fprintf(stderr, "prefetch at request %llu: %s\n", (unsigned long long)i,
                                khala__l1_errmsg(t));
                        goto out;
                    }
                    out->prefetches++;
                    /* Every predicted id was observed, so it is in the trace and the map. */
                    flag[m->vals[id_slot(m, id)]] = 1;
                }
            }
        } else {
            fprintf(stderr, "get at request %llu: %d %s\n", (unsigned long long)i, rc,
                    khala_cache_errmsg(c));
            goto out;
        }
        if (o->maintain_every && (i + 1) % o->maintain_every == 0)
            (void)khala__l1_maintain(t);
    }
    ret = 0;
out:
    khala_cache_close(c);
    khala__l1_close(t, 1);
    return ret;
}

/* The subcommand ----------------------------------------------------------------------------*/

/* L1 capacities, in percent of the distinct objects, when --capacity-items is not given. */
static const uint32_t cap_pcts[] = {1, 5, 10};

/* Predictors compared at each capacity: as many keys as the L1 holds, ten times that, and every
 * object (a table that never forgets); the last also at a stricter threshold. */
static const struct {
    uint32_t times;   /* keys per L1 item; 0: one per distinct object */
    uint32_t min_pct; /* confidence threshold of the prefetches */
} runs[] = {
    {1, KHALA_PREDICT_MIN_PCT}, {10, KHALA_PREDICT_MIN_PCT}, {0, KHALA_PREDICT_MIN_PCT}, {0, 75}};

/* The trace and what is derived from it. */
typedef struct pr_trace {
    uint64_t *ids;    /* object ids, one per request */
    uint32_t *dense;  /* their dense indices */
    uint64_t n;       /* requests */
    uint64_t objects; /* distinct ids */
    id_map_t map;     /* id -> dense index */
    uint8_t *flag;    /* [objects], scratch of replay() */
} pr_trace_t;

/* `rounds` replays of one configuration (pred_keys 0: no prediction); the sums of the results,
 * the fewest and most hits of a round, and the predictor's memory. Each replay gets a fresh L1
 * and predictor, in a child process of its own: the L1's hash seed is random per segment, so
 * rounds differ slightly. */
typedef struct pr_agg {
    pr_result_t sum;
    uint64_t min_hits, max_hits, memory_bytes;
} pr_agg_t;

/* What a replay's child process hands back through a shared mapping. */
typedef struct pr_child {
    pr_result_t r;
    uint64_t memory_bytes; /* the predictor's */
    int ok;                /* 1 once the replay succeeded */
} pr_child_t;

/* One replay in a child process, so that every replay starts from a fresh process: the
 * client library keeps per-thread state keyed by its handle, and a process that opens and
 * closes handle after handle is not what it is built for (see the note at the top). */
static int replay_child(const bench_opts_t *o, pr_trace_t *tr, uint32_t cap, uint32_t pred_keys,
                        uint32_t min_pct, pr_child_t *out) {
    pr_child_t *sh =
        mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int status, ret = -1;
    if (sh == MAP_FAILED) {
        fprintf(stderr, "mmap: %s\n", strerror(errno));
        return -1;
    }
    memset(sh, 0, sizeof(*sh));
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "fork: %s\n", strerror(errno));
        goto out;
    }
    if (pid == 0) {
        khala_predict_t *p = NULL;
        khala_predict_stats_t st;
        int rc;
        if (pred_keys && (rc = khala__predict_new(pred_keys, PER_KEY, &p)) != 0) {
            fprintf(stderr, "khala__predict_new(%u): %s\n", pred_keys, strerror(-rc));
            _exit(1);
        }
        rc = replay(o, tr->ids, tr->dense, tr->n, &tr->map, cap, p, min_pct, tr->flag, tr->objects,
                    &sh->r);
        if (p) {
            khala__predict_stats(p, &st);
            sh->memory_bytes = st.memory_bytes;
            khala__predict_free(p);
        }
        sh->ok = rc == 0;
        _exit(rc == 0 ? 0 : 1);
    }
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (sh->ok) {
        *out = *sh;
        ret = 0;
    }
out:
    munmap(sh, sizeof(*sh));
    return ret;
}

static int run_config(const bench_opts_t *o, pr_trace_t *tr, uint32_t cap, uint32_t pred_keys,
                      uint32_t min_pct, pr_agg_t *agg) {
    memset(agg, 0, sizeof(*agg));
    agg->min_hits = UINT64_MAX;
    for (unsigned k = 0; k < o->rounds; k++) {
        pr_child_t c;
        if (replay_child(o, tr, cap, pred_keys, min_pct, &c) != 0)
            return -1;
        agg->memory_bytes = c.memory_bytes;
        agg->sum.hits += c.r.hits;
        agg->sum.prefetches += c.r.prefetches;
        agg->sum.useful += c.r.useful;
        agg->min_hits = c.r.hits < agg->min_hits ? c.r.hits : agg->min_hits;
        agg->max_hits = c.r.hits > agg->max_hits ? c.r.hits : agg->max_hits;
    }
    return 0;
}

/* Print one table row; returns the mean hit ratio in percent. */
static double print_row(const bench_opts_t *o, const pr_trace_t *tr, uint32_t cap,
                        uint32_t pred_keys, uint32_t min_pct, const pr_agg_t *a, double base) {
    double req = (double)tr->n * o->rounds;
    double h = 100.0 * (double)a->sum.hits / req;
    double spread = 100.0 * (double)(a->max_hits - a->min_hits) / (double)tr->n;
    printf("| %u | ", cap);
    if (pred_keys) {
        char prec[16] = "n/a"; /* no prefetch, no precision */
        if (a->sum.prefetches)
            snprintf(prec, sizeof(prec), "%.1f %%",
                     100.0 * (double)a->sum.useful / (double)a->sum.prefetches);
        printf("%u (%.1f MiB) | %u %% | %.2f %% | %+.2f pts | %.2f | %.4f | %s | %.4f |\n",
               pred_keys, (double)a->memory_bytes / (1 << 20), min_pct, h, h - base, spread,
               (double)a->sum.prefetches / req, prec,
               (req - (double)a->sum.hits + (double)a->sum.prefetches) / req);
    } else
        printf("none | | %.2f %% | | %.2f | 0 | | %.4f |\n", h, spread,
               (req - (double)a->sum.hits) / req);
    return h;
}

int bench_predict(const bench_opts_t *o) {
    pr_trace_t tr = {0};
    int ret = -1;
    int rc = bench_trace_load(o->trace, o->oracle, &tr.ids, &tr.n);
    if (rc != 0) {
        fprintf(stderr, "cannot read trace %s: %s\n", o->trace, strerror(-rc));
        return -1;
    }
    if (tr.n == 0 || tr.n > UINT32_MAX) {
        fprintf(stderr, "trace %s: %llu requests, want 1 to 2^32-1\n", o->trace,
                (unsigned long long)tr.n);
        goto out;
    }
    tr.dense = malloc(tr.n * sizeof(*tr.dense));
    if (!tr.dense || (tr.objects = intern(&tr.map, tr.ids, tr.n, tr.dense)) == UINT64_MAX ||
        !(tr.flag = malloc(tr.objects))) {
        fprintf(stderr, "out of memory\n");
        goto out;
    }
    uint32_t caps[sizeof(cap_pcts) / sizeof(cap_pcts[0])], ncaps = 0;
    if (o->capacity)
        caps[ncaps++] = o->capacity;
    else
        for (size_t k = 0; k < sizeof(cap_pcts) / sizeof(cap_pcts[0]); k++)
            caps[ncaps++] = (uint32_t)(tr.objects * cap_pcts[k] / 100);
    printf("trace %s: %llu requests, %llu objects; one stream (the trace has no client id); "
           "predictor: %u successors per key, sees only L1 misses; %u round(s) per row\n\n",
           o->trace, (unsigned long long)tr.n, (unsigned long long)tr.objects, PER_KEY, o->rounds);
    printf("| L1 items | predictor keys | min confidence | L1 hit ratio | change | spread (pts) "
           "| prefetches (extra L2 reads) / request | precision | L2 reads / request |\n");
    printf("|---|---|---|---|---|---|---|---|---|\n");
    char summary[2048];
    int slen = snprintf(summary, sizeof(summary),
                        "bench=predict trace=%s format=%s requests=%llu objects=%llu rounds=%u",
                        o->trace, o->oracle ? "oracle" : "csv", (unsigned long long)tr.n,
                        (unsigned long long)tr.objects, o->rounds);
    for (uint32_t ci = 0; ci < ncaps; ci++) {
        uint32_t cap = caps[ci] < 16 ? 16 : caps[ci];
        pr_agg_t a;
        if (run_config(o, &tr, cap, 0, 0, &a) != 0)
            goto out;
        double base = print_row(o, &tr, cap, 0, 0, &a, 0), best = base, first = base;
        for (size_t ri = 0; ri < sizeof(runs) / sizeof(runs[0]); ri++) {
            uint64_t want = runs[ri].times ? (uint64_t)cap * runs[ri].times : tr.objects;
            if (runs[ri].times > 1 && want * 10 >= tr.objects * 9)
                continue; /* within 10 % of the every-object row, which says it */
            uint32_t keys = want < KHALA_PREDICT_CAPACITY_MIN   ? KHALA_PREDICT_CAPACITY_MIN
                            : want > KHALA_PREDICT_CAPACITY_MAX ? KHALA_PREDICT_CAPACITY_MAX
                                                                : (uint32_t)want;
            if (run_config(o, &tr, cap, keys, runs[ri].min_pct, &a) != 0)
                goto out;
            double h = print_row(o, &tr, cap, keys, runs[ri].min_pct, &a, base);
            first = ri == 0 ? h : first;
            best = h > best ? h : best;
        }
        if (slen > 0 && (size_t)slen < sizeof(summary))
            slen += snprintf(summary + slen, sizeof(summary) - (size_t)slen,
                             " hit_base_%u=%.4f hit_pred1x_%u=%.4f best_gain_pts_%u=%.2f", cap,
                             base / 100, cap, first / 100, cap, best - base);
        fflush(stdout);
    }
    printf("\n%s\n", summary);
    ret = 0;
out:
    id_map_free(&tr.map);
    free(tr.flag);
    free(tr.dense);
    free(tr.ids);
    return ret;
}
