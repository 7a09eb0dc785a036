/*
 * Plain driver of tests/fuzz/fuzz_config.c, run by ctest in every build: seeds generated in
 * code (the dump of the defaults, the dump of a configuration that sets every backend, and a
 * hand-written file with comments, blanks and inline comments), then a fixed number of
 * deterministic mutations of them: lines deleted, duplicated, swapped or replaced by lines
 * from a dictionary of keys, sections and odd values; bytes flipped, inserted or set to INI
 * punctuation; truncations. The target must survive all of them; the program counts how many
 * were accepted and refused, and fails if a seed is refused (the target would then test only
 * the error paths).
 *
 *   fuzz_config_replay [ROUNDS]          replay (default DEFAULT_ROUNDS mutations)
 *   fuzz_config_replay --write-seed DIR  write the seeds into DIR for libFuzzer
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fuzz_config.h"
#include "fuzz_rand.h"

#define DEFAULT_ROUNDS 20000
#define NSEEDS 3
#define TEXT_MAX 16384

static uint64_t g_rng = 0x2545f4914f6cdd1dull;

static uint64_t rnd(void) {
    return fuzz_rand(&g_rng);
}

/* Lines and fragments the mutator splices in. */
static const char *const DICT[] = {
    "[cache]",
    "[l1]",
    "[l2]",
    "[l3]",
    "[policies]",
    "[type.embedding]",
    "[type.consolidation]",
    "[type.search_result]",
    "[nope]",
    "[l1",
    "]",
    "name = x",
    "socket = /tmp/k.sock",
    "socket_mode = 0777",
    "max_memory_mb = 1",
    "max_memory_mb = 32768",
    "max_items = auto",
    "max_items = 16",
    "max_value_bytes = 268435456",
    "eviction_policy = lru",
    "backend = redis",
    "backend = surrealdb",
    "redis_url = redis://u:p@h:1/0",
    "redis_url = unix:///r.sock?db=1",
    "redis_url = rediss://[::1]",
    "surrealdb_url = https://db:8000/rpc",
    "coherence = pubsub",
    "quota_pct = 100",
    "quota_pct = 0",
    "levels = l3",
    "levels = l1,l2,l3",
    "levels = ,",
    "write_mode = default",
    "write_mode = write_behind",
    "l1_ttl_seconds = 0",
    "ttl_seconds = 315360000",
    "ttl_seconds = 4294967296",
    "persistent = on",
    "= value",
    "key =",
    "; comment",
    "# comment",
    "  indented = 1",
    "\xef\xbb\xbf",
    "a : b",
    "x ; y",
    "socket_group = wheel",
    "path = /var/lib/x",
    "path = relative",
};
#define NDICT (sizeof(DICT) / sizeof(DICT[0]))

static const char PUNCT[] = "[]=:;# \t\r\n.,/\\\"'0-\x7f\xff";

/* Seed i into buf (NUL-terminated); its length. */
static size_t make_seed(int i, char *buf, size_t cap) {
    khala_config_t cfg;
    char err[256];
    khala__config_defaults(&cfg, "seed");
    if (i == 1) {
        static const char *const sets[][2] = {
            {"l2.redis_url", "redis://app:pw@redis:6380/3"},
            {"l2.backend", "redis"},
            {"policies.coherence", "pubsub"},
            {"l1.max_items", "4096"},
            {"type.embedding.quota_pct", "0"},
            {"type.embedding.levels", "l2,l3"},
        };
        for (size_t s = 0; s < sizeof(sets) / sizeof(sets[0]); s++)
            if (khala__config_set(&cfg, sets[s][0], sets[s][1], err, sizeof(err)) != 0) {
                fprintf(stderr, "fuzz_config_replay: seed: %s\n", err);
                exit(2);
            }
    }
    if (i == 2) {
        snprintf(buf, cap,
                 "; hand-written\n"
                 "[cache]\n  name = hand ; inline\n\n"
                 "[l1]\nmax_memory_mb : 64\nttl_seconds=60\n"
                 "# comment\n[type.agent_response]\nlevels = l1, l2\n"
                 "quota_pct = 0\r\n[policies]\npreload_common = yes\ncoherence = none\n"
                 "[l2_cache]\nttl_seconds = 60\n");
        return strlen(buf);
    }
    FILE *f = fmemopen(buf, cap, "w");
    if (!f || khala__config_dump(&cfg, f) != 0) {
        fprintf(stderr, "fuzz_config_replay: cannot dump seed %d\n", i);
        exit(2);
    }
    long n = ftell(f);
    fclose(f);
    buf[n] = '\0';
    return (size_t)n;
}

/* Offsets of the line starts of text (len bytes) into starts; the count. */
static size_t line_starts(const char *text, size_t len, size_t *starts, size_t cap) {
    size_t n = 0;
    for (size_t i = 0; i < len && n < cap; i++)
        if (i == 0 || text[i - 1] == '\n')
            starts[n++] = i;
    return n;
}

