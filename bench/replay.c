/*
 * Trace replay: the hit ratio of the real L1 (its S3-FIFO family policy, fed by the readers' hit
 * rings) on a real trace, beside an exact-LRU simulation of the same capacity.
 *
 * Both formats become one array of 64-bit object ids first:
 *   csv     one request a line, "key[,size]"; the id is XXH3-64 of the key text (a collision
 *           among a few million keys has probability ~1e-7, so ids stand for keys);
 *   oracle  libCacheSim's oracleGeneral: packed little-endian 24-byte records
 *           | uint32 ts | uint64 obj_id | uint32 size | int64 next_access |; the id is obj_id.
 * Sizes are ignored: each object takes one slot, as in the capacities the issue quotes.
 *
 * L1 replay: this process is both the writer (khala__l1_open, max_items = capacity, arena big
 * enough that only the item count binds) and a reader (khala_cache_open on the same name). Per
 * request: khala_cache_get of the 8-byte id; on a miss khala__l1_put of a 16-byte value. Every
 * maintain_every requests the writer runs khala__l1_maintain, as khalad's loop would; the put
 * path also drains the hit rings before it evicts. Cold start: every request counts.
 *
 * LRU simulation: ids are interned to dense indices, and an intrusive doubly linked list over
 * arrays keeps recency; exact, O(1) per request.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "khala/cache.h"
#include "l1_table.h"

#define NIL UINT32_MAX

/* Trace loading ------------------------------------------------------------------------------*/

static int push(uint64_t **v, size_t *cap, size_t *cnt, uint64_t id) {
    if (*cnt == *cap) {
        uint64_t *nv = realloc(*v, (*cap *= 2) * sizeof(**v));
        if (!nv)
            return -ENOMEM;
        *v = nv;
    }
    (*v)[(*cnt)++] = id;
    return 0;
}

