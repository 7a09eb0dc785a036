/*
 * chaos_check: faults under load, and a check that no acknowledged write is lost or stale at
 * any level afterwards. Run by scripts/chaos.sh (the full version, minutes) and by the ctest
 * `chaos_short` (a few faults of each kind, well under a minute); docs/reliability.md has the
 * figures.
 *
 * HOW IT WORKS
 *
 * Load. W forked writer processes (the public API, include/khala/cache.h) each own the keys
 * whose index is their number modulo W, and put (nine in ten) or delete (one in ten) them at
 * random, one at a time. Every operation of a key has a sequence number, and a put's value
 * carries it with its key index and a filler derived from both:
 *
 *     "c<index>:<seq>:" + pseudo-random bytes (16..600 bytes in all)
 *
 * so that a value read back names the write it came from, and a torn or foreign value is seen.
 * What each key's owner learnt is kept in a MAP_SHARED table (key_state_t) the parent reads
 * after the writers stop:
 *   - acknowledged: the call returned 0 (a delete also on KHALA_ENOTFOUND: no level held it);
 *   - unsure: KHALA_EDAEMON or -ETIMEDOUT, the two results after which the API says the write
 *     may or may not have been applied (khalad was killed under it);
 *   - refused: any other code; the API's contract is that nothing changed.
 *
 * Faults, while the writers run, at random moments: SIGKILL of khalad (restarted at once, as
 * systemd would; it adopts L1 and reads back its journal), SIGKILL of redis-server (restarted
 * from its append-only file, appendfsync always, so that what Redis acknowledged survives it:
 * losing it would be Redis's loss, not khalad's) and SIGSTOP of redis-server (SIGCONT after
 * more than khalad's Redis timeout). Separate scenarios fill the disk (a small tmpfs under
 * the disk store or the write journal, then grown again) and corrupt the disk store or the
 * journal before a start.
 *
 * L3 in SurrealDB ("l3-*" scenarios): a private front per run (tests/harness, harness_surreal_t;
 * its store on disk, kept across its kills), [l3] timeout_ms 300. Odd keys are embeddings in
 * their type's mode (write-behind: L1, then L3's journal; a disk L2 is always written through),
 * even keys memory_entity written through every level. Faults: SIGKILL of khalad; SIGKILL of
 * the front (restarted 0.2 to 1.2 s later: L3 is marked down, writes queue in its journal and
 * drain when it is back); SIGSTOP of the front (hung: requests time out, L3 is marked down; while
 * it hangs, gets and a stats call from another client must be answered, probe_while_hung());
 * and Redis and the front killed in one run, with khalad too.
 *
 * The check, after the writers stopped and khalad's queue drained, for every key:
 *   1. L1 through a zero-copy view (L1 only): when present, not stale;
 *   2. khala_cache_get (L1, else khalad and its L2): present/absent as below, not stale;
 *   3. Redis directly (hiredis GET of khala:NS:K, decoded as daemon/tier_redis.c stores it),
 *      and SurrealDB directly (one SELECT of the L3 table's live rows through the front's /sql,
 *      keys in hex and values in base64 as daemon/tier_surreal.c stores them), after L3's
 *      queue drained too;
 *   4. khalad restarted with an empty L1, then khala_cache_get again: the disk store or Redis
 *      through khalad's own read path.
 * A value is acceptable when it is the last acknowledged put, or a later put that is unsure. An
 * absence is acceptable when the key was never acknowledged, the last acknowledged operation
 * was a delete, or a later delete is unsure. Anything else is LOST (absent) or STALE (an older
 * value, a deleted key back, or bytes that are no write of this key).
 *
 *   chaos_check [--short] [--kills N] [--redis-kills N] [--redis-stops N] [--surreal-kills N]
 *               [--surreal-stops N] [--writers N] [--keys N] [--seed N]
 *               [--only load|l3|disk-full|corrupt|self-check] [--keep] [--verbose]
 *
 * --only self-check proves the check can fail: acknowledged writes, then the disk store removed
 * behind khalad's back; it passes only when the check finds every one of them lost. The same
 * with L3 in SurrealDB: L3 checked intact first (nothing judged lost), then its rows deleted
 * through the front, and the L3 check must find every acknowledged write lost.
 *
 * Exit status: 0 when every check passed (a scenario that needs root or mount(2) is skipped
 * and says so), 1 when something was lost, stale, crashed or misreported, 2 for a setup error.
 * The last line is a summary of faults injected and writes checked.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "channel.h"
#include "harness.h"
#include "khala/cache.h"
#include "khala/error.h"
#include "proto.h"

#define VALUE_MIN 16
#define VALUE_MAX 600
/* Far beyond any run: no value expires while it is checked. */
#define TTL_MS (6ull * 3600 * 1000)
/* Bounds on waits (never assertions on time): the queue draining, a writer's pause. */
#define DRAIN_MS 60000
#define WRITERS_MAX 32

/* What one key's owner learnt. Written by that writer only; read by the parent after it ended. */
typedef struct key_state {
    uint64_t next_seq;  /* the next operation's sequence number; 1 at first */
    uint64_t acked_seq; /* the last acknowledged operation; 0 = none */
    uint8_t acked_del;  /* 1: that operation was a delete */
    uint8_t unsure_put; /* a put after acked_seq may or may not have been applied */
    uint8_t unsure_del; /* the same for a delete */
    uint8_t pad[5];
} key_state_t;

/* Counters shared by the writers (atomic adds) and the stop flag. */
typedef struct shared {
    volatile int stop;
    uint64_t acked_puts, acked_dels, unsure, refused;
    uint64_t refused_by[8]; /* EQUEUE, ETIER, EFULL, ENOSPC, EIO, other */
    key_state_t keys[];
} shared_t;

enum { R_EQUEUE, R_ETIER, R_EFULL, R_ENOSPC, R_EIO, R_OTHER, R_N };
static const char *const refused_names[R_N] = {"EQUEUE", "ETIER", "EFULL",
                                               "ENOSPC", "EIO",   "other"};

/* Options and run-wide figures. */
static struct {
    int kills, redis_kills, redis_stops, surreal_kills, surreal_stops, writers, keys, keep, verbose;
    const char *only;
    uint64_t seed;
} opt = {.kills = 20,
         .redis_kills = 8,
         .redis_stops = 8,
         .surreal_kills = 6,
         .surreal_stops = 6,
         .writers = 4,
         .keys = 2000};

static struct {
    uint64_t khalad_kills, redis_kills, redis_stops, disk_fulls, corruptions, refused_starts;
    uint64_t surreal_kills, surreal_stops, served_while_stopped;
    uint64_t acked_writes, acked_deletes, keys_checked, reads_checked, lost, stale, crashes;
    uint64_t failures, skipped;
} fig;

static char g_base[128];
static uint64_t g_rng;

/* ---- small helpers ------------------------------------------------------------------------ */

