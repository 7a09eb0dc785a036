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
 *     new segment; the old mapping is kept while other threads of this process may still be
 *     inside a section on it (they hold slots there: seg_node.users) and unmapped when the
 *     last of them moves on. While no new segment can be attached yet (it is being made, or
 *     was removed), a get falls back to khalad as a miss does; only views fail.
 *   - fork(): the child shares the parent's open file description of the readers file, and so
 *     its slot locks. The atfork child handler (on_fork_child) reopens every readers file and
 *     remaps it through the new description at once, so a parent that dies inside a section
 *     can be reaped while the child lives, and bumps a generation; the child's next call
 *     claims slots of its own. The child never touches the parent's slots: a section the
 *     parent had open at fork() is the parent's (khala_read_end forgets it in the child,
 *     khala_cache_view refuses it).
 *
 * THE MISS PATH AND WRITES
 *
 * Everything that is not an L1 read goes to khalad over a channel (lib/channel.h), one per
 * thread, kept in the thread state beside the reader slot, so that threads never share a
 * connection or wait for each other's round trips. A thread connects on its first call that
 * needs khalad, never at open: a worker starts, and reads L1, while khalad is down.
 *
 *   - Before each request, khala__chan_usable() checks (one poll with no wait) that khalad has
 *     not closed the connection since the last call: after a restart of khalad the first
 *     request goes to the new one instead of failing on the old socket.
 *   - A connect that fails is remembered (time, code, message) for KHALA_RECONNECT_INTERVAL_MS;
 *     calls in that window fail at once with the same code, so a worker whose khalad is down
 *     pays no system call per request and never spins on connect.
 *   - A call that breaks the connection closes the channel; the next call reconnects.
 *   - After fork, the child's copies of the parent's channels are closed (close(2) only: the
 *     parent's connections stay up) and the child's threads open their own. Bytes of two
 *     processes interleaved on one socket would corrupt both streams.
 *
 * get_or_load, step by step (the numbers appear in the code):
 *   1. L1, as khala_cache_get.
 *   2. get with "loader": true. A value (from a lower level or another worker's load): done.
 *   3. "load": true: this caller leads. Run the loader into the caller's buffer, then send
 *      fill (the value) or fill_fail, and return the loader's result. khalad answers the other
 *      callers waiting on the key.
 *   4. -EAGAIN: the leader's loader failed; ask again (one of the waiters leads), at most
 *      GET_OR_LOAD_ROUNDS times.
 *   5. khalad unreachable, or the wait timed out: run the loader directly, cache nothing.
 *
 * Guards: c->lock (a mutex, never taken on the fast path) guards the thread list, the list of
 * segments and every change of c->cur. A thread state is written only by its own thread,
 * except by close() and by the fork handling in the child, where no other thread exists.
 * c->sock and c->timeout_ms are immutable after open.
 *
 * Why not one connection per handle, shared under a lock: every miss of every thread would
 * queue behind the slowest request (a get waiting on a single-flight load may take seconds).
 * Why not a connection per handle with pipelining and a dispatcher: it needs a thread or a
 * shared reader, and a worker's threads would then share fate on one socket; one connection per
 * thread is simple and khalad's epoll loop serves thousands.
 */
#include "khala/cache.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channel.h"
#include "client_internal.h"
#include "debug.h"
#include "l1_lookup.h"
#include "readers.h"
#include "segment.h"
#include "sys.h"

typedef struct seg_node {
    khala_seg_t seg;       /* first member: a tstate's seg pointer is its node's address */
    struct seg_node *next; /* guarded by c->lock */
    uint32_t users;        /* thread states whose slot is in this segment; guarded by c->lock */
} seg_node_t;

_Static_assert(offsetof(seg_node_t, seg) == 0, "a tstate's seg is its node");

typedef struct tstate {
    khala_cache_t *c;
    khala_seg_t *seg;   /* segment the slot belongs to; NULL when none is claimed */
    khala_slot_t *slot; /* the claimed slot */
    uint32_t idx;       /* its index */
    int in_section;     /* 1 between khala_read_begin and khala_read_end */
    uint64_t fork_gen;  /* g_fork_gen when the slot was claimed */
    uint64_t base_hits; /* slot counters at claim time: this thread's share is the rest */
    uint64_t base_misses;
    khala_chan_t *chan;   /* this thread's connection to khalad; NULL when none is open */
    int chan_failed;      /* 1 after a failed connect, until one succeeds */
    int chan_fail_rc;     /* that failure's code, repeated during the retry interval */
    int64_t chan_fail_ms; /* when it happened (khala__sys_now_ms) */
    char chan_err[256];   /* its message */
    struct tstate *next;  /* guarded by c->lock */
} tstate_t;

struct khala_cache {
    pthread_mutex_t lock; /* guards segs, threads, retired_* and changes of cur */
    pthread_t lock_owner; /* the thread holding lock, valid while lock_held; guarded by
                                   lock (read by that thread only, in KHALA_ASSERT_LOCKED) */
    int lock_held;
    pthread_key_t key;          /* thread -> tstate_t; immutable after open */
    _Atomic(khala_seg_t *) cur; /* the live segment; acquire loads, changed under lock */
    seg_node_t *segs;           /* the current segment and the replaced ones threads still use,
                                   newest first */
    tstate_t *threads;          /* thread states */
    uint64_t fork_gen;          /* g_fork_gen that the handle's fds belong to */
    uint64_t id;                /* unique per handle, never reused; immutable after open */
    uint64_t retired_hits;      /* counts of threads that exited */
    uint64_t retired_misses;
    int timeout_ms;                  /* per request to khalad; -1 = no limit; immutable */
    char sock[108];                  /* khalad's socket path; immutable after open */
    char name[KHALA_NAME_MAX + 1];   /* immutable after open */
    struct khala_cache *next_handle; /* guarded by g_handles_lock */
};

/* Take and give back a handle's lock, recording the owner so that the *_locked functions can
 * assert their precondition (KHALA_ASSERT_LOCKED). */
static void handle_lock(khala_cache_t *c) {
    pthread_mutex_lock(&c->lock);
    c->lock_owner = pthread_self();
    c->lock_held = 1;
}

static void handle_unlock(khala_cache_t *c) {
    c->lock_held = 0;
    pthread_mutex_unlock(&c->lock);
}

#define KHALA_ASSERT_LOCKED(c)                                                                     \
    KHALA_ASSERT((c)->lock_held &&pthread_equal((c)->lock_owner, pthread_self()))

/* Rounds of get_or_load when leaders' loaders keep failing (step 4). */
#define GET_OR_LOAD_ROUNDS 3

/* Bumped in the child after every fork; see the theory above. */
static _Atomic uint64_t g_fork_gen;
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;

/* Handle ids; 0 is never a handle's. */
static _Atomic uint64_t g_next_id = 1;
/* The calling thread's last handle and its state there (see ts_get). */
/* initial-exec: in the shared library a thread-local then costs one %fs-relative load, where
 * the default (general-dynamic) model calls __tls_get_addr on every get. The two words fit the
 * static TLS reserve that glibc keeps for libraries loaded with dlopen. */
#define TLS_IE __attribute__((tls_model("initial-exec")))
static __thread uint64_t tls_last_id TLS_IE;
static __thread struct tstate *tls_last_ts TLS_IE;

/* The calling thread's last error and the handle it belongs to (NULL: khala_cache_open). */
static __thread char tls_err[256];
static __thread const khala_cache_t *tls_err_owner;

/* Every open handle, so that fork can be handled at the moment it happens (see on_fork_*).
 * Lock order: g_handles_lock, then each handle's c->lock. */
static pthread_mutex_t g_handles_lock = PTHREAD_MUTEX_INITIALIZER;
static khala_cache_t *g_handles; /* guarded by g_handles_lock */

/* Before fork: hold every lock the child will need, so that none is copied held by a thread
 * that does not exist in the child. */
static void on_fork_prepare(void) {
    pthread_mutex_lock(&g_handles_lock);
    for (khala_cache_t *c = g_handles; c; c = c->next_handle)
        handle_lock(c);
}

static void on_fork_parent(void) {
    for (khala_cache_t *c = g_handles; c; c = c->next_handle)
        handle_unlock(c);
    pthread_mutex_unlock(&g_handles_lock);
}

/* In the child, before fork returns: the child shares the parent's open file descriptions of
 * the readers files, and with them the parent's slot locks. Holding them would make a parent
 * that dies inside a read section look alive for as long as this child lives (nothing could
 * reap its slot), so the child gives them up at once: each readers file is reopened and
 * remapped through the new description, which drops the child's references to the parent's
 * (the descriptor and, easy to miss, the mapping). Only the forking thread exists here. A
 * reopen that fails is retried, and reported, by the child's next call.
 *
 * The forking thread's own pointers to its thread states (the key's value, tls_last_ts) are
 * dropped here too: the child's first call frees every parent thread state
 * (after_fork_locked), and when that call runs on another thread (a thread pool started after
 * the fork), only this thread's pointers would be left dangling, to be used by its next call. */
static void on_fork_child(void) {
    tls_last_id = 0;
    tls_last_ts = NULL;
    for (khala_cache_t *c = g_handles; c; c = c->next_handle) {
        (void)pthread_setspecific(c->key, NULL);
        for (seg_node_t *n = c->segs; n; n = n->next) {
            if (khala__seg_reopen_readers(&n->seg) != 0) {
                khala__sys_close(n->seg.readers_fd); /* the next call retries */
                n->seg.readers_fd = -1;
            }
        }
        handle_unlock(c);
    }
    pthread_mutex_unlock(&g_handles_lock);
    atomic_fetch_add_explicit(&g_fork_gen, 1, memory_order_relaxed);
}

static void atfork_register(void) {
    (void)pthread_atfork(on_fork_prepare, on_fork_parent, on_fork_child);
}

static int fail(const khala_cache_t *c, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int vfail(const khala_cache_t *c, int rc, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

static int vfail(const khala_cache_t *c, int rc, const char *fmt, va_list ap) {
    vsnprintf(tls_err, sizeof(tls_err), fmt, ap);
    tls_err_owner = c;
    return rc;
}

static int fail(const khala_cache_t *c, int rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    rc = vfail(c, rc, fmt, ap);
    va_end(ap);
    return rc;
}

static int key_fail(const khala_cache_t *c, size_t klen) {
    if (klen == 0)
        return fail(c, KHALA_EKEY, "key is empty");
    return fail(c, KHALA_EKEY, "key is %zu bytes, max %d", klen, KHALA_KEY_MAX);
}

/* A TTL above the documented maximum is refused before anything is sent (khalad refuses it too). */
static int ttl_fail(const khala_cache_t *c, uint64_t ttl_ms) {
    return fail(c, KHALA_EINVAL, "ttl is %" PRIu64 " ms, max %llu ms (10 years)", ttl_ms,
                KHALA_TTL_MAX_MS);
}

/* Unmap and forget the segments the writer replaced that no thread of this handle uses any
 * more. A thread leaves a segment only outside a read section (its next call moves it to the
 * current one), so a segment without users has no live view into it. Caller holds c->lock. */
static void segs_prune_locked(khala_cache_t *c) {
    KHALA_ASSERT_LOCKED(c);
    khala_seg_t *cur = atomic_load_explicit(&c->cur, memory_order_relaxed);
    for (seg_node_t **pp = &c->segs; *pp;) {
        seg_node_t *n = *pp;
        if (n->users == 0 && &n->seg != cur) {
            *pp = n->next;
            khala__seg_detach(&n->seg);
            free(n);
        } else {
            pp = &n->next;
        }
    }
}

/* Give the thread's slot back and fold its counts into the handle. Caller holds c->lock. */
static void ts_release_locked(khala_cache_t *c, tstate_t *ts) {
    KHALA_ASSERT_LOCKED(c);
    if (!ts->seg)
        return;
    c->retired_hits += khala_load_relaxed(&ts->slot->hits) - ts->base_hits;
    c->retired_misses += khala_load_relaxed(&ts->slot->misses) - ts->base_misses;
    khala__readers_release(ts->seg, ts->idx);
    ((seg_node_t *)ts->seg)->users--;
    ts->seg = NULL;
    ts->slot = NULL;
    segs_prune_locked(c);
}

static void ts_destroy(void *p) {
    tstate_t *ts = p;
    khala_cache_t *c = ts->c;
    handle_lock(c);
    if (ts->fork_gen == atomic_load_explicit(&g_fork_gen, memory_order_relaxed))
        ts_release_locked(c, ts);
    /* Closing only this process's descriptor: harmless even for a parent's copy after fork. */
    khala__chan_close(ts->chan);
    for (tstate_t **pp = &c->threads; *pp; pp = &(*pp)->next) {
        if (*pp == ts) {
            *pp = ts->next;
            break;
        }
    }
    handle_unlock(c);
    if (tls_last_ts == ts) {
        tls_last_id = 0;
        tls_last_ts = NULL;
    }
    free(ts);
}

/* In a child after fork: the handle's thread states and slots are the parent's. Forget them
 * without releasing anything; reopen a readers file that on_fork_child could not. Caller
 * holds c->lock. */
static int after_fork_locked(khala_cache_t *c, uint64_t gen) {
    KHALA_ASSERT_LOCKED(c);
    while (c->threads) {
        tstate_t *ts = c->threads;
        c->threads = ts->next;
        khala__chan_close(ts->chan); /* the parent's connection: close our copy, never use it */
        free(ts);
    }
    (void)pthread_setspecific(c->key, NULL);
    tls_last_id = 0;
    tls_last_ts = NULL;
    for (seg_node_t *n = c->segs; n; n = n->next)
        n->users = 0; /* the parent's threads' */
    segs_prune_locked(c);
    for (seg_node_t *n = c->segs; n; n = n->next) {
        int rc = n->seg.readers_fd >= 0 ? 0 : khala__seg_reopen_readers(&n->seg);
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
    KHALA_ASSERT_LOCKED(c);
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
    segs_prune_locked(c); /* the replaced one goes at once if no thread uses it */
    return 0;
}

/* The calling thread's state, made if need be. Caller holds c->lock and has run the fork
 * handling for gen. */
static int ts_find_locked(khala_cache_t *c, uint64_t gen, tstate_t **out) {
    KHALA_ASSERT_LOCKED(c);
    tstate_t *ts = pthread_getspecific(c->key);
    if (!ts) {
        ts = calloc(1, sizeof(*ts));
        if (!ts)
            return fail(c, -ENOMEM, "out of memory");
        ts->c = c;
        ts->fork_gen = gen;
        ts->next = c->threads;
        c->threads = ts;
        (void)pthread_setspecific(c->key, ts);
    }
    *out = ts;
    return 0;
}

/* The calling thread's state, without claiming a reader slot: what calls through khalad need. */
static int ts_self(khala_cache_t *c, tstate_t **out) {
    uint64_t gen = atomic_load_explicit(&g_fork_gen, memory_order_relaxed);
    tstate_t *ts = pthread_getspecific(c->key);
    if (ts && ts->fork_gen == gen) {
        *out = ts;
        return 0;
    }
    int rc = 0;
    handle_lock(c);
    if (c->fork_gen != gen)
        rc = after_fork_locked(c, gen);
    if (rc == 0)
        rc = ts_find_locked(c, gen, out);
    handle_unlock(c);
    return rc;
}

/* The slow path: make sure the calling thread has a slot in the current segment. `stale` is a
 * segment the caller found replaced, or NULL. */
static int ts_slow(khala_cache_t *c, khala_seg_t *stale, tstate_t **out) {
    int rc = 0;
    uint64_t gen = atomic_load_explicit(&g_fork_gen, memory_order_relaxed);
    handle_lock(c);
    if (c->fork_gen != gen && (rc = after_fork_locked(c, gen)) != 0)
        goto out;
    if (stale && (rc = reattach_locked(c, stale)) != 0)
        goto out;
    tstate_t *ts = NULL;
    if ((rc = ts_find_locked(c, gen, &ts)) != 0)
        goto out;
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
        ((seg_node_t *)cur)->users++;
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
    handle_unlock(c);
    return rc;
}

static inline int ts_get(khala_cache_t *c, tstate_t **out) {
    /* The thread's last handle is cached in plain thread-locals, which costs a compare where
     * pthread_getspecific costs a call. Handle ids are never reused, so a stale entry (its
     * handle closed) can never match. */
    int cached = tls_last_id == c->id;
    tstate_t *ts = cached ? tls_last_ts : pthread_getspecific(c->key);
    if (__builtin_expect(
            ts && ts->seg && ts->seg == atomic_load_explicit(&c->cur, memory_order_acquire) &&
                ts->fork_gen == atomic_load_explicit(&g_fork_gen, memory_order_relaxed),
            1)) {
        if (__builtin_expect(!cached, 0)) { /* the common case stores nothing */
            tls_last_id = c->id;
            tls_last_ts = ts;
        }
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
    opts->timeout_ms = KHALA_TIMEOUT_DEFAULT_MS;
}

void khala_put_options_init(khala_put_options_t *opts) {
    memset(opts, 0, sizeof(*opts));
    opts->type = KHALA_TYPE_MEMORY_ENTITY;
    opts->mode = KHALA_MODE_DEFAULT;
}

int khala_cache_open(const char *name, const khala_cache_options_t *opts, khala_cache_t **out) {
    char err[256];
    khala_cache_options_t def;
    if (!opts) {
        khala_cache_options_init(&def);
        opts = &def;
    }
    pthread_once(&g_atfork_once, atfork_register);
    khala_cache_t *c = calloc(1, sizeof(*c));
    seg_node_t *n = calloc(1, sizeof(*n));
    int rc;
    if (!c || !n) {
        rc = fail(NULL, -ENOMEM, "out of memory");
        goto fail_alloc;
    }
    /* Unique per handle: the thread fast path caches (id, state), and a handle opened after
     * another was closed must not find the closed one's state. */
    c->id = atomic_fetch_add_explicit(&g_next_id, 1, memory_order_relaxed);
    if ((rc = khala__seg_attach(&n->seg, name, 0, err, sizeof(err))) != 0) {
        fail(NULL, rc, "%s", err);
        goto fail_alloc;
    }
    /* The name is valid now, so the default path is made of a valid name. */
    c->timeout_ms = opts->timeout_ms == 0  ? KHALA_TIMEOUT_DEFAULT_MS
                    : opts->timeout_ms < 0 ? -1
                                           : opts->timeout_ms;
    if (opts->socket_path && strlen(opts->socket_path) >= sizeof(c->sock)) {
        rc = fail(NULL, -ENAMETOOLONG, "socket path '%s' is longer than %zu bytes",
                  opts->socket_path, sizeof(c->sock) - 1);
        goto fail_key;
    }
    if (opts->socket_path)
        snprintf(c->sock, sizeof(c->sock), "%s", opts->socket_path);
    else if ((rc = khala__chan_default_path(name, c->sock, sizeof(c->sock))) != 0) {
        fail(NULL, rc, "the default socket path of cache '%s' is too long", name);
        goto fail_key;
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
    pthread_mutex_lock(&g_handles_lock);
    c->next_handle = g_handles;
    g_handles = c;
    pthread_mutex_unlock(&g_handles_lock);
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
    pthread_mutex_lock(&g_handles_lock);
    for (khala_cache_t **pp = &g_handles; *pp; pp = &(*pp)->next_handle) {
        if (*pp == c) {
            *pp = c->next_handle;
            break;
        }
    }
    pthread_mutex_unlock(&g_handles_lock);
    uint64_t gen = atomic_load_explicit(&g_fork_gen, memory_order_relaxed);
    pthread_key_delete(c->key);
    handle_lock(c); /* no other thread may use c now; the lock is for the *_locked contract */
    while (c->threads) {
        tstate_t *ts = c->threads;
        c->threads = ts->next;
        if (ts->fork_gen == gen && c->fork_gen == gen)
            ts_release_locked(c, ts);
        khala__chan_close(ts->chan);
        free(ts);
    }
    handle_unlock(c);
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

/* l1_get's answer when no segment can be read: the writer replaced it and the new one cannot be
 * attached yet (being made, or removed). Positive, so never a code a caller sees: a get then
 * asks khalad, as after a miss. */
#define L1_AWAY 1

/* 1 for the codes of a failed reattach (a segment being replaced), which a get treats as a
 * miss. */
static int l1_away(int rc) {
    return rc == KHALA_ELAYOUT || rc == KHALA_ECORRUPT || rc == -ENOENT;
}

/* The L1 part of a get. On KHALA_ENOTFOUND, *tsp is the calling thread's state; on L1_AWAY it
 * is NULL. On a hit, *meta (when not NULL) describes the item. Always inlined: it is the hit
 * path of khala_cache_get, where meta is NULL and its code goes away. */
static inline __attribute__((always_inline)) int l1_get(khala_cache_t *c, const void *key,
                                                        size_t klen, void *buf, size_t cap,
                                                        size_t *len, khala_meta_t *meta,
                                                        tstate_t **tsp) {
    tstate_t *ts = NULL;
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
    khala_l1_index_t ix = khala__l1_index(s);
    uint64_t hash = khala__l1_hash_with(ix.seed, key, klen);
    const khala_bucket_t *b = khala__l1_bucket(s, &ix, hash);
    __builtin_prefetch(b);
    if ((rc = section_enter(c, &ts)) != 0)
        return l1_away(rc) ? L1_AWAY : rc;
    /* acquire: as in khala__l1_index; the index taken before the section is good only if no
     * rehash published another since. */
    if (__builtin_expect(ts->seg != s || khala_load_acquire(&s->hdr->index_count) != ix.count, 0)) {
        s = ts->seg; /* reattached to a new segment, or the writer rehashed: a new seed */
        ix = khala__l1_index(s);
        hash = khala__l1_hash_with(ix.seed, key, klen);
        b = khala__l1_bucket(s, &ix, hash);
    }
    KHALA_ASSERT_IN_READ(ts->slot);
    rc = khala__l1_lookup_in(s, &ix, b, key, klen, hash, &it);
    size_t vlen = 0;
    if (rc == 0) {
        vlen = it->value_len;
        if (vlen <= cap) {
            khala__l1_copy(buf, khala__item_value(it), vlen);
        } else
            rc = -ERANGE;
        if (meta) {
            meta->level = KHALA_LEVEL_L1;
            meta->version = it->version;
            meta->type = it->type;
            meta->ttl_left_ms = -1;
            /* relaxed: as in khala_cache_view (remove_or_expire). */
            int64_t deadline = __atomic_load_n(&it->expire_ms, __ATOMIC_RELAXED);
            if (deadline) {
                int64_t left = deadline - khala__sys_now_ms();
                meta->ttl_left_ms = left > 0 ? left : 0;
            }
        }
        khala__reader_record(s, ts->slot, it->desc, hash); /* also counts the hit */
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
    *tsp = ts;
    return rc;
}

/* khalad ------------------------------------------------------------------------------------ */

/* Make sure the calling thread has a usable channel; see "THE MISS PATH AND WRITES". */
static int chan_get(khala_cache_t *c, tstate_t *ts) {
    char err[256];
    if (ts->chan) {
        if (khala__chan_usable(ts->chan))
            return 0;
        khala__chan_close(ts->chan);
        ts->chan = NULL;
    }
    int64_t now = khala__sys_now_ms();
    if (ts->chan_failed && now - ts->chan_fail_ms < KHALA_RECONNECT_INTERVAL_MS)
        return fail(c, ts->chan_fail_rc, "%s", ts->chan_err);
    int rc = khala__chan_open(c->sock, c->name, c->timeout_ms, &ts->chan, err, sizeof(err));
    if (rc != 0) {
        ts->chan = NULL;
        ts->chan_failed = 1;
        ts->chan_fail_rc = rc;
        ts->chan_fail_ms = now;
        snprintf(ts->chan_err, sizeof(ts->chan_err), "%s", err);
        return fail(c, rc, "%s", err);
    }
    ts->chan_failed = 0;
    return 0;
}

/* Send req to khalad on the calling thread's channel and wait for the reply. 0 when a reply
 * came (its rc is khalad's answer: see reply_fail), else the failure (errmsg set). */
static int daemon_call(khala_cache_t *c, tstate_t *ts, khala_msg_t *req, khala_msg_t *rep,
                       int timeout_ms) {
    char err[256];
    int rc = chan_get(c, ts);
    if (rc != 0)
        return rc;
    rc = khala__chan_call(ts->chan, req, rep, timeout_ms, err, sizeof(err));
    if (rc != 0) {
        if (!khala__chan_usable(ts->chan)) {
            khala__chan_close(ts->chan);
            ts->chan = NULL;
        }
        return fail(c, rc, "%s", err);
    }
    return 0;
}

/* The error khalad answered with, in errmsg; returns it. */
static int reply_fail(khala_cache_t *c, const khala_msg_t *rep) {
    if (rep->err.len)
        return fail(c, rep->rc, "khalad: %.*s", (int)rep->err.len, (const char *)rep->err.ptr);
    return fail(c, rep->rc, "khalad: %s", khala_strerror(rep->rc));
}

/* A request carrying key. */
khala_msg_t khala__client_key_request(khala_op_t op, const void *key, size_t klen) {
    khala_msg_t m;
    khala__proto_msg_init(&m);
    m.op = op;
    m.key.ptr = key;
    m.key.len = klen;
    m.has = KHALA_F_K;
    return m;
}

khala_msg_t khala__client_fill_request(const void *key, size_t klen, int lrc, const void *val,
                                       size_t vlen, khala_type_t type, uint64_t ttl_ms,
                                       const char *why) {
    khala_msg_t req =
        khala__client_key_request(lrc == 0 ? KHALA_OP_FILL : KHALA_OP_FILL_FAIL, key, klen);
    if (lrc == 0) {
        req.value.ptr = val;
        req.value.len = vlen;
        req.type = type;
        req.ttl_ms = ttl_ms;
        req.has |= KHALA_F_V | KHALA_F_TYPE | (ttl_ms ? KHALA_F_TTL : 0);
    } else {
        req.err.ptr = (const uint8_t *)why;
        req.err.len = strnlen(why, KHALA_PROTO_ERR_MAX);
        req.has |= KHALA_F_ERR;
    }
    return req;
}

/* Copy a get reply's value out, as khala_cache_get does. */
static int copy_value(khala_cache_t *c, const khala_msg_t *rep, void *buf, size_t cap,
                      size_t *len) {
    size_t vlen = rep->value.len;
    if (vlen > cap) {
        if (len)
            *len = vlen;
        return fail(c, -ERANGE, "value is %zu bytes, buffer %zu", vlen, cap);
    }
    if (vlen)
        memcpy(buf, rep->value.ptr, vlen);
    if (len)
        *len = vlen;
    return 0;
}

/* The timeout of a get that may wait for another worker's load. */
static int wait_timeout(const khala_cache_t *c) {
    if (c->timeout_ms < 0)
        return -1;
    return c->timeout_ms > INT_MAX / 2 ? INT_MAX : 2 * c->timeout_ms;
}

/* An L1 miss of khala_cache_get: ask khalad. */
static int get_from_daemon(khala_cache_t *c, tstate_t *ts, const void *key, size_t klen, void *buf,
                           size_t cap, size_t *len) {
    khala_msg_t req = khala__client_key_request(KHALA_OP_GET, key, klen), rep;
    khala__proto_msg_init(&rep);
    int rc = daemon_call(c, ts, &req, &rep, c->timeout_ms);
    if (rc != 0) {
        /* Reads keep working from L1 while khalad is away: this is a plain miss. */
        char why[256];
        snprintf(why, sizeof(why), "%s", tls_err);
        return fail(c, KHALA_ENOTFOUND, "not in L1, and khalad could not be asked: %s", why);
    }
    rc = rep.rc == 0 ? copy_value(c, &rep, buf, cap, len) : reply_fail(c, &rep);
    khala__proto_msg_free(&rep);
    return rc;
}

int khala_cache_get(khala_cache_t *c, const void *key, size_t klen, void *buf, size_t cap,
                    size_t *len) {
    tstate_t *ts = NULL; /* set by l1_get on KHALA_ENOTFOUND */
    int rc = l1_get(c, key, klen, buf, cap, len, NULL, &ts);
    if (__builtin_expect(rc != KHALA_ENOTFOUND && rc != L1_AWAY, 1))
        return rc;
    if (rc == L1_AWAY && (rc = ts_self(c, &ts)) != 0)
        return rc;
    return get_from_daemon(c, ts, key, klen, buf, cap, len);
}

int khala_cache_get_l1(khala_cache_t *c, const void *key, size_t klen, void *buf, size_t cap,
                       size_t *len, khala_meta_t *meta) {
    tstate_t *ts = NULL;
    int rc = meta ? l1_get(c, key, klen, buf, cap, len, meta, &ts)
                  : l1_get(c, key, klen, buf, cap, len, NULL, &ts);
    if (__builtin_expect(rc == L1_AWAY, 0))
        return fail(c, KHALA_ENOTFOUND, "cache '%s' is being replaced: L1 cannot be read now",
                    c->name);
    return rc;
}

/* For lib/client_fetch.c (client_internal.h). */
int khala__client_call(khala_cache_t *c, khala_msg_t *req, khala_msg_t *rep, int wait) {
    tstate_t *ts = NULL;
    int rc = ts_self(c, &ts);
    if (rc != 0)
        return rc;
    return daemon_call(c, ts, req, rep, wait ? wait_timeout(c) : c->timeout_ms);
}

int khala__client_reply_fail(khala_cache_t *c, const khala_msg_t *rep) {
    return reply_fail(c, rep);
}

int khala__client_fail(const khala_cache_t *c, int rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    rc = vfail(c, rc, fmt, ap);
    va_end(ap);
    return rc;
}

/* Run the loader; a positive return is a loader bug, reported as -EINVAL. On success *vlen is
 * the value's length (at most cap). */
static int run_loader(khala_cache_t *c, khala_loader_fn loader, void *arg, const void *key,
                      size_t klen, void *buf, size_t cap, size_t *vlen) {
    size_t n = 0;
    int rc = loader(arg, key, klen, buf, cap, &n);
    if (rc == 0 && n > cap)
        rc = -ERANGE; /* the loader should have said so itself */
    if (rc == -ERANGE) {
        *vlen = n;
        return fail(c, rc, "the loaded value is %zu bytes, buffer %zu", n, cap);
    }
    if (rc > 0)
        return fail(c, -EINVAL, "the loader returned %d; loaders return 0 or a negative code", rc);
    if (rc != 0)
        return fail(c, rc, "the loader failed: %s", khala_strerror(rc));
    *vlen = n;
    return 0;
}

/* Step 3 of get_or_load: this caller leads the load of key. */
static int lead_load(khala_cache_t *c, tstate_t *ts, const void *key, size_t klen,
                     khala_loader_fn loader, void *arg, void *buf, size_t cap, size_t *len,
                     khala_type_t type, uint64_t ttl_ms) {
    size_t vlen = 0;
    int lrc = run_loader(c, loader, arg, key, klen, buf, cap, &vlen);
    char saved[sizeof(tls_err)];
    snprintf(saved, sizeof(saved), "%s", tls_err);
    khala_msg_t req = khala__client_fill_request(key, klen, lrc, buf, vlen, type, ttl_ms, saved),
                rep;
    khala__proto_msg_init(&rep);
    /* The outcome of the fill does not change the caller's: the value is loaded either way. A
     * fill refused before it was sent (too big a frame) leaves the waiters waiting, so they
     * hear fill_fail instead; a broken connection makes khalad hand the lead to a waiter. */
    int rc = daemon_call(c, ts, &req, &rep, c->timeout_ms);
    khala__proto_msg_free(&rep);
    if (rc != 0 && lrc == 0 && ts->chan) {
        khala_msg_t ff = khala__client_key_request(KHALA_OP_FILL_FAIL, key, klen);
        (void)daemon_call(c, ts, &ff, &rep, c->timeout_ms);
        khala__proto_msg_free(&rep);
    }
    if (lrc == 0) {
        if (len)
            *len = vlen;
        return 0;
    }
    if (lrc == -ERANGE && len)
        *len = vlen;
    return fail(c, lrc, "%s", saved);
}

/* Step 5 of get_or_load: load without khalad; nothing is cached. */
static int load_directly(khala_cache_t *c, const void *key, size_t klen, khala_loader_fn loader,
                         void *arg, void *buf, size_t cap, size_t *len) {
    size_t vlen = 0;
    int rc = run_loader(c, loader, arg, key, klen, buf, cap, &vlen);
    if ((rc == 0 || rc == -ERANGE) && len)
        *len = vlen;
    return rc;
}

int khala_cache_get_or_load(khala_cache_t *c, const void *key, size_t klen, khala_loader_fn loader,
                            void *loader_arg, void *buf, size_t cap, size_t *len, khala_type_t type,
                            uint64_t ttl_ms) {
    if (klen - 1 >= KHALA_KEY_MAX)
        return key_fail(c, klen);
    if (ttl_ms > KHALA_TTL_MAX_MS)
        return ttl_fail(c, ttl_ms);
    if (!loader)
        return fail(c, -EINVAL, "no loader");
    if ((unsigned)type >= KHALA_TYPE_COUNT)
        return fail(c, -EINVAL, "type %d is not a data type (0..%d)", (int)type,
                    KHALA_TYPE_COUNT - 1);
    /* Step 1. */
    tstate_t *ts = NULL; /* set by l1_get on KHALA_ENOTFOUND */
    int rc = l1_get(c, key, klen, buf, cap, len, NULL, &ts);
    if (rc == L1_AWAY && (rc = ts_self(c, &ts)) == 0)
        rc = KHALA_ENOTFOUND;
    if (rc != KHALA_ENOTFOUND)
        return rc;
    for (int round = 0; round < GET_OR_LOAD_ROUNDS; round++) {
        /* Step 2. */
        khala_msg_t req = khala__client_key_request(KHALA_OP_GET, key, klen), rep;
        khala__proto_msg_init(&rep);
        req.loader = true;
        req.type = type;
        req.has |= KHALA_F_LOADER | KHALA_F_TYPE;
        if (daemon_call(c, ts, &req, &rep, wait_timeout(c)) != 0)
            return load_directly(c, key, klen, loader, loader_arg, buf, cap, len); /* step 5 */
        int answer = rep.rc;
        bool lead = rep.load;
        if (answer == 0)
            rc = copy_value(c, &rep, buf, cap, len);
        else if (answer != KHALA_ENOTFOUND && answer != -EAGAIN && answer != -ETIMEDOUT)
            rc = reply_fail(c, &rep);
        khala__proto_msg_free(&rep);
        if (answer == 0)
            return rc;
        if (answer == KHALA_ENOTFOUND && lead) /* step 3 */
            return lead_load(c, ts, key, klen, loader, loader_arg, buf, cap, len, type, ttl_ms);
        if (answer == KHALA_ENOTFOUND || answer == -ETIMEDOUT) /* step 5 */
            return load_directly(c, key, klen, loader, loader_arg, buf, cap, len);
        if (answer != -EAGAIN)
            return rc;
        /* Step 4: the leader's loader failed; ask again. */
    }
    return fail(c, -EAGAIN, "the loader of this key failed %d times in a row, in other workers",
                GET_OR_LOAD_ROUNDS);
}

/* Validate a key, then find the calling thread's state. */
static int key_and_ts(khala_cache_t *c, size_t klen, tstate_t **ts) {
    if (klen - 1 >= KHALA_KEY_MAX)
        return key_fail(c, klen);
    return ts_self(c, ts);
}

/* links and nlinks took two of the four reserved words: the options keep their size (ABI). */
_Static_assert(sizeof(void *) != 8 || sizeof(khala_put_options_t) == 64, "put options size");

/* The links of a put (khala_put_options_t.links), checked and as the protocol's byte strings
 * (*out: the caller frees it). */
static int put_links(khala_cache_t *c, const void *key, size_t klen,
                     const khala_put_options_t *opts, khala_bytes_t **out) {
    if (opts->nlinks > KHALA_LINKS_MAX || !opts->links)
        return fail(c, -EINVAL, "%zu links%s, max %u", opts->nlinks,
                    opts->links ? "" : " and no array", KHALA_LINKS_MAX);
    khala_bytes_t *b = malloc(opts->nlinks * sizeof(*b));
    if (!b)
        return fail(c, -ENOMEM, "out of memory for %zu links", opts->nlinks);
    for (size_t i = 0; i < opts->nlinks; i++) {
        const khala_link_t *l = &opts->links[i];
        int bad = l->klen == 0 || l->klen > KHALA_KEY_MAX || !l->key;
        if (bad || (l->klen == klen && memcmp(l->key, key, klen) == 0)) {
            free(b);
            if (bad)
                return fail(c, KHALA_EKEY, "link %zu is %zu bytes, expected 1..%d", i, l->klen,
                            KHALA_KEY_MAX);
            return fail(c, KHALA_EKEY, "link %zu is the item's own key", i);
        }
        b[i] = (khala_bytes_t){l->key, l->klen};
    }
    *out = b;
    return 0;
}

int khala_cache_put(khala_cache_t *c, const void *key, size_t klen, const void *val, size_t vlen,
                    const khala_put_options_t *opts, uint64_t *version) {
    khala_put_options_t def;
    tstate_t *ts = NULL;
    if (!opts) {
        khala_put_options_init(&def);
        opts = &def;
    }
    if ((unsigned)opts->type >= KHALA_TYPE_COUNT)
        return fail(c, -EINVAL, "type %d is not a data type (0..%d)", (int)opts->type,
                    KHALA_TYPE_COUNT - 1);
    if ((unsigned)opts->mode > KHALA_MODE_BEHIND)
        return fail(c, -EINVAL, "write mode %d is not a mode", (int)opts->mode);
    if (opts->ttl_ms > KHALA_TTL_MAX_MS)
        return ttl_fail(c, opts->ttl_ms);
    int rc = key_and_ts(c, klen, &ts);
    if (rc != 0)
        return rc;
    if ((rc = chan_get(c, ts)) != 0)
        return rc;
    uint32_t max_value = khala__chan_info(ts->chan)->max_value;
    if (vlen > max_value)
        return fail(c, KHALA_ETOOBIG, "value is %zu bytes, max %u", vlen, (unsigned)max_value);
    khala_msg_t req = khala__client_key_request(KHALA_OP_PUT, key, klen), rep;
    khala__proto_msg_init(&rep);
    req.value.ptr = val;
    req.value.len = vlen;
    req.type = opts->type;
    req.has |= KHALA_F_V | KHALA_F_TYPE;
    if (opts->ttl_ms) {
        req.ttl_ms = opts->ttl_ms;
        req.has |= KHALA_F_TTL;
    }
    if (opts->flags & KHALA_PUT_CAS) {
        req.ver = opts->expected_version;
        req.has |= KHALA_F_VER;
    }
    if (opts->mode != KHALA_MODE_DEFAULT) {
        req.mode = opts->mode;
        req.has |= KHALA_F_MODE;
    }
    khala_bytes_t *links = NULL;
    if (opts->nlinks && (rc = put_links(c, key, klen, opts, &links)) != 0)
        return rc;
    req.links = links;
    req.nlinks = (uint32_t)opts->nlinks;
    req.has |= opts->nlinks ? KHALA_F_LINKS : 0;
    rc = daemon_call(c, ts, &req, &rep, c->timeout_ms);
    free(links);
    if (rc != 0)
        return rc;
    rc = rep.rc ? reply_fail(c, &rep) : 0;
    if (rc == 0 && version)
        *version = rep.ver;
    khala__proto_msg_free(&rep);
    return rc;
}

/* A request whose reply carries nothing the caller needs but rc and, maybe, a count. */
static int simple_call(khala_cache_t *c, tstate_t *ts, khala_msg_t *req, uint64_t *count) {
    khala_msg_t rep;
    khala__proto_msg_init(&rep);
    int rc = daemon_call(c, ts, req, &rep, c->timeout_ms);
    if (rc != 0)
        return rc;
    rc = rep.rc ? reply_fail(c, &rep) : 0;
    if (rc == 0 && count)
        *count = rep.count;
    khala__proto_msg_free(&rep);
    return rc;
}

int khala_cache_delete(khala_cache_t *c, const void *key, size_t klen) {
    tstate_t *ts = NULL;
    int rc = key_and_ts(c, klen, &ts);
    if (rc != 0)
        return rc;
    khala_msg_t req = khala__client_key_request(KHALA_OP_DEL, key, klen);
    return simple_call(c, ts, &req, NULL);
}

int khala_cache_touch(khala_cache_t *c, const void *key, size_t klen, uint64_t ttl_ms) {
    tstate_t *ts = NULL;
    if (ttl_ms > KHALA_TTL_MAX_MS)
        return ttl_fail(c, ttl_ms);
    int rc = key_and_ts(c, klen, &ts);
    if (rc != 0)
        return rc;
    khala_msg_t req = khala__client_key_request(KHALA_OP_TOUCH, key, klen);
    if (ttl_ms) {
        req.ttl_ms = ttl_ms;
        req.has |= KHALA_F_TTL;
    }
    return simple_call(c, ts, &req, NULL);
}

int khala_cache_invalidate_prefix(khala_cache_t *c, const void *prefix, size_t plen,
                                  uint64_t *count) {
    tstate_t *ts = NULL;
    if (plen - 1 >= KHALA_KEY_MAX)
        return fail(c, KHALA_EKEY, "prefix is %zu bytes, 1..%d allowed", plen, KHALA_KEY_MAX);
    int rc = ts_self(c, &ts);
    if (rc != 0)
        return rc;
    khala_msg_t req;
    khala__proto_msg_init(&req);
    req.op = KHALA_OP_INVALIDATE;
    req.by = KHALA_BY_PREFIX;
    req.prefix.ptr = prefix;
    req.prefix.len = plen;
    req.has = KHALA_F_BY | KHALA_F_PREFIX;
    return simple_call(c, ts, &req, count);
}

int khala_cache_invalidate_type(khala_cache_t *c, khala_type_t type, uint64_t *count) {
    tstate_t *ts = NULL;
    if ((unsigned)type >= KHALA_TYPE_COUNT)
        return fail(c, -EINVAL, "type %d is not a data type (0..%d)", (int)type,
                    KHALA_TYPE_COUNT - 1);
    int rc = ts_self(c, &ts);
    if (rc != 0)
        return rc;
    khala_msg_t req;
    khala__proto_msg_init(&req);
    req.op = KHALA_OP_INVALIDATE;
    req.by = KHALA_BY_TYPE;
    req.type = type;
    req.has = KHALA_F_BY | KHALA_F_TYPE;
    return simple_call(c, ts, &req, count);
}

/* Reads ------------------------------------------------------------------------------------ */

int khala_read_begin(khala_cache_t *c) {
    tstate_t *ts = NULL;
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
    /* A section this thread's parent opened before fork(): the slot is the parent's, shared
     * through the mapping, and its section is still open there. Forget it in the child (this
     * state is the child's private copy) and never touch the slot. */
    if (ts->fork_gen == atomic_load_explicit(&g_fork_gen, memory_order_relaxed))
        khala__reader_leave(ts->slot);
    ts->in_section = 0;
}

int khala_cache_view(khala_cache_t *c, const void *key, size_t klen, khala_view_t *view) {
    tstate_t *ts = pthread_getspecific(c->key);
    const khala_item_t *it;
    if (!ts || !ts->in_section)
        return fail(c, KHALA_ESECTION, "khala_cache_view outside a read section");
    if (ts->fork_gen != atomic_load_explicit(&g_fork_gen, memory_order_relaxed))
        return fail(c, KHALA_ESECTION,
                    "khala_cache_view in a read section the parent process opened before "
                    "fork(); end it and open one in this process");
    if (klen - 1 >= KHALA_KEY_MAX)
        return key_fail(c, klen);
    khala_seg_t *s = ts->seg;
    khala_l1_index_t ix = khala__l1_index(s);
    uint64_t hash = khala__l1_hash_with(ix.seed, key, klen);
    KHALA_ASSERT_IN_READ(ts->slot);
    int rc = khala__l1_lookup(s, &ix, key, klen, hash, &it);
    if (rc == KHALA_ENOTFOUND) {
        khala__reader_count(&ts->slot->misses);
        return rc;
    }
    if (rc != 0)
        return fail(c, rc, "cache '%s': lookup met an offset outside the segment", c->name);
    khala__reader_record(s, ts->slot, it->desc, hash); /* also counts the hit */
    view->data = khala__item_value(it);
    view->len = it->value_len;
    view->version = it->version;
    view->type = it->type;
    view->ttl_left_ms = -1;
    int64_t deadline = __atomic_load_n(&it->expire_ms, __ATOMIC_RELAXED); /* remove_or_expire */
    if (deadline) {
        int64_t left = deadline - khala__sys_now_ms();
        view->ttl_left_ms = left > 0 ? left : 0;
    }
    return 0;
}

int khala_cache_stats(const khala_cache_t *c, khala_cache_stats_t *st) {
    khala_cache_t *m = (khala_cache_t *)c;
    handle_lock(m);
    st->hits = c->retired_hits;
    st->misses = c->retired_misses;
    for (tstate_t *ts = c->threads; ts; ts = ts->next) {
        if (!ts->seg)
            continue;
        st->hits += khala_load_relaxed(&ts->slot->hits) - ts->base_hits;
        st->misses += khala_load_relaxed(&ts->slot->misses) - ts->base_misses;
    }
    handle_unlock(m);
    return 0;
}

const char *khala_cache_errmsg(const khala_cache_t *c) {
    return tls_err_owner == c ? tls_err : "";
}
