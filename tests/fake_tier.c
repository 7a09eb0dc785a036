/*
 * The fake level (tests/fake_tier.h). A linear table: the tests hold a few dozen keys, and a
 * table the reader can check by eye is worth more here than speed.
 */
#include "fake_tier.h"

#include <errno.h>
#include <fnmatch.h>
#include <string.h>
#include <time.h>

#include "deadline.h"
#include "khala/error.h"
#include "sys.h"

static fake_tier_t *impl(khala_tier_t *t) {
    return t->impl;
}

/* Latency, outage and injected failures: 0 to go on, else the code to fail with. */
static int trouble(fake_tier_t *f) {
    f->calls++;
    if (f->latency_ms) {
        struct timespec ts = {f->latency_ms / 1000, (long)(f->latency_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0)
            ;
    }
    if (f->down) {
        strcpy(f->tier.err, "fake: down");
        return KHALA_ETIER;
    }
    if (f->fail_n > 0) {
        f->fail_n--;
        strcpy(f->tier.err, "fake: injected failure");
        return f->fail_rc;
    }
    return 0;
}

static int slot(fake_tier_t *f, const void *key, size_t klen) {
    int64_t now = khala__sys_now_ms();
    for (int i = 0; i < FAKE_TIER_ITEMS; i++) {
        if (!f->items[i].used || f->items[i].klen != klen || memcmp(f->items[i].key, key, klen))
            continue;
        if (f->items[i].expire_ms && f->items[i].expire_ms <= now) {
            free(f->items[i].val);
            f->items[i].used = 0;
            return -1;
        }
        return i;
    }
    return -1;
}

static void note(fake_tier_t *f, char kind, const void *key, size_t klen, uint64_t version) {
    if (f->nlog == FAKE_TIER_LOG)
        return;
    fake_write_t *w = &f->log[f->nlog++];
    w->kind = kind;
    size_t n = klen > FAKE_TIER_KEY_MAX ? FAKE_TIER_KEY_MAX : klen;
    memcpy(w->key, key, n);
    w->key[n] = '\0';
    w->version = version;
}

static int fk_get(khala_tier_t *t, const void *key, size_t klen, khala_tier_value_t *out) {
    fake_tier_t *f = impl(t);
    int rc = trouble(f);
    if (rc != 0)
        return rc;
    int i = slot(f, key, klen);
    if (i < 0)
        return KHALA_ENOTFOUND;
    out->data = malloc(f->items[i].vlen ? f->items[i].vlen : 1);
    if (!out->data)
        return -ENOMEM;
    memcpy(out->data, f->items[i].val, f->items[i].vlen);
    out->len = f->items[i].vlen;
    out->version = f->items[i].version;
    out->ttl_ms = f->items[i].expire_ms ? f->items[i].expire_ms - khala__sys_now_ms() : 0;
    out->type = (khala_type_t)f->items[i].type;
    return 0;
}

static int fk_mget(khala_tier_t *t, size_t n, const khala_bytes_t *keys, khala_tier_value_t *out,
                   int *rcs) {
    fake_tier_t *f = impl(t);
    int rc = trouble(f);
    if (rc != 0)
        return rc;
    int lat = f->latency_ms;
    f->latency_ms = 0; /* one round trip for the batch */
    for (size_t i = 0; i < n; i++) {
        f->calls--; /* fk_get counts again */
        rcs[i] = fk_get(t, keys[i].ptr, keys[i].len, &out[i]);
    }
    f->latency_ms = lat;
    return 0;
}

/* Apply one put, tier.h's version rule included. */
static int apply_put(fake_tier_t *f, const void *key, size_t klen, const khala_tier_value_t *v) {
    if (klen > FAKE_TIER_KEY_MAX)
        return KHALA_EKEY;
    if (f->before_put)
        f->before_put(f->hook_arg, key, klen, v->version);
    int i = slot(f, key, klen);
    if (i >= 0 && f->items[i].version > v->version) {
        f->stale++;
        return KHALA_EVERSION;
    }
    if (i < 0)
        for (i = 0; i < FAKE_TIER_ITEMS && f->items[i].used; i++)
            ;
    if (i == FAKE_TIER_ITEMS)
        return -ENOMEM;
    uint8_t *val = malloc(v->len ? v->len : 1);
    if (!val)
        return -ENOMEM;
    memcpy(val, v->data, v->len);
    if (f->items[i].used)
        free(f->items[i].val);
    memcpy(f->items[i].key, key, klen);
    f->items[i].key[klen] = '\0';
    f->items[i].klen = klen;
    f->items[i].val = val;
    f->items[i].vlen = v->len;
    f->items[i].version = v->version;
    f->items[i].expire_ms = khala__deadline_of(khala__sys_now_ms(), v->ttl_ms);
    f->items[i].type = (int)v->type;
    f->items[i].used = 1;
    note(f, 'p', key, klen, v->version);
    return 0;
}

static int fk_put(khala_tier_t *t, const void *key, size_t klen, const khala_tier_value_t *v) {
    fake_tier_t *f = impl(t);
    int rc = trouble(f);
    return rc != 0 ? rc : apply_put(f, key, klen, v);
}

static int fk_mput(khala_tier_t *t, size_t n, const khala_bytes_t *keys,
                   const khala_tier_value_t *vals) {
    fake_tier_t *f = impl(t);
    int rc = trouble(f);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < n; i++) {
        int r = apply_put(f, keys[i].ptr, keys[i].len, &vals[i]);
        if (r != 0 && rc == 0)
            rc = r;
    }
    return rc;
}