static uint64_t rnd_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static long rnd_range(long lo, long hi) {
    return lo + (long)(rnd_next(&g_rng) % (uint64_t)(hi - lo + 1));
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("chaos: ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    fflush(stdout);
    va_end(ap);
}

static void failure(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void failure(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("chaos: FAIL: ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    fflush(stdout);
    va_end(ap);
    fig.failures++;
}

static void key_name(unsigned idx, char *buf, size_t cap) {
    snprintf(buf, cap, "chaos:%u", idx);
}

/* The value of put seq of key idx: "c<idx>:<seq>:" and a filler that depends on both. */
static size_t make_value(unsigned idx, uint64_t seq, char *buf) {
    uint64_t s = (uint64_t)idx * 0x9e3779b97f4a7c15ull ^ seq * 0xbf58476d1ce4e5b9ull;
    s |= 1;
    size_t len = VALUE_MIN + rnd_next(&s) % (VALUE_MAX - VALUE_MIN + 1);
    int head = snprintf(buf, VALUE_MAX, "c%u:%" PRIu64 ":", idx, seq);
    for (size_t i = (size_t)head; i < len; i++)
        buf[i] = (char)('a' + rnd_next(&s) % 26);
    return len;
}

/* The seq of a value of key idx, or 0 when the bytes are no write of that key. */
static uint64_t value_seq(unsigned idx, const void *val, size_t len) {
    char head[64], want[VALUE_MAX];
    size_t n = len < sizeof(head) - 1 ? len : sizeof(head) - 1;
    memcpy(head, val, n);
    head[n] = '\0';
    unsigned got_idx;
    uint64_t seq;
    if (sscanf(head, "c%u:%" SCNu64 ":", &got_idx, &seq) != 2 || got_idx != idx || seq == 0)
        return 0;
    if (make_value(idx, seq, want) != len || memcmp(want, val, len) != 0)
        return 0;
    return seq;
}

enum { OK, LOST, STALE };

/* Step "judge" of the check (theory block). found: the level has the key (val, len). */
static int judge(const key_state_t *s, unsigned idx, int found, const void *val, size_t len) {
    if (!found)
        return s->acked_seq == 0 || s->acked_del || s->unsure_del ? OK : LOST;
    uint64_t seq = value_seq(idx, val, len);
    if (seq == 0)
        return STALE;
    if (seq == s->acked_seq && !s->acked_del)
        return OK;
    if (seq > s->acked_seq && seq < s->next_seq && s->unsure_put)
        return OK;
    return STALE;
}

static void report(const key_state_t *s, unsigned idx, const char *level, int verdict, int found,
                   const void *val, size_t len) {
    if (verdict == OK)
        return;
    if (verdict == LOST)
        fig.lost++;
    else
        fig.stale++;
    if (fig.lost + fig.stale <= 20)
        say("%s chaos:%u at %s: %s%.*s (acknowledged seq %" PRIu64 "%s, next %" PRIu64 "%s%s)",
            verdict == LOST ? "LOST" : "STALE", idx, level, found ? "read " : "absent",
            found ? (int)(len < 24 ? len : 24) : 0, found ? (const char *)val : "", s->acked_seq,
            s->acked_del ? " (delete)" : "", s->next_seq, s->unsure_put ? ", a put unsure" : "",
            s->unsure_del ? ", a delete unsure" : "");
}

/* ---- khalad and Redis ------------------------------------------------------------------------ */

typedef struct run {
    const char *label;
    int redis;   /* 1: L2 in Redis (journal under l2dir), 0: L2 on the local disk in l2dir */
    int surreal; /* 1: L3 in SurrealDB through a private front (journal under l3dir), odd keys
                    of type embedding (write-behind by default); 0: L3 on the local disk */
    khala_mode_t mode;
    char dir[160], l2dir[200], l3dir[200], sock[200], name[64];
    harness_khalad_t k;
    harness_redis_t r;
    harness_surreal_t s;
    shared_t *sh;
    size_t sh_len;
    int nkeys;
} run_t;

static int khalad_up(run_t *rn) {
    int rc = harness_khalad_start(&rn->k);
    if (rc != 0)
        failure("%s: khalad does not start: %s", rn->label, rn->k.err);
    return rc;
}

static int run_init(run_t *rn, const char *label, int redis, int surreal, khala_mode_t mode,
                    int nkeys) {
    memset(rn, 0, sizeof(*rn));
    rn->label = label;
    rn->redis = redis;
    rn->surreal = surreal;
    rn->mode = mode;
    rn->nkeys = nkeys;
    snprintf(rn->dir, sizeof(rn->dir), "%s/%s", g_base, label);
    snprintf(rn->l2dir, sizeof(rn->l2dir), "%s/l2", rn->dir);
    snprintf(rn->l3dir, sizeof(rn->l3dir), "%s/l3", rn->dir);
    snprintf(rn->sock, sizeof(rn->sock), "%s/k.sock", rn->dir);
    snprintf(rn->name, sizeof(rn->name), "chaos%d%s", (int)getpid(), label);
    for (char *p = rn->name; *p; p++)
        if (*p == '-')
            *p = '_';
    if (mkdir(rn->dir, 0700) != 0 && errno != EEXIST)
        return -errno;
    rn->sh_len = sizeof(shared_t) + (size_t)nkeys * sizeof(key_state_t);
    rn->sh = mmap(NULL, rn->sh_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (rn->sh == MAP_FAILED)
        return -errno;
    for (int i = 0; i < nkeys; i++)
        rn->sh->keys[i].next_seq = 1;
    const char *bin = getenv("KHALAD") ? getenv("KHALAD") : KHALAD_PATH;
    if (harness_khalad_init(&rn->k, bin, rn->name, rn->sock) != 0)
        return -E2BIG;
    rn->k.verbose = opt.verbose;
    harness_khalad_set(&rn->k, "l2.path=%s", rn->l2dir);
    harness_khalad_set(&rn->k, "l3.path=%s", rn->l3dir);
    harness_khalad_set(&rn->k, "l2.persistent=true");
    harness_khalad_set(&rn->k, "l2.timeout_ms=200");
    harness_khalad_set(&rn->k, "l2.queue_max=100000");
    if (redis) {
        rn->r.tcp = 1;
        snprintf(rn->r.dir, sizeof(rn->r.dir), "%.100s/redis", rn->dir);
        mkdir(rn->r.dir, 0700);
        /* What Redis acknowledged survives its SIGKILL: the check is about khalad's losses. */
        rn->r.args[0] = "--appendonly";
        rn->r.args[1] = "yes";
        rn->r.args[2] = "--appendfsync";
        rn->r.args[3] = "always";
        if (harness_redis_start(&rn->r) != 0) {
            failure("%s: redis-server does not start: %s", label, rn->r.err);
            return -ECHILD;
        }
        harness_khalad_set(&rn->k, "l2.redis_url=redis://127.0.0.1:%u", rn->r.port);
        harness_khalad_set(&rn->k, "l2.backend=redis");
    } else {
        harness_khalad_set(&rn->k, "l2.backend=disk");
    }
    if (surreal) {
        /* A private front whose store (on disk, in s.dir/data) survives its SIGKILLs. */
        snprintf(rn->s.dir, sizeof(rn->s.dir), "%.100s/surreal", rn->dir);
        mkdir(rn->s.dir, 0700);
        if (harness_surreal_start(&rn->s) != 0) {
            failure("%s: the SurrealDB front does not start: %s", label, rn->s.err);
            return -ECHILD;
        }
        harness_khalad_set(&rn->k, "l3.surrealdb_url=%s", rn->s.url);
        harness_khalad_set(&rn->k, "l3.backend=surrealdb");
        harness_khalad_set(&rn->k, "l3.timeout_ms=300");
        harness_khalad_set(&rn->k, "l3.queue_max=100000");
    }
    return 0;
}

static void run_fini(run_t *rn) {
    harness_khalad_stop(&rn->k, 0);
    harness_khalad_clean(&rn->k);
    if (rn->r.pid > 0)
        kill(rn->r.pid, SIGCONT);
    harness_redis_stop(&rn->r);
    if (rn->s.pid > 0)
        kill(rn->s.pid, SIGCONT);
    harness_surreal_stop(&rn->s);
    if (rn->sh && rn->sh != MAP_FAILED)
        munmap(rn->sh, rn->sh_len);
    rn->sh = NULL;
    if (!opt.keep)
        harness_rmtree(rn->dir);
}

static khala_cache_t *open_cache(const run_t *rn) {
    khala_cache_options_t o;
    khala_cache_options_init(&o);
    o.socket_path = rn->sock;
    o.timeout_ms = 3000;
    khala_cache_t *c = NULL;
    if (khala_cache_open(rn->name, &o, &c) != 0) {
        failure("%s: khala_cache_open: %s", rn->label, khala_cache_errmsg(NULL));
        return NULL;
    }
    return c;
}

/* ---- the writers -------------------------------------------------------------------------- */

static int refused_bucket(int rc) {
    switch (rc) {
        case KHALA_EQUEUE:
            return R_EQUEUE;
        case KHALA_ETIER:
            return R_ETIER;
        case KHALA_EFULL:
            return R_EFULL;
        case -ENOSPC:
            return R_ENOSPC;
        case -EIO:
            return R_EIO;
        default:
            return R_OTHER;
    }
}

/* One operation on key idx (a put, or a delete when del), its outcome recorded. Returns rc. */
static int one_op(const run_t *rn, khala_cache_t *c, unsigned idx, int del) {
    shared_t *sh = rn->sh;
    key_state_t *s = &sh->keys[idx];
    char key[32], val[VALUE_MAX];
    key_name(idx, key, sizeof(key));
    uint64_t seq = s->next_seq++;
    int rc;
    if (del) {
        rc = khala_cache_delete(c, key, strlen(key));
        if (rc == KHALA_ENOTFOUND)
            rc = 0;
    } else {
        khala_put_options_t po;
        khala_put_options_init(&po);
        po.ttl_ms = TTL_MS;
        po.mode = rn->mode;
        if (rn->surreal && idx % 2 == 1) {
            /* An embedding, in its type's mode (write-behind by default: L1 and the journals,
             * drained later, except on a disk L2, which is always written through). */
            po.type = KHALA_TYPE_EMBEDDING;
            po.mode = KHALA_MODE_DEFAULT;
        }
        size_t len = make_value(idx, seq, val);
        rc = khala_cache_put(c, key, strlen(key), val, len, &po, NULL);
    }
    if (rc == 0) {
        s->acked_seq = seq;
        s->acked_del = (uint8_t)del;
        s->unsure_put = s->unsure_del = 0;
        __atomic_fetch_add(del ? &sh->acked_dels : &sh->acked_puts, 1, __ATOMIC_RELAXED);
    } else if (rc == KHALA_EDAEMON || rc == -ETIMEDOUT) {
        if (del)
            s->unsure_del = 1;
        else
            s->unsure_put = 1;
        __atomic_fetch_add(&sh->unsure, 1, __ATOMIC_RELAXED);
    } else {
        __atomic_fetch_add(&sh->refused, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&sh->refused_by[refused_bucket(rc)], 1, __ATOMIC_RELAXED);
        if (opt.verbose)
            say("refused %s: %s (%s)", key, khala_strerror(rc), khala_cache_errmsg(c));
    }
    return rc;
}

static void writer_main(const run_t *rn, int w) {
    uint64_t s = opt.seed * 7919 + (uint64_t)w * 104729 + 1;
    khala_cache_t *c = open_cache(rn);
    if (!c)
        _exit(2);
    int mine = (rn->nkeys - w + opt.writers - 1) / opt.writers;
    while (!__atomic_load_n(&rn->sh->stop, __ATOMIC_ACQUIRE)) {
        unsigned idx = (unsigned)(w + opt.writers * (int)(rnd_next(&s) % (uint64_t)mine));
        int rc = one_op(rn, c, idx, rnd_next(&s) % 10 == 0);
        if (rc == KHALA_EDAEMON || rc == -ETIMEDOUT)
            harness_sleep_ms(20); /* khalad is down: do not spin on the fast failure */
        else if (rc != 0)
            harness_sleep_ms(5);
    }
    khala_cache_close(c);
    _exit(0);
}

static int writers_start(run_t *rn, pid_t *pids) {
    rn->sh->stop = 0;
    fflush(NULL);
    for (int w = 0; w < opt.writers; w++) {
        pids[w] = fork();
        if (pids[w] < 0)
            return -errno;
        if (pids[w] == 0)
            writer_main(rn, w);
    }
    return 0;
}

static void writers_stop(run_t *rn, const pid_t *pids) {
    __atomic_store_n(&rn->sh->stop, 1, __ATOMIC_RELEASE);
    for (int w = 0; w < opt.writers; w++) {
        int st;
        if (pids[w] > 0 && waitpid(pids[w], &st, 0) == pids[w] &&
            !(WIFEXITED(st) && WEXITSTATUS(st) == 0))
            failure("%s: writer %d ended badly (status %d)", rn->label, w, st);
    }
}

/* ---- the check ----------------------------------------------------------------------------- */

/* A stats value of khalad ("section"/"name"), or UINT64_MAX when it cannot be read. */
static uint64_t khalad_stat(const run_t *rn, const char *section, const char *name) {
    khala_chan_t *ch = NULL;
    char err[256];
    uint64_t v = UINT64_MAX;
    if (khala__chan_open(rn->sock, rn->name, 3000, &ch, err, sizeof(err)) != 0)
        return v;
    khala_msg_t m, r;
    khala__proto_msg_init(&m);
    khala__proto_msg_init(&r);
    m.op = KHALA_OP_STATS;
    if (khala__chan_call(ch, &m, &r, 5000, err, sizeof(err)) == 0 && r.rc == 0) {
        for (uint32_t i = 0; i < r.ndata; i++) {
            const khala_kv_t *sec = &r.data[i];
            if (sec->kind != KHALA_KV_MAP || sec->key.len != strlen(section) ||
                memcmp(sec->key.ptr, section, sec->key.len) != 0)
                continue;
            for (uint32_t j = 0; j < sec->as.map.n; j++) {
                const khala_kv_t *e = &sec->as.map.items[j];
                if (e->key.len == strlen(name) && memcmp(e->key.ptr, name, e->key.len) == 0)
                    v = e->kind == KHALA_KV_UINT ? e->as.u : (uint64_t)e->as.i;
            }
        }
    }
    khala__proto_msg_free(&r);
    khala__chan_close(ch);
    return v;
}

/* 1 when the level's queue ("l2" or "l3") is empty and the level healthy. */
static int level_drained(const run_t *rn, const char *level) {
    return khalad_stat(rn, level, "queued_now") == 0 && khalad_stat(rn, level, "healthy") == 1;
}

/* Wait (bounded) until khalad's L2 queue (and L3's, with SurrealDB) is empty and the level is
 * healthy. */
static int wait_drained(const run_t *rn) {
    for (int waited = 0; waited < DRAIN_MS; waited += 50) {
        if (level_drained(rn, "l2") && (!rn->surreal || level_drained(rn, "l3")))
            return 0;
        harness_sleep_ms(50);
    }
    failure("%s: the queues did not drain within %d ms (L2 queued_now %" PRIu64 ", healthy %" PRIu64
            "; L3 queued_now %" PRIu64 ", healthy %" PRIu64 ")",
            rn->label, DRAIN_MS, khalad_stat(rn, "l2", "queued_now"),
            khalad_stat(rn, "l2", "healthy"), khalad_stat(rn, "l3", "queued_now"),
            khalad_stat(rn, "l3", "healthy"));
    return -ETIMEDOUT;
}

/* ---- L3 in SurrealDB, read directly ------------------------------------------------------- */

/* Decode base64 (the driver's `data`) into out (cap bytes). Returns the length, or -1. */
static long b64_decode(const char *in, char *out, size_t cap) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    for (; *in && *in != '='; in++) {
        const char *p = strchr(tab, *in);
        if (!p)
            return -1;
        acc = acc << 6 | (uint32_t)(p - tab);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n == cap)
                return -1;
            out[n++] = (char)(acc >> bits & 0xff);
        }
    }
    return (long)n;
}

/* The key index of a row's `key` (the key's bytes in hex) when it is "chaos:<n>", else -1. */
static long row_index(const char *hex) {
    char key[64];
    size_t n = 0;
    for (; hex[0] && hex[1] && n < sizeof(key) - 1; hex += 2) {
        unsigned b;
        if (sscanf(hex, "%2x", &b) != 1)
            return -1;
        key[n++] = (char)b;
    }
    key[n] = '\0';
    unsigned idx;
    char tail;
    if (sscanf(key, "chaos:%u%c", &idx, &tail) != 1)
        return -1;
    return idx;
}

/* Every live row of khalad's L3 table, straight from the front's /sql: rows[i] is key i's
 * value (NULL when absent; len in lens[i]). Returns 0, or -1 after a failure() naming why. */
static int l3_rows(run_t *rn, char **rows, size_t *lens) {
    size_t cap = 64u << 20;
    char *body = malloc(cap);
    if (!body)
        return -1;
    int st = harness_surreal_sql(
        rn->s.port, "khala", "cache",
        "SELECT key, data, expires FROM cache_table WHERE expires = NONE OR expires > "
        "time::unix(time::now()) * 1000",
        body, cap);
    if (st != 200) {
        failure("%s: the L3 query to the front on port %u answered %d: %.300s", rn->label,
                rn->s.port, st, st > 0 ? body : strerror(-st));
        free(body);
        return -1;
    }
    json_error_t je;
    json_t *top = json_loads(body, 0, &je);
    free(body);
    json_t *res = json_is_array(top) ? json_array_get(top, 0) : NULL;
    json_t *list = res ? json_object_get(res, "result") : NULL;
    const char *status = res ? json_string_value(json_object_get(res, "status")) : NULL;
    if (!json_is_array(list) || !status || strcmp(status, "OK") != 0) {
        failure("%s: the L3 query's reply is not one OK result: %s", rn->label,
                top ? "unexpected shape" : je.text);
        json_decref(top);
        return -1;
    }
    size_t i;
    json_t *row;
    json_array_foreach(list, i, row) {
        const char *hex = json_string_value(json_object_get(row, "key"));
        const char *data = json_string_value(json_object_get(row, "data"));
        long idx = hex ? row_index(hex) : -1;
        if (idx < 0 || idx >= rn->nkeys || !data)
            continue;
        rows[idx] = malloc(VALUE_MAX * 2);
        long len = rows[idx] ? b64_decode(data, rows[idx], VALUE_MAX * 2) : -1;
        lens[idx] = len < 0 ? 0 : (size_t)len; /* not base64: judged stale */
    }
    json_decref(top);
    return 0;
}

/* Step 3 for L3: every key's row in SurrealDB judged like a read. Returns 0, or -1 when L3
 * could not be read (a failure() was counted). */
static int check_l3(run_t *rn, const char *when) {
    char **rows = calloc((size_t)rn->nkeys, sizeof(*rows)), lvl[96];
    size_t *lens = calloc((size_t)rn->nkeys, sizeof(*lens));
    int rc = rows && lens ? l3_rows(rn, rows, lens) : -1;
    for (int i = 0; rc == 0 && i < rn->nkeys; i++) {
        const key_state_t *s = &rn->sh->keys[i];
        snprintf(lvl, sizeof(lvl), "L3 SurrealDB (%s)", when);
        report(s, (unsigned)i, lvl, judge(s, (unsigned)i, rows[i] != NULL, rows[i], lens[i]),
               rows[i] != NULL, rows[i], lens[i]);
        fig.reads_checked++;
    }
    for (int i = 0; rows && i < rn->nkeys; i++)
        free(rows[i]);
    free(rows);
    free(lens);
    return rc;
}

/* Decode a value as daemon/tier_redis.c stores it: 0x93 0xcf version(8) type bin(c4/c5/c6). */
static int redis_decode(const char *p, size_t n, const char **val, size_t *len) {
    const unsigned char *u = (const unsigned char *)p;
    if (n < 13 || u[0] != 0x93 || u[1] != 0xcf)
        return -1;
    size_t off = 11, hl, vl;
    if (u[off] == 0xc4) {
        hl = 2;
        vl = u[off + 1];
    } else if (u[off] == 0xc5) {
        hl = 3;
        vl = (size_t)u[off + 1] << 8 | u[off + 2];
    } else if (u[off] == 0xc6 && n >= off + 5) {
        hl = 5;
        vl = (size_t)u[off + 1] << 24 | (size_t)u[off + 2] << 16 | (size_t)u[off + 3] << 8 |
             u[off + 4];
    } else {
        return -1;
    }
    if (off + hl + vl != n)
        return -1;
    *val = p + off + hl;
    *len = vl;
    return 0;
}

/* Steps 1-3 of the check: L1 by view, the client's get, Redis directly. */
static void check_levels(run_t *rn, const char *when) {
    khala_cache_t *c = open_cache(rn);
    if (!c)
        return;
    redisContext *rc = NULL;
    if (rn->redis) {
        rc = redisConnect("127.0.0.1", (int)rn->r.port);
        if (!rc || rc->err) {
            failure("%s: cannot reach Redis to check it: %s", rn->label,
                    rc ? rc->errstr : "out of memory");
            if (rc)
                redisFree(rc);
            rc = NULL;
        }
    }
    char key[32], lvl[64], *buf = malloc(VALUE_MAX * 2);
    for (int i = 0; i < rn->nkeys && buf; i++) {
        const key_state_t *s = &rn->sh->keys[i];
        key_name((unsigned)i, key, sizeof(key));
        /* 1. L1 alone: a view never asks khalad. */
        if (khala_read_begin(c) == 0) {
            khala_view_t v;
            int vr = khala_cache_view(c, key, strlen(key), &v);
            if (vr == 0) {
                snprintf(lvl, sizeof(lvl), "L1 (%s)", when);
                report(s, (unsigned)i, lvl, judge(s, (unsigned)i, 1, v.data, v.len), 1, v.data,
                       v.len);
                fig.reads_checked++;
            } else if (vr != KHALA_ENOTFOUND) {
                failure("%s: view of %s: %s", rn->label, key, khala_strerror(vr));
            }
            khala_read_end(c);
        }
        /* 2. The client's get: L1, else khalad. */
        size_t len = 0;
        int gr = khala_cache_get(c, key, strlen(key), buf, VALUE_MAX * 2, &len);
        if (gr == 0 || gr == KHALA_ENOTFOUND) {
            snprintf(lvl, sizeof(lvl), "get (%s)", when);
            report(s, (unsigned)i, lvl, judge(s, (unsigned)i, gr == 0, buf, len), gr == 0, buf,
                   len);
            fig.reads_checked++;
        } else {
            failure("%s: get %s: %s (%s)", rn->label, key, khala_strerror(gr),
                    khala_cache_errmsg(c));
        }
        /* 3. Redis itself. */
        if (rc) {
            redisReply *rep = redisCommand(rc, "GET khala:%s:%s", rn->name, key);
            if (!rep) {
                failure("%s: Redis GET: %s", rn->label, rc->errstr);
                break;
            }
            const char *val = NULL;
            size_t vl = 0;
            int found = rep->type == REDIS_REPLY_STRING;
            if (found && redis_decode(rep->str, rep->len, &val, &vl) != 0) {
                val = rep->str;
                vl = 0; /* not a value of ours: judged stale */
            }
            snprintf(lvl, sizeof(lvl), "Redis (%s)", when);
            report(s, (unsigned)i, lvl, judge(s, (unsigned)i, found, val, vl), found, val, vl);
            fig.reads_checked++;
            freeReplyObject(rep);
        }
    }
    free(buf);
    if (rc)
        redisFree(rc);
    khala_cache_close(c);
    /* 3b. SurrealDB itself. */
    if (rn->surreal)
        check_l3(rn, when);
}

/* The whole check: drained, steps 1-3, then step 4 with khalad restarted on an empty L1. */
static void check_all(run_t *rn) {
    uint64_t before = fig.lost + fig.stale;
    if (wait_drained(rn) != 0)
        return;
    check_levels(rn, "after the faults");
    harness_khalad_stop(&rn->k, 0);
    harness_khalad_clean(&rn->k);
    if (khalad_up(rn) != 0)
        return;
    check_levels(rn, rn->surreal ? "L2 through a restarted khalad, L1 empty; L3 again"
                                 : "L2 through a restarted khalad, L1 empty");
    fig.keys_checked += (uint64_t)rn->nkeys;
    fig.acked_writes += rn->sh->acked_puts;
    fig.acked_deletes += rn->sh->acked_dels;
    say("%s: %" PRIu64 " puts and %" PRIu64 " deletes acknowledged, %" PRIu64 " unsure, %" PRIu64
        " refused; %d keys checked at every level: %s",
        rn->label, rn->sh->acked_puts, rn->sh->acked_dels, rn->sh->unsure, rn->sh->refused,
        rn->nkeys, fig.lost + fig.stale == before ? "nothing lost or stale" : "LOST OR STALE");
    for (int i = 0; i < R_N; i++)
        if (rn->sh->refused_by[i])
            say("%s: refused with %s: %" PRIu64, rn->label, refused_names[i],
                rn->sh->refused_by[i]);
}

/* ---- scenario: load with kills and stops ---------------------------------------------------- */

enum { F_KHALAD_KILL, F_REDIS_KILL, F_REDIS_STOP, F_SURREAL_KILL, F_SURREAL_STOP };

/* While the front hangs: khalad must keep answering other clients. Gets of keys the writers
 * use (answered from L1 by the library when L1 holds them, else by khalad from L2), gets of keys
 * no level holds (khalad: L2 misses, then L3's asynchronous read, which times out or skips the
 * level marked down) and a stats call: each must be answered within the client's timeout. */
static void probe_while_hung(run_t *rn) {
    khala_cache_t *c = open_cache(rn);
    if (!c)
        return;
    char key[48], buf[VALUE_MAX * 2];
    int answered = 0, asked = 0;
    for (int i = 0; i < 6; i++) {
        size_t len;
        if (i % 2 == 0)
            key_name((unsigned)rnd_range(0, rn->nkeys - 1), key, sizeof(key));
        else
            snprintf(key, sizeof(key), "chaos-absent:%ld", rnd_range(0, 1L << 30));
        int gr = khala_cache_get(c, key, strlen(key), buf, sizeof(buf), &len);
        asked++;
        if (gr == 0 || gr == KHALA_ENOTFOUND)
            answered++;
        else
            failure("%s: while the front hangs, get %s: %s (%s)", rn->label, key,
                    khala_strerror(gr), khala_cache_errmsg(c));
    }
    khala_cache_close(c);
    asked++;
    if (khalad_stat(rn, "l2", "healthy") != UINT64_MAX)
        answered++;
    else
        failure("%s: while the front hangs, khalad does not answer stats", rn->label);
    fig.served_while_stopped += (uint64_t)answered;
    if (opt.verbose)
        say("%s: the front hung: %d of %d requests answered", rn->label, answered, asked);
}

static void inject(run_t *rn, int kind) {
    switch (kind) {
        case F_KHALAD_KILL: {
            int st = harness_khalad_kill(&rn->k, SIGKILL);
            if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL))
                failure("%s: khalad had ended before its SIGKILL (status %d)", rn->label, st);
            fig.khalad_kills++;
            khalad_up(rn);
            break;
        }
        case F_REDIS_KILL:
            harness_redis_kill(&rn->r);
            fig.redis_kills++;
            harness_sleep_ms(rnd_range(100, 600));
            if (harness_redis_start(&rn->r) != 0)
                failure("%s: redis-server does not restart: %s", rn->label, rn->r.err);
            break;
        case F_REDIS_STOP:
            kill(rn->r.pid, SIGSTOP);
            fig.redis_stops++;
            harness_sleep_ms(rnd_range(300, 900)); /* beyond l2.timeout_ms */
            kill(rn->r.pid, SIGCONT);
            break;
        case F_SURREAL_KILL:
            harness_surreal_kill(&rn->s);
            fig.surreal_kills++;
            harness_sleep_ms(rnd_range(200, 1200));
            if (harness_surreal_start(&rn->s) != 0)
                failure("%s: the SurrealDB front does not restart: %s", rn->label, rn->s.err);
            break;
        case F_SURREAL_STOP:
            kill(rn->s.pid, SIGSTOP);
            fig.surreal_stops++;
            harness_sleep_ms(rnd_range(100, 400));
            probe_while_hung(rn);
            harness_sleep_ms(rnd_range(200, 600)); /* beyond l3.timeout_ms */
            kill(rn->s.pid, SIGCONT);
            break;
    }
}

