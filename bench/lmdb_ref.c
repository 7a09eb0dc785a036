/*
 * The LMDB reference: the same keys and values in an LMDB environment, read by forked
 * processes, each with its own environment handle (LMDB forbids using an env across fork).
 *
 * The parent creates the env in a fresh temporary directory (MDB_NOSYNC | MDB_WRITEMAP: the
 * fill is not what is measured), appends the keys in order (they sort as inserted, so
 * MDB_APPEND applies), and closes it before forking. Each reader opens the env read-only and
 * loops over the fastest legitimate read pattern: one read-only transaction allocated once,
 * then per get mdb_txn_renew / mdb_get / copy the value out / mdb_txn_reset. A transaction per
 * get is the fair match for the L1's one read section per khala_cache_get.
 */
#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

typedef struct lmdb_ref {
    bench_target_t base; /* first: the target interface */
    uint32_t value_size;
    char dir[64];    /* temporary directory of the env */
    size_t map_size; /* env map size in bytes */
} lmdb_ref_t;

typedef struct lmdb_reader {
    MDB_env *env;
    MDB_txn *txn; /* reset between gets, renewed for each */
    MDB_dbi dbi;
} lmdb_reader_t;

static int lm_open(void *arg, unsigned reader, void **ctx, bu_reader_out_t *out) {
    lmdb_ref_t *r = arg;
    lmdb_reader_t *l = calloc(1, sizeof(*l));
    int rc;
    (void)reader;
    if (!l)
        return -ENOMEM;
    if ((rc = mdb_env_create(&l->env)) != 0 || (rc = mdb_env_set_mapsize(l->env, r->map_size)) ||
        (rc = mdb_env_open(l->env, r->dir, MDB_RDONLY | MDB_NORDAHEAD, 0600)) != 0 ||
        (rc = mdb_txn_begin(l->env, NULL, MDB_RDONLY, &l->txn)) != 0 ||
        (rc = mdb_dbi_open(l->txn, NULL, 0, &l->dbi)) != 0) {
        snprintf(out->err, sizeof(out->err), "lmdb reader open: %s", mdb_strerror(rc));
        if (l->env)
            mdb_env_close(l->env);
        free(l);
        return rc;
    }
    mdb_txn_reset(l->txn);
    *ctx = l;
    return 0;
}

static inline int lm_get(lmdb_reader_t *l, const char *key, size_t klen, uint8_t *buf,
                         uint32_t cap) {
    MDB_val k = {.mv_size = klen, .mv_data = (void *)key}, v;
    int r;
    if (mdb_txn_renew(l->txn) != 0)
        return -1;
    int rc = mdb_get(l->txn, l->dbi, &k, &v);
    if (rc == 0 && v.mv_size <= cap) {
        memcpy(buf, v.mv_data, v.mv_size);
        r = 1;
    } else {
        r = rc == MDB_NOTFOUND ? 0 : -1;
    }
    mdb_txn_reset(l->txn);
    return r;
}

static void lm_loop(void *ctx, const bu_workload_t *w, bu_ctl_t *ctl, size_t start,
                    uint32_t value_cap, bu_reader_out_t *out) {
    lmdb_reader_t *l = ctx;
    BU_READ_LOOP_BODY(lm_get, l, w, ctl, start, value_cap, out);
}

static void lm_close(void *ctx) {
    lmdb_reader_t *l = ctx;
    mdb_txn_abort(l->txn);
    mdb_env_close(l->env);
    free(l);
}

static int lm_fill(lmdb_ref_t *r, const bu_workload_t *w, uint32_t value_size) {
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    int rc;
    uint8_t *value = calloc(1, value_size ? value_size : 1);
    if (!value)
        return ENOMEM;
    memset(value, 'v', value_size);
    if ((rc = mdb_env_create(&env)) != 0 || (rc = mdb_env_set_mapsize(env, r->map_size)) != 0 ||
        (rc = mdb_env_open(env, r->dir, MDB_NOSYNC | MDB_WRITEMAP, 0600)) != 0 ||
        (rc = mdb_txn_begin(env, NULL, 0, &txn)) != 0 ||
        (rc = mdb_dbi_open(txn, NULL, 0, &dbi)) != 0)
        goto out;
    for (uint32_t i = 0; i < w->keys; i++) {
        MDB_val k = {.mv_size = BU_KEY_LEN, .mv_data = (void *)bu_key(w, i)};
        MDB_val v = {.mv_size = value_size, .mv_data = value};
        if ((rc = mdb_put(txn, dbi, &k, &v, MDB_APPEND)) != 0)
            goto out;
    }
    rc = mdb_txn_commit(txn);
    txn = NULL;
out:
    if (txn)
        mdb_txn_abort(txn);
    if (env)
        mdb_env_close(env);
    free(value);
    if (rc != 0)
        fprintf(stderr, "lmdb fill: %s\n", mdb_strerror(rc));
    return rc;
}

static void lm_cleanup(lmdb_ref_t *r) {
    char path[128];
    snprintf(path, sizeof(path), "%s/data.mdb", r->dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/lock.mdb", r->dir);
    unlink(path);
    rmdir(r->dir);
}

static int lm_run(bench_target_t *bt, const bu_workload_t *w, unsigned procs, double seconds,
                  uint64_t write_rate, bench_get_t *out) {
    lmdb_ref_t *r = (lmdb_ref_t *)bt;
    (void)write_rate;
    bu_backend_t be = {
        .name = "lmdb-get", .arg = r, .open = lm_open, .loop = lm_loop, .close = lm_close};
    memset(out, 0, sizeof(*out));
    return bu_run_readers(&be, w, procs, seconds, r->value_size, &out->r);
}

static void lm_free(bench_target_t *bt) {
    lmdb_ref_t *r = (lmdb_ref_t *)bt;
    lm_cleanup(r);
    free(r);
}

bench_target_t *bench_lmdb_setup(const bench_opts_t *o, const bu_workload_t *w) {
    lmdb_ref_t *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->base.name = "lmdb-get";
    r->base.run = lm_run;
    r->base.free = lm_free;
    r->value_size = o->value_size;
    const char *tmp = getenv("TMPDIR");
    snprintf(r->dir, sizeof(r->dir), "%s/khala-bench-lmdb-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(r->dir)) {
        fprintf(stderr, "mkdtemp %s: %s\n", r->dir, strerror(errno));
        free(r);
        return NULL;
    }
    r->map_size = (size_t)w->keys * (o->value_size + BU_KEY_LEN + 64) * 2 + (64u << 20);
    if (lm_fill(r, w, o->value_size) != 0) {
        lm_free(&r->base);
        return NULL;
    }
    return &r->base;
}
