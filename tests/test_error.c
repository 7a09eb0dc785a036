/*
 * Tests of the error model (lib/error.c): every code of KHALA_ERRNO_MAP has a distinct message
 * and its source name, the two ranges never overlap, and -errno values describe themselves.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <string.h>

#include "errbuf.h"
#include "khala/error.h"

typedef struct code {
    int value;
    const char *name; /* "KHALA_" followed by the X-macro name */
} code_t;

static const code_t codes[] = {
#define X(name, off, msg) {KHALA_##name, "KHALA_" #name},
    KHALA_ERRNO_MAP(X)
#undef X
};

#define NCODES (sizeof(codes) / sizeof(codes[0]))

static void setup(void) {
}

static void teardown(void) {
}

TestSuite(error, .init = setup, .fini = teardown, .timeout = 10);

Test(error, every_code_has_a_known_message) {
    cr_assert_gt(NCODES, 0);
    for (size_t i = 0; i < NCODES; i++) {
        const char *msg = khala_strerror(codes[i].value);
        cr_assert_not_null(msg, "%s", codes[i].name);
        cr_assert_gt(strlen(msg), 0, "%s has an empty message", codes[i].name);
        cr_assert_str_neq(msg, "unknown error", "%s has no message", codes[i].name);
    }
}

Test(error, messages_are_distinct) {
    for (size_t i = 0; i < NCODES; i++)
        for (size_t j = i + 1; j < NCODES; j++)
            cr_assert_str_neq(khala_strerror(codes[i].value), khala_strerror(codes[j].value),
                              "%s and %s share a message", codes[i].name, codes[j].name);
}

Test(error, names_match_the_source_and_start_with_khala) {
    for (size_t i = 0; i < NCODES; i++) {
        const char *name = khala_err_name(codes[i].value);
        cr_assert_eq(strncmp(name, "KHALA_", 6), 0, "%d is named %s", codes[i].value, name);
        cr_assert_str_eq(name, codes[i].name);
    }
}

Test(error, codes_are_distinct_and_in_the_private_range) {
    for (size_t i = 0; i < NCODES; i++) {
        cr_assert_leq(codes[i].value, KHALA_ERR_BASE, "%s", codes[i].name);
        cr_assert_geq(codes[i].value, KHALA_ERR_LAST, "%s", codes[i].name);
        /* Below every errno: the C library knows no errno of that number. */
        cr_assert_null(strerrorname_np(-codes[i].value), "%s collides with errno %s", codes[i].name,
                       strerrorname_np(-codes[i].value));
        for (size_t j = i + 1; j < NCODES; j++)
            cr_assert_neq(codes[i].value, codes[j].value, "%s and %s collide", codes[i].name,
                          codes[j].name);
    }
}

Test(error, codes_keep_their_documented_values) {
    /* Callers in other languages store the numbers: they must never move. */
    cr_assert_eq(KHALA_ENOTFOUND, -1000);
    cr_assert_eq(KHALA_ETOOBIG, -1001);
    cr_assert_eq(KHALA_ELAYOUT, -1004);
    cr_assert_eq(KHALA_EKEY, -1005);
    cr_assert_eq(KHALA_ECORRUPT, -1006);
    cr_assert_eq(KHALA_EEXIST, -1013);
}

Test(error, negative_errno_maps_to_strerror_text_and_name) {
    cr_assert_str_eq(khala_strerror(-ENOMEM), strerror(ENOMEM));
    cr_assert_str_eq(khala_err_name(-ENOMEM), "ENOMEM");
    cr_assert_str_eq(khala_strerror(-ERANGE), strerror(ERANGE));
    cr_assert_str_eq(khala_err_name(-ERANGE), "ERANGE");
    cr_assert_str_eq(khala_err_name(-ENOENT), "ENOENT");
    cr_assert_str_eq(khala_err_name(-EINVAL), "EINVAL");
}

Test(error, zero_is_ok) {
    cr_assert_str_eq(khala_err_name(0), "OK");
    cr_assert_str_neq(khala_strerror(0), "unknown error");
}

Test(error, unknown_codes_are_named_unknown) {
    const int unknown[] = {KHALA_ERR_BASE - 50, KHALA_ERR_LAST, -999, 1, 42, INT_MIN, INT_MAX};
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        cr_assert_str_eq(khala_strerror(unknown[i]), "unknown error", "%d", unknown[i]);
        cr_assert_str_eq(khala_err_name(unknown[i]), "UNKNOWN", "%d", unknown[i]);
    }
}

/* The one way a key is shown in a message (lib/errbuf.h): printable bytes as they are, the
 * others as \xNN, cut with "..." after KHALA_ERRBUF_QUOTE_MAX bytes or when the buffer ends. */
Test(error, keys_are_quoted_one_way) {
    char out[KHALA_ERRBUF_QUOTE_CAP];
    cr_assert_str_eq(khala__errbuf_quote("user:42", 7, out, sizeof(out)), "user:42");
    cr_assert_str_eq(khala__errbuf_quote("a\0b\n'\\", 6, out, sizeof(out)),
                     "a\\x00b\\x0a\\x27\\x5c");
    char longkey[100];
    memset(longkey, 'k', sizeof(longkey));
    khala__errbuf_quote(longkey, sizeof(longkey), out, sizeof(out));
    cr_assert_eq(strlen(out), KHALA_ERRBUF_QUOTE_MAX + 3);
    cr_assert_str_eq(out + KHALA_ERRBUF_QUOTE_MAX, "...");
    char small[12];
    khala__errbuf_quote("\x01\x02\x03\x04", 4, small, sizeof(small));
    cr_assert_lt(strlen(small), sizeof(small));
    cr_assert_str_eq(small, "\\x01\\x02...", "a short buffer cuts whole bytes");
}