/* Which faults a load scenario injects. */
enum { S_KHALAD = 1, S_REDIS = 2, S_SURREAL_KILL = 4, S_SURREAL_STOP = 8 };

static void scenario_load_faults(const char *label, int redis, int surreal, khala_mode_t mode,
                                 int faults) {
    run_t rn;
    pid_t pids[WRITERS_MAX] = {0};
    say("%s: %d writers on %d keys, L2 on %s, %s%s", label, opt.writers, opt.keys,
        redis ? "Redis" : "the local disk",
        mode == KHALA_MODE_BEHIND ? "write-behind" : "write-through",
        surreal ? ", L3 in SurrealDB (odd keys: embeddings, write-behind to L3)" : "");
    if (run_init(&rn, label, redis, surreal, mode, opt.keys) != 0 || khalad_up(&rn) != 0) {
        fig.failures++;
        run_fini(&rn);
        return;
    }
    uint64_t puts0 = fig.acked_writes, dels0 = fig.acked_deletes, lost0 = fig.lost,
             stale0 = fig.stale, reads0 = fig.reads_checked;
    int kinds[1024], n = 0;
    for (int i = 0; (faults & S_KHALAD) && i < opt.kills && n < 1024; i++)
        kinds[n++] = F_KHALAD_KILL;
    for (int i = 0; (faults & S_REDIS) && redis && i < opt.redis_kills && n < 1024; i++)
        kinds[n++] = F_REDIS_KILL;
    for (int i = 0; (faults & S_REDIS) && redis && i < opt.redis_stops && n < 1024; i++)
        kinds[n++] = F_REDIS_STOP;
    for (int i = 0; (faults & S_SURREAL_KILL) && surreal && i < opt.surreal_kills && n < 1024; i++)
        kinds[n++] = F_SURREAL_KILL;
    for (int i = 0; (faults & S_SURREAL_STOP) && surreal && i < opt.surreal_stops && n < 1024; i++)
        kinds[n++] = F_SURREAL_STOP;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rnd_range(0, i), t = kinds[i];
        kinds[i] = kinds[j];
        kinds[j] = t;
    }
    if (writers_start(&rn, pids) != 0) {
        failure("%s: fork: %s", label, strerror(errno));
    } else {
        harness_sleep_ms(200);
        for (int i = 0; i < n && rn.k.pid > 0; i++) {
            harness_sleep_ms(rnd_range(100, 400));
            inject(&rn, kinds[i]);
        }
        harness_sleep_ms(300);
    }
    writers_stop(&rn, pids);
    if (rn.k.pid > 0)
        check_all(&rn);
    if (surreal)
        say("%s: figures: %" PRIu64 " acknowledged puts, %" PRIu64 " deletes; %" PRIu64
            " reads checked; lost %" PRIu64 ", stale %" PRIu64,
            label, fig.acked_writes - puts0, fig.acked_deletes - dels0, fig.reads_checked - reads0,
            fig.lost - lost0, fig.stale - stale0);
    run_fini(&rn);
}

