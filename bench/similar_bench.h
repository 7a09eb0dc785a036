/*
 * similar: the disk store's semantic look-up (daemon/tier_disk_vectors.c) at a given number of
 * embeddings and dimension. Start at bench_similar(); bench/similar_bench.c says what is timed.
 */
#ifndef KHALA_BENCH_SIMILAR_BENCH_H
#define KHALA_BENCH_SIMILAR_BENCH_H

#include <stdint.h>

/** Options of bench_similar(). */
typedef struct bench_similar_opts {
    uint32_t items;   /* embeddings in the store */
    uint32_t dim;     /* their dimension */
    uint32_t queries; /* timed look-ups per round */
    uint32_t k;       /* matches asked per look-up */
    unsigned rounds;  /* timed rounds; the final line gives the median round */
} bench_similar_opts_t;

/**
 * @brief Fill a fresh disk store with @p o->items random embeddings of @p o->dim floats, then
 *        time @p o->rounds rounds of @p o->queries look-ups, and print one line per round and
 *        the final key=value line.
 * @return 0, or -1 after a message on stderr.
 */
int bench_similar(const bench_similar_opts_t *o);

#endif /* KHALA_BENCH_SIMILAR_BENCH_H */
