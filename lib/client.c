/*
 * The client: what a worker links against (include/khala/cache.h).
 *
 * HOW IT WORKS
 *
 * A handle attaches to the cache's segments (segment.c). Each thread that reads gets its own
 * reader slot, claimed on its first read and kept in thread-specific data, so that the hit
 * path is: look up the thread's state, enter a read section (readers.h), walk the table
 * (l1_table.c), copy the value, record the hit in the slot's ring, leave. No system call, no
 * lock, and the only stores go to the thread's own slot.
 *
 * Three events move a thread off its fast path, each detected by a load the fast path makes
 * anyway:
 *   - First use by a thread: no thread state yet; claim a slot.
 *   - The writer replaced the segment (khalad restarted with a new layout): the section start
 *     sees hdr->state != LIVE on the line it loads the epoch from. The handle attaches to the
 *     new segment; the old mapping is kept until close, because other threads of this process
 *     may still be inside a section on it.
 *   - fork(): the child shares the parent's open file description of the readers file, and so
 *     its slot locks. A pthread_atfork handler bumps a generation; the child's next call
 *     reopens the readers file and claims slots of its own, and never touches the parent's.
 *
 * Guards: c->lock (a mutex, never taken on the fast path) guards the thread list, the list of
 * segments and every change of c->cur. A thread state is written only by its own thread,
 * except by close() and by the fork handling in the child, where no other thread exists.
 */
#include "khala/cache.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "l1_table.h"
#include "readers.h"
#include "segment.h"
#include "sys.h"

typedef struct seg_node {
    khala_seg_t seg;
    struct seg_node *next; /* guarded by c->lock */
} seg_node_t;

typedef struct tstate {
    khala_cache_t *c;
    khala_seg_t *seg;   /* segment the slot belongs to; NULL when none is claimed */
    khala_slot_t *slot; /* the claimed slot */
    uint32_t idx;       /* its index */
    int in_section;     /* 1 between khala_read_begin and khala_read_end */
    uint64_t fork_gen;  /* g_fork_gen when the slot was claimed */
    uint64_t base_hits; /* slot counters at claim time: this thread's share is the rest */
    uint64_t base_misses;
    struct tstate *next; /* guarded by c->lock */
} tstate_t;

struct khala_cache {
    pthread_mutex_t lock;       /* guards segs, threads, retired_* and changes of cur */
    pthread_key_t key;          /* thread -> tstate_t; immutable after open */
    _Atomic(khala_seg_t *) cur; /* the live segment; acquire loads, changed under lock */
    seg_node_t *segs;           /* every segment attached, newest first */
    tstate_t *threads;          /* thread states */
    uint64_t fork_gen;          /* g_fork_gen that the handle's fds belong to */
    uint64_t id;                /* unique per handle, never reused; immutable after open */
    uint64_t retired_hits;      /* counts of threads that exited */
    uint64_t retired_misses;
    char name[KHALA_NAME_MAX + 1]; /* immutable after open */
};

/* Bumped in the child after every fork; see the theory above. */
static _Atomic uint64_t g_fork_gen;
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;

/* Handle ids; 0 is never a handle's. */
static _Atomic uint64_t g_next_id = 1;
/* The calling thread's last handle and its state there (see ts_get). */
static __thread uint64_t tls_last_id;
static __thread struct tstate *tls_last_ts;

/* The calling thread's last error and the handle it belongs to (NULL: khala_cache_open). */
static __thread char tls_err[256];
static __thread const khala_cache_t *tls_err_owner;

static void on_fork_child(void) {
    atomic_fetch_add_explicit(&g_fork_gen, 1, memory_order_relaxed);
}

static void atfork_register(void) {
    (void)pthread_atfork(NULL, NULL, on_fork_child);
}

static int fail(const khala_cache_t *c, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(const khala_cache_t *c, int rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_err, sizeof(tls_err), fmt, ap);
    va_end(ap);
    tls_err_owner = c;
    return rc;
}

static int key_fail(const khala_cache_t *c, size_t klen) {
    if (klen == 0)
        return fail(c, KHALA_EKEY, "key is empty");
    return fail(c, KHALA_EKEY, "key is %zu bytes, max %d", klen, KHALA_KEY_MAX);
}

/* Give the thread's slot back and fold its counts into the handle. Caller holds c->lock. */
static void ts_release_locked(khala_cache_t *c, tstate_t *ts) {
    if (!ts->seg)
        return;
    c->retired_hits += khala_load_relaxed(&ts->slot->hits) - ts->base_hits;
    c->retired_misses += khala_load_relaxed(&ts->slot->misses) - ts->base_misses;
    khala__readers_release(ts->seg, ts->idx);
    ts->seg = NULL;
    ts->slot = NULL;
}

