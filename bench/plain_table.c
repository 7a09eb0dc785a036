/*
 * The plain shared-memory table (see plain_table.h for what it is and its synchronization
 * table) and the plain-get benchmark that reads it from forked processes.
 *
 *   base: | slot 0 | slot 1 | ... | slot nslots-1 |      slot_size bytes each, 64-aligned
 *   slot: | seq | klen | vlen | hash | key[32] | value[value_cap] |
 *
 * Home slot = fastrange(hash, nslots), linear probing, no deletes (the benchmark never
 * deletes), so a probe ends at the key or at an empty slot. The hash is the same XXH3 the L1
 * uses, so the two differ only in what the table does, not in hashing cost.
 *
 * Why a MAP_SHARED anonymous mapping rather than a /dev/shm file: both are shmem pages of the
 * same size (THP for shmem is off here), and readers are forked after the fill, so they inherit
 * the mapping without an open.
 */
#include "plain_table.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "bench.h"

int plain_create(plain_table_t *t, uint64_t keys, uint32_t value_cap) {
    memset(t, 0, sizeof(*t));
    t->nslots = keys + keys / 3 + 1;
    t->slot_size = (uint32_t)((sizeof(plain_slot_t) + value_cap + 63) & ~(size_t)63);
    t->value_cap = value_cap;
    t->seed = 0x6b68616c61ull;
    t->map_size = t->nslots * t->slot_size;
    void *p = mmap(NULL, t->map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    /* The same page-size request as the L1 segment's (khala__sys_map), so that on a host that
     * grants huge pages to shared memory both tables get them, and neither does elsewhere. */
    (void)madvise(p, t->map_size, MADV_HUGEPAGE);
    t->base = p;
    return 0;
}

void plain_destroy(plain_table_t *t) {
    if (t->base)
        munmap(t->base, t->map_size);
    t->base = NULL;
}

int plain_put(plain_table_t *t, const void *key, size_t klen, const void *val, size_t vlen) {
    if (klen == 0 || klen > PLAIN_KEY_MAX || vlen > t->value_cap)
        return -E2BIG;
    uint64_t hash = XXH3_64bits_withSeed(key, klen, t->seed);
    uint64_t i = plain_home(t, hash);
    for (uint64_t n = 0; n < t->nslots; n++) {
        plain_slot_t *s = plain_slot(t, i);
        if (s->klen == 0 || (s->hash == hash && s->klen == klen && !memcmp(s->key, key, klen))) {
            uint32_t seq = atomic_load_explicit(&s->seq, memory_order_relaxed);
            atomic_store_explicit(&s->seq, seq + 1, memory_order_relaxed);
            /* release fence: the odd seq is visible before any field store below; pairs with
             * the reader's acquire fence before its reload of seq. */
            atomic_thread_fence(memory_order_release);
            s->hash = hash;
            s->klen = (uint16_t)klen;
            s->vlen = (uint32_t)vlen;
            memcpy(s->key, key, klen);
            memcpy(s->value, val, vlen);
            /* release: publishes the fields with the even seq; pairs with the reader's
             * acquire load of seq. */
            atomic_store_explicit(&s->seq, seq + 2, memory_order_release);
            return 0;
        }
        if (++i == t->nslots)
            i = 0;
    }
    return -ENOSPC;
}

/* clang knows no noipa (an error under -Werror); noinline is enough there, since clang does not
 * propagate a caller's constants into a function other units can call. */
#if defined(__clang__)
#define PLAIN_NOIPA __attribute__((noinline))
#else
#define PLAIN_NOIPA __attribute__((noinline, noipa))
#endif

PLAIN_NOIPA int plain_get_fair(const plain_table_t *t, const void *key, size_t klen, void *buf,
                               size_t cap, size_t *len) {
    return plain_get(t, key, klen, buf, cap, len);
}

/* plain-get -----------------------------------------------------------------------------------*/

static int pt_open(void *arg, unsigned reader, void **ctx, bu_reader_out_t *out) {
    (void)reader;
    (void)out;
    *ctx = arg;
    return 0;
}

static inline int pt_get(const plain_table_t *t, const char *key, size_t klen, uint8_t *buf,
                         uint32_t cap) {
    size_t len;
    return plain_get(t, key, klen, buf, cap, &len);
}

static void pt_loop(void *ctx, const bu_workload_t *w, bu_ctl_t *ctl, size_t start,
                    uint32_t value_cap, bu_reader_out_t *out) {
    const plain_table_t *t = ctx;
    BU_READ_LOOP_BODY(pt_get, t, w, ctl, start, value_cap, out);
}

static inline int pt_get_fair(const plain_table_t *t, const char *key, size_t klen, uint8_t *buf,
                              uint32_t cap) {
    size_t len;
    return plain_get_fair(t, key, klen, buf, cap, &len);
}

static void pt_loop_fair(void *ctx, const bu_workload_t *w, bu_ctl_t *ctl, size_t start,
                         uint32_t value_cap, bu_reader_out_t *out) {
    const plain_table_t *t = ctx;
    BU_READ_LOOP_BODY(pt_get_fair, t, w, ctl, start, value_cap, out);
}

static void pt_close(void *ctx) {
    (void)ctx;
}

typedef struct plain_target {
    bench_target_t base; /* first: the target interface */
    plain_table_t t;
    uint32_t value_size;
    int fair; /* 1: rounds read through plain_get_fair */
} plain_target_t;

static int pt_run(bench_target_t *bt, const bu_workload_t *w, unsigned procs, double seconds,
                  uint64_t write_rate, bench_get_t *out) {
    plain_target_t *p = (plain_target_t *)bt;
    (void)write_rate;
    bu_backend_t be = {.name = p->fair ? "plain-fair" : "plain-get",
                       .arg = &p->t,
                       .open = pt_open,
                       .loop = p->fair ? pt_loop_fair : pt_loop,
                       .close = pt_close};
    memset(out, 0, sizeof(*out));
    return bu_run_readers(&be, w, procs, seconds, p->value_size, &out->r);
}

static void pt_free(bench_target_t *bt) {
    plain_target_t *p = (plain_target_t *)bt;
    plain_destroy(&p->t);
    free(p);
}

void bench_plain_set_fair(bench_target_t *bt, int fair) {
    ((plain_target_t *)bt)->fair = fair;
}

bench_target_t *bench_plain_setup(const bench_opts_t *o, const bu_workload_t *w) {
    plain_target_t *p = calloc(1, sizeof(*p));
    uint8_t *value = malloc(o->value_size ? o->value_size : 1);
    int rc;
    if (!p || !value)
        goto fail;
    p->base.name = "plain-get";
    p->base.run = pt_run;
    p->base.free = pt_free;
    p->value_size = o->value_size;
    if ((rc = plain_create(&p->t, w->keys, o->value_size)) != 0) {
        fprintf(stderr, "plain_create: %s\n", strerror(-rc));
        goto fail;
    }
    memset(value, 'v', o->value_size);
    for (uint32_t i = 0; i < w->keys; i++) {
        if ((rc = plain_put(&p->t, bu_key(w, i), BU_KEY_LEN, value, o->value_size)) != 0) {
            fprintf(stderr, "plain_put %u: %s\n", i, strerror(-rc));
            goto fail;
        }
    }
    free(value);
    return &p->base;
fail:
    free(value);
    if (p)
        pt_free(&p->base);
    return NULL;
}
