/*
 * Predictive warming: a bounded successor table (see predict.h for the contract).
 *
 * HOW IT WORKS
 *
 *   buckets[hash & mask] --> entry --> entry --> NIL          (chains through entry.next)
 *
 *   ents[i]   | hash | next | gen | total | klen | ref |       one per tracked key
 *   keys[i]   | KEY_SLOT bytes: the key itself |               (the bytes hints point into)
 *   succ[i*per_key .. i*per_key+per_key-1]  | idx | gen | count |  key i's successors
 *
 *   streams[set * WAYS + way]  | id | stamp | last idx | last gen |
 *
 * Every array is allocated once, by khala__predict_new; nothing is allocated afterwards, so
 * memory is fixed whatever the input.
 *
 * khala__predict_observe(stream, key), in steps that the code refers to:
 * Step 1. Find the key's entry through its bucket chain (64-bit XXH3 hash, then length and
 *         bytes: keys are stored whole, so two keys never share an entry). Found: set its CLOCK
 *         bit. Not found: take a never-used entry while there are any, else the CLOCK victim
 *         (the hand clears set bits until it meets a clear one), unlink the victim from its
 *         chain, bump the entry's generation, clear its successors and store the new key with
 *         its bit clear, so that a key seen once goes before keys seen again.
 * Step 2. Find the stream's slot in its set (WAYS ways), or take the set's empty or least
 *         recently active way.
 * Step 3. If the stream's last key is still tracked (its generation matches) and is not this
 *         key, count the succession last -> key: add one to last's total and to the slot of
 *         this key among last's successors, or else give this key the first empty or stale
 *         slot, or else the slot with the smallest count, starting at 1. When the total reaches
 *         KHALA_PREDICT_DECAY_AT, halve the total and every count (a count of 1 becomes 0: the
 *         slot is free again).
 * Step 4. Make this key the stream's last key.
 * Step 5. Return this key's successors whose count is at least KHALA_PREDICT_MIN_COUNT and at
 *         least KHALA_PREDICT_MIN_PCT percent of its total, largest count first.
 *
 * Invariants (khala__predict_check walks them):
 *   - an entry with klen != 0 is on exactly one chain, the one of its hash; `used` of them;
 *   - a successor slot with count != 0 names an entry index < capacity, and is stale (to be
 *     ignored and reused) when that entry's generation has moved on;
 *   - the counts of an entry sum to at most its total, and total < KHALA_PREDICT_DECAY_AT
 *     (each increment is followed by the halving check). So a successor's share is a true
 *     lower bound of how often it followed the key in the decayed window.
 *
 * Why successors are entry indices with a generation and not copies of the keys: a copy would
 * cost KHALA_KEY_MAX bytes per successor instead of 12. The price is that a successor whose own
 * entry was replaced is forgotten; but khalad observes every key it would prefetch (each was a
 * miss once), so a successor cold enough to leave the table is not worth prefetching.
 *
 * Why CLOCK and not LRU for the keys: one bit set per observation, no list to move; as in the
 * L1, it approximates recency well enough for a table whose only job is to keep keys that recur.
 * Why halving and not sliding windows: two bytes per successor, O(per_key) per observation, and
 * the window adapts at the rate the key is read.
 *
 * Only what reaches khalad is observed: the L1's misses. A prediction that works makes its key
 * hit the L1, so khalad no longer sees that key after the one that predicted it, and the next
 * miss becomes that key's successor instead. The bench (bench/predict_replay.c) measures the
 * whole loop, feedback included.
 */
#include "predict.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "khala/cache.h"
#include "khala/error.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

/* No entry: ends a chain, marks a stream without a last key. */
#define NIL UINT32_MAX

/* Bytes reserved per key: KHALA_KEY_MAX rounded up to a multiple of 8. */
#define KEY_SLOT ((KHALA_KEY_MAX + 7u) & ~7u)

/* Ways per stream set: a stream only competes with the WAYS - 1 others hashed to its set. */
#define WAYS 4u
#define SETS (KHALA_PREDICT_STREAMS / WAYS)

_Static_assert(KHALA_KEY_MAX <= UINT8_MAX, "entry.klen is 8 bits");
_Static_assert(KHALA_PREDICT_DECAY_AT <= UINT16_MAX, "counts are 16 bits");
_Static_assert((SETS & (SETS - 1)) == 0, "the stream set count is a power of two");

/* A tracked key. */
typedef struct pr_entry {
    uint64_t hash;  /* XXH3-64 of the key; meaningful when klen != 0 */
    uint32_t next;  /* next entry on the bucket chain; NIL ends it */
    uint32_t gen;   /* bumped each time the entry takes a new key; successor slots carry it */
    uint16_t total; /* decayed successions from this key, < KHALA_PREDICT_DECAY_AT */
    uint8_t klen;   /* key length, 1..KHALA_KEY_MAX; 0: never used */
    uint8_t ref;    /* CLOCK bit: observed since the hand last passed */
} pr_entry_t;