static void ts_destroy(void *p) {
    tstate_t *ts = p;
    khala_cache_t *c = ts->c;
    pthread_mutex_lock(&c->lock);
    if (ts->fork_gen == atomic_load_explicit(&g_fork_gen, memory_order_relaxed))
        ts_release_locked(c, ts);
    for (tstate_t **pp = &c->threads; *pp; pp = &(*pp)->next) {
        if (*pp == ts) {
            *pp = ts->next;
            break;
        }
    }
    pthread_mutex_unlock(&c->lock);
    if (tls_last_ts == ts) {
        tls_last_id = 0;
        tls_last_ts = NULL;
    }
    free(ts);
}

/* In a child after fork: the handle's thread states and slot locks are the parent's. Forget
 * them without releasing anything, and reopen every readers file. Caller holds c->lock. */
static int after_fork_locked(khala_cache_t *c, uint64_t gen) {
    while (c->threads) {
        tstate_t *ts = c->threads;
        c->threads = ts->next;
        free(ts);
    }
    (void)pthread_setspecific(c->key, NULL);
    tls_last_id = 0;
    tls_last_ts = NULL;
    for (seg_node_t *n = c->segs; n; n = n->next) {
        int rc = khala__seg_reopen_readers(&n->seg);
        if (rc != 0)
            return fail(c, rc, "cannot reopen the readers file of '%s' after fork: %s", c->name,
                        strerror(-rc));
    }
    c->fork_gen = gen;
    return 0;
}

/* Attach to the segment now under the cache's name, if `seen` is still current. Caller holds
 * c->lock. */
static int reattach_locked(khala_cache_t *c, khala_seg_t *seen) {
    if (atomic_load_explicit(&c->cur, memory_order_relaxed) != seen)
        return 0; /* another thread did it */
    seg_node_t *n = calloc(1, sizeof(*n));
    char err[256];
    if (!n)
        return fail(c, -ENOMEM, "out of memory");
    int rc = khala__seg_attach(&n->seg, c->name, 0, err, sizeof(err));
    if (rc != 0) {
        free(n);
        return fail(c, rc == -ENOENT ? KHALA_ELAYOUT : rc,
                    "the writer replaced cache '%s' and reattaching failed: %s", c->name, err);
    }
    n->next = c->segs;
    c->segs = n;
    c->id = atomic_fetch_add_explicit(&g_next_id, 1, memory_order_relaxed);
    atomic_store_explicit(&c->cur, &n->seg, memory_order_release);
    return 0;
}

/* The slow path: make sure the calling thread has a slot in the current segment. `stale` is a
 * segment the caller found replaced, or NULL. */