static void scenario_load(const char *label, int redis, khala_mode_t mode) {
    scenario_load_faults(label, redis, 0, mode, S_KHALAD | S_REDIS);
}

/* ---- scenario: the disk full ---------------------------------------------------------------- */

static int tmpfs_mount(const char *dir, const char *size, int remount) {
    char o[64];
    snprintf(o, sizeof(o), "size=%s,mode=0700", size);
    if (mount("tmpfs", dir, "tmpfs", remount ? MS_REMOUNT : 0, o) != 0)
        return -errno;
    return 0;
}

/* Sequential puts from one process until refusals come, then a SIGKILL of khalad while full,
 * then the space back: the refusals must be clear, nothing acknowledged lost, writes resume. */
static void scenario_disk_full(const char *label, int redis) {
    if (geteuid() != 0) {
        say("%s: skipped (needs root to mount a tmpfs)", label);
        fig.skipped++;
        return;
    }
    run_t rn;
    int nkeys = 4000;
    if (run_init(&rn, label, redis, 0, KHALA_MODE_THROUGH, nkeys) != 0) {
        fig.failures++;
        run_fini(&rn);
        return;
    }
    mkdir(rn.l2dir, 0700);
    int mrc = tmpfs_mount(rn.l2dir, "512k", 0);
    if (mrc != 0) {
        say("%s: skipped (mount tmpfs: %s)", label, strerror(-mrc));
        fig.skipped++;
        run_fini(&rn);
        return;
    }
    say("%s: L2 %s on a 512 KiB tmpfs", label,
        redis ? "in Redis, its write journal" : "on the local disk");
    if (khalad_up(&rn) != 0)
        goto out;
    khala_cache_t *c = open_cache(&rn);
    if (!c)
        goto out;
    if (redis) {
        /* Redis down: every write goes to the journal, which fills the tmpfs. */
        harness_redis_kill(&rn.r);
        fig.redis_kills++;
    }
    int refusals = 0, i, first_refusal = -1, last_rc = 0;
    char msg[512] = "";
    for (i = 0; i < nkeys && refusals < 50; i++) {
        int rc = one_op(&rn, c, (unsigned)i, 0);
        if (rc != 0 && rc != KHALA_EDAEMON && rc != -ETIMEDOUT) {
            if (first_refusal < 0) {
                first_refusal = i;
                last_rc = rc;
                snprintf(msg, sizeof(msg), "%s", khala_cache_errmsg(c));
            }
            refusals++;
        } else if (rc != 0) {
            failure("%s: put %d: %s (%s): khalad ended?", label, i, khala_strerror(rc),
                    khala_cache_errmsg(c));
            break;
        }
    }
    fig.disk_fulls++;
    if (first_refusal < 0) {
        failure("%s: %d puts of up to %d bytes fitted in 512 KiB: no back-pressure seen", label, i,
                VALUE_MAX);
    } else {
        say("%s: full after %d puts: refused with %s: \"%s\"", label, first_refusal,
            khala_err_name(last_rc), msg);
        if (last_rc != KHALA_EQUEUE && last_rc != KHALA_ETIER && last_rc != -ENOSPC)
            failure("%s: a full disk answered %s, not EQUEUE, ETIER or ENOSPC", label,
                    khala_err_name(last_rc));
    }
    /* SIGKILL while full: what was acknowledged must come back, and the disk is still full. */
    khala_cache_close(c);
    harness_khalad_kill(&rn.k, SIGKILL);
    fig.khalad_kills++;
    if (khalad_up(&rn) != 0)
        goto out;
    c = open_cache(&rn);
    if (!c)
        goto out;
    int still_refused = 0;
    for (int j = i; j < nkeys && j < i + 50; j++)
        still_refused += one_op(&rn, c, (unsigned)j, 0) != 0;
    say("%s: after the restart, %d of 50 more puts refused (the disk is still full)", label,
        still_refused);
    /* Space returns, under the same khalad. */
    if (tmpfs_mount(rn.l2dir, "64m", 1) != 0) {
        failure("%s: remount bigger: %s", label, strerror(errno));
        goto out;
    }
    if (redis && harness_redis_start(&rn.r) != 0) {
        failure("%s: redis-server does not restart: %s", label, rn.r.err);
        goto out;
    }
    /* Writes resume without a restart: within a bounded number of tries a put is taken. */
    int resumed = 0, tries, rc = 0;
    for (tries = 0; tries < 200 && !resumed; tries++) {
        resumed = (rc = one_op(&rn, c, 0, 0)) == 0;
        if (!resumed)
            harness_sleep_ms(50);
    }
    if (!resumed)
        failure("%s: writes were still refused 10 s after the space came back: %s (%s)", label,
                khala_strerror(rc), khala_cache_errmsg(c));
    else
        say("%s: space back: writes taken again after %d refusals", label, tries - 1);
    int after = 0;
    for (int j = 1; j < nkeys; j += 3)
        after += one_op(&rn, c, (unsigned)j, (j % 2) == 0) == 0;
    say("%s: %d of %d writes taken after the space came back", label, after, (nkeys + 1) / 3);
    khala_cache_close(c);
    check_all(&rn);
out:
    harness_khalad_stop(&rn.k, 0);
    umount2(rn.l2dir, MNT_DETACH);
    run_fini(&rn);
}