/* csv: one request a line, "key[,size]"; the id is XXH3-64 of the key text. */
static int load_csv(FILE *f, uint64_t **v, size_t *cap, size_t *cnt) {
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    int rc = 0;
    while (rc == 0 && (len = getline(&line, &lcap, f)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        char *comma = strchr(line, ',');
        size_t klen = comma ? (size_t)(comma - line) : (size_t)len;
        if (klen)
            rc = push(v, cap, cnt, XXH3_64bits(line, klen));
    }
    free(line);
    return rc;
}

/* oracleGeneral: packed 24-byte records | uint32 ts | uint64 obj_id | uint32 size | int64 |. */
static int load_oracle(FILE *f, uint64_t **v, size_t *cap, size_t *cnt) {
    uint8_t rec[24];
    int rc = 0;
    while (rc == 0 && fread(rec, sizeof(rec), 1, f) == 1) {
        uint64_t id = 0;
        for (int i = 7; i >= 0; i--)
            id = id << 8 | rec[4 + i];
        rc = push(v, cap, cnt, id);
    }
    return rc;
}

int bench_trace_load(const char *path, int oracle, uint64_t **ids, uint64_t *n) {
    FILE *f = fopen(path, oracle ? "rb" : "r");
    if (!f)
        return -errno;
    size_t cap = 1u << 16, cnt = 0;
    uint64_t *v = malloc(cap * sizeof(*v));
    int rc = -ENOMEM;
    if (v)
        rc = oracle ? load_oracle(f, &v, &cap, &cnt) : load_csv(f, &v, &cap, &cnt);
    fclose(f);
    if (rc != 0) {
        free(v);
        return rc;
    }
    *ids = v;
    *n = cnt;
    return 0;
}

/* Intern ids to dense indices 0..objects-1 in place; returns the object count. */
static uint64_t intern(uint64_t *ids, uint64_t n) {
    uint64_t cap = 16;
    while (cap < n * 2)
        cap <<= 1;
    uint64_t *keys = calloc(cap, sizeof(uint64_t));
    uint32_t *vals = malloc(cap * sizeof(uint32_t));
    uint8_t *used = calloc(cap, 1);
    uint64_t objects = 0;
    if (!keys || !vals || !used) {
        objects = UINT64_MAX;
        goto out;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t h = XXH3_64bits(&ids[i], sizeof(ids[i])) & (cap - 1);
        while (used[h] && keys[h] != ids[i])
            h = (h + 1) & (cap - 1);
        if (!used[h]) {
            used[h] = 1;
            keys[h] = ids[i];
            vals[h] = (uint32_t)objects++;
        }
        ids[i] = vals[h];
    }
out:
    free(keys);
    free(vals);
    free(used);
    return objects;
}

/* Exact LRU ----------------------------------------------------------------------------------*/

static int replay_lru(const uint64_t *idx, uint64_t n, uint64_t objects, uint32_t capacity,
                      bench_replay_t *out) {
    uint32_t *prev = malloc(objects * sizeof(uint32_t));
    uint32_t *next = malloc(objects * sizeof(uint32_t));
    uint8_t *in = calloc(objects, 1);
    uint32_t head = NIL, tail = NIL; /* head: most recent */
    uint64_t size = 0;
    if (!prev || !next || !in) {
        free(prev);
        free(next);
        free(in);
        return -1;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint32_t o = (uint32_t)idx[i];
        if (in[o]) {
            out->hits++;
            if (head == o)
                continue;
            next[prev[o]] = next[o];
            if (next[o] != NIL)
                prev[next[o]] = prev[o];
            else
                tail = prev[o];
        } else {
            if (size == capacity) {
                uint32_t v = tail;
                tail = prev[v];
                if (tail != NIL)
                    next[tail] = NIL;
                else
                    head = NIL;
                in[v] = 0;
                size--;
            }
            in[o] = 1;
            size++;
        }
        prev[o] = NIL;
        next[o] = head;
        if (head != NIL)
            prev[head] = o;
        head = o;
        if (tail == NIL)
            tail = o;
    }
    free(prev);
    free(next);
    free(in);
    return 0;
}

/* The real L1 --------------------------------------------------------------------------------*/

int bench_replay_l1_open(const char *what, uint32_t capacity, khala_l1_t **t, khala_cache_t **c) {
    khala_seg_config_t cfg;
    char name[KHALA_NAME_MAX + 1], err[256];
    khala__seg_config_init(&cfg);
    cfg.max_items = capacity < 16 ? 16 : capacity;
    uint64_t per =
        (KHALA_ITEM_SIZE(sizeof(uint64_t), BENCH_REPLAY_VALUE) + 16 + 15) & ~(uint64_t)15;
    cfg.max_bytes = (uint64_t)cfg.max_items * per * 2 + (4u << 20);
    snprintf(name, sizeof(name), "khala-bench-%s-%d", what, (int)getpid());
    *t = NULL;
    *c = NULL;
    if (khala__l1_open(name, &cfg, t, err, sizeof(err)) != 0) {
        fprintf(stderr, "khala__l1_open: %s\n", err);
        return -1;
    }
    if (khala_cache_open(name, NULL, c) != 0) {
        fprintf(stderr, "khala_cache_open: %s\n", khala_cache_errmsg(NULL));
        khala__l1_close(*t, 1);
        *t = NULL;
        return -1;
    }
    return 0;
}

static int replay_l1(const bench_opts_t *o, const uint64_t *ids, uint64_t n, bench_replay_t *out) {
    khala_l1_t *t;
    khala_cache_t *c;
    static const uint8_t value[BENCH_REPLAY_VALUE] = "khala-bench-val";
    uint8_t buf[BENCH_REPLAY_VALUE];
    int ret = -1, rc;
    if (bench_replay_l1_open("replay", o->capacity, &t, &c) != 0)
        return -1;
    for (uint64_t i = 0; i < n; i++) {
        size_t len;
        rc = khala_cache_get(c, &ids[i], sizeof(ids[i]), buf, sizeof(buf), &len);
        if (rc == 0) {
            out->hits++;
        } else if (rc == KHALA_ENOTFOUND) {
            rc = khala__l1_put(t, &ids[i], sizeof(ids[i]), value, sizeof(value), 0, 0, NULL);
            if (rc != 0) {
                fprintf(stderr, "put at request %llu: %s\n", (unsigned long long)i,
                        khala__l1_errmsg(t));
                goto out;
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

int bench_replay(const bench_opts_t *o, bench_replay_t *out) {
    uint64_t *ids = NULL, n = 0;
    int rc = bench_trace_load(o->trace, o->oracle, &ids, &n);
    if (rc != 0) {
        fprintf(stderr, "cannot read trace %s: %s\n", o->trace, strerror(-rc));
        return -1;
    }
    memset(out, 0, sizeof(*out));
    out->requests = n;
    int ret = -1;
    if (o->lru) {
        uint64_t objects = intern(ids, n);
        if (objects == UINT64_MAX)
            goto out;
        out->objects = objects;
        ret = replay_lru(ids, n, objects, o->capacity, out);
    } else {
        ret = replay_l1(o, ids, n, out);
        out->objects = intern(ids, n);
    }
out:
    free(ids);
    return ret;
}