/* One mutation of src (len bytes) into dst (capacity TEXT_MAX); the new length. */
static size_t mutate(const char *src, size_t len, char *dst) {
    size_t starts[1024], nl = line_starts(src, len, starts, 1024), n = 0;
    int op = (int)(rnd() % 8);
    if (nl == 0)
        op = 4;
    size_t a = nl ? (size_t)(rnd() % nl) : 0, b = nl ? (size_t)(rnd() % nl) : 0;
    size_t a_end = a + 1 < nl ? starts[a + 1] : len, b_end = b + 1 < nl ? starts[b + 1] : len;
#define PUT(p, k)                                                                                  \
    do {                                                                                           \
        size_t k_ = (k);                                                                           \
        if (n + k_ < TEXT_MAX) {                                                                   \
            memcpy(dst + n, (p), k_);                                                              \
            n += k_;                                                                               \
        }                                                                                          \
    } while (0)
    switch (op) {
        case 0: /* delete line a */
            PUT(src, starts[a]);
            PUT(src + a_end, len - a_end);
            break;
        case 1: /* duplicate line a after line b */
            PUT(src, b_end);
            PUT(src + starts[a], a_end - starts[a]);
            PUT(src + b_end, len - b_end);
            break;
        case 2: /* replace line a by a dictionary line */
        case 3: {
            const char *d = DICT[rnd() % NDICT];
            PUT(src, starts[a]);
            PUT(d, strlen(d));
            PUT("\n", 1);
            PUT(src + a_end, len - a_end);
            break;
        }
        case 4: { /* insert a dictionary fragment anywhere */
            size_t at = len ? (size_t)(rnd() % len) : 0;
            const char *d = DICT[rnd() % NDICT];
            PUT(src, at);
            PUT(d, strlen(d));
            PUT(src + at, len - at);
            break;
        }
        case 5: { /* set a few bytes to punctuation or anything */
            PUT(src, len);
            for (int e = 1 + (int)(rnd() % 3); e > 0 && n; e--)
                dst[rnd() % n] = rnd() % 2 ? PUNCT[rnd() % (sizeof(PUNCT) - 1)] : (char)rnd();
            break;
        }
        case 6: /* truncate */
            PUT(src, len ? (size_t)(rnd() % len) : 0);
            break;
        default: { /* a very long line */
            size_t k = 900 + (size_t)(rnd() % 300);
            PUT(src, starts[a]);
            PUT("socket = /", 10);
            for (size_t i = 0; i < k && n < TEXT_MAX - 1; i++)
                dst[n++] = 'a' + (char)(i % 26);
            PUT("\n", 1);
            PUT(src + a_end, len - a_end);
            break;
        }
    }
#undef PUT
    return n;
}

int main(int argc, char **argv) {
    static char seeds[NSEEDS][TEXT_MAX], cur[TEXT_MAX], next[TEXT_MAX];
    size_t seed_len[NSEEDS];
    long rounds = DEFAULT_ROUNDS;
    const char *seed_dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--write-seed") == 0 && i + 1 < argc)
            seed_dir = argv[++i];
        else
            rounds = strtol(argv[i], NULL, 10);
    }
    int seeds_ok = 1;
    for (int i = 0; i < NSEEDS; i++) {
        seed_len[i] = make_seed(i, seeds[i], TEXT_MAX);
        if (!fuzz_config_one((const uint8_t *)seeds[i], seed_len[i])) {
            fprintf(stderr, "fuzz_config_replay: seed %d is refused:\n%s\n", i, seeds[i]);
            seeds_ok = 0;
        }
        if (seed_dir) {
            char path[4096];
            snprintf(path, sizeof(path), "%s/seed-config-%d", seed_dir, i);
            FILE *f = fopen(path, "wb");
            if (!f || fwrite(seeds[i], 1, seed_len[i], f) != seed_len[i] || fclose(f) != 0) {
                perror(path);
                return 1;
            }
        }
    }
    if (seed_dir)
        return seeds_ok ? 0 : 1;
    long accepted = 0;
    for (long r = 0; r < rounds; r++) {
        /* Stack 1 to 4 mutations on a seed. */
        int s = (int)(rnd() % NSEEDS);
        size_t len = seed_len[s];
        memcpy(cur, seeds[s], len);
        for (int m = 1 + (int)(rnd() % 4); m > 0; m--) {
            len = mutate(cur, len, next);
            memcpy(cur, next, len);
        }
        accepted += fuzz_config_one((const uint8_t *)cur, len);
    }
    printf("fuzz_config: %ld mutations, %ld accepted, %ld refused; seeds %s\n", rounds, accepted,
           rounds - accepted, seeds_ok ? "accepted" : "REFUSED");
    printf("%d passed, %d failed\n", seeds_ok ? 1 : 0, seeds_ok ? 0 : 1);
    return seeds_ok ? 0 : 1;
}