/* ---- scenario: corrupt files at start ------------------------------------------------------- */

static char g_mdb[8][512];
static int g_nmdb;

static int find_mdb(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)ftw;
    size_t n = strlen(path);
    if (flag == FTW_F && n > 8 && strcmp(path + n - 8, "data.mdb") == 0 && g_nmdb < 8)
        snprintf(g_mdb[g_nmdb++], sizeof(g_mdb[0]), "%s", path);
    return 0;
}

enum { C_TRUNCATE_HALF, C_TRUNCATE_PAGE, C_FLIP_META, C_FLIP_DATA, C_ZERO, C_NKINDS };
static const char *const corrupt_names[C_NKINDS] = {"truncated to half", "truncated to 100 bytes",
                                                    "bytes flipped in the meta pages",
                                                    "bytes flipped in the data pages", "emptied"};

static int corrupt_file(const char *path, int kind) {
    struct stat st;
    if (stat(path, &st) != 0)
        return -errno;
    int fd = open(path, O_RDWR);
    if (fd < 0)
        return -errno;
    int rc = 0;
    switch (kind) {
        case C_TRUNCATE_HALF:
            rc = ftruncate(fd, st.st_size / 2);
            break;
        case C_TRUNCATE_PAGE:
            rc = ftruncate(fd, 100);
            break;
        case C_ZERO:
            rc = ftruncate(fd, 0);
            break;
        case C_FLIP_META:
        case C_FLIP_DATA: {
            off_t lo = kind == C_FLIP_META ? 0 : 8192, hi = kind == C_FLIP_META ? 8192 : st.st_size;
            for (int i = 0; i < 64 && hi > lo; i++) {
                off_t off = lo + (off_t)rnd_range(0, (long)(hi - lo - 1));
                unsigned char b;
                if (pread(fd, &b, 1, off) == 1) {
                    b ^= (unsigned char)rnd_range(1, 255);
                    if (pwrite(fd, &b, 1, off) != 1)
                        rc = -1;
                }
            }
            break;
        }
    }
    if (rc != 0)
        rc = -errno;
    close(fd);
    return rc;
}