/* One successor of a key. */
typedef struct pr_succ {
    uint32_t idx;   /* the successor's entry; meaningful when count != 0 */
    uint32_t gen;   /* that entry's generation when counted; a mismatch means stale */
    uint16_t count; /* decayed successions to it; 0: free slot */
} pr_succ_t;

/* A stream's last key. */
typedef struct pr_stream {
    uint64_t id;    /* the caller's stream id */
    uint64_t stamp; /* p->tick when last active; 0: empty way */
    uint32_t last;  /* entry of its last key; NIL: none */
    uint32_t gen;   /* that entry's generation then */
} pr_stream_t;

/* Everything is owned by khalad's loop thread: no guard, no atomics. All the sizes are
 * immutable after khala__predict_new. */
struct khala_predict {
    uint32_t capacity;    /* entries */
    uint32_t per_key;     /* successor slots per entry */
    uint32_t bucket_mask; /* buckets - 1; buckets = power of two >= 2 * capacity */
    uint32_t used;        /* entries that hold a key; fresh ones are taken in index order */
    uint32_t hand;        /* CLOCK hand, < capacity */
    uint32_t streams;     /* non-empty stream ways */
    uint64_t tick;        /* stamp source for streams, bumped per observation */
    uint64_t memory_bytes;
    pr_entry_t *ents;   /* [capacity] */
    uint8_t *keys;      /* [capacity * KEY_SLOT] */
    pr_succ_t *succ;    /* [capacity * per_key] */
    uint32_t *buckets;  /* [bucket_mask + 1]; NIL: empty */
    pr_stream_t *strms; /* [KHALA_PREDICT_STREAMS] */
    /* counters (khala__predict_stats) */
    uint64_t observations, successions, predictions, replaced;
};

int khala__predict_new(uint32_t capacity, uint32_t per_key, khala_predict_t **out) {
    if (capacity < KHALA_PREDICT_CAPACITY_MIN || capacity > KHALA_PREDICT_CAPACITY_MAX ||
        per_key < KHALA_PREDICT_PER_KEY_MIN || per_key > KHALA_PREDICT_PER_KEY_MAX)
        return -EINVAL;
    khala_predict_t *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    uint32_t nb = 1;
    while (nb < 2 * capacity)
        nb <<= 1;
    p->capacity = capacity;
    p->per_key = per_key;
    p->bucket_mask = nb - 1;
    p->ents = calloc(capacity, sizeof(*p->ents));
    p->keys = malloc((size_t)capacity * KEY_SLOT);
    p->succ = calloc((size_t)capacity * per_key, sizeof(*p->succ));
    p->buckets = malloc((size_t)nb * sizeof(*p->buckets));
    p->strms = calloc(KHALA_PREDICT_STREAMS, sizeof(*p->strms));
    if (!p->ents || !p->keys || !p->succ || !p->buckets || !p->strms) {
        khala__predict_free(p);
        return -ENOMEM;
    }
    memset(p->buckets, 0xff, (size_t)nb * sizeof(*p->buckets)); /* every bucket NIL */
    p->memory_bytes =
        sizeof(*p) + (uint64_t)capacity * sizeof(*p->ents) + (uint64_t)capacity * KEY_SLOT +
        (uint64_t)capacity * per_key * sizeof(*p->succ) + (uint64_t)nb * sizeof(*p->buckets) +
        (uint64_t)KHALA_PREDICT_STREAMS * sizeof(*p->strms);
    *out = p;
    return 0;
}

void khala__predict_free(khala_predict_t *p) {
    if (!p)
        return;
    free(p->ents);
    free(p->keys);
    free(p->succ);
    free(p->buckets);
    free(p->strms);
    free(p);
}

static inline const uint8_t *key_of(const khala_predict_t *p, uint32_t i) {
    return p->keys + (size_t)i * KEY_SLOT;
}

static inline pr_succ_t *succ_of(const khala_predict_t *p, uint32_t i) {
    return p->succ + (size_t)i * p->per_key;
}

/* 1 if slot s names a live successor: counted, and its entry still holds the same key. */
static inline int succ_live(const khala_predict_t *p, const pr_succ_t *s) {
    return s->count != 0 && p->ents[s->idx].gen == s->gen && p->ents[s->idx].klen != 0;
}

static uint32_t find(const khala_predict_t *p, uint64_t h, const void *key, size_t klen) {
    for (uint32_t i = p->buckets[h & p->bucket_mask]; i != NIL; i = p->ents[i].next) {
        const pr_entry_t *e = &p->ents[i];
        if (e->hash == h && e->klen == klen && memcmp(key_of(p, i), key, klen) == 0)
            return i;
    }
    return NIL;
}

