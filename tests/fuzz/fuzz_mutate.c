/*
 * The mutation engine and main() shared by the fuzz replay drivers (see fuzz_mutate.h): the
 * same edits drawn in the same order from the same fixed-seed sequence (fuzz_rand.h), so that a
 * replay is the same run after run and a target's counts change only when its code does.
 */
#include "fuzz_mutate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_rand.h"

/* A byte of m's interesting ones, drawn from *rng. */
static uint8_t interesting_byte(const fuzz_mutator_t *m, uint64_t *rng) {
    return m->interesting[fuzz_rand(rng) % m->ninteresting];
}

/* Insert a fragment of m's dictionary at at, if it fits; returns the new length. */
static size_t insert_fragment(const fuzz_mutator_t *m, uint64_t *rng, uint8_t *out, size_t len,
                              size_t at) {
    const char *d = m->dict[fuzz_rand(rng) % m->ndict];
    size_t k = strlen(d);
    if (len + k <= m->input_max) {
        memmove(out + at + k, out + at, len - at);
        memcpy(out + at, d, k);
        len += k;
    }
    return len;
}

size_t fuzz_mutate(const fuzz_mutator_t *m, uint64_t *rng, const fuzz_seed_t *seeds, int nseeds,
                   const uint8_t *in, size_t len, uint8_t *out) {
    const size_t max = m->input_max;
    memcpy(out, in, len);
    int edits = fuzz_rand(rng) % 4 ? 1 : 2 + (int)(fuzz_rand(rng) % 3);
    for (int e = 0; e < edits; e++) {
        size_t at = len ? (size_t)(fuzz_rand(rng) % len) : 0;
        switch (fuzz_rand(rng) % 8) {
            case 0: /* flip a bit */
                if (len)
                    out[at] ^= (uint8_t)(1u << (fuzz_rand(rng) % 8));
                break;
            case 1: /* an interesting byte */
                if (len)
                    out[at] = interesting_byte(m, rng);
                break;
            case 2: /* a random byte */
                if (len)
                    out[at] = (uint8_t)fuzz_rand(rng);
                break;
            case 3: /* insert a few bytes */
                if (len + 8 <= max) {
                    size_t k = 1 + (size_t)(fuzz_rand(rng) % 8);
                    memmove(out + at + k, out + at, len - at);
                    for (size_t i = 0; i < k; i++)
                        out[at + i] =
                            fuzz_rand(rng) % 2 ? interesting_byte(m, rng) : (uint8_t)fuzz_rand(rng);
                    len += k;
                }
                break;
            case 4: /* delete a few bytes */
                if (len) {
                    size_t k = 1 + (size_t)(fuzz_rand(rng) % 8);
                    if (k > len - at)
                        k = len - at;
                    memmove(out + at, out + at + k, len - at - k);
                    len -= k;
                }
                break;
            case 5: /* the target's own edit, or a fragment of its format */
                if (m->edit)
                    len = m->edit(out, len, at, max, rng);
                else if (m->ndict)
                    len = insert_fragment(m, rng, out, len, at);
                break;
            case 6: /* truncate */
                len = at;
                break;
            default: { /* splice: the tail of another seed after our head */
                const fuzz_seed_t *s = &seeds[fuzz_rand(rng) % (uint64_t)nseeds];
                size_t from = s->len ? (size_t)(fuzz_rand(rng) % s->len) : 0;
                size_t k = s->len - from;
                if (at + k > max)
                    k = max - at;
                memcpy(out + at, s->p + from, k);
                len = at + k;
                break;
            }
        }
    }
    return len;
}