/* Start khalad on corrupt files: it must refuse with a message or start and serve, and in no
 * case die of a signal. Reads afterwards return a write of the key or nothing. */
static void corrupt_start(run_t *rn, const char *what) {
    char log[300];
    snprintf(log, sizeof(log), "%s/khalad.stderr", rn->dir);
    fflush(stderr);
    int saved = dup(2), fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0) {
        dup2(fd, 2);
        close(fd);
    }
    rn->k.verbose = 1;
    int rc = harness_khalad_start(&rn->k);
    rn->k.verbose = opt.verbose;
    fig.corruptions++;
    if (rc != 0) {
        fflush(stderr);
        dup2(saved, 2);
        close(saved);
        char text[2048] = "";
        int lf = open(log, O_RDONLY);
        if (lf >= 0) {
            ssize_t got = read(lf, text, sizeof(text) - 1);
            text[got > 0 ? got : 0] = '\0';
            close(lf);
        }
        char *nl = strrchr(text, '\n');
        while (nl && nl[1] == '\0' && nl > text) {
            *nl = '\0';
            nl = strrchr(text, '\n');
        }
        const char *last = nl ? nl + 1 : text;
        if (strstr(rn->k.err, "signal")) {
            failure("%s: khalad CRASHED at start on %s: %s", rn->label, what, rn->k.err);
            fig.crashes++;
        } else if (!strstr(text, "l2") && !strstr(text, "journal") && !strstr(text, "L2")) {
            failure("%s: khalad refused %s without naming the file: \"%s\"", rn->label, what, last);
        } else {
            fig.refused_starts++;
            say("%s: %s: khalad refused to start: %.300s", rn->label, what, last);
        }
        return;
    }
    /* It started: every read is a write of the key or a miss, and khalad survives them. */
    khala_cache_t *c = open_cache(rn);
    char key[32], *buf = malloc(VALUE_MAX * 2);
    int served = 0, missing = 0;
    for (int i = 0; c && buf && i < rn->nkeys; i++) {
        size_t len;
        key_name((unsigned)i, key, sizeof(key));
        int gr = khala_cache_get(c, key, strlen(key), buf, VALUE_MAX * 2, &len);
        if (gr == 0 && value_seq((unsigned)i, buf, len) == 0) {
            failure("%s: %s: %s read back as bytes that are no write of it", rn->label, what, key);
            fig.stale++;
        } else if (gr == 0) {
            served++;
        } else if (gr == KHALA_ENOTFOUND) {
            missing++;
        } else {
            failure("%s: %s: get %s: %s (%s)", rn->label, what, key, khala_strerror(gr),
                    khala_cache_errmsg(c));
            break;
        }
    }
    free(buf);
    khala_cache_close(c);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    int st = harness_khalad_kill(&rn->k, SIGTERM);
    if (WIFSIGNALED(st) && WTERMSIG(st) != SIGTERM) {
        failure("%s: %s: khalad CRASHED serving (signal %d)", rn->label, what, WTERMSIG(st));
        fig.crashes++;
    } else {
        say("%s: %s: khalad started; %d keys served intact, %d missing", rn->label, what, served,
            missing);
    }
}