static int ts_slow(khala_cache_t *c, khala_seg_t *stale, tstate_t **out) {
    int rc = 0;
    uint64_t gen = atomic_load_explicit(&g_fork_gen, memory_order_relaxed);
    pthread_mutex_lock(&c->lock);
    if (c->fork_gen != gen && (rc = after_fork_locked(c, gen)) != 0)
        goto out;
    if (stale && (rc = reattach_locked(c, stale)) != 0)
        goto out;
    tstate_t *ts = pthread_getspecific(c->key);
    if (!ts) {
        ts = calloc(1, sizeof(*ts));
        if (!ts) {
            rc = fail(c, -ENOMEM, "out of memory");
            goto out;
        }
        ts->c = c;
        ts->next = c->threads;
        c->threads = ts;
        (void)pthread_setspecific(c->key, ts);
    }
    khala_seg_t *cur = atomic_load_explicit(&c->cur, memory_order_relaxed);
    if (ts->seg != cur) {
        ts_release_locked(c, ts);
        uint32_t idx;
        rc = khala__readers_claim(cur, &idx);
        if (rc != 0) {
            rc = fail(c, rc,
                      rc == KHALA_ENOREADER ? "all %u reader slots of '%s' are taken"
                                            : "cannot claim a reader slot of %u in '%s'",
                      cur->nslots, c->name);
            goto out;
        }
        ts->seg = cur;
        ts->idx = idx;
        ts->slot = khala__seg_slot(cur, idx);
        ts->base_hits = khala_load_relaxed(&ts->slot->hits);
        ts->base_misses = khala_load_relaxed(&ts->slot->misses);
    }
    ts->fork_gen = gen;
    tls_last_id = c->id;
    tls_last_ts = ts;
    *out = ts;
out:
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static inline int ts_get(khala_cache_t *c, tstate_t **out) {
    /* The thread's last handle is cached in plain thread-locals, which costs a compare where
     * pthread_getspecific costs a call. Handle ids are never reused, so a stale entry (its
     * handle closed) can never match. */
    tstate_t *ts = tls_last_id == c->id ? tls_last_ts : pthread_getspecific(c->key);
    if (__builtin_expect(
            ts && ts->seg && ts->seg == atomic_load_explicit(&c->cur, memory_order_acquire) &&
                ts->fork_gen == atomic_load_explicit(&g_fork_gen, memory_order_relaxed),
            1)) {
        tls_last_id = c->id;
        tls_last_ts = ts;
        *out = ts;
        return 0;
    }
    return ts_slow(c, NULL, out);
}

/* Enter a section on the thread's segment, moving to a new segment if the writer replaced it. */
static int section_enter_slow(khala_cache_t *c, tstate_t **tsp) {
    tstate_t *ts = *tsp;
    for (int tries = 0;; tries++) {
        khala__reader_enter(ts->seg, ts->slot);
        /* acquire: pairs with the release store of KHALA_SEG_REPLACED by a new writer. */
        if (__builtin_expect(khala_load_acquire(&ts->seg->hdr->state) == KHALA_SEG_LIVE, 1))
            return 0;
        khala__reader_leave(ts->slot);
        if (tries)
            return fail(c, KHALA_ELAYOUT, "cache '%s' keeps being replaced", c->name);
        int rc = ts_slow(c, ts->seg, tsp);
        if (rc != 0)
            return rc;
        ts = *tsp;
    }
}

/* Enter a section; the segment's state is on the line the epoch comes from. Inline fast path;
 * section_enter_slow handles a replaced segment. */
static inline int section_enter(khala_cache_t *c, tstate_t **tsp) {
    tstate_t *ts = *tsp;
    khala__reader_enter(ts->seg, ts->slot);
    /* acquire: pairs with the release store of KHALA_SEG_REPLACED by a new writer. */
    if (__builtin_expect(khala_load_acquire(&ts->seg->hdr->state) == KHALA_SEG_LIVE, 1))
        return 0;
    khala__reader_leave(ts->slot);
    return section_enter_slow(c, tsp);
}

void khala_cache_options_init(khala_cache_options_t *opts) {
    memset(opts, 0, sizeof(*opts));
}

int khala_cache_open(const char *name, const khala_cache_options_t *opts, khala_cache_t **out) {
    char err[256];
    (void)opts;
    pthread_once(&g_atfork_once, atfork_register);
    khala_cache_t *c = calloc(1, sizeof(*c));
    seg_node_t *n = calloc(1, sizeof(*n));
    int rc;
    if (!c || !n) {
        rc = fail(NULL, -ENOMEM, "out of memory");
        goto fail_alloc;
    }
    if ((rc = khala__seg_attach(&n->seg, name, 0, err, sizeof(err))) != 0) {
        fail(NULL, rc, "%s", err);
        goto fail_alloc;
    }
    if ((rc = pthread_key_create(&c->key, ts_destroy)) != 0) {
        rc = fail(NULL, -rc, "cannot create a thread key: %s", strerror(rc));
        goto fail_key;
    }
    pthread_mutex_init(&c->lock, NULL);
    snprintf(c->name, sizeof(c->name), "%s", name);
    c->segs = n;
    atomic_store_explicit(&c->cur, &n->seg, memory_order_release);
    c->fork_gen = atomic_load_explicit(&g_fork_gen, memory_order_relaxed);
    *out = c;
    return 0;
fail_key:
    khala__seg_detach(&n->seg);
fail_alloc:
    free(n);
    free(c);
    return rc;
}

void khala_cache_close(khala_cache_t *c) {
    if (!c)
        return;
    uint64_t gen = atomic_load_explicit(&g_fork_gen, memory_order_relaxed);
    pthread_key_delete(c->key);
    while (c->threads) {
        tstate_t *ts = c->threads;
        c->threads = ts->next;
        if (ts->fork_gen == gen && c->fork_gen == gen)
            ts_release_locked(c, ts);
        free(ts);
    }
    while (c->segs) {
        seg_node_t *n = c->segs;
        c->segs = n->next;
        khala__seg_detach(&n->seg);
        free(n);
    }
    pthread_mutex_destroy(&c->lock);
    if (tls_err_owner == c)
        tls_err_owner = NULL;
    free(c);
}

int khala_cache_get(khala_cache_t *c, const void *key, size_t klen, void *buf, size_t cap,
                    size_t *len) {
    tstate_t *ts;
    const khala_item_t *it;
    int rc;
    if (klen - 1 >= KHALA_KEY_MAX)
        return key_fail(c, klen);
    if ((rc = ts_get(c, &ts)) != 0)
        return rc;
    if (ts->in_section)
        return fail(c, KHALA_ESECTION,
                    "khala_cache_get inside a read section; use "
                    "khala_cache_view there");
    /* Hash and start fetching the bucket before the section begins: the bucket's line then
     * arrives while the section start runs. A prefetch of a stale address is harmless. */
    khala_seg_t *s = ts->seg;
    uint64_t hash = khala__l1_hash(s, key, klen);
    __builtin_prefetch(&s->buckets[hash & s->bucket_mask]);
    if ((rc = section_enter(c, &ts)) != 0)
        return rc;
    if (__builtin_expect(ts->seg != s, 0)) {
        s = ts->seg; /* reattached to a new segment, with a new hash seed */
        hash = khala__l1_hash(s, key, klen);
    }
    rc = khala__l1_lookup(s, key, klen, hash, &it);
    size_t vlen = 0;
    if (rc == 0) {
        vlen = it->value_len;
        if (vlen <= cap) {
            if (vlen)
                memcpy(buf, khala__item_value(it), vlen);
        } else
            rc = -ERANGE;
        khala__reader_record(s, ts->slot, it->desc, hash);
        khala__reader_count(&ts->slot->hits);
    } else if (rc == KHALA_ENOTFOUND) {
        khala__reader_count(&ts->slot->misses);
    }
    khala__reader_leave(ts->slot);
    if (rc == 0 || rc == -ERANGE) {
        if (len)
            *len = vlen;
        if (rc)
            fail(c, rc, "value is %zu bytes, buffer %zu", vlen, cap);
    } else if (rc == KHALA_ECORRUPT) {
        fail(c, rc, "cache '%s': lookup met an offset outside the segment", c->name);
    }
    return rc;
}

int khala_read_begin(khala_cache_t *c) {
    tstate_t *ts;
    int rc = ts_get(c, &ts);
    if (rc != 0)
        return rc;
    if (ts->in_section)
        return fail(c, KHALA_ESECTION, "a read section is already open on this thread");
    if ((rc = section_enter(c, &ts)) != 0)
        return rc;
    ts->in_section = 1;
    return 0;
}

void khala_read_end(khala_cache_t *c) {
    tstate_t *ts = pthread_getspecific(c->key);
    if (!ts || !ts->in_section)
        return;
    khala__reader_leave(ts->slot);
    ts->in_section = 0;
}

int khala_cache_view(khala_cache_t *c, const void *key, size_t klen, khala_view_t *view) {
    tstate_t *ts = pthread_getspecific(c->key);
    const khala_item_t *it;
    if (!ts || !ts->in_section)
        return fail(c, KHALA_ESECTION, "khala_cache_view outside a read section");
    if (klen - 1 >= KHALA_KEY_MAX)
        return key_fail(c, klen);
    khala_seg_t *s = ts->seg;
    uint64_t hash = khala__l1_hash(s, key, klen);
    int rc = khala__l1_lookup(s, key, klen, hash, &it);
    if (rc == KHALA_ENOTFOUND) {
        khala__reader_count(&ts->slot->misses);
        return rc;
    }
    if (rc != 0)
        return fail(c, rc, "cache '%s': lookup met an offset outside the segment", c->name);
    khala__reader_record(s, ts->slot, it->desc, hash);
    khala__reader_count(&ts->slot->hits);
    view->data = khala__item_value(it);
    view->len = it->value_len;
    view->version = it->version;
    view->type = it->type;
    view->ttl_left_ms = -1;
    if (it->expire_ms) {
        int64_t left = it->expire_ms - khala__sys_now_ms();
        view->ttl_left_ms = left > 0 ? left : 0;
    }
    return 0;
}

int khala_cache_stats(const khala_cache_t *c, khala_cache_stats_t *st) {
    khala_cache_t *m = (khala_cache_t *)c;
    pthread_mutex_lock(&m->lock);
    st->hits = c->retired_hits;
    st->misses = c->retired_misses;
    for (tstate_t *ts = c->threads; ts; ts = ts->next) {
        if (!ts->seg)
            continue;
        st->hits += khala_load_relaxed(&ts->slot->hits) - ts->base_hits;
        st->misses += khala_load_relaxed(&ts->slot->misses) - ts->base_misses;
    }
    pthread_mutex_unlock(&m->lock);
    return 0;
}

const char *khala_cache_errmsg(const khala_cache_t *c) {
    return tls_err_owner == c ? tls_err : "";
}
