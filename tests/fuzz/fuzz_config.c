/*
 * Fuzz target: khalad's config parser (daemon/config.c) on arbitrary text.
 *
 * The input, cut at its first NUL, is loaded over the defaults with khala__config_load_string.
 * Whatever the bytes, that must end in 0 or KHALA_ECONFIG with a message, never in a crash, a
 * leak or a read out of bounds. When the text is accepted, the target also checks the
 * round-trip property the daemon relies on for `khalactl config`: the dump of the result
 * reloads, over other defaults, to the same bytes (a URL password as "***"); a failure there
 * aborts, so the fuzzer
 * reports it like a crash.
 *
 * Built two ways: with KHALA_FUZZ (clang, -fsanitize=fuzzer,address) as a libFuzzer binary,
 * and always as a plain program (fuzz_config_replay.c) that runs seeds generated in code and
 * thousands of deterministic mutations of them, so that the target cannot rot.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fuzz_config.h"
#include "redact.h"

/* The URL field f with its password redacted as the dump writes it (lib/redact.h), zero-padded
 * like every string field. */
static void redact_field(char *f, size_t size) {
    char clean[KHALA_CONFIG_LINE_MAX];
    khala__redact(f, clean, sizeof(clean));
    memset(f, 0, size);
    memcpy(f, clean, strlen(clean) < size ? strlen(clean) : size - 1);
}

/* Dump cfg and reload it; abort if it does not come back equal, but for URL passwords, which a
 * dump never shows (issue 10, bug 5: they come back as "***"). */
static void check_roundtrip(const khala_config_t *cfg) {
    khala_config_t want = *cfg;
    redact_field(want.l2.redis_url, sizeof(want.l2.redis_url));
    redact_field(want.l3.surrealdb_url, sizeof(want.l3.surrealdb_url));
    cfg = &want;
    char *text = NULL, err[512];
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return; /* out of memory: nothing to check */
    int rc = khala__config_dump(cfg, f);
    fclose(f);
    khala_config_t back;
    (void)khala__config_defaults(&back, "roundtrip");
    if (rc != 0 || khala__config_load_string(&back, text, "dump", err, sizeof(err)) != 0 ||
        memcmp(&back, cfg, sizeof(back)) != 0) {
        fprintf(stderr, "fuzz_config: the dump does not reload equal (%s):\n%s\n", err, text);
        abort();
    }
    free(text);
}

int fuzz_config_one(const uint8_t *data, size_t size) {
    char err[512];
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    khala_config_t cfg;
    (void)khala__config_defaults(&cfg, NULL);
    err[0] = '\0';
    int rc = khala__config_load_string(&cfg, text, "fuzz.conf", err, sizeof(err));
    free(text);
    if (rc != 0) {
        /* Every refusal explains itself. */
        if (rc != KHALA_ECONFIG || !err[0])
            abort();
        return 0;
    }
    check_roundtrip(&cfg);
    return 1;
}

#ifdef KHALA_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    (void)fuzz_config_one(data, size);
    return 0;
}
#endif