static void unlink_entry(khala_predict_t *p, uint32_t i) {
    uint32_t *link = &p->buckets[p->ents[i].hash & p->bucket_mask];
    while (*link != i) {
        assert(*link != NIL); /* invariant: a used entry is on its hash's chain */
        link = &p->ents[*link].next;
    }
    *link = p->ents[i].next;
}

/* Step 1 for a key not tracked: an entry for it, replacing a cold one when the table is full. */
static uint32_t take_entry(khala_predict_t *p, uint64_t h, const void *key, size_t klen) {
    uint32_t i;
    if (p->used < p->capacity) {
        i = p->used++;
    } else {
        /* Terminates within capacity + 1 steps: the first pass clears every set bit. */
        while (p->ents[p->hand].ref) {
            p->ents[p->hand].ref = 0;
            p->hand = p->hand + 1 == p->capacity ? 0 : p->hand + 1;
        }
        i = p->hand;
        p->hand = p->hand + 1 == p->capacity ? 0 : p->hand + 1;
        unlink_entry(p, i);
        p->replaced++;
    }
    pr_entry_t *e = &p->ents[i];
    e->hash = h;
    e->gen++; /* successor slots and stream slots that named the old key become stale */
    e->total = 0;
    e->klen = (uint8_t)klen;
    e->ref = 0;
    memcpy(p->keys + (size_t)i * KEY_SLOT, key, klen);
    memset(succ_of(p, i), 0, p->per_key * sizeof(pr_succ_t));
    e->next = p->buckets[h & p->bucket_mask];
    p->buckets[h & p->bucket_mask] = i;
    return i;
}

/* A well-mixed set index for a stream id (ids are often small consecutive integers). */
static inline uint32_t stream_set(uint64_t id) {
    id ^= id >> 33;
    id *= 0xff51afd7ed558ccdull;
    id ^= id >> 33;
    return (uint32_t)id & (SETS - 1);
}

/* Step 2: the stream's way, or NULL when it is not remembered. */
static pr_stream_t *stream_find(const khala_predict_t *p, uint64_t id) {
    pr_stream_t *set = p->strms + (size_t)stream_set(id) * WAYS;
    for (uint32_t w = 0; w < WAYS; w++)
        if (set[w].stamp && set[w].id == id)
            return &set[w];
    return NULL;
}

/* Step 2 for a stream not remembered: the set's empty way, or its least recently active one
 * (which forgets that stream's last key). */
static pr_stream_t *stream_take(khala_predict_t *p, uint64_t id) {
    pr_stream_t *set = p->strms + (size_t)stream_set(id) * WAYS, *s = &set[0];
    for (uint32_t w = 1; w < WAYS && s->stamp; w++)
        if (set[w].stamp < s->stamp)
            s = &set[w];
    if (!s->stamp)
        p->streams++;
    s->id = id;
    s->last = NIL;
    s->gen = 0;
    return s;
}

/* Step 3: count the succession a -> b (a != b, both live entries). */
static void count_succession(khala_predict_t *p, uint32_t a, uint32_t b) {
    pr_entry_t *ea = &p->ents[a];
    pr_succ_t *s = succ_of(p, a), *slot = NULL;
    uint32_t gen_b = p->ents[b].gen;
    for (uint32_t k = 0; k < p->per_key && !slot; k++)
        if (s[k].count && s[k].idx == b && s[k].gen == gen_b)
            slot = &s[k];
    if (!slot) {
        /* b is new among a's successors: the first free or stale slot, else the least counted
         * (the first of equals), restarting at 0. */
        for (uint32_t k = 0; k < p->per_key && !slot; k++)
            if (!succ_live(p, &s[k]))
                slot = &s[k];
        if (!slot) {
            slot = &s[0];
            for (uint32_t k = 1; k < p->per_key; k++)
                if (s[k].count < slot->count)
                    slot = &s[k];
        }
        slot->idx = b;
        slot->gen = gen_b;
        slot->count = 0;
    }
    slot->count++;
    ea->total++;
    if (ea->total >= KHALA_PREDICT_DECAY_AT) {
        ea->total /= 2;
        for (uint32_t k = 0; k < p->per_key; k++)
            s[k].count /= 2;
    }
}