static void scenario_corrupt(const char *label, int redis) {
    for (int kind = 0; kind < C_NKINDS; kind++) {
        run_t rn;
        char sub[64];
        snprintf(sub, sizeof(sub), "%s-%d", label, kind);
        if (run_init(&rn, sub, redis, 0, KHALA_MODE_THROUGH, 300) != 0 || khalad_up(&rn) != 0) {
            fig.failures++;
            run_fini(&rn);
            return;
        }
        khala_cache_t *c = open_cache(&rn);
        if (redis) {
            harness_redis_kill(&rn.r); /* the writes stay in the journal */
            harness_sleep_ms(100);
        }
        for (int i = 0; c && i < rn.nkeys; i++)
            one_op(&rn, c, (unsigned)i, 0);
        khala_cache_close(c);
        harness_khalad_kill(&rn.k, redis ? SIGKILL : SIGTERM);
        harness_khalad_clean(&rn.k);
        g_nmdb = 0;
        nftw(rn.l2dir, find_mdb, 8, FTW_PHYS);
        if (g_nmdb == 0) {
            failure("%s: no data.mdb under %s", sub, rn.l2dir);
        } else {
            char what[700];
            int crc = 0;
            for (int f = 0; f < g_nmdb; f++)
                if (!redis || strstr(g_mdb[f], "journal"))
                    crc |= corrupt_file(g_mdb[f], kind);
            snprintf(what, sizeof(what), "%s %s", redis ? "journal" : "disk store",
                     corrupt_names[kind]);
            if (crc != 0)
                failure("%s: cannot corrupt %s", sub, g_mdb[0]);
            else
                corrupt_start(&rn, what);
        }
        run_fini(&rn);
    }
}

/* ---- self-check: the check can fail ------------------------------------------------------- */

/* Acknowledged writes, then the disk store removed behind khalad's back: the check must find
 * every one of them lost (else it could not find a loss at all). Its own losses are not
 * counted in the run's figures. */
static void scenario_self_check(void) {
    run_t rn;
    if (run_init(&rn, "self-check", 0, 0, KHALA_MODE_THROUGH, 100) != 0 || khalad_up(&rn) != 0) {
        fig.failures++;
        run_fini(&rn);
        return;
    }
    khala_cache_t *c = open_cache(&rn);
    int acked = 0;
    for (int i = 0; c && i < rn.nkeys; i++)
        acked += one_op(&rn, c, (unsigned)i, 0) == 0;
    khala_cache_close(c);
    harness_khalad_stop(&rn.k, 0);
    harness_khalad_clean(&rn.k);
    harness_rmtree(rn.l2dir);
    harness_rmtree(rn.l3dir); /* L3 holds them too */
    if (khalad_up(&rn) == 0) {
        uint64_t lost = fig.lost, stale = fig.stale, keys = fig.keys_checked,
                 reads = fig.reads_checked, puts = fig.acked_writes, dels = fig.acked_deletes;
        check_all(&rn);
        uint64_t found = fig.lost - lost;
        fig.lost = lost;
        fig.stale = stale;
        fig.keys_checked = keys;
        fig.reads_checked = reads;
        fig.acked_writes = puts;
        fig.acked_deletes = dels;
        if (acked == 0 || found < (uint64_t)acked)
            failure("self-check: %d acknowledged writes removed with the store, the check found "
                    "%" PRIu64 " lost",
                    acked, found);
        else
            say("self-check: the store removed: the check found the %d acknowledged writes "
                "lost (as it must)",
                acked);
    }
    run_fini(&rn);
}

/* Acknowledged writes with L3 in SurrealDB, drained, then L3's rows removed behind khalad's
 * back (straight through the front): the L3 check must find every acknowledged write lost
 * there. Only L3 is checked, and its losses are not counted in the run's figures. */