int fuzz_make_seeds_from(fuzz_seed_t *seeds, int max, int *n, size_t seed_max,
                         int (*seed)(int i, uint8_t *out, size_t *len, int *valid)) {
    int nseeds = 0, rc = 0;
    while (nseeds < max) {
        fuzz_seed_t *s = &seeds[nseeds];
        if (!(s->p = malloc(seed_max)))
            return -2;
        if ((rc = seed(nseeds, s->p, &s->len, &s->valid)) <= 0) {
            free(s->p);
            s->p = NULL;
            break;
        }
        nseeds++;
    }
    *n = nseeds;
    return rc < 0 ? -1 : 0;
}

int fuzz_write_seeds(const char *dir, const char *name, const fuzz_seed_t *seeds, int n) {
    for (int i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/seed-%s-%02d", dir, name, i);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(seeds[i].p, 1, seeds[i].len, f) != seeds[i].len) {
            perror(path);
            if (f)
                fclose(f);
            return 1;
        }
        if (fclose(f) != 0)
            return 1;
    }
    return 0;
}

/* Free the n seeds and their array. */
static void free_seeds(fuzz_seed_t *seeds, int n) {
    for (int i = 0; i < n; i++)
        free(seeds[i].p);
    free(seeds);
}

int fuzz_replay_main(int argc, char **argv, const fuzz_replay_target_t *t) {
    long rounds = FUZZ_REPLAY_DEFAULT_ROUNDS;
    const char *seed_dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--write-seed") == 0 && i + 1 < argc)
            seed_dir = argv[++i];
        else
            rounds = strtol(argv[i], NULL, 10);
    }
    fuzz_seed_t *seeds = calloc((size_t)t->seeds_max, sizeof(*seeds));
    uint8_t *buf = malloc(t->mutator.input_max);
    if (!seeds || !buf)
        return 2;
    int nseeds = 0, rc = t->make_seeds(seeds, t->seeds_max, &nseeds);
    if (rc == -2)
        return 2;
    int failed = rc < 0 || nseeds == 0;
    if (failed)
        fprintf(stderr, "fuzz_%s: %s %d\n", t->name, t->seed_error, nseeds);
    if (!failed && seed_dir) {
        rc = fuzz_write_seeds(seed_dir, t->name, seeds, nseeds);
        free_seeds(seeds, nseeds);
        free(buf);
        return rc;
    }
    /* Each seed decodes exactly when it should: otherwise the target tests less than it says
     * (a valid seed refused would have every mutation of it refused at the door). */
    int nvalid = 0;
    for (int i = 0; i < nseeds && !failed; i++) {
        int ok = t->run(seeds[i].p, seeds[i].len) > 0;
        nvalid += ok;
        if (ok != seeds[i].valid) {
            fprintf(stderr, "fuzz_%s: seed %d %s\n", t->name, i,
                    seeds[i].valid ? "does not decode" : t->invalid_decodes);
            failed = 1;
        }
    }
    uint64_t rng = t->rng_seed;
    long decoded = 0;
    for (long r = 0; r < rounds && !failed; r++) {
        const fuzz_seed_t *s = &seeds[fuzz_rand(&rng) % (uint64_t)nseeds];
        size_t n = fuzz_mutate(&t->mutator, &rng, seeds, nseeds, s->p, s->len, buf);
        /* Run the input from a heap block of exactly its size, so ASan sees any overread. */
        uint8_t *in = malloc(n ? n : 1);
        if (!in)
            return 2;
        memcpy(in, buf, n);
        decoded += t->run(in, n) > 0;
        free(in);
    }
    free_seeds(seeds, nseeds);
    free(buf);
    if (!failed && t->finish) {
        rc = t->finish();
        if (rc == 2)
            return 2;
        failed = rc != 0;
    }
    printf("fuzz_%s: %d seeds", t->name, nseeds);
    if (t->show_valid)
        printf(" (%d valid)", nvalid);
    printf(", %ld mutations, %ld %s, %ld refused\n", failed ? 0 : rounds, decoded, t->decoded_label,
           failed ? 0 : rounds - decoded);
    printf("%d passed, %d failed\n", failed ? 0 : 1, failed ? 1 : 0);
    return failed ? 1 : 0;
}