/* Step 5: the successors of entry i that meet the "usually" rule, largest count first. */
static size_t hints_of(khala_predict_t *p, uint32_t i, khala_predict_hint_t *out, size_t max) {
    const pr_succ_t *s = succ_of(p, i);
    uint32_t total = p->ents[i].total;
    khala_predict_hint_t c[KHALA_PREDICT_PER_KEY_MAX];
    size_t n = 0;
    for (uint32_t k = 0; k < p->per_key; k++) {
        if (!succ_live(p, &s[k]) || s[k].count < KHALA_PREDICT_MIN_COUNT ||
            (uint64_t)s[k].count * 100 < (uint64_t)KHALA_PREDICT_MIN_PCT * total)
            continue;
        khala_predict_hint_t h = {.key = key_of(p, s[k].idx),
                                  .klen = p->ents[s[k].idx].klen,
                                  .count = s[k].count,
                                  .confidence_pct = (uint32_t)(s[k].count * 100u / total)};
        size_t j = n++;
        for (; j > 0 && c[j - 1].count < h.count; j--) /* insertion, stable among equals */
            c[j] = c[j - 1];
        c[j] = h;
    }
    n = n < max ? n : max;
    memcpy(out, c, n * sizeof(*out));
    return n;
}

size_t khala__predict_observe(khala_predict_t *p, uint64_t stream, const void *key, size_t klen,
                              khala_predict_hint_t *out, size_t max) {
    assert(p && (out || max == 0));
    if (klen == 0 || klen > KHALA_KEY_MAX || !key)
        return 0;
    p->observations++;
    p->tick++;
    /* Step 1. */
    uint64_t h = XXH3_64bits(key, klen);
    uint32_t i = find(p, h, key, klen);
    if (i != NIL)
        p->ents[i].ref = 1;
    else
        i = take_entry(p, h, key, klen);
    /* Step 2. */
    pr_stream_t *s = stream_find(p, stream);
    if (!s)
        s = stream_take(p, stream);
    /* Step 3. */
    if (s->last != NIL && s->last != i && p->ents[s->last].gen == s->gen) {
        count_succession(p, s->last, i);
        p->successions++;
    }
    /* Step 4. */
    s->last = i;
    s->gen = p->ents[i].gen;
    s->stamp = p->tick;
    /* Step 5. */
    size_t n = max ? hints_of(p, i, out, max) : 0;
    p->predictions += n;
    return n;
}

void khala__predict_forget_stream(khala_predict_t *p, uint64_t stream) {
    pr_stream_t *s = stream_find(p, stream);
    if (!s)
        return;
    memset(s, 0, sizeof(*s));
    s->last = NIL;
    p->streams--;
}

void khala__predict_stats(const khala_predict_t *p, khala_predict_stats_t *out) {
    memset(out, 0, sizeof(*out));
    out->capacity = p->capacity;
    out->per_key = p->per_key;
    out->tracked = p->used;
    out->streams = p->streams;
    out->observations = p->observations;
    out->successions = p->successions;
    out->predictions = p->predictions;
    out->replaced = p->replaced;
    out->memory_bytes = p->memory_bytes;
}

int khala__predict_check(const khala_predict_t *p) {
    uint64_t chained = 0;
    if (p->used > p->capacity || p->hand >= p->capacity || p->streams > KHALA_PREDICT_STREAMS)
        return KHALA_ECORRUPT;
    for (uint32_t b = 0; b <= p->bucket_mask; b++) {
        uint32_t n = 0;
        for (uint32_t i = p->buckets[b]; i != NIL; i = p->ents[i].next) {
            if (i >= p->used || ++n > p->used || (p->ents[i].hash & p->bucket_mask) != b ||
                p->ents[i].klen == 0 || p->ents[i].klen > KHALA_KEY_MAX)
                return KHALA_ECORRUPT;
            chained++;
        }
    }
    if (chained != p->used)
        return KHALA_ECORRUPT;
    for (uint32_t i = 0; i < p->used; i++) {
        const pr_entry_t *e = &p->ents[i];
        const pr_succ_t *s = succ_of(p, i);
        uint32_t sum = 0;
        if (e->total >= KHALA_PREDICT_DECAY_AT || XXH3_64bits(key_of(p, i), e->klen) != e->hash)
            return KHALA_ECORRUPT;
        for (uint32_t k = 0; k < p->per_key; k++) {
            if (s[k].count && s[k].idx >= p->capacity)
                return KHALA_ECORRUPT;
            sum += s[k].count;
        }
        if (sum > e->total)
            return KHALA_ECORRUPT;
    }
    uint32_t ways = 0;
    for (uint32_t w = 0; w < KHALA_PREDICT_STREAMS; w++) {
        const pr_stream_t *s = &p->strms[w];
        if (!s->stamp)
            continue;
        ways++;
        if ((s->last != NIL && s->last >= p->used) || stream_set(s->id) != w / WAYS)
            return KHALA_ECORRUPT;
    }
    return ways == p->streams ? 0 : KHALA_ECORRUPT;
}
