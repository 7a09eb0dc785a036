/*
 * The mutation engine and main() shared by the replay drivers of the fuzz targets
 * (fuzz_frame_replay.c, fuzz_inval_replay.c, fuzz_rvalue_replay.c). A driver describes its
 * target in a fuzz_replay_target_t (its seeds, the bytes and fragments that matter to its
 * format, its own edit, how to run one input, what its messages say) and calls
 * fuzz_replay_main, which parses the arguments, builds and checks the seeds, writes them for
 * libFuzzer or replays a fixed number of deterministic mutations of them, and prints the counts.
 *
 *   fuzz_X_replay [ROUNDS]          replay (default FUZZ_REPLAY_DEFAULT_ROUNDS mutations)
 *   fuzz_X_replay --write-seed DIR  write the seeds into DIR as seed-X-NN, for libFuzzer
 */
#ifndef KHALA_TESTS_FUZZ_MUTATE_H
#define KHALA_TESTS_FUZZ_MUTATE_H

#include <stddef.h>
#include <stdint.h>

#define FUZZ_REPLAY_DEFAULT_ROUNDS 100000

/* One seed input: len bytes at p (malloc'ed, freed by fuzz_replay_main), and whether the
 * target must decode it (1) or refuse it (0). */
typedef struct fuzz_seed {
    uint8_t *p;
    size_t len;
    int valid;
} fuzz_seed_t;

/* A target's own edit of out (len bytes, room for max) at offset at, drawing from *rng; returns
 * the new length (<= max). */
typedef size_t (*fuzz_edit_fn)(uint8_t *out, size_t len, size_t at, size_t max, uint64_t *rng);

/* What fuzz_mutate needs to know of a format. */
typedef struct fuzz_mutator {
    const uint8_t *interesting; /* bytes that change how the format reads what follows */
    size_t ninteresting;
    const char *const *dict; /* fragments of the format to insert (NULL: none) */
    size_t ndict;
    fuzz_edit_fn edit; /* the target's own edit (NULL: none) */
    size_t input_max;  /* largest mutated input: a seed plus what insertions and splices add */
} fuzz_mutator_t;

/* A target as its replay driver describes it to fuzz_replay_main. */
typedef struct fuzz_replay_target {
    const char *name;  /* "frame": messages start "fuzz_frame:", seed files are seed-frame-NN */
    uint64_t rng_seed; /* the fixed, non-zero start of the mutation sequence */
    int seeds_max;     /* room for that many seeds */
    fuzz_mutator_t mutator;
    /* Build the seeds into seeds[0..max) and their count into *n; 0 when built, -1 when one
     * could not be built (reported with seed_error and *n), -2 when out of memory (exit 2). */
    int (*make_seeds)(fuzz_seed_t *seeds, int max, int *n);
    const char *seed_error; /* "cannot build seed": followed by the seed's number */
    /* Run one input through the target: > 0 when it decoded something, 0 when refused. */
    int (*run)(const uint8_t *data, size_t size);
    const char *invalid_decodes; /* what the failure says of a seed that must not decode */
    int show_valid;              /* the summary says how many seeds are valid */
    const char *decoded_label;   /* "decoded": the summary's name for inputs that decoded */
    /* A last check after the replay (NULL: none): 0 when it passed, 1 when it failed (it says
     * why on stderr), 2 when out of memory (exit 2). */
    int (*finish)(void);
} fuzz_replay_target_t;

/* One mutation of in (len bytes, <= m->input_max) into out (m->input_max bytes): one edit, or
 * sometimes two to four, each drawn from *rng: flip a bit, write an interesting byte or a random
 * one, insert or delete a few bytes, the target's own edit (or else insert a fragment of its
 * dictionary), truncate, or splice the tail of another of the nseeds seeds after our head.
 * Returns the new length (<= m->input_max). */
size_t fuzz_mutate(const fuzz_mutator_t *m, uint64_t *rng, const fuzz_seed_t *seeds, int nseeds,
                   const uint8_t *in, size_t len, uint8_t *out);

/* The make_seeds of a target whose seeds come from seed(i, out, &len, &valid) (1 when it wrote
 * seed i into out, of seed_max bytes, 0 when i is past the last, -1 when building it failed):
 * as many as fit in seeds[0..max), each in a block of seed_max bytes. Returns as make_seeds. */
int fuzz_make_seeds_from(fuzz_seed_t *seeds, int max, int *n, size_t seed_max,
                         int (*seed)(int i, uint8_t *out, size_t *len, int *valid));

/* Write seeds[0..n) into dir as seed-<name>-NN. 0 when all were written, 1 (and a message on
 * stderr) when one was not. */
int fuzz_write_seeds(const char *dir, const char *name, const fuzz_seed_t *seeds, int n);

/* The replay program of target t (see the top of this file): builds the seeds, checks that each
 * decodes exactly when it should, runs the mutations from heap blocks of exactly their size (so
 * ASan sees any overread), runs t->finish, and prints the counts and "N passed, M failed".
 * Returns the exit code: 0 passed, 1 failed, 2 out of memory. */
int fuzz_replay_main(int argc, char **argv, const fuzz_replay_target_t *t);

#endif /* KHALA_TESTS_FUZZ_MUTATE_H */