static int fk_del(khala_tier_t *t, const void *key, size_t klen) {
    fake_tier_t *f = impl(t);
    int rc = trouble(f);
    if (rc != 0)
        return rc;
    int i = slot(f, key, klen);
    note(f, 'd', key, klen, 0);
    if (i < 0)
        return KHALA_ENOTFOUND;
    free(f->items[i].val);
    f->items[i].used = 0;
    return 0;
}

static int fk_scan(khala_tier_t *t, uint64_t *cursor, const char *pattern, size_t count,
                   khala_tier_scan_fn fn, void *arg) {
    fake_tier_t *f = impl(t);
    (void)count;
    int rc = trouble(f);
    if (rc != 0)
        return rc;
    for (int i = 0; i < FAKE_TIER_ITEMS; i++)
        if (f->items[i].used && (!pattern || fnmatch(pattern, f->items[i].key, 0) == 0) &&
            fn(arg, f->items[i].key, f->items[i].klen))
            break;
    *cursor = 0;
    return 0;
}

static int fk_hot(khala_tier_t *t, size_t max, khala_tier_scan_fn fn, void *arg) {
    (void)max;
    return fk_scan(t, &(uint64_t){0}, NULL, 0, fn, arg);
}

static int fk_invalidate(khala_tier_t *t, const void *prefix, size_t plen, int type,
                         uint64_t *removed) {
    fake_tier_t *f = impl(t);
    int rc = trouble(f);
    if (rc != 0)
        return rc;
    uint64_t n = 0;
    for (int i = 0; i < FAKE_TIER_ITEMS; i++) {
        if (!f->items[i].used || f->items[i].klen < plen ||
            memcmp(f->items[i].key, prefix, plen) != 0 || (type >= 0 && f->items[i].type != type))
            continue;
        free(f->items[i].val);
        f->items[i].used = 0;
        n++;
    }
    note(f, 'i', prefix, plen, 0);
    if (removed)
        *removed = n;
    return 0;
}

/* invalidate_step (fake_tier_stepped): the cursor is the next slot + 1 (0 = start); a step looks
 * at FAKE_TIER_STEP_SLOTS slots, or at none while step_pause is set. */
static int fk_invalidate_step(khala_tier_t *t, const void *prefix, size_t plen, int type,
                              uint64_t *cursor, size_t count, uint64_t *removed) {
    (void)count;
    fake_tier_t *f = impl(t);
    int rc = trouble(f);
    if (rc != 0)
        return rc;
    f->steps++;
    size_t from = *cursor ? (size_t)*cursor - 1 : 0;
    if (f->step_pause) {
        *cursor = from + 1;
        return 0;
    }
    size_t to = from + FAKE_TIER_STEP_SLOTS < FAKE_TIER_ITEMS ? from + FAKE_TIER_STEP_SLOTS
                                                              : FAKE_TIER_ITEMS;
    uint64_t n = 0;
    for (size_t i = from; i < to; i++) {
        if (!f->items[i].used || f->items[i].klen < plen ||
            memcmp(f->items[i].key, prefix, plen) != 0 || (type >= 0 && f->items[i].type != type))
            continue;
        free(f->items[i].val);
        f->items[i].used = 0;
        n++;
    }
    *cursor = to < FAKE_TIER_ITEMS ? to + 1 : 0;
    if (*cursor == 0)
        note(f, 'i', prefix, plen, 0);
    if (removed)
        *removed = n;
    return 0;
}

static int fk_health(khala_tier_t *t) {
    fake_tier_t *f = impl(t);
    f->calls++;
    return f->down ? KHALA_ETIER : 0;
}

static void fk_stats(khala_tier_t *t, khala_tier_stats_t *out) {
    (void)t;
    memset(out, 0, sizeof(*out));
    out->items = out->bytes = UINT64_MAX;
}

static void fk_close(khala_tier_t *t) {
    fake_tier_t *f = impl(t);
    for (int i = 0; i < FAKE_TIER_ITEMS; i++)
        if (f->items[i].used)
            free(f->items[i].val);
    free(f);
}

static const khala_tier_ops_t FAKE_OPS = {
    .name = "fake",
    .get = fk_get,
    .mget = fk_mget,
    .put = fk_put,
    .mput = fk_mput,
    .del = fk_del,
    .scan = fk_scan,
    .hot = fk_hot,
    .invalidate = fk_invalidate,
    .health = fk_health,
    .stats = fk_stats,
    .close = fk_close,
};

static khala_tier_ops_t fake_step_ops;

void fake_tier_stepped(fake_tier_t *f) {
    fake_step_ops = FAKE_OPS;
    fake_step_ops.name = "fake-stepped";
    fake_step_ops.invalidate_step = fk_invalidate_step;
    f->tier.ops = &fake_step_ops;
}

fake_tier_t *fake_tier_new(khala_level_t level) {
    fake_tier_t *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->tier.ops = &FAKE_OPS;
    f->tier.level = level;
    f->tier.healthy = 1;
    f->tier.impl = f;
    return f;
}

int fake_tier_find(const fake_tier_t *cf, const char *key, uint64_t *version, char *val,
                   size_t cap) {
    fake_tier_t *f = (fake_tier_t *)cf;
    int i = slot(f, key, strlen(key));
    if (i < 0)
        return 0;
    if (version)
        *version = f->items[i].version;
    if (val && cap) {
        size_t n = f->items[i].vlen < cap - 1 ? f->items[i].vlen : cap - 1;
        memcpy(val, f->items[i].val, n);
        val[n] = '\0';
    }
    return 1;
}

void fake_tier_seed(fake_tier_t *f, const char *key, const char *val, uint64_t version) {
    khala_tier_value_t v = {(void *)val, strlen(val), version, 0, KHALA_TYPE_MEMORY_ENTITY};
    size_t before = f->nlog;
    (void)apply_put(f, key, strlen(key), &v);
    f->nlog = before;
}
