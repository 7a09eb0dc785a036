/*
 * Predictive warming, an experiment kept under bench/ with its measured result: it is not part of
 * khalad (it left daemon/ in issue 9, since it did not pay). A small, bounded table of which key
 * usually follows which, learnt from the requests khalad would see. khalad is the L1's only writer and sees
 * only the requests that miss L1, per client connection and in order; on each one it calls
 * khala__predict_observe(), which records "the previous miss of this connection was followed by
 * this key" and returns the keys that usually follow this one, for khalad to prefetch into L1
 * (from L2/L3) when they are absent. The design is at the top of predict.c; start at
 * khala__predict_new() and khala__predict_observe().
 *
 * Memory is fixed at khala__predict_new(): nothing grows with the input, whatever it is. Cold
 * keys are replaced (CLOCK), successor counts decay, and a handful of connections' last keys
 * are remembered (KHALA_PREDICT_STREAMS).
 *
 * Whether it pays is measured by `khala-bench predict` (docs/benchmarks.md, "Predictive
 * warming", and docs/eviction.md): on the two real traces it does not raise the L1 hit ratio,
 * so khalad does not have it.
 *
 * Not thread-safe: one thread owns a table.
 */
#ifndef KHALA_BENCH_PREDICT_H
#define KHALA_BENCH_PREDICT_H

#include <stddef.h>
#include <stdint.h>

/** Keys tracked, limits of khala__predict_new()'s capacity. Every key takes a KHALA_KEY_MAX
 * slot, so the upper one is about 1.3 GiB; a real configuration is a few tens of thousands of
 * keys (a few MiB). */
#define KHALA_PREDICT_CAPACITY_MIN 16u
#define KHALA_PREDICT_CAPACITY_MAX (1u << 22)

/** Successors kept per key, limits of khala__predict_new()'s per_key. A "usual" successor
 * holds at least half of a key's successions, so at most two can qualify; a few more slots let
 * a newly dominant successor build up its count while an old one fades. */
#define KHALA_PREDICT_PER_KEY_MIN 1u
#define KHALA_PREDICT_PER_KEY_MAX 8u

/** Streams (client connections) whose last key is remembered: a set-associative table, the
 * least recently active stream of a set is forgotten first. A forgotten stream only loses the
 * one succession from its last key to its next. */
#define KHALA_PREDICT_STREAMS 4096u

/** "Usually": a successor is predicted when it followed the key at least this many times
 * (decayed count) ... */
#define KHALA_PREDICT_MIN_COUNT 2u
/** ... and in at least this percentage of the key's recent successions. */
#define KHALA_PREDICT_MIN_PCT 50u

/** Successions of one key after which all its counts are halved: the window that "usually" is
 * judged over, so that a key's habits can change. */
#define KHALA_PREDICT_DECAY_AT 32u

typedef struct khala_predict khala_predict_t;

/** A predicted successor, as khala__predict_observe() returns it. */
typedef struct khala_predict_hint {
    const void *key;         /* a VIEW into the predictor's table: valid until the next call
                                on the same predictor (observe, forget_stream, free); never
                                write to it or free it; copy it to keep it */
    size_t klen;             /* 1..KHALA_KEY_MAX */
    uint32_t count;          /* decayed times it followed the observed key, >= MIN_COUNT */
    uint32_t confidence_pct; /* count * 100 / the observed key's decayed successions,
                                KHALA_PREDICT_MIN_PCT..100 */
} khala_predict_hint_t;

/** Counters of a predictor (khala__predict_stats()). */
typedef struct khala_predict_stats {
    uint32_t capacity;     /* keys it can track (khala__predict_new) */
    uint32_t per_key;      /* successors kept per key */
    uint32_t tracked;      /* keys tracked now, <= capacity */
    uint32_t streams;      /* streams whose last key is remembered now, <= KHALA_PREDICT_STREAMS */
    uint64_t observations; /* khala__predict_observe calls with a valid key */
    uint64_t successions;  /* observations that followed a remembered key of the same stream */
    uint64_t predictions;  /* hints returned, summed over observations */
    uint64_t replaced;     /* tracked keys replaced to make room (CLOCK victims) */
    uint64_t memory_bytes; /* bytes allocated by khala__predict_new; constant */
} khala_predict_stats_t;

/**
 * @brief Make a predictor tracking up to @p capacity keys with @p per_key successors each.
 * @param[in] capacity keys tracked, KHALA_PREDICT_CAPACITY_MIN..KHALA_PREDICT_CAPACITY_MAX.
 *            Memory is fixed here: about capacity * (296 + 12 * per_key) bytes (a
 *            KHALA_KEY_MAX key slot, an entry, two to four buckets, the successors) plus 96 KiB
 *            of streams; khala_predict_stats_t.memory_bytes has the exact figure.
 * @param[in] per_key successors kept per key, KHALA_PREDICT_PER_KEY_MIN..KHALA_PREDICT_PER_KEY_MAX
 *            (2 to 4 is plenty).
 * @param[out] out the predictor, written only on success.
 * @return 0; -EINVAL for a capacity or per_key out of range; -ENOMEM.
 * @note Free it with khala__predict_free().
 */
int khala__predict_new(uint32_t capacity, uint32_t per_key, khala_predict_t **out);

/**
 * @brief Free a predictor and everything it holds; views it returned become invalid.
 * @param[in] p the predictor; NULL is a no-op.
 */
void khala__predict_free(khala_predict_t *p);

/**
 * @brief Record that @p stream read @p key, and say which keys usually follow @p key.
 *
 * The succession (the stream's previous key -> @p key) is counted, @p key becomes the stream's
 * last key, and the successors of @p key that meet the "usually" rule (KHALA_PREDICT_MIN_COUNT
 * and KHALA_PREDICT_MIN_PCT) are written to @p out, most likely first. A key never predicts
 * itself. A key read twice in a row by a stream is not a succession.
 *
 * @param[in] p the predictor.
 * @param[in] stream who read it: khalad passes the client connection's id. Any value.
 * @param[in] key the key read (any bytes, NUL included).
 * @param[in] klen its length, 1..KHALA_KEY_MAX; any other length is ignored: nothing is
 *            recorded and 0 is returned (khalad has refused such keys already).
 * @param[out] out up to @p max hints; may be NULL when @p max is 0 (learn without asking).
 * @param[in] max room in @p out.
 * @return how many hints were written, 0..min(max, 2) with the default rule.
 * @note The hints' keys are views into @p p, valid until the next call on @p p. O(per_key)
 *       per call, no allocation.
 */
size_t khala__predict_observe(khala_predict_t *p, uint64_t stream, const void *key, size_t klen,
                              khala_predict_hint_t *out, size_t max);

/**
 * @brief A stream ended (a connection closed): forget its last key, so that a new stream that
 *        reuses the id does not continue the old one's sequence.
 * @param[in] p the predictor.
 * @param[in] stream the stream; unknown streams are a no-op.
 * @note Invalidates the views returned by the previous khala__predict_observe().
 */
void khala__predict_forget_stream(khala_predict_t *p, uint64_t stream);

/**
 * @brief Read the predictor's counters.
 * @param[in] p the predictor.
 * @param[out] out the counters; every field is written.
 */
void khala__predict_stats(const khala_predict_t *p, khala_predict_stats_t *out);

/**
 * @brief Walk the whole table and verify its invariants (tests call it after mutations).
 * @param[in] p the predictor.
 * @return 0; KHALA_ECORRUPT when an invariant is broken (a bug).
 */
int khala__predict_check(const khala_predict_t *p);

#endif /* KHALA_BENCH_PREDICT_H */