static void scenario_self_check_l3(void) {
    run_t rn;
    if (run_init(&rn, "self-check-l3", 0, 1, KHALA_MODE_THROUGH, 100) != 0 || khalad_up(&rn) != 0) {
        fig.failures++;
        run_fini(&rn);
        return;
    }
    khala_cache_t *c = open_cache(&rn);
    int acked = 0;
    for (int i = 0; c && i < rn.nkeys; i++)
        acked += one_op(&rn, c, (unsigned)i, 0) == 0;
    khala_cache_close(c);
    if (wait_drained(&rn) != 0)
        goto out;
    uint64_t lost = fig.lost, stale = fig.stale, reads = fig.reads_checked;
    /* First L3 as it is: every acknowledged write there (the check passes on good data). */
    if (check_l3(&rn, "self-check, intact") != 0)
        goto out;
    uint64_t before = fig.lost + fig.stale;
    char body[4096];
    int st = harness_surreal_sql(rn.s.port, "khala", "cache", "DELETE FROM cache_table", body,
                                 sizeof(body));
    if (st != 200 || strstr(body, "\"ERR\"")) {
        failure("self-check-l3: DELETE FROM cache_table answered %d: %.300s", st, body);
        goto out;
    }
    check_l3(&rn, "self-check, rows removed");
    uint64_t found = fig.lost - lost;
    fig.lost = lost;
    fig.stale = stale;
    fig.reads_checked = reads;
    if (before != lost + stale)
        failure("self-check-l3: the intact L3 was judged lost or stale");
    else if (acked == 0 || found < (uint64_t)acked)
        failure("self-check-l3: %d acknowledged writes removed from L3, the check found %" PRIu64
                " lost",
                acked, found);
    else
        say("self-check-l3: L3's rows removed: the check found the %d acknowledged writes lost "
            "(as it must)",
            acked);
out:
    run_fini(&rn);
}

/* ---- main -------------------------------------------------------------------------------------- */

static int want(const char *scenario) {
    return !opt.only || strcmp(opt.only, scenario) == 0;
}

static int usage(void) {
    fprintf(
        stderr,
        "usage: chaos_check [--short] [--kills N] [--redis-kills N] [--redis-stops N]\n"
        "                   [--surreal-kills N] [--surreal-stops N]\n"
        "                   [--writers N] [--keys N] [--seed N]\n"
        "                   [--only load|l3|disk-full|corrupt|self-check] [--keep] [--verbose]\n");
    return 2;
}

int main(int argc, char **argv) {
    opt.seed = (uint64_t)time(NULL);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--short") == 0) {
            opt.kills = 3;
            opt.redis_kills = 2;
            opt.redis_stops = 2;
            opt.surreal_kills = 2;
            opt.surreal_stops = 2;
            opt.writers = 3;
            opt.keys = 300;
        } else if (strcmp(a, "--keep") == 0) {
            opt.keep = 1;
        } else if (strcmp(a, "--verbose") == 0) {
            opt.verbose = 1;
        } else if (!v) {
            return usage();
        } else if (strcmp(a, "--kills") == 0) {
            opt.kills = atoi(v), i++;
        } else if (strcmp(a, "--redis-kills") == 0) {
            opt.redis_kills = atoi(v), i++;
        } else if (strcmp(a, "--redis-stops") == 0) {
            opt.redis_stops = atoi(v), i++;
        } else if (strcmp(a, "--surreal-kills") == 0) {
            opt.surreal_kills = atoi(v), i++;
        } else if (strcmp(a, "--surreal-stops") == 0) {
            opt.surreal_stops = atoi(v), i++;
        } else if (strcmp(a, "--writers") == 0) {
            opt.writers = atoi(v), i++;
        } else if (strcmp(a, "--keys") == 0) {
            opt.keys = atoi(v), i++;
        } else if (strcmp(a, "--seed") == 0) {
            opt.seed = strtoull(v, NULL, 10), i++;
        } else if (strcmp(a, "--only") == 0) {
            opt.only = v, i++;
        } else {
            return usage();
        }
    }
    if (opt.writers < 1 || opt.writers > WRITERS_MAX || opt.keys < opt.writers || opt.kills < 0 ||
        opt.redis_kills < 0 || opt.redis_stops < 0 || opt.surreal_kills < 0 ||
        opt.surreal_stops < 0)
        return usage();
    g_rng = opt.seed | 1;
    signal(SIGPIPE, SIG_IGN);
    snprintf(g_base, sizeof(g_base), "/tmp/khala-chaos-%d", (int)getpid());
    if (mkdir(g_base, 0700) != 0) {
        perror(g_base);
        return 2;
    }
    say("seed %" PRIu64 " (--seed to replay the same schedule), work directory %s", opt.seed,
        g_base);
    if (opt.only && strcmp(opt.only, "self-check") == 0) {
        scenario_self_check();
        scenario_self_check_l3();
    }
    if (want("load")) {
        scenario_load("disk-through", 0, KHALA_MODE_THROUGH);
        scenario_load("redis-through", 1, KHALA_MODE_THROUGH);
        scenario_load("redis-behind", 1, KHALA_MODE_BEHIND);
    }
    if (want("l3")) {
        /* L3 in SurrealDB: (a) khalad killed, (b) the front killed, (c) the front hung, (d)
         * Redis (L2) and the front killed in the same run, with khalad too. */
        scenario_load_faults("l3-khalad-kill", 0, 1, KHALA_MODE_THROUGH, S_KHALAD);
        scenario_load_faults("l3-front-kill", 0, 1, KHALA_MODE_THROUGH, S_SURREAL_KILL);
        scenario_load_faults("l3-front-stop", 0, 1, KHALA_MODE_THROUGH, S_SURREAL_STOP);
        scenario_load_faults("l3-redis-front-kill", 1, 1, KHALA_MODE_THROUGH,
                             S_KHALAD | S_REDIS | S_SURREAL_KILL);
    }
    if (want("disk-full")) {
        scenario_disk_full("full-disk-store", 0);
        scenario_disk_full("full-journal", 1);
    }
    if (want("corrupt")) {
        scenario_corrupt("corrupt-disk", 0);
        scenario_corrupt("corrupt-journal", 1);
    }
    if (!opt.keep)
        harness_rmtree(g_base);
    int bad = fig.lost || fig.stale || fig.crashes || fig.failures;
    printf("chaos: faults: %" PRIu64 " khalad SIGKILLs, %" PRIu64 " redis-server SIGKILLs, %" PRIu64
           " redis-server SIGSTOPs, %" PRIu64 " SurrealDB front SIGKILLs, %" PRIu64
           " front SIGSTOPs (%" PRIu64 " requests answered while hung), %" PRIu64
           " disks full, %" PRIu64 " corrupt starts (%" PRIu64 " refused); checked: %" PRIu64
           " acknowledged puts, %" PRIu64 " deletes, %" PRIu64 " keys, %" PRIu64
           " reads; lost %" PRIu64 ", stale %" PRIu64 ", crashes %" PRIu64 ", failures %" PRIu64
           "%s: %s\n",
           fig.khalad_kills, fig.redis_kills, fig.redis_stops, fig.surreal_kills, fig.surreal_stops,
           fig.served_while_stopped, fig.disk_fulls, fig.corruptions, fig.refused_starts,
           fig.acked_writes, fig.acked_deletes, fig.keys_checked, fig.reads_checked, fig.lost,
           fig.stale, fig.crashes, fig.failures, fig.skipped ? ", some scenarios skipped" : "",
           bad ? "FAILED" : "passed");
    return bad ? 1 : 0;
}
